//! End-to-end tests of the real `cardd` binary over TCP on 127.0.0.1.
//!
//! Every test starts its own daemon on a fresh temporary data directory and
//! an ephemeral port (see `common`), then checks exact outcomes: balances,
//! bonus balances, points, tiers, record sequence numbers and error codes.
//!
//! What the demo brand holds when a test starts (see `src/demo.rs`):
//! - records 1..=17 (brand, rules, two stores with a terminal each, five
//!   cards issued and topped up, then terminal 1's first shift closed), so
//!   the first new record is seq 18;
//! - the owner used txn ids 1..=10, terminal 1 (store 1, "Downtown") used
//!   txn ids 1..=5 for the demo top-ups (records 8, 10, .., 16) and 6 for
//!   the shift close, terminal 2 (store 2, "Airport") none;
//! - cards[0..5] hold 100.00, 200.00, 300.00, 500.00 (+50.00 bonus) and
//!   1000.00 (+150.00 bonus), no points, tier "silver".
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use cardd::card_number;
use cardd::client::{recv, send, Client, ClientError};
use cardd::codec::frame_codec;
use cardd::crypto::{generate_key, read_key_file, sign_on_message, sign_request};
use cardd::limits::{DEFAULT_MAX_FRAME_BYTES, MAX_AMOUNT_MINOR};
use cardd::pb::{
    self, client_message::Body, reply::Detail, request::Op, server_message, CardStatus,
    ClientMessage, ErrorCode as E, Role, ShiftTotals, TxnState,
};
use common::{bounded, call, cardd_bin, inquiry, purchase, top_up, Daemon, Demo};
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// The first sequence number written after the demo brand is provisioned.
const FIRST_SEQ: u64 = 18;
/// The promotion line of the demo rules.
const DEMO_PROMO: &str = "Top up 500 get 50 free; 1000 gets 15% more";

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

type Raw = Framed<TcpStream, LengthDelimitedCodec>;

/// Calls `op` and expects a reply.
async fn ok(c: &mut Client, txn: u64, op: Op) -> pb::Reply {
    match call(c, txn, op).await {
        Ok(r) => r,
        Err(code) => panic!("txn {txn}: expected a reply, got {code:?}"),
    }
}

/// Calls `op` and expects a refusal; returns its code.
async fn refused(c: &mut Client, txn: u64, op: Op) -> E {
    match call(c, txn, op).await {
        Ok(r) => panic!("txn {txn}: expected a refusal, got {r:?}"),
        Err(code) => code,
    }
}

/// Sends an exact request and returns the reply or the refusal code.
async fn call_req(c: &mut Client, req: &pb::Request) -> Result<pb::Reply, E> {
    bounded(c.call(req)).await.map_err(|e| match e {
        ClientError::Refused(r) => r.code,
        other => panic!("transport failure: {other}"),
    })
}

/// Sends already-signed bytes and returns the reply or the refusal code.
async fn call_bytes(c: &mut Client, bytes: &[u8], sig: &[u8]) -> Result<pb::Reply, E> {
    bounded(c.call_signed(bytes.to_vec(), sig.to_vec()))
        .await
        .map_err(|e| match e {
            ClientError::Refused(r) => r.code,
            other => panic!("transport failure: {other}"),
        })
}

fn receipt(r: &pb::Reply) -> &pb::Receipt {
    r.receipt.as_ref().expect("reply has a receipt")
}

fn seq(r: &pb::Reply) -> u64 {
    receipt(r).seq
}

fn card_of(r: &pb::Reply) -> &pb::CardView {
    r.card.as_ref().expect("reply has a card view")
}

fn purchased(r: &pb::Reply) -> &pb::PurchaseResult {
    match &r.detail {
        Some(Detail::Purchase(p)) => p,
        other => panic!("expected a purchase result, got {other:?}"),
    }
}

fn topped_up(r: &pb::Reply) -> &pb::TopUpResult {
    match &r.detail {
        Some(Detail::TopUp(t)) => t,
        other => panic!("expected a top-up result, got {other:?}"),
    }
}

fn refunded(r: &pb::Reply) -> &pb::RefundResult {
    match &r.detail {
        Some(Detail::Refund(x)) => x,
        other => panic!("expected a refund result, got {other:?}"),
    }
}

fn reversed(r: &pb::Reply) -> &pb::ReversalResult {
    match &r.detail {
        Some(Detail::Reversal(x)) => x,
        other => panic!("expected a reversal result, got {other:?}"),
    }
}

fn shift_of(r: &pb::Reply) -> &pb::ShiftResult {
    match &r.detail {
        Some(Detail::Shift(x)) => x,
        other => panic!("expected a shift result, got {other:?}"),
    }
}

fn redeemed(r: &pb::Reply) -> &pb::PointsResult {
    match &r.detail {
        Some(Detail::Points(x)) => x,
        other => panic!("expected a points result, got {other:?}"),
    }
}

fn store_created(r: &pb::Reply) -> u32 {
    match &r.detail {
        Some(Detail::Store(x)) => x.store_id,
        other => panic!("expected a store result, got {other:?}"),
    }
}

fn terminal_enrolled(r: &pb::Reply) -> &pb::TerminalEnrolled {
    match &r.detail {
        Some(Detail::Terminal(x)) => x,
        other => panic!("expected a terminal result, got {other:?}"),
    }
}

/// Asserts paid, bonus (and so total) balance and points of a card view.
#[track_caller]
fn assert_money(v: &pb::CardView, paid: i64, bonus: i64, points: i64) {
    assert_eq!(
        (
            v.balance_minor,
            v.paid_balance_minor,
            v.bonus_balance_minor,
            v.points
        ),
        (paid + bonus, paid, bonus, points),
        "card {} (balance, paid, bonus, points)",
        v.card
    );
}

fn partial(card: &str, amount_minor: i64) -> Op {
    Op::Purchase(pb::Purchase {
        card: card.into(),
        amount_minor,
        allow_partial: true,
    })
}

fn refund(original_seq: u64, amount_minor: i64) -> Op {
    Op::Refund(pb::Refund {
        original_seq,
        amount_minor,
    })
}

fn reversal(original_txn_id: u64) -> Op {
    Op::Reversal(pb::Reversal { original_txn_id })
}

fn redeem(card: &str, points: i64) -> Op {
    Op::RedeemPoints(pb::RedeemPoints {
        card: card.into(),
        points,
        reward: "coffee".into(),
    })
}

fn close_shift(totals: Option<ShiftTotals>) -> Op {
    Op::CloseShift(pb::CloseShift {
        terminal_totals: totals,
    })
}

fn txn_status(txn_id: u64) -> Op {
    Op::TxnStatus(pb::TxnStatus { txn_id })
}

fn create_store(name: &str) -> Op {
    Op::CreateStore(pb::CreateStore { name: name.into() })
}

fn enroll(store_id: u32, key: &SigningKey, label: &str) -> Op {
    Op::EnrollTerminal(pb::EnrollTerminal {
        store_id,
        public_key: key.verifying_key().to_bytes().to_vec(),
        label: label.into(),
    })
}

fn issue(card: &str) -> Op {
    Op::IssueCard(pb::IssueCard { card: card.into() })
}

fn set_blocked(card: &str, blocked: bool) -> Op {
    Op::SetCardBlocked(pb::SetCardBlocked {
        card: card.into(),
        blocked,
        reason: "lost".into(),
    })
}

fn replace(old: &str, new: &str) -> Op {
    Op::ReplaceCard(pb::ReplaceCard {
        old_card: old.into(),
        new_card: new.into(),
    })
}

/// The status of one of the client's own transaction ids.
async fn status_of(c: &mut Client, txn: u64) -> pb::StatusResult {
    let r = ok(c, 0, txn_status(txn)).await;
    assert!(r.receipt.is_none(), "a status query writes no record");
    match r.detail {
        Some(Detail::Status(s)) => *s,
        other => panic!("expected a status result, got {other:?}"),
    }
}

/// A request signed by the client's key: (bytes, signature).
fn signed_bytes(c: &Client, req: &pb::Request) -> (Vec<u8>, Vec<u8>) {
    let bytes = req.encode_to_vec();
    let sig = sign_request(c.key(), &bytes);
    (bytes, sig)
}

/// The same card number with its check digit changed (so it is invalid).
fn bad_check_digit(card: &str) -> String {
    let mut b = card.as_bytes().to_vec();
    let last = b.len() - 1;
    b[last] = if b[last] == b'9' { b'0' } else { b[last] + 1 };
    String::from_utf8(b).expect("digits")
}

/// Starts the demo daemon with extra arguments.
fn demo_with(dir: &Path, extra: &[&str]) -> (Daemon, Demo) {
    let data = dir.join("data");
    let mut args = vec!["--demo"];
    args.extend_from_slice(extra);
    let d = Daemon::start(&data, &args);
    let demo = Demo::load(&data);
    (d, demo)
}

async fn connect(addr: SocketAddr, key: SigningKey) -> Client {
    bounded(Client::connect(addr, key)).await.expect("sign-on")
}

/// Runs `cardd brand create` on a stopped daemon's data directory.
fn brand_create(data: &Path, name: &str, owner_key: &Path) -> std::process::Output {
    Command::new(cardd_bin())
        .args(["brand", "create", "--data"])
        .arg(data)
        .args(["--name", name, "--owner-key"])
        .arg(owner_key)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cardd brand create")
}

