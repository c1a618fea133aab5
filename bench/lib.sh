# Shared by the bench scripts (sourced, not run).

# start_demo_daemon DIR [CARDD [FLAG...]]: builds the release workspace and
# starts a fresh `cardd serve --demo` (CARDD, default the release build;
# FLAGs added) on an ephemeral loopback port, its data in DIR/data (the
# owner key at DIR/data/demo/owner.key), its log in DIR/err. Sets `pid`
# and `addr`; the caller's EXIT trap kills `pid`.
start_demo_daemon() {
  local dir=$1 bin=${2:-./target/release/cardd}
  shift $(( $# < 2 ? $# : 2 ))
  cargo build --release --quiet --workspace
  "$bin" serve --data "$dir/data" --listen 127.0.0.1:0 --demo "$@" > "$dir/out" 2> "$dir/err" &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
  addr=$(sed -n 's/^cardd listening on //p' "$dir/out")
  [ -n "$addr" ] || { echo "$(basename "$0"): cardd did not start" >&2; exit 1; }
}

# start_purchase_load DIR TERMINALS SECONDS: a purchases-only
# `terminal-sim bench` against the daemon started by start_demo_daemon, in
# the background, its JSON in DIR/bench.json. Sets `bench` (its pid).
start_purchase_load() {
  local dir=$1 terminals=$2 seconds=$3
  ./target/release/terminal-sim bench --connect "$addr" --owner-key "$dir/data/demo/owner.key" --into-live-brand \
    --terminals "$terminals" --duration "$seconds" --cards 10000 --mix purchase=100 --json \
    > "$dir/bench.json" 2>/dev/null &
  bench=$!
}

# wait_for_load: returns once the load of start_purchase_load is on the
# daemon `pid`. Provisioning (daemon busy) and pre-signing (daemon idle; on
# a loaded machine longer than half the run) come first, so this waits for
# busy, idle, then busy again (over 0.3 of a core per half second).
wait_for_load() {
  local ticks prev now busy phase=0
  ticks=$(getconf CLK_TCK)
  prev=$(awk '{print $14 + $15}' /proc/"$pid"/stat)
  while [ "$phase" -lt 3 ] && kill -0 "$bench" 2>/dev/null; do
    sleep 0.5
    now=$(awk '{print $14 + $15}' /proc/"$pid"/stat)
    busy=$(( (now - prev) * 10 > ticks * 3 / 2 )); prev=$now
    case "$phase$busy" in 01|10|21) phase=$((phase + 1)) ;; esac
  done
}
