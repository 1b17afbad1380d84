#!/usr/bin/env python3
"""Where the time of the store's syncs goes during `ferry bench --phases ingest --rounds 1`.

Records the block layer's requests and the `fdatasync`/`fsync` calls of the whole machine with
`perf` (Debian's, run as root) for SECONDS in the middle of Ferry's ingest-only phase, then
prints, in microseconds:

- every sync of the writer and of the checkpointer (count, p50 / p90 / p99, mean);
- each writer sync cut into its steps: from the call to its data write reaching the disk's
  queue, that write, from its completion to the cache flush being issued (the writer wakes and
  the block layer hands the flush to a `kblockd` worker), the flush, and from the flush's
  completion to the call's return (the writer waking);
- the writer's syncs by length, and how many of each length overlapped a sync of the
  checkpointer.

    scripts/sync-breakdown.py ./target/release/ferry [SECONDS]
"""
import bisect
import os
import re
import subprocess
import sys

from ingest_round import IngestRound

if len(sys.argv) < 2:
    sys.exit(__doc__)
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
bench_round = IngestRound(sys.argv[1], seconds)
bench_round.wait_for_serve()
data = os.path.join(bench_round.work, "perf.data")
events = ["block:block_rq_issue", "block:block_rq_complete"] + [
    "syscalls:sys_%s_%s" % (edge, call) for edge in ("enter", "exit") for call in ("fdatasync", "fsync")]
try:
    recorded = subprocess.run(["perf", "record", "-q", "-a", "-o", data]
                              + [arg for e in events for arg in ("-e", e)]
                              + ["--", "sleep", str(seconds)],
                              capture_output=True, text=True)
except FileNotFoundError:
    sys.exit("perf is not installed (Debian: linux-perf)")
if recorded.returncode != 0:
    sys.exit("perf record failed (it needs root for tracepoints): " + recorded.stderr.strip())
trace = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,time,event,trace"],
                       capture_output=True, text=True, check=True).stdout

THREADS = {"ferry-store-wri": "writer", "ferry-store-che": "checkpointer"}
syncs = {"writer": [], "checkpointer": []}  # (start, end) of each call
entered = {}
writes = []  # (issued, completed) of the writer's data writes
issued = {}  # sector -> time, for the writer's data writes in flight
flushes_issued, flushes_completed = [], []
line_format = re.compile(r"\s*(.+?)\s+(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)")
for line in trace.splitlines():
    parsed = line_format.match(line)
    if not parsed:
        continue
    comm, tid, at, event, fields = parsed.groups()
    at, fields, who = float(at), fields.split(), THREADS.get(comm)
    if event.startswith("syscalls:sys_enter") and who:
        entered[tid] = at
    elif event.startswith("syscalls:sys_exit") and tid in entered:
        syncs[who].append((entered.pop(tid), at))
    elif event == "block:block_rq_issue":
        # "dev rwbs bytes () sector + sectors ..."; a flush is "FF" with no sector.
        if fields[1].startswith("FF"):
            flushes_issued.append(at)
        elif who == "writer":
            issued[fields[4]] = at
    elif event == "block:block_rq_complete":
        # "dev rwbs () sector + sectors ..."
        if fields[1].startswith("FF"):
            flushes_completed.append(at)
        elif fields[3] in issued:
            writes.append((issued.pop(fields[3]), at))
writes.sort()


def figures(values):
    values = sorted(values)
    n = len(values)
    if n == 0:
        return "none"
    pick = lambda q: values[min(n - 1, int(n * q))] * 1e6
    return "n=%5d  p50 %5.0f  p90 %5.0f  p99 %6.0f  mean %5.0f" % (
        n, pick(0.5), pick(0.9), pick(0.99), sum(values) / n * 1e6)


def first_after(times, at, limit):
    """The first time in the sorted `times` at or after `at`, if it is before `limit`."""
    i = bisect.bisect_left(times, at)
    return times[i] if i < len(times) and times[i] <= limit else None


for who, calls in syncs.items():
    print("%-13s syncs   %s" % (who, figures([end - start for start, end in calls])))
steps = {name: [] for name in ("to its write", "the write", "to the flush", "the flush", "to return")}
write_starts = [w[0] for w in writes]
for start, end in syncs["writer"]:
    i = bisect.bisect_left(write_starts, start)
    if i == len(writes) or writes[i][1] > end:
        continue  # the call wrote nothing (or its write was not seen)
    write_issued, write_done = writes[i]
    flush_issued = first_after(flushes_issued, write_done, end)
    flush_done = flush_issued and first_after(flushes_completed, flush_issued, end)
    if not flush_done:
        continue
    for name, span in zip(steps, (write_issued - start, write_done - write_issued,
                                  flush_issued - write_done, flush_done - flush_issued,
                                  end - flush_done)):
        steps[name].append(span)
print("a writer sync, step by step:")
for name, spans in steps.items():
    print("  %-13s %s" % (name, figures(spans)))
print("the writer's syncs by length, and those overlapping a checkpointer sync:")
total = sum(end - start for start, end in syncs["writer"]) or 1
for low, high in ((0, 300e-6), (300e-6, 800e-6), (800e-6, 2e-3), (2e-3, float("inf"))):
    chosen = [s for s in syncs["writer"] if low <= s[1] - s[0] < high]
    overlapping = sum(any(a < s[1] and b > s[0] for a, b in syncs["checkpointer"]) for s in chosen)
    print("  %5.0f us and up: %5d syncs, %3.0f%% of the writer's sync time, %3d overlapping"
          % (low * 1e6, len(chosen), 100 * sum(e - s for s, e in chosen) / total, overlapping))
bench_round.finish()
