//! Login links, sessions and the web port's limits: a link works once, no
//! cookie or a used link shows no data, logout ends the session, a removed
//! key's session ends, security headers on every answer, no writes, bodies
//! and link requests bounded, and the terminal port unaffected.
use crate::common::books::{admin, script};
use crate::common::http::{get_page, request};
use crate::common::{inquiry, Daemon};
use crate::{confirmation, daemon, from_this_page, open_link, post_form, web_login};

/// A page with no data: the login page, no figure on it.
#[track_caller]
fn no_data(a: &crate::common::http::Answer) {
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.body.contains("Sign in"), "{}", a.body);
    assert!(!a.body.contains("data-value"), "figures without a session");
}

#[tokio::test]
async fn a_link_works_once_and_a_session_ends_at_logout() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, http) = daemon(dir.path());
    script(&d, &demo).await;
    let link = web_login(&d, &demo.owner_key_path(), http);
    let cookie = open_link(http, &link);
    // Used: the login page, no data, no cookie.
    let path = &link[link.find("/login/").unwrap()..];
    let again = get_page(http, path, None);
    no_data(&again);
    assert!(again.header("set-cookie").is_none());
    // Not a link at all.
    no_data(&get_page(http, &format!("/login/{}", "0".repeat(64)), None));
    // No cookie, or a made-up one: no data on any page or download.
    for page in [
        "/",
        "/settlement",
        "/liability",
        "/members",
        "/card",
        "/csv/overview.csv",
    ] {
        no_data(&get_page(http, page, None));
        no_data(&get_page(http, page, Some(&"f".repeat(64))));
    }
    assert_eq!(get_page(http, "/", Some(&cookie)).status, 200);
    // Logout: a POST; the cookie is cleared and the session gone.
    let out = request(
        http,
        "POST",
        "/logout",
        &[format!("Cookie: cardd_session={cookie}")],
    )
    .expect("logout answers");
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    no_data(&get_page(http, "/", Some(&cookie)));
}

/// Login CSRF: a page elsewhere that holds a link of its own brand cannot
/// sign a victim's browser in with it. Opening the link (a navigation,
/// an image) sets no session; a post that is cross-site, has no or a
/// foreign `Origin`, or lacks the browser's own pre-login cookie and its
/// check sets none either and leaves the link unspent; the post from the
/// link's own page signs in, once.
#[tokio::test]
async fn only_the_links_own_page_signs_a_browser_in() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, http) = daemon(dir.path());
    let link = web_login(&d, &demo.owner_key_path(), http);
    // Opened twice (as an image, then by the victim): no session either
    // time, the link still live, one pre-login cookie kept.
    let form = confirmation(http, &link, None);
    let again = confirmation(http, &link, Some(&form.pre));
    assert_eq!(again.pre, form.pre);
    assert_eq!(again.check, form.check);
    let refused = |a: &crate::common::http::Answer, what: &str| {
        assert_eq!(a.status, 403, "{what}: {}", a.body);
        assert!(a.set_cookie("cardd_session").is_none(), "{what}: a session");
        assert!(!a.body.contains("data-value"), "{what}: figures");
    };
    let with = |lines: &[&str]| -> Vec<String> {
        let mut h = vec![format!("Cookie: cardd_login={}", form.pre)];
        h.extend(lines.iter().map(|l| l.to_string()));
        h
    };
    for (what, headers) in [
        (
            "cross-site",
            with(&["Sec-Fetch-Site: cross-site", "Origin: http://evil.example"]),
        ),
        (
            "another port of the host",
            with(&["Sec-Fetch-Site: same-site", "Origin: http://cardd:8080"]),
        ),
        ("a foreign Origin", with(&["Origin: http://evil.example"])),
        ("an opaque Origin", with(&["Origin: null"])),
        ("no Origin", with(&[])),
    ] {
        refused(&post_form(http, &form, &headers), what);
    }
    // From this page, but not this browser's form: no pre-login cookie,
    // or another browser's (the attacker's own) with its check.
    let mut bare = from_this_page(&form.pre);
    bare.remove(0);
    refused(&post_form(http, &form, &bare), "no pre-login cookie");
    let other = confirmation(http, &link, None);
    assert_ne!(other.pre, form.pre);
    refused(
        &post_form(http, &other, &from_this_page(&form.pre)),
        "another browser's check",
    );
    // None of it spent the link: the honest post signs in, once.
    let a = post_form(http, &form, &from_this_page(&form.pre));
    assert_eq!(a.status, 303, "{}", a.body);
    let cookie = a.set_cookie("cardd_session").expect("a session");
    assert!(a.set_cookie("cardd_login").unwrap().contains("Max-Age=0"));
    let session = cookie.split(';').next().unwrap().to_string();
    let page = request(http, "GET", "/", &[format!("Cookie: {session}")]).unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("data-value"), "the figures");
    let twice = post_form(http, &form, &from_this_page(&form.pre));
    assert_eq!(twice.status, 401);
    assert!(twice.set_cookie("cardd_session").is_none());
}

