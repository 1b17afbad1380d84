#!/usr/bin/env bash
# Instructions one ingested event costs a Ferry build, counted by valgrind's callgrind: the
# count repeats from run to run whatever else the machine does, so it shows a change of a few
# percent that throughput on a shared host hides. Starts `BIN serve` under callgrind with the
# bench's ingest-only config, sends 50 events to warm up, counts the instructions of the next N
# (1 KiB JSON, 8 curl processes in parallel), and prints the total per event (every thread:
# HTTP, handler, store) and the part spent in the ingest handler. Needs valgrind and curl.
# With `bare`, the same for the bare handler (`BIN bench-bare`), the bench's baseline.
# Usage: instructions-per-event.sh BIN [serve|bare]   (N=events, default 2000; PORT, default 18190)
set -euo pipefail
# shellcheck source=scripts/ingest-fixture.sh
. "$(dirname "$0")/ingest-fixture.sh"
usage="usage: $0 BIN [serve|bare]"
bin=${1:?$usage} mode=${2:-serve}
case "$mode" in serve | bare) ;; *) echo "$usage (not \"$mode\")" >&2; exit 2 ;; esac
[ -x "$bin" ] || { echo "$0: $bin is not an executable Ferry binary" >&2; exit 2; }
command -v valgrind > /dev/null || { echo "$0: needs valgrind" >&2; exit 2; }
n=${N:-2000} port=${PORT:-18190}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
ingest_fixture "$work"
if [ "$mode" = bare ]; then
  set -- bench-bare --listen "127.0.0.1:$port"
else
  set -- serve --config "$work/ferry.yaml" --data "$work/data" --listen "127.0.0.1:$port"
fi
FERRY_LOG=warn FERRY_API_TOKEN=bench valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$work/callgrind.out" "$bin" "$@" > "$work/serve.out" 2>&1 &
pid=$!
for _ in $(seq 1 300); do curl -s -o /dev/null -d '{}' "http://127.0.0.1:$port/in/bench" && break; sleep 0.2; done
# Each curl process posts 50 events from one config file ("next" separates the requests).
post() {
  seq 1 "$1" | xargs -P 8 -n 50 sh -c 'sep=""; for _ in "$@"; do
      printf "%surl = \"%s\"\ndata-binary = \"@%s\"\nheader = \"content-type: application/json\"\noutput = /dev/null\n" "$sep" "$URL" "$BODY"
      sep="next
"
    done | curl -s -K -' _
}
export URL="http://127.0.0.1:$port/in/bench" BODY="$work/body.json"
post 50
callgrind_control -i on "$pid" > /dev/null 2>&1
post "$n"
callgrind_control -i off "$pid" > /dev/null 2>&1
callgrind_control -d "$pid" > /dev/null 2>&1
sleep 1
dump=$(ls "$work"/callgrind.out.* | head -1); echo "DUMP $dump"
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
# The inclusive count of a function: the largest of the lines that name it (callgrind_annotate
# splits a function by the source files its inlined code came from).
part() {
  callgrind_annotate --inclusive=yes "$dump" 2>/dev/null |
    awk -v name="$1" '{ f = $0; sub(/ \[.*\]$/, "", f); n = length(name)
      if (substr(f, length(f) - n + 1) == name) { gsub(",", "", $1); if ($1 + 0 > max) max = $1 + 0 } }
      END { print max + 0 }'
}
if [ "$mode" = bare ]; then
  awk -v t="$total" -v n="$n" 'BEGIN { printf "instructions per request (bare handler): %.1fk\n", t / n / 1000 }'
  exit 0
fi
handler=$(part ':ferry::ingest::receive::{{closure}}')
awk -v t="$total" -v h="$handler" -v n="$n" 'BEGIN {
  printf "instructions per event: %.1fk in all, %.1fk of them in the ingest handler\n",
    t / n / 1000, h / n / 1000 }'
