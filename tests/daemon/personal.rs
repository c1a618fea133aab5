//! A card's holder and PIN (#15): the person and the PIN never in the
//! ledger, the export, the logs or (after an erase) any file of the data
//! directory; wrong PINs counted durably, refused without records.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cardd::limits::MAX_WRONG_PIN_TRIES;
use cardd::pin::Purpose;

use super::*;

/// A holder's name (UTF-8, not ASCII) and phone no other file could hold.
const NAME: &str = "Zhāng Wěi 张伟";
const PHONE: &str = "+8613712345678";
/// The PIN, and a wrong one: eight digits, so that no timestamp, hash or
/// random byte run of a log or export holds them by chance.
const PIN: &str = "73918462";
const WRONG: &str = "73918463";

/// `cardd admin --connect ADDR --key OWNER ARGS…`, which must succeed.
fn admin(d: &Daemon, demo: &Demo, args: &[&str]) -> String {
    let addr = d.addr.to_string();
    let key = demo.owner_key_path();
    let mut all = vec!["admin", "--connect", &addr, "--key", key.to_str().unwrap()];
    all.extend_from_slice(args);
    run::cardd_ok(all)
}

/// A purchase of `amount` from `card` with `pin` sealed for it (none: no
/// PIN typed).
fn purchase_with(c: &Client, txn: u64, card: &str, amount: i64, pin: Option<&str>) -> pb::Request {
    let pin_block = pin.map_or(Vec::new(), |p| {
        c.pin_block(txn, card, Purpose::Present, p).expect("seal")
    });
    c.request(
        txn,
        Op::Purchase(pb::Purchase {
            card: card.into(),
            amount_minor: amount,
            pin_block,
            ..Default::default()
        }),
    )
}

/// The demo rules with every spend of a card with a PIN needing it.
async fn pay(
    c: &mut Client,
    txn: u64,
    card: &str,
    amount: i64,
    pin: Option<&str>,
) -> Result<pb::Reply, E> {
    let req = purchase_with(c, txn, card, amount, pin);
    call_req(c, &req).await
}

/// A PIN set at the till: `new`, with the `old` one typed when given.
async fn set_pin(
    c: &mut Client,
    card: &str,
    txn: u64,
    new: &str,
    old: Option<&str>,
) -> Result<pb::Reply, E> {
    let req = c.request(
        txn,
        Op::SetPin(pb::SetPin {
            card: card.into(),
            pin_block: c.pin_block(txn, card, Purpose::New, new).unwrap(),
            old_pin_block: old.map_or(Vec::new(), |p| {
                c.pin_block(txn, card, Purpose::Present, p).unwrap()
            }),
        }),
    );
    call_req(c, &req).await
}

fn pin_rules(all_spends: bool, over_minor: i64) -> Op {
    let mut rules = cardd::demo::demo_rules();
    rules.pin_all_spends = all_spends;
    rules.pin_over_minor = over_minor;
    Op::SetRules(pb::SetRules { rules: Some(rules) })
}

#[tokio::test]
async fn a_holder_is_found_then_erased_from_every_file_and_the_ledger_verifies_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[1].clone();
    let out = admin(
        &d,
        &demo,
        &[
            "set-holder",
            "--card",
            &card,
            "--name",
            NAME,
            "--phone",
            PHONE,
        ],
    );
    assert!(out.contains(&format!("Card {card} is named")), "{out}");
    let found = admin(&d, &demo, &["find-card", "--phone", PHONE]);
    assert_eq!(found.trim(), card);
    let mut t = demo.terminal(d.addr, 0).await;
    assert!(inquiry(&mut t, &card).await.named);
    // The person is in the holder store (so the search below can find it)
    // and nowhere else: not in the log, a snapshot or the export.
    let data = demo.data.clone();
    assert_eq!(
        files_holding(&data, NAME.as_bytes()),
        [Path::new("holders/brand-1")]
    );
    assert_eq!(
        files_holding(&data, PHONE.as_bytes()),
        [Path::new("holders/brand-1")]
    );
    d.stop();
    let before = dir.path().join("before.cardd");
    let report = run::export_and_verify(&data, 1, &before);
    assert_eq!(report["records"], FIRST_SEQ);
    for needle in [NAME, PHONE] {
        assert!(files_holding(dir.path(), needle.as_bytes())
            .iter()
            .all(|f| f.starts_with("data/holders")));
    }

    let d = Daemon::start(&data, &[]);
    let out = admin(&d, &demo, &["erase-holder", "--card", &card]);
    assert!(out.contains("Erased the holder"), "{out}");
    let found = admin(&d, &demo, &["find-card", "--phone", PHONE]);
    assert!(found.contains("No card"), "{found}");
    let mut t = demo.terminal(d.addr, 0).await;
    let view = inquiry(&mut t, &card).await;
    assert!(!view.named);
    assert_money(&view, 20_000, 0, 0);
    drop(t);
    d.stop();
    // After a restart the store still has forgotten (nothing comes back
    // from a log or a snapshot), and no file under DATA holds the person.
    let d = Daemon::start(&data, &[]);
    let found = admin(&d, &demo, &["find-card", "--phone", PHONE]);
    assert!(found.contains("No card"), "{found}");
    d.stop();
    for needle in [NAME, PHONE] {
        assert_eq!(
            files_holding(&data, needle.as_bytes()),
            Vec::<PathBuf>::new()
        );
    }
    let after = dir.path().join("after.cardd");
    let report = run::export_and_verify(&data, 1, &after);
    assert_eq!(report["records"], FIRST_SEQ + 1);
}

