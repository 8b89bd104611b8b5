//! Stale-if-error: while the origin is down, answer with the last good copy.
//!
//! A 5xx costs more than one page view. A visitor sees an error for a page the gateway served a
//! minute ago; a crawler lowers its crawl rate for the whole host, and one that gets a 5xx for
//! `robots.txt` stops crawling altogether (RFC 9309 §2.3.1, "Unreachable" status). RFC 5861's `stale-if-error` lets a
//! cache answer with a stored copy instead, and [`StaleIfError`] is such a store, for the layer:
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
//! use gateway_errors::stale::{FromCopy, StaleIfError};
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
//! let store = StaleIfError::new().default_window(Duration::from_secs(3600));
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
//! let from_copy = second.extensions().get::<FromCopy>().unwrap();
//! assert_eq!(from_copy.error().kind(), Some(ProxyErrorKind::ConnectionRefused));
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
//!   [`default_window`](StaleIfError::default_window); without either nothing is stored;
//! - it sets no cookie (`Set-Cookie`), unless [`strip_set_cookie`](StaleIfError::strip_set_cookie)
//!   has it stored without them; a copy never hands one visitor's cookie to another;
//! - a request with `Authorization` only when the response says `public` (RFC 9111 §3.5);
//! - a request with `Cache-Control: no-store` never (RFC 9111 §5.2.1, `no-store`);
//! - `Vary`: never `Vary: *`. Each header a response varies on must be one of the store's
//!   [`vary_headers`](StaleIfError::vary_headers) (by default `Accept-Encoding`, `Accept`,
//!   `Accept-Language` and `Origin`), because the layer reads those request headers when the
//!   request arrives, before it knows what the response will vary on; a response that varies
//!   on another header, or on a header the request sent on more than one line, is not stored.
//!   Each variant is stored apart, chosen by the request's values of the headers its `Vary`
//!   names. A value is kept as a 64-bit hash under a key of the store's own (eight bytes in
//!   every request, whatever its length), so two different values of one header of one page
//!   match by chance about once in 2^64, and a client cannot make them;
//! - its body is at most [`max_response_bytes`](StaleIfError::max_response_bytes). A body
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
//! The store is bounded: at most [`max_bytes`](StaleIfError::max_bytes) in all (bodies, heads and
//! keys) and at most [`max_entries`](StaleIfError::max_entries) copies (each variant counts), the
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
//! check or a breaker marked down (`destination_unavailable`, answered at once), an origin error
//! the layer [intercepts](crate::GatewayErrorLayer::failure_statuses). Never a 4xx the
//! layer makes (a bad or refused request), never a forwarding loop (`proxy_loop_detected`: the
//! gateway's own configuration, which a copy would hide), and never a gRPC call.
//!
//! And when the origin itself answers a GET or a HEAD with a 500, 502, 503 or 504, in place of
//! that answer:
//!
//! - from a copy whose origin sent `stale-if-error`: RFC 5861 §4 is the origin asking for exactly
//!   that, and other HTTP caches read it so;
//! - from any copy when the store [answers that status](StaleIfError::answer_origin_errors).
//!
//! Otherwise, for a copy kept under the operator's window only, the origin's error passes
//! through unchanged, as always: the origin did not ask for it to be hidden.
//!
//! The newest copy of the key whose variant matches answers if its staleness (its age, RFC 9111
//! §4.2.3, less its freshness lifetime, §4.2.1) is within:
//!
//! - the origin's `stale-if-error=N`, when the response had one, else the operator's
//!   [`default_window`](StaleIfError::default_window) (any duration, `Duration::MAX` included:
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
//! The response carries [`FromCopy`] in its extensions: the copy's age and the [`ProxyError`]
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
//! # With a breaker
//!
//! A layer next to the client that refuses requests to an open upstream with
//! `ProxyError::new(ProxyErrorKind::DestinationUnavailable)` answers at once; the store turns
//! that refusal into the copy at once too (`error=destination_unavailable`).
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

mod copy;
mod directives;
mod policy;
pub(crate) mod request;
mod store;
pub(crate) mod tee;

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};

use crate::error::ProxyError;
use crate::headers::CACHE_STATUS;
use crate::kind::ProxyErrorKind;

use copy::{Admission, StoredCopy, Verdict};
use policy::{MAX_VARY_HEADERS, Policy};
use request::{Access, CapturedRequest};
use store::Store;
use tee::Tee;

