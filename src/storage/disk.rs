//! The embedded store: each brand's segment log (the durable truth), read
//! through its frame index (see `frames`), and the high-water marks that
//! catch a log that came back short.
//!
//! Data directory layout: `log/brand-NNNNN/*.seg` and `*.idx` (see
//! `segment`, `frames`), `marks/brand-NNNNN.hwm` (see `mark`); `ledger/`
//! only in directories of earlier versions (see `index`).
//!
//! A commit: append its frame to the brand's log and fdatasync it; add its
//! place to the frame index; hand its mark to the mark writer; return.
//! Only then does the caller release any reply of the batch.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::batch::{self, completing_seq, BatchView};
use super::frames::{FrameIndex, FrameIter};
use super::fsutil::{create_dir_all_durable, sync_dir};
use super::index::SledIndex;
use super::mark::{self, Mark, MarkWriter};
use super::segment::{read_frame, BrandLog, Frame};
use super::{LogStore, Result, StorageError};
use crate::crypto::leaf_hash;
use crate::limits::LOG_SEGMENT_BYTES;

/// The embedded store of a data directory.
pub struct DiskStore {
    data_dir: PathBuf,
    /// A segment is sealed when the next frame would take it past this.
    segment_bytes: u64,
    /// Built in bulk (see [`DiskStore::open_bulk`]).
    bulk: bool,
    logs: RwLock<BTreeMap<u32, Brand>>,
    /// Brands whose log did not open whole ([`DiskStore::open_sparing`]):
    /// never written to, never served.
    damaged: BTreeMap<u32, Damage>,
    marks: MarkWriter,
    /// `DATA/lock`, locked for the store's life: one process per data
    /// directory (a second one would cut a live log's "torn" tail).
    _lock: std::fs::File,
}

/// Takes the data directory's lock, or says who holds it.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File> {
    let path = data_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked(data_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(io_err(format!("locking {}", path.display()))(e))
        }
    }
}

/// Fsyncs the directories whose entries a crash (not a power cut) may have
/// left unsynced: what a restart builds on must be durable before any
/// answer rests on it.
fn sync_dirs(data_dir: &Path) -> Result<()> {
    for dir in [
        data_dir.to_path_buf(),
        log_root(data_dir),
        mark::dir(data_dir),
    ] {
        sync_dir(&dir).map_err(io_err(format!("fsync {}", dir.display())))?;
    }
    Ok(())
}

fn log_root(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

pub(super) fn brand_log_dir(data_dir: &Path, brand: u32) -> PathBuf {
    brand_dir_in(&log_root(data_dir), brand)
}

fn brand_dir_in(root: &Path, brand: u32) -> PathBuf {
    root.join(format!("brand-{brand:05}"))
}

/// Where the one-time import of a sled ledger writes its logs, renamed to
/// `log/` only once every brand is in: a crash in between leaves no `log/`
/// brand, so the next start imports again from the start.
fn import_staging(data_dir: &Path) -> PathBuf {
    data_dir.join("log.importing")
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { what, source }
}

/// Brand ids with a log directory.
fn logged_brands(data_dir: &Path) -> Result<Vec<u32>> {
    let root = log_root(data_dir);
    let mut brands = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(io_err(format!("listing {}", root.display())))? {
        let entry = entry.map_err(io_err(format!("listing {}", root.display())))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("brand-")?.parse().ok())
        {
            brands.push(id);
        }
    }
    brands.sort_unstable();
    Ok(brands)
}

/// One commit's runs as one log payload: u32 count, then per run its first
/// seq (u64), its length (u32) and its bytes (little-endian).
pub(super) fn encode_payload(runs: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let len32 = |n: usize| u32::try_from(n).expect("runs are bounded far below 4 GiB");
    let total: usize = runs.iter().map(|(_, r)| 12 + r.len()).sum();
    let mut out = Vec::with_capacity(4 + total);
    out.extend_from_slice(&len32(runs.len()).to_le_bytes());
    for (first, run) in runs {
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&len32(run.len()).to_le_bytes());
        out.extend_from_slice(run);
    }
    out
}

