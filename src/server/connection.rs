//! One client connection: sign-on, then pipelined signed requests.
//!
//! The read half runs the session. A signed request goes to the verifier
//! threads with its continuation and the read half goes on reading; the
//! verifier forwards it to the brand's writer, whose committer sends the
//! durable answer straight to this connection's write task. The write task
//! (`reply::write_loop`) writes every answer that is ready with one flush.
//! So a slow request never blocks reading the next one, and no task sits
//! between verifier, writer and socket. Sign-on itself is in `sign_on`.
//!
//! The stream is plain TCP or TLS over TCP (the listener decides); the
//! session is the same on both.
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::guard::{GuardKey, Probe};
use super::reply::{error_msg, write_loop, Answered, Pending, ReplyTo};
use super::sign_on::{self, Phase, Session, Step};
use super::Shared;
use crate::codec::{frame_codec, is_frame_too_large};
use crate::crypto::request_message;
use crate::error::Refusal;
use crate::ledger::Submission;
use crate::limits::*;
use crate::pb::request::Op;
use crate::pb::{
    client_message::Body, server_message, ClientMessage, Echo, ErrorCode as E, ServerMessage,
    SignedRequest,
};
use crate::state::Principal;

/// What the read loop does after a message.
#[derive(PartialEq, Eq)]
enum Next {
    Read,
    Close,
}

/// The read half's view of its connection: who, where its messages and
/// answers go, and its in-flight permits. Dropping it closes the session's
/// side of both queues.
struct Conn {
    peer: SocketAddr,
    ip: Option<IpAddr>,
    shared: Arc<Shared>,
    out: mpsc::Sender<ServerMessage>,
    answers: mpsc::UnboundedSender<Answered>,
    in_flight: Arc<Semaphore>,
    /// The session's cut token once signed on: a message waiting for room
    /// in the write queue stops waiting when the session is cut.
    session_cut: Option<CancellationToken>,
    /// Its requests whose signature did not verify.
    bad: BadSignatures,
}

/// A connection's requests whose signature did not verify. Each one makes
/// the verifier's whole batch, other tills' requests included, fall back
/// to one check at a time, so a connection that sends
/// `MAX_BAD_SIGNATURES_PER_CONNECTION` is closed, and each counts against
/// its key (`GuardKey::BadSigner`): opening new sessions to go on is
/// limited like guessing keys (`--sign-on-failures-per-minute`), for that
/// key alone.
#[derive(Clone)]
struct BadSignatures {
    peer: SocketAddr,
    count: Arc<AtomicU32>,
}

impl BadSignatures {
    fn new(peer: SocketAddr) -> Self {
        BadSignatures {
            peer,
            count: Arc::new(AtomicU32::new(0)),
        }
    }

    /// True once the connection has sent its last bad signature.
    fn spent(&self) -> bool {
        self.count.load(Ordering::Relaxed) >= MAX_BAD_SIGNATURES_PER_CONNECTION
    }

    /// Refuses a request whose signature does not verify and counts it;
    /// at the limit the connection is closed.
    fn refuse(&self, shared: &Shared, session: &Session, reply: ReplyTo) {
        let principal = session.principal;
        tracing::warn!(peer = ?self.peer, ?principal, "request signature does not verify");
        shared.guard.fail(GuardKey::BadSigner(session.key_bytes));
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n == MAX_BAD_SIGNATURES_PER_CONNECTION {
            // The read loop closes the connection at its next frame.
            tracing::warn!(peer = ?self.peer, ?principal, n, "too many bad request signatures; closing");
        }
        let why = "request signature does not verify";
        reply.send(Err(Refusal::new(E::BadSignature, why)));
    }
}

