//! The owner tops up too (issue 25): loads from the head office, online and
//! corporate channels, and sales below face value at the till and the
//! owner's console.
use super::*;

/// A load of `amount` onto `card` through `channel`, with `reference`.
fn load(card: &str, amount: i64, channel: pb::Channel, reference: &str) -> pb::TopUp {
    pb::TopUp {
        card: card.into(),
        amount_minor: amount,
        channel: channel as u32,
        reference: reference.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_owner_load_gets_the_bonus_unless_told_not_to_and_is_recorded_as_store_0() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone(); // paid 100.00
    let mut o = demo.owner(d.addr).await;

    // 500.00 earns the demo rules' 50.00, as it would at a till.
    let op = Op::TopUp(load(&card, 50_000, pb::Channel::HeadOffice, "INV-2026-001"));
    let r = ok(&mut o, 11, op).await;
    let rc = receipt(&r);
    assert_eq!(
        (rc.seq, rc.store_id, rc.terminal_id, rc.txn_id),
        (FIRST_SEQ, 0, 0, 11)
    );
    let t = topped_up(&r);
    assert_eq!(
        (
            t.paid_minor,
            t.bonus_minor,
            t.channel(),
            t.reference.as_str()
        ),
        (50_000, 5_000, pb::Channel::HeadOffice, "INV-2026-001")
    );
    assert_eq!(t.price_minor, 0, "sold at face value");
    assert_money(card_of(&r), 60_000, 5_000, 0);

    // The same load without bonus: paid only.
    let mut net = load(&card, 50_000, pb::Channel::Corporate, "PO 77/B");
    net.no_bonus = true;
    let r = ok(&mut o, 12, Op::TopUp(net)).await;
    let t = topped_up(&r);
    assert_eq!(
        (t.paid_minor, t.bonus_minor, t.channel()),
        (50_000, 0, pb::Channel::Corporate)
    );
    assert_money(card_of(&r), 110_000, 5_000, 0);

    // A till sees the loaded value and spends it (paid first).
    let mut till = demo.terminal(d.addr, 0).await;
    let r = ok(&mut till, 100, purchase(&card, 111_000)).await;
    assert_money(card_of(&r), 0, 4_000, 1_110);
}

#[tokio::test]
async fn a_retry_of_an_owner_load_is_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[1].clone(); // paid 200.00
    let mut o = demo.owner(d.addr).await;
    let req = o.request(
        11,
        Op::TopUp(load(&card, 2_500, pb::Channel::Online, "WEB-9")),
    );
    let first = call_req(&mut o, &req).await.expect("load");
    assert!(!first.replayed);
    let retry = call_req(&mut o, &req).await.expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);
    // A new connection (a console that lost its answer) replays too.
    let mut o = demo.owner(d.addr).await;
    let retry = call_req(&mut o, &req).await.expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);
    assert_money(&inquiry(&mut o, &card).await, 22_500, 0, 0);
    // Another load under the same txn id is a conflict, not a second load.
    assert_eq!(
        refused(
            &mut o,
            11,
            Op::TopUp(load(&card, 2_500, pb::Channel::Online, "WEB-10"))
        )
        .await,
        E::IdempotencyConflict
    );
    assert_money(&inquiry(&mut o, &card).await, 22_500, 0, 0);
}

#[tokio::test]
async fn owner_loads_are_refused_on_blocked_cards_and_bad_terms() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut o = demo.owner(d.addr).await;
    ok(&mut o, 11, set_blocked(&card, true)).await;
    let head = |c: &str| Op::TopUp(load(c, 1_000, pb::Channel::HeadOffice, ""));
    assert_eq!(refused(&mut o, 12, head(&card)).await, E::CardBlocked);

    let other = demo.manifest.cards[1].clone();
    let mut bad = load(&other, 1_000, pb::Channel::HeadOffice, "line\nbreak");
    assert_eq!(
        refused(&mut o, 12, Op::TopUp(bad.clone())).await,
        E::InvalidArgument
    );
    bad.reference = "x".repeat(65);
    assert_eq!(
        refused(&mut o, 12, Op::TopUp(bad.clone())).await,
        E::InvalidArgument
    );
    bad.reference.clear();
    bad.channel = 9;
    assert_eq!(
        refused(&mut o, 12, Op::TopUp(bad.clone())).await,
        E::InvalidArgument
    );
    bad.channel = pb::Channel::HeadOffice as u32;
    bad.price_minor = 1_001;
    assert_eq!(
        refused(&mut o, 12, Op::TopUp(bad)).await,
        E::AmountOutOfRange
    );
    // The channel says who sells: a till only at its store.
    let mut till = demo.terminal(d.addr, 0).await;
    assert_eq!(
        refused(
            &mut till,
            100,
            Op::TopUp(load(&other, 1_000, pb::Channel::Online, ""))
        )
        .await,
        E::WrongRole
    );
    // Nothing was written by any refusal.
    let r = ok(&mut o, 12, head(&other)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 1);
    assert_money(card_of(&r), 21_000, 0, 0);
}

