//! What happens after the response head: bodies that stall (read timeout, response deadline),
//! interim 1xx responses, protocol switches, and pooled connections the origin drops.
//!
//! Real upstreams on loopback (the demo upstream's fault routes, or a raw socket), the gateway
//! served on a real socket where the framing a client sees matters. Every wait is bounded.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use gateway_errors::TimeLimits;
use gateway_errors::retry::{RetryLayer, RetryPolicy};
use gateway_errors::{ProxyError, ProxyErrorKind, RequestSent};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, ServiceExt};

use crate::support::demo_upstream::{self, DRIP_CHUNK, DRIP_CHUNKS, STALL_DECLARED, STALL_SENT};
use crate::support::{
    Expected, assert_problem, call, gateway_to, layer, raw_exchange, read_body, request,
    serve_gateway, start_upstream, within,
};

const TIMEOUT: Duration = Duration::from_millis(400);

/// The gateway's answer when a body stalls: the head and what the origin sent, then the end of the
/// connection, never the rest of the body and never a wait past the timeout.
#[tokio::test]
async fn a_sized_body_that_stalls_is_cut_at_the_read_timeout() {
    let demo = start_upstream().await;
    let server = serve_gateway(
        layer().time_limits(TimeLimits::new().upstream_timeout(TIMEOUT)),
        demo.addr,
    )
    .await;

    let started = Instant::now();
    let response = raw_exchange(server.addr, "GET", "/stall-body", &[]).await;
    let took = started.elapsed();

    assert_eq!(response.status, 200, "the head had already gone out");
    assert_eq!(response.content_length(), Some(STALL_DECLARED));
    assert_eq!(response.body, demo_upstream::large_body(STALL_SENT));
    assert!(
        response.body.len() < STALL_DECLARED,
        "fewer bytes than Content-Length: the client sees the transfer broke"
    );
    assert!(
        took >= TIMEOUT && took < TIMEOUT * 4,
        "cut after the read timeout ({TIMEOUT:?}), took {took:?}"
    );
}

#[tokio::test]
async fn a_chunked_body_that_stalls_ends_without_its_last_chunk() {
    let demo = start_upstream().await;
    let server = serve_gateway(
        layer().time_limits(TimeLimits::new().upstream_timeout(TIMEOUT)),
        demo.addr,
    )
    .await;

    let started = Instant::now();
    let response = raw_exchange(server.addr, "GET", "/stall-chunked", &[]).await;
    let took = started.elapsed();

    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    let body = String::from_utf8_lossy(&response.body);
    assert!(
        body.to_ascii_lowercase()
            .starts_with(&format!("{STALL_SENT:x}\r\n")),
        "the chunk that came is forwarded: {body:?}"
    );
    assert!(
        !body.ends_with("0\r\n\r\n"),
        "no last chunk: a client must not take the body for complete: {body:?}"
    );
    assert!(took >= TIMEOUT && took < TIMEOUT * 4, "took {took:?}");
}

/// The error a stalled body ends with is a `ProxyError`, so an outer layer can tell a timeout
/// from any other failure.
#[tokio::test]
async fn the_body_error_names_the_read_timeout() {
    let demo = start_upstream().await;
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().read_timeout(Duration::from_millis(200))),
        demo.addr,
    );
    let response = call(gateway, request("GET", "/stall-body", None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = std::pin::pin!(response.into_body());
    let mut received = 0;
    let error = loop {
        match within("the next frame", body.frame()).await {
            Some(Ok(frame)) => received += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(error)) => break error,
            None => panic!("the stalled body must not end cleanly"),
        }
    };
    assert_eq!(received, STALL_SENT);
    let error = error
        .downcast_ref::<ProxyError>()
        .expect("the body fails with a ProxyError");
    assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionReadTimeout));
    // After the error the body is over: a second poll does not hang.
    assert!(
        within("a poll after the error", body.frame())
            .await
            .is_none()
    );
}