/// Serves one connection from `peer` until the peer leaves, a timeout
/// passes, the peer breaks the framing or the session is cut (its terminal
/// disabled). `stream` is a plain TCP stream or a TLS stream whose
/// handshake is done; `signing_on` is its slot among the connections still
/// signing on, given back once it is signed on (or gone).
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    signing_on: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ip = Some(peer.ip());
    let (r, w) = tokio::io::split(stream);
    let reader = FramedRead::new(r, frame_codec(shared.max_frame_bytes));
    // Answers are bounded by what clients read, not by what the daemon
    // reads (`MAX_ANSWER_FRAME_BYTES`).
    let writer = FramedWrite::new(w, frame_codec(MAX_ANSWER_FRAME_BYTES));
    // The session's own messages (sign-on, echo, refusals before a request
    // is taken in) go through a bounded channel, so a peer that does not
    // read stops being read; answers to requests are bounded by the
    // in-flight permits they hold.
    let (out_tx, out_rx) = mpsc::channel::<ServerMessage>(MAX_IN_FLIGHT_PER_CONNECTION + 4);
    let (answers_tx, answers_rx) = mpsc::unbounded_channel::<Answered>();
    let write_task = tokio::spawn(write_loop(writer, out_rx, answers_rx, shared.clone(), ip));
    let conn = Conn {
        peer,
        ip,
        shared,
        out: out_tx,
        answers: answers_tx,
        // Clients are told MAX_IN_FLIGHT; a slot frees just after its answer
        // is handed to the connection's write buffer, so a fast client can
        // read an answer and send its next request a moment before that.
        // The slack keeps such a client from a spurious TOO_MANY_IN_FLIGHT
        // while the bound stays fixed.
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION * 2)),
        session_cut: None,
        bad: BadSignatures::new(peer),
    };
    let ended = conn.read_loop(reader, signing_on).await;
    // Answers still in flight are delivered before the socket closes; a
    // connection the daemon cut gets a moment for them, then the socket
    // closes whether the peer reads or not.
    if ended == Ended::Cut {
        let drain = Duration::from_millis(REVOKED_DRAIN_MILLIS);
        let abort = write_task.abort_handle();
        if tokio::time::timeout(drain, write_task).await.is_err() {
            abort.abort();
        }
    } else {
        let _ = write_task.await;
    }
}

/// How a session ended.
#[derive(PartialEq, Eq)]
enum Ended {
    /// The peer left, timed out or broke the framing.
    Closed,
    /// The daemon cut it: its session was revoked (see
    /// `SessionSlot::token`), it sent too many bad signatures, or it did
    /// not sign on in time.
    Cut,
}

impl Conn {
    /// Reads and handles messages until the session ends; consumes the
    /// connection so that its queues close when it returns.
    async fn read_loop<R>(
        mut self,
        mut reader: FramedRead<R, LengthDelimitedCodec>,
        signing_on: OwnedSemaphorePermit,
    ) -> Ended
    where
        R: AsyncRead + Unpin,
    {
        let mut phase = Phase::AwaitHello;
        let mut signing_on = Some(signing_on);
        let sign_on_deadline = Instant::now() + Duration::from_secs(SIGN_ON_TIMEOUT_SECS);
        loop {
            let (deadline, cut) = match &phase {
                Phase::SignedOn(s) => {
                    // Signed on: the sign-on slot goes back to the pool.
                    signing_on = None;
                    let idle = Instant::now() + Duration::from_secs(IDLE_TIMEOUT_SECS);
                    self.session_cut = Some(s.slot.token().clone());
                    (idle, self.session_cut.clone())
                }
                _ => (sign_on_deadline, None),
            };
            // Before sign-on the deadline holds for the whole phase: a
            // peer that always has the next frame ready (a read in time
            // returns it even past the deadline) is no reason to go on.
            if signing_on.is_some() && Instant::now() >= sign_on_deadline {
                return self.late();
            }
            let frame = tokio::select! {
                biased;
                _ = cancelled(cut.as_ref()) => {
                    self.cut(&phase);
                    return Ended::Cut;
                }
                _ = self.shared.stop.cancelled() => {
                    self.stopping(&phase);
                    break;
                }
                // The write task ended: the peer went away, took nothing
                // for the write timeout, or an answer could not be sent.
                // Nothing more is read, so nothing more is applied that
                // could not be answered.
                _ = self.out.closed() => {
                    tracing::debug!(peer = ?self.peer, "write half ended; closing");
                    break;
                }
                frame = self.next_frame(&mut reader, deadline) => frame,
            };
            let Some(frame) = frame else {
                // The read waits no longer than the sign-on deadline: a
                // peer silent until then is told why it is closed.
                if signing_on.is_some() && Instant::now() >= sign_on_deadline {
                    return self.late();
                }
                break;
            };
            // Asked as each frame comes rather than raced against the
            // read: a select branch more would cost every request a
            // waiter on one more token, and a connection that stopped
            // sending costs the verifier nothing.
            if self.bad.spent() {
                return Ended::Cut;
            }
            let next = match signing_on {
                None => self.take(frame, &mut phase).await,
                // Before sign-on, answering is bounded by the deadline too:
                // an echo waiting for room in the queue of a peer that
                // reads slowly must not hold the sign-on slot past it.
                Some(_) => match timeout_at(sign_on_deadline, self.take(frame, &mut phase)).await {
                    Ok(next) => next,
                    Err(_) => return self.late(),
                },
            };
            if next == Next::Close {
                break;
            }
        }
        drop(signing_on);
        Ended::Closed
    }

