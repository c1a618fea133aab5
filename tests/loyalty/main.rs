//! The loyalty programme (issue 14) through the daemon: campaigns by store
//! and category, points paying part of a bill and its refund, the tier
//! change named in the reply, promotion lines by tier and store, the rules
//! file round trip with bad files refused naming the field, the
//! points-expiring report, and a full replay (`cardd check`) of it all.
#[path = "../common/mod.rs"]
mod common;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;

use cardd::pb::{self, request::Op, ErrorCode as E};
use common::reply::{purchased, refunded, seq};
use common::{ok, refund, refused, run, Daemon};
use serde_json::{json, Value};

/// `cardd admin --connect ADDR --key OWNER ARGS...`, bounded.
fn admin(addr: SocketAddr, key: &Path, args: &[&str]) -> Output {
    let mut all: Vec<OsString> = ["admin", "--connect", &addr.to_string(), "--key"]
        .map(OsString::from)
        .to_vec();
    all.push(key.into());
    all.extend(args.iter().map(OsString::from));
    run::cardd(all)
}

fn rules_json(addr: SocketAddr, key: &Path) -> Value {
    let o = admin(addr, key, &["rules"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("rules print as JSON")
}

fn set_rules_file(addr: SocketAddr, key: &Path, dir: &Path, rules: &Value) -> Output {
    let file = dir.join("rules.json");
    std::fs::write(&file, rules.to_string()).unwrap();
    admin(addr, key, &["set-rules", "--file", file.to_str().unwrap()])
}

fn buy(card: &str, amount_minor: i64, category: &str, points: i64) -> Op {
    Op::Purchase(pb::Purchase {
        card: card.into(),
        amount_minor,
        category: category.into(),
        points,
        ..Default::default()
    })
}

/// Demo stores 1 and 2; silver for all, gold from 10.00 of spend.
fn rules() -> pb::Rules {
    pb::Rules {
        points_per_unit: 1,
        tiers: vec![
            pb::TierRule {
                name: "silver".into(),
                multiplier_milli: 1_000,
                ..Default::default()
            },
            pb::TierRule {
                name: "gold".into(),
                min_spend_minor: 1_000,
                multiplier_milli: 1_000,
                promotion_line: "Gold line".into(),
                ..Default::default()
            },
        ],
        promotion_line: "Brand line".into(),
        store_promotions: vec![pb::StorePromotion {
            store_id: 2,
            line: "Store two".into(),
        }],
        campaigns: vec![
            pb::Campaign {
                name: "VIP 6x".into(),
                multiplier_milli: 6_000,
                starts_ms: 0,
                ends_ms: i64::MAX,
                stores: vec![pb::StoreRef { store_id: 2 }],
                category: String::new(),
            },
            pb::Campaign {
                name: "bakery".into(),
                multiplier_milli: 2_000,
                starts_ms: 0,
                ends_ms: i64::MAX,
                stores: vec![],
                category: "bakery".into(),
            },
        ],
        points_expire_after_days: 30,
        points_redemption: Some(pb::PointsRedemption {
            points: 100,
            value_minor: 500,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn campaigns_points_payment_tiers_and_lines_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, demo) = Daemon::demo(dir.path());
    let mut owner = demo.owner(d.addr).await;
    let mut t1 = demo.terminal(d.addr, 0).await;
    let mut t2 = demo.terminal(d.addr, 1).await;
    let card = demo.manifest.cards[0].clone();
    // The fix: the reply to set-rules carries the new rules' line.
    let set = ok(
        &mut owner,
        11,
        Op::SetRules(pb::SetRules {
            rules: Some(rules()),
        }),
    )
    .await;
    assert_eq!(set.promotion_line, "Brand line");

    // 6x at store 2 only; the purchase reaches gold and says so.
    let r = ok(&mut t2, 1, buy(&card, 2_000, "", 0)).await;
    let p = purchased(&r);
    assert_eq!(p.points_earned, 120);
    assert_eq!(
        (p.tier_before.as_str(), p.tier.as_str()),
        ("silver", "gold")
    );
    assert_eq!(
        r.promotion_line, "Gold line",
        "the tier's line beats the store's"
    );
    // Store 1, the bakery till: 2x; without the category: 1x.
    let r = ok(&mut t1, 100, buy(&card, 1_000, "bakery", 0)).await;
    assert_eq!(purchased(&r).points_earned, 20);
    assert_eq!(purchased(&r).tier_before, "gold");
    let r = ok(&mut t1, 101, buy(&card, 1_000, "", 0)).await;
    assert_eq!(purchased(&r).points_earned, 10);
    let points = r.card.as_ref().unwrap().points;

    // 100 points pay 5.00 of a 20.00 bill; the card pays 15.00 and earns 15.
    let r = ok(&mut t1, 102, buy(&card, 2_000, "", 100)).await;
    let p = purchased(&r);
    assert_eq!(
        (
            p.points_spent,
            p.points_value_minor,
            p.approved_minor,
            p.points_earned
        ),
        (100, 500, 1_500, 15)
    );
    assert_eq!(r.card.as_ref().unwrap().points, points - 100 + 15);
    // Half the bill back: 2.50 as 50 points, 7.50 to the card, 7 of the
    // 15 earned points taken back.
    let back = ok(&mut t1, 103, refund(seq(&r), 1_000)).await;
    let f = refunded(&back);
    assert_eq!(
        (
            f.refunded_minor,
            f.points_returned,
            f.points_value_minor,
            f.points_removed
        ),
        (750, 50, 250, 7)
    );
    assert_eq!(f.refundable_left_minor, 1_000);
    assert_eq!(
        refused(&mut t1, 104, buy(&card, 2_000, "", 150)).await,
        E::AmountOutOfRange
    );

    // The sales: 5.00 paid by points, 2.50 of it refunded, outside the
    // card value of purchase_minor (10.00 + 10.00 + 15.00 at store 1).
    let key = demo.owner_key_path();
    let o = admin(d.addr, &key, &["--json", "report", "sales", "--store", "1"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let sales: Value = serde_json::from_slice(&o.stdout).unwrap();
    let total = &sales["total"][0];
    assert_eq!(
        (&total["points_paid_minor"], &total["purchase_minor"]),
        (&json!(250), &json!(3_500)),
        "{sales}"
    );

    // Points expire in 30 days: all of them are in the report of 31 days.
    let o = admin(
        d.addr,
        &key,
        &["--json", "report", "points-expiring", "--days", "31"],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    // Every point the card earned here is in a lot; those spent and given
    // back kept their lots.
    let expected = 120 + 20 + 10 - 100 + 15 - 7 + 50;
    assert_eq!(
        back.card.as_ref().unwrap().points - points + 120 + 20 + 10,
        expected
    );
    assert_eq!(
        report["summary"][0]["points_expiring"],
        json!(expected),
        "{report}"
    );
    assert_eq!(report["points-expiring"][0]["card"], json!(card));

    // Replay agrees with the live daemon (cards' points, lots and tiers in
    // the snapshot), and the auditor's export verifies.
    d.kill9();
    run::cardd_check(&d.data);
    let v = run::export_and_verify(&d.data, demo.manifest.brand_id, &dir.path().join("x.cardd"));
    let replayed = v["cards"]
        .as_array()
        .and_then(|cards| cards.iter().find(|c| c["card"] == json!(card)))
        .unwrap_or_else(|| panic!("the card in the verify report: {v}"));
    let live = back.card.as_ref().unwrap();
    assert_eq!(
        (&replayed["points"], &replayed["tier"]),
        (&json!(live.points), &json!("gold"))
    );
}

#[tokio::test]
async fn the_rules_file_round_trips_and_bad_files_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let key = demo.owner_key_path();
    let rules = json!({
        "points_per_unit": 1,
        "tiers": [{"name": "member", "min_spend_minor": 0},
                  {"name": "vip", "min_day_spend_minor": 50000, "multiplier_milli": 2000,
                   "promotion_line": "VIP"},
                  {"name": "diamond", "min_spend_minor": 500000, "window_days": 365,
                   "multiplier_milli": 3800}],
        "campaigns": [{"name": "VIP 6x weekend", "multiplier_milli": 6000,
                       "starts": "2026-12-05T00:00:00+08:00",
                       "ends": "2026-12-07T00:00:00+08:00", "stores": [1, 2]},
                      {"name": "bakery", "multiplier_milli": 3800, "category": "bakery",
                       "starts": "2026-12-01T00:00:00Z", "ends": "2026-12-08T00:00:00Z"}],
        "points_expire_after_days": 365,
        "points_redemption": {"points": 100, "value_minor": 500},
        "store_promotions": [{"store_id": 2, "line": "Mall"}],
        "promotion_line": "Thanks",
        "time_zone": "Asia/Shanghai"
    });
    let o = set_rules_file(d.addr, &key, dir.path(), &rules);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let printed = rules_json(d.addr, &key);
    // Times come back in UTC, every key written out.
    let c = &printed["campaigns"][0];
    assert_eq!(
        (c["starts"].as_str(), c["ends"].as_str()),
        (Some("2026-12-04T16:00:00Z"), Some("2026-12-06T16:00:00Z"))
    );
    assert_eq!(c["stores"], json!([1, 2]));
    assert_eq!(printed["campaigns"][1]["category"], json!("bakery"));
    assert_eq!(printed["tiers"][1]["min_day_spend_minor"], json!(50_000));
    assert_eq!(printed["tiers"][2]["window_days"], json!(365));
    assert_eq!(printed["points_redemption"], rules["points_redemption"]);
    assert_eq!(printed["store_promotions"], rules["store_promotions"]);
    // What `rules` prints, set-rules takes back unchanged.
    let o = set_rules_file(d.addr, &key, dir.path(), &printed);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(rules_json(d.addr, &key), printed);

    let spoil = |f: &dyn Fn(&mut Value)| {
        let mut bad = rules.clone();
        f(&mut bad);
        bad
    };
    let cases: Vec<(Value, &str)> = vec![
        (spoil(&|r| r["campaign"] = json!([])), "campaign"),
        (
            spoil(&|r| r["campaigns"][0]["multiplier_milli"] = json!(0)),
            "campaigns[0].multiplier_milli",
        ),
        (
            spoil(&|r| r["campaigns"][1]["multiplier_milli"] = json!(100_001)),
            "campaigns[1].multiplier_milli",
        ),
        (
            spoil(&|r| r["campaigns"][0]["ends"] = json!("2026-12-04T00:00:00+08:00")),
            "campaigns[0].ends",
        ),
        (
            spoil(&|r| r["campaigns"][0]["stores"] = json!([1, 9])),
            "campaigns[0].stores",
        ),
        (
            spoil(&|r| r["campaigns"][0]["starts"] = json!("Saturday")),
            "campaigns[0].starts",
        ),
        (
            spoil(&|r| r["tiers"][2]["min_spend_minor"] = json!(0)),
            "tiers[2].min_spend_minor",
        ),
        (
            spoil(&|r| r["store_promotions"][0]["store_id"] = json!(7)),
            "store_promotions",
        ),
    ];
    for (bad, field) in cases {
        let o = set_rules_file(d.addr, &key, dir.path(), &bad);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{field}: accepted");
        assert!(err.contains(field), "{field}: {err}");
        assert_eq!(
            rules_json(d.addr, &key),
            printed,
            "{field}: the rules changed"
        );
    }
}
