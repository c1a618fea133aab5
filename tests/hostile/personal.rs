//! Hostile use of the holder and PIN operations (#15): PIN guessing from
//! many tills at once is held to five tries and writes nothing; malformed
//! or oversized holders are refused with a code and lose nothing.
use cardd::pin::Purpose;

use super::*;

/// The first record written after the demo brand is provisioned.
const FIRST_SEQ: u64 = 18;
const PIN: &str = "50417";

/// A purchase of 1.00 from `card` with `pin` typed, by `c` under `txn`.
async fn guess(c: &mut Client, txn: u64, card: &str, pin: &str) -> Result<pb::Reply, E> {
    let pin_block = c.pin_block(txn, card, Purpose::Present, pin).expect("seal");
    let op = Op::Purchase(pb::Purchase {
        card: card.into(),
        amount_minor: 100,
        pin_block,
        ..Default::default()
    });
    call(c, txn, op).await
}

/// The seq the owner's next record gets: a rules change to the same
/// rules (what every record before it wrote is then known).
async fn next_seq(o: &mut Client, txn: u64, rules: &pb::Rules) -> u64 {
    let op = Op::SetRules(pb::SetRules {
        rules: Some(rules.clone()),
    });
    common::reply::seq(&ok(o, txn, op).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_guessing_from_many_tills_and_connections_gets_five_tries_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[4].clone();
    let mut o = demo.owner(d.addr).await;
    let txn = 11;
    let pin_block = o.pin_block(txn, &card, Purpose::New, PIN).unwrap();
    let set = Op::SetPin(pb::SetPin {
        card: card.clone(),
        pin_block,
        ..Default::default()
    });
    ok(&mut o, txn, set).await;
    let mut rules = cardd::demo::demo_rules();
    rules.pin_all_spends = true;
    assert_eq!(next_seq(&mut o, 12, &rules).await, FIRST_SEQ + 1);
    // Eight tills in both stores, two connections each.
    let mut keys = vec![
        read_key_file(&demo.terminal_key_path(0)).unwrap(),
        read_key_file(&demo.terminal_key_path(1)).unwrap(),
    ];
    for (i, txn) in (13..19).enumerate() {
        let key = generate_key();
        ok(&mut o, txn, enroll(1 + i as u32 % 2, &key, "guesser")).await;
        keys.push(key);
    }
    let mut guessers = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        for c in 0..2u64 {
            let (key, card, addr) = (key.clone(), card.clone(), d.addr);
            guessers.push(tokio::spawn(async move {
                let mut t = connect(addr, key).await;
                let mut codes = Vec::new();
                for g in 0..3u64 {
                    let pin = format!("{:05}", k as u64 * 100 + c * 10 + g);
                    codes.push(
                        guess(&mut t, 1_000 + c * 10 + g, &card, &pin)
                            .await
                            .unwrap_err(),
                    );
                }
                codes
            }));
        }
    }
    let mut codes = Vec::new();
    for g in guessers {
        codes.extend(bounded(g).await.expect("guesser"));
    }
    let wrong = codes.iter().filter(|c| **c == E::WrongPin).count();
    assert!(wrong <= 5, "{wrong} guesses were checked: {codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, E::WrongPin | E::PinLocked | E::ServerBusy)),
        "{codes:?}"
    );
    // Whatever the race left, at most five tries in all: the right PIN is
    // refused once five wrong ones were counted.
    let mut t = demo.terminal(d.addr, 0).await;
    let mut txn = 100;
    while guess(&mut t, txn, &card, "00000").await != Err(E::PinLocked) {
        txn += 1;
        assert!(txn <= 100 + 5, "more than five wrong tries were taken");
    }
    assert_eq!(wrong + (txn - 100) as usize, 5, "{codes:?}");
    assert_eq!(
        guess(&mut t, 200, &card, PIN).await.unwrap_err(),
        E::PinLocked
    );
    common::reply::assert_money(&inquiry(&mut t, &card).await, 100_000, 15_000, 0);
    // Of it all, the ledger holds the server's one lock: rules, 6
    // enrolments, the lock, then this.
    assert_eq!(next_seq(&mut o, 19, &rules).await, FIRST_SEQ + 9);
}

