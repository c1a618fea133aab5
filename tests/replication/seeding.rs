//! A node takes a brand over only if the brand's stream ends where its
//! local log does: a stream holding a prefix of the local log (a seeding
//! that stopped part-way: a publish timeout, a lease lapse, a crash) is
//! completed before anything new is written, and a stream that is another
//! chain is refused, for that brand alone. A long seeding, a take-over of
//! a long brand far behind, and a graceful stop while a follower is busy
//! keep the leases of the brands the node already serves (and the stop
//! hands them over).
use std::path::Path;

use async_nats::jetstream;
use cardd::crypto::read_key_file;
use cardd::storage::{DiskStore, LogStore, StoredBatch};

use crate::common::nats::NatsCluster;
use crate::common::{ok, purchase, Daemon, Demo};

/// How long a node that refused a brand is watched for another try at it
/// (it looks at the leases every 0.5 s).
const RESTING_SEEN_FOR: std::time::Duration = std::time::Duration::from_secs(3);

/// One local commit: its records (seq, bytes) and its checkpoint.
type Commit = (Vec<(u64, Vec<u8>)>, Vec<u8>);

/// The demo brand's commits in a stopped daemon's directory, oldest first.
fn local_commits(data: &Path, brand: u32) -> Vec<Commit> {
    use prost::Message;
    let store = DiskStore::open_existing(data).expect("the local log");
    let mut records = store.scan(brand, 1).map(|r| r.expect("a record"));
    let mut commits = Vec::new();
    for checkpoint in store.checkpoints(brand) {
        let checkpoint = checkpoint.expect("a checkpoint");
        let size = cardd::pb::Checkpoint::decode(checkpoint.as_slice())
            .expect("a checkpoint")
            .tree_size;
        let mut batch = Vec::new();
        while batch
            .last()
            .is_none_or(|(seq, _): &(u64, Vec<u8>)| *seq < size)
        {
            batch.push(records.next().expect("the checkpoint's records"));
        }
        commits.push((batch, checkpoint));
    }
    commits
}

/// Appends `commits` to `brand`'s stream as a writer would (one run per
/// commit), creating the stream as cardd does.
async fn put_on_stream(js: &jetstream::Context, brand: u32, commits: &[Commit]) {
    let batches: Vec<StoredBatch> = commits
        .iter()
        .map(|(records, checkpoint)| StoredBatch {
            first_seq: records[0].0,
            last_seq: records[records.len() - 1].0,
            checkpoint: checkpoint.clone(),
            nodes: Vec::new(),
            records: records.iter().map(|(_, r)| r.clone()).collect(),
        })
        .collect();
    crate::put_runs(js, brand, &batches).await;
}

/// A demo ledger made on a single node, a few purchases in commits of
/// their own, the daemon stopped: (its demo, its commits).
async fn single_node_ledger(dir: &Path) -> (Demo, Vec<Commit>) {
    let (mut single, demo) = Daemon::demo(dir);
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(single.addr, 0).await;
    for txn in 100..104 {
        ok(&mut t, txn, purchase(&card, 1_000)).await;
    }
    drop(t);
    single.kill9();
    let commits = local_commits(&demo.data, demo.manifest.brand_id);
    (demo, commits)
}

/// Every record on `brand`'s stream, and the checkpoints of its commits.
async fn on_stream(js: &jetstream::Context, brand: u32) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let runs = crate::runs_of(js, brand).await;
    let records = runs.iter().flat_map(|r| r.records.clone()).collect();
    let checkpoints = runs
        .iter()
        .filter(|r| !r.checkpoint.is_empty())
        .map(|r| r.checkpoint.clone())
        .collect();
    (records, checkpoints)
}

fn records_and_checkpoints(commits: &[Commit]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let records = commits
        .iter()
        .flat_map(|(rs, _)| rs.iter().map(|(_, r)| r.clone()))
        .collect();
    let checkpoints = commits.iter().map(|(_, c)| c.clone()).collect();
    (records, checkpoints)
}