#[tokio::test]
async fn five_wrong_pins_lock_the_card_across_a_kill_9_and_the_pin_is_in_no_export_log_or_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut d, mut log) = Daemon::start_logged(&data, &["--demo"], "debug");
    let demo = Demo::load(&data);
    let card = demo.manifest.cards[2].clone();
    let mut logs = String::new();
    let out = admin(&d, &demo, &["set-pin", "--card", &card, "--pin", PIN]);
    assert!(out.contains("Set the PIN"), "{out}");
    let mut o = demo.owner(d.addr).await;
    ok(&mut o, 12, pin_rules(true, 0)).await;
    let mut t = demo.terminal(d.addr, 0).await;
    assert_eq!(
        pay(&mut t, 100, &card, 1_000, None).await.unwrap_err(),
        E::PinRequired
    );
    let paid = pay(&mut t, 101, &card, 1_000, Some(PIN)).await;
    let first = paid.expect("the right PIN pays");
    assert_money(card_of(&first), 29_000, 0, 10);
    for txn in 102..106 {
        let r = pay(&mut t, txn, &card, 1_000, Some(WRONG)).await;
        assert_eq!(r.unwrap_err(), E::WrongPin, "try {txn}");
    }
    drop(t);
    d.kill9();
    logs.push_str(&log.join().unwrap());

    (d, log) = Daemon::start_logged(&data, &[], "debug");
    let mut t = demo.terminal(d.addr, 0).await;
    let fifth = pay(&mut t, 106, &card, 1_000, Some(WRONG)).await;
    assert_eq!(fifth.unwrap_err(), E::WrongPin);
    let right = pay(&mut t, 107, &card, 1_000, Some(PIN)).await;
    assert_eq!(right.unwrap_err(), E::PinLocked);
    drop(t);
    d.kill9();
    logs.push_str(&log.join().unwrap());

    (d, log) = Daemon::start_logged(&data, &[], "debug");
    let mut t = demo.terminal(d.addr, 0).await;
    let right = pay(&mut t, 108, &card, 1_000, Some(PIN)).await;
    assert_eq!(
        right.unwrap_err(),
        E::PinLocked,
        "the lock survives kill -9"
    );
    assert_money(&inquiry(&mut t, &card).await, 29_000, 0, 10);
    let out = admin(&d, &demo, &["unlock-pin", "--card", &card]);
    assert!(out.contains("Unlocked the PIN"), "{out}");
    let r = pay(&mut t, 109, &card, 2_000, Some(PIN)).await;
    let second = r.expect("unlocked, the right PIN pays");
    // Wrong tries wrote nothing: set-pin, rules, purchase, the server's
    // lock (once), unlock, purchase.
    assert_eq!((seq(&first), seq(&second)), (FIRST_SEQ + 2, FIRST_SEQ + 5));
    assert_money(card_of(&second), 27_000, 0, 30);
    drop(t);
    drop(o);
    d.stop();
    logs.push_str(&log.join().unwrap());

    assert!(
        logs.contains("PIN refused"),
        "the log was collected: {logs}"
    );
    let export = dir.path().join("ledger.cardd");
    let report = run::export_and_verify(&data, 1, &export);
    assert_eq!(report["records"], FIRST_SEQ + 5);
    for pin in [PIN, WRONG] {
        assert!(!logs.contains(pin), "a PIN in the log");
        assert_eq!(
            files_holding(dir.path(), pin.as_bytes()),
            Vec::<PathBuf>::new()
        );
    }
    let hash = std::fs::read_to_string(data.join("pins/brand-1").join(&card)).unwrap();
    assert!(hash.contains("$argon2id$"), "{hash}");
}

