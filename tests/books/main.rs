//! The owner's books end to end (issue 13): a scripted three-store ledger
//! on the demo brand, each report through the real `cardd admin report`
//! against figures computed by hand, and the auditor's replay printing the
//! same liability and settlement.
//!
//! The script (amounts in minor units; the demo's rules give 5,000 bonus on
//! a load of 50,000; the demo's five cards were loaded at store 1 with
//! 210,000 paid and 20,000 bonus):
//! - store 3 opened with a till; card X issued;
//! - X loaded at store 1 (A): 50,000 paid + 5,000 bonus; by head office
//!   (store 0): 2,000 paid. Lots: A (50,000, 5,000), 0 (2,000, 0);
//! - purchase of 40,000 at store 2 (B): all paid, from A. A owes B 40,000;
//! - purchase of 14,000 at store 3 (C): paid 10,000 from A, paid 2,000
//!   from 0, then bonus 2,000 from A. A owes C 12,000 (2,000 of it bonus),
//!   head office owes C 2,000;
//! - refund of 15,000 of the B purchase at B: back to A's lot; A owes B
//!   25,000;
//! - X replaced by Y (the lots move); a purchase of 1,000 on Y at C,
//!   reversed: nothing owed.
//!
//! Then: settlement (0→3) 2,000; (1→2) 25,000; (1→3) 10,000 + 2,000 bonus;
//! nets 0: -2,000, 1: -37,000, 2: +25,000, 3: +14,000 (sum 0). Liability:
//! store 1 (225,000, 23,000), head office none; Y holds 18,000.
#[path = "../common/mod.rs"]
mod common;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;

use cardd::pb::{self, request::Op};
use common::books::{admin, admin_json, card_op, script, today};
use common::{connect, inquiry, ok, purchase, refused, run, Daemon};
use serde_json::{json, Value};

/// `admin --json report settlement` over the one day `day`.
fn settlement_today(addr: SocketAddr, key: &Path, day: &str) -> Value {
    admin_json(
        addr,
        key,
        &["--json", "report", "settlement", "--from", day, "--to", day],
    )
}

#[tokio::test]
async fn the_reports_give_the_hand_computed_figures() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let y = script(&d, &demo).await;
    let key = demo.owner_key_path();
    let day = today();
    let s = settlement_today(d.addr, &key, &day);
    assert_eq!(
        s["settlement"],
        json!([
            {"from_store": 0, "to_store": 3, "paid_minor": 2000, "bonus_minor": 0, "total_minor": 2000},
            {"from_store": 1, "to_store": 2, "paid_minor": 25000, "bonus_minor": 0, "total_minor": 25000},
            {"from_store": 1, "to_store": 3, "paid_minor": 10000, "bonus_minor": 2000, "total_minor": 12000},
        ])
    );
    let nets: Vec<i64> = s["net"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["net_minor"].as_i64().unwrap())
        .collect();
    assert_eq!(nets, vec![-2_000, -37_000, 25_000, 14_000]);
    assert_eq!(nets.iter().sum::<i64>(), 0);

    let l = admin_json(d.addr, &key, &["report", "liability", "--json"]);
    assert_eq!(
        l["liability"],
        json!([{"store_id": 1, "paid_minor": 225000, "bonus_minor": 23000, "total_minor": 248000,
                "cards": 6, "average_balance_minor": 41333}])
    );
    // Liability equals the sum of the balances.
    let mut owner = demo.owner(d.addr).await;
    let mut sum = inquiry(&mut owner, &y).await.balance_minor;
    for c in &demo.manifest.cards {
        sum += inquiry(&mut owner, c).await.balance_minor;
    }
    assert_eq!(sum, 248_000);
    assert_eq!(l["aging"][0]["total_minor"], json!(248_000));

    let sales = admin_json(
        d.addr,
        &key,
        &["--json", "report", "sales", "--by", "store"],
    );
    let by_store: Vec<(i64, i64, i64, i64)> = sales["sales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_i64().unwrap();
            (
                f("store_id"),
                f("purchases"),
                f("net_sales_minor"),
                f("top_up_paid_minor"),
            )
        })
        .collect();
    assert_eq!(
        by_store,
        vec![
            (0, 0, 0, 2_000),
            (1, 0, 0, 260_000),
            (2, 1, 25_000, 0),
            (3, 2, 14_000, 0)
        ]
    );
    let daily = admin_json(
        d.addr,
        &key,
        &["--json", "report", "daily", "--date", &day, "--store", "2"],
    );
    let row = &daily[format!("daily {day}")][0];
    assert_eq!(
        (
            row["net_sales_minor"].as_i64(),
            row["day_before_net_sales_minor"].as_i64()
        ),
        (Some(25_000), Some(0))
    );
}

