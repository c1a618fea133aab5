//! Every figure on each page equals the same report's `--json` figure
//! (plain HTTP; the page marks each figure cell with its column and the
//! report's value), for the owner and for a store manager.
use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::common::books::{admin, admin_json, script, today};
use crate::common::http::{figure, get_page, table_figures, unescape};
use crate::{daemon, open_link, web_login};

/// The page's table `id` holds exactly the rows of `rows` (a report
/// section's JSON), each shown figure equal to the JSON's.
#[track_caller]
fn same_figures(html: &str, id: &str, rows: &Value) {
    let shown = table_figures(html, id).unwrap_or_else(|| {
        let rows = rows.as_array().map_or(0, Vec::len);
        assert_eq!(
            rows, 0,
            "no table {id} on the page, the report has {rows} rows"
        );
        vec![]
    });
    let rows = rows.as_array().expect("a section is an array");
    assert_eq!(shown.len(), rows.len(), "{id}: rows");
    for (page_row, json_row) in shown.iter().zip(rows) {
        assert!(!page_row.is_empty(), "{id}: a row without figures");
        for (col, value) in page_row {
            let want = match &json_row[col] {
                Value::String(s) => s.clone(),
                Value::Null => panic!("{id}: column {col} is not in the report"),
                v => v.to_string(),
            };
            assert_eq!(value, &want, "{id}: {col}");
        }
    }
}

fn report(addr: SocketAddr, key: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json", "report"];
    all.extend_from_slice(args);
    admin_json(addr, key, &all)
}

/// The bars of the page's `<svg id="ID">`: (label, value) in order.
fn bars(html: &str, id: &str) -> Vec<(String, String)> {
    let start = html.find(&format!("<svg id=\"{id}\"")).expect("the chart");
    let svg = &html[start..];
    let svg = &svg[..svg.find("</svg>").unwrap()];
    svg.split("<g data-label=\"")
        .skip(1)
        .map(|g| {
            let (label, rest) = g.split_once('"').unwrap();
            let value = rest.split_once("data-value=\"").unwrap().1;
            (
                unescape(label),
                value.split_once('"').unwrap().0.to_string(),
            )
        })
        .collect()
}

/// The settlement matrix's cells as text, header row first.
fn matrix_cells(html: &str) -> Vec<Vec<String>> {
    let start = html
        .find("<table id=\"settlement-matrix\">")
        .expect("the matrix");
    let table = &html[start..];
    let table = &table[..table.find("</table>").unwrap()];
    let cell_text = |c: &str| {
        let text = c.split_once('>').map_or("", |(_, t)| t);
        unescape(text.split('<').next().unwrap_or("").trim())
    };
    table
        .split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<t")
                .skip(1)
                .filter(|c| c.starts_with('d') || c.starts_with('h'))
                .map(cell_text)
                .collect()
        })
        .collect()
}

/// The first day of `day`'s month.
fn month_start(day: &str) -> String {
    format!("{}01", &day[..8])
}

