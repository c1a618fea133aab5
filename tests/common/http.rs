//! The HTTP listener by hand (`cardd serve --http-listen`): a GET over a
//! plain socket, a free port to give the daemon, and a sample of
//! Prometheus text. No HTTP client crate: the tests also send what no
//! client would (huge headers, half a request).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A loopback address with a port free a moment ago (the daemon binds it
/// next; the HTTP listener has no line on stdout to read a port 0 from).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address")
}

/// `n` free loopback addresses, all different: each is held until every
/// one is picked (one at a time, the kernel may hand the same port out
/// twice: a NATS cluster then refused its duplicate route).
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("its address"))
        .collect()
}

/// `GET path` with `Connection: close`: the status code and the body, or
/// None if the connection closed or timed out without a whole answer.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: cardd\r\nConnection: close\r\n\r\n");
    send(addr, request.as_bytes())
}

/// Sends raw `bytes` and reads the answer to its end (10 s at most).
pub fn send(addr: SocketAddr, bytes: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(bytes).ok()?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The value of the sample `series` (name and labels exactly as the
/// exposition writes them, e.g. `cardd_requests_total{op="purchase",result="ok"}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `GET /metrics`, which must answer 200.
pub fn metrics(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body
}

/// An HTTP answer taken apart: status, header lines (names lowercased)
/// and body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first header `name` (lowercase), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `Set-Cookie` line that sets cookie `name`, if any (an answer
    /// may set several).
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
            .find(|v| v.starts_with(&prefix))
    }
}

/// `METHOD path` with `extra` header lines (each "Name: value") and
/// `Connection: close`; None if no whole answer came (10 s at most).
pub fn request(addr: SocketAddr, method: &str, path: &str, extra: &[String]) -> Option<Answer> {
    request_with_body(addr, method, path, extra, "")
}

/// As [`request`], with `body` after the headers (its `Content-Length`
/// added when it is not empty).
pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[String],
    body: &str,
) -> Option<Answer> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: cardd\r\nConnection: close\r\n");
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(head.as_bytes()).ok()?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// `GET path` with the web page's session cookie (None: without).
pub fn get_page(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Answer {
    let extra: Vec<String> = cookie
        .map(|c| format!("Cookie: cardd_session={c}"))
        .into_iter()
        .collect();
    request(addr, "GET", path, &extra).unwrap_or_else(|| panic!("GET {path}: no answer"))
}

/// The rows of the page's `<table id="ID">`: each cell that carries a
/// report figure as (column, value), in order. None: no such table.
pub fn table_figures(html: &str, id: &str) -> Option<Vec<Vec<(String, String)>>> {
    let start = html.find(&format!("<table id=\"{id}\">"))?;
    let table = &html[start..];
    let table = &table[..table.find("</table>")?];
    let body = table.split_once("<tbody>")?.1;
    let rows = body
        .split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("data-col=\"")
                .skip(1)
                .filter_map(|cell| {
                    let (col, rest) = cell.split_once('"')?;
                    let value = rest.split_once("data-value=\"")?.1.split_once('"')?.0;
                    Some((col.to_string(), unescape(value)))
                })
                .collect()
        })
        .collect();
    Some(rows)
}

/// The `data-value` of the element with `id="ID"` (a headline figure).
pub fn figure(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let rest = html[at..].split_once("data-value=\"")?.1;
    Some(unescape(rest.split_once('"')?.0))
}

/// Undoes the template's HTML escaping of a value.
pub fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#x2f;", "/")
        .replace("&amp;", "&")
}
