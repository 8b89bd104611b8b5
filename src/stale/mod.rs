//! Stale-if-error: while the origin is down, answer with the last good copy.
//!
//! A 5xx costs more than one page view. A visitor sees an error for a page the gateway served a
//! minute ago; a crawler lowers its crawl rate for the whole host, and one that gets a 5xx for
//! `robots.txt` stops crawling altogether (RFC 9309 §2.3.1, "Unreachable" status). RFC 5861's `stale-if-error` lets a
//! cache answer with a stored copy instead, and a [`Store`] keeps such copies for the layer:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use gateway_errors::body::UploadBody;
//! use gateway_errors::headers::{CACHE_STATUS, PROXY_STATUS};
//! use gateway_errors::stale::{StaleCopy, Store};
//! use gateway_errors::{GatewayErrorLayer, ProxyErrorKind, ProxyName};
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! // An origin that answers once, then refuses every connection.
//! let down = Arc::new(AtomicBool::new(false));
//! let origin = service_fn(move |_request: Request<UploadBody<Full<Bytes>>>| {
//!     let down = down.swap(true, Ordering::SeqCst);
//!     async move {
//!         if down {
//!             return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
//!         }
//!         let response = Response::builder()
//!             .header("content-type", "text/plain")
//!             .header("cache-control", "max-age=60")
//!             .body(Full::new(Bytes::from_static(b"User-agent: *\nDisallow: /private/\n")))
//!             .unwrap();
//!         Ok(response)
//!     }
//! });
//!
//! // One store, shared by every clone of the layer and of its services; the operator allows
//! // copies up to an hour past their freshness.
//! let store = Store::new().default_window(Duration::from_secs(3600));
//! let layer = GatewayErrorLayer::new()
//!     .proxy_name(ProxyName::from_static("edge-1"))
//!     .serve_stale(store.clone());
//! let gateway = layer.layer(origin);
//!
//! let get = || {
//!     Request::get("/robots.txt")
//!         .header("host", "www.example.com")
//!         .body(Full::new(Bytes::new()))
//!         .unwrap()
//! };
//! // The first answer streams through; its body is copied as it passes.
//! let first = gateway.clone().oneshot(get()).await.unwrap();
//! let body = first.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(store.len(), 1);
//!
//! // The origin is down: the copy answers, visibly stale, naming the failure it hides.
//! let second = gateway.oneshot(get()).await.unwrap();
//! assert_eq!(second.status(), StatusCode::OK);
//! assert_eq!(second.headers()["content-type"], "text/plain");
//! assert_eq!(second.headers()["age"], "1");
//! assert_eq!(second.headers()[&CACHE_STATUS], "edge-1; fwd=stale; fwd-status=502; ttl=59");
//! assert_eq!(second.headers()[&PROXY_STATUS], "edge-1; error=connection_refused");
//! let stale_copy = second.extensions().get::<StaleCopy>().unwrap();
//! assert_eq!(stale_copy.error().kind(), Some(ProxyErrorKind::ConnectionRefused));
//! assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), body);
//! # }
//! ```
//!
//! # What is stored
//!
//! The response to a GET, once its whole body has passed, when a shared cache may store it
//! (RFC 9111 §3) and a copy of it may one day answer:
//!
//! - its status is 200, 203, 204, 300, 301, 308, 404 or 410 (RFC 9110's heuristically
//!   cacheable statuses, less 206, a part of a body, and less the errors 405, 414 and 501);
//! - its `Cache-Control` has no `no-store` and no `private`; nor `no-cache`, `must-revalidate`,
//!   `proxy-revalidate` or `s-maxage`, which forbid serving it stale (RFC 9111 §4.2.4), so a
//!   copy of it could never answer; `no-cache` and `private` count with a field list too. A
//!   field the store cannot read (an element that is not `name` or `name=value`, as in
//!   `max-age=60; private`) fails closed: if it names `private`, `no-store` or `no-cache`
//!   anywhere, that directive counts as given;
//! - a window applies: the origin's `stale-if-error=N`, else the operator's
//!   [`default_window`](Store::default_window); without either nothing is stored;
//! - it sets no cookie (`Set-Cookie`), unless [`strip_set_cookie`](Store::strip_set_cookie)
//!   has it stored without them; a copy never hands one visitor's cookie to another;
//! - a request with `Authorization` only when the response says `public` (RFC 9111 §3.5);
//! - a request with `Cache-Control: no-store` never (RFC 9111 §5.2.1, `no-store`);
//! - `Vary`: never `Vary: *`. Each header a response varies on must be one of the store's
//!   [`vary_headers`](Store::vary_headers) (by default `Accept-Encoding`, `Accept`,
//!   `Accept-Language` and `Origin`), because the layer reads those request headers when the
//!   request arrives, before it knows what the response will vary on; a response that varies
//!   on another header, or on a header the request sent on more than one line, is not stored.
//!   Each variant is stored apart, chosen by the request's values of the headers its `Vary`
//!   names. A value is kept as a 64-bit hash under a key of the store's own (eight bytes in
//!   every request, whatever its length), so two different values of one header of one page
//!   match by chance about once in 2^64, and a client cannot make them;
//! - its body is at most [`max_response_bytes`](Store::max_response_bytes). A body
//!   declared larger is not copied at all; one that grows past the limit stops being copied. Either
//!   way it streams on untouched: the copy is made as each frame passes, and no frame ever waits
//!   for it;
//! - its body ended as the origin said it would. A body that breaks off, stalls past the read
//!   timeout, is cut by the response deadline, is left by a client that went away, carries
//!   trailers, or ends at another length than its `Content-Length`, is not stored.
//!
//! The head is stored without the fields that belong to one connection (`Connection` and the
//! fields it names, `Keep-Alive`, `Transfer-Encoding`, `TE`, `Upgrade`, `Trailer`), as RFC 9111
//! §3.1 asks, and without `Age`, which is worked out when a copy answers. A response without
//! `Date` is stored with the time it arrived (RFC 9110 §6.6.1), so that a copy's `Date` and `Age`
//! agree.
//!
//! As for any shared cache, a page that differs per user must say so (`private`, or `Vary` on the
//! header that tells users apart): a copy answers every client that asks for its URL.
//!
//! A copy is kept under a key of the authority the client asked for (the URI's, else `Host`,
//! without case), the path and the query: two sites behind one gateway never share a copy. Put
//! the layer before anything that rewrites the request's target, as in the quick start. The
//! scheme is not part of the key: a listener serves one scheme. A new copy replaces the one of
//! the same key and variant unless that one is the more recent response (RFC 9111 §4): the later
//! `Date` (a `Date` ahead of the gateway's clock counts as the time it arrived), then the head
//! that arrived later. A slow response that ends after a newer one does not put back the older
//! page. A successful write (a POST, PUT, DELETE or any method but GET, HEAD, OPTIONS and TRACE,
//! answered with a status under 400) drops every copy of its URI (RFC 9111 §4.4), and the
//! response to a GET of that URI that arrived before the write is not stored, however late it
//! ends: it may be the page as it was.
//!
//! The store is bounded: at most [`max_bytes`](Store::max_bytes) in all (bodies, heads and
//! keys) and at most [`max_entries`](Store::max_entries) copies (each variant counts), the
//! least recently used evicted first; at most 8 variants per key. The copies being made count
//! too: a body with a `Content-Length` is charged its whole length when its copy starts (that is
//! the buffer reserved for it), one without is charged frame by frame. Copies being made may hold
//! at most half of `max_bytes`: past that, a new copy is not made (its body streams to the client
//! as always, uncopied), and while they hold room, the least recently used copies give way. So a
//! client that holds many responses open, reading slowly, makes the store hold no more than its
//! budget, and the copies held always keep at least half of it.
//!
//! # When a copy answers
//!
//! When the layer would itself answer a GET or a HEAD with a 500, 502, 503 or 504 (RFC 5861's
//! errors): a refused or reset connection, a timeout, a protocol error, an upstream that a health
//! check or an upstream the health layer marked unavailable (`destination_unavailable`, answered at once), an origin error
//! the layer [intercepts](crate::GatewayErrorLayer::failure_statuses). Never a 4xx the
//! layer makes (a bad or refused request), never a forwarding loop (`proxy_loop_detected`: the
//! gateway's own configuration, which a copy would hide), and never a gRPC call.
//!
//! And when the origin itself answers a GET or a HEAD with a 500, 502, 503 or 504, in place of
//! that answer:
//!
//! - from a copy whose origin sent `stale-if-error`: RFC 5861 §4 is the origin asking for exactly
//!   that, and other HTTP caches read it so;
//! - from any copy when the status is one of the store's
//!   [`failure_statuses`](Store::failure_statuses).
//!
//! Otherwise, for a copy kept under the operator's window only, the origin's error passes
//! through unchanged, as always: the origin did not ask for it to be hidden.
//!
//! The newest copy of the key whose variant matches answers if its staleness (its age, RFC 9111
//! §4.2.3, less its freshness lifetime, §4.2.1) is within:
//!
//! - the origin's `stale-if-error=N`, when the response had one, else the operator's
//!   [`default_window`](Store::default_window) (any duration, `Duration::MAX` included:
//!   every window and age saturates rather than overflows);
//! - shortened by the request's own `Cache-Control: stale-if-error=N`; a request never widens
//!   it.
//!
//! The lifetime is `max-age`, else `Expires` less `Date`, else zero: there is no heuristic
//! freshness. A heuristic only matters here for how stale a copy is counted, and zero counts its
//! staleness from the moment it was sent, the strictest reading. A copy still fresh answers
//! whatever the request's window, as any cache may serve a fresh response. A copy past its own
//! window is dropped.
//!
//! A request's own `Cache-Control: no-cache` (a browser's hard reload) gets the error: the
//! client asked for an answer the origin confirms, and an old copy is not one. Its `no-store` keeps
//! its response out of the store but lets a stored copy answer it (RFC 9111 §5.2.1 says, of `no-store`, that
//! directive does not apply to what is already stored). `max-age`, `max-stale` and `min-fresh`
//! of a request do not change the answer: RFC 5861 §4 lets the copy answer "regardless of other
//! freshness information". `Pragma` is not read: RFC 9111 deprecates it.
//!
//! # What the client sees
//!
//! The stored status, header fields and body, byte for byte (HEAD: the head alone), plus:
//!
//! - `Age`: the copy's age in whole seconds, rounded up, so never 0: the answer is visibly stale
//!   (RFC 5861 §4). It replaces an `Age` the origin sent;
//! - `Cache-Status` (RFC 9211), a member appended to those the copy carried:
//!   `<proxy name>; fwd=stale; fwd-status=<status>; ttl=<seconds>`. `ttl` is the remaining
//!   freshness, negative once stale. `fwd-status` is the origin's status when the store answers
//!   one, else the status the layer would have sent for the failure: RFC 9211 reads a missing
//!   `fwd-status` as the status sent, which would claim the origin answered 200. The layer
//!   forwards every request, so a copy that answers is one the origin did not confirm, and
//!   `fwd=stale` says so even while `ttl` is still positive;
//! - `Proxy-Status` (RFC 9209), a member appended, naming the failure the copy hides:
//!   `<proxy name>; error=connection_refused`, or `received-status=503` for an origin error;
//! - no `Warning` (RFC 9111 obsoleted it).
//!
//! The response carries [`StaleCopy`] in its extensions: the copy's age and the [`ProxyError`]
//! it hid, for an outer layer or a log.
//!
//! # What operators see
//!
//! The outage stays visible when users no longer see it:
//!
//! - the span records `gateway.stale = true`, `gateway.stale.age_s`, `error.type` (the hidden
//!   failure's RFC 9209 token, or its status when no kind was recognised) and
//!   `http.response.status_code` (the status sent, the copy's); `otel.status_code` stays unset,
//!   since the client got an answer;
//! - a `WARN` event, `upstream request failed; answered with a stale copy`, with the whole error
//!   chain;
//! - with the `metrics` feature, the counter `gateway.stale.served` by `error.type` and the
//!   status sent. `http.server.request.duration` records the status sent and no `error.type`,
//!   as the semantic conventions have it for an answer the client got; the counter of generated
//!   errors does not count a stale answer.
//!
//! # With the health layer
//!
//! A layer next to the client that refuses requests to an open upstream with
//! `ProxyError::new(ProxyErrorKind::DestinationUnavailable)` answers at once; the store turns
//! that refusal into the copy at once too (`error=destination_unavailable`).
//!
//! # `robots.txt` through an outage
//!
//! The demo upstream serves a `robots.txt` a crawler may cache for a minute. Run it on its own, and
//! the example gateway in front of it with a one-hour window:
//!
//! ```text
//! $ cargo run --example upstream -- --listen 127.0.0.1:3000
//! $ cargo run --example gateway -- --upstream http://127.0.0.1:3000 --stale 1h
//! listening on http://127.0.0.1:8080 (with gateway-errors; upstream http://127.0.0.1:3000/, timeout 5s, read timeout 5s)
//! stale-if-error: last good copies answer up to 3600s past their freshness
//! $ curl -i http://127.0.0.1:8080/robots.txt
//! HTTP/1.1 200 OK
//! content-type: text/plain
//! cache-control: max-age=60
//! last-modified: Mon, 01 Dec 2025 00:00:00 GMT
//! date: Sat, 05 Dec 2026 12:33:54 GMT
//! content-length: 34
//!
//! User-agent: *
//! Disallow: /private/
//! ```
//!
//! Stop the upstream (Ctrl-C). Every new connection to it is now refused, and `robots.txt` is still
//! there, four seconds old, saying why it is a copy:
//!
//! ```text
//! $ curl -i http://127.0.0.1:8080/robots.txt
//! HTTP/1.1 200 OK
//! content-type: text/plain
//! cache-control: max-age=60
//! last-modified: Mon, 01 Dec 2025 00:00:00 GMT
//! date: Sat, 05 Dec 2026 12:33:54 GMT
//! content-length: 34
//! age: 4
//! cache-status: edge-1; fwd=stale; fwd-status=502; ttl=56
//! proxy-status: edge-1; error=connection_refused
//!
//! User-agent: *
//! Disallow: /private/
//! $ curl -i http://127.0.0.1:8080/private/page     # never fetched: no copy, the usual 502
//! HTTP/1.1 502 Bad Gateway
//! content-type: application/problem+json
//! content-length: 163
//! cache-control: no-store
//! vary: accept
//! proxy-status: edge-1; error=connection_refused
//! date: Sat, 05 Dec 2026 12:33:58 GMT
//!
//! {"type":"about:blank","title":"Bad Gateway","status":502,"detail":"The upstream server refused the connection.","error_type":"connection_refused","retryable":true}
//! ```
//!
//! and the gateway's log still shows the outage:
//!
//! ```text
//! WARN gateway_errors: upstream request failed; answered with a stale copy error.type="connection_refused" http.response.status_code=200 gateway.stale.age_s=4 error=client error (Connect): tcp connect error: Connection refused (os error 111)
//! ```
//!
//! **Why an error must never become a 404 for `robots.txt`.** A fallback that turns every upstream
//! failure into a "not found" page looks harmless, and for `robots.txt` it is the worst answer there
//! is: RFC 9309 §2.3.1, "Unavailable" status lets a crawler that gets a 4xx for `robots.txt` crawl everything, so during
//! the outage `Disallow: /private/` is gone, and whatever the crawler fetches once the site is back
//! may be indexed. A 5xx is the honest answer without a copy (the crawler then assumes it may crawl
//! nothing, and retries), and the last good copy is the right one: the crawler keeps the rules it had,
//! keeps crawling what it may, and never sees the outage.
//!
//! # Cost
//!
//! No Cargo feature: the store needs no dependency. What a request brings to it lives in every
//! request's future, store or not (168 bytes, kept small for that), and a layer without a store
//! pays a branch at each step. With one, a request that cannot use it (a POST) keeps its path and
//! authority by a reference count (the bytes hyper parsed are shared, not copied); a GET also
//! hashes the values of the few headers a variant may depend on, hashes its key to read the
//! key's write generation (a table of 1,024 counters per store, made with it), and reads the
//! clock: no heap allocation, for a response that is stored or not. A response that is stored costs one copy of
//! its body (into a buffer of its declared length, or joined once at the end), a copy of its head
//! and one lock to insert it. An answer from a copy takes the lock for a lookup, shares the body,
//! and copies the head. No lock is held across an await, nor while a body is copied or a
//! response built. See BENCHMARKS.md.
//!
//! [`ProxyError`]: crate::ProxyError