/// The timer measures silence, not the whole transfer: a body whose every gap is shorter than the
/// read timeout arrives whole, however long it takes in all.
#[tokio::test]
async fn a_slow_but_steady_body_arrives_whole() {
    let demo = start_upstream().await;
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().read_timeout(Duration::from_millis(300))),
        demo.addr,
    );
    let started = Instant::now();
    let response = call(gateway, request("GET", "/drip-body?ms=100", None)).await;
    let body = read_body(response.into_body()).await;
    assert_eq!(body.len(), DRIP_CHUNKS * DRIP_CHUNK);
    assert_eq!(body, demo_upstream::large_body(DRIP_CHUNKS * DRIP_CHUNK));
    assert!(
        started.elapsed() > Duration::from_millis(900),
        "ten gaps of 100 ms: longer in all than the 300 ms read timeout"
    );
}

#[tokio::test]
async fn a_read_timeout_turned_off_leaves_a_stalled_body_open() {
    let demo = start_upstream().await;
    let off = layer().time_limits(
        TimeLimits::new()
            .upstream_timeout(Duration::from_millis(200))
            .read_timeout(None),
    );
    let server = serve_gateway(off, demo.addr).await;

    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /stall-body HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .expect("send");
    // Well past the 200 ms upstream timeout, the connection is still open: only the head was
    // timed. (The default, the upstream timeout, is checked by the tests above.)
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let quiet = tokio::time::timeout(Duration::from_millis(800), async {
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "the connection must stay open without a read timeout"
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(quiet.is_err(), "still open after 800 ms");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn the_response_deadline_answers_504_before_the_head() {
    let demo = start_upstream().await;
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().response_deadline(Duration::from_millis(300))),
        demo.addr,
    );
    let started = Instant::now();
    let response = call(gateway, request("GET", "/slow", None)).await;
    let took = started.elapsed();
    let expected = Expected::kind(
        ProxyErrorKind::HttpResponseTimeout,
        "edge-1; error=http_response_timeout",
        true,
    );
    assert_problem(response, &expected).await;
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1500));
}

#[tokio::test]
async fn the_response_deadline_cuts_a_body_that_trickles_too_long() {
    let demo = start_upstream().await;
    // Each gap (100 ms) is well within the read timeout; the whole body (1 s) is not within
    // the deadline.
    let layer = layer().time_limits(
        TimeLimits::new()
            .read_timeout(Duration::from_secs(2))
            .response_deadline(Duration::from_millis(450)),
    );
    let server = serve_gateway(layer, demo.addr).await;

    let started = Instant::now();
    let response = raw_exchange(server.addr, "GET", "/drip-body?ms=100", &[]).await;
    let took = started.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(response.content_length(), Some(DRIP_CHUNKS * DRIP_CHUNK));
    assert!(
        response.body.len() < DRIP_CHUNKS * DRIP_CHUNK,
        "cut short: {} bytes",
        response.body.len()
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(950),
        "cut at the deadline, took {took:?}"
    );
}

/// Over HTTP/2 the cut is a stream reset, which the client's body reports as an error.
#[tokio::test]
async fn over_http2_a_stalled_body_resets_the_stream() {
    let demo = start_upstream().await;
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().upstream_timeout(TIMEOUT)),
        demo.addr,
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            // The client side speaks HTTP/2; the upstream hop HTTP/1.1.
            let (mut parts, body) = request.into_parts();
            parts.version = http::Version::HTTP_11;
            gateway
                .clone()
                .oneshot(Request::from_parts(parts, Body::new(body)))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });

    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let request = Request::get("http://gateway/stall-body")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within("the head", sender.send_request(request))
        .await
        .expect("a response head");
    assert_eq!(response.status(), StatusCode::OK);
    let outcome = within("the body", response.into_body().collect()).await;
    let error = outcome.expect_err("the stream is reset, not ended cleanly");
    let text = format!("{error:?}");
    assert!(
        text.contains("INTERNAL_ERROR") || text.contains("reset"),
        "a stream reset: {text}"
    );
    server.abort();
}

#[tokio::test]
async fn a_slowly_dripped_head_within_the_timeout_is_answered() {
    let demo = start_upstream().await;
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(1))),
        demo.addr,
    );
    let response = call(gateway, request("GET", "/drip?ms=300", None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-dripped"], "yes");
    let body = read_body(response.into_body()).await;
    assert_eq!(body, demo_upstream::OK_BODY.as_bytes());
}

#[tokio::test]
async fn a_head_dripped_past_the_timeout_is_504() {
    let demo = start_upstream().await;
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300))),
        demo.addr,
    );
    let started = Instant::now();
    let response = call(gateway, request("GET", "/drip?ms=3000", None)).await;
    let expected = Expected::kind(
        ProxyErrorKind::HttpResponseTimeout,
        "edge-1; error=http_response_timeout",
        true,
    );
    assert_problem(response, &expected).await;
    assert!(started.elapsed() < Duration::from_millis(1500));
}