/// `cardd brand create` that must succeed; returns the new brand id.
fn brand_create_ok(data: &Path, name: &str, owner_key: &Path) -> u32 {
    let out = brand_create(data, name, owner_key);
    assert!(
        out.status.success(),
        "brand create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("brand id printed")
}

// Raw protocol helpers.

async fn raw_connect(addr: SocketAddr) -> Raw {
    let stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    Framed::new(stream, frame_codec(DEFAULT_MAX_FRAME_BYTES))
}

async fn raw_send(f: &mut Raw, request_id: u64, body: Body) {
    bounded(send(
        f,
        ClientMessage {
            request_id,
            body: Some(body),
        },
    ))
    .await
    .expect("send");
}

async fn raw_recv(f: &mut Raw) -> pb::ServerMessage {
    bounded(recv(f)).await.expect("receive")
}

/// True if the server has closed the connection (EOF or reset).
async fn raw_closed(f: &mut Raw) -> bool {
    matches!(bounded(recv(f)).await, Err(ClientError::Io(_)))
}

#[track_caller]
fn error_code(m: &pb::ServerMessage) -> E {
    match &m.body {
        Some(server_message::Body::Error(e)) => E::try_from(e.code).expect("known error code"),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn hello(key: &SigningKey) -> Body {
    Body::Hello(pb::Hello {
        protocol_version: 1,
        public_key: key.verifying_key().to_bytes().to_vec(),
    })
}

async fn raw_challenge(f: &mut Raw, key: &SigningKey) -> pb::Challenge {
    raw_send(f, 1, hello(key)).await;
    match raw_recv(f).await.body {
        Some(server_message::Body::Challenge(c)) => c,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

fn signed_body(key: &SigningKey, req: &pb::Request) -> Body {
    let request = req.encode_to_vec();
    let signature = sign_request(key, &request);
    Body::Signed(pb::SignedRequest { request, signature })
}

fn demo_request(txn_id: u64, op: Op) -> pb::Request {
    pb::Request {
        txn_id,
        brand_id: 1,
        operator: "test".into(),
        op: Some(op),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// 1. Inquiry and sign-on.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn inquiry_shows_what_the_demo_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let cards = &demo.manifest.cards;
    let mut t = demo.terminal(d.addr, 0).await;
    let expected = [
        (10_000, 0),
        (20_000, 0),
        (30_000, 0),
        (50_000, 5_000),
        (100_000, 15_000),
    ];
    assert_eq!(cards.len(), expected.len());
    for (card, (paid, bonus)) in cards.iter().zip(expected) {
        let v = inquiry(&mut t, card).await;
        assert_eq!(&v.card, card);
        assert_eq!(v.status(), CardStatus::Active);
        assert_money(&v, paid, bonus, 0);
        assert_eq!(v.tier, "silver");
        assert_eq!((v.total_spend_minor, v.visits), (0, 0));
    }
    // An inquiry writes nothing and carries the promotion line.
    let r = ok(
        &mut t,
        0,
        Op::Inquiry(pb::Inquiry {
            card: cards[4].clone(),
        }),
    )
    .await;
    assert!(r.receipt.is_none());
    assert_eq!(r.promotion_line, DEMO_PROMO);
    // The owner sees the same card.
    let mut o = demo.owner(d.addr).await;
    assert_money(&inquiry(&mut o, &cards[4]).await, 100_000, 15_000, 0);
    // Unknown and malformed numbers get the same answer.
    let unknown = card_number::generate(1);
    assert_eq!(
        refused(&mut t, 0, Op::Inquiry(pb::Inquiry { card: unknown })).await,
        E::CardNotFound
    );
    assert_eq!(
        refused(
            &mut t,
            0,
            Op::Inquiry(pb::Inquiry {
                card: "12345".into()
            })
        )
        .await,
        E::CardNotFound
    );
    let typo = bad_check_digit(&cards[0]);
    assert_eq!(
        refused(&mut t, 0, Op::Inquiry(pb::Inquiry { card: typo })).await,
        E::CardNotFound
    );
    // The first record written now is FIRST_SEQ: inquiries wrote nothing.
    let r = ok(&mut t, 100, purchase(&cards[0], 1)).await;
    assert_eq!(seq(&r), FIRST_SEQ);
}

#[tokio::test]
async fn sign_on_describes_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let t1 = demo.terminal(d.addr, 0).await;
    let s = &t1.session;
    assert_eq!(s.role(), Role::Terminal);
    assert_eq!((s.brand_id, s.brand_name.as_str()), (1, "Demo Coffee"));
    assert_eq!((s.currency.as_str(), s.currency_exponent), ("CNY", 2));
    assert_eq!(
        (s.store_id, s.store_name.as_str(), s.terminal_id),
        (1, "Downtown", 1)
    );
    assert_eq!(
        s.last_txn_id, 6,
        "the demo top-ups and shift close were txn ids 1..=6 of terminal 1"
    );
    assert_eq!(s.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES as u64);
    assert_eq!(s.max_in_flight, 64);
    let t2 = demo.terminal(d.addr, 1).await;
    let s = &t2.session;
    assert_eq!(
        (
            s.store_id,
            s.store_name.as_str(),
            s.terminal_id,
            s.last_txn_id
        ),
        (2, "Airport", 2, 0)
    );
    let o = demo.owner(d.addr).await;
    let s = &o.session;
    assert_eq!(s.role(), Role::Owner);
    assert_eq!(
        (s.brand_id, s.store_id, s.terminal_id, s.last_txn_id),
        (1, 0, 0, 10)
    );
}

// ---------------------------------------------------------------------------
// 2. Purchase.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn purchase_spends_paid_value_before_bonus_and_earns_floor_points() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[3].clone(); // paid 500.00, bonus 50.00
    let mut t = demo.terminal(d.addr, 0).await;

    // 520.99 spent: all 500.00 paid, then 20.99 of bonus; 520 points (floor).
    let r = ok(&mut t, 100, purchase(&card, 52_099)).await;
    let p = purchased(&r);
    assert_eq!(
        (
            p.requested_minor,
            p.approved_minor,
            p.remaining_due_minor,
            p.points_earned
        ),
        (52_099, 52_099, 0, 520)
    );
    assert_money(card_of(&r), 0, 2_901, 520);
    let v = card_of(&r);
    assert_eq!(
        (v.tier.as_str(), v.total_spend_minor, v.visits),
        ("silver", 52_099, 1)
    );
    let rc = receipt(&r);
    assert_eq!(
        (rc.seq, rc.store_id, rc.terminal_id, rc.txn_id),
        (FIRST_SEQ, 1, 1, 100)
    );
    assert_eq!(rc.hash.len(), 32);
    assert_eq!(r.promotion_line, DEMO_PROMO);
    assert!(!r.replayed);
    assert_eq!(
        &inquiry(&mut t, &card).await,
        card_of(&r),
        "inquiry agrees with the receipt"
    );

    // 9.01 more from bonus: 9 points; the next record is the next seq.
    let r = ok(&mut t, 101, purchase(&card, 901)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 1);
    assert_eq!(purchased(&r).points_earned, 9);
    assert_money(card_of(&r), 0, 2_000, 529);
    // Below 1.00 earns nothing.
    let r = ok(&mut t, 102, purchase(&card, 99)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 2);
    assert_eq!(purchased(&r).points_earned, 0);
    assert_money(card_of(&r), 0, 1_901, 529);

    // Not enough and no split tender: refused, nothing written.
    assert_eq!(
        refused(&mut t, 103, purchase(&card, 1_902)).await,
        E::InsufficientFunds
    );
    assert_money(&inquiry(&mut t, &card).await, 0, 1_901, 529);

    // Split tender: the card pays what it has, the rest is still due.
    let r = ok(&mut t, 104, partial(&card, 5_000)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 3, "the refusal wrote no record");
    let p = purchased(&r);
    assert_eq!(
        (
            p.requested_minor,
            p.approved_minor,
            p.remaining_due_minor,
            p.points_earned
        ),
        (5_000, 1_901, 3_099, 19)
    );
    assert_money(card_of(&r), 0, 0, 548);
    // An empty card pays nothing, even with split tender.
    assert_eq!(
        refused(&mut t, 105, partial(&card, 100)).await,
        E::InsufficientFunds
    );
    let v = inquiry(&mut t, &card).await;
    assert_money(&v, 0, 0, 548);
    assert_eq!(v.total_spend_minor, 52_099 + 901 + 99 + 1_901);
    // Only what the card paid of a split-tender bill can be refunded, and
    // bonus comes back as bonus.
    let split = seq(&r);
    assert_eq!(
        refused(&mut t, 106, refund(split, 1_902)).await,
        E::RefundExceedsOriginal
    );
    let r = ok(&mut t, 107, refund(split, 1_901)).await;
    assert_eq!(refunded(&r).points_removed, 19);
    assert_money(card_of(&r), 0, 1_901, 529);
}

#[tokio::test]
async fn tier_upgrades_raise_the_points_multiplier() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[4].clone(); // paid 1000.00, bonus 150.00
    let mut t = demo.terminal(d.addr, 0).await;
    let r = ok(&mut t, 100, top_up(&card, 100_000)).await;
    assert_money(card_of(&r), 200_000, 30_000, 0);
    // 2000.00 at silver (1x): 2000 points, and the card reaches gold.
    let r = ok(&mut t, 101, purchase(&card, 200_000)).await;
    assert_eq!(purchased(&r).points_earned, 2_000);
    assert_money(card_of(&r), 0, 30_000, 2_000);
    assert_eq!(card_of(&r).tier, "gold");
    // Gold earns 2x: 10.50 -> 21 points; 0.99 -> 1.98 -> 1 point.
    let r = ok(&mut t, 102, purchase(&card, 1_050)).await;
    assert_eq!(purchased(&r).points_earned, 21);
    let r = ok(&mut t, 103, purchase(&card, 99)).await;
    assert_eq!(purchased(&r).points_earned, 1);
    assert_money(card_of(&r), 0, 28_851, 2_022);
    // Up to 10,000.00 of spend: diamond, 3.8x, rounded down.
    let r = ok(&mut t, 104, top_up(&card, 1_000_000)).await;
    assert_eq!(topped_up(&r).bonus_minor, 150_000);
    let r = ok(&mut t, 105, purchase(&card, 798_851)).await;
    assert_eq!(
        purchased(&r).points_earned,
        15_977,
        "7988.51 at 2x = 15977.02"
    );
    assert_eq!(
        (card_of(&r).tier.as_str(), card_of(&r).total_spend_minor),
        ("diamond", 1_000_000)
    );
    let r = ok(&mut t, 106, purchase(&card, 1_234)).await;
    assert_eq!(purchased(&r).points_earned, 46, "12.34 at 3.8x = 46.892");
    assert_money(&inquiry(&mut t, &card).await, 199_915, 178_851, 18_045);
}

// ---------------------------------------------------------------------------
// 3. Top-up.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn top_up_applies_the_bonus_rules_and_keeps_bonus_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone(); // paid 100.00
    let mut t = demo.terminal(d.addr, 0).await;
    let (mut paid, mut bonus) = (10_000, 0);
    // (load, bonus): below 500.00 none; 500.00 up to 999.99 a fixed 50.00;
    // from 1000.00 15%, rounded down.
    let cases = [
        (49_999, 0),
        (50_000, 5_000),
        (99_999, 5_000),
        (100_000, 15_000),
        (100_007, 15_001),
        (1, 0),
    ];
    for (i, (load, expect_bonus)) in cases.into_iter().enumerate() {
        let txn = 100 + i as u64;
        let r = ok(&mut t, txn, top_up(&card, load)).await;
        assert_eq!(seq(&r), FIRST_SEQ + i as u64);
        let tu = topped_up(&r);
        assert_eq!(
            (tu.paid_minor, tu.bonus_minor),
            (load, expect_bonus),
            "top-up of {load}"
        );
        paid += load;
        bonus += expect_bonus;
        assert_money(card_of(&r), paid, bonus, 0);
        assert_eq!(card_of(&r).total_spend_minor, 0, "a top-up is not spend");
    }
    assert_money(&inquiry(&mut t, &card).await, paid, bonus, 0);
    // Spending takes paid value first: the bonus stays as it was.
    let r = ok(&mut t, 200, purchase(&card, 300_000)).await;
    assert_money(card_of(&r), paid - 300_000, bonus, 3_000);
    // The largest single amount is accepted (the bound is inclusive).
    let other = demo.manifest.cards[1].clone();
    let r = ok(&mut t, 201, top_up(&other, MAX_AMOUNT_MINOR)).await;
    assert_eq!(topped_up(&r).bonus_minor, MAX_AMOUNT_MINOR * 15 / 100);
    assert_money(
        card_of(&r),
        20_000 + MAX_AMOUNT_MINOR,
        MAX_AMOUNT_MINOR * 15 / 100,
        0,
    );
}

// ---------------------------------------------------------------------------
// 4. Points redemption.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redeeming_points_lowers_points_and_refuses_more_than_held() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let r = ok(&mut t, 100, purchase(&card, 12_345)).await;
    assert_money(card_of(&r), 87_655, 15_000, 123);
    let r = ok(&mut t, 101, redeem(&card, 100)).await;
    assert_eq!(redeemed(&r).points_redeemed, 100);
    assert_eq!(seq(&r), FIRST_SEQ + 1);
    assert_money(card_of(&r), 87_655, 15_000, 23);
    assert_eq!(
        refused(&mut t, 102, redeem(&card, 24)).await,
        E::InsufficientPoints
    );
    assert_money(&inquiry(&mut t, &card).await, 87_655, 15_000, 23);
    assert_eq!(
        refused(&mut t, 103, redeem(&card, 0)).await,
        E::AmountOutOfRange
    );
    assert_eq!(
        refused(&mut t, 104, redeem(&card, -5)).await,
        E::AmountOutOfRange
    );
    let r = ok(&mut t, 105, redeem(&card, 23)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 2);
    assert_money(card_of(&r), 87_655, 15_000, 0);
    assert_eq!(
        refused(&mut t, 106, redeem(&card, 1)).await,
        E::InsufficientPoints
    );
    assert_money(&inquiry(&mut t, &card).await, 87_655, 15_000, 0);
}

// ---------------------------------------------------------------------------
// 5. Refund.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refunds_return_bonus_first_and_stop_at_the_purchase_amount() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[3].clone(); // paid 500.00, bonus 50.00
    let mut t1 = demo.terminal(d.addr, 0).await;
    let mut t2 = demo.terminal(d.addr, 1).await;

    // 520.00: 500.00 paid + 20.00 bonus, 520 points.
    let p = ok(&mut t1, 100, purchase(&card, 52_000)).await;
    let pseq = seq(&p);
    assert_money(card_of(&p), 0, 3_000, 520);

    // The other store cannot refund it.
    assert_eq!(refused(&mut t2, 1, refund(pseq, 1)).await, E::WrongStore);
    // A top-up is not refundable; an unknown seq is not found.
    let tu = ok(&mut t1, 101, top_up(&card, 1_000)).await;
    assert_money(card_of(&tu), 1_000, 3_000, 520);
    assert_eq!(
        refused(&mut t1, 102, refund(seq(&tu), 100)).await,
        E::NotRefundable
    );
    assert_eq!(
        refused(&mut t1, 103, refund(999_999, 100)).await,
        E::OriginalNotFound
    );
    assert_eq!(
        refused(&mut t1, 104, refund(pseq, 52_001)).await,
        E::RefundExceedsOriginal
    );
    assert_money(&inquiry(&mut t1, &card).await, 1_000, 3_000, 520);

    // 30.00 back: the 20.00 of bonus first, then 10.00 paid; 30 points out.
    let r = ok(&mut t1, 105, refund(pseq, 3_000)).await;
    let rf = refunded(&r);
    assert_eq!(
        (
            rf.refunded_minor,
            rf.refundable_left_minor,
            rf.points_removed
        ),
        (3_000, 49_000, 30)
    );
    assert_money(card_of(&r), 2_000, 5_000, 490);
    assert_eq!(receipt(&r).store_id, 1);
    // One minor unit over what is left is refused.
    assert_eq!(
        refused(&mut t1, 106, refund(pseq, 49_001)).await,
        E::RefundExceedsOriginal
    );
    // The rest: all paid value, the remaining points.
    let r = ok(&mut t1, 107, refund(pseq, 49_000)).await;
    let rf = refunded(&r);
    assert_eq!(
        (
            rf.refunded_minor,
            rf.refundable_left_minor,
            rf.points_removed
        ),
        (49_000, 0, 490)
    );
    assert_money(card_of(&r), 51_000, 5_000, 0);
    assert_eq!(card_of(&r).total_spend_minor, 0);
    assert_eq!(
        refused(&mut t1, 108, refund(pseq, 1)).await,
        E::RefundExceedsOriginal
    );
    // Refusals changed nothing.
    assert_money(&inquiry(&mut t1, &card).await, 51_000, 5_000, 0);
    assert_eq!(
        refused(&mut t1, 109, refund(pseq, 0)).await,
        E::AmountOutOfRange
    );
    // A purchase with refunds cannot be reversed any more.
    assert_eq!(refused(&mut t1, 110, reversal(100)).await, E::NotReversible);
    let next = ok(&mut t1, 111, purchase(&card, 1)).await;
    assert_eq!(seq(&next), seq(&r) + 1);
}

