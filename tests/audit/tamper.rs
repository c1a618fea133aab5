//! Tampering: any single flipped bit is caught and blamed on the right
//! record; removed, swapped, duplicated, dropped, cut or added items fail.
use super::*;

/// Which record an export byte belongs to: `Some(n)` for record n's frame
/// and the checkpoint frame(s) after it, `None` for magic, header, trailer.
pub(crate) fn byte_owners(bytes: &[u8]) -> Vec<Option<u64>> {
    let mut owner = vec![None; bytes.len()];
    let mut last_record = 0u64;
    for f in frames(bytes) {
        let who = match &f.item {
            Item::Record(r) => {
                let seq = record_seq(r);
                assert_eq!(seq, last_record + 1, "records in order in the export");
                last_record = seq;
                Some(seq)
            }
            Item::Checkpoint(c) => {
                assert_eq!(
                    c.tree_size, last_record,
                    "checkpoint right after its record"
                );
                Some(last_record)
            }
            Item::Header(_) | Item::Trailer(_) => None,
        };
        owner[f.start..f.end].fill(who);
    }
    owner
}

pub(crate) fn flip(bytes: &[u8], at: usize, bit: u8) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 1 << bit;
    b
}

/// Flips one bit of every byte in `offsets` (in parallel) and returns the
/// offsets whose outcome breaks the rule: verification must fail, and a
/// flip in record N's frame or its checkpoint must be blamed on record N or
/// N+1 (N+1 when only the next record's link or the checkpoint notices).
/// A flipped file that verifies is reported unless `tolerated` accepts it.
pub(crate) fn flip_failures(
    bytes: &[u8],
    owners: &[Option<u64>],
    key: [u8; 32],
    offsets: &[usize],
    tolerated: &(dyn Fn(&[u8]) -> bool + Sync),
) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let chunk = offsets.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let jobs: Vec<_> = offsets
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for &at in part {
                        // Vary the bit so every bit position is exercised.
                        let bit = (at % 8) as u8;
                        let flipped = flip(bytes, at, bit);
                        match (owners[at], verify(&flipped, key, None)) {
                            (_, Ok(_)) if tolerated(&flipped) => {}
                            (_, Ok(r)) => bad.push(format!(
                                "byte {at} bit {bit} (record {:?}): verification passed ({} records)",
                                owners[at], r.records
                            )),
                            (Some(n), Err(e)) => {
                                if !matches!(e.seq, Some(s) if s == n || s == n + 1) {
                                    bad.push(format!(
                                        "byte {at} bit {bit} in record {n}'s frames: blamed {:?} ({e})",
                                        e.seq
                                    ));
                                }
                            }
                            (None, Err(_)) => {}
                        }
                    }
                    bad
                })
            })
            .collect();
        jobs.into_iter()
            .flat_map(|j| j.join().expect("flip thread"))
            .collect()
    })
}

/// The items of an export with the one field no signature covers and the
/// verifier does not check cleared: the header's `exported_at_ms`, which is
/// documented as informational. (The trailer keys' `store_id` is not
/// signed either, but the verifier checks it against the records, see
/// `changing_a_terminals_store_fails_and_the_export_time_is_informational`,
/// so a flip there must fail like any other.)
pub(crate) fn without_unchecked_fields(bytes: &[u8]) -> Option<Vec<Item>> {
    if bytes.get(..8) != Some(&EXPORT_MAGIC[..]) {
        return None;
    }
    let mut at = 8;
    let mut out = Vec::new();
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let body = bytes.get(at + 4..at + 4 + len)?;
        let mut item = ExportItem::decode(body).ok()?.item?;
        if let Item::Header(h) = &mut item {
            h.exported_at_ms = 0;
        }
        out.push(item);
        at += 4 + len;
    }
    Some(out)
}

