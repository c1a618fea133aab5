//! `cardd brand create` on a stopped daemon's data directory.
use std::path::Path;
use std::sync::Arc;

use anyhow::bail;

use cardd::crypto::load_or_create_key;
use cardd::ledger::BrandLedger;
use cardd::pb;
use cardd::server;

/// Creates a brand whose first record names the owner key (created if
/// missing). Prints its id alone on standard output (for a script:
/// `BRAND=$(cardd brand create ...)`) and what was done, in words, on
/// standard error.
pub fn create(
    data: &Path,
    name: String,
    currency: String,
    exponent: u32,
    owner_key: &Path,
    id: Option<u32>,
) -> anyhow::Result<()> {
    let (store, server_key, ledgers) = server::load(data)?;
    let id = match id {
        Some(id) => id,
        None => ledgers.iter().map(|l| l.brand_id()).max().unwrap_or(0) + 1,
    };
    if ledgers.len() >= cardd::limits::MAX_BRANDS {
        bail!("at most {} brands", cardd::limits::MAX_BRANDS);
    }
    let owner = load_or_create_key(owner_key)?;
    let owner_public = owner.verifying_key().to_bytes();
    for l in &ledgers {
        let s = &l.state;
        if s.owner_key == owner_public || s.terminals.values().any(|t| t.public_key == owner_public)
        {
            bail!(
                "that key is already enrolled in brand {} ({}); one key speaks for one brand",
                s.brand_id,
                s.name
            );
        }
    }
    let said = format!(
        "created brand {id} \"{name}\" ({currency}, {exponent} decimals) in {}; owner key {}",
        data.display(),
        owner_key.display()
    );
    let create = pb::CreateBrand {
        name,
        currency,
        currency_exponent: exponent,
        owner_public_key: owner.verifying_key().to_bytes().to_vec(),
    };
    BrandLedger::create(store, Arc::clone(&server_key), id, create)?;
    outln!("{id}");
    eprintln!("{said}");
    Ok(())
}
