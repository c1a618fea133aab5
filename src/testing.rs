//! One way to build "a brand with a store, terminals and cards" through the
//! public API (`BrandLedger::create`, `Submission::signed`, the `pb`
//! types), so that every harness provisions the same way and a change to
//! provisioning is made once. Modelled on TigerBeetle's
//! `src/testing/fixtures.zig`: plain constructors with fixed, documented
//! defaults; a caller that needs something else passes it in.
//!
//! Everything here panics on failure: a fixture that cannot be built is a
//! broken test, not an error to handle.
use std::sync::Arc;

use ed25519_dalek::SigningKey;

use crate::ledger::{BrandLedger, Submission};
use crate::pb::{self, request::Op};
use crate::state::Principal;
use crate::storage::LogStore;

/// The brand id every fixture uses.
pub const BRAND: u32 = 1;

/// The currency of fixture brands.
pub const CURRENCY: &str = "CNY";

/// A signing key whose 32 secret bytes are all `seed` (deterministic, so a
/// test's keys and signatures are the same on every run).
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// The fixture server key (seed 1).
pub fn server_key() -> Arc<SigningKey> {
    Arc::new(key(1))
}

/// The fixture brand owner's key (seed 2).
pub fn owner_key() -> SigningKey {
    key(2)
}

/// The fixture terminal's key (seed 3): terminal 1 of store 1.
pub fn terminal_key() -> SigningKey {
    key(3)
}

/// A request of brand [`BRAND`] for `op` under `txn`, no operator named.
pub fn request(txn: u64, op: Op) -> pb::Request {
    request_as(BRAND, txn, "", op)
}

/// A request of `brand_id` for `op` under `txn_id`, by `operator`.
pub fn request_as(brand_id: u32, txn_id: u64, operator: &str, op: Op) -> pb::Request {
    pb::Request {
        txn_id,
        brand_id,
        operator: operator.into(),
        op: Some(op),
        ..Default::default()
    }
}

/// A request of brand [`BRAND`] for `op` under `txn`, signed by `key` as
/// `principal`.
pub fn signed(key: &SigningKey, principal: Principal, txn: u64, op: Op) -> Submission {
    Submission::signed(principal, key, request(txn, op))
}

/// `CreateBrand` named `name` in [`CURRENCY`] (exponent 2), owned by `owner`.
pub fn create_brand(name: &str, owner: &[u8; 32]) -> pb::CreateBrand {
    pb::CreateBrand {
        name: name.into(),
        currency: CURRENCY.into(),
        currency_exponent: 2,
        owner_public_key: owner.to_vec(),
    }
}

/// Opens a store named `name`.
pub fn create_store(name: &str) -> Op {
    Op::CreateStore(pb::CreateStore { name: name.into() })
}

/// Enrols the terminal with `public_key` in store `store_id`.
pub fn enroll_terminal(store_id: u32, public_key: &[u8; 32], label: &str) -> Op {
    Op::EnrollTerminal(pb::EnrollTerminal {
        store_id,
        public_key: public_key.to_vec(),
        label: label.into(),
    })
}

/// Issues `card`.
pub fn issue_card(card: &str) -> Op {
    Op::IssueCard(pb::IssueCard { card: card.into() })
}

/// Loads `amount_minor` onto `card`.
pub fn top_up(card: &str, amount_minor: i64) -> Op {
    Op::TopUp(pb::TopUp {
        card: card.into(),
        amount_minor,
        ..Default::default()
    })
}

/// Spends `amount_minor` from `card` (`allow_partial`: pay what it holds).
pub fn purchase(card: &str, amount_minor: i64, allow_partial: bool) -> Op {
    Op::Purchase(pb::Purchase {
        card: card.into(),
        amount_minor,
        allow_partial,
        ..Default::default()
    })
}

/// The owner's requests that open store 1 (`store_name`), enrol
/// `terminals` in it (terminal ids 1, 2, … in order, no label) and issue
/// `cards`, under owner txn ids 1, 2, … in that order.
pub fn owner_setup(
    owner: &SigningKey,
    store_name: &str,
    terminals: &[SigningKey],
    cards: &[String],
) -> Vec<Submission> {
    let ops = std::iter::once(create_store(store_name))
        .chain(
            terminals
                .iter()
                .map(|t| enroll_terminal(1, &t.verifying_key().to_bytes(), "")),
        )
        .chain(cards.iter().map(|c| issue_card(c)));
    ops.enumerate()
        .map(|(i, op)| signed(owner, Principal::Owner, i as u64 + 1, op))
        .collect()
}

