//! `cardd serve` and `cardd check`: the daemon and its offline check.
use std::path::Path;

use cardd::server::{self, Config};

/// `cardd serve`: runs the daemon until it is stopped.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(server::run(config, |r| {
        // A line scripts and tests can wait for.
        println!("cardd listening on {}", r.local_addr);
    }))?;
    Ok(())
}

/// `cardd check`: replays every brand of a stopped daemon's data directory
/// and prints one line per brand.
pub fn check(data: &Path) -> anyhow::Result<()> {
    let (_, _, ledgers) = server::load_checked(data)?;
    for l in &ledgers {
        let (paid, bonus) = l.state.liability();
        outln!(
            "brand {} ({}): {} records, {} cards, outstanding paid {} bonus {} (minor units), head {}",
            l.brand_id(),
            l.state.name,
            l.state.seq,
            l.state.cards.len(),
            paid,
            bonus,
            hex::encode(l.state.head_hash)
        );
    }
    outln!(
        "ok: {} brands replayed from their first record and match their checkpoints and snapshots",
        ledgers.len()
    );
    Ok(())
}
