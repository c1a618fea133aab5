//! The unsynced view of one file: what was written since its last fsync.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Writes and size changes of one file not yet fsynced, laid over the
/// backing file's content.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    /// Size the file has in the cached view.
    pub(crate) size: u64,
    /// Backing bytes at or past this offset are hidden (a truncation cut
    /// them off; what lies there now reads as zeros unless written).
    floor: u64,
    /// Writes in the order they came; later ones win where they overlap.
    extents: Vec<(u64, Vec<u8>)>,
}

impl Dirty {
    /// A clean view of a backing file of `len` bytes.
    pub(crate) fn over(len: u64) -> Dirty {
        Dirty {
            size: len,
            floor: len,
            extents: Vec::new(),
        }
    }

    /// Bytes held in memory only (what a power cut would drop).
    pub(crate) fn pending_bytes(&self) -> u64 {
        self.extents.iter().map(|(_, d)| d.len() as u64).sum()
    }

    /// Records a write; consecutive appends share one extent.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        match self.extents.last_mut() {
            Some((start, bytes)) if *start + bytes.len() as u64 == offset => {
                bytes.extend_from_slice(data)
            }
            _ => self.extents.push((offset, data.to_vec())),
        }
        self.size = self.size.max(end);
    }

    /// Records a size change (truncate or extension with zeros).
    pub(crate) fn set_size(&mut self, size: u64) {
        if size < self.size {
            self.floor = self.floor.min(size);
            self.extents.retain(|(start, _)| *start < size);
            for (start, bytes) in &mut self.extents {
                let keep = (size - *start).min(bytes.len() as u64);
                bytes.truncate(keep as usize);
            }
        }
        self.size = size;
    }

    /// Reads `len` bytes at `offset` of the cached view.
    pub(crate) fn read(&self, backing: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let from_backing = end.min(self.floor).saturating_sub(offset) as usize;
        read_up_to(backing, &mut buf[..from_backing], offset)?;
        for (start, bytes) in &self.extents {
            overlay(&mut buf, offset, *start, bytes);
        }
        Ok(buf)
    }

    /// Makes the cached view the backing file's content, then fsyncs it.
    pub(crate) fn flush_to(&self, backing: &File) -> io::Result<()> {
        if backing.metadata()?.len() > self.floor {
            backing.set_len(self.floor)?;
        }
        for (start, bytes) in &self.extents {
            backing.write_all_at(bytes, *start)?;
        }
        backing.set_len(self.size)?;
        backing.sync_all()
    }
}

/// Fills as much of `buf` as the file holds at `offset`; the rest stays zero.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(())
}

/// Copies the part of the extent at `start` that falls in `buf` (which
/// holds the bytes from `offset`).
fn overlay(buf: &mut [u8], offset: u64, start: u64, bytes: &[u8]) {
    let end = offset + buf.len() as u64;
    let lo = offset.max(start);
    let hi = end.min(start + bytes.len() as u64);
    if lo < hi {
        let dst = (lo - offset) as usize..(hi - offset) as usize;
        let src = (lo - start) as usize..(hi - start) as usize;
        buf[dst].copy_from_slice(&bytes[src]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_truncate_and_flush_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut d = Dirty::over(10);
        d.write(8, b"abcd");
        d.set_size(4);
        d.set_size(6);
        d.write(5, b"Z");
        assert_eq!(d.read(&file, 0, 100).unwrap(), b"0123\0Z");
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        d.flush_to(&file).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"0123\0Z");
    }
}