/// The runs of a payload, each checked to parse, consecutive, and together
/// covering exactly the frame's seqs.
pub(super) fn decode_payload(
    first_seq: u64,
    last_seq: u64,
    payload: &[u8],
) -> Result<Vec<(u64, &[u8])>> {
    let bad = || {
        StorageError::Corrupt(format!(
            "logged commit {first_seq}..={last_seq} does not decode"
        ))
    };
    let take = |at: usize, n: usize| {
        at.checked_add(n)
            .and_then(|end| payload.get(at..end))
            .ok_or_else(bad)
    };
    let count = u32::from_le_bytes(take(0, 4)?.try_into().expect("4 bytes"));
    let (mut at, mut next, mut runs) = (4, first_seq, Vec::new());
    for _ in 0..count {
        let first = u64::from_le_bytes(take(at, 8)?.try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(take(at + 8, 4)?.try_into().expect("4 bytes")) as usize;
        let run = take(at + 12, len)?;
        let view = BatchView::parse(first, run)?;
        if first != next {
            return Err(bad());
        }
        next = view.last_seq + 1;
        runs.push((first, run));
        at += 12 + len;
    }
    if at != payload.len() || next != last_seq.wrapping_add(1) {
        return Err(bad());
    }
    Ok(runs)
}

impl DiskStore {
    /// Opens the store of `data_dir`, creating what is missing, every
    /// brand's log whole or an error naming the brand: the form for `cardd
    /// brand create` (`cardd serve` uses [`open_sparing`](Self::open_sparing)).
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_sized(data_dir, LOG_SEGMENT_BYTES)
    }

    /// [`open`](Self::open), sealing segments at `segment_bytes` (`cardd
    /// serve --log-segment-kib`; segments already written keep their size).
    pub fn open_sized(data_dir: &Path, segment_bytes: u64) -> Result<Self> {
        for dir in [log_root(data_dir), mark::dir(data_dir)] {
            create_dir_all_durable(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        Self::open_dirs(data_dir, segment_bytes, false)
    }

    /// [`open_sized`](Self::open_sized) for `cardd serve`, which serves
    /// every brand it can: a brand whose log does not open whole (damaged,
    /// or shorter than its high-water mark) is set aside instead of
    /// failing the open, left exactly as found (no tail cut, no mark
    /// written), refused any commit, and named by
    /// [`damaged`](Self::damaged). Problems of the whole directory (its
    /// lock, its marks directory, an earlier version's import) still fail.
    pub fn open_sparing(data_dir: &Path, segment_bytes: u64) -> Result<Self> {
        for dir in [log_root(data_dir), mark::dir(data_dir)] {
            create_dir_all_durable(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        Self::open_dirs(data_dir, segment_bytes, true)
    }

    /// The brands set aside by [`open_sparing`](Self::open_sparing), each
    /// with what is wrong with its log, ascending.
    pub fn damaged(&self) -> impl Iterator<Item = (u32, &StorageError)> + '_ {
        self.damaged.iter().map(|(b, d)| (*b, &d.error))
    }

    /// The first damaged brand's error, the store closed: a start that has
    /// no whole brand left to serve fails with it.
    pub fn into_first_damage(self) -> Option<StorageError> {
        self.damaged.into_values().next().map(|d| d.error)
    }

    /// A damaged brand's log as far as it reads, read-only, if the log
    /// itself read whole (it only ends before its high-water mark): enough
    /// to learn whose sign-ons to refuse, never to serve.
    pub fn damaged_log(&self, brand: u32) -> Option<DamagedLog> {
        let frames = self.damaged.get(&brand)?.readable.clone()?;
        Some(DamagedLog { brand, frames })
    }

    /// Opens a new store for building in bulk (`cardd restore`, into a
    /// staging directory nothing serves): commits are not synced one by
    /// one, and [`finish_bulk`](Self::finish_bulk) makes all of them
    /// durable before the directory is put in place. A ledger of quiet
    /// days (one record per commit) restores at the disk's write speed,
    /// not at one fsync per record.
    pub fn open_bulk(data_dir: &Path) -> Result<Self> {
        let mut store = Self::open(data_dir)?;
        store.bulk = true;
        Ok(store)
    }

    /// Makes everything committed in bulk durable.
    pub fn finish_bulk(&self) -> Result<()> {
        for brand in self.logs.read().unwrap_or_else(|e| e.into_inner()).values() {
            brand
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sync_now()?;
        }
        self.marks.flush();
        Ok(())
    }

    /// Opens the store of a data directory that must already hold a ledger
    /// (read-only commands: a mistyped path is an error, not an empty
    /// ledger).
    pub fn open_existing(data_dir: &Path) -> Result<Self> {
        Self::refuse_no_ledger(data_dir)?;
        Self::open(data_dir)
    }

    /// [`open_existing`](Self::open_existing), a brand whose log does not
    /// open whole set aside as [`open_sparing`](Self::open_sparing) does:
    /// `cardd backup --data` backs up the whole brands and names the rest.
    pub fn open_existing_sparing(data_dir: &Path) -> Result<Self> {
        Self::refuse_no_ledger(data_dir)?;
        Self::open_sparing(data_dir, LOG_SEGMENT_BYTES)
    }

    fn refuse_no_ledger(data_dir: &Path) -> Result<()> {
        if !log_root(data_dir).is_dir() && !data_dir.join("ledger").is_dir() {
            return Err(StorageError::NoLedger(data_dir.to_path_buf()));
        }
        Ok(())
    }

    fn open_dirs(data_dir: &Path, segment_bytes: u64, spare: bool) -> Result<Self> {
        let lock = lock_data_dir(data_dir)?;
        sync_dirs(data_dir)?;
        let each = mark::read_each(&mark::dir(data_dir))
            .map_err(io_err(format!("reading {}", mark::dir(data_dir).display())))?;
        import_or_retire_sled(data_dir, each.is_empty())?;
        let (mut marks, mut unreadable) = (BTreeMap::new(), BTreeMap::new());
        for (brand, mark) in each {
            match mark {
                Ok(mark) => {
                    marks.insert(brand, mark);
                }
                Err(e) => {
                    unreadable.insert(brand, e);
                }
            }
        }
        let (logs, mut damaged) = open_logs(data_dir, segment_bytes, &marks, unreadable)?;
        if !spare {
            if let Some((_, damage)) = damaged.pop_first() {
                return Err(damage.error);
            }
        }
        let store = DiskStore {
            data_dir: data_dir.to_path_buf(),
            segment_bytes,
            bulk: false,
            logs: RwLock::new(logs),
            damaged,
            marks: MarkWriter::start(mark::dir(data_dir)),
            _lock: lock,
        };
        store.finish_open(&marks)?;
        Ok(store)
    }

    /// After the logs passed their marks: marks for brands that lack one,
    /// torn tails cut (only now: a start that refuses leaves the log as it
    /// found it).
    fn finish_open(&self, marks: &BTreeMap<u32, Mark>) -> Result<()> {
        self.mark_unmarked(marks)?;
        for brand in self.logs.read().unwrap_or_else(|e| e.into_inner()).values() {
            brand
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cut_torn_tail()?;
        }
        Ok(())
    }

    fn brand(&self, brand: u32) -> Option<Brand> {
        self.logs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&brand)
            .cloned()
    }

    /// The brand's log; a new, empty one for a brand's first commit (its
    /// directory and first segment are created durably by that commit).
    fn brand_or_new(&self, brand: u32) -> Result<Brand> {
        if let Some(b) = self.brand(brand) {
            return Ok(b);
        }
        let mut logs = self.logs.write().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = logs.get(&brand) {
            return Ok(b.clone());
        }
        let (mut log, _) =
            BrandLog::open(&brand_log_dir(&self.data_dir, brand), self.segment_bytes)?;
        log.cut_torn_tail()?;
        if self.bulk {
            log.bulk();
        }
        let b = Brand::new(log);
        logs.insert(brand, b.clone());
        Ok(b)
    }

    /// A logged brand without a mark (a cut before its first mark) gets
    /// one now.
    fn mark_unmarked(&self, marks: &BTreeMap<u32, Mark>) -> Result<()> {
        for brand in self.brands()? {
            if marks.contains_key(&brand) {
                continue;
            }
            let Some(frames) = self.brand(brand).map(|b| b.frames) else {
                continue;
            };
            if let Some((_, path, loc)) = frames.last()? {
                let frame = read_frame(&path, &loc)?;
                let record = frame_record(&frame, frame.last_seq)?.unwrap_or_default();
                let hash = leaf_hash(&record);
                self.marks.advance(
                    brand,
                    Mark {
                        seq: frame.last_seq,
                        hash,
                    },
                );
            }
        }
        self.marks.flush();
        Ok(())
    }

    /// The frames of `brand`, for reads.
    fn frames(&self, brand: u32) -> Option<Arc<FrameIndex>> {
        self.brand(brand).map(|b| b.frames)
    }
}

/// One brand's log (its writer) and where its frames lie (its readers).
#[derive(Clone)]
struct Brand {
    log: Arc<Mutex<BrandLog>>,
    frames: Arc<FrameIndex>,
}

impl Brand {
    fn new(log: BrandLog) -> Self {
        Brand {
            frames: log.index(),
            log: Arc::new(Mutex::new(log)),
        }
    }
}

/// What is wrong with a brand's log that did not open whole, and its
/// frames if the log itself read (it only ended before its mark).
struct Damage {
    error: StorageError,
    readable: Option<Arc<FrameIndex>>,
}

/// Every logged brand's log checked against its mark, or why not: (those
/// whole, those damaged). A brand with a mark but no log lost every record
/// it acknowledged, and one whose mark does not read cannot be checked:
/// damaged too.
fn open_logs(
    data_dir: &Path,
    segment_bytes: u64,
    marks: &BTreeMap<u32, Mark>,
    unreadable: BTreeMap<u32, std::io::Error>,
) -> Result<(BTreeMap<u32, Brand>, BTreeMap<u32, Damage>)> {
    let (mut logs, mut damaged) = (BTreeMap::new(), BTreeMap::new());
    for (brand, source) in unreadable {
        // What it acknowledged is unknown: its log cannot be checked.
        let what = "reading its high-water mark".to_string();
        let error = of_brand(brand, StorageError::Io { what, source });
        damaged.insert(
            brand,
            Damage {
                error,
                readable: None,
            },
        );
    }
    for brand in logged_brands(data_dir)? {
        if damaged.contains_key(&brand) {
            continue;
        }
        match open_brand(data_dir, brand, segment_bytes, marks.get(&brand)) {
            Ok(log) => {
                logs.insert(brand, log);
            }
            Err(damage) => {
                damaged.insert(brand, damage);
            }
        }
    }
    for (&brand, m) in marks.iter() {
        if m.seq > 0 && !logs.contains_key(&brand) && !damaged.contains_key(&brand) {
            let error = StorageError::ShortLedger {
                brand,
                stored: 0,
                acknowledged: m.seq,
            };
            let readable = None;
            damaged.insert(brand, Damage { error, readable });
        }
    }
    Ok((logs, damaged))
}

/// One brand's log, opened and checked against its mark, changing nothing
/// on disk but derived frame tables (the torn tail is cut later, once
/// every brand is known).
fn open_brand(
    data_dir: &Path,
    brand: u32,
    segment_bytes: u64,
    mark: Option<&Mark>,
) -> std::result::Result<Brand, Damage> {
    let (log, opened) =
        BrandLog::open(&brand_log_dir(data_dir, brand), segment_bytes).map_err(|e| Damage {
            error: of_brand(brand, e),
            readable: None,
        })?;
    if let Err(e) = check_marked(brand, &log, mark) {
        let readable = Some(log.index());
        return Err(Damage {
            error: of_brand(brand, e),
            readable,
        });
    }
    if opened.tables_rebuilt > 0 {
        tracing::info!(
            brand,
            segments = opened.tables_rebuilt,
            "frame tables rebuilt"
        );
    }
    Ok(Brand::new(log))
}

/// `e` naming its brand (a short ledger names it already).
fn of_brand(brand: u32, e: StorageError) -> StorageError {
    match e {
        StorageError::ShortLedger { .. } => e,
        other => StorageError::BrandLog {
            brand,
            source: Box::new(other),
        },
    }
}

/// Record `seq` of a logged frame, if the frame holds it.
fn frame_record(frame: &Frame, seq: u64) -> Result<Option<Vec<u8>>> {
    for (first, run) in decode_payload(frame.first_seq, frame.last_seq, &frame.payload)? {
        let view = BatchView::parse(first, run)?;
        if view.last_seq < seq {
            continue;
        }
        for record in view.records() {
            let (s, bytes) = record?;
            if s == seq {
                return Ok(Some(bytes.to_vec()));
            }
        }
    }
    Ok(None)
}

/// The checkpoint ending a logged commit (on its last run).
fn frame_checkpoint(frame: &Frame) -> Result<Vec<u8>> {
    let runs = decode_payload(frame.first_seq, frame.last_seq, &frame.payload)?;
    let (first, run) = runs.last().ok_or_else(|| {
        StorageError::Corrupt(format!("logged commit {} holds no run", frame.first_seq))
    })?;
    Ok(BatchView::parse(*first, run)?.checkpoint.to_vec())
}

/// A brand's mark must be covered by its log, read from the log itself: the
/// log reaches the mark's seq and holds a record with the mark's hash there.
fn check_marked(brand: u32, log: &BrandLog, mark: Option<&Mark>) -> Result<()> {
    let Some(m) = mark.filter(|m| m.seq > 0) else {
        return Ok(());
    };
    let short = || StorageError::ShortLedger {
        brand,
        stored: log.last_seq(),
        acknowledged: m.seq,
    };
    if log.last_seq() < m.seq {
        return Err(short());
    }
    let Some(frame) = log.index().frame_holding(m.seq)? else {
        return Err(short());
    };
    match frame_record(&frame, m.seq)? {
        Some(record) if leaf_hash(&record) == m.hash => Ok(()),
        _ => Err(short()),
    }
}

/// sled held the whole ledger before the segment log, then an index of it;
/// now neither. A data directory written before the log (a sled ledger, no
/// log, no marks) is copied into logs once; a later one's sled index is
/// left alone and named as unused.
fn import_or_retire_sled(data_dir: &Path, no_marks: bool) -> Result<()> {
    let sled_dir = data_dir.join("ledger");
    if !sled_dir.is_dir() {
        return Ok(());
    }
    if !logged_brands(data_dir)?.is_empty() || !no_marks {
        tracing::info!(path = %sled_dir.display(), "an earlier version's sled index is no longer read; it may be deleted");
        return Ok(());
    }
    let staging = import_staging(data_dir);
    if staging.exists() {
        tracing::warn!(path = %staging.display(), "an import cut short; starting it again");
        std::fs::remove_dir_all(&staging)
            .map_err(io_err(format!("removing {}", staging.display())))?;
    }
    import_index(&staging, &SledIndex::open(&sled_dir)?)?;
    // Every frame and directory in it is durable; `log/` is still empty
    // here (nothing is logged), and a rename replaces an empty directory.
    if staging.exists() {
        std::fs::rename(&staging, log_root(data_dir))
            .map_err(io_err(format!("renaming {}", staging.display())))?;
        sync_dir(data_dir).map_err(io_err(format!("fsync {}", data_dir.display())))?;
    }
    Ok(())
}

/// A data directory written before the segment log: its sled ledger is
/// copied into logs once (commit by commit, as the runs' checkpoints
/// mark them) and fsynced; from then on the log is the truth.
fn import_index(into: &Path, index: &SledIndex) -> Result<()> {
    for brand in index.brands() {
        if index.last_run(brand)?.is_none() {
            continue;
        }
        tracing::warn!(brand, "importing a ledger written before the segment log");
        let (mut log, _) = BrandLog::open(&brand_dir_in(into, brand), LOG_SEGMENT_BYTES)?;
        log.cut_torn_tail()?;
        // Staged: synced once whole, before the rename that puts it in place.
        log.bulk();
        let mut commit: Vec<(u64, Vec<u8>)> = Vec::new();
        for item in index.runs(brand)? {
            let (first, last, bytes, ends_commit) = item?;
            commit.push((first, bytes));
            if ends_commit {
                log.append(commit[0].0, last, &encode_payload(&commit))?;
                commit.clear();
            }
        }
        if !commit.is_empty() {
            return Err(StorageError::Corrupt(format!(
                "brand {brand}: stored runs end without a checkpoint"
            )));
        }
        log.sync_now()?;
    }
    Ok(())
}

/// Streams what `each` takes from every frame of `frames` from the one
/// holding `from_seq` on.
fn from_frames<T: Send + 'static>(
    frames: Option<Arc<FrameIndex>>,
    from_seq: u64,
    each: impl Fn(Frame) -> Vec<Result<T>> + Send + 'static,
) -> Box<dyn Iterator<Item = Result<T>> + Send> {
    let Some(frames) = frames else {
        return Box::new(std::iter::empty());
    };
    match FrameIter::from_seq(frames, from_seq) {
        Err(e) => Box::new(std::iter::once(Err(e))),
        Ok(iter) => Box::new(iter.flat_map(move |frame| match frame {
            Ok(frame) => each(frame),
            Err(e) => vec![Err(e)],
        })),
    }
}

/// The records of a frame from `from_seq` on.
fn frame_records(frame: &Frame, from_seq: u64) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for (first, run) in decode_payload(frame.first_seq, frame.last_seq, &frame.payload)? {
        for record in BatchView::parse(first, run)?.records() {
            let (seq, bytes) = record?;
            if seq >= from_seq {
                out.push((seq, bytes.to_vec()));
            }
        }
    }
    Ok(out)
}

