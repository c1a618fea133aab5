//! The HTTP listener: off unless configured; /metrics moves by the right
//! amounts; /livez and /readyz; bad requests do not harm the terminal port.
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cardd::limits::{HTTP_HEADER_TIMEOUT_SECS, HTTP_MAX_CONNECTIONS};
use cardd::pb;

use crate::common::http::{free_addr, get, metrics, sample, send};
use crate::common::{call, inquiry, ok, purchase, top_up, Daemon};

/// A demo daemon with its HTTP listener on a free loopback port.
fn demo_with_http(dir: &std::path::Path) -> (Daemon, crate::common::Demo, std::net::SocketAddr) {
    let http = free_addr();
    let (d, demo) = Daemon::demo_with(dir, &["--http-listen", &http.to_string()]);
    (d, demo, http)
}

#[tokio::test]
async fn metrics_count_each_operation_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, http) = demo_with_http(dir.path());
    assert_eq!(get(http, "/livez").unwrap().0, 200);
    assert_eq!(get(http, "/readyz").unwrap(), (200, "ready\n".to_string()));
    let base = metrics(http);
    assert_eq!(
        sample(&base, "cardd_records{brand=\"1\"}"),
        Some(17.0),
        "{base}"
    );

    let mut till = demo.terminal(d.addr, 0).await;
    let card = demo.manifest.cards[0].clone();
    for txn in 100..103 {
        ok(&mut till, txn, purchase(&card, 100)).await;
    }
    ok(&mut till, 103, top_up(&card, 500)).await;
    let code = call(&mut till, 104, purchase(&card, 100_000_000))
        .await
        .unwrap_err();
    assert_eq!(code, pb::ErrorCode::InsufficientFunds);
    inquiry(&mut till, &card).await;
    // A key nobody enrolled: a sign-on failure.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    assert!(cardd::client::Client::connect(d.addr, stranger)
        .await
        .is_err());

    let text = metrics(http);
    let value = |series: &str| sample(&text, series).unwrap_or(0.0);
    let purchases = "cardd_requests_total{op=\"purchase\",result=\"ok\"}";
    assert_eq!(value(purchases), 3.0, "{text}");
    let declined = "cardd_requests_total{op=\"purchase\",result=\"INSUFFICIENT_FUNDS\"}";
    assert_eq!(value(declined), 1.0, "{text}");
    assert_eq!(
        value("cardd_requests_total{op=\"top_up\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value("cardd_requests_total{op=\"inquiry\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(value("cardd_request_seconds_count{op=\"purchase\"}"), 4.0);
    assert_eq!(value("cardd_sign_on_failures_total"), 1.0, "{text}");
    // Four records written (three purchases, one load): the brand's count,
    // and as many records committed, in at most as many checkpoints.
    assert_eq!(value("cardd_records{brand=\"1\"}"), 21.0, "{text}");
    assert_eq!(value("cardd_commit_batch_records_sum"), 4.0, "{text}");
    // Every signed request's signature went through a verifier thread:
    // four purchases, the load, the inquiry.
    assert_eq!(value("cardd_verify_batch_signatures_sum"), 6.0, "{text}");
    let checkpoints = value("cardd_checkpoints_total");
    assert!((1.0..=4.0).contains(&checkpoints), "{text}");
    assert_eq!(value("cardd_writer_queue_depth"), 0.0, "{text}");
    assert!(text.contains("cardd_recovery_seconds "), "{text}");
    assert!(text.contains("cardd_snapshot_seconds_count 0"), "{text}");
    assert_eq!(get(http, "/nothing").unwrap().0, 404);
    // An export counts once, as it starts.
    let out = dir.path().join("brand1.export");
    crate::common::run::cardd_ok([
        "audit".as_ref(),
        "export".as_ref(),
        "--connect".as_ref(),
        d.addr.to_string().as_ref(),
        "--key".as_ref(),
        demo.owner_key_path().as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let exports = "cardd_requests_total{op=\"export_ledger\",result=\"ok\"}";
    assert_eq!(sample(&metrics(http), exports), Some(1.0));
    // The stranger's connection is gone (once its task ends), the till's is not.
    let open = || sample(&metrics(http), "cardd_connections");
    assert!(
        crate::common::wait_until(|| open() == Some(1.0)),
        "{:?}",
        open()
    );
}

/// The process's listening TCP sockets (inodes from /proc/net/tcp{,6}
/// matched against its open file descriptors).
fn listening_sockets(pid: u32) -> usize {
    let mut listening = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) == Some(&"0A") {
                listening.insert(f[9].to_string());
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .filter(|inode| listening.contains(inode))
        .count()
}

#[test]
fn the_http_listener_is_off_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("a"), &[]);
    assert_eq!(listening_sockets(d.child.id()), 1, "only the terminal port");
    let http = free_addr();
    let e = Daemon::start(&dir.path().join("b"), &["--http-listen", &http.to_string()]);
    assert_eq!(listening_sockets(e.child.id()), 2);
    assert_eq!(get(http, "/livez").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_clients_do_not_harm_the_terminal_port() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, http) = demo_with_http(dir.path());
    let card = demo.manifest.cards[0].clone();

    // Huge headers: refused (431) or cut, never buffered without bound.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    if let Some((status, _)) = send(http, huge.as_bytes()) {
        assert_eq!(status, 431);
    }
    // Slow clients holding every connection slot, and one more.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..=HTTP_MAX_CONNECTIONS {
        let mut s = TcpStream::connect(http).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost:").unwrap();
        slow.push(s);
    }
    // The terminal port serves meanwhile.
    let mut till = demo.terminal(d.addr, 0).await;
    ok(&mut till, 100, purchase(&card, 100)).await;
    // The slow ones are cut at the header deadline; the listener serves again.
    let deadline = started + Duration::from_secs(HTTP_HEADER_TIMEOUT_SECS + 10);
    loop {
        if let Some((200, _)) = get(http, "/livez") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the HTTP listener did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(HTTP_HEADER_TIMEOUT_SECS - 1));
    drop(slow);
    assert_eq!(inquiry(&mut till, &card).await.balance_minor, 10_000 - 100);
}