    /// The sign-on deadline passed: the connection is cut, and the peer
    /// told so if its queue has room. A till whose sign-on the daemon could
    /// not answer in time (a brand electing its leader) gets a refusal it
    /// can act on instead of a bare close. Nothing waits for room: a peer
    /// that does not read is not told.
    fn late(&self) -> Ended {
        tracing::debug!(peer = ?self.peer, "not signed on in time; closing");
        let why = format!(
            "not signed on within {SIGN_ON_TIMEOUT_SECS} s; connection closed: \
             connect and sign on again"
        );
        let _ = self.out.try_send(error_msg(0, E::NotSignedOn, why));
        Ended::Cut
    }

    /// Decodes and handles one frame.
    async fn take(&self, frame: BytesMut, phase: &mut Phase) -> Next {
        let Ok(msg) = ClientMessage::decode(frame) else {
            tracing::info!(peer = ?self.peer, "malformed message");
            self.say(error_msg(0, E::Malformed, "not a cardd.v1 ClientMessage"))
                .await;
            return Next::Read;
        };
        self.handle(msg, phase).await
    }

    /// The next frame, or `None` when the session ends: the peer left, the
    /// deadline passed, or the framing broke (an oversized frame is told).
    async fn next_frame<R>(
        &self,
        reader: &mut FramedRead<R, LengthDelimitedCodec>,
        deadline: Instant,
    ) -> Option<BytesMut>
    where
        R: AsyncRead + Unpin,
    {
        let peer = self.peer;
        match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => {
                tracing::debug!(?peer, "connection timed out");
                None
            }
            Ok(None) => None,
            Ok(Some(Err(e))) if is_frame_too_large(&e) => {
                tracing::warn!(?peer, "frame over the limit; closing");
                let limit = self.shared.max_frame_bytes;
                let why = format!("frames are limited to {limit} bytes");
                self.say(error_msg(0, E::FrameTooLarge, why)).await;
                None
            }
            Ok(Some(Err(_))) => None,
            Ok(Some(Ok(frame))) => Some(frame),
        }
    }

    /// Handles one message in the session's current phase.
    async fn handle(&self, msg: ClientMessage, phase: &mut Phase) -> Next {
        let rid = msg.request_id;
        match (msg.body, &*phase) {
            (None, _) => {
                self.say(error_msg(rid, E::Malformed, "empty message"))
                    .await
            }
            (Some(Body::Echo(e)), _) => self.say(echo(rid, e)).await,
            (Some(Body::Hello(h)), Phase::AwaitHello) => {
                let step = sign_on::hello(&self.shared, self.peer, rid, h);
                return self.step(step, phase).await;
            }
            (Some(Body::SignOnProof(p)), Phase::AwaitProof { .. }) => {
                let Phase::AwaitProof {
                    nonce,
                    key,
                    brand,
                    principal,
                } = *phase
                else {
                    unreachable!("matched above")
                };
                let expected = (&nonce, &key, brand, principal);
                let step = sign_on::proof(&self.shared, self.peer, rid, p, expected).await;
                return self.step(step, phase).await;
            }
            (Some(Body::Signed(s)), Phase::SignedOn(session)) => self.signed(rid, s, session).await,
            (Some(Body::Signed(_)), _) => {
                self.say(error_msg(rid, E::NotSignedOn, "sign on first"))
                    .await
            }
            (Some(Body::Hello(_) | Body::SignOnProof(_)), Phase::SignedOn(_)) => {
                self.say(error_msg(rid, E::AlreadySignedOn, "already signed on"))
                    .await
            }
            (Some(Body::Hello(_) | Body::SignOnProof(_)), _) => {
                self.say(error_msg(rid, E::Malformed, "unexpected sign-on message"))
                    .await;
                return Next::Close;
            }
        }
        Next::Read
    }

    /// Sends a sign-on step's message and moves to its phase, or sends its
    /// refusal and closes.
    async fn step(&self, step: Step, phase: &mut Phase) -> Next {
        match step {
            Step::Next(msg, next) => {
                self.say(msg).await;
                *phase = next;
                Next::Read
            }
            Step::Close(last) => {
                if let Some(msg) = last {
                    self.say(msg).await;
                }
                Next::Close
            }
        }
    }

    /// Takes in a signed request: refused at once if its signer is over its
    /// probing budget or in-flight bound, else queued for the verifier.
    async fn signed(&self, rid: u64, s: SignedRequest, session: &Arc<Session>) {
        let shared = &self.shared;
        let signer = (session.brand_id, session.principal.txn_namespace());
        let probe = Probe::new(shared.guard.clone(), signer, self.ip);
        // Refused here already if blocked; the requests admitted now are
        // held to the budget again as each is applied (`guard`).
        if let Err(refusal) = probe.admit() {
            tracing::warn!(peer = ?self.peer, principal = ?session.principal, "refused: probing limit");
            return self
                .say(error_msg(rid, refusal.code, refusal.message))
                .await;
        }
        if self.bad.spent() {
            let why = "too many bad signatures on this connection; it is closing";
            return self.say(error_msg(rid, E::RateLimited, why)).await;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let why = "too many requests in flight";
            return self.say(error_msg(rid, E::TooManyInFlight, why)).await;
        };
        let reply = ReplyTo {
            tx: self.answers.clone(),
            pending: Pending {
                request_id: rid,
                permit,
                principal: session.principal,
                probe,
                op: 0,
                started: std::time::Instant::now(),
                reservation: None,
            },
        };
        // Checked in batches with other connections' requests, on the
        // verifier threads, which then forward it to the writer; this
        // connection's order is kept because the verifier runs
        // continuations in queue order.
        let message = request_message(&s.request);
        let signature = s.signature.clone();
        let then = {
            let (session, shared, out) = (session.clone(), shared.clone(), self.out.clone());
            let bad = self.bad.clone();
            Box::new(move |ok| verified(ok, s, &session, shared, out, reply, bad))
        };
        shared
            .verifier
            .check(session.key, message, signature, then)
            .await;
    }

    /// The session is being cut: a terminal is told why (it was disabled;
    /// terminals are cut for nothing else) before the connection closes. A
    /// full queue means a peer that does not read, which is told nothing.
    fn cut(&self, phase: &Phase) {
        tracing::info!(peer = ?self.peer, "session cut");
        if let Phase::SignedOn(s) = phase {
            // A key no longer in the index was rotated out (owner key
            // rotation, terminal re-key): closed without a message, as the
            // session that asked for the rotation may still have its
            // answer in the write queue, behind which a message would
            // jump; a new sign-on with the old key is told UNKNOWN_KEY.
            if self.shared.keys.get(&s.key_bytes).is_none() {
                return;
            }
            if matches!(s.principal, Principal::Terminal(_)) {
                let why = "this terminal was disabled by the owner; session closed";
                let _ = self.out.try_send(error_msg(0, E::TerminalDisabled, why));
            }
        }
    }

    /// The daemon is shutting down: nothing more is read; what was read is
    /// still answered (the caller drains the write task). The peer is told
    /// why the connection will close, so a till reconnects and asks the
    /// status of anything it sent after this instead of guessing. An audit
    /// stream (an export) stops: it could outlast the grace period.
    fn stopping(&self, phase: &Phase) {
        tracing::debug!(peer = ?self.peer, "closing for shutdown");
        let why = "the daemon is shutting down; requests sent after this were not read: \
                   reconnect and retry them (same txn ids)";
        let _ = self.out.try_send(error_msg(0, E::ServerBusy, why));
        if let Phase::SignedOn(s) = phase {
            s.slot.token().cancel();
        }
    }

    /// Queues one of the session's own messages. The wait for room is
    /// bounded: a peer that does not read has its write task end after the
    /// write timeout (the send then fails), and a cut session stops waiting
    /// at once. A closed write task means the peer is gone; the read loop
    /// sees it before its next read.
    async fn say(&self, msg: ServerMessage) {
        tokio::select! {
            biased;
            _ = cancelled(self.session_cut.as_ref()) => {}
            _ = self.out.send(msg) => {}
        }
    }
}

