//! A demo upstream on loopback whose routes each show one way an upstream fails.
//!
//! Used by `examples/gateway.rs` (when no `--upstream` is given) and by the integration tests, so
//! that what the README shows is what the tests check. Well-formed routes are served by hyper;
//! the faults are written by hand on the raw socket, because no well-behaved server can send them.

#![allow(dead_code)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Each route, and what it does.
pub const ROUTES: &[(&str, &str)] = &[
    ("/ok", "200 with a small body"),
    (
        "/large?bytes=N",
        "200 with N bytes of a fixed pattern (at most 64 MiB)",
    ),
    (
        "/echo",
        "200 echoing the request: method, target, headers, body",
    ),
    (
        "/slow",
        "accepts and never answers (response timeout); also over h2c",
    ),
    (
        "/garbage",
        "answers bytes that are not HTTP (protocol error)",
    ),
    (
        "/close",
        "closes the connection before any response (terminated)",
    ),
    (
        "/reset",
        "resets the connection with a TCP RST (terminated)",
    ),
    (
        "/cut",
        "sends the head and half the body, then closes (incomplete body)",
    ),
    (
        "/huge-head",
        "sends a 1 MiB response header (header section too large)",
    ),
    (
        "/origin-500",
        "the origin's own 500, with its own body and headers",
    ),
    ("/origin-503", "the origin's own 503 with Retry-After: 7"),
    (
        "/origin-502",
        "an upstream proxy's 502 with its own Proxy-Status",
    ),
    (
        "/stall-body",
        "sends the head (Content-Length: 1000) and 10 bytes, then goes silent (read timeout)",
    ),
    (
        "/stall-chunked",
        "sends a chunked head and one 10-byte chunk, then goes silent (read timeout)",
    ),
    (
        "/drip?ms=N",
        "dribbles its response head out over N ms, then a whole body (slow head)",
    ),
    (
        "/drip-body?ms=N",
        "sends 10 body chunks, one every N ms (each gap counts for the read timeout)",
    ),
    (
        "/early-hints",
        "sends 103 Early Hints, then the real 200 (interim response)",
    ),
    (
        "/hints-then-stall",
        "sends 103 Early Hints, then nothing (response timeout)",
    ),
    (
        "/switch",
        "answers 101 Switching Protocols to a protocol nobody asked for (bad upgrade)",
    ),
    (
        "/ws",
        "a WebSocket echo server (upgrade with Upgrade: websocket)",
    ),
    (
        "/stale",
        "answers one request and keeps the connection, then drops the next request unanswered",
    ),
    (
        "/robots.txt",
        "a robots.txt a crawler may cache for a minute (Cache-Control: max-age=60)",
    ),
];

/// The body of `/ok`.
pub const OK_BODY: &str = "hello from the origin\n";
/// The body of `/origin-500`.
pub const ORIGIN_500_BODY: &str = "origin says: database unavailable\n";
/// The body of `/origin-503`.
pub const ORIGIN_503_BODY: &str = "{\"origin\":\"maintenance\"}";
/// The body of `/robots.txt`.
pub const ROBOTS_TXT: &str = "User-agent: *\nDisallow: /private/\n";
/// The body of `/origin-502`.
pub const ORIGIN_502_BODY: &str = "upstream proxy: bad gateway\n";
/// The declared length of `/stall-body`.
pub const STALL_DECLARED: usize = 1000;
/// How much of `/stall-body` (and of `/stall-chunked`) is sent before the silence.
pub const STALL_SENT: usize = 10;
/// The chunks of `/drip-body`, each [`DRIP_CHUNK`] bytes.
pub const DRIP_CHUNKS: usize = 10;
/// The size of one chunk of `/drip-body`.
pub const DRIP_CHUNK: usize = 100;
/// The `Upgrade` a 101 from `/switch` names: no client asks for it.
pub const SWITCH_PROTOCOL: &str = "demo-nobody-asked/1";
/// The declared and the sent length of `/cut`.
pub const CUT_DECLARED: usize = 1000;
/// How much of `/cut`'s body is sent before the close.
pub const CUT_SENT: usize = 500;

/// A running demo upstream.
pub struct DemoUpstream {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a demo upstream on an ephemeral loopback port.
pub async fn spawn() -> io::Result<DemoUpstream> {
    spawn_on("127.0.0.1:0".parse().expect("loopback address")).await
}

/// Starts a demo upstream on `addr`.
pub async fn spawn_on(addr: SocketAddr) -> io::Result<DemoUpstream> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = serve_connection(stream).await;
            });
        }
    });
    Ok(DemoUpstream { addr, task })
}

/// A loopback address on which nothing listens: connecting to it is refused.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    addr
}

/// The 64-byte pattern that `/large` repeats, so a client can check every byte.
pub fn large_body(len: usize) -> Vec<u8> {
    const PATTERN: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n";
    PATTERN.iter().copied().cycle().take(len).collect()
}

