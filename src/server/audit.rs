//! Owner audit reads served from durable storage, off the brand's writer:
//! everything up to the newest checkpoint is immutable, so they need no
//! coordination with the write path.
//!
//! Each stream holds an audit slot (`sessions`: per key, per brand and
//! daemon-wide) and, while it reads storage, one thread of its own that
//! ends with the stream: never a thread of tokio's blocking pool, so audit
//! work cannot fill the pool, and the commit path has threads of its own
//! anyway. A stream stops the moment its connection is gone, and a reader
//! that takes nothing for `Shared::audit_stall` has its session cut.
use std::io::Write;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::sessions::AuditSlot;
use super::Shared;
use crate::error::Refusal;
use crate::pb::{self, request::Op, server_message::Body, ErrorCode as E, ServerMessage};

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

/// The daemon-wide pace of audit output, counted in KiB.
pub type Pace = governor::DefaultDirectRateLimiter;

/// A pace of `mib_per_sec` MiB/s with a burst of a few chunks.
pub fn pace(mib_per_sec: u32) -> Pace {
    let per_sec = NonZeroU32::new(mib_per_sec.saturating_mul(1024)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(crate::limits::AUDIT_BURST_KIB).expect("a burst");
    governor::RateLimiter::direct(governor::Quota::per_second(per_sec).allow_burst(burst))
}

/// Waits until `bytes` may go out under `pace`; false if the session is
/// cut first.
async fn paced(pace: &Pace, bytes: usize, session: &CancellationToken) -> bool {
    let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    let Some(kib) = NonZeroU32::new(kib) else {
        return true;
    };
    // Waits on tokio's timer (governor's own futures would start a timer
    // thread of their own). A chunk never exceeds the burst (asserted
    // below), so `check_n` only ever says "not yet".
    while let Ok(Err(not_yet)) = pace.check_n(kib) {
        let wait = not_yet.wait_time_from(governor::clock::Clock::now(pace.clock()));
        tokio::select! {
            _ = session.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    true
}

const _: () = assert!(CHUNK_BYTES / 1024 < crate::limits::AUDIT_BURST_KIB as usize);
// A chunk and its message fit the frame every answer is written in.
const _: () = assert!(CHUNK_BYTES + 1024 <= crate::limits::MAX_ANSWER_FRAME_BYTES);

/// One audit request on its way: where its answer goes and what it holds.
pub struct Stream {
    /// The brand read.
    pub brand: u32,
    /// The session's outbound queue.
    pub out: mpsc::Sender<ServerMessage>,
    /// The request being answered.
    pub request_id: u64,
    /// The request's in-flight permit, released when the stream ends.
    pub permit: OwnedSemaphorePermit,
    /// The stream's audit slot, released when its thread ends.
    pub slot: AuditSlot,
    /// The session's token: cancelled to cut a session that stalls.
    pub session: CancellationToken,
}

/// Serves one audit request and releases its permit and slot when done.
pub async fn serve(op: Op, shared: Arc<Shared>, stream: Stream) {
    let Stream {
        brand,
        out,
        request_id,
        permit,
        slot,
        session,
    } = stream;
    let last = match op {
        Op::ExportLedger(q) => {
            let export = Export {
                brand,
                after: q.after_size,
                request_id,
            };
            stream_export(export, &shared, &out, slot, &session).await
        }
        Op::ConsistencyProof(q) => {
            let store = shared.store.clone();
            let answer =
                on_audit_thread(brand, slot, move || consistency(store.as_ref(), brand, &q));
            Some(match finished(answer).await {
                Ok(Ok(c)) => Body::Reply(pb::Reply {
                    consistency: Some(c),
                    ..Default::default()
                }),
                Ok(Err(r)) => Body::Error(r.into()),
                Err(r) => Body::Error(r.into()),
            })
        }
        Op::Report(r) => {
            let store = shared.store.clone();
            let page = on_audit_thread(brand, slot, move || {
                crate::audit::activity::scan_page(store.as_ref(), brand, &r)
            });
            Some(match finished(page).await {
                Ok(Ok(report)) => Body::Reply(pb::Reply {
                    report: Some(report),
                    ..Default::default()
                }),
                Ok(Err(r)) | Err(r) => Body::Error(r.into()),
            })
        }
        _ => unreachable!("only audit operations are routed here"),
    };
    if let Some(body) = last {
        let msg = ServerMessage {
            request_id,
            body: Some(body),
        };
        send_or_cut(&out, msg, &session, shared.audit_stall).await;
    }
    drop(permit);
}

/// A read of durable storage for the web page (a card's activity page,
/// one record): under the reader's audit quota, on an audit thread of its
/// own like any audit stream; refused for a brand not served or halted.
pub(super) async fn web_read<T: Send + 'static>(
    shared: &Arc<Shared>,
    brand: u32,
    principal: crate::state::Principal,
    job: impl FnOnce(&dyn crate::storage::LogStore) -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    if shared.brand(brand).is_none_or(|b| b.is_halted()) {
        return Err(Refusal::new(E::StorageFailure, "this brand is not served"));
    }
    let slot = shared.sessions.audit(brand, principal)?;
    let store = shared.store.clone();
    finished(on_audit_thread(brand, slot, move || job(store.as_ref()))).await?
}

/// Runs `job` on a thread of its own that holds `slot` until it ends.
fn on_audit_thread<T: Send + 'static>(
    brand: u32,
    slot: AuditSlot,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<oneshot::Receiver<T>> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("audit-{brand}"))
        .spawn(move || {
            lower_priority(10);
            let _ = tx.send(job());
            drop(slot);
        });
    match spawned {
        Ok(_) => Some(rx),
        Err(e) => {
            tracing::error!(brand, error = %e, "no thread for an audit stream");
            None
        }
    }
}

