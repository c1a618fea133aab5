//! TLS on the terminal port: the demo daemon served with `--tls-cert` and
//! `--tls-key` (a self-signed certificate for "localhost" made here), the
//! protocol client, `cardd admin` and `terminal-sim` over it, and what is
//! refused: plain TCP, an untrusted certificate, a wrong name, a key file
//! others can read, a stalled handshake. Loopback only; every wait bounded.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cardd::client::{AnyClient, Client, ClientError, TlsClient};
use cardd::crypto::read_key_file;
use cardd::pb;
use common::cert::{self_signed, write_mode, Cert};
use common::run::run_bounded;
use common::{bounded, cardd_bin, inquiry, purchase, Daemon, Demo};
use tokio::io::AsyncReadExt;

/// The demo daemon serving TLS with a fresh certificate.
fn tls_daemon(dir: &Path) -> (Daemon, Demo, Cert) {
    let cert = Cert::new(dir, "server");
    let (d, demo) = Daemon::demo_with(
        dir,
        &["--tls-cert", cert.cert_str(), "--tls-key", cert.key_str()],
    );
    (d, demo, cert)
}

async fn tls_terminal(d: &Daemon, demo: &Demo, store: usize, tls: &TlsClient) -> AnyClient {
    let key = read_key_file(&demo.terminal_key_path(store)).expect("terminal key");
    bounded(Client::connect_tls(d.addr, key, tls))
        .await
        .expect("TLS sign-on")
}

/// Sends `op` under the next transaction id.
async fn call_next(c: &mut AnyClient, op: pb::request::Op) -> pb::Reply {
    let txn = c.session.last_txn_id + 1;
    c.session.last_txn_id = txn;
    let req = c.request(txn, op);
    bounded(c.call(&req)).await.expect("approved")
}

async fn balance(c: &mut AnyClient, card: &str) -> i64 {
    let req = c.request(
        0,
        pb::request::Op::Inquiry(pb::Inquiry { card: card.into() }),
    );
    let reply = bounded(c.call(&req)).await.expect("inquiry");
    reply.card.expect("card view").balance_minor
}

/// The `terminal-sim` binary, built (or found up to date) by cargo: it is
/// another package of the workspace, so cargo does not build it for this
/// test on its own.
fn terminal_sim_bin() -> PathBuf {
    let profile_dir = Path::new(cardd_bin()).parent().expect("target profile dir");
    let bin = profile_dir.join(format!("terminal-sim{}", std::env::consts::EXE_SUFFIX));
    // `cargo test --workspace` (the README's command) has just built it
    // beside cardd. Building it again from here would resolve its
    // features apart from the workspace's and rebuild its dependencies:
    // minutes on a CI machine. Run alone (`cargo test --test tls`) with a
    // terminal-sim changed since, run the workspace's build first.
    if bin.exists() {
        return bin;
    }
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "terminal-sim",
        "--bin",
        "terminal-sim",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = run_bounded(&mut cmd, Duration::from_secs(900));
    assert!(
        out.status.success(),
        "building terminal-sim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bin.exists(),
        "{} not found after building it",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn tls_client_signs_on_and_purchases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo, cert) = tls_daemon(dir.path());
    let tls = cert.trusting("localhost");
    let mut till = tls_terminal(&d, &demo, 0, &tls).await;
    assert!(till.framed().get_ref().is_tls());
    assert_eq!(till.session.brand_id, demo.manifest.brand_id);
    let card = demo.manifest.cards[4].clone(); // paid 1000.00, bonus 150.00
    let before = balance(&mut till, &card).await;
    let reply = call_next(&mut till, purchase(&card, 12_345)).await;
    let view = reply.card.expect("card view");
    assert_eq!(view.balance_minor, before - 12_345);
    assert_eq!(balance(&mut till, &card).await, before - 12_345);
    // The ed25519 layer is unchanged under TLS: the server key from the
    // challenge is the daemon's.
    let out = run_bounded(
        Command::new(cardd_bin())
            .args(["server-key", "--data"])
            .arg(&d.data),
        Duration::from_secs(30),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        hex::encode(till.server_key)
    );
}

