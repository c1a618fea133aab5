//! The terminal's memory between runs: the next transaction id (trace
//! number), the terminal's own shift totals, which answers it has already
//! counted, and the exact signed bytes of its recent requests (so that a
//! retry under the same transaction id sends the same message again, as a
//! real till retransmits).
//!
//! It holds every signed request, declined ones included, so it lives in a
//! state directory of its own (mode 0700; the file 0600), named by the
//! terminal's public key: `--state-dir`, else `$XDG_STATE_HOME/cardd-terminal-sim`,
//! else `~/.local/state/cardd-terminal-sim`. Never beside the key (the demo
//! keys sit in the daemon's data directory) and never inside a data
//! directory. The file is written atomically: a temporary file in the same
//! directory, flushed, then renamed over the old one.
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cardd::pb::{self, reply::Detail};
use serde::{Deserialize, Serialize};

/// How many counted transaction ids are remembered (to count a replayed
/// answer only once).
pub const MAX_COUNTED: usize = 1000;
/// How many recent requests are kept for retransmission.
pub const MAX_SENT: usize = 100;
/// The state file format version.
const VERSION: u32 = 1;

/// The state directory's name under `$XDG_STATE_HOME` or `~/.local/state`.
const DIR_NAME: &str = "cardd-terminal-sim";

/// The state directory: `explicit` (`--state-dir`), else the user's state
/// directory.
pub fn state_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(xdg) = var("XDG_STATE_HOME") {
        return Ok(PathBuf::from(xdg).join(DIR_NAME));
    }
    let home =
        var("HOME").context("no HOME to keep the terminal's state in: give --state-dir DIR")?;
    Ok(PathBuf::from(home).join(".local/state").join(DIR_NAME))
}

/// The state file of the terminal whose public key is `public_key`.
pub fn state_path(dir: &Path, public_key: &[u8; 32]) -> PathBuf {
    dir.join(format!("{}.state.json", hex::encode(public_key)))
}

/// Where versions before the state directory kept the state: `<key>.state.json`.
pub fn old_state_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".state.json");
    PathBuf::from(s)
}

/// Creates the state directory (mode 0700) or checks the one there: it
/// must not be open to others, nor lie inside a daemon's data directory.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(data) = dir.ancestors().find(|a| a.join("server.key").is_file()) {
        anyhow::bail!(
            "the state directory {} is inside the daemon's data directory {}: \
             give --state-dir a directory of its own",
            dir.display(),
            data.display()
        );
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating the state directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        anyhow::ensure!(
            mode & 0o077 == 0,
            "the state directory {} is open to others (mode {mode:o}); it holds signed \
             requests: chmod 700 it, or give --state-dir a directory of its own",
            dir.display()
        );
    }
    Ok(())
}

/// The terminal's own shift totals: the same fields as
/// [`cardd::pb::ShiftTotals`], counted from the answers it received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    /// Purchases approved.
    pub purchase_count: u32,
    /// Value taken from cards by purchases (approved amounts).
    pub purchase_minor: i64,
    /// Top-ups.
    pub top_up_count: u32,
    /// Paid value loaded (bonus not included).
    pub top_up_minor: i64,
    /// Refunds.
    pub refund_count: u32,
    /// Value refunded to cards.
    pub refund_minor: i64,
    /// Reversals (including those of transactions the server never got).
    pub reversal_count: u32,
    /// Card value restored or removed by reversals.
    pub reversal_minor: i64,
    /// Points redemptions.
    pub redeem_count: u32,
    /// Points redeemed.
    pub redeem_points: i64,
}

impl From<&Totals> for pb::ShiftTotals {
    fn from(t: &Totals) -> Self {
        pb::ShiftTotals {
            purchase_count: t.purchase_count,
            purchase_minor: t.purchase_minor,
            top_up_count: t.top_up_count,
            top_up_minor: t.top_up_minor,
            refund_count: t.refund_count,
            refund_minor: t.refund_minor,
            reversal_count: t.reversal_count,
            reversal_minor: t.reversal_minor,
            redeem_count: t.redeem_count,
            redeem_points: t.redeem_points,
        }
    }
}

/// Which server, brand and terminal a state file belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The server's public key, hex.
    pub server_key: String,
    /// The brand the terminal signs on to.
    pub brand_id: u32,
    /// The terminal id the server knows this key by.
    pub terminal_id: u32,
}

impl Identity {
    /// The identity of a signed-on session.
    pub fn of(session: &pb::SignOnOk, server_key: &[u8; 32]) -> Self {
        Identity {
            server_key: hex::encode(server_key),
            brand_id: session.brand_id,
            terminal_id: session.terminal_id,
        }
    }
}

