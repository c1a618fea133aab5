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
