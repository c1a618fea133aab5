//! Sign-on: the challenge-response that turns a connection into a session.
//!
//! `Hello` names a key; the server answers with a fresh nonce; the proof
//! is the key's signature over the nonce and the server's key. Each step
//! here returns the message to send and the next phase, or the message to
//! send before closing; the connection's read loop does the sending.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use rand::RngCore;

use super::guard::GuardKey;
use super::reply::error_msg;
use super::sessions::SessionSlot;
use super::writer::BrandHandle;
use super::Shared;
use crate::crypto::{parse_public_key, sign_on_message, verify_strict};
use crate::error::Refusal;
use crate::limits::MAX_IN_FLIGHT_PER_CONNECTION;
use crate::pb::{server_message, ErrorCode as E, Hello, ServerMessage, SignOnProof};
use crate::state::Principal;

/// A signed-on session.
pub(super) struct Session {
    pub(super) key: VerifyingKey,
    pub(super) key_bytes: [u8; 32],
    pub(super) principal: Principal,
    pub(super) brand: BrandHandle,
    pub(super) brand_id: u32,
    /// Where audit reads (the only requests served by a task of their own)
    /// are spawned from the verifier threads.
    pub(super) runtime: tokio::runtime::Handle,
    /// Its slot under its key's and brand's quotas, with the token that
    /// ends the session (revocation, a stalled audit stream).
    pub(super) slot: SessionSlot,
}

/// Where a connection is in its sign-on.
// One per connection and never moved in a hot loop: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Phase {
    /// Nothing received yet.
    AwaitHello,
    /// Challenged: the proof must sign `nonce` with `key`.
    AwaitProof {
        nonce: [u8; 32],
        key: VerifyingKey,
        brand: u32,
        principal: Principal,
    },
    /// Signed on: signed requests are served.
    SignedOn(Arc<Session>),
}

/// The outcome of one sign-on step.
// Made once per sign-on step and consumed at once: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Step {
    /// Send the message and go on in the phase.
    Next(ServerMessage, Phase),
    /// Send the message, if any, and close the connection.
    Close(Option<ServerMessage>),
}

/// Answers `Hello` with a challenge, or refuses it (and closes).
pub(super) fn hello(shared: &Shared, peer: SocketAddr, rid: u64, h: Hello) -> Step {
    let ip = Some(peer.ip());
    if ip.is_some_and(|ip| shared.guard.blocked(GuardKey::SignOn(ip))) {
        tracing::warn!(
            ?peer,
            "sign-on refused: too many failures from this address"
        );
        let refusal = error_msg(rid, E::RateLimited, "too many sign-on failures; wait");
        return Step::Close(Some(refusal));
    }
    if h.protocol_version != 1 {
        sign_on_failed(shared, ip);
        let refusal = error_msg(rid, E::UnsupportedVersion, "this server speaks version 1");
        return Step::Close(Some(refusal));
    }
    let found =
        parse_public_key(&h.public_key).and_then(|k| Some((k, shared.keys.get(&k.to_bytes())?)));
    let Some((key, (brand, principal))) = found else {
        sign_on_failed(shared, ip);
        tracing::warn!(
            ?peer,
            key = hex::encode(&h.public_key),
            "sign-on with an unknown key"
        );
        let refusal = error_msg(rid, E::UnknownKey, "no terminal or owner has this key");
        return Step::Close(Some(refusal));
    };
    if shared.guard.blocked(GuardKey::BadSigner(key.to_bytes())) {
        tracing::warn!(
            ?peer,
            ?principal,
            brand,
            "sign-on refused: too many bad request signatures"
        );
        let why = "too many requests with bad signatures from this key; wait, and check the \
                   till's signing (the key file, the request bytes signed)";
        return Step::Close(Some(error_msg(rid, E::RateLimited, why)));
    }
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let challenge = crate::pb::Challenge {
        nonce: nonce.to_vec(),
        server_public_key: shared.server_public.to_vec(),
    };
    let msg = ServerMessage {
        request_id: rid,
        body: Some(server_message::Body::Challenge(challenge)),
    };
    let phase = Phase::AwaitProof {
        nonce,
        key,
        brand,
        principal,
    };
    Step::Next(msg, phase)
}

