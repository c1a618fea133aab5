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

/// Why an export file cannot be read further.
#[derive(Debug, thiserror::Error)]
pub enum ExportFileError {
    /// The first 8 bytes could not be read.
    #[error("not an export file")]
    NoMagic(#[source] io::Error),
    /// The first 8 bytes are not [`EXPORT_MAGIC`].
    #[error("not a cardd export file (bad magic bytes)")]
    BadMagic,
    /// Reading failed.
    #[error("reading export")]
    Read(#[source] io::Error),
    /// The file ends inside an item.
    #[error("export file is truncated")]
    Truncated,
    /// An item's length prefix is over [`MAX_EXPORT_ITEM_BYTES`].
    #[error("export item of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// An item is not an `ExportItem`.
    #[error("export item does not decode")]
    Decode(#[source] prost::DecodeError),
    /// An item holds nothing.
    #[error("empty export item")]
    Empty,
    /// An item holds more than one of header, record, checkpoint and
    /// trailer (protobuf would keep the last and drop the others unread),
    /// or a group-typed field (proto3 writes none).
    #[error("an export item must hold exactly one of header, record, checkpoint, trailer")]
    NotOneMember,
}

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
    pub fn new(mut inner: R) -> Result<Self, ExportFileError> {
        let mut magic = [0u8; 8];
        inner
            .read_exact(&mut magic)
            .map_err(ExportFileError::NoMagic)?;
        if &magic != EXPORT_MAGIC {
            return Err(ExportFileError::BadMagic);
        }
        Ok(ExportReader {
            inner,
            buf: Vec::new(),
            offset: 8,
        })
    }

    /// The next item, None at a clean end of file.
    pub fn next_item(&mut self) -> Result<Option<Item>, ExportFileError> {
        let mut len = [0u8; 4];
        match self.inner.read_exact(&mut len[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(ExportFileError::Read(e)),
        }
        self.inner
            .read_exact(&mut len[1..])
            .map_err(|_| ExportFileError::Truncated)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_EXPORT_ITEM_BYTES {
            return Err(ExportFileError::TooLarge(len));
        }
        // Grow the buffer as bytes arrive: a length prefix alone (a few
        // bytes claiming 64 MiB) must not make us allocate 64 MiB.
        self.buf.clear();
        let read = (&mut self.inner)
            .take(len as u64)
            .read_to_end(&mut self.buf)
            .map_err(ExportFileError::Read)?;
        if read != len {
            return Err(ExportFileError::Truncated);
        }
        self.offset += 4 + len as u64;
        let item = ExportItem::decode(self.buf.as_slice()).map_err(ExportFileError::Decode)?;
        let item = item.item.ok_or(ExportFileError::Empty)?;
        if !one_member(&self.buf) {
            return Err(ExportFileError::NotOneMember);
        }
        Ok(Some(item))
    }
}

/// Whether the encoded `ExportItem` holds exactly one member of its oneof
/// (fields 1 to 4) and no group-typed field: what was read is all there is
/// to verify. Other unknown fields are skipped, as the Python verifier does.
fn one_member(mut body: &[u8]) -> bool {
    use prost::encoding::{decode_key, skip_field, DecodeContext, WireType};
    let mut members = 0;
    while !body.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut body) else {
            return false;
        };
        if matches!(wire_type, WireType::StartGroup | WireType::EndGroup) {
            return false;
        }
        members += u32::from((1..=4).contains(&tag));
        if skip_field(wire_type, tag, &mut body, DecodeContext::default()).is_err() {
            return false;
        }
    }
    members == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export of one item whose body is `body`.
    fn export_of(body: &[u8]) -> Vec<u8> {
        let mut file = EXPORT_MAGIC.to_vec();
        file.extend_from_slice(&(body.len() as u32).to_be_bytes());
        file.extend_from_slice(body);
        file
    }

    /// Field 2 (`record`) holding `bytes`.
    fn record_field(bytes: &[u8]) -> Vec<u8> {
        [&[0x12, bytes.len() as u8][..], bytes].concat()
    }

    fn read_one(body: &[u8]) -> Result<Option<Item>, ExportFileError> {
        ExportReader::new(export_of(body).as_slice())?.next_item()
    }

    #[test]
    fn an_item_must_hold_exactly_one_member() {
        let one = record_field(b"first");
        assert!(matches!(read_one(&one), Ok(Some(Item::Record(r))) if r == b"first"));
        // Unknown non-group fields are skipped (field 9, a varint).
        let with_unknown = [one.as_slice(), &[0x48, 0x01]].concat();
        assert!(matches!(read_one(&with_unknown), Ok(Some(Item::Record(_)))));
        // Two records in one item: protobuf would keep the second only.
        let two = [one.as_slice(), &record_field(b"second")].concat();
        assert!(matches!(read_one(&two), Err(ExportFileError::NotOneMember)));
        // A group-typed unknown field (field 9: start, end).
        let group = [one.as_slice(), &[0x4b, 0x4c]].concat();
        assert!(matches!(
            read_one(&group),
            Err(ExportFileError::NotOneMember)
        ));
        assert!(matches!(read_one(&[]), Err(ExportFileError::Empty)));
    }
}
