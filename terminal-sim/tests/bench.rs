//! End-to-end test of `terminal-sim bench` against a real `cardd serve
//! --demo` daemon on a temporary data directory and an ephemeral loopback
//! port: the load generator provisions through the owner key, measures,
//! and the daemon's exported ledger agrees with what it reported.
mod common;

use std::path::Path;
use std::time::Duration;

use common::{cardd_bin, f64_of, i64_of, run_bounded, sim_bin, u64_of, Daemon, Run};
use serde_json::Value;

/// How long one command may take (setup, a short window, the report).
const CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `bin` with `args`, killing it if it overruns.
fn run(bin: &Path, args: &[&str]) -> Run {
    run_bounded(bin, args, CALL_TIMEOUT)
}

impl Daemon {
    /// `cardd audit export` over the protocol, then `cardd audit verify
    /// --json` with the server key from `cardd server-key`: the report.
    fn audit(&self, dir: &Path, name: &str) -> Value {
        let server_key = self.server_key();
        let file = dir.join(name);
        let file = file.to_str().unwrap();
        let export = run(
            &cardd_bin(),
            &[
                "audit",
                "export",
                "--connect",
                &self.addr,
                "--key",
                &self.owner_key(),
                "--out",
                file,
            ],
        );
        assert_eq!(export.code, 0, "{export:?}");
        let verify = run(
            &cardd_bin(),
            &[
                "audit",
                "verify",
                file,
                "--server-key",
                &server_key,
                "--json",
            ],
        );
        assert_eq!(verify.code, 0, "the export must verify: {verify:?}");
        serde_json::from_str(verify.stdout.trim()).expect("verify JSON")
    }
}

/// `terminal-sim bench` against the test's own demo daemon (a scratch
/// daemon, but its demo brand holds records a bench did not write).
fn bench(daemon: &Daemon, args: &[&str]) -> Run {
    let owner = daemon.owner_key();
    let mut all = vec![
        "bench",
        "--connect",
        &daemon.addr,
        "--owner-key",
        &owner,
        "--into-live-brand",
    ];
    all.extend_from_slice(args);
    run(&sim_bin(), &all)
}

/// The checks every bench report must pass.
fn check_report(r: &Run) -> Value {
    assert_eq!(r.code, 0, "bench must succeed without errors: {r:?}");
    let v = r.json();
    assert!(u64_of(&v, "ok") > 0, "{v}");
    assert_eq!(v["errors"], serde_json::json!({}), "{v}");
    assert_eq!(
        u64_of(&v, "ok"),
        u64_of(&v, "total"),
        "every request answered: {v}"
    );
    assert!(f64_of(&v, "ops_per_sec") > 0.0, "{v}");
    let (p50, p90, p99, p999, max) = (
        f64_of(&v, "p50_ms"),
        f64_of(&v, "p90_ms"),
        f64_of(&v, "p99_ms"),
        f64_of(&v, "p999_ms"),
        f64_of(&v, "max_ms"),
    );
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "percentiles in order: {v}"
    );
    assert_eq!(
        u64_of(&v, "ok"),
        u64_of(&v, "purchase_ok")
            + u64_of(&v, "topup_ok")
            + u64_of(&v, "inquiry_ok")
            + u64_of(&v, "refund_ok"),
        "{v}"
    );
    v
}

#[test]
fn bench_measures_and_the_ledger_agrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let before = daemon.audit(dir.path(), "before.export");

    // The default mix, one request at a time per terminal.
    let a = check_report(&bench(
        &daemon,
        &[
            "--terminals",
            "4",
            "--duration",
            "2",
            "--cards",
            "50",
            "--json",
        ],
    ));
    assert_eq!(u64_of(&a, "terminals"), 4);
    assert_eq!(u64_of(&a, "duration_secs"), 2);
    assert_eq!(u64_of(&a, "pipeline"), 1);
    // Closed loop: latency from the write, and no open-loop fields.
    assert_eq!(a["rate"], Value::Null, "{a}");
    assert_eq!(a["latency_from"], "write", "{a}");
    assert!(a.get("late_sends").is_none(), "{a}");
    assert_eq!(u64_of(&a, "cards"), 50);
    assert_eq!(u64_of(&a, "hot_cards"), 0);
    assert_eq!(a["mix"]["purchase"], 90);
    assert_eq!(a["mix"]["topup"], 5);
    assert_eq!(a["mix"]["inquiry"], 5);
    assert!(u64_of(&a, "purchase_ok") > 0, "{a}");
    assert_eq!(u64_of(&a, "refund_ok"), 0);
    // Store, 4 enrolments, 50 cards, at least one load per card.
    assert!(u64_of(&a, "setup_records") >= 1 + 4 + 50 + 50, "{a}");

    // Pipelined, with refunds, on a few hot cards.
    let b = check_report(&bench(
        &daemon,
        &[
            "--terminals",
            "3",
            "--duration",
            "1",
            "--cards",
            "20",
            "--pipeline",
            "4",
            "--mix",
            "purchase=70,topup=10,inquiry=10,refund=10",
            "--hot-cards",
            "2",
            "--json",
        ],
    ));
    assert_eq!(u64_of(&b, "pipeline"), 4);
    assert_eq!(u64_of(&b, "hot_cards"), 2);
    assert_eq!(u64_of(&b, "hot_share"), 90);
    assert_eq!(b["mix"]["refund"], 10);
    assert!(u64_of(&b, "refund_ok") > 0, "{b}");
    assert_ne!(a["store_id"], b["store_id"], "each run has its own store");

    // The ledger holds exactly what the runs reported, and verifies.
    let after = daemon.audit(dir.path(), "after.export");
    let written: u64 = [&a, &b]
        .iter()
        .map(|r| u64_of(r, "setup_records") + u64_of(r, "state_changing_ok"))
        .sum();
    assert_eq!(
        u64_of(&after, "records"),
        u64_of(&before, "records") + written,
        "records: before {before}, reports {a} {b}"
    );
    let total = |report: &Value, field: &str| -> i64 {
        report["totals"][field]
            .as_i64()
            .unwrap_or_else(|| panic!("no totals.{field} in {report}"))
    };
    let sum = |field: &str| i64_of(&a, field) + i64_of(&b, field);
    assert_eq!(
        total(&after, "spent_minor") - total(&before, "spent_minor"),
        sum("purchase_approved_minor") + sum("setup_purchase_minor"),
        "purchases"
    );
    assert_eq!(
        total(&after, "refunded_minor") - total(&before, "refunded_minor"),
        sum("refund_minor"),
        "refunds"
    );
    assert_eq!(
        total(&after, "loaded_paid_minor") - total(&before, "loaded_paid_minor"),
        sum("setup_funded_minor") + sum("topup_paid_minor"),
        "loads"
    );
}

