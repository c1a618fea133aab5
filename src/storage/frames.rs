//! Where every frame of a brand's log lies, without reading the log: the
//! newest segment's frames in memory (found when it is checked at open, then
//! appended with each commit), and for each sealed segment a frame table in
//! a sidecar file `<first seq>.idx`, written durably when the segment is
//! sealed and loaded only when a read needs it (a few are cached).
//!
//! This is what makes start-up independent of the ledger's length: a
//! sealed segment costs one small header read (its table's), not a walk of
//! its frames. A table is derived: one that is missing (a crash while
//! sealing, a log from before tables) or does not match its segment is
//! rebuilt by walking that segment once.
//!
//! A table file (integers little-endian):
//!
//! ```text
//! "CDLX" | version u32 | segment size u64 | first seq u64 | last seq u64 |
//! frames u32 | header CRC-32 u32 | frames × (first u64, last u64, offset u64,
//! length u32) | table CRC-32 u32
//! ```
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::fsutil::replace_durably;
use super::segment::{read_frame, walk_sealed, Frame, FrameLoc};
use super::{Result, StorageError};

const MAGIC: [u8; 4] = *b"CDLX";
const VERSION: u32 = 1;
/// Magic, version, size, first, last, count, header CRC.
const HEADER: usize = 4 + 4 + 8 + 8 + 8 + 4 + 4;
const ENTRY: usize = 8 + 8 + 8 + 4;
/// Sealed segments' tables kept in memory for reads: an export walks one
/// segment at a time, proofs touch a few.
const CACHED_TABLES: usize = 4;

/// A sealed segment: whole, immutable, its frames in its table file.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// Seq of its first record.
    pub first_seq: u64,
    /// Seq of its last record.
    pub last_seq: u64,
    /// The segment file.
    pub path: PathBuf,
}

