//! A replicated node (`cardd serve --replicate`, with or without
//! `--standby`; docs/replication.md): per brand it is either the brand's
//! active node, holding its lease, or a follower of the brand's stream.
//!
//! At start every brand's local log is caught up with its stream. Without
//! `--standby` the node then takes each free lease and serves those brands;
//! with it, it serves none at first. Every other brand is followed on a
//! `follow-{brand}` thread: each commit of the stream checked as the
//! auditor checks an export (`BrandLedger::follow_batch`) and committed
//! locally. Every [`RENEW_EVERY`] the node renews its leases (a lease not
//! renewed in time stops its brand at once: `Shared::stop_brand`), tries
//! to take the lapsed leases of the brands it follows (taking one: stop
//! the follower, read the stream to its end, append a fence, serve), and
//! looks for brands created elsewhere.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::keys::KeyIndex;
use super::{metrics, serve_ledgers, Config, Shared, StartError};
use crate::ledger::{BrandLedger, Recovery};
use crate::replica::lease::RENEW_EVERY;
use crate::replica::{
    follow, Ends, Follower, LeaseClock, Leases, Nats, ReplicaError, ReplicatedStore,
};
use crate::storage::LogStore;

/// The brand `--demo` provisions (`demo::provision`).
const DEMO_BRAND: u32 = 1;

/// How many times a take-over reads the stream again before it gives up:
/// after a fence refused (the previous writer's last append landed first)
/// or a seeding of the stream's missing end.
const TAKE_OVER_ROUNDS: u32 = 6;

/// A follower thread and the token that stops it.
/// True for a take-over failure that another try will meet again: the
/// stream is not this brand's chain here or does not verify, the local
/// log cannot be read, NATS failed past its 30 s of patience, or the
/// follower's thread panicked.
fn lasting(e: &ReplicaError) -> bool {
    matches!(
        e,
        ReplicaError::Diverged { .. }
            | ReplicaError::Missing { .. }
            | ReplicaError::Malformed { .. }
            | ReplicaError::Ledger(_)
            | ReplicaError::Local(_)
            | ReplicaError::Stream { .. }
            | ReplicaError::Panicked { .. }
    )
}

struct Following {
    stop: CancellationToken,
    thread: std::thread::JoinHandle<Result<Follower, ReplicaError>>,
    /// Whether its ledger is recovered and has read the stream to its end
    /// (as last seen: cleared again while a burst is read): a take-over
    /// before that would join a thread still replaying, or read the rest
    /// of the stream itself, and the lease loop would wait for it.
    ready: Arc<AtomicBool>,
}

/// Runs `work` every [`RENEW_EVERY`] until `until` is cancelled. It
/// blocks (lease and stream calls wait on the connection's runtime), so it
/// runs in place on this worker thread.
async fn every_renewal(until: &CancellationToken, mut work: impl FnMut()) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    loop {
        tokio::select! {
            _ = until.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::task::block_in_place(&mut work);
    }
}

/// Runs `work` while a thread renews every lease in `held` every
/// [`RENEW_EVERY`]: a take-over (reading the stream, seeding it, each
/// append retried for up to 10 s) and the demo's provisioning each can
/// outlast a lease, and the lease loop, which renews them otherwise, waits
/// for them. A lease of a brand `halted` says stopped on this node is left
/// alone: renewing it would keep a standby from taking that brand. A
/// failed renewal is left to the lease loop, which stops that brand if its
/// deadline passes (the store appends nothing for a brand whose lease
/// clock ran out, the one taken over too).
fn renewing<T>(
    leases: &Leases,
    clock: &LeaseClock,
    held: &mut HashMap<u32, u64>,
    halted: &(dyn Fn(u32) -> bool + Sync),
    work: impl FnOnce() -> T,
) -> T {
    let revisions = std::sync::Mutex::new(std::mem::take(held));
    let done = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        // Renewed at once too: the gap since the lease loop's own round
        // (a give-up, another take-over before this one) may be long.
        let renewer = s.spawn(|| loop {
            if done.load(Ordering::Acquire) {
                break;
            }
            renew_each(
                leases,
                clock,
                &mut revisions.lock().expect("revisions lock"),
                halted,
            );
            std::thread::park_timeout(RENEW_EVERY);
        });
        // Stops the renewer however `work` ends (a panic too: the scope
        // would otherwise wait for it forever, renewing the leases).
        let _stop = StopRenewer {
            done: &done,
            renewer: renewer.thread(),
        };
        work()
    });
    *held = revisions.into_inner().expect("revisions lock");
    out
}