// ---------------------------------------------------------------------------
// 6. Reversal and transaction status.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reversal_restores_value_and_tombstones_missing_txns() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[2].clone(); // paid 300.00
    let mut t = demo.terminal(d.addr, 0).await;

    let p = ok(&mut t, 100, purchase(&card, 1_234)).await;
    assert_money(card_of(&p), 28_766, 0, 12);
    let r = ok(&mut t, 101, reversal(100)).await;
    let rv = reversed(&r);
    assert_eq!(
        (
            rv.original_txn_id,
            rv.original_found,
            rv.original_seq,
            rv.value_minor
        ),
        (100, true, seq(&p), 1_234)
    );
    assert_eq!(seq(&r), seq(&p) + 1);
    let v = card_of(&r);
    assert_money(v, 30_000, 0, 0);
    assert_eq!((v.total_spend_minor, v.visits), (0, 0));
    assert_eq!(&inquiry(&mut t, &card).await, v);

    // Once only; a reversed purchase cannot be refunded; a reversal itself
    // cannot be reversed.
    assert_eq!(
        refused(&mut t, 102, reversal(100)).await,
        E::AlreadyReversed
    );
    assert_eq!(
        refused(&mut t, 103, refund(seq(&p), 100)).await,
        E::NotRefundable
    );
    assert_eq!(refused(&mut t, 104, reversal(101)).await, E::NotReversible);
    assert_eq!(
        refused(&mut t, 105, reversal(105)).await,
        E::InvalidArgument
    );
    assert_money(&inquiry(&mut t, &card).await, 30_000, 0, 0);

    // A txn id the server never saw: acknowledged, and tombstoned.
    let r = ok(&mut t, 106, reversal(150)).await;
    let rv = reversed(&r);
    assert_eq!(
        (
            rv.original_txn_id,
            rv.original_found,
            rv.original_seq,
            rv.value_minor
        ),
        (150, false, 0, 0)
    );
    assert!(r.card.is_none());
    assert_eq!(seq(&r), seq(&p) + 2);
    // Its late arrival is refused and changes nothing.
    assert_eq!(
        refused(&mut t, 150, purchase(&card, 500)).await,
        E::TxnReversed
    );
    assert_eq!(
        refused(&mut t, 150, top_up(&card, 500)).await,
        E::TxnReversed
    );
    assert_money(&inquiry(&mut t, &card).await, 30_000, 0, 0);
    assert_eq!(
        refused(&mut t, 107, reversal(150)).await,
        E::AlreadyReversed
    );
    assert_eq!(refused(&mut t, 108, reversal(106)).await, E::NotReversible);

    // A top-up reversed takes back its paid value and its bonus.
    let tu = ok(&mut t, 109, top_up(&card, 50_000)).await;
    assert_money(card_of(&tu), 80_000, 5_000, 0);
    let r = ok(&mut t, 110, reversal(109)).await;
    assert_eq!(reversed(&r).value_minor, 55_000);
    assert_money(card_of(&r), 30_000, 0, 0);
    assert_eq!(seq(&r), seq(&p) + 4, "refusals wrote nothing");
    assert_eq!(t.session.last_txn_id, 6);
    let again = demo.terminal(d.addr, 0).await;
    assert_eq!(again.session.last_txn_id, 110);
}

#[tokio::test]
async fn txn_status_reports_committed_reversed_tombstoned_and_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[2].clone();
    let mut t = demo.terminal(d.addr, 0).await;

    let p = ok(&mut t, 100, purchase(&card, 700)).await;
    let s = status_of(&mut t, 100).await;
    assert_eq!((s.state(), s.seq), (TxnState::Committed, seq(&p)));
    assert_eq!(
        s.original.as_deref(),
        Some(&p),
        "the original answer, as first sent"
    );

    let p2 = ok(&mut t, 101, purchase(&card, 800)).await;
    let rv = ok(&mut t, 102, reversal(101)).await;
    let s = status_of(&mut t, 101).await;
    assert_eq!((s.state(), s.seq), (TxnState::Reversed, seq(&p2)));
    assert_eq!(s.original.as_ref().map(|o| seq(o)), Some(seq(&p2)));
    // The reversal itself is committed.
    let s = status_of(&mut t, 102).await;
    assert_eq!((s.state(), s.seq), (TxnState::Committed, seq(&rv)));

    let tomb = ok(&mut t, 103, reversal(120)).await;
    let s = status_of(&mut t, 120).await;
    assert_eq!((s.state(), s.seq), (TxnState::Tombstoned, seq(&tomb)));

    let s = status_of(&mut t, 9_999).await;
    assert_eq!(
        (s.state(), s.seq, s.original.is_none()),
        (TxnState::Unknown, 0, true)
    );
    // A refused request left no trace.
    assert_eq!(
        refused(&mut t, 104, purchase(&card, 10_000_000)).await,
        E::InsufficientFunds
    );
    assert_eq!(status_of(&mut t, 104).await.state(), TxnState::Unknown);
    // Transaction ids belong to their terminal.
    let mut t2 = demo.terminal(d.addr, 1).await;
    assert_eq!(status_of(&mut t2, 100).await.state(), TxnState::Unknown);
    // The demo top-ups are terminal 1's txn ids 1..=5.
    let s = status_of(&mut t, 5).await;
    assert_eq!((s.state(), s.seq), (TxnState::Committed, 16));
    let orig = s.original.expect("original");
    assert_eq!(topped_up(&orig).paid_minor, 100_000);
}

