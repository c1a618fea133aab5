//! A brand's log: append-only segment files of checksummed frames, one
//! frame per commit, written and `fdatasync`ed before the commit returns.
//! This is the ledger's truth. Where each frame lies is kept by
//! `frames::FrameIndex` (sealed segments' frame tables), so that opening a
//! log reads its newest segment only.
//!
//! Layout: `DATA/log/brand-NNNNN/<first seq, 20 digits>.seg`. A frame:
//!
//! ```text
//! "CDLF" | payload length u32 | first seq u64 | last seq u64 | CRC-32 u32 | payload
//! ```
//!
//! (integers little-endian; the CRC covers the length, both seqs and the
//! payload). A new segment starts when the current one would pass
//! `LOG_SEGMENT_BYTES`; its file and its directory entry are fsynced
//! before its first frame is written.
//!
//! Recovery rule: one commit is in flight at a time, so only the newest
//! segment's last frame can be unsynced. A last frame that is incomplete,
//! fails its CRC while reaching the end of the file, or is followed only by
//! zeros (a size the file system extended without the data) is a torn
//! tail: never acknowledged, it is cut off. Anything else that does not
//! parse, and any damage in an older segment, is corruption: an error.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frames::{table_matches, write_table, FrameIndex, Sealed};
use super::fsutil::{create_dir_all_durable, sync_dir};
use super::{Result, StorageError};

const MAGIC: [u8; 4] = *b"CDLF";
/// Magic, payload length, first seq, last seq, CRC.
pub const FRAME_HEADER: usize = 4 + 4 + 8 + 8 + 4;

/// One commit as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Seq of the commit's first record.
    pub first_seq: u64,
    /// Seq of its last record.
    pub last_seq: u64,
    /// The encoded commit (see `disk::encode_payload`).
    pub payload: Vec<u8>,
}

/// Where a frame lies in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLoc {
    /// Seq of the frame's first record.
    pub first_seq: u64,
    /// Seq of its last record.
    pub last_seq: u64,
    /// Offset of its header in the segment.
    pub offset: u64,
    /// Its payload's length.
    pub len: u32,
}

impl FrameLoc {
    /// A frame of records `first_seq..=last_seq` at `offset`.
    pub fn new(first_seq: u64, last_seq: u64, offset: u64, len: u32) -> Self {
        FrameLoc {
            first_seq,
            last_seq,
            offset,
            len,
        }
    }
}

/// What opening a log found.
#[derive(Debug, Default)]
pub struct Opened {
    /// The newest segment's frames, oldest first.
    pub frames: Vec<FrameLoc>,
    /// Bytes of a torn last frame, to be cut off by
    /// [`BrandLog::cut_torn_tail`].
    pub torn_bytes: u64,
    /// Sealed segments whose frame table had to be rebuilt.
    pub tables_rebuilt: usize,
}

/// A torn tail found at open and not yet cut: (segment, offset, bytes).
type Torn = (PathBuf, u64, u64);