#[tokio::test]
async fn a_sale_below_face_value_records_both_figures_at_the_till_and_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone(); // paid 100.00
    let mut till = demo.terminal(d.addr, 0).await;
    // Pay 450.00, get 500.00: the bonus follows the cash (below the 500.00
    // tier), the face value is paid value.
    let mut sale = load(&card, 50_000, pb::Channel::Store, "");
    sale.price_minor = 45_000;
    let r = ok(&mut till, 100, Op::TopUp(sale)).await;
    let t = topped_up(&r);
    assert_eq!(
        (t.paid_minor, t.price_minor, t.bonus_minor, t.channel()),
        (50_000, 45_000, 0, pb::Channel::Store)
    );
    assert_money(card_of(&r), 60_000, 0, 0);

    // Online: pay 900.00, get 1,000.00; bonus on 900.00 (the 500.00 tier).
    let mut o = demo.owner(d.addr).await;
    let mut sale = load(&card, 100_000, pb::Channel::Online, "SHOP-4411");
    sale.price_minor = 90_000;
    let r = ok(&mut o, 11, Op::TopUp(sale)).await;
    let t = topped_up(&r);
    assert_eq!(
        (t.paid_minor, t.price_minor, t.bonus_minor),
        (100_000, 90_000, 5_000)
    );
    assert_money(card_of(&r), 160_000, 5_000, 0);
    // A price equal to the face value is a face-value sale.
    let mut full = load(&card, 1_000, pb::Channel::Online, "");
    full.price_minor = 1_000;
    let r = ok(&mut o, 12, Op::TopUp(full)).await;
    assert_eq!(topped_up(&r).price_minor, 0);
}

#[tokio::test]
async fn cardd_admin_topup_loads_from_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[2].clone(); // paid 300.00
    let addr = d.addr.to_string();
    let key = demo.owner_key_path();
    let key = key.to_str().expect("utf-8 path");
    let base = ["admin", "--connect", &addr, "--key", key, "--json", "topup"];
    let args = [
        "--card",
        &card,
        "--amount",
        "1000.00",
        "--price",
        "900",
        "--channel",
        "corporate",
        "--reference",
        "ACME staff gifts",
    ];
    let out = run::cardd(base.iter().chain(args.iter()));
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["paid_minor"], 100_000);
    assert_eq!(v["price_minor"], 90_000);
    assert_eq!(v["bonus_minor"], 5_000);
    assert_eq!(v["channel"], "CHANNEL_CORPORATE");
    assert_eq!(v["reference"], "ACME staff gifts");
    let no_bonus = ["--card", &card, "--amount", "10", "--no-bonus"];
    let out = run::cardd(base.iter().chain(no_bonus.iter()));
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["channel"], "CHANNEL_HEAD_OFFICE");
    let mut o = demo.owner(d.addr).await;
    assert_money(&inquiry(&mut o, &card).await, 131_000, 5_000, 0);
}

/// `cardd admin ... issue-cards` arguments for a corporate order of `count`
/// cards of 10.00 written to `out`.
fn bulk_args(addr: &str, key: &Path, count: &str, out: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        ["admin", "--connect", addr, "--key"].map(Into::into).into();
    args.push(key.into());
    let rest = [
        "--json",
        "issue-cards",
        "--count",
        count,
        "--load",
        "10.00",
        "--channel",
        "corporate",
        "--reference",
        "ACME-XMAS",
        "--out",
    ];
    args.extend(rest.map(Into::into));
    args.push(out.into());
    args
}