/// The table file of the segment at `segment`.
pub fn table_path(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// The frame table of a sealed segment as its file holds it.
fn encode_table(size: u64, first: u64, last: u64, frames: &[FrameLoc]) -> Vec<u8> {
    let count = u32::try_from(frames.len()).expect("a segment holds far fewer frames");
    let mut out = Vec::with_capacity(HEADER + frames.len() * ENTRY + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for n in [size, first, last] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&count.to_le_bytes());
    let sum = crc32fast::hash(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    let start = out.len();
    for f in frames {
        out.extend_from_slice(&f.first_seq.to_le_bytes());
        out.extend_from_slice(&f.last_seq.to_le_bytes());
        out.extend_from_slice(&f.offset.to_le_bytes());
        out.extend_from_slice(&f.len.to_le_bytes());
    }
    let sum = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A table header's (segment size, first, last, frames), if it checks.
fn parse_header(h: &[u8]) -> Option<(u64, u64, u64, u32)> {
    if h.len() < HEADER || h[..4] != MAGIC || u32_at(h, 4) != VERSION {
        return None;
    }
    if crc32fast::hash(&h[..HEADER - 4]) != u32_at(h, HEADER - 4) {
        return None;
    }
    Some((u64_at(h, 8), u64_at(h, 16), u64_at(h, 24), u32_at(h, 32)))
}

/// True when the table file of the segment at `path` exists and says it
/// describes exactly this segment: `size` bytes holding `first..=last`.
/// One header read: the entries are checked when loaded.
pub fn table_matches(path: &Path, size: u64, first: u64, last: u64) -> bool {
    let Ok(file) = File::open(table_path(path)) else {
        return false;
    };
    let mut h = [0u8; HEADER];
    if file.read_exact_at(&mut h, 0).is_err() {
        return false;
    }
    matches!(parse_header(&h), Some((s, f, l, _)) if (s, f, l) == (size, first, last))
}

/// Writes the table of a sealed segment (temporary file, fsync, rename,
/// directory fsync).
pub fn write_table(path: &Path, size: u64, frames: &[FrameLoc]) -> Result<()> {
    let (first, last) = match (frames.first(), frames.last()) {
        (Some(a), Some(b)) => (a.first_seq, b.last_seq),
        _ => {
            return Err(StorageError::Corrupt(format!(
                "{}: an empty sealed segment",
                path.display()
            )))
        }
    };
    let bytes = encode_table(size, first, last, frames);
    let table = table_path(path);
    replace_durably(&table, &bytes, false).map_err(|e| StorageError::Io {
        what: format!("writing {}", table.display()),
        source: e,
    })
}

/// Loads and checks a sealed segment's table: the entries' checksum, and
/// that the frames follow each other from `s.first_seq` to `s.last_seq`.
fn load_table(s: &Sealed) -> Result<Arc<[FrameLoc]>> {
    let table = table_path(&s.path);
    let bad = |why: &str| StorageError::Corrupt(format!("{}: {why}", table.display()));
    let bytes = std::fs::read(&table).map_err(|e| StorageError::Io {
        what: format!("reading {}", table.display()),
        source: e,
    })?;
    let (_, first, last, count) = parse_header(&bytes).ok_or_else(|| bad("bad header"))?;
    let end = HEADER + count as usize * ENTRY;
    if bytes.len() != end + 4 || crc32fast::hash(&bytes[HEADER..end]) != u32_at(&bytes, end) {
        return Err(bad("frame table checksum does not match"));
    }
    if (first, last) != (s.first_seq, s.last_seq) {
        return Err(bad("frame table names other records"));
    }
    let mut frames = Vec::with_capacity(count as usize);
    let mut next = first;
    for e in bytes[HEADER..end].chunks_exact(ENTRY) {
        let f = FrameLoc::new(u64_at(e, 0), u64_at(e, 8), u64_at(e, 16), u32_at(e, 24));
        if f.first_seq != next || f.last_seq < f.first_seq {
            return Err(bad("frames do not follow each other"));
        }
        next = f.last_seq + 1;
        frames.push(f);
    }
    if next != last + 1 {
        return Err(bad("frames do not reach the segment's end"));
    }
    Ok(frames.into())
}

/// A table that will not load (damaged, or lost after a failed write) is
/// derived data: walk the segment for it and write it again.
fn rebuild_table(s: &Sealed, why: &StorageError) -> Result<Arc<[FrameLoc]>> {
    tracing::warn!(segment = %s.path.display(), error = %why, "rebuilding a segment's frame table");
    let mut frames = Vec::new();
    let (last, size) = walk_sealed(&s.path, s.first_seq - 1, &mut frames)?;
    if last != s.last_seq {
        return Err(StorageError::Corrupt(format!(
            "{}: ends at record {last}, the next segment starts at {}",
            s.path.display(),
            s.last_seq + 1
        )));
    }
    if let Err(e) = write_table(&s.path, size, &frames) {
        tracing::warn!(error = %e, "frame table not written; it is rebuilt when needed");
    }
    Ok(frames.into())
}

/// The frames of one brand's log, shared by its writer (which appends and
/// seals) and every reader.
#[derive(Debug, Default)]
pub struct FrameIndex {
    inner: RwLock<Inner>,
    cache: Mutex<Vec<(usize, Arc<[FrameLoc]>)>>,
}

#[derive(Debug, Default)]
struct Inner {
    sealed: Vec<Sealed>,
    /// The newest segment's file, if any.
    newest: Option<PathBuf>,
    /// The newest segment's frames, oldest first.
    frames: Vec<FrameLoc>,
}

/// A frame to read: its segment's position and file, and where it lies.
pub type Located = (usize, PathBuf, FrameLoc);

impl FrameIndex {
    /// The index of a log whose sealed segments are `sealed` and whose
    /// newest segment (if any) holds `frames`.
    pub fn new(sealed: Vec<Sealed>, newest: Option<PathBuf>, frames: Vec<FrameLoc>) -> Self {
        FrameIndex {
            inner: RwLock::new(Inner {
                sealed,
                newest,
                frames,
            }),
            cache: Mutex::default(),
        }
    }

    fn read_inner(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_inner(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the newest segment's new frame (after its fdatasync).
    pub fn push(&self, frame: FrameLoc) {
        self.write_inner().frames.push(frame);
    }

    /// The newest segment becomes sealed and `path` the new newest one.
    pub fn seal_and_start(&self, path: PathBuf) {
        let mut inner = self.write_inner();
        if let Some(old) = inner.newest.replace(path) {
            let frames = std::mem::take(&mut inner.frames);
            let (first, last) = match (frames.first(), frames.last()) {
                (Some(a), Some(b)) => (a.first_seq, b.last_seq),
                _ => return,
            };
            let pos = inner.sealed.len();
            inner.sealed.push(Sealed {
                first_seq: first,
                last_seq: last,
                path: old,
            });
            drop(inner);
            self.remember(pos, frames.into());
        }
    }

    /// The newest segment's frames (to write its table when it is sealed).
    pub fn newest_frames(&self) -> Vec<FrameLoc> {
        self.read_inner().frames.clone()
    }

    /// The frame holding record `seq`, if logged.
    pub fn locate(&self, seq: u64) -> Result<Option<Located>> {
        let inner = self.read_inner();
        if let Some(newest) = &inner.newest {
            let i = inner.frames.partition_point(|f| f.last_seq < seq);
            if let Some(f) = inner.frames.get(i).filter(|f| f.first_seq <= seq) {
                return Ok(Some((inner.sealed.len(), newest.clone(), *f)));
            }
        }
        let pos = inner.sealed.partition_point(|s| s.last_seq < seq);
        let Some(s) = inner
            .sealed
            .get(pos)
            .filter(|s| s.first_seq <= seq)
            .cloned()
        else {
            return Ok(None);
        };
        drop(inner);
        let table = self.table(pos, &s)?;
        let i = table.partition_point(|f| f.last_seq < seq);
        Ok(table.get(i).map(|f| (pos, s.path.clone(), *f)))
    }

    /// The `j`th frame of the segment at position `pos`, if there is one.
    pub fn nth(&self, pos: usize, j: usize) -> Result<Option<Located>> {
        let inner = self.read_inner();
        if pos == inner.sealed.len() {
            let newest = inner.newest.clone();
            return Ok(newest.and_then(|p| inner.frames.get(j).map(|f| (pos, p, *f))));
        }
        let Some(s) = inner.sealed.get(pos).cloned() else {
            return Ok(None);
        };
        drop(inner);
        Ok(self
            .table(pos, &s)?
            .get(j)
            .map(|f| (pos, s.path.clone(), *f)))
    }

    /// The last logged frame.
    pub fn last(&self) -> Result<Option<Located>> {
        let inner = self.read_inner();
        if let (Some(p), Some(f)) = (&inner.newest, inner.frames.last()) {
            return Ok(Some((inner.sealed.len(), p.clone(), *f)));
        }
        let Some(pos) = inner.sealed.len().checked_sub(1) else {
            return Ok(None);
        };
        let s = inner.sealed[pos].clone();
        drop(inner);
        Ok(self
            .table(pos, &s)?
            .last()
            .map(|f| (pos, s.path.clone(), *f)))
    }

    /// Reads and checks the frame holding `seq`.
    pub fn frame_holding(&self, seq: u64) -> Result<Option<Frame>> {
        match self.locate(seq)? {
            None => Ok(None),
            Some((_, path, loc)) => read_frame(&path, &loc).map(Some),
        }
    }

    fn table(&self, pos: usize, s: &Sealed) -> Result<Arc<[FrameLoc]>> {
        if let Some(t) = self.cached(pos) {
            return Ok(t);
        }
        let t = match load_table(s) {
            Ok(t) => t,
            Err(e) => rebuild_table(s, &e)?,
        };
        self.remember(pos, t.clone());
        Ok(t)
    }

    fn cached(&self, pos: usize) -> Option<Arc<[FrameLoc]>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .iter()
            .find(|(p, _)| *p == pos)
            .map(|(_, t)| t.clone())
    }

    fn remember(&self, pos: usize, table: Arc<[FrameLoc]>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|(p, _)| *p != pos);
        if cache.len() == CACHED_TABLES {
            cache.remove(0);
        }
        cache.push((pos, table));
    }
}

/// Frames in log order from the one holding `from_seq`, read one at a time
/// (an export walks the whole log in bounded memory).
pub struct FrameIter {
    index: Arc<FrameIndex>,
    pos: usize,
    j: usize,
    done: bool,
}

impl FrameIter {
    /// Frames from the one holding `from_seq` (from the first if 0).
    pub fn from_seq(index: Arc<FrameIndex>, from_seq: u64) -> Result<Self> {
        let start = index.locate(from_seq.max(1))?;
        let (pos, j) = match &start {
            None => (usize::MAX, 0),
            Some((pos, _, loc)) => (*pos, index.position_in(*pos, loc)?),
        };
        Ok(FrameIter {
            index,
            pos,
            j,
            done: start.is_none(),
        })
    }
}

impl FrameIndex {
    /// Position of `loc` among its segment's frames.
    fn position_in(&self, pos: usize, loc: &FrameLoc) -> Result<usize> {
        let inner = self.read_inner();
        if pos == inner.sealed.len() {
            return Ok(inner
                .frames
                .partition_point(|f| f.first_seq < loc.first_seq));
        }
        let s = inner.sealed[pos].clone();
        drop(inner);
        let t = self.table(pos, &s)?;
        Ok(t.partition_point(|f| f.first_seq < loc.first_seq))
    }

    fn segments(&self) -> usize {
        let inner = self.read_inner();
        inner.sealed.len() + usize::from(inner.newest.is_some())
    }
}

impl Iterator for FrameIter {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Result<Frame>> {
        while !self.done {
            match self.index.nth(self.pos, self.j) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(Some((_, path, loc))) => {
                    self.j += 1;
                    return Some(read_frame(&path, &loc));
                }
                Ok(None) if self.pos + 1 < self.index.segments() => {
                    // The writer may have appended frame j and sealed the
                    // segment between the two looks: a sealed segment does
                    // not change, so one more look is the answer.
                    if let Ok(Some(_)) = self.index.nth(self.pos, self.j) {
                        continue;
                    }
                    self.pos += 1;
                    self.j = 0;
                }
                Ok(None) => self.done = true,
            }
        }
        None
    }
}
