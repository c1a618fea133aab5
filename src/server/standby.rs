//! `cardd serve --standby --replicate URLS`: a node that follows every
//! brand's replicated log into its own data directory instead of serving.
//!
//! It recovers its local log as any start does, then per brand a
//! `follow-{brand}` thread takes each commit from the brand's stream,
//! checks it as the auditor checks an export (request signatures, links,
//! byte-for-byte replay, the signed checkpoint; `BrandLedger::follow_batch`)
//! and commits it locally, a few milliseconds behind the active node.
//! Brands created later are found by polling the stream names. A brand
//! whose stream holds something that does not verify stops being followed
//! (logged at error level); the others go on. Till connections are closed
//! at once: this node is not active for any brand.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{load_sized, metrics, Config, StartError};
use crate::ledger::{BrandLedger, Recovery};
use crate::replica::{follow, Follower, Nats};
use crate::storage::LogStore;

/// How often a standby looks for brands created since it started.
const NEW_BRANDS_EVERY: Duration = Duration::from_secs(1);

/// A running standby: its followers, one thread per brand.
pub(super) struct Standby {
    nats: Arc<Nats>,
    store: Arc<dyn LogStore>,
    server_key: Arc<SigningKey>,
    snapshots: (std::path::PathBuf, u64),
    stop: CancellationToken,
    followers: HashMap<u32, std::thread::JoinHandle<()>>,
}

impl Standby {
    /// Recovers the local log and starts following every brand the local
    /// log or the cluster holds.
    pub(super) fn start(config: &Config, urls: &str) -> Result<Standby, StartError> {
        let segment_bytes = config.log_segment_kib.saturating_mul(1024);
        let (store, server_key, ledgers) = load_sized(&config.data_dir, segment_bytes)?;
        let nats = Arc::new(Nats::connect(urls)?);
        let snapshots = (
            crate::snapshot::dir(&config.data_dir),
            config.snapshot_every,
        );
        let mut standby = Standby {
            nats,
            store,
            server_key,
            snapshots,
            stop: CancellationToken::new(),
            followers: HashMap::new(),
        };
        for ledger in ledgers {
            standby.follow(ledger);
        }
        standby.follow_new()?;
        tracing::info!(brands = standby.followers.len(), "standby: following");
        Ok(standby)
    }

    /// Starts following brands that have a stream and no follower yet.
    fn follow_new(&mut self) -> Result<(), StartError> {
        for brand in self.nats.brands()? {
            if !self.followers.contains_key(&brand) {
                let (store, key) = (self.store.clone(), self.server_key.clone());
                let dir = &self.snapshots.0;
                let ledger =
                    BrandLedger::recover_with(store, key, brand, Recovery::FromSnapshot(dir))?;
                self.follow(ledger);
            }
        }
        Ok(())
    }

    fn follow(&mut self, mut ledger: BrandLedger) {
        let brand = ledger.brand_id();
        ledger.snapshot_into(&self.snapshots.0, self.snapshots.1);
        let gauge = metrics::get().records_of(brand);
        gauge.set(ledger.state.seq as i64);
        let (nats, store, stop) = (
            self.nats.clone(),
            self.store.clone(),
            self.stop.child_token(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("follow-{brand}"))
            .spawn(move || {
                let committed = |seq: u64| gauge.set(seq as i64);
                let followed = follow::follow_brand(
                    &nats,
                    store.as_ref(),
                    Follower::new(ledger),
                    stop,
                    &committed,
                );
                match followed {
                    Ok(f) => tracing::info!(
                        brand,
                        seq = f.ledger.state.seq,
                        "standby: stopped following"
                    ),
                    Err(e) => {
                        let error = crate::error::causes(&e);
                        tracing::error!(brand, error, "standby: stopped following this brand");
                    }
                }
            })
            .expect("starting a follower thread");
        self.followers.insert(brand, thread);
    }

    /// Until `stop`: closes every till connection (not active here) and
    /// looks for new brands; then stops every follower and waits for it.
    pub(super) async fn run(mut self, listener: TcpListener, stop: CancellationToken) {
        let mut poll = tokio::time::interval(NEW_BRANDS_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => drop(accepted),
                _ = poll.tick() => {
                    // Blocking (it waits on the connection's runtime).
                    self = tokio::task::block_in_place(move || {
                        if let Err(e) = self.follow_new() {
                            let error = crate::error::causes(&e);
                            tracing::warn!(error, "standby: listing the brands' streams failed");
                        }
                        self
                    });
                }
            }
        }
        self.stop.cancel();
        let followers = std::mem::take(&mut self.followers);
        tokio::task::block_in_place(move || {
            for (_, thread) in followers {
                let _ = thread.join();
            }
        });
    }
}