/// A brand ledger provisioned on `store`: brand [`BRAND`] named `name`,
/// owned by [`owner_key`], store 1 with terminal 1 ([`terminal_key`]) and
/// one fresh card, which the terminal tops up with `load_minor` under its
/// txn id 1. Returns the ledger and the card number.
pub fn provision(store: Arc<dyn LogStore>, name: &str, load_minor: i64) -> (BrandLedger, String) {
    let owner = owner_key();
    let terminal = terminal_key();
    let create = create_brand(name, &owner.verifying_key().to_bytes());
    let mut ledger = BrandLedger::create(store, server_key(), BRAND, create)
        .unwrap_or_else(|e| panic!("create the fixture brand: {e}"));
    let card = crate::card_number::generate(BRAND);
    let load = signed(
        &terminal,
        Principal::Terminal(1),
        1,
        top_up(&card, load_minor),
    );
    let subs = owner_setup(
        &owner,
        "s",
        std::slice::from_ref(&terminal),
        std::slice::from_ref(&card),
    );
    for sub in subs.into_iter().chain([load]) {
        ledger
            .submit_now(sub)
            .unwrap_or_else(|e| panic!("commit a fixture request: {e}"))
            .unwrap_or_else(|r| panic!("a fixture request was refused: {r:?}"));
    }
    (ledger, card)
}

/// The daemon's brands as the web page reaches them (`web::Brands`), for
/// tests of the page without a daemon: every brand's read runs at once on
/// one provisioned [`BRAND`] state, except the reads of `stalled` brands,
/// which are held unanswered (a brand whose pages take their whole turn).
/// A session's grant needs [`owner_key`] and [`Principal::Owner`]
/// ([`web_owner`]). Storage reads are refused.
pub struct WebBrands {
    state: std::sync::Mutex<crate::state::BrandState>,
    stalled: Vec<u32>,
    held: std::sync::Mutex<Vec<crate::server::writer::ReadFn>>,
}

impl WebBrands {
    /// Brands over a fresh ledger in `dir`, holding the reads of `stalled`.
    pub fn new(dir: &std::path::Path, stalled: &[u32]) -> Self {
        let store = crate::storage::DiskStore::open(dir)
            .unwrap_or_else(|e| panic!("open a store in {}: {e}", dir.display()));
        let (ledger, _) = provision(Arc::new(store), "s", 10_000);
        WebBrands {
            state: std::sync::Mutex::new(ledger.state),
            stalled: stalled.to_vec(),
            held: std::sync::Mutex::default(),
        }
    }

    /// Reads held unanswered now.
    pub fn held(&self) -> usize {
        self.held.lock().map_or(0, |h| h.len())
    }
}

/// The grant of an owner's web session of `brand` (any brand id: every
/// one reads the fixture's state in [`WebBrands`]).
pub fn web_owner(brand: u32) -> crate::web::Grant {
    crate::web::Grant {
        brand,
        principal: Principal::Owner,
        key: owner_key().verifying_key().to_bytes(),
    }
}

impl crate::web::Brands for WebBrands {
    fn read(&self, brand: u32, read: crate::server::writer::ReadFn) -> bool {
        if self.stalled.contains(&brand) {
            self.held.lock().expect("held reads").push(read);
            return true;
        }
        let deliver = read(&self.state.lock().expect("the fixture state"));
        deliver();
        true
    }

    fn activity(
        &self,
        _: crate::web::Grant,
        _: pb::GetReport,
    ) -> futures::future::BoxFuture<'static, Result<pb::Report, crate::error::Refusal>> {
        Box::pin(async { Err(no_storage()) })
    }

    fn record(
        &self,
        _: crate::web::Grant,
        _: u64,
    ) -> futures::future::BoxFuture<'static, Result<Option<Vec<u8>>, crate::error::Refusal>> {
        Box::pin(async { Err(no_storage()) })
    }
}

fn no_storage() -> crate::error::Refusal {
    crate::error::Refusal::new(pb::ErrorCode::StorageFailure, "no storage in WebBrands")
}