#[tokio::test]
async fn a_pin_rule_over_an_amount_and_a_pin_set_at_a_till() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[3].clone();
    let mut o = demo.owner(d.addr).await;
    ok(&mut o, 11, pin_rules(false, 10_000)).await;
    let mut t = demo.terminal(d.addr, 0).await;
    // No PIN yet: nothing is asked.
    ok(&mut t, 100, purchase(&card, 20_000)).await;
    // The cardholder sets one at the till; changing it needs the old one.
    let r = set_pin(&mut t, &card, 101, PIN, None)
        .await
        .expect("first PIN");
    assert_eq!(receipt(&r).store_id, 1);
    assert!(inquiry(&mut t, &card).await.has_pin);
    assert_eq!(
        set_pin(&mut t, &card, 102, "1111", None).await.unwrap_err(),
        E::PinRequired
    );
    assert_eq!(
        set_pin(&mut t, &card, 103, "1111", Some(WRONG))
            .await
            .unwrap_err(),
        E::WrongPin
    );
    set_pin(&mut t, &card, 104, "1111", Some(PIN))
        .await
        .expect("changed");
    // At or under the amount, no PIN; over it, the new PIN.
    ok(&mut t, 105, purchase(&card, 10_000)).await;
    assert_eq!(
        refused(&mut t, 106, purchase(&card, 10_001)).await,
        E::PinRequired
    );
    let r = pay(&mut t, 107, &card, 10_001, Some(PIN)).await;
    assert_eq!(r.unwrap_err(), E::WrongPin, "the old PIN no longer works");
    let r = pay(&mut t, 108, &card, 10_001, Some("1111")).await;
    assert_eq!(purchased(&r.expect("new PIN")).approved_minor, 10_001);
    // A block made for one request opens for no other.
    let captured = purchase_with(&t, 109, &card, 10_001, Some("1111"));
    let Some(Op::Purchase(p)) = &captured.op else {
        unreachable!()
    };
    let mut replayed = purchase_with(&t, 110, &card, 10_001, None);
    if let Some(Op::Purchase(q)) = &mut replayed.op {
        q.pin_block = p.pin_block.clone();
    }
    assert_eq!(
        call_req(&mut t, &replayed).await.unwrap_err(),
        E::PinBlockInvalid
    );
    drop((t, o));
    d.stop();
    let report = run::export_and_verify(&demo.data, 1, &dir.path().join("x.cardd"));
    assert_eq!(report["records"], FIRST_SEQ + 5);
}

#[tokio::test]
async fn a_replaced_card_keeps_its_holder_and_its_pin() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let old = demo.manifest.cards[0].clone();
    admin(
        &d,
        &demo,
        &[
            "set-holder",
            "--card",
            &old,
            "--name",
            NAME,
            "--phone",
            PHONE,
        ],
    );
    admin(&d, &demo, &["set-pin", "--card", &old, "--pin", PIN]);
    let mut o = demo.owner(d.addr).await;
    ok(&mut o, 13, pin_rules(true, 0)).await;
    let new = card_number::generate(1);
    let r = ok(&mut o, 14, replace(&old, &new)).await;
    assert_money(card_of(&r), 10_000, 0, 0);
    let found = admin(&d, &demo, &["find-card", "--phone", PHONE]);
    assert_eq!(found.trim(), new);
    let mut t = demo.terminal(d.addr, 0).await;
    let view = inquiry(&mut t, &new).await;
    assert!(view.named && view.has_pin, "{view:?}");
    assert_eq!(
        pay(&mut t, 100, &new, 500, None).await.unwrap_err(),
        E::PinRequired
    );
    let r = pay(&mut t, 101, &new, 500, Some(PIN))
        .await
        .expect("the PIN moved");
    assert_money(card_of(&r), 9_500, 0, 5);
    // Nothing is kept under the old number (find-card above names only
    // the new one for the holder).
    assert!(!demo.data.join("pins/brand-1").join(&old).exists());
    assert!(demo.data.join("pins/brand-1").join(&new).exists());
}