impl LogStore for DiskStore {
    fn brands(&self) -> Result<Vec<u32>> {
        let logs = self.logs.read().unwrap_or_else(|e| e.into_inner());
        Ok(logs
            .iter()
            .filter(|(_, b)| b.log.lock().unwrap_or_else(|e| e.into_inner()).last_seq() > 0)
            .map(|(id, _)| *id)
            .collect())
    }

    fn commit(
        &self,
        brand: u32,
        records: &[(u64, &[u8])],
        nodes: &[(u8, u64, [u8; 32])],
        checkpoint: (u64, &[u8]),
    ) -> Result<()> {
        let (first, last) = check_commit_shape(records, checkpoint.0)?;
        if self.damaged.contains_key(&brand) {
            // A new log here would bury the damaged one (and its evidence).
            return Err(StorageError::DamagedBrand(brand));
        }
        let b = self.brand_or_new(brand)?;
        let mut log = b.log.lock().unwrap_or_else(|e| e.into_inner());
        // Appends only: the commit must start right after what is logged
        // (a caller bug must not overwrite durable records or leave a gap).
        if log.last_seq().checked_add(1) != Some(first.0) {
            return Err(StorageError::Corrupt(format!(
                "commit of records from {} does not follow the stored {}",
                first.0,
                log.last_seq()
            )));
        }
        let runs = batch::runs(records, nodes, checkpoint.1);
        log.append(first.0, last.0, &encode_payload(&runs))?;
        self.marks.advance(
            brand,
            Mark {
                seq: last.0,
                hash: leaf_hash(last.1),
            },
        );
        Ok(())
    }

