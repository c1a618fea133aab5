//! The bench's result: the terminals' counts and latencies merged, printed
//! for people or as one JSON object.

use serde_json::{json, Map, Value};

use super::plan::{Kind, Mix};
use super::run::{Counters, TerminalResult};

/// The run's parameters, as given.
#[derive(Debug, Clone)]
pub struct Params {
    /// Terminals (connections).
    pub terminals: u32,
    /// Length of the measured window, seconds.
    pub duration_secs: u64,
    /// Requests in flight per terminal.
    pub pipeline: u32,
    /// Operation mix.
    pub mix: Mix,
    /// Cards.
    pub cards: u32,
    /// Hot cards (0 = uniform).
    pub hot_cards: u32,
    /// Percent of traffic to the hot cards.
    pub hot_share: u32,
    /// Pre-signed requests in all.
    pub pool_requests: u64,
    /// The plan's random seed.
    pub seed: u64,
}

/// What setup did.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// The brand.
    pub brand_id: u32,
    /// The bench's store.
    pub store_id: u32,
    /// Its name.
    pub store_name: String,
    /// Ledger records written before the window (store, enrolments, cards,
    /// loads, refund originals).
    pub records: u64,
    /// Value spent by setup purchases (the originals of refunds).
    pub purchase_minor: i64,
    /// Value loaded onto the cards by setup top-ups (paid, before bonus).
    pub funded_minor: i64,
    /// Seconds spent provisioning and loading.
    pub provision_secs: f64,
    /// Seconds spent signing the pools.
    pub sign_secs: f64,
}

/// Everything the run measured.
#[derive(Debug)]
pub struct Report {
    /// Parameters.
    pub params: Params,
    /// Setup.
    pub setup: Setup,
    counts: Counters,
    exhausted: u32,
    first_exhausted_secs: Option<f64>,
    failures: Vec<String>,
    /// CPU seconds the generator itself used from the start of the window
    /// to the last answer (it shares the cores with the daemon).
    cpu_secs: Option<f64>,
}

impl Report {
    /// Merges the terminals' results.
    pub fn new(
        params: Params,
        setup: Setup,
        results: Vec<TerminalResult>,
        cpu_secs: Option<f64>,
    ) -> Self {
        let mut r = Report {
            params,
            setup,
            counts: Counters::new(),
            exhausted: 0,
            first_exhausted_secs: None,
            failures: Vec::new(),
            cpu_secs,
        };
        for t in results {
            r.counts.merge(t.counts);
            if let Some(d) = t.exhausted_after {
                r.exhausted += 1;
                let s = d.as_secs_f64();
                r.first_exhausted_secs = Some(r.first_exhausted_secs.map_or(s, |f: f64| f.min(s)));
            }
            if let Some(f) = t.failure {
                r.failures.push(f);
            }
        }
        r
    }

    /// Requests refused or left without an answer.
    pub fn error_count(&self) -> u64 {
        self.counts.errors.values().sum()
    }

    /// Successful answers per second over the measured window.
    pub fn ops_per_sec(&self) -> f64 {
        self.counts.ok_in_window as f64 / self.params.duration_secs as f64
    }

    fn ms(&self, q: f64) -> f64 {
        if self.counts.hist.is_empty() {
            return 0.0;
        }
        round3(self.counts.hist.value_at_quantile(q) as f64 / 1000.0)
    }

    fn max_ms(&self) -> f64 {
        round3(self.counts.hist.max() as f64 / 1000.0)
    }

