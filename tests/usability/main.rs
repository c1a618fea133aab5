//! The `cardd` console as people and scripts meet it: output into a closed
//! pipe, one JSON object for every failure under `--json`, amounts that
//! start with a minus, and what `brand create` says. Each test runs the
//! real binary against its own demo daemon (see `tests/common`).
#[path = "../common/mod.rs"]
mod common;

use std::ffi::OsStr;
use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::run::{self, run_bounded};
use common::{cardd_bin, Daemon};

/// `cardd` with `args`, bounded.
fn cardd(args: &[&OsStr]) -> Output {
    run::cardd(args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one JSON object a failed `--json` call prints on stdout.
fn json_failure(o: &Output) -> serde_json::Value {
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {o:?}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(v["ok"], false, "{v}");
    v
}

#[test]
fn audit_verify_into_a_closed_pipe_exits_0_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let export = dir.path().join("brand.ledger");
    let addr = d.addr.to_string();
    let o = cardd(&[
        "audit".as_ref(),
        "export".as_ref(),
        "--connect".as_ref(),
        addr.as_ref(),
        "--key".as_ref(),
        demo.owner_key_path().as_os_str(),
        "--out".as_ref(),
        export.as_os_str(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let key = text(
        &cardd(&[
            "server-key".as_ref(),
            "--data".as_ref(),
            demo.data.as_os_str(),
        ])
        .stdout,
    );
    let key = key.trim();

    // The summary by default: no line per card.
    let o = cardd(&[
        "audit".as_ref(),
        "verify".as_ref(),
        export.as_os_str(),
        "--server-key".as_ref(),
        key.as_ref(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    assert!(out.contains("cards              5 (5 active"), "{out}");
    assert!(!out.contains(&demo.manifest.cards[0]), "{out}");
    let o = cardd(&[
        "audit".as_ref(),
        "verify".as_ref(),
        export.as_os_str(),
        "--server-key".as_ref(),
        key.as_ref(),
        "--cards".as_ref(),
    ]);
    assert!(text(&o.stdout).contains(&demo.manifest.cards[0]), "{o:?}");

    // Standard output already closed when verify prints its first line.
    into_a_closed_pipe(&[
        "audit".as_ref(),
        "verify".as_ref(),
        export.as_os_str(),
        "--server-key".as_ref(),
        key.as_ref(),
        "--cards".as_ref(),
    ]);

    // And as a shell pipeline with pipefail: `verify | head -1` exits 0.
    let line = format!(
        "set -o pipefail; '{}' audit verify '{}' --server-key {key} --cards | head -1",
        cardd_bin(),
        export.display()
    );
    let o = run_bounded(
        Command::new("bash").args(["-c", &line]),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{o:?}");
    assert!(
        text(&o.stdout).starts_with("brand 1 (Demo Coffee)"),
        "{o:?}"
    );
    assert!(!text(&o.stderr).contains("panicked"), "{o:?}");
}

/// Runs `cardd ARGS` with standard output already closed (a reader such as
/// `| head -1` that ended): it must exit 0 and say nothing.
fn into_a_closed_pipe<S: AsRef<OsStr>>(args: &[S]) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut child = Command::new(cardd_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    let shown: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    assert_eq!(status.code(), Some(0), "{shown:?}: {stderr}");
    assert!(
        stderr.is_empty(),
        "{shown:?}: quiet on a closed pipe: {stderr}"
    );
}

/// `cardd server-key` only reads: a mistyped `--data` is an error that
/// leaves no directory or key behind.
#[test]
fn server_key_of_a_missing_data_directory_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("var-lib-cardd-typo");
    let o = cardd(&["server-key".as_ref(), "--data".as_ref(), typo.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(!typo.exists(), "created {}", typo.display());
}

/// Output lost to a full disk is not a closed pipe: `cardd ... > file`
/// must not exit 0 with the file cut short.
#[test]
fn output_lost_to_a_full_disk_exits_non_zero() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cardd.toml");
    std::fs::write(&file, "").expect("an empty settings file");
    let out = Command::new(cardd_bin())
        .args(["config".as_ref(), "check".as_ref(), file.as_os_str()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(full)
        .output()
        .expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writing to standard output"), "{stderr}");
}

#[test]
fn reports_listings_and_rules_into_a_closed_pipe_exit_0_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let addr = d.addr.to_string();
    let key = demo.owner_key_path();
    let key = key.to_str().expect("utf-8 path");
    let admin = |rest: &[&str]| {
        let mut args = vec!["admin", "--connect", &addr, "--key", key];
        args.extend_from_slice(rest);
        into_a_closed_pipe(&args);
    };
    admin(&["report", "liability"]);
    admin(&["--json", "report", "sales"]);
    admin(&["report", "dormant", "--csv"]);
    admin(&["list", "stores"]);
    admin(&["rules"]);
}

#[test]
fn every_failure_under_json_is_one_json_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let owner = demo.owner_key_path();
    let addr = d.addr.to_string();
    let admin = |connect: &str, args: &[&str]| {
        let mut all: Vec<&OsStr> = vec![
            "admin".as_ref(),
            "--json".as_ref(),
            "--connect".as_ref(),
            connect.as_ref(),
            "--key".as_ref(),
            owner.as_os_str(),
        ];
        all.extend(args.iter().map(OsStr::new));
        cardd(&all)
    };
    let card = demo.manifest.cards[0].as_str();

    // Nobody listening: the code and the address.
    let free = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let o = admin(&free, &["inquiry", "--card", card]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v = json_failure(&o);
    assert_eq!(v["error"], "CONNECTION_FAILED", "{v}");
    assert!(v["message"].as_str().unwrap().contains(&free), "{v}");

    // A negative amount is a value, refused as an amount.
    let o = admin(&addr, &["topup", "--card", card, "--amount", "-5"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(json_failure(&o)["error"], "AMOUNT_OUT_OF_RANGE");
    assert!(text(&o.stderr).contains("'-5' is below zero"), "{o:?}");

    // A usage error clap finds.
    let o = admin(&addr, &["inquiry"]);
    assert_eq!(json_failure(&o)["error"], "USAGE", "{o:?}");

    // The server's refusal keeps its shape and its minor units.
    let o = admin(&addr, &["topup", "--card", card, "--amount", "0"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let v = json_failure(&o);
    assert_eq!(v["error"], "AMOUNT_OUT_OF_RANGE", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("minor units"),
        "{v}"
    );
    // ...which a person reads in the currency.
    let o = cardd(&[
        "admin".as_ref(),
        "--connect".as_ref(),
        addr.as_ref(),
        "--key".as_ref(),
        owner.as_os_str(),
        "topup".as_ref(),
        "--card".as_ref(),
        card.as_ref(),
        "--amount".as_ref(),
        "0".as_ref(),
    ]);
    assert!(
        text(&o.stderr).contains("amount must be 0.01 to 10000000.00 CNY"),
        "{o:?}"
    );
}

#[test]
fn brand_create_prints_the_id_for_scripts_and_words_for_people() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let key = dir.path().join("tea-owner.key");
    let o = cardd(&[
        "brand".as_ref(),
        "create".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--name".as_ref(),
        "Tea House".as_ref(),
        "--owner-key".as_ref(),
        key.as_os_str(),
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(text(&o.stdout), "1\n");
    assert!(
        text(&o.stderr).contains("created brand 1 \"Tea House\" (CNY, 2 decimals)"),
        "{o:?}"
    );
}
