//! Owner audit reads served from durable storage, off the brand's writer:
//! everything up to the newest checkpoint is immutable, so they need no
//! coordination with the write path.
use std::io::Write;
use std::sync::Arc;

use prost::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::Shared;
use crate::error::Refusal;
use crate::pb::{self, request::Op, server_message::Body, ErrorCode as E, ServerMessage};
use crate::storage::StoredNodes;

/// Export chunk size: well under the default frame limit with framing.
const CHUNK_BYTES: usize = 32 * 1024;

/// An `io::Write` that ships the export in chunks to the connection.
struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= CHUNK_BYTES {
            let rest = self.buf.split_off(CHUNK_BYTES);
            let chunk = std::mem::replace(&mut self.buf, rest);
            self.tx
                .blocking_send(chunk)
                .map_err(|_| std::io::Error::other("client went away"))?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.tx
                .blocking_send(chunk)
                .map_err(|_| std::io::Error::other("client went away"))?;
        }
        Ok(())
    }
}

/// Serves one audit request and releases `permit` when done.
pub async fn serve(
    op: Op,
    brand: u32,
    shared: Arc<Shared>,
    out: mpsc::Sender<ServerMessage>,
    request_id: u64,
    permit: OwnedSemaphorePermit,
) {
    let send = |body: Body| ServerMessage {
        request_id,
        body: Some(body),
    };
    match op {
        Op::ExportLedger(_) => {
            let last = stream_export(brand, &shared, &out, request_id).await;
            let _ = out.send(send(last)).await;
        }
        Op::ConsistencyProof(q) => {
            let store = shared.store.clone();
            let answer =
                tokio::task::spawn_blocking(move || consistency(store.as_ref(), brand, &q)).await;
            let body = match answer {
                Ok(Ok(c)) => Body::Reply(pb::Reply {
                    consistency: Some(c),
                    ..Default::default()
                }),
                Ok(Err(r)) => Body::Error(r.into()),
                Err(e) => Body::Error(Refusal::new(E::Internal, e.to_string()).into()),
            };
            let _ = out.send(send(body)).await;
        }
        _ => unreachable!("only audit operations are routed here"),
    }
    drop(permit);
}

/// Streams the export in chunks (written on a blocking thread) and returns
/// the last message's body: the empty last chunk, or why it failed.
async fn stream_export(
    brand: u32,
    shared: &Shared,
    out: &mpsc::Sender<ServerMessage>,
    request_id: u64,
) -> Body {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let store = shared.store.clone();
    let server_public = shared.server_public;
    let job = tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES * 2),
        };
        crate::audit::write_export(store.as_ref(), brand, &server_public, &mut w, |_, _| {})
    });
    while let Some(data) = rx.recv().await {
        let chunk = ServerMessage {
            request_id,
            body: Some(Body::ExportChunk(pb::ExportChunk { data, last: false })),
        };
        if out.send(chunk).await.is_err() {
            break;
        }
    }
    match job.await {
        Ok(Ok(summary)) => {
            tracing::info!(brand, records = summary.records, "export streamed");
            Body::ExportChunk(pb::ExportChunk {
                data: vec![],
                last: true,
            })
        }
        Ok(Err(e)) => {
            Body::Error(Refusal::new(E::StorageFailure, format!("export failed: {e}")).into())
        }
        Err(e) => Body::Error(Refusal::new(E::Internal, format!("export failed: {e}")).into()),
    }
}

fn consistency(
    store: &dyn crate::storage::LogStore,
    brand: u32,
    q: &pb::GetConsistencyProof,
) -> Result<pb::ConsistencyProof, Refusal> {
    let storage = |e: crate::storage::StorageError| Refusal::new(E::StorageFailure, e.to_string());
    let last = store
        .last_checkpoint(brand)
        .map_err(storage)?
        .ok_or_else(|| Refusal::new(E::InvalidArgument, "no checkpoint yet"))?;
    let last = pb::Checkpoint::decode(last.as_slice())
        .map_err(|_| Refusal::new(E::Internal, "checkpoint corrupt"))?;
    let new_size = if q.new_size == 0 {
        last.tree_size
    } else {
        q.new_size
    };
    if q.old_size == 0 || q.old_size > new_size || new_size > last.tree_size {
        return Err(Refusal::new(
            E::InvalidArgument,
            format!("sizes must satisfy 0 < old <= new <= {}", last.tree_size),
        ));
    }
    let path =
        crate::merkle::consistency_proof(&StoredNodes { store, brand }, q.old_size, new_size)
            .map_err(|e| Refusal::new(E::StorageFailure, e.to_string()))?;
    Ok(pb::ConsistencyProof {
        old_size: q.old_size,
        new_size,
        path: path.iter().map(|h| h.to_vec()).collect(),
        new_checkpoint: (new_size == last.tree_size).then_some(last),
    })
}
