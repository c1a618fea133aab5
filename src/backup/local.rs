//! The backup source for a data directory read in place (`cardd backup
//! --data DIR --out-dir OUT`): a stopped daemon's directory, or a copy of
//! a running one's taken with a file-system snapshot. The server key in
//! the directory is what lets it back up every brand.
use std::io::Write;

use super::{Source, SourceError};
use crate::pb;
use crate::storage::LogStore;

/// One brand of an open store.
pub struct LocalSource<'a> {
    /// The store.
    pub store: &'a dyn LogStore,
    /// The brand.
    pub brand: u32,
    /// The server's public key.
    pub server_key: [u8; 32],
}

impl Source for LocalSource<'_> {
    fn brand(&self) -> u32 {
        self.brand
    }

    fn server_key(&self) -> [u8; 32] {
        self.server_key
    }

    fn export_after(&mut self, after: u64, mut out: &mut dyn Write) -> Result<(), SourceError> {
        crate::audit::write_export_after(
            self.store,
            self.brand,
            after,
            &self.server_key,
            &mut out,
            |_, _| {},
        )?;
        Ok(())
    }

    fn consistency(
        &mut self,
        old_size: u64,
        new_size: u64,
    ) -> Result<pb::ConsistencyProof, SourceError> {
        Ok(crate::audit::consistency_from_store(
            self.store, self.brand, old_size, new_size,
        )?)
    }
}
