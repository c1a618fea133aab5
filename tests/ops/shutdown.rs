//! The graceful shutdown. SIGTERM under load: the daemon answers what it
//! read, exits 0 within the grace period, and after a restart every
//! acknowledged operation is in the ledger exactly once (restarting from
//! the final snapshot). A stalled TLS handshake does not hold it; a second
//! signal ends it at once, losing nothing acknowledged; systemd hears
//! READY=1 and STOPPING=1.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cardd::client::{Client, ClientError};
use cardd::crypto::read_key_file;
use cardd::limits::SHUTDOWN_GRACE_SECS;
use cardd::pb;

use crate::common::{inquiry, status_of, top_up, Daemon};

/// A tenth of it (the final snapshot's threshold) is below what the load
/// commits before the signal (SIGNAL_AFTER); the whole of it is above all
/// the load can write, so no periodic snapshot is taken.
const SNAPSHOT_EVERY: u64 = 5_000;
/// Top-ups of this much, each its own record.
const LOAD: i64 = 100;
/// Loads acknowledged before the SIGTERM (of WORKERS x LOADS).
const SIGNAL_AFTER: usize = 600;
const _: () = assert!(SIGNAL_AFTER as u64 >= SNAPSHOT_EVERY / 10);
const _: () = assert!(17 + WORKERS * LOADS < SNAPSHOT_EVERY);
/// Clients loading at once (on the demo's first till, txn ids apart).
const WORKERS: u64 = 6;
/// The demo's first till used txn ids 1..=6; each worker starts above.
fn first_txn(worker: u64) -> u64 {
    100 + worker * LOADS
}

/// Loads per worker at most (ids stay inside the till's txn window).
const LOADS: u64 = 640;

/// Loads `card` until the connection ends or LOADS loads are done; returns
/// the txn ids acknowledged and those sent with no answer.
async fn load_until_cut(
    mut c: Client,
    worker: u64,
    card: String,
    acked_so_far: Arc<AtomicUsize>,
) -> (Vec<u64>, Vec<u64>) {
    let (mut acked, mut unknown) = (Vec::new(), Vec::new());
    for txn in first_txn(worker)..first_txn(worker) + LOADS {
        let req = c.request(txn, top_up(&card, LOAD));
        match c.call(&req).await {
            Ok(_) => {
                acked.push(txn);
                acked_so_far.fetch_add(1, Ordering::Relaxed);
            }
            // The daemon's notice that it is going down: not read, or read
            // and its answer still to come; its status will tell.
            Err(ClientError::Refused(r)) if r.code == pb::ErrorCode::ServerBusy => {
                unknown.push(txn);
                break;
            }
            Err(ClientError::Refused(r)) => panic!("txn {txn} refused: {:?}", r.code),
            Err(_) => {
                unknown.push(txn);
                break;
            }
        }
    }
    (acked, unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_and_loses_or_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let every = SNAPSHOT_EVERY.to_string();
    let (mut d, demo) = Daemon::demo_with(dir.path(), &["--snapshot-every", &every]);
    let key = read_key_file(&demo.terminal_key_path(0)).unwrap();
    let cards: Vec<String> = demo.manifest.cards.clone();
    let mut before = Vec::new();
    {
        let mut c = crate::common::connect(d.addr, key.clone()).await;
        for w in 0..WORKERS as usize {
            before.push(inquiry(&mut c, &cards[w % cards.len()]).await.balance_minor);
        }
    }
    let results = Arc::new(Mutex::new(Vec::new()));
    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let c = crate::common::connect(d.addr, key.clone()).await;
        let card = cards[w as usize % cards.len()].clone();
        let results = results.clone();
        let acked_so_far = acked_so_far.clone();
        tasks.push(tokio::spawn(async move {
            let r = load_until_cut(c, w, card, acked_so_far).await;
            results.lock().unwrap().push((w, r));
        }));
    }
    // The signal comes in the middle of the load, however fast the machine.
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while acked_so_far.load(Ordering::Relaxed) < SIGNAL_AFTER {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    waited.await.expect("the load runs");
    d.signal(libc::SIGTERM);
    let status =
        tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(SHUTDOWN_GRACE_SECS + 10)))
            .expect("the daemon exits within its grace period");
    assert!(status.success(), "exit status {status:?}");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    let total_acked: usize = results.iter().map(|(_, (a, _))| a.len()).sum();
    assert!(total_acked > 0, "the load ran before the signal");
    let cut = results
        .iter()
        .filter(|(_, (a, _))| a.len() < LOADS as usize)
        .count();
    assert!(
        cut > 0,
        "the signal came after the load ended: not a test under load"
    );

    // The newest snapshot as the stop left it (before the restart below).
    let server = read_key_file(&demo.data.join("server.key")).unwrap();
    let snapshots = cardd::snapshot::dir(&demo.data);
    let final_state = cardd::snapshot::read(&snapshots, 1, &server.verifying_key()).unwrap();
    let snapshot_written = final_state.is_some();
    let d = Daemon::start(&demo.data, &[]);
    let mut c = crate::common::connect(d.addr, key).await;
    let mut expected = before.clone();
    for (w, (acked, unknown)) in &results {
        let slot = *w as usize;
        for &txn in acked {
            let s = status_of(&mut c, txn).await;
            assert_eq!(
                s.state,
                pb::TxnState::Committed as i32,
                "acknowledged txn {txn}"
            );
            expected[slot] += LOAD;
        }
        // A load sent as the daemon went down is in the ledger or not,
        // never twice: its status says which.
        for &txn in unknown {
            if status_of(&mut c, txn).await.state == pb::TxnState::Committed as i32 {
                expected[slot] += LOAD;
            }
        }
    }
    // At shutdown, a snapshot once a tenth of the interval was written (and
    // the restart above started from it).
    let loads: i64 = expected
        .iter()
        .zip(&before)
        .map(|(e, b)| (e - b) / LOAD)
        .sum();
    println!("{loads} loads committed, final snapshot: {snapshot_written}");
    assert!(snapshot_written, "{loads} loads and no final snapshot");
    // Two workers may share a card (five demo cards, six workers): sum by card.
    let mut by_card = std::collections::BTreeMap::new();
    for (w, card) in cards.iter().cycle().take(WORKERS as usize).enumerate() {
        *by_card.entry(card.clone()).or_insert(0) += expected[w] - before[w];
    }
    let distinct: BTreeSet<&String> = by_card.keys().collect();
    for card in distinct {
        let start = before[cards.iter().position(|c| c == card).unwrap()];
        let v = inquiry(&mut c, card).await;
        assert_eq!(v.balance_minor, start + by_card[card], "card {card}");
        // The final snapshot holds every load made durable before the stop.
        let number: u64 = card.parse().unwrap();
        let snap = &final_state.as_ref().unwrap().cards[&number];
        assert_eq!(
            snap.balance(),
            v.balance_minor,
            "card {card} in the final snapshot"
        );
    }
}

