//! A `LogStore` for tests that intercept commits: every method but
//! `commit` goes straight to an inner `DiskStore`; `commit` goes through a
//! hook, which decides whether (and when) to pass it on to the inner store.
//!
//! Reads of single records can be watched too (`record_read`).
//!
//! Also `sub`, the signed submission such tests feed the writer, and
//! `provision`, a brand with a store, a till and a funded card.
//!
//! Included by path (`#[path = "support/store.rs"] mod store;`), so each
//! test crate that wants it compiles its own copy.
use std::sync::Arc;

use cardd::ledger::{BrandLedger, Submission};
use cardd::pb::{self, request::Op};
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
    Submission::signed(
        principal,
        key,
        pb::Request {
            txn_id: txn,
            brand_id: 1,
            op: Some(op),
            ..Default::default()
        },
    )
}

pub fn server_key() -> Arc<SigningKey> {
    Arc::new(SigningKey::from_bytes(&[1; 32]))
}
pub fn owner() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}
pub fn till() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

/// A brand with a store, a terminal and one card holding 10,000.00.
pub fn provision(store: Arc<dyn LogStore>) -> (BrandLedger, String) {
    let create = pb::CreateBrand {
        name: "Faults".into(),
        currency: "CNY".into(),
        currency_exponent: 2,
        owner_public_key: owner().verifying_key().to_bytes().to_vec(),
    };
    let mut ledger = BrandLedger::create(store, server_key(), 1, create).unwrap();
    let card = cardd::card_number::generate(1);
    let ops = [
        Op::CreateStore(pb::CreateStore { name: "s".into() }),
        Op::EnrollTerminal(pb::EnrollTerminal {
            store_id: 1,
            public_key: till().verifying_key().to_bytes().to_vec(),
            label: String::new(),
        }),
        Op::IssueCard(pb::IssueCard { card: card.clone() }),
    ];
    for (i, op) in ops.into_iter().enumerate() {
        ledger
            .submit_now(sub(&owner(), Principal::Owner, i as u64 + 1, op))
            .unwrap()
            .unwrap();
    }
    let top_up = Op::TopUp(pb::TopUp {
        card: card.clone(),
        amount_minor: 1_000_000,
    });
    ledger
        .submit_now(sub(&till(), Principal::Terminal(1), 1, top_up))
        .unwrap()
        .unwrap();
    (ledger, card)
}
