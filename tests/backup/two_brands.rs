//! The server operator's backup of every brand (`--data`, with the data
//! directory's server key), incremental per brand, restored together.
use cardd::crypto::read_key_file;
use cardd::pb::{self, request::Op};
use common::run::brand_create_ok;
use common::{bounded, connect, ok, purchase, Daemon};

use super::*;

#[tokio::test]
async fn the_server_key_backs_up_every_brand_and_both_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let data = demo.data.clone();
    drop(d);
    let owner2_key = dir.path().join("owner2.key");
    assert_eq!(brand_create_ok(&data, "Second", &owner2_key), 2);

    let d = Daemon::start(&data, &[]);
    let mut owner2 = connect(d.addr, read_key_file(&owner2_key).expect("key")).await;
    let card2 = cardd::card_number::generate(2);
    ok(
        &mut owner2,
        1,
        Op::IssueCard(pb::IssueCard {
            card: card2.clone(),
        }),
    )
    .await;
    let load = pb::TopUp {
        card: card2.clone(),
        amount_minor: 30_000,
        channel: pb::Channel::HeadOffice as u32,
        ..Default::default()
    };
    ok(&mut owner2, 2, Op::TopUp(load)).await;
    let mut till = bounded(demo.terminal(d.addr, 0)).await;
    ok(&mut till, 100, purchase(&demo.manifest.cards[0], 700)).await;
    drop(d);

    let out = dir.path().join("backups");
    assert_ok(
        &cardd!("backup", "--data", &data, "--out-dir", &out),
        "first backup",
    );
    // More traffic on brand 1 only; the next run adds it and leaves brand 2.
    let d = Daemon::start(&data, &[]);
    let mut till = bounded(demo.terminal(d.addr, 0)).await;
    ok(&mut till, 101, purchase(&demo.manifest.cards[1], 900)).await;
    let mut owner1 = bounded(demo.owner(d.addr)).await;
    let brand1 = cards_of(&mut owner1, &demo.manifest.cards).await;
    let mut owner2 = connect(d.addr, read_key_file(&owner2_key).expect("key")).await;
    let brand2 = cards_of(&mut owner2, std::slice::from_ref(&card2)).await;
    assert_eq!(brand2[0].0, 30_000);
    drop(d);
    let o = cardd!("backup", "--data", &data, "--out-dir", &out);
    assert_ok(&o, "second backup");
    assert!(text(&o).contains("(1 new)"), "{}", text(&o));
    assert!(text(&o).contains("up to date"), "{}", text(&o));
    let key_hex = server_key_hex(&data);
    let files = [
        out.join("brand-1.cardd-backup"),
        out.join("brand-2.cardd-backup"),
    ];
    assert_eq!(verify_json(&files[0], &key_hex)["records"], 19);
    assert_eq!(verify_json(&files[1], &key_hex)["records"], 3);

    let restored = dir.path().join("restored");
    let o = cardd!(
        "restore",
        "--data",
        &restored,
        "--server-key-file",
        data.join("server.key"),
        &files[0],
        &files[1]
    );
    assert_ok(&o, "restore of both brands");
    let r = Daemon::start(&restored, &[]);
    let mut owner1 = bounded(demo.owner(r.addr)).await;
    assert_eq!(cards_of(&mut owner1, &demo.manifest.cards).await, brand1);
    let mut owner2 = connect(r.addr, read_key_file(&owner2_key).expect("key")).await;
    assert_eq!(
        cards_of(&mut owner2, std::slice::from_ref(&card2)).await,
        brand2
    );
}

/// The demo brand and a second brand, the daemon stopped gracefully (its
/// high-water marks cover every commit), both backed up offline into the
/// directory returned.
fn two_brands_backed_up(dir: &std::path::Path) -> (common::Demo, std::path::PathBuf) {
    let (d, demo) = Daemon::demo(dir);
    d.stop();
    let owner2_key = dir.join("owner2.key");
    assert_eq!(brand_create_ok(&demo.data, "Second", &owner2_key), 2);
    let out = dir.join("backups");
    assert_ok(
        &cardd!("backup", "--data", &demo.data, "--out-dir", &out),
        "backup",
    );
    (demo, out)
}

/// One brand's damaged file does not stop the other brands' backups, and
/// the exit code says that one failed.
#[test]
fn a_damaged_brand_file_does_not_stop_the_other_brands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (demo, out) = two_brands_backed_up(dir.path());
    let damaged = out.join("brand-1.cardd-backup");
    let mut bytes = std::fs::read(&damaged).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&damaged, &bytes).expect("write");

    let o = cardd!("backup", "--data", &demo.data, "--out-dir", &out);
    let text = assert_fails(&o, "backup with a damaged brand file");
    assert!(
        text.contains("brand 1") && text.contains("does not verify"),
        "{text}"
    );
    assert!(
        text.contains("brand 2:") && text.contains("up to date"),
        "{text}"
    );
    assert!(text.contains("brands [1] failed"), "{text}");
    assert_eq!(std::fs::read(&damaged).expect("read"), bytes);
}

/// A brand whose ledger on disk is damaged (its log cut below its
/// high-water mark) is named and left out, its earlier backup file
/// untouched; the other brand is backed up; the exit code says one failed.
#[test]
fn a_brand_damaged_on_disk_is_named_and_the_others_backed_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (demo, out) = two_brands_backed_up(dir.path());
    let earlier = std::fs::read(out.join("brand-1.cardd-backup")).expect("read");
    common::cut_below_mark(&demo.data, 1);

    let o = cardd!("backup", "--data", &demo.data, "--out-dir", &out);
    let text = assert_fails(&o, "backup with a damaged brand");
    assert!(
        text.contains("brand 1 not backed up") && text.contains("high-water mark"),
        "{text}"
    );
    assert!(
        text.contains("brand 2:") && text.contains("up to date"),
        "{text}"
    );
    assert!(text.contains("brands [1] failed"), "{text}");
    let kept = std::fs::read(out.join("brand-1.cardd-backup")).expect("read");
    assert_eq!(kept, earlier, "the damaged brand's backup file changed");
}
