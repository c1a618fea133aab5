//! Consistency between checkpoints, and a forked history.
use super::*;

/// `cardd audit consistency OLD NEW --server-key KEY PROOF…`, where PROOF
/// says where the consistency proof comes from ([`from_export`],
/// [`from_daemon`]).
fn consistency(old: &Path, new: &Path, key_hex: &str, proof: &[OsString]) -> Output {
    let mut args: Vec<OsString> =
        vec!["audit".into(), "consistency".into(), old.into(), new.into()];
    args.extend(["--server-key".into(), key_hex.into()]);
    args.extend(proof.iter().cloned());
    run_cardd(args)
}

/// The proof read from an export file.
fn from_export(export: &Path) -> Vec<OsString> {
    vec!["--export".into(), export.into()]
}

/// The proof asked of a running daemon with the owner's key.
fn from_daemon(addr: &str, owner_key: &Path) -> Vec<OsString> {
    vec![
        "--connect".into(),
        addr.into(),
        "--key".into(),
        owner_key.into(),
    ]
}

/// `cardd audit verify EXPORT --server-key KEY --old-checkpoint OLD`.
fn verify_extending(export: &Path, key_hex: &str, old: &Path) -> Output {
    cardd!(
        "audit",
        "verify",
        export,
        "--server-key",
        key_hex,
        "--old-checkpoint",
        old
    )
}

