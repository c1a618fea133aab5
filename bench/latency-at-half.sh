#!/usr/bin/env bash
# Latency at half of peak throughput (the target: p99 under 10 ms). A
# closed-loop `terminal-sim bench` finds the peak ops/s; then an open-loop
# run (`--rate`) at half of it measures latency from each request's
# scheduled send time, so a slow answer also counts in the requests it
# held back. One fresh `--demo` daemon serves both runs.
#
#   bench/latency-at-half.sh [TERMINALS] [SECONDS]     # default 256 10
#   MIX=purchase=90,topup=5,inquiry=5 bench/latency-at-half.sh   # default purchase=100
set -euo pipefail
cd "$(dirname "$0")/.."
terminals=${1:-256}
seconds=${2:-10}
mix=${MIX:-purchase=100}
work=$(mktemp -d "${TMPDIR:-/tmp}/cardd-half.XXXXXX")
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
. bench/lib.sh
start_demo_daemon "$work"

# bench OUT [ARGS...]: one run's JSON report in OUT. Exit code 2 (some
# requests refused or unanswered) still gives a report, shown below.
bench() {
  local out=$1; shift
  local rc=0
  ./target/release/terminal-sim bench --connect "$addr" --owner-key "$work/data/demo/owner.key" --into-live-brand \
    --terminals "$terminals" --duration "$seconds" --cards 10000 --mix "$mix" --json "$@" > "$out" || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || { echo "latency-at-half: bench failed ($rc)" >&2; exit 1; }
}
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
show() {
  python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
errors = ", ".join(f"{k} {v}" for k, v in d["errors"].items()) or "none"
print(f"{sys.argv[1]:<24} ops/s {d['ops_per_sec']:>9.1f}  p50 {d['p50_ms']:8.3f} ms  "
      f"p99 {d['p99_ms']:8.3f} ms  p99.9 {d['p999_ms']:8.3f} ms  errors {errors}")
if d.get("rate") is not None:
    print(f"{'':<24} latency from the {d['latency_from']}; {d['late_sends']} late sends, "
          f"{d['unsent']} of {d['scheduled']} never sent; service (from the write) "
          f"p99 {d['service_p99_ms']:.3f} ms; generator send lag p99 {d['send_lag_p99_ms']:.3f} ms")
PY
}

bench "$work/peak.json"
peak=$(field "$work/peak.json" ops_per_sec)
rate=$(python3 -c 'import sys; print(max(1, int(float(sys.argv[1]) / 2)))' "$peak")
bench "$work/half.json" --rate "$rate"

echo "$terminals terminals, $seconds s per run, mix $mix"
show "closed loop (peak)" "$work/peak.json"
show "open loop --rate $rate" "$work/half.json"
python3 - "$work/half.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ok = d["p99_ms"] < 10.0
print(f"p99 at half of peak: {d['p99_ms']:.3f} ms: {'under' if ok else 'NOT under'} 10 ms")
PY