// ---------------------------------------------------------------------------
// 7. Shift close.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn shift_close_compares_totals_and_starts_the_next_shift_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[1].clone(); // paid 200.00
    let mut t = demo.terminal(d.addr, 1).await; // store 2, nothing done yet

    ok(&mut t, 1, top_up(&card, 10_000)).await;
    let p = ok(&mut t, 2, purchase(&card, 5_000)).await;
    ok(&mut t, 3, purchase(&card, 2_550)).await;
    let rf = ok(&mut t, 4, refund(seq(&p), 1_000)).await;
    assert_eq!(refunded(&rf).points_removed, 10);
    let rv = ok(&mut t, 5, reversal(3)).await;
    assert_eq!(reversed(&rv).value_minor, 2_550);
    ok(&mut t, 6, reversal(50)).await; // tombstone: counted, no value
    ok(&mut t, 7, redeem(&card, 10)).await;
    // Refusals are not counted.
    assert_eq!(
        refused(&mut t, 8, purchase(&card, 10_000_000)).await,
        E::InsufficientFunds
    );
    assert_money(&inquiry(&mut t, &card).await, 26_000, 0, 30);

    let expected = ShiftTotals {
        purchase_count: 2,
        purchase_minor: 7_550,
        top_up_count: 1,
        top_up_minor: 10_000,
        refund_count: 1,
        refund_minor: 1_000,
        reversal_count: 2,
        reversal_minor: 2_550,
        redeem_count: 1,
        redeem_points: 10,
    };
    let r = ok(&mut t, 9, close_shift(Some(expected))).await;
    let s = shift_of(&r);
    assert_eq!(s.server_totals.as_ref(), Some(&expected));
    assert!(s.balanced);
    assert_eq!(s.shift_number, 1);
    assert_eq!(receipt(&r).store_id, 2);

    // The closed shift's transactions can no longer be reversed.
    assert_eq!(refused(&mut t, 10, reversal(1)).await, E::NotReversible);

    // The next shift starts from zero; a mismatch is reported, not refused.
    ok(&mut t, 11, purchase(&card, 300)).await;
    let r = ok(&mut t, 12, close_shift(Some(expected))).await;
    let s = shift_of(&r);
    let only_purchase = ShiftTotals {
        purchase_count: 1,
        purchase_minor: 300,
        ..Default::default()
    };
    assert_eq!(s.server_totals.as_ref(), Some(&only_purchase));
    assert!(!s.balanced);
    assert_eq!(s.shift_number, 2);
    let r = ok(&mut t, 13, close_shift(Some(ShiftTotals::default()))).await;
    let s = shift_of(&r);
    assert_eq!(s.server_totals.as_ref(), Some(&ShiftTotals::default()));
    assert!(s.balanced);
    assert_eq!(s.shift_number, 3);

    // Terminal 1's first shift held the five demo top-ups and was closed
    // by the demo (txn 6); its second shift holds nothing yet.
    let mut t1 = demo.terminal(d.addr, 0).await;
    let demo_loads = ShiftTotals {
        top_up_count: 5,
        top_up_minor: 210_000,
        ..Default::default()
    };
    let first = status_of(&mut t1, 6)
        .await
        .original
        .expect("the demo's shift close");
    let s = shift_of(&first);
    assert_eq!(
        (s.server_totals.as_ref(), s.balanced, s.shift_number),
        (Some(&demo_loads), true, 1)
    );
    let r = ok(&mut t1, 100, close_shift(Some(ShiftTotals::default()))).await;
    let s = shift_of(&r);
    assert_eq!(
        (s.server_totals.as_ref(), s.balanced, s.shift_number),
        (Some(&ShiftTotals::default()), true, 2)
    );
    // Terminal 2's totals were not touched by terminal 1.
    let r = ok(&mut t, 14, close_shift(Some(ShiftTotals::default()))).await;
    assert_eq!(
        (shift_of(&r).balanced, shift_of(&r).shift_number),
        (true, 4)
    );
}

// ---------------------------------------------------------------------------
// 8. Idempotency.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_retry_of_the_same_signed_bytes_is_replayed_not_reapplied() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone(); // paid 100.00
    let mut t = demo.terminal(d.addr, 0).await;

    let req = t.request(100, purchase(&card, 1_000));
    let (bytes, sig) = signed_bytes(&t, &req);
    let first = call_bytes(&mut t, &bytes, &sig).await.expect("purchase");
    assert!(!first.replayed);
    assert_eq!(seq(&first), FIRST_SEQ);
    assert_money(card_of(&first), 9_000, 0, 10);

    let retry = call_bytes(&mut t, &bytes, &sig).await.expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt, "same seq, hash, time and txn");
    assert_eq!((&retry.card, &retry.detail), (&first.card, &first.detail));
    // Re-signing the same request gives the same bytes and signature.
    let retry = call_req(&mut t, &req).await.expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);
    assert_money(&inquiry(&mut t, &card).await, 9_000, 0, 10);

    // A different request under the same txn id is refused.
    assert_eq!(
        refused(&mut t, 100, purchase(&card, 2_000)).await,
        E::IdempotencyConflict
    );
    assert_eq!(
        refused(&mut t, 100, top_up(&card, 5_000)).await,
        E::IdempotencyConflict
    );
    let mut changed = req.clone();
    changed.operator = "someone else".into();
    assert_eq!(
        call_req(&mut t, &changed).await.unwrap_err(),
        E::IdempotencyConflict
    );
    assert_money(&inquiry(&mut t, &card).await, 9_000, 0, 10);

    // Nothing was written by the retries or the conflicts.
    let r = ok(&mut t, 101, purchase(&card, 500)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 1);

    // A new connection: the retry is still recognised.
    let mut t = demo.terminal(d.addr, 0).await;
    assert_eq!(t.session.last_txn_id, 101);
    let retry = call_bytes(&mut t, &bytes, &sig).await.expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);
    assert_money(&inquiry(&mut t, &card).await, 8_500, 0, 15);
}

#[tokio::test]
async fn sign_on_reports_the_highest_recorded_txn_id() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 1).await;
    assert_eq!(t.session.last_txn_id, 0);
    ok(&mut t, 41, purchase(&card, 100)).await;
    ok(&mut t, 42, top_up(&card, 100)).await;
    // Refused: not in the ledger, so not the last txn id.
    assert_eq!(
        refused(&mut t, 43, purchase(&card, 10_000_000)).await,
        E::InsufficientFunds
    );
    drop(t);
    let mut t = demo.terminal(d.addr, 1).await;
    assert_eq!(t.session.last_txn_id, 42);
    // The highest recorded, not the newest: pipelined requests can reach
    // the writer out of order, and a till continues from highest + 1.
    ok(&mut t, 7, purchase(&card, 100)).await;
    let t = demo.terminal(d.addr, 1).await;
    assert_eq!(t.session.last_txn_id, 42);
    // The owner's too.
    let mut o = demo.owner(d.addr).await;
    assert_eq!(o.session.last_txn_id, 10);
    ok(&mut o, 11, issue(&card_number::generate(1))).await;
    let o = demo.owner(d.addr).await;
    assert_eq!(o.session.last_txn_id, 11);
}

#[tokio::test]
async fn a_retry_of_a_terminal_enrolment_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let key = generate_key();
    let req = o.request(11, enroll(1, &key, "Downtown till 2"));
    let first = call_req(&mut o, &req).await.expect("enrol");
    assert_eq!(terminal_enrolled(&first).terminal_id, 3);
    let retry = call_req(&mut o, &req)
        .await
        .expect("a retry is answered with the original reply");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);
    assert_eq!(retry.detail, first.detail);
}

// ---------------------------------------------------------------------------
// 9. Multi-store and cross-brand.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn one_card_works_in_both_stores_and_each_record_names_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[2].clone(); // paid 300.00
    let mut t1 = demo.terminal(d.addr, 0).await;
    let mut t2 = demo.terminal(d.addr, 1).await;

    let a = ok(&mut t1, 100, purchase(&card, 1_000)).await;
    let rc = receipt(&a);
    assert_eq!((rc.seq, rc.store_id, rc.terminal_id), (FIRST_SEQ, 1, 1));
    assert_money(card_of(&a), 29_000, 0, 10);
    // The same txn id from another terminal is another transaction.
    let b = ok(&mut t2, 100, purchase(&card, 2_000)).await;
    let rc = receipt(&b);
    assert_eq!(
        (rc.seq, rc.store_id, rc.terminal_id, rc.txn_id),
        (FIRST_SEQ + 1, 2, 2, 100)
    );
    assert!(!b.replayed);
    assert_money(card_of(&b), 27_000, 0, 30);
    let c = ok(&mut t2, 101, top_up(&card, 50_000)).await;
    assert_eq!(receipt(&c).store_id, 2);
    assert_money(card_of(&c), 77_000, 5_000, 30);
    assert_money(&inquiry(&mut t1, &card).await, 77_000, 5_000, 30);
    let s = status_of(&mut t1, 100).await;
    assert_eq!(
        s.original.as_ref().map(|o| purchased(o).approved_minor),
        Some(1_000)
    );
    let s = status_of(&mut t2, 100).await;
    assert_eq!(
        s.original.as_ref().map(|o| purchased(o).approved_minor),
        Some(2_000)
    );
}

