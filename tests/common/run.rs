//! The one bounded run of a command: no test may hang on a child process.
use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::cardd_bin;

/// How long one `cardd` command (check, audit, server-key, …) may take.
pub const CARDD_LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` to its end (stdin closed, output captured), killing it past
/// `limit`. Both pipes are drained while it runs, so a chatty child cannot
/// block on a full pipe.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        v
    })
}

/// Runs `cardd` with `args` (`RUST_LOG=warn`), bounded by [`CARDD_LIMIT`].
pub fn cardd<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_bounded(
        Command::new(cardd_bin()).args(args).env("RUST_LOG", "warn"),
        CARDD_LIMIT,
    )
}

/// Runs `cardd` with `args`, which must succeed; returns its stdout.
#[track_caller]
pub fn cardd_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let out = cardd(&args);
    let shown: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    assert!(
        out.status.success(),
        "cardd {shown:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `cardd brand create` on a stopped daemon's `data`: a brand named
/// `name`, its owner key written to `owner_key`.
pub fn brand_create(data: &Path, name: &str, owner_key: &Path) -> Output {
    cardd([
        OsStr::new("brand"),
        OsStr::new("create"),
        OsStr::new("--data"),
        data.as_os_str(),
        OsStr::new("--name"),
        OsStr::new(name),
        OsStr::new("--owner-key"),
        owner_key.as_os_str(),
    ])
}

/// [`brand_create`], which must succeed; returns the new brand's id (what
/// the command prints for scripts).
#[track_caller]
pub fn brand_create_ok(data: &Path, name: &str, owner_key: &Path) -> u32 {
    let out = brand_create(data, name, owner_key);
    assert!(
        out.status.success(),
        "brand create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout);
    id.trim().parse().expect("brand id printed")
}

/// `cardd check --data DATA` (daemon stopped), which must succeed; returns
/// its stdout.
#[track_caller]
pub fn cardd_check(data: &Path) -> String {
    cardd_ok([OsStr::new("check"), OsStr::new("--data"), data.as_os_str()])
}

/// Exports brand `brand` of the stopped daemon's `data` to `out`, verifies
/// the export against the daemon's server key (`cardd audit verify --json`),
/// all of which must succeed, and returns the verify report.
#[track_caller]
pub fn export_and_verify(data: &Path, brand: u32, out: &Path) -> serde_json::Value {
    let brand = brand.to_string();
    let data = data.as_os_str();
    cardd_ok([
        "audit".as_ref(),
        "export".as_ref(),
        "--data".as_ref(),
        data,
        "--brand".as_ref(),
        brand.as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let key = cardd_ok([OsStr::new("server-key"), OsStr::new("--data"), data]);
    let json = cardd_ok([
        "audit".as_ref(),
        "verify".as_ref(),
        out.as_os_str(),
        "--server-key".as_ref(),
        key.trim().as_ref(),
        "--json".as_ref(),
    ]);
    serde_json::from_str(json.trim()).expect("verify --json prints one object")
}
