//! One client connection: sign-on, then pipelined signed requests.
//!
//! The read half runs the session. A signed request goes to the verifier
//! threads with its continuation and the read half goes on reading; the
//! verifier forwards it to the brand's writer, whose committer sends the
//! durable answer straight to this connection's write task. The write task
//! writes every answer that is ready with one flush. So a slow request
//! never blocks reading the next one, and no task sits between verifier,
//! writer and socket.
//!
//! The stream is plain TCP or TLS over TCP (the listener decides); the
//! session is the same on both.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use futures::{SinkExt, StreamExt};
use prost::Message;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::Shared;
use crate::codec::{frame_codec, is_frame_too_large};
use crate::crypto::{parse_public_key, request_message, sign_on_message, verify_strict};
use crate::error::Refusal;
use crate::ledger::{Answer, Submission};
use crate::limits::*;
use crate::pb::request::Op;
use crate::pb::{
    client_message::Body, server_message, ClientMessage, ErrorCode as E, ServerMessage,
    SignedRequest,
};
use crate::state::Principal;

use super::guard::GuardKey;
use super::writer::BrandHandle;

/// A signed-on session.
struct Session {
    key: VerifyingKey,
    key_bytes: [u8; 32],
    principal: Principal,
    brand: BrandHandle,
    brand_id: u32,
    /// Where audit reads (the only requests served by a task of their own)
    /// are spawned from the verifier threads.
    runtime: tokio::runtime::Handle,
}

/// Where a request's answer goes: its connection's write task, with the
/// request's in-flight permit (released once the answer is handed to the
/// socket).
pub struct ReplyTo {
    tx: mpsc::UnboundedSender<Answered>,
    pending: Pending,
}

/// A request waiting for its answer, as the write task needs it.
struct Pending {
    request_id: u64,
    permit: OwnedSemaphorePermit,
    principal: Principal,
    terminal: GuardKey,
}

impl ReplyTo {
    /// Hands `answer` to the connection's write task. A connection that went
    /// away no longer wants it; the record stands and a status query will
    /// find it.
    pub fn send(self, answer: Answer) {
        let _ = self.tx.send((self.pending, answer));
    }
}

/// An answer in the write task's queue.
type Answered = (Pending, Answer);

/// Answers (or other messages) written with one flush at most.
const WRITE_BATCH: usize = 2 * MAX_IN_FLIGHT_PER_CONNECTION;

// One per connection and never moved in a hot loop: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
enum Phase {
    AwaitHello,
    AwaitProof {
        nonce: [u8; 32],
        key: VerifyingKey,
        brand: u32,
        principal: Principal,
    },
    SignedOn(Arc<Session>),
}

fn error_msg(request_id: u64, code: E, message: impl Into<String>) -> ServerMessage {
    ServerMessage {
        request_id,
        body: Some(server_message::Body::Error(
            Refusal::new(code, message).into(),
        )),
    }
}