#[tokio::test]
async fn malformed_or_oversized_holders_are_refused_with_a_code_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut o = demo.owner(d.addr).await;
    let data = |card: &str, name: &str, phone: &str| {
        Op::HolderData(pb::HolderData {
            card: card.into(),
            name: name.into(),
            phone: phone.into(),
        })
    };
    let commitment = ok(&mut o, 0, data(&card, "Li Na", "13900139000"))
        .await
        .holder_commitment;
    let set = |commitment: Vec<u8>| {
        Op::SetHolder(pb::SetHolder {
            card: card.clone(),
            commitment,
        })
    };
    ok(&mut o, 11, set(commitment.clone())).await;

    let long = "名".repeat(22); // 66 bytes
    let huge = "x".repeat(60_000);
    let other_brand = cardd::card_number::generate(2);
    let cases = [
        (data(&card, &long, "13900139000"), E::InvalidArgument),
        (data(&card, &huge, "13900139000"), E::InvalidArgument),
        (data(&card, "", "13900139000"), E::InvalidArgument),
        (data(&card, "Li\nNa", "13900139000"), E::InvalidArgument),
        (data(&card, "Li Na", "1390"), E::InvalidArgument),
        (
            data(&card, "Li Na", "+139001390013900139001"),
            E::InvalidArgument,
        ),
        (data(&card, "Li Na", "139 0013 9000"), E::InvalidArgument),
        (data(&card, "Li Na", &huge), E::InvalidArgument),
        (
            data("8000010000000000000", "Li Na", "13900139000"),
            E::CardNotFound,
        ),
        (
            data(&other_brand, "Li Na", "13900139000"),
            E::CardOtherBrand,
        ),
        (
            Op::FindCard(pb::FindCard { phone: "x".into() }),
            E::InvalidArgument,
        ),
    ];
    for (op, code) in cases {
        assert_eq!(
            call(&mut o, 0, op.clone()).await.unwrap_err(),
            code,
            "{op:?}"
        );
    }
    // A commitment the store never answered, or of the wrong size.
    for forged in [vec![7; 32], commitment[..31].to_vec(), Vec::new()] {
        assert_eq!(refused(&mut o, 12, set(forged)).await, E::InvalidArgument);
    }
    // A till may not name or look up holders.
    let mut t = demo.terminal(d.addr, 0).await;
    let op = data(&card, "Mallory", "13800138000");
    assert_eq!(call(&mut t, 0, op).await.unwrap_err(), E::WrongRole);
    let find = Op::FindCard(pb::FindCard {
        phone: "13900139000".into(),
    });
    assert_eq!(
        call(&mut t, 0, find.clone()).await.unwrap_err(),
        E::WrongRole
    );
    // Bytes that are not UTF-8 where the name goes: refused by the wire rule.
    let req = o.request(0, data(&card, "XXXX", "13900139000"));
    let mut bytes = req.encode_to_vec();
    let at = bytes.windows(4).position(|w| w == b"XXXX").unwrap();
    bytes[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
    let sig = sign_request(o.key(), &bytes);
    assert_eq!(
        call_bytes(&mut o, &bytes, &sig).await.unwrap_err(),
        E::Malformed
    );
    // A frame over the limit: refused and the connection closed.
    let key = read_key_file(&demo.owner_key_path()).unwrap();
    let mut raw = sign_on(d.addr, &key).await;
    let req = request(1, 0, data(&card, &"y".repeat(MAX_FRAME), "13900139000"));
    let frame = msg(1, signed_body(&key, &req));
    assert!(frame.len() > MAX_FRAME + 4);
    raw.get_mut().write_all(&frame).await.expect("sent");
    assert_eq!(expect_error(&raw_recv(&mut raw).await), E::FrameTooLarge);

    // Nothing was lost: the holder is still found, the card still named,
    // and no refusal wrote a record.
    let found = ok(&mut o, 0, find).await;
    assert_eq!(
        found.holder.expect("found").cards,
        std::slice::from_ref(&card)
    );
    assert!(inquiry(&mut t, &card).await.named);
    let r = ok(&mut o, 13, set(commitment)).await;
    assert_eq!(common::reply::seq(&r), FIRST_SEQ + 1);
}

#[tokio::test]
async fn a_till_guessing_pins_across_many_cards_is_rate_limited_after_twenty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let cards = demo.manifest.cards.clone();
    let mut o = demo.owner(d.addr).await;
    for (txn, card) in (11..).zip(&cards) {
        let pin_block = o.pin_block(txn, card, Purpose::New, PIN).unwrap();
        let set = Op::SetPin(pb::SetPin {
            card: card.clone(),
            pin_block,
            ..Default::default()
        });
        ok(&mut o, txn, set).await;
    }
    // Wrong PINs card after card, at most five a card.
    let mut t = demo.terminal(d.addr, 0).await;
    let mut wrong = 0;
    let limit = cardd::limits::DEFAULT_CARD_MISSES_PER_MINUTE as usize;
    let outcome = 'guessing: {
        for (i, card) in cards.iter().cycle().take(limit + 4).enumerate() {
            match guess(&mut t, 100 + i as u64, card, &format!("{:05}", i)).await {
                Err(E::WrongPin) => wrong += 1,
                other => break 'guessing other,
            }
        }
        panic!("never rate limited after {wrong} wrong PINs");
    };
    // The guard blocks once a minute holds more than its limit.
    assert_eq!((outcome.unwrap_err(), wrong), (E::RateLimited, limit + 1));
    // The guessing wrote only the lock of the one card it tried five
    // times: the chain ends with the five PINs set and that lock.
    drop((t, o));
    let mut d = d;
    d.kill9();
    let records = FIRST_SEQ - 1 + cards.len() as u64 + 1;
    let checked = run::cardd_check(&demo.data);
    assert!(
        checked.contains(&format!("brand 1 (Demo Coffee): {records} records")),
        "{checked}"
    );
}

