//! High-water marks: per brand, the newest committed record's seq and hash,
//! kept apart from the log (`DATA/marks/brand-NNNNN.hwm`) and fsynced, so
//! that a log that comes back shorter than what was acknowledged (a lost
//! or truncated segment, a restored old disk, a deleted log) stops the
//! start instead of being served.
//!
//! A mark trails the log: a background thread writes the newest commit's
//! mark after it is durable, so after a power cut the mark may name a
//! commit or two before the log's last one, never one after it. The file
//! is two 64-byte slots written alternately in place (pwrite, fdatasync);
//! each slot holds a counter, the seq, the hash and a CRC, so a torn write
//! of one slot leaves the other.
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::fsutil::replace_durably;

/// The newest committed record of a brand as a mark records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Its sequence number.
    pub seq: u64,
    /// Its leaf hash.
    pub hash: [u8; 32],
}

const SLOT: usize = 64;
const SLOT_MAGIC: [u8; 4] = *b"CHWM";

/// The marks directory of a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("marks")
}

pub(super) fn path(dir: &Path, brand: u32) -> PathBuf {
    dir.join(format!("brand-{brand:05}.hwm"))
}

fn encode_slot(counter: u64, mark: &Mark) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[..4].copy_from_slice(&SLOT_MAGIC);
    slot[4..12].copy_from_slice(&counter.to_le_bytes());
    slot[12..20].copy_from_slice(&mark.seq.to_le_bytes());
    slot[20..52].copy_from_slice(&mark.hash);
    let sum = crc32fast::hash(&slot[..52]);
    slot[52..56].copy_from_slice(&sum.to_le_bytes());
    slot
}

fn decode_slot(slot: &[u8]) -> Option<(u64, Mark)> {
    if slot.len() < SLOT || slot[..4] != SLOT_MAGIC {
        return None;
    }
    let sum = u32::from_le_bytes(slot[52..56].try_into().expect("4 bytes"));
    if crc32fast::hash(&slot[..52]) != sum {
        return None;
    }
    let counter = u64::from_le_bytes(slot[4..12].try_into().expect("8 bytes"));
    let seq = u64::from_le_bytes(slot[12..20].try_into().expect("8 bytes"));
    let hash = slot[20..52].try_into().expect("32 bytes");
    Some((counter, Mark { seq, hash }))
}

/// Every brand's mark in `dir`. A mark file whose slots are both damaged is
/// an error: it existed, so something was acknowledged.
pub fn read_all(dir: &Path) -> io::Result<BTreeMap<u32, Mark>> {
    read_each(dir)?
        .into_iter()
        .map(|(brand, mark)| Ok((brand, mark?)))
        .collect()
}

/// Every brand's mark in `dir`, or why that brand's mark file does not
/// read (both slots damaged, unreadable): one brand's damage is its own.
/// The error is the directory's only if it cannot be listed.
pub fn read_each(dir: &Path) -> io::Result<BTreeMap<u32, io::Result<Mark>>> {
    let mut marks = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(marks),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(brand) = name
            .to_str()
            .and_then(|n| n.strip_prefix("brand-")?.strip_suffix(".hwm")?.parse().ok())
        else {
            continue;
        };
        let mark = fs::read(entry.path()).and_then(|bytes| match newest_slot(&bytes) {
            Some((_, mark)) => Ok(mark),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no readable high-water mark", entry.path().display()),
            )),
        });
        marks.insert(brand, mark);
    }
    Ok(marks)
}

/// One brand's mark file, open for updating.
struct MarkFile {
    file: File,
    counter: u64,
}

impl MarkFile {
    /// Opens a brand's mark file, or creates it holding `first` whole
    /// (temporary file, fsync, rename, directory fsync): a cut while it is
    /// made leaves no file or a readable one, never an empty one.
    fn open_or_create(dir: &Path, brand: u32, first: &Mark) -> io::Result<(Self, bool)> {
        let path = path(dir, brand);
        let (counter, created) = match fs::read(&path) {
            Ok(bytes) => (newest_slot(&bytes).map_or(0, |(c, _)| c), false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Counter 1 in slot 1: a slot's index is its counter mod 2.
                let slots = [[0u8; SLOT], encode_slot(1, first)].concat();
                replace_durably(&path, &slots, true)?;
                (1, true)
            }
            Err(e) => return Err(e),
        };
        let file = OpenOptions::new().write(true).open(&path)?;
        Ok((MarkFile { file, counter }, created))
    }

    fn write(&mut self, mark: &Mark) -> io::Result<()> {
        self.counter = self.counter.wrapping_add(1);
        let at = (self.counter % 2) * SLOT as u64;
        self.file
            .write_all_at(&encode_slot(self.counter, mark), at)?;
        self.file.sync_data()
    }
}