/// Asserts two (records, checkpoints) lists are the same bytes, saying
/// how many each holds (not the bytes) when they are not.
#[track_caller]
fn same_bytes(got: (Vec<Vec<u8>>, Vec<Vec<u8>>), want: (Vec<Vec<u8>>, Vec<Vec<u8>>), what: &str) {
    assert!(
        got == want,
        "{what}: got {} records and {} checkpoints, want {} and {} (or other bytes)",
        got.0.len(),
        got.1.len(),
        want.0.len(),
        want.1.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holding_a_prefix_of_the_local_log_is_completed_before_anything_new() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (demo, commits) = single_node_ledger(dir.path()).await;
    let brand = demo.manifest.brand_id;
    assert!(commits.len() > 3, "commits: {}", commits.len());
    // A seeding that stopped part-way: the stream holds the first commits.
    let js = crate::jetstream_of(&cluster).await;
    put_on_stream(&js, brand, &commits[..commits.len() - 3]).await;

    let mut active = Daemon::start(&demo.data, &["--replicate", &cluster.urls()]);
    same_bytes(
        on_stream(&js, brand).await,
        records_and_checkpoints(&commits),
        "the take-over put the rest of the local log on the stream, commit for commit",
    );
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(active.addr, 0).await;
    ok(&mut t, 200, purchase(&card, 1_000)).await;
    drop(t);
    active.kill9();
    let local = local_commits(&demo.data, brand);
    assert_eq!(local.len(), commits.len() + 1, "one new commit");
    same_bytes(
        on_stream(&js, brand).await,
        records_and_checkpoints(&local),
        "the new record follows the whole local log, on the stream as on disk",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_another_chain_is_refused_and_the_other_brands_start() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (demo, commits) = single_node_ledger(dir.path()).await;
    let brand = demo.manifest.brand_id;
    // A second brand, created offline: nothing wrong with it.
    let owner2_key = dir.path().join("owner2.key");
    let second = crate::common::run::brand_create_ok(&demo.data, "Second", &owner2_key);
    assert_eq!(second, 2);
    // The demo brand's stream holds its first commits, then a record this
    // directory does not hold where its own is: another chain, shorter.
    let mut other = commits[..commits.len() - 2].to_vec();
    let last = other.last_mut().expect("a commit");
    let bytes = &mut last.0.last_mut().expect("a record").1;
    *bytes.last_mut().expect("a byte") ^= 1;
    let js = crate::jetstream_of(&cluster).await;
    put_on_stream(&js, brand, &other).await;
    let before = on_stream(&js, brand).await;

    let (mut node, log) =
        Daemon::start_logged(&demo.data, &["--replicate", &cluster.urls()], "info");
    // The good brand is served: its owner signs on, its stream seeded.
    let owner2 = read_key_file(&owner2_key).expect("owner key");
    crate::common::raw::sign_on(node.addr, &owner2).await;
    let (records2, _) = on_stream(&js, 2).await;
    assert_eq!(records2.len(), 1, "brand 2's one record seeded");
    // The diverged one is not: its tills are told NOT_ACTIVE, and nothing
    // was added to its stream (no seeding after another chain, no fence).
    let till = read_key_file(&demo.terminal_key_path(0)).expect("till key");
    let mut f = crate::common::raw::send_sign_on_proof(node.addr, &till).await;
    match crate::common::raw::raw_recv(&mut f).await.body {
        Some(cardd::pb::server_message::Body::Error(e)) => {
            assert_eq!(e.code, cardd::pb::ErrorCode::NotActive as i32, "{e:?}")
        }
        other => panic!("expected NOT_ACTIVE, got {other:?}"),
    }
    same_bytes(on_stream(&js, brand).await, before, "the stream untouched");
    let runs = crate::runs_of(&js, brand).await;
    assert_eq!(runs.len(), other.len(), "no fence on the diverged stream");
    // The refused brand rests: not taken over again and again at every
    // look at the leases (each 0.5 s), each failing and logged.
    tokio::time::sleep(RESTING_SEEN_FOR).await;
    node.kill9();
    let log = log.join().expect("the daemon's log");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("brand=1"))
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains("brand refused"),
        "one error line, naming the refused brand:\n{log}"
    );
    // Its local log is as it was.
    let local = local_commits(&demo.data, brand);
    same_bytes(
        records_and_checkpoints(&local),
        records_and_checkpoints(&commits),
        "the local log unchanged",
    );
}

