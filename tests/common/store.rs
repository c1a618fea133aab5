//! A `LogStore` for tests that intercept commits: every method but
//! `commit` goes straight to an inner `DiskStore`; `commit` goes through a
//! hook, which decides whether (and when) to pass it on to the inner store.
//!
//! Reads of single records can be watched too (`record_read`).
//!
//! Also `sub`, the signed submission such tests feed the writer, and
//! `provision`, a brand with a store, a till and a funded card (both from
//! `cardd::testing`; its keys are `testing::owner_key` and
//! `testing::terminal_key`).
use std::sync::Arc;

use cardd::ledger::{BrandLedger, Submission};
use cardd::pb::request::Op;
use cardd::state::Principal;
use cardd::storage::{self, DiskStore, LogStore};
use ed25519_dalek::SigningKey;

/// One call of `LogStore::commit`, its arguments bundled.
pub struct Commit<'a> {
    pub brand: u32,
    pub records: &'a [(u64, &'a [u8])],
    pub nodes: &'a [(u8, u64, [u8; 32])],
    pub checkpoint: (u64, &'a [u8]),
}

impl Commit<'_> {
    /// Passes the commit on to `inner`, the real store.
    pub fn apply(&self, inner: &DiskStore) -> storage::Result<()> {
        inner.commit(self.brand, self.records, self.nodes, self.checkpoint)
    }
}

/// What a test does with a commit.
pub trait CommitHook: Send + Sync + 'static {
    /// Handles one commit; `commit.apply(inner)` passes it on to the real store.
    fn commit(&self, inner: &DiskStore, commit: Commit<'_>) -> storage::Result<()>;

    /// Sees a read of one record (the writer reads older records to answer
    /// retries and status queries); the read itself goes to the inner store.
    fn record_read(&self, _brand: u32, _seq: u64) {}
}

/// A `DiskStore` whose commits go through `hook`.
pub struct WrappedStore<H> {
    pub inner: DiskStore,
    pub hook: H,
}

impl<H: CommitHook> LogStore for WrappedStore<H> {
    fn brands(&self) -> storage::Result<Vec<u32>> {
        self.inner.brands()
    }

    fn commit(
        &self,
        brand: u32,
        records: &[(u64, &[u8])],
        nodes: &[(u8, u64, [u8; 32])],
        checkpoint: (u64, &[u8]),
    ) -> storage::Result<()> {
        let commit = Commit {
            brand,
            records,
            nodes,
            checkpoint,
        };
        self.hook.commit(&self.inner, commit)
    }

    fn node(&self, brand: u32, level: u8, index: u64) -> storage::Result<Option<[u8; 32]>> {
        self.inner.node(brand, level, index)
    }

    fn checkpoints(&self, brand: u32) -> Box<dyn Iterator<Item = storage::Result<Vec<u8>>> + Send> {
        self.inner.checkpoints(brand)
    }

    fn record(&self, brand: u32, seq: u64) -> storage::Result<Option<Vec<u8>>> {
        self.hook.record_read(brand, seq);
        self.inner.record(brand, seq)
    }

    fn scan(
        &self,
        brand: u32,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = storage::Result<(u64, Vec<u8>)>> + Send> {
        self.inner.scan(brand, from_seq)
    }

    fn last_checkpoint(&self, brand: u32) -> storage::Result<Option<Vec<u8>>> {
        self.inner.last_checkpoint(brand)
    }
}

/// A request of brand 1 for `op` under `txn`, signed by `key` as `principal`.
pub fn sub(key: &SigningKey, principal: Principal, txn: u64, op: Op) -> Submission {
    cardd::testing::signed(key, principal, txn, op)
}

/// A brand with a store, a terminal and one card holding 10,000.00.
pub fn provision(store: Arc<dyn LogStore>) -> (BrandLedger, String) {
    cardd::testing::provision(store, "Faults", 1_000_000)
}
