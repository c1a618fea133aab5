//! The reply plumbing between a brand's writer and a connection: where a
//! request's durable answer goes ([`Reply`], [`ReplyTo`]) and the
//! connection's write task that puts answers and session messages on the
//! socket, each batch of ready ones with one flush.
//!
//! Both `writer` and `connection` import this module and it imports
//! neither, so the two do not depend on each other.
use std::net::IpAddr;
use std::sync::Arc;

use futures::SinkExt;
use prost::Message;
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::codec::{FramedWrite, LengthDelimitedCodec};

use super::guard::Probe;
use super::Shared;
use crate::error::Refusal;
use crate::ledger::Answer;
use crate::limits::MAX_IN_FLIGHT_PER_CONNECTION;
use crate::pb::{server_message, ErrorCode as E, ServerMessage};
use crate::state::Principal;

/// Where a request's durable answer goes.
pub enum Reply {
    /// A caller waiting on it ([`super::writer::BrandHandle::submit`]).
    Wait(oneshot::Sender<Answer>),
    /// Straight to a connection's write task (no task in between).
    Connection(ReplyTo),
}

impl Reply {
    /// Delivers `answer` to whoever waits for it.
    pub(super) fn send(self, answer: Answer) {
        match self {
            // A caller that went away no longer wants its answer; the
            // record stands and a status query will find it.
            Reply::Wait(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Connection(to) => to.send(answer),
        }
    }
}

/// Where a request's answer goes: its connection's write task, with the
/// request's in-flight permit (released once the answer is handed to the
/// socket).
pub struct ReplyTo {
    pub(super) tx: mpsc::UnboundedSender<Answered>,
    pub(super) pending: Pending,
}

/// A request waiting for its answer, as the write task needs it.
pub(super) struct Pending {
    pub(super) request_id: u64,
    pub(super) permit: OwnedSemaphorePermit,
    pub(super) principal: Principal,
    /// The probing budgets its answer counts against.
    pub(super) probe: Probe,
    /// The operation, for the metrics (`metrics::op_index`; 0 until decoded).
    pub(super) op: u8,
    /// When the request was read, for the latency histogram.
    pub(super) started: std::time::Instant,
    /// The key an enrolment holds for its brand until it is answered
    /// (`keys::Reservation`): given back when this drops. Boxed: few
    /// requests hold one, and every answer moves this.
    pub(super) reservation: Option<Box<super::keys::Reservation>>,
}

impl ReplyTo {
    /// Hands `answer` to the connection's write task. A connection that went
    /// away no longer wants it; the record stands and a status query will
    /// find it.
    pub fn send(mut self, answer: Answer) {
        // A commit that failed may or may not have reached the disk: an
        // enrolment's key stays reserved until a restart tells.
        let stopped = matches!(&answer, Err(r) if r.code == crate::pb::ErrorCode::StorageFailure);
        if stopped {
            if let Some(reservation) = self.pending.reservation.take() {
                reservation.keep();
            }
        }
        let _ = self.tx.send((self.pending, answer));
    }

    /// Refused unapplied (`RATE_LIMITED`) while its probing budgets are
    /// spent: asked by the applier just before the request is applied.
    pub(super) fn admit(&self) -> Result<(), Refusal> {
        self.pending.probe.admit()
    }

    /// The probing budgets its answer counts against.
    pub(super) fn probe(&self) -> &Probe {
        &self.pending.probe
    }

