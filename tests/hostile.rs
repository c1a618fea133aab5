//! Hostile input: bad frames, garbage and malformed or forged requests get
//! their error code (where the protocol defines one), never crash the daemon,
//! never disturb another connection and never write a record.
//!
//! A "victim" terminal signs on before the first attack; after every attack
//! it must still see the same balance and its own purchase must still work,
//! with a receipt sequence number exactly one past its previous one (so no
//! hostile input wrote anything in between).
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cardd::client::Client;
use cardd::codec::frame_codec;
use cardd::crypto::{generate_key, read_key_file, sign_on_message, sign_request};
use cardd::pb::{
    self, client_message::Body, request::Op, server_message, ClientMessage, ErrorCode as E,
    ServerMessage,
};
use cardd::storage::{DiskStore, LogStore};
use common::*;
use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use prost::Message;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

type Conn = Framed<TcpStream, LengthDelimitedCodec>;

const MAX_FRAME: usize = 64 * 1024;
/// How long to wait for the daemon's answer (or its closing) to one attack.
const WAIT: Duration = Duration::from_secs(5);
/// Request id of the echo that proves a connection is still usable.
const ECHO_ID: u64 = 0xEC40;

/// A frame as it goes on the wire: 4-byte big-endian length, then `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn msg(request_id: u64, body: Body) -> Vec<u8> {
    frame(
        &ClientMessage {
            request_id,
            body: Some(body),
        }
        .encode_to_vec(),
    )
}

fn hello(version: u32, public_key: Vec<u8>) -> Body {
    Body::Hello(pb::Hello {
        protocol_version: version,
        public_key,
    })
}

fn signed(request: Vec<u8>, signature: Vec<u8>) -> Body {
    Body::Signed(pb::SignedRequest { request, signature })
}

fn request(brand_id: u32, txn_id: u64, op: Op) -> pb::Request {
    pb::Request {
        txn_id,
        brand_id,
        operator: "mallory".into(),
        op: Some(op),
        ..Default::default()
    }
}

/// A request signed correctly by `key`, as a frame.
fn signed_frame(key: &SigningKey, request_id: u64, req: &pb::Request) -> Vec<u8> {
    let bytes = req.encode_to_vec();
    let sig = sign_request(key, &bytes);
    msg(request_id, signed(bytes, sig))
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Protobuf that does not decode: field 1 with the invalid wire type 7,
/// then a length-delimited field 2 that claims more bytes than follow.
const BAD_PROTOBUF: &[&[u8]] = &[
    b"\x0f\xff\xff",
    b"\x12\x7f\x01\x02",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
];

enum Who {
    /// A fresh connection that never signs on.
    Anonymous,
    /// A fresh connection signed on with the attacker's (enrolled) key.
    SignedOn,
}

enum Expect {
    /// This error code; the connection stays usable (an echo still answers).
    Open(E),
    /// This error code, then the daemon closes the connection.
    Close(E),
    /// No answer at all; the daemon closes the connection.
    SilentClose,
    /// Some error, code not specified (signed random garbage).
    AnyError,
    /// Anything but a challenge, a sign-on or a reply (random garbage);
    /// the daemon closes the connection once we stop sending.
    NoSuccess,
}

struct Case {
    name: String,
    who: Who,
    /// Written to the socket as they are (framing included, or not).
    bytes: Vec<u8>,
    /// Shut down our write half after writing.
    half_close: bool,
    expect: Expect,
}

fn case(name: impl Into<String>, who: Who, bytes: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        who,
        bytes,
        half_close: false,
        expect,
    }
}

enum Got {
    Msg(Box<ServerMessage>),
    Closed,
    Timeout,
}

async fn next(conn: &mut Conn) -> Got {
    match tokio::time::timeout(WAIT, conn.next()).await {
        Err(_) => Got::Timeout,
        Ok(None) | Ok(Some(Err(_))) => Got::Closed,
        Ok(Some(Ok(f))) => Got::Msg(Box::new(
            ServerMessage::decode(f).expect("the daemon's frames decode"),
        )),
    }
}

async fn connect(addr: SocketAddr) -> Conn {
    let stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    Framed::new(stream, frame_codec(MAX_FRAME))
}