/// A request as sent: its exact bytes and signature, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRequest {
    /// The transaction id it carries.
    pub txn_id: u64,
    /// The encoded `cardd.v1.Request`, hex.
    pub request: String,
    /// The terminal's signature over it, hex.
    pub signature: String,
}

/// Everything in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalState {
    /// The format version.
    pub version: u32,
    /// The session this state belongs to (absent until the first sign-on).
    pub identity: Option<Identity>,
    /// The next unused transaction id.
    pub next_txn: u64,
    /// Totals since the last shift close.
    pub shift: Totals,
    /// Transaction ids whose answers were counted, oldest first.
    pub counted: VecDeque<u64>,
    /// Recent requests, oldest first, for retransmission.
    pub sent: VecDeque<SentRequest>,
}

impl Default for TerminalState {
    fn default() -> Self {
        TerminalState {
            version: VERSION,
            identity: None,
            next_txn: 1,
            shift: Totals::default(),
            counted: VecDeque::new(),
            sent: VecDeque::new(),
        }
    }
}

/// What counting an answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Added to the totals (or, for a shift close, the totals were reset).
    Counted,
    /// A replayed answer already counted before: nothing changed.
    AlreadyCounted,
    /// An answer that does not count (inquiry, status).
    NotCounted,
}

impl TerminalState {
    /// Reads the state file at `path`; a missing file is a fresh state.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("reading state file {}", path.display()))
            }
        };
        let state: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "state file {} is damaged; move it away to start afresh (shift totals are lost)",
                path.display()
            )
        })?;
        anyhow::ensure!(
            state.version == VERSION,
            "state file {} has version {}, this terminal-sim reads {VERSION}",
            path.display(),
            state.version
        );
        Ok(state)
    }

    /// Writes the state to `path` atomically (temporary file, flush, rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_string_pretty(self)?;
        let write = || -> std::io::Result<()> {
            // A temporary file left by a killed run of the same pid.
            let _ = std::fs::remove_file(&tmp);
            let mut open = std::fs::OpenOptions::new();
            open.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
            let mut f = open.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing state file {}", path.display()));
        }
        Ok(())
    }

    /// Binds the state to a session. A state written for another server,
    /// brand or terminal is set aside (its totals mean nothing here); the
    /// return value says so. The server's newest transaction id from this
    /// terminal moves `next_txn` past it.
    pub fn adopt(&mut self, identity: Identity, server_last_txn_id: u64) -> bool {
        let replaced = self.identity.as_ref().is_some_and(|old| *old != identity);
        if replaced {
            *self = Self::default();
        }
        self.identity = Some(identity);
        self.next_txn = self.next_txn.max(server_last_txn_id.saturating_add(1));
        replaced
    }

    /// The transaction id for a state-changing request: `explicit` if given,
    /// else the next unused one. Either way `next_txn` moves past it.
    pub fn take_txn(&mut self, explicit: Option<u64>) -> u64 {
        let txn = explicit.unwrap_or(self.next_txn);
        self.next_txn = self.next_txn.max(txn.saturating_add(1));
        txn
    }

    /// The request sent earlier under `txn`, as (bytes, signature).
    pub fn sent(&self, txn: u64) -> Option<(Vec<u8>, Vec<u8>)> {
        let s = self.sent.iter().rev().find(|s| s.txn_id == txn)?;
        Some((
            hex::decode(&s.request).ok()?,
            hex::decode(&s.signature).ok()?,
        ))
    }

    /// Remembers the request sent under `txn` (replacing an older one).
    pub fn remember_sent(&mut self, txn: u64, request: &[u8], signature: &[u8]) {
        self.sent.retain(|s| s.txn_id != txn);
        self.sent.push_back(SentRequest {
            txn_id: txn,
            request: hex::encode(request),
            signature: hex::encode(signature),
        });
        while self.sent.len() > MAX_SENT {
            self.sent.pop_front();
        }
    }

    /// Counts a successful answer to the request sent under `txn` into the
    /// shift totals, exactly as the server counts the record. A replayed
    /// answer is counted only if this state has not counted `txn` before
    /// (the first answer may have been lost). A shift close resets the
    /// totals.
    pub fn count(&mut self, txn: u64, reply: &pb::Reply) -> Counting {
        let txn = reply.receipt.as_ref().map_or(txn, |r| r.txn_id);
        if txn == 0 || reply.receipt.is_none() {
            return Counting::NotCounted;
        }
        if reply.replayed && self.counted.contains(&txn) {
            return Counting::AlreadyCounted;
        }
        let t = &mut self.shift;
        match &reply.detail {
            Some(Detail::Purchase(p)) => {
                t.purchase_count = t.purchase_count.saturating_add(1);
                t.purchase_minor = t.purchase_minor.saturating_add(p.approved_minor);
            }
            Some(Detail::TopUp(u)) => {
                t.top_up_count = t.top_up_count.saturating_add(1);
                t.top_up_minor = t.top_up_minor.saturating_add(u.paid_minor);
            }
            Some(Detail::Refund(r)) => {
                t.refund_count = t.refund_count.saturating_add(1);
                t.refund_minor = t.refund_minor.saturating_add(r.refunded_minor);
            }
            Some(Detail::Reversal(r)) => {
                t.reversal_count = t.reversal_count.saturating_add(1);
                t.reversal_minor = t.reversal_minor.saturating_add(r.value_minor);
            }
            Some(Detail::Points(p)) => {
                t.redeem_count = t.redeem_count.saturating_add(1);
                t.redeem_points = t.redeem_points.saturating_add(p.points_redeemed);
            }
            Some(Detail::Shift(_)) => *t = Totals::default(),
            _ => {}
        }
        self.counted.retain(|&c| c != txn);
        self.counted.push_back(txn);
        while self.counted.len() > MAX_COUNTED {
            self.counted.pop_front();
        }
        Counting::Counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(txn: u64, approved: i64, replayed: bool) -> pb::Reply {
        pb::Reply {
            receipt: Some(pb::Receipt {
                seq: 10,
                txn_id: txn,
                ..Default::default()
            }),
            detail: Some(Detail::Purchase(pb::PurchaseResult {
                requested_minor: approved,
                approved_minor: approved,
                ..Default::default()
            })),
            replayed,
            ..Default::default()
        }
    }

    #[test]
    fn replayed_answers_count_once() {
        let mut s = TerminalState::default();
        assert_eq!(s.count(7, &purchase(7, 1250, false)), Counting::Counted);
        assert_eq!(
            s.count(7, &purchase(7, 1250, true)),
            Counting::AlreadyCounted
        );
        assert_eq!(s.shift.purchase_count, 1);
        assert_eq!(s.shift.purchase_minor, 1250);
        // A replay whose first answer never arrived here counts.
        assert_eq!(s.count(8, &purchase(8, 100, true)), Counting::Counted);
        assert_eq!(s.shift.purchase_minor, 1350);
    }

    #[test]
    fn counted_set_is_bounded() {
        let mut s = TerminalState::default();
        for txn in 1..=(MAX_COUNTED as u64 + 5) {
            s.count(txn, &purchase(txn, 1, false));
        }
        assert_eq!(s.counted.len(), MAX_COUNTED);
        assert_eq!(s.counted.front(), Some(&6));
    }

    #[test]
    fn read_only_answers_do_not_count() {
        let mut s = TerminalState::default();
        let inquiry = pb::Reply {
            card: Some(pb::CardView::default()),
            ..Default::default()
        };
        assert_eq!(s.count(0, &inquiry), Counting::NotCounted);
        assert_eq!(s.shift, Totals::default());
    }

    #[test]
    fn txn_ids_move_forward() {
        let mut s = TerminalState::default();
        let id = Identity {
            server_key: "aa".into(),
            brand_id: 1,
            terminal_id: 2,
        };
        assert!(!s.adopt(id.clone(), 5));
        assert_eq!(s.take_txn(None), 6);
        assert_eq!(s.take_txn(Some(50)), 50);
        assert_eq!(s.take_txn(None), 51);
        assert_eq!(s.take_txn(Some(3)), 3);
        assert_eq!(s.take_txn(None), 52);
        // Another terminal's state is set aside.
        assert!(s.adopt(
            Identity {
                terminal_id: 3,
                ..id
            },
            0
        ));
        assert_eq!(s.take_txn(None), 1);
    }

    #[test]
    fn state_file_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path(), &[0xab; 32]);
        assert!(path.ends_with(format!("{}.state.json", "ab".repeat(32))));
        let mut s = TerminalState::load(&path).unwrap();
        assert_eq!(s, TerminalState::default());
        s.count(4, &purchase(4, 99, false));
        s.remember_sent(4, b"req", b"sig");
        s.save(&path).unwrap();
        let back = TerminalState::load(&path).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.sent(4), Some((b"req".to_vec(), b"sig".to_vec())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the state file is the owner's only");
        }
        std::fs::write(&path, "{ not json").unwrap();
        assert!(TerminalState::load(&path).is_err());
    }
}

#[cfg(test)]
mod dir_tests {
    use super::*;

    #[test]
    fn the_state_directory_is_private_and_outside_a_data_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/state");
        prepare_dir(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let e = prepare_dir(&dir).unwrap_err().to_string();
            assert!(e.contains("open to others"), "{e}");
        }
        let data = root.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("server.key"), "x").unwrap();
        let e = prepare_dir(&data.join("demo")).unwrap_err().to_string();
        assert!(e.contains("inside the daemon's data directory"), "{e}");
    }
}