// ---------------------------------------------------------------------------
// 4. Consistency between checkpoints, and a forked history.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn consistency_holds_along_history_and_fails_across_a_fork() {
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    let (mut a, demo_a) = Daemon::demo(&a_dir);
    let key_hex = server_key_hex(&demo_a.data);
    let cards = demo_a.manifest.cards.clone();
    {
        let mut t1 = demo_a.terminal(a.addr, 0).await;
        ok(&mut t1, 100, purchase(&cards[0], 1_000)).await;
        ok(&mut t1, 101, top_up(&cards[1], 20_000)).await;
    }
    let (_e1, c1) = cli_export_and_save(dir.path(), "e1", a.addr, &demo_a, &key_hex, None);
    let c1_size = read_checkpoint(&c1).tree_size;
    assert_eq!(c1_size, DEMO_RECORDS + 2);

    // Fork: copy the data directory of the stopped daemon, then run both.
    a.kill9();
    copy_dir(&demo_a.data, &b_dir.join("data"));
    let a = Daemon::start(&demo_a.data, &[]);
    let b = Daemon::start(&b_dir.join("data"), &[]);
    let demo_b = Demo::load(&b_dir.join("data"));
    assert_eq!(
        server_key_hex(&demo_b.data),
        key_hex,
        "the fork has the same server key"
    );

    // The same number of records on each side, different operations.
    {
        let mut t1 = demo_a.terminal(a.addr, 0).await;
        let mut t2 = demo_a.terminal(a.addr, 1).await;
        ok(&mut t1, 102, purchase(&cards[2], 700)).await;
        ok(&mut t2, 1, purchase(&cards[3], 800)).await;
        ok(&mut t1, 103, purchase(&cards[4], 900)).await;
        ok(&mut t2, 2, top_up(&cards[0], 5_000)).await;
    }
    {
        let mut t1 = demo_b.terminal(b.addr, 0).await;
        ok(&mut t1, 102, purchase(&cards[2], 29_000)).await;
        ok(&mut t1, 103, purchase(&cards[3], 100)).await;
        ok(&mut t1, 104, top_up(&cards[4], 70_000)).await;
        ok(&mut t1, 105, purchase(&cards[0], 55)).await;
    }
    let (e2, c2) = cli_export_and_save(dir.path(), "e2", a.addr, &demo_a, &key_hex, Some(&c1));
    let (e2f, c2f) = cli_export_and_save(dir.path(), "e2f", b.addr, &demo_b, &key_hex, Some(&c1));
    let (cp2, cp2f) = (read_checkpoint(&c2), read_checkpoint(&c2f));
    assert_eq!(cp2.tree_size, c1_size + 4);
    assert_eq!(
        cp2f.tree_size, cp2.tree_size,
        "equal sizes: the fork is not a size mismatch"
    );
    assert_ne!(cp2.root_hash, cp2f.root_hash);

    let a_addr = a.addr.to_string();
    let b_addr = b.addr.to_string();
    let a_owner = demo_a.owner_key_path();
    let b_owner = demo_b.owner_key_path();
    // Along one history: consistent, from the export and from the daemon.
    let o = consistency(&c1, &c2, &key_hex, &from_export(&e2));
    assert_ok(&o, "consistency c1 c2 --export e2");
    assert!(stdout(&o).contains("consistent"), "{}", stdout(&o));
    let o = consistency(&c1, &c2, &key_hex, &from_daemon(&a_addr, &a_owner));
    assert_ok(&o, "consistency c1 c2 --connect a");
    // The fork also extends c1 (its common past).
    let o = consistency(&c1, &c2f, &key_hex, &from_export(&e2f));
    assert_ok(&o, "consistency c1 c2' --export e2'");
    let o = consistency(&c2, &c2, &key_hex, &from_export(&e2));
    assert_ok(&o, "consistency c2 c2");

    // Across the fork: refused.
    let o = consistency(&c1, &c2f, &key_hex, &from_export(&e2));
    let err = assert_fails(&o, "consistency c1 c2' --export e2");
    assert!(err.contains("INCONSISTENT"), "{err}");
    let o = consistency(&c1, &c2f, &key_hex, &from_daemon(&a_addr, &a_owner));
    assert!(assert_fails(&o, "consistency c1 c2' --connect a").contains("INCONSISTENT"));
    for (what, proof) in [
        ("--export e2", from_export(&e2)),
        ("--export e2'", from_export(&e2f)),
        ("--connect b", from_daemon(&b_addr, &b_owner)),
    ] {
        for (old, new) in [(&c2, &c2f), (&c2f, &c2)] {
            let o = consistency(old, new, &key_hex, &proof);
            let err = assert_fails(&o, &format!("consistency {old:?} {new:?} {what}"));
            assert!(err.contains("INCONSISTENT"), "{what}: {err}");
        }
    }

    // Verifying an export against a forked checkpoint fails.
    let o = verify_extending(&e2, &key_hex, &c2f);
    let err = assert_fails(&o, "verify e2 --old-checkpoint c2'");
    assert!(err.contains("VERIFY FAILED"), "{err}");
    let e2_bytes = std::fs::read(&e2).unwrap();
    let e2f_bytes = std::fs::read(&e2f).unwrap();
    let key = parse_public_key(&hex::decode(&key_hex).unwrap())
        .unwrap()
        .to_bytes();
    // A forked checkpoint from the middle of the fork is caught where the
    // histories part.
    let mid = items(&e2f_bytes)
        .into_iter()
        .find_map(|i| match i {
            Item::Checkpoint(c) if c.tree_size == c1_size + 2 => Some(c),
            _ => None,
        })
        .expect("a checkpoint inside the fork");
    let e = verify(&e2_bytes, key, Some(mid.clone())).expect_err("forked mid checkpoint");
    assert_eq!(e.seq, Some(c1_size + 2), "{e}");
    let mid_file = dir.path().join("mid.checkpoint");
    std::fs::write(&mid_file, mid.encode_to_vec()).unwrap();
    let o = verify_extending(&e2, &key_hex, &mid_file);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        blamed_record(&stderr(&o)),
        Some(c1_size + 2),
        "{}",
        stderr(&o)
    );
    // ... while the real c1 is extended by both.
    let r = verify(&e2_bytes, key, Some(read_checkpoint(&c1))).expect("e2 extends c1");
    assert_eq!(r.extends_old_checkpoint, Some(true));
    let r = verify(&e2f_bytes, key, Some(read_checkpoint(&c1))).expect("e2' extends c1");
    assert_eq!(r.extends_old_checkpoint, Some(true));

    // A checkpoint with a tampered signature is refused.
    let mut bad = cp2.clone();
    bad.signature[10] ^= 0x40;
    let bad_file = dir.path().join("bad.checkpoint");
    std::fs::write(&bad_file, bad.encode_to_vec()).unwrap();
    let o = consistency(&c1, &bad_file, &key_hex, &from_export(&e2));
    assert!(assert_fails(&o, "consistency c1 c2(bad sig)").contains("signature"));
    let o = consistency(&bad_file, &c2, &key_hex, &from_export(&e2));
    assert!(assert_fails(&o, "consistency c2(bad sig) c2").contains("signature"));
    let o = verify_extending(&e2, &key_hex, &bad_file);
    assert_fails(&o, "verify --old-checkpoint with a bad signature");
    let e = verify(&e2_bytes, key, Some(bad)).expect_err("bad old checkpoint signature");
    assert!(e.what.contains("signature"), "{e}");
    // A signed field changed under a valid signature: the same.
    let mut moved = cp2.clone();
    moved.time_ms += 1;
    assert!(verify(&e2_bytes, key, Some(moved)).is_err());
}