/// Signs on by hand: Hello, Challenge, SignOnProof, SignOnOk.
async fn sign_on(addr: SocketAddr, key: &SigningKey) -> Conn {
    let mut conn = connect(addr).await;
    let hello = ClientMessage {
        request_id: 1,
        body: Some(hello(1, key.verifying_key().to_bytes().to_vec())),
    };
    bounded(conn.send(bytes::Bytes::from(hello.encode_to_vec())))
        .await
        .expect("send hello");
    let challenge = match next(&mut conn).await {
        Got::Msg(m) => match m.body {
            Some(server_message::Body::Challenge(c)) => c,
            other => panic!("no challenge: {other:?}"),
        },
        _ => panic!("no challenge"),
    };
    let signature = key
        .sign(&sign_on_message(
            &challenge.nonce,
            &challenge.server_public_key,
        ))
        .to_bytes()
        .to_vec();
    let proof = ClientMessage {
        request_id: 2,
        body: Some(Body::SignOnProof(pb::SignOnProof { signature })),
    };
    bounded(conn.send(bytes::Bytes::from(proof.encode_to_vec())))
        .await
        .expect("send proof");
    match next(&mut conn).await {
        Got::Msg(m) if matches!(m.body, Some(server_message::Body::SignOnOk(_))) => conn,
        _ => panic!("sign-on refused"),
    }
}

fn error_code(m: &ServerMessage) -> Option<E> {
    match &m.body {
        Some(server_message::Body::Error(e)) => Some(E::try_from(e.code).unwrap_or_default()),
        _ => None,
    }
}

/// Runs one attack and checks the daemon's answer to it.
async fn attack(addr: SocketAddr, attacker: &SigningKey, c: &Case) {
    let name = &c.name;
    let mut conn = match c.who {
        Who::Anonymous => connect(addr).await,
        Who::SignedOn => sign_on(addr, attacker).await,
    };
    // Written raw; the daemon may close before it has read everything.
    let _ = bounded(conn.get_mut().write_all(&c.bytes)).await;
    if c.half_close {
        let _ = bounded(conn.get_mut().shutdown()).await;
    }
    match c.expect {
        Expect::Open(code) | Expect::Close(code) => {
            let got = loop {
                match next(&mut conn).await {
                    Got::Msg(m) if matches!(m.body, Some(server_message::Body::Challenge(_))) => {
                        continue
                    }
                    Got::Msg(m) => break m,
                    Got::Closed => panic!("{name}: connection closed without an error"),
                    Got::Timeout => panic!("{name}: no answer"),
                }
            };
            assert_eq!(error_code(&got), Some(code), "{name}: answered {got:?}");
            if let Expect::Close(_) = c.expect {
                loop {
                    match next(&mut conn).await {
                        Got::Closed => break,
                        Got::Msg(m) => {
                            assert!(error_code(&m).is_some(), "{name}: after the refusal: {m:?}")
                        }
                        Got::Timeout => {
                            panic!("{name}: the connection was left open after {code:?}")
                        }
                    }
                }
            } else {
                let echo = ClientMessage {
                    request_id: ECHO_ID,
                    body: Some(Body::Echo(pb::Echo {
                        payload: b"ping".to_vec(),
                    })),
                };
                bounded(conn.send(bytes::Bytes::from(echo.encode_to_vec())))
                    .await
                    .unwrap_or_else(|e| panic!("{name}: send echo: {e}"));
                loop {
                    match next(&mut conn).await {
                        Got::Msg(m) if m.request_id == ECHO_ID => {
                            assert!(
                                matches!(m.body, Some(server_message::Body::Echo(_))),
                                "{name}: echo answered {m:?}"
                            );
                            break;
                        }
                        Got::Msg(_) => continue,
                        Got::Closed => panic!("{name}: the connection was closed after {code:?}"),
                        Got::Timeout => panic!("{name}: no echo after {code:?}"),
                    }
                }
            }
        }
        Expect::SilentClose => match next(&mut conn).await {
            Got::Closed => {}
            Got::Msg(m) => panic!("{name}: expected no answer, got {m:?}"),
            Got::Timeout => panic!("{name}: connection left open"),
        },
        Expect::AnyError => loop {
            match next(&mut conn).await {
                Got::Msg(m) if matches!(m.body, Some(server_message::Body::Challenge(_))) => {
                    continue
                }
                Got::Msg(m) => {
                    assert!(
                        error_code(&m).is_some(),
                        "{name}: garbage was answered with {m:?}"
                    );
                    break;
                }
                Got::Closed => panic!("{name}: closed without an error"),
                Got::Timeout => panic!("{name}: no answer"),
            }
        },
        Expect::NoSuccess => loop {
            match next(&mut conn).await {
                Got::Closed => break,
                Got::Msg(m) => assert!(
                    matches!(
                        m.body,
                        Some(server_message::Body::Error(_)) | Some(server_message::Body::Echo(_))
                    ),
                    "{name}: garbage was answered with {m:?}"
                ),
                Got::Timeout => panic!("{name}: connection left open after we stopped sending"),
            }
        },
    }
}

