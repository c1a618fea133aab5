//! A message deleted from a brand's stream below its newest (`nats stream
//! rmm`) is gone for good: following the brand, or catching it up, stops
//! at once with an error naming the message, instead of retrying forever;
//! a node starting with such a stream refuses that brand alone.
use std::sync::Arc;
use std::time::Duration;

use cardd::ledger::BrandLedger;
use cardd::replica::{self, follow, Follower, Nats, ReplicaError};
use cardd::storage::{DiskStore, LogStore, StoredBatch};
use tokio_util::sync::CancellationToken;

use crate::common::nats::NatsCluster;

/// A brand no other test uses.
const BRAND: u32 = 7;
/// How long a follower may take to give up on a missing message: far less
/// than the retries it used to make forever, or catching up's 30 s of
/// patience (`replica::NATS_PATIENCE`).
const GIVE_UP_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_deleted_below_the_newest_stops_following_with_an_error() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    // Three one-record commits (the bytes are never replayed: the reads
    // stop before them), then message 2 deleted.
    let js = crate::jetstream_of(&cluster).await;
    let batches: Vec<StoredBatch> = (1..=3u64)
        .map(|seq| StoredBatch {
            first_seq: seq,
            last_seq: seq,
            checkpoint: b"checkpoint".to_vec(),
            nodes: Vec::new(),
            records: vec![b"record".to_vec()],
        })
        .collect();
    crate::put_runs(&js, BRAND, &batches).await;
    let stream = js
        .get_stream(replica::stream_name(BRAND))
        .await
        .expect("the stream");
    assert!(stream.delete_message(2).await.expect("rmm"), "deleted");

    let dir = tempfile::tempdir().unwrap();
    let urls = cluster.urls();
    let (tx, rx) = std::sync::mpsc::channel();
    // Blocking calls (the connection's own runtime): on a thread, in this
    // runtime's context as the daemon's start-up is (the client spawns a
    // task as it connects).
    let runtime = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        let _context = runtime.enter();
        let nats = Nats::connect(&urls).expect("connect");
        let disk: Arc<dyn LogStore> = Arc::new(DiskStore::open(dir.path()).expect("a store"));
        let ledger = || {
            BrandLedger::recover(disk.clone(), cardd::testing::server_key(), BRAND)
                .expect("an empty ledger")
        };
        let caught = follow::catch_up(&nats, disk.as_ref(), &mut Follower::new(ledger()));
        let _ = tx.send(("catch_up", caught.map(|_| ())));
        let stop = CancellationToken::new();
        let followed = follow::follow_brand(
            &nats,
            disk.as_ref(),
            Follower::new(ledger()),
            stop,
            &|_| {},
            &|_| {},
        );
        let _ = tx.send(("follow_brand", followed.map(|_| ())));
    });
    for expected in ["catch_up", "follow_brand"] {
        let (what, result) = rx
            .recv_timeout(GIVE_UP_WITHIN)
            .unwrap_or_else(|_| panic!("{expected} still retrying a deleted message"));
        assert_eq!(what, expected);
        match result {
            Err(ReplicaError::Missing { brand, stream_seq }) => {
                assert_eq!((brand, stream_seq), (BRAND, 2), "{what}")
            }
            other => panic!("{what}: expected the missing message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_with_a_brand_whose_stream_lost_a_message_refused_alone() {
    let Some(crate::ReplicatedDemo {
        cluster,
        dir,
        urls,
        mut active,
        demo,
    }) = crate::replicated_demo()
    else {
        return;
    };
    let brand = demo.manifest.brand_id;
    active.kill9();
    let js = crate::jetstream_of(&cluster).await;
    let stream = js
        .get_stream(replica::stream_name(brand))
        .await
        .expect("the brand's stream");
    assert!(stream.delete_message(2).await.expect("rmm"), "deleted");

    // A new node, its log empty: its catch-up at start meets the hole.
    let data = dir.path().join("new");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(demo.data.join("server.key"), data.join("server.key")).unwrap();
    let started = std::time::Instant::now();
    let args = ["--standby", "--replicate", urls.as_str()];
    let (mut node, log) = crate::common::Daemon::start_logged(&data, &args, "info");
    assert!(
        started.elapsed() < GIVE_UP_WITHIN,
        "the start waited {:?} on a message that is gone",
        started.elapsed()
    );
    node.kill9();
    let log = log.join().expect("the daemon's log");
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("brand refused")
            && l.contains(&format!("brand={brand}"))
            && l.contains("message 2 of its stream is missing")),
        "an error line names the brand and the missing message:\n{log}"
    );
}