/// Resolves when `token` is cancelled; never without a token.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

fn echo(rid: u64, e: Echo) -> ServerMessage {
    if e.payload.len() > MAX_ECHO_BYTES {
        error_msg(rid, E::InvalidArgument, "echo payload too long")
    } else {
        ServerMessage {
            request_id: rid,
            body: Some(server_message::Body::Echo(e)),
        }
    }
}

/// What follows a request's signature check (on a verifier thread, in
/// queue order; must not block): refuse it, or decode and route it to the
/// brand's writer (or, for an owner's audit read, to a task of its own).
fn verified(
    ok: bool,
    s: SignedRequest,
    session: &Session,
    shared: Arc<Shared>,
    out: mpsc::Sender<ServerMessage>,
    mut reply: ReplyTo,
    bad: BadSignatures,
) {
    if !ok {
        return bad.refuse(&shared, session, reply);
    }
    // Decoded once, here; the writer applies the decoded form.
    let mut routed =
        Submission::from_wire(session.principal, session.key_bytes, s.request, s.signature)
            .and_then(|sub| Ok((route(&shared, session, sub.decoded())?, sub)));
    if let Ok((route, sub)) = &mut routed {
        reply.pending.op = super::metrics::op_index(sub.decoded().op.as_ref());
        if let Route::Writer(reservation) = route {
            reply.pending.reservation = reservation.take().map(Box::new);
        }
    }
    match routed {
        Err(refusal) => reply.send(Err(refusal)),
        Ok((Route::Audit(op), _)) => start_audit(*op, session, shared, out, reply),
        Ok((Route::Personal, sub)) => {
            let who = super::personal::Who {
                principal: session.principal,
                key: session.key_bytes,
                brand_id: session.brand_id,
            };
            let brand = session.brand.clone();
            session
                .runtime
                .spawn(super::personal::serve(shared, brand, who, sub, reply));
        }
        Ok((Route::WebLogin, sub)) => {
            super::web_login::web_login(shared, session, sub.decoded(), reply)
        }
        Ok((Route::Writer(_), sub)) => {
            if let Err(reply) = session.brand.submit_to(sub, reply) {
                reply.send(Err(Refusal::new(E::Internal, "server stopping")));
            }
        }
    }
}