    fn mix_json(&self) -> Value {
        let mut m = Map::new();
        for k in Kind::ALL {
            m.insert(k.name().into(), json!(self.params.mix.weight(k)));
        }
        Value::Object(m)
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let p = &self.params;
        let s = &self.setup;
        json!({
            "ops_per_sec": round1(self.ops_per_sec()),
            "answers_per_sec": round1(self.counts.answered_in_window as f64 / p.duration_secs as f64),
            "p50_ms": self.ms(0.50),
            "p90_ms": self.ms(0.90),
            "p99_ms": self.ms(0.99),
            "p999_ms": self.ms(0.999),
            "max_ms": self.max_ms(),
            "mean_ms": if self.counts.hist.is_empty() { 0.0 } else { round3(self.counts.hist.mean() / 1000.0) },
            "errors": self.counts.errors,
            "ok": self.counts.ok,
            "total": self.counts.sent,
            "ok_in_window": self.counts.ok_in_window,
            "purchase_ok": self.counts.purchase_ok,
            "purchase_approved_minor": self.counts.purchase_minor,
            "topup_ok": self.counts.topup_ok,
            "topup_paid_minor": self.counts.topup_paid_minor,
            "topup_bonus_minor": self.counts.topup_bonus_minor,
            "refund_ok": self.counts.refund_ok,
            "refund_minor": self.counts.refund_minor,
            "inquiry_ok": self.counts.inquiry_ok,
            "state_changing_ok": self.counts.purchase_ok + self.counts.topup_ok + self.counts.refund_ok,
            "terminals": p.terminals,
            "duration_secs": p.duration_secs,
            "pipeline": p.pipeline,
            "mix": self.mix_json(),
            "cards": p.cards,
            "hot_cards": p.hot_cards,
            "hot_share": if p.hot_cards > 0 { p.hot_share } else { 0 },
            "pool_requests": p.pool_requests,
            "pool_exhausted": self.exhausted > 0,
            "pool_exhausted_terminals": self.exhausted,
            "seed": p.seed,
            "brand_id": s.brand_id,
            "store_id": s.store_id,
            "setup_records": s.records,
            "setup_purchase_minor": s.purchase_minor,
            "setup_funded_minor": s.funded_minor,
            "setup_secs": round1(s.provision_secs),
            "sign_secs": round1(s.sign_secs),
            "connection_failures": self.failures.len(),
            "generator_cpu_secs": self.cpu_secs.map(round1),
        })
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let p = &self.params;
        let s = &self.setup;
        let mut out = Vec::new();
        let spread = if p.hot_cards > 0 {
            format!("{}% of traffic on {} hot cards", p.hot_share, p.hot_cards)
        } else {
            "uniform".to_string()
        };
        out.push(format!(
            "bench: {} terminals, pipeline {}, {} s, mix {}, {} cards ({spread})",
            p.terminals, p.pipeline, p.duration_secs, p.mix, p.cards
        ));
        out.push(format!(
            "setup: brand {} store {} ({}), {} records in {:.2} s; {} requests pre-signed in {:.2} s",
            s.brand_id, s.store_id, s.store_name, s.records, s.provision_secs, p.pool_requests, s.sign_secs
        ));
        out.push(format!(
            "throughput  {:.1} ops/s ({} ok in the {} s window; {} sent, {} ok in all)",
            self.ops_per_sec(),
            self.counts.ok_in_window,
            p.duration_secs,
            self.counts.sent,
            self.counts.ok
        ));
        out.push(format!(
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.max_ms()
        ));
        out.push(format!(
            "ok          purchase {} ({} minor)  topup {}  inquiry {}  refund {}",
            self.counts.purchase_ok,
            self.counts.purchase_minor,
            self.counts.topup_ok,
            self.counts.inquiry_ok,
            self.counts.refund_ok
        ));
        if let Some(cpu) = self.cpu_secs {
            out.push(format!(
                "generator   {cpu:.1} CPU-seconds during the {} s window (it shares the cores with the daemon)",
                p.duration_secs
            ));
        }
        if self.counts.errors.is_empty() {
            out.push("errors      none".to_string());
        } else {
            let list: Vec<String> = self
                .counts
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            out.push(format!("errors      {}", list.join(", ")));
        }
        if self.exhausted > 0 {
            out.push(format!(
                "warning: {} terminals used up their pre-signed requests (the first after {:.1} s); \
                 the throughput is a lower bound: raise --max-requests",
                self.exhausted,
                self.first_exhausted_secs.unwrap_or(0.0)
            ));
        }
        if let Some(f) = self.failures.first() {
            out.push(format!(
                "warning: {} connections ended early, e.g. {f}",
                self.failures.len()
            ));
        }
        out.join("\n")
    }

    /// A warning line for stderr when the pool ran out (also in JSON mode).
    pub fn exhausted_warning(&self) -> Option<String> {
        (self.exhausted > 0).then(|| {
            format!(
                "terminal-sim: warning: {} of {} terminals used up their pre-signed requests before the end; \
                 ops_per_sec is a lower bound (raise --max-requests)",
                self.exhausted, self.params.terminals
            )
        })
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