/// A bounded store of last good copies, and when they may answer: give it to
/// [`GatewayErrorLayer::serve_stale`](crate::GatewayErrorLayer::serve_stale). See the
/// [module docs](self).
///
/// A cheap handle: clones share one store. Each builder method returns a handle to a new, empty
/// store with the change, so configure it before you hand it to a layer.
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::stale::StaleIfError;
/// use http::StatusCode;
///
/// let store = StaleIfError::new()
///     .default_window(Duration::from_secs(24 * 3600)) // copies up to a day past freshness
///     .max_bytes(256 * 1024 * 1024)                   // 256 MiB in all
///     .max_response_bytes(4 * 1024 * 1024)            // no body over 4 MiB
///     .answer_origin_errors([StatusCode::SERVICE_UNAVAILABLE]);
/// assert!(store.is_empty());
/// ```
#[derive(Clone)]
pub struct StaleIfError {
    store: Arc<Store>,
}

impl Default for StaleIfError {
    fn default() -> Self {
        StaleIfError::new()
    }
}

impl StaleIfError {
    /// An empty store: 64 MiB in all, 1 MiB per body, 10,000 copies, no default window (only
    /// responses with a `stale-if-error` of their own are stored), variants on
    /// `Accept-Encoding`, `Accept`, `Accept-Language` and `Origin`, no origin error answered.
    pub fn new() -> Self {
        StaleIfError::with_policy(Policy::default())
    }

    fn with_policy(policy: Policy) -> Self {
        StaleIfError {
            store: Arc::new(Store::new(policy)),
        }
    }

    fn set(self, change: impl FnOnce(&mut Policy)) -> Self {
        let mut policy = self.store.policy.clone();
        change(&mut policy);
        StaleIfError::with_policy(policy)
    }

    /// The operator's window: how long past its freshness a copy of a response that names no
    /// `stale-if-error` of its own may answer. This is the "out-of-band contract" under which
    /// RFC 9111 §4.2.4 lets a cache serve stale. Off by default.
    ///
    /// An origin's own `stale-if-error=N` takes its place, shorter or longer; a response that
    /// forbids serving stale (`no-cache`, `must-revalidate`, `proxy-revalidate`, `s-maxage`) is
    /// never stored, whatever the window. Any duration is accepted: `Duration::MAX` keeps copies
    /// for as long as the budget holds them.
    ///
    /// A copy kept under this window alone answers the layer's own errors, not the origin's
    /// (see [`answer_origin_errors`](Self::answer_origin_errors)).
    pub fn default_window(self, window: Duration) -> Self {
        self.set(|p| p.default_window = Some(window))
    }

    /// The store's budget in bytes: bodies, heads and keys together (each copy also counts a
    /// fixed 256 bytes, and each header field 32), and the copies being made. Least recently
    /// used copies go first. Copies being made may hold at most half of it: a body longer than
    /// half this budget is never stored. Default 64 MiB.
    pub fn max_bytes(self, bytes: usize) -> Self {
        self.set(|p| p.max_bytes = bytes)
    }

    /// The largest body stored. A longer one streams to the client untouched and is not stored.
    /// Default 1 MiB.
    pub fn max_response_bytes(self, bytes: usize) -> Self {
        self.set(|p| p.max_response_bytes = bytes)
    }

    /// The most copies held, each variant counting as one. Default 10,000.
    pub fn max_entries(self, entries: usize) -> Self {
        self.set(|p| p.max_entries = entries)
    }

    /// The request headers a stored response may vary on (`Vary`), replacing the default
    /// `Accept-Encoding`, `Accept`, `Accept-Language` and `Origin`; at most 6.
    ///
    /// The layer hashes these request headers' values for every GET, so that a response that
    /// varies on them can be stored and found again. A response that varies on any other header
    /// is not stored.
    ///
    /// ```
    /// use gateway_errors::stale::StaleIfError;
    /// use http::header::{ACCEPT_ENCODING, HeaderName};
    ///
    /// let store = StaleIfError::new()
    ///     .vary_headers([ACCEPT_ENCODING, HeaderName::from_static("x-device")])
    ///     .unwrap();
    /// let too_many = StaleIfError::new().vary_headers(
    ///     (0..7).map(|i| HeaderName::try_from(format!("x-{i}")).unwrap()),
    /// );
    /// assert!(too_many.is_err());
    /// # let _ = store;
    /// ```
    pub fn vary_headers(
        self,
        names: impl IntoIterator<Item = HeaderName>,
    ) -> Result<Self, TooManyVaryHeaders> {
        let mut unique: Vec<HeaderName> = Vec::new();
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        if unique.len() > MAX_VARY_HEADERS {
            return Err(TooManyVaryHeaders(()));
        }
        Ok(self.set(|p| p.vary_headers = unique))
    }