/// The terminal connection opened before any attack, and what it expects.
struct Victim {
    client: Client,
    card: String,
    balance: i64,
    seq: u64,
    next_txn: u64,
    txns: Vec<u64>,
}

impl Victim {
    /// The victim's balance is unchanged and its purchase still works,
    /// writing the one record right after its previous one.
    async fn still_served(&mut self, daemon: &mut Daemon, after: &str) {
        assert!(daemon.is_running(), "the daemon died after: {after}");
        let hwm = peak_rss_kib(daemon.child.id());
        assert!(
            hwm < 512 * 1024,
            "the daemon's peak memory is {hwm} KiB after: {after}"
        );
        let view = inquiry(&mut self.client, &self.card).await;
        assert_eq!(
            view.balance_minor, self.balance,
            "the victim's balance changed after: {after}"
        );
        let txn = self.next_txn;
        self.next_txn += 1;
        let reply = call(&mut self.client, txn, purchase(&self.card, 1))
            .await
            .unwrap_or_else(|e| panic!("the victim's purchase was refused ({e:?}) after: {after}"));
        let receipt = reply.receipt.expect("receipt");
        assert_eq!(
            receipt.seq,
            self.seq + 1,
            "a record was written by: {after}"
        );
        self.balance -= 1;
        assert_eq!(
            reply.card.expect("card").balance_minor,
            self.balance,
            "after: {after}"
        );
        self.seq = receipt.seq;
        self.txns.push(txn);
    }
}