/// Starts an audit stream on a task of its own, its answer a stream of
/// frames on the session's queue.
fn start_audit(
    op: Op,
    session: &Session,
    shared: Arc<Shared>,
    out: mpsc::Sender<ServerMessage>,
    reply: ReplyTo,
) {
    // Counted before it starts: over its key's, brand's or the daemon's
    // quota it is refused and the session goes on.
    let slot = match shared.sessions.audit(session.brand_id, session.principal) {
        Ok(slot) => slot,
        Err(refusal) => return reply.send(Err(refusal)),
    };
    let Pending {
        request_id,
        permit,
        op: op_index,
        started,
        ..
    } = reply.pending;
    // Its answer is a stream of frames: counted once, as it starts.
    super::metrics::get().answered(op_index, None, started.elapsed());
    let stream = super::audit::Stream {
        brand: session.brand_id,
        out,
        request_id,
        permit,
        slot,
        session: session.slot.token().clone(),
    };
    session
        .runtime
        .spawn(super::audit::serve(op, shared, stream));
}

/// An audit read of the session's own brand, unless that brand was halted
/// (its ledger on disk was found changed: nothing of it is served).
fn audit_route(
    shared: &Shared,
    session: &Session,
    req: &crate::pb::Request,
    op: &Op,
) -> Result<Route, Refusal> {
    if req.brand_id != session.brand_id {
        return Err(Refusal::new(E::WrongBrand, "request names another brand"));
    }
    if shared.brand(req.brand_id).is_some_and(|b| b.is_halted()) {
        return Err(Refusal::new(
            E::StorageFailure,
            "this brand was stopped: its ledger on disk was found changed (see the daemon's log)",
        ));
    }
    Ok(Route::Audit(Box::new(op.clone())))
}

