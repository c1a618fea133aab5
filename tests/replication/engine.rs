//! What cardd relies on from JetStream, checked against the real server:
//! if an upgrade changed any of it, these fail before the daemon's tests.
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage as Publish, stream};

use crate::common::nats::NatsCluster;

/// A 3-replica file stream; the meta leader may still be settling right
/// after start-up, so creation is retried for a few seconds.
async fn smoke_stream(js: &jetstream::Context) -> stream::Stream {
    let config = stream::Config {
        name: "SMOKE".into(),
        subjects: vec!["smoke.1".into()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    for _ in 0..50 {
        match js.get_or_create_stream(config.clone()).await {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    js.get_or_create_stream(config)
        .await
        .expect("create the stream")
}

async fn publish(
    js: &jetstream::Context,
    id: &str,
    expected: Option<u64>,
) -> Result<jetstream::publish::PublishAck, String> {
    let mut msg = Publish::build()
        .payload(id.to_string().into())
        .message_id(id);
    if let Some(seq) = expected {
        msg = msg.expected_last_subject_sequence(seq);
    }
    let ack = js
        .send_publish("smoke.1", msg)
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_fences_deduplicates_and_survives_one_node() {
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    let js = crate::jetstream_of(&cluster).await;
    let s = smoke_stream(&js).await;
    assert_eq!(s.cached_info().config.num_replicas, 3);

    // A stream just made on a cluster just formed may answer "no stream
    // found" for a moment (the daemon's appends wait out the same, up to
    // 10 s): the first append waits too.
    let mut first = publish(&js, "a", Some(0)).await;
    for _ in 0..100 {
        match &first {
            Err(e) if !e.contains("wrong last sequence") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                first = publish(&js, "a", Some(0)).await;
            }
            _ => break,
        }
    }
    let first = first.expect("first append");
    assert_eq!((first.sequence, first.duplicate), (1, false));
    // A second writer that believes the subject is still empty is fenced.
    let fenced = publish(&js, "b", Some(0)).await.unwrap_err();
    assert!(fenced.contains("wrong last sequence"), "{fenced}");
    // A retried append of the same message is not doubled.
    let again = publish(&js, "a", Some(0)).await.expect("a retry");
    assert_eq!((again.sequence, again.duplicate), (1, true));

    // One node of three gone: the stream still takes appends (quorum 2).
    cluster.kill(0);
    let mut after = None;
    for _ in 0..50 {
        match publish(&js, "c", Some(1)).await {
            Ok(ack) => {
                after = Some(ack);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let after = after.expect("an append with one node down");
    assert_eq!((after.sequence, after.duplicate), (2, false));
    cluster.restart(0);
    let mut s = js.get_stream("SMOKE").await.expect("the stream");
    let info = s.info().await.expect("stream info");
    assert_eq!(info.state.messages, 2);
    assert_eq!(info.state.last_sequence, 2);
}
