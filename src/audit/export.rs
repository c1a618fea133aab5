//! Writing a brand's export from storage, streaming: memory stays bounded by
//! one record plus the list of signer keys.
use std::io::{self, Write};

use prost::Message;

use super::file::{write_item, EXPORT_FORMAT, EXPORT_MAGIC};
use crate::ledger::now_ms;
use crate::pb::{self, export_item::Item, request::Op, Record, RecordKind, Request};
use crate::storage::{LogStore, StorageError};

/// Why an export could not be written. Each cause speaks for itself, so
/// the variants add no words of their own.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The brand has no records, so nothing is covered by a checkpoint.
    #[error("brand {0} has no checkpoint (no records)")]
    NoCheckpoint(u32),
    /// Reading records or checkpoints from storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored checkpoint does not decode.
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
    /// Writing the export failed.
    #[error(transparent)]
    Write(#[from] io::Error),
    /// An incremental export was asked to start past the newest checkpoint.
    #[error("brand {brand} has {tree_size} records under its newest checkpoint, fewer than the {after} asked to skip")]
    AfterTheEnd {
        /// The brand.
        brand: u32,
        /// The records to skip.
        after: u64,
        /// The newest checkpoint's tree size.
        tree_size: u64,
    },
}

/// What an export contained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Records written.
    pub records: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

/// Writes the export of `brand` up to its newest checkpoint to `out`.
/// `progress(records_done, total)` is called as it goes.
pub fn write_export(
    store: &dyn LogStore,
    brand: u32,
    server_public_key: &[u8; 32],
    out: &mut impl Write,
    progress: impl FnMut(u64, u64),
) -> Result<ExportSummary, ExportError> {
    write_export_after(store, brand, 0, server_public_key, out, progress)
}

/// Like [`write_export`], but only the records after tree size `after` and
/// the checkpoints over them (`ExportLedger.after_size`, for incremental
/// backups). The header gives the full tree size; the trailer counts and
/// lists only what was written, so with `after > 0` the output is one part
/// of an export, not an export that verifies alone.
pub fn write_export_after(
    store: &dyn LogStore,
    brand: u32,
    after: u64,
    server_public_key: &[u8; 32],
    out: &mut impl Write,
    mut progress: impl FnMut(u64, u64),
) -> Result<ExportSummary, ExportError> {
    // Everything up to the newest checkpoint is durable and immutable, so
    // the export is a consistent snapshot even while the daemon writes on.
    let last = store
        .last_checkpoint(brand)?
        .ok_or(ExportError::NoCheckpoint(brand))?;
    let tree_size = pb::Checkpoint::decode(last.as_slice())?.tree_size;
    if after > tree_size {
        return Err(ExportError::AfterTheEnd {
            brand,
            after,
            tree_size,
        });
    }
    // The auditor's trust anchor is the chain's first server key: after a
    // rotation the daemon's own key is a later one, endorsed in the chain.
    // An incremental part (a backup's) never reads the records it skips,
    // so it names the key it was given.
    let first_key = match after {
        0 => first_server_key(store, brand)?.unwrap_or(*server_public_key),
        _ => *server_public_key,
    };
    write_header(out, brand, &first_key, tree_size)?;
    let mut keys = vec![pb::SignerKey {
        signer: pb::Signer::Server as i32,
        public_key: first_key.to_vec(),
        ..Default::default()
    }];
    let mut checkpoints = store.checkpoints_after(brand, after);
    let mut summary = ExportSummary {
        records: 0,
        checkpoints: 0,
    };
    let mut pending = next_checkpoint(&mut checkpoints)?;
    // The checkpoints over the skipped records are the reader's already.
    while pending.as_ref().is_some_and(|c| c.tree_size <= after) {
        pending = next_checkpoint(&mut checkpoints)?;
    }
    for item in store.scan(brand, after + 1) {
        let (seq, bytes) = item?;
        if seq > tree_size {
            break;
        }
        collect_key(&bytes, &mut keys);
        write_item(out, Item::Record(bytes))?;
        summary.records += 1;
        while let Some(c) = pending.take() {
            if c.tree_size == seq {
                write_item(out, Item::Checkpoint(c))?;
                summary.checkpoints += 1;
                pending = next_checkpoint(&mut checkpoints)?;
            } else {
                pending = Some(c);
                break;
            }
        }
        if seq % 4096 == 0 {
            progress(seq - after, tree_size - after);
        }
    }
    progress(summary.records, tree_size - after);
    write_item(
        out,
        Item::Trailer(pb::ExportTrailer {
            records: summary.records,
            checkpoints: summary.checkpoints,
            keys,
        }),
    )?;
    out.flush()?;
    Ok(summary)
}