async fn serve_connection(stream: TcpStream) -> io::Result<()> {
    if is_http2_preface(&stream).await? {
        // h2c with prior knowledge: one connection carries every request, so thousands of
        // stalled requests cost the gateway one socket, not thousands.
        let service = hyper::service::service_fn(http2_route);
        return hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .max_concurrent_streams(100_000)
            .serve_connection(TokioIo::new(stream), service)
            .await
            .map_err(io::Error::other);
    }
    let target = peek_target(&stream).await?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let millis = || {
        let ms = query
            .strip_prefix("ms=")
            .and_then(|n| n.parse::<u64>().ok());
        Duration::from_millis(ms.unwrap_or(500).min(60_000))
    };
    match path {
        "/slow" => stall(stream).await,
        "/stall-body" => stall_body(stream, false).await,
        "/stall-chunked" => stall_body(stream, true).await,
        "/drip" => drip_head(stream, millis()).await,
        "/drip-body" => drip_body(stream, millis()).await,
        "/early-hints" => early_hints(stream, true).await,
        "/hints-then-stall" => early_hints(stream, false).await,
        "/switch" => switch_unasked(stream).await,
        "/ws" => websocket_echo(stream).await,
        "/stale" => answer_once_then_drop(stream).await,
        "/garbage" => raw_reply(stream, b"this is not HTTP at all\r\n\r\n").await,
        "/close" => close_before_head(stream).await,
        "/reset" => reset(stream).await,
        "/cut" => cut_body(stream).await,
        "/huge-head" => huge_head(stream).await,
        _ => {
            let service = hyper::service::service_fn(well_formed);
            // One request per connection: the route of a connection is read from its first
            // request line, so a pooled connection must not carry a later request to a fault.
            hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await
                .map_err(io::Error::other)
        }
    }
}

/// Whether the connection opens with the HTTP/2 preface (read without consuming it).
async fn is_http2_preface(stream: &TcpStream) -> io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut buf = [0u8; 14];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Over HTTP/2 only the well-formed routes and `/slow` exist: the faults are HTTP/1 byte tricks.
async fn http2_route(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/slow" {
        std::future::pending::<()>().await;
    }
    well_formed(request).await
}

