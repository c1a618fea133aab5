//! Recomputes the test vectors of `docs/writing-a-till.md`, so that the
//! vendor's guide cannot drift from the code: fixed seeds, a fixed nonce and
//! a fixed server time give fixed bytes (ed25519 signatures are
//! deterministic). The server's reply is built by the state machine and the
//! receipt code the daemon uses, from a chain made at the same fixed time.
use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use prost::Message;

use crate::crypto::{sign_on_message, sign_request};
use crate::pb::{self, client_message, request::Op, server_message};
use crate::state::{apply, reply_for_record, BrandState, Context, Outcome, Principal, Written};

const GUIDE: &str = include_str!("../docs/writing-a-till.md");

/// 2026-01-01T00:00:00Z: the server time of every vector record.
const TIME_MS: i64 = 1_767_225_600_000;
const BRAND: u32 = 1;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// The card `8 00001 000000000042` with its Luhn check digit.
fn card() -> String {
    (0..10)
        .map(|d| format!("800001000000000042{d}"))
        .find(|c| crate::card_number::parse(c) == Some(BRAND))
        .expect("one check digit fits")
}

/// A length-prefixed frame.
fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&body);
    out
}

fn client(request_id: u64, body: client_message::Body) -> Vec<u8> {
    frame(&pb::ClientMessage {
        request_id,
        body: Some(body),
    })
}

/// Signs and applies `req` as `principal` at the vector time.
fn step(
    state: &mut BrandState,
    signer: &SigningKey,
    principal: Principal,
    req: &pb::Request,
) -> Written {
    let bytes = req.encode_to_vec();
    let signature = sign_request(signer, &bytes);
    let ctx = Context {
        time_ms: TIME_MS,
        principal,
        signer_key: &signer.verifying_key().to_bytes(),
        request: &bytes,
        signature: &signature,
        pin_verified: false,
    };
    match apply(state, &ctx, req) {
        Ok(Outcome::Written(w)) => w,
        other => panic!("vector step refused: {other:?}"),
    }
}

fn request(txn_id: u64, operator: &str, op: Op) -> pb::Request {
    crate::testing::request_as(BRAND, txn_id, operator, op)
}

/// Brand 1 (server seed 01), store 1, terminal 1 (seed 03) enrolled by the
/// owner (seed 02), the card issued and topped up with 100.00 under the
/// terminal's txn id 1.
fn chain() -> BrandState {
    let (server, owner, till) = (key(1), key(2), key(3));
    let mut state = BrandState::new(BRAND);
    let create = crate::testing::create_brand("Vector Coffee", &owner.verifying_key().to_bytes());
    step(
        &mut state,
        &server,
        Principal::Server,
        &request(1, "server", Op::CreateBrand(create)),
    );
    let owner_ops = [
        crate::testing::create_store("Downtown"),
        crate::testing::enroll_terminal(1, &till.verifying_key().to_bytes(), "till 1"),
        crate::testing::issue_card(&card()),
    ];
    for (txn, op) in (1..).zip(owner_ops) {
        step(
            &mut state,
            &owner,
            Principal::Owner,
            &request(txn, "owner", op),
        );
    }
    let load = request(1, "alice", crate::testing::top_up(&card(), 10_000));
    step(&mut state, &till, Principal::Terminal(1), &load);
    state
}

/// `lean` (a prost-encoded request whose op is its last field) with the
/// defaults protobufjs 7 writes: client_time_ms 0 and want_proof false
/// before the op, allow_partial false at the end of the purchase.
fn with_explicit_defaults(lean: &[u8], op_at: usize) -> Vec<u8> {
    let (head, op) = lean.split_at(op_at);
    let mut inner = op[2..].to_vec();
    inner.extend_from_slice(&[0x18, 0x00]);
    let mut out = head.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x28, 0x00, op[0]]);
    out.push(u8::try_from(inner.len()).expect("short"));
    out.extend_from_slice(&inner);
    out
}