/// A demo daemon whose rules ask a PIN for every spend, its owner's and a
/// till's sessions, and the card the PIN tests use.
struct PinDemo {
    _dir: tempfile::TempDir,
    d: Daemon,
    demo: Demo,
    card: String,
    o: Client,
    t: Client,
}

async fn pin_demo() -> PinDemo {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[3].clone();
    let mut o = demo.owner(d.addr).await;
    ok(&mut o, 11, pin_rules(true, 0)).await;
    let t = demo.terminal(d.addr, 0).await;
    PinDemo {
        _dir: dir,
        d,
        demo,
        card,
        o,
        t,
    }
}

/// [`PinDemo`] without rate limits whose card (the fifth) has the PIN
/// [`PIN`] set by the owner: the unlock tests.
async fn unlock_demo() -> PinDemo {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo_with(dir.path(), &Daemon::NO_RATE_LIMITS);
    let card = demo.manifest.cards[4].clone();
    admin(&d, &demo, &["set-pin", "--card", &card, "--pin", PIN]);
    let mut o = demo.owner(d.addr).await;
    ok(&mut o, 12, pin_rules(true, 0)).await;
    let t = demo.terminal(d.addr, 0).await;
    PinDemo {
        _dir: dir,
        d,
        demo,
        card,
        o,
        t,
    }
}

/// `tries` wrong PINs typed at `t` for `card`, each refused `WRONG_PIN`,
/// under the txn ids after `txn` (advanced).
async fn wrong_tries(t: &mut Client, txn: &mut u64, card: &str, tries: u32) {
    for _ in 0..tries {
        *txn += 1;
        let r = pay(t, *txn, card, 1, Some(WRONG)).await;
        assert_eq!(r.unwrap_err(), E::WrongPin, "try {txn}");
    }
}

/// The card locked by wrong tries at `t`, unlocked by the owner `o`,
/// `tries` more wrong tries, then the owner's unlock resent (its answer
/// lost): answered from the ledger.
async fn unlock_resent_after(
    t: &mut Client,
    o: &mut Client,
    txn: &mut u64,
    card: &str,
    tries: u32,
) {
    wrong_tries(t, txn, card, MAX_WRONG_PIN_TRIES).await;
    let unlock = lift(o, 20, card, false);
    call_req(o, &unlock).await.expect("unlocked");
    wrong_tries(t, txn, card, tries).await;
    let again = call_req(o, &unlock).await.expect("the ledger's answer");
    assert!(again.replayed);
}

/// A till that lost the answer of a PIN purchase or a PIN change resends
/// the same bytes: it gets the first answer, though the PIN changed since,
/// and no wrong try is counted (the PIN is checked once, for the request
/// that stands).
#[tokio::test]
async fn a_resent_pin_request_is_answered_from_the_ledger_not_checked_again() {
    let PinDemo {
        _dir,
        d,
        demo: _,
        card,
        o,
        mut t,
    } = pin_demo().await;
    set_pin(&mut t, &card, 100, PIN, None)
        .await
        .expect("first PIN");
    let bought = purchase_with(&t, 101, &card, 500, Some(PIN));
    let first = call_req(&mut t, &bought).await.expect("paid");
    // The PIN changes at the till (the old one typed), then the purchase
    // is resent byte for byte, six times: more than the wrong tries allowed.
    let change = t.request(
        102,
        Op::SetPin(pb::SetPin {
            card: card.clone(),
            pin_block: t.pin_block(102, &card, Purpose::New, "1111").unwrap(),
            old_pin_block: t.pin_block(102, &card, Purpose::Present, PIN).unwrap(),
        }),
    );
    call_req(&mut t, &change).await.expect("changed");
    for _ in 0..6 {
        let again = call_req(&mut t, &bought).await.expect("the same answer");
        assert!(again.replayed);
        assert_eq!(purchased(&again), purchased(&first));
    }
    // So is the PIN change, though its old PIN is no longer the card's.
    assert!(call_req(&mut t, &change).await.expect("retry").replayed);
    // Nothing counted: the new PIN still pays.
    let r = pay(&mut t, 103, &card, 100, Some("1111")).await;
    assert_eq!(purchased(&r.expect("new PIN")).approved_minor, 100);
    drop((t, o));
    d.stop();
}