#[test]
fn a_stalled_tls_handshake_does_not_hold_the_shutdown() {
    use cardd::limits::SIGN_ON_TIMEOUT_SECS;
    let dir = tempfile::tempdir().unwrap();
    let cert = crate::common::cert::Cert::new(dir.path(), "server");
    let tls = ["--tls-cert", cert.cert_str(), "--tls-key", cert.key_str()];
    let mut d = Daemon::start(&dir.path().join("data"), &tls);
    // A client that connects and never starts its handshake.
    let _stalled = std::net::TcpStream::connect(d.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let signalled = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(SHUTDOWN_GRACE_SECS + 10))
        .expect("exits");
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(SIGN_ON_TIMEOUT_SECS / 2),
        "the shutdown waited {took:?} for a handshake that never came"
    );
}

/// Floods `addr` with echo requests and never reads an answer, until the
/// daemon stops reading too (its queues and the socket's buffers full).
fn flood_without_reading(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // Two seconds without progress: stuck, not merely slow.
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let echo = pb::client_message::Body::Echo(pb::Echo {
        payload: vec![7; 1_000],
    });
    let frame = crate::common::raw::msg(1, echo);
    for _ in 0..200_000 {
        if s.write_all(&frame).is_err() {
            return s; // the daemon stopped reading
        }
    }
    panic!("the daemon read 200 MB of echoes without answering being stuck");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut till = demo.terminal(d.addr, 0).await;
    for txn in 100..110 {
        crate::common::ok(&mut till, txn, crate::common::purchase(&card, 100)).await;
    }
    drop(till);
    // A peer that does not read holds its connection, and so the first
    // signal's drain, until the grace period ends.
    let addr = d.addr;
    let _stuck = tokio::task::spawn_blocking(move || flood_without_reading(addr))
        .await
        .unwrap();
    d.signal(libc::SIGTERM);
    let still = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(1)));
    assert!(still.is_none(), "the drain did not wait for the stuck peer");
    let signalled = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(5)))
        .expect("the second signal ends it at once");
    assert!(signalled.elapsed() < Duration::from_secs(3));
    assert_eq!(status.code(), Some(1), "{status:?}");
    // Everything acknowledged is there, once.
    let d = Daemon::start(&demo.data, &[]);
    let mut till = demo.terminal(d.addr, 0).await;
    assert_eq!(
        inquiry(&mut till, &card).await.balance_minor,
        10_000 - 10 * 100
    );
    for txn in 100..110 {
        assert_eq!(
            status_of(&mut till, txn).await.state,
            pb::TxnState::Committed as i32
        );
    }
}

#[test]
fn systemd_hears_ready_then_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut cmd = crate::common::serve::serve_command(
        crate::common::cardd_bin(),
        &dir.path().join("data"),
        &[],
    );
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let mut d = Daemon::start_command(cmd, &dir.path().join("data"));
    let mut buf = [0u8; 256];
    let heard = |buf: &mut [u8]| {
        let n = systemd.recv(buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(heard(&mut buf).trim(), "READY=1");
    d.signal(libc::SIGTERM);
    assert_eq!(heard(&mut buf).trim(), "STOPPING=1");
    let status = d.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{status:?}");
}
