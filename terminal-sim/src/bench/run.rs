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

use cardd::client::{AnyClient, ClientStream};
use cardd::pb::{self, reply::Detail, server_message, ServerMessage};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use prost::Message;
use tokio::time::Instant;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

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
    pacer: Option<Pacer>,
    live: Arc<Live>,
) -> TerminalResult {
    let mut d = Driver::new(client.framed(), pool, pipeline, window, pacer, live);
    tokio::time::sleep_until(window.start).await;
    loop {
        let now = Instant::now();
        d.send(now).await;
        if d.res.failure.is_some() {
            d.lose_in_flight(CONNECTION_LOST);
            break;
        }
        let wake = d.wake_at(now);
        if d.in_flight.is_empty() && wake.is_none() {
            // Nothing left to send (window over or pool used up).
            break;
        }
        match d.next_frame(wake).await {
            Step::Frame(frame) => {
                if !d.on_frame(frame) {
                    break;
                }
            }
            Step::Wake => continue,
            Step::End => break,
        }
    }
    d.finish()
}

/// What waiting on the connection gave.
enum Step {
    /// An answer's frame.
    Frame(bytes::BytesMut),
    /// The next slot of the schedule is due.
    Wake,
    /// The connection is over (no answer in time, closed, or broken).
    End,
}

/// One terminal's state during the window.
struct Driver<'a> {
    framed: &'a mut Framed<ClientStream, LengthDelimitedCodec>,
    pool: Pool,
    pipeline: usize,
    window: Window,
    /// The window's length.
    length: Duration,
    pacer: Option<Pacer>,
    live: Arc<Live>,
    /// Requests in flight, at most `pipeline`.
    in_flight: Vec<InFlight>,
    /// The next request of the pool to send.
    next: usize,
    res: TerminalResult,
}

impl<'a> Driver<'a> {
    fn new(
        framed: &'a mut Framed<ClientStream, LengthDelimitedCodec>,
        pool: Pool,
        pipeline: usize,
        window: Window,
        pacer: Option<Pacer>,
        live: Arc<Live>,
    ) -> Self {
        let mut res = TerminalResult::new();
        if pacer.is_some() {
            res.counts.service = Some(histogram());
            res.counts.send_lag = Some(lag_histogram());
        }
        Driver {
            framed,
            pool,
            pipeline,
            window,
            length: window.end - window.start,
            pacer,
            live,
            in_flight: Vec::with_capacity(pipeline),
            next: 0,
            res,
        }
    }

    /// Writes what may go now: closed loop, until the window ends; open
    /// loop, the slots due (a slot due inside the window may still go after
    /// it, see `Pacer::take`). Notes when the pool ran out too early.
    async fn send(&mut self, now: Instant) {
        let sending = match &self.pacer {
            None => now < self.window.end,
            Some(p) => p.next_at() < self.length,
        };
        if !sending {
            return;
        }
        let mut fed = false;
        while self.in_flight.len() < self.pipeline && self.next < self.pool.len() {
            let written = Instant::now();
            let from = match self.pacer.as_mut() {
                None => written,
                Some(p) => {
                    let at = written.saturating_duration_since(self.window.start);
                    match p.take(at, self.length) {
                        Some((due, _late)) => self.window.start + due,
                        None => break,
                    }
                }
            };
            if let Err(e) = self.framed.feed(self.pool.frame(self.next)).await {
                self.res.failure = Some(format!("writing: {e}"));
                break;
            }
            self.next += 1;
            self.res.counts.sent += 1;
            if let Some(lag) = self.res.counts.send_lag.as_mut() {
                record(lag, written.saturating_duration_since(from));
            }
            self.in_flight.push(InFlight {
                id: self.next as u64,
                from,
                written,
            });
            fed = true;
        }
        if self.res.failure.is_none() && fed {
            if let Err(e) = SinkExt::<bytes::Bytes>::flush(self.framed).await {
                self.res.failure = Some(format!("writing: {e}"));
            }
        }
        // Open loop, the pool has run out only if more is due in the window.
        let wanted = self
            .pacer
            .as_ref()
            .is_none_or(|p| p.next_at() < self.length);
        let used_up = self.next == self.pool.len();
        if used_up && wanted && now < self.window.end && self.res.exhausted_after.is_none() {
            self.res.exhausted_after = Some(now - self.window.start);
        }
    }

