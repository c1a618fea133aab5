//! `cardd backup` and `cardd restore` end to end, on the real binary: an
//! owner's backup of a live daemon, more traffic, an incremental backup,
//! a restore into a new directory and a daemon started on it that serves
//! the same cards and continues the same chain (`incremental`); damaged
//! backups refused by both commands, a forked history refused by the
//! consistency proof, wrong restore targets and keys (`damaged`); backups
//! over TLS (`tls`); the server operator's backup of every brand restored
//! (`two_brands`); backups and restores across a server key rotation
//! (`rotation`).
//!
//! The demo brand (brand 1) holds records 1..=17 when a test starts: the
//! owner used txn ids 1..=10, terminal 1 (store 1) txn ids 1..=6 (see
//! `src/demo.rs`); the tests use txn ids from 100 on.
#[path = "../common/mod.rs"]
mod common;

mod damaged;
mod incremental;
mod rotation;
mod tls;
mod two_brands;

use std::ffi::OsString;
use std::path::Path;
use std::process::Output;

use cardd::client::Client;
use common::{inquiry, run};

/// `cardd!(arg, ...)`: runs `cardd` (bounded) with arguments that
/// `OsString::from` takes by reference.
macro_rules! cardd {
    ($($a:expr),* $(,)?) => { run::cardd(vec![$(OsString::from($a)),*]) };
}
pub(crate) use cardd;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn assert_ok(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(0), "{what}: {}", text(o));
}

/// Asserts a non-zero exit and returns the output.
#[track_caller]
fn assert_fails(o: &Output, what: &str) -> String {
    assert!(
        o.status.code().is_some_and(|c| c != 0),
        "{what}: expected a failure, got {:?}: {}",
        o.status.code(),
        text(o)
    );
    text(o)
}

/// The server's public key of a data directory, hex.
fn server_key_hex(data: &Path) -> String {
    let o = cardd!("server-key", "--data", data);
    assert_ok(&o, "server-key");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `cardd audit verify FILE --json`, which must succeed.
#[track_caller]
fn verify_json(file: &Path, key_hex: &str) -> serde_json::Value {
    let o = cardd!("audit", "verify", file, "--server-key", key_hex, "--json");
    assert_ok(&o, &format!("audit verify {}", file.display()));
    serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).expect("one JSON object")
}

/// `cardd backup --connect ADDR --key KEY --out FILE`.
fn backup_online(addr: &str, key: &Path, out: &Path) -> Output {
    cardd!("backup", "--connect", addr, "--key", key, "--out", out)
}

/// What a card looks like to the daemon: (paid, bonus, points, tier, status).
type CardState = (i64, i64, i64, String, i32);

/// Every card in `cards` as the daemon behind `owner` reports it.
async fn cards_of(owner: &mut Client, cards: &[String]) -> Vec<CardState> {
    let mut out = Vec::new();
    for card in cards {
        let v = inquiry(owner, card).await;
        out.push((
            v.paid_balance_minor,
            v.bonus_balance_minor,
            v.points,
            v.tier,
            v.status,
        ));
    }
    out
}

/// The card numbers of a verify report.
fn report_cards(report: &serde_json::Value) -> Vec<String> {
    report["cards"]
        .as_array()
        .expect("cards")
        .iter()
        .map(|c| c["card"].as_str().expect("card number").to_string())
        .collect()
}

/// The independent Python verifier accepts `file` (skipped, loudly, when
/// no Python with `cryptography` is found outside CI).
fn python_verifies(file: &Path, key_hex: &str) {
    use std::process::Command;
    let python = std::env::var("CARDD_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    let works = Command::new(&python)
        .args([
            "-c",
            "import cryptography.hazmat.primitives.asymmetric.ed25519",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        assert!(std::env::var_os("CI").is_none(), "no Python verifier in CI");
        eprintln!("SKIPPED: no Python with 'cryptography' for the independent verifier");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent_verifier.py");
    let o = run::run_bounded(
        Command::new(python)
            .arg(script)
            .arg(file)
            .args(["--server-key", key_hex]),
        std::time::Duration::from_secs(300),
    );
    assert_ok(&o, "independent_verifier.py on the backup");
}
