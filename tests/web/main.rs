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
use common::http::{free_addr, get_page};
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

/// Opens `link` without a browser: the session cookie it set.
pub fn open_link(http: SocketAddr, link: &str) -> String {
    let path = &link[link.find("/login/").expect("a login link")..];
    let a = get_page(http, path, None);
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location"), Some("/"));
    let cookie = a.header("set-cookie").expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "cookie without {flag}: {cookie}");
    }
    let value = cookie
        .strip_prefix("cardd_session=")
        .and_then(|c| c.split(';').next())
        .expect("the session cookie's value");
    assert_eq!(value.len(), 64);
    value.to_string()
}
