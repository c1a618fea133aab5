//! The auditor's side: export a brand's ledger to one self-describing file,
//! verify and replay it offline trusting only the server's public key, and
//! check that a newer tree extends an older one.
//!
//! File format: docs/ledger-format.md.
pub mod activity;
pub mod export;
pub mod file;
pub mod prove;
mod signatures;
pub mod verify;

pub use export::{write_export, write_export_after, ExportError};
pub use file::{ExportFileError, ExportReader, EXPORT_FORMAT, EXPORT_MAGIC, MAX_EXPORT_ITEM_BYTES};
pub use prove::{consistency_from_store, ProveError};
pub use verify::{verify_export, CardSummary, Totals, VerifyError, VerifyOptions, VerifyReport};