/// Background threads run at a lower scheduling priority (audit streams at
/// nice 10, the chain check at 19): when the cores are busy, tills'
/// requests and the commit path go first and the background work only
/// takes longer.
pub(super) fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; on Linux the nice
        // value is per thread, so this changes only the calling thread.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice)
        };
        if result != 0 {
            tracing::debug!("audit thread priority unchanged");
        }
    }
}

/// The result of an audit thread, or why there is none.
async fn finished<T>(job: Option<oneshot::Receiver<T>>) -> Result<T, Refusal> {
    let internal = |why: &str| Refusal::new(E::Internal, why);
    match job {
        None => Err(internal("no thread for the audit stream; try again")),
        Some(rx) => rx.await.map_err(|_| internal("the audit stream failed")),
    }
}

/// Queues `msg` for the connection. False if the connection is gone, or
/// if its reader took nothing for `stall`: then the session is cut, so
/// the stalled peer holds nothing more.
async fn send_or_cut(
    out: &mpsc::Sender<ServerMessage>,
    msg: ServerMessage,
    session: &CancellationToken,
    stall: Duration,
) -> bool {
    tokio::select! {
        _ = session.cancelled() => false,
        sent = tokio::time::timeout(stall, out.send(msg)) => match sent {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                tracing::warn!("audit stream stalled: its reader took nothing; session cut");
                session.cancel();
                false
            }
        },
    }
}

/// The export one request asked for.
struct Export {
    brand: u32,
    /// Records already held by the reader (`ExportLedger.after_size`).
    after: u64,
    request_id: u64,
}

/// Streams the export in chunks (written on an audit thread) and returns
/// the last message's body: the empty last chunk, or why it failed; None
/// when the connection is gone or was cut.
async fn stream_export(
    Export {
        brand,
        after,
        request_id,
    }: Export,
    shared: &Shared,
    out: &mpsc::Sender<ServerMessage>,
    slot: AuditSlot,
    session: &CancellationToken,
) -> Option<Body> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let store = shared.store.clone();
    let server_public = shared.server_public;
    let job = on_audit_thread(brand, slot, move || {
        let mut w = ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES * 2),
        };
        crate::audit::write_export_after(
            store.as_ref(),
            brand,
            after,
            &server_public,
            &mut w,
            |_, _| {},
        )
    });
    let mut gone = false;
    while let Some(data) = rx.recv().await {
        if !paced(&shared.audit_pace, data.len(), session).await {
            gone = true;
            break;
        }
        let chunk = ServerMessage {
            request_id,
            body: Some(Body::ExportChunk(pb::ExportChunk { data, last: false })),
        };
        if !send_or_cut(out, chunk, session, shared.audit_stall).await {
            gone = true;
            break;
        }
    }
    // The thread's next chunk now finds no receiver and its export stops:
    // it ends (and frees its slot) instead of waiting for a reader.
    drop(rx);
    let result = finished(job).await;
    if gone {
        tracing::info!(brand, "export stopped: its reader is gone");
        return None;
    }
    Some(match result {
        Ok(Ok(summary)) => {
            tracing::info!(brand, records = summary.records, "export streamed");
            Body::ExportChunk(pb::ExportChunk {
                data: vec![],
                last: true,
            })
        }
        Ok(Err(e @ crate::audit::ExportError::AfterTheEnd { .. })) => {
            Body::Error(Refusal::new(E::InvalidArgument, e.to_string()).into())
        }
        Ok(Err(e)) => {
            Body::Error(Refusal::new(E::StorageFailure, format!("export failed: {e}")).into())
        }
        Err(r) => Body::Error(r.into()),
    })
}

fn consistency(
    store: &dyn crate::storage::LogStore,
    brand: u32,
    q: &pb::GetConsistencyProof,
) -> Result<pb::ConsistencyProof, Refusal> {
    use crate::audit::ProveError;
    crate::audit::consistency_from_store(store, brand, q.old_size, q.new_size).map_err(|e| {
        let code = match e {
            ProveError::NoCheckpoint | ProveError::Sizes { .. } => E::InvalidArgument,
            ProveError::Corrupt(_) => E::Internal,
            ProveError::Storage(_) | ProveError::Merkle(_) => E::StorageFailure,
        };
        Refusal::new(code, e.to_string())
    })
}
