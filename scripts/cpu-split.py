#!/usr/bin/env python3
"""Where the machine's CPU goes during `ferry bench --phases ingest --rounds 1`.

Samples every thread of every process from /proc (run time and time spent runnable but waiting
for a CPU from `schedstat`, context switches from `status`) for SECONDS in the middle of the
bare handler's phase, then again in the middle of Ferry's ingest-only phase, and prints, per
second, milliseconds of CPU, milliseconds waiting for a CPU and switches for each group:
`bench` (the load generator), `bare` (the bare handler), `serve` (Ferry), and the kernel's own
threads (kworker, ksoftirqd) by name. Divide by the round's requests/s (printed at the end) for
CPU per request. The machine has 2 cores: 2000 ms/s is all of it.

    scripts/cpu-split.py ./target/release/ferry [SECONDS]
"""
import collections
import glob
import re
import sys
import time

from ingest_round import IngestRound

if len(sys.argv) < 2:
    sys.exit(__doc__)
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
bench_round = IngestRound(sys.argv[1], seconds)


def snapshot():
    """Run time and run-queue wait (ns) and context switches of every thread, with its process
    and name."""
    threads = {}
    for task in glob.glob("/proc/[0-9]*/task/[0-9]*"):
        try:
            run_ns, wait_ns = (int(n) for n in open(task + "/schedstat").read().split()[:2])
            switches = sum(int(n) for n in re.findall(
                r"ctxt_switches:\s+(\d+)", open(task + "/status").read()))
            name = open(task + "/comm").read().strip()
        except OSError:
            continue
        threads[task] = (task.split("/")[2], name, run_ns, wait_ns, switches)
    return threads


def group(pid, name, target):
    """A readable group for a thread: the bench's processes by role, others by thread name."""
    if pid == str(bench_round.bench.pid):
        who = "bench"
    elif pid == target:
        who = "serve"
    else:
        try:
            args = open("/proc/%s/cmdline" % pid).read().split("\0")
        except OSError:
            args = []
        who = "bare" if "bench-bare" in args else "other"
    kind = re.sub(r"-?\d+$", "", re.sub(r"[/:].*", "", name))
    return who + "/" + kind


def report(title, target):
    before = snapshot()
    start = time.time()
    time.sleep(seconds)
    after = snapshot()
    elapsed = time.time() - start
    cpu, waited, switches = collections.Counter(), collections.Counter(), collections.Counter()
    for task, (pid, name, run_ns, wait_ns, sw) in after.items():
        _, _, run0, wait0, sw0 = before.get(task, (pid, name, 0, 0, 0))
        key = group(pid, name, target)
        cpu[key] += (run_ns - run0) / 1e6 / elapsed
        waited[key] += (wait_ns - wait0) / 1e6 / elapsed
        switches[key] += (sw - sw0) / elapsed
    print(title)
    for key, ms in cpu.most_common():
        if ms >= 3:
            print("    %-32s %6.0f ms/s %6.0f ms/s waiting %8.0f switches/s"
                  % (key, ms, waited[key], switches[key]))
    print("    %-32s %6.0f ms/s %6.0f ms/s waiting" % ("all", sum(cpu.values()), sum(waited.values())))


# The bare handler's closed-loop phase starts right away, after 1 s of warm-up.
time.sleep(1.5)
report("  bare handler phase:", None)
report("  ferry ingest-only phase:", bench_round.wait_for_serve())
bench_round.finish()