// ---------------------------------------------------------------------------------------------
// Interim responses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn early_hints_are_not_the_final_response() {
    let demo = start_upstream().await;
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().upstream_timeout(TIMEOUT)),
        demo.addr,
    );
    let response = call(gateway, request("GET", "/early-hints", None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.extensions().get::<ProxyError>().is_none());
    let body = read_body(response.into_body()).await;
    assert_eq!(body, demo_upstream::OK_BODY.as_bytes());
}

#[tokio::test]
async fn early_hints_then_silence_is_still_a_504() {
    let demo = start_upstream().await;
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().upstream_timeout(TIMEOUT)),
        demo.addr,
    );
    let started = Instant::now();
    let response = call(gateway, request("GET", "/hints-then-stall", None)).await;
    let expected = Expected::kind(
        ProxyErrorKind::HttpResponseTimeout,
        "edge-1; error=http_response_timeout",
        true,
    );
    assert_problem(response, &expected).await;
    assert!(
        started.elapsed() >= TIMEOUT,
        "the 103 did not stop the clock"
    );
}

/// `Expect: 100-continue` to a silent origin: the client gets its `100 Continue` from the
/// gateway's server, sends the body, and then the 504 at the timeout.
#[tokio::test]
async fn a_post_expecting_100_continue_to_a_silent_origin_gets_504_at_the_timeout() {
    let demo = start_upstream().await;
    let server = serve_gateway(
        layer().time_limits(TimeLimits::new().upstream_timeout(TIMEOUT)),
        demo.addr,
    )
    .await;

    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    stream
        .write_all(
            b"POST /slow HTTP/1.1\r\nhost: gateway\r\ncontent-length: 8\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
        )
        .await
        .expect("send head");
    let mut buf = vec![0u8; 16 * 1024];
    let n = within("100 Continue", stream.read(&mut buf))
        .await
        .expect("read");
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim:?}");
    stream.write_all(b"order=42").await.expect("send body");
    let mut rest = Vec::new();
    within("the final response", stream.read_to_end(&mut rest))
        .await
        .expect("read");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 504 Gateway Timeout"), "{text}");
    assert!(text.contains("proxy-status: edge-1; error=http_response_timeout"));
    assert!(
        text.contains("\"retryable\":false"),
        "a POST that reached the origin is not safe to repeat"
    );
    assert!(took >= TIMEOUT && took < TIMEOUT * 4, "took {took:?}");
}

/// hyper never hands a 1xx over as final; another inner service might. A 103 is no answer.
#[tokio::test]
async fn an_inner_service_that_answers_with_an_interim_status_is_a_protocol_error() {
    let inner = tower::service_fn(|_request: Request<crate::support::Upload>| async {
        let response = Response::builder()
            .status(StatusCode::EARLY_HINTS)
            .header(header::LINK, "</a.css>; rel=preload")
            .body(Full::new(Bytes::new()))
            .expect("response");
        Ok::<_, Infallible>(response)
    });
    let service = ServiceBuilder::new().layer(layer()).service(inner);
    let response = call(service, request("GET", "/", None)).await;
    let expected = Expected::kind(
        ProxyErrorKind::HttpProtocolError,
        "edge-1; error=http_protocol_error",
        true,
    );
    assert_problem(response, &expected).await;
}

