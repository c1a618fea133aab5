//! CPU time over the measured window: the generator's own, and the
//! daemon's when it runs on this machine (found by the loopback port it
//! listens on), so that a run reports the daemon's CPU per operation
//! without the generator's share blurring it.
//!
//! Linux only (`/proc`); elsewhere both are simply absent from the report.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};

/// `/proc` counts CPU time in ticks of 1/100 s (USER_HZ, fixed on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds used over the window.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// This process (the generator).
    pub generator_secs: Option<f64>,
    /// The daemon's process and its CPU seconds, when it runs here.
    pub daemon: Option<(u32, f64)>,
}

/// Readings at the start of the window.
pub struct CpuMeter {
    own: Option<f64>,
    daemon: Option<(u32, f64)>,
}

impl CpuMeter {
    /// Reads both clocks now; `addr` is the daemon's address as given.
    pub fn start(addr: &str) -> Self {
        let daemon = local_listener_pid(addr).and_then(|pid| Some((pid, cpu_secs(pid)?)));
        CpuMeter {
            own: own_cpu_secs(),
            daemon,
        }
    }

    /// What each used since [`CpuMeter::start`].
    pub fn finish(self) -> CpuUse {
        let generator_secs = own_cpu_secs()
            .zip(self.own)
            .map(|(after, before)| after - before);
        let daemon = self
            .daemon
            .and_then(|(pid, before)| Some((pid, cpu_secs(pid)? - before)));
        CpuUse {
            generator_secs,
            daemon,
        }
    }
}

/// CPU time (user + system) this process has used, in seconds.
fn own_cpu_secs() -> Option<f64> {
    cpu_secs(std::process::id())
}

/// CPU time (user + system) process `pid` has used, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold
    // spaces): state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// The process listening on `addr`, if `addr` is a loopback address and
/// that process is visible here.
fn local_listener_pid(addr: &str) -> Option<u32> {
    let addr: SocketAddr = addr.to_socket_addrs().ok()?.next()?;
    if !addr.ip().is_loopback() {
        return None;
    }
    let inodes = listening_inodes(addr.port());
    if inodes.is_empty() {
        return None;
    }
    let wanted: HashSet<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|link| link.to_str().is_some_and(|l| wanted.contains(l)))
                .then_some(pid)
        })
}

/// Inodes of the TCP sockets listening on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<String> {
    let port = format!("{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 ("ADDR:PORT"), st field 3 (0A is
            // LISTEN), inode field 9.
            let listening = f.get(3) == Some(&"0A");
            let on_port = f.get(1).and_then(|a| a.rsplit(':').next()) == Some(port.as_str());
            if let (true, true, Some(inode)) = (listening, on_port, f.get(9)) {
                inodes.push(inode.to_string());
            }
        }
    }
    inodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_process_listening_on_a_loopback_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(local_listener_pid(&addr), Some(std::process::id()));
        let meter = CpuMeter::start(&addr);
        // Burn a little CPU so both readings move.
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let used = meter.finish();
        let (pid, daemon) = used.daemon.expect("the listener is this process");
        assert_eq!(pid, std::process::id());
        assert!(daemon >= 0.0 && used.generator_secs.unwrap() >= 0.0);
        drop(listener);
        assert_eq!(local_listener_pid(&addr), None);
    }

    #[test]
    fn a_remote_address_has_no_local_daemon() {
        assert_eq!(local_listener_pid("192.0.2.1:7700"), None);
    }
}
