//! A NATS JetStream cluster for the replication tests: three `nats-server`
//! processes on loopback ports, file storage in a temporary directory,
//! killed (SIGKILL) and restarted one at a time by the tests, all killed on
//! drop.
//!
//! The server binary: `$CARDD_NATS_SERVER` if set (it must then run), else
//! `.venv-nats/bin/nats-server` at the workspace root (what
//! `scripts/install-nats.sh` installs),
//! else `nats-server` on PATH. With none, [`NatsCluster::start`] returns
//! None and the test skips, except under CI (env `CI`), where it fails.
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::{free_addrs, get};

/// How long a node (or the whole cluster) may take to report healthy.
pub const NATS_READY_LIMIT: Duration = Duration::from_secs(30);

/// The `nats-server` binary to run, if there is one.
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CARDD_NATS_SERVER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            runs(&p),
            "CARDD_NATS_SERVER={} does not run (scripts/install-nats.sh installs one)",
            p.display()
        );
        return Some(p);
    }
    // The workspace root's .venv-nats (this file is also built from
    // terminal-sim's tests, one directory down).
    let venvs = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .take(2)
        .map(|d| d.join(".venv-nats/bin/nats-server"));
    venvs
        .chain([PathBuf::from("nats-server")])
        .find(|p| runs(p))
}

fn runs(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One node's fixed addresses and files (the same across restarts).
struct Node {
    name: String,
    client: SocketAddr,
    monitor: SocketAddr,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// One cluster at a time per test binary: the replication tests time
/// leases in seconds, and two clusters with their daemons on two cores
/// would make a late renewal (a spurious failover) likelier.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A running JetStream cluster; every node is killed on drop.
pub struct NatsCluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    /// Holds the nodes' stores, configurations and logs.
    pub dir: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl NatsCluster {
    /// Starts a `size`-node cluster and waits until every node reports
    /// JetStream healthy. None (the test skips) when there is no server
    /// binary outside CI.
    pub fn start(size: usize) -> Option<NatsCluster> {
        let Some(bin) = nats_server_bin() else {
            let why = "no nats-server: run scripts/install-nats.sh (or set CARDD_NATS_SERVER)";
            assert!(std::env::var_os("CI").is_none(), "under CI: {why}");
            eprintln!("skipped: {why}");
            return None;
        };
        // A test that failed holding it poisons it; the next one goes on.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().expect("temp dir");
        // Every port of the cluster at once, so that no two are the same.
        let addrs = free_addrs(3 * size);
        let (routes, others) = addrs.split_at(size);
        let nodes = (0..size)
            .map(|i| write_node(dir.path(), i, routes, (others[2 * i], others[2 * i + 1])))
            .collect();
        let mut cluster = NatsCluster {
            bin,
            nodes,
            dir,
            _turn: turn,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        Some(cluster)
    }

    /// Every node's client URL, comma-separated (`--replicate`'s value).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://{}", n.client))
            .collect();
        urls.join(",")
    }

    /// Node `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].client
    }

    /// SIGKILLs node `i` (its store stays for [`restart`](Self::restart)).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its store and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Node `i`'s log so far (for a failure message).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log");
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&node.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        node.child = Some(child);
    }

    /// Waits until node `i`'s `/healthz` says JetStream is ready (in a
    /// cluster: it has a meta leader and is current with it).
    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + NATS_READY_LIMIT;
        let monitor = self.nodes[i].monitor;
        loop {
            if let Some((200, _)) = get(monitor, "/healthz") {
                return;
            }
            let exited = self.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "nats node {} not healthy (exited: {exited:?}); its log:\n{}",
                    self.nodes[i].name,
                    self.log(i)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Writes node `i`'s configuration: its loopback client and monitoring ports,
/// its cluster port `routes[i]` with routes to every node, file storage
/// written to disk before each message counts toward a quorum
/// (`sync_interval: always`, which docs/replication.md requires: by default
/// a node fsyncs every 2 minutes).
fn write_node(
    dir: &Path,
    i: usize,
    routes: &[SocketAddr],
    (client, monitor): (SocketAddr, SocketAddr),
) -> Node {
    let name = format!("n{i}");
    let store = dir.join(&name);
    std::fs::create_dir_all(&store).expect("node store");
    let route_urls: Vec<String> = routes
        .iter()
        .map(|r| format!("\"nats-route://{r}\""))
        .collect();
    let conf_text = format!(
        "server_name: {name}\nlisten: \"{client}\"\nhttp: \"{monitor}\"\n\
         jetstream {{ store_dir: \"{store}\", max_memory_store: 64MB, max_file_store: 1GB, \
         sync_interval: always }}\n\
         cluster {{ name: cardd-test, listen: \"{route}\", routes: [{routes}] }}\n",
        store = store.display(),
        route = routes[i],
        routes = route_urls.join(", "),
    );
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, conf_text).expect("node config");
    Node {
        log: dir.join(format!("{name}.log")),
        name,
        client,
        monitor,
        conf,
        child: None,
    }
}
