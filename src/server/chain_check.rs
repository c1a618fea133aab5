//! The background tamper check after a start from a snapshot.
//!
//! A start from a snapshot replays only the records after it, and checks
//! that the snapshot's record is still on disk with the hash the snapshot
//! signed. The records before it are not read at start (that is what keeps
//! a restart short), so a change to one of them would go unseen until
//! `cardd check` or an audit. This thread walks them after the daemon is
//! serving: every record must link to the one before it (seq and previous
//! hash, `replay::check_link`). A changed record breaks a link, or changes
//! the last record's hash, which start-up already matched to the signed
//! snapshot. On a break the brand stops serving, loudly.
//!
//! It runs at the lowest scheduling priority and sleeps three times as long
//! as it works, so that it takes at most a quarter of a core while tills
//! are served.
use std::sync::Arc;
use std::time::Instant;

use prost::Message;

use super::writer::Halter;
use crate::crypto::leaf_hash;
use crate::pb::Record;
use crate::storage::{LogStore, StorageError};

/// Records checked between two pauses.
const STRIDE: u64 = 16_384;
/// Pause after each stride, as a multiple of the time it took.
const PAUSE_FACTOR: u32 = 3;

/// Starts the check of `brand`'s records `1..=through` (its snapshot's) on
/// a thread of its own; a change found halts the brand. It holds no
/// handle that keeps the writer alive: a shutdown does not wait for the
/// walk (minutes at ten million records), which the next start begins again.
pub fn spawn(store: Arc<dyn LogStore>, brand: u32, through: u64, handle: Halter) {
    if through == 0 {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name(format!("chain-check-{brand}"))
        .spawn(move || {
            super::audit::lower_priority(19);
            let started = Instant::now();
            match walk(store.as_ref(), brand, through) {
                Ok(()) => tracing::info!(
                    brand,
                    records = through,
                    secs = started.elapsed().as_secs(),
                    "the records before the snapshot are unchanged"
                ),
                // A file that cannot be read now (too many open files, an
                // I/O error) proves nothing about its contents: said
                // loudly, but the brand goes on.
                Err(Broken::Unread(why)) => tracing::error!(
                    brand,
                    why,
                    "the background chain check could not read the ledger and stopped; run \
                     `cardd check` (daemon stopped) to check it"
                ),
                Err(Broken::Changed(why)) => {
                    tracing::error!(
                        brand,
                        why,
                        "the ledger on disk was changed after it was written; this brand refuses \
                         every request from now on: restore the data directory from a backup"
                    );
                    handle.halt(format!("the ledger on disk was changed: {why}"));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(brand, error = %e, "no thread for the background chain check");
    }
}

/// Why the walk stopped.
enum Broken {
    /// The bytes are not what was written: a checksum, a decode or a link
    /// fails.
    Changed(String),
    /// They could not be read.
    Unread(String),
}

/// Checks the links of records `1..=through`: the first break, naming the
/// record.
fn walk(store: &dyn LogStore, brand: u32, through: u64) -> Result<(), Broken> {
    let (mut prev_seq, mut prev_head) = (0u64, [0u8; 32]);
    let mut stride = Instant::now();
    for item in store.scan(brand, 1) {
        let (seq, bytes) = item.map_err(|e| {
            let why = format!(
                "reading record {}: {}",
                prev_seq + 1,
                crate::error::causes(&e)
            );
            match e {
                // A file cut short or gone is a changed ledger too.
                StorageError::Io { source, .. }
                    if !matches!(
                        source.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::NotFound
                    ) =>
                {
                    Broken::Unread(why)
                }
                _ => Broken::Changed(why),
            }
        })?;
        let rec = Record::decode(bytes.as_slice())
            .map_err(|_| Broken::Changed(format!("record {seq} does not decode")))?;
        crate::replay::check_link(prev_seq, &prev_head, &rec)
            .map_err(|why| Broken::Changed(format!("record {seq}: {why}")))?;
        (prev_seq, prev_head) = (seq, leaf_hash(&bytes));
        if seq >= through {
            return Ok(());
        }
        if seq % STRIDE == 0 {
            std::thread::sleep(stride.elapsed() * PAUSE_FACTOR);
            stride = Instant::now();
        }
    }
    Err(Broken::Changed(format!(
        "the log ends at record {prev_seq}, before {through}"
    )))
}
