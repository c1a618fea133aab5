//! The test kit shared by every integration test target (`mod common;`, or
//! `#[path = "../common/mod.rs"] mod common;` from a directory target such
//! as `tests/daemon/main.rs`; `serve.rs` and `run.rs` are also included by
//! terminal-sim's tests):
//! the daemon harness (the real `cardd` binary on a temporary data directory
//! and an ephemeral loopback port), bounded calls and the request builders
//! tests share. The submodules hold the rest:
//! - [`books`]: the books' scripted three-store ledger and `cardd admin` runs;
//! - [`cert`]: self-signed TLS certificates and key files;
//! - [`http`]: plain HTTP/1.1 GETs and Prometheus text, for the HTTP listener;
//! - [`nats`]: a 3-node NATS JetStream cluster on loopback ports (replication);
//! - [`raw`]: the protocol by hand (frames, hello, sign-on, signed bodies);
//! - [`reply`]: accessors that take a reply apart or fail the test;
//! - [`run`]: the one bounded run of a command (`cardd check`, `cardd audit`);
//! - [`serve`]: `cardd serve` started and its listening line read;
//! - [`store`]: a `LogStore` whose commits a test intercepts.
//!
//! The brand + store + terminal + cards fixture of in-process tests is
//! `cardd::testing` (benches, examples and fuzz targets use it too).
#![allow(dead_code)]

pub mod books;
pub mod cert;
pub mod http;
pub mod nats;
pub mod raw;
pub mod reply;
pub mod run;
pub mod serve;
pub mod store;

#[allow(unused_imports)]
pub use serve::{listening_addr, LISTENING_LINE};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use cardd::client::{Client, ClientError};
use cardd::crypto::read_key_file;
use cardd::demo::Manifest;
use cardd::pb::{self, request::Op};
use cardd::testing;
use ed25519_dalek::SigningKey;

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
        let (child, addr) = serve::spawn_serve(cardd_bin(), data, extra);
        Daemon {
            child,
            addr: addr.parse().expect("address"),
            data: data.to_path_buf(),
        }
    }

    /// Like [`Daemon::start`], with the daemon's log at `level` (RUST_LOG)
    /// collected instead of echoed: the thread returns all of it once the
    /// daemon has exited (killed or stopped).
    pub fn start_logged(
        data: &Path,
        extra: &[&str],
        level: &str,
    ) -> (Daemon, std::thread::JoinHandle<String>) {
        use std::io::Read;
        let mut cmd = serve::serve_command(cardd_bin(), data, extra);
        cmd.env("RUST_LOG", level)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn cardd");
        let listening = serve::watch_listening(child.stdout.take().expect("stdout"));
        let mut stderr = child.stderr.take().expect("stderr");
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let addr = listening
            .recv_timeout(serve::START_TIMEOUT)
            .expect("cardd listens");
        let d = Daemon {
            child,
            addr: addr.parse().expect("address"),
            data: data.to_path_buf(),
        };
        (d, log)
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

    /// Starts a daemon from a `serve` command of the caller's own making
    /// (its environment, `--config`, no `--data`); `data` is where the test
    /// expects its data directory.
    pub fn start_command(cmd: std::process::Command, data: &Path) -> Daemon {
        let (child, addr) = serve::spawn_serve_command(cmd);
        Daemon {
            child,
            addr: addr.parse().expect("address"),
            data: data.to_path_buf(),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the daemon.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// Waits up to `limit` for the daemon to exit; its status, or None if
    /// it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A graceful stop (SIGTERM), waited for up to 30 s.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
            .expect("the daemon stops");
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

/// Cuts the last bytes off brand `brand`'s newest segment, as a lost
/// write-back would: its log now ends before its high-water mark.
pub fn cut_below_mark(data: &Path, brand: u32) {
    let log = data.join(format!("log/brand-{brand:05}"));
    let newest = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .expect("a segment");
    let len = std::fs::metadata(&newest).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    f.set_len(len - 5).unwrap();
}

/// Bounded wait for any test-side future: no network test may hang.
pub async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test step timed out")
}

/// Every file under `dir` (recursively) that holds `needle`, as paths
/// relative to `dir`: the byte search of a data directory or an export.
pub fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.strip_prefix(dir).expect("under dir").to_path_buf());
                }
            }
        }
    }
    found
}

/// Signs on with `key` (bounded).
pub async fn connect(addr: SocketAddr, key: SigningKey) -> Client {
    bounded(Client::connect(addr, key)).await.expect("sign-on")
}

/// Sends `op` under `txn` and returns the reply or the refusal code.
pub async fn call(c: &mut Client, txn: u64, op: Op) -> Result<pb::Reply, pb::ErrorCode> {
    let req = c.request(txn, op);
    call_req(c, &req).await
}

/// Sends an exact request and returns the reply or the refusal code.
pub async fn call_req(c: &mut Client, req: &pb::Request) -> Result<pb::Reply, pb::ErrorCode> {
    refusal_code(bounded(c.call(req)).await)
}

