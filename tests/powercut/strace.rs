//! The syscall-level check: under strace, every reply to a committing
//! request leaves the daemon only after an fsync/fdatasync of a file under
//! DATA/log has completed, after the previous reply. Plain data directory
//! (no lazyfs). Skipped without strace outside CI; fails under CI.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cardd::crypto::read_key_file;

use crate::common::serve::{serve_args, watch_listening, START_TIMEOUT};
use crate::common::{bounded, call, cardd_bin, purchase, top_up, Demo};
use crate::{layout, under_ci};

/// Committing requests sent one at a time.
const REQUESTS: u64 = 6;

/// One line of interest in the trace.
#[derive(Debug)]
enum Event {
    /// An fsync/fdatasync of a log file finished at this time.
    LogSynced(f64),
    /// A write to a socket started at this time.
    SocketWrite(f64),
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `strace -f -ttt -y ... -o TRACE cardd serve --demo ...`; returns strace
/// and the address once the daemon listens.
fn traced_serve(data: &Path, trace: &Path) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new("strace")
        .args(["-f", "-ttt", "-y", "-o"])
        .arg(trace)
        .args([
            "-e",
            "trace=fsync,fdatasync,sync_file_range,write,writev,sendto,sendmsg",
        ])
        .arg(cardd_bin())
        .args(serve_args(data, &["--demo"]))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    let addr = watch_listening(child.stdout.take().expect("stdout"))
        .recv_timeout(START_TIMEOUT)
        .expect("traced cardd did not listen");
    (child, addr.parse().expect("address"))
}

/// Kills the traced daemon (strace's child), then waits (bounded) for
/// strace, killing it too if it lingers.
fn stop(mut strace: Child) {
    let pid = strace.id();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for c in children.split_whitespace() {
        let _ = Command::new("kill").args(["-9", c]).status();
    }
    for _ in 0..100 {
        if matches!(strace.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = strace.kill();
    let _ = strace.wait();
}

/// The events of a trace, in order. With -f a call may be split into an
/// `<unfinished ...>` line and a `<... resumed>` line: an fsync counts when
/// it finishes, a write when it starts.
fn events(trace: &str, log_dir: &str) -> Vec<Event> {
    let mut pending_sync: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in trace.lines() {
        let Some((pid, ts, call)) = split_line(line) else {
            continue;
        };
        let is_sync = call.starts_with("fsync(") || call.starts_with("fdatasync(");
        let on_log = call.contains(log_dir);
        if is_sync && on_log && call.contains("<unfinished") {
            pending_sync.push(pid.to_string());
        } else if is_sync && on_log {
            out.push(Event::LogSynced(ts));
        } else if call.starts_with("<... fsync resumed>")
            || call.starts_with("<... fdatasync resumed>")
        {
            if let Some(i) = pending_sync.iter().position(|p| p == pid) {
                pending_sync.remove(i);
                out.push(Event::LogSynced(ts));
            }
        } else if is_socket_write(call) {
            out.push(Event::SocketWrite(ts));
        }
    }
    out
}

/// `PID TIME CALL...`: strace pads the pid with a varying number of spaces.
fn split_line(line: &str) -> Option<(&str, f64, &str)> {
    let (pid, rest) = line.trim_start().split_once(' ')?;
    let (ts, call) = rest.trim_start().split_once(' ')?;
    Some((pid, ts.parse().ok()?, call))
}

fn is_socket_write(call: &str) -> bool {
    let writes = ["write(", "writev(", "sendto(", "sendmsg("];
    let first_arg = call.split(',').next().unwrap_or("");
    writes.iter().any(|w| call.starts_with(w))
        && (first_arg.contains("<socket:[") || first_arg.contains("<TCP"))
}

/// For request n sent at `windows[n].0` and answered by `windows[n].1`:
/// the first socket write in the window (its reply) must follow a log
/// fsync that finished inside the window.
fn synced_before_replies(events: &[Event], windows: &[(f64, f64)]) -> Result<(), String> {
    for (n, (sent, answered)) in windows.iter().enumerate() {
        let mut synced = false;
        let reply = events.iter().find_map(|e| match e {
            Event::LogSynced(t) if t >= sent && t <= answered => {
                synced = true;
                None
            }
            Event::SocketWrite(t) if t >= sent && t <= answered => Some(synced),
            _ => None,
        });
        match reply {
            None => return Err(format!("request {n}: no reply write found in the trace")),
            Some(false) => {
                return Err(format!(
                    "request {n}: its reply was written before any fsync of DATA/log"
                ))
            }
            Some(true) => {}
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_follows_an_fsync_of_the_log() {
    if !strace_available() {
        assert!(!under_ci(), "CI is set and strace is missing");
        eprintln!("\n*** SKIPPED the strace test: no strace (apt-get install strace)\n");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let trace = dir.path().join("trace");
    let (strace, addr) = traced_serve(&data, &trace);
    let demo = Demo::load(&data);
    let key = read_key_file(&demo.terminal_key_path(0)).expect("terminal key");
    let mut till = bounded(cardd::client::Client::connect(addr, key))
        .await
        .expect("sign-on");
    let card = demo.manifest.cards[0].clone();
    let mut windows = Vec::new();
    for n in 0..REQUESTS {
        let op = match n % 2 {
            0 => purchase(&card, 100 + n as i64),
            _ => top_up(&card, 200 + n as i64),
        };
        let sent = now();
        call(&mut till, 7_000 + n, op).await.expect("committed");
        windows.push((sent, now()));
    }
    drop(till);
    stop(strace);
    let text = std::fs::read_to_string(&trace).expect("trace file");
    let log_dir = format!("{}/", layout::log_dir(&data).display());
    let events = events(&text, &log_dir);
    let syncs = events
        .iter()
        .filter(|e| matches!(e, Event::LogSynced(_)))
        .count();
    println!(
        "strace: {} lines, {syncs} fsyncs of DATA/log",
        text.lines().count()
    );
    if let Err(e) = synced_before_replies(&events, &windows) {
        panic!("{e}");
    }
}

/// The trace reading itself, on a made-up trace: padded pids, a split
/// fdatasync, and a reply that does or does not wait for it.
#[test]
fn trace_reading_orders_log_syncs_and_replies() {
    let log = "/d/data/log/";
    let good = "\
 9001  10.000100 write(7</d/data/log/1.seg>, \"..\", 90) = 90
 9001  10.000200 fdatasync(7</d/data/log/1.seg> <unfinished ...>
12345 10.000300 fsync(8</d/data/server.key>) = 0
 9001  10.000400 <... fdatasync resumed>) = 0
 9002  10.000500 writev(11<socket:[4242]>, [{iov_base=\"..\"}], 1) = 80
 9002  10.000600 write(3<pipe:[1]>, \"x\", 1) = 1
";
    let windows = [(10.0, 10.001)];
    assert_eq!(synced_before_replies(&events(good, log), &windows), Ok(()));
    let early = "\
 9001  10.000200 fdatasync(7</d/data/log/1.seg> <unfinished ...>
 9002  10.000300 write(11<TCP:[127.0.0.1:1->127.0.0.1:2]>, \"..\", 80) = 80
 9001  10.000400 <... fdatasync resumed>) = 0
";
    assert!(
        synced_before_replies(&events(early, log), &windows).is_err(),
        "a reply before the sync finished must fail"
    );
}
