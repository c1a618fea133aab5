//! Reading and writing the export file's framing.
use std::io::{self, Read, Write};

use prost::Message;

use crate::pb::{export_item::Item, ExportItem};

/// The file's first 8 bytes.
pub const EXPORT_MAGIC: &[u8; 8] = b"CARDDEX1";
/// The header's `format` string.
pub const EXPORT_FORMAT: &str = "cardd.v1 ledger export";
/// Largest item accepted when reading (a record is bounded by the frame
/// limit; the trailer by the number of terminals).
pub const MAX_EXPORT_ITEM_BYTES: usize = 64 * 1024 * 1024;

/// Writes one item as a length-prefixed frame.
pub fn write_item(out: &mut impl Write, item: Item) -> io::Result<()> {
    let bytes = ExportItem { item: Some(item) }.encode_to_vec();
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("export item too large"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(&bytes)
}

/// Streams items from an export file.
pub struct ExportReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes consumed so far (for progress).
    pub offset: u64,
}

impl<R: Read> ExportReader<R> {
    /// Checks the magic bytes.
    pub fn new(mut inner: R) -> Result<Self, String> {
        let mut magic = [0u8; 8];
        inner
            .read_exact(&mut magic)
            .map_err(|e| format!("not an export file: {e}"))?;
        if &magic != EXPORT_MAGIC {
            return Err("not a cardd export file (bad magic bytes)".into());
        }
        Ok(ExportReader {
            inner,
            buf: Vec::new(),
            offset: 8,
        })
    }

    /// The next item, None at a clean end of file.
    pub fn next_item(&mut self) -> Result<Option<Item>, String> {
        let mut len = [0u8; 4];
        match self.inner.read_exact(&mut len[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(format!("reading export: {e}")),
        }
        self.inner
            .read_exact(&mut len[1..])
            .map_err(|_| "export file is truncated".to_string())?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_EXPORT_ITEM_BYTES {
            return Err(format!("export item of {len} bytes exceeds the limit"));
        }
        // Grow the buffer as bytes arrive: a length prefix alone (a few
        // bytes claiming 64 MiB) must not make us allocate 64 MiB.
        self.buf.clear();
        let read = (&mut self.inner)
            .take(len as u64)
            .read_to_end(&mut self.buf)
            .map_err(|e| format!("reading export: {e}"))?;
        if read != len {
            return Err("export file is truncated".to_string());
        }
        self.offset += 4 + len as u64;
        let item = ExportItem::decode(self.buf.as_slice())
            .map_err(|e| format!("export item does not decode: {e}"))?;
        item.item
            .map(Some)
            .ok_or_else(|| "empty export item".to_string())
    }
}