    /// Counts `answer` against the probing budgets at once if it is a
    /// probing one, so that the next request is admitted or not on it.
    pub(super) fn found(&self, answer: &Answer) {
        if let Err(refusal) = answer {
            self.pending.probe.count(refusal.code);
        }
    }
}

/// An answer in the write task's queue.
pub(super) type Answered = (Pending, Answer);

/// Answers (or other messages) written with one flush at most.
const WRITE_BATCH: usize = 2 * MAX_IN_FLIGHT_PER_CONNECTION;

/// A refusal as a message of its own (not an answer to a queued request).
pub(super) fn error_msg(request_id: u64, code: E, message: impl Into<String>) -> ServerMessage {
    ServerMessage {
        request_id,
        body: Some(server_message::Body::Error(
            Refusal::new(code, message).into(),
        )),
    }
}

/// The write half: writes the session's messages and the answers to its
/// requests, each batch of ready ones with one flush, until both queues
/// are closed (the session ended and every answer in flight is written)
/// or the peer stops taking them: it went away, or it took nothing for
/// `Shared::write_timeout`. Returning drops the queues' receivers, which
/// the read half watches: the connection then closes and frees its slots.
pub(super) async fn write_loop<W>(
    mut writer: FramedWrite<W, LengthDelimitedCodec>,
    mut out_rx: mpsc::Receiver<ServerMessage>,
    mut answers_rx: mpsc::UnboundedReceiver<Answered>,
    shared: Arc<Shared>,
    ip: Option<IpAddr>,
) where
    W: AsyncWrite + Unpin,
{
    let mut messages = Vec::with_capacity(WRITE_BATCH);
    let mut answers = Vec::with_capacity(WRITE_BATCH);
    let (mut out_open, mut answers_open) = (true, true);
    while out_open || answers_open {
        tokio::select! {
            n = answers_rx.recv_many(&mut answers, WRITE_BATCH), if answers_open => {
                answers_open = n > 0;
            }
            n = out_rx.recv_many(&mut messages, WRITE_BATCH), if out_open => {
                out_open = n > 0;
            }
        }
        // Whatever else is ready goes out with the same flush.
        while messages.len() < WRITE_BATCH {
            let Ok(m) = out_rx.try_recv() else { break };
            messages.push(m);
        }
        while answers.len() < WRITE_BATCH {
            let Ok(a) = answers_rx.try_recv() else { break };
            answers.push(a);
        }
        if messages.is_empty() && answers.is_empty() {
            continue;
        }
        let written = write_batch(&mut writer, &mut messages, &mut answers, &shared).await;
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::TimedOut {
                let secs = shared.write_timeout.as_secs();
                tracing::info!(?ip, secs, "peer took no answer in time; closing");
            } else if e.kind() == std::io::ErrorKind::InvalidInput {
                // The codec refused a frame over MAX_ANSWER_FRAME_BYTES: a
                // bug of ours, as answers are bounded below it. The
                // connection closes so that nothing more is applied
                // unanswered; its till asks the status of what it sent.
                tracing::error!(?ip, error = %e, "an answer over the frame limit; connection closed");
            } else {
                tracing::debug!(?ip, error = %e, "write failed; closing");
            }
            return;
        }
    }
}

/// Feeds one batch of messages and answers, then flushes once. An answer's
/// in-flight permit is released as soon as the answer is handed over. Each
/// write to the socket (a feed writes out what the buffer held before it)
/// must be done within `shared.write_timeout`, else `TimedOut`: a peer that
/// does not read must not hold this task, nor the read half behind it.
async fn write_batch<W>(
    writer: &mut FramedWrite<W, LengthDelimitedCodec>,
    messages: &mut Vec<ServerMessage>,
    answers: &mut Vec<Answered>,
    shared: &Shared,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let limit = shared.write_timeout;
    for msg in messages.drain(..) {
        bounded(limit, writer.feed(bytes::Bytes::from(msg.encode_to_vec()))).await?;
    }
    for (pending, answer) in answers.drain(..) {
        let result = answer.as_ref().err().map(|r| r.code);
        super::metrics::get().answered(pending.op, result, pending.started.elapsed());
        let msg = answer_message(&pending, answer);
        let fed = bounded(limit, writer.feed(bytes::Bytes::from(msg.encode_to_vec()))).await;
        drop(pending.permit);
        fed?;
    }
    bounded(limit, SinkExt::<bytes::Bytes>::flush(writer)).await
}

/// `write` if it is done within `limit`, else `TimedOut`.
async fn bounded(
    limit: std::time::Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// The wire form of a request's answer; a probing answer not counted where
/// it was found (`guard::is_probing`) counts against the terminal's and the
/// address's budgets now (`Probe::count` counts it once).
fn answer_message(pending: &Pending, answer: Answer) -> ServerMessage {
    let body = match answer {
        Ok(reply) => server_message::Body::Reply(reply),
        Err(refusal) => {
            pending.probe.count(refusal.code);
            tracing::info!(principal = ?pending.principal, code = ?refusal.code, "refused: {}", refusal.message);
            server_message::Body::Error(refusal.into())
        }
    };
    ServerMessage {
        request_id: pending.request_id,
        body: Some(body),
    }
}