#[tokio::test]
async fn every_figure_on_the_pages_is_the_reports_figure() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, http) = daemon(dir.path());
    let y = script(&d, &demo).await;
    let key = demo.owner_key_path();
    let cookie = open_link(http, &web_login(&d, &key, http));
    let cookie = Some(cookie.as_str());
    let day = today();

    let page = get_page(http, "/", cookie);
    assert_eq!(page.status, 200, "{}", page.body);
    let html = &page.body;
    let today_sales = report(d.addr, &key, &["sales", "--from", &day, "--to", &day]);
    same_figures(html, "today-sales", &today_sales["sales"]);
    same_figures(html, "today-total", &today_sales["total"]);
    let month = month_start(&day);
    let month_sales = report(d.addr, &key, &["sales", "--from", &month, "--to", &day]);
    same_figures(html, "month-sales", &month_sales["sales"]);
    same_figures(html, "month-total", &month_sales["total"]);
    // The hand-computed books: store 2 sold 40,000 and refunded 15,000.
    let store_2 = table_figures(html, "today-sales").unwrap();
    assert!(store_2
        .iter()
        .any(|r| r.contains(&("store_id".into(), "2".into()))
            && r.contains(&("net_sales_minor".into(), "25000".into()))));
    let liability = report(d.addr, &key, &["liability"]);
    let total: i64 = liability["liability"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["total_minor"].as_i64().unwrap())
        .sum();
    // Store 1 holds 225,000 paid and 23,000 bonus (tests/books).
    assert_eq!(total, 248_000);
    assert_eq!(figure(html, "outstanding-total"), Some(total.to_string()));
    for (id, column) in [
        ("outstanding-paid", "paid_minor"),
        ("outstanding-bonus", "bonus_minor"),
    ] {
        let sum: i64 = liability["liability"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[column].as_i64().unwrap())
            .sum();
        assert_eq!(figure(html, id), Some(sum.to_string()), "{id}");
    }
    // The chart: each day's bar is the sales report's net sales that day.
    let first = cardd::state::books::day_of_text(&day).unwrap() - 29;
    let first = cardd::state::books::day_text(first);
    let by_day = report(
        d.addr,
        &key,
        &["sales", "--by", "day", "--from", &first, "--to", &day],
    );
    let chart = bars(html, "chart");
    assert_eq!(chart.len(), 30);
    assert_eq!(chart[0].0, first);
    assert_eq!(chart[29], (day.clone(), "39000".to_string()));
    for row in by_day["sales"].as_array().unwrap() {
        let want = (
            row["day"].as_str().unwrap().to_string(),
            row["net_sales_minor"].to_string(),
        );
        assert!(chart.contains(&want), "{want:?} not in {chart:?}");
    }
    let shown: i64 = chart.iter().map(|(_, v)| v.parse::<i64>().unwrap()).sum();
    assert_eq!(
        shown,
        by_day["total"][0]["net_sales_minor"].as_i64().unwrap()
    );

    let path = format!("/settlement?from={day}&to={day}");
    let html = get_page(http, &path, cookie).body;
    let settlement = report(d.addr, &key, &["settlement", "--from", &day, "--to", &day]);
    same_figures(&html, "settlement-settlement", &settlement["settlement"]);
    same_figures(&html, "settlement-net", &settlement["net"]);
    // The matrix: a row per paying store, a column per receiving store.
    let matrix = matrix_cells(&html);
    let header = [
        "owes ↓ / to →",
        "#0 head office",
        "#1 Downtown",
        "#2 Airport",
        "#3 Riverside",
    ];
    assert_eq!(matrix[0], header);
    assert_eq!(matrix[2], ["#1 Downtown", "", "", "250.00", "120.00"]);
    assert_eq!(matrix[1], ["#0 head office", "", "", "", "20.00"]);

    let html = get_page(http, "/liability", cookie).body;
    same_figures(&html, "liability-liability", &liability["liability"]);
    same_figures(&html, "liability-aging", &liability["aging"]);
    let aging: Vec<(String, String)> = liability["aging"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let days = r["days_since_activity"].as_str().unwrap();
            (format!("{days} days"), r["total_minor"].to_string())
        })
        .collect();
    assert_eq!(bars(&html, "aging-bars"), aging);

    let html = get_page(http, "/members?idle_days=0", cookie).body;
    let dormant = report(d.addr, &key, &["dormant"]);
    same_figures(&html, "dormant-dormant", &dormant["dormant"]);
    same_figures(&html, "dormant-summary", &dormant["summary"]);
    let rfm = report(d.addr, &key, &["rfm"]);
    same_figures(&html, "rfm-rfm", &rfm["rfm"]);
    same_figures(&html, "rfm-summary", &rfm["summary"]);
    assert!(!rfm["rfm"].as_array().unwrap().is_empty());

    // Card Y holds 15,000 paid and 3,000 bonus; its records of the last 30
    // days are the activity report's.
    let html = get_page(http, &format!("/card?card={y}"), cookie).body;
    assert_eq!(figure(&html, "card-balance"), Some("18000".into()));
    assert_eq!(figure(&html, "card-paid"), Some("15000".into()));
    let activity = report(
        d.addr,
        &key,
        &["activity", "--card", &y, "--from", &first, "--to", &day],
    );
    same_figures(&html, "card-activity", &activity["activity"]);
    assert_eq!(
        activity["activity"].as_array().unwrap().len(),
        3,
        "{activity}"
    );
    let seq = &activity["activity"][0]["seq"];
    assert!(
        unescape(&html).contains(&format!("<a href=\"/record/{seq}\">")),
        "no link to record {seq}"
    );

    // A record by its sequence number: the hash its receipt gave.
    let mut till = demo.terminal(d.addr, 0).await;
    let sale = crate::common::ok(&mut till, 500, crate::common::purchase(&y, 100)).await;
    let receipt = sale.receipt.expect("a receipt");
    let html = get_page(http, &format!("/record/{}", receipt.seq), cookie).body;
    let fields = table_figures(&html, "record").expect("the record's table");
    assert!(
        fields.contains(&vec![("hash".into(), hex::encode(&receipt.hash))]),
        "{fields:?}"
    );
    assert!(fields.contains(&vec![("paid_out_minor".into(), "100".into())]));

    // The download is the report's own CSV (`report --csv`).
    let csv = get_page(
        http,
        &format!("/csv/settlement.csv?from={day}&to={day}"),
        cookie,
    );
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let o = admin(
        d.addr,
        &key,
        &[
            "report",
            "settlement",
            "--from",
            &day,
            "--to",
            &day,
            "--csv",
        ],
    );
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("1,2,25000,0,25000"), "{printed}");
    assert!(csv.body.contains(printed.as_ref()), "{}", csv.body);
}

