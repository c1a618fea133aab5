//! The owner's web page on the `--http-listen` listener (docs/web.md):
//! read-only pages over the same reports `GetReport` answers
//! (`state/reports.rs`), server-rendered from templates compiled into the
//! binary, no script at all, strict security headers.
//!
//! Login is a single-use link from `cardd admin web-login` (a signed
//! `WebLogin`, `server/web_login.rs`); opening it shows a confirmation
//! form whose same-origin post sets an HttpOnly, SameSite=Strict session
//! cookie (`signin.rs`: no other site can sign a browser in). Links and sessions live in memory
//! ([`Logins`]). Pages read a brand's state through its writer
//! ([`Reader`]), between batches, and show it once durable.
mod logins;
mod pages;
mod signin;
mod view;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{oneshot, Semaphore};

pub use logins::{Grant, Link, Logins, Refused};
pub use pages::Page;
pub use signin::{Binder, LOGIN_COOKIE};

use futures::future::BoxFuture;

use crate::error::Refusal;
use crate::limits::{WEB_MAX_BODY_BYTES, WEB_READS_AT_ONCE, WEB_READ_WAIT_SECS};
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
    /// `WEB_READS_AT_ONCE` permits: pages read one after another.
    reads: Arc<Semaphore>,
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
            binder: Arc::new(Binder::default()),
        }
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

async fn overview(State(web): State<Web>, headers: HeaderMap, uri: Uri) -> Response {
    show(web, &headers, Page::Overview, &uri, false).await
}

async fn settlement(State(web): State<Web>, headers: HeaderMap, uri: Uri) -> Response {
    show(web, &headers, Page::Settlement, &uri, false).await
}

async fn liability(State(web): State<Web>, headers: HeaderMap, uri: Uri) -> Response {
    show(web, &headers, Page::Liability, &uri, false).await
}

async fn members(State(web): State<Web>, headers: HeaderMap, uri: Uri) -> Response {
    show(web, &headers, Page::Members, &uri, false).await
}

async fn card(State(web): State<Web>, headers: HeaderMap, uri: Uri) -> Response {
    show(web, &headers, Page::Card, &uri, false).await
}

async fn record(
    State(web): State<Web>,
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
    show(web, &headers, Page::Record, &uri, false).await
}

async fn csv(
    State(web): State<Web>,
    headers: HeaderMap,
    uri: Uri,
    Path(page): Path<String>,
) -> Response {
    let Some(page) = Page::from_name(page.trim_end_matches(".csv")) else {
        return (StatusCode::NOT_FOUND, "no such page\n").into_response();
    };
    show(web, &headers, page, &uri, true).await
}

/// One page (or its CSV) for the request's session: read the brand's
/// state on its writer, then render. No session: the login page.
async fn show(web: Web, headers: &HeaderMap, page: Page, uri: &Uri, as_csv: bool) -> Response {
    let session = cookie(headers).and_then(|c| web.logins.session(&c).map(|g| (c, g)));
    let Some((cookie, grant)) = session else {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "Sign in with a link from `cardd admin --key KEY web-login --http ADDR`.",
        );
    };
    let started = std::time::Instant::now();
    let wait = std::time::Duration::from_secs(WEB_READ_WAIT_SECS);
    let Ok(Ok(_permit)) = tokio::time::timeout(wait, web.reads.clone().acquire_owned()).await
    else {
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

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "this brand is not being served (stopping or halted)\n",
    )
        .into_response()
}
