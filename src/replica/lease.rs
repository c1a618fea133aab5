//! Leadership per brand: a lease in a JetStream KV bucket, and each
//! node's own idea of whether its leases are still good.
//!
//! The bucket `CARDD_LEASES` keeps one key per brand (`brand-{id}`) whose
//! value names the holder (its node id and terminal address). Its entries
//! expire [`LEASE_TTL`] after their last write (the bucket's `max_age`,
//! counted by the NATS servers, not by any cardd clock). The holder
//! rewrites its key every [`RENEW_EVERY`] with the revision it last wrote
//! (compare-and-set); a node takes a lapsed lease with `create`, which only
//! one node can win.
//!
//! [`LeaseClock`] is the holder's side: a lease is good until
//! [`LOCAL_VALIDITY`] after the start of its last successful renewal, on
//! the monotonic clock (which runs on while a process is stopped). The
//! replicated store appends nothing for a brand whose lease is not good, so
//! a node paused past the TTL (SIGSTOP) and resumed refuses instead of
//! writing; the fence the next holder appends stops an append already in
//! flight (`ReplicatedStore::fence`).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;

use super::{Nats, ReplicaError, REPLICAS};

/// How long a lease lives without renewal (the bucket's `max_age`).
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often the holder renews, and a follower looks for a lapsed lease.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);
/// How long the holder trusts a renewal, from the moment it was sent:
/// below the TTL by a margin for the renewal's own round trip.
pub const LOCAL_VALIDITY: Duration = Duration::from_millis(2_000);
/// The bucket.
pub const LEASE_BUCKET: &str = "CARDD_LEASES";

const _: () = assert!(LOCAL_VALIDITY.as_millis() + 500 < LEASE_TTL.as_millis());
const _: () = assert!(RENEW_EVERY.as_millis() * 3 < LOCAL_VALIDITY.as_millis());

fn key(brand: u32) -> String {
    format!("brand-{brand}")
}

/// The lease bucket, and what this node writes in it.
pub struct Leases {
    nats: Arc<Nats>,
    kv: kv::Store,
    me: String,
}

impl Leases {
    /// Opens (or creates) the bucket; `me` names this node in its leases
    /// (a node id and the address tills reach it at).
    pub fn open(nats: Arc<Nats>, me: String) -> Result<Leases, ReplicaError> {
        let js = nats.jetstream();
        let kv = nats.run(async move {
            // A cluster just formed answers "no responders" for a few
            // seconds: try again for up to ten.
            let mut tries = 0;
            loop {
                let opened = match js.get_key_value(LEASE_BUCKET).await {
                    Ok(kv) => Ok(kv),
                    Err(_) => {
                        js.create_key_value(kv::Config {
                            bucket: LEASE_BUCKET.into(),
                            history: 1,
                            max_age: LEASE_TTL,
                            num_replicas: REPLICAS,
                            storage: async_nats::jetstream::stream::StorageType::File,
                            ..Default::default()
                        })
                        .await
                    }
                };
                tries += 1;
                match opened {
                    Err(_) if tries < 40 => tokio::time::sleep(Duration::from_millis(250)).await,
                    opened => break opened,
                }
            }
        })?;
        let kv = kv.map_err(|e| ReplicaError::Stream {
            brand: 0,
            what: "opening the lease bucket",
            source: Box::new(e),
        })?;
        Ok(Leases { nats, kv, me })
    }

    /// Takes `brand`'s lease if it is free (lapsed or never held): its
    /// revision, or None if another node holds it.
    pub fn take(&self, brand: u32) -> Result<Option<u64>, ReplicaError> {
        use async_nats::jetstream::kv::CreateErrorKind;
        let (kv, me) = (self.kv.clone(), self.me.clone());
        let created = self
            .nats
            .run(async move { kv.create(key(brand), me.into_bytes().into()).await })?;
        match created {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(ReplicaError::Stream {
                brand,
                what: "taking its lease",
                source: Box::new(e),
            }),
        }
    }