/// Checks the proof over `nonce` and asks the brand's writer for the
/// session's description; on success the connection is signed on.
pub(super) async fn proof(
    shared: &Shared,
    peer: SocketAddr,
    rid: u64,
    p: SignOnProof,
    (nonce, key, brand, principal): (&[u8; 32], &VerifyingKey, u32, Principal),
) -> Step {
    let message = sign_on_message(nonce, &shared.server_public);
    if !verify_strict(key, &message, &p.signature) {
        sign_on_failed(shared, Some(peer.ip()));
        tracing::warn!(
            ?peer,
            ?principal,
            brand,
            "sign-on signature does not verify"
        );
        let refusal = error_msg(
            rid,
            E::SignOnFailed,
            "signature over the nonce does not verify",
        );
        return Step::Close(Some(refusal));
    }
    let Some(handle) = shared.brand(brand) else {
        if shared.is_damaged(brand) {
            let why =
                "this brand is not served: its ledger on disk is damaged (see the daemon's log)";
            return Step::Close(Some(error_msg(rid, E::StorageFailure, why)));
        }
        if shared.replicated {
            // A replicated node that follows this brand (its keys are
            // known) but does not serve it now.
            let why = format!("this node does not serve brand {brand} now; try its other node");
            let mut error: crate::pb::Error = crate::error::Refusal::new(E::NotActive, why).into();
            error.active_address = shared.active_address(brand).unwrap_or_default();
            return Step::Close(Some(ServerMessage {
                request_id: rid,
                body: Some(server_message::Body::Error(error)),
            }));
        }
        return Step::Close(Some(error_msg(rid, E::Internal, "brand not loaded")));
    };
    // The slot is taken before the writer is asked (see `sessions`): a
    // disabling committed from now on cancels this session's token.
    let slot = match admit(shared, peer, brand, principal) {
        Ok(slot) => slot,
        Err(r) => return Step::Close(Some(error_msg(rid, r.code, r.message))),
    };
    let mut ok = match handle.sign_on(principal, key.to_bytes()).await {
        Some(Ok(ok)) => ok,
        Some(Err(refusal)) => {
            log_refused(peer, principal, brand, &refusal);
            return Step::Close(Some(ServerMessage {
                request_id: rid,
                body: Some(server_message::Body::Error(refusal.into())),
            }));
        }
        None => return Step::Close(None),
    };
    if slot.token().is_cancelled() {
        let why = "this terminal was disabled by the owner";
        return Step::Close(Some(error_msg(rid, E::TerminalDisabled, why)));
    }
    ok.max_frame_bytes = shared.max_frame_bytes as u64;
    ok.max_in_flight = MAX_IN_FLIGHT_PER_CONNECTION as u32;
    ok.pin_public_key = shared.pins.key().public().to_vec();
    tracing::info!(?peer, ?principal, brand, "signed on");
    let msg = ServerMessage {
        request_id: rid,
        body: Some(server_message::Body::SignOnOk(ok)),
    };
    let session = Session {
        key: *key,
        key_bytes: key.to_bytes(),
        principal,
        brand: handle,
        brand_id: brand,
        runtime: tokio::runtime::Handle::current(),
        slot,
    };
    Step::Next(msg, Phase::SignedOn(Arc::new(session)))
}

/// The session's slot under its key's and brand's quotas, or the refusal
/// (logged) that closes the connection.
fn admit(
    shared: &Shared,
    peer: SocketAddr,
    brand: u32,
    principal: Principal,
) -> Result<SessionSlot, Refusal> {
    shared
        .sessions
        .admit(brand, principal)
        .inspect_err(|refusal| log_refused(peer, principal, brand, refusal))
}

fn log_refused(peer: SocketAddr, principal: Principal, brand: u32, refusal: &Refusal) {
    super::metrics::get().sign_on_failures.inc();
    tracing::warn!(
        ?peer,
        ?principal,
        brand,
        "sign-on refused: {}",
        refusal.message
    );
}

fn sign_on_failed(shared: &Shared, ip: Option<IpAddr>) {
    super::metrics::get().sign_on_failures.inc();
    if let Some(ip) = ip {
        shared.guard.fail(GuardKey::SignOn(ip));
    }
}
