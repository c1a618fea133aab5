//! Backup, more traffic, an incremental backup, a restore, and the chain
//! going on after it.
use std::fs;

use cardd::crypto::read_key_file;
use common::{bounded, connect, ok, purchase, top_up, Daemon};

use super::*;

#[tokio::test]
async fn backup_traffic_incremental_backup_restore_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let addr = d.addr.to_string();
    let owner_key = demo.owner_key_path();
    let key_hex = hex::encode(bounded(demo.owner(d.addr)).await.server_key);
    let file = dir.path().join("brand-1.cardd-backup");

    assert_ok(&backup_online(&addr, &owner_key, &file), "first backup");
    assert_eq!(verify_json(&file, &key_hex)["records"], 17);
    let first_checkpoint = dir.path().join("first.checkpoint");
    let o = cardd!(
        "audit",
        "verify",
        &file,
        "--server-key",
        &key_hex,
        "--save-checkpoint",
        &first_checkpoint
    );
    assert_ok(&o, "save the first backup's checkpoint");

    // More traffic: purchases on four cards and a top-up with a bonus.
    let mut till = bounded(demo.terminal(d.addr, 0)).await;
    for (i, card) in demo.manifest.cards.iter().take(4).enumerate() {
        ok(
            &mut till,
            100 + i as u64,
            purchase(card, 1_000 + 250 * i as i64),
        )
        .await;
    }
    ok(&mut till, 110, top_up(&demo.manifest.cards[0], 60_000)).await;

    let o = backup_online(&addr, &owner_key, &file);
    assert_ok(&o, "incremental backup");
    assert!(text(&o).contains("(5 new)"), "{}", text(&o));
    let backed_up = verify_json(&file, &key_hex);
    assert_eq!(backed_up["records"], 22);
    let o = cardd!(
        "audit",
        "verify",
        &file,
        "--server-key",
        &key_hex,
        "--old-checkpoint",
        &first_checkpoint
    );
    assert_ok(&o, "the incremental backup extends the first");
    assert!(
        text(&o).contains("extends the old checkpoint: yes"),
        "{}",
        text(&o)
    );
    python_verifies(&file, &key_hex);

    // Nothing new: the file is not even rewritten.
    let bytes = fs::read(&file).expect("backup");
    let o = backup_online(&addr, &owner_key, &file);
    assert_ok(&o, "backup with nothing new");
    assert!(text(&o).contains("up to date"), "{}", text(&o));
    assert_eq!(fs::read(&file).expect("backup"), bytes);

    // The live daemon's own export says what the backup says.
    let live_export = dir.path().join("live.export");
    let o = cardd!(
        "audit",
        "export",
        "--connect",
        &addr,
        "--key",
        &owner_key,
        "--out",
        &live_export
    );
    assert_ok(&o, "live export");
    assert_eq!(verify_json(&live_export, &key_hex), backed_up);
    let cards = report_cards(&backed_up);
    assert_eq!(cards.len(), demo.manifest.cards.len());
    let original = cards_of(&mut bounded(demo.owner(d.addr)).await, &cards).await;

    // Restore into a new directory and serve it.
    let restored = dir.path().join("restored");
    let o = cardd!(
        "restore",
        "--data",
        &restored,
        "--server-key-file",
        demo.data.join("server.key"),
        &file
    );
    assert_ok(&o, "restore");
    let r = Daemon::start(&restored, &[]);
    let owner = read_key_file(&owner_key).expect("owner key");
    let mut owner_r = connect(r.addr, owner).await;
    assert_eq!(cards_of(&mut owner_r, &cards).await, original);
    let restored_export = dir.path().join("restored.export");
    let raddr = r.addr.to_string();
    let o = cardd!(
        "audit",
        "export",
        "--connect",
        &raddr,
        "--key",
        &owner_key,
        "--out",
        &restored_export
    );
    assert_ok(&o, "export of the restored daemon");
    assert_eq!(verify_json(&restored_export, &key_hex), backed_up);

    // The same chain goes on: the till knows where it stands, its next
    // purchase verifies across the restore, and the backup file grows.
    let till_key = read_key_file(&demo.terminal_key_path(0)).expect("till key");
    let mut till_r = connect(r.addr, till_key).await;
    assert_eq!(till_r.session.last_txn_id, 110);
    ok(&mut till_r, 111, purchase(&cards[1], 300)).await;
    let o = backup_online(&raddr, &owner_key, &file);
    assert_ok(&o, "incremental backup from the restored daemon");
    assert!(text(&o).contains("(1 new)"), "{}", text(&o));
    let o = cardd!(
        "audit",
        "verify",
        &file,
        "--server-key",
        &key_hex,
        "--old-checkpoint",
        &first_checkpoint
    );
    assert_ok(&o, "the backup across the restore extends the first");
    assert!(text(&o).contains("23 records"), "{}", text(&o));
}