/// A PIN change whose record stands but whose hash the PIN store could
/// not keep: `card` had `PIN`, the change (txn 101) is to "1111". Returns
/// the change as sent, for the till to resend.
async fn a_change_whose_hash_was_lost(t: &mut Client, demo: &Demo, card: &str) -> pb::Request {
    set_pin(t, card, 100, PIN, None).await.expect("first PIN");
    // The card's one file in the PIN store; a directory where its next
    // version would be written makes the store fail once.
    let pins = demo.data.join("pins").join("brand-1");
    let files: Vec<_> = std::fs::read_dir(&pins)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(files.len(), 1, "one card has a PIN");
    let mut blocker = files[0].path().into_os_string();
    blocker.push(".tmp");
    let blocker = PathBuf::from(blocker);
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
    let change = t.request(
        101,
        Op::SetPin(pb::SetPin {
            card: card.into(),
            pin_block: t.pin_block(101, card, Purpose::New, "1111").unwrap(),
            old_pin_block: t.pin_block(101, card, Purpose::Present, PIN).unwrap(),
        }),
    );
    let failed = call_req(t, &change).await;
    assert_eq!(failed.unwrap_err(), E::StorageFailure);
    assert_eq!(status_of(t, 101).await.state(), pb::TxnState::Committed);
    // The store works again.
    std::fs::remove_dir_all(&blocker).unwrap();
    change
}

#[tokio::test]
async fn a_pin_change_whose_hash_was_not_stored_stores_it_when_resent() {
    let PinDemo {
        _dir,
        d,
        demo,
        card,
        o,
        mut t,
    } = pin_demo().await;
    let change = a_change_whose_hash_was_lost(&mut t, &demo, &card).await;
    // The till resends the change as it was.
    let again = call_req(&mut t, &change).await.expect("the resent change");
    assert!(again.replayed);
    // As the ledger says: the new PIN pays, the old one is wrong.
    let r = pay(&mut t, 102, &card, 100, Some("1111")).await;
    assert_eq!(purchased(&r.expect("new PIN")).approved_minor, 100);
    let r = pay(&mut t, 103, &card, 100, Some(PIN)).await;
    assert_eq!(r.unwrap_err(), E::WrongPin, "the old PIN no longer works");
    // Resent once more, it stores nothing (that record's hash is kept):
    // the new PIN still pays.
    assert!(call_req(&mut t, &change).await.expect("again").replayed);
    let r = pay(&mut t, 104, &card, 100, Some("1111")).await;
    assert_eq!(purchased(&r.expect("new PIN")).approved_minor, 100);
    drop((t, o));
    d.stop();
}

/// The same, where the kept hash is from before the store kept seqs (its
/// file has none): that hash is older than any record, so the change the
/// ledger holds is kept when resent, rather than the earlier PIN staying
/// the card's.
#[tokio::test]
async fn a_lost_hash_is_stored_when_resent_over_one_from_before_seqs() {
    let PinDemo {
        _dir,
        d,
        demo,
        card,
        o,
        mut t,
    } = pin_demo().await;
    let change = a_change_whose_hash_was_lost(&mut t, &demo, &card).await;
    let file = demo.data.join("pins/brand-1").join(&card);
    let mut entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let fields = entry.as_object_mut().unwrap();
    assert!(fields.remove("seq").is_some() && fields.remove("reset").is_some());
    std::fs::write(&file, serde_json::to_vec(&entry).unwrap()).unwrap();
    assert!(call_req(&mut t, &change).await.expect("resent").replayed);
    let r = pay(&mut t, 102, &card, 100, Some("1111")).await;
    assert_eq!(purchased(&r.expect("new PIN")).approved_minor, 100);
    let r = pay(&mut t, 103, &card, 100, Some(PIN)).await;
    assert_eq!(r.unwrap_err(), E::WrongPin, "the old PIN no longer works");
    drop((t, o));
    d.stop();
}

