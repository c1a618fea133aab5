//! The lead's on-disk layout, in one place: the only paths this test knows
//! inside a data directory. Adjust here if the layout moves.

use std::path::{Path, PathBuf};

/// The append-only segment files of the ledger (`log/brand-NNNNN/*.seg`).
pub fn log_dir(data: &Path) -> PathBuf {
    data.join("log")
}

/// Where signed brand-state snapshots are written.
pub fn snapshot_dir(data: &Path) -> PathBuf {
    data.join("snapshots")
}

/// What the snapshot directory holds: (name, size, mtime) of each entry,
/// sorted; any change means a snapshot is being (or was just) written.
pub fn snapshot_state(data: &Path) -> Vec<(String, u64, Option<std::time::SystemTime>)> {
    let Ok(entries) = std::fs::read_dir(snapshot_dir(data)) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let m = e.metadata().ok();
            let len = m.as_ref().map_or(0, |m| m.len());
            let name = e.file_name().to_string_lossy().into_owned();
            (name, len, m.and_then(|m| m.modified().ok()))
        })
        .collect();
    out.sort();
    out
}

/// A log holding no more than this many bytes holds no committed record
/// (room for a segment header); anything beyond is at least one fsynced batch.
pub const EMPTY_LOG_MAX: u64 = 64;

/// Bytes removed from the newest segment to cut the ledger short behind the
/// daemon's back: past any torn-tail allowance (one unfinished frame).
pub const CUT_SHORT_BYTES: u64 = 400;

/// Every file under `dir`, at any depth (segments sit in per-brand
/// directories), sorted by path.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.filter_map(Result::ok) {
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&e.path())),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
    out.sort();
    out
}

/// Total bytes of the files under `DATA/log` (0 if it does not exist).
pub fn log_bytes(data: &Path) -> u64 {
    files_under(&log_dir(data))
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The newest (by path: brand, then first seq) non-empty segment file (not
/// a sealed segment's `.idx` frame table).
fn newest_segment(data: &Path) -> PathBuf {
    let dir = log_dir(data);
    files_under(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .rfind(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .unwrap_or_else(|| panic!("no segment file under {}", dir.display()))
}

/// Cuts the ledger short: the newest segment loses its last
/// [`CUT_SHORT_BYTES`] bytes (or all but its first byte if smaller).
pub fn cut_short(data: &Path) {
    let seg = newest_segment(data);
    let len = std::fs::metadata(&seg).expect("segment").len();
    let keep = len.saturating_sub(CUT_SHORT_BYTES).max(1);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open segment");
    f.set_len(keep).expect("truncate segment");
    f.sync_all().expect("fsync segment");
    println!("cut {} from {len} to {keep} bytes", seg.display());
}

/// Removes the whole ledger (the log and its frame tables), leaving the
/// server key, the high-water marks and everything else.
pub fn remove_log(data: &Path) {
    let dir = log_dir(data);
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
}
