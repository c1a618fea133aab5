# Shared by the bench scripts (sourced, not run).

# start_demo_daemon DIR [CARDD]: builds the release workspace and starts a
# fresh `cardd serve --demo` (CARDD, default the release build) on an
# ephemeral loopback port, its data in DIR/data (the owner key at
# DIR/data/demo/owner.key). Sets `pid` and `addr`; the caller's EXIT trap
# kills `pid`.
start_demo_daemon() {
  local dir=$1 bin=${2:-./target/release/cardd}
  cargo build --release --quiet --workspace
  "$bin" serve --data "$dir/data" --listen 127.0.0.1:0 --demo > "$dir/out" 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
  addr=$(sed -n 's/^cardd listening on //p' "$dir/out")
  [ -n "$addr" ] || { echo "$(basename "$0"): cardd did not start" >&2; exit 1; }
}
