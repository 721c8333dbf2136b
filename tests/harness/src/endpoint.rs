//! A service's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) as tests reach it: a free
//! loopback address to give it, and a minimal GET. Loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A free loopback address (bound, then released) to put a service's endpoint on, so the test
/// knows where to GET it.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A minimal HTTP/1.1 GET over loopback: (status, body), or `None` if nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The `/metrics` text at `addr` (panics unless it answers 200).
pub fn metrics_text(addr: SocketAddr) -> String {
    match http_get(addr, "/metrics") {
        Some((200, body)) => body,
        other => panic!("/metrics answered {other:?}"),
    }
}