/// The valid slot with the higher counter.
fn newest_slot(bytes: &[u8]) -> Option<(u64, Mark)> {
    bytes
        .chunks(SLOT)
        .take(2)
        .filter_map(decode_slot)
        .max_by_key(|(counter, _)| *counter)
}

#[derive(Default)]
struct Pending {
    newest: BTreeMap<u32, Mark>,
    stopping: bool,
    /// Marks written so far (for `flush`).
    written: u64,
    /// Marks handed in so far.
    asked: u64,
}

/// The background writer of marks: `advance` never waits for a disk.
pub struct MarkWriter {
    shared: Arc<(Mutex<Pending>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// Pause between two rounds of mark writes, so that a busy brand costs one
/// mark fsync per this interval, not one per commit.
const MARK_INTERVAL: Duration = Duration::from_millis(10);

impl MarkWriter {
    /// Starts the writer for marks in `dir` (created by the caller).
    pub fn start(dir: PathBuf) -> Self {
        let shared: Arc<(Mutex<Pending>, Condvar)> = Arc::default();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cardd-marks".into())
            .spawn(move || write_marks(&dir, &thread_shared))
            .expect("spawning the mark writer");
        MarkWriter {
            shared,
            thread: Some(thread),
        }
    }

    /// Records that `mark` is durable in the brand's log.
    pub fn advance(&self, brand: u32, mark: Mark) {
        let (lock, cv) = &*self.shared;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        p.newest.insert(brand, mark);
        p.asked += 1;
        cv.notify_all();
    }

    /// Waits until every mark handed in so far is written.
    pub fn flush(&self) {
        let (lock, cv) = &*self.shared;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        let target = p.asked;
        while p.written < target && !p.stopping {
            p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for MarkWriter {
    fn drop(&mut self) {
        self.flush();
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stopping = true;
        cv.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: takes the newest mark of every brand, writes them,
/// pauses, repeats. A failed write is logged and retried with the next
/// mark: a mark only guards against loss, the log holds the data.
fn write_marks(dir: &Path, shared: &(Mutex<Pending>, Condvar)) {
    let (lock, cv) = shared;
    let mut files: BTreeMap<u32, MarkFile> = BTreeMap::new();
    loop {
        let (batch, asked) = {
            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
            while p.newest.is_empty() && !p.stopping {
                p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if p.newest.is_empty() {
                return;
            }
            (std::mem::take(&mut p.newest), p.asked)
        };
        for (brand, mark) in batch {
            let result = match files.entry(brand) {
                std::collections::btree_map::Entry::Occupied(mut f) => f.get_mut().write(&mark),
                std::collections::btree_map::Entry::Vacant(v) => {
                    MarkFile::open_or_create(dir, brand, &mark).and_then(|(f, created)| {
                        let f = v.insert(f);
                        // An existing file (a restart) still needs this mark.
                        if created {
                            Ok(())
                        } else {
                            f.write(&mark)
                        }
                    })
                }
            };
            if let Err(e) = result {
                tracing::error!(brand, error = %e, "high-water mark not written");
            }
        }
        {
            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
            p.written = asked;
            cv.notify_all();
        }
        std::thread::sleep(MARK_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(seq: u64) -> Mark {
        Mark {
            seq,
            hash: [seq as u8; 32],
        }
    }

    #[test]
    fn the_newest_mark_of_each_brand_is_read_back() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("marks");
        fs::create_dir(&dir).unwrap();
        {
            let writer = MarkWriter::start(dir.clone());
            for seq in 1..=5 {
                writer.advance(1, mark(seq));
                writer.flush();
            }
            writer.advance(2, mark(9));
        }
        let marks = read_all(&dir).unwrap();
        assert_eq!(
            marks.into_iter().collect::<Vec<_>>(),
            [(1, mark(5)), (2, mark(9))]
        );
    }

    #[test]
    fn the_first_mark_after_a_restart_is_written() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        {
            let writer = MarkWriter::start(dir.clone());
            writer.advance(4, mark(3));
        }
        {
            let writer = MarkWriter::start(dir.clone());
            writer.advance(4, mark(9));
        }
        assert_eq!(read_all(&dir).unwrap()[&4], mark(9));
    }

    #[test]
    fn a_torn_slot_leaves_the_other_and_two_torn_slots_are_an_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        {
            let writer = MarkWriter::start(dir.clone());
            writer.advance(3, mark(7));
            writer.flush();
            writer.advance(3, mark(8));
        }
        let file = path(&dir, 3);
        let mut bytes = fs::read(&file).unwrap();
        // Counter 2 (mark 8) went to slot 0: tear it.
        bytes[30] ^= 1;
        fs::write(&file, &bytes).unwrap();
        assert_eq!(read_all(&dir).unwrap()[&3], mark(7));
        bytes[SLOT + 30] ^= 1;
        fs::write(&file, &bytes).unwrap();
        assert!(read_all(&dir).is_err());
    }
}
