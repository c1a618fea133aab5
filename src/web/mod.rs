//! The owner's web page on the `--http-listen` listener (docs/web.md):
//! read-only pages over the same reports `GetReport` answers
//! (`state/reports.rs`), server-rendered from templates compiled into the
//! binary, no script at all, strict security headers.
//!
//! Login is a single-use link from `cardd admin web-login` (a signed
//! `WebLogin`, `server/web_login.rs`); opening it shows a confirmation
//! form whose same-origin post sets an HttpOnly, SameSite=Strict session
//! cookie (`signin.rs`: no other site can sign a browser in). Links and
//! sessions live in memory ([`Logins`]). Pages read a brand's state
//! through its writer ([`Reader`]), between batches, and show it once
//! durable; each brand's sessions take at most its share of the reads and
//! of the listener's connections (`shares.rs`).
mod logins;
mod pages;
mod shares;
mod signin;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Extension, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub use logins::{Grant, Link, Logins, Refused};
pub use pages::Page;
use shares::Shares;
use signin::Binder;
pub use signin::LOGIN_COOKIE;

use futures::future::BoxFuture;

use crate::error::Refusal;
use crate::limits::{
    WEB_CONNECTIONS_PER_BRAND, WEB_MAX_BODY_BYTES, WEB_READS_AT_ONCE, WEB_READS_PER_BRAND,
    WEB_READ_WAIT_SECS,
};
use crate::pb;
use crate::server::writer::ReadFn;

/// How the pages reach a brand (the server implements it: `server/http.rs`).
pub trait Brands: Send + Sync + 'static {
    /// Runs `read` on the brand's state on its writer; false when the
    /// brand is not served (unknown, halted, or the daemon is stopping).
    fn read(&self, brand: u32, read: ReadFn) -> bool;
    /// One page of the records `scan` asks for (an `activity-scan`), read
    /// from durable storage under the grant's audit quota.
    fn activity(
        &self,
        grant: Grant,
        scan: pb::GetReport,
    ) -> BoxFuture<'static, Result<pb::Report, Refusal>>;
    /// The stored bytes of record `seq` of the grant's brand (None: no such
    /// record), under the same quota.
    fn record(
        &self,
        grant: Grant,
        seq: u64,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, Refusal>>;
}

/// The session cookie's name.
pub const COOKIE: &str = "cardd_session";

/// Every response of the web page carries these. The CSP allows no
/// script at all and only this origin's stylesheet; `no-referrer` keeps a
/// login link's path out of any Referer header.
const SECURITY_HEADERS: [(&str, &str); 6] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// What the web handlers share.
#[derive(Clone)]
pub struct Web {
    logins: Arc<Logins>,
    brands: Arc<dyn Brands>,
    /// `WEB_READS_AT_ONCE` permits, all brands together: pages read one
    /// after another.
    reads: Arc<Semaphore>,
    /// Each brand's `WEB_READS_PER_BRAND`, taken before one of `reads`.
    brand_reads: Arc<Shares>,
    /// Each brand's `WEB_CONNECTIONS_PER_BRAND` HTTP connections.
    connections: Arc<Shares>,
    /// Binds a login form to its browser's pre-login cookie.
    binder: Arc<Binder>,
}

impl Web {
    /// The pages over `logins` (shared with the `WebLogin` operation),
    /// reading brands through `brands`.
    pub fn new(logins: Arc<Logins>, brands: Arc<dyn Brands>) -> Self {
        Web {
            logins,
            brands,
            reads: Arc::new(Semaphore::new(WEB_READS_AT_ONCE)),
            brand_reads: Arc::new(Shares::new(WEB_READS_PER_BRAND)),
            connections: Arc::new(Shares::new(WEB_CONNECTIONS_PER_BRAND)),
            binder: Arc::new(Binder::default()),
        }
    }
}

/// One HTTP connection as the web page sees it: the listener
/// (`server/http.rs`) gives each connection one, as a request extension,
/// and it holds the connection's place in its brand's share
/// (`WEB_CONNECTIONS_PER_BRAND`) from the first request that shows a
/// session until the connection closes.
#[derive(Clone, Default)]
pub struct Connection(Arc<Mutex<Option<(u32, OwnedSemaphorePermit)>>>);

impl Connection {
    /// Counts this connection as `brand`'s (it may change brand between
    /// requests: a logout and another link); false when the brand's
    /// share is full.
    fn attribute(&self, shares: &Shares, brand: u32) -> bool {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_some_and(|(b, _)| *b == brand) {
            return true;
        }
        // Give up the old brand's place first: a connection counts once.
        *held = None;
        *held = shares.try_take(brand).map(|permit| (brand, permit));
        held.is_some()
    }
}

/// The web page's routes (merged into the HTTP listener's router).
pub fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/settlement", get(settlement))
        .route("/liability", get(liability))
        .route("/members", get(members))
        .route("/card", get(card))
        .route("/record/{seq}", get(record))
        .route("/csv/{page}", get(csv))
        .route("/login/{token}", get(signin::confirm))
        .route("/login", post(signin::sign_in))
        .route("/logout", post(logout))
        .route("/style.css", get(style))
        .fallback(not_found)
        .layer(middleware::from_fn(bounded))
        .layer(middleware::map_response(secured))
        .with_state(web)
}

async fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Refuses a request body over `WEB_MAX_BODY_BYTES` unread (there are no
/// writes; the logout form is empty) and a chunked one.
async fn bounded(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    if chunked || length.is_some_and(|n| n > WEB_MAX_BODY_BYTES) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    }
    next.run(request).await
}

async fn not_found(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    } else {
        // Nothing on this port changes anything.
        (StatusCode::METHOD_NOT_ALLOWED, "read only\n").into_response()
    }
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("templates/style.css"),
    )
        .into_response()
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    cookie_named(headers, COOKIE)
}

/// The value of the request's cookie `name`, if it has one.
fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The query's parameters; values other than letters, digits and `-`
/// are dropped (no parameter needs more).
fn params(uri: &Uri) -> HashMap<String, String> {
    let ok = |v: &str| v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, v)| ok(k) && ok(v))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The login page: how to get a link, and no data.
fn login_page(status: StatusCode, why: &str) -> Response {
    html(status, view::login(why))
}

async fn logout(State(web): State<Web>, headers: HeaderMap) -> Response {
    if let Some(c) = cookie(&headers) {
        web.logins.end(&c);
    }
    let expired = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, expired),
            (header::LOCATION, "/".into()),
        ],
    )
        .into_response()
}

async fn overview(
    State(web): State<Web>,
    conn: Option<Extension<Connection>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    show(web, conn, &headers, Page::Overview, &uri, false).await
}

async fn settlement(
    State(web): State<Web>,
    conn: Option<Extension<Connection>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    show(web, conn, &headers, Page::Settlement, &uri, false).await
}

async fn liability(
    State(web): State<Web>,
    conn: Option<Extension<Connection>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    show(web, conn, &headers, Page::Liability, &uri, false).await
}

async fn members(
    State(web): State<Web>,
    conn: Option<Extension<Connection>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    show(web, conn, &headers, Page::Members, &uri, false).await
}

async fn card(
    State(web): State<Web>,
    conn: Option<Extension<Connection>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    show(web, conn, &headers, Page::Card, &uri, false).await
}

async fn record(
    State(web): State<Web>,
    conn: Option<Extension<Connection>>,
    headers: HeaderMap,
    uri: Uri,
    Path(seq): Path<String>,
) -> Response {
    let Ok(seq) = seq.parse::<u64>() else {
        return (StatusCode::NOT_FOUND, "no such record\n").into_response();
    };
    let query = format!("seq={seq}");
    let uri = Uri::builder()
        .path_and_query(format!("{}?{query}", uri.path()))
        .build()
        .unwrap_or(uri);
    show(web, conn, &headers, Page::Record, &uri, false).await
}

async fn csv(
    State(web): State<Web>,
    conn: Option<Extension<Connection>>,
    headers: HeaderMap,
    uri: Uri,
    Path(page): Path<String>,
) -> Response {
    let Some(page) = Page::from_name(page.trim_end_matches(".csv")) else {
        return (StatusCode::NOT_FOUND, "no such page\n").into_response();
    };
    show(web, conn, &headers, page, &uri, true).await
}

/// One page (or its CSV) for the request's session: read the brand's
/// state on its writer, then render. No session: the login page.
async fn show(
    web: Web,
    conn: Option<Extension<Connection>>,
    headers: &HeaderMap,
    page: Page,
    uri: &Uri,
    as_csv: bool,
) -> Response {
    let session = cookie(headers).and_then(|c| web.logins.session(&c).map(|g| (c, g)));
    let Some((cookie, grant)) = session else {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "Sign in with a link from `cardd admin --key KEY web-login --http ADDR`.",
        );
    };
    if conn.is_some_and(|Extension(c)| !c.attribute(&web.connections, grant.brand)) {
        return brand_busy();
    }
    let started = std::time::Instant::now();
    let Some(_turn) = web.read_turn(grant.brand).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy: try again\n").into_response();
    };
    let query = page.query(&params(uri));
    let (tx, rx) = oneshot::channel();
    let read = pages::read(page, query, grant, tx);
    if !web.brands.read(grant.brand, read) {
        return unavailable();
    }
    let Ok(snapshot) = rx.await else {
        return unavailable();
    };
    let Some(mut snapshot) = snapshot else {
        // The key behind this session was removed: the session ends.
        web.logins.end(&cookie);
        return login_page(
            StatusCode::UNAUTHORIZED,
            "The key this session was opened with was removed.",
        );
    };
    pages::from_storage(web.brands.as_ref(), page, grant, &mut snapshot).await;
    if as_csv {
        let name = format!("attachment; filename=\"{}.csv\"", page.name());
        return (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, name),
            ],
            view::csv(&snapshot),
        )
            .into_response();
    }
    let rendered = view::page(page, &snapshot, grant);
    // The render-time figure of bench/web.sh, from the daemon's side.
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::debug!(
        page = page.name(),
        brand = grant.brand,
        ms,
        "web page served"
    );
    match rendered {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => {
            tracing::error!(error = %e, "web page did not render");
            (StatusCode::INTERNAL_SERVER_ERROR, "page did not render\n").into_response()
        }
    }
}

