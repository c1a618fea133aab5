#!/usr/bin/env bash
# Where the daemon's CPU goes under load, by function: `perf record` with
# the cpu-clock software event (works where hardware counters are not
# exposed, as on these VMs) on a release daemon during a 256-terminal
# purchase run, then the share per thread group and the top functions.
#
#   bench/perf-profile.sh [TERMINALS] [SECONDS]     # default 256 16
#   PERF_STAGES=1 bench/perf-profile.sh 256 16     # plus the share by stage
#
# Needs `perf` (Debian: linux-perf). Also prints the generator's own CPU
# share, since it runs on the same 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
terminals=${1:-256}
seconds=${2:-16}
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/cardd-perf.XXXXXX")
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
. bench/lib.sh
start_demo_daemon "$work"
start_purchase_load "$work" "$terminals" "$seconds"
# Sample a third of the run once the load is on.
wait_for_load
sleep 1
window=$((seconds / 3))
if [ -n "${PERF_STAGES:-}" ]; then
  # Call graphs (DWARF: the release build keeps debug info) for the share
  # by stage of a request; fewer samples, as each carries its stack.
  perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep "$window" 2>/dev/null
else
  perf record -q -e cpu-clock -F 999 -p "$pid" -o "$work/perf.data" -- sleep "$window" 2>/dev/null
fi
wait "$bench" || true
samples=$(perf report -i "$work/perf.data" --stdio -g none --sort comm 2>/dev/null | sed -n 's/^# Samples: \([0-9.K]*\).*/\1/p')
hz=999; [ -n "${PERF_STAGES:-}" ] && hz=499
echo "daemon samples over ${window}s at $hz Hz: $samples ($hz per busy core-second)"
echo "--- share by thread group"
perf report -i "$work/perf.data" --stdio -g none --sort comm 2>/dev/null | grep -v '^#' | grep -v '^$' |
  sed 's/-[0-9]* *$//' | awk '{a[$2] += $1} END {for (k in a) printf "  %6.2f%%  %s\n", a[k], k}' | sort -rn
echo "--- share by library"
perf report -i "$work/perf.data" --stdio -g none --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -5
if [ -n "${PERF_STAGES:-}" ]; then
  echo "--- share by stage of a request"
  perf script -i "$work/perf.data" -F comm,ip,sym 2>/dev/null | python3 bench/perf_stages.py
fi
echo "--- top functions"
perf report -i "$work/perf.data" --stdio -g none --sort sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25 | cut -c1-150
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("run: ops/s", d["ops_per_sec"], "p99 ms", d["p99_ms"], "generator CPU s", d.get("generator_cpu_secs"))' "$work/bench.json"
