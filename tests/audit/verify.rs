//! A valid export verifies and its replay equals the live daemon; the
//! offline export equals the online one.
use super::*;

// ---------------------------------------------------------------------------
// 1. A valid export verifies, and its replay equals the live daemon.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn export_verifies_and_replay_equals_the_live_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, h, bytes, key) = mixed_export(dir.path(), FULL_FILLER).await;
    assert_eq!(server_key_hex(&demo.data), hex::encode(key));

    let report = verify(&bytes, key, None).expect("a valid export verifies");
    assert_eq!(report.brand_id, demo.manifest.brand_id);
    assert_eq!(report.brand_name, "Demo Coffee");
    assert_eq!(report.records, h.last_seq);
    assert!(h.last_seq >= DEMO_RECORDS + 30, "a few dozen operations");
    let n_checkpoints = items(&bytes)
        .iter()
        .filter(|i| matches!(i, Item::Checkpoint(_)))
        .count() as u64;
    assert_eq!(report.checkpoints, n_checkpoints);
    let last = report.last_checkpoint.as_ref().expect("newest checkpoint");
    assert_eq!(last.tree_size, h.last_seq);
    assert_eq!(hex::encode(&last.root_hash), report.root_hash);
    assert_eq!(hex::encode(&last.head_hash), report.head_hash);

    // Every card: the replay equals what the owner sees live.
    let c = &demo.manifest.cards;
    let mut owner = demo.owner(d.addr).await;
    assert_eq!(report.cards.len(), 6, "five demo cards and one replacement");
    let (mut live_paid, mut live_bonus) = (0i128, 0i128);
    for card in &report.cards {
        let v = inquiry(&mut owner, &card.card).await;
        assert_eq!(
            (
                v.paid_balance_minor,
                v.bonus_balance_minor,
                v.points,
                v.tier.as_str(),
                status_name(&v)
            ),
            (
                card.paid_minor,
                card.bonus_minor,
                card.points,
                card.tier.as_str(),
                card.status.as_str()
            ),
            "card {}: live vs replayed (paid, bonus, points, tier, status)",
            card.card
        );
        live_paid += i128::from(v.paid_balance_minor);
        live_bonus += i128::from(v.bonus_balance_minor);
    }
    let by_number = |n: &str| {
        report
            .cards
            .iter()
            .find(|x| x.card == n)
            .expect("card in report")
    };
    assert_eq!(by_number(&c[2]).status, "REPLACED");
    assert_eq!(
        (by_number(&c[2]).paid_minor, by_number(&c[2]).bonus_minor),
        (0, 0)
    );
    assert_eq!(by_number(&c[4]).status, "BLOCKED");
    assert_eq!(by_number(&c[1]).status, "ACTIVE");
    assert_eq!(by_number(&h.new_card).status, "ACTIVE");
    assert!(
        by_number(&h.new_card).paid_minor > 0,
        "value moved to the new card"
    );
    assert!(
        report.cards.iter().any(|x| x.tier == "gold"),
        "the new rules made someone gold: {:?}",
        report.cards
    );

    // Totals: the flows the replies reported, and money conserved.
    let t = &report.totals;
    assert_eq!(t.loaded_paid_minor, h.loaded);
    assert_eq!(t.bonus_granted_minor, h.bonus);
    assert_eq!(t.spent_minor, h.spent);
    assert_eq!(t.refunded_minor, 3_000);
    assert_eq!(t.refunded_minor, h.refunded);
    assert_eq!(t.reversed_net_minor, 10_000);
    assert_eq!(t.reversed_net_minor, h.reversed_net);
    assert_eq!(
        t.loaded_paid_minor + t.bonus_granted_minor - t.spent_minor
            + t.refunded_minor
            + t.reversed_net_minor,
        t.outstanding_paid_minor + t.outstanding_bonus_minor
    );
    assert_eq!(
        (t.outstanding_paid_minor, t.outstanding_bonus_minor),
        (live_paid, live_bonus)
    );

    // The CLI: export, verify as JSON, and compare with the live daemon.
    let key_hex = hex::encode(key);
    let file = dir.path().join("ledger.export");
    let addr = d.addr.to_string();
    let owner_key = demo.owner_key_path();
    let o = cardd!(
        "audit",
        "export",
        "--connect",
        &addr,
        "--key",
        &owner_key,
        "--out",
        &file
    );
    assert_ok(&o, "audit export --connect");
    let o = cardd!("audit", "verify", &file, "--server-key", &key_hex, "--json");
    assert_ok(&o, "audit verify --json");
    let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(json["records"], h.last_seq);
    assert_eq!(json["root_hash"], report.root_hash.as_str());
    assert_eq!(json["cards"].as_array().map(Vec::len), Some(6));
    // Asked twice: the second answer must see what the daemon did since.
    let compare = || {
        cardd!(
            "audit",
            "verify",
            &file,
            "--server-key",
            &key_hex,
            "--compare",
            &addr,
            "--key",
            &owner_key
        )
    };
    let o = compare();
    assert_ok(&o, "audit verify --compare");
    assert!(stderr(&o).contains("all 6 cards match"), "{}", stderr(&o));

    // The comparison is real: once the daemon moves on, it differs (exit 3).
    let mut t1 = demo.terminal(d.addr, 0).await;
    ok(&mut t1, 500, purchase(&c[0], 100)).await;
    let o = compare();
    assert_eq!(
        o.status.code(),
        Some(3),
        "stale export vs live daemon: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains(&format!("DIFFERS: {}", c[0])),
        "{}",
        stderr(&o)
    );
}

