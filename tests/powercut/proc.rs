//! Running the `cardd` binary: `serve` (which may refuse to start) and the
//! offline tools.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::serve::{serve_command, watch_listening, START_TIMEOUT};
use crate::common::{cardd_bin, run};

/// A `cardd serve` that listens; killed (-9) on drop.
pub struct Serve {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Serve {
    /// SIGKILL and reap: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How a start ended.
pub enum Start {
    /// It listens.
    Listening(Serve),
    /// It exited before listening.
    Exited {
        /// Exit code (None if killed by a signal).
        code: Option<i32>,
        /// Everything it wrote to stderr.
        stderr: String,
    },
}

impl Start {
    /// The daemon, or a panic that shows why it did not start.
    pub fn expect_listening(self, what: &str) -> Serve {
        match self {
            Start::Listening(s) => s,
            Start::Exited { code, stderr } => {
                panic!("{what}: cardd serve exited ({code:?}) instead of serving:\n{stderr}")
            }
        }
    }
}

/// `cardd serve --data DATA --listen 127.0.0.1:0 EXTRA...`, not waited for
/// (stdout and stderr piped).
pub fn spawn_serve(data: &Path, extra: &[&str]) -> Child {
    serve_command(cardd_bin(), data, extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cardd serve")
}

/// Starts `cardd serve` and waits until it listens or exits.
pub fn serve(data: &Path, extra: &[&str]) -> Start {
    let mut child = spawn_serve(data, extra);
    let rx = watch_listening(child.stdout.take().expect("stdout"));
    let mut stderr = child.stderr.take().expect("stderr");
    // stderr is echoed (the test's log shows the daemon's warnings) and
    // collected in full for a daemon that exits instead of listening.
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(&mut stderr).lines().map_while(Result::ok) {
            eprintln!("  cardd: {line}");
            text.push_str(&line);
            text.push('\n');
        }
        let _ = etx.send(text);
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(addr) => Start::Listening(Serve {
            child,
            addr: addr.parse().expect("listen address"),
        }),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            panic!("cardd serve neither listened nor exited within {START_TIMEOUT:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = child.wait().expect("wait for cardd serve");
            let stderr = erx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_default();
            Start::Exited {
                code: status.code(),
                stderr,
            }
        }
    }
}

/// Text of an output, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cardd check --data DATA` (bounded), which may fail.
pub fn check(data: &Path) -> Output {
    run::cardd(["check".as_ref(), "--data".as_ref(), data.as_os_str()])
}

/// The number of brands a passing `cardd check` reports ("ok: N brands").
pub fn checked_brands(out: &Output) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_whitespace()
        .skip_while(|w| *w != "ok:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no brand count in cardd check's output: {stdout}"))
}
