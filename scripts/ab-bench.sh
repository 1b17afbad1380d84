#!/usr/bin/env bash
# Compares two Ferry builds (or one build under two environments) on the ingest-only ratio of
# `ferry bench`, alternating them pair after pair: on a shared host a single round's ratio moves
# by as much as the change under test, so only many alternated pairs tell a change from noise.
# Prints each pair, the median ratio of each side and how many pairs B won.
#   scripts/ab-bench.sh 8 ./ferry-old ./target/release/ferry
#   scripts/ab-bench.sh 8 ./target/release/ferry ./target/release/ferry "" "FERRY_LOG=warn"
# Usage: ab-bench.sh PAIRS BIN_A BIN_B [ENV_A] [ENV_B]   (DUR=seconds per round, default 4)
# ENV_A / ENV_B are space-separated NAME=VALUE settings for that side's bench (and so for the
# `ferry serve` it starts). Each round takes about 2 * (DUR + 2) seconds.
set -euo pipefail
usage="usage: $0 PAIRS BIN_A BIN_B [ENV_A] [ENV_B]"
pairs=${1:?$usage} bin_a=${2:?$usage} bin_b=${3:?$usage} env_a=${4:-} env_b=${5:-}
case "$pairs" in '' | *[!0-9]*) echo "$usage (PAIRS is a count, not \"$pairs\")" >&2; exit 2 ;; esac
for bin in "$bin_a" "$bin_b"; do
  [ -x "$bin" ] || { echo "$0: $bin is not an executable Ferry binary" >&2; exit 2; }
done
# The rounds run in a scratch folder (the bench writes its data where it runs).
bin_a=$(realpath "$bin_a") bin_b=$(realpath "$bin_b")
dur=${DUR:-4}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One round of the ingest-only phase; prints its ratio to the bare handler.
ratio() {
  local bin=$1 settings=$2 out
  # shellcheck disable=SC2086 # the settings are words on purpose
  out=$(cd "$work" && env $settings "$bin" bench --duration "$dur" --phases ingest --rounds 1 2>&1) || {
    echo "$0: $bin bench failed:" >&2
    echo "$out" | tail -5 >&2
    exit 1
  }
  echo "$out" | sed -n 's/^  round 1: .* ratio \([0-9.]*\);.*/\1/p'
}
a=() b=()
for i in $(seq 1 "$pairs"); do
  ra=$(ratio "$bin_a" "$env_a")
  rb=$(ratio "$bin_b" "$env_b")
  echo "pair $i: A $ra  B $rb"
  a+=("$ra") b+=("$rb")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
wins=0
for i in "${!a[@]}"; do
  if awk -v x="${b[$i]}" -v y="${a[$i]}" 'BEGIN {exit !(x > y)}'; then wins=$((wins + 1)); fi
done
echo "median ratio: A $(median "${a[@]}")  B $(median "${b[@]}");  B higher in $wins of $pairs pairs"