    /// Origin statuses any copy answers in place of, where one may (for a GET or HEAD, within the
    /// window); without a usable copy the origin's response passes through as before. Only
    /// RFC 5861's errors count, 500, 502, 503 and 504; others are ignored. None by default: an
    /// origin's own errors then pass through unchanged, except where a copy's origin sent
    /// `stale-if-error`, which asks for that copy in place of all four (RFC 5861 §4).
    ///
    /// The client then sees `Proxy-Status: <name>; received-status=503` and
    /// `Cache-Status: <name>; fwd=stale; fwd-status=503; ...`.
    pub fn answer_origin_errors(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let statuses: Vec<StatusCode> = statuses
            .into_iter()
            .filter(|&status| Policy::is_error(status))
            .collect();
        self.set(|p| {
            for status in statuses {
                if !p.origin_statuses.contains(&status) {
                    p.origin_statuses.push(status);
                }
            }
        })
    }

    /// Stores responses that set cookies, without their `Set-Cookie` fields: a copy then hands
    /// no cookie to anyone. Off by default: such a response is not stored (a site that sets a
    /// tracking cookie on every page then gets no copies; turn this on for it).
    pub fn strip_set_cookie(self, strip: bool) -> Self {
        self.set(|p| p.strip_set_cookie = strip)
    }

    /// The number of copies held (each variant counts).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether the store holds no copy.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes counted against [`max_bytes`](Self::max_bytes): the copies held, and the
    /// copies being made (bodies on their way to clients, copied as they pass).
    pub fn bytes(&self) -> usize {
        self.store.bytes().saturating_add(self.store.in_progress())
    }

    /// Drops every copy (after a deployment that changed every page, say). A response still on
    /// its way to a request that arrived before this is not stored either.
    pub fn clear(&self) {
        self.store.clear();
    }

    /// What the store needs of `request`, read when it arrives; `None` when it has no use for it.
    pub(crate) fn capture<B>(&self, request: &Request<B>) -> Option<CapturedRequest> {
        let mut captured = CapturedRequest::capture(&self.store.policy, request)?;
        // Only a GET's response is stored: only a GET needs to know of a write after it.
        if captured.access == (Access::Read { head: false }) {
            captured.epoch = self.store.epoch(&captured.key());
        }
        Some(captured)
    }

    /// An origin's response head arrived for `request`. A successful write drops the copies of
    /// its URI; a response that may be stored gets the copy of its body to carry, or is stored
    /// at once when it has no body to send (`no_body`).
    pub(crate) fn on_response(
        &self,
        request: &CapturedRequest,
        status: StatusCode,
        headers: &HeaderMap,
        no_body: bool,
    ) -> Option<Box<Tee>> {
        if request.access == Access::Write {
            if status.as_u16() < 400 {
                self.store.invalidate(&request.key());
            }
            return None;
        }
        let admission = Admission::decide(&self.store.policy, request, status, headers).ok()?;
        // A write has outdated the page since the request arrived: no copy is made of it (the
        // insert would refuse it anyway, and checks again under its lock).
        if self.store.epoch(&request.key()) != request.epoch {
            return None;
        }
        if no_body {
            if let Some(copy) = admission.complete(Bytes::new()) {
                self.store.insert(copy);
            }
            return None;
        }
        Tee::new(self.store.clone(), admission)
    }

    /// Whether a copy may stand in for an error of this status and kind: a 500, 502, 503 or 504,
    /// but never a forwarding loop, which is this gateway's own configuration (a copy would hide
    /// it for as long as the copy lasts).
    pub(crate) fn may_hide(status: StatusCode, kind: Option<ProxyErrorKind>) -> bool {
        Policy::is_error(status) && kind != Some(ProxyErrorKind::ProxyLoopDetected)
    }

    /// Whether the operator lets any copy answer in place of this origin status
    /// ([`answer_origin_errors`](Self::answer_origin_errors)).
    pub(crate) fn answers_origin_status(&self, status: StatusCode) -> bool {
        self.store.policy.answers_origin_status(status)
    }