#[tokio::test]
async fn plain_tcp_client_gets_nothing_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut d, demo, cert) = tls_daemon(dir.path());
    let tls = cert.trusting("localhost");
    let key = read_key_file(&demo.terminal_key_path(0)).expect("terminal key");
    for _ in 0..3 {
        let started = Instant::now();
        match bounded(Client::connect(d.addr, key.clone())).await {
            Ok(_) => panic!("a plain-TCP client signed on to a TLS daemon"),
            Err(ClientError::Refused(r)) => panic!("a plain-TCP client got a protocol answer: {r}"),
            Err(_) => {}
        }
        // Closed at its first bytes (not a TLS record), not left to wait
        // out the handshake's deadline: a till set up without TLS learns
        // it at once.
        assert!(
            started.elapsed() < Duration::from_secs(cardd::limits::SIGN_ON_TIMEOUT_SECS / 2),
            "a plain client waited {:?} to be closed",
            started.elapsed()
        );
    }
    // Raw garbage on the TLS port too.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = bounded(tokio::net::TcpStream::connect(d.addr))
            .await
            .expect("connect");
        let _ = bounded(s.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\x00\x00\x05hello")).await;
        let mut buf = [0u8; 256];
        // Whatever comes back (a TLS alert at most), the connection ends.
        while let Ok(n) = bounded(s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
        }
    }
    assert!(d.is_running(), "the daemon died");
    let mut till = tls_terminal(&d, &demo, 0, &tls).await;
    let card = demo.manifest.cards[3].clone();
    let before = balance(&mut till, &card).await;
    let reply = call_next(&mut till, purchase(&card, 100)).await;
    assert_eq!(reply.card.expect("card view").balance_minor, before - 100);
    assert!(d.is_running(), "the daemon died");
}

#[tokio::test]
async fn untrusted_certificate_or_wrong_name_fails_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut d, demo, cert) = tls_daemon(dir.path());
    let key = read_key_file(&demo.terminal_key_path(0)).expect("terminal key");
    // A different self-signed "CA" for the same name.
    let other = Cert::new(dir.path(), "other");
    for (tls, what) in [
        (other.trusting("localhost"), "another CA"),
        (cert.trusting("cardd.example"), "the wrong server name"),
    ] {
        match bounded(Client::connect_tls(d.addr, key.clone(), &tls)).await {
            Ok(_) => panic!("signed on trusting {what}"),
            Err(ClientError::Io(e)) => {
                let msg = e.to_string();
                assert!(msg.contains("TLS handshake"), "{what}: {msg}");
            }
            Err(e) => panic!("{what}: expected a handshake failure, got {e}"),
        }
    }
    // A TLS client to a plain daemon fails too.
    let plain_dir = tempfile::tempdir().expect("tempdir");
    let (plain, plain_demo) = Daemon::demo(plain_dir.path());
    let plain_key = read_key_file(&plain_demo.terminal_key_path(0)).expect("terminal key");
    assert!(
        bounded(Client::connect_tls(
            plain.addr,
            plain_key,
            &cert.trusting("localhost")
        ))
        .await
        .is_err(),
        "TLS sign-on to a plain daemon"
    );
    assert!(d.is_running());
    let mut till = tls_terminal(&d, &demo, 0, &cert.trusting("localhost")).await;
    assert_eq!(
        bounded(till.echo(b"ok".to_vec())).await.expect("echo"),
        b"ok"
    );
}

#[tokio::test]
async fn a_stalled_handshake_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut d, _demo, _cert) = tls_daemon(dir.path());
    let mut s = bounded(tokio::net::TcpStream::connect(d.addr))
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    // Nothing sent: the daemon gives up after the sign-on timeout.
    let limit = Duration::from_secs(cardd::limits::SIGN_ON_TIMEOUT_SECS + 15);
    let r = tokio::time::timeout(limit, s.read(&mut buf))
        .await
        .expect("the daemon kept a silent TLS connection open");
    assert!(matches!(r, Ok(0) | Err(_)), "unexpected bytes: {r:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(cardd::limits::SIGN_ON_TIMEOUT_SECS - 1),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    assert!(d.is_running());
}