/// One brand's log, open for appending.
pub struct BrandLog {
    dir: PathBuf,
    /// Where every frame lies, shared with readers.
    index: Arc<FrameIndex>,
    /// The newest segment's path.
    newest: Option<PathBuf>,
    /// The newest segment, open for appending.
    file: Option<File>,
    file_len: u64,
    last_seq: u64,
    /// Set when a write or fsync failed: the file's tail is unknown, so
    /// nothing more is appended until a restart recovers it.
    failed: bool,
    /// Off only while a staged directory is built in bulk (restore,
    /// import): then frames are not synced one by one, and
    /// [`BrandLog::sync_now`] makes them durable before the directory is
    /// put in place.
    sync_each: bool,
    /// A torn last frame found at open: cut only once start-up has checked
    /// the log against its high-water mark, so a start that refuses to
    /// serve leaves the evidence as it found it.
    torn: Option<Torn>,
    max_segment_bytes: u64,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError {
    let what = what.into();
    move |source| StorageError::Io { what, source }
}

fn corrupt(path: &Path, offset: u64, why: &str) -> StorageError {
    StorageError::Corrupt(format!("{} at byte {offset}: {why}", path.display()))
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

fn crc(header_fields: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header_fields);
    h.update(payload);
    h.finalize()
}

fn encode_frame(first_seq: u64, last_seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a commit is bounded far below 4 GiB");
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&last_seq.to_le_bytes());
    let sum = crc(&out[4..24], payload);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A frame header: (payload length, first seq, last seq, crc), if the magic
/// is right.
fn parse_header(h: &[u8]) -> Option<(u32, u64, u64, u32)> {
    if h.len() < FRAME_HEADER || h[..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    Some((u32_at(4), u64_at(8), u64_at(16), u32_at(24)))
}

/// The seqs a frame must cover: it starts right after `prev_last` and
/// holds at least one record.
fn seqs_follow(prev_last: u64, first: u64, last: u64) -> bool {
    prev_last.checked_add(1) == Some(first) && last >= first
}

impl BrandLog {
    /// Opens the log in `dir` (which may not exist yet: a brand with no
    /// record). A torn last frame is left in place until
    /// [`cut_torn_tail`](Self::cut_torn_tail); nothing is appended before.
    pub fn open(dir: &Path, max_segment_bytes: u64) -> Result<(Self, Opened)> {
        let segments = list_segments(dir)?;
        let mut opened = Opened::default();
        let mut sealed = Vec::new();
        let (mut last_seq, mut file_len, mut torn) = (0u64, 0, None);
        for (i, (first, path)) in segments.iter().enumerate() {
            if last_seq.checked_add(1) != Some(*first) {
                let why = format!(
                    "record {} is missing (this segment starts at {first})",
                    last_seq.saturating_add(1)
                );
                return Err(corrupt(path, 0, &why));
            }
            match segments.get(i + 1) {
                Some((next, _)) => {
                    let last = next.saturating_sub(1);
                    if open_sealed(path, last_seq, last)? {
                        opened.tables_rebuilt += 1;
                    }
                    sealed.push(Sealed {
                        first_seq: *first,
                        last_seq: last,
                        path: path.clone(),
                    });
                    last_seq = last;
                }
                None => {
                    (last_seq, file_len) = check_newest(path, last_seq, &mut opened)?;
                    if opened.torn_bytes > 0 {
                        torn = Some((path.clone(), file_len, opened.torn_bytes));
                    }
                }
            }
        }
        let newest = segments.last().map(|(_, p)| p.clone());
        let file = match &newest {
            None => None,
            Some(path) => Some(open_newest(dir, path)?),
        };
        let index = FrameIndex::new(sealed, newest.clone(), opened.frames.clone());
        let log = BrandLog {
            dir: dir.to_path_buf(),
            index: Arc::new(index),
            newest,
            file,
            file_len,
            last_seq,
            failed: false,
            sync_each: true,
            torn,
            max_segment_bytes,
        };
        Ok((log, opened))
    }

    /// Where every frame of this log lies (shared with readers).
    pub fn index(&self) -> Arc<FrameIndex> {
        self.index.clone()
    }

    /// Cuts off the torn last frame found at open (truncate, fsync), if any.
    pub fn cut_torn_tail(&mut self) -> Result<()> {
        if let Some((path, at, bytes)) = self.torn.take() {
            cut_tail(&path, at)?;
            tracing::warn!(
                log = %path.display(),
                offset = at,
                bytes,
                after_record = self.last_seq,
                "cut off a torn last frame (a commit never acknowledged)"
            );
        }
        Ok(())
    }

    /// Seq of the last logged record (0 for none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends one commit's frame and fdatasyncs it: on return the commit
    /// is durable. After a failure nothing more is appended.
    pub fn append(&mut self, first_seq: u64, last_seq: u64, payload: &[u8]) -> Result<()> {
        assert!(self.torn.is_none(), "append before the torn tail was cut");
        if self.failed {
            return Err(StorageError::Corrupt(format!(
                "{}: an earlier write failed; restart to recover the log",
                self.dir.display()
            )));
        }
        assert!(
            seqs_follow(self.last_seq, first_seq, last_seq),
            "log append of {first_seq}..={last_seq} after {}",
            self.last_seq
        );
        self.append_unchecked(first_seq, last_seq, payload)
    }

    /// `append` without the check that the commit follows the log (for
    /// `rewrite`, which makes damaged logs on purpose).
    pub(super) fn append_unchecked(
        &mut self,
        first_seq: u64,
        last_seq: u64,
        payload: &[u8],
    ) -> Result<()> {
        let frame = encode_frame(first_seq, last_seq, payload);
        let full = self.file_len > 0 && self.file_len + frame.len() as u64 > self.max_segment_bytes;
        let written = (|| {
            if full {
                self.seal()?;
            }
            if self.file.is_none() || full {
                self.start_segment(first_seq)?;
            }
            let file = self.file.as_mut().expect("a segment is open");
            file.write_all(&frame)
                .map_err(io_err(format!("appending to {}", self.dir.display())))?;
            match self.sync_each {
                true => self.sync_now(),
                false => Ok(()),
            }
        })();
        if written.is_err() {
            self.failed = true;
        }
        written?;
        let len = (frame.len() - FRAME_HEADER) as u32;
        let offset = self.file_len;
        self.index
            .push(FrameLoc::new(first_seq, last_seq, offset, len));
        self.file_len += frame.len() as u64;
        self.last_seq = last_seq;
        Ok(())
    }

    /// Writes the full newest segment's frame table before a new segment
    /// starts. A failure is only logged: the table is derived, and a
    /// missing one is rebuilt from its segment when needed.
    fn seal(&self) -> Result<()> {
        let Some(path) = &self.newest else {
            return Ok(());
        };
        if !self.sync_each {
            // A segment written in bulk becomes durable as it is sealed.
            self.sync_now()?;
        }
        if let Err(e) = write_table(path, self.file_len, &self.index.newest_frames()) {
            tracing::warn!(segment = %path.display(), error = %e, "frame table not written; it will be rebuilt");
        }
        Ok(())
    }

    /// Builds in bulk from now on: a frame is not synced before `append`
    /// returns, only a sealed segment and [`sync_now`](Self::sync_now).
    /// For a directory nothing serves until it is complete and synced.
    pub fn bulk(&mut self) {
        self.sync_each = false;
    }

    /// Makes everything appended to the newest segment durable.
    pub fn sync_now(&self) -> Result<()> {
        match &self.file {
            None => Ok(()),
            Some(file) => file
                .sync_data()
                .map_err(io_err(format!("fdatasync in {}", self.dir.display()))),
        }
    }

    /// Creates the segment whose first record is `first_seq`, durably:
    /// the directory (for a new brand), the empty file and its entry.
    fn start_segment(&mut self, first_seq: u64) -> Result<()> {
        create_dir_all_durable(&self.dir)
            .map_err(io_err(format!("creating {}", self.dir.display())))?;
        let path = self.dir.join(segment_name(first_seq));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        file.sync_all()
            .map_err(io_err(format!("fsync {}", path.display())))?;
        sync_dir(&self.dir).map_err(io_err(format!("fsync {}", self.dir.display())))?;
        self.index.seal_and_start(path.clone());
        self.newest = Some(path);
        self.file = Some(file);
        self.file_len = 0;
        Ok(())
    }
}

/// Reads one frame, checking that it is still where the index says and
/// still has its CRC.
pub fn read_frame(path: &Path, loc: &FrameLoc) -> Result<Frame> {
    let file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut bytes = vec![0; FRAME_HEADER + loc.len as usize];
    file.read_exact_at(&mut bytes, loc.offset)
        .map_err(io_err(format!("reading {}", path.display())))?;
    let (len, first, last, sum) =
        parse_header(&bytes).ok_or_else(|| corrupt(path, loc.offset, "frame header changed"))?;
    let payload = bytes.split_off(FRAME_HEADER);
    if len != loc.len || first != loc.first_seq || last != loc.last_seq {
        return Err(corrupt(path, loc.offset, "frame header changed"));
    }
    if crc(&bytes[4..24], &payload) != sum {
        return Err(corrupt(path, loc.offset, "frame checksum does not match"));
    }
    Ok(Frame {
        first_seq: first,
        last_seq: last,
        payload,
    })
}

/// Opens a sealed segment that should hold `after + 1..=last`: by its frame
/// table's header alone when the table matches the segment's size, else by
/// walking its frame headers (then its table is written). True when the
/// table had to be rebuilt.
fn open_sealed(path: &Path, after: u64, last: u64) -> Result<bool> {
    let size = fs::metadata(path)
        .map_err(io_err(format!("reading {}", path.display())))?
        .len();
    if table_matches(path, size, after + 1, last) {
        return Ok(false);
    }
    let mut frames = Vec::new();
    let (walked, size) = walk_sealed(path, after, &mut frames)?;
    if walked != last {
        let why = format!(
            "ends at record {walked}, the next segment starts at {}",
            last + 1
        );
        return Err(corrupt(path, size, &why));
    }
    // The table is derived: if it cannot be written now (a full disk), the
    // next read rebuilds it again.
    match write_table(path, size, &frames) {
        Ok(()) => {
            tracing::info!(segment = %path.display(), frames = frames.len(), "wrote a sealed segment's frame table")
        }
        Err(e) => {
            tracing::warn!(segment = %path.display(), error = %e, "frame table not written; it is rebuilt when needed")
        }
    }
    Ok(true)
}

/// Opens the newest segment for appending, after making what it holds
/// durable: a process killed between a frame's write and its fdatasync
/// leaves a whole frame in the page cache, which recovery will serve, so it
/// must reach the disk (with its directory entry) before anything else.
fn open_newest(dir: &Path, path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    file.sync_all()
        .map_err(io_err(format!("fsync {}", path.display())))?;
    sync_dir(dir).map_err(io_err(format!("fsync {}", dir.display())))?;
    Ok(file)
}

/// The segments in `dir`, oldest first; none if `dir` does not exist.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        let first: u64 = stem
            .parse()
            .ok()
            .filter(|_| stem.len() == 20)
            .ok_or_else(|| corrupt(&entry.path(), 0, "not a segment name"))?;
        segments.push((first, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// Walks the headers of a sealed segment (one a newer segment follows, so
/// it was fsynced whole): frames must follow each other and end exactly
/// at the end of the file. Payloads are checked when read.
pub(super) fn walk_sealed(
    path: &Path,
    mut last_seq: u64,
    frames: &mut Vec<FrameLoc>,
) -> Result<(u64, u64)> {
    let file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let size = file
        .metadata()
        .map_err(io_err(format!("reading {}", path.display())))?
        .len();
    let mut offset = 0;
    let mut header = [0u8; FRAME_HEADER];
    while offset < size {
        file.read_exact_at(&mut header, offset)
            .map_err(|_| corrupt(path, offset, "sealed segment ends inside a frame header"))?;
        let (len, first, last, _) =
            parse_header(&header).ok_or_else(|| corrupt(path, offset, "no frame here"))?;
        let end = offset + (FRAME_HEADER as u64) + u64::from(len);
        if first > last_seq.saturating_add(1) {
            let why = format!(
                "record {} is missing (the next logged is {first})",
                last_seq.saturating_add(1)
            );
            return Err(corrupt(path, offset, &why));
        }
        if end > size || !seqs_follow(last_seq, first, last) {
            return Err(corrupt(
                path,
                offset,
                "frame does not fit its segment or its chain",
            ));
        }
        frames.push(FrameLoc::new(first, last, offset, len));
        last_seq = last;
        offset = end;
    }
    Ok((last_seq, size))
}

/// Reads the newest segment whole, checking every frame's CRC, and finds a
/// torn last frame (see the module's recovery rule): (last seq, length
/// without it).
fn check_newest(path: &Path, mut last_seq: u64, opened: &mut Opened) -> Result<(u64, u64)> {
    let bytes = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    let mut offset = 0usize;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        match whole_frame(rest, last_seq) {
            Some((len, first, last)) => {
                opened
                    .frames
                    .push(FrameLoc::new(first, last, offset as u64, len));
                last_seq = last;
                offset += FRAME_HEADER + len as usize;
            }
            None if is_torn_tail(rest) => {
                opened.torn_bytes = rest.len() as u64;
                return Ok((last_seq, offset as u64));
            }
            None => return Err(damaged(path, offset as u64, rest, last_seq)),
        }
    }
    Ok((last_seq, bytes.len() as u64))
}

/// The error for a frame that is neither whole nor a torn tail: a gap in
/// the chain is named by the record that is missing.
fn damaged(path: &Path, offset: u64, rest: &[u8], last_seq: u64) -> StorageError {
    match parse_header(rest) {
        Some((_, first, _, _)) if first > last_seq.saturating_add(1) => corrupt(
            path,
            offset,
            &format!(
                "record {} is missing (the next logged is {first})",
                last_seq.saturating_add(1)
            ),
        ),
        _ => corrupt(path, offset, "damaged frame before the end of the log"),
    }
}

/// A complete frame with a good CRC that follows `prev_last`: (payload
/// length, first seq, last seq).
fn whole_frame(bytes: &[u8], prev_last: u64) -> Option<(u32, u64, u64)> {
    checked_frame(bytes).filter(|(_, first, last)| seqs_follow(prev_last, *first, *last))
}

/// A complete frame with a good CRC, wherever its seqs: (payload length,
/// first seq, last seq).
fn checked_frame(bytes: &[u8]) -> Option<(u32, u64, u64)> {
    let (len, first, last, sum) = parse_header(bytes)?;
    let end = FRAME_HEADER.checked_add(len as usize)?;
    let payload = bytes.get(FRAME_HEADER..end)?;
    (crc(&bytes[4..24], payload) == sum).then_some((len, first, last))
}

/// True when `rest` (from the first frame that does not check) can be the
/// unsynced remains of the last commit: no complete, checksummed frame
/// starts anywhere in it. A torn write of a large frame can leave any mix
/// of its pages, zeros and a size the file system extended without data,
/// but never a whole frame after it (one commit is in flight at a time).
fn is_torn_tail(rest: &[u8]) -> bool {
    if checked_frame(rest).is_some() {
        return false;
    }
    let mut at = 1;
    while let Some(i) = find_magic(&rest[at..]) {
        if checked_frame(&rest[at + i..]).is_some() {
            return false;
        }
        at += i + 1;
    }
    true
}

fn find_magic(bytes: &[u8]) -> Option<usize> {
    bytes.windows(MAGIC.len()).position(|w| w == MAGIC)
}

fn cut_tail(path: &Path, at: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    file.set_len(at)
        .map_err(io_err(format!("truncating {}", path.display())))?;
    file.sync_all()
        .map_err(io_err(format!("fsync {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::frames::FrameIter;

    fn payload(first: u64) -> Vec<u8> {
        format!("commit {first}").repeat(3).into_bytes()
    }

    /// A log of commits of `sizes` records, segments of `max` bytes.
    fn log(dir: &Path, sizes: &[u64], max: u64) -> BrandLog {
        let (mut log, _) = BrandLog::open(dir, max).unwrap();
        log.cut_torn_tail().unwrap();
        for &size in sizes {
            let first = log.last_seq() + 1;
            log.append(first, first + size - 1, &payload(first))
                .unwrap();
        }
        log
    }

    fn frames(dir: &Path, max: u64) -> (u64, Vec<Frame>, u64) {
        let (mut log, opened) = BrandLog::open(dir, max).unwrap();
        log.cut_torn_tail().unwrap();
        let frames = FrameIter::from_seq(log.index(), 1)
            .unwrap()
            .map(|f| f.unwrap())
            .collect();
        (log.last_seq(), frames, opened.torn_bytes)
    }

    fn newest_segment(dir: &Path) -> PathBuf {
        list_segments(dir).unwrap().pop().unwrap().1
    }

    #[test]
    fn commits_come_back_in_order_across_segments() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("brand-00001");
        log(&dir, &[1, 3, 2, 5, 1, 1], 100);
        assert!(list_segments(&dir).unwrap().len() > 2, "segments rolled");
        let (last, frames, torn) = frames(&dir, 100);
        assert_eq!((last, torn), (13, 0));
        let firsts: Vec<u64> = frames.iter().map(|f| f.first_seq).collect();
        assert_eq!(firsts, [1, 2, 5, 7, 12, 13]);
        assert!(frames.iter().all(|f| f.payload == payload(f.first_seq)));
        // Appending goes on after a reopen.
        let mut reopened = log(&dir, &[], 100);
        reopened.append(14, 14, b"x").unwrap();
        assert_eq!(self::frames(&dir, 100).0, 14);
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_at_every_length() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        log(&dir, &[2, 3], 1 << 20);
        let path = newest_segment(&dir);
        let whole = fs::read(&path).unwrap();
        let second = FRAME_HEADER + payload(1).len();
        for cut in second + 1..whole.len() {
            fs::write(&path, &whole[..cut]).unwrap();
            let (last, frames, torn) = frames(&dir, 1 << 20);
            assert_eq!(
                (last, frames.len(), torn),
                (2, 1, (cut - second) as u64),
                "cut at {cut}"
            );
            assert_eq!(fs::metadata(&path).unwrap().len(), second as u64);
        }
        // The file system extended the size but never wrote the data.
        let mut zeros = whole[..second].to_vec();
        zeros.resize(whole.len(), 0);
        fs::write(&path, &zeros).unwrap();
        assert_eq!(frames(&dir, 1 << 20).0, 2);
        // A last frame whose bytes are all there but wrong.
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert_eq!(frames(&dir, 1 << 20).0, 2);
    }

    #[test]
    fn a_torn_frame_of_many_pages_is_a_torn_tail_whatever_reached_the_disk() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let mut log = log(&dir, &[1], 1 << 20);
        let big = vec![7u8; 64 * 1024];
        log.append(2, 9, &big).unwrap();
        drop(log);
        let path = newest_segment(&dir);
        let whole = fs::read(&path).unwrap();
        let first_end = FRAME_HEADER + payload(1).len();
        // The header's page lost, later pages kept; or only the header's
        // low bytes: neither leaves a whole frame after the last good one.
        let mut lost_head = whole.clone();
        lost_head[first_end..first_end + 4096].fill(0);
        let mut split_header = whole.clone();
        split_header[first_end + 6..first_end + 4096].fill(0);
        for (what, bytes) in [("lost head", lost_head), ("split header", split_header)] {
            fs::write(&path, &bytes).unwrap();
            let (last, frames, torn) = frames(&dir, 1 << 20);
            assert_eq!((last, frames.len()), (1, 1), "{what}");
            assert_eq!(torn, (bytes.len() - first_end) as u64, "{what}");
        }
    }

    #[test]
    fn a_whole_last_frame_that_skips_records_is_an_error_naming_the_gap() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        log(&dir, &[2], 1 << 20);
        let path = newest_segment(&dir);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&encode_frame(5, 5, b"five"));
        fs::write(&path, &bytes).unwrap();
        let err = BrandLog::open(&dir, 1 << 20).err().expect("a gap opened");
        assert!(err.to_string().contains("record 3 is missing"), "{err}");
    }

    #[test]
    fn damage_before_the_last_frame_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        log(&dir, &[2, 3, 1], 1 << 20);
        let path = newest_segment(&dir);
        let mut bytes = fs::read(&path).unwrap();
        bytes[FRAME_HEADER + 1] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = BrandLog::open(&dir, 1 << 20)
            .err()
            .expect("opened a damaged log");
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        // Garbage (not zeros) after the last good frame is not a torn tail.
        let mut garbage = log(&root.path().join("c"), &[1], 1 << 20);
        garbage.append(2, 2, b"y").unwrap();
        let path = newest_segment(&root.path().join("c"));
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[7u8; 3]);
        bytes.extend_from_slice(&encode_frame(3, 3, b"z"));
        fs::write(&path, &bytes).unwrap();
        assert!(BrandLog::open(&root.path().join("c"), 1 << 20).is_err());
    }