#[test]
fn bench_open_loop_keeps_the_rate_and_counts_late_sends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());

    // 200/s over 4 terminals: each sends every 20 ms, far slower than a
    // till is answered, so the run keeps the rate.
    let r = check_report(&bench(
        &daemon,
        &[
            "--terminals",
            "4",
            "--duration",
            "2",
            "--rate",
            "200",
            "--cards",
            "50",
            "--json",
        ],
    ));
    assert_eq!(u64_of(&r, "rate"), 200, "{r}");
    assert_eq!(r["latency_from"], "schedule", "{r}");
    assert_eq!(u64_of(&r, "scheduled"), 400, "{r}");
    assert_eq!(u64_of(&r, "pool_requests"), 400, "{r}");
    let (total, unsent) = (u64_of(&r, "total"), u64_of(&r, "unsent"));
    assert_eq!(total + unsent, 400, "{r}");
    // Loose bounds: CI runners are shared; the point is that the rate
    // holds the load down and most slots go out.
    assert!(total >= 300, "most slots sent: {r}");
    let ops = f64_of(&r, "ops_per_sec");
    assert!(
        (100.0..=200.5).contains(&ops),
        "ops/s near the rate, never above: {r}"
    );
    // Every request's latency from its slot is at least its latency from
    // the write.
    assert!(f64_of(&r, "p99_ms") >= f64_of(&r, "service_p99_ms"), "{r}");
    assert!(f64_of(&r, "send_lag_max_ms") >= 0.0, "{r}");

    // 10,000/s from one till, one request at a time: far more than one
    // connection is answered (a round trip and a flush each), so it falls
    // behind. Nothing is dropped silently: slots held back are late sends
    // or, at the end, unsent, and latency from the schedule grows far
    // past the service time.
    let o = bench(
        &daemon,
        &[
            "--terminals",
            "1",
            "--duration",
            "1",
            "--rate",
            "10000",
            "--cards",
            "10",
            "--json",
        ],
    );
    let v = check_report(&o);
    assert_eq!(u64_of(&v, "scheduled"), 10_000, "{v}");
    assert_eq!(
        u64_of(&v, "total") + u64_of(&v, "unsent"),
        10_000,
        "every slot sent or counted unsent: {v}"
    );
    assert!(u64_of(&v, "late_sends") > 0, "{v}");
    assert!(u64_of(&v, "unsent") > 0, "{v}");
    assert!(o.stderr.contains("never sent"), "{o:?}");
    assert!(
        f64_of(&v, "p50_ms") > f64_of(&v, "service_p50_ms"),
        "latency from the schedule includes the wait: {v}"
    );
}

#[test]
fn bench_refuses_bad_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    for args in [
        &["--mix", "purchase=50,topup=10"][..],
        &["--mix", "purchase=90,coffee=10"],
        &["--cards", "10", "--hot-cards", "11"],
        &["--pipeline", "65"],
        &["--terminals", "0"],
        &["--duration", "0"],
        &["--hot-share", "50"],
        &["--rate", "0"],
        &["--rate", "1000001"],
        // More pre-signed requests than MAX_POOL.
        &["--rate", "1000000", "--duration", "6"],
    ] {
        let r = bench(&daemon, args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
    // A terminal key is not the owner's.
    let till = daemon
        .data
        .join(&daemon.manifest.stores[0].terminals[0].key);
    let r = run(
        &sim_bin(),
        &[
            "bench",
            "--connect",
            &daemon.addr,
            "--owner-key",
            till.to_str().unwrap(),
            "--duration",
            "1",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not as the brand's owner"), "{r:?}");
}

#[test]
fn bench_refuses_a_live_brand_without_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let before = daemon.audit(dir.path(), "before.export");
    let owner = daemon.owner_key();
    let args = [
        "bench",
        "--connect",
        &daemon.addr,
        "--owner-key",
        &owner,
        "--duration",
        "1",
        "--terminals",
        "2",
        "--cards",
        "10",
    ];
    let r = run(&sim_bin(), &args);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("holds records the bench did not write")
            && r.stderr.contains("--into-live-brand"),
        "{r:?}"
    );
    assert!(r.stdout.is_empty(), "{r:?}");
    let after = daemon.audit(dir.path(), "after.export");
    assert_eq!(
        after["records"], before["records"],
        "a refused bench wrote nothing"
    );
}