/// Parses `VERIFY FAILED: record N` from the CLI's stderr.
pub(crate) fn blamed_record(err: &str) -> Option<u64> {
    let rest = &err[err.find("VERIFY FAILED: record ")? + "VERIFY FAILED: record ".len()..];
    rest.split(':').next()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------
// 2. Any single flipped bit is caught, and blamed on the right record.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn flipping_any_byte_of_records_or_checkpoints_fails_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, _demo, h, bytes, key) = mixed_export(dir.path(), FLIP_FILLER).await;
    verify(&bytes, key, None).expect("the untouched export verifies");
    assert_eq!(
        assemble(&items(&bytes)),
        bytes,
        "the framing parses and rewrites exactly"
    );
    let owners = byte_owners(&bytes);
    let body: Vec<usize> = (0..bytes.len()).filter(|&i| owners[i].is_some()).collect();
    assert!(
        body.len() > bytes.len() / 2,
        "records and checkpoints are most of the file"
    );
    assert_eq!(owners.iter().flatten().max(), Some(&h.last_seq));
    let bad = flip_failures(&bytes, &owners, key, &body, &|_| false);
    assert!(
        bad.is_empty(),
        "{} of {} flips broke the rule; first: {:#?}",
        bad.len(),
        body.len(),
        &bad[..bad.len().min(10)]
    );

    // Through the CLI: exit 1, and the message names the record.
    let key_hex = hex::encode(key);
    let fr = frames(&bytes);
    let pick = |seq: u64, checkpoint: bool| {
        let mut last = 0;
        fr.iter()
            .find(|f| match &f.item {
                Item::Record(r) => {
                    last = record_seq(r);
                    !checkpoint && last == seq
                }
                Item::Checkpoint(_) => checkpoint && last == seq,
                _ => false,
            })
            .map(|f| (f.start + f.end) / 2)
            .expect("frame")
    };
    for (seq, checkpoint) in [(20, false), (25, true), (h.last_seq - 3, false)] {
        let at = pick(seq, checkpoint);
        let file = dir.path().join(format!("flipped-{at}.export"));
        std::fs::write(&file, flip(&bytes, at, 3)).unwrap();
        let o = cardd!("audit", "verify", &file, "--server-key", &key_hex);
        assert_eq!(o.status.code(), Some(1), "flip at {at}: {}", stderr(&o));
        let blamed = blamed_record(&stderr(&o));
        assert!(
            matches!(blamed, Some(s) if s == seq || s == seq + 1),
            "flip at byte {at} (record {seq}, checkpoint {checkpoint}) blamed {blamed:?}: {}",
            stderr(&o)
        );
    }
}

#[tokio::test]
async fn flipping_any_byte_of_magic_header_or_trailer_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, _demo, _h, bytes, key) = mixed_export(dir.path(), FLIP_FILLER).await;
    let owners = byte_owners(&bytes);
    let edges: Vec<usize> = (0..bytes.len()).filter(|&i| owners[i].is_none()).collect();
    let header_end = frames(&bytes)[0].end;
    assert!(edges.len() > header_end + 100, "magic, header and trailer");
    // Every flip fails, except one that changes nothing but the export
    // time, which is informational (see the next test).
    let original = without_unchecked_fields(&bytes).expect("parses");
    let only_time = |flipped: &[u8]| without_unchecked_fields(flipped).as_ref() == Some(&original);
    let bad = flip_failures(&bytes, &owners, key, &edges, &only_time);
    assert!(
        bad.is_empty(),
        "{} of {} flips in magic/header/trailer broke the rule: {:#?}",
        bad.len(),
        edges.len(),
        bad
    );
}

#[tokio::test]
async fn changing_a_terminals_store_fails_and_the_export_time_is_informational() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, _demo, _h, bytes, key) = mixed_export(dir.path(), FLIP_FILLER).await;
    let all = items(&bytes);
    // The header's export time is unsigned and documented as informational
    // (docs/ledger-format.md): nothing an auditor relies on changes with it.
    let mut v = all.clone();
    if let Some(Item::Header(h)) = v.first_mut() {
        h.exported_at_ms ^= 1 << 20;
    }
    let time = verify(&assemble(&v), key, None);
    assert!(time.is_ok(), "the export time is not evidence");
    let mut v = all.clone();
    if let Some(Item::Trailer(t)) = v.last_mut() {
        let k = t
            .keys
            .iter_mut()
            .find(|k| k.signer == pb::Signer::Terminal as i32 && k.terminal_id == 1)
            .expect("terminal 1 listed");
        assert_eq!(k.store_id, 1, "the demo enrols terminal 1 in store 1");
        k.store_id = 2;
    }
    let store = verify(&assemble(&v), key, None);
    assert!(
        store.is_err(),
        "trailer lists terminal 1 in store 2: {:?}",
        store.map(|r| r.records)
    );
}