    /// Open loop, with a place free: when the next slot in the window is
    /// due. (After the window, whatever could still go has gone.)
    fn wake_at(&self, now: Instant) -> Option<Instant> {
        match &self.pacer {
            Some(p)
                if now < self.window.end
                    && self.in_flight.len() < self.pipeline
                    && self.next < self.pool.len()
                    && p.next_at() < self.length =>
            {
                Some(self.window.start + p.next_at())
            }
            _ => None,
        }
    }

    /// Waits for the next answer until the drain deadline, or for `wake`.
    async fn next_frame(&mut self, wake: Option<Instant>) -> Step {
        let answer_deadline = self.window.end + self.window.drain;
        let answer = tokio::time::timeout_at(answer_deadline, self.framed.next());
        let frame = match wake {
            None => answer.await,
            Some(wake) => tokio::select! {
                biased;
                a = answer, if !self.in_flight.is_empty() => a,
                () = tokio::time::sleep_until(wake) => return Step::Wake,
            },
        };
        match frame {
            Err(_) => {
                self.lose_in_flight(NO_ANSWER);
                Step::End
            }
            Ok(None) => {
                self.res.failure = Some("the server closed the connection".into());
                self.lose_in_flight(CONNECTION_LOST);
                Step::End
            }
            Ok(Some(Err(e))) => {
                self.res.failure = Some(format!("reading: {e}"));
                self.lose_in_flight(CONNECTION_LOST);
                Step::End
            }
            Ok(Some(Ok(frame))) => Step::Frame(frame),
        }
    }

    /// Counts every request in flight as an error `name`.
    fn lose_in_flight(&mut self, name: &str) {
        let n = self.in_flight.len() as u64;
        self.res.error(name, n, &self.live);
    }

    /// Matches an answer with its request and counts it. False when the
    /// connection is over.
    fn on_frame(&mut self, frame: bytes::BytesMut) -> bool {
        let arrived = Instant::now();
        if let Some(p) = self.pacer.as_mut() {
            if self.in_flight.len() >= self.pipeline {
                // Full until now: whatever came due meanwhile waited.
                p.held_until(arrived.saturating_duration_since(self.window.start));
            }
        }
        let Ok(msg) = ServerMessage::decode(frame) else {
            self.res.error(PROTOCOL, 1, &self.live);
            return true;
        };
        let Some(pos) = self.in_flight.iter().position(|f| f.id == msg.request_id) else {
            self.res.error(PROTOCOL, 1, &self.live);
            if msg.request_id == 0 {
                // A connection-level error: nothing more will be answered.
                self.res.failure = Some(format!("connection-level answer: {:?}", msg.body));
                self.lose_in_flight(CONNECTION_LOST);
                return false;
            }
            return true;
        };
        let done = self.in_flight.swap_remove(pos);
        record(&mut self.res.counts.hist, arrived - done.from);
        if let Some(service) = self.res.counts.service.as_mut() {
            record(service, arrived - done.written);
        }
        let in_window = arrived <= self.window.end;
        if in_window {
            self.res.counts.answered_in_window += 1;
        }
        match msg.body {
            Some(server_message::Body::Reply(reply)) => self.count_reply(&reply, in_window),
            Some(server_message::Body::Error(e)) => {
                self.res.error(&error_name(e.code), 1, &self.live)
            }
            _ => self.res.error(PROTOCOL, 1, &self.live),
        }
        true
    }

    /// Counts an approved answer by its operation.
    fn count_reply(&mut self, reply: &pb::Reply, in_window: bool) {
        let c = &mut self.res.counts;
        c.ok += 1;
        if in_window {
            c.ok_in_window += 1;
        }
        self.live.ok.fetch_add(1, Ordering::Relaxed);
        match &reply.detail {
            Some(Detail::Purchase(p)) => {
                c.purchase_ok += 1;
                c.purchase_minor += p.approved_minor;
            }
            Some(Detail::TopUp(t)) => {
                c.topup_ok += 1;
                c.topup_paid_minor += t.paid_minor;
                c.topup_bonus_minor += t.bonus_minor;
            }
            Some(Detail::Refund(r)) => {
                c.refund_ok += 1;
                c.refund_minor += r.refunded_minor;
            }
            _ => c.inquiry_ok += 1,
        }
    }

    /// The result, with the open loop's schedule counts.
    fn finish(mut self) -> TerminalResult {
        if let Some(p) = &self.pacer {
            self.res.counts.scheduled = p.schedule().slots_before(self.length);
            self.res.counts.late_sends = p.late();
        }
        self.res
    }
}