/// One round of [`renewing`].
fn renew_each(
    leases: &Leases,
    clock: &LeaseClock,
    held: &mut HashMap<u32, u64>,
    halted: &(dyn Fn(u32) -> bool + Sync),
) {
    for (&brand, revision) in held.iter_mut() {
        if halted(brand) {
            continue;
        }
        let sent = Instant::now();
        match leases.renew(brand, *revision) {
            Ok(renewed) => {
                *revision = renewed;
                clock.renewed(brand, sent);
            }
            Err(e) => {
                let error = crate::error::causes(&e);
                tracing::warn!(brand, error, "lease not renewed; retrying");
            }
        }
    }
}

/// Whether `brand` is served here and its writer stopped (a failed
/// commit): its lease is given up, never renewed.
fn halted_on(shared: &Shared, brand: u32) -> bool {
    shared.brand(brand).is_some_and(|h| h.is_halted())
}

/// [`Node::take_over`]'s reading, seeding and fencing. A brand whose
/// local log holds more than its stream (it predates replication, or its
/// seeding stopped part-way) gets the rest of its stream seeded from it
/// (`ReplicatedStore::seed`) before the fence.
fn take_over_rounds(
    nats: &Nats,
    store: &ReplicatedStore,
    follower: &mut Follower,
) -> Result<(), ReplicaError> {
    let brand = follower.ledger.brand_id();
    let disk = store.disk().clone();
    // Each round that does not fence (the previous writer's last
    // append came first, or a seeding) reads the stream again.
    for _ in 0..TAKE_OVER_ROUNDS {
        let end = follow::catch_up(nats, disk.as_ref(), follower)?;
        let state = &follower.ledger.state;
        let local = (state.seq, state.head_hash);
        match store.compare_ends(brand, end, local)? {
            Ends::Same => match store.fence(brand, end, local) {
                Ok(()) => return Ok(()),
                Err(ReplicaError::Fenced { .. }) => {}
                Err(e) => return Err(e),
            },
            // A seeding that stopped part-way (or none yet): the
            // records only this disk holds go on the stream first,
            // before anything new is written after them.
            Ends::StreamBehind => {
                store.seed(brand, end.record_seq)?;
            }
        }
    }
    Err(ReplicaError::Unsettled {
        brand,
        rounds: TAKE_OVER_ROUNDS,
    })
}

/// Stops [`renewing`]'s renewer when dropped.
struct StopRenewer<'a> {
    done: &'a std::sync::atomic::AtomicBool,
    renewer: &'a std::thread::Thread,
}

impl Drop for StopRenewer<'_> {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.renewer.unpark();
    }
}

/// How long a stop waits for the cluster to take its leases back, in all
/// (it lies within the stop's timeout beside the drain's grace).
pub(super) const HANDOVER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a stop waits, once its leases are handed over, for followers
/// told to stop (one still recovering a big brand takes seconds): those
/// not done by then are left to the process's exit, which only cuts a
/// local read or a local commit the stream already holds.
const FOLLOWERS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The leases a stopping node still holds, and its followers, told to
/// stop but not waited for.
pub(super) struct Handover {
    leases: Leases,
    clock: Arc<LeaseClock>,
    held: HashMap<u32, u64>,
    followers: HashMap<u32, Following>,
}