    #[test]
    fn a_sealed_segment_cut_short_or_a_missing_segment_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        log(&dir, &[1, 1, 1, 1, 1, 1], 80);
        let segments = list_segments(&dir).unwrap();
        assert!(segments.len() >= 3);
        let first = &segments[0].1;
        let bytes = fs::read(first).unwrap();
        fs::write(first, &bytes[..bytes.len() - 1]).unwrap();
        assert!(BrandLog::open(&dir, 80).is_err(), "short sealed segment");
        fs::write(first, &bytes).unwrap();
        fs::remove_file(&segments[1].1).unwrap();
        assert!(BrandLog::open(&dir, 80).is_err(), "missing segment");
    }

    #[test]
    fn a_damaged_payload_in_a_sealed_segment_is_found_when_read() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        log(&dir, &[1, 1, 1], 60);
        let first = list_segments(&dir).unwrap()[0].1.clone();
        let mut bytes = fs::read(&first).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&first, &bytes).unwrap();
        let (log, _) = BrandLog::open(&dir, 60).unwrap();
        assert!(matches!(
            log.index().frame_holding(1),
            Err(StorageError::Corrupt(_))
        ));
    }

    fn tables(dir: &Path) -> Vec<PathBuf> {
        let mut t: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "idx"))
            .collect();
        t.sort();
        t
    }

    /// Every record's frame, found through the index.
    fn found(log: &BrandLog) -> Vec<u64> {
        (1..=log.last_seq())
            .map(|seq| log.index().frame_holding(seq).unwrap().unwrap().first_seq)
            .collect()
    }

    #[test]
    fn sealed_segments_open_by_their_tables_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let written = log(&dir, &[1, 3, 2, 5, 1, 1, 2, 1], 100);
        let expected = found(&written);
        drop(written);
        let segments = list_segments(&dir).unwrap().len();
        assert_eq!(
            tables(&dir).len(),
            segments - 1,
            "a table per sealed segment"
        );
        // A sealed segment whose frames are garbled but whose size and
        // table are intact: opening does not read it, a read finds it.
        let first = &list_segments(&dir).unwrap()[0].1;
        let mut bytes = fs::read(first).unwrap();
        bytes[0] ^= 0xff;
        fs::write(first, &bytes).unwrap();
        let (log, opened) = BrandLog::open(&dir, 100).unwrap();
        assert_eq!(opened.tables_rebuilt, 0);
        assert!(log.index().frame_holding(1).is_err());
        bytes[0] ^= 0xff;
        fs::write(first, &bytes).unwrap();
        assert_eq!(found(&log), expected);
    }

    #[test]
    fn a_lost_or_damaged_frame_table_is_rebuilt_from_its_segment() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let expected = found(&log(&dir, &[1, 3, 2, 5, 1, 1, 2, 1], 100));
        let tables = tables(&dir);
        // Lost (a crash while sealing): rebuilt at open.
        fs::remove_file(&tables[0]).unwrap();
        let (log, opened) = BrandLog::open(&dir, 100).unwrap();
        assert_eq!(opened.tables_rebuilt, 1);
        assert_eq!(found(&log), expected);
        assert!(tables[0].exists(), "written again");
        drop(log);
        // Damaged entries behind a good header: rebuilt when first read.
        let mut bytes = fs::read(&tables[1]).unwrap();
        let at = bytes.len() - 5;
        bytes[at] ^= 1;
        fs::write(&tables[1], &bytes).unwrap();
        let (log, opened) = BrandLog::open(&dir, 100).unwrap();
        assert_eq!(opened.tables_rebuilt, 0);
        assert_eq!(found(&log), expected);
        // A table that names another size: the segment is walked again.
        fs::write(&tables[2], b"CDLX").unwrap();
        let (log, opened) = BrandLog::open(&dir, 100).unwrap();
        assert_eq!(opened.tables_rebuilt, 1);
        assert_eq!(found(&log), expected);
    }

    #[test]
    fn reads_follow_appends_across_a_seal() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let mut log = log(&dir, &[1], 100);
        let index = log.index();
        let mut from_start = FrameIter::from_seq(index.clone(), 1).unwrap();
        assert_eq!(from_start.next().unwrap().unwrap().first_seq, 1);
        for first in 2..30 {
            log.append(first, first, &payload(first)).unwrap();
            assert_eq!(
                index.frame_holding(first).unwrap().unwrap().first_seq,
                first
            );
        }
        assert!(list_segments(&dir).unwrap().len() > 3);
        // An iterator made before the seals goes on across them.
        let rest: Vec<u64> = from_start.map(|f| f.unwrap().first_seq).collect();
        assert_eq!(rest, (2..30).collect::<Vec<_>>());
        assert_eq!(found(&log), (1..30).collect::<Vec<_>>());
    }
}