#[tokio::test]
async fn brands_are_isolated_from_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (k1, k2) = (dir.path().join("owner1.key"), dir.path().join("owner2.key"));
    assert_eq!(brand_create_ok(&data, "Brand One", &k1), 1);
    assert_eq!(brand_create_ok(&data, "Brand Two", &k2), 2);
    let d = Daemon::start(&data, &[]);
    let mut o1 = connect(d.addr, read_key_file(&k1).unwrap()).await;
    let mut o2 = connect(d.addr, read_key_file(&k2).unwrap()).await;
    assert_eq!(
        (o1.session.brand_id, o1.session.brand_name.as_str()),
        (1, "Brand One")
    );
    assert_eq!(
        (o2.session.brand_id, o2.session.brand_name.as_str()),
        (2, "Brand Two")
    );
    assert_eq!(
        (o1.session.role(), o2.session.role()),
        (Role::Owner, Role::Owner)
    );

    // Each brand: a store, a terminal, a card; ids and seqs are per brand.
    let (key1, key2) = (generate_key(), generate_key());
    let (card1, card2) = (card_number::generate(1), card_number::generate(2));
    for (o, key, card, name) in [
        (&mut o1, &key1, &card1, "One Main"),
        (&mut o2, &key2, &card2, "Two Main"),
    ] {
        let r = ok(o, 1, create_store(name)).await;
        assert_eq!((store_created(&r), seq(&r)), (1, 2));
        let r = ok(o, 2, enroll(1, key, "till")).await;
        assert_eq!((terminal_enrolled(&r).terminal_id, seq(&r)), (1, 3));
        let r = ok(o, 3, issue(card)).await;
        assert_eq!(seq(&r), 4);
    }
    // One key never speaks for two brands.
    assert_eq!(
        refused(&mut o2, 4, enroll(1, &key1, "stolen")).await,
        E::KeyInUse
    );
    assert_eq!(
        refused(&mut o1, 4, enroll(1, &key2, "stolen")).await,
        E::KeyInUse
    );
    let owner2 = read_key_file(&k2).unwrap();
    assert_eq!(
        refused(&mut o1, 4, enroll(1, &owner2, "owner")).await,
        E::KeyInUse
    );
    assert_eq!(
        refused(&mut o1, 4, issue(&card_number::generate(2))).await,
        E::CardOtherBrand
    );

    let mut t1 = connect(d.addr, key1).await;
    let mut t2 = connect(d.addr, key2).await;
    assert_eq!(
        (
            t1.session.brand_id,
            t1.session.store_id,
            t1.session.terminal_id
        ),
        (1, 1, 1)
    );
    assert_eq!(
        (
            t2.session.brand_id,
            t2.session.store_id,
            t2.session.terminal_id
        ),
        (2, 1, 1)
    );
    assert_eq!(t2.session.store_name, "Two Main");

    // Brand 2 runs on the default rules: no bonus, 1 point per unit.
    let r = ok(&mut t2, 1, top_up(&card2, 10_000)).await;
    assert_eq!((topped_up(&r).bonus_minor, seq(&r)), (0, 5));
    let r = ok(&mut t2, 2, purchase(&card2, 2_500)).await;
    assert_eq!(seq(&r), 6);
    assert_money(card_of(&r), 7_500, 0, 25);
    assert_eq!(card_of(&r).tier, "member");
    let r = ok(&mut t1, 1, top_up(&card1, 5_000)).await;
    assert_eq!(seq(&r), 5, "brand 1 has its own chain");

    // Brand 1's terminal cannot use brand 2's card.
    assert_eq!(
        refused(&mut t1, 2, purchase(&card2, 100)).await,
        E::CardOtherBrand
    );
    assert_eq!(
        refused(&mut t1, 2, top_up(&card2, 100)).await,
        E::CardOtherBrand
    );
    assert_eq!(
        refused(
            &mut t1,
            0,
            Op::Inquiry(pb::Inquiry {
                card: card2.clone()
            })
        )
        .await,
        E::CardOtherBrand
    );
    // A request naming the other brand is refused.
    let mut req = t1.request(2, purchase(&card1, 100));
    req.brand_id = 2;
    assert_eq!(call_req(&mut t1, &req).await.unwrap_err(), E::WrongBrand);
    let mut req = t2.request(3, purchase(&card2, 100));
    req.brand_id = 1;
    assert_eq!(call_req(&mut t2, &req).await.unwrap_err(), E::WrongBrand);
    let mut req = o1.request(5, create_store("Elsewhere"));
    req.brand_id = 2;
    assert_eq!(call_req(&mut o1, &req).await.unwrap_err(), E::WrongBrand);

    assert_money(&inquiry(&mut t1, &card1).await, 5_000, 0, 0);
    assert_money(&inquiry(&mut t2, &card2).await, 7_500, 0, 25);
    let r = ok(&mut t2, 3, purchase(&card2, 100)).await;
    assert_eq!(seq(&r), 7);
}

#[test]
fn brand_create_refuses_an_owner_key_already_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("owner.key");
    assert_eq!(brand_create_ok(&data, "Brand One", &key), 1);
    let out = brand_create(&data, "Brand Two", &key);
    assert!(
        !out.status.success(),
        "a second brand was created with the first brand's owner key (stdout {:?})",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---------------------------------------------------------------------------
// 10. Owner operations and roles.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn owner_opens_a_store_and_enrols_a_terminal_that_can_sign_on() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let r = ok(&mut o, 11, create_store("Harbour")).await;
    assert_eq!(
        (store_created(&r), seq(&r), receipt(&r).store_id),
        (3, FIRST_SEQ, 3)
    );
    assert_eq!(
        refused(&mut o, 12, create_store("")).await,
        E::InvalidArgument
    );

    let key = generate_key();
    assert_eq!(
        refused(&mut o, 12, enroll(42, &key, "nowhere")).await,
        E::StoreNotFound
    );
    let mut short = enroll(3, &key, "short key");
    if let Op::EnrollTerminal(e) = &mut short {
        e.public_key.truncate(31);
    }
    assert_eq!(refused(&mut o, 12, short).await, E::InvalidArgument);
    let r = ok(&mut o, 12, enroll(3, &key, "Harbour till 1")).await;
    let te = terminal_enrolled(&r);
    assert_eq!(
        (te.terminal_id, te.store_id, seq(&r)),
        (3, 3, FIRST_SEQ + 1)
    );
    // Keys already enrolled (a terminal's, the owner's) are refused.
    let t1_key = read_key_file(&demo.terminal_key_path(0)).unwrap();
    assert_eq!(
        refused(&mut o, 13, enroll(3, &t1_key, "dup")).await,
        E::KeyInUse
    );
    let owner_key = read_key_file(&demo.owner_key_path()).unwrap();
    assert_eq!(
        refused(&mut o, 13, enroll(3, &owner_key, "dup")).await,
        E::KeyInUse
    );
    assert_eq!(
        refused(&mut o, 13, enroll(3, &key, "dup")).await,
        E::KeyInUse
    );

    let mut t = connect(d.addr, key).await;
    let s = &t.session;
    assert_eq!(s.role(), Role::Terminal);
    assert_eq!(
        (
            s.brand_id,
            s.store_id,
            s.store_name.as_str(),
            s.terminal_id,
            s.last_txn_id
        ),
        (1, 3, "Harbour", 3, 0)
    );
    let card = demo.manifest.cards[0].clone();
    let r = ok(&mut t, 1, purchase(&card, 500)).await;
    let rc = receipt(&r);
    assert_eq!((rc.seq, rc.store_id, rc.terminal_id), (FIRST_SEQ + 2, 3, 3));
    assert_money(card_of(&r), 9_500, 0, 5);
}

#[tokio::test]
async fn owner_issues_blocks_and_unblocks_cards() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let mut t = demo.terminal(d.addr, 0).await;
    let cards = &demo.manifest.cards;

    let new = card_number::generate(1);
    assert_eq!(
        refused(&mut o, 11, issue(&bad_check_digit(&new))).await,
        E::InvalidArgument
    );
    assert_eq!(
        refused(&mut o, 11, issue("8000011234")).await,
        E::InvalidArgument
    );
    assert_eq!(refused(&mut o, 11, issue(&cards[0])).await, E::CardExists);
    let r = ok(&mut o, 11, issue(&new)).await;
    assert_eq!(seq(&r), FIRST_SEQ);
    let v = card_of(&r);
    assert_eq!(
        (v.card.as_str(), v.status(), v.tier.as_str()),
        (new.as_str(), CardStatus::Active, "silver")
    );
    assert_money(v, 0, 0, 0);
    assert_eq!(refused(&mut o, 12, issue(&new)).await, E::CardExists);
    let r = ok(&mut t, 100, top_up(&new, 1_000)).await;
    assert_money(card_of(&r), 1_000, 0, 0);

    // Blocked: no money moves, but the card can still be looked up.
    let r = ok(&mut o, 12, set_blocked(&cards[0], true)).await;
    assert_eq!(card_of(&r).status(), CardStatus::Blocked);
    assert_eq!(
        refused(&mut t, 101, purchase(&cards[0], 100)).await,
        E::CardBlocked
    );
    assert_eq!(
        refused(&mut t, 101, top_up(&cards[0], 100)).await,
        E::CardBlocked
    );
    let v = inquiry(&mut t, &cards[0]).await;
    assert_eq!(v.status(), CardStatus::Blocked);
    assert_money(&v, 10_000, 0, 0);
    assert_eq!(
        refused(&mut o, 13, set_blocked(&card_number::generate(1), true)).await,
        E::CardNotFound
    );

    let r = ok(&mut o, 13, set_blocked(&cards[0], false)).await;
    assert_eq!(card_of(&r).status(), CardStatus::Active);
    let r = ok(&mut t, 101, purchase(&cards[0], 100)).await;
    assert_money(card_of(&r), 9_900, 0, 1);
    assert_eq!(
        inquiry(&mut t, &cards[0]).await.status(),
        CardStatus::Active
    );
}