    /// The copy that may answer `request` now, in place of the error `hides`, if any.
    pub(crate) fn answer(&self, request: &CapturedRequest, hides: Hides) -> Option<Answer> {
        if !matches!(request.access, Access::Read { .. }) || request.directives.no_cache {
            return None;
        }
        let copy = self.store.find(&request.key(), &request.vary)?;
        if let Hides::OriginError(status) = hides {
            // The origin asked for its copies in place of its own errors when it sent
            // `stale-if-error` (RFC 5861 §4); under the operator's window only, the operator
            // decides which.
            if !Policy::is_error(status)
                || !(copy.origin_window || self.answers_origin_status(status))
            {
                return None;
            }
        }
        let now = tokio::time::Instant::now();
        match copy.verdict(now, request.directives.stale_if_error()) {
            Verdict::Answers { age, ttl } => Some(Answer {
                copy,
                age,
                ttl,
                head: request.access == Access::Read { head: true },
            }),
            Verdict::TooStaleForRequest => None,
            Verdict::Expired => {
                self.store.remove(&copy);
                None
            }
        }
    }
}

impl fmt::Debug for StaleIfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = &self.store.policy;
        f.debug_struct("StaleIfError")
            .field("copies", &self.len())
            .field("bytes", &self.bytes())
            .field("max_bytes", &policy.max_bytes)
            .field("max_response_bytes", &policy.max_response_bytes)
            .field("max_entries", &policy.max_entries)
            .field("default_window", &policy.default_window)
            .field("vary_headers", &policy.vary_headers)
            .field("origin_statuses", &policy.origin_statuses)
            .field("strip_set_cookie", &policy.strip_set_cookie)
            .finish()
    }
}

/// The error a copy would stand in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hides {
    /// An error the layer answers itself: the origin could not be reached or did not answer in
    /// time, a breaker refused, or the layer intercepts the origin's error. Any copy within its
    /// window may answer.
    LayerError,
    /// An origin's own error, which otherwise passes through: a copy may answer when its origin
    /// sent `stale-if-error`, or when the operator named the status.
    OriginError(StatusCode),
}

/// A copy about to answer, with its age and remaining freshness in whole seconds.
pub(crate) struct Answer {
    copy: Arc<StoredCopy>,
    pub(crate) age: u64,
    ttl: i64,
    head: bool,
}

impl Answer {
    /// The status, head and body the client gets: the copy's, with `Age`, and our members
    /// appended to `Cache-Status` (`cache_name` is this gateway's name as a list member) and
    /// `Proxy-Status`. `fwd_status` is the status the copy stands in for.
    pub(crate) fn into_parts(
        self,
        cache_name: &HeaderValue,
        proxy_status: HeaderValue,
        fwd_status: StatusCode,
    ) -> (StatusCode, HeaderMap, Bytes) {
        // Filled field by field, sized for the three added: cloning the stored map and growing
        // it would allocate twice over.
        let mut headers = HeaderMap::with_capacity(self.copy.headers.len() + 3);
        for (name, value) in &self.copy.headers {
            headers.append(name.clone(), value.clone());
        }
        // Each value in a buffer of its exact size, which becomes the value without another
        // allocation (`HeaderValue::from(u64)` takes two).
        let age = itoa::Buffer::new().format(self.age).as_bytes().to_vec();
        if let Ok(age) = HeaderValue::from_maybe_shared(Bytes::from(age)) {
            headers.insert(header::AGE, age);
        }
        let mut ttl = itoa::Buffer::new();
        let parts: [&[u8]; 5] = [
            cache_name.as_bytes(),
            b"; fwd=stale; fwd-status=",
            fwd_status.as_str().as_bytes(),
            b"; ttl=",
            ttl.format(self.ttl).as_bytes(),
        ];
        let member = parts.concat();
        // A member and digits: always a valid value.
        if let Ok(member) = HeaderValue::from_maybe_shared(Bytes::from(member)) {
            headers.append(CACHE_STATUS.clone(), member);
        }
        headers.append(crate::headers::PROXY_STATUS.clone(), proxy_status);
        let body = if self.head {
            Bytes::new()
        } else {
            self.copy.body.clone()
        };
        (self.copy.status, headers, body)
    }
}

/// What a response answered from a stale copy carries in its extensions: the copy's age as sent
/// in `Age`, and the error the copy hid.
///
/// ```
/// use gateway_errors::stale::FromCopy;
/// # fn inspect(response: http::Response<()>) {
/// if let Some(from_copy) = response.extensions().get::<FromCopy>() {
///     println!("a copy {:?} old hid {:?}", from_copy.age(), from_copy.error().kind());
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FromCopy {
    age: Duration,
    error: ProxyError,
}

impl FromCopy {
    pub(crate) fn new(age: u64, error: ProxyError) -> Self {
        FromCopy {
            age: Duration::from_secs(age),
            error,
        }
    }

