//! Hostile input: bad frames, garbage and malformed or forged requests get
//! their error code (where the protocol defines one), never crash the daemon,
//! never disturb another connection and never write a record.
//!
//! A "victim" terminal signs on before the first attack; after every attack
//! it must still see the same balance and its own purchase must still work,
//! with a receipt sequence number exactly one past its previous one (so no
//! hostile input wrote anything in between).
//!
//! `cases` holds the table of inputs, `attack` runs one and checks the
//! answer; the raw-protocol helpers are in `tests/common/raw.rs`.
#[path = "../common/mod.rs"]
mod common;

mod attack;
mod cases;
mod personal;

use std::net::SocketAddr;
use std::time::Duration;

use cardd::client::Client;
use cardd::crypto::{generate_key, read_key_file, sign_request};
use cardd::pb::{
    self, client_message::Body, request::Op, server_message, ClientMessage, ErrorCode as E,
    ServerMessage,
};
use cardd::storage::{DiskStore, LogStore};
use common::raw::*;
use common::*;
use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use prost::Message;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use attack::*;
use cases::*;

const MAX_FRAME: usize = 64 * 1024;
/// How long to wait for the daemon's answer (or its closing) to one attack.
const WAIT: Duration = Duration::from_secs(5);
/// Request id of the echo that proves a connection is still usable.
const ECHO_ID: u64 = 0xEC40;

/// A request of `brand_id` by the attacker's operator name.
fn request(brand_id: u32, txn_id: u64, op: Op) -> pb::Request {
    common::raw::request(brand_id, txn_id, "mallory", op)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_harms_no_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Hundreds of deliberate failures from one address: the rate limits
    // (tested in tests/security.rs) would cut the table short. Dozens of
    // concurrent sign-ons of the attacker's key, likewise its connection
    // quota (tested in tests/daemon/isolation.rs).
    let mut flags = Daemon::NO_RATE_LIMITS.to_vec();
    flags.extend(["--connections-per-terminal", "256"]);
    let (mut daemon, demo) = Daemon::demo_with(dir.path(), &flags);
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
        let mut conn = raw_connect(addr).await;
        let bytes = if i % 2 == 0 {
            vec![0, 0]
        } else {
            msg(
                1,
                hello_raw(1, attacker.verifying_key().to_bytes().to_vec()),
            )
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
                            .write_all(&msg(
                                1,
                                hello_raw(1, key.verifying_key().to_bytes().to_vec()),
                            ))
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

    // The slow sign-ons were closed by the daemon (challenge at most, and
    // the refusal that says why).
    let limit = slow_started + Duration::from_secs(cardd::limits::SIGN_ON_TIMEOUT_SECS + 10);
    for (i, mut conn) in slow.into_iter().enumerate() {
        loop {
            match tokio::time::timeout_at(limit, conn.next()).await {
                Err(_) => panic!("slow sign-on {i} is still open after the sign-on time limit"),
                Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(f))) => {
                    let m = ServerMessage::decode(f).expect("decode");
                    assert!(
                        matches!(m.body, Some(server_message::Body::Challenge(_)))
                            || error_code(&m) == Some(E::NotSignedOn),
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
    run::cardd_check(&demo.data);
    println!("{n} hostile inputs, a flood and 200 dropped connections: no crash, no record");
}

/// A signed request that carries a field `cardd.v1.Request` does not
/// define. The brief counts unknown fields among the inputs to check: such a
/// request is refused (the acceptance rule of `src/wire.rs` refuses unknown
/// fields) and writes nothing, so no signer can smuggle bytes into the ledger.
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
