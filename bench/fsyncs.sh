#!/usr/bin/env bash
# Counts the daemon's fsyncs under a purchase load and sets them against
# the commits it made: fsync-family calls per second and per commit, and
# records per commit (read from the frame headers of the brand's log).
#
#   bench/fsyncs.sh [CARDD] [TERMINALS] [SECONDS]      defaults: release build, 256, 10
#
# strace slows every syscall, so read purchases/s from bench/ab.sh, not from
# this; what this gives is the ratio of fsyncs to commits, which strace
# does not change.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-./target/release/cardd}")
terminals=${2:-256}
seconds=${3:-10}
command -v strace >/dev/null || { echo "needs strace (apt-get install strace)" >&2; exit 1; }
pid=""
work=$(mktemp -d "${TMPDIR:-/tmp}/cardd-fsyncs.XXXXXX")
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
. bench/lib.sh
start_demo_daemon "$work" "$bin"
frames_before=$(python3 bench/log_frames.py "$work/data/log")
strace -f -c -e trace=fsync,fdatasync,sync_file_range,msync -p "$pid" -o "$work/strace" &
tracer=$!
sleep 0.5
start_purchase_load "$work" "$terminals" "$seconds"
wait "$bench" || true
kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
frames_after=$(python3 bench/log_frames.py "$work/data/log")
python3 - "$work/strace" "$work/bench.json" "$frames_before" "$frames_after" <<'PY'
import json, sys
calls = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 5 and parts[-1] in ("fsync", "fdatasync", "sync_file_range", "msync"):
        calls[parts[-1]] = int(parts[3])
b = json.load(open(sys.argv[2]))
f0, r0 = map(int, sys.argv[3].split())
f1, r1 = map(int, sys.argv[4].split())
commits, records = f1 - f0, r1 - r0
secs = b.get("duration_secs") or b.get("seconds") or 1
total = sum(calls.values())
print(f"syscalls during the load: {calls}")
print(f"commits {commits}, records {records}, records/commit {records / max(commits, 1):.1f}")
print(f"fsync-family calls/commit {total / max(commits, 1):.2f}"
      f" (fdatasync/commit {calls.get('fdatasync', 0) / max(commits, 1):.2f})")
print(f"purchases/s under strace {b['ops_per_sec']:.0f} (strace slows syscalls: see bench/ab.sh)")
PY