#[test]
fn readyz_answers_503_until_every_brand_is_recovered() {
    use crate::common::serve::{serve_command, watch_listening, START_TIMEOUT};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = free_addr();
    let flag = http.to_string();
    let extra = ["--demo", "--http-listen", flag.as_str()];
    let mut child = serve_command(crate::common::cardd_bin(), &data, &extra)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let listening = watch_listening(child.stdout.take().unwrap());
    // The HTTP listener is bound before recovery (and the demo's
    // provisioning) starts; poll it until the daemon says it listens.
    let (mut seen, started) = (Vec::new(), Instant::now());
    let addr = loop {
        if let Ok(addr) = listening.try_recv() {
            break addr;
        }
        if let Some(answer) = get(http, "/readyz") {
            seen.push(answer);
        }
        assert!(started.elapsed() < START_TIMEOUT, "no listening line");
    };
    let d = Daemon {
        child,
        addr: addr.parse().unwrap(),
        data,
    };
    let not_ready = seen.iter().take_while(|(s, _)| *s == 503).count();
    println!(
        "{not_ready} answers of 503 before the listening line, then {:?}",
        &seen[not_ready..]
    );
    // Provisioning the demo brand alone takes far longer than a GET.
    assert!(not_ready > 0, "never seen before recovery: {seen:?}");
    assert!(
        seen[..not_ready]
            .iter()
            .all(|(_, body)| body == "recovering\n"),
        "{seen:?}"
    );
    assert!(
        seen[not_ready..].iter().all(|a| a.0 == 200),
        "ready, then not: {seen:?}"
    );
    assert_eq!(get(http, "/readyz").unwrap(), (200, "ready\n".to_string()));
    drop(d);
}

/// Snapshots are written beside the applier, by a forked child (the
/// default) or by a copy of the state: the stall metric counts each fork and
/// stays at zero with the copy, and each stored snapshot is exactly the
/// state at its own record (the applier had moved on when it was written).
#[tokio::test]
async fn snapshots_are_written_beside_the_applier_and_hold_the_state_at_their_record() {
    snapshots_hold_the_state_at_their_record("fork").await;
    // A copy of the state writes them; the applier never pauses.
    snapshots_hold_the_state_at_their_record("copy").await;
}

/// Snapshots every 5 records, written `by` a copy of the state or a forked
/// child: each must hold the card's balance exactly as at its record.
async fn snapshots_hold_the_state_at_their_record(by: &str) {
    let dir = tempfile::tempdir().unwrap();
    let http = free_addr();
    let extra = [
        "--http-listen",
        &http.to_string(),
        "--snapshot-every",
        "5",
        "--snapshot-by",
        by,
    ];
    let (d, demo) = Daemon::demo_with(dir.path(), &extra);
    let mut till = demo.terminal(d.addr, 0).await;
    let card = demo.manifest.cards[1].clone();
    let mut balance_at = std::collections::BTreeMap::new();
    let value = |series: &str| sample(&metrics(http), series).unwrap_or(0.0);
    // A snapshot is taken when one is due and none is being written; the
    // first (a generation, by a low-priority child) can outlast many
    // purchases on a loaded machine: buy until five are stored (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut txn = 100;
    while txn < 130 || value("cardd_snapshot_seconds_count") < 5.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "snapshots stored by {by}: {}",
            value("cardd_snapshot_seconds_count")
        );
        let reply = ok(&mut till, txn, purchase(&card, 1)).await;
        let seq = reply.receipt.unwrap().seq;
        balance_at.insert(seq, reply.card.unwrap().balance_minor);
        txn += 1;
    }
    let stalls = value("cardd_snapshot_stall_seconds_count");
    match by {
        "fork" => assert!(stalls >= 5.0, "{stalls} forks"),
        _ => assert_eq!(stalls, 0.0, "the applier paused for a snapshot"),
    }
    let server = cardd::crypto::read_key_file(&cardd::server::start::server_key_path(&demo.data))
        .unwrap()
        .verifying_key();
    let state = cardd::snapshot::read(&cardd::snapshot::dir(&demo.data), 1, &server)
        .unwrap()
        .expect("a snapshot");
    let (_, number) = cardd::card_number::parse_number(&card).unwrap();
    assert!(
        balance_at.contains_key(&state.seq),
        "snapshot by {by} at {}",
        state.seq
    );
    assert_eq!(state.cards[&number].balance(), balance_at[&state.seq]);
    drop(d);
}
