#!/usr/bin/env bash
# Latency while a big brand's snapshot is written, under load. Each DIR
# holds a large ledger built by bench/scale.sh (its owner key in
# DIR/owner.key), one copy per binary (`cp -a`: builds with different
# snapshot formats would otherwise replay everything at each start).
# For each CARDD binary, ROUNDS alternating pairs of open-loop purchase
# runs at RATE/s: one where no snapshot falls in the window
# (--snapshot-every far away) and one with a snapshot every third of the
# window's records. Prints p99 of both and the applier's pause per
# snapshot from the daemon's log (`stall_us`, or `encode_ms` from a build
# that encodes on the applier's behalf).
#
#   bench/snapshot-stall.sh RATE SECONDS ROUNDS CARDD=DIR [CARDD=DIR...]
#   e.g. bench/snapshot-stall.sh 8000 15 3 /tmp/cardd-old=/tmp/l10m-old target/release/cardd=/tmp/l10m
#
# Each daemon start replays the records after the newest snapshot; the
# window opens only once it listens. Runs write into DIR's brand.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { sed -n 2,16p "$0" >&2; exit 1; }
rate=$1 seconds=$2 rounds=$3; shift 3
every=$(( rate * seconds / 3 ))
work=$(mktemp -d "${TMPDIR:-/tmp}/cardd-stall.XXXXXX")
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
cargo build --release --quiet -p terminal-sim

# run CARDD DIR EVERY OUT: one daemon, one open-loop window; the report in OUT.json,
# the daemon's log in OUT.log.
run() {
  local bin=$1 dir=$2 snap_every=$3 out=$4 rc=0
  RUST_LOG=info "$bin" serve --data "$dir" --listen 127.0.0.1:0 --snapshot-every "$snap_every" \
    > "$out.serve" 2> "$out.log" &
  pid=$!
  until grep -q "listening on" "$out.serve" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "cardd serve exited" >&2; cat "$out.log" >&2; exit 1; }
    sleep 0.1
  done
  addr=$(sed -n 's/^cardd listening on //p' "$out.serve")
  ./target/release/terminal-sim bench --connect "$addr" --owner-key "$dir/owner.key" \
    --into-live-brand --terminals 64 --duration "$seconds" --cards 10000 --mix purchase=100 \
    --rate "$rate" --json > "$out.json" 2>/dev/null || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || { echo "bench failed ($rc)" >&2; exit 1; }
  kill -TERM "$pid"; wait "$pid" || true; pid=""
}

p99() { python3 -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["p99_ms"])' "$1"; }
stalls() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -o -E '(stall_us|encode_ms)=[0-9]+' | tr '\n' ' '
}

for round in $(seq "$rounds"); do
  for pair in "$@"; do
    bin=${pair%%=*} dir=${pair#*=}
    run "$bin" "$dir" 1000000000 "$work/none"
    run "$bin" "$dir" "$every" "$work/snap"
    echo "round $round $bin: p99 without a snapshot $(p99 "$work/none.json") ms," \
      "with one every $every records $(p99 "$work/snap.json") ms; pauses: $(stalls "$work/snap.log")"
  done
done
