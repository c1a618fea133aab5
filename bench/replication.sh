#!/usr/bin/env bash
# Replication's cost and the standby's lag (docs/replication.md), in one
# sitting: ROUNDS alternating runs of the same purchases-only
# `terminal-sim bench` against a fresh `--demo` daemon without and with
# `--replicate` (a 3-node NATS JetStream cluster on loopback ports, file
# storage, started here), and during each replicated run a `--standby`
# whose record count is sampled against the active's every 0.2 s (the lag,
# in records, from both nodes' /metrics).
#
#   bench/replication.sh [TERMINALS] [SECONDS] [ROUNDS]     defaults 64 10 3
set -euo pipefail
cd "$(dirname "$0")/.."
terminals=${1:-64}
seconds=${2:-10}
rounds=${3:-3}
nats_bin=$(scripts/install-nats.sh)
work=$(mktemp -d "${TMPDIR:-/tmp}/cardd-repl.XXXXXX")
pids=()
pid=""
cleanup() { for p in "${pids[@]}" $pid; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
. bench/lib.sh
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The cluster: three nodes, each its client, monitoring and route port.
routes=(); clients=()
for i in 0 1 2; do routes+=("$(free_port)"); clients+=("$(free_port)"); done
route_list=$(printf '"nats-route://127.0.0.1:%s",' "${routes[@]}"); route_list=${route_list%,}
for i in 0 1 2; do
  mkdir -p "$work/n$i"
  cat > "$work/n$i.conf" <<CONF
server_name: n$i
listen: "127.0.0.1:${clients[$i]}"
http: "127.0.0.1:$(free_port)"
jetstream { store_dir: "$work/n$i", max_file_store: 8GB }
cluster { name: cardd-bench, listen: "127.0.0.1:${routes[$i]}", routes: [$route_list] }
CONF
  "$nats_bin" --config "$work/n$i.conf" > "$work/n$i.log" 2>&1 &
  pids+=($!)
done
urls=$(printf 'nats://127.0.0.1:%s,' "${clients[@]}"); urls=${urls%,}
sleep 3

records() { curl -s "http://$1/metrics" | sed -n 's/^cardd_records{brand="1"} //p'; }

cargo build --release --quiet --workspace
for round in $(seq "$rounds"); do
  for side in single replicated; do
    dir="$work/$round-$side"; mkdir -p "$dir"
    http="127.0.0.1:$(free_port)"
    extra=(--http-listen "$http")
    [ "$side" = replicated ] && extra+=(--replicate "$urls")
    ./target/release/cardd serve --data "$dir/data" --listen 127.0.0.1:0 --demo "${extra[@]}" > "$dir/out" 2>"$dir/err" &
    pid=$!
    for _ in $(seq 100); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
    addr=$(sed -n 's/^cardd listening on //p' "$dir/out")
    spid=""
    if [ "$side" = replicated ]; then
      mkdir -p "$dir/standby"; cp "$dir/data/server.key" "$dir/standby/"
      shttp="127.0.0.1:$(free_port)"
      ./target/release/cardd serve --data "$dir/standby" --listen 127.0.0.1:0 --standby \
        --replicate "$urls" --http-listen "$shttp" > "$dir/sout" 2>"$dir/serr" &
      spid=$!; pids+=("$spid")
      ( while kill -0 "$spid" 2>/dev/null; do
          a=$(records "$http"); s=$(records "$shttp"); [ -n "$a" ] && [ -n "$s" ] && echo $((a - s))
          sleep 0.2; done > "$dir/lag" ) &
    fi
    ./target/release/terminal-sim bench --connect "$addr" --owner-key "$dir/data/demo/owner.key" --into-live-brand \
      --terminals "$terminals" --duration "$seconds" --cards 10000 --mix purchase=100 --json \
      > "$dir/bench.json" 2>/dev/null || true
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    [ -n "$spid" ] && { sleep 1; kill "$spid"; wait "$spid" 2>/dev/null || true; }
    python3 - "$dir/bench.json" "$side" "$round" "$dir/lag" <<'PY'
import json, os, sys
j = json.load(open(sys.argv[1]))
line = f"round {sys.argv[3]} {sys.argv[2]:10}: ops/s {j['ops_per_sec']:9.1f}  p50 {j['p50_ms']:7.2f} ms  p99 {j['p99_ms']:7.2f} ms  errors {j['errors'] or 'none'}"
if os.path.exists(sys.argv[4]):
    lag = sorted(int(x) for x in open(sys.argv[4]) if x.strip())
    if lag:
        line += f"  standby lag p50 {lag[len(lag)//2]} p99 {lag[min(len(lag)-1, len(lag)*99//100)]} max {lag[-1]} records"
print(line)
PY
    rm -rf "$dir"
  done
done
