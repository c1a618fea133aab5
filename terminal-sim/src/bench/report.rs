//! The bench's result: the terminals' counts and latencies merged, printed
//! for people or as one JSON object.

use super::cpu::CpuUse;
use hdrhistogram::Histogram;
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
    /// Open loop: requests per second in all (`--rate`); closed loop: none.
    pub rate: Option<u64>,
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
    /// CPU seconds the generator itself (and the daemon, when it runs
    /// here) used from the start of the window to the last answer.
    cpu: CpuUse,
}

impl Report {
    /// Merges the terminals' results.
    pub fn new(params: Params, setup: Setup, results: Vec<TerminalResult>, cpu: CpuUse) -> Self {
        let mut r = Report {
            params,
            setup,
            counts: Counters::new(),
            exhausted: 0,
            first_exhausted_secs: None,
            failures: Vec::new(),
            cpu,
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
        quantile_ms(&self.counts.hist, q)
    }

    /// Open loop: requests due in the window that were never sent (the
    /// terminals fell behind the schedule, or their pools ran out).
    pub fn unsent(&self) -> u64 {
        self.counts.scheduled.saturating_sub(self.counts.sent)
    }

    /// Where latency is measured from.
    fn latency_from(&self) -> &'static str {
        if self.params.rate.is_some() {
            "schedule"
        } else {
            "write"
        }
    }

    /// The open-loop fields of the JSON report.
    fn open_loop_json(&self, out: &mut Map<String, Value>) {
        let c = &self.counts;
        out.insert("scheduled".into(), json!(c.scheduled));
        out.insert("late_sends".into(), json!(c.late_sends));
        out.insert("unsent".into(), json!(self.unsent()));
        if let Some(h) = &c.service {
            out.insert("service_p50_ms".into(), json!(quantile_ms(h, 0.50)));
            out.insert("service_p99_ms".into(), json!(quantile_ms(h, 0.99)));
            out.insert("service_p999_ms".into(), json!(quantile_ms(h, 0.999)));
        }
        if let Some(h) = &c.send_lag {
            out.insert("send_lag_p99_ms".into(), json!(quantile_ms(h, 0.99)));
            out.insert("send_lag_max_ms".into(), json!(max_ms(h)));
        }
    }

    fn max_ms(&self) -> f64 {
        max_ms(&self.counts.hist)
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
        let mut out = json!({
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
            "generator_cpu_secs": self.cpu.generator_secs.map(round1),
        });
        // (Added here: one more field in the macro above would pass its
        // recursion limit.)
        if let Value::Object(m) = &mut out {
            m.insert("rate".into(), json!(p.rate));
            m.insert("latency_from".into(), json!(self.latency_from()));
            if let Some((pid, secs)) = self.cpu.daemon {
                m.insert("daemon_pid".into(), json!(pid));
                m.insert("daemon_cpu_secs".into(), json!(round1(secs)));
                m.insert(
                    "daemon_cpu_us_per_op".into(),
                    json!(self.daemon_us_per_op()),
                );
            }
            if p.rate.is_some() {
                self.open_loop_json(m);
            }
        }
        out
    }

    /// The daemon's CPU microseconds per request sent in the window (each
    /// answered or counted as an error), one decimal.
    fn daemon_us_per_op(&self) -> Option<f64> {
        let (_, secs) = self.cpu.daemon?;
        let ops = self.counts.sent.max(1) as f64;
        Some((secs * 1e6 / ops * 10.0).round() / 10.0)
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = Vec::new();
        self.heading_lines(&mut out);
        self.measured_lines(&mut out);
        if self.params.rate.is_some() {
            self.open_loop_lines(&mut out);
        }
        self.count_lines(&mut out);
        self.warning_lines(&mut out);
        out.join("\n")
    }

    /// What was run, and its setup.
    fn heading_lines(&self, out: &mut Vec<String>) {
        let p = &self.params;
        let s = &self.setup;
        let spread = if p.hot_cards > 0 {
            format!("{}% of traffic on {} hot cards", p.hot_share, p.hot_cards)
        } else {
            "uniform".to_string()
        };
        let load = match p.rate {
            Some(r) => format!("open loop at {r} requests/s"),
            None => "closed loop".to_string(),
        };
        out.push(format!(
            "bench: {} terminals, pipeline {}, {load}, {} s, mix {}, {} cards ({spread})",
            p.terminals, p.pipeline, p.duration_secs, p.mix, p.cards
        ));
        out.push(format!(
            "setup: brand {} store {} ({}), {} records in {:.2} s; {} requests pre-signed in {:.2} s",
            s.brand_id, s.store_id, s.store_name, s.records, s.provision_secs, p.pool_requests, s.sign_secs
        ));
    }

