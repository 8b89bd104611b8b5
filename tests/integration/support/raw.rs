//! Raw HTTP/1.1 over TCP, for requests no well-behaved client would send: heads that never end,
//! conflicting framing, absolute-form targets. Responses are parsed by their own framing
//! (`Content-Length` or chunked), so a test can tell one response from two, and a clean close
//! from a reset. Loopback only; every read is bounded.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a connection ended while we read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The peer closed it (FIN).
    Closed,
    /// The peer reset it, or the socket failed.
    Reset,
    /// Still open when the bound ran out.
    StillOpen,
}

/// Connects to `addr`, bounded.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to a loopback listener");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Writes `bytes`, ignoring a failure: a server may refuse a request and close before reading it
/// all, and what it answered is what the test checks.
pub async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
}

/// Reads until the peer closes the connection or `bound` passes.
pub async fn read_until_close(stream: &mut TcpStream, bound: Duration) -> (Vec<u8>, Ending) {
    let deadline = Instant::now() + bound;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return (bytes, Ending::StillOpen),
            Ok(Ok(0)) => return (bytes, Ending::Closed),
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (bytes, Ending::Reset),
        }
    }
}

/// Sends `request` on a fresh connection and reads until the server closes it (at most 5 s).
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> (Vec<Response>, Ending) {
    let mut stream = connect(addr).await;
    send(&mut stream, request).await;
    let (bytes, ending) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    (parse_all(&bytes), ending)
}

/// One response read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header fields in order, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of `name`; fails the test if it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} appears {} times", all.len());
        all.first().copied()
    }
}

/// Parses one response at the start of `bytes`; returns it and how many bytes it took, or `None`
/// if it is not complete yet. A body without framing runs to the end of `bytes`.
pub fn parse_one(bytes: &[u8]) -> Option<(Response, usize)> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..head_end]).expect("a response head is ASCII");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a header line has a colon");
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &bytes[head_end + 4..];
    let chunked = response
        .all("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = std::str::from_utf8(&rest[at..line_end]).expect("ASCII");
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16)
                .expect("a hex chunk size");
            at = line_end + 2;
            if size == 0 {
                // No trailers in these tests: the blank line ends the body.
                if rest.len() < at + 2 {
                    return None;
                }
                return Some((response, head_end + 4 + at + 2));
            }
            if rest.len() < at + size + 2 {
                return None;
            }
            response.body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    }
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    match response.header("content-length") {
        _ if no_body => Some((response, head_end + 4)),
        Some(len) => {
            let len: usize = len.parse().expect("a numeric Content-Length");
            if rest.len() < len {
                return None;
            }
            response.body = rest[..len].to_vec();
            Some((response, head_end + 4 + len))
        }
        None => {
            response.body = rest.to_vec();
            Some((response, bytes.len()))
        }
    }
}

/// Every complete response in `bytes`, in order.
pub fn parse_all(mut bytes: &[u8]) -> Vec<Response> {
    let mut responses = Vec::new();
    while let Some((response, used)) = parse_one(bytes) {
        responses.push(response);
        bytes = &bytes[used..];
        if bytes.is_empty() {
            break;
        }
    }
    responses
}

/// Reads exactly one framed response (the connection may stay open), at most 5 s.
pub async fn read_response(stream: &mut TcpStream) -> Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some((response, _)) = parse_one(&bytes) {
            if response.header("content-length").is_some()
                || response
                    .all("transfer-encoding")
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case("chunked"))
            {
                return response;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "no complete response in 5 s; got {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return parse_one(&bytes)
                    .unwrap_or_else(|| {
                        panic!(
                            "connection ended inside a response: {:?}",
                            String::from_utf8_lossy(&bytes)
                        )
                    })
                    .0;
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}