impl Handover {
    /// Gives up every lease held, after the drain (nothing more is
    /// appended: the clock says so first). A standby then takes each brand
    /// at its next look (every [`RENEW_EVERY`]) instead of waiting out the
    /// lease's TTL: a planned stop or upgrade costs the tills half a
    /// second, not three. A lease another node took meanwhile is left as
    /// it is (the delete names the revision this node wrote).
    /// Then waits a little for the followers (see [`FOLLOWERS_PATIENCE`]).
    pub(super) fn release(self) {
        // A lease this node's clock already gave up is lapsing anyway.
        let held: Vec<(u32, u64)> = self
            .held
            .into_iter()
            .filter(|(brand, _)| !self.clock.expired(*brand))
            .collect();
        for (brand, _) in &held {
            self.clock.lost(*brand);
        }
        match self.leases.release_all(held, HANDOVER_PATIENCE) {
            Ok(released) => {
                for (brand, result) in released {
                    match result {
                        Ok(()) => tracing::info!(brand, "lease handed over"),
                        Err(error) => {
                            tracing::warn!(brand, error, "lease not handed over; it lapses instead")
                        }
                    }
                }
            }
            Err(e) => {
                let error = crate::error::causes(&e);
                tracing::warn!(error, "leases not handed over; they lapse instead");
            }
        }
        finish_followers(self.followers);
    }
}

