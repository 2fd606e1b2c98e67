//! Reading a node's Prometheus text (`kahuna serve --metrics-addr`) in process tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;

/// The node's `/metrics` response (headers included), `None` if it does not answer.
pub fn scrape(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The value of the sample line `series` (the exact series text before the value).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}