#[tokio::test]
async fn owner_replaces_a_card_and_its_value_moves() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let mut t = demo.terminal(d.addr, 0).await;
    let old = demo.manifest.cards[3].clone(); // paid 500.00, bonus 50.00
    let r = ok(&mut t, 100, purchase(&old, 1_000)).await;
    assert_money(card_of(&r), 49_000, 5_000, 10);

    let new = card_number::generate(1);
    assert_eq!(
        refused(&mut o, 11, replace(&old, &demo.manifest.cards[0])).await,
        E::CardExists
    );
    assert_eq!(
        refused(&mut o, 11, replace(&old, &bad_check_digit(&new))).await,
        E::InvalidArgument
    );
    let r = ok(&mut o, 11, replace(&old, &new)).await;
    let v = card_of(&r);
    assert_eq!(
        (v.card.as_str(), v.status()),
        (new.as_str(), CardStatus::Active)
    );
    assert_money(v, 49_000, 5_000, 10);
    let v = inquiry(&mut t, &new).await;
    assert_money(&v, 49_000, 5_000, 10);
    assert_eq!((v.total_spend_minor, v.tier.as_str()), (1_000, "silver"));
    let v = inquiry(&mut t, &old).await;
    assert_eq!(v.status(), CardStatus::Replaced);
    assert_money(&v, 0, 0, 0);

    // The old number is dead for good.
    assert_eq!(
        refused(&mut t, 101, purchase(&old, 100)).await,
        E::CardBlocked
    );
    assert_eq!(
        refused(&mut t, 101, top_up(&old, 100)).await,
        E::CardBlocked
    );
    assert_eq!(
        refused(&mut o, 12, set_blocked(&old, false)).await,
        E::CardBlocked
    );
    assert_eq!(
        refused(&mut o, 12, replace(&old, &card_number::generate(1))).await,
        E::CardBlocked
    );
    assert_eq!(inquiry(&mut t, &old).await.status(), CardStatus::Replaced);
    // The new one spends paid value first, as before.
    let r = ok(&mut t, 101, purchase(&new, 50_000)).await;
    assert_money(card_of(&r), 0, 4_000, 510);
}

#[tokio::test]
async fn owner_rules_take_effect_at_once_in_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let mut t1 = demo.terminal(d.addr, 0).await;
    let mut t2 = demo.terminal(d.addr, 1).await;
    let cards = &demo.manifest.cards;
    let r = ok(&mut t1, 100, purchase(&cards[0], 1_000)).await;
    assert_eq!(r.promotion_line, DEMO_PROMO);

    let rules = pb::Rules {
        bonus_tiers: vec![pb::BonusTier {
            min_load_minor: 10_000,
            fixed_bonus_minor: 1_234,
            bonus_bps: 0,
        }],
        points_per_unit: 2,
        tiers: vec![],
        promotion_line: "Double points week".into(),
    };
    ok(
        &mut o,
        11,
        Op::SetRules(pb::SetRules { rules: Some(rules) }),
    )
    .await;

    let r = ok(&mut t1, 101, purchase(&cards[0], 1_000)).await;
    assert_eq!(r.promotion_line, "Double points week");
    assert_eq!(purchased(&r).points_earned, 20);
    assert_eq!(card_of(&r).tier, "member");
    let r = ok(&mut t2, 1, top_up(&cards[1], 10_000)).await;
    assert_eq!(r.promotion_line, "Double points week");
    assert_eq!(topped_up(&r).bonus_minor, 1_234);
    let r = ok(&mut t2, 2, top_up(&cards[1], 9_999)).await;
    assert_eq!(topped_up(&r).bonus_minor, 0);
    let r = ok(&mut t2, 3, top_up(&cards[1], 100_000)).await;
    assert_eq!(
        topped_up(&r).bonus_minor,
        1_234,
        "the demo 15% tier is gone"
    );
    assert_money(card_of(&r), 20_000 + 119_999, 2_468, 0);

    // Invalid rules are refused and the rules in force stay.
    let bad = pb::Rules {
        bonus_tiers: vec![
            pb::BonusTier {
                min_load_minor: 50_000,
                fixed_bonus_minor: 1,
                bonus_bps: 0,
            },
            pb::BonusTier {
                min_load_minor: 10_000,
                fixed_bonus_minor: 1,
                bonus_bps: 0,
            },
        ],
        points_per_unit: 1,
        tiers: vec![],
        promotion_line: "bad".into(),
    };
    assert_eq!(
        refused(&mut o, 12, Op::SetRules(pb::SetRules { rules: Some(bad) })).await,
        E::InvalidArgument
    );
    assert_eq!(
        refused(&mut o, 12, Op::SetRules(pb::SetRules { rules: None })).await,
        E::InvalidArgument
    );
    let r = ok(&mut t1, 102, purchase(&cards[0], 1_000)).await;
    assert_eq!(r.promotion_line, "Double points week");
    assert_eq!(purchased(&r).points_earned, 20);
}

#[tokio::test]
async fn owner_and_terminal_operations_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let mut t = demo.terminal(d.addr, 0).await;
    let card = demo.manifest.cards[0].clone();

    // A terminal asking for owner operations.
    assert_eq!(
        refused(&mut t, 100, create_store("Rogue")).await,
        E::WrongRole
    );
    assert_eq!(
        refused(&mut t, 100, issue(&card_number::generate(1))).await,
        E::WrongRole
    );
    assert_eq!(
        refused(&mut t, 100, set_blocked(&card, true)).await,
        E::WrongRole
    );
    assert_eq!(
        refused(&mut t, 100, enroll(1, &generate_key(), "x")).await,
        E::WrongRole
    );
    let rules = Op::SetRules(pb::SetRules {
        rules: Some(cardd::demo::demo_rules()),
    });
    assert_eq!(refused(&mut t, 100, rules).await, E::WrongRole);
    // The owner asking for cashier operations.
    assert_eq!(
        refused(&mut o, 11, purchase(&card, 100)).await,
        E::WrongRole
    );
    assert_eq!(refused(&mut o, 11, top_up(&card, 100)).await, E::WrongRole);
    assert_eq!(refused(&mut o, 11, redeem(&card, 1)).await, E::WrongRole);
    assert_eq!(refused(&mut o, 11, close_shift(None)).await, E::WrongRole);
    assert_eq!(refused(&mut o, 11, reversal(1)).await, E::WrongRole);

    // Nothing happened.
    let v = inquiry(&mut t, &card).await;
    assert_eq!(v.status(), CardStatus::Active);
    assert_money(&v, 10_000, 0, 0);
    let r = ok(&mut t, 100, purchase(&card, 100)).await;
    assert_eq!(seq(&r), FIRST_SEQ);
    let r = ok(&mut o, 11, create_store("Legit")).await;
    assert_eq!((store_created(&r), seq(&r)), (3, FIRST_SEQ + 1));
}

// ---------------------------------------------------------------------------
// 11. Protocol.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_frame_is_refused_and_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = demo_with(dir.path(), &["--max-frame-bytes", "1024"]);
    let card = demo.manifest.cards[0].clone();
    let mut other = demo.terminal(d.addr, 1).await;
    let mut victim = demo.terminal(d.addr, 0).await;
    assert_eq!(victim.session.max_frame_bytes, 1024);
    // Frames up to the limit are fine.
    assert_eq!(
        bounded(victim.echo(vec![7; 900])).await.expect("echo"),
        vec![7; 900]
    );

    let mut frame = 2000u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 2000]);
    bounded(victim.framed().get_mut().write_all(&frame))
        .await
        .expect("write");
    let m = bounded(recv(victim.framed()))
        .await
        .expect("an answer before the close");
    assert_eq!((m.request_id, error_code(&m)), (0, E::FrameTooLarge));
    assert!(
        matches!(
            bounded(recv(victim.framed())).await,
            Err(ClientError::Io(_))
        ),
        "the connection is closed"
    );

    // Other connections, old and new, keep working.
    let r = ok(&mut other, 1, purchase(&card, 1_000)).await;
    assert_eq!(seq(&r), FIRST_SEQ);
    assert_money(card_of(&r), 9_000, 0, 10);
    let mut fresh = demo.terminal(d.addr, 0).await;
    let r = ok(&mut fresh, 100, purchase(&card, 1_000)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 1);
    assert_money(&inquiry(&mut other, &card).await, 8_000, 0, 20);
}

#[tokio::test]
async fn a_bad_request_signature_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let req = t.request(100, purchase(&card, 1_000));
    let (bytes, sig) = signed_bytes(&t, &req);

    let stranger = sign_request(&generate_key(), &bytes);
    assert_eq!(
        call_bytes(&mut t, &bytes, &stranger).await.unwrap_err(),
        E::BadSignature
    );
    let mut flipped = sig.clone();
    flipped[5] ^= 1;
    assert_eq!(
        call_bytes(&mut t, &bytes, &flipped).await.unwrap_err(),
        E::BadSignature
    );
    assert_eq!(
        call_bytes(&mut t, &bytes, &sig[..10]).await.unwrap_err(),
        E::BadSignature
    );
    // The right signature over other bytes (amount raised in transit).
    let tampered = t.request(100, purchase(&card, 9_000)).encode_to_vec();
    assert_eq!(
        call_bytes(&mut t, &tampered, &sig).await.unwrap_err(),
        E::BadSignature
    );
    // A signature made for a sign-on is no request signature.
    let other_domain = t.key().sign(&bytes).to_bytes().to_vec();
    assert_eq!(
        call_bytes(&mut t, &bytes, &other_domain).await.unwrap_err(),
        E::BadSignature
    );

    assert_money(&inquiry(&mut t, &card).await, 10_000, 0, 0);
    assert_eq!(status_of(&mut t, 100).await.state(), TxnState::Unknown);
    // The connection still works and the txn id is still free.
    let r = call_bytes(&mut t, &bytes, &sig).await.expect("purchase");
    assert!(!r.replayed);
    assert_eq!(seq(&r), FIRST_SEQ);
    assert_money(card_of(&r), 9_000, 0, 10);
}

