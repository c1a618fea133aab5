//! Starting `cardd serve` and waiting until it listens: the one place tests
//! read the line `cardd serve` prints (also included by terminal-sim's
//! tests, which find the binary another way).
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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

/// The arguments of `serve --data DATA --listen 127.0.0.1:0 EXTRA…`, for a
/// caller that runs `cardd` under another program (strace).
pub fn serve_args(data: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["serve".into(), "--data".into(), data.into()];
    args.extend(["--listen", "127.0.0.1:0"].map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    args
}

/// `BIN serve --data DATA --listen 127.0.0.1:0 EXTRA…` with `RUST_LOG=warn`
/// and stdout piped for [`watch_listening`]; stdin and stderr are the
/// caller's choice (one harness echoes stderr, another collects it).
pub fn serve_command(bin: impl AsRef<OsStr>, data: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(serve_args(data, extra))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    cmd
}

/// Reads a daemon's stdout to its end on a thread of its own, so the daemon
/// never blocks on a full pipe, and sends the address of each
/// [`LISTENING_LINE`]. The channel disconnects when stdout closes: a
/// daemon that exits without listening is seen at once, not at a timeout.
pub fn watch_listening(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = listening_addr(&line) {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    rx
}

/// Runs `BIN serve --data DATA --listen 127.0.0.1:0 EXTRA…` (`RUST_LOG=warn`,
/// stderr inherited) and waits up to [`START_TIMEOUT`] for the
/// [`LISTENING_LINE`]; returns the process and the address it printed. A
/// daemon that does not listen in time is killed and fails the test.
pub fn spawn_serve(bin: impl AsRef<OsStr>, data: &Path, extra: &[&str]) -> (Child, String) {
    spawn_serve_command(serve_command(bin, data, extra))
}

/// Runs a `serve` command of the caller's own making (its stdout is
/// piped here; stdin closed, stderr inherited) and waits up to
/// [`START_TIMEOUT`] for the [`LISTENING_LINE`]; returns the process and
/// the address. Not listening in time (or exiting) fails the test.
pub fn spawn_serve_command(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn cardd");
    let rx = watch_listening(child.stdout.take().expect("stdout"));
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(addr) => (child, addr),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cardd did not print `{LISTENING_LINE}ADDR` within {START_TIMEOUT:?}");
        }
    }
}
