//! End-to-end tests of the `terminal-sim` binary against a real `cardd`
//! daemon with the demo brand, on a temporary data directory and an
//! ephemeral loopback port. Every wait is bounded.
mod common;

use std::net::TcpListener;
use std::path::PathBuf;

use std::time::Duration;

use common::{cardd_bin, i64_of, run_bounded, sim_bin, u64_of, Daemon, Run};
use serde_json::Value;

/// How long one `terminal-sim` call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `terminal-sim` with `args`, killing it if it overruns.
fn run(args: &[&str]) -> Run {
    run_bounded(&sim_bin(), args, CALL_TIMEOUT)
}

/// A terminal of the demo brand, driving the binary.
struct Till<'d> {
    daemon: &'d Daemon,
    key: PathBuf,
    /// The till's state directory (`--state-dir`), beside the data directory.
    state_dir: PathBuf,
}

impl Till<'_> {
    fn new(daemon: &Daemon, store_index: usize) -> Till<'_> {
        Till {
            daemon,
            key: daemon.terminal_key(store_index),
            state_dir: daemon.data.with_file_name("till-state"),
        }
    }

    /// `terminal-sim --connect ADDR --key KEY --state-dir DIR [global...] op...`
    fn call(&self, global: &[&str], op: &[&str]) -> Run {
        let key = self.key.to_str().expect("utf-8 path");
        let state_dir = self.state_dir.to_str().expect("utf-8 path");
        let mut args = vec![
            "--connect",
            &self.daemon.addr,
            "--key",
            key,
            "--state-dir",
            state_dir,
            "--timeout",
            "10",
        ];
        args.extend_from_slice(global);
        args.extend_from_slice(op);
        run(&args)
    }

    fn json(&self, op: &[&str]) -> Run {
        self.call(&["--json"], op)
    }

    fn json_txn(&self, txn: &str, op: &[&str]) -> Run {
        self.call(&["--json", "--txn", txn], op)
    }

    fn balance(&self, card: &str) -> i64 {
        let v = self.json(&["inquiry", "--card", card]).ok();
        v["balance_minor"].as_i64().expect("balance_minor")
    }

    /// The state file: in the state directory, named by the public key.
    fn state_path(&self) -> PathBuf {
        let key = cardd::crypto::read_key_file(&self.key).expect("key file");
        let public = hex::encode(key.verifying_key().to_bytes());
        self.state_dir.join(format!("{public}.state.json"))
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_path()).expect("state file"))
            .expect("state JSON")
    }
}

