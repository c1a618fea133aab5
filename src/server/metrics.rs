//! The daemon's metrics, read as Prometheus text at `GET /metrics` on the
//! HTTP listener (`http.rs`). Names start with `cardd_`.
//!
//! The hot path stays cheap: every series a request touches is an atomic
//! reached without a lock or an allocation. Counters by operation and
//! result (and latency histograms per operation) are resolved once into
//! tables of `OnceLock`s: only the first request of a pair takes the
//! registry's lock, and a series appears once it has a sample. The
//! `prometheus` crate's histograms observe with atomics only. The metrics
//! are process-wide ([`get`]): one daemon per process.
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::pb::request::Op;
use crate::pb::ErrorCode;

/// The operations counted, by index ([`op_index`]); 0 is a request whose
/// operation is not known (refused before it was decoded).
pub const OPS: &[&str] = &[
    "unknown",
    "inquiry",
    "purchase",
    "top_up",
    "refund",
    "reversal",
    "redeem_points",
    "close_shift",
    "txn_status",
    "create_store",
    "enroll_terminal",
    "issue_card",
    "set_card_blocked",
    "replace_card",
    "set_rules",
    "export_ledger",
    "consistency_proof",
    "set_terminal_disabled",
    "report",
    "add_key",
    "remove_key",
    "web_login",
    "create_brand",
    "set_holder",
    "holder_data",
    "find_card",
    "erase_holder",
    "set_pin",
    "set_pin_lock",
    "adjust_card",
    "void_top_up",
    "close_card",
    "set_card_expiry",
    "rotate_owner_key",
    "rekey_terminal",
    "rotate_server_key",
];

/// Results per operation: "ok" at 0, then every error code by its number
/// (the highest is NOT_ACTIVE; a test checks no code lies past it).
const RESULTS: usize = 1 + ErrorCode::NotActive as usize + 1;

/// The index of `op` in [`OPS`].
pub fn op_index(op: Option<&Op>) -> u8 {
    match op {
        None => 0,
        Some(Op::Inquiry(_)) => 1,
        Some(Op::Purchase(_)) => 2,
        Some(Op::TopUp(_)) => 3,
        Some(Op::Refund(_)) => 4,
        Some(Op::Reversal(_)) => 5,
        Some(Op::RedeemPoints(_)) => 6,
        Some(Op::CloseShift(_)) => 7,
        Some(Op::TxnStatus(_)) => 8,
        Some(Op::CreateStore(_)) => 9,
        Some(Op::EnrollTerminal(_)) => 10,
        Some(Op::IssueCard(_)) => 11,
        Some(Op::SetCardBlocked(_)) => 12,
        Some(Op::ReplaceCard(_)) => 13,
        Some(Op::SetRules(_)) => 14,
        Some(Op::ExportLedger(_)) => 15,
        Some(Op::ConsistencyProof(_)) => 16,
        Some(Op::SetTerminalDisabled(_)) => 17,
        Some(Op::Report(_)) => 18,
        Some(Op::AddKey(_)) => 19,
        Some(Op::RemoveKey(_)) => 20,
        Some(Op::WebLogin(_)) => 21,
        Some(Op::CreateBrand(_)) => 22,
        Some(Op::SetHolder(_)) => 23,
        Some(Op::HolderData(_)) => 24,
        Some(Op::FindCard(_)) => 25,
        Some(Op::EraseHolder(_)) => 26,
        Some(Op::SetPin(_)) => 27,
        Some(Op::SetPinLock(_)) => 28,
        Some(Op::AdjustCard(_)) => 29,
        Some(Op::VoidTopUp(_)) => 30,
        Some(Op::CloseCard(_)) => 31,
        Some(Op::SetCardExpiry(_)) => 32,
        Some(Op::RotateOwnerKey(_)) => 33,
        Some(Op::RekeyTerminal(_)) => 34,
        // Last: the table's length is checked against it.
        Some(Op::RotateServerKey(_)) => 35,
    }
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_cells: Vec<OnceLock<IntCounter>>,
    latency: HistogramVec,
    latency_cells: Vec<OnceLock<Histogram>>,
    /// Records per durable commit (one log frame, one fdatasync).
    pub commit_batch: Histogram,
    /// Request signatures per check on a verifier thread (1: checked alone,
    /// at about three times the cost of one in a large batch).
    pub verify_batch: Histogram,
    /// Requests and sign-ons queued at the brands' writers.
    pub queue_depth: IntGauge,
    /// Terminal-port connections open now.
    pub connections: IntGauge,
    /// Terminal-port connections accepted since start.
    pub connections_accepted: IntCounter,
    /// Sign-ons refused (unknown key, bad proof, over quota, …).
    pub sign_on_failures: IntCounter,
    /// Checkpoints made durable (one per commit that wrote records).
    pub checkpoints: IntCounter,
    records: IntGaugeVec,
    refused: IntGaugeVec,
    /// Time to encode and store one snapshot.
    pub snapshot_seconds: Histogram,
    /// Time a brand's applier was held by one snapshot (the fork).
    pub snapshot_stall_seconds: Histogram,
    /// The start-up's recovery (every brand) took this long.
    pub recovery_seconds: Gauge,
}

/// A terminal-port connection, counted in `cardd_connections` for as long
/// as this lives (however its task ends).
pub struct OpenConnection(());