    /// The copy's age, as sent in `Age`.
    pub fn age(&self) -> Duration {
        self.age
    }

    /// The failure the copy stands in for: its kind, status, whether the request was sent, and source, as the layer would
    /// have answered it. (The retry hint is not worked out for it: the client got an answer.)
    pub fn error(&self) -> &ProxyError {
        &self.error
    }
}

/// [`StaleIfError::vary_headers`] was given more than 6 distinct names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyVaryHeaders(());

impl fmt::Display for TooManyVaryHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a stored response may vary on at most {MAX_VARY_HEADERS} request headers"
        )
    }
}

impl StdError for TooManyVaryHeaders {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rfc_5861_errors_are_answered_in_place_of_the_origin() {
        let store = StaleIfError::new().answer_origin_errors(
            [404, 500, 501, 503, 505, 200].map(|code| StatusCode::from_u16(code).unwrap()),
        );
        for (code, answered) in [
            (404, false),
            (500, true),
            (501, false),
            (502, false),
            (503, true),
            (505, false),
            (200, false),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(store.answers_origin_status(status), answered, "{code}");
        }
    }

    #[tokio::test]
    async fn an_origin_error_is_answered_by_a_copy_its_origin_asked_for_or_the_operator_allows() {
        let get = || {
            Request::get("/page")
                .header("host", "site.example")
                .body(())
                .unwrap()
        };
        let answers = |store: &StaleIfError, cache_control: &'static str, hides: Hides| {
            store.clear();
            let request = store.capture(&get()).unwrap();
            let mut head = HeaderMap::new();
            head.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            );
            assert!(
                store
                    .on_response(&request, StatusCode::OK, &head, true)
                    .is_none()
            );
            assert_eq!(store.len(), 1);
            store.answer(&request, hides).is_some()
        };
        let origin = |code: u16| Hides::OriginError(StatusCode::from_u16(code).unwrap());
        let asked = "max-age=60, stale-if-error=60";
        let unasked = "max-age=60";

        let store = StaleIfError::new().default_window(Duration::from_secs(60));
        for code in [500, 502, 503, 504] {
            assert!(answers(&store, asked, origin(code)), "{code}");
            assert!(!answers(&store, unasked, origin(code)), "{code}");
        }
        assert!(!answers(&store, asked, origin(501)));
        // The layer's own errors: either copy.
        assert!(answers(&store, asked, Hides::LayerError));
        assert!(answers(&store, unasked, Hides::LayerError));

        // The operator's statuses: any copy.
        let opted = store.answer_origin_errors([StatusCode::SERVICE_UNAVAILABLE]);
        assert!(answers(&opted, unasked, origin(503)));
        assert!(!answers(&opted, unasked, origin(502)));
    }

    #[tokio::test]
    async fn a_read_that_began_before_a_successful_write_does_not_store_its_response() {
        let store = StaleIfError::new().default_window(Duration::from_secs(60));
        let request = |method: http::Method| {
            let request = Request::builder()
                .method(method)
                .uri("/doc")
                .header("host", "site.example")
                .body(())
                .unwrap();
            store.capture(&request).unwrap()
        };
        let empty = HeaderMap::new();
        let before = request(http::Method::GET);
        let failed = request(http::Method::PUT);
        assert!(
            store
                .on_response(&failed, StatusCode::CONFLICT, &empty, true)
                .is_none()
        );
        let written = request(http::Method::PUT);
        assert!(
            store
                .on_response(&written, StatusCode::NO_CONTENT, &empty, true)
                .is_none()
        );
        // The read ends after the write: its page is the one from before it.
        assert!(
            store
                .on_response(&before, StatusCode::OK, &empty, false)
                .is_none()
        );
        store.on_response(&before, StatusCode::OK, &empty, true);
        assert_eq!(store.len(), 0);
        // A read after the write is stored, however many failed writes came between.
        let after = request(http::Method::GET);
        let failed = request(http::Method::POST);
        assert!(
            store
                .on_response(&failed, StatusCode::BAD_REQUEST, &empty, true)
                .is_none()
        );
        store.on_response(&after, StatusCode::OK, &empty, true);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn each_builder_call_makes_a_new_store_and_clones_share_one() {
        let store = StaleIfError::new();
        let clone = store.clone();
        assert!(Arc::ptr_eq(&store.store, &clone.store));
        let changed = store.clone().max_entries(5);
        assert!(!Arc::ptr_eq(&store.store, &changed.store));
        assert_eq!(changed.store.policy.max_entries, 5);
        assert_eq!(store.store.policy.max_entries, 10_000);
    }
}
