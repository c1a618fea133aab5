#!/usr/bin/env bash
# The longer soak of replication (docs/replication.md): the Jepsen-style
# test of tests/replication/jepsen.rs (two tills buying through a kill -9 of
# the active, a SIGSTOP past the lease and a lost NATS node; every
# acknowledged purchase exactly once, money conserved, both nodes' exports
# the same bytes) run ROUNDS times on fresh clusters, stopping at the first
# failure, plus the other failover tests once per round. Each round takes
# about half a minute.
#
#   bench/replication-soak.sh [ROUNDS]      default 20
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
CARDD_NATS_SERVER="$(scripts/install-nats.sh)"
export CARDD_NATS_SERVER
cargo test --quiet --test replication --no-run
for round in $(seq "$rounds"); do
  start=$(date +%s)
  if ! cargo test --quiet --test replication -- jepsen failover > "/tmp/cardd-repl-soak.$round.log" 2>&1; then
    echo "round $round FAILED: /tmp/cardd-repl-soak.$round.log" >&2
    exit 1
  fi
  echo "round $round ok ($(( $(date +%s) - start )) s)"
  rm -f "/tmp/cardd-repl-soak.$round.log"
done
echo "$rounds rounds ok"