#[tokio::test]
async fn sign_on_refuses_unknown_keys_and_bad_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let till = read_key_file(&demo.terminal_key_path(0)).unwrap();

    match bounded(Client::connect(d.addr, generate_key())).await {
        Err(e) => assert_eq!(e.code(), Some(E::UnknownKey)),
        Ok(_) => panic!("an unknown key signed on"),
    }

    // The right key, a signature over the wrong server key.
    let mut f = raw_connect(d.addr).await;
    let ch = raw_challenge(&mut f, &till).await;
    assert_eq!((ch.nonce.len(), ch.server_public_key.len()), (32, 32));
    let signature = till
        .sign(&sign_on_message(&ch.nonce, &[0u8; 32]))
        .to_bytes()
        .to_vec();
    raw_send(&mut f, 2, Body::SignOnProof(pb::SignOnProof { signature })).await;
    assert_eq!(error_code(&raw_recv(&mut f).await), E::SignOnFailed);
    assert!(raw_closed(&mut f).await);

    // Another key's signature over the right message.
    let mut f = raw_connect(d.addr).await;
    let ch = raw_challenge(&mut f, &till).await;
    let msg = sign_on_message(&ch.nonce, &ch.server_public_key);
    let signature = generate_key().sign(&msg).to_bytes().to_vec();
    raw_send(&mut f, 2, Body::SignOnProof(pb::SignOnProof { signature })).await;
    assert_eq!(error_code(&raw_recv(&mut f).await), E::SignOnFailed);
    assert!(raw_closed(&mut f).await);

    // A proof for an old nonce does not answer a new challenge.
    let mut f = raw_connect(d.addr).await;
    let fresh = raw_challenge(&mut f, &till).await;
    assert_ne!(fresh.nonce, ch.nonce, "every challenge has a fresh nonce");
    raw_send(
        &mut f,
        2,
        Body::SignOnProof(pb::SignOnProof {
            signature: till.sign(&msg).to_bytes().to_vec(),
        }),
    )
    .await;
    assert_eq!(error_code(&raw_recv(&mut f).await), E::SignOnFailed);

    // The right proof signs on (the same steps, done properly).
    let mut f = raw_connect(d.addr).await;
    let ch = raw_challenge(&mut f, &till).await;
    let signature = till
        .sign(&sign_on_message(&ch.nonce, &ch.server_public_key))
        .to_bytes()
        .to_vec();
    raw_send(&mut f, 2, Body::SignOnProof(pb::SignOnProof { signature })).await;
    let m = raw_recv(&mut f).await;
    match m.body {
        Some(server_message::Body::SignOnOk(ok)) => {
            assert_eq!((ok.brand_id, ok.terminal_id), (1, 1))
        }
        other => panic!("expected sign-on, got {other:?}"),
    }
    assert_eq!(m.request_id, 2);
    // A second hello on a signed-on connection is refused; the session stays.
    raw_send(&mut f, 3, hello(&till)).await;
    let m = raw_recv(&mut f).await;
    assert_eq!((m.request_id, error_code(&m)), (3, E::AlreadySignedOn));
    let card = demo.manifest.cards[0].clone();
    raw_send(
        &mut f,
        4,
        signed_body(&till, &demo_request(100, purchase(&card, 100))),
    )
    .await;
    match raw_recv(&mut f).await.body {
        Some(server_message::Body::Reply(r)) => assert_money(card_of(&r), 9_900, 0, 1),
        other => panic!("expected a reply, got {other:?}"),
    }

    // An unsupported protocol version.
    let mut f = raw_connect(d.addr).await;
    let body = Body::Hello(pb::Hello {
        protocol_version: 2,
        public_key: till.verifying_key().to_bytes().to_vec(),
    });
    raw_send(&mut f, 1, body).await;
    assert_eq!(error_code(&raw_recv(&mut f).await), E::UnsupportedVersion);
    assert!(raw_closed(&mut f).await);
}

#[tokio::test]
async fn operations_before_sign_on_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let till = read_key_file(&demo.terminal_key_path(0)).unwrap();
    let card = demo.manifest.cards[0].clone();
    let body = || signed_body(&till, &demo_request(100, purchase(&card, 1_000)));

    let mut f = raw_connect(d.addr).await;
    raw_send(&mut f, 9, body()).await;
    let m = raw_recv(&mut f).await;
    assert_eq!((m.request_id, error_code(&m)), (9, E::NotSignedOn));
    // Garbage is refused without closing the connection.
    bounded(futures::SinkExt::send(
        &mut f,
        bytes::Bytes::from_static(&[0xff, 0xff, 0xff]),
    ))
    .await
    .unwrap();
    assert_eq!(error_code(&raw_recv(&mut f).await), E::Malformed);
    // Half-way through sign-on is not signed on either.
    let _challenge = raw_challenge(&mut f, &till).await;
    raw_send(&mut f, 10, body()).await;
    let m = raw_recv(&mut f).await;
    assert_eq!((m.request_id, error_code(&m)), (10, E::NotSignedOn));
    raw_send(
        &mut f,
        11,
        Body::Echo(pb::Echo {
            payload: b"still here".to_vec(),
        }),
    )
    .await;
    let m = raw_recv(&mut f).await;
    assert_eq!(m.request_id, 11);
    assert!(matches!(m.body, Some(server_message::Body::Echo(e)) if e.payload == b"still here"));

    let mut t = demo.terminal(d.addr, 0).await;
    assert_money(&inquiry(&mut t, &card).await, 10_000, 0, 0);
    assert_eq!(status_of(&mut t, 100).await.state(), TxnState::Unknown);
}

#[tokio::test]
async fn echo_returns_its_payload() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    // Before sign-on (keep-alive during sign-on).
    let mut f = raw_connect(d.addr).await;
    raw_send(
        &mut f,
        77,
        Body::Echo(pb::Echo {
            payload: b"ping".to_vec(),
        }),
    )
    .await;
    let m = raw_recv(&mut f).await;
    assert_eq!(m.request_id, 77);
    assert!(matches!(m.body, Some(server_message::Body::Echo(e)) if e.payload == b"ping"));
    // After sign-on.
    let mut t = demo.terminal(d.addr, 0).await;
    let payload: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        bounded(t.echo(payload.clone())).await.expect("echo"),
        payload
    );
    assert_eq!(
        bounded(t.echo(Vec::new())).await.expect("echo"),
        Vec::<u8>::new()
    );
    match bounded(t.echo(vec![1; 1025])).await {
        Err(e) => assert_eq!(e.code(), Some(E::InvalidArgument)),
        Ok(_) => panic!("an echo over 1024 bytes was answered"),
    }
    assert_eq!(
        bounded(t.echo(vec![2; 1024])).await.expect("echo"),
        vec![2; 1024]
    );
}

#[tokio::test]
async fn amounts_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let p = ok(&mut t, 100, purchase(&card, 1_000)).await;
    let mut txn = 101;
    for amount in [0, -1, -10_000, i64::MIN, MAX_AMOUNT_MINOR + 1, i64::MAX] {
        for op in [
            purchase(&card, amount),
            partial(&card, amount),
            top_up(&card, amount),
            refund(seq(&p), amount),
        ] {
            assert_eq!(
                refused(&mut t, txn, op).await,
                E::AmountOutOfRange,
                "amount {amount}"
            );
            txn += 1;
        }
    }
    assert_money(&inquiry(&mut t, &card).await, 99_000, 15_000, 10);
    let r = ok(&mut t, txn, purchase(&card, 1)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 1);
}

// ---------------------------------------------------------------------------
// 12. Pipelining.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pipelined_purchases_are_each_answered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[4].clone(); // 1150.00
    let mut t = demo.terminal(d.addr, 0).await;
    let key = t.key().clone();
    let amounts: Vec<i64> = (0..20).map(|i| 101 + 37 * i).collect();
    let bodies: Vec<(u64, Body)> = amounts
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            (
                1_000 + i as u64,
                signed_body(&key, &t.request(100 + i as u64, purchase(&card, a))),
            )
        })
        .collect();
    let f = t.framed();
    for (rid, body) in bodies {
        raw_send(f, rid, body).await;
    }
    let mut answers: HashMap<u64, pb::Reply> = HashMap::new();
    for _ in 0..20 {
        let m = raw_recv(f).await;
        let reply = match m.body {
            Some(server_message::Body::Reply(r)) => r,
            other => panic!("request {}: expected a reply, got {other:?}", m.request_id),
        };
        assert!(
            answers.insert(m.request_id, reply).is_none(),
            "request {} answered twice",
            m.request_id
        );
    }
    // Nothing else is queued: the next answer is to the next request.
    raw_send(
        f,
        5_000,
        Body::Echo(pb::Echo {
            payload: b"end".to_vec(),
        }),
    )
    .await;
    assert_eq!(raw_recv(f).await.request_id, 5_000);

    let mut seqs = Vec::new();
    for (i, amount) in amounts.iter().enumerate() {
        let r = answers
            .get(&(1_000 + i as u64))
            .unwrap_or_else(|| panic!("request {i} unanswered"));
        let p = purchased(r);
        assert_eq!((p.approved_minor, p.points_earned), (*amount, amount / 100));
        assert_eq!(receipt(r).txn_id, 100 + i as u64);
        seqs.push(seq(r));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (FIRST_SEQ..FIRST_SEQ + 20).collect::<Vec<_>>());
    let sum: i64 = amounts.iter().sum();
    let points: i64 = amounts.iter().map(|a| a / 100).sum();
    assert_eq!(sum, 9_050);
    assert_money(&inquiry(&mut t, &card).await, 100_000 - sum, 15_000, points);
}

#[tokio::test]
async fn pipelined_copies_of_one_request_are_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let req = t.request(100, purchase(&card, 2_500));
    let (request, signature) = signed_bytes(&t, &req);
    let f = t.framed();
    for rid in 1..=3 {
        let body = Body::Signed(pb::SignedRequest {
            request: request.clone(),
            signature: signature.clone(),
        });
        raw_send(f, rid, body).await;
    }
    let mut replies = Vec::new();
    for _ in 0..3 {
        match raw_recv(f).await.body {
            Some(server_message::Body::Reply(r)) => replies.push(r),
            other => panic!("expected a reply, got {other:?}"),
        }
    }
    assert_eq!(
        replies.iter().filter(|r| !r.replayed).count(),
        1,
        "applied exactly once"
    );
    for r in &replies {
        assert_eq!(receipt(r), receipt(&replies[0]));
        assert_eq!(seq(r), FIRST_SEQ);
        assert_money(card_of(r), 7_500, 0, 25);
    }
    assert_money(&inquiry(&mut t, &card).await, 7_500, 0, 25);
}

