//! `cardd serve --demo`: a demo brand with two stores, a terminal in each,
//! an owner key and a few funded cards, provisioned through the same signed
//! requests and state machine as everything else.
use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use serde::Serialize;
use thiserror::Error;

use crate::card_number;
use crate::crypto::{load_or_create_key, KeyFileError};
use crate::error::Refusal;
use crate::ledger::{BrandLedger, LedgerError};
use crate::pb::{self, request::Op, BonusTier, Rules, TierRule};
use crate::state::Principal;
use crate::storage::fsutil::{create_dir_all_durable, replace_durably, sync_dir};
use crate::storage::LogStore;

/// Why the demo brand could not be provisioned.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The ledger already holds a brand.
    #[error("the demo is provisioned only into an empty ledger")]
    NotEmpty,
    /// The ledger failed.
    #[error("demo ledger")]
    Ledger(#[from] LedgerError),
    /// A demo key could not be made.
    #[error("demo key")]
    Key(#[from] KeyFileError),
    /// One of the demo's own requests was refused.
    #[error("demo: {what}: {refusal}")]
    Refused {
        /// Which step.
        what: String,
        /// The refusal.
        refusal: Refusal,
    },
    /// A file could not be written.
    #[error("demo: {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> DemoError {
    move |source| DemoError::Io { what, source }
}

/// The demo manifest written to `demo.json`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The demo brand.
    pub brand_id: u32,
    /// Owner key path, relative to the data directory.
    pub owner_key: String,
    /// Stores and their terminals.
    pub stores: Vec<ManifestStore>,
    /// Funded card numbers.
    pub cards: Vec<String>,
}

/// A store in the manifest.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ManifestStore {
    /// Its id.
    pub store_id: u32,
    /// Its name.
    pub name: String,
    /// Its terminals.
    pub terminals: Vec<ManifestTerminal>,
}

/// A terminal in the manifest.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ManifestTerminal {
    /// Its id.
    pub terminal_id: u32,
    /// Key path, relative to the data directory.
    pub key: String,
}

/// The rules the demo brand starts with (also a template for owners).
pub fn demo_rules() -> Rules {
    Rules {
        bonus_tiers: vec![
            BonusTier {
                min_load_minor: 50_000,
                fixed_bonus_minor: 5_000,
                bonus_bps: 0,
            },
            BonusTier {
                min_load_minor: 100_000,
                fixed_bonus_minor: 0,
                bonus_bps: 1_500,
            },
        ],
        points_per_unit: 1,
        tiers: vec![
            TierRule {
                name: "silver".into(),
                min_spend_minor: 0,
                min_visits: 0,
                multiplier_milli: 1_000,
                ..Default::default()
            },
            TierRule {
                name: "gold".into(),
                min_spend_minor: 200_000,
                min_visits: 10,
                multiplier_milli: 2_000,
                ..Default::default()
            },
            TierRule {
                name: "diamond".into(),
                min_spend_minor: 1_000_000,
                min_visits: 0,
                multiplier_milli: 3_800,
                ..Default::default()
            },
        ],
        promotion_line: "Top up 500 get 50 free; 1000 gets 15% more".into(),
        time_zone: String::new(),
        ..Default::default()
    }
}

fn expect_ok(what: &str, answer: crate::ledger::Answer) -> Result<pb::Reply, DemoError> {
    answer.map_err(|refusal| DemoError::Refused {
        what: what.into(),
        refusal,
    })
}

/// The demo's owner: signs operations with consecutive transaction ids.
struct Owner<'a> {
    ledger: &'a mut BrandLedger,
    key: SigningKey,
    txn: u64,
}

impl Owner<'_> {
    /// Applies one owner operation; `what` names it in errors.
    fn op(&mut self, what: &str, op: Op) -> Result<pb::Reply, DemoError> {
        self.txn += 1;
        let req = demo_request(self.ledger.brand_id(), self.txn, op);
        expect_ok(
            what,
            self.ledger
                .submit_signed(Principal::Owner, &self.key, &req)?,
        )
    }
}

/// A request of the demo brand entered by operator "demo".
fn demo_request(brand_id: u32, txn_id: u64, op: Op) -> pb::Request {
    pb::Request {
        txn_id,
        brand_id,
        operator: "demo".into(),
        op: Some(op),
        ..Default::default()
    }
}