mod admission;
mod builder;
mod copy;
mod directives;
mod lru;
mod policy;
mod record;
pub(crate) mod request;
mod serve;
mod store;
pub(crate) mod tee;

use std::sync::Arc;

use store::Shared;

pub use builder::TooManyVaryHeaders;
pub(crate) use serve::Hides;
pub use serve::StaleCopy;

/// A bounded store of last good copies, and when they may answer: give it to
/// [`GatewayErrorLayer::serve_stale`](crate::GatewayErrorLayer::serve_stale). See the
/// [module docs](self).
///
/// A cheap handle: clones share one store. Each builder method returns a handle to a new, empty
/// store with the change, so configure it before you hand it to a layer.
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::stale::Store;
/// use http::StatusCode;
///
/// let store = Store::new()
///     .default_window(Duration::from_secs(24 * 3600)) // copies up to a day past freshness
///     .max_bytes(256 * 1024 * 1024)                   // 256 MiB in all
///     .max_response_bytes(4 * 1024 * 1024)            // no body over 4 MiB
///     .failure_statuses([StatusCode::SERVICE_UNAVAILABLE]);
/// assert!(store.is_empty());
/// ```
#[derive(Clone)]
pub struct Store {
    store: Arc<Shared>,
}

#[cfg(test)]
mod testing;