#[tokio::test]
async fn tables_csv_listings_and_rules_print() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    script(&d, &demo).await;
    let key = demo.owner_key_path();
    let day = today();
    let o = admin(
        d.addr,
        &key,
        &["report", "settlement", "--from", &day, "--to", &day],
    );
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(table.contains("== settlement =="), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["1", "2", "250.00", "0.00", "250.00"]),
        "{table}"
    );
    let o = admin(
        d.addr,
        &key,
        &[
            "report",
            "settlement",
            "--from",
            &day,
            "--to",
            &day,
            "--csv",
        ],
    );
    let csv = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        csv.contains("from_store,to_store,paid_minor,bonus_minor,total_minor\n0,3,2000,0,2000\n1,2,25000,0,25000\n"),
        "{csv}"
    );

    let stores = admin_json(d.addr, &key, &["--json", "list", "stores"]);
    assert_eq!(stores["stores"][2]["name"], json!("Riverside"));
    let cards = admin_json(
        d.addr,
        &key,
        &["--json", "list", "cards", "--status", "replaced"],
    );
    assert_eq!(cards["cards"].as_array().unwrap().len(), 1);
    // The rules print as a file set-rules takes back.
    let o = admin(d.addr, &key, &["rules"]);
    assert_eq!(o.status.code(), Some(0));
    let file = dir.path().join("rules.json");
    let mut rules: Value = serde_json::from_slice(&o.stdout).unwrap();
    rules["time_zone"] = json!("Asia/Shanghai");
    std::fs::write(&file, rules.to_string()).unwrap();
    let o = admin(
        d.addr,
        &key,
        &["set-rules", "--file", file.to_str().unwrap()],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let again: Value = serde_json::from_slice(&admin(d.addr, &key, &["rules"]).stdout).unwrap();
    assert_eq!(again, rules);
}

#[tokio::test]
async fn bad_report_requests_are_refused_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let key = demo.owner_key_path();
    for args in [
        &[
            "--json",
            "report",
            "sales",
            "--from",
            "2026-02-02",
            "--to",
            "2026-02-01",
        ][..],
        &["--json", "report", "sales", "--from", "2001-01-01"],
        &["--json", "report", "sales", "--by", "week"],
        &["--json", "report", "daily", "--date", "yesterday"],
    ] {
        let o = admin(d.addr, &key, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["error"], json!("INVALID_ARGUMENT"), "{args:?}: {v}");
    }
    let o = admin(
        d.addr,
        &key,
        &["--json", "report", "sales", "--store", "99"],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"], json!("STORE_NOT_FOUND"));
    // A till asks for a report: refused, nothing written, still signed on.
    let mut till = demo.terminal(d.addr, 0).await;
    let ask = Op::Report(pb::GetReport {
        kind: "sales".into(),
        ..Default::default()
    });
    assert_eq!(refused(&mut till, 0, ask).await, pb::ErrorCode::WrongRole);
    let card = &demo.manifest.cards[0];
    assert_eq!(inquiry(&mut till, card).await.balance_minor, 10_000);
}

#[tokio::test]
async fn the_auditors_replay_prints_the_live_liability_and_settlement() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, demo) = Daemon::demo(dir.path());
    script(&d, &demo).await;
    let key = demo.owner_key_path();
    let day = today();
    let live_settlement = settlement_today(d.addr, &key, &day);
    let live_liability = admin_json(d.addr, &key, &["--json", "report", "liability"]);
    // Online: export, verify, and compare with the live daemon (cards and books).
    let export = dir.path().join("online.export");
    let addr = d.addr.to_string();
    let o = run::cardd(
        [
            "audit",
            "export",
            "--connect",
            &addr,
            "--key",
            key.to_str().unwrap(),
            "--out",
            export.to_str().unwrap(),
        ]
        .map(OsString::from),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let server_key =
        run::cardd(["server-key", "--data", d.data.to_str().unwrap()].map(OsString::from));
    let server_key = String::from_utf8_lossy(&server_key.stdout)
        .trim()
        .to_string();
    let o = run::cardd(
        [
            "audit",
            "verify",
            export.to_str().unwrap(),
            "--server-key",
            &server_key,
            "--compare",
            &addr,
            "--key",
            key.to_str().unwrap(),
        ]
        .map(OsString::from),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("and its liability and settlement"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("liability by store of issue") && out.contains("settlement"),
        "{out}"
    );
    d.kill9();
    // The replay (cardd check) agrees with itself; the auditor's verify
    // rebuilds the same books from the export.
    run::cardd_check(&d.data);
    let report = run::export_and_verify(
        &d.data,
        demo.manifest.brand_id,
        &dir.path().join("x.export"),
    );
    let pairs: Vec<Value> = live_settlement["settlement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!({"from_store": r["from_store"], "to_store": r["to_store"],
                        "paid_minor": r["paid_minor"], "bonus_minor": r["bonus_minor"]})
        })
        .collect();
    assert_eq!(report["settlement"], Value::Array(pairs));
    let stores: Vec<Value> = live_liability["liability"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!({"store_id": r["store_id"], "paid_minor": r["paid_minor"], "bonus_minor": r["bonus_minor"]}))
        .collect();
    assert_eq!(report["liability"], Value::Array(stores));
}

