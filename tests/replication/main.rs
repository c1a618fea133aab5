//! Replication on NATS JetStream (`cardd serve --replicate`, `--standby`;
//! docs/replication.md), on a 3-node cluster of real `nats-server`
//! processes on loopback ports (`common::nats`). Without a server binary
//! these tests skip, except under CI.
//!
//! - `engine`: the JetStream behaviour the design rests on (fencing by
//!   expected subject sequence, de-duplication by message id, a quorum
//!   that survives one node), checked on the server itself;
//! - `active`: `--replicate` on the serving node: every acknowledged commit
//!   on its brand's stream, byte for byte, and a second writer fencing it;
//! - `standby`: `--standby` follows into its own directory, checked, and
//!   exports the same bytes as the active;
//! - `failover`: the active killed, the standby takes the lapsed lease and
//!   serves; nothing acknowledged lost or doubled;
//! - `missing`: a message deleted below the stream's newest stops
//!   following and catching up at once, named;
//! - `seeding`: a take-over completes a stream holding a prefix of the
//!   local log before anything new, and refuses (that brand alone) a
//!   stream that is another chain; long seedings and catch-ups keep the
//!   other leases;
//! - `jepsen`: steady purchases from two tills through a kill -9, a pause
//!   past the lease and a lost NATS node.
#[path = "../common/mod.rs"]
mod common;

mod active;
mod engine;
mod failover;
mod jepsen;
mod missing;
mod seeding;
mod standby;

use async_nats::jetstream;
use cardd::replica::{self, Run};
use cardd::storage::StoredBatch;

use common::nats::NatsCluster;

/// A JetStream client of the test's cluster.
pub async fn jetstream_of(cluster: &NatsCluster) -> jetstream::Context {
    let urls: Vec<String> = cluster.urls().split(',').map(str::to_string).collect();
    let client = async_nats::connect(urls)
        .await
        .expect("connect to the cluster");
    jetstream::new(client)
}

/// A 3-node cluster, a temporary directory and the demo daemon serving
/// with `--replicate` in it (the start of most of these tests).
pub struct ReplicatedDemo {
    pub cluster: NatsCluster,
    pub dir: tempfile::TempDir,
    pub urls: String,
    pub active: common::Daemon,
    pub demo: common::Demo,
}

/// [`ReplicatedDemo`]; None where there is no `nats-server` (outside CI).
pub fn replicated_demo() -> Option<ReplicatedDemo> {
    let cluster = NatsCluster::start(3)?;
    let dir = tempfile::tempdir().unwrap();
    let urls = cluster.urls();
    let (active, demo) = common::Daemon::demo_with(dir.path(), &["--replicate", &urls]);
    Some(ReplicatedDemo {
        cluster,
        dir,
        urls,
        active,
        demo,
    })
}

/// The cluster's lease bucket (`replica::lease::LEASE_BUCKET`), asked
/// again for up to 30 s: a cluster busy with another test's nodes can
/// let one request time out.
pub async fn lease_bucket(cluster: &NatsCluster) -> jetstream::kv::Store {
    let js = jetstream_of(cluster).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match js.get_key_value(replica::lease::LEASE_BUCKET).await {
            Ok(kv) => return kv,
            Err(e) if std::time::Instant::now() > deadline => panic!("the lease bucket: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

/// `brand`'s newest lease entry as (operation, value), asked again for up
/// to 30 s like [`lease_bucket`].
pub async fn lease_entry(
    kv: &jetstream::kv::Store,
    brand: u32,
) -> Option<(jetstream::kv::Operation, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match kv.entry(format!("brand-{brand}")).await {
            Ok(entry) => {
                return entry.map(|e| (e.operation, String::from_utf8_lossy(&e.value).into_owned()))
            }
            Err(e) if std::time::Instant::now() > deadline => panic!("the lease: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

/// Appends `batches` to `brand`'s stream as a writer would (one run per
/// batch), creating the stream as cardd does. A stream just created answers
/// "no responders" (`StreamNotFound`) until its replicas elect a leader, so
/// both steps are tried again for up to 30 s, as cardd's own
/// `replica::patiently` does; "no responders" means nothing was stored, so
/// the retry cannot append twice. Once the first run is stored the stream
/// has a leader: the rest are sent without waiting for each answer (in
/// order, on the one connection), so a long brand lands on its stream
/// faster than a follower can read it.
pub async fn put_runs(js: &jetstream::Context, brand: u32, batches: &[StoredBatch]) {
    use async_nats::jetstream::context::PublishErrorKind;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(250));
    while let Err(e) = replica::brand_stream(js, brand).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the brand's stream: {e}"
        );
        pause().await;
    }
    let Some((first, rest)) = batches.split_first() else {
        return;
    };
    loop {
        let sent = js.send_publish(replica::subject(brand), run_message(first));
        match sent.await.expect("sent").await {
            Ok(_) => break,
            Err(e)
                if e.kind() == PublishErrorKind::StreamNotFound
                    && std::time::Instant::now() < deadline =>
            {
                pause().await
            }
            Err(e) => panic!("the append: {e}"),
        }
    }
    for window in rest.chunks(256) {
        let mut acks = Vec::with_capacity(window.len());
        for batch in window {
            let sent = js.send_publish(replica::subject(brand), run_message(batch));
            acks.push(sent.await.expect("sent"));
        }
        for ack in acks {
            ack.await.expect("the append");
        }
    }
}

/// `batch` as a writer's stream message (its first record's seq in a
/// header).
fn run_message(batch: &StoredBatch) -> async_nats::jetstream::message::PublishMessage {
    let first = batch.first_seq.to_string();
    async_nats::jetstream::message::PublishMessage::build()
        .payload(batch.encode().into())
        .header(replica::FIRST_SEQ_HEADER, first.as_str())
}

/// Every run on `brand`'s stream, in stream order.
pub async fn runs_of(js: &jetstream::Context, brand: u32) -> Vec<StoredBatch> {
    let mut stream = js
        .get_stream(replica::stream_name(brand))
        .await
        .expect("the brand's stream");
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut runs = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.expect("a message");
        let run = Run::decode(brand, seq, Some(&m.headers), &m.payload).expect("a cardd run");
        runs.push(run.batch);
    }
    runs
}
