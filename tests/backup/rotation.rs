//! Backups across a server key rotation: a backup file keeps its chain's
//! first server key as its anchor, runs after the rotation append to it
//! (the owner's online backup and the operator's offline one alike), and
//! a restore takes the key the chain leads to, not an older one.
use common::{bounded, ok, purchase, Daemon};

use super::*;

#[tokio::test]
async fn backups_go_on_across_a_server_key_rotation_and_restore_under_the_new_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let data = demo.data.clone();
    let online = dir.path().join("owner.cardd-backup");
    let owner_backup = |addr: &str| backup_online(addr, &demo.owner_key_path(), &online);
    let mut till = bounded(demo.terminal(d.addr, 0)).await;
    ok(&mut till, 100, purchase(&demo.manifest.cards[0], 700)).await;
    assert_ok(&owner_backup(&d.addr.to_string()), "owner's first backup");
    drop((till, d));
    let offline = dir.path().join("backups");
    let operator_backup = || cardd!("backup", "--data", &data, "--out-dir", &offline);
    assert_ok(&operator_backup(), "operator's first backup");
    let first = server_key_hex(&data);
    let old_key = dir.path().join("old-server.key");
    std::fs::copy(data.join("server.key"), &old_key).expect("copy of the old key");
    assert_ok(&cardd!("rotate-server-key", "--data", &data), "rotation");
    assert_ne!(server_key_hex(&data), first);

    // After the rotation: one more purchase, then both backups run again.
    let d = Daemon::start(&data, &[]);
    let mut till = bounded(demo.terminal(d.addr, 0)).await;
    ok(&mut till, 101, purchase(&demo.manifest.cards[1], 900)).await;
    let o = owner_backup(&d.addr.to_string());
    assert_ok(&o, "owner's backup after the rotation");
    let mut owner = bounded(demo.owner(d.addr)).await;
    let cards = cards_of(&mut owner, &demo.manifest.cards).await;
    drop((till, owner, d));
    assert_ok(&operator_backup(), "operator's backup after the rotation");
    let file = offline.join("brand-1.cardd-backup");
    // 17 demo records, a purchase, the rotation, a purchase: each file
    // holds all of them and verifies from the first key.
    for f in [&file, &online] {
        assert_eq!(verify_json(f, &first)["records"], 20, "{}", f.display());
    }

    // Restored under the old key, the chain would be signed by a key it
    // has left: refused. Under the key it leads to: the same cards, and
    // the chain goes on.
    let refused = dir.path().join("refused");
    let o = cardd!(
        "restore",
        "--data",
        &refused,
        "--server-key-file",
        &old_key,
        &file
    );
    let said = assert_fails(&o, "restore under the old key");
    assert!(said.contains("after its rotations"), "{said}");
    assert!(!refused.exists());
    for (name, f) in [("restored", &file), ("restored-online", &online)] {
        let restored = dir.path().join(name);
        let key = data.join("server.key");
        let o = cardd!("restore", "--data", &restored, "--server-key-file", &key, f);
        assert_ok(&o, "restore under the new key");
        let r = Daemon::start(&restored, &[]);
        let mut owner = bounded(demo.owner(r.addr)).await;
        assert_eq!(cards_of(&mut owner, &demo.manifest.cards).await, cards);
        let mut till = bounded(demo.terminal(r.addr, 0)).await;
        ok(&mut till, 102, purchase(&demo.manifest.cards[2], 100)).await;
    }
}