/// Joins the `followers` (each already told to stop) that end within
/// [`FOLLOWERS_PATIENCE`]; the others are left running, logged.
fn finish_followers(mut followers: HashMap<u32, Following>) {
    let deadline = Instant::now() + FOLLOWERS_PATIENCE;
    while !followers.values().all(|f| f.thread.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for (brand, f) in followers.drain() {
        if f.thread.is_finished() {
            let _ = f.thread.join();
        } else {
            tracing::warn!(
                brand,
                "a follower still busy at the stop is left to the exit"
            );
        }
    }
}

/// The brands this node serves (with their lease revisions) and follows.
pub(super) struct Node {
    nats: Arc<Nats>,
    store: Arc<ReplicatedStore>,
    server_key: Arc<SigningKey>,
    snapshots: std::path::PathBuf,
    leases: Leases,
    clock: Arc<LeaseClock>,
    held: HashMap<u32, u64>,
    followers: HashMap<u32, Following>,
    /// Brands whose following or take-over failed here, and when following
    /// them may be tried again ([`REFOLLOW_AFTER`]): each try recovers the
    /// brand's ledger, seconds of a big brand's replay on the lease loop.
    resting: HashMap<u32, Instant>,
}

/// How long a brand whose following or take-over failed on this node is
/// left alone before it is followed again (a diverged stream stays so; a
/// NATS that gave up may answer later).
const REFOLLOW_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// What a node does with a brand at start ([`Node::take_at_start`]).
enum AtStart {
    /// It holds the brand's lease and the stream ends where its log does.
    Serve(BrandLedger),
    /// Another node holds the lease (or this is a standby).
    Follow(BrandLedger),
    /// Taking it over failed (logged; the lease given up): not served here.
    Refused(BrandLedger),
}

/// Starts a replicated node: recovery and catch-up, the leases it can
/// take (none with `--standby`), the shared state serving those brands,
/// and a follower for every other brand.
pub(super) fn start(
    config: &Config,
    urls: &str,
    local_addr: SocketAddr,
    stop: CancellationToken,
    writers: &TaskTracker,
    web: Arc<crate::web::Logins>,
) -> Result<(Arc<Shared>, Node), StartError> {
    let segment_bytes = config.log_segment_kib.saturating_mul(1024);
    let clock = Arc::new(LeaseClock::default());
    let ((store, server_key, mut ledgers), replicated, refused) =
        super::start::load_replicated(&config.data_dir, segment_bytes, urls, clock.clone())?;
    let nats = replicated.nats().clone();
    let me = format!("{} {local_addr}", hex::encode(rand::random::<[u8; 8]>()));
    let mut node = Node {
        leases: Leases::open(nats.clone(), me)?,
        nats,
        store: replicated,
        server_key: server_key.clone(),
        snapshots: crate::snapshot::dir(&config.data_dir),
        clock,
        held: HashMap::new(),
        followers: HashMap::new(),
        resting: HashMap::new(),
    };
    if config.demo && ledgers.is_empty() && !config.standby {
        // The demo brand's lease first: a standby already running must not
        // take the brand while it is being provisioned.
        let sent = Instant::now();
        if let Some(revision) = node.take_patiently(DEMO_BRAND)? {
            node.clock.renewed(DEMO_BRAND, sent);
            node.held.insert(DEMO_BRAND, revision);
            let (leases, clock) = (&node.leases, &node.clock);
            let provisioned = renewing(leases, clock, &mut node.held, &|_| false, || {
                crate::demo::provision(&config.data_dir, store.clone(), server_key.clone())
            });
            ledgers.push(provisioned?);
        }
    }
    let shared = serve_ledgers(config, stop, writers, store, &server_key, Vec::new(), web);
    let _ = shared.lease_clock.set(node.clock.clone());
    for ledger in refused {
        node.refuse(&ledger, &shared.keys);
    }
    for ledger in ledgers {
        match node.take_at_start(ledger, config.standby, &shared)? {
            AtStart::Serve(ledger) => shared.serve_brand(ledger, writers),
            AtStart::Follow(ledger) => node.follow(ledger, &shared.keys),
            AtStart::Refused(ledger) => node.refuse(&ledger, &shared.keys),
        }
    }
    tracing::info!(
        serving = node.held.len(),
        following = node.followers.len(),
        standby = config.standby,
        "replicated node started"
    );
    Ok((shared, node))
}

impl Node {
    /// The brand's lease if it is free and this is no standby: the ledger
    /// to serve; else the ledger back, to follow. A take-over that fails
    /// (the stream and the local log are not one chain, NATS gave up)
    /// refuses this brand alone: logged, its lease given up.
    fn take_at_start(
        &mut self,
        ledger: BrandLedger,
        standby: bool,
        shared: &Shared,
    ) -> Result<AtStart, StartError> {
        let brand = ledger.brand_id();
        if standby {
            return Ok(AtStart::Follow(ledger));
        }
        if !self.held.contains_key(&brand) {
            let sent = Instant::now();
            let Some(revision) = self.take_patiently(brand)? else {
                return Ok(AtStart::Follow(ledger));
            };
            self.clock.renewed(brand, sent);
            self.held.insert(brand, revision);
        }
        let seq = ledger.state.seq;
        let mut follower = Follower::new(ledger);
        match self.take_over(&mut follower, shared) {
            Ok(()) => Ok(AtStart::Serve(follower.ledger)),
            Err(e) if !lasting(&e) => {
                // A passing failure (an append not acknowledged while the
                // stream elects a leader): followed, and taken at a look.
                let error = crate::error::causes(&e);
                tracing::warn!(brand, seq, error, "could not take the brand over yet");
                self.give_up(brand);
                Ok(AtStart::Follow(follower.ledger))
            }
            Err(e) => {
                let error = crate::error::causes(&e);
                tracing::error!(
                    brand,
                    seq,
                    error,
                    "brand refused: could not take it over; this node does not serve it"
                );
                self.give_up(brand);
                Ok(AtStart::Refused(follower.ledger))
            }
        }
    }

    /// [`Leases::take`] at start-up, tried again for a few seconds: a lease
    /// bucket just created, or a cluster just formed, answers "no
    /// responders" until its stream has a leader.
    fn take_patiently(&self, brand: u32) -> Result<Option<u64>, ReplicaError> {
        crate::replica::patiently(|| self.leases.take(brand))
    }

    /// With the lease just taken: reads the stream to its end, makes sure
    /// it ends where the local log does (seeding what the local log holds
    /// beyond a stream that is a strict prefix of it), and appends a
    /// fence, so that nothing the previous writer still sends is taken; the
    /// ledger is then this node's to serve. A stream and a local log that
    /// are not one chain fail with [`ReplicaError::Diverged`]: the brand is
    /// not this node's to serve. Every lease held is renewed meanwhile
    /// ([`renewing`]; not those of brands halted on `shared`).
    fn take_over(&mut self, follower: &mut Follower, shared: &Shared) -> Result<(), ReplicaError> {
        let (nats, store) = (&self.nats, &self.store);
        let taken = follower.ledger.brand_id();
        let halted = |brand| brand != taken && halted_on(shared, brand);
        renewing(&self.leases, &self.clock, &mut self.held, &halted, || {
            take_over_rounds(nats, store, follower)
        })
    }

    /// Follows `ledger`'s brand on a thread of its own. Its keys, as of
    /// each commit followed, go into `keys`: its tills sign on here to be
    /// told NOT_ACTIVE (not UNKNOWN_KEY), and are known at once if this
    /// node takes the brand over.
    fn follow(&mut self, ledger: BrandLedger, keys: &Arc<KeyIndex>) {
        let brand = ledger.brand_id();
        metrics::get()
            .records_of(brand)
            .set(ledger.state.seq as i64);
        keys.add_brand(&ledger.state);
        self.spawn_follower(brand, keys, move || Ok(ledger));
    }

    /// Follows `brand` on a thread of its own, from the ledger `start`
    /// gives on that thread: recovering a brand takes seconds for a big
    /// one, and the lease loop, which renews every other brand's lease
    /// within [`RENEW_EVERY`], must not wait for it. A `start` that fails
    /// ends the thread with its error (logged), like a follower that
    /// stopped.
    fn spawn_follower(
        &mut self,
        brand: u32,
        keys: &Arc<KeyIndex>,
        start: impl FnOnce() -> Result<BrandLedger, ReplicaError> + Send + 'static,
    ) {
        let gauge = metrics::get().records_of(brand);
        let keys = keys.clone();
        let (nats, disk, stop) = (
            self.nats.clone(),
            self.store.disk().clone(),
            CancellationToken::new(),
        );
        let token = stop.clone();
        let ready = Arc::new(AtomicBool::new(false));
        let at_end = ready.clone();
        let thread = std::thread::Builder::new()
            .name(format!("follow-{brand}"))
            .spawn(move || {
                let committed = |state: &crate::state::BrandState| {
                    gauge.set(state.seq as i64);
                    keys.add_brand(state);
                };
                let at_end = |reached| at_end.store(reached, Ordering::Release);
                let followed = start().and_then(|ledger| {
                    committed(&ledger.state);
                    let follower = Follower::new(ledger);
                    let (disk, stop) = (disk.as_ref(), token);
                    follow::follow_brand(&nats, disk, follower, stop, &committed, &at_end)
                });
                if let Err(e) = &followed {
                    let error = crate::error::causes(e);
                    tracing::error!(brand, error, "stopped following this brand");
                }
                followed
            })
            .expect("starting a follower thread");
        let following = Following {
            stop,
            thread,
            ready,
        };
        self.followers.insert(brand, following);
    }

    /// Every [`RENEW_EVERY`] until `stop`: renews, takes lapsed leases,
    /// follows new brands. Returns once the look under way is done, so
    /// that a takeover under way ends before the drain starts (it may
    /// start a writer). The followers are told to stop, not waited for:
    /// one still recovering a big brand takes seconds, and the leases held
    /// are renewed again only once this returns ([`Node::keep_leases`]),
    /// then handed over; they are waited for after that
    /// ([`Handover::release`]).
    pub(super) async fn run(
        mut self,
        shared: Arc<Shared>,
        writers: TaskTracker,
        stop: CancellationToken,
    ) -> Node {
        every_renewal(&stop, || {
            self.renew_held(&shared);
            self.take_lapsed(&shared, &writers);
            self.follow_new(&shared);
        })
        .await;
        for f in self.followers.values() {
            f.stop.cancel();
        }
        self
    }

    /// Keeps the leases held renewed while the daemon drains (it may still
    /// append what is in flight), until `drained`; then returns them for
    /// [`Handover::release`].
    pub(super) async fn keep_leases(
        mut self,
        shared: Arc<Shared>,
        drained: CancellationToken,
    ) -> Handover {
        every_renewal(&drained, || self.renew_held(&shared)).await;
        Handover {
            leases: self.leases,
            clock: self.clock,
            held: self.held,
            followers: self.followers,
        }
    }

    /// Renews every lease held; one that could not be renewed before this
    /// node's own deadline stops its brand at once.
    fn renew_held(&mut self, shared: &Shared) {
        for (brand, revision) in self.held.clone() {
            if halted_on(shared, brand) {
                // Its writer stopped here (a failed commit): renewing would
                // keep every other node from serving it until a restart.
                // The lease is given up (or lapses) and a standby takes it.
                let handed_over = self.give_up(brand);
                tracing::warn!(
                    brand,
                    handed_over,
                    "the brand stopped on this node: its lease is given up"
                );
                continue;
            }
            let sent = Instant::now();
            match self.leases.renew(brand, revision) {
                Ok(revision) => {
                    self.held.insert(brand, revision);
                    self.clock.renewed(brand, sent);
                }
                Err(e) if self.clock.expired(brand) => {
                    self.clock.lost(brand);
                    self.held.remove(&brand);
                    let error = crate::error::causes(&e);
                    tracing::error!(
                        brand,
                        error,
                        "lease lost: this node stops serving the brand"
                    );
                    let holder = self.leases.holder(brand).unwrap_or_default();
                    shared.stop_brand(
                        brand,
                        format!("this node is not active for brand {brand} any more (lease held by: {holder})"),
                    );
                }
                Err(e) => {
                    let error = crate::error::causes(&e);
                    tracing::warn!(brand, error, "lease not renewed; retrying");
                }
            }
        }
    }

    /// Takes the lapsed lease of each brand followed, and serves it.
    fn take_lapsed(&mut self, shared: &Shared, writers: &TaskTracker) {
        let brands: Vec<u32> = self.followers.keys().copied().collect();
        for brand in brands {
            if self.followers[&brand].thread.is_finished() {
                // Its stream held something that does not verify: it is
                // not this node's to serve (logged when it stopped).
                if let Some(f) = self.followers.remove(&brand) {
                    let _ = f.thread.join();
                }
                self.rest(brand);
                continue;
            }
            if !self.followers[&brand].ready.load(Ordering::Acquire) {
                // Not taken before it has caught up, but its tills are told
                // where it is served meanwhile.
                self.name_holder(brand, shared);
                continue;
            }
            let sent = Instant::now();
            match self.leases.take(brand) {
                Ok(Some(revision)) => {
                    self.clock.renewed(brand, sent);
                    // Held from now: a seeding renews it as it goes.
                    self.held.insert(brand, revision);
                    self.take_lapsed_one(brand, shared, writers);
                }
                Ok(None) => self.name_holder(brand, shared),
                Err(e) => {
                    let error = crate::error::causes(&e);
                    tracing::warn!(brand, error, "could not look at the brand's lease");
                }
            }
        }
    }

    /// Names the holder of `brand`'s lease, if another node holds it, to
    /// the brand's tills (their NOT_ACTIVE says where to go).
    fn name_holder(&self, brand: u32, shared: &Shared) {
        if let Some(holder) = self.leases.holder(brand) {
            let addr = holder.split_once(' ').map_or("", |(_, a)| a).to_string();
            let mut known = shared.active_elsewhere.write().expect("holders lock");
            known.insert(brand, addr);
        }
    }

    /// Serves `brand`, whose lapsed lease this node just took, or gives the
    /// lease up again if taking the brand over fails (its follower is then
    /// gone: the brand rests before it is followed again).
    fn take_lapsed_one(&mut self, brand: u32, shared: &Shared, writers: &TaskTracker) {
        match self.promote(brand, shared) {
            Ok(ledger) => {
                tracing::warn!(
                    brand,
                    seq = ledger.state.seq,
                    "took the brand over: serving it"
                );
                shared.serve_brand(ledger, writers);
            }
            Err(e) => {
                let error = crate::error::causes(&e);
                tracing::error!(brand, error, "could not take the brand over");
                self.give_up(brand);
                // A stream that is not this brand's chain stays so: it
                // rests. A passing failure (a publish, a leader election)
                // is tried again at the next look, or a failover would
                // wait out the rest.
                if lasting(&e) {
                    self.rest(brand);
                }
            }
        }
    }

    /// Gives up `brand`'s lease at once: this node's clock first (nothing
    /// more is appended), then the lease itself, deleted at the revision
    /// this node wrote (or left to lapse if the cluster does not answer
    /// within [`HANDOVER_PATIENCE`]). True if it was handed over.
    fn give_up(&mut self, brand: u32) -> bool {
        self.clock.lost(brand);
        let Some(revision) = self.held.remove(&brand) else {
            return false;
        };
        let released = self
            .leases
            .release_all(vec![(brand, revision)], HANDOVER_PATIENCE);
        released.is_ok_and(|r| r.iter().all(|(_, d)| d.is_ok()))
    }

    /// Leaves `brand` alone (not followed) for [`REFOLLOW_AFTER`]: following
    /// or taking it over just failed here (logged where it failed).
    fn rest(&mut self, brand: u32) {
        tracing::warn!(
            brand,
            retry_secs = REFOLLOW_AFTER.as_secs(),
            "the brand is not followed here for a while"
        );
        self.resting.insert(brand, Instant::now() + REFOLLOW_AFTER);
    }

    /// A brand refused at start (logged): its keys are known, so that its
    /// tills are told NOT_ACTIVE, and it rests before it is followed.
    fn refuse(&mut self, ledger: &BrandLedger, keys: &KeyIndex) {
        let brand = ledger.brand_id();
        keys.add_brand(&ledger.state);
        metrics::get()
            .records_of(brand)
            .set(ledger.state.seq as i64);
        self.rest(brand);
    }

    /// Stops `brand`'s follower and takes the brand over, every lease held
    /// renewed throughout (as [`Node::take_over`]): the follower first
    /// checks and commits what it had read (up to 256 messages, seconds of
    /// a burst of big commits), and only then is it joined.
    fn promote(&mut self, brand: u32, shared: &Shared) -> Result<BrandLedger, ReplicaError> {
        let f = self.followers.remove(&brand).expect("a followed brand");
        f.stop.cancel();
        let (nats, store) = (&self.nats, &self.store);
        // The brand taken may have halted here before (its lease given
        // up, its stopped writer not yet replaced): its new lease is
        // renewed all the same.
        let halted = |b| b != brand && halted_on(shared, b);
        renewing(&self.leases, &self.clock, &mut self.held, &halted, || {
            let joined = f.thread.join();
            let mut follower = joined.map_err(|_| ReplicaError::Panicked { brand })??;
            take_over_rounds(nats, store, &mut follower)?;
            Ok(follower.ledger)
        })
    }

    /// Follows brands created since start-up (by another node), and those
    /// whose following stopped here once they have rested: each recovered
    /// on its follower's thread, not here.
    fn follow_new(&mut self, shared: &Shared) {
        let brands = match self.nats.brands() {
            Ok(brands) => brands,
            Err(e) => {
                let error = crate::error::causes(&e);
                tracing::warn!(error, "listing the brands' streams failed");
                return;
            }
        };
        let now = Instant::now();
        self.resting.retain(|_, until| *until > now);
        for brand in brands {
            if self.held.contains_key(&brand)
                || self.followers.contains_key(&brand)
                || self.resting.contains_key(&brand)
            {
                continue;
            }
            let store: Arc<dyn LogStore> = self.store.clone();
            let (key, snapshots) = (self.server_key.clone(), self.snapshots.clone());
            self.spawn_follower(brand, &shared.keys, move || {
                let mode = Recovery::FromSnapshot(&snapshots);
                Ok(BrandLedger::recover_with(store, key, brand, mode)?)
            });
        }
    }
}
