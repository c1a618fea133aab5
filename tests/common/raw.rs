//! The protocol by hand, for tests that must send what `Client` never
//! would (no sign-on, a forged proof, garbage, an exact frame): a framed
//! connection, the messages, and bounded send and receive.
use std::net::SocketAddr;

use cardd::client::{recv, send, ClientError};
use cardd::codec::frame_codec;
use cardd::crypto::{sign_on_message, sign_request};
use cardd::limits::DEFAULT_MAX_FRAME_BYTES;
use cardd::pb::{
    self, client_message::Body, server_message, ClientMessage, ErrorCode, ServerMessage,
};
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::bounded;

/// A framed connection with no session behind it.
pub type Raw = Framed<TcpStream, LengthDelimitedCodec>;

/// Opens a framed connection (bounded), Nagle off so that each frame
/// leaves at once.
pub async fn raw_connect(addr: SocketAddr) -> Raw {
    let stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    Framed::new(stream, frame_codec(DEFAULT_MAX_FRAME_BYTES))
}

/// Sends one message (bounded).
pub async fn raw_send(f: &mut Raw, request_id: u64, body: Body) {
    let msg = ClientMessage {
        request_id,
        body: Some(body),
    };
    bounded(send(f, msg)).await.expect("send");
}

/// Receives one message (bounded).
pub async fn raw_recv(f: &mut Raw) -> ServerMessage {
    bounded(recv(f)).await.expect("receive")
}

/// True if the server has closed the connection (EOF or reset).
pub async fn raw_closed(f: &mut Raw) -> bool {
    matches!(bounded(recv(f)).await, Err(ClientError::Io(_)))
}

/// The error code of an error message (an unknown code reads as the
/// default); `None` for any other message.
pub fn error_code(m: &ServerMessage) -> Option<ErrorCode> {
    match &m.body {
        Some(server_message::Body::Error(e)) => {
            Some(ErrorCode::try_from(e.code).unwrap_or_default())
        }
        _ => None,
    }
}

/// The code of a message that must be an error with a known code.
#[track_caller]
pub fn expect_error(m: &ServerMessage) -> ErrorCode {
    match &m.body {
        Some(server_message::Body::Error(e)) => {
            ErrorCode::try_from(e.code).expect("known error code")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

/// `Hello` with any version and key bytes.
pub fn hello_raw(protocol_version: u32, public_key: Vec<u8>) -> Body {
    Body::Hello(pb::Hello {
        protocol_version,
        public_key,
    })
}

/// `Hello` of protocol version 1 for `key`.
pub fn hello(key: &SigningKey) -> Body {
    hello_raw(1, key.verifying_key().to_bytes().to_vec())
}

/// Sends `Hello` for `key` (request id 1) and returns the challenge.
pub async fn raw_challenge(f: &mut Raw, key: &SigningKey) -> pb::Challenge {
    raw_send(f, 1, hello(key)).await;
    match raw_recv(f).await.body {
        Some(server_message::Body::Challenge(c)) => c,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// Hello, Challenge and a good SignOnProof (request id 2), by hand; the
/// server's answer to the proof is next on the connection.
pub async fn send_sign_on_proof(addr: SocketAddr, key: &SigningKey) -> Raw {
    let mut f = raw_connect(addr).await;
    let ch = raw_challenge(&mut f, key).await;
    let signature = key
        .sign(&sign_on_message(&ch.nonce, &ch.server_public_key))
        .to_bytes()
        .to_vec();
    raw_send(&mut f, 2, Body::SignOnProof(pb::SignOnProof { signature })).await;
    f
}

/// Signs on by hand: Hello, Challenge, SignOnProof (request id 2), SignOnOk.
pub async fn sign_on(addr: SocketAddr, key: &SigningKey) -> Raw {
    let mut f = send_sign_on_proof(addr, key).await;
    match raw_recv(&mut f).await.body {
        Some(server_message::Body::SignOnOk(_)) => f,
        other => panic!("sign-on refused: {other:?}"),
    }
}

/// `SignedRequest` of exact bytes and signature.
pub fn signed(request: Vec<u8>, signature: Vec<u8>) -> Body {
    Body::Signed(pb::SignedRequest { request, signature })
}

/// `req` encoded and signed by `key`.
pub fn signed_body(key: &SigningKey, req: &pb::Request) -> Body {
    let request = req.encode_to_vec();
    let signature = sign_request(key, &request);
    signed(request, signature)
}

/// A request of `brand_id` for `op` under `txn_id`, by `operator`.
#[allow(unused_imports)]
pub use cardd::testing::request_as as request;

/// A frame as it goes on the wire: 4-byte big-endian length, then `body`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A whole `ClientMessage` as wire bytes.
pub fn msg(request_id: u64, body: Body) -> Vec<u8> {
    let m = ClientMessage {
        request_id,
        body: Some(body),
    };
    frame(&m.encode_to_vec())
}

/// `bytes` signed by `key` (valid signature, whatever the bytes), as wire bytes.
pub fn signed_frame_raw(key: &SigningKey, request_id: u64, bytes: Vec<u8>) -> Vec<u8> {
    let sig = sign_request(key, &bytes);
    msg(request_id, signed(bytes, sig))
}

/// `req` signed correctly by `key`, as wire bytes.
pub fn signed_frame(key: &SigningKey, request_id: u64, req: &pb::Request) -> Vec<u8> {
    signed_frame_raw(key, request_id, req.encode_to_vec())
}

/// A purchase `Request` as protobufjs 7 writes it, by hand (prost never
/// emits this): every field the application set, proto3 defaults included
/// (`operator ""`, `client_time_ms 0`, `want_proof false`,
/// `allow_partial false`). The daemon accepts it (src/wire.rs).
pub fn explicit_defaults_purchase(txn_id: u64, brand_id: u32, card: &str, amount: i64) -> Vec<u8> {
    use prost::encoding::encode_varint;
    let mut purchase = vec![0x0a];
    encode_varint(card.len() as u64, &mut purchase);
    purchase.extend_from_slice(card.as_bytes());
    purchase.push(0x10);
    encode_varint(amount as u64, &mut purchase);
    purchase.extend_from_slice(&[0x18, 0x00]); // allow_partial = false
    let mut out = vec![0x08];
    encode_varint(txn_id, &mut out);
    out.push(0x10);
    encode_varint(u64::from(brand_id), &mut out);
    // operator "", client_time_ms 0, want_proof false.
    out.extend_from_slice(&[0x1a, 0x00, 0x20, 0x00, 0x28, 0x00, 0x5a]);
    encode_varint(purchase.len() as u64, &mut out);
    out.extend_from_slice(&purchase);
    out
}

/// The purchase of [`explicit_defaults_purchase`] as prost encodes it
/// (defaults omitted): the same request, other bytes.
pub fn lean_purchase(txn_id: u64, brand_id: u32, card: &str, amount: i64) -> Vec<u8> {
    let op = pb::request::Op::Purchase(pb::Purchase {
        card: card.into(),
        amount_minor: amount,
        allow_partial: false,
        ..Default::default()
    });
    cardd::testing::request_as(brand_id, txn_id, "", op).encode_to_vec()
}