/// Peak resident memory of a process, in KiB (Linux /proc).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The table. `others` are enrolled keys other than the attacker's (the
/// victim's terminal, the owner): their signatures are valid, but not for
/// the attacker's session.
fn cases(brand: u32, attacker: &SigningKey, others: &[SigningKey], card: &str) -> Vec<Case> {
    let mut v = Vec::new();
    let mut txn = 5_000_000u64;
    let mut next_txn = || {
        txn += 1;
        txn
    };

    // Raw garbage, not framed: the first four bytes are a random length.
    for seed in 1..=4u64 {
        for len in [1usize, 3, 4, 5, 17, 256, 4096, 70_000] {
            let mut c = case(
                format!("garbage seed {seed} len {len}"),
                Who::Anonymous,
                random_bytes(seed, len),
                Expect::NoSuccess,
            );
            c.half_close = true;
            v.push(c);
        }
    }
    // Random bodies in well-formed frames, before and after sign-on.
    for seed in 11..=14u64 {
        for len in [1usize, 2, 7, 64, 1000, 60_000] {
            let mut c = case(
                format!("framed garbage seed {seed} len {len}"),
                Who::Anonymous,
                frame(&random_bytes(seed, len)),
                Expect::NoSuccess,
            );
            c.half_close = true;
            v.push(c);
            let mut c = case(
                format!("framed garbage after sign-on seed {seed} len {len}"),
                Who::SignedOn,
                frame(&random_bytes(seed, len)),
                Expect::NoSuccess,
            );
            c.half_close = true;
            v.push(c);
        }
    }
    // Length prefixes over the limit: refused on the header alone.
    for len in [u32::MAX, 0x8000_0000, MAX_FRAME as u32 + 1] {
        v.push(case(
            format!("length prefix {len:#x}"),
            Who::Anonymous,
            len.to_be_bytes().to_vec(),
            Expect::Close(E::FrameTooLarge),
        ));
        v.push(case(
            format!("length prefix {len:#x} after sign-on"),
            Who::SignedOn,
            len.to_be_bytes().to_vec(),
            Expect::Close(E::FrameTooLarge),
        ));
    }
    // Truncated frames: the prefix promises more than arrives, then EOF.
    for (promised, sent) in [(100usize, 10usize), (MAX_FRAME, 1000), (5, 0)] {
        let mut bytes = (promised as u32).to_be_bytes().to_vec();
        bytes.extend(random_bytes(promised as u64, sent));
        let mut c = case(
            format!("truncated frame {sent} of {promised}"),
            Who::Anonymous,
            bytes,
            Expect::SilentClose,
        );
        c.half_close = true;
        v.push(c);
    }
    let mut c = case(
        "truncated length prefix",
        Who::Anonymous,
        vec![0, 0],
        Expect::SilentClose,
    );
    c.half_close = true;
    v.push(c);
    // Frames that are not a ClientMessage.
    for (i, bad) in BAD_PROTOBUF.iter().enumerate() {
        v.push(case(
            format!("protobuf garbage {i}"),
            Who::Anonymous,
            frame(bad),
            Expect::Open(E::Malformed),
        ));
        v.push(case(
            format!("protobuf garbage {i} after sign-on"),
            Who::SignedOn,
            frame(bad),
            Expect::Open(E::Malformed),
        ));
    }
    v.push(case(
        "empty frame",
        Who::Anonymous,
        frame(&[]),
        Expect::Open(E::Malformed),
    ));
    let empty_with_id = ClientMessage {
        request_id: 7,
        body: None,
    }
    .encode_to_vec();
    v.push(case(
        "ClientMessage without a body",
        Who::Anonymous,
        frame(&empty_with_id),
        Expect::Open(E::Malformed),
    ));
    v.push(case(
        "ClientMessage without a body after sign-on",
        Who::SignedOn,
        frame(&empty_with_id),
        Expect::Open(E::Malformed),
    ));

    // Session order.
    let purchase_1 = request(brand, 4_000_000, purchase(card, 1));
    v.push(case(
        "signed request before sign-on",
        Who::Anonymous,
        signed_frame(attacker, 3, &purchase_1),
        Expect::Open(E::NotSignedOn),
    ));
    let mut bytes = msg(1, hello(1, attacker.verifying_key().to_bytes().to_vec()));
    bytes.extend(signed_frame(attacker, 3, &purchase_1));
    v.push(case(
        "signed request between hello and proof",
        Who::Anonymous,
        bytes,
        Expect::Open(E::NotSignedOn),
    ));
    let proof = Body::SignOnProof(pb::SignOnProof {
        signature: vec![0; 64],
    });
    v.push(case(
        "proof before hello",
        Who::Anonymous,
        msg(1, proof.clone()),
        Expect::Close(E::Malformed),
    ));
    let mut bytes = msg(1, hello(1, attacker.verifying_key().to_bytes().to_vec()));
    bytes.extend(msg(2, proof));
    v.push(case(
        "proof with a wrong signature",
        Who::Anonymous,
        bytes,
        Expect::Close(E::SignOnFailed),
    ));
    v.push(case(
        "hello after sign-on",
        Who::SignedOn,
        msg(3, hello(1, attacker.verifying_key().to_bytes().to_vec())),
        Expect::Open(E::AlreadySignedOn),
    ));

    // Hello with bad keys or version.
    let short = attacker.verifying_key().to_bytes()[..31].to_vec();
    v.push(case(
        "hello with a 31-byte key",
        Who::Anonymous,
        msg(1, hello(1, short)),
        Expect::Close(E::UnknownKey),
    ));
    v.push(case(
        "hello with a 33-byte key",
        Who::Anonymous,
        msg(1, hello(1, vec![7; 33])),
        Expect::Close(E::UnknownKey),
    ));
    v.push(case(
        "hello with no key",
        Who::Anonymous,
        msg(1, hello(1, vec![])),
        Expect::Close(E::UnknownKey),
    ));
    let unknown = generate_key().verifying_key().to_bytes().to_vec();
    v.push(case(
        "hello with an unknown key",
        Who::Anonymous,
        msg(1, hello(1, unknown)),
        Expect::Close(E::UnknownKey),
    ));
    let mut identity = vec![0u8; 32];
    identity[0] = 1; // the identity point: a weak key
    v.push(case(
        "hello with a weak key",
        Who::Anonymous,
        msg(1, hello(1, identity)),
        Expect::Close(E::UnknownKey),
    ));
    for version in [0u32, 2, u32::MAX] {
        let key = attacker.verifying_key().to_bytes().to_vec();
        v.push(case(
            format!("hello with protocol version {version}"),
            Who::Anonymous,
            msg(1, hello(version, key)),
            Expect::Close(E::UnsupportedVersion),
        ));
    }

    // Signed-on requests whose content is hostile.
    for (i, bad) in BAD_PROTOBUF.iter().enumerate() {
        let bytes = signed_frame_raw(attacker, 9, bad.to_vec());
        v.push(case(
            format!("signed undecodable request {i}"),
            Who::SignedOn,
            bytes,
            Expect::Open(E::Malformed),
        ));
    }
    for seed in 21..=24u64 {
        let bytes = signed_frame_raw(attacker, 9, random_bytes(seed, 40 + seed as usize));
        v.push(case(
            format!("signed random request seed {seed}"),
            Who::SignedOn,
            bytes,
            Expect::AnyError,
        ));
    }
    for amount in [
        -1i64,
        0,
        i64::MAX,
        i64::MIN,
        cardd::limits::MAX_AMOUNT_MINOR + 1,
    ] {
        let p = request(brand, next_txn(), purchase(card, amount));
        v.push(case(
            format!("purchase of {amount}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &p),
            Expect::Open(E::AmountOutOfRange),
        ));
        let t = request(brand, next_txn(), top_up(card, amount));
        v.push(case(
            format!("top-up of {amount}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &t),
            Expect::Open(E::AmountOutOfRange),
        ));
        let r = request(
            brand,
            next_txn(),
            Op::Refund(pb::Refund {
                original_seq: 1,
                amount_minor: amount,
            }),
        );
        v.push(case(
            format!("refund of {amount}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &r),
            Expect::Open(E::AmountOutOfRange),
        ));
    }
    let last = card.as_bytes()[card.len() - 1] - b'0';
    let bad_check = format!("{}{}", &card[..card.len() - 1], (last + 1) % 10);
    for bad_card in [
        bad_check.as_str(),
        "",
        "8",
        "not a card",
        &"9".repeat(19),
        &"8".repeat(4000),
    ] {
        let p = request(brand, next_txn(), purchase(bad_card, 1));
        v.push(case(
            format!("purchase on card {bad_card:.30}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &p),
            Expect::Open(E::CardNotFound),
        ));
        let q = request(
            brand,
            0,
            Op::Inquiry(pb::Inquiry {
                card: bad_card.into(),
            }),
        );
        v.push(case(
            format!("inquiry on card {bad_card:.30}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &q),
            Expect::Open(E::CardNotFound),
        ));
    }
    let p = request(brand, 0, purchase(card, 1));
    v.push(case(
        "purchase with txn_id 0",
        Who::SignedOn,
        signed_frame(attacker, 9, &p),
        Expect::Open(E::InvalidArgument),
    ));
    let t = request(brand, 0, top_up(card, 1));
    v.push(case(
        "top-up with txn_id 0",
        Who::SignedOn,
        signed_frame(attacker, 9, &t),
        Expect::Open(E::InvalidArgument),
    ));
    let mut p = request(brand, next_txn(), purchase(card, 1));
    p.operator = "x".repeat(10 * 1024);
    v.push(case(
        "operator of 10 KB",
        Who::SignedOn,
        signed_frame(attacker, 9, &p),
        Expect::Open(E::InvalidArgument),
    ));
    let mut p = request(brand, next_txn(), purchase(card, 1));
    p.operator = "cash\nier".into();
    v.push(case(
        "operator with a control character",
        Who::SignedOn,
        signed_frame(attacker, 9, &p),
        Expect::Open(E::InvalidArgument),
    ));
    let mut p = request(brand, next_txn(), purchase(card, 1));
    p.op = None;
    v.push(case(
        "request without an operation",
        Who::SignedOn,
        signed_frame(attacker, 9, &p),
        Expect::Open(E::InvalidArgument),
    ));
    for other in [0u32, brand + 1, u32::MAX] {
        let p = request(other, next_txn(), purchase(card, 1));
        v.push(case(
            format!("purchase naming brand {other}"),
            Who::SignedOn,
            signed_frame(attacker, 9, &p),
            Expect::Open(E::WrongBrand),
        ));
    }
    let s = request(
        brand,
        next_txn(),
        Op::CreateStore(pb::CreateStore {
            name: "rogue".into(),
        }),
    );
    v.push(case(
        "terminal creating a store",
        Who::SignedOn,
        signed_frame(attacker, 9, &s),
        Expect::Open(E::WrongRole),
    ));

    // Signatures that do not verify.
    let p = request(brand, next_txn(), purchase(card, 1));
    let bytes = p.encode_to_vec();
    let good = sign_request(attacker, &bytes);
    let bad_sigs: Vec<(&str, Vec<u8>)> = vec![
        ("63-byte signature", good[..63].to_vec()),
        ("65-byte signature", [good.as_slice(), &[0]].concat()),
        ("empty signature", vec![]),
        ("zero signature", vec![0; 64]),
        ("signature with a flipped bit", {
            let mut s = good.clone();
            s[10] ^= 1;
            s
        }),
        (
            "signature by another key",
            sign_request(&generate_key(), &bytes),
        ),
        (
            "signature over other bytes",
            sign_request(
                attacker,
                &request(brand, 1, purchase(card, 2)).encode_to_vec(),
            ),
        ),
        (
            "sign-on domain signature",
            attacker.sign(&bytes).to_bytes().to_vec(),
        ),
        ("signature with s not reduced", {
            // s + L is a malleated encoding of the same signature.
            let mut s = good.clone();
            add_group_order(&mut s[32..]);
            s
        }),
    ];
    for (what, sig) in bad_sigs {
        v.push(case(
            what,
            Who::SignedOn,
            msg(9, signed(bytes.clone(), sig)),
            Expect::Open(E::BadSignature),
        ));
    }
    // A request validly signed by another enrolled key, sent on the
    // attacker's session: the signature must be checked against the session.
    for (i, other) in others.iter().enumerate() {
        let p = request(brand, next_txn(), purchase(card, 1));
        v.push(case(
            format!("request signed by enrolled key {i}"),
            Who::SignedOn,
            signed_frame(other, 9, &p),
            Expect::Open(E::BadSignature),
        ));
    }

    // Echo is allowed before sign-on, but bounded.
    let long = Body::Echo(pb::Echo {
        payload: vec![b'e'; cardd::limits::MAX_ECHO_BYTES + 1],
    });
    v.push(case(
        "echo of MAX_ECHO_BYTES + 1",
        Who::Anonymous,
        msg(5, long),
        Expect::Open(E::InvalidArgument),
    ));
    v
}

fn signed_frame_raw(key: &SigningKey, request_id: u64, bytes: Vec<u8>) -> Vec<u8> {
    let sig = sign_request(key, &bytes);
    msg(request_id, signed(bytes, sig))
}

/// Adds the ed25519 group order L to a little-endian 32-byte scalar.
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(L) {
        let sum = u16::from(*b) + u16::from(l) + carry;
        *b = sum as u8;
        carry = sum >> 8;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_harms_no_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Hundreds of deliberate failures from one address: the rate limits
    // (tested in tests/security.rs) would cut the table short.
    let (mut daemon, demo) = Daemon::demo_with(dir.path(), &Daemon::NO_RATE_LIMITS);
    let addr = daemon.addr;
    let brand = demo.manifest.brand_id;
    let card = demo.manifest.cards[0].clone();
    let attacker = read_key_file(&demo.terminal_key_path(1)).expect("attacker key");

    // The victim signs on before any attack and keeps its connection.
    let mut victim = {
        let mut client = bounded(demo.terminal(addr, 0)).await;
        client.operator = "victim".into();
        let balance = inquiry(&mut client, &card).await.balance_minor;
        let next_txn = client.session.last_txn_id + 1;
        let first = call(&mut client, next_txn, purchase(&card, 1))
            .await
            .expect("first purchase");
        let seq = first.receipt.expect("receipt").seq;
        Victim {
            client,
            card: card.clone(),
            balance: balance - 1,
            seq,
            next_txn: next_txn + 1,
            txns: vec![next_txn],
        }
    };
    let first_victim_seq = victim.seq;

    // Slow sign-ons, left alone during the whole table: the daemon must close
    // them itself once the sign-on time limit passes.
    let slow_started = tokio::time::Instant::now();
    let mut slow = Vec::new();
    for i in 0..10 {
        let mut conn = connect(addr).await;
        let bytes = if i % 2 == 0 {
            vec![0, 0]
        } else {
            msg(1, hello(1, attacker.verifying_key().to_bytes().to_vec()))
        };
        bounded(conn.get_mut().write_all(&bytes))
            .await
            .expect("slow sign-on");
        slow.push(conn);
    }

    let others = [
        read_key_file(&demo.terminal_key_path(0)).expect("victim key"),
        read_key_file(&demo.owner_key_path()).expect("owner key"),
    ];
    let table = cases(brand, &attacker, &others, &card);
    let n = table.len();
    for c in &table {
        attack(addr, &attacker, c).await;
        victim.still_served(&mut daemon, &c.name).await;
    }

    // Pipelined flood past the in-flight limit: every request gets exactly
    // one answer, a refusal of its amount or TOO_MANY_IN_FLIGHT.
    {
        let mut conn = sign_on(addr, &attacker).await;
        let mut bytes = Vec::new();
        for rid in 1..=200u64 {
            bytes.extend(signed_frame(
                &attacker,
                rid,
                &request(brand, 6_000_000 + rid, purchase(&card, 0)),
            ));
        }
        bounded(conn.get_mut().write_all(&bytes))
            .await
            .expect("flood");
        let mut answered = std::collections::HashSet::new();
        while answered.len() < 200 {
            let Got::Msg(m) = next(&mut conn).await else {
                panic!("flood: {} of 200 answered", answered.len())
            };
            let code = error_code(&m);
            assert!(
                matches!(code, Some(E::AmountOutOfRange | E::TooManyInFlight)),
                "flood answered {m:?}"
            );
            assert!(
                answered.insert(m.request_id),
                "flood: request {} answered twice",
                m.request_id
            );
        }
        victim
            .still_served(&mut daemon, "flood of 200 pipelined requests")
            .await;
    }

    // A peer that pipelines echoes and never reads its answers: its own
    // connection stalls, nobody else's does, and memory stays bounded.
    {
        let mut conn = sign_on(addr, &attacker).await;
        let echo = msg(
            1,
            Body::Echo(pb::Echo {
                payload: vec![b'e'; cardd::limits::MAX_ECHO_BYTES],
            }),
        );
        let flood = tokio::spawn(async move {
            for _ in 0..20_000 {
                if conn.get_mut().write_all(&echo).await.is_err() {
                    break;
                }
            }
            conn
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        victim
            .still_served(&mut daemon, "a peer that never reads")
            .await;
        flood.abort();
        let _ = flood.await;
        victim
            .still_served(&mut daemon, "a peer that never reads, gone")
            .await;
    }

    // 200 connections opened and dropped quickly, at every stage of sign-on.
    let fds_before = open_fds(daemon.child.id());
    let mut conns = Vec::new();
    for i in 0..200u32 {
        let key = attacker.clone();
        conns.push(tokio::spawn(async move {
            match i % 4 {
                0 => drop(TcpStream::connect(addr).await),
                1 => {
                    if let Ok(mut s) = TcpStream::connect(addr).await {
                        let _ = s
                            .write_all(&msg(1, hello(1, key.verifying_key().to_bytes().to_vec())))
                            .await;
                    }
                }
                2 => {
                    if let Ok(mut s) = TcpStream::connect(addr).await {
                        let _ = s.write_all(&[0, 0, 1]).await;
                    }
                }
                _ => {
                    let mut conn = sign_on(addr, &key).await;
                    let q = request(
                        brand,
                        0,
                        Op::Inquiry(pb::Inquiry {
                            card: String::new(),
                        }),
                    );
                    let _ = conn.get_mut().write_all(&signed_frame(&key, 1, &q)).await;
                }
            }
        }));
    }
    for c in conns {
        bounded(c).await.expect("connection task");
    }
    victim
        .still_served(&mut daemon, "200 connections opened and dropped")
        .await;
    let pid = daemon.child.id();
    let settled = bounded(async {
        loop {
            if open_fds(pid) <= fds_before {
                break true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        settled,
        "the daemon kept sockets of dropped connections open"
    );

    // The slow sign-ons were closed by the daemon (challenge at most).
    let limit = slow_started + Duration::from_secs(cardd::limits::SIGN_ON_TIMEOUT_SECS + 10);
    for (i, mut conn) in slow.into_iter().enumerate() {
        loop {
            match tokio::time::timeout_at(limit, conn.next()).await {
                Err(_) => panic!("slow sign-on {i} is still open after the sign-on time limit"),
                Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(f))) => {
                    let m = ServerMessage::decode(f).expect("decode");
                    assert!(
                        matches!(m.body, Some(server_message::Body::Challenge(_))),
                        "slow sign-on {i}: {m:?}"
                    );
                }
            }
        }
    }
    victim
        .still_served(&mut daemon, "slow sign-ons timed out")
        .await;

    // Nothing hostile reached the ledger, and the ledger still checks.
    let last_seq = victim.seq;
    let victim_txns = victim.txns.clone();
    let victim_terminal = victim.client.session.terminal_id;
    drop(victim);
    daemon.kill9();
    {
        let store = DiskStore::open(&demo.data).expect("open the ledger");
        let records: Vec<pb::Record> = store
            .scan(brand, 1)
            .map(|item| pb::Record::decode(item.expect("record").1.as_slice()).expect("decode"))
            .collect();
        assert_eq!(
            records.len() as u64,
            last_seq,
            "the ledger holds records nobody was told about"
        );
        let after: Vec<&pb::Record> = records
            .iter()
            .filter(|r| r.seq >= first_victim_seq)
            .collect();
        assert_eq!(after.len(), victim_txns.len());
        for (r, txn) in after.iter().zip(&victim_txns) {
            assert_eq!(
                (r.terminal_id, r.txn_id, r.kind()),
                (victim_terminal, *txn, pb::RecordKind::Purchase),
                "record {}",
                r.seq
            );
        }
    }
    let out = std::process::Command::new(cardd_bin())
        .arg("check")
        .arg("--data")
        .arg(&demo.data)
        .output()
        .expect("run cardd check");
    assert!(
        out.status.success(),
        "cardd check failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{n} hostile inputs, a flood and 200 dropped connections: no crash, no record");
}

/// A signed request that carries a field `cardd.v1.Request` does not
/// define. The brief counts unknown fields among the inputs to check: such a
/// request is refused (only canonical encodings are accepted) and writes
/// nothing, so no signer can smuggle bytes into the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_request_with_unknown_fields_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut till = bounded(demo.terminal(daemon.addr, 1)).await;
    let before = inquiry(&mut till, &card).await.balance_minor;
    let req = till.request(till.session.last_txn_id + 1, purchase(&card, 1));
    let mut bytes = req.encode_to_vec();
    // Field 99, length-delimited, 50,000 bytes of payload nobody asked for.
    let hidden = vec![b'h'; 50_000];
    prost::encoding::encode_key(99, prost::encoding::WireType::LengthDelimited, &mut bytes);
    prost::encoding::encode_varint(hidden.len() as u64, &mut bytes);
    bytes.extend_from_slice(&hidden);
    let signature = sign_request(till.key(), &bytes);
    let answer = bounded(till.call_signed(bytes, signature)).await;
    let after = inquiry(&mut till, &card).await.balance_minor;
    assert_eq!(
        after, before,
        "the request with unknown fields changed the balance"
    );
    let code = answer
        .expect_err("a request with unknown fields was accepted")
        .code();
    assert!(
        matches!(code, Some(E::Malformed | E::InvalidArgument)),
        "refused with {code:?}"
    );
}
