//! The books' scripted three-store ledger on the demo brand (issue 13;
//! the script and its hand-computed figures are in tests/books/main.rs's
//! module doc), and the owner's console run against it. Shared by
//! tests/books and tests/web, whose pages must show the same figures.
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;

use cardd::pb::{self, request::Op};
use ed25519_dalek::SigningKey;
use serde_json::Value;

use super::reply::seq;
use super::{connect, inquiry, ok, purchase, refund, replace, reversal, run, Daemon};

/// The brand day of now (the demo brand keeps UTC days).
pub fn today() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    cardd::state::books::day_text(i32::try_from(now / 86_400).unwrap())
}

/// `cardd admin --connect ADDR --key OWNER ARGS...`, bounded.
pub fn admin(addr: SocketAddr, key: &Path, args: &[&str]) -> Output {
    let mut all: Vec<OsString> = ["admin", "--connect", &addr.to_string(), "--key"]
        .map(OsString::from)
        .to_vec();
    all.push(key.into());
    all.extend(args.iter().map(OsString::from));
    run::cardd(all)
}

/// The JSON object an `admin ... --json` call printed (exit 0 expected).
#[track_caller]
pub fn admin_json(addr: SocketAddr, key: &Path, args: &[&str]) -> Value {
    let o = admin(addr, key, args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

pub fn card_op(card: &str) -> Op {
    Op::IssueCard(pb::IssueCard { card: card.into() })
}

pub fn load(card: &str, amount: i64, channel: pb::Channel) -> Op {
    Op::TopUp(pb::TopUp {
        card: card.into(),
        amount_minor: amount,
        channel: channel as u32,
        ..Default::default()
    })
}

/// Runs the script of the module doc; returns card Y.
pub async fn script(d: &Daemon, demo: &super::Demo) -> String {
    let mut owner = demo.owner(d.addr).await;
    ok(
        &mut owner,
        11,
        Op::CreateStore(pb::CreateStore {
            name: "Riverside".into(),
        }),
    )
    .await;
    let till_c_key = SigningKey::from_bytes(&[77; 32]);
    ok(&mut owner, 12, super::enroll(3, &till_c_key, "C1")).await;
    let brand = demo.manifest.brand_id;
    let (x, y) = (
        cardd::card_number::generate(brand),
        cardd::card_number::generate(brand),
    );
    ok(&mut owner, 13, card_op(&x)).await;
    let mut a = demo.terminal(d.addr, 0).await;
    let mut b = demo.terminal(d.addr, 1).await;
    let mut c = connect(d.addr, till_c_key).await;
    ok(&mut a, 100, load(&x, 50_000, pb::Channel::Store)).await;
    ok(&mut owner, 14, load(&x, 2_000, pb::Channel::HeadOffice)).await;
    let at_b = seq(&ok(&mut b, 1, purchase(&x, 40_000)).await);
    ok(&mut c, 1, purchase(&x, 14_000)).await;
    ok(&mut b, 2, refund(at_b, 15_000)).await;
    ok(&mut owner, 15, replace(&x, &y)).await;
    ok(&mut c, 2, purchase(&y, 1_000)).await;
    ok(&mut c, 3, reversal(2)).await;
    let held = inquiry(&mut owner, &y).await;
    assert_eq!(
        (held.paid_balance_minor, held.bonus_balance_minor),
        (15_000, 3_000)
    );
    y
}