/// Where a verified request goes.
enum Route {
    /// To the brand's writer (the state machine); an enrolment with the
    /// reservation of its key, held until it is answered.
    Writer(Option<super::keys::Reservation>),
    /// An owner's audit read, served from durable storage.
    Audit(Box<Op>),
    /// A holder or PIN request: the server's part first, on a task of its
    /// own (`personal.rs`), never on the applier.
    Personal,
    /// A web login link (`server/web_login.rs`): no record.
    WebLogin,
}

fn route(shared: &Shared, session: &Session, req: &crate::pb::Request) -> Result<Route, Refusal> {
    if shared.replicated && !shared.serves(session.brand_id) {
        // `--replicate`: this node lost the brand's lease since the session
        // signed on (or its clock says it may have: a pause past the
        // lease); the brand's other node serves it now. Reads too: a
        // stale balance is not an answer.
        return Err(Refusal::new(
            E::NotActive,
            "this node does not serve this brand any more; try its other node",
        ));
    }
    match &req.op {
        Some(op @ (Op::ExportLedger(_) | Op::ConsistencyProof(_))) => {
            if !matches!(session.principal, Principal::Owner | Principal::Auditor(_)) {
                Err(Refusal::new(
                    E::WrongRole,
                    "audit operations need the owner key or an auditor key",
                ))
            } else {
                audit_route(shared, session, req, op)
            }
        }
        // An activity page reads records from storage, like an export.
        Some(op @ Op::Report(r)) if r.kind == "activity-scan" => {
            let allowed = match session.principal {
                Principal::Owner | Principal::Auditor(_) => true,
                // A store manager reads its own store's activity only.
                Principal::StoreManager(_, store) => r.store_id == Some(store) && r.card.is_empty(),
                _ => false,
            };
            if !allowed {
                Err(Refusal::new(
                    E::WrongRole,
                    "this key may not read that activity",
                ))
            } else {
                audit_route(shared, session, req, op)
            }
        }
        Some(Op::WebLogin(_)) => Ok(Route::WebLogin),
        // One key speaks for one brand: the owner's enrolment reserves its
        // key for this brand first (the brand's own state machine then
        // answers retries and same-brand duplicates) until it is answered.
        // Only the owner may enrol: anyone else's is refused as it stands,
        // and reserves nothing.
        Some(_) if is_enrolment(req) && session.principal != Principal::Owner => {
            Ok(Route::Writer(None))
        }
        Some(
            Op::AddKey(crate::pb::AddKey { public_key, .. })
            | Op::EnrollTerminal(crate::pb::EnrollTerminal { public_key, .. })
            | Op::RotateOwnerKey(crate::pb::RotateOwnerKey {
                new_public_key: public_key,
                ..
            })
            | Op::RekeyTerminal(crate::pb::RekeyTerminal {
                new_public_key: public_key,
                ..
            }),
        ) => match <[u8; 32]>::try_from(public_key.as_slice()) {
            Ok(key) => reserve_key(shared, key, session.brand_id),
            Err(_) => Ok(Route::Writer(None)),
        },
        Some(op) if super::personal::is_personal(op) => Ok(Route::Personal),
        _ => Ok(Route::Writer(None)),
    }
}

/// Reserves `key` for an enrolment of `brand`. A key enrolled nowhere is
/// not taken while a brand is refused for a damaged ledger: the keys that
/// brand enrolled are known only as far as its log still reads, so another
/// brand could take one of them (public keys are public) and, once the
/// refused brand is repaired, its till would sign on as the other brand's.
fn reserve_key(shared: &Shared, key: [u8; 32], brand: u32) -> Result<Route, Refusal> {
    if let Some(refused) = shared.any_damaged() {
        if shared.keys.get(&key).is_none() {
            let why = format!(
                "no new key can be enrolled while brand(s) {refused:?} are refused for a \
                 damaged ledger (their keys cannot all be checked): try again once the \
                 operator has repaired them (docs/operations.md)"
            );
            return Err(Refusal::new(E::ServerBusy, why));
        }
    }
    match shared.keys.reserve(key, brand) {
        None => Err(Refusal::new(E::KeyInUse, "this key is already enrolled")),
        held => Ok(Route::Writer(held)),
    }
}

/// True for the requests that enrol a public key (and so reserve it).
fn is_enrolment(req: &crate::pb::Request) -> bool {
    matches!(
        req.op,
        Some(Op::AddKey(_) | Op::EnrollTerminal(_) | Op::RotateOwnerKey(_) | Op::RekeyTerminal(_))
    )
}