#[tokio::test]
async fn a_bulk_sale_killed_mid_run_and_run_again_yields_exactly_1000_loaded_cards() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let out = dir.path().join("cards.csv");
    let args = bulk_args(&d.addr.to_string(), &demo.owner_key_path(), "1000", &out);
    let mut child = std::process::Command::new(cardd_bin())
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cardd runs");
    let progress = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = Vec::new();
    for line in progress.lines() {
        let line = line.expect("stderr line");
        seen.push(line.clone());
        if line.contains("300/1000") {
            break;
        }
    }
    child.kill().expect("kill -9 the client"); // SIGKILL on Unix
    child.wait().expect("reaped");
    assert!(seen.iter().any(|l| l.contains("300/1000")), "{seen:?}");
    assert!(!out.exists(), "the CSV is written only at the end");
    // Another owner command before the re-run takes the next free id,
    // which is not one the run still needs.
    let key = demo.owner_key_path();
    let addr = d.addr.to_string();
    let between = run::cardd([
        "admin".as_ref(),
        "--connect".as_ref(),
        std::ffi::OsStr::new(&addr),
        "--key".as_ref(),
        key.as_os_str(),
        "create-store".as_ref(),
        "--name".as_ref(),
        "Meanwhile".as_ref(),
    ]);
    assert!(between.status.success(), "{between:?}");

    let again = run::cardd(&args);
    assert!(again.status.success(), "{again:?}");
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).expect("one JSON line");
    assert_eq!(v["cards"], 1000);
    assert_eq!(v["loaded_minor"], 1_000_000);
    let done = v["already_done"].as_u64().expect("count");
    assert!(
        (300..1000).contains(&done),
        "the rerun replayed the first {done}"
    );

    let csv = std::fs::read_to_string(&out).expect("the CSV");
    // Numbers of loaded cards: readable by their owner only.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 1000);
    let cards: std::collections::HashSet<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(cards.len(), 1000, "distinct numbers");
    let mut o = demo.owner(d.addr).await;
    let mut issued = std::collections::HashSet::new();
    for (i, r) in rows.iter().enumerate() {
        let (issue, load) = (r[1].parse::<u64>().unwrap(), r[2].parse::<u64>().unwrap());
        // The next record, unless the kill fell between the two and the
        // store opened in between took the one after the issue.
        assert!(
            load == issue + 1 || load == issue + 2,
            "row {i}: issued ({issue}), then loaded ({load})"
        );
        assert!(issued.insert(issue) && (FIRST_SEQ..=FIRST_SEQ + 2_000).contains(&load));
        assert_eq!(&r[3..], ["1000", "0", "0"]);
    }
    for card in cards.iter().step_by(97) {
        assert_money(&inquiry(&mut o, card).await, 1_000, 0, 0);
    }
    // Exactly 2,000 records (and the store in between) were written.
    let r = ok(&mut o, 5_000, create_store("After the sale")).await;
    assert_eq!(seq(&r), FIRST_SEQ + 2_001);

    // Run once more: all of it is a replay, and the CSV is the same.
    let third = run::cardd(&args);
    assert!(third.status.success(), "{third:?}");
    let v: serde_json::Value = serde_json::from_slice(&third.stdout).expect("one JSON line");
    assert_eq!(v["already_done"], 1000);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), csv);
}

#[tokio::test]
async fn a_bulk_sale_is_bounded_and_a_different_sale_needs_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let out = dir.path().join("cards.csv");
    let addr = d.addr.to_string();
    let key = demo.owner_key_path();
    let too_many = run::cardd(bulk_args(&addr, &key, "1001", &out));
    assert!(!too_many.status.success());
    assert!(String::from_utf8_lossy(&too_many.stderr).contains("--count must be 1..=1000"));
    let two = run::cardd(bulk_args(&addr, &key, "2", &out));
    assert!(two.status.success(), "{two:?}");
    let three = run::cardd(bulk_args(&addr, &key, "3", &out));
    assert!(!three.status.success());
    assert!(String::from_utf8_lossy(&three.stderr).contains("records another sale"));
}