impl OpenConnection {
    /// Counts a connection just accepted.
    pub fn count() -> OpenConnection {
        let m = get();
        m.connections_accepted.inc();
        m.connections.inc();
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        get().connections.dec();
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("a valid gauge");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("a valid histogram");
    registry
        .register(Box::new(h.clone()))
        .expect("registered once");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new_custom(Some("cardd".into()), None).expect("a valid prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests answered, by operation and result",
            ),
            &["op", "result"],
        )
        .expect("a valid counter");
        r.register(Box::new(requests.clone()))
            .expect("registered once");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "request_seconds",
                "From reading a request to writing its durable answer",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("buckets")),
            &["op"],
        )
        .expect("a valid histogram");
        r.register(Box::new(latency.clone()))
            .expect("registered once");
        let records = IntGaugeVec::new(
            Opts::new("records", "Records in each brand's ledger"),
            &["brand"],
        )
        .expect("a valid gauge");
        r.register(Box::new(records.clone()))
            .expect("registered once");
        let refused = IntGaugeVec::new(
            Opts::new(
                "brand_refused",
                "1 for each brand refused at start-up: its ledger on disk is damaged",
            ),
            &["brand"],
        )
        .expect("a valid gauge");
        r.register(Box::new(refused.clone()))
            .expect("registered once");
        let recovery_seconds = Gauge::new("recovery_seconds", "How long start-up recovery took")
            .expect("a valid gauge");
        r.register(Box::new(recovery_seconds.clone()))
            .expect("registered once");
        let batch_buckets = prometheus::exponential_buckets(1.0, 2.0, 12).expect("buckets");
        let snapshot_buckets = prometheus::exponential_buckets(0.01, 4.0, 8).expect("buckets");
        // 100 µs to 1.6 s: a fork takes milliseconds, an in-process encode
        // (when the fork fails) up to seconds.
        let stall_buckets = prometheus::exponential_buckets(0.0001, 4.0, 8).expect("buckets");
        Metrics {
            request_cells: (0..OPS.len() * RESULTS).map(|_| OnceLock::new()).collect(),
            latency_cells: OPS.iter().map(|_| OnceLock::new()).collect(),
            latency,
            requests,
            records,
            refused,
            recovery_seconds,
            commit_batch: histogram(
                &r,
                "commit_batch_records",
                "Records per durable commit",
                batch_buckets.clone(),
            ),
            verify_batch: histogram(
                &r,
                "verify_batch_signatures",
                "Request signatures checked together on a verifier thread",
                batch_buckets,
            ),
            queue_depth: gauge(
                &r,
                "writer_queue_depth",
                "Requests queued at the brands' writers",
            ),
            connections: gauge(&r, "connections", "Terminal-port connections open"),
            connections_accepted: counter(
                &r,
                "connections_accepted_total",
                "Terminal-port connections accepted",
            ),
            sign_on_failures: counter(&r, "sign_on_failures_total", "Sign-ons refused"),
            checkpoints: counter(&r, "checkpoints_total", "Checkpoints made durable"),
            snapshot_seconds: histogram(
                &r,
                "snapshot_seconds",
                "Encoding and storing one snapshot",
                snapshot_buckets,
            ),
            snapshot_stall_seconds: histogram(
                &r,
                "snapshot_stall_seconds",
                "The applier's pause for one snapshot",
                stall_buckets,
            ),
            registry: r,
        }
    }

    /// Counts one answered request of operation `op` ([`op_index`]) with
    /// `result` (None: it succeeded) that took `took`.
    pub fn answered(&self, op: u8, result: Option<ErrorCode>, took: Duration) {
        let op = usize::from(op).min(OPS.len() - 1);
        let code = result.map_or(0, |c| (c as usize + 1).min(RESULTS - 1));
        self.request_cells[op * RESULTS + code]
            .get_or_init(|| {
                let name = result.map_or("ok", |c| c.as_str_name());
                self.requests.with_label_values(&[OPS[op], name])
            })
            .inc();
        self.latency_cells[op]
            .get_or_init(|| self.latency.with_label_values(&[OPS[op]]))
            .observe(took.as_secs_f64());
    }

    /// The gauge of `brand`'s record count.
    pub fn records_of(&self, brand: u32) -> IntGauge {
        self.records.with_label_values(&[brand.to_string()])
    }

    /// The gauge saying `brand` was refused at start-up (damaged).
    pub fn refused_of(&self, brand: u32) -> IntGauge {
        self.refused.with_label_values(&[brand.to_string()])
    }

    /// Every metric in Prometheus's text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# metrics not encoded: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_and_code_has_its_own_counter() {
        let m = Metrics::new();
        let purchase = op_index(Some(&Op::Purchase(Default::default())));
        m.answered(purchase, None, Duration::from_millis(2));
        m.answered(purchase, None, Duration::from_millis(3));
        m.answered(purchase, Some(ErrorCode::InsufficientFunds), Duration::ZERO);
        m.answered(0, Some(ErrorCode::StorageFailure), Duration::ZERO);
        let text = m.render();
        assert!(
            text.contains("cardd_requests_total{op=\"purchase\",result=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("cardd_requests_total{op=\"purchase\",result=\"INSUFFICIENT_FUNDS\"} 1"),
            "{text}"
        );
        assert!(text.contains("result=\"STORAGE_FAILURE\"} 1"), "{text}");
        assert!(
            text.contains("cardd_request_seconds_count{op=\"purchase\"} 3"),
            "{text}"
        );
        assert_eq!(
            OPS.len(),
            1 + op_index(Some(&Op::RotateServerKey(Default::default()))) as usize
        );
        // A code added past the table would share a cell (and a label).
        for v in 0..1_000 {
            if ErrorCode::try_from(v).is_ok() {
                assert!(
                    (v as usize) + 1 < RESULTS,
                    "error code {v} is past the table"
                );
            }
        }
    }
}
