//! A damaged backup is refused by both commands and left as it was; a
//! restore refuses a non-empty directory and a server key that did not
//! sign the backup.
use std::fs;
use std::path::PathBuf;

use common::{bounded, Daemon};

use super::*;

/// The files a refused run must not leave behind.
fn leftovers(path: &Path) -> Vec<PathBuf> {
    [".part", ".tmp", ".restoring"]
        .iter()
        .map(|s| {
            let mut name = path.file_name().expect("name").to_os_string();
            name.push(s);
            path.with_file_name(name)
        })
        .filter(|p| p.exists())
        .collect()
}

#[tokio::test]
async fn damaged_backups_and_wrong_targets_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let addr = d.addr.to_string();
    let owner_key = demo.owner_key_path();
    let server_key_file = demo.data.join("server.key");
    let key_hex = hex::encode(bounded(demo.owner(d.addr)).await.server_key);
    let good = dir.path().join("good.cardd-backup");
    assert_ok(&backup_online(&addr, &owner_key, &good), "backup");
    let bytes = fs::read(&good).expect("backup");

    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    let truncated = bytes[..bytes.len() - 10].to_vec();
    for (name, content) in [("flipped", flipped), ("truncated", truncated)] {
        let file = dir.path().join(format!("{name}.cardd-backup"));
        fs::write(&file, &content).expect("write");
        let o = backup_online(&addr, &owner_key, &file);
        let out = assert_fails(&o, &format!("backup onto the {name} file"));
        assert!(out.contains("does not verify"), "{name}: {out}");
        assert_eq!(fs::read(&file).expect("file"), content, "{name} changed");
        assert_eq!(leftovers(&file), Vec::<PathBuf>::new());

        let target = dir.path().join(format!("restore-{name}"));
        let o = cardd!(
            "restore",
            "--data",
            &target,
            "--server-key-file",
            &server_key_file,
            &good,
            &file
        );
        let out = assert_fails(&o, &format!("restore from the {name} file"));
        assert!(out.contains("does not verify"), "{name}: {out}");
        assert!(
            !target.exists(),
            "{name}: restore left {}",
            target.display()
        );
        assert_eq!(leftovers(&target), Vec::<PathBuf>::new());
    }

    // A directory that holds anything is not restored into.
    let busy = dir.path().join("busy");
    fs::create_dir(&busy).expect("mkdir");
    fs::write(busy.join("keep.txt"), b"mine").expect("write");
    let o = cardd!(
        "restore",
        "--data",
        &busy,
        "--server-key-file",
        &server_key_file,
        &good
    );
    let out = assert_fails(&o, "restore into a non-empty directory");
    assert!(out.contains("not an empty directory"), "{out}");
    assert_eq!(fs::read(busy.join("keep.txt")).expect("kept"), b"mine");
    assert_eq!(fs::read_dir(&busy).expect("busy").count(), 1);

    // Another server's key did not sign these checkpoints.
    let other_key = dir.path().join("other.key");
    assert_ok(&cardd!("keygen", "--out", &other_key), "keygen");
    let fresh = dir.path().join("fresh");
    let o = cardd!(
        "restore",
        "--data",
        &fresh,
        "--server-key-file",
        &other_key,
        &good
    );
    let out = assert_fails(&o, "restore with another server key");
    assert!(
        out.contains("not by the key in the server key file"),
        "{out}"
    );
    assert!(!fresh.exists());

    // The refusals changed nothing: the good backup still verifies and
    // restores into an empty directory.
    assert_eq!(fs::read(&good).expect("good"), bytes);
    fs::create_dir(&fresh).expect("mkdir");
    let o = cardd!(
        "restore",
        "--data",
        &fresh,
        "--server-key-file",
        &server_key_file,
        &good
    );
    assert_ok(&o, "restore of the good backup");
    assert_eq!(server_key_hex(&fresh), key_hex);

    // A data directory that is a link to another disk: restored there,
    // the link kept.
    let disk = dir.path().join("disk");
    fs::create_dir(&disk).expect("mkdir");
    let link = dir.path().join("var-lib-cardd");
    std::os::unix::fs::symlink("disk", &link).expect("symlink");
    let o = cardd!(
        "restore",
        "--data",
        &link,
        "--server-key-file",
        &server_key_file,
        &good
    );
    assert_ok(&o, "restore through a link");
    assert!(
        fs::symlink_metadata(&link).expect("link").is_symlink(),
        "the link was replaced"
    );
    assert_eq!(server_key_hex(&disk), key_hex, "restored onto the disk");
}

/// A daemon whose history forked before the backup's newest checkpoint
/// (same server key, same brand, other records) is not appended: the
/// consistency proof fails and the file stays as it was.
#[tokio::test]
async fn a_forked_history_is_not_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    drop(d);
    let fork = dir.path().join("fork");
    common::copy_dir(&demo.data, &fork);
    let owner_key = demo.owner_key_path();
    let file = dir.path().join("brand-1.cardd-backup");

    let a = Daemon::start(&demo.data, &[]);
    let mut till = bounded(demo.terminal(a.addr, 0)).await;
    common::ok(
        &mut till,
        100,
        common::purchase(&demo.manifest.cards[0], 100),
    )
    .await;
    assert_ok(
        &backup_online(&a.addr.to_string(), &owner_key, &file),
        "backup of A",
    );
    let bytes = fs::read(&file).expect("backup");

    let b = Daemon::start(&fork, &[]);
    let till_key = cardd::crypto::read_key_file(&demo.terminal_key_path(0)).expect("key");
    let mut till = common::connect(b.addr, till_key).await;
    for txn in 100..102 {
        common::ok(
            &mut till,
            txn,
            common::purchase(&demo.manifest.cards[1], 200),
        )
        .await;
    }
    let o = backup_online(&b.addr.to_string(), &owner_key, &file);
    let out = assert_fails(&o, "backup of the fork onto A's file");
    assert!(out.contains("INCONSISTENT"), "{out}");
    assert_eq!(fs::read(&file).expect("backup"), bytes);
    assert_eq!(leftovers(&file), Vec::<PathBuf>::new());
}