// ---------------------------------------------------------------------------
// 13. Durability across a restart.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_ledger_survives_a_restart_and_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, demo) = Daemon::demo(dir.path());
    let cards = demo.manifest.cards.clone();
    let new_card = card_number::generate(1);
    let new_key = generate_key();
    let (kept_purchase, last_seq) = {
        let mut t1 = demo.terminal(d.addr, 0).await;
        let mut t2 = demo.terminal(d.addr, 1).await;
        let mut o = demo.owner(d.addr).await;
        let req = t1.request(100, purchase(&cards[3], 52_000));
        let p = call_req(&mut t1, &req).await.expect("purchase");
        ok(&mut t2, 1, top_up(&cards[1], 50_000)).await;
        ok(&mut o, 11, issue(&new_card)).await;
        ok(&mut o, 12, enroll(2, &new_key, "Airport till 2")).await;
        ok(&mut t2, 2, top_up(&new_card, 700)).await;
        ok(&mut t1, 101, redeem(&cards[3], 20)).await;
        let tomb = ok(&mut t1, 102, reversal(150)).await;
        ((req, p), seq(&tomb))
    };
    assert_eq!(last_seq, FIRST_SEQ + 6);
    let expected = [
        (cards[0].clone(), 10_000, 0, 0),
        (cards[1].clone(), 70_000, 5_000, 0),
        (cards[2].clone(), 30_000, 0, 0),
        (cards[3].clone(), 0, 3_000, 500),
        (cards[4].clone(), 100_000, 15_000, 0),
        (new_card.clone(), 700, 0, 0),
    ];

    d.kill9();
    let out = Command::new(cardd_bin())
        .args(["check", "--data"])
        .arg(&demo.data)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cardd check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cardd check failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "brand 1 (Demo Coffee): {last_seq} records, 6 cards"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("ok: 1 brands replayed"), "{stdout}");

    let d = Daemon::start(&demo.data, &[]);
    let mut t1 = demo.terminal(d.addr, 0).await;
    let mut t2 = demo.terminal(d.addr, 1).await;
    let o = demo.owner(d.addr).await;
    assert_eq!(
        (
            t1.session.last_txn_id,
            t2.session.last_txn_id,
            o.session.last_txn_id
        ),
        (102, 2, 12)
    );
    for (card, paid, bonus, points) in &expected {
        assert_money(&inquiry(&mut t1, card).await, *paid, *bonus, *points);
    }
    // The terminal enrolled before the restart signs on to its store.
    let mut t3 = connect(d.addr, new_key).await;
    assert_eq!((t3.session.store_id, t3.session.terminal_id), (2, 3));
    // Retries are still recognised, tombstones still refuse.
    let (req, first) = kept_purchase;
    let retry = call_req(&mut t1, &req).await.expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);
    assert_eq!(
        refused(&mut t1, 150, purchase(&cards[0], 100)).await,
        E::TxnReversed
    );
    // Shift totals were rebuilt too.
    let totals = ShiftTotals {
        top_up_count: 2,
        top_up_minor: 50_700,
        ..Default::default()
    };
    let r = ok(&mut t2, 3, close_shift(Some(totals))).await;
    assert!(shift_of(&r).balanced, "{:?}", shift_of(&r));
    assert_eq!(seq(&r), last_seq + 1, "the chain continues");
    let r = ok(&mut t3, 1, purchase(&new_card, 700)).await;
    assert_eq!((seq(&r), receipt(&r).store_id), (last_seq + 2, 2));
    assert_money(card_of(&r), 0, 0, 7);
}

#[tokio::test]
async fn reversing_a_refund_or_a_redemption_puts_things_back() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[2].clone(); // paid 300.00
    let mut t = demo.terminal(d.addr, 0).await;
    let p = ok(&mut t, 100, purchase(&card, 5_000)).await;
    assert_money(card_of(&p), 25_000, 0, 50);
    let r = ok(&mut t, 101, refund(seq(&p), 2_000)).await;
    assert_eq!(refunded(&r).refundable_left_minor, 3_000);
    assert_money(card_of(&r), 27_000, 0, 30);
    // Reversing the refund takes the value back and makes it refundable again.
    let r = ok(&mut t, 102, reversal(101)).await;
    assert_eq!(reversed(&r).value_minor, 2_000);
    assert_money(card_of(&r), 25_000, 0, 50);
    assert_eq!(card_of(&r).total_spend_minor, 5_000);
    let r = ok(&mut t, 103, refund(seq(&p), 5_000)).await;
    let rf = refunded(&r);
    assert_eq!((rf.refundable_left_minor, rf.points_removed), (0, 50));
    assert_money(card_of(&r), 30_000, 0, 0);
    assert_eq!(
        refused(&mut t, 104, refund(seq(&p), 1)).await,
        E::RefundExceedsOriginal
    );
    // A redemption reversed gives the points back.
    ok(&mut t, 105, purchase(&card, 1_000)).await;
    let r = ok(&mut t, 106, redeem(&card, 10)).await;
    assert_money(card_of(&r), 29_000, 0, 0);
    let r = ok(&mut t, 107, reversal(106)).await;
    assert_money(card_of(&r), 29_000, 0, 10);
    let r = ok(&mut t, 108, reversal(105)).await;
    assert_money(card_of(&r), 30_000, 0, 0);
    assert_eq!(card_of(&r).total_spend_minor, 0);
    assert_money(&inquiry(&mut t, &card).await, 30_000, 0, 0);
}

#[tokio::test]
async fn a_card_balance_never_passes_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let mut t = demo.terminal(d.addr, 0).await;
    let card = card_number::generate(1);
    ok(&mut o, 11, issue(&card)).await;
    // The largest top-up earns the largest bonus: fixed 10,000,000.00 + 100%.
    let rules = pb::Rules {
        bonus_tiers: vec![pb::BonusTier {
            min_load_minor: MAX_AMOUNT_MINOR,
            fixed_bonus_minor: MAX_AMOUNT_MINOR,
            bonus_bps: 10_000,
        }],
        points_per_unit: 1,
        tiers: vec![],
        promotion_line: String::new(),
    };
    ok(
        &mut o,
        12,
        Op::SetRules(pb::SetRules { rules: Some(rules) }),
    )
    .await;
    let mut txn = 100;
    for _ in 0..33 {
        let r = ok(&mut t, txn, top_up(&card, MAX_AMOUNT_MINOR)).await;
        assert_eq!(topped_up(&r).bonus_minor, 2 * MAX_AMOUNT_MINOR);
        txn += 1;
    }
    let max = cardd::limits::MAX_BALANCE_MINOR;
    assert_eq!(
        inquiry(&mut t, &card).await.balance_minor,
        99 * MAX_AMOUNT_MINOR
    );
    assert_eq!(
        refused(&mut t, txn, top_up(&card, MAX_AMOUNT_MINOR)).await,
        E::Overflow
    );
    let r = ok(&mut t, txn + 1, top_up(&card, MAX_AMOUNT_MINOR - 1)).await;
    assert_eq!(card_of(&r).balance_minor, max - 1);
    let r = ok(&mut t, txn + 2, top_up(&card, 1)).await;
    assert_eq!(
        card_of(&r).balance_minor,
        max,
        "the limit itself is allowed"
    );
    assert_eq!(
        refused(&mut t, txn + 3, top_up(&card, 1)).await,
        E::Overflow
    );
    let v = inquiry(&mut t, &card).await;
    assert_money(&v, 34 * MAX_AMOUNT_MINOR, 66 * MAX_AMOUNT_MINOR, 0);
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    // A state-changing request needs a txn id.
    assert_eq!(
        refused(&mut t, 0, purchase(&card, 100)).await,
        E::InvalidArgument
    );
    // A request without an operation.
    let mut req = t.request(100, purchase(&card, 100));
    req.op = None;
    assert_eq!(
        call_req(&mut t, &req).await.unwrap_err(),
        E::InvalidArgument
    );
    // An operator name that is too long or has control characters.
    let mut req = t.request(100, purchase(&card, 100));
    req.operator = "x".repeat(65);
    assert_eq!(
        call_req(&mut t, &req).await.unwrap_err(),
        E::InvalidArgument
    );
    req.operator = "cashier\n2".into();
    assert_eq!(
        call_req(&mut t, &req).await.unwrap_err(),
        E::InvalidArgument
    );
    // Signed bytes that are not a Request.
    let garbage = vec![0xff, 0xff, 0xff, 0xff];
    let sig = sign_request(t.key(), &garbage);
    assert_eq!(
        call_bytes(&mut t, &garbage, &sig).await.unwrap_err(),
        E::Malformed
    );
    // A proof before any hello, and an unknown key, end the connection.
    let mut f = raw_connect(d.addr).await;
    raw_send(
        &mut f,
        1,
        Body::SignOnProof(pb::SignOnProof {
            signature: vec![0; 64],
        }),
    )
    .await;
    assert_eq!(error_code(&raw_recv(&mut f).await), E::Malformed);
    assert!(raw_closed(&mut f).await);
    let mut f = raw_connect(d.addr).await;
    raw_send(&mut f, 1, hello(&generate_key())).await;
    assert_eq!(error_code(&raw_recv(&mut f).await), E::UnknownKey);
    assert!(raw_closed(&mut f).await);

    assert_money(&inquiry(&mut t, &card).await, 10_000, 0, 0);
    let mut req = t.request(100, purchase(&card, 100));
    req.operator = "Ann".into();
    let r = call_req(&mut t, &req).await.expect("purchase");
    assert_eq!(seq(&r), FIRST_SEQ);
}

#[tokio::test]
async fn a_request_with_unknown_fields_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let mut bytes = t.request(100, purchase(&card, 1_000)).encode_to_vec();
    bytes.extend_from_slice(&[0xf8, 0x06, 0x01]); // field 111 (varint) = 1: not in cardd.v1
    let sig = sign_request(t.key(), &bytes);
    let answer = call_bytes(&mut t, &bytes, &sig).await;
    assert!(
        matches!(answer, Err(E::Malformed | E::InvalidArgument)),
        "a request with a field this server does not know was answered {answer:?}"
    );
    assert_money(&inquiry(&mut t, &card).await, 10_000, 0, 0);
}

#[tokio::test]
async fn one_key_is_never_enrolled_in_two_brands_even_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (k1, k2) = (dir.path().join("owner1.key"), dir.path().join("owner2.key"));
    brand_create_ok(&data, "Brand One", &k1);
    brand_create_ok(&data, "Brand Two", &k2);
    let d = Daemon::start(&data, &[]);
    let mut o1 = connect(d.addr, read_key_file(&k1).unwrap()).await;
    let mut o2 = connect(d.addr, read_key_file(&k2).unwrap()).await;
    ok(&mut o1, 1, create_store("One")).await;
    ok(&mut o2, 1, create_store("Two")).await;
    let (s1, s2) = (o1.key().clone(), o2.key().clone());
    for i in 0..20u64 {
        let key = generate_key();
        // Both enrolments in flight at once, one per brand.
        let b1 = signed_body(&s1, &o1.request(2 + i, enroll(1, &key, "till")));
        let b2 = signed_body(&s2, &o2.request(2 + i, enroll(1, &key, "till")));
        raw_send(o1.framed(), 100 + i, b1).await;
        raw_send(o2.framed(), 100 + i, b2).await;
        let a = raw_recv(o1.framed()).await;
        let b = raw_recv(o2.framed()).await;
        let won = |m: &pb::ServerMessage| matches!(m.body, Some(server_message::Body::Reply(_)));
        assert!(
            won(&a) != won(&b),
            "attempt {i}: the key must be enrolled in exactly one brand (brand 1 {:?}, brand 2 {:?})",
            a.body,
            b.body
        );
        let loser = if won(&a) { &b } else { &a };
        assert_eq!(error_code(loser), E::KeyInUse);
    }
}