#[test]
fn a_shift_of_operations_retries_and_balances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    // The Airport till: the demo's opening top-ups were made at Downtown,
    // so this terminal's shift starts empty on the server too.
    let till = Till::new(&daemon, 1);
    let card = daemon.manifest.cards[0].as_str();
    let b0 = till.balance(card);

    // A top-up under the bonus threshold adds exactly what was paid.
    let top = till
        .json(&["topup", "--card", card, "--amount", "10.00"])
        .ok();
    assert_eq!(i64_of(&top, "balance_minor"), b0 + 1000);
    assert_eq!(i64_of(&top, "paid_minor"), 1000);
    assert_eq!(i64_of(&top, "bonus_minor"), 0);
    assert_eq!(
        i64_of(&top, "txn_id"),
        1,
        "the first id of a fresh terminal"
    );
    let seq_top = i64_of(&top, "record_seq");

    // A purchase under a chosen transaction id.
    let buy = till
        .json_txn("50", &["purchase", "--card", card, "--amount", "12.50"])
        .ok();
    assert_eq!(i64_of(&buy, "balance_minor"), b0 + 1000 - 1250);
    assert_eq!(i64_of(&buy, "approved_minor"), 1250);
    assert_eq!(buy["replayed"], false);
    let seq_buy = i64_of(&buy, "record_seq");
    assert!(
        seq_buy > seq_top,
        "record_seq must increase: {seq_top} then {seq_buy}"
    );

    // The same purchase again under the same id: the original answer.
    let again = till
        .json_txn("50", &["purchase", "--card", card, "--amount", "12.50"])
        .ok();
    assert_eq!(again["replayed"], true);
    assert_eq!(i64_of(&again, "record_seq"), seq_buy);
    assert_eq!(again["record_hash"], buy["record_hash"]);
    assert_eq!(i64_of(&again, "balance_minor"), b0 + 1000 - 1250);
    assert_eq!(
        till.balance(card),
        b0 + 1000 - 1250,
        "a retry must not charge twice"
    );

    // A different request under that id is refused.
    let conflict = till.json_txn("50", &["purchase", "--card", card, "--amount", "13.00"]);
    assert_eq!(conflict.code, 2, "{conflict:?}");
    let v = conflict.json();
    assert_eq!(v["error"], "IDEMPOTENCY_CONFLICT", "{conflict:?}");
    assert_eq!(v["ok"], false);
    assert_eq!(till.balance(card), b0 + 1000 - 1250);

    // Without --txn the terminal continues after the highest id it used.
    let refund = till
        .json(&["refund", "--seq", &seq_buy.to_string(), "--amount", "2.50"])
        .ok();
    assert_eq!(i64_of(&refund, "txn_id"), 51);
    assert_eq!(i64_of(&refund, "refunded_minor"), 250);
    assert_eq!(i64_of(&refund, "balance_minor"), b0 + 1000 - 1000);

    let points = i64_of(&refund, "points");
    assert!(points >= 1, "the purchase earned points: {refund}");
    let redeem = till
        .json(&[
            "redeem-points",
            "--card",
            card,
            "--points",
            "1",
            "--reward",
            "cookie",
        ])
        .ok();
    assert_eq!(i64_of(&redeem, "points"), points - 1);
    assert_eq!(i64_of(&redeem, "points_redeemed"), 1);

    // A purchase voided by its transaction id, and a void of an id the
    // server never saw (counted, with no value).
    let small = till
        .json(&["purchase", "--card", card, "--amount", "3.00"])
        .ok();
    let small_txn = i64_of(&small, "txn_id");
    assert_eq!(small_txn, 53);
    let void = till
        .json(&["reverse", "--original-txn", &small_txn.to_string()])
        .ok();
    assert_eq!(void["original_found"], true);
    assert_eq!(i64_of(&void, "value_minor"), 300);
    assert_eq!(i64_of(&void, "balance_minor"), b0);
    let void_lost = till.json(&["reverse", "--original-txn", "9000"]).ok();
    assert_eq!(void_lost["original_found"], false);
    assert_eq!(i64_of(&void_lost, "value_minor"), 0);

    // A declined purchase changes nothing and is not counted.
    let declined = till.json(&["purchase", "--card", card, "--amount", "999999.00"]);
    assert_eq!(declined.code, 2, "{declined:?}");
    assert_eq!(declined.json()["error"], "INSUFFICIENT_FUNDS");

    // Status of the retried purchase.
    let status = till.json(&["status", "--txn", "50"]).ok();
    assert_eq!(status["txn_state"], "COMMITTED");
    assert_eq!(i64_of(&status, "status_seq"), seq_buy);

    // The terminal's totals match the server's.
    let close = till.json(&["close-shift"]).ok();
    assert_eq!(close["balanced"], true, "{close}");
    let server = &close["server_totals"];
    assert_eq!(server["purchase_count"], 2);
    assert_eq!(server["purchase_minor"], 1550);
    assert_eq!(server["top_up_count"], 1);
    assert_eq!(server["top_up_minor"], 1000);
    assert_eq!(server["refund_count"], 1);
    assert_eq!(server["refund_minor"], 250);
    assert_eq!(server["reversal_count"], 2);
    assert_eq!(server["reversal_minor"], 300);
    assert_eq!(server["redeem_count"], 1);
    assert_eq!(server["redeem_points"], 1);
    assert_eq!(&close["terminal_totals"], server);

    // The local totals were reset: the next (empty) shift balances too.
    let state = till.state();
    assert_eq!(state["shift"]["purchase_count"], 0);
    assert_eq!(state["next_txn"], i64_of(&close, "txn_id") + 1);
    let empty = till.json(&["close-shift"]).ok();
    assert_eq!(empty["balanced"], true, "{empty}");
    assert_eq!(empty["server_totals"]["purchase_count"], 0);
}

