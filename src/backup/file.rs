//! Joining an existing backup and a new part (an export after a tree
//! size) into one export file: one header with the new tree size, the old
//! items, the new items, one trailer with both counts and every key.
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use super::{create_private, BackupError};
use crate::audit::file::write_item;
use crate::audit::{ExportReader, EXPORT_FORMAT, EXPORT_MAGIC};
use crate::pb::{self, export_item::Item};

/// What the joined file holds.
#[derive(Debug)]
pub struct Joined {
    /// Records in the joined file.
    pub tree_size: u64,
    /// Checkpoints in the joined file.
    pub checkpoints: u64,
}

/// The items between a header and a trailer, copied to `out`.
struct Copied {
    records: u64,
    checkpoints: u64,
    last_checkpoint: Option<pb::Checkpoint>,
    trailer: pb::ExportTrailer,
}

/// What a new part holds, read before anything is joined.
#[derive(Debug)]
pub struct Part {
    /// The server key its header names (a whole chain's: its first).
    pub anchor: [u8; 32],
    /// Its records.
    pub records: u64,
    /// Its newest checkpoint (None when it holds no record).
    pub last_checkpoint: Option<pb::Checkpoint>,
}

/// Reads the part through, checking its header names `brand` and, when
/// given, `server_key`.
pub fn scan_part(
    part: &Path,
    brand: u32,
    server_key: Option<&[u8; 32]>,
) -> Result<Part, BackupError> {
    let mut reader = open(part)?;
    let header = part_header(&mut reader, part, brand)?;
    let anchor = super::anchor_of(&header)
        .ok_or_else(|| BackupError::BadPart("its header names no server key".into()))?;
    if server_key.is_some_and(|k| *k != anchor) {
        return Err(BackupError::BadPart("it names another server key".into()));
    }
    let mut sink = std::io::sink();
    let copied = copy_items(&mut reader, part, &mut sink, false)?;
    Ok(Part {
        anchor,
        records: copied.records,
        last_checkpoint: copied.last_checkpoint,
    })
}

/// The part's header, which must name `brand`.
fn part_header(
    reader: &mut ExportReader<BufReader<File>>,
    part: &Path,
    brand: u32,
) -> Result<pb::ExportHeader, BackupError> {
    let header = match next(reader, part)? {
        Some(Item::Header(h)) => h,
        _ => {
            return Err(BackupError::BadPart(
                "it does not start with a header".into(),
            ))
        }
    };
    if header.brand_id != brand {
        return Err(BackupError::BadPart(format!(
            "it is brand {}, not {brand}",
            header.brand_id
        )));
    }
    Ok(header)
}

/// Writes `old` (a whole backup, if any) followed by `part` (the export
/// after `old`'s tree size) to `out` as one export, fsynced, its header
/// naming `anchor` (the chain's first server key). `out` is a temporary
/// file: the caller verifies it before it replaces anything.
pub fn join(
    old: Option<&Path>,
    part: &Path,
    out: &Path,
    brand: u32,
    anchor: &[u8; 32],
) -> Result<Joined, BackupError> {
    let mut part_reader = open(part)?;
    let mut header = part_header(&mut part_reader, part, brand)?;
    header.server_public_key = anchor.to_vec();
    let file = create_private(out)?;
    let mut w = BufWriter::new(file);
    let write_err = BackupError::io(format!("writing {}", out.display()));
    write_start(&mut w, &header).map_err(write_err)?;
    let old_items = match old {
        Some(old) => Some(copy_items(&mut open(old)?, old, &mut w, true)?),
        None => None,
    };
    let new_items = copy_items(&mut part_reader, part, &mut w, false)?;
    let old_records = old_items.as_ref().map_or(0, |c| c.records);
    let tree_size = old_records + new_items.records;
    if tree_size != header.tree_size {
        return Err(BackupError::BadPart(format!(
            "the backup holds {old_records} records and the part {}, but the source's tree has {}",
            new_items.records, header.tree_size
        )));
    }
    let checkpoints = old_items.as_ref().map_or(0, |c| c.checkpoints) + new_items.checkpoints;
    let mut keys = old_items.map(|c| c.trailer.keys).unwrap_or_default();
    for key in new_items.trailer.keys {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let trailer = pb::ExportTrailer {
        records: tree_size,
        checkpoints,
        keys,
    };
    finish(w, trailer).map_err(BackupError::io(format!("writing {}", out.display())))?;
    Ok(Joined {
        tree_size,
        checkpoints,
    })
}

fn open(path: &Path) -> Result<ExportReader<BufReader<File>>, BackupError> {
    let f = File::open(path).map_err(BackupError::io(format!("opening {}", path.display())))?;
    ExportReader::new(BufReader::with_capacity(1 << 20, f)).map_err(|source| {
        BackupError::Unreadable {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn next(
    reader: &mut ExportReader<BufReader<File>>,
    path: &Path,
) -> Result<Option<Item>, BackupError> {
    reader
        .next_item()
        .map_err(|source| BackupError::Unreadable {
            path: path.to_path_buf(),
            source,
        })
}

fn write_start(w: &mut impl Write, header: &pb::ExportHeader) -> std::io::Result<()> {
    w.write_all(EXPORT_MAGIC)?;
    write_item(
        w,
        Item::Header(pb::ExportHeader {
            format: EXPORT_FORMAT.into(),
            ..header.clone()
        }),
    )
}

/// Copies the records and checkpoints of `reader` up to its trailer (the
/// header skipped when `skip_header`; the part's was read already).
fn copy_items(
    reader: &mut ExportReader<BufReader<File>>,
    path: &Path,
    w: &mut impl Write,
    skip_header: bool,
) -> Result<Copied, BackupError> {
    let mut copied = Copied {
        records: 0,
        checkpoints: 0,
        last_checkpoint: None,
        trailer: pb::ExportTrailer::default(),
    };
    if skip_header && !matches!(next(reader, path)?, Some(Item::Header(_))) {
        return Err(BackupError::BadPart(format!(
            "{} does not start with a header",
            path.display()
        )));
    }
    let write_err = || BackupError::io(format!("copying {}", path.display()));
    loop {
        match next(reader, path)? {
            Some(Item::Record(bytes)) => {
                copied.records += 1;
                write_item(w, Item::Record(bytes)).map_err(write_err())?;
            }
            Some(Item::Checkpoint(c)) => {
                copied.checkpoints += 1;
                write_item(w, Item::Checkpoint(c.clone())).map_err(write_err())?;
                copied.last_checkpoint = Some(c);
            }
            Some(Item::Trailer(t)) => {
                copied.trailer = t;
                return Ok(copied);
            }
            Some(Item::Header(_)) | None => {
                return Err(BackupError::BadPart(format!(
                    "{} ends without a trailer or holds a second header",
                    path.display()
                )))
            }
        }
    }
}

/// Writes the trailer and makes the file durable.
fn finish(mut w: BufWriter<File>, trailer: pb::ExportTrailer) -> std::io::Result<()> {
    write_item(&mut w, Item::Trailer(trailer))?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}