/// The same change resent after the server key rotated: its block, sealed
/// to the old key, no longer opens. The till still gets the ledger's
/// answer (not PIN_BLOCK_INVALID for a change that stands), the log tells
/// the owner to set the PIN again, and once they do, that PIN pays.
#[tokio::test]
async fn a_pin_change_resent_after_a_server_key_rotation_gets_the_ledger_s_answer() {
    let PinDemo {
        _dir,
        d,
        demo,
        card,
        o,
        mut t,
    } = pin_demo().await;
    let change = a_change_whose_hash_was_lost(&mut t, &demo, &card).await;
    drop((t, o));
    d.stop();
    let data = demo.data.to_str().unwrap();
    run::cardd_ok(["rotate-server-key", "--data", data]);
    let (d, log) = Daemon::start_logged(&demo.data, &["--demo"], "warn");
    let mut t = demo.terminal(d.addr, 0).await;
    let again = call_req(&mut t, &change)
        .await
        .expect("the ledger's answer");
    assert!(again.replayed);
    let mut o = demo.owner(d.addr).await;
    set_pin(&mut o, &card, 12, "2222", None)
        .await
        .expect("the owner sets the PIN again");
    let r = pay(&mut t, 102, &card, 100, Some("2222")).await;
    assert_eq!(purchased(&r.expect("the owner's PIN")).approved_minor, 100);
    drop((t, o));
    d.stop();
    let log = log.join().expect("the log");
    assert!(
        log.contains("the owner must set the card's PIN again"),
        "{log}"
    );
}

#[tokio::test]
async fn pin_changes_the_state_refuses_are_refused_without_a_hash_however_many() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[3].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    set_pin(&mut t, &card, 100, PIN, None)
        .await
        .expect("first PIN");
    // Five sessions of the till, each with 64 changes in flight that the
    // state machine refuses (the card has a PIN; the old one is not
    // typed): 320, more than the 256 hashes that may wait their turn.
    let key = read_key_file(&demo.terminal_key_path(0)).unwrap();
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(sign_on(d.addr, &key).await);
    }
    let mut txn = 1_000;
    for f in &mut sessions {
        for _ in 0..64 {
            txn += 1;
            let op = Op::SetPin(pb::SetPin {
                card: card.clone(),
                pin_block: t.pin_block(txn, &card, Purpose::New, "1111").unwrap(),
                old_pin_block: Vec::new(),
            });
            raw_send(f, txn, signed_body(&key, &t.request(txn, op))).await;
        }
    }
    let mut codes = HashMap::new();
    for f in &mut sessions {
        for _ in 0..64 {
            *codes.entry(expect_error(&raw_recv(f).await)).or_insert(0) += 1;
        }
    }
    // Each is refused as the state machine refuses it; none waited for
    // (or was turned away from) a hash it did not need.
    assert_eq!(codes, HashMap::from([(E::PinRequired, 320)]));
    // The PIN is the one set: the refusals changed nothing.
    let r = pay(&mut t, 101, &card, 100, Some(PIN)).await;
    assert_eq!(purchased(&r.expect("the PIN")).approved_minor, 100);
}

/// A PIN change the state refuses as malformed (no txn id, an operator
/// with a control character, no PIN block) gets that refusal whether or
/// not its card exists: a malformed change to an unknown card is no
/// probing miss, and the budget is left for real ones.
#[tokio::test]
async fn a_malformed_pin_change_to_an_unknown_card_is_refused_as_malformed_not_as_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo_with(dir.path(), &["--card-misses-per-minute", "2"]);
    let mut o = demo.owner(d.addr).await;
    let brand = demo.manifest.brand_id;
    let change = |o: &Client, txn: u64, card: &str| {
        let pin_block = o.pin_block(txn, card, Purpose::New, PIN).unwrap();
        o.request(
            txn,
            Op::SetPin(pb::SetPin {
                card: card.into(),
                pin_block,
                old_pin_block: Vec::new(),
            }),
        )
    };
    let mut codes = Vec::new();
    for txn in 100..105 {
        let unknown = card_number::generate(brand);
        let no_txn = change(&o, 0, &unknown);
        let mut bad_operator = change(&o, txn, &unknown);
        bad_operator.operator = "a\u{7}".into();
        let mut no_block = change(&o, txn, &unknown);
        if let Some(Op::SetPin(p)) = &mut no_block.op {
            p.pin_block.clear();
        }
        for req in [no_txn, bad_operator, no_block] {
            codes.push(call_req(&mut o, &req).await.unwrap_err());
        }
    }
    assert_eq!(codes, [E::InvalidArgument; 15]);
    // None counted: a well-formed change to an unknown card is the first
    // miss, and one to a card of the brand still sets its PIN.
    let unknown = card_number::generate(brand);
    let miss = change(&o, 105, &unknown);
    assert_eq!(call_req(&mut o, &miss).await.unwrap_err(), E::CardNotFound);
    let set = change(&o, 106, &demo.manifest.cards[0]);
    assert_eq!(seq(&call_req(&mut o, &set).await.expect("set")), FIRST_SEQ);
}

