#!/usr/bin/env bash
# Where the daemon's CPU goes under load: CPU seconds per thread group
# (tokio workers, verifier threads, sled I/O threads) over a window in the
# middle of a `terminal-sim bench` run, read from /proc/PID/task/*/stat.
#
#   bench/thread-profile.sh [TERMINALS] [SECONDS]     # default 256 12
set -euo pipefail
cd "$(dirname "$0")/.."
terminals=${1:-256}
seconds=${2:-12}
work=$(mktemp -d "${TMPDIR:-/tmp}/cardd-profile.XXXXXX")
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
. bench/lib.sh
start_demo_daemon "$work"
start_purchase_load "$work" "$terminals" "$seconds"
ticks=$(getconf CLK_TCK)
snap() {
  for t in /proc/"$pid"/task/*; do
    echo "$(sed 's/-[0-9]*$//' "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
# Sample a third of the run once the load is on.
wait_for_load
sleep 1
window=$((seconds / 3))
snap > "$work/s1"; sleep "$window"; snap > "$work/s2"
wait "$bench" || true
echo "CPU seconds per thread group over ${window}s of load:"
join "$work/s1" "$work/s2" | awk -v t="$ticks" '{printf "  %-20s %6.2f\n", $1, ($3 - $2) / t}' | sort -k2 -n -r
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("ops/s", d["ops_per_sec"], "p99 ms", d["p99_ms"])' "$work/bench.json"
