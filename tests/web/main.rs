//! The owner's web page (issue 18) on the books' scripted three-store
//! ledger (tests/common/books.rs): every figure on each page against the
//! same report's `--json` output (`pages.rs`, plain HTTP), the login
//! links, sessions and security headers (`security.rs`), and the page in
//! a real headless Chromium (`browser.rs`).
#[path = "../common/mod.rs"]
mod common;

mod browser;
mod pages;
mod security;

use std::net::SocketAddr;
use std::path::Path;

use common::books::admin;
use common::http::{free_addr, request, request_with_body, Answer};
use common::Daemon;

/// A demo daemon with its web page on a free loopback port.
pub fn daemon(dir: &Path) -> (Daemon, common::Demo, SocketAddr) {
    let http = free_addr();
    let (d, demo) = Daemon::demo_with(dir, &["--http-listen", &http.to_string()]);
    (d, demo, http)
}

/// `cardd admin --key KEY web-login --http HTTP`: the link it printed.
pub fn web_login(d: &Daemon, key: &Path, http: SocketAddr) -> String {
    let o = admin(d.addr, key, &["web-login", "--http", &http.to_string()]);
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(
        o.status.code(),
        Some(0),
        "web-login: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let prefix = format!("http://{http}/login/");
    assert!(out.starts_with(&prefix), "not a link: {out}");
    assert_eq!(
        out.len(),
        prefix.len() + 64,
        "a 32-byte token in hex: {out}"
    );
    out
}

/// A link's confirmation form as one browser got it: its pre-login
/// cookie and the form's fields.
pub struct Form {
    /// The `cardd_login` cookie's value.
    pub pre: String,
    /// The form's `token`: the link's secret.
    pub token: String,
    /// The form's `check`, bound to `pre` and the link.
    pub check: String,
}

/// `GET` the link as a browser with pre-login cookie `pre` (None: a
/// fresh browser) opens it: the confirmation page, which sets no session.
pub fn confirmation(http: SocketAddr, link: &str, pre: Option<&str>) -> Form {
    let path = &link[link.find("/login/").expect("a login link")..];
    let extra: Vec<String> = pre
        .map(|p| format!("Cookie: cardd_login={p}"))
        .into_iter()
        .collect();
    let a = request(http, "GET", path, &extra).expect("the link answers");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.set_cookie("cardd_session").is_none(), "no session yet");
    let set = a.set_cookie("cardd_login").expect("a pre-login cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/login"] {
        assert!(set.contains(flag), "cookie without {flag}: {set}");
    }
    let field = |name: &str| {
        let at = format!("name=\"{name}\" value=\"");
        let rest = a
            .body
            .split_once(&at)
            .unwrap_or_else(|| panic!("no {name}: {}", a.body));
        rest.1.split('"').next().unwrap().to_string()
    };
    Form {
        pre: cookie_value(set, "cardd_login"),
        token: field("token"),
        check: field("check"),
    }
}

/// The value a `Set-Cookie` line sets for cookie `name`.
fn cookie_value(set: &str, name: &str) -> String {
    let value = set
        .strip_prefix(&format!("{name}="))
        .and_then(|c| c.split(';').next())
        .expect("the cookie's value");
    assert_eq!(value.len(), 64, "{set}");
    value.to_string()
}

/// The headers a browser sends with the confirmation form's post from
/// this daemon's own page (`Host: cardd`, as `request` sends).
pub fn from_this_page(pre: &str) -> Vec<String> {
    vec![
        format!("Cookie: cardd_login={pre}"),
        "Origin: http://cardd".into(),
        "Sec-Fetch-Site: same-origin".into(),
        "Content-Type: application/x-www-form-urlencoded".into(),
    ]
}

/// `POST /login` with `form`'s fields and the header lines `extra`.
pub fn post_form(http: SocketAddr, form: &Form, extra: &[String]) -> Answer {
    let body = format!("token={}&check={}", form.token, form.check);
    request_with_body(http, "POST", "/login", extra, &body).expect("POST /login answers")
}

/// Opens `link` as a browser does, without one: the confirmation page,
/// then its form posted from it. The session cookie it set.
pub fn open_link(http: SocketAddr, link: &str) -> String {
    let form = confirmation(http, link, None);
    let a = post_form(http, &form, &from_this_page(&form.pre));
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location"), Some("/"));
    let cookie = a.set_cookie("cardd_session").expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "cookie without {flag}: {cookie}");
    }
    cookie_value(cookie, "cardd_session")
}