/// What an owner sends to lift a lock: the unlock, or a new PIN (which
/// lifts it too).
fn lift(o: &Client, txn: u64, card: &str, by_new_pin: bool) -> pb::Request {
    let op = if by_new_pin {
        Op::SetPin(pb::SetPin {
            card: card.into(),
            pin_block: o.pin_block(txn, card, Purpose::New, PIN).unwrap(),
            old_pin_block: Vec::new(),
        })
    } else {
        Op::SetPinLock(pb::SetPinLock {
            card: card.into(),
            locked: false,
        })
    };
    o.request(txn, op)
}

/// A till typing the right PIN at a locked card in a loop, from `txn`
/// on, until `stop`; tells `racing` once it was refused PIN_LOCKED (so it
/// is racing what comes next). Returns the next free txn id.
async fn keep_typing(
    mut c: Client,
    card: String,
    mut txn: u64,
    racing: tokio::sync::oneshot::Sender<()>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut racing = Some(racing);
    while !stop.load(Ordering::Relaxed) {
        txn += 1;
        match pay(&mut c, txn, &card, 1, Some(PIN)).await {
            Err(E::PinLocked) => {
                if let Some(tell) = racing.take() {
                    let _ = tell.send(());
                }
            }
            // Paid once unlocked, or turned away while another check
            // (or the unlock itself) holds the card.
            Ok(_) | Err(E::ServerBusy) => {}
            Err(other) => panic!("try {txn}: {other:?}"),
        }
    }
    txn
}

/// Lifting a lock (the owner's unlock, or a new PIN) is one step for PIN
/// tries: a try racing it is counted before it (refused, locked) or after
/// it (against a fresh count), never between its record and the reset of
/// the count, where the stale count would lock the card again at once.
#[tokio::test]
async fn right_pins_typed_while_the_owner_lifts_a_lock_never_lock_the_card_again() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo_with(dir.path(), &Daemon::NO_RATE_LIMITS);
    let card = demo.manifest.cards[4].clone();
    admin(&d, &demo, &["set-pin", "--card", &card, "--pin", PIN]);
    let mut o = demo.owner(d.addr).await;
    ok(&mut o, 12, pin_rules(true, 0)).await;
    let mut t = demo.terminal(d.addr, 0).await;
    let other_till = read_key_file(&demo.terminal_key_path(1)).unwrap();
    let (mut txn, mut racer_txn) = (100, 0);
    for round in 0..6u64 {
        for _ in 0..MAX_WRONG_PIN_TRIES {
            txn += 1;
            let r = pay(&mut t, txn, &card, 1, Some(WRONG)).await;
            assert_eq!(r.unwrap_err(), E::WrongPin, "round {round}, try {txn}");
        }
        let done = Arc::new(AtomicBool::new(false));
        let (racing, raced) = tokio::sync::oneshot::channel();
        let racer = connect(d.addr, other_till.clone()).await;
        let racer = tokio::spawn(keep_typing(
            racer,
            card.clone(),
            racer_txn,
            racing,
            done.clone(),
        ));
        bounded(raced).await.expect("the racing till was refused");
        let lift = lift(&o, 20 + round, &card, round % 2 == 1);
        let lifted = call_req(&mut o, &lift).await;
        lifted.unwrap_or_else(|e| panic!("round {round}: lifting the lock: {e:?}"));
        done.store(true, Ordering::Relaxed);
        racer_txn = bounded(racer).await.unwrap();
        txn += 1;
        let r = pay(&mut t, txn, &card, 1, Some(PIN)).await;
        r.unwrap_or_else(|e| panic!("round {round}: the right PIN after the lift: {e:?}"));
    }
    drop((t, o));
    d.stop();
}

