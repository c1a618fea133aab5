//! Log lines: JSON with `--log-format json`, no colour codes when standard
//! error is not a terminal, one line each for recovery, serving, shutdown
//! and failure.
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use crate::common::run::{run_bounded, CARDD_LIMIT};
use crate::common::serve::{serve_command, watch_listening, START_TIMEOUT};
use crate::common::{cardd_bin, Daemon};

/// Every line of `stderr` as a JSON object; the messages in order.
fn messages(stderr: &str) -> Vec<serde_json::Value> {
    assert!(!stderr.contains('\x1b'), "colour codes in a pipe: {stderr}");
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn find<'a>(lines: &'a [serde_json::Value], message: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .unwrap_or_else(|| panic!("no {message:?} line in {lines:?}"))
}

#[test]
fn json_lines_for_recovery_serving_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = serve_command(cardd_bin(), &data, &["--demo", "--log-format", "json"]);
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let listening = watch_listening(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let collected = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let addr = listening.recv_timeout(START_TIMEOUT).expect("listening");
    let mut d = Daemon {
        child,
        addr: addr.parse().unwrap(),
        data,
    };
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{status:?}");
    let lines = messages(&collected.join().unwrap());
    let recovered = find(&lines, "recovered");
    for field in [
        "brands",
        "records",
        "from_snapshots",
        "replayed",
        "recovery_ms",
    ] {
        assert!(recovered[field].is_u64(), "{field} in {recovered}");
    }
    assert_eq!(find(&lines, "serving")["addr"], addr.as_str());
    assert_eq!(find(&lines, "shutting down")["signal"], "SIGTERM");
    assert!(find(&lines, "shut down")["shutdown_ms"].is_u64());
}

#[test]
fn a_failed_start_logs_one_json_line_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_bounded(
        std::process::Command::new(cardd_bin())
            .args(["serve", "--log-format", "json", "--listen", &addr, "--data"])
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info"),
        CARDD_LIMIT,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The JSON lines, then the binary's own last word on a line of its own.
    let (json, last) = stderr.trim_end().rsplit_once('\n').unwrap_or(("", &stderr));
    assert!(last.starts_with("cardd: binding"), "{stderr}");
    let failed = find(&messages(json), "cardd failed").clone();
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(&addr) && error.contains("in use"),
        "{failed}"
    );
}
