//! Starting `cardd serve` and waiting until it listens: the one place tests
//! read the line `cardd serve` prints (also included by terminal-sim's
//! tests, which find the binary another way).
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The line `cardd serve` prints once it listens, followed by the address:
/// a contract with scripts and tests, parsed only by [`listening_addr`].
pub const LISTENING_LINE: &str = "cardd listening on ";

/// How long a daemon may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The address in a line of `cardd serve`'s output, if it is the
/// [`LISTENING_LINE`].
pub fn listening_addr(line: &str) -> Option<&str> {
    line.strip_prefix(LISTENING_LINE).map(str::trim)
}

/// Runs `BIN serve --data DATA --listen 127.0.0.1:0 EXTRA…` (`RUST_LOG=warn`,
/// stderr inherited) and waits up to [`START_TIMEOUT`] for the
/// [`LISTENING_LINE`]; returns the process and the address it printed. A
/// daemon that does not listen in time is killed and fails the test.
pub fn spawn_serve(bin: impl AsRef<OsStr>, data: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn cardd");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keeps reading to the end, so the daemon never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = listening_addr(&line) {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(addr) => (child, addr),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cardd did not print `{LISTENING_LINE}ADDR` within {START_TIMEOUT:?}");
        }
    }
}
