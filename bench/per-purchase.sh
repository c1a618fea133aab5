#!/usr/bin/env bash
# What one purchase costs the daemon, over a window in the middle of a
# purchase load (issue 17 item 2): user and system CPU, system calls and
# context switches per purchase, and how the request signatures were
# batched (the cardd_verify_batch_signatures histogram).
#
#   bench/per-purchase.sh [CARDD] [TERMINALS] [SECONDS]   defaults: release build, 256, 16
#
# Purchases are counted from the daemon's own metrics over the same window
# as the CPU and the counters. Needs `perf` (Debian: linux-perf) for the
# system-call and context-switch counts (software events: they work on VMs
# that expose no hardware counters).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-./target/release/cardd}")
terminals=${2:-256}
seconds=${3:-16}
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/cardd-per-purchase.XXXXXX")
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
. bench/lib.sh
start_demo_daemon "$work" "$bin" --http-listen 127.0.0.1:0
http=$(sed -n 's/.*addr=\([0-9.:]*\).*HTTP listener.*/\1/p; s/.*HTTP listener.*addr=\([0-9.:]*\).*/\1/p' "$work/err" | head -1)
[ -n "$http" ] || { echo "no HTTP listener in cardd's log" >&2; cat "$work/err" >&2; exit 1; }
metrics() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("http://'"$http"'/metrics").read().decode())'; }
start_purchase_load "$work" "$terminals" "$seconds"
wait_for_load
sleep 1
window=$((seconds / 3))
metrics > "$work/m0"
cpu0=$(awk '{print $14, $15}' /proc/"$pid"/stat)
perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$work/stat" -- sleep "$window" 2>/dev/null
cpu1=$(awk '{print $14, $15}' /proc/"$pid"/stat)
metrics > "$work/m1"
wait "$bench" || true
python3 - "$work" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" "$window" <<'PY'
import re, sys
work, cpu0, cpu1, tck, window = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), int(sys.argv[5])

def series(path):
    out = {}
    for line in open(path):
        m = re.match(r'^(cardd_[^ ]+) ([0-9.e+-]+)$', line.strip())
        if m:
            out[m.group(1)] = float(m.group(2))
    return out

m0, m1 = series(f"{work}/m0"), series(f"{work}/m1")
key = 'cardd_requests_total{op="purchase",result="ok"}'
ops = m1.get(key, 0) - m0.get(key, 0)
if ops <= 0:
    sys.exit("no purchases in the window")
user = (int(cpu1[0]) - int(cpu0[0])) / tck * 1e6 / ops
system = (int(cpu1[1]) - int(cpu0[1])) / tck * 1e6 / ops
counts = {}
for line in open(f"{work}/stat"):
    parts = line.strip().split(',')
    if len(parts) > 2 and parts[0].replace('.', '').isdigit():
        counts[parts[2]] = float(parts[0])
print(f"window {window} s: {ops:.0f} purchases ({ops / window:.0f}/s)")
print(f"daemon CPU per purchase: user {user:.1f} us, system {system:.1f} us, total {user + system:.1f} us")
for event, name in [('raw_syscalls:sys_enter', 'system calls'), ('context-switches', 'context switches')]:
    if event in counts:
        print(f"{name} per purchase: {counts[event] / ops:.2f}")
# The verifier's batches over the window, by bucket (upper bound: count).
prefix = 'cardd_verify_batch_signatures_bucket{le="'
buckets = sorted(((float(k[len(prefix):-2]), m1[k] - m0.get(k, 0)) for k in m1 if k.startswith(prefix)))
batches = m1.get('cardd_verify_batch_signatures_count', 0) - m0.get('cardd_verify_batch_signatures_count', 0)
sigs = m1.get('cardd_verify_batch_signatures_sum', 0) - m0.get('cardd_verify_batch_signatures_sum', 0)
if batches > 0:
    singles = dict(buckets).get(1.0, 0)
    print(f"signature batches: {batches:.0f}, {sigs / batches:.1f} signatures each on average; "
          f"{singles / batches:.0%} of batches ({singles / sigs:.1%} of signatures) checked alone")
    prev = 0
    for le, cum in buckets:
        if le == float('inf'):
            continue
        print(f"  batches of <= {le:>4.0f}: {cum - prev:8.0f}")
        prev = cum
PY
