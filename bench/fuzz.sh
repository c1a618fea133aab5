#!/usr/bin/env bash
# Runs each cargo-fuzz target for a number of seconds and prints libFuzzer's
# summary for each: executions, coverage (cov/ft), corpus size, crashes.
#
#   bench/fuzz.sh [SECONDS] [TARGET...]      (default: 600 s, all targets)
#   FUZZ_CMIN=1 bench/fuzz.sh 600            also minimise each corpus after
#                                            (cmin renames files: rerun the
#                                            seed writer, docs/fuzzing.md)
#
# Only stable Rust is installed here: cargo-fuzz's nightly flags
# (-Zsanitizer, -Cpasses=sancov) are enabled with RUSTC_BOOTSTRAP=1.
# Targets run one after another (the fuzz crate builds once, with debug
# assertions and overflow checks: -a). Full logs: fuzz/artifacts/logs/.
# See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame_decoder request_handler export_parser)
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build -a >&2

mkdir -p artifacts/logs
printf '%-16s %8s %12s %7s %8s %8s %8s  %s\n' target seconds execs cov ft corpus crashes log
for t in "${targets[@]}"; do
    log="artifacts/logs/$t-$(date -u +%Y%m%dT%H%M%SZ).log"
    marker=$(mktemp)
    start=$(date +%s)
    set +e
    cargo fuzz run -a "$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - start))
    # The last status line ("#N DONE cov: C ft: F corp: ...", or the last
    # pulse if libFuzzer stopped on a crash).
    last=$(grep -E '^#[0-9]+[[:space:]].*cov: ' "$log" | tail -n 1 || true)
    execs=$(grep -oE '^stat::number_of_executed_units: [0-9]+' "$log" | awk '{print $2}' | tail -n 1)
    [ -n "$execs" ] || execs=$(echo "$last" | sed -E 's/^#([0-9]+).*/\1/')
    cov=$(echo "$last" | sed -nE 's/.* cov: ([0-9]+).*/\1/p')
    ft=$(echo "$last" | sed -nE 's/.* ft: ([0-9]+).*/\1/p')
    if [ "${FUZZ_CMIN:-0}" = 1 ]; then
        # Keep one input per covered edge (counters off), not per hit count.
        cargo fuzz cmin -a "$t" -- -use_counters=0 >>"$log" 2>&1
    fi
    corpus=$(find "corpus/$t" -type f | wc -l)
    crashes=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) -newer "$marker" 2>/dev/null | wc -l)
    rm -f "$marker"
    [ "$rc" = 0 ] || crashes="$crashes(rc=$rc)"
    printf '%-16s %8s %12s %7s %8s %8s %8s  %s\n' "$t" "$took" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$corpus" "$crashes" "fuzz/$log"
    echo "    $last"
    grep -E '^Done [0-9]+ runs' "$log" | sed 's/^/    /' || true
done