    /// Throughput and latency.
    fn measured_lines(&self, out: &mut Vec<String>) {
        let p = &self.params;
        out.push(format!(
            "throughput  {:.1} ops/s ({} ok in the {} s window; {} sent, {} ok in all)",
            self.ops_per_sec(),
            self.counts.ok_in_window,
            p.duration_secs,
            self.counts.sent,
            self.counts.ok
        ));
        out.push(format!(
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (from the {})",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.max_ms(),
            if p.rate.is_some() {
                "scheduled send time"
            } else {
                "write"
            }
        ));
    }

    /// Open loop: how the schedule was kept, and the service latency.
    fn open_loop_lines(&self, out: &mut Vec<String>) {
        let c = &self.counts;
        out.push(format!(
            "schedule    {} due in the window, {} sent late (pipeline full), {} never sent",
            c.scheduled,
            c.late_sends,
            self.unsent()
        ));
        if let Some(h) = &c.service {
            out.push(format!(
                "service ms  p50 {:.3}  p99 {:.3}  p99.9 {:.3}  (from the write)",
                quantile_ms(h, 0.5),
                quantile_ms(h, 0.99),
                quantile_ms(h, 0.999)
            ));
        }
        if let Some(h) = &c.send_lag {
            out.push(format!(
                "send lag ms p99 {:.3}  max {:.3}  (due to written: timers, late sends)",
                quantile_ms(h, 0.99),
                max_ms(h)
            ));
        }
    }