#[tokio::test]
async fn a_store_manager_sees_only_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo, http) = daemon(dir.path());
    script(&d, &demo).await;
    let key = demo.owner_key_path();
    let manager = dir.path().join("manager.key");
    let add = [
        "add-key",
        "--role",
        "store-manager",
        "--store",
        "2",
        "--key-out",
        manager.to_str().unwrap(),
    ];
    assert_eq!(admin(d.addr, &key, &add).status.code(), Some(0));
    let cookie = open_link(http, &web_login(&d, &manager, http));
    let cookie = Some(cookie.as_str());
    let day = today();

    let html = get_page(http, "/", cookie).body;
    let sales = report(d.addr, &manager, &["sales", "--from", &day, "--to", &day]);
    same_figures(&html, "today-sales", &sales["sales"]);
    let rows = table_figures(&html, "today-sales").unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].contains(&("store_id".into(), "2".into())));
    assert!(html.contains("manager of store #2"));

    let path = format!("/settlement?from={day}&to={day}");
    let html = get_page(http, &path, cookie).body;
    let settlement = report(
        d.addr,
        &manager,
        &["settlement", "--from", &day, "--to", &day],
    );
    same_figures(&html, "settlement-settlement", &settlement["settlement"]);
    assert!(
        !html.contains("data-value=\"3\""),
        "another pair of stores shown"
    );

    // Members and cards are brand-wide: refused, no figures.
    let html = get_page(http, "/members", cookie).body;
    assert!(table_figures(&html, "dormant-dormant").is_none());
    assert!(html.contains("a store manager of store 2"), "{html}");
    let y = cardd::card_number::generate(demo.manifest.brand_id);
    let html = get_page(http, &format!("/card?card={y}"), cookie).body;
    assert!(crate::common::http::figure(&html, "card-balance").is_none());
    // Records: its own store's only (record 1 is the brand's creation).
    let html = get_page(http, "/record/1", cookie).body;
    assert!(table_figures(&html, "record").is_none());
    assert!(html.contains("its own store"), "{html}");
}
