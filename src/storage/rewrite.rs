//! Reading and rewriting a brand's log wholesale, offline, as a damaged
//! disk or an attacker holding the data directory could: for the tests and
//! drills that show such a ledger is refused at start-up. The daemon never
//! calls these.
use std::path::Path;

use super::disk::{brand_log_dir, decode_payload, encode_payload};
use super::frames::FrameIter;
use super::segment::BrandLog;
use super::{Result, StoredBatch};

/// Every logged commit of `brand` in `data_dir`, each as its stored runs.
pub fn read_commits(data_dir: &Path, brand: u32) -> Result<Vec<Vec<StoredBatch>>> {
    let (log, _) = BrandLog::open(&brand_log_dir(data_dir, brand), u64::MAX)?;
    let mut commits = Vec::new();
    for frame in FrameIter::from_seq(log.index(), 1)? {
        let frame = frame?;
        let runs = decode_payload(frame.first_seq, frame.last_seq, &frame.payload)?;
        commits.push(
            runs.into_iter()
                .map(|(first, bytes)| StoredBatch::decode(first, bytes))
                .collect::<Result<Vec<_>>>()?,
        );
    }
    Ok(commits)
}

/// Replaces the log of `brand` with `commits` (checksums made anew, so
/// only the ledger's own checks can notice; an earlier version's sled
/// directory is deleted too, so that nothing imports it). A commit's seqs
/// are taken from its runs.
pub fn write_commits(data_dir: &Path, brand: u32, commits: &[Vec<StoredBatch>]) -> Result<()> {
    let dir = brand_log_dir(data_dir, brand);
    let io = |what: &str| {
        let what = format!("{what} {}", dir.display());
        move |source| super::StorageError::Io { what, source }
    };
    std::fs::remove_dir_all(&dir).map_err(io("removing"))?;
    let (mut log, _) = BrandLog::open(&dir, u64::MAX)?;
    log.cut_torn_tail()?;
    for commit in commits {
        let (Some(first), Some(last)) = (commit.first(), commit.last()) else {
            continue;
        };
        let runs: Vec<(u64, Vec<u8>)> = commit.iter().map(|r| (r.first_seq, r.encode())).collect();
        log.append_unchecked(first.first_seq, last.last_seq, &encode_payload(&runs))?;
    }
    let index = data_dir.join("ledger");
    if index.exists() {
        std::fs::remove_dir_all(&index).map_err(io("removing the index of"))?;
    }
    Ok(())
}