    fn node(&self, brand: u32, level: u8, index: u64) -> Result<Option<[u8; 32]>> {
        node_in(self.frames(brand), level, index)
    }

    fn checkpoints(&self, brand: u32) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send> {
        self.checkpoints_after(brand, 0)
    }

    fn checkpoints_after(
        &self,
        brand: u32,
        after_size: u64,
    ) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send> {
        checkpoints_in(self.frames(brand), after_size)
    }

    fn record(&self, brand: u32, seq: u64) -> Result<Option<Vec<u8>>> {
        record_in(self.frames(brand), seq)
    }

    fn scan(
        &self,
        brand: u32,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send> {
        scan_in(self.frames(brand), from_seq)
    }

    fn last_checkpoint(&self, brand: u32) -> Result<Option<Vec<u8>>> {
        last_checkpoint_in(self.frames(brand))
    }
}

/// A damaged brand's log as far as it reads ([`DiskStore::damaged_log`]):
/// reads only; a commit is refused.
pub struct DamagedLog {
    brand: u32,
    frames: Arc<FrameIndex>,
}

impl DamagedLog {
    fn frames(&self, brand: u32) -> Option<Arc<FrameIndex>> {
        (brand == self.brand).then(|| self.frames.clone())
    }
}

impl LogStore for DamagedLog {
    fn brands(&self) -> Result<Vec<u32>> {
        Ok(vec![self.brand])
    }

