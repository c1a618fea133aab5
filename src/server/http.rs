//! The HTTP listener (`cardd serve --http-listen ADDR`, off unless set):
//! `GET /metrics` (Prometheus text), `GET /livez` (the process answers)
//! and `GET /readyz` (start-up done, every brand recovered or refused
//! for a damaged ledger, and not shutting down).
//!
//! It shares nothing with the terminal port but the process: its own
//! accept loop, at most `HTTP_MAX_CONNECTIONS` connections, headers of at
//! most `HTTP_MAX_HEADER_BYTES` that must arrive within
//! `HTTP_HEADER_TIMEOUT_SECS`, and `HTTP_CONNECTION_SECS` per connection,
//! so a slow or hostile client costs one small task at most. The owner's
//! web page (`crate::web`) is merged into [`router`] by `run_until`; each
//! connection carries a `web::Connection`, by which the page holds one
//! brand's sessions to `WEB_CONNECTIONS_PER_BRAND` of the connections.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::Refusal;
use crate::limits::{
    HTTP_CONNECTION_SECS, HTTP_HEADER_TIMEOUT_SECS, HTTP_MAX_CONNECTIONS, HTTP_MAX_HEADER_BYTES,
};

/// What `/readyz` answers from: set by start-up and shutdown.
#[derive(Debug, Default)]
pub struct Health {
    recovered: AtomicBool,
    stopping: AtomicBool,
}

impl Health {
    /// Every brand is recovered: the daemon serves.
    pub fn set_recovered(&self) {
        self.recovered.store(true, Ordering::Release);
    }

    /// Shutdown began: no longer ready.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Ready: recovered and not shutting down.
    pub fn ready(&self) -> bool {
        self.recovered.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }
}

/// The routes of the HTTP listener.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::get().render(),
    )
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if health.ready() {
        (StatusCode::OK, "ready\n")
    } else if health.stopping.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "recovering\n")
    }
}

/// How the web page (`crate::web`) reaches the brands, once the daemon
/// has started serving (`served` set): state reads on the brand's writer,
/// storage reads as audit reads.
pub struct Served(pub Arc<std::sync::OnceLock<Arc<super::Shared>>>);

impl crate::web::Brands for Served {
    fn read(&self, brand: u32, read: super::writer::ReadFn) -> bool {
        self.0
            .get()
            .and_then(|s| s.brand(brand))
            .is_some_and(|b| b.read(read))
    }

    fn activity(
        &self,
        grant: crate::web::Grant,
        scan: crate::pb::GetReport,
    ) -> BoxFuture<'static, Result<crate::pb::Report, Refusal>> {
        let shared = self.0.get().cloned();
        Box::pin(async move {
            let shared = shared.ok_or_else(not_yet)?;
            let job = move |store: &dyn crate::storage::LogStore| {
                crate::audit::activity::scan_page(store, grant.brand, &scan)
            };
            super::audit::web_read(&shared, grant.brand, grant.principal, job).await
        })
    }

    fn record(
        &self,
        grant: crate::web::Grant,
        seq: u64,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, Refusal>> {
        let shared = self.0.get().cloned();
        Box::pin(async move {
            let shared = shared.ok_or_else(not_yet)?;
            let job = move |store: &dyn crate::storage::LogStore| {
                store.record(grant.brand, seq).map_err(|e| {
                    Refusal::new(
                        crate::pb::ErrorCode::StorageFailure,
                        format!("reading the ledger: {e}"),
                    )
                })
            };
            super::audit::web_read(&shared, grant.brand, grant.principal, job).await
        })
    }
}

fn not_yet() -> Refusal {
    Refusal::new(
        crate::pb::ErrorCode::ServerBusy,
        "the daemon is still starting",
    )
}

/// Serves `router` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(HTTP_MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "HTTP connection limit reached; closing");
            continue;
        };
        // Each connection its own `web::Connection`: the web page counts
        // it against its brand's share once a request shows a session.
        let tagged = router
            .clone()
            .layer(axum::Extension(crate::web::Connection::default()));
        let service = TowerToHyperService::new(tagged);
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(HTTP_HEADER_TIMEOUT_SECS))
                .max_buf_size(HTTP_MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let life = Duration::from_secs(HTTP_CONNECTION_SECS);
            tokio::select! {
                _ = tokio::time::timeout(life, conn) => {}
                _ = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::limits::WEB_CONNECTIONS_PER_BRAND;
    use crate::testing::{web_owner, WebBrands, BRAND};
    use crate::web::{Logins, Web, COOKIE};

    /// A session cookie of `brand`'s owner.
    fn session(logins: &Logins, brand: u32) -> String {
        let link = logins.issue(web_owner(brand)).expect("a link");
        logins.open(&link.token).expect("a session").0
    }

    /// Sends `GET /liability` with `cookie` on `s`; the answer's status,
    /// read from its head (the body is left unread; the connection open).
    async fn liability(s: &mut TcpStream, cookie: &str, close: bool) -> Option<u16> {
        let close = if close { "Connection: close\r\n" } else { "" };
        let request = format!(
            "GET /liability HTTP/1.1\r\nHost: cardd\r\n{close}Cookie: {COOKIE}={cookie}\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await {
                Ok(Ok(1)) => head.push(byte[0]),
                _ => return None,
            }
        }
        String::from_utf8_lossy(&head)
            .split(' ')
            .nth(1)?
            .parse()
            .ok()
    }

    /// One brand's sessions that keep connections open hold at most their
    /// share of the listener's: past it they are answered 503 and closed,
    /// and another brand's owner still gets a connection and the page.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_brands_connections_leave_slots_for_another_brand() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let logins = Arc::new(Logins::default());
        let web = Web::new(logins.clone(), Arc::new(WebBrands::new(dir.path(), &[])));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("its address");
        let app = router(Arc::new(Health::default())).merge(crate::web::router(web));
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, app, stop.clone()));
        let hog = session(&logins, BRAND + 1);
        let mut kept = Vec::new();
        for _ in 0..HTTP_MAX_CONNECTIONS {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            match liability(&mut s, &hog, false).await {
                Some(200) => kept.push(s),
                Some(503) => {
                    // Closed by the daemon: the read ends.
                    let mut rest = Vec::new();
                    let read =
                        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest));
                    assert!(matches!(read.await, Ok(Ok(_))), "the 503 connection closes");
                }
                other => panic!("the hog's connection answered {other:?}"),
            }
        }
        assert_eq!(kept.len(), WEB_CONNECTIONS_PER_BRAND);
        // The last refused connection's slot is freed just after its
        // socket closes: a few tries cover that moment, not a full listener
        // (whose slots the hog would hold for `HTTP_CONNECTION_SECS`).
        let owner = session(&logins, BRAND);
        let mut status = None;
        for _ in 0..10 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            status = liability(&mut s, &owner, true).await;
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, Some(200), "another brand's owner is served");
        stop.cancel();
    }

    #[test]
    fn ready_only_between_recovery_and_shutdown() {
        let h = Arc::new(Health::default());
        let status = |h: &Arc<Health>| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(readyz(State(h.clone()))).0
        };
        assert_eq!(status(&h), StatusCode::SERVICE_UNAVAILABLE);
        h.set_recovered();
        assert_eq!(status(&h), StatusCode::OK);
        h.set_stopping();
        assert_eq!(status(&h), StatusCode::SERVICE_UNAVAILABLE);
    }
}
