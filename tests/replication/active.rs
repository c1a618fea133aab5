//! `cardd serve --replicate` on the serving node: each commit is on its
//! brand's stream before any of its answers, and a second writer on the
//! stream fences the node.
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use cardd::pb::ErrorCode;
use cardd::replica;
use cardd::storage::{DiskStore, LogStore, StoredBatch};

use crate::common::nats::NatsCluster;
use crate::common::{ok, purchase, refused, Daemon};

/// Records of the demo brand before a test's first request.
const DEMO_RECORDS: u64 = 17;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_are_on_the_stream_and_a_second_writer_fences_the_node() {
    let Some(crate::ReplicatedDemo {
        cluster,
        dir,
        urls: _,
        active: mut d,
        demo,
    }) = crate::replicated_demo()
    else {
        return;
    };
    let brand = demo.manifest.brand_id;
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    for txn in 100..105 {
        ok(&mut t, txn, purchase(&card, 1_000)).await;
    }
    let js = crate::jetstream_of(&cluster).await;
    let runs = crate::runs_of(&js, brand).await;
    let last = runs.last().expect("runs on the stream");
    assert_eq!(
        last.last_seq,
        DEMO_RECORDS + 5,
        "every acknowledged record replicated"
    );
    assert!(!last.checkpoint.is_empty(), "the newest commit is complete");

    // Another node appends to the brand's stream: this one is fenced, and
    // the purchase it was committing is refused, not acknowledged.
    let tail = runs.len() as u64;
    let foreign = StoredBatch {
        first_seq: DEMO_RECORDS + 6,
        last_seq: DEMO_RECORDS + 6,
        checkpoint: Vec::new(),
        nodes: Vec::new(),
        records: vec![b"not a record".to_vec()],
    };
    let msg = PublishMessage::build()
        .payload(foreign.encode().into())
        .header(
            replica::FIRST_SEQ_HEADER,
            (DEMO_RECORDS + 6).to_string().as_str(),
        )
        .expected_last_subject_sequence(tail);
    let ack = js.send_publish(replica::subject(brand), msg).await.unwrap();
    ack.await.expect("the other writer's append");
    let code = refused(&mut t, 105, purchase(&card, 1_000)).await;
    assert_eq!(code, ErrorCode::StorageFailure);

    // The local log holds exactly what was acknowledged, byte for byte as
    // on the stream.
    d.kill9();
    let store = DiskStore::open_existing(&dir.path().join("data")).unwrap();
    let local: Vec<Vec<u8>> = store.scan(brand, 1).map(|r| r.unwrap().1).collect();
    let replicated: Vec<Vec<u8>> = runs.iter().flat_map(|r| r.records.clone()).collect();
    assert_eq!(local.len() as u64, DEMO_RECORDS + 5);
    assert_eq!(local, replicated);
    let checkpoints: Vec<Vec<u8>> = store.checkpoints(brand).map(|c| c.unwrap()).collect();
    let on_stream: Vec<Vec<u8>> = runs
        .iter()
        .filter(|r| !r.checkpoint.is_empty())
        .map(|r| r.checkpoint.clone())
        .collect();
    assert_eq!(checkpoints, on_stream, "one stream commit per local commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_ledger_is_put_on_its_stream_when_replication_starts() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let urls = cluster.urls();
    // A ledger that began on a single node.
    let (mut single, demo) = Daemon::demo(dir.path());
    let brand = demo.manifest.brand_id;
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(single.addr, 0).await;
    for txn in 100..103 {
        ok(&mut t, txn, purchase(&card, 1_000)).await;
    }
    drop(t);
    single.kill9();

    // Restarted with replication: its history goes onto the stream first.
    let mut active = Daemon::start(&demo.data, &["--replicate", &urls]);
    let mut t = demo.terminal(active.addr, 0).await;
    for txn in 103..105 {
        ok(&mut t, txn, purchase(&card, 1_000)).await;
    }
    let (mut standby, http) =
        crate::standby::start_standby(&demo.data, &dir.path().join("standby"), &urls);
    let end = DEMO_RECORDS + 5;
    assert!(
        crate::common::wait_until(|| crate::standby::records_on(http, brand) == Some(end)),
        "the standby followed the seeded history and what came after"
    );
    active.kill9();
    standby.kill9();
    // Served once with --replicate, never again without it: the standby
    // would take the lapsed lease while this node served the brand alone.
    for data in [demo.data.clone(), dir.path().join("standby")] {
        let mut cmd = std::process::Command::new(crate::common::cardd_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data);
        let out = crate::common::run::run_bounded(&mut cmd, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "served without --replicate");
        assert!(stderr.contains("data directory is replicated"), "{stderr}");
    }
    let (a, s) = (dir.path().join("a.export"), dir.path().join("s.export"));
    let report = crate::common::run::export_and_verify(&demo.data, brand, &a);
    crate::common::run::export_and_verify(&dir.path().join("standby"), brand, &s);
    assert_eq!(report["records"], end, "{report}");
    assert!(
        crate::standby::export_parts(&a).1 == crate::standby::export_parts(&s).1,
        "the standby holds the single node's history, commit for commit"
    );
}