/// Every vector of the guide, by name, in hex (the card in digits).
fn vectors() -> BTreeMap<&'static str, String> {
    let (server, till) = (key(1), key(3));
    let server_pk = server.verifying_key().to_bytes();
    let till_pk = till.verifying_key().to_bytes();
    let nonce: Vec<u8> = (0u8..32).collect();
    let hello = client(
        1,
        client_message::Body::Hello(pb::Hello {
            protocol_version: 1,
            public_key: till_pk.to_vec(),
        }),
    );
    let challenge = frame(&pb::ServerMessage {
        request_id: 1,
        body: Some(server_message::Body::Challenge(pb::Challenge {
            nonce: nonce.clone(),
            server_public_key: server_pk.to_vec(),
        })),
    });
    let sign_on = sign_on_message(&nonce, &server_pk);
    let proof = ed25519_dalek::Signer::sign(&till, &sign_on)
        .to_bytes()
        .to_vec();
    let proof_frame = client(
        2,
        client_message::Body::SignOnProof(pb::SignOnProof {
            signature: proof.clone(),
        }),
    );
    let mut state = chain();
    let purchase = request(2, "alice", crate::testing::purchase(&card(), 1_250, false));
    let request_bytes = purchase.encode_to_vec();
    let signature = sign_request(&till, &request_bytes);
    let signed = client(
        3,
        client_message::Body::Signed(pb::SignedRequest {
            request: request_bytes.clone(),
            signature: signature.clone(),
        }),
    );
    let promo = state.rules.promotion_line.clone();
    let w = step(&mut state, &till, Principal::Terminal(1), &purchase);
    let reply = frame(&pb::ServerMessage {
        request_id: 3,
        body: Some(server_message::Body::Reply(reply_for_record(
            &w.record, &w.hash, &promo,
        ))),
    });
    let h = |b: &[u8]| hex::encode(b);
    BTreeMap::from([
        ("terminal_seed", h(&[3u8; 32])),
        ("terminal_public_key", h(&till_pk)),
        ("server_public_key", h(&server_pk)),
        ("nonce", h(&nonce)),
        ("hello_frame", h(&hello)),
        ("challenge_frame", h(&challenge)),
        ("sign_on_message", h(&sign_on)),
        ("sign_on_signature", h(&proof)),
        ("sign_on_proof_frame", h(&proof_frame)),
        ("card", card()),
        ("purchase_request", h(&request_bytes)),
        ("purchase_signature", h(&signature)),
        (
            "purchase_request_explicit_defaults",
            h(&with_explicit_defaults(&request_bytes, 11)),
        ),
        ("purchase_frame", h(&signed)),
        ("reply_frame", h(&reply)),
    ])
}

/// `name = hex` lines of the guide.
fn documented() -> BTreeMap<&'static str, String> {
    GUIDE
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(" = ")?;
            let name = name.trim();
            let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            let value = value.trim();
            (ok && value.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (name, value.to_string()))
        })
        .collect()
}

#[test]
fn the_guide_s_test_vectors_are_what_the_code_computes() {
    let computed = vectors();
    let listing: String = computed
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    assert_eq!(
        documented(),
        computed,
        "docs/writing-a-till.md's vectors differ; the computed ones:\n{listing}"
    );
}

#[test]
fn the_vector_purchase_is_accepted_and_its_reply_decodes() {
    let v = vectors();
    let request = hex::decode(&v["purchase_request"]).expect("hex");
    let decoded = crate::wire::decode_request(&request).expect("accepted");
    assert_eq!(decoded.txn_id, 2);
    let explicit = hex::decode(&v["purchase_request_explicit_defaults"]).expect("hex");
    assert_ne!(explicit, request);
    assert_eq!(crate::wire::decode_request(&explicit), Ok(decoded));
    let reply = hex::decode(&v["reply_frame"]).expect("hex");
    let msg = pb::ServerMessage::decode(&reply[4..]).expect("decodes");
    let Some(server_message::Body::Reply(r)) = msg.body else {
        panic!("not a reply")
    };
    let card = r.card.expect("card view");
    assert_eq!(card.balance_minor, 10_000 - 1_250);
    assert_eq!(r.receipt.expect("receipt").seq, 6);
}
