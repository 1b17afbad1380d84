#!/usr/bin/env bash
# What one ingested event costs a Ferry build, measured from outside: starts `BIN serve` with
# the bench's ingest-only config (or `BIN bench-bare` with `bare`), drives it with wrk
# (Debian's `wrk`: 2 threads, 64 keep-alive connections, 1 KiB JSON bodies) and prints
# requests/s with the server's user and system CPU, context switches and disk writes per
# request, read from /proc, and each thread's run time per request. CPU per request moves less
# than throughput on a shared host, so A/B two builds by alternating them:
#   for r in 1 2 3; do scripts/cpu-per-event.sh old ./ferry-old; scripts/cpu-per-event.sh new ./target/release/ferry; done
# Usage: cpu-per-event.sh NAME BIN [serve|bare]   (DUR=seconds, default 8; PORT, default 18080)
set -euo pipefail
# shellcheck source=scripts/ingest-fixture.sh
. "$(dirname "$0")/ingest-fixture.sh"
usage="usage: $0 NAME BIN [serve|bare]"
name=${1:?$usage} bin=${2:?$usage} mode=${3:-serve}
case "$mode" in serve | bare) ;; *) echo "$usage (not \"$mode\")" >&2; exit 2 ;; esac
[ -x "$bin" ] || { echo "$0: $bin is not an executable Ferry binary" >&2; exit 2; }
command -v wrk > /dev/null || { echo "$0: needs wrk (apt-get install wrk)" >&2; exit 2; }
dur=${DUR:-8} port=${PORT:-18080}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
ingest_fixture "$work"
printf 'wrk.method="POST"\nwrk.headers["content-type"]="application/json"\nwrk.body=[[%s]]\n' "$(cat "$work/body.json")" > "$work/post.lua"
if [ "$mode" = bare ]; then
  "$bin" bench-bare --listen "127.0.0.1:$port" > /dev/null 2>&1 &
else
  FERRY_LOG=warn FERRY_API_TOKEN=bench "$bin" serve --config "$work/ferry.yaml" \
    --data "$work/data" --listen "127.0.0.1:$port" > "$work/serve.out" 2>&1 &
fi
pid=$!
url="http://127.0.0.1:$port/in/bench"
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
wrk -t2 -c64 -d1s -s "$work/post.lua" "$url" > /dev/null # warm-up
snapshot() {
  awk '{printf "%s %s ", $14, $15}' "/proc/$pid/stat"
  awk '/^write_bytes/{printf "%s ", $2}' "/proc/$pid/io"
  cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/{s+=$2} END{print s}'
}
# Run time in ns per thread name, from the scheduler (exact, where tick-based user/sys are not).
threads() {
  for t in /proc/"$pid"/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f1 "$t/schedstat")"; done |
    awk '{r[$1] += $2} END {for (k in r) print k, r[k]}' | sort
}
read -r u1 s1 w1 c1 < <(snapshot)
threads > "$work/threads.1"
out=$(wrk -t2 -c64 -d"${dur}s" -s "$work/post.lua" "$url")
read -r u2 s2 w2 c2 < <(snapshot)
threads > "$work/threads.2"
n=$(echo "$out" | awk '/requests in/{print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
ticks=$(getconf CLK_TCK)
awk -v n="$n" -v u=$((u2 - u1)) -v s=$((s2 - s1)) -v w=$((w2 - w1)) -v c=$((c2 - c1)) \
  -v t="$ticks" -v name="$name" -v rps="$rps" 'BEGIN {
  printf "%-10s %8.0f req/s  user %5.1f us  sys %5.1f us  ctxsw %.2f/req  disk %.1f KiB/req\n",
    name, rps, u * 1e6 / t / n, s * 1e6 / t / n, c / n, w / n / 1024 }'
# Where the CPU went, per thread (tokio workers, the store's writer and checkpointer).
join "$work/threads.1" "$work/threads.2" | awk -v n="$n" '$3 > $2 {
  printf "           %-16s %5.1f us/req\n", $1, ($3 - $2) / 1000 / n }'