/// Commits (one record each, each its own message on the stream) of the
/// brand whose seeding must outlast a lease held by the node (3 s TTL).
const LONG_SEED_COMMITS: u64 = 3_000;
/// How long that seeding must take for the test to show anything: past
/// the lease's TTL, with a margin.
const LONGER_THAN_A_LEASE: std::time::Duration = std::time::Duration::from_millis(3_500);

/// A data directory under the fixture's server key: brand 1 as
/// `testing::provision` makes it (its card returned), then brand 2 with
/// [`LONG_SEED_COMMITS`] top-ups, each a commit, all made offline.
fn a_short_brand_then_a_long_one(data: &Path) -> String {
    let (store, card) = a_short_brand(data);
    a_long_brand(store);
    card
}

/// A data directory under the fixture's server key holding brand 1 as
/// `testing::provision` makes it: its store and card.
fn a_short_brand(data: &Path) -> (std::sync::Arc<dyn LogStore>, String) {
    use cardd::testing;
    std::fs::create_dir_all(data).unwrap();
    let key_path = cardd::server::server_key_path(data);
    cardd::crypto::write_key_file(&key_path, &testing::server_key()).unwrap();
    let store: std::sync::Arc<dyn LogStore> = std::sync::Arc::new(DiskStore::open(data).unwrap());
    let (_, card) = testing::provision(store.clone(), "Served", 10_000);
    (store, card)
}

/// Brand 2 in `store`, under the fixture's server key: its setup, then
/// [`LONG_SEED_COMMITS`] top-ups, each a commit.
fn a_long_brand(store: std::sync::Arc<dyn LogStore>) {
    brand_2_of(store, LONG_SEED_COMMITS, 1);
}