impl Web {
    /// A turn to read one of `brand`'s pages: a permit of the brand's
    /// share first (a brand's further pages wait behind its own, not in
    /// the queue all brands share, which so holds at most a share of each
    /// brand), then one of all brands'. None: none within
    /// `WEB_READ_WAIT_SECS`.
    async fn read_turn(&self, brand: u32) -> Option<[OwnedSemaphorePermit; 2]> {
        let wait = std::time::Duration::from_secs(WEB_READ_WAIT_SECS);
        let turn = async {
            let own = self.brand_reads.take(brand).await;
            let all = self.reads.clone().acquire_owned().await.ok()?;
            Some([own, all])
        };
        tokio::time::timeout(wait, turn).await.ok().flatten()
    }
}

/// The brand's sessions hold its whole share of connections: this one is
/// closed, so it frees its slot of all brands' for another brand's owner.
fn brand_busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONNECTION, "close")],
        "too many connections for this brand's sessions: try again\n",
    )
        .into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "this brand is not being served (stopping or halted)\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::{web_owner, WebBrands, BRAND};

    /// A brand other than the fixture's, whose reads never finish.
    const HOG: u32 = BRAND + 1;

    /// A session of `brand`'s owner: the request headers carrying it.
    fn signed_in(logins: &Logins, brand: u32) -> HeaderMap {
        let link = logins.issue(web_owner(brand)).expect("a link");
        let (session, _) = logins.open(&link.token).expect("a session");
        let mut headers = HeaderMap::new();
        let cookie = format!("{COOKIE}={session}");
        headers.insert(header::COOKIE, cookie.parse().expect("a header value"));
        headers
    }

    async fn liability(web: &Web, conn: Option<&Connection>, headers: &HeaderMap) -> Response {
        let uri = Uri::from_static("/liability");
        let conn = conn.map(|c| Extension(c.clone()));
        show(web.clone(), conn, headers, Page::Liability, &uri, false).await
    }

    /// One brand whose pages hold their whole share of reads (and queue
    /// more) cannot stop another brand's page: it is served at once, not
    /// after `WEB_READ_WAIT_SECS` or with a 503.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_brand_holding_its_reads_cannot_stop_anothers_page() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let brands = Arc::new(WebBrands::new(dir.path(), &[HOG]));
        let logins = Arc::new(Logins::default());
        let web = Web::new(logins.clone(), brands.clone());
        let hog = signed_in(&logins, HOG);
        let pages: Vec<_> = (0..WEB_READS_AT_ONCE + 2)
            .map(|_| {
                let (web, hog) = (web.clone(), hog.clone());
                tokio::spawn(async move { liability(&web, None, &hog).await })
            })
            .collect();
        while brands.held() < WEB_READS_PER_BRAND {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the hog's further pages queue for their turns.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let owner = signed_in(&logins, BRAND);
        let page = tokio::time::timeout(Duration::from_secs(3), liability(&web, None, &owner))
            .await
            .expect("another brand's page is served while one brand holds its reads");
        assert_eq!(page.status(), StatusCode::OK);
        let body = axum::body::to_bytes(page.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("data-value"), "the figures: {body}");
        assert_eq!(
            brands.held(),
            WEB_READS_PER_BRAND,
            "the hog held its share only"
        );
        pages.iter().for_each(|p| p.abort());
    }

    /// Connections showing one brand's sessions hold at most its share;
    /// one more is answered 503 with `Connection: close`, and another
    /// brand's connection, or a connection without a session, is not
    /// counted against it.
    #[tokio::test]
    async fn one_brand_holds_at_most_its_share_of_connections() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let brands = Arc::new(WebBrands::new(dir.path(), &[]));
        let logins = Arc::new(Logins::default());
        let web = Web::new(logins.clone(), brands);
        let hog = signed_in(&logins, HOG);
        let held: Vec<Connection> = (0..WEB_CONNECTIONS_PER_BRAND)
            .map(|_| Connection::default())
            .collect();
        for conn in &held {
            assert_eq!(
                liability(&web, Some(conn), &hog).await.status(),
                StatusCode::OK
            );
        }
        // The same connections again: still theirs, no second place each.
        assert_eq!(
            liability(&web, Some(&held[0]), &hog).await.status(),
            StatusCode::OK
        );
        let one_more = liability(&web, Some(&Connection::default()), &hog).await;
        assert_eq!(one_more.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(one_more.headers().get(header::CONNECTION).unwrap(), "close");
        let owner = signed_in(&logins, BRAND);
        let other = liability(&web, Some(&Connection::default()), &owner).await;
        assert_eq!(other.status(), StatusCode::OK, "another brand's connection");
        let anonymous = liability(&web, Some(&Connection::default()), &HeaderMap::new()).await;
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        // A closed connection gives its place back.
        drop(held);
        let again = liability(&web, Some(&Connection::default()), &hog).await;
        assert_eq!(again.status(), StatusCode::OK);
    }
}