/// An owner's unlock resent (its answer lost) after the card was locked
/// again is answered from the ledger and leaves the new lock's count: the
/// thief who locked it gets no fresh tries, and a wrong PIN stays
/// PIN_LOCKED rather than telling right from wrong.
#[tokio::test]
async fn a_resent_unlock_after_a_new_lock_gives_no_fresh_tries() {
    let PinDemo {
        _dir,
        d,
        card,
        mut o,
        mut t,
        ..
    } = unlock_demo().await;
    let mut txn = 100;
    unlock_resent_after(&mut t, &mut o, &mut txn, &card, MAX_WRONG_PIN_TRIES).await;
    for pin in [WRONG, PIN] {
        txn += 1;
        let r = pay(&mut t, txn, &card, 1, Some(pin)).await;
        assert_eq!(r.unwrap_err(), E::PinLocked, "{pin}: still locked");
    }
    drop((t, o));
    d.stop();
}

/// An owner's unlock resent (its answer lost) while the ledger still says
/// unlocked, after its count was reset and wrong tries counted again, is
/// answered from the ledger and leaves those tries: five wrong tries after
/// an unlock lock the card, however often the unlock is resent.
#[tokio::test]
async fn a_resent_unlock_leaves_the_wrong_tries_counted_since() {
    let PinDemo {
        _dir,
        d,
        card,
        mut o,
        mut t,
        ..
    } = unlock_demo().await;
    let mut txn = 100;
    unlock_resent_after(&mut t, &mut o, &mut txn, &card, MAX_WRONG_PIN_TRIES - 1).await;
    wrong_tries(&mut t, &mut txn, &card, 1).await;
    let r = pay(&mut t, txn + 1, &card, 1, Some(PIN)).await;
    assert_eq!(
        r.unwrap_err(),
        E::PinLocked,
        "five wrong tries since the unlock"
    );
    drop((t, o));
    d.stop();
}

/// True if the store still answers `card` for the holder's phone.
fn holder_kept(d: &Daemon, demo: &Demo, card: &str) -> bool {
    let found = admin(d, demo, &["find-card", "--phone", PHONE]);
    found.trim() == card
}

/// An erase the state machine refuses (or answers from the ledger, being a
/// resend) changes nothing: the holder stays in the store, findable, and
/// the card named; only an erase that writes its record forgets.
#[tokio::test]
async fn an_erase_the_state_refuses_or_answers_from_the_ledger_keeps_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[1].clone();
    let named = [
        "set-holder",
        "--card",
        &card,
        "--name",
        NAME,
        "--phone",
        PHONE,
    ];
    admin(&d, &demo, &named);
    let mut o = demo.owner(d.addr).await;
    let erase = |o: &Client, txn| {
        let op = Op::EraseHolder(pb::EraseHolder { card: card.clone() });
        o.request(txn, op)
    };
    // Refused by the state machine: an operator it does not take, and no
    // transaction id.
    let mut bad_operator = erase(&o, 30);
    bad_operator.operator = "till\n7".into();
    let mut no_txn = erase(&o, 31);
    no_txn.txn_id = 0;
    for (req, code) in [
        (bad_operator, E::InvalidArgument),
        (no_txn, E::InvalidArgument),
    ] {
        assert_eq!(call_req(&mut o, &req).await.unwrap_err(), code);
        assert!(holder_kept(&d, &demo, &card), "refused {req:?}");
    }
    // An erase that stands forgets; the holder is named again; the first
    // erase resent is answered from the ledger and forgets no one.
    let first = erase(&o, 32);
    let erased = call_req(&mut o, &first).await.expect("erased");
    assert!(!erased.replayed);
    assert!(!holder_kept(&d, &demo, &card));
    admin(&d, &demo, &named);
    let again = call_req(&mut o, &first).await.expect("answered");
    assert!(again.replayed);
    assert!(
        holder_kept(&d, &demo, &card),
        "a resend forgot the new holder"
    );
    let mut t = demo.terminal(d.addr, 0).await;
    assert!(inquiry(&mut t, &card).await.named);
    drop((t, o));
    d.stop();
    // Records: set-holder, erase, set-holder.
    let report = run::export_and_verify(&demo.data, 1, &dir.path().join("x.cardd"));
    assert_eq!(report["records"], FIRST_SEQ + 2);
}