    /// Renews `brand`'s lease last written at `revision`: the new revision,
    /// or an error if it was not renewed (another node took it, it lapsed,
    /// or NATS did not answer).
    ///
    /// A renewal whose write landed but whose answer was lost leaves this
    /// node holding a revision one behind its own lease: the next renewal
    /// is refused as written over. Before giving the brand up, it reads the
    /// lease, and if the newest write is this node's own (the value names
    /// this process, which no other writes), renews at that revision.
    pub fn renew(&self, brand: u32, revision: u64) -> Result<u64, ReplicaError> {
        use async_nats::jetstream::kv::UpdateErrorKind;
        match self.update(brand, revision)? {
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                match self.own_revision(brand)? {
                    Some(own) if own != revision => {
                        tracing::warn!(
                            brand,
                            revision,
                            own,
                            "a lease renewal's answer was lost; renewing at its revision"
                        );
                        self.update(brand, own)?.map_err(|e| renew_error(brand, e))
                    }
                    _ => Err(renew_error(brand, e)),
                }
            }
            updated => updated.map_err(|e| renew_error(brand, e)),
        }
    }

    /// One compare-and-set write of this node's value at `revision`.
    fn update(
        &self,
        brand: u32,
        revision: u64,
    ) -> Result<Result<u64, kv::UpdateError>, ReplicaError> {
        let (kv, me) = (self.kv.clone(), self.me.clone());
        self.nats.run(async move {
            kv.update(key(brand), me.into_bytes().into(), revision)
                .await
        })
    }

    /// The revision of `brand`'s lease if its newest write is this node's.
    fn own_revision(&self, brand: u32) -> Result<Option<u64>, ReplicaError> {
        let kv = self.kv.clone();
        let entry = self.nats.run(async move { kv.entry(key(brand)).await })?;
        let entry = entry.map_err(|e| ReplicaError::Stream {
            brand,
            what: "reading its lease",
            source: Box::new(e),
        })?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put && e.value == self.me.as_bytes())
            .map(|e| e.revision))
    }

    /// Gives up each `(brand, revision)` lease (a graceful stop), all at
    /// once and within `within` in total, so that a cluster that does not
    /// answer cannot hold a stop past its timeout. Each is deleted only if
    /// no other node has written it since (the delete names the revision),
    /// so a standby takes the brand at its next look instead of after the
    /// TTL. Per brand: whether it was handed over, or why not.
    pub fn release_all(
        &self,
        held: Vec<(u32, u64)>,
        within: Duration,
    ) -> Result<Vec<Released>, ReplicaError> {
        let kv = self.kv.clone();
        self.nats.run(async move {
            let deletes = held.iter().map(|&(brand, revision)| {
                let kv = kv.clone();
                async move {
                    let deleted = kv.delete_expect_revision(key(brand), Some(revision)).await;
                    (brand, deleted.map_err(|e| e.to_string()))
                }
            });
            match tokio::time::timeout(within, futures::future::join_all(deletes)).await {
                Ok(done) => done,
                Err(_) => held
                    .iter()
                    .map(|&(brand, _)| (brand, Err(format!("no answer within {within:?}"))))
                    .collect(),
            }
        })
    }

    /// Who holds `brand`'s lease, as its holder wrote it.
    pub fn holder(&self, brand: u32) -> Option<String> {
        let kv = self.kv.clone();
        let got = self
            .nats
            .run(async move { kv.get(key(brand)).await })
            .ok()?;
        got.ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}

/// A brand, and whether its lease was handed over (or why not).
pub type Released = (u32, Result<(), String>);

fn renew_error(brand: u32, e: kv::UpdateError) -> ReplicaError {
    ReplicaError::Stream {
        brand,
        what: "renewing its lease",
        source: Box::new(e),
    }
}

/// Until when each brand's lease held by this node is good. A brand not
/// in it was never leased here (offline creation, the demo brand before
/// its first lease): the stream's fencing alone guards it.
#[derive(Default)]
pub struct LeaseClock {
    valid_until: Mutex<HashMap<u32, Instant>>,
}

impl LeaseClock {
    /// A renewal (or the take) of `brand`'s lease sent at `sent` succeeded.
    pub fn renewed(&self, brand: u32, sent: Instant) {
        self.valid_until
            .lock()
            .expect("lease clock")
            .insert(brand, sent + LOCAL_VALIDITY);
    }

    /// `brand`'s lease is gone: nothing more may be appended for it.
    pub fn lost(&self, brand: u32) {
        self.valid_until
            .lock()
            .expect("lease clock")
            .insert(brand, Instant::now());
    }

    /// Whether this node may append for `brand` now.
    pub fn may_append(&self, brand: u32) -> bool {
        match self.valid_until.lock().expect("lease clock").get(&brand) {
            Some(until) => Instant::now() < *until,
            None => true,
        }
    }

    /// Whether the lease of `brand` has run out on this node's clock.
    pub fn expired(&self, brand: u32) -> bool {
        !self.may_append(brand)
    }
}