// ---------------------------------------------------------------------------
// 3. Structural tampering: removed, swapped, duplicated, dropped, cut, added.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn structural_tampering_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, _demo, h, bytes, key) = mixed_export(dir.path(), FULL_FILLER).await;
    let all = items(&bytes);
    verify(&assemble(&all), key, None).expect("reassembled export verifies");
    let index_of = |seq: u64| {
        all.iter()
            .position(|i| matches!(i, Item::Record(r) if record_seq(r) == seq))
            .expect("record in export")
    };
    let fails_at = |items: &[Item], what: &str| -> VerifyError {
        match verify(&assemble(items), key, None) {
            Ok(r) => panic!("{what}: verified ({} records)", r.records),
            Err(e) => e,
        }
    };

    // Records 18..=27 were written one at a time (each has its own
    // checkpoint); 28..=39 came concurrently (maybe several per checkpoint).
    // Removing record 25's frame only: its checkpoint now follows record 24.
    let mut v = all.clone();
    v.remove(index_of(25));
    let e = fails_at(&v, "record 25 removed");
    assert!(matches!(e.seq, Some(24 | 25)), "{e}");
    // Removing record 25 and the checkpoint after it: 26 sits where 25 should.
    let mut v = all.clone();
    let i = index_of(25);
    assert!(matches!(v[i + 1], Item::Checkpoint(_)));
    v.drain(i..i + 2);
    assert_eq!(
        fails_at(&v, "record 25 and checkpoint removed").seq,
        Some(25)
    );
    // Swapping records 20 and 21 (with or without their checkpoints), and
    // two records of the concurrent wave.
    let mut v = all.clone();
    let (a, b) = (index_of(20), index_of(21));
    v.swap(a, b);
    assert_eq!(fails_at(&v, "records 20 and 21 swapped").seq, Some(20));
    let mut v = all.clone();
    v.swap(a, b);
    v.swap(a + 1, b + 1);
    assert_eq!(
        fails_at(&v, "records 20 and 21 swapped with checkpoints").seq,
        Some(20)
    );
    let mut v = all.clone();
    let (x, y) = (index_of(32), index_of(33));
    v.swap(x, y);
    assert_eq!(fails_at(&v, "records 32 and 33 swapped").seq, Some(32));
    // Duplicating record 20, before and after its checkpoint, and at the end.
    let mut v = all.clone();
    v.insert(a + 1, all[a].clone());
    assert_eq!(fails_at(&v, "record 20 duplicated").seq, Some(21));
    let mut v = all.clone();
    v.insert(a + 2, all[a].clone());
    assert_eq!(
        fails_at(&v, "record 20 duplicated after its checkpoint").seq,
        Some(21)
    );
    let mut v = all.clone();
    let last_record = v.len() - 3;
    assert!(matches!(&v[last_record], Item::Record(r) if record_seq(r) == h.last_seq));
    v.insert(last_record + 2, all[last_record].clone());
    assert_eq!(
        fails_at(&v, "last record duplicated").seq,
        Some(h.last_seq + 1)
    );
    // A checkpoint repeated later does not describe the chain there.
    let mut v = all.clone();
    let cp = all[a + 1].clone();
    v.insert(b + 1, cp);
    assert_eq!(
        fails_at(&v, "checkpoint 20 repeated after 21").seq,
        Some(21)
    );
    // Dropping the last checkpoint leaves the last record uncovered.
    let mut v = all.clone();
    let last_cp = v
        .iter()
        .rposition(|i| matches!(i, Item::Checkpoint(_)))
        .expect("a checkpoint");
    v.remove(last_cp);
    let e = fails_at(&v, "last checkpoint dropped");
    assert_eq!(e.seq, Some(h.last_seq), "{e}");
    // The header and trailer counts are checked too.
    let mut v = all.clone();
    if let Some(Item::Trailer(t)) = v.last_mut() {
        t.checkpoints -= 1;
    }
    fails_at(&v, "trailer checkpoint count off by one");

    // Truncation anywhere, down to the magic bytes, fails.
    let mut cut = (9..bytes.len()).step_by(61).collect::<Vec<_>>();
    cut.extend([0, 4, 8, bytes.len() - 1, bytes.len() - 4]);
    for len in cut {
        assert!(
            verify(&bytes[..len], key, None).is_err(),
            "truncated to {len} of {} bytes verified",
            bytes.len()
        );
    }
    // Anything after the trailer fails: one byte, a frame of garbage, a
    // well-formed item.
    let mut more = bytes.clone();
    more.push(0);
    assert!(
        verify(&more, key, None).is_err(),
        "one byte after the trailer"
    );
    let mut more = bytes.clone();
    more.extend_from_slice(&8u32.to_be_bytes());
    more.extend_from_slice(b"garbage!");
    assert!(
        verify(&more, key, None).is_err(),
        "garbage frame after the trailer"
    );
    let mut more = bytes.clone();
    write_item(&mut more, all[all.len() - 2].clone()).unwrap();
    assert!(
        verify(&more, key, None).is_err(),
        "a checkpoint after the trailer"
    );
    let mut more = bytes.clone();
    write_item(&mut more, all[all.len() - 1].clone()).unwrap();
    assert!(verify(&more, key, None).is_err(), "a second trailer");
    // And an empty file or a foreign key.
    assert!(verify(b"", key, None).is_err());
    let mut other = key;
    other[0] ^= 1;
    assert!(
        verify(&bytes, other, None).is_err(),
        "a different trusted server key"
    );
}