/// Brand 2 in `store`, under the fixture's server key: its setup, then
/// `commits` commits of `per_commit` top-ups each.
fn brand_2_of(store: std::sync::Arc<dyn LogStore>, commits: u64, per_commit: u64) {
    use cardd::ledger::{BrandLedger, Submission};
    use cardd::state::Principal;
    use cardd::testing;
    let (owner, till) = (testing::key(20), testing::key(21));
    let create = testing::create_brand("Seeded", &owner.verifying_key().to_bytes());
    let mut ledger = BrandLedger::create(store.clone(), testing::server_key(), 2, create).unwrap();
    let card2 = cardd::card_number::generate(2);
    let till_public = till.verifying_key().to_bytes();
    let setup = [
        testing::create_store("s"),
        testing::enroll_terminal(1, &till_public, ""),
        testing::issue_card(&card2),
    ];
    for (i, op) in setup.into_iter().enumerate() {
        let request = testing::request_as(2, i as u64 + 1, "", op);
        let sub = Submission::signed(Principal::Owner, &owner, request);
        ledger.submit_now(sub).unwrap().unwrap();
    }
    for commit in 0..commits {
        let top_ups: Vec<Submission> = (1..=per_commit)
            .map(|i| {
                let txn = commit * per_commit + i;
                let request = testing::request_as(2, txn, "", testing::top_up(&card2, 1));
                Submission::signed(Principal::Terminal(1), &till, request)
            })
            .collect();
        let batch = ledger.apply_batch(&top_ups);
        assert!(
            batch.answers.iter().all(|a| a.is_ok()),
            "every top-up applied"
        );
        BrandLedger::commit(store.as_ref(), 2, &batch.written, &ledger.checkpoint()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_seeding_keeps_the_lease_of_a_brand_already_served() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let card = a_short_brand_then_a_long_one(&data);
    // Brand 1 is taken and served first; brand 2's seeding follows, before
    // the lease loop's first look.
    let started = std::time::Instant::now();
    let urls = cluster.urls();
    let (mut node, log) = Daemon::start_logged(&data, &["--replicate", &urls], "info");
    let seeding = started.elapsed();
    // The lease loop's first looks: a lease that lapsed meanwhile is lost
    // (the brand stopped, then taken again half a second later).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let mut t = crate::common::connect(node.addr, cardd::testing::terminal_key()).await;
    ok(&mut t, 100, purchase(&card, 100)).await;
    node.kill9();
    let log = log.join().expect("the daemon's log");
    assert!(
        seeding > LONGER_THAN_A_LEASE,
        "the seeding took {seeding:?}: too short to test anything (raise LONG_SEED_COMMITS)"
    );
    assert!(
        !log.contains("lease lost") && !log.contains("brand halted"),
        "brand 1 kept its lease through brand 2's seeding:\n{log}"
    );
}

/// A node serving brand 1 finds brand 2 created elsewhere, its stream
/// long, and takes its lease once its writer hands it over: the take-over
/// waits until its follower has read the stream to the end, so the lease
/// loop (which renews brand 1's lease) never reads thousands of commits
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_of_a_brand_far_behind_keeps_the_lease_of_a_brand_already_served() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (elsewhere, data) = (dir.path().join("elsewhere"), dir.path().join("data"));
    let (store, _) = a_short_brand(&elsewhere);
    a_long_brand(store);
    let long = local_commits(&elsewhere, 2);
    let (_, card) = a_short_brand(&data);
    let urls = cluster.urls();
    let (node, log) = Daemon::start_logged(&data, &["--replicate", &urls], "info");
    // Brand 2 is written elsewhere (its lease held there), far ahead of
    // this node's (empty) local log of it, then its writer stops.
    let holder = tokio::task::block_in_place(|| LeaseHolder::hold(&urls, 2));
    let js = crate::jetstream_of(&cluster).await;
    put_on_stream(&js, 2, &long).await;
    tokio::task::block_in_place(|| holder.release());
    // Taken over: the node's fence ends the stream.
    let log = brand_1_kept_through_the_take_over(&js, (node, log), &card, long.len()).await;
    // And the take-over itself read next to nothing: the lease loop (every
    // other brand's take-overs, its looks) did not wait on thousands of
    // commits, renewed or not.
    let read = read_by_take_overs(&log, 2);
    assert!(
        read < LONG_SEED_COMMITS / 3,
        "the take-over read {read} records of brand 2 itself:\n{log}"
    );
}

/// Waits for brand 2's take-over (its fence after `runs` messages), then
/// checks that brand 1, served all along, kept its lease: a purchase
/// succeeds and the node's log holds no lost lease or halted brand.
/// Returns that log.
async fn brand_1_kept_through_the_take_over(
    js: &jetstream::Context,
    (mut node, log): (Daemon, std::thread::JoinHandle<String>),
    card: &str,
    runs: usize,
) -> String {
    until("brand 2 taken over", || fenced_after(js, 2, runs)).await;
    // A lease that lapsed during the take-over is lost at the next looks.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let mut t = crate::common::connect(node.addr, cardd::testing::terminal_key()).await;
    ok(&mut t, 100, purchase(card, 100)).await;
    node.kill9();
    let log = log.join().expect("the daemon's log");
    assert!(
        !log.contains("lease lost") && !log.contains("brand halted"),
        "brand 1 kept its lease through brand 2's take-over:\n{log}"
    );
    log
}

/// The records of `brand` a node's catch-ups read (its log's "caught up"
/// lines): at a take-over, what the lease loop read itself.
fn read_by_take_overs(log: &str, brand: u32) -> u64 {
    let brand = format!("brand={brand} ");
    let caught = |l: &str| {
        l.split("caught=")
            .nth(1)?
            .split(' ')
            .next()?
            .parse::<u64>()
            .ok()
    };
    log.lines()
        .filter(|l| l.contains("caught up from the replicated log") && l.contains(&brand))
        .filter_map(caught)
        .sum()
}

/// How long a node may take to read brand 2's long stream and take its
/// free lease (a loaded 2-core machine reads a few thousand commits in
/// seconds).
const TAKEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether `brand`'s stream holds a fence after its first `runs` messages.
async fn fenced_after(js: &jetstream::Context, brand: u32, runs: usize) -> bool {
    let Ok(mut stream) = js.get_stream(cardd::replica::stream_name(brand)).await else {
        return false;
    };
    let last = match stream.info().await {
        Ok(info) => info.state.last_sequence,
        Err(_) => return false,
    };
    if last <= runs as u64 {
        return false;
    }
    let newest = stream.get_raw_message(last).await;
    newest.is_ok_and(|m| m.headers.get(cardd::replica::FENCE_HEADER).is_some())
}

/// `brand`'s lease held by the test itself (as another node would), renewed
/// on a thread of its own until [`LeaseHolder::release`] hands it over.
struct LeaseHolder {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl LeaseHolder {
    /// Takes `brand`'s lease on `urls`' cluster (free: no node has started).
    fn hold(urls: &str, brand: u32) -> LeaseHolder {
        use cardd::replica::{lease::RENEW_EVERY, Leases, Nats};
        let nats = std::sync::Arc::new(Nats::connect(urls).expect("connect"));
        let leases = Leases::open(nats, "the-test 127.0.0.1:9".into()).expect("the bucket");
        let mut revision = cardd::replica::patiently(|| leases.take(brand))
            .expect("the lease bucket")
            .expect("a free lease");
        let (release, released) = std::sync::mpsc::channel();
        // A renewal or the handover that fails on a busy cluster is left
        // to the next tick, or to the lease's TTL.
        let thread = std::thread::spawn(move || {
            while released.recv_timeout(RENEW_EVERY).is_err() {
                revision = leases.renew(brand, revision).unwrap_or(revision);
            }
            let _ = leases.release_all(vec![(brand, revision)], LONGER_THAN_A_LEASE);
        });
        LeaseHolder { release, thread }
    }

    /// Hands the lease over (deleted: the node takes it at its next look).
    fn release(self) {
        self.release.send(()).expect("the holder's thread");
        self.thread.join().expect("the holder's thread");
    }
}

/// `brand`'s lease entry's revision, if a node holds it.
async fn lease_revision(kv: &jetstream::kv::Store, brand: u32) -> Option<u64> {
    let entry = kv.entry(format!("brand-{brand}")).await.expect("the lease");
    entry
        .filter(|e| e.operation == jetstream::kv::Operation::Put)
        .map(|e| e.revision)
}

/// Polls `done` every 100 ms for up to [`TAKEN_WITHIN`], failing with
/// `what` after.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + TAKEN_WITHIN;
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A brand that stops on the node while another brand is seeded (its
/// commit fenced by another writer) is not renewed by the seeding: a
/// standby may take it at once, instead of after the whole seeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brand_halted_during_a_seeding_is_not_renewed_by_it() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let card = a_short_brand_then_a_long_one(&data);
    let long = local_commits(&data, 2).len();
    let urls = cluster.urls();
    // Brand 2 is held elsewhere while the standby takes brand 1.
    let holder = tokio::task::block_in_place(|| LeaseHolder::hold(&urls, 2));
    let (mut node, _log) =
        Daemon::start_logged(&data, &["--standby", "--replicate", &urls], "info");
    let js = crate::jetstream_of(&cluster).await;
    until("brand 1 taken over", || fenced_after(&js, 1, 5)).await;
    let mut t = crate::common::connect(node.addr, cardd::testing::terminal_key()).await;
    ok(&mut t, 100, purchase(&card, 100)).await;
    tokio::task::block_in_place(|| holder.release());
    let kv = crate::lease_bucket(&cluster).await;
    let me = node.addr.to_string();
    until("brand 2 taken (its seeding under way)", || async {
        let lease = crate::lease_entry(&kv, 2).await;
        lease.is_some_and(|(_, value)| value.ends_with(&me))
    })
    .await;
    // Another writer appends to brand 1's stream: its next commit is
    // refused and the brand stops on this node.
    let foreign = StoredBatch {
        first_seq: 7,
        last_seq: 7,
        checkpoint: Vec::new(),
        nodes: Vec::new(),
        records: vec![b"not a record".to_vec()],
    };
    crate::put_runs(&js, 1, &[foreign]).await;
    let code = crate::common::refused(&mut t, 101, purchase(&card, 100)).await;
    assert_eq!(code, cardd::pb::ErrorCode::StorageFailure);
    // A renewal already under way when it stopped may land: the revision
    // is taken once it has held still for two renewal periods.
    let mut stopped_at = lease_revision(&kv, 1).await;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
        let now = lease_revision(&kv, 1).await;
        if now == stopped_at {
            break;
        }
        stopped_at = now;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let later = lease_revision(&kv, 1).await;
    let seeding = !fenced_after(&js, 2, long).await;
    node.kill9();
    assert!(
        seeding,
        "brand 2's seeding ended too soon to test anything (raise LONG_SEED_COMMITS)"
    );
    // No newer revision: a lease no longer renewed may also have aged out
    // of the bucket by now (its `max_age`), which a renewed one never does.
    assert!(
        later.is_none() || later == stopped_at,
        "brand 1's lease was renewed after the brand stopped: {stopped_at:?}, then {later:?}"
    );
}

/// Commits of the brand a stopping node is still following, and records
/// in each: a follower told to stop still checks and commits what it had
/// read (up to 256 messages), seconds of work that a stop must not wait
/// for before it hands its leases over.
const BUSY_COMMITS: u64 = 400;
const BUSY_RECORDS_PER_COMMIT: u64 = 100;

/// A graceful stop while a follower is busy (reading a long stream, as
/// one recovering a big brand is) hands the served brand's lease over: it
/// is renewed through the stop and deleted at its end, not left to lapse
/// while the stop waits for the follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_leases_over_without_waiting_for_a_busy_follower() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (elsewhere, data) = (dir.path().join("elsewhere"), dir.path().join("data"));
    let (store, _) = a_short_brand(&elsewhere);
    brand_2_of(store, BUSY_COMMITS, BUSY_RECORDS_PER_COMMIT);
    let busy = local_commits(&elsewhere, 2);
    a_short_brand(&data);
    let urls = cluster.urls();
    let http = crate::common::http::free_addr().to_string();
    let args = ["--replicate", &urls, "--http-listen", &http];
    let (mut node, log) = Daemon::start_logged(&data, &args, "info");
    let js = crate::jetstream_of(&cluster).await;
    put_on_stream(&js, 2, &busy).await;
    let http = http.parse().expect("an address");
    // A few of its big commits taken: its reader is ahead by then, the
    // follower's queue full.
    let under_way = 4 + 5 * BUSY_RECORDS_PER_COMMIT;
    until("brand 2 followed", || async {
        crate::standby::records_on(http, 2).is_some_and(|n| n >= under_way)
    })
    .await;
    node.signal(libc::SIGTERM);
    let stopped = tokio::task::block_in_place(|| node.wait_exit(TAKEN_WITHIN));
    assert!(
        stopped.is_some_and(|s| s.success()),
        "the node stopped cleanly"
    );
    // Told by the node's log, not the bucket: the delete marker a handover
    // leaves ages out of the bucket (its `max_age`) while the stop waits.
    let log = log.join().expect("the daemon's log");
    assert!(
        log.lines()
            .any(|l| l.contains("lease handed over") && l.ends_with("brand=1")),
        "brand 1's lease was not handed over at the stop:\n{log}"
    );
}

/// A follower caught up, then handed a burst of big commits just before
/// its brand's lease is handed over: it is not taken over before it has
/// read the burst (the lease loop would read it), and the leases of the
/// brands already served are kept throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_waiting_for_its_busy_follower_keeps_the_other_leases() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (elsewhere, data) = (dir.path().join("elsewhere"), dir.path().join("data"));
    let (store, _) = a_short_brand(&elsewhere);
    brand_2_of(store, BUSY_COMMITS, BUSY_RECORDS_PER_COMMIT);
    let busy = local_commits(&elsewhere, 2);
    let (_, card) = a_short_brand(&data);
    let urls = cluster.urls();
    // Brand 2 begins elsewhere: its setup on the stream, its lease held.
    let js = crate::jetstream_of(&cluster).await;
    let (setup, burst) = busy.split_at(4);
    put_on_stream(&js, 2, setup).await;
    let holder = tokio::task::block_in_place(|| LeaseHolder::hold(&urls, 2));
    let (node, log) = Daemon::start_logged(&data, &["--replicate", &urls], "info");
    // Its writer appends a burst and stops, handing the lease over.
    put_on_stream(&js, 2, burst).await;
    tokio::task::block_in_place(|| holder.release());
    let log = brand_1_kept_through_the_take_over(&js, (node, log), &card, busy.len()).await;
    // The burst was read by the follower, not by the take-over.
    let read = read_by_take_overs(&log, 2);
    assert!(
        read < BUSY_RECORDS_PER_COMMIT,
        "the take-over read {read} records of brand 2 itself:\n{log}"
    );
}