/// The target (path and query) of the first request on the connection, read without consuming
/// it, so hyper can still parse the request.
async fn peek_target(stream: &TcpStream) -> io::Result<String> {
    let mut buf = vec![0u8; 2048];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(String::new());
        }
        if let Some(end) = buf[..n].windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]);
            let target = line.split(' ').nth(1).unwrap_or("/");
            return Ok(target.to_owned());
        }
        if n == buf.len() {
            return Ok(String::new());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads the request head off the socket (fault routes never look at it).
async fn read_head(stream: &mut TcpStream) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

async fn stall(mut stream: TcpStream) -> io::Result<()> {
    read_head(&mut stream).await?;
    // Hold the connection open, silent, until the peer goes away.
    let mut buf = [0u8; 1024];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

async fn raw_reply(mut stream: TcpStream, bytes: &[u8]) -> io::Result<()> {
    read_head(&mut stream).await?;
    stream.write_all(bytes).await?;
    stream.shutdown().await
}

async fn close_before_head(mut stream: TcpStream) -> io::Result<()> {
    read_head(&mut stream).await?;
    stream.shutdown().await
}

async fn reset(mut stream: TcpStream) -> io::Result<()> {
    read_head(&mut stream).await?;
    // SO_LINGER 0: closing sends RST instead of FIN.
    stream.set_zero_linger()?;
    drop(stream);
    Ok(())
}

async fn cut_body(mut stream: TcpStream) -> io::Result<()> {
    read_head(&mut stream).await?;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {CUT_DECLARED}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&large_body(CUT_SENT)).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// Holds the connection open, silent, until the peer goes away.
async fn hold(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

async fn stall_body(mut stream: TcpStream, chunked: bool) -> io::Result<()> {
    read_head(&mut stream).await?;
    let body = large_body(STALL_SENT);
    if chunked {
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await?;
        stream
            .write_all(format!("{:x}\r\n", body.len()).as_bytes())
            .await?;
        stream.write_all(&body).await?;
        stream.write_all(b"\r\n").await?;
    } else {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {STALL_DECLARED}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
    }
    stream.flush().await?;
    hold(stream).await
}

async fn drip_head(mut stream: TcpStream, over: Duration) -> io::Result<()> {
    read_head(&mut stream).await?;
    // `connection: close`: this socket serves no second request.
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-dripped: yes\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        OK_BODY.len()
    );
    let pieces = 5;
    let piece = head.len().div_ceil(pieces);
    for bytes in head.as_bytes().chunks(piece) {
        stream.write_all(bytes).await?;
        stream.flush().await?;
        tokio::time::sleep(over / pieces as u32).await;
    }
    stream.write_all(OK_BODY.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

async fn drip_body(mut stream: TcpStream, every: Duration) -> io::Result<()> {
    read_head(&mut stream).await?;
    let len = DRIP_CHUNKS * DRIP_CHUNK;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;
    for chunk in large_body(len).chunks(DRIP_CHUNK) {
        tokio::time::sleep(every).await;
        stream.write_all(chunk).await?;
        stream.flush().await?;
    }
    hold(stream).await
}

async fn early_hints(mut stream: TcpStream, then_answer: bool) -> io::Result<()> {
    read_head(&mut stream).await?;
    stream
        .write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\n")
        .await?;
    stream.flush().await?;
    if then_answer {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{OK_BODY}",
            OK_BODY.len()
        );
        stream.write_all(reply.as_bytes()).await?;
        stream.flush().await?;
        return stream.shutdown().await;
    }
    hold(stream).await
}

async fn switch_unasked(mut stream: TcpStream) -> io::Result<()> {
    read_head(&mut stream).await?;
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {SWITCH_PROTOCOL}\r\n\r\n"
    );
    stream.write_all(reply.as_bytes()).await?;
    stream
        .write_all(b"\x00\x01 bytes of a protocol nobody asked for")
        .await?;
    stream.flush().await?;
    hold(stream).await
}

/// Echoes every text and binary message back; a close ends it.
async fn websocket_echo(stream: TcpStream) -> io::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut socket = tokio_tungstenite::accept_async(stream)
        .await
        .map_err(io::Error::other)?;
    while let Some(message) = socket.next().await {
        match message.map_err(io::Error::other)? {
            message @ (Message::Text(_) | Message::Binary(_)) => {
                socket.send(message).await.map_err(io::Error::other)?;
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

/// A keep-alive connection that the origin gives up on just as the client reuses it: the first
/// request gets a 200; the second is read whole and dropped with the connection.
async fn answer_once_then_drop(mut stream: TcpStream) -> io::Result<()> {
    read_request(&mut stream).await?;
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{OK_BODY}",
        OK_BODY.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.flush().await?;
    read_request(&mut stream).await?;
    stream.shutdown().await
}

/// Reads one request: its head, and a body of the `Content-Length` it declares.
async fn read_request(stream: &mut TcpStream) -> io::Result<()> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let declared = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if bytes.len() >= end + 4 + declared {
                return Ok(());
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 || bytes.len() > 64 * 1024 {
            return Ok(());
        }
        bytes.extend_from_slice(&buf[..n]);
    }
}

async fn huge_head(mut stream: TcpStream) -> io::Result<()> {
    read_head(&mut stream).await?;
    let mut head = b"HTTP/1.1 200 OK\r\nx-huge: ".to_vec();
    head.resize(head.len() + 1024 * 1024, b'a');
    head.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
    // The client gives up part way; a write error then is expected.
    let _ = stream.write_all(&head).await;
    Ok(())
}

async fn well_formed(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let respond = |status: u16, headers: &[(&str, &str)], body: Bytes| {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        Ok(builder.body(Full::new(body)).expect("valid demo response"))
    };
    match request.uri().path() {
        "/origin-500" => respond(
            500,
            &[("content-type", "text/plain"), ("x-origin", "yes")],
            Bytes::from_static(ORIGIN_500_BODY.as_bytes()),
        ),
        "/origin-503" => respond(
            503,
            &[("content-type", "application/json"), ("retry-after", "7")],
            Bytes::from_static(ORIGIN_503_BODY.as_bytes()),
        ),
        "/origin-502" => respond(
            502,
            &[
                ("content-type", "text/plain"),
                ("proxy-status", "origin-lb; error=connection_refused"),
            ],
            Bytes::from_static(ORIGIN_502_BODY.as_bytes()),
        ),
        "/robots.txt" => respond(
            200,
            &[
                ("content-type", "text/plain"),
                ("cache-control", "max-age=60"),
                ("last-modified", "Mon, 01 Dec 2025 00:00:00 GMT"),
            ],
            Bytes::from_static(ROBOTS_TXT.as_bytes()),
        ),
        "/large" => {
            let len = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(1024 * 1024)
                .min(64 * 1024 * 1024);
            respond(
                200,
                &[("content-type", "application/octet-stream")],
                Bytes::from(large_body(len)),
            )
        }
        "/echo" => {
            let mut text = format!("{} {}\n", request.method(), request.uri());
            for (name, value) in request.headers() {
                text.push_str(&format!(
                    "{name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            text.push('\n');
            let body = request.into_body().collect().await.map(|b| b.to_bytes());
            text.push_str(&String::from_utf8_lossy(&body.unwrap_or_default()));
            respond(200, &[("content-type", "text/plain")], Bytes::from(text))
        }
        _ => respond(
            200,
            &[("content-type", "text/plain")],
            Bytes::from_static(OK_BODY.as_bytes()),
        ),
    }
}
