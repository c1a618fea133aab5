//! One client connection: sign-on, then pipelined signed requests.
//!
//! The read half runs the session; answers travel through a bounded channel
//! to a write task, so a slow request never blocks reading the next one.
//! Signatures are checked here, on whichever core runs this task, so the
//! brand's writer only applies already-verified requests.
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
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::Shared;
use crate::codec::{frame_codec, is_frame_too_large};
use crate::crypto::{parse_public_key, request_message, sign_on_message, verify_strict};
use crate::error::Refusal;
use crate::ledger::Submission;
use crate::limits::*;
use crate::pb::request::Op;
use crate::pb::{
    client_message::Body, server_message, ClientMessage, ErrorCode as E, ServerMessage,
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
}

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
    let mut writer = FramedWrite::new(w, frame_codec(shared.max_frame_bytes));
    let (out_tx, mut out_rx) = mpsc::channel::<ServerMessage>(MAX_IN_FLIGHT_PER_CONNECTION + 4);
    let write_task = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if writer
                .send(bytes::Bytes::from(msg.encode_to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    });

    // Clients are told MAX_IN_FLIGHT; a slot frees just after its answer is
    // queued, so a fast client can read an answer and send its next request
    // a moment before that. The slack keeps such a client from a spurious
    // TOO_MANY_IN_FLIGHT while the bound stays fixed.
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
                // Checked in batches with other connections' requests, on the
                // verifier threads; this connection's order is kept because
                // it waits here before reading its next frame.
                let verified = shared
                    .verifier
                    .verify(
                        session.key,
                        request_message(&s.request),
                        s.signature.clone(),
                    )
                    .await;
                if !verified {
                    tracing::warn!(?peer, principal = ?session.principal, "request signature does not verify");
                    let _ = out_tx
                        .send(error_msg(
                            rid,
                            E::BadSignature,
                            "request signature does not verify",
                        ))
                        .await;
                    continue;
                }
                // Decoded once, here; the writer applies the decoded form.
                let routed = Submission::from_wire(
                    session.principal,
                    session.key_bytes,
                    s.request,
                    s.signature,
                )
                .and_then(|sub| Ok((route(&shared, session, sub.decoded())?, sub)));
                let sub = match routed {
                    Err(refusal) => {
                        let _ = out_tx
                            .send(error_msg(rid, refusal.code, refusal.message))
                            .await;
                        continue;
                    }
                    Ok((Route::Audit(op), _)) => {
                        let (shared, out) = (shared.clone(), out_tx.clone());
                        tokio::spawn(super::audit::serve(
                            op,
                            session.brand_id,
                            shared,
                            out,
                            rid,
                            permit,
                        ));
                        continue;
                    }
                    Ok((Route::Writer, sub)) => sub,
                };
                let session = session.clone();
                let out = out_tx.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let body = match session.brand.submit(sub).await {
                        Some(Ok(reply)) => server_message::Body::Reply(reply),
                        Some(Err(refusal)) => {
                            if matches!(refusal.code, E::CardNotFound | E::CardOtherBrand) {
                                shared.guard.fail(terminal_key);
                                if let Some(ip) = ip {
                                    shared.guard.fail(GuardKey::CardMissAddr(ip));
                                }
                            }
                            tracing::info!(principal = ?session.principal, code = ?refusal.code, "refused: {}", refusal.message);
                            server_message::Body::Error(refusal.into())
                        }
                        None => server_message::Body::Error(
                            Refusal::new(E::Internal, "server stopping").into(),
                        ),
                    };
                    let _ = out
                        .send(ServerMessage {
                            request_id: rid,
                            body: Some(body),
                        })
                        .await;
                    drop(permit);
                });
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
    // Answers still in flight are delivered before the socket closes.
    let _ = write_task.await;
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
