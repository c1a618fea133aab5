//! The graceful shutdown, once `Shared::stop` is cancelled (SIGTERM or
//! SIGINT in `cardd serve`): the accept loop has stopped; every connection
//! stops reading, is told why, and gets the answers to what it sent
//! before; then the brands' writers make their last batches durable and
//! end, and the store closes (its index flushed). Bounded by
//! `SHUTDOWN_GRACE_SECS` in all.
//!
//! Nothing acknowledged can be lost at any point of it, nor if it is cut
//! short (a second signal, the grace running out): every answer is sent
//! only after its batch's `fdatasync`, and every batch carries its signed
//! checkpoint, so the log's last frame already holds the final checkpoint.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;

use super::Shared;
use crate::limits::SHUTDOWN_GRACE_SECS;

/// Waits for `connections`, then for `writers`, within the grace period;
/// logs one line with the outcome. True if every writer ended (each
/// brand's last commit made or refused: nothing more is appended).
pub(super) async fn drain(
    shared: Arc<Shared>,
    connections: TaskTracker,
    writers: TaskTracker,
) -> bool {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(SHUTDOWN_GRACE_SECS);
    connections.close();
    let open = connections.len();
    let connections_done = tokio::time::timeout_at(deadline, connections.wait())
        .await
        .is_ok();
    // The writers end once every handle to them is gone: the sessions'
    // went with their connections, these are the last.
    shared.close_brands();
    drop(shared);
    writers.close();
    let writers_done = tokio::time::timeout_at(deadline, writers.wait())
        .await
        .is_ok();
    let shutdown_ms = started.elapsed().as_millis() as u64;
    if connections_done && writers_done {
        tracing::info!(
            connections = open,
            shutdown_ms,
            "shut down: every request read was answered and every brand's log is durable"
        );
    } else {
        tracing::warn!(
            connections_left = connections.len(),
            writers_done,
            shutdown_ms,
            "shut down at the end of the grace period; what was acknowledged is durable, \
             what was not answered is for the tills to ask about after the restart"
        );
    }
    writers_done
}