#[tokio::test]
async fn headers_no_writes_and_bounded_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, http) = daemon(dir.path());
    let cookie = open_link(http, &web_login(&d, &demo.owner_key_path(), http));
    let page = get_page(http, "/", Some(&cookie));
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(csp.contains("script-src 'none'"));
    assert!(!page.body.contains("<script"), "no script on the page");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let css = get_page(http, "/style.css", None);
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    // The login page too carries the headers.
    assert!(get_page(http, "/", None)
        .header("content-security-policy")
        .is_some());
    // No writes: other methods are refused; unknown paths are 404.
    let with = [format!("Cookie: cardd_session={cookie}")];
    for (method, path) in [("POST", "/"), ("PUT", "/settlement"), ("DELETE", "/card")] {
        let a = request(http, method, path, &with).expect("an answer");
        assert_eq!(a.status, 405, "{method} {path}");
    }
    assert_eq!(get_page(http, "/nothing-here", Some(&cookie)).status, 404);
    // An oversized body is refused unread.
    let big = [with[0].clone(), "Content-Length: 100000".to_string()];
    let a = request(http, "POST", "/logout", &big).expect("an answer");
    assert_eq!(a.status, 413);
    assert_eq!(
        get_page(http, "/", Some(&cookie)).status,
        200,
        "session kept"
    );
    // Oversized headers: 431 (hyper's bound), the daemon goes on.
    let huge = [format!("X-Pad: {}", "a".repeat(20 * 1024))];
    let a = request(http, "GET", "/", &huge);
    assert!(a.is_none_or(|a| a.status == 431));
    // The terminal port is unaffected by all of it.
    let mut till = demo.terminal(d.addr, 0).await;
    let card = &demo.manifest.cards[0];
    assert_eq!(inquiry(&mut till, card).await.balance_minor, 10_000);
}

#[tokio::test]
async fn links_are_rate_limited_per_key_and_only_for_reading_roles() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, http) = daemon(dir.path());
    let key = demo.owner_key_path();
    for _ in 0..cardd::limits::WEB_LINKS_PER_KEY {
        web_login(&d, &key, http);
    }
    let o = admin(
        d.addr,
        &key,
        &["--json", "web-login", "--http", &http.to_string()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stdout).contains("RATE_LIMITED"));
    // A till's key reads no books.
    let till = demo.terminal_key_path(0);
    let o = admin(
        d.addr,
        &till,
        &["--json", "web-login", "--http", &http.to_string()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stdout).contains("WRONG_ROLE"));
}

#[tokio::test]
async fn a_removed_keys_session_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, http) = daemon(dir.path());
    let key = demo.owner_key_path();
    let auditor = dir.path().join("auditor.key");
    let add = [
        "add-key",
        "--role",
        "auditor",
        "--key-out",
        auditor.to_str().unwrap(),
    ];
    assert_eq!(admin(d.addr, &key, &add).status.code(), Some(0));
    let cookie = open_link(http, &web_login(&d, &auditor, http));
    assert_eq!(get_page(http, "/liability", Some(&cookie)).status, 200);
    let remove = ["remove-key", "--key-file", auditor.to_str().unwrap()];
    assert_eq!(admin(d.addr, &key, &remove).status.code(), Some(0));
    no_data(&get_page(http, "/liability", Some(&cookie)));
}

/// A restart ends every session (they live in memory).
#[tokio::test]
async fn a_restart_ends_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, demo, http) = daemon(dir.path());
    let cookie = open_link(http, &web_login(&d, &demo.owner_key_path(), http));
    d.kill9();
    let data = d.data.clone();
    drop(d);
    let _d = Daemon::start(&data, &["--http-listen", &http.to_string()]);
    no_data(&get_page(http, "/", Some(&cookie)));
}
