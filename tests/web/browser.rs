//! The page in a real browser: Debian's headless Chromium driven through
//! chromedriver (WebDriver, fantoccini). It logs in with a fresh link,
//! checks the stores, the outstanding value and the settlement figures
//! against the reports' JSON, checks that a used link and no cookie show
//! no data, and saves a screenshot (`target/tmp/web-dashboard.png`;
//! `CARDD_WEB_SCREENSHOT=PATH` writes it there too, e.g. docs/web-dashboard.png).
//!
//! Without chromium and chromedriver the test fails under CI (`CI` set):
//! `.ci/run` installs them. Elsewhere it says so loudly and passes.
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::common::books::{admin_json, script, today};
use crate::common::http::free_addr;
use crate::{daemon, web_login};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a loopback port; killed on drop.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both binaries there, or None (after failing under CI).
fn installed() -> Option<()> {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if present {
        return Some(());
    }
    if std::env::var_os("CI").is_some() {
        panic!("{CHROMIUM} or {CHROMEDRIVER} is missing: .ci/run installs chromium and chromium-driver");
    }
    eprintln!(
        "\n*** SKIPPED the browser test: {CHROMIUM} or {CHROMEDRIVER} is missing \
         (apt-get install -y chromium chromium-driver) ***\n"
    );
    None
}

fn start_driver() -> Driver {
    let addr = free_addr();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={}", addr.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver { child, addr };
    let up = crate::common::wait_until(|| std::net::TcpStream::connect(addr).is_ok());
    assert!(up, "chromedriver did not listen on {addr}");
    driver
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let connect = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://{}", driver.addr))
        .await;
    connect.expect("a Chromium session through chromedriver")
}

/// The visible text of the element `css`.
async fn text(c: &Client, css: &str) -> String {
    let e = c.find(Locator::Css(css)).await;
    let e = e.unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
    e.text().await.expect("its text")
}

/// The texts of every element `css`, in page order.
async fn texts(c: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.expect("find_all") {
        out.push(e.text().await.expect("its text"));
    }
    out
}

/// The page shows no figures: the login page.
async fn shows_no_data(c: &Client) {
    let source = c.source().await.expect("page source");
    assert!(source.contains("Sign in"), "{source}");
    assert!(!source.contains("data-value"), "figures without a session");
}

#[tokio::test]
async fn the_page_in_chromium() {
    if installed().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, http) = daemon(dir.path());
    script(&d, &demo).await;
    let key = demo.owner_key_path();
    let day = today();
    let link = web_login(&d, &key, http);
    let driver = start_driver();
    let c = browser(&driver, &dir.path().join("chromium-profile")).await;
    let run = tokio::time::timeout(Duration::from_secs(120), async {
        c.goto(&link).await.expect("open the link");
        // The link's confirmation page; its button signs in (the post
        // from this page is the only thing that sets a session).
        assert_eq!(text(&c, "h1").await, "Sign in");
        let button = c.find(Locator::Css("#sign-in")).await.expect("the button");
        button.click().await.expect("press Sign in");
        // Redirected to the overview with the session cookie.
        let url = c.current_url().await.unwrap();
        assert_eq!(url.path(), "/", "{url}");
        assert_eq!(text(&c, "h1").await, "Overview");
        // The stores, by name, as the sales report lists them.
        let sales = admin_json(
            d.addr,
            &key,
            &["--json", "report", "sales", "--from", &day, "--to", &day],
        );
        let stores: Vec<String> = texts(&c, "#today-sales td[data-col=store_id]").await;
        let want: Vec<String> = sales["sales"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["store_id"].as_i64().unwrap())
            .map(|s| format!("#{s} "))
            .collect();
        assert_eq!(stores.len(), want.len(), "{stores:?}");
        for (shown, id) in stores.iter().zip(&want) {
            assert!(shown.starts_with(id), "{shown} vs {id}");
        }
        assert!(stores.iter().any(|s| s == "#3 Riverside"), "{stores:?}");
        // The outstanding value: the liability report's total, in CNY.
        let liability = admin_json(d.addr, &key, &["--json", "report", "liability"]);
        let total: i64 = liability["liability"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["total_minor"].as_i64().unwrap())
            .sum();
        let shown = text(&c, "#outstanding-total").await;
        assert_eq!(shown, cardd::render::money(total, 2, "CNY"));
        // Settlement: each pair's total as the report gives it.
        c.goto(&format!("http://{http}/settlement?from={day}&to={day}"))
            .await
            .unwrap();
        let settlement = admin_json(
            d.addr,
            &key,
            &[
                "--json",
                "report",
                "settlement",
                "--from",
                &day,
                "--to",
                &day,
            ],
        );
        let totals = texts(&c, "#settlement-settlement td[data-col=total_minor]").await;
        let want: Vec<String> = settlement["settlement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| cardd::render::format_amount(r["total_minor"].as_i64().unwrap(), 2))
            .collect();
        assert_eq!(totals, want);
        assert_eq!(totals, ["20.00", "250.00", "120.00"]);
        // The screenshot of the overview.
        c.goto(&format!("http://{http}/")).await.unwrap();
        let png = c.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"));
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-dashboard.png");
        std::fs::write(&out, &png).unwrap();
        if let Some(path) = std::env::var_os("CARDD_WEB_SCREENSHOT") {
            std::fs::write(path, &png).unwrap();
        }
        // No cookie: no data; the used link: no data either.
        c.delete_all_cookies().await.unwrap();
        c.goto(&format!("http://{http}/")).await.unwrap();
        shows_no_data(&c).await;
        c.goto(&link).await.unwrap();
        shows_no_data(&c).await;
        c.goto(&format!("http://{http}/liability")).await.unwrap();
        shows_no_data(&c).await;
    })
    .await;
    let _ = c.close().await;
    run.expect("the browser test took over 120 s");
}