/// Provisions the demo brand into an empty ledger and writes `demo.json`.
pub fn provision(
    data_dir: &Path,
    store: Arc<dyn LogStore>,
    server_key: Arc<SigningKey>,
) -> Result<BrandLedger, DemoError> {
    let brands = store
        .brands()
        .map_err(|source| LedgerError::Storage { brand: 1, source })?;
    if !brands.is_empty() {
        return Err(DemoError::NotEmpty);
    }
    let dir = data_dir.join("demo");
    create_dir_all_durable(&dir).map_err(io("creating the demo key directory"))?;
    let owner_key = load_or_create_key(&dir.join("owner.key"))?;
    let create = pb::CreateBrand {
        name: "Demo Coffee".into(),
        currency: "CNY".into(),
        currency_exponent: 2,
        owner_public_key: owner_key.verifying_key().to_bytes().to_vec(),
    };
    let mut ledger = BrandLedger::create(store, server_key, 1, create)?;
    let mut owner = Owner {
        ledger: &mut ledger,
        key: owner_key,
        txn: 0,
    };
    owner.op(
        "rules",
        Op::SetRules(pb::SetRules {
            // A new brand: refunds exact, as `cardd admin set-rules` sets
            // them (demo_rules itself is pinned by the golden script).
            rules: Some(Rules {
                exact_refunds: true,
                ..demo_rules()
            }),
        }),
    )?;
    let (stores, terminal_keys) = open_stores(&mut owner, data_dir)?;
    let (tid, till) = &terminal_keys[0];
    let cards = fund_cards(&mut owner, *tid, till)?;
    close_shift(&mut ledger, *tid, till)?;
    let manifest = Manifest {
        brand_id: ledger.brand_id(),
        owner_key: "demo/owner.key".into(),
        stores,
        cards,
    };
    // The keys' entries, then the manifest: a power cut leaves either no
    // demo.json or one whose keys are all there.
    sync_dir(&dir).map_err(io("fsync of the demo key directory"))?;
    replace_durably(
        &data_dir.join("demo.json"),
        serde_json::to_string_pretty(&manifest)
            .expect("the manifest is plain data")
            .as_bytes(),
        false,
    )
    .map_err(io("writing demo.json"))?;
    tracing::info!(
        brand = manifest.brand_id,
        "demo brand provisioned; see demo.json"
    );
    Ok(ledger)
}

/// A demo terminal's id and key.
type TerminalKey = (u32, SigningKey);

/// Opens the two demo stores, each with one terminal whose key is written
/// under `data_dir/demo/`. Returns the stores and the terminals' keys.
fn open_stores(
    owner: &mut Owner<'_>,
    data_dir: &Path,
) -> Result<(Vec<ManifestStore>, Vec<TerminalKey>), DemoError> {
    let mut stores = Vec::new();
    let mut terminal_keys = Vec::new();
    for (i, name) in ["Downtown", "Airport"].into_iter().enumerate() {
        owner.op(
            "store",
            Op::CreateStore(pb::CreateStore { name: name.into() }),
        )?;
        let store_id = u32::try_from(i + 1).expect("two demo stores");
        let key_rel = format!("demo/terminal-{store_id}.key");
        let key = load_or_create_key(&data_dir.join(&key_rel))?;
        let reply = owner.op(
            "terminal",
            Op::EnrollTerminal(pb::EnrollTerminal {
                store_id,
                public_key: key.verifying_key().to_bytes().to_vec(),
                label: format!("{name} till 1"),
            }),
        )?;
        let Some(pb::reply::Detail::Terminal(t)) = reply.detail else {
            unreachable!("an enrolment answers with its terminal")
        };
        stores.push(ManifestStore {
            store_id,
            name: name.into(),
            terminals: vec![ManifestTerminal {
                terminal_id: t.terminal_id,
                key: key_rel,
            }],
        });
        terminal_keys.push((t.terminal_id, key));
    }
    Ok((stores, terminal_keys))
}

/// Issues five cards and tops each up from terminal `tid` (key `till`).
fn fund_cards(
    owner: &mut Owner<'_>,
    tid: u32,
    till: &SigningKey,
) -> Result<Vec<String>, DemoError> {
    let brand = owner.ledger.brand_id();
    let mut cards = Vec::new();
    for (i, load) in [10_000i64, 20_000, 30_000, 50_000, 100_000]
        .into_iter()
        .enumerate()
    {
        let card = card_number::generate(brand);
        owner.op("card", Op::IssueCard(pb::IssueCard { card: card.clone() }))?;
        let top_up = Op::TopUp(pb::TopUp {
            card: card.clone(),
            amount_minor: load,
            ..Default::default()
        });
        let req = demo_request(
            brand,
            u64::try_from(i + 1).expect("a few demo cards"),
            top_up,
        );
        expect_ok(
            "top-up",
            owner
                .ledger
                .submit_signed(Principal::Terminal(tid), till, &req)?,
        )?;
        cards.push(card);
    }
    Ok(cards)
}

/// The provisioning top-ups close their own shift, so the demo till
/// starts a clean shift that balances against a fresh terminal.
fn close_shift(ledger: &mut BrandLedger, tid: u32, till: &SigningKey) -> Result<(), DemoError> {
    let totals = ledger.state.terminals[&tid].shift;
    let op = Op::CloseShift(pb::CloseShift {
        terminal_totals: Some(totals),
    });
    let req = demo_request(ledger.brand_id(), 6, op);
    expect_ok(
        "shift close",
        ledger.submit_signed(Principal::Terminal(tid), till, &req)?,
    )?;
    Ok(())
}
