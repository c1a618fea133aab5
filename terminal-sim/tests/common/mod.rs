//! Shared harness for the `terminal-sim` end-to-end tests: the binaries, a
//! `cardd serve --demo` daemon on a temporary data directory and an
//! ephemeral loopback port, and bounded runs of a command. Every wait is
//! bounded.
#![allow(dead_code)]

/// The one bounded run of a command, shared with cardd's own tests.
#[path = "../../../tests/common/run.rs"]
pub mod run;

/// The one start of `cardd serve`, shared with cardd's own tests.
#[path = "../../../tests/common/serve.rs"]
mod serve;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use cardd::demo::Manifest;
use serde_json::Value;

/// The `terminal-sim` binary under test.
pub fn sim_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_terminal-sim"))
}

/// The `cardd` binary, built beside `terminal-sim` by a workspace build.
pub fn cardd_bin() -> PathBuf {
    let path = sim_bin().with_file_name(format!("cardd{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "the cardd binary is missing at {}: run `cargo test --workspace` (or `cargo build --workspace` \
         before `cargo test -p terminal-sim`)",
        path.display()
    );
    path
}

/// A `cardd serve --demo` process; killed on drop.
pub struct Daemon {
    child: Child,
    pub addr: String,
    pub data: PathBuf,
    pub manifest: Manifest,
}

/// `cardd serve` on `data` with `extra` arguments: the process (the
/// caller kills it) and the address it listens on.
pub fn serve(data: &Path, extra: &[&str]) -> (Child, String) {
    serve::spawn_serve(cardd_bin(), data, extra)
}

impl Daemon {
    /// Starts `cardd serve --demo` on a fresh data directory in `dir`.
    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    /// [`Daemon::start`] with `extra` arguments to `cardd serve`.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
        let data = dir.join("data");
        let mut args = vec!["--demo"];
        args.extend_from_slice(extra);
        let (child, addr) = serve::spawn_serve(cardd_bin(), &data, &args);
        let text = std::fs::read_to_string(data.join("demo.json")).expect("demo.json");
        let manifest: Manifest = serde_json::from_str(&text).expect("demo.json parses");
        Daemon {
            child,
            addr,
            data,
            manifest,
        }
    }

    /// The path of the brand owner's key file, as a string.
    pub fn owner_key(&self) -> String {
        self.data
            .join(&self.manifest.owner_key)
            .to_str()
            .expect("utf-8 path")
            .to_string()
    }

    /// `cardd server-key --data DIR`: the server's public key in hex.
    pub fn server_key(&self) -> String {
        let data = self.data.to_str().expect("utf-8 path");
        let out = run_bounded(
            &cardd_bin(),
            &["server-key", "--data", data],
            Duration::from_secs(60),
        );
        assert_eq!(out.code, 0, "cardd server-key: {out:?}");
        out.stdout.trim().to_string()
    }

    /// The key file of the demo terminal of store `index` (0-based).
    pub fn terminal_key(&self, index: usize) -> PathBuf {
        self.data
            .join(&self.manifest.stores[index].terminals[0].key)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The single JSON line printed on stdout.
    pub fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "expected one JSON line, got {self:?}");
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The JSON answer of a call that must have succeeded.
    pub fn ok(&self) -> Value {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        let v = self.json();
        assert_eq!(v["ok"], true, "{self:?}");
        v
    }
}

/// Runs `bin` with `args`, killing it if it overruns `limit`. A till that
/// is given no `--state-dir` keeps its state under the system's temporary
/// directory, never in the home directory of whoever runs the tests.
pub fn run_bounded(bin: &Path, args: &[&str], limit: Duration) -> Run {
    let state_home = std::env::temp_dir().join("terminal-sim-tests-state");
    let out = run::run_bounded(
        Command::new(bin)
            .args(args)
            .env("XDG_STATE_HOME", state_home)
            .env_remove("TERMINAL_SIM_STATE_DIR"),
        limit,
    );
    Run {
        code: out
            .status
            .code()
            .unwrap_or_else(|| panic!("{} ended by a signal", bin.display())),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn u64_of(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no unsigned integer {field} in {v}"))
}

pub fn i64_of(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer {field} in {v}"))
}

pub fn f64_of(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {field} in {v}"))
}