/// The probing budget of the pipelined-guess tests, and how many guesses
/// each sends at once on one connection.
const BUDGET: usize = 2;
const SENT: usize = 64;

/// Sends `SENT` requests `op(i, demo)` at once on one connection of the
/// key at `signer(demo)` (a till's, the owner's) to a daemon whose
/// card-miss budget is `BUDGET`, and checks that at most the budget (plus
/// one per daemon thread deciding at the same moment: each is admitted
/// and counted with nothing awaited between) are answered `miss`, the
/// rest `RATE_LIMITED`.
async fn pipelined_guesses_are_held_to_the_budget(
    signer: fn(&Demo) -> std::path::PathBuf,
    op: impl Fn(usize, &Demo) -> Op,
    miss: E,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = BUDGET.to_string();
    let (d, demo) = Daemon::demo_with(dir.path(), &["--card-misses-per-minute", &budget]);
    let key = read_key_file(&signer(&demo)).unwrap();
    let mut f = sign_on(d.addr, &key).await;
    let mut bytes = Vec::new();
    for i in 0..SENT {
        let req = request(demo.manifest.brand_id, 100 + i as u64, op(i, &demo));
        bytes.extend(signed_frame(&key, i as u64, &req));
    }
    bounded(tokio::io::AsyncWriteExt::write_all(f.get_mut(), &bytes))
        .await
        .expect("write");
    let mut codes = Vec::with_capacity(SENT);
    for _ in 0..SENT {
        codes.push(expect_error(&raw_recv(&mut f).await));
    }
    let missed = codes.iter().filter(|c| **c == miss).count();
    let limited = codes.iter().filter(|c| **c == E::RateLimited).count();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert!(
        missed <= BUDGET + threads,
        "{missed} of {SENT} pipelined guesses answered {miss:?} (budget {BUDGET})"
    );
    assert_eq!(
        missed + limited,
        SENT,
        "the rest are RATE_LIMITED: {codes:?}"
    );
}

/// Purchases with PIN blocks that do not open (no Argon2 to wait for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_pin_blocks_get_no_more_than_the_budget() {
    let purchase = |i: usize, demo: &Demo| {
        let cards = &demo.manifest.cards;
        Op::Purchase(pb::Purchase {
            card: cards[i % cards.len()].clone(),
            amount_minor: 100,
            pin_block: vec![7; 120],
            ..Default::default()
        })
    };
    pipelined_guesses_are_held_to_the_budget(till, purchase, E::PinBlockInvalid).await;
}

/// PIN changes to guessed card numbers: each is held to the probing
/// budget as it is taken up, and an unknown card is refused before any
/// Argon2 hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_pin_changes_to_guessed_cards_get_no_more_than_the_budget() {
    let set_pin = |_: usize, demo: &Demo| {
        Op::SetPin(pb::SetPin {
            card: cardd::card_number::generate(demo.manifest.brand_id),
            pin_block: vec![7; 120],
            old_pin_block: Vec::new(),
        })
    };
    pipelined_guesses_are_held_to_the_budget(till, set_pin, E::CardNotFound).await;
}

/// The owner's erasures of guessed card numbers: each unknown card is
/// counted as soon as the state's answer is known, so a burst learns no
/// more than the budget whatever is in flight. Three bursts: how many are
/// in flight at once depends on the scheduling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_erasures_of_guessed_cards_get_no_more_than_the_budget() {
    let erase = |_: usize, demo: &Demo| {
        Op::EraseHolder(pb::EraseHolder {
            card: cardd::card_number::generate(demo.manifest.brand_id),
        })
    };
    for _ in 0..3 {
        let owner = Demo::owner_key_path;
        pipelined_guesses_are_held_to_the_budget(owner, erase, E::CardNotFound).await;
    }
}

/// The key file of the demo's first till.
fn till(demo: &Demo) -> std::path::PathBuf {
    demo.terminal_key_path(0)
}