// ---------------------------------------------------------------------------------------------
// Protocol switches
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_101_to_a_request_without_upgrade_is_a_502_protocol_error() {
    let demo = start_upstream().await;
    let gateway = gateway_to(layer(), demo.addr);
    let response = call(gateway, request("GET", "/switch", None)).await;
    let expected = Expected::kind(
        ProxyErrorKind::HttpProtocolError,
        "edge-1; error=http_protocol_error",
        true,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn a_101_to_a_protocol_the_client_did_not_offer_is_a_502_upgrade_failed() {
    let demo = start_upstream().await;
    let server = serve_gateway(layer(), demo.addr).await;
    let response = raw_exchange(
        server.addr,
        "GET",
        "/switch",
        &[
            // A second line of `Connection` (after the helper's `close`): an upgrade names it.
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    assert_eq!(response.status, 502);
    assert_eq!(
        response.header("proxy-status"),
        Some("edge-1; error=http_upgrade_failed")
    );
    let json: serde_json::Value = serde_json::from_slice(&response.body).expect("problem+json");
    assert_eq!(json["error_type"], "http_upgrade_failed");
    assert!(
        !String::from_utf8_lossy(&response.body).contains("nobody asked"),
        "none of the origin's bytes reach the client"
    );
}

// ---------------------------------------------------------------------------------------------
// Pooled connections the origin drops
// ---------------------------------------------------------------------------------------------

/// The origin answers once on a kept-alive connection, then drops it with the next request
/// unanswered. That request was written: a GET is marked retryable (idempotent), a POST is not,
/// and `RetryPolicy` retries the one and not the other.
#[tokio::test]
async fn a_request_lost_on_a_stale_pooled_connection_is_retried_only_if_idempotent() {
    let demo = start_upstream().await;
    for (method, retryable) in [("GET", true), ("POST", false)] {
        let gateway = gateway_to(layer(), demo.addr);
        let first = call(gateway.clone(), request(method, "/stale", None)).await;
        assert_eq!(first.status(), StatusCode::OK);
        read_body(first.into_body()).await;

        let second = call(gateway.clone(), request(method, "/stale", None)).await;
        let expected = Expected::kind(
            ProxyErrorKind::ConnectionTerminated,
            "edge-1; error=connection_terminated",
            retryable,
        );
        let error = second
            .extensions()
            .get::<ProxyError>()
            .expect("generated")
            .clone();
        assert_eq!(
            error.request_sent(),
            RequestSent::MaybeSent,
            "{method}: it was written"
        );
        assert_problem(second, &expected).await;

        // The same, with a retry policy in front: the GET is sent again on a new connection.
        let retrying = ServiceBuilder::new()
            .layer(RetryLayer::new(
                RetryPolicy::new()
                    .max_attempts(2)
                    .base_delay(Duration::from_millis(1)),
            ))
            .service(gateway_to(layer(), demo.addr));
        let first = call(retrying.clone(), request(method, "/stale", None)).await;
        read_body(first.into_body()).await;
        let second = call(retrying, request(method, "/stale", None)).await;
        let expected_status = if retryable {
            StatusCode::OK
        } else {
            StatusCode::BAD_GATEWAY
        };
        assert_eq!(second.status(), expected_status, "{method} after a retry");
    }
}

/// When hyper knows the request never left (the connection was gone before it was written), the
/// error says "canceled": not sent, so safe to repeat whatever the method.
#[tokio::test]
async fn a_request_hyper_never_wrote_on_a_dead_connection_is_not_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let origin = tokio::spawn(async move {
        // Accept, then close at once: the connection dies before any request.
        let (stream, _) = listener.accept().await.expect("accept");
        drop(stream);
    });
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    // The connection task sees the close and ends; the sender it leaves behind is stale.
    let _ = within("the connection to end", connection).await;
    origin.await.expect("origin task");

    let stale = std::sync::Arc::new(tokio::sync::Mutex::new(sender));
    let inner = tower::service_fn(move |request: Request<crate::support::Upload>| {
        let stale = stale.clone();
        async move { stale.lock().await.send_request(request).await }
    });
    let service = ServiceBuilder::new().layer(layer()).service(inner);
    let response = call(service, request("POST", "/orders", None)).await;
    let error = response
        .extensions()
        .get::<ProxyError>()
        .expect("generated")
        .clone();
    assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionTerminated));
    assert_eq!(error.request_sent(), RequestSent::NotSent);
    assert!(
        error.is_retryable(),
        "a POST that was never sent is safe to send"
    );
    let expected = Expected::kind(
        ProxyErrorKind::ConnectionTerminated,
        "edge-1; error=connection_terminated",
        true,
    );
    assert_problem(response, &expected).await;
}
