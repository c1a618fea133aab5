#!/usr/bin/env bash
# Verify-and-replay speed on a large export (issue target: >= 100,000
# records/s on 2 cores).
#
#   bench/audit-verify.sh [RECORDS] [TERMINALS]
#       RECORDS default 1,000,000 (CI-sized: 20000); TERMINALS default 256
#
# Builds a ledger with RECORDS records signed round-robin by TERMINALS
# terminals through the state machine
# (examples/gen_ledger.rs), exports it offline, and times
# `cardd audit verify` on it (3 runs; min/median/max).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
terminals=${2:-256}
work=$(mktemp -d "${TMPDIR:-/tmp}/cardd-verify-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --bin cardd --example gen_ledger
./target/release/examples/gen_ledger "$work/data" "$records" 10000 "$terminals" 2>/dev/null
./target/release/cardd audit export --data "$work/data" --brand 1 --out "$work/export.bin"
key=$(./target/release/cardd server-key --data "$work/data")
ls -l "$work/export.bin" | awk '{print "export bytes:", $5}'
times=()
for run in 1 2 3; do
  start=$(date +%s.%N)
  ./target/release/cardd audit verify "$work/export.bin" --server-key "$key" --json >/dev/null
  end=$(date +%s.%N)
  times+=("$(echo "$end - $start" | bc)")
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
min=$(echo "$sorted" | sed -n 1p); med=$(echo "$sorted" | sed -n 2p); max=$(echo "$sorted" | sed -n 3p)
echo "verify seconds: min $min median $med max $max"
echo "records/s (median): $(echo "$records / $med" | bc)"
