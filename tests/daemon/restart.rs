//! Durability across a restart.
use std::time::Duration;

use super::*;

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
    let stdout = run::cardd_check(&demo.data);
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

/// Rewrites one stored record of brand 1 offline (checksums made anew, as
/// an attacker with the data directory would).
fn change_record(data: &Path, seq: u64) {
    use cardd::storage::rewrite::{read_commits, write_commits};
    let mut commits = read_commits(data, 1).unwrap();
    let run = commits
        .iter_mut()
        .flatten()
        .find(|r| (r.first_seq..=r.last_seq).contains(&seq))
        .expect("a run holds the record");
    let i = usize::try_from(seq - run.first_seq).unwrap();
    let last = run.records[i].len() - 1;
    run.records[i][last] ^= 0x01;
    write_commits(data, 1, &commits).unwrap();
}

/// The first refusal a till meets signing on and then buying, again and
/// again.
async fn refused_soon(
    addr: std::net::SocketAddr,
    key: &ed25519_dalek::SigningKey,
    card: &str,
    mut txn: u64,
) -> E {
    let mut t = match Client::connect(addr, key.clone()).await {
        Ok(t) => t,
        Err(ClientError::Refused(r)) => return r.code,
        Err(e) => panic!("sign-on: {e}"),
    };
    loop {
        txn += 1;
        match call(&mut t, txn, purchase(card, 1)).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(code) => return code,
        }
    }
}

#[tokio::test]
async fn a_record_changed_before_the_snapshot_stops_the_brand_after_start() {
    let dir = tempfile::tempdir().unwrap();
    let every = ["--snapshot-every", "20"];
    let (mut d, demo) = Daemon::demo_with(dir.path(), &every);
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    for txn in 100..160 {
        ok(&mut t, txn, purchase(&card, 1)).await;
    }
    d.kill9();
    // An old record, well before the newest snapshot, changed on disk: a
    // start from that snapshot does not read it.
    change_record(&demo.data, 5);
    let key = read_key_file(&demo.terminal_key_path(0)).unwrap();
    for (round, txn) in [("the first start", 1_000), ("a restart", 100_000)] {
        // The background check finds it within moments: the brand stops
        // (sign-on or the next request refused), and a restart does not
        // clear it, the check runs again.
        let d = Daemon::start(&demo.data, &every);
        let code = bounded(refused_soon(d.addr, &key, &card, txn)).await;
        assert_eq!(code, E::StorageFailure, "{round}");
    }
    // And `cardd check`, which replays from the first record, fails.
    let check = run::cardd(["check".as_ref(), "--data".as_ref(), demo.data.as_os_str()]);
    assert!(
        !check.status.success(),
        "cardd check passed a changed ledger"
    );
}
