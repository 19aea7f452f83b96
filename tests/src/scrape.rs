//! Reading a process's Prometheus `GET /metrics` page in tests.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

/// One `GET /metrics`: the body.
///
/// # Panics
/// When the endpoint cannot be reached or does not answer 200.
pub fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("read the answer");
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .expect("a header and a body")
}

/// Every series of metric `name` → its value, keyed by its label text
/// (`version="beta"`, or empty).
pub fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of label `label` in a series' label text (`version="a",
/// reason="late"` → `late` for `reason`).
pub fn label<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == label).then(|| value.trim_matches('"'))
    })
}

/// The address `ADDR` of the first line of `log` holding `marker`
/// followed by `ADDR` (up to whitespace), waiting up to 60 s for it.
///
/// # Panics
/// When no such line appears in time.
pub fn logged_addr(log: &std::path::Path, marker: &str) -> SocketAddr {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .find_map(|l| l.split_once(marker).map(|(_, rest)| rest))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok());
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {marker:?} in:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