    fn commit(
        &self,
        brand: u32,
        _: &[(u64, &[u8])],
        _: &[(u8, u64, [u8; 32])],
        _: (u64, &[u8]),
    ) -> Result<()> {
        Err(StorageError::DamagedBrand(brand))
    }

    fn node(&self, brand: u32, level: u8, index: u64) -> Result<Option<[u8; 32]>> {
        node_in(self.frames(brand), level, index)
    }

    fn checkpoints(&self, brand: u32) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send> {
        checkpoints_in(self.frames(brand), 0)
    }

    fn record(&self, brand: u32, seq: u64) -> Result<Option<Vec<u8>>> {
        record_in(self.frames(brand), seq)
    }

    fn scan(
        &self,
        brand: u32,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send> {
        scan_in(self.frames(brand), from_seq)
    }

    fn last_checkpoint(&self, brand: u32) -> Result<Option<Vec<u8>>> {
        last_checkpoint_in(self.frames(brand))
    }
}

/// A stored Merkle node, from the frame of the record that completed it.
fn node_in(frames: Option<Arc<FrameIndex>>, level: u8, index: u64) -> Result<Option<[u8; 32]>> {
    let Some(completed_by) = completing_seq(level, index) else {
        return Ok(None);
    };
    if level == 0 {
        return Ok(record_in(frames, completed_by)?.map(|r| leaf_hash(&r)));
    }
    let Some(frames) = frames else {
        return Ok(None);
    };
    let Some(frame) = frames.frame_holding(completed_by)? else {
        return Ok(None);
    };
    for (first, run) in decode_payload(frame.first_seq, frame.last_seq, &frame.payload)? {
        let view = BatchView::parse(first, run)?;
        if view.last_seq >= completed_by {
            let found = view.nodes().find(|(l, i, _)| *l == level && *i == index);
            return Ok(found.map(|(_, _, hash)| hash));
        }
    }
    Ok(None)
}

/// The checkpoints of the commits ending past `after_size`: the frame
/// holding `after_size + 1` ends past it, and so do all later ones.
fn checkpoints_in(
    frames: Option<Arc<FrameIndex>>,
    after_size: u64,
) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send> {
    from_frames(frames, after_size.saturating_add(1), |frame| {
        vec![frame_checkpoint(&frame)]
    })
}

fn record_in(frames: Option<Arc<FrameIndex>>, seq: u64) -> Result<Option<Vec<u8>>> {
    let Some(frames) = frames else {
        return Ok(None);
    };
    match frames.frame_holding(seq)? {
        Some(frame) => frame_record(&frame, seq),
        None => Ok(None),
    }
}

fn scan_in(
    frames: Option<Arc<FrameIndex>>,
    from_seq: u64,
) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send> {
    from_frames(frames, from_seq, move |frame| {
        match frame_records(&frame, from_seq) {
            Ok(records) => records.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        }
    })
}

fn last_checkpoint_in(frames: Option<Arc<FrameIndex>>) -> Result<Option<Vec<u8>>> {
    let Some(frames) = frames else {
        return Ok(None);
    };
    match frames.last()? {
        None => Ok(None),
        Some((_, path, loc)) => frame_checkpoint(&read_frame(&path, &loc)?).map(Some),
    }
}

/// A record handed to `commit`: its seq and bytes.
type Logged<'a> = &'a (u64, &'a [u8]);

/// A commit is one consecutive, non-empty run of records ending at its
/// checkpoint's tree size: (first, last).
fn check_commit_shape<'a>(
    records: &'a [(u64, &'a [u8])],
    checkpoint_size: u64,
) -> Result<(Logged<'a>, Logged<'a>)> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(StorageError::Corrupt("a commit without records".into()));
    };
    let consecutive = records
        .windows(2)
        .all(|w| w[0].0.checked_add(1) == Some(w[1].0));
    if !consecutive || last.0 != checkpoint_size {
        return Err(StorageError::Corrupt(format!(
            "commit of records {}..={} with checkpoint size {} is not one consecutive run",
            first.0, last.0, checkpoint_size
        )));
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Frontier, MemoryNodes, NodeSource};
    use crate::storage::{rewrite, StoredBatch, RUN_BYTES};

    /// Commits `sizes` batches of made-up records with their real Merkle
    /// nodes; returns the store, the records and every node.
    fn ledger(sizes: &[u64]) -> (tempfile::TempDir, DiskStore, Vec<Vec<u8>>, MemoryNodes) {
        ledger_of(sizes, |seq| {
            format!("record {seq} {}", "x".repeat(seq as usize % 7)).into_bytes()
        })
    }

    fn ledger_of(
        sizes: &[u64],
        record: impl Fn(u64) -> Vec<u8>,
    ) -> (tempfile::TempDir, DiskStore, Vec<Vec<u8>>, MemoryNodes) {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let mut frontier = Frontier::new();
        let mut all_nodes = MemoryNodes::default();
        let mut records = Vec::new();
        for &size in sizes {
            let first = records.len() as u64 + 1;
            let mut nodes = Vec::new();
            for seq in first..first + size {
                let bytes = record(seq);
                frontier.push_with(leaf_hash(&bytes), |l, i, h| {
                    nodes.push((l, i, h));
                    all_nodes.add(l, i, h);
                });
                records.push(bytes);
            }
            let batch: Vec<(u64, &[u8])> = (first..first + size)
                .map(|s| (s, records[s as usize - 1].as_slice()))
                .collect();
            let last = first + size - 1;
            let checkpoint = format!("checkpoint {last}").into_bytes();
            store
                .commit(7, &batch, &nodes, (last, &checkpoint))
                .unwrap();
        }
        (dir, store, records, all_nodes)
    }

    #[test]
    fn records_nodes_and_checkpoints_are_found_across_commits() {
        let sizes = [1, 5, 10, 1, 16];
        let (_dir, store, records, nodes) = ledger(&sizes);
        let n = records.len() as u64;
        for seq in 1..=n {
            assert_eq!(
                store.record(7, seq).unwrap().as_ref(),
                Some(&records[seq as usize - 1])
            );
        }
        assert_eq!(store.record(7, n + 1).unwrap(), None);
        assert_eq!(store.record(7, 0).unwrap(), None);
        for from in [1, 2, 6, 7, 16, n, n + 1] {
            let scanned: Vec<(u64, Vec<u8>)> = store.scan(7, from).collect::<Result<_>>().unwrap();
            let expected: Vec<(u64, Vec<u8>)> = (from..=n)
                .map(|s| (s, records[s as usize - 1].clone()))
                .collect();
            assert_eq!(scanned, expected, "scan from {from}");
        }
        for level in 0..6u8 {
            for index in 0..(n >> level) {
                assert_eq!(
                    store.node(7, level, index).unwrap(),
                    Some(nodes.node(level, index).unwrap()),
                    "node {level}/{index}"
                );
            }
            assert_eq!(
                store.node(7, level, n >> level).unwrap(),
                None,
                "incomplete node"
            );
        }
        let mut last = 0;
        let sizes_after: Vec<Vec<u8>> = sizes
            .iter()
            .map(|s| {
                last += s;
                format!("checkpoint {last}").into_bytes()
            })
            .collect();
        let checkpoints: Vec<Vec<u8>> = store.checkpoints(7).collect::<Result<_>>().unwrap();
        assert_eq!(checkpoints, sizes_after);
        assert_eq!(
            store.last_checkpoint(7).unwrap(),
            sizes_after.last().cloned()
        );
        assert_eq!(store.brands().unwrap(), vec![7]);
    }

    #[test]
    fn large_commits_are_stored_in_runs_and_read_back_whole() {
        // Full group commits of ~400-byte records, as a busy brand makes.
        let sizes = [2_048, 2_048, 1, 2_048];
        let (dir, store, records, nodes) =
            ledger_of(&sizes, |seq| format!("{seq:>400}").into_bytes());
        let n = records.len() as u64;
        assert!(!dir.path().join("ledger").exists(), "no sled directory");
        let runs: usize = rewrite::read_commits(dir.path(), 7)
            .unwrap_or_default()
            .iter()
            .map(Vec::len)
            .sum();
        assert!(runs > 3 * 2_048 * 400 / RUN_BYTES, "only {runs} runs");
        let checkpoints: Vec<Vec<u8>> = store.checkpoints(7).collect::<Result<_>>().unwrap();
        assert_eq!(checkpoints.len(), sizes.len(), "one checkpoint per commit");
        assert_eq!(
            store.last_checkpoint(7).unwrap(),
            Some(format!("checkpoint {n}").into_bytes())
        );
        for seq in [1, 9, 10, 11, 2_048, 2_049, 4_096, 4_097, 4_098, n] {
            assert_eq!(
                store.record(7, seq).unwrap().as_ref(),
                Some(&records[seq as usize - 1])
            );
        }
        let from = 3_000;
        let scanned = store.scan(7, from).count() as u64;
        assert_eq!(scanned, n - from + 1);
        for level in 0..13u8 {
            for index in (0..(n >> level)).step_by(7) {
                assert_eq!(
                    store.node(7, level, index).unwrap(),
                    Some(nodes.node(level, index).unwrap()),
                    "node {level}/{index}"
                );
            }
        }
    }

    #[test]
    fn a_commit_must_be_one_consecutive_run_ending_at_its_checkpoint() {
        let (_dir, store, _, _) = ledger(&[2]);
        let gap = store.commit(7, &[(3, b"a"), (5, b"b")], &[], (5, b"c"));
        assert!(matches!(gap, Err(StorageError::Corrupt(_))));
        let short = store.commit(7, &[(3, b"a")], &[], (4, b"c"));
        assert!(matches!(short, Err(StorageError::Corrupt(_))));
        let empty = store.commit(7, &[], &[], (2, b"c"));
        assert!(matches!(empty, Err(StorageError::Corrupt(_))));
        assert_eq!(
            store.last_checkpoint(7).unwrap(),
            Some(b"checkpoint 2".to_vec())
        );
    }

    #[test]
    fn a_commit_must_follow_what_is_stored() {
        let (_dir, store, records, _) = ledger(&[3]);
        for first in [1, 3, 5] {
            let r = store.commit(7, &[(first, b"x")], &[], (first, b"cp"));
            assert!(
                matches!(r, Err(StorageError::Corrupt(_))),
                "commit from {first}"
            );
        }
        assert_eq!(store.record(7, 3).unwrap(), Some(records[2].clone()));
        assert_eq!(store.record(7, 5).unwrap(), None);
        assert!(store.commit(7, &[(4, b"x")], &[], (4, b"cp")).is_ok());
    }

    #[test]
    fn a_damaged_batch_is_a_corrupt_error_never_a_panic() {
        let batch = StoredBatch {
            first_seq: 10,
            last_seq: 12,
            checkpoint: b"cp".to_vec(),
            nodes: vec![(1, 5, [9; 32])],
            records: vec![b"ten".to_vec(), b"eleven".to_vec(), vec![]],
        };
        let bytes = batch.encode();
        assert_eq!(StoredBatch::decode(10, &bytes).unwrap(), batch);
        // Wrong key for the counts, every truncation, a trailing byte, a
        // flipped version.
        assert!(StoredBatch::decode(11, &bytes).is_err());
        for len in 0..bytes.len() {
            assert!(
                StoredBatch::decode(10, &bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(StoredBatch::decode(10, &longer).is_err());
        let mut version = bytes.clone();
        version[0] = 2;
        assert!(StoredBatch::decode(10, &version).is_err());
        // A last seq with no room to count past it.
        let end = StoredBatch {
            first_seq: u64::MAX - 2,
            last_seq: u64::MAX,
            ..batch.clone()
        };
        assert!(StoredBatch::decode(u64::MAX - 2, &end.encode()).is_err());
        // Huge announced lengths.
        for at in [9, 15] {
            let mut huge = bytes.clone();
            huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            assert!(StoredBatch::decode(10, &huge).is_err(), "length at {at}");
        }
    }

    #[test]
    fn the_first_layout_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("ledger")).unwrap();
            db.open_tree("brand/00001")
                .unwrap()
                .insert([b'L', 0, 0, 0, 0, 0, 0, 0, 1], b"old".to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        let err = DiskStore::open(dir.path())
            .err()
            .expect("old layout opened");
        assert!(err.to_string().contains("first storage layout"), "{err}");
    }

    fn all_records(store: &DiskStore) -> Vec<Vec<u8>> {
        store.scan(7, 1).map(|r| r.unwrap().1).collect()
    }

    fn reopen(dir: &tempfile::TempDir) -> Result<DiskStore> {
        DiskStore::open(dir.path())
    }

    fn newest_segment(dir: &tempfile::TempDir) -> PathBuf {
        let log = dir.path().join("log/brand-00007");
        let mut segments: Vec<PathBuf> = std::fs::read_dir(log)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segments.sort();
        segments.pop().unwrap()
    }

    #[test]
    fn a_log_that_came_back_short_stops_the_open() {
        let (dir, store, _, _) = ledger(&[2, 2]);
        drop(store);
        // Cut the last commit off cleanly, as a lost write-back would.
        let segment = newest_segment(&dir);
        let bytes = std::fs::read(&segment).unwrap();
        let first_len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        std::fs::write(
            &segment,
            &bytes[..crate::storage::segment::FRAME_HEADER + first_len],
        )
        .unwrap();
        let err = reopen(&dir).err().expect("a short ledger opened");
        assert!(
            matches!(
                err,
                StorageError::ShortLedger {
                    brand: 7,
                    stored: 2,
                    acknowledged: 4
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("high-water mark"), "{err}");
        // A start that refuses changes nothing: cut inside the last frame,
        // the bytes stay for whoever investigates.
        std::fs::write(&segment, &bytes[..bytes.len() - 5]).unwrap();
        assert!(matches!(
            reopen(&dir),
            Err(StorageError::ShortLedger { .. })
        ));
        assert_eq!(
            std::fs::metadata(&segment).unwrap().len() as usize,
            bytes.len() - 5
        );
        // Nor can a log that is gone, with an earlier version's sled
        // directory beside it (not taken for a ledger from before the log
        // while marks exist) or without.
        std::fs::remove_dir_all(dir.path().join("log")).unwrap();
        std::fs::create_dir(dir.path().join("ledger")).unwrap();
        assert!(matches!(
            reopen(&dir),
            Err(StorageError::ShortLedger { .. })
        ));
        std::fs::remove_dir_all(dir.path().join("ledger")).unwrap();
        let err = reopen(&dir).err().expect("a missing log opened");
        assert!(
            matches!(
                err,
                StorageError::ShortLedger {
                    stored: 0,
                    acknowledged: 4,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// Brand 8's log and mark, byte for byte.
    fn files_of_8(dir: &tempfile::TempDir) -> Vec<(PathBuf, Vec<u8>)> {
        let log = dir.path().join("log/brand-00008");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(log)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.push(mark::path(&mark::dir(dir.path()), 8));
        paths.sort();
        let read = |p: PathBuf| (p.clone(), std::fs::read(&p).unwrap());
        paths.into_iter().map(read).collect()
    }

    /// One brand's damaged log must not stop the others: a sparing open
    /// sets it aside, changes none of its bytes and refuses commits to it;
    /// the strict open (check, backup, export) still refuses, naming it.
    #[test]
    fn a_sparing_open_sets_a_damaged_brand_aside_and_changes_none_of_it() {
        let (dir, store, records, _) = ledger(&[2, 3]);
        for seq in 1..=4u64 {
            let record = format!("eight {seq}").into_bytes();
            store
                .commit(8, &[(seq, &record)], &[], (seq, b"cp"))
                .unwrap();
        }
        drop(store);
        let segment = dir
            .path()
            .join("log/brand-00008")
            .join(format!("{:020}.seg", 1));
        let bytes = std::fs::read(&segment).unwrap();
        let mut broken = bytes.clone();
        broken[crate::storage::segment::FRAME_HEADER + 2] ^= 0x20;
        let cases = [
            (
                "cut inside its last frame",
                bytes[..bytes.len() - 5].to_vec(),
            ),
            ("a flipped byte in its first frame", broken),
        ];
        for (what, damaged) in cases {
            std::fs::write(&segment, &damaged).unwrap();
            let before = files_of_8(&dir);
            let store = DiskStore::open_sparing(dir.path(), LOG_SEGMENT_BYTES).unwrap();
            assert_eq!(store.brands().unwrap(), vec![7], "{what}");
            assert_eq!(all_records(&store), records, "{what}");
            let found: Vec<u32> = store.damaged().map(|(b, _)| b).collect();
            assert_eq!(found, vec![8], "{what}");
            let refused = store.commit(8, &[(5, b"x")], &[], (5, b"cp"));
            assert!(
                matches!(refused, Err(StorageError::DamagedBrand(8))),
                "{what}: {refused:?}"
            );
            drop(store);
            assert!(
                files_of_8(&dir) == before,
                "{what}: brand 8's files changed"
            );
            let err = reopen(&dir)
                .err()
                .expect("a strict open passed a damaged brand");
            assert!(err.to_string().contains("brand 8"), "{what}: {err}");
        }
        // The short log reads as far as it goes, for reads only.
        std::fs::write(&segment, &bytes[..bytes.len() - 5]).unwrap();
        let store = DiskStore::open_sparing(dir.path(), LOG_SEGMENT_BYTES).unwrap();
        let err = store.damaged().next().map(|(_, e)| e.to_string());
        assert!(err.is_some_and(|e| e.contains("high-water mark")));
        let short = store.damaged_log(8).expect("the short log reads");
        let seqs: Vec<u64> = short.scan(8, 1).map(|r| r.unwrap().0).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(short.last_checkpoint(8).unwrap(), Some(b"cp".to_vec()));
        let refused = short.commit(8, &[(4, b"x")], &[], (4, b"cp"));
        assert!(matches!(refused, Err(StorageError::DamagedBrand(8))));
        // The others go on taking commits.
        let next = records.len() as u64 + 1;
        store
            .commit(7, &[(next, b"seven")], &[], (next, b"cp"))
            .unwrap();
        assert_eq!(store.record(7, next).unwrap(), Some(b"seven".to_vec()));
    }

    /// A brand's mark file that does not read is that brand's damage (what
    /// it acknowledged is unknown), not the directory's.
    #[test]
    fn a_brand_whose_mark_does_not_read_is_set_aside_unchanged() {
        let (dir, store, records, _) = ledger(&[2, 3]);
        store.commit(8, &[(1, b"eight")], &[], (1, b"cp")).unwrap();
        drop(store);
        std::fs::write(mark::path(&mark::dir(dir.path()), 8), [7u8; 128]).unwrap();
        let before = files_of_8(&dir);
        let store = DiskStore::open_sparing(dir.path(), LOG_SEGMENT_BYTES).unwrap();
        assert_eq!(store.brands().unwrap(), vec![7]);
        assert_eq!(all_records(&store), records);
        let found: Vec<(u32, String)> = store
            .damaged()
            .map(|(b, e)| (b, crate::error::causes(e)))
            .collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 8);
        assert!(
            found[0].1.contains("no readable high-water mark"),
            "{}",
            found[0].1
        );
        drop(store);
        assert!(files_of_8(&dir) == before, "brand 8's files changed");
        let err = reopen(&dir)
            .err()
            .expect("a strict open passed an unreadable mark");
        assert!(err.to_string().contains("brand 8"), "{err}");
    }

    #[test]
    fn an_earlier_versions_sled_index_is_left_unread() {
        let (dir, store, records, _) = ledger(&[3, 1, 5]);
        drop(store);
        std::fs::write(dir.path().join("ledger"), b"not sled").unwrap();
        let store = reopen(&dir).unwrap();
        assert_eq!(all_records(&store), records);
    }

    #[test]
    fn a_ledger_from_before_the_log_is_imported() {
        let (dir, store, records, _) = ledger(&[3, 1, 5]);
        drop(store);
        // The sled layout of those versions: every commit's runs.
        let commits = rewrite::read_commits(dir.path(), 7).unwrap();
        {
            let old = SledIndex::open(&dir.path().join("ledger")).unwrap();
            for commit in &commits {
                let runs: Vec<(u64, Vec<u8>)> =
                    commit.iter().map(|r| (r.first_seq, r.encode())).collect();
                let refs: Vec<(u64, &[u8])> =
                    runs.iter().map(|(f, r)| (*f, r.as_slice())).collect();
                old.insert(7, &refs).unwrap();
            }
        }
        std::fs::remove_dir_all(dir.path().join("log")).unwrap();
        std::fs::remove_dir_all(dir.path().join("marks")).unwrap();
        let store = reopen(&dir).unwrap();
        assert_eq!(all_records(&store), records);
        drop(store);
        std::fs::remove_dir_all(dir.path().join("ledger")).unwrap();
        let store = reopen(&dir).unwrap();
        assert_eq!(all_records(&store), records, "the log holds it all");
        assert_eq!(store.checkpoints(7).count(), 3);
    }

    /// The one-time import of a pre-log sled ledger writes no marks, so a
    /// crash between two brands must not leave a log that the next start
    /// takes for the whole ledger (a review found brand 8 served as if it
    /// never existed): the import is staged and renamed whole.
    #[test]
    fn an_import_cut_short_by_a_crash_is_done_again_whole() {
        let (dir, store, records, _) = ledger(&[3, 1, 5]);
        drop(store);
        let commits = rewrite::read_commits(dir.path(), 7).unwrap();
        {
            let old = SledIndex::open(&dir.path().join("ledger")).unwrap();
            for brand in [7, 8] {
                for commit in &commits {
                    let runs: Vec<(u64, Vec<u8>)> =
                        commit.iter().map(|r| (r.first_seq, r.encode())).collect();
                    let refs: Vec<(u64, &[u8])> =
                        runs.iter().map(|(f, r)| (*f, r.as_slice())).collect();
                    old.insert(brand, &refs).unwrap();
                }
            }
        }
        std::fs::remove_dir_all(dir.path().join("log")).unwrap();
        std::fs::remove_dir_all(dir.path().join("marks")).unwrap();
        // What the import leaves when killed between its two brands.
        let staging = import_staging(dir.path());
        import_index(
            &staging,
            &SledIndex::open(&dir.path().join("ledger")).unwrap(),
        )
        .unwrap();
        std::fs::remove_dir_all(staging.join("brand-00008")).unwrap();
        let reopened = reopen(&dir);
        let served = reopened.as_ref().map(|s| s.brands().unwrap());
        assert_eq!(
            served.ok(),
            Some(vec![7, 8]),
            "brand 8 ({} records in sled) served whole",
            records.len()
        );
        assert!(!staging.exists());
    }

    #[test]
    fn a_store_built_in_bulk_holds_every_commit_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_bulk(dir.path()).unwrap();
        let records: Vec<Vec<u8>> = (1..=50u64).map(|s| format!("r{s}").into_bytes()).collect();
        for seq in 1..=50u64 {
            let bytes = records[seq as usize - 1].as_slice();
            let cp = format!("cp{seq}").into_bytes();
            store.commit(7, &[(seq, bytes)], &[], (seq, &cp)).unwrap();
        }
        store.finish_bulk().unwrap();
        drop(store);
        let store = reopen(&dir).unwrap();
        assert_eq!(all_records(&store), records);
        assert_eq!(store.last_checkpoint(7).unwrap(), Some(b"cp50".to_vec()));
    }

    #[test]
    fn a_second_process_cannot_open_a_data_directory_in_use() {
        let (dir, store, records, _) = ledger(&[2]);
        let err = reopen(&dir).err().expect("opened twice");
        assert!(matches!(err, StorageError::Locked(_)), "{err}");
        assert!(err.to_string().contains("is the daemon running"), "{err}");
        assert!(!dir.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("damaged")));
        drop(store);
        assert_eq!(all_records(&reopen(&dir).unwrap()), records);
    }

    #[test]
    fn read_only_opening_refuses_a_directory_without_a_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let err = DiskStore::open_existing(&dir.path().join("typo"))
            .err()
            .unwrap();
        assert!(matches!(err, StorageError::NoLedger(_)), "{err}");
        assert!(!dir.path().join("typo").exists());
    }
}
