//! The NATS connection and the runtime it lives on.
//!
//! The client runs on a one-thread tokio runtime of its own: a brand's
//! commit thread (a plain thread) hands it an append and blocks until the
//! acknowledgement, and start-up (on the daemon's runtime) can wait for a
//! stream the same way without nesting runtimes.
use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::{stream_name, subject, ReplicaError, REPLICAS};

/// How long connecting, and each JetStream request, may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);
/// Room left in a message for its headers: a run's bytes stay below the
/// server's `max_payload` minus this.
const HEADER_ROOM: usize = 4096;

/// A connection to the NATS cluster named by `--replicate`.
pub struct Nats {
    runtime: Option<tokio::runtime::Runtime>,
    js: jetstream::Context,
    /// The largest run (record bytes) one message may carry.
    pub max_run_bytes: usize,
    urls: String,
}

impl Nats {
    /// Connects to the first server of `urls` (comma-separated) that
    /// answers; the client then follows the cluster on its own.
    pub fn connect(urls: &str) -> Result<Nats, ReplicaError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("replica")
            .enable_all()
            .build()
            .map_err(ReplicaError::Runtime)?;
        let list: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        let connecting = async move {
            async_nats::ConnectOptions::new()
                .name("cardd")
                .connection_timeout(NATS_TIMEOUT)
                .connect(list)
                .await
        };
        let client = on(&runtime, connecting)?.map_err(|e| ReplicaError::Connect {
            urls: urls.to_string(),
            source: Box::new(e),
        })?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::ContextBuilder::new()
            .timeout(NATS_TIMEOUT)
            .build(client);
        Ok(Nats {
            runtime: Some(runtime),
            js,
            max_run_bytes: max_payload.saturating_sub(HEADER_ROOM).max(HEADER_ROOM),
            urls: urls.to_string(),
        })
    }

    /// The `--replicate` list.
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// The JetStream context (cheap to clone into a task).
    pub fn jetstream(&self) -> jetstream::Context {
        self.js.clone()
    }

    /// Runs `work` on the connection's runtime and waits for it. Never
    /// call it from a task of that runtime (it has one thread).
    pub fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, ReplicaError> {
        on(self.runtime.as_ref().expect("runtime until drop"), work)
    }

    /// Spawns `work` on the connection's runtime (a follower's reader).
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.runtime
            .as_ref()
            .expect("runtime until drop")
            .spawn(work);
    }

    /// Names of the brands that have a stream.
    pub fn brands(&self) -> Result<Vec<u32>, ReplicaError> {
        use futures::TryStreamExt;
        let js = self.jetstream();
        let names =
            self.run(async move { js.stream_names().try_collect::<Vec<String>>().await })?;
        let names = names.map_err(|e| ReplicaError::Stream {
            brand: 0,
            what: "listing the brands' streams",
            source: Box::new(e),
        })?;
        let mut brands: Vec<u32> = names
            .iter()
            .filter_map(|n| n.strip_prefix(super::STREAM_PREFIX)?.parse().ok())
            .collect();
        brands.sort_unstable();
        Ok(brands)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        // Dropped on the daemon's runtime at shutdown, where a blocking
        // shutdown would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `work` on `runtime` from any thread and waits for its output.
fn on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, ReplicaError> {
    let (tx, rx) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv().map_err(|_| {
        ReplicaError::Runtime(std::io::Error::other("the replication runtime stopped"))
    })
}

/// `brand`'s stream, created (three replicas, file storage, one subject)
/// if it does not exist.
pub async fn brand_stream(
    js: &jetstream::Context,
    brand: u32,
) -> Result<stream::Stream, ReplicaError> {
    let config = stream::Config {
        name: stream_name(brand),
        subjects: vec![subject(brand)],
        num_replicas: REPLICAS,
        storage: stream::StorageType::File,
        // Appends must not be dropped to make room: the stream is the log.
        discard: stream::DiscardPolicy::New,
        allow_direct: true,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| ReplicaError::Stream {
            brand,
            what: "opening its stream",
            source: Box::new(e),
        })
}
