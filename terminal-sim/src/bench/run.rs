//! The measured window: every terminal sends its pre-signed requests, one
//! at a time like a till (or keeping up to `pipeline` in flight). Closed
//! loop (the default), the next request goes when an answer frees a place,
//! and latency runs from the moment a request is written until its answer
//! arrives. Open loop (`--rate`, a [`Pacer`]), requests go on the terminal's
//! schedule, and latency runs from the time a request was due.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cardd::client::AnyClient;
use cardd::pb::{reply::Detail, server_message, ServerMessage};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use prost::Message;
use tokio::time::Instant;

use super::pool::Pool;
use super::schedule::Pacer;
use super::wire::error_name;

/// Latencies are recorded in microseconds, up to this many (60 s).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A fresh latency histogram: 1 us to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static bounds")
}

/// A coarser histogram (2 significant digits, a seventh of the memory) for
/// the send lag, which only has to show whether the generator kept time.
fn lag_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("static bounds")
}

/// Records `d` in microseconds, within the histogram's bounds.
fn record(hist: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    hist.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// Adds `other` into `mine`, which may not exist yet.
fn merge_hist(mine: &mut Option<Histogram<u64>>, other: Option<Histogram<u64>>) {
    match (mine.as_mut(), other) {
        (Some(m), Some(o)) => m.add(&o).expect("same bounds"),
        (None, Some(o)) => *mine = Some(o),
        (_, None) => {}
    }
}

/// Counts shared with the progress display while the run goes on.
#[derive(Default)]
pub struct Live {
    /// Successful answers.
    pub ok: AtomicU64,
    /// Refusals and requests without an answer.
    pub errors: AtomicU64,
}

/// Error names for requests that got no answer.
pub const NO_ANSWER: &str = "NO_ANSWER";
/// The connection broke with requests in flight.
pub const CONNECTION_LOST: &str = "CONNECTION_LOST";
/// An answer that matches no request in flight, or is not a reply.
pub const PROTOCOL: &str = "PROTOCOL";

/// What answers said, counted. Each terminal keeps one; the report adds
/// them up.
#[derive(Debug, Clone)]
pub struct Counters {
    /// Latency of every answered request, microseconds: from when it was
    /// written, or with `--rate` from when it was due.
    pub hist: Histogram<u64>,
    /// With `--rate`: latency from when each request was written.
    pub service: Option<Histogram<u64>>,
    /// With `--rate`: from when each request was due to when it was written.
    pub send_lag: Option<Histogram<u64>>,
    /// With `--rate`: requests due in the window.
    pub scheduled: u64,
    /// With `--rate`: requests that came due while the terminal had its
    /// pipeline full, sent when a place freed.
    pub late_sends: u64,
    /// Requests written.
    pub sent: u64,
    /// Successful answers.
    pub ok: u64,
    /// Successful answers that arrived within the measured window.
    pub ok_in_window: u64,
    /// Answers of any kind that arrived within the measured window.
    pub answered_in_window: u64,
    /// Approved purchases.
    pub purchase_ok: u64,
    /// Minor units approved by purchases.
    pub purchase_minor: i64,
    /// Top-ups done.
    pub topup_ok: u64,
    /// Paid value loaded by top-ups.
    pub topup_paid_minor: i64,
    /// Bonus value granted by top-ups.
    pub topup_bonus_minor: i64,
    /// Refunds done.
    pub refund_ok: u64,
    /// Value refunded.
    pub refund_minor: i64,
    /// Inquiries answered.
    pub inquiry_ok: u64,
    /// Refusals by code name, and requests without an answer.
    pub errors: BTreeMap<String, u64>,
}

impl Counters {
    /// All zero.
    pub fn new() -> Self {
        Counters {
            hist: histogram(),
            service: None,
            send_lag: None,
            scheduled: 0,
            late_sends: 0,
            sent: 0,
            ok: 0,
            ok_in_window: 0,
            answered_in_window: 0,
            purchase_ok: 0,
            purchase_minor: 0,
            topup_ok: 0,
            topup_paid_minor: 0,
            topup_bonus_minor: 0,
            refund_ok: 0,
            refund_minor: 0,
            inquiry_ok: 0,
            errors: BTreeMap::new(),
        }
    }

    /// Adds `other` in.
    pub fn merge(&mut self, other: Counters) {
        self.hist.add(&other.hist).expect("same bounds");
        merge_hist(&mut self.service, other.service);
        merge_hist(&mut self.send_lag, other.send_lag);
        self.scheduled += other.scheduled;
        self.late_sends += other.late_sends;
        self.sent += other.sent;
        self.ok += other.ok;
        self.ok_in_window += other.ok_in_window;
        self.answered_in_window += other.answered_in_window;
        self.purchase_ok += other.purchase_ok;
        self.purchase_minor += other.purchase_minor;
        self.topup_ok += other.topup_ok;
        self.topup_paid_minor += other.topup_paid_minor;
        self.topup_bonus_minor += other.topup_bonus_minor;
        self.refund_ok += other.refund_ok;
        self.refund_minor += other.refund_minor;
        self.inquiry_ok += other.inquiry_ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// One terminal's result.
#[derive(Debug)]
pub struct TerminalResult {
    /// Its counts.
    pub counts: Counters,
    /// When (after the start) the pre-signed requests ran out, if they did
    /// before the end of the window.
    pub exhausted_after: Option<Duration>,
    /// Why the connection ended early, if it did.
    pub failure: Option<String>,
}

impl TerminalResult {
    fn new() -> Self {
        TerminalResult {
            counts: Counters::new(),
            exhausted_after: None,
            failure: None,
        }
    }

    fn error(&mut self, name: &str, n: u64, live: &Live) {
        if n > 0 {
            *self.counts.errors.entry(name.to_string()).or_default() += n;
            live.errors.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The window: requests are written from `start` until `end`; answers are
/// awaited until `end + drain`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// When sending starts.
    pub start: Instant,
    /// When sending stops.
    pub end: Instant,
    /// How long after `end` answers still in flight are waited for.
    pub drain: Duration,
}

/// A request in flight.
struct InFlight {
    /// Its request id.
    id: u64,
    /// Where its latency runs from: when it was written, or (open loop)
    /// when it was due.
    from: Instant,
    /// When it was written.
    written: Instant,
}

/// Drives one terminal through the window: closed loop, or with `pacer` on
/// its schedule. The client is dropped (the connection closed) when this
/// returns.
pub async fn drive(
    mut client: AnyClient,
    pool: Pool,
    pipeline: usize,
    window: Window,
    mut pacer: Option<Pacer>,
    live: Arc<Live>,
) -> TerminalResult {
    let mut res = TerminalResult::new();
    if pacer.is_some() {
        res.counts.service = Some(histogram());
        res.counts.send_lag = Some(lag_histogram());
    }
    let framed = client.framed();
    // Requests in flight, at most `pipeline`.
    let mut in_flight: Vec<InFlight> = Vec::with_capacity(pipeline);
    let mut next = 0usize;
    let answer_deadline = window.end + window.drain;
    let length = window.end - window.start;
    tokio::time::sleep_until(window.start).await;
    loop {
        let now = Instant::now();
        // Closed loop, nothing is sent after the window; open loop, a slot
        // due inside it may still go (see `Pacer::take`).
        let sending = match &pacer {
            None => now < window.end,
            Some(p) => p.next_at() < length,
        };
        if sending {
            let mut fed = false;
            while in_flight.len() < pipeline && next < pool.len() {
                let written = Instant::now();
                let from = match pacer.as_mut() {
                    None => written,
                    Some(p) => {
                        match p.take(written.saturating_duration_since(window.start), length) {
                            Some((due, _late)) => window.start + due,
                            None => break,
                        }
                    }
                };
                if let Err(e) = framed.feed(pool.frame(next)).await {
                    res.failure = Some(format!("writing: {e}"));
                    break;
                }
                next += 1;
                res.counts.sent += 1;
                if let Some(lag) = res.counts.send_lag.as_mut() {
                    record(lag, written.saturating_duration_since(from));
                }
                in_flight.push(InFlight {
                    id: next as u64,
                    from,
                    written,
                });
                fed = true;
            }
            if res.failure.is_none() && fed {
                if let Err(e) = SinkExt::<bytes::Bytes>::flush(framed).await {
                    res.failure = Some(format!("writing: {e}"));
                }
            }
            // Open loop, the pool has run out only if more is due in the window.
            let wanted = pacer.as_ref().is_none_or(|p| p.next_at() < length);
            if next == pool.len() && wanted && now < window.end && res.exhausted_after.is_none() {
                res.exhausted_after = Some(now - window.start);
            }
        }
        if res.failure.is_some() {
            let lost = in_flight.len() as u64;
            res.error(CONNECTION_LOST, lost, &live);
            break;
        }
        // Open loop, with a place free: wake for the next slot in the window.
        // (After the window, whatever could still go has gone.)
        let wake = match &pacer {
            Some(p)
                if now < window.end
                    && in_flight.len() < pipeline
                    && next < pool.len()
                    && p.next_at() < length =>
            {
                Some(window.start + p.next_at())
            }
            _ => None,
        };
        if in_flight.is_empty() && wake.is_none() {
            // Nothing left to send (window over or pool used up).
            break;
        }
        let answer = tokio::time::timeout_at(answer_deadline, framed.next());
        let frame = match wake {
            None => answer.await,
            Some(wake) => tokio::select! {
                biased;
                a = answer, if !in_flight.is_empty() => a,
                () = tokio::time::sleep_until(wake) => continue,
            },
        };
        let frame = match frame {
            Err(_) => {
                res.error(NO_ANSWER, in_flight.len() as u64, &live);
                break;
            }
            Ok(None) => {
                res.failure = Some("the server closed the connection".into());
                res.error(CONNECTION_LOST, in_flight.len() as u64, &live);
                break;
            }
            Ok(Some(Err(e))) => {
                res.failure = Some(format!("reading: {e}"));
                res.error(CONNECTION_LOST, in_flight.len() as u64, &live);
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let arrived = Instant::now();
        if let Some(p) = pacer.as_mut() {
            if in_flight.len() >= pipeline {
                // Full until now: whatever came due meanwhile waited.
                p.held_until(arrived.saturating_duration_since(window.start));
            }
        }
        let Ok(msg) = ServerMessage::decode(frame) else {
            res.error(PROTOCOL, 1, &live);
            continue;
        };
        let Some(pos) = in_flight.iter().position(|f| f.id == msg.request_id) else {
            res.error(PROTOCOL, 1, &live);
            if msg.request_id == 0 {
                // A connection-level error: nothing more will be answered.
                res.failure = Some(format!("connection-level answer: {:?}", msg.body));
                res.error(CONNECTION_LOST, in_flight.len() as u64, &live);
                break;
            }
            continue;
        };
        let done = in_flight.swap_remove(pos);
        record(&mut res.counts.hist, arrived - done.from);
        if let Some(service) = res.counts.service.as_mut() {
            record(service, arrived - done.written);
        }
        if arrived <= window.end {
            res.counts.answered_in_window += 1;
        }
        match msg.body {
            Some(server_message::Body::Reply(reply)) => {
                res.counts.ok += 1;
                if arrived <= window.end {
                    res.counts.ok_in_window += 1;
                }
                live.ok.fetch_add(1, Ordering::Relaxed);
                match reply.detail {
                    Some(Detail::Purchase(p)) => {
                        res.counts.purchase_ok += 1;
                        res.counts.purchase_minor += p.approved_minor;
                    }
                    Some(Detail::TopUp(t)) => {
                        res.counts.topup_ok += 1;
                        res.counts.topup_paid_minor += t.paid_minor;
                        res.counts.topup_bonus_minor += t.bonus_minor;
                    }
                    Some(Detail::Refund(r)) => {
                        res.counts.refund_ok += 1;
                        res.counts.refund_minor += r.refunded_minor;
                    }
                    _ => res.counts.inquiry_ok += 1,
                }
            }
            Some(server_message::Body::Error(e)) => res.error(&error_name(e.code), 1, &live),
            _ => res.error(PROTOCOL, 1, &live),
        }
    }
    if let Some(p) = &pacer {
        res.counts.scheduled = p.schedule().slots_before(length);
        res.counts.late_sends = p.late();
    }
    res
}