// ---------------------------------------------------------------------------
// 6. Offline export equals online export.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn offline_export_equals_online_export() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, demo) = Daemon::demo(dir.path());
    let cards = demo.manifest.cards.clone();
    {
        let mut t1 = demo.terminal(d.addr, 0).await;
        let mut t2 = demo.terminal(d.addr, 1).await;
        for i in 0..6u64 {
            ok(
                &mut t1,
                100 + i,
                purchase(&cards[i as usize % 5], 111 * (i as i64 + 1)),
            )
            .await;
            ok(&mut t2, 1 + i, top_up(&cards[(i as usize + 2) % 5], 1_000)).await;
        }
    }
    let online = export_online(d.addr, &demo).await;
    let key = demo.owner(d.addr).await.server_key;
    let brand = demo.manifest.brand_id;
    d.kill9();

    let file = dir.path().join("offline.export");
    let o = cardd!(
        "audit",
        "export",
        "--data",
        &demo.data,
        "--brand",
        &brand.to_string(),
        "--out",
        &file
    );
    assert_ok(&o, "audit export --data --brand");
    let offline = std::fs::read(&file).unwrap();
    let library = {
        let store = cardd::storage::DiskStore::open(&demo.data).expect("open the stopped ledger");
        let mut out = Vec::new();
        let summary = cardd::audit::write_export(&store, brand, &key, &mut out, |_, _| {})
            .expect("library export");
        assert_eq!(summary.records, DEMO_RECORDS + 12);
        out
    };

    let strip_time = |bytes: &[u8]| -> Vec<Item> {
        let mut v = items(bytes);
        match v.first_mut() {
            Some(Item::Header(h)) => {
                assert!(h.exported_at_ms > 0);
                h.exported_at_ms = 0;
            }
            other => panic!("export starts with {other:?}"),
        }
        v
    };
    let on = strip_time(&online);
    for (what, other) in [("cli --data", &offline), ("library", &library)] {
        let off = strip_time(other);
        assert_eq!(off.len(), on.len(), "{what}: number of items");
        for (i, (a, b)) in on.iter().zip(&off).enumerate() {
            assert_eq!(a, b, "{what}: item {i}");
        }
        // Byte-identical after the header frame.
        let skip = |b: &[u8]| frames(b)[0].end;
        assert_eq!(
            &online[skip(&online)..],
            &other[skip(other)..],
            "{what}: bytes after the header"
        );
        let r = verify(other, key, None).expect("offline export verifies");
        assert_eq!(r.records, DEMO_RECORDS + 12);
    }
    let records = on.iter().filter(|i| matches!(i, Item::Record(_))).count() as u64;
    assert_eq!(records, DEMO_RECORDS + 12);
}

// ---------------------------------------------------------------------------
// 7. A till's request with explicit proto3 defaults (issue 24).
// ---------------------------------------------------------------------------

/// protobufjs 7 writes every field the application set, defaults included.
/// The daemon serves such a request and keeps its exact bytes; the auditor's
/// replay applies the same acceptance rule and reaches the live balance.
#[tokio::test]
async fn a_request_with_explicit_defaults_replays_to_the_live_balance() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone(); // paid 100.00
    let mut t = demo.terminal(d.addr, 0).await;
    let bytes = common::raw::explicit_defaults_purchase(100, demo.manifest.brand_id, &card, 1_234);
    let sig = cardd::crypto::sign_request(t.key(), &bytes);
    let r = bounded(t.call_signed(bytes.clone(), sig))
        .await
        .expect("served");
    let live = inquiry(&mut t, &card).await;
    assert_eq!(live.paid_balance_minor, 10_000 - 1_234);

    let export = export_online(d.addr, &demo).await;
    let key: [u8; 32] = hex::decode(server_key_hex(&demo.data))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let report = verify(&export, key, None).expect("the export verifies");
    let stored = items(&export)
        .iter()
        .filter_map(|i| match i {
            Item::Record(b) => Some(pb::Record::decode(b.as_slice()).expect("record")),
            _ => None,
        })
        .find(|rec| rec.seq == seq(&r))
        .expect("the purchase's record");
    assert_eq!(
        stored.request, bytes,
        "the record keeps the exact signed bytes"
    );
    let replayed = report
        .cards
        .iter()
        .find(|c| c.card == card)
        .expect("card replayed");
    assert_eq!(
        (replayed.paid_minor, replayed.bonus_minor, replayed.points),
        (
            live.paid_balance_minor,
            live.bonus_balance_minor,
            live.points
        )
    );
}
