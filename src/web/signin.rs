//! Signing in with a link, closed to login CSRF (docs/web.md, "Logging
//! in").
//!
//! The danger: a hostile page holding a link of its own brand makes a
//! victim's browser open it (a navigation, an image, a cross-site form),
//! and the victim then reads the attacker's figures believing they are
//! theirs. So opening a link (`GET /login/TOKEN`) changes nothing: it
//! shows a confirmation form and sets a pre-login cookie (`cardd_login`,
//! `SameSite=Strict`). Only `POST /login` spends the link and sets the
//! session, and only when
//! - the browser says the post came from this origin (`Sec-Fetch-Site:
//!   same-origin`; from a browser that sends no fetch metadata, an
//!   `Origin` naming the `Host` asked for), and
//! - its `check` is the HMAC of the pre-login cookie and the link under a
//!   key that lives only in this process: a form made elsewhere has
//!   neither the victim's cookie nor a check that fits it.
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::logins::Refused;
use super::{cookie_named, html, login_page, view, Web, COOKIE};
use crate::limits::{WEB_LOGIN_TOKEN_SECS, WEB_SESSION_SECS};

/// The pre-login cookie's name (set by the confirmation page, read by
/// the form's post only: its path is `/login`).
pub const LOGIN_COOKIE: &str = "cardd_login";

/// Domain separation of the form's check from every other HMAC.
const CHECK_DOMAIN: &[u8] = b"cardd.v1 web login form\0";

/// The key that binds a confirmation form to its pre-login cookie; drawn
/// at start-up, never stored, so a restart voids every form (as it voids
/// every link).
pub struct Binder {
    key: [u8; 32],
}

impl Default for Binder {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Binder { key }
    }
}

impl Binder {
    fn mac(&self, pre: &str, token: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(CHECK_DOMAIN);
        mac.update(pre.as_bytes());
        mac.update(b"\0");
        mac.update(token.as_bytes());
        mac
    }

    /// The check the form for link `token` carries in a browser whose
    /// pre-login cookie is `pre` (hex).
    pub fn check(&self, pre: &str, token: &str) -> String {
        hex::encode(self.mac(pre, token).finalize().into_bytes())
    }

    /// Whether `check` (hex) is the one for `pre` and `token`; compared in
    /// constant time.
    pub fn verify(&self, pre: &str, token: &str, check: &str) -> bool {
        hex::decode(check).is_ok_and(|c| self.mac(pre, token).verify_slice(&c).is_ok())
    }
}

/// 64 lowercase hex digits: every secret here (link, cookie, check).
fn is_secret(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `GET /login/TOKEN`: the confirmation form for a live link; the link is
/// not spent and no session is set (a page elsewhere that makes a browser
/// open it gains nothing). A used, expired or unknown link: the login
/// page (401).
pub(super) async fn confirm(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let Some(grant) = is_secret(&token)
        .then(|| web.logins.pending(&token))
        .flatten()
    else {
        return invalid();
    };
    // Two tabs with two links share one pre-login cookie: keep it.
    let pre = cookie_named(&headers, LOGIN_COOKIE)
        .filter(|c| is_secret(c))
        .unwrap_or_else(|| {
            let mut pre = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut pre);
            hex::encode(pre)
        });
    let check = web.binder.check(&pre, &token);
    let set = format!(
        "{LOGIN_COOKIE}={pre}; HttpOnly; SameSite=Strict; Path=/login; \
         Max-Age={WEB_LOGIN_TOKEN_SECS}"
    );
    let body = view::confirm(&token, &check, grant);
    ([(header::SET_COOKIE, set)], html(StatusCode::OK, body)).into_response()
}

