#!/usr/bin/env bash
# Crash soak, long mode: terminals run purchases, top-ups, refunds and
# reversals with drops and retries while the daemon is SIGKILLed and
# restarted CYCLES times; after every restart the test checks exactly-once,
# the money, the live balances against its model and the audit
# verify-and-replay (tests/soak.rs). CI runs the short mode (5 cycles) as
# part of `cargo test`.
#
#   bench/soak.sh [CYCLES]          # default 200
#   CARDD_SOAK_SEED=<n> bench/soak.sh 200   # replay a seed's choices
#
# Prints the test's per-cycle lines, then a summary of its final
# `SOAK SUMMARY` line. Exits non-zero if the soak fails.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-200}
case "$cycles" in
  '' | *[!0-9]*) echo "usage: $0 [CYCLES]" >&2; exit 2 ;;
esac
log=$(mktemp "${TMPDIR:-/tmp}/cardd-soak.XXXXXX")
trap 'rm -f "$log"' EXIT

# Build first, so that the duration below is the soak's alone.
cargo test --release --test soak --no-run --quiet
start=$(date +%s.%N)
set +e
CARDD_SOAK_CYCLES=$cycles cargo test --release --quiet --test soak -- --nocapture 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)

summary=$(grep '^SOAK SUMMARY' "$log" | tail -n 1 || true)
echo
if [ "$status" -ne 0 ] || [ -z "$summary" ]; then
  echo "soak FAILED after $(echo "$end - $start" | bc) s (exit $status); see the output above"
  exit 1
fi
field() { echo "$summary" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
echo "soak passed: $(field cycles) SIGKILL cycles (seed $(field seed))"
echo "  operations sent          $(field operations)"
echo "  acknowledged             $(field acknowledged)"
echo "  refused as predicted     $(field refused_as_predicted)"
echo "  duplicate sends          $(field duplicates)"
echo "  dropped connections      $(field dropped_connections) (settled in cycle: $(field resolved_in_cycle))"
echo "  unknown at a kill        $(field unknown_at_kill) (resolved after crash: $(field resolved_after_crash))"
echo "    found committed        $(field found_committed)"
echo "    applied by retry       $(field applied_by_retry)"
echo "    refused again          $(field refused_on_retry)"
echo "    reversed / tombstoned  $(field reversed_unknown) / $(field tombstoned_unknown)"
echo "  ledger records verified  $(field records)"
echo "  test duration            $(field duration_s) s (wall, with cargo: $(echo "$end - $start" | bc) s)"
echo "$summary"
