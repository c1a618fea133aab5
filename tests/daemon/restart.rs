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

/// Every file of brand `brand`'s log and its high-water mark, by path.
fn brand_files(data: &Path, brand: u32) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let log = data.join(format!("log/brand-{brand:05}"));
    let mut files: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.push(data.join(format!("marks/brand-{brand:05}.hwm")));
    files.sort();
    files
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect()
}

/// Brand 2 beside the demo brand: its owner key file, a till and a card
/// holding 40.00 (50.00 loaded, 10.00 spent).
struct SecondBrand {
    owner2: std::path::PathBuf,
    till2: ed25519_dalek::SigningKey,
    card2: String,
}

/// The demo brand and [`SecondBrand`] in `dir`, served.
async fn second_brand(dir: &Path) -> (Daemon, Demo, SecondBrand) {
    let (d, demo) = Daemon::demo(dir);
    d.stop();
    let owner2 = dir.join("owner2.key");
    assert_eq!(brand_create_ok(&demo.data, "Brand Two", &owner2), 2);
    let (till2, card2) = (generate_key(), card_number::generate(2));
    let d = Daemon::start(&demo.data, &[]);
    let mut o = connect(d.addr, read_key_file(&owner2).unwrap()).await;
    ok(&mut o, 1, create_store("Two Main")).await;
    ok(&mut o, 2, enroll(1, &till2, "till")).await;
    ok(&mut o, 3, issue(&card2)).await;
    let mut t = connect(d.addr, till2.clone()).await;
    ok(&mut t, 1, top_up(&card2, 5_000)).await;
    ok(&mut t, 2, purchase(&card2, 1_000)).await;
    let second = SecondBrand {
        owner2,
        till2,
        card2,
    };
    (d, demo, second)
}

/// The repair docs/operations.md gives for a refused brand, followed to
/// the letter: the brand alone is put back from its backup, and what the
/// other brand acknowledged meanwhile, before and after the damage, stays.
#[tokio::test]
async fn the_documented_repair_puts_back_the_refused_brand_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (
        d,
        demo,
        SecondBrand {
            owner2,
            till2,
            card2,
        },
    ) = second_brand(dir.path()).await;
    let backup = dir.path().join("brand-2.cardd-backup");
    let addr = d.addr.to_string();
    run::cardd_ok([
        "backup".as_ref(),
        "--connect".as_ref(),
        addr.as_ref(),
        "--key".as_ref(),
        owner2.as_os_str(),
        "--out".as_ref(),
        backup.as_os_str(),
    ]);
    let card1 = &demo.manifest.cards[0];
    let mut t1 = demo.terminal(d.addr, 0).await;
    ok(&mut t1, 100, purchase(card1, 1_000)).await;
    let mut t2 = connect(d.addr, till2.clone()).await;
    ok(&mut t2, 3, purchase(&card2, 500)).await;
    drop((t1, t2));
    d.stop();
    cut_below_mark(&demo.data, 2);
    let d = Daemon::start(&demo.data, &[]);
    let mut t1 = demo.terminal(d.addr, 0).await;
    ok(&mut t1, 101, purchase(card1, 2_000)).await;
    drop(t1);
    assert_eq!(
        refused_soon(d.addr, &till2, &card2, 10).await,
        E::StorageFailure,
        "brand 2 is refused until the repair"
    );
    d.stop();

    let spare = dir.path().join("spare");
    let key = demo.data.join("server.key");
    run::cardd_ok([
        "restore".as_ref(),
        "--data".as_ref(),
        spare.as_os_str(),
        "--server-key-file".as_ref(),
        key.as_os_str(),
        backup.as_os_str(),
    ]);
    run::cardd_check(&spare);
    let aside = dir.path().join("damaged");
    std::fs::create_dir(&aside).unwrap();
    for f in ["log/brand-00002", "marks/brand-00002.hwm"] {
        let name = Path::new(f).file_name().unwrap();
        std::fs::rename(demo.data.join(f), aside.join(name)).unwrap();
    }
    let snapshots = std::fs::read_dir(demo.data.join("snapshots"));
    for entry in snapshots.into_iter().flatten() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("brand-2.")
        {
            std::fs::rename(&path, aside.join(path.file_name().unwrap())).unwrap();
        }
    }
    common::copy_dir(
        &spare.join("log/brand-00002"),
        &demo.data.join("log/brand-00002"),
    );
    std::fs::copy(
        spare.join("marks/brand-00002.hwm"),
        demo.data.join("marks/brand-00002.hwm"),
    )
    .unwrap();
    run::cardd_check(&demo.data);

    let d = Daemon::start(&demo.data, &[]);
    let mut t1 = demo.terminal(d.addr, 0).await;
    let view = inquiry(&mut t1, card1).await;
    assert_eq!(view.balance_minor, 10_000 - 1_000 - 2_000);
    let mut t2 = connect(d.addr, till2).await;
    let r = ok(&mut t2, 4, purchase(&card2, 100)).await;
    assert_eq!(
        card_of(&r).balance_minor,
        4_000 - 100,
        "served from its backup"
    );
    // No brand is refused any more: keys are enrolled again.
    let mut o1 = demo.owner(d.addr).await;
    ok(&mut o1, 100, enroll(1, &generate_key(), "new till")).await;
}

/// One brand whose log came back short is refused alone: the daemon starts
/// and serves the other brand, the damaged brand's till is told
/// STORAGE_FAILURE, an ERROR line and a metric name it, its files are left
/// exactly as they were, and `cardd check` still fails naming it.
#[tokio::test]
async fn a_brand_whose_log_came_back_short_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, SecondBrand { till2, card2, .. }) = second_brand(dir.path()).await;
    d.stop();
    cut_below_mark(&demo.data, 2);
    let damaged = brand_files(&demo.data, 2);

    let http = common::http::free_addr();
    let extra = ["--http-listen", &http.to_string()];
    let (mut d, log) = Daemon::start_logged(&demo.data, &extra, "info");
    let mut t1 = demo.terminal(d.addr, 0).await;
    let card1 = &demo.manifest.cards[0];
    let r = ok(&mut t1, 100, purchase(card1, 2_500)).await;
    assert_money(card_of(&r), 7_500, 0, 25);
    assert_eq!(
        refused_soon(d.addr, &till2, &card2, 10).await,
        E::StorageFailure
    );
    // No brand takes a key the refused one may hold (enrolled after what
    // its log still reads): no new key is enrolled until it is repaired.
    let mut o1 = demo.owner(d.addr).await;
    assert_eq!(
        call(&mut o1, 100, enroll(1, &generate_key(), "new till"))
            .await
            .unwrap_err(),
        E::ServerBusy
    );
    let metrics = common::http::metrics(http);
    assert_eq!(
        common::http::sample(&metrics, "cardd_brand_refused{brand=\"2\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        common::http::sample(&metrics, "cardd_brand_refused{brand=\"1\"}"),
        None
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).is_some());
    let log = log.join().unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("brand=2") && l.contains("high-water")),
        "no ERROR line names brand 2 and its damage:\n{log}"
    );
    assert!(
        brand_files(&demo.data, 2) == damaged,
        "the damaged brand's files changed"
    );

    let check = run::cardd(["check".as_ref(), "--data".as_ref(), demo.data.as_os_str()]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "cardd check passed a short ledger");
    assert!(
        stderr.contains("brand 2"),
        "check does not name the brand: {stderr}"
    );
}