#[test]
fn the_receipt_masks_the_card_and_refusals_go_to_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let till = Till::new(&daemon, 0);
    let card = daemon.manifest.cards[1].as_str();
    let last4 = &card[card.len() - 4..];

    let r = till.call(&[], &["topup", "--card", card, "--amount", "10.00"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("****{last4}")),
        "masked card on the receipt: {}",
        r.stdout
    );
    assert!(
        !r.stdout.contains(card),
        "the full card number must not be printed: {}",
        r.stdout
    );
    assert!(r.stdout.contains("TOP-UP"), "{}", r.stdout);
    let store = &daemon.manifest.stores[0].name;
    assert!(
        r.stdout.contains(store.as_str()),
        "store name {store}: {}",
        r.stdout
    );
    assert!(r.stdout.contains("10.00"), "{}", r.stdout);

    let r = till.call(&[], &["purchase", "--card", card, "--amount", "99999.00"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "one refusal line: {r:?}");
    assert!(r.stderr.contains("INSUFFICIENT_FUNDS"), "{r:?}");
    assert!(!r.stderr.contains(card), "{r:?}");
}

#[test]
fn usage_and_connection_failures_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let till = Till::new(&daemon, 1);
    let card = daemon.manifest.cards[2].as_str();

    // An amount with more decimals than the currency has.
    let r = till.json(&["purchase", "--card", card, "--amount", "12.505"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--amount"), "{r:?}");
    // Under --json a client-side failure is one JSON object too.
    assert_eq!(r.json()["error"], "INVALID_ARGUMENT", "{r:?}");
    // A floating-point style amount.
    let r = till.json(&["topup", "--card", card, "--amount", "1e3"]);
    assert_eq!(r.code, 1, "{r:?}");
    // --txn with a read-only operation, and an unknown subcommand.
    assert_eq!(till.json_txn("7", &["inquiry", "--card", card]).code, 1);
    assert_eq!(till.json(&["bogus"]).code, 1);

    // A key file others can read is refused before connecting.
    let open_key = dir.path().join("open.key");
    std::fs::copy(till.key.as_path(), &open_key).expect("copy key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let r = run(&[
            "--connect",
            &daemon.addr,
            "--key",
            open_key.to_str().unwrap(),
            "inquiry",
            "--card",
            card,
        ]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("readable by others"), "{r:?}");
    }

    // Nobody listening: a port that was free a moment ago.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let key = till.key.to_str().unwrap();
    let r = run(&[
        "--connect",
        &addr,
        "--key",
        key,
        "--json",
        "inquiry",
        "--card",
        card,
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], false, "{r:?}");
    assert_eq!(v["error"], "CONNECTION_FAILED", "{r:?}");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains(&addr)),
        "the address in the message: {r:?}"
    );
    assert!(r.stderr.contains("connecting to"), "{r:?}");

    // The owner's key is not a terminal.
    let owner = daemon.data.join(&daemon.manifest.owner_key);
    let r = run(&[
        "--connect",
        &daemon.addr,
        "--key",
        owner.to_str().unwrap(),
        "inquiry",
        "--card",
        card,
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not as a terminal"), "{r:?}");

    // None of this consumed a transaction id or touched the balance.
    let top = till
        .json(&["topup", "--card", card, "--amount", "1.00"])
        .ok();
    assert_eq!(i64_of(&top, "txn_id"), 1);
}

#[test]
fn proofs_are_checked_against_the_server_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let till = Till::new(&daemon, 0);
    let card = daemon.manifest.cards[3].as_str();
    let key = daemon.server_key();

    // Trust on first use: the key from the sign-on challenge.
    let top = till
        .call(
            &["--json", "--proof"],
            &["topup", "--card", card, "--amount", "5.00"],
        )
        .ok();
    assert_eq!(top["proof_verified"], true, "{top}");
    assert_eq!(top["proof_key_source"], "sign-on", "{top}");
    assert_eq!(top["proof_server_key"], key.as_str(), "{top}");
    let seq = i64_of(&top, "record_seq");
    assert_eq!(i64_of(&top, "proof_leaf_index"), seq - 1, "{top}");
    assert!(i64_of(&top, "proof_tree_size") >= seq, "{top}");
    recheck_printed_proof(&top, &key);

    // Pinned, on the receipt.
    let r = till.call(
        &["--proof", "--server-key", &key],
        &["purchase", "--card", card, "--amount", "2.00"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("proof: verified (leaf ")
            && r.stdout
                .contains(&format!("checkpoint signed by {}", &key[..16]))
            && r.stdout.contains("pinned"),
        "{r:?}"
    );

    // A pinned key that is not the server's: the proof fails, exit 1, even
    // though the server approved (and the purchase stands).
    let b0 = till.balance(card);
    let other = hex::encode(cardd::crypto::generate_key().verifying_key().to_bytes());
    let r = till.call(
        &["--json", "--proof", "--server-key", &other],
        &["purchase", "--card", card, "--amount", "1.00"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v["proof_verified"], false, "{r:?}");
    assert_eq!(v["proof_key_source"], "pinned", "{r:?}");
    assert!(
        v["proof_error"].as_str().unwrap().contains("not signed"),
        "{r:?}"
    );
    assert!(r.stderr.contains("PROOF FAILED"), "{r:?}");
    assert_eq!(till.balance(card), b0 - 100);

    // A retry resends the original bytes, which did not ask for a proof:
    // the original answer comes back, without one, and that is a failure.
    let first = till
        .json_txn("200", &["purchase", "--card", card, "--amount", "1.00"])
        .ok();
    let again = till.call(
        &["--json", "--proof", "--txn", "200"],
        &["purchase", "--card", card, "--amount", "1.00"],
    );
    assert_eq!(again.code, 1, "{again:?}");
    let v = again.json();
    assert_eq!(v["replayed"], true, "{again:?}");
    assert_eq!(v["record_seq"], first["record_seq"]);
    assert!(
        v["proof_error"]
            .as_str()
            .unwrap()
            .contains("did not ask for a proof"),
        "{again:?}"
    );

    // Usage: a proof of a read-only operation, a key without --proof, a bad key.
    let r = till.call(&["--proof"], &["inquiry", "--card", card]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--proof"), "{r:?}");
    let r = till.call(&["--server-key", &key], &["inquiry", "--card", card]);
    assert_eq!(r.code, 1, "{r:?}");
    let r = till.call(
        &["--proof", "--server-key", "abcd"],
        &["topup", "--card", card, "--amount", "1.00"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--server-key"), "{r:?}");
}

/// The common flags (`--json`, `--connect`, `--key`, `--txn`, `--operator`)
/// work before or after the subcommand, for `terminal-sim` and for
/// `cardd admin`, and mean the same in either place.
#[test]
fn common_flags_work_before_or_after_the_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let key = daemon.terminal_key(1);
    let key = key.to_str().expect("utf-8 path");
    let card = daemon.manifest.cards[3].as_str();
    let common = |txn: &'static str| {
        [
            "--json",
            "--connect",
            daemon.addr.as_str(),
            "--key",
            key,
            "--txn",
            txn,
            "--operator",
            "ann",
        ]
    };
    let topup = ["topup", "--card", card, "--amount", "1.00"];
    let before = run(&[&common("300")[..], &topup[..]].concat()).ok();
    let after = run(&[&topup[..], &common("301")[..]].concat()).ok();
    assert_eq!(i64_of(&before, "txn_id"), 300);
    assert_eq!(i64_of(&after, "txn_id"), 301);
    assert_eq!(
        i64_of(&after, "balance_minor"),
        i64_of(&before, "balance_minor") + 100
    );
    // status looks up the id given by --txn in either place.
    for args in [
        vec![
            "--json",
            "--connect",
            &daemon.addr,
            "--key",
            key,
            "--txn",
            "301",
            "status",
        ],
        vec![
            "status",
            "--txn",
            "301",
            "--json",
            "--connect",
            &daemon.addr,
            "--key",
            key,
        ],
    ] {
        assert_eq!(run(&args).ok()["txn_state"], "COMMITTED", "{args:?}");
    }

    let owner = daemon.owner_key();
    let admin = |args: &[&str]| run_bounded(&cardd_bin(), args, CALL_TIMEOUT);
    let admin_common = ["--json", "--connect", daemon.addr.as_str(), "--key", &owner];
    let inquiry = ["inquiry", "--card", card];
    let before = admin(&[&["admin"][..], &admin_common[..], &inquiry[..]].concat()).ok();
    let after = admin(&[&["admin"][..], &inquiry[..], &admin_common[..]].concat()).ok();
    assert_eq!(before, after);
    assert_eq!(
        i64_of(&before, "balance_minor"),
        i64_of(&after_topup_balance(&daemon, key, card), "balance_minor")
    );
}

/// The card as terminal `key` sees it now.
fn after_topup_balance(daemon: &Daemon, key: &str, card: &str) -> Value {
    run(&[
        "--json",
        "--connect",
        &daemon.addr,
        "--key",
        key,
        "inquiry",
        "--card",
        card,
    ])
    .ok()
}

/// Re-checks a `--proof --json` answer from what it prints alone, as
/// anybody holding the receipt could: the checkpoint's signature by the
/// server key, then the audit path from the record hash to its root.
fn recheck_printed_proof(v: &Value, server_key: &str) {
    let hash = |field: &Value| -> [u8; 32] {
        let bytes = hex::decode(field.as_str().expect("hex string")).expect("hex");
        bytes.try_into().expect("32 bytes")
    };
    let c = &v["proof_checkpoint"];
    let checkpoint = cardd::pb::Checkpoint {
        brand_id: u32::try_from(u64_of(c, "brand_id")).expect("brand id"),
        tree_size: u64_of(c, "tree_size"),
        head_hash: hash(&c["head_hash"]).to_vec(),
        root_hash: hash(&c["root_hash"]).to_vec(),
        time_ms: i64_of(c, "time_ms"),
        signature: hex::decode(c["signature"].as_str().expect("signature")).expect("hex"),
    };
    let key = hash(&Value::String(server_key.to_string()));
    let key = cardd::crypto::parse_public_key(&key).expect("server key");
    assert!(
        cardd::crypto::verify_strict(
            &key,
            &cardd::checkpoint::signed_message(&checkpoint),
            &checkpoint.signature
        ),
        "{v}"
    );
    let path: Vec<[u8; 32]> = v["proof_path"]
        .as_array()
        .expect("proof_path")
        .iter()
        .map(hash)
        .collect();
    assert_eq!(u64_of(v, "proof_tree_size"), checkpoint.tree_size, "{v}");
    assert!(
        cardd::merkle::verify_inclusion(
            &hash(&v["record_hash"]),
            u64_of(v, "proof_leaf_index"),
            checkpoint.tree_size,
            &path,
            &hash(&c["root_hash"]),
        ),
        "{v}"
    );
}

/// `cardd admin` with the demo owner key against `daemon`.
fn admin(daemon: &Daemon, args: &[&str]) -> Run {
    let owner = daemon.owner_key();
    let mut all = vec!["admin", "--connect", &daemon.addr, "--key", &owner];
    all.extend_from_slice(args);
    run_bounded(&cardd_bin(), &all, CALL_TIMEOUT)
}

#[test]
fn receipts_say_who_where_and_when_and_messages_speak_the_currency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let till = Till::new(&daemon, 0);
    let card = daemon.manifest.cards[1].as_str();

    // The receipt: brand, store, terminal, cashier, date and time (UTC).
    let r = till.call(
        &["--operator", "ann"],
        &["purchase", "--card", card, "--amount", "12.50"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let store = &daemon.manifest.stores[0].name;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "Demo Coffee", "{r:?}");
    assert!(lines[1].starts_with("Store") && lines[1].ends_with(&format!("{store} (#1)")));
    assert!(
        lines[2].starts_with("Terminal") && lines[2].ends_with("#1"),
        "{r:?}"
    );
    assert!(
        lines[3].starts_with("Cashier") && lines[3].ends_with(" ann"),
        "{r:?}"
    );
    assert!(
        lines[4].starts_with("Date") && lines[4].ends_with(" UTC"),
        "{r:?}"
    );
    assert!(
        lines.iter().all(|l| l.len() <= 40 || !l.contains("  ")),
        "aligned columns fit 40 characters: {r:?}"
    );
    assert!(
        r.stdout
            .contains("Bill                           12.50 CNY"),
        "{r:?}"
    );

    // A negative amount is an amount, not a flag: the amount message.
    let r = till.call(&[], &["purchase", "--card", card, "--amount", "-5"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--amount: '-5' is below zero"), "{r:?}");
    let r = till.json(&["purchase", "--card", card, "--amount", "-5"]);
    assert_eq!(r.json()["error"], "AMOUNT_OUT_OF_RANGE", "{r:?}");

    // The server's limits in the cashier's units (--json keeps minor units).
    let r = till.call(&[], &["purchase", "--card", card, "--amount", "0"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("AMOUNT_OUT_OF_RANGE (amount must be 0.01 to 10000000.00 CNY)"),
        "{r:?}"
    );
    let buy = till
        .json(&["purchase", "--card", card, "--amount", "30.00"])
        .ok();
    let seq = u64_of(&buy, "record_seq").to_string();
    let r = till.call(&[], &["refund", "--seq", &seq, "--amount", "30.01"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("at most 30.00 CNY are left to refund"),
        "{r:?}"
    );
    let r = till.json(&["refund", "--seq", &seq, "--amount", "30.01"]);
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("3000 minor units")),
        "{r:?}"
    );

    // Short of funds: the balance and the --partial way out, on one line.
    let balance = till.balance(card);
    let r = till.call(&[], &["purchase", "--card", card, "--amount", "9999.00"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    let holds = format!("the card holds {}.{:02} CNY", balance / 100, balance % 100);
    assert!(
        r.stderr.contains(&holds) && r.stderr.contains("--partial"),
        "{r:?}"
    );
    let v = till
        .json(&["purchase", "--card", card, "--amount", "9999.00"])
        .json();
    assert_eq!(
        (v["error"].as_str(), v["balance_minor"].as_i64()),
        (Some("INSUFFICIENT_FUNDS"), Some(balance))
    );
}

#[test]
fn a_blocked_or_replaced_card_says_so_at_the_till() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let till = Till::new(&daemon, 0);
    let card = daemon.manifest.cards[2].as_str();

    let r = admin(&daemon, &["block-card", "--card", card]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with(&format!("Blocked card {card}")),
        "{r:?}"
    );
    let r = till.call(&[], &["inquiry", "--card", card]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("Status                           BLOCKED"),
        "{r:?}"
    );
    let r = till.call(&[], &["purchase", "--card", card, "--amount", "1"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("BLOCKED by the owner"), "{r:?}");
    assert_eq!(admin(&daemon, &["unblock-card", "--card", card]).code, 0);

    let r = admin(&daemon, &["replace-card", "--card", card]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with(&format!("Replaced card {card}")),
        "{r:?}"
    );
    // "Replaced card OLD by NEW: ..."
    let new = r
        .stdout
        .split_once(" by ")
        .and_then(|(_, rest)| rest.split_once(':'))
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| panic!("no new number in {r:?}"));
    let r = till.call(&[], &["inquiry", "--card", card]);
    assert!(
        r.stdout
            .contains("Status                          REPLACED")
            && r.stdout.contains(&format!("Card was REPLACED by {new}")),
        "{r:?}"
    );
    let r = till.call(&[], &["purchase", "--card", card, "--amount", "1"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("this number was REPLACED by card {new}")),
        "{r:?}"
    );
}

#[test]
fn the_state_file_is_private_and_not_beside_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let till = Till::new(&daemon, 1);
    let card = daemon.manifest.cards[0].as_str();
    // A state file of an earlier version beside the key is carried over.
    let old = {
        let mut p = till.key.clone().into_os_string();
        p.push(".state.json");
        PathBuf::from(p)
    };
    std::fs::write(
        &old,
        r#"{"version":1,"identity":null,"next_txn":40,"shift":{},"counted":[],"sent":[]}"#,
    )
    .expect("old state");
    let top = till
        .json(&["topup", "--card", card, "--amount", "1.00"])
        .ok();
    assert_eq!(i64_of(&top, "txn_id"), 40, "carried on from the old file");
    assert!(!old.exists(), "the old state file beside the key is moved");
    let path = till.state_path();
    assert_eq!(path.parent(), Some(till.state_dir.as_path()));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&till.state_dir), 0o700);
    assert_eq!(mode(&path), 0o600);
    // Never inside the daemon's data directory.
    let inside = daemon.data.join("state");
    let key = till.key.to_str().unwrap();
    let r = run(&[
        "--connect",
        &daemon.addr,
        "--key",
        key,
        "--state-dir",
        inside.to_str().unwrap(),
        "inquiry",
        "--card",
        card,
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("inside the daemon's data directory"),
        "{r:?}"
    );
}

#[test]
fn a_receipt_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let till = Till::new(&daemon, 0);
    let card = daemon.manifest.cards[0].as_str();
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(sim_bin())
        .args(["--connect", &daemon.addr, "--key"])
        .arg(&till.key)
        .arg("--state-dir")
        .arg(&till.state_dir)
        .args(["topup", "--card", card, "--amount", "1.00"])
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .output()
        .expect("run terminal-sim");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    // The answer still counted: the state was saved after the closed pipe.
    assert_eq!(till.state()["shift"]["top_up_count"], 1);
}

#[test]
fn a_pin_is_typed_at_the_till_and_set_there_with_the_card_present() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let till = Till::new(&daemon, 0);
    let card = daemon.manifest.cards[1].as_str();
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, r#"{"pin_all_spends": true}"#).expect("rules file");
    let r = admin(&daemon, &["set-rules", "--file", rules.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    // No PIN yet: nothing is asked; the cardholder sets one at the till.
    let buy = ["purchase", "--card", card, "--amount", "1.00"];
    assert_eq!(till.call(&[], &buy).code, 0);
    let r = till.call(&[], &["set-pin", "--card", card, "--new-pin", "4826"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = till.call(&[], &buy);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("PIN_REQUIRED"), "{r:?}");
    let r = till.call(&["--json", "--pin", "4827"], &buy);
    assert_eq!(
        (r.code, r.json()["error"].as_str()),
        (2, Some("WRONG_PIN")),
        "{r:?}"
    );
    let paid = till.call(&["--json", "--pin", "4826"], &buy).ok();
    assert_eq!(i64_of(&paid, "balance_minor"), 20_000 - 200);
    // A change needs the old PIN.
    let change = ["set-pin", "--card", card, "--new-pin", "5937"];
    assert_eq!(till.call(&[], &change).code, 2);
    assert_eq!(till.call(&["--pin", "4826"], &change).code, 0);
    assert_eq!(till.call(&["--pin", "4826"], &buy).code, 2);
    assert_eq!(till.call(&["--pin", "5937"], &buy).code, 0);
    // A PIN typed for an operation that takes none is a usage error.
    let r = till.call(&["--pin", "5937"], &["inquiry", "--card", card]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--pin is for"), "{r:?}");
}

/// Issue 14: `purchase --category` meets a category campaign, the receipt
/// names the upgrade, and `purchase --points` pays part of the bill.
#[test]
fn purchases_name_their_category_pay_with_points_and_print_the_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let till = Till::new(&daemon, 0);
    let card = daemon.manifest.cards[1].as_str();
    let rules = serde_json::json!({
        "points_per_unit": 1,
        "tiers": [{"name": "silver", "min_spend_minor": 0},
                  {"name": "gold", "min_spend_minor": 2000, "promotion_line": "Gold members: free refill"}],
        "campaigns": [{"name": "bakery", "multiplier_milli": 6000, "category": "bakery",
                       "starts": "2000-01-01T00:00:00Z", "ends": "2100-01-01T00:00:00Z"}],
        "points_redemption": {"points": 10, "value_minor": 100}
    });
    let file = dir.path().join("rules.json");
    std::fs::write(&file, rules.to_string()).expect("rules file");
    let set = admin(&daemon, &["set-rules", "--file", file.to_str().unwrap()]);
    assert_eq!(set.code, 0, "{set:?}");

    // 20.00 at the bakery till: 6x = 120 points, and the card reaches gold.
    let r = till.call(
        &[],
        &[
            "purchase",
            "--card",
            card,
            "--amount",
            "20.00",
            "--category",
            "bakery",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Upgraded: silver \u{2192} gold"), "{r:?}");
    assert!(r.stdout.contains("Gold members: free refill"), "{r:?}");
    let earned = r.stdout.lines().find(|l| l.starts_with("Points earned"));
    assert_eq!(earned.map(|l| l.ends_with(" 120")), Some(true), "{r:?}");

    // 30 points pay 3.00 of a 5.00 bill; the card pays 2.00.
    let paid = till
        .json(&[
            "purchase", "--card", card, "--amount", "5.00", "--points", "30",
        ])
        .ok();
    assert_eq!(
        (
            &paid["points_spent"],
            &paid["points_value_minor"],
            &paid["approved_minor"]
        ),
        (&Value::from(30), &Value::from(300), &Value::from(200)),
        "{paid}"
    );
    // Not a multiple of the unit: refused, nothing spent.
    let r = till.json(&[
        "purchase", "--card", card, "--amount", "5.00", "--points", "15",
    ]);
    assert_eq!(r.json()["error"], "AMOUNT_OUT_OF_RANGE", "{r:?}");
}
