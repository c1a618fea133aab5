//! Issue 15 end to end: the owner's console for limits, corrections and
//! key rotation against the real daemon, and what a rotation does to the
//! sessions of the old key (cut, told why) and to a restart.
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use cardd::crypto::{read_key_file, write_key_file};
use cardd::pb::{self, request::Op, ErrorCode as E};
use ed25519_dalek::{Signer, SigningKey};

use super::common::raw::{raw_closed, sign_on};
use super::common::{self, bounded, connect, inquiry, ok, purchase, refused, run, Daemon};

/// `cardd admin --connect ADDR --key KEY --json ARGS…`: exit code and the
/// JSON line it printed.
fn admin(d: &Daemon, key: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let addr = d.addr.to_string();
    let head = ["admin", "--connect", &addr, "--key"].map(OsStr::new);
    let tail = std::iter::once(OsStr::new("--json")).chain(args.iter().map(OsStr::new));
    let out = run::cardd(head.into_iter().chain([key.as_os_str()]).chain(tail));
    let text = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(text.lines().last().unwrap_or("null"))
        .unwrap_or_else(|_| panic!("not JSON: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), json)
}

/// The sign-on of `key` is refused; its code.
async fn sign_on_refused(d: &Daemon, key: SigningKey) -> Option<E> {
    match bounded(cardd::client::Client::connect(d.addr, key)).await {
        Ok(_) => None,
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn an_owner_key_rotation_retires_the_old_key_at_once_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, demo) = Daemon::demo(dir.path());
    let old_path = demo.owner_key_path();
    let old = read_key_file(&old_path).unwrap();
    let mut held = sign_on(d.addr, &old).await;
    let new_path = dir.path().join("owner-2.key");
    let new = SigningKey::from_bytes(&[91; 32]);
    write_key_file(&new_path, &new).unwrap();
    let new_arg = new_path.to_str().unwrap();

    // Signed by a key that is not the owner's: refused, nothing written.
    let stranger = dir.path().join("stranger.key");
    write_key_file(&stranger, &SigningKey::from_bytes(&[92; 32])).unwrap();
    let (code, reply) = admin(&d, &stranger, &["rotate-owner-key", "--new-key", new_arg]);
    assert_ne!(code, Some(0));
    assert_eq!(reply["error"], "SIGN_ON_REFUSED", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("UnknownKey"),
        "{reply}"
    );
    // Signed by an enrolled key that is not the owner's (a till's): refused.
    let proof = new.sign(&cardd::crypto::owner_key_message(
        demo.manifest.brand_id,
        &new.verifying_key().to_bytes(),
    ));
    let rotate = |proof: Vec<u8>| {
        Op::RotateOwnerKey(pb::RotateOwnerKey {
            new_public_key: new.verifying_key().to_bytes().to_vec(),
            new_key_signature: proof,
        })
    };
    let mut till = demo.terminal(d.addr, 0).await;
    let by_till = rotate(proof.to_bytes().to_vec());
    assert_eq!(refused(&mut till, 100, by_till).await, E::WrongRole);
    // The owner's, with a proof the new key did not make: refused.
    let mut owner = demo.owner(d.addr).await;
    let forged = rotate(old.sign(b"not the proof").to_bytes().to_vec());
    assert_eq!(refused(&mut owner, 90, forged).await, E::BadSignature);
    // Nothing was lost: the old key still signs for the owner.
    ok(
        &mut owner,
        91,
        Op::CreateStore(pb::CreateStore {
            name: "Quay".into(),
        }),
    )
    .await;
    drop(owner);

    let (code, reply) = admin(&d, &old_path, &["rotate-owner-key", "--new-key", new_arg]);
    assert_eq!(code, Some(0), "{reply}");
    // The old key's open session is closed within moments.
    let closed = tokio::time::timeout(Duration::from_secs(2), raw_closed(&mut held));
    assert!(closed.await.expect("the old key's session is cut"));
    assert_eq!(sign_on_refused(&d, old.clone()).await, Some(E::UnknownKey));
    let mut owner = connect(d.addr, new.clone()).await;
    let txn = owner.session.last_txn_id + 1;
    ok(
        &mut owner,
        txn,
        Op::CreateStore(pb::CreateStore {
            name: "Harbour".into(),
        }),
    )
    .await;

    // A restart rebuilds the key index from the chain: same answer.
    d.kill9();
    let d = Daemon::start(&demo.data, &[]);
    assert_eq!(sign_on_refused(&d, old).await, Some(E::UnknownKey));
    let mut owner = connect(d.addr, new).await;
    let txn = owner.session.last_txn_id + 1;
    ok(
        &mut owner,
        txn,
        Op::CreateStore(pb::CreateStore {
            name: "Pier".into(),
        }),
    )
    .await;
}

#[tokio::test]
async fn a_rekeyed_terminal_keeps_its_id_and_txn_ids_and_its_old_key_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let old = read_key_file(&demo.terminal_key_path(0)).unwrap();
    let mut held = sign_on(d.addr, &old).await;
    let new = SigningKey::from_bytes(&[93; 32]);
    let mut owner = demo.owner(d.addr).await;
    let rekey = Op::RekeyTerminal(pb::RekeyTerminal {
        terminal_id: 1,
        new_public_key: new.verifying_key().to_bytes().to_vec(),
    });
    ok(&mut owner, 50, rekey.clone()).await;
    assert_eq!(refused(&mut owner, 51, rekey).await, E::KeyInUse);
    let closed = tokio::time::timeout(Duration::from_secs(2), raw_closed(&mut held));
    assert!(closed.await.expect("the old key's session is cut"));
    assert_eq!(sign_on_refused(&d, old).await, Some(E::UnknownKey));
    let mut till = connect(d.addr, new).await;
    assert_eq!(till.session.terminal_id, 1);
    assert_eq!(till.session.last_txn_id, 6, "the demo's txn ids stay");
    let card = demo.manifest.cards[0].clone();
    ok(&mut till, 7, purchase(&card, 1_000)).await;
    assert_eq!(inquiry(&mut till, &card).await.balance_minor, 9_000);
}

#[tokio::test]
async fn limits_corrections_and_liability_through_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let key = demo.owner_key_path();
    let card = demo.manifest.cards[0].clone(); // 100.00, anonymous
                                               // Rules from the console get the currency's default limits (CNY).
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, r#"{"max_daily_spend_minor": 5000}"#).unwrap();
    let (code, _) = admin(&d, &key, &["set-rules", "--file", rules.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    let mut till = demo.terminal(d.addr, 0).await;
    let load = |amount_minor| {
        Op::TopUp(pb::TopUp {
            card: card.clone(),
            amount_minor,
            ..Default::default()
        })
    };
    assert_eq!(
        refused(&mut till, 100, load(90_001)).await,
        E::LimitExceeded
    );
    ok(&mut till, 101, load(90_000)).await;
    ok(&mut till, 102, purchase(&card, 5_000)).await;
    assert_eq!(
        refused(&mut till, 103, purchase(&card, 1)).await,
        E::LimitExceeded
    );
    assert_eq!(inquiry(&mut till, &card).await.balance_minor, 95_000);

    let liability = |d: &Daemon| {
        let (code, report) = admin(d, &key, &["report", "liability"]);
        assert_eq!(code, Some(0), "{report}");
        report
    };
    let before = liability(&d);
    let (code, reply) = admin(
        &d,
        &key,
        &[
            "adjust",
            "--card",
            &card,
            "--amount",
            "-20.00",
            "--reason",
            "keyed 920 for 900",
        ],
    );
    assert_eq!(code, Some(0), "{reply}");
    // Beyond the balance: refused with a code, nothing written.
    let (code, reply) = admin(
        &d,
        &key,
        &[
            "adjust", "--card", &card, "--amount", "-930.01", "--reason", "too much",
        ],
    );
    assert_eq!(
        (code, reply["error"].as_str()),
        (Some(2), Some("INSUFFICIENT_FUNDS"))
    );
    let (code, reply) = admin(
        &d,
        &key,
        &["close-card", "--card", &card, "--reason", "left town"],
    );
    assert_eq!(code, Some(0), "{reply}");
    let view = inquiry(&mut till, &card).await;
    assert_eq!((view.balance_minor, view.closed), (0, true));
    let after = liability(&d);
    assert_eq!(outstanding(&before) - outstanding(&after), 95_000);
    // Each correction in the card's activity, with its operator and reason.
    let (code, activity) = admin(&d, &key, &["report", "activity", "--card", &card]);
    assert_eq!(code, Some(0), "{activity}");
    let rows: Vec<(String, String, i64, String)> = activity["activity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "card_adjusted" || r["kind"] == "card_closed")
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (
                s("kind"),
                s("operator"),
                r["amount_minor"].as_i64().unwrap(),
                s("reason"),
            )
        })
        .collect();
    let row = |kind: &str, amount: i64, reason: &str| {
        (
            kind.to_string(),
            "owner".to_string(),
            amount,
            reason.to_string(),
        )
    };
    assert_eq!(
        rows,
        [
            row("card_adjusted", -2_000, "keyed 920 for 900"),
            row("card_closed", -93_000, "left town"),
        ]
    );
    // The day's sales at the head office count them.
    let (code, sales) = admin(&d, &key, &["report", "sales", "--store", "0"]);
    assert_eq!(code, Some(0), "{sales}");
    let head_office = &sales["sales"][0];
    assert_eq!(head_office["adjustments"], 1);
    assert_eq!(head_office["adjusted_minor"], -2_000);
    assert_eq!(head_office["closed_cards"], 1);
    assert_eq!(head_office["cashed_out_minor"], 93_000);
}

/// The liability report's outstanding value (paid + bonus) over every
/// store of issue.
fn outstanding(report: &serde_json::Value) -> i64 {
    report["liability"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"))
        .iter()
        .map(|row| row["total_minor"].as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn the_console_extends_a_card_and_voids_a_top_up_after_the_shift_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let key = demo.owner_key_path();
    // New cards get three years and a day.
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, r#"{"card_validity_days": 1096}"#).unwrap();
    let (code, _) = admin(&d, &key, &["set-rules", "--file", rules.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    let (code, issued) = admin(&d, &key, &["issue-card"]);
    assert_eq!(code, Some(0), "{issued}");
    let card = issued["card"].as_str().unwrap().to_string();
    assert!(issued["expires_ms"].as_i64().unwrap() > 0, "{issued}");
    let mut till = demo.terminal(d.addr, 0).await;
    let expires = inquiry(&mut till, &card).await.expires_ms;
    assert!(expires > 0);
    // Extended through the last day of 2099 (UTC).
    let (code, reply) = admin(
        &d,
        &key,
        &["extend-card", "--card", &card, "--until", "2099-12-31"],
    );
    assert_eq!(code, Some(0), "{reply}");
    assert_eq!(reply["expires_ms"], 4_102_444_800_000_i64);
    assert_eq!(
        inquiry(&mut till, &card).await.expires_ms,
        4_102_444_800_000
    );
    // Never shortened.
    let (code, reply) = admin(
        &d,
        &key,
        &["extend-card", "--card", &card, "--until", "2030-01-01"],
    );
    assert_eq!(
        (code, reply["error"].as_str()),
        (Some(2), Some("INVALID_ARGUMENT"))
    );

    let load = ok(&mut till, 100, common::top_up(&card, 20_000)).await;
    let seq = load.receipt.unwrap().seq.to_string();
    ok(&mut till, 101, common::close_shift(None)).await;
    let (code, reply) = admin(
        &d,
        &key,
        &["void-topup", "--seq", &seq, "--reason", "keyed twice"],
    );
    assert_eq!(code, Some(0), "{reply}");
    assert_eq!(inquiry(&mut till, &card).await.balance_minor, 0);
    let (code, reply) = admin(
        &d,
        &key,
        &["void-topup", "--seq", &seq, "--reason", "again"],
    );
    assert_eq!(
        (code, reply["error"].as_str()),
        (Some(2), Some("ALREADY_REVERSED"))
    );
}