/// What an export cannot prove: its header and trailer are not signed, so
/// whoever holds the file can cut it at an older checkpoint and mend the
/// counts, and it still verifies (docs/security.md). The report says how
/// far the signatures reach: the newest checkpoint's signed time.
#[tokio::test]
async fn a_cut_at_a_checkpoint_verifies_and_the_report_names_its_signed_time() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, _demo, _h, bytes, key) = mixed_export(dir.path(), FULL_FILLER).await;
    let all = items(&bytes);
    let whole = verify(&bytes, key, None).expect("the export verifies");
    let last = whole.last_checkpoint.clone().expect("a checkpoint");
    assert_eq!(whole.signed_through_ms, last.time_ms);
    // Cut after the checkpoint of the record 10 before the end.
    let keep = all
        .iter()
        .position(|i| matches!(i, Item::Checkpoint(c) if c.tree_size == whole.records - 10))
        .expect("a checkpoint 10 records before the end");
    let Item::Checkpoint(kept) = all[keep].clone() else {
        unreachable!()
    };
    let mut cut: Vec<Item> = all[..=keep].to_vec();
    let checkpoints = cut
        .iter()
        .filter(|i| matches!(i, Item::Checkpoint(_)))
        .count();
    if let Some(Item::Header(h)) = cut.first_mut() {
        h.tree_size = kept.tree_size;
    }
    let Some(Item::Trailer(mut trailer)) = all.last().cloned() else {
        panic!("no trailer")
    };
    trailer.records = kept.tree_size;
    trailer.checkpoints = checkpoints as u64;
    cut.push(Item::Trailer(trailer));
    let r = verify(&assemble(&cut), key, None).expect("a cut at a checkpoint verifies");
    assert_eq!(r.records, whole.records - 10);
    assert_eq!(r.signed_through_ms, kept.time_ms);
    assert!(r.signed_through_ms <= whole.signed_through_ms);
}