#[tokio::test]
async fn activity_lists_a_cards_records_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let y = script(&d, &demo).await;
    let key = demo.owner_key_path();
    let day = today();
    let a = admin_json(
        d.addr,
        &key,
        &[
            "--json", "report", "activity", "--card", &y, "--from", &day, "--to", &day,
        ],
    );
    let kinds: Vec<(&str, i64, i64)> = a["activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["store_id"].as_i64().unwrap(),
                r["amount_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    // Y's own records: the replacement that moved 18,000 onto it, the
    // purchase at C and its reversal.
    assert_eq!(
        kinds,
        vec![
            ("card_replaced", 0, 18_000),
            ("purchase", 3, -1_000),
            ("reversal", 3, 1_000)
        ]
    );
    assert_eq!(a["activity"][2]["balance_after_minor"], json!(18_000));
    // By store: store 2 saw the purchase and the refund of card X.
    let b = admin_json(
        d.addr,
        &key,
        &["--json", "report", "activity", "--store", "2"],
    );
    let amounts: Vec<i64> = b["activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["amount_minor"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, vec![-40_000, 15_000]);
    // A cursor past the end: an empty page.
    let c = admin_json(
        d.addr,
        &key,
        &[
            "--json", "report", "activity", "--store", "2", "--cursor", "100000",
        ],
    );
    assert_eq!(c["activity"], json!([]));
    let o = admin(
        d.addr,
        &key,
        &[
            "--json",
            "report",
            "activity",
            "--card",
            "8000010000000000000",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test]
async fn read_only_keys_read_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    script(&d, &demo).await;
    let key = demo.owner_key_path();
    let (auditor, manager) = (
        dir.path().join("auditor.key"),
        dir.path().join("manager.key"),
    );
    let o = admin(
        d.addr,
        &key,
        &[
            "add-key",
            "--role",
            "auditor",
            "--key-out",
            auditor.to_str().unwrap(),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = admin(
        d.addr,
        &key,
        &[
            "add-key",
            "--role",
            "store-manager",
            "--store",
            "2",
            "--key-out",
            manager.to_str().unwrap(),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let day = today();
    // The auditor reads the settlement the owner reads.
    let owner_view = settlement_today(d.addr, &key, &day);
    let auditor_view = settlement_today(d.addr, &auditor, &day);
    assert_eq!(owner_view, auditor_view);
    // The store manager reads its store only.
    let sales = admin_json(d.addr, &manager, &["--json", "report", "sales"]);
    let stores: Vec<i64> = sales["sales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["store_id"].as_i64().unwrap())
        .collect();
    assert_eq!(stores, vec![2]);
    let a = admin_json(
        d.addr,
        &manager,
        &["--json", "report", "activity", "--store", "2"],
    );
    assert_eq!(a["activity"].as_array().unwrap().len(), 2);
    let o = admin(
        d.addr,
        &manager,
        &["--json", "report", "sales", "--store", "3"],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"], json!("WRONG_ROLE"));
    // Writes are refused, nothing is written, and the session goes on.
    let mut client = connect(d.addr, cardd::crypto::read_key_file(&auditor).unwrap()).await;
    let card = &demo.manifest.cards[0];
    assert_eq!(
        refused(&mut client, 1, purchase(card, 100)).await,
        pb::ErrorCode::WrongRole
    );
    assert_eq!(
        refused(&mut client, 2, card_op(card)).await,
        pb::ErrorCode::WrongRole
    );
    let ask = Op::Report(pb::GetReport {
        kind: "liability".into(),
        ..Default::default()
    });
    assert!(ok(&mut client, 0, ask).await.report.is_some());
    let mut owner = demo.owner(d.addr).await;
    assert_eq!(inquiry(&mut owner, card).await.balance_minor, 10_000);
    // The auditor exports; the store manager may not.
    let mut out = Vec::new();
    assert!(common::bounded(client.export(&mut out)).await.is_ok());
    assert!(!out.is_empty());
    let mut m = connect(d.addr, cardd::crypto::read_key_file(&manager).unwrap()).await;
    let mut out = Vec::new();
    assert!(common::bounded(m.export(&mut out)).await.is_err());
    // Removed: the key cannot sign on again.
    let o = admin(
        d.addr,
        &key,
        &["remove-key", "--key-file", auditor.to_str().unwrap()],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let again =
        cardd::client::Client::connect(d.addr, cardd::crypto::read_key_file(&auditor).unwrap())
            .await;
    assert!(again.is_err(), "a removed key signed on");
}
