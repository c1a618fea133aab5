#!/usr/bin/env bash
# A large ledger's restart time, memory and disk: builds RECORDS records
# over CARDS cards (once, in DIR), then measures `cardd serve` from start
# to accepting connections (it loads the brand's snapshot and replays the
# records after it) and `cardd check` (a full replay from the first
# record), ROUNDS times each, with peak RSS from /usr/bin/time.
#
#   bench/scale.sh DIR [RECORDS] [CARDS] [ROUNDS]    defaults 10000000 1000000 3
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,11p "$0" >&2; exit 1; }
dir=$1 records=${2:-10000000} cards=${3:-1000000} rounds=${4:-3} checks=${5:-1}
cargo build --release --quiet --bin cardd --example gen_ledger
if [ ! -d "$dir" ]; then
  ./target/release/examples/gen_ledger "$dir" "$records" "$cards" 256 2>/dev/null
fi
echo "disk: $(du -sb "$dir" | cut -f1) bytes in $dir ($(du -sb "$dir/snapshots" | cut -f1) of them snapshots)"
out=$(mktemp -d "${TMPDIR:-/tmp}/cardd-scale.XXXXXX")
trap 'rm -rf "$out"' EXIT
for round in $(seq "$rounds"); do
  rm -f "$out/serve"
  start=$(date +%s%N)
  RUST_LOG=info /usr/bin/time -f "%M" -o "$out/rss" ./target/release/cardd serve \
    --data "$dir" --listen 127.0.0.1:0 > "$out/serve" 2> "$out/log" &
  pid=$!
  until grep -q "listening on" "$out/serve" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "cardd serve exited" >&2; exit 1; }
    sleep 0.02
  done
  ready=$(( ($(date +%s%N) - start) / 1000000 ))
  kill -KILL $(pgrep -P "$pid") 2>/dev/null || true
  wait "$pid" || true
  steps=$(sed 's/\x1b\[[0-9;]*m//g' "$out/log" | grep -o -E '(open_ms|load_ms|replayed|replay_ms|encode_ms|store_ms)=[0-9]+' | tr '\n' ' ')
  echo "round $round: serve ready in ${ready} ms ($steps), peak RSS $(( $(tail -1 "$out/rss") / 1024 )) MB"
done
for round in $(seq "$checks"); do
  /usr/bin/time -f "%e %M" -o "$out/check" ./target/release/cardd check --data "$dir" > /dev/null
  read -r secs rss < "$out/check"
  echo "round $round: check (full replay) ${secs} s, peak RSS $(( rss / 1024 )) MB"
done
