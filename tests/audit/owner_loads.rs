//! Owner loads and sales below face value (issue 25) in the auditor's
//! export: channel, reference and both figures on the record, and a replay
//! that reaches the live balances.
use super::*;

/// A top-up request of `amount` through `channel` at `price` (0 = face).
fn load(card: &str, amount: i64, channel: pb::Channel, reference: &str, price: i64) -> Op {
    Op::TopUp(pb::TopUp {
        card: card.into(),
        amount_minor: amount,
        channel: channel as u32,
        reference: reference.into(),
        no_bonus: false,
        price_minor: price,
    })
}

/// The export's records, decoded.
fn records(bytes: &[u8]) -> Vec<pb::Record> {
    items(bytes)
        .iter()
        .filter_map(|i| match i {
            Item::Record(b) => Some(pb::Record::decode(b.as_slice()).expect("record")),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn owner_loads_are_in_the_export_and_replay_to_the_live_balances() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let c = demo.manifest.cards.clone();
    let mut owner = demo.owner(d.addr).await;
    let head = ok(
        &mut owner,
        11,
        load(&c[0], 50_000, pb::Channel::HeadOffice, "CALL-17", 0),
    )
    .await;
    let mut net = pb::TopUp {
        card: c[1].clone(),
        amount_minor: 100_000,
        channel: pb::Channel::Corporate as u32,
        reference: "ACME PO 4411".into(),
        no_bonus: true,
        price_minor: 0,
    };
    let corp = ok(&mut owner, 12, Op::TopUp(net.clone())).await;
    let online = ok(
        &mut owner,
        13,
        load(&c[2], 100_000, pb::Channel::Online, "WEB-1", 90_000),
    )
    .await;
    ok(&mut owner, 14, set_blocked(&c[3], true)).await;
    net.card = c[3].clone();
    let refused = call(&mut owner, 15, Op::TopUp(net)).await;
    assert_eq!(refused.unwrap_err(), pb::ErrorCode::CardBlocked);
    let mut till = demo.terminal(d.addr, 0).await;
    let below = ok(
        &mut till,
        100,
        load(&c[4], 10_000, pb::Channel::Store, "", 9_500),
    )
    .await;
    ok(&mut till, 101, purchase(&c[0], 55_000)).await;

    let export = export_online(d.addr, &demo).await;
    let key: [u8; 32] = hex::decode(server_key_hex(&demo.data))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let report = verify(&export, key, None).expect("the export verifies");
    let recs = records(&export);
    let rec = |r: &pb::Reply| {
        recs.iter()
            .find(|x| x.seq == seq(r))
            .expect("in export")
            .clone()
    };
    let h = rec(&head);
    assert_eq!(
        (
            h.signer(),
            h.store_id,
            h.terminal_id,
            h.channel(),
            h.reference.as_str()
        ),
        (pb::Signer::Owner, 0, 0, pb::Channel::HeadOffice, "CALL-17")
    );
    assert_eq!(
        (h.paid_in_minor, h.bonus_in_minor, h.price_minor),
        (50_000, 5_000, 0)
    );
    let k = rec(&corp);
    assert_eq!(
        (
            k.channel(),
            k.reference.as_str(),
            k.paid_in_minor,
            k.bonus_in_minor
        ),
        (pb::Channel::Corporate, "ACME PO 4411", 100_000, 0)
    );
    let o = rec(&online);
    assert_eq!(
        (
            o.channel(),
            o.paid_in_minor,
            o.price_minor,
            o.bonus_in_minor
        ),
        (pb::Channel::Online, 100_000, 90_000, 5_000),
        "face value owed, cash received, bonus on the cash"
    );
    let b = rec(&below);
    assert_eq!(
        (
            b.signer(),
            b.store_id,
            b.channel(),
            b.paid_in_minor,
            b.price_minor
        ),
        (pb::Signer::Terminal, 1, pb::Channel::Store, 10_000, 9_500)
    );

    // Every card replays to what the daemon holds.
    for card in &report.cards {
        let v = inquiry(&mut owner, &card.card).await;
        assert_eq!(
            (v.paid_balance_minor, v.bonus_balance_minor, v.points),
            (card.paid_minor, card.bonus_minor, card.points),
            "card {}: live vs replayed",
            card.card
        );
    }
    let t = &report.totals;
    assert_eq!(
        t.loaded_paid_minor,
        i128::from(demo_loaded(&recs)),
        "face value loaded, owner loads included"
    );
    // Sold below face value: 1,000.00 for 900.00 online, 100.00 for 95.00
    // at the till; revenue is the face value less the discount.
    assert_eq!(t.discount_minor, 10_000 + 500);
    // The CLI agrees with the live daemon.
    let file = dir.path().join("ledger.export");
    std::fs::write(&file, &export).expect("write export");
    let addr = d.addr.to_string();
    let o = cardd!(
        "audit",
        "verify",
        &file,
        "--server-key",
        hex::encode(key),
        "--compare",
        &addr,
        "--key",
        demo.owner_key_path()
    );
    assert_ok(&o, "audit verify --compare");
    assert!(stderr(&o).contains("all 5 cards match"), "{}", stderr(&o));
}

/// The paid value of every TOP_UP record.
fn demo_loaded(recs: &[pb::Record]) -> i64 {
    recs.iter()
        .filter(|r| r.kind() == pb::RecordKind::TopUp)
        .map(|r| r.paid_in_minor)
        .sum()
}
