#!/usr/bin/env bash
# A Ferry with many flows (issue 21): writes a config of FLOWS flows (each a filter and a
# deliver, one source, one event type per flow), then prints how long `ferry validate` takes,
# how long `ferry serve` takes to answer, its RSS, and the times of N flow creations through
# the API (median and max), one after another.
#   scripts/many-flows.sh ./target/release/ferry 2000 20
# Usage: many-flows.sh BIN FLOWS [N]   (N defaults to 20)
set -euo pipefail
usage="usage: $0 BIN FLOWS [N]"
bin=$(realpath "${1:?$usage}") flows=${2:?$usage} n=${3:-20}
case "$flows$n" in *[!0-9]*) echo "$usage (FLOWS and N are counts)" >&2; exit 2 ;; esac
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
config="$work/ferry.yaml"
{
  echo "settings: { allow_private_destinations: true }"
  echo "sources: [ { id: s, kind: webhook, verify: { scheme: none } } ]"
  echo "event_types:"
  for i in $(seq 0 $((flows + n - 1))); do echo "  - { name: t$i }"; done
  echo "destinations: [ { id: d, kind: http, url: \"http://127.0.0.1:9/\" } ]"
  echo "flows:"
  for i in $(seq 0 $((flows - 1))); do
    echo "  - { id: f$i, on: { source: s, event_types: [t$i] }, steps: [ { filter: '.n > $i' }, { deliver: d } ] }"
  done
} > "$config"
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
t0=$(date +%s.%N)
"$bin" validate --config "$config" > /dev/null
t1=$(date +%s.%N)
echo "$flows flows: validate $(elapsed "$t0" "$t1") s"
t0=$(date +%s.%N)
FERRY_API_TOKEN=many-flows FERRY_LOG=error "$bin" serve --config "$config" --data "$work/data" \
  --listen 127.0.0.1:0 > "$work/out" 2>&1 &
pid=$!
for _ in $(seq 1 1200); do grep -q "ferry listening on" "$work/out" && break; sleep 0.05; done
t1=$(date +%s.%N)
base=$(sed -n 's/^ferry listening on //p' "$work/out")
[ -n "$base" ] || { echo "ferry serve did not start:" >&2; cat "$work/out" >&2; exit 1; }
echo "$flows flows: serving after $(elapsed "$t0" "$t1") s, RSS $(awk '/VmRSS/ { print int($2 / 1024) }' "/proc/$pid/status") MB"
for i in $(seq 1 "$n"); do
  curl -fsS -o /dev/null -w '%{time_total}\n' -X POST "$base/api/v1/flows" \
    -H 'authorization: Bearer many-flows' -H 'content-type: application/json' \
    -d "{\"id\":\"new$i\",\"on\":{\"source\":\"s\",\"event_types\":[\"t$((flows + i - 1))\"]},\"steps\":[{\"filter\":\".m > $i\"},{\"deliver\":\"d\"}]}"
done | sort -n | awk '{ t[NR] = $1 } END { printf "API flow creations: median %.3f s, max %.3f s (%d)\n", t[int((NR + 1) / 2)], t[NR], NR }'
echo "peak RSS $(awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$pid/status") MB"