/// Serves one connection from `peer` until the peer leaves, a timeout
/// passes, or the peer breaks the framing. `stream` is a plain TCP stream
/// or a TLS stream whose handshake is done.
pub async fn serve<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ip = Some(peer.ip());
    let (r, w) = tokio::io::split(stream);
    let mut reader = FramedRead::new(r, frame_codec(shared.max_frame_bytes));
    let writer = FramedWrite::new(w, frame_codec(shared.max_frame_bytes));
    // The session's own messages (sign-on, echo, refusals before a request
    // is taken in) go through a bounded channel, so a peer that does not
    // read stops being read; answers to requests are bounded by the
    // in-flight permits they hold.
    let (out_tx, out_rx) = mpsc::channel::<ServerMessage>(MAX_IN_FLIGHT_PER_CONNECTION + 4);
    let (answers_tx, answers_rx) = mpsc::unbounded_channel::<Answered>();
    let write_task = tokio::spawn(write_loop(writer, out_rx, answers_rx, shared.clone(), ip));

    // Clients are told MAX_IN_FLIGHT; a slot frees just after its answer is
    // handed to the connection's write buffer, so a fast client can read an
    // answer and send its next request a moment before that. The slack
    // keeps such a client from a spurious TOO_MANY_IN_FLIGHT while the
    // bound stays fixed.
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION * 2));
    let mut phase = Phase::AwaitHello;
    let sign_on_deadline = tokio::time::Instant::now() + Duration::from_secs(SIGN_ON_TIMEOUT_SECS);
    loop {
        let deadline = match phase {
            Phase::SignedOn(_) => {
                tokio::time::Instant::now() + Duration::from_secs(IDLE_TIMEOUT_SECS)
            }
            _ => sign_on_deadline,
        };
        let frame = match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => {
                tracing::debug!(?peer, "connection timed out");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) if is_frame_too_large(&e) => {
                tracing::warn!(?peer, "frame over the limit; closing");
                let _ = out_tx
                    .send(error_msg(
                        0,
                        E::FrameTooLarge,
                        format!("frames are limited to {} bytes", shared.max_frame_bytes),
                    ))
                    .await;
                break;
            }
            Ok(Some(Err(_))) => break,
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(msg) = ClientMessage::decode(frame) else {
            tracing::info!(?peer, "malformed message");
            let _ = out_tx
                .send(error_msg(0, E::Malformed, "not a cardd.v1 ClientMessage"))
                .await;
            continue;
        };
        let rid = msg.request_id;
        match (msg.body, &phase) {
            (None, _) => {
                let _ = out_tx
                    .send(error_msg(rid, E::Malformed, "empty message"))
                    .await;
            }
            (Some(Body::Echo(e)), _) => {
                let reply = if e.payload.len() > MAX_ECHO_BYTES {
                    error_msg(rid, E::InvalidArgument, "echo payload too long")
                } else {
                    ServerMessage {
                        request_id: rid,
                        body: Some(server_message::Body::Echo(e)),
                    }
                };
                let _ = out_tx.send(reply).await;
            }
            (Some(Body::Hello(h)), Phase::AwaitHello) => {
                if ip.is_some_and(|ip| shared.guard.blocked(GuardKey::SignOn(ip))) {
                    tracing::warn!(
                        ?peer,
                        "sign-on refused: too many failures from this address"
                    );
                    let _ = out_tx
                        .send(error_msg(
                            rid,
                            E::RateLimited,
                            "too many sign-on failures; wait",
                        ))
                        .await;
                    break;
                }
                if h.protocol_version != 1 {
                    sign_on_failed(&shared, ip);
                    let _ = out_tx
                        .send(error_msg(
                            rid,
                            E::UnsupportedVersion,
                            "this server speaks version 1",
                        ))
                        .await;
                    break;
                }
                let found = parse_public_key(&h.public_key)
                    .and_then(|k| Some((k, shared.keys.get(&k.to_bytes())?)));
                let Some((key, (brand, principal))) = found else {
                    sign_on_failed(&shared, ip);
                    tracing::warn!(
                        ?peer,
                        key = hex::encode(&h.public_key),
                        "sign-on with an unknown key"
                    );
                    let _ = out_tx
                        .send(error_msg(
                            rid,
                            E::UnknownKey,
                            "no terminal or owner has this key",
                        ))
                        .await;
                    break;
                };
                let mut nonce = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut nonce);
                let challenge = crate::pb::Challenge {
                    nonce: nonce.to_vec(),
                    server_public_key: shared.server_public.to_vec(),
                };
                let _ = out_tx
                    .send(ServerMessage {
                        request_id: rid,
                        body: Some(server_message::Body::Challenge(challenge)),
                    })
                    .await;
                phase = Phase::AwaitProof {
                    nonce,
                    key,
                    brand,
                    principal,
                };
            }
            (
                Some(Body::SignOnProof(p)),
                Phase::AwaitProof {
                    nonce,
                    key,
                    brand,
                    principal,
                },
            ) => {
                if !verify_strict(
                    key,
                    &sign_on_message(nonce, &shared.server_public),
                    &p.signature,
                ) {
                    sign_on_failed(&shared, ip);
                    tracing::warn!(
                        ?peer,
                        ?principal,
                        brand,
                        "sign-on signature does not verify"
                    );
                    let _ = out_tx
                        .send(error_msg(
                            rid,
                            E::SignOnFailed,
                            "signature over the nonce does not verify",
                        ))
                        .await;
                    break;
                }
                let Some(handle) = shared.brand(*brand) else {
                    let _ = out_tx
                        .send(error_msg(rid, E::Internal, "brand not loaded"))
                        .await;
                    break;
                };
                let mut ok = match handle.sign_on(*principal).await {
                    Some(Ok(ok)) => ok,
                    Some(Err(refusal)) => {
                        tracing::warn!(
                            ?peer,
                            ?principal,
                            brand,
                            "sign-on refused: {}",
                            refusal.message
                        );
                        let _ = out_tx
                            .send(ServerMessage {
                                request_id: rid,
                                body: Some(server_message::Body::Error(refusal.into())),
                            })
                            .await;
                        break;
                    }
                    None => break,
                };
                ok.max_frame_bytes = shared.max_frame_bytes as u64;
                ok.max_in_flight = MAX_IN_FLIGHT_PER_CONNECTION as u32;
                tracing::info!(?peer, ?principal, brand, "signed on");
                let _ = out_tx
                    .send(ServerMessage {
                        request_id: rid,
                        body: Some(server_message::Body::SignOnOk(ok)),
                    })
                    .await;
                phase = Phase::SignedOn(Arc::new(Session {
                    key: *key,
                    key_bytes: key.to_bytes(),
                    principal: *principal,
                    brand: handle,
                    brand_id: *brand,
                    runtime: tokio::runtime::Handle::current(),
                }));
            }
            (Some(Body::Signed(s)), Phase::SignedOn(session)) => {
                let terminal_key =
                    GuardKey::CardMissTerminal(session.brand_id, session.principal.txn_namespace());
                if shared.guard.blocked(terminal_key)
                    || ip.is_some_and(|ip| shared.guard.blocked(GuardKey::CardMissAddr(ip)))
                {
                    tracing::warn!(?peer, principal = ?session.principal, "refused: probing limit");
                    let _ = out_tx
                        .send(error_msg(
                            rid,
                            E::RateLimited,
                            "too many unknown cards; wait before trying again",
                        ))
                        .await;
                    continue;
                }
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    let _ = out_tx
                        .send(error_msg(
                            rid,
                            E::TooManyInFlight,
                            "too many requests in flight",
                        ))
                        .await;
                    continue;
                };
                let reply = ReplyTo {
                    tx: answers_tx.clone(),
                    pending: Pending {
                        request_id: rid,
                        permit,
                        principal: session.principal,
                        terminal: terminal_key,
                    },
                };
                // Checked in batches with other connections' requests, on the
                // verifier threads, which then forward it to the writer; this
                // connection's order is kept because the verifier runs
                // continuations in queue order.
                let message = request_message(&s.request);
                let signature = s.signature.clone();
                let then = {
                    let (session, shared, out) = (session.clone(), shared.clone(), out_tx.clone());
                    Box::new(move |ok| verified(ok, s, &session, shared, out, reply, peer))
                };
                shared
                    .verifier
                    .check(session.key, message, signature, then)
                    .await;
            }
            (Some(Body::Signed(_)), _) => {
                let _ = out_tx
                    .send(error_msg(rid, E::NotSignedOn, "sign on first"))
                    .await;
            }
            (Some(Body::Hello(_) | Body::SignOnProof(_)), Phase::SignedOn(_)) => {
                let _ = out_tx
                    .send(error_msg(rid, E::AlreadySignedOn, "already signed on"))
                    .await;
            }
            (Some(Body::Hello(_) | Body::SignOnProof(_)), _) => {
                let _ = out_tx
                    .send(error_msg(rid, E::Malformed, "unexpected sign-on message"))
                    .await;
                break;
            }
        }
    }
    drop(out_tx);
    drop(answers_tx);
    // Answers still in flight are delivered before the socket closes.
    let _ = write_task.await;
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
    reply: ReplyTo,
    peer: SocketAddr,
) {
    if !ok {
        tracing::warn!(?peer, principal = ?session.principal, "request signature does not verify");
        return reply.send(Err(Refusal::new(
            E::BadSignature,
            "request signature does not verify",
        )));
    }
    // Decoded once, here; the writer applies the decoded form.
    let routed =
        Submission::from_wire(session.principal, session.key_bytes, s.request, s.signature)
            .and_then(|sub| Ok((route(&shared, session, sub.decoded())?, sub)));
    match routed {
        Err(refusal) => reply.send(Err(refusal)),
        Ok((Route::Audit(op), _)) => {
            let Pending {
                request_id, permit, ..
            } = reply.pending;
            session.runtime.spawn(super::audit::serve(
                op,
                session.brand_id,
                shared,
                out,
                request_id,
                permit,
            ));
        }
        Ok((Route::Writer, sub)) => {
            if let Err(reply) = session.brand.submit_to(sub, reply) {
                reply.send(Err(Refusal::new(E::Internal, "server stopping")));
            }
        }
    }
}