/// The magic bytes and the header.
fn write_header(
    out: &mut impl Write,
    brand: u32,
    server_public_key: &[u8; 32],
    tree_size: u64,
) -> io::Result<()> {
    out.write_all(EXPORT_MAGIC)?;
    write_item(
        out,
        Item::Header(pb::ExportHeader {
            format: EXPORT_FORMAT.into(),
            brand_id: brand,
            server_public_key: server_public_key.to_vec(),
            exported_at_ms: now_ms(),
            tree_size,
        }),
    )
}

/// The key that signed the brand's first record, if it has one.
fn first_server_key(store: &dyn LogStore, brand: u32) -> Result<Option<[u8; 32]>, ExportError> {
    let Some(first) = store.scan(brand, 1).next() else {
        return Ok(None);
    };
    let (_, bytes) = first?;
    let rec = Record::decode(bytes.as_slice())?;
    Ok(<[u8; 32]>::try_from(rec.signer_public_key.as_slice()).ok())
}

/// The next stored checkpoint, decoded.
fn next_checkpoint(
    checkpoints: &mut dyn Iterator<Item = crate::storage::Result<Vec<u8>>>,
) -> Result<Option<pb::Checkpoint>, ExportError> {
    match checkpoints.next() {
        None => Ok(None),
        Some(bytes) => {
            let bytes: Vec<u8> = bytes?;
            Ok(Some(pb::Checkpoint::decode(bytes.as_slice())?))
        }
    }
}

/// Adds the key a record enrols (the owner's at brand creation, a
/// terminal's at enrolment, the new key of a rotation) to `keys`.
fn collect_key(bytes: &[u8], keys: &mut Vec<pb::SignerKey>) {
    let Ok(rec) = Record::decode(bytes) else {
        return;
    };
    let Ok(req) = Request::decode(rec.request.as_slice()) else {
        return;
    };
    match (rec.kind(), req.op) {
        (RecordKind::BrandCreated, Some(Op::CreateBrand(c))) => keys.push(pb::SignerKey {
            signer: pb::Signer::Owner as i32,
            public_key: c.owner_public_key,
            ..Default::default()
        }),
        (RecordKind::TerminalEnrolled, Some(Op::EnrollTerminal(e))) => keys.push(pb::SignerKey {
            signer: pb::Signer::Terminal as i32,
            terminal_id: rec.new_id,
            store_id: e.store_id,
            public_key: e.public_key,
        }),
        (RecordKind::OwnerKeyRotated, _) => keys.push(pb::SignerKey {
            signer: pb::Signer::Owner as i32,
            public_key: rec.new_public_key,
            ..Default::default()
        }),
        (RecordKind::ServerKeyRotated, _) => keys.push(pb::SignerKey {
            signer: pb::Signer::Server as i32,
            public_key: rec.new_public_key,
            ..Default::default()
        }),
        (RecordKind::TerminalRekeyed, _) => keys.push(pb::SignerKey {
            signer: pb::Signer::Terminal as i32,
            terminal_id: rec.new_id,
            store_id: rec.store_id,
            public_key: rec.new_public_key,
        }),
        _ => {}
    }
}
