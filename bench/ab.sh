#!/usr/bin/env bash
# Two cardd binaries side by side: ROUNDS alternating runs of the same
# `terminal-sim bench` (purchases only) against a fresh `--demo` daemon of
# each, so that a change is judged by a ratio from one sitting. With RATE,
# the runs are open loop (`--rate RATE`, latency from the schedule).
#
#   bench/ab.sh OLD_CARDD NEW_CARDD [TERMINALS] [SECONDS] [ROUNDS] [RATE]
#       defaults 256 10 3, closed loop
#
# Keep an old binary with `cp target/release/cardd /tmp/cardd-old` before
# building the change.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,11p "$0" >&2; exit 1; }
bins=("$(realpath "$1")" "$(realpath "$2")")
terminals=${3:-256}
seconds=${4:-10}
rounds=${5:-3}
rate=${6:-}
# The generator pre-signs its requests; its default pool (40,000 a second)
# is a ceiling a quiet machine reaches, so give it 100,000 a second.
max_requests=$(( seconds * 100000 > 2000000 ? 2000000 : seconds * 100000 ))
pid=""
work=$(mktemp -d "${TMPDIR:-/tmp}/cardd-ab.XXXXXX")
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
. bench/lib.sh
for round in $(seq "$rounds"); do
  for side in 0 1; do
    dir="$work/$round-$side"
    mkdir -p "$dir"
    start_demo_daemon "$dir" "${bins[$side]}"
    cpu0=$(awk '{print $14 + $15}' /proc/"$pid"/stat)
    ./target/release/terminal-sim bench --connect "$addr" --owner-key "$dir/data/demo/owner.key" --into-live-brand \
      --terminals "$terminals" --duration "$seconds" --cards 10000 --mix purchase=100 \
      --max-requests "$max_requests" ${rate:+--rate "$rate"} --json > "$dir/bench.json" 2>/dev/null || true
    cpu1=$(awk '{print $14 + $15}' /proc/"$pid"/stat)
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    python3 - "$dir/bench.json" "$([ "$side" = 0 ] && echo old || echo new)" "$round" \
      "$(( cpu1 - cpu0 ))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
# Daemon CPU (user + system, from /proc) over everything the bench sent,
# set-up included, per state-changing answer.
cpu_us = int(sys.argv[4]) / int(sys.argv[5]) * 1e6 / max(j['total'] + j.get('setup_records', 0), 1)
print(f"round {sys.argv[3]} {sys.argv[2]}: ops/s {j['ops_per_sec']:9.1f}  p50 {j['p50_ms']:7.2f} ms"
      f"  p99 {j['p99_ms']:7.2f} ms  daemon CPU {cpu_us:5.1f} us/op  errors {j['errors'] or 'none'}"
      + (f"  (service p99 {j['service_p99_ms']:.2f} ms, send lag p99 {j['send_lag_p99_ms']:.2f} ms)"
         if 'send_lag_p99_ms' in j else ""))
PY
    rm -rf "$dir"
  done
done