    /// Approved answers by operation, the generator's CPU, and the errors.
    fn count_lines(&self, out: &mut Vec<String>) {
        let p = &self.params;
        out.push(format!(
            "ok          purchase {} ({} minor)  topup {}  inquiry {}  refund {}",
            self.counts.purchase_ok,
            self.counts.purchase_minor,
            self.counts.topup_ok,
            self.counts.inquiry_ok,
            self.counts.refund_ok
        ));
        if let Some(cpu) = self.cpu.generator_secs {
            out.push(format!(
                "generator   {cpu:.1} CPU-seconds during the {} s window (it shares the cores with the daemon)",
                p.duration_secs
            ));
        }
        if let Some((pid, secs)) = self.cpu.daemon {
            out.push(format!(
                "daemon      {secs:.1} CPU-seconds (pid {pid}): {:.1} us per operation",
                self.daemon_us_per_op().unwrap_or(0.0)
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
    }

    /// Why the figures may be a lower bound.
    fn warning_lines(&self, out: &mut Vec<String>) {
        if self.exhausted > 0 {
            out.push(format!(
                "warning: {} terminals used up their pre-signed requests (the first after {:.1} s); \
                 the throughput is a lower bound: raise --max-requests",
                self.exhausted,
                self.first_exhausted_secs.unwrap_or(0.0)
            ));
        }
        if let Some(w) = self.unsent_warning() {
            out.push(format!("warning: {w}"));
        }
        if let Some(f) = self.failures.first() {
            out.push(format!(
                "warning: {} connections ended early, e.g. {f}",
                self.failures.len()
            ));
        }
    }

    fn unsent_warning(&self) -> Option<String> {
        let unsent = self.unsent();
        (self.params.rate.is_some() && unsent > 0).then(|| {
            format!(
                "{unsent} of {} scheduled requests were never sent (the terminals fell behind \
                 the rate); they are not in the latency figures",
                self.counts.scheduled
            )
        })
    }

    /// Warning lines for stderr (also in JSON mode): the pool ran out, or
    /// open loop, requests due were never sent.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.exhausted > 0 {
            out.push(format!(
                "terminal-sim: warning: {} of {} terminals used up their pre-signed requests before the end; \
                 ops_per_sec is a lower bound (raise --max-requests)",
                self.exhausted, self.params.terminals
            ));
        }
        if let Some(w) = self.unsent_warning() {
            out.push(format!("terminal-sim: warning: {w}"));
        }
        out
    }
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    round3(h.value_at_quantile(q) as f64 / 1000.0)
}

fn max_ms(h: &Histogram<u64>) -> f64 {
    round3(h.max() as f64 / 1000.0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::run::histogram;

    fn params(rate: Option<u64>) -> Params {
        Params {
            terminals: 2,
            duration_secs: 4,
            pipeline: 2,
            rate,
            mix: Mix::parse("purchase=90,topup=5,inquiry=5").unwrap(),
            cards: 100,
            hot_cards: 10,
            hot_share: 80,
            pool_requests: 1_000,
            seed: 7,
        }
    }

    fn setup() -> Setup {
        Setup {
            brand_id: 1,
            store_id: 3,
            store_name: "bench".into(),
            records: 250,
            purchase_minor: 500,
            funded_minor: 90_000,
            provision_secs: 1.25,
            sign_secs: 0.5,
        }
    }

    /// A terminal that answered 40 of 50, with latencies 1..=40 ms.
    fn result(open_loop: bool, exhausted: bool, failure: bool) -> TerminalResult {
        let mut c = Counters::new();
        for ms in 1..=40u64 {
            c.hist.record(ms * 1000).unwrap();
        }
        if open_loop {
            let (mut service, mut lag) = (histogram(), histogram());
            for ms in 1..=40u64 {
                service.record(ms * 500).unwrap();
                lag.record(ms * 10).unwrap();
            }
            c.service = Some(service);
            c.send_lag = Some(lag);
            c.scheduled = 60;
            c.late_sends = 3;
        }
        c.sent = 50;
        c.ok = 40;
        c.ok_in_window = 38;
        c.answered_in_window = 45;
        c.purchase_ok = 36;
        c.purchase_minor = 3_600;
        c.topup_ok = 2;
        c.inquiry_ok = 2;
        c.errors.insert("INSUFFICIENT_FUNDS".into(), 4);
        c.errors.insert("NO_ANSWER".into(), 6);
        TerminalResult {
            counts: c,
            exhausted_after: exhausted.then_some(Duration::from_millis(3_500)),
            failure: failure.then(|| "reading: reset".to_string()),
        }
    }

    #[test]
    fn the_text_report_reads_line_by_line() {
        let closed = Report::new(
            params(None),
            setup(),
            vec![result(false, false, false), result(false, false, false)],
            CpuUse::default(),
        );
        let open = Report::new(
            params(Some(30)),
            setup(),
            vec![result(true, true, true), result(true, false, false)],
            CpuUse {
                generator_secs: Some(2.25),
                daemon: Some((4242, 3.0)),
            },
        );
        let want_closed = [
            "bench: 2 terminals, pipeline 2, closed loop, 4 s, mix purchase=90,topup=5,inquiry=5, 100 cards (80% of traffic on 10 hot cards)",
            "setup: brand 1 store 3 (bench), 250 records in 1.25 s; 1000 requests pre-signed in 0.50 s",
            "throughput  19.0 ops/s (76 ok in the 4 s window; 100 sent, 80 ok in all)",
            "latency ms  p50 20.015  p90 36.031  p99 40.031  p99.9 40.031  max 40.031  (from the write)",
            "ok          purchase 72 (7200 minor)  topup 4  inquiry 4  refund 0",
            "errors      INSUFFICIENT_FUNDS 8, NO_ANSWER 12",
        ]
        .join("\n");
        assert_eq!(closed.to_text(), want_closed);
        let want_open = [
            "bench: 2 terminals, pipeline 2, open loop at 30 requests/s, 4 s, mix purchase=90,topup=5,inquiry=5, 100 cards (80% of traffic on 10 hot cards)",
            "setup: brand 1 store 3 (bench), 250 records in 1.25 s; 1000 requests pre-signed in 0.50 s",
            "throughput  19.0 ops/s (76 ok in the 4 s window; 100 sent, 80 ok in all)",
            "latency ms  p50 20.015  p90 36.031  p99 40.031  p99.9 40.031  max 40.031  (from the scheduled send time)",
            "schedule    120 due in the window, 6 sent late (pipeline full), 20 never sent",
            "service ms  p50 10.007  p99 20.015  p99.9 20.015  (from the write)",
            "send lag ms p99 0.400  max 0.400  (due to written: timers, late sends)",
            "ok          purchase 72 (7200 minor)  topup 4  inquiry 4  refund 0",
            "generator   2.2 CPU-seconds during the 4 s window (it shares the cores with the daemon)",
            "daemon      3.0 CPU-seconds (pid 4242): 30000.0 us per operation",
            "errors      INSUFFICIENT_FUNDS 8, NO_ANSWER 12",
            "warning: 1 terminals used up their pre-signed requests (the first after 3.5 s); the throughput is a lower bound: raise --max-requests",
            "warning: 20 of 120 scheduled requests were never sent (the terminals fell behind the rate); they are not in the latency figures",
            "warning: 1 connections ended early, e.g. reading: reset",
        ]
        .join("\n");
        assert_eq!(open.to_text(), want_open);
    }
}