/// The write half: writes the session's messages and the answers to its
/// requests, each batch of ready ones with one flush, until both queues
/// are closed (the session ended and every answer in flight is written)
/// or the peer stops taking them.
async fn write_loop<W>(
    mut writer: FramedWrite<W, tokio_util::codec::LengthDelimitedCodec>,
    mut out_rx: mpsc::Receiver<ServerMessage>,
    mut answers_rx: mpsc::UnboundedReceiver<Answered>,
    shared: Arc<Shared>,
    ip: Option<std::net::IpAddr>,
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
        for msg in messages.drain(..) {
            if writer
                .feed(bytes::Bytes::from(msg.encode_to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
        for (pending, answer) in answers.drain(..) {
            let msg = answer_message(&pending, answer, &shared, ip);
            let fed = writer.feed(bytes::Bytes::from(msg.encode_to_vec())).await;
            drop(pending.permit);
            if fed.is_err() {
                return;
            }
        }
        if SinkExt::<bytes::Bytes>::flush(&mut writer).await.is_err() {
            return;
        }
    }
}

/// The wire form of a request's answer; an unknown card counts against the
/// terminal's and the address's probing budgets.
fn answer_message(
    pending: &Pending,
    answer: Answer,
    shared: &Shared,
    ip: Option<std::net::IpAddr>,
) -> ServerMessage {
    let body = match answer {
        Ok(reply) => server_message::Body::Reply(reply),
        Err(refusal) => {
            if matches!(refusal.code, E::CardNotFound | E::CardOtherBrand) {
                shared.guard.fail(pending.terminal);
                if let Some(ip) = ip {
                    shared.guard.fail(GuardKey::CardMissAddr(ip));
                }
            }
            tracing::info!(principal = ?pending.principal, code = ?refusal.code, "refused: {}", refusal.message);
            server_message::Body::Error(refusal.into())
        }
    };
    ServerMessage {
        request_id: pending.request_id,
        body: Some(body),
    }
}

fn sign_on_failed(shared: &Shared, ip: Option<std::net::IpAddr>) {
    if let Some(ip) = ip {
        shared.guard.fail(GuardKey::SignOn(ip));
    }
}

/// Where a verified request goes.
enum Route {
    /// To the brand's writer (the state machine).
    Writer,
    /// An owner's audit read, served from durable storage.
    Audit(Op),
}

fn route(shared: &Shared, session: &Session, req: &crate::pb::Request) -> Result<Route, Refusal> {
    match &req.op {
        Some(op @ (Op::ExportLedger(_) | Op::ConsistencyProof(_))) => {
            if session.principal != Principal::Owner {
                Err(Refusal::new(
                    E::WrongRole,
                    "audit operations need the owner key",
                ))
            } else if req.brand_id != session.brand_id {
                Err(Refusal::new(E::WrongBrand, "request names another brand"))
            } else {
                Ok(Route::Audit(op.clone()))
            }
        }
        // One key speaks for one brand: the enrolment reserves its key for
        // this brand first (the brand's own state machine then answers
        // retries and same-brand duplicates).
        Some(Op::EnrollTerminal(e)) => match <[u8; 32]>::try_from(e.public_key.as_slice()) {
            Ok(key) if !shared.keys.reserve(key, session.brand_id) => {
                Err(Refusal::new(E::KeyInUse, "this key is already enrolled"))
            }
            _ => Ok(Route::Writer),
        },
        _ => Ok(Route::Writer),
    }
}