#[test]
fn bad_tls_files_stop_start_up_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = Cert::new(dir.path(), "good");
    let (_, open_key) = self_signed(&["localhost"]);
    let open = dir.path().join("open.key.pem");
    write_mode(&open, &open_key, 0o644);
    let not_pem = dir.path().join("not.pem");
    write_mode(&not_pem, "not a certificate\n", 0o600);
    let open_s = open.to_str().expect("utf-8");
    let not_pem_s = not_pem.to_str().expect("utf-8");
    let stranger = Cert::new(dir.path(), "stranger");
    let missing = dir.path().join("missing.pem");
    let missing_s = missing.to_str().expect("utf-8");
    let cases: [(&[&str], &str); 6] = [
        (
            &["--tls-cert", good.cert_str(), "--tls-key", open_s],
            "readable by others",
        ),
        (
            &["--tls-cert", not_pem_s, "--tls-key", good.key_str()],
            "no PEM certificate",
        ),
        (
            &["--tls-cert", good.cert_str(), "--tls-key", not_pem_s],
            "no PEM private key",
        ),
        (
            &["--tls-cert", missing_s, "--tls-key", good.key_str()],
            "missing.pem",
        ),
        (
            &[
                "--tls-cert",
                good.cert_str(),
                "--tls-key",
                stranger.key_str(),
            ],
            "do not make a usable pair",
        ),
        (&["--tls-cert", good.cert_str()], "--tls-key"),
    ];
    for (i, (args, expect)) in cases.iter().enumerate() {
        let data = dir.path().join(format!("data{i}"));
        let out = run_bounded(
            Command::new(cardd_bin())
                .arg("serve")
                .arg("--data")
                .arg(&data)
                .args(["--listen", "127.0.0.1:0"])
                .args(*args)
                .env("RUST_LOG", "warn"),
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "{args:?} listened"
        );
        assert!(
            stderr.contains(expect),
            "{args:?}: expected {expect:?} in {stderr}"
        );
    }
}

#[tokio::test]
async fn admin_and_terminal_sim_speak_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo, cert) = tls_daemon(dir.path());
    let addr = d.addr.to_string();
    let card = demo.manifest.cards[2].clone();
    let before = {
        let mut till = tls_terminal(&d, &demo, 0, &cert.trusting("localhost")).await;
        balance(&mut till, &card).await
    };

    // cardd admin --tls-ca
    let owner_key = demo.owner_key_path();
    let admin = |extra: &[&str]| {
        let mut cmd = Command::new(cardd_bin());
        cmd.args(["admin", "--connect", &addr, "--key"])
            .arg(&owner_key)
            .args(extra)
            .args(["--json", "inquiry", "--card", &card]);
        run_bounded(&mut cmd, Duration::from_secs(60))
    };
    let out = admin(&["--tls-ca", cert.cert_str()]);
    assert!(
        out.status.success(),
        "admin: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("admin prints one JSON object");
    assert_eq!(v["balance_minor"].as_i64(), Some(before));
    let out = admin(&[]);
    assert!(
        !out.status.success(),
        "plain admin signed on to a TLS daemon"
    );

    // terminal-sim --tls-ca, on the other store's till.
    let sim = terminal_sim_bin();
    let key = demo.terminal_key_path(1);
    let run_sim = |extra: &[&str], op: &[&str]| {
        let mut cmd = Command::new(&sim);
        cmd.args(["--connect", &addr, "--key"])
            .arg(&key)
            .args(["--timeout", "10", "--json"])
            // The till's state goes to the test's directory, not $HOME.
            .env("XDG_STATE_HOME", dir.path())
            .args(extra)
            .args(op);
        run_bounded(&mut cmd, Duration::from_secs(60))
    };
    let out = run_sim(
        &["--tls-ca", cert.cert_str()],
        &["purchase", "--card", &card, "--amount", "1.25"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "terminal-sim: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("terminal-sim prints one JSON object");
    assert_eq!(v["balance_minor"].as_i64(), Some(before - 125));
    // Without --tls-ca, or trusting another certificate: the call fails (1).
    let other = Cert::new(dir.path(), "other");
    for extra in [&[][..], &["--tls-ca", other.cert_str()][..]] {
        let out = run_sim(extra, &["inquiry", "--card", &card]);
        assert_eq!(out.status.code(), Some(1), "terminal-sim {extra:?}");
    }
}

/// The plain harness helpers still work against a plain daemon (the
/// client type for plain TCP is unchanged).
#[tokio::test]
async fn plain_daemon_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, demo) = Daemon::demo(dir.path());
    let mut till = bounded(demo.terminal(d.addr, 0)).await;
    let card = demo.manifest.cards[1].clone();
    let v = inquiry(&mut till, &card).await;
    let mut any = bounded(Client::connect_with(
        d.addr,
        read_key_file(&demo.terminal_key_path(1)).expect("key"),
        None,
    ))
    .await
    .expect("plain sign-on through connect_with");
    assert!(!any.framed().get_ref().is_tls());
    assert_eq!(balance(&mut any, &card).await, v.balance_minor);
}
