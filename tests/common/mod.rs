//! Test harness: runs the real `cardd` binary on a temporary data directory
//! and an ephemeral loopback port, and talks to it over TCP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cardd::client::{Client, ClientError};
use cardd::crypto::read_key_file;
use cardd::demo::Manifest;
use cardd::pb::{self, request::Op};

/// Path of the built `cardd` binary.
pub fn cardd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cardd")
}

/// A daemon process on a data directory; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub data: PathBuf,
}

impl Daemon {
    /// Starts `cardd serve` (with `extra` arguments) on `data` and waits
    /// until it listens.
    pub fn start(data: &Path, extra: &[&str]) -> Daemon {
        let mut child = Command::new(cardd_bin())
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cardd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("cardd listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("cardd did not start listening in time");
        Daemon {
            child,
            addr: addr.parse().expect("address"),
            data: data.to_path_buf(),
        }
    }

    /// Starts a daemon with the demo brand on a fresh directory inside `dir`.
    pub fn demo(dir: &Path) -> (Daemon, Demo) {
        Daemon::demo_with(dir, &[])
    }

    /// Like [`Daemon::demo`], with extra `cardd serve` arguments.
    pub fn demo_with(dir: &Path, extra: &[&str]) -> (Daemon, Demo) {
        let data = dir.join("data");
        let mut args = vec!["--demo"];
        args.extend_from_slice(extra);
        let d = Daemon::start(&data, &args);
        let demo = Demo::load(&data);
        (d, demo)
    }

    /// Serve arguments that turn the failure rate limits off, for tests
    /// that send hundreds of deliberate failures from one address.
    pub const NO_RATE_LIMITS: [&'static str; 4] = [
        "--sign-on-failures-per-minute",
        "0",
        "--card-misses-per-minute",
        "0",
    ];

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The demo manifest plus its keys.
pub struct Demo {
    pub manifest: Manifest,
    pub data: PathBuf,
}

impl Demo {
    pub fn load(data: &Path) -> Demo {
        let text = std::fs::read_to_string(data.join("demo.json")).expect("demo.json");
        Demo {
            manifest: serde_json::from_str(&text).expect("manifest"),
            data: data.to_path_buf(),
        }
    }
    pub fn owner_key_path(&self) -> PathBuf {
        self.data.join(&self.manifest.owner_key)
    }
    /// Key file of the first terminal of store `store_index` (0 or 1).
    pub fn terminal_key_path(&self, store_index: usize) -> PathBuf {
        self.data
            .join(&self.manifest.stores[store_index].terminals[0].key)
    }
    pub fn owner(&self, addr: SocketAddr) -> impl std::future::Future<Output = Client> + '_ {
        let key = read_key_file(&self.owner_key_path()).expect("owner key");
        async move { Client::connect(addr, key).await.expect("owner sign-on") }
    }
    pub fn terminal(
        &self,
        addr: SocketAddr,
        store_index: usize,
    ) -> impl std::future::Future<Output = Client> + '_ {
        let key = read_key_file(&self.terminal_key_path(store_index)).expect("terminal key");
        async move { Client::connect(addr, key).await.expect("terminal sign-on") }
    }
}

/// Bounded wait for any test-side future: no network test may hang.
pub async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test step timed out")
}

/// Sends `op` under `txn` and returns the reply or the refusal code.
pub async fn call(c: &mut Client, txn: u64, op: Op) -> Result<pb::Reply, pb::ErrorCode> {
    let req = c.request(txn, op);
    bounded(c.call(&req)).await.map_err(|e| match e {
        ClientError::Refused(r) => r.code,
        other => panic!("transport failure: {other}"),
    })
}

/// The card view from an inquiry.
pub async fn inquiry(c: &mut Client, card: &str) -> pb::CardView {
    call(c, 0, Op::Inquiry(pb::Inquiry { card: card.into() }))
        .await
        .expect("inquiry")
        .card
        .expect("card view")
}

pub fn purchase(card: &str, amount_minor: i64) -> Op {
    Op::Purchase(pb::Purchase {
        card: card.into(),
        amount_minor,
        allow_partial: false,
    })
}

pub fn top_up(card: &str, amount_minor: i64) -> Op {
    Op::TopUp(pb::TopUp {
        card: card.into(),
        amount_minor,
    })
}

/// Polls `f` until it returns true or 20 s pass.
pub fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