/// `POST /login` (the confirmation form: `token`, `check`): spends the
/// link and sets the session cookie, only for a post from this origin
/// whose check fits the browser's pre-login cookie. Anything else sets
/// nothing and leaves the link usable.
pub(super) async fn sign_in(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    let pre = cookie_named(&headers, LOGIN_COOKIE).filter(|c| is_secret(c));
    let bound = form(&body).zip(pre).filter(|((token, check), pre)| {
        same_origin(&headers) && web.binder.verify(pre, token, check)
    });
    let Some(((token, _), _)) = bound else {
        tracing::info!("web sign-in refused: not posted from this page");
        return login_page(
            StatusCode::FORBIDDEN,
            "This sign-in did not come from this daemon's own page. \
             Open your login link again and press Sign in.",
        );
    };
    match web.logins.open(&token) {
        Ok((session, grant)) => {
            let (brand, principal) = (grant.brand, grant.principal);
            tracing::info!(brand, ?principal, "web session opened");
            let session = format!(
                "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={WEB_SESSION_SECS}"
            );
            let spent =
                format!("{LOGIN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/login; Max-Age=0");
            (
                StatusCode::SEE_OTHER,
                AppendHeaders([
                    (header::SET_COOKIE, session),
                    (header::SET_COOKIE, spent),
                    (header::LOCATION, "/".into()),
                ]),
            )
                .into_response()
        }
        Err(Refused::Invalid) => invalid(),
        Err(Refused::Full) => login_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many web sessions are open; try again later.",
        ),
    }
}

fn invalid() -> Response {
    login_page(
        StatusCode::UNAUTHORIZED,
        "This login link was already used, has expired, or is not one.",
    )
}

/// The form's `token` and `check`, each 64 hex digits (nothing else is
/// accepted, so nothing needs decoding).
fn form(body: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(body).ok()?;
    let (mut token, mut check) = (None, None);
    for (k, v) in text.split('&').filter_map(|kv| kv.split_once('=')) {
        let slot = match k {
            "token" => &mut token,
            "check" => &mut check,
            _ => continue,
        };
        if slot.is_some() || !is_secret(v) {
            return None;
        }
        *slot = Some(v.to_string());
    }
    token.zip(check)
}

/// Whether the browser says this request came from a page of this origin.
/// `Sec-Fetch-Site` is set by the browser and no page can forge it; it
/// holds even behind a proxy that rewrites `Host`. A browser without
/// fetch metadata sends `Origin` on every POST: it must name the `Host`
/// asked for. A request with neither is refused: the form is for
/// browsers.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return site == "same-origin";
    }
    let (Some(origin), Some(host)) = (text("origin"), text("host")) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_a_post_from_this_origin_counts() {
        let host = ("host", "127.0.0.1:9700");
        let same = [("sec-fetch-site", "same-origin")];
        assert!(same_origin(&headers(&same)));
        for site in ["cross-site", "same-site", "none"] {
            assert!(
                !same_origin(&headers(&[("sec-fetch-site", site)])),
                "{site}"
            );
        }
        // Fetch metadata wins over an Origin that would pass.
        let forged = [
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://127.0.0.1:9700"),
            host,
        ];
        assert!(!same_origin(&headers(&forged)));
        // No fetch metadata: the Origin must name the Host.
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:9700"),
            host
        ])));
        for origin in ["http://evil.example", "http://127.0.0.1:8080", "null"] {
            assert!(
                !same_origin(&headers(&[("origin", origin), host])),
                "{origin}"
            );
        }
        assert!(!same_origin(&headers(&[host])), "neither header");
    }

    #[test]
    fn a_check_fits_one_cookie_and_one_link() {
        let binder = Binder::default();
        let (pre, token) = ("a".repeat(64), "b".repeat(64));
        let check = binder.check(&pre, &token);
        assert!(binder.verify(&pre, &token, &check));
        assert!(
            !binder.verify(&"c".repeat(64), &token, &check),
            "another cookie"
        );
        assert!(
            !binder.verify(&pre, &"c".repeat(64), &check),
            "another link"
        );
        assert!(
            !Binder::default().verify(&pre, &token, &check),
            "another process"
        );
        assert!(!binder.verify(&pre, &token, "zz"));
    }

    #[test]
    fn the_form_holds_a_token_and_a_check_only() {
        let (t, c) = ("1".repeat(64), "2".repeat(64));
        let body = format!("token={t}&check={c}");
        assert_eq!(form(body.as_bytes()), Some((t.clone(), c.clone())));
        assert_eq!(form(format!("token={t}").as_bytes()), None);
        assert_eq!(
            form(format!("token={t}&check={c}&token={t}").as_bytes()),
            None
        );
        assert_eq!(form(format!("token={t}&check=%41{c}").as_bytes()), None);
    }
}