/// Sends already-signed bytes and returns the reply or the refusal code.
pub async fn call_bytes(
    c: &mut Client,
    bytes: &[u8],
    sig: &[u8],
) -> Result<pb::Reply, pb::ErrorCode> {
    refusal_code(bounded(c.call_signed(bytes.to_vec(), sig.to_vec())).await)
}

/// A refusal becomes its code; a transport failure fails the test.
fn refusal_code(r: Result<pb::Reply, ClientError>) -> Result<pb::Reply, pb::ErrorCode> {
    r.map_err(|e| match e {
        ClientError::Refused(r) => r.code,
        other => panic!("transport failure: {other}"),
    })
}

/// Calls `op` and expects a reply.
pub async fn ok(c: &mut Client, txn: u64, op: Op) -> pb::Reply {
    match call(c, txn, op).await {
        Ok(r) => r,
        Err(code) => panic!("txn {txn}: expected a reply, got {code:?}"),
    }
}

/// Calls `op` and expects a refusal; returns its code.
pub async fn refused(c: &mut Client, txn: u64, op: Op) -> pb::ErrorCode {
    match call(c, txn, op).await {
        Ok(r) => panic!("txn {txn}: expected a refusal, got {r:?}"),
        Err(code) => code,
    }
}

/// The card view from an inquiry.
pub async fn inquiry(c: &mut Client, card: &str) -> pb::CardView {
    call(c, 0, Op::Inquiry(pb::Inquiry { card: card.into() }))
        .await
        .expect("inquiry")
        .card
        .expect("card view")
}

/// A whole-amount purchase.
pub fn purchase(card: &str, amount_minor: i64) -> Op {
    testing::purchase(card, amount_minor, false)
}

#[allow(unused_imports)]
pub use testing::{create_store, top_up};

/// A purchase that pays what the card holds when it holds less.
pub fn partial(card: &str, amount_minor: i64) -> Op {
    testing::purchase(card, amount_minor, true)
}

/// Refunds `amount_minor` of the purchase recorded at `original_seq`.
pub fn refund(original_seq: u64, amount_minor: i64) -> Op {
    Op::Refund(pb::Refund {
        original_seq,
        amount_minor,
    })
}

/// Reverses the signer's own `original_txn_id`.
pub fn reversal(original_txn_id: u64) -> Op {
    Op::Reversal(pb::Reversal { original_txn_id })
}

/// A read-only key's `AddKey` for `key` (an auditor's: no store needed).
pub fn add_auditor(key: &SigningKey) -> Op {
    Op::AddKey(pb::AddKey {
        public_key: key.verifying_key().to_bytes().to_vec(),
        role: pb::KeyRole::Auditor as u32,
        store_id: 0,
        label: "auditor".into(),
    })
}

/// Redeems `points` for a coffee.
pub fn redeem(card: &str, points: i64) -> Op {
    Op::RedeemPoints(pb::RedeemPoints {
        card: card.into(),
        points,
        reward: "coffee".into(),
        ..Default::default()
    })
}

/// Closes the terminal's shift, declaring `totals` if any.
pub fn close_shift(totals: Option<pb::ShiftTotals>) -> Op {
    Op::CloseShift(pb::CloseShift {
        terminal_totals: totals,
    })
}

/// Asks the status of the signer's own `txn_id`.
pub fn txn_status(txn_id: u64) -> Op {
    Op::TxnStatus(pb::TxnStatus { txn_id })
}

/// Enrols `key` as a terminal of `store_id`.
pub fn enroll(store_id: u32, key: &SigningKey, label: &str) -> Op {
    testing::enroll_terminal(store_id, &key.verifying_key().to_bytes(), label)
}

#[allow(unused_imports)]
pub use testing::issue_card as issue;

/// Blocks (as lost) or unblocks `card`.
pub fn set_blocked(card: &str, blocked: bool) -> Op {
    Op::SetCardBlocked(pb::SetCardBlocked {
        card: card.into(),
        blocked,
        reason: "lost".into(),
    })
}

/// Moves `old`'s value to the new card `new`.
pub fn replace(old: &str, new: &str) -> Op {
    Op::ReplaceCard(pb::ReplaceCard {
        old_card: old.into(),
        new_card: new.into(),
    })
}

/// The status of one of the client's own transaction ids.
pub async fn status_of(c: &mut Client, txn: u64) -> pb::StatusResult {
    let r = ok(c, 0, txn_status(txn)).await;
    assert!(r.receipt.is_none(), "a status query writes no record");
    reply::status(r)
}

/// The seed of a randomised test: `$var` if set, else one from the clock
/// (the caller prints it, so that a failure can be reproduced).
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("{var} must be a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    }
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

/// Copies a stopped daemon's data directory (files and directories only),
/// to fork its history or to damage a copy.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}
