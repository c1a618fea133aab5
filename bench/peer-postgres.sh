#!/usr/bin/env bash
# Side by side on this machine, in one run: the same purchase on
# PostgreSQL (debit with a balance check + ledger insert, one transaction,
# default durability; driven by pgbench with prepared statements, the
# purchase as one statement so that it costs one round trip) and on cardd (every request
# ed25519-signed by its terminal and verified by the server, group-committed
# with a signed Merkle checkpoint per batch; driven by terminal-sim bench).
#
#   bench/peer-postgres.sh [CLIENTS] [SECONDS] [CARDS]     # default 256 20 10000
#   bench/peer-postgres.sh 8 3 1000                         # a quick run
#
# PostgreSQL comes from the distribution's packages (installed if missing)
# and listens on loopback only, in a throw-away directory.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-256}
seconds=${2:-20}
cards=${3:-10000}
work=$(mktemp -d "${TMPDIR:-/tmp}/cardd-peer.XXXXXX")
pgport=54329
cardd_pid=""
cleanup() {
  [ -n "$cardd_pid" ] && kill "$cardd_pid" 2>/dev/null || true
  [ -d "$work/pg" ] && su postgres -c "pg_ctl -D '$work/pg' stop -m fast" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
export PATH="$pgbin:$PATH"
chown postgres "$work" 2>/dev/null || true
chmod 755 "$work"

echo "== PostgreSQL ($("$pgbin/postgres" --version)), $clients clients, ${seconds}s"
su postgres -c "initdb -D '$work/pg' -A trust -U postgres" >/dev/null
su postgres -c "pg_ctl -D '$work/pg' -o '-p $pgport -k $work -c listen_addresses=127.0.0.1 -c max_connections=$((clients + 20))' -l '$work/pg.log' -w start" >/dev/null
psql() { command psql -h 127.0.0.1 -p "$pgport" -U postgres -v ON_ERROR_STOP=1 -q "$@"; }
psql -c "CREATE TABLE cards (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
         CREATE TABLE ledger (id bigserial PRIMARY KEY, card bigint NOT NULL, amount bigint NOT NULL,
                              balance_after bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
         INSERT INTO cards SELECT g, 100000000000 FROM generate_series(1, $cards) g;"
psql -c "VACUUM ANALYZE"
cat > "$work/purchase.sql" <<SQL
\set card random(1, $cards)
\set amount random(100, 5000)
WITH d AS (UPDATE cards SET balance = balance - :amount WHERE id = :card AND balance >= :amount RETURNING id, balance)
INSERT INTO ledger (card, amount, balance_after) SELECT id, :amount, balance FROM d;
SQL
pg_out=$(pgbench -h 127.0.0.1 -p "$pgport" -U postgres -n -M prepared -c "$clients" -j 2 -T "$seconds" -f "$work/purchase.sql" postgres 2>&1)
pg_tps=$(echo "$pg_out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
pg_lat=$(echo "$pg_out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
echo "postgres: $pg_tps purchases/s (latency average $pg_lat ms)"
su postgres -c "pg_ctl -D '$work/pg' stop -m fast" >/dev/null

echo "== cardd, $clients terminals, ${seconds}s"
cargo build --release --quiet --workspace
./target/release/cardd serve --data "$work/cardd" --listen 127.0.0.1:0 --demo > "$work/cardd.out" 2> "$work/cardd.err" &
cardd_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/cardd.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^cardd listening on //p' "$work/cardd.out")
cardd_json=$(./target/release/terminal-sim bench --connect "$addr" --owner-key "$work/cardd/demo/owner.key" --into-live-brand \
  --terminals "$clients" --duration "$seconds" --cards "$cards" --mix purchase=100 --json \
  --max-requests "$(( seconds * 100000 > 2000000 ? 2000000 : seconds * 100000 ))")
echo "$cardd_json"
cardd_ops=$(echo "$cardd_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ops_per_sec"])')
echo "cardd: $cardd_ops purchases/s"
python3 - "$pg_tps" "$cardd_ops" <<'PY'
import sys
pg, cd = float(sys.argv[1]), float(sys.argv[2])
print(f"ratio cardd/postgres: {cd / pg:.2f}x")
PY
