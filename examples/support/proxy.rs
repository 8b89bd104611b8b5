//! The proxy of `examples/gateway.rs`: a hyper-util client that forwards every request to one
//! upstream, and the server loop in front of it (HTTP/1.1 with upgrades, and h2c).
//!
//! The upstream is `http://` or `https://`: over TLS (rustls, with the webpki roots and any CA
//! given with [`Proxy::upstream_ca`]) the proxy speaks HTTP/1.1, or HTTP/2 where the upstream
//! offers it by ALPN.
//!
//! Kept apart from the example's `main` so that the tests (`tests/integration/gateway_hardening.rs`,
//! `tests/integration/soak.rs`) check the very code a user copies.
//!
//! What makes it safe to put on an edge, beyond the layer:
//! - only the configured upstream is ever contacted: the request's target is rewritten to it, so
//!   an absolute-form request (`GET http://elsewhere/`) is no open proxy, and `CONNECT` is refused
//!   (403, `http_request_denied`);
//! - hop-by-hop headers, and those named in `Connection`, are stripped both ways (RFC 9110 §7.6.1);
//! - it is the edge: a client's `Forwarded` and `X-Forwarded-*` are replaced by what the gateway
//!   saw itself (the client's address, the host it asked for, the protocol), so an origin that
//!   trusts them, or reflects them into its pages, never takes a client's word for the gateway's
//!   (RFC 7239). Behind a load balancer you trust, append to its fields instead;
//! - a request body is limited: a `Content-Length` over the limit is answered 413 before anything
//!   is sent, a chunked body is cut off at the limit and answered 413;
//! - the server gives a client [`ServeOptions::header_read_timeout`] to send its request head
//!   (slowloris) in at most [`ServeOptions::max_head_bytes`] (hyper answers 431 past that);
//! - hyper refuses conflicting framing (two different `Content-Length`s, a `Transfer-Encoding`
//!   that does not end in `chunked`) with a 400; a request with both `Content-Length` and
//!   `Transfer-Encoding: chunked` is read as chunked, its `Content-Length` dropped, and its
//!   connection closed after the response (RFC 9112 §6.3), so no bytes after it are read as
//!   another request.

#![allow(dead_code)]

use std::convert::Infallible;
use std::error::Error;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gateway_errors::body::UploadBody;
use gateway_errors::classify::Classification;
use gateway_errors::{ProxyError, ProxyErrorKind};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tower::Service;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connector to the upstream: TCP for `http://`, and TLS on it for `https://`.
pub type UpstreamConnector = HttpsConnector<HttpConnector>;

/// Forwards every request to one upstream, whatever the request's target says.
#[derive(Clone)]
pub struct Proxy {
    client: Client<UpstreamConnector, Limited<UploadBody<Incoming>>>,
    scheme: Scheme,
    authority: Authority,
    via: HeaderValue,
    max_body: u64,
    /// The certificate authorities an `https://` upstream's certificate must chain to.
    roots: Arc<RootCertStore>,
    http2_only: bool,
}

impl Proxy {
    /// A proxy to `upstream` (an `http://` or `https://` URL with a host) that names itself
    /// `name` in `Via` and accepts request bodies of at most `max_body` bytes. An `https://`
    /// upstream's certificate must chain to one of the webpki roots (Mozilla's), or to a CA
    /// added with [`Proxy::upstream_ca`], and name the URL's host.
    pub fn new(upstream: &Uri, name: &str, max_body: u64) -> Result<Self, BoxError> {
        let scheme = upstream.scheme().cloned().unwrap_or(Scheme::HTTP);
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err("the upstream URL must be http:// or https://".into());
        }
        let authority = upstream
            .authority()
            .cloned()
            .ok_or("the upstream URL needs a host")?;
        let roots = Arc::new(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        Ok(Proxy {
            client: upstream_client(roots.clone(), false),
            scheme,
            authority,
            via: HeaderValue::from_str(&format!("1.1 {name}"))?,
            max_body,
            roots,
            http2_only: false,
        })
    }

    /// Speaks HTTP/2 to the upstream: with prior knowledge (h2c) to an `http://` upstream, and
    /// by ALPN, offering nothing else, to an `https://` one. All requests share one connection,
    /// where HTTP/1.1 needs one connection per request in flight.
    pub fn http2_only(mut self) -> Self {
        self.http2_only = true;
        self.client = upstream_client(self.roots.clone(), true);
        self
    }

    /// Also trusts the certificate authorities in `pem_file` (PEM, one or more `CERTIFICATE`
    /// blocks) for an `https://` upstream: a private CA, as a test or internal deployment has.
    pub fn upstream_ca(mut self, pem_file: &Path) -> Result<Self, BoxError> {
        let shown = pem_file.display();
        let certificates = CertificateDer::pem_file_iter(pem_file)
            .map_err(|e| format!("{shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{shown}: {e}"))?;
        if certificates.is_empty() {
            return Err(format!("{shown}: no CERTIFICATE in it").into());
        }
        let mut roots = RootCertStore::clone(&self.roots);
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|e| format!("{shown}: {e}"))?;
        }
        self.roots = Arc::new(roots);
        self.client = upstream_client(self.roots.clone(), self.http2_only);
        Ok(self)
    }
}

fn upstream_client(
    roots: Arc<RootCertStore>,
    http2_only: bool,
) -> Client<UpstreamConnector, Limited<UploadBody<Incoming>>> {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(Duration::from_secs(2)));
    tcp.set_nodelay(true);
    // `https://` targets go through it too: the TLS connector wraps the connection it makes.
    tcp.enforce_http(false);
    // ring builds with a C compiler alone; rustls now prefers aws-lc-rs (for its post-quantum
    // key exchange), which also needs cmake. A gateway built on aws-lc-rs swaps this one line.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    // The ALPN offer: HTTP/2 first where the client may use both, and hyper-util speaks what the
    // upstream picked.
    let connector = if http2_only {
        connector.enable_http2().wrap_connector(tcp)
    } else {
        connector.enable_http1().enable_http2().wrap_connector(tcp)
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .http2_only(http2_only)
        .build(connector)
}

/// The answer for a request body over the limit: 413, the request's own fault.
fn payload_too_large() -> ProxyError {
    let too_large = Classification::new(ProxyErrorKind::HttpRequestError)
        .with_status(StatusCode::PAYLOAD_TOO_LARGE);
    ProxyError::from_classification(too_large)
}

/// The body of a request the proxy forwards: the client's, as the gateway layer watches it.
pub type ClientBody = UploadBody<Incoming>;

impl Service<Request<ClientBody>> for Proxy {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Forwarding;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.client.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ClientBody>) -> Forwarding {
        let (mut parts, body) = request.into_parts();
        // A protocol switch (WebSocket) keeps its two hop-by-hop fields, and the client's side of
        // the connection, which hyper hands over once the 101 has gone out.
        let upgrade = requested_upgrade(&parts.headers).map(|protocols| {
            let client_side = parts.extensions.remove::<OnUpgrade>();
            (protocols, client_side)
        });
        if parts.method == Method::CONNECT {
            // A tunnel is a forward proxy's business: refused by policy, nothing is sent.
            let denied = ProxyError::new(ProxyErrorKind::HttpRequestDenied);
            return Forwarding::Refused {
                error: Some(denied.into()),
            };
        }
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body) {
            return Forwarding::Refused {
                error: Some(payload_too_large().into()),
            };
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else {
            let bad = Classification::new(ProxyErrorKind::HttpRequestError);
            return Forwarding::Refused {
                error: Some(ProxyError::from_classification(bad).into()),
            };
        };
        parts.uri = uri;
        // A client's HTTP/2 request goes on as HTTP/1.1 to an HTTP/1.1 upstream (hyper-util
        // refuses to send an HTTP/2 request there); over h2c the version is moot.
        parts.version = Version::HTTP_11;
        // The forwarding fields were replaced when the request arrived (`serve`).
        strip_hop_by_hop(&mut parts.headers);
        if is_grpc(&parts.headers) {
            // The one TE value HTTP/2 allows, and one gRPC servers may require: it says the
            // client reads trailers, which this proxy does and passes on.
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        parts.headers.remove(header::HOST);
        parts.headers.append(header::VIA, self.via.clone());
        // A chunked body states no length up front: it is cut off at the limit instead.
        let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
        let body = Limited::new(body, limit);
        match upgrade {
            None => Forwarding::Sent {
                future: self.client.request(Request::from_parts(parts, body)),
            },
            Some((protocols, client_side)) => {
                parts.headers.insert(header::UPGRADE, protocols);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                let sent = self.client.request(Request::from_parts(parts, body));
                Forwarding::Upgrading {
                    future: Box::pin(switch_protocols(sent, client_side)),
                }
            }
        }
    }
}

/// The protocols a request asks to switch to: an `Upgrade` field that `Connection` names.
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim().eq_ignore_ascii_case("upgrade"));
    named
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Waits for the upstream's answer to an upgrade request. On a 101, joins the client's connection
/// to the upstream's, byte for byte, once hyper has switched both.
async fn switch_protocols(
    sent: legacy::ResponseFuture,
    client_side: Option<OnUpgrade>,
) -> Result<Response<Incoming>, BoxError> {
    let mut response = sent.await?;
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let protocol = response.headers().get(header::UPGRADE).cloned();
    strip_hop_by_hop(response.headers_mut());
    if !switched {
        // The upstream answered as plain HTTP (it may ignore `Upgrade`): its answer goes on.
        return Ok(response);
    }
    let upstream_side = hyper::upgrade::on(&mut response)
        .await
        .map_err(|e| ProxyError::new(ProxyErrorKind::HttpUpgradeFailed).with_source(e))?;
    let Some(client_side) = client_side else {
        return Err(ProxyError::new(ProxyErrorKind::HttpUpgradeFailed).into());
    };
    if let Some(protocol) = protocol {
        response.headers_mut().insert(header::UPGRADE, protocol);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    tokio::spawn(async move {
        // Fails when the layer turned the 101 into an error: then there is nothing to join.
        let Ok(client_side) = client_side.await else {
            return;
        };
        let mut client_side = TokioIo::new(client_side);
        let mut upstream_side = TokioIo::new(upstream_side);
        let _ = tokio::io::copy_bidirectional(&mut client_side, &mut upstream_side).await;
    });
    Ok(response)
}

pin_project! {
    /// The future of [`Proxy`].
    #[project = ForwardingProj]
    pub enum Forwarding {
        Sent { #[pin] future: legacy::ResponseFuture },
        // Rare enough to box: a request that asks to switch protocols.
        Upgrading { future: Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>> },
        Refused { error: Option<BoxError> },
    }
}

impl Future for Forwarding {
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ForwardingProj::Sent { future } => future.poll(cx).map(|result| match result {
                Ok(mut response) => {
                    strip_hop_by_hop(response.headers_mut());
                    Ok(response)
                }
                // The request body went over the limit while it was being sent: the client's
                // fault, not the upstream's.
                Err(error) if caused_by_length_limit(&error) => {
                    Err(payload_too_large().with_source(error).into())
                }
                Err(error) => Err(error.into()),
            }),
            ForwardingProj::Upgrading { future } => future.as_mut().poll(cx),
            ForwardingProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

/// A gRPC request: `application/grpc`, `+proto` and the like. (gRPC-Web carries its trailers in
/// the body and needs no TE.)
fn is_grpc(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= GRPC.len()
            && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
            && matches!(value.get(GRPC.len()), None | Some(b'+' | b';' | b' '))
    })
}

/// Whether the body limit is somewhere in `error`'s source chain.
fn caused_by_length_limit(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    // Bounded: a `source()` chain that loops must not hang the proxy.
    for _ in 0..16 {
        let Some(error) = next else {
            return false;
        };
        if error.is::<LengthLimitError>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// The fields that describe this proxy's own connection to the next hop, which its client writes
/// anew (framing, the upgrade it asks for itself), as names ready to look up: removing by `&str`
/// would parse each name again on every request.
static OWN_CONNECTION: [HeaderName; 5] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// RFC 9110 §7.6.1: a proxy removes the fields named in `Connection`, and the hop-by-hop fields.
///
/// The layer has already done the first part on a request (`remove_hop_by_hop`, so that what it
/// reads is what the origin gets); on a response, and with `--bare`, it is done here.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    gateway_errors::headers::remove_hop_by_hop(headers);
    for name in &OWN_CONNECTION {
        headers.remove(name);
    }
}

/// RFC 7239 at the edge: whatever the client said about earlier proxies is dropped, and the
/// gateway states what it saw: the client's address (`unknown` when the server loop did not say),
/// the authority the client asked for, and the protocol (plain HTTP: this example serves no TLS).
///
/// The host stated is the one the request is for, which the stale store keys its copies by: a
/// page an origin builds from it is only ever answered to requests for that same host. A client's
/// own `X-Forwarded-Host` could differ from it, and a page built from that would be kept under the
/// real host's key.
///
/// Made once per connection: the client's address is formatted when the connection is accepted,
/// and the last `Forwarded` value is kept for the next request that asks for the same host (most
/// do), so that a request formats nothing.
pub struct ClientForwarding {
    client: IpAddr,
    /// `X-Forwarded-For`: the bare address, IPv6 without brackets.
    forwarded_for: HeaderValue,
    /// The host last asked for, and the `Forwarded` value made for it.
    last: std::sync::Mutex<Option<(HeaderValue, HeaderValue)>>,
}

impl ClientForwarding {
    /// The statement for a connection from `client`.
    pub fn new(client: IpAddr) -> Self {
        ClientForwarding {
            client,
            forwarded_for: HeaderValue::try_from(client.to_string())
                .expect("an address is visible ASCII"),
            last: std::sync::Mutex::new(None),
        }
    }

    /// Replaces whatever `request` claims about proxies with this gateway's own word.
    pub fn state<B>(&self, request: &mut Request<B>) {
        // The authority the client asked for: in the target (HTTP/2, absolute form) or in
        // `Host`; a host and a port, never a userinfo (RFC 9110 §7.2).
        let asked_for = match request.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => request.headers().get(header::HOST).cloned(),
        }
        .filter(|host| is_host(host.as_bytes()));
        let forwarded = match asked_for.as_ref() {
            Some(host) => {
                let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
                match last.as_ref() {
                    Some((kept, value)) if kept == host => value.clone(),
                    _ => {
                        let value = forwarded_value(
                            Some(self.client),
                            host.to_str()
                                .ok()
                                .and_then(|h| Authority::try_from(h).ok())
                                .as_ref(),
                            "http",
                        );
                        *last = Some((host.clone(), value.clone()));
                        value
                    }
                }
            }
            None => forwarded_value(Some(self.client), None, "http"),
        };
        let headers = request.headers_mut();
        // Gone first, so that a client's `Connection` cannot remove what is written next.
        gateway_errors::headers::remove_hop_by_hop(headers);
        for name in CLAIMS {
            headers.remove(name);
        }
        headers.insert(&FORWARDED, forwarded);
        headers.insert(&X_FORWARDED_FOR, self.forwarded_for.clone());
        if let Some(host) = asked_for {
            headers.insert(&X_FORWARDED_HOST, host);
        }
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

/// Whether `value` can stand for an authority as asked: a host and maybe a port, visible ASCII,
/// no userinfo.
fn is_host(value: &[u8]) -> bool {
    !value.is_empty() && !value.contains(&b'@') && value.iter().all(u8::is_ascii_graphic)
}

static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Fields a client may send to pass for a proxy's word about itself: removed, and the first four
/// written again by this proxy.
static CLAIMS: [&HeaderName; 6] = [
    &FORWARDED,
    &X_FORWARDED_FOR,
    &X_FORWARDED_HOST,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_PORT,
    &X_REAL_IP,
];

/// A `forwarded-element` (RFC 7239 §4): `for`, `host` and `proto`, each value a token where it
/// can be and a quoted string where it cannot (an IPv6 node, a `host:port`).
pub fn forwarded_value(
    client: Option<IpAddr>,
    asked_for: Option<&Authority>,
    proto: &str,
) -> HeaderValue {
    let node = match client {
        // RFC 7239 §6: an IPv6 node is bracketed, and so quoted (`:` is no token character).
        Some(IpAddr::V6(ip)) => format!("\"[{ip}]\""),
        Some(IpAddr::V4(ip)) => ip.to_string(),
        None => "unknown".to_owned(),
    };
    let mut value = format!("for={node}");
    if let Some(host) = asked_for {
        value.push_str(";host=");
        push_token_or_quoted(&mut value, host.as_str());
    }
    value.push_str(";proto=");
    push_token_or_quoted(&mut value, proto);
    // Built from an address, a parsed authority and a token: visible ASCII only.
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

fn push_token_or_quoted(out: &mut String, value: &str) {
    const TCHAR_PUNCT: &[u8] = b"!#$%&'*+-.^_`|~";
    let token = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TCHAR_PUNCT.contains(&b));
    if token {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The baseline: the same proxy, every error an empty 502.
///
/// With [`Bare::floor`], it also does to each request the two things the layer, with its
/// defaults, does to every request before anything can fail: one walk over the request's fields
/// for the names the layer reads, and `CDN-Loop` appended (RFC 8586, loop detection). Nothing is
/// kept and nothing is answered: it is the floor under the layer's success path, and what the
/// layer costs above it is its own machinery (its future, its clocks, its body).
#[derive(Clone)]
pub struct Bare<S> {
    inner: S,
    /// The gateway's `CDN-Loop` member, when the floor's work is done.
    cdn_loop_member: Option<HeaderValue>,
}

impl<S> Bare<S> {
    /// The baseline around `inner`.
    pub fn new(inner: S) -> Self {
        Bare {
            inner,
            cdn_loop_member: None,
        }
    }

    /// The baseline plus the layer's fixed work on each request, naming the gateway `member`
    /// in `CDN-Loop`.
    pub fn floor(inner: S, member: &str) -> Result<Self, BoxError> {
        Ok(Bare {
            inner,
            cdn_loop_member: Some(HeaderValue::from_str(member)?),
        })
    }
}

/// `CDN-Loop` (RFC 8586).
static CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");

/// The floor's walk: the names the layer looks for (its default request id field among them),
/// matched as it matches them (by length, then bytes), over names and values as the layer's walk
/// goes (it keeps what it finds). What is found is only counted.
fn walk_fields(headers: &HeaderMap) -> u32 {
    let mut found = 0;
    for (name, _value) in headers {
        let name = name.as_str().as_bytes();
        let wanted = match name.len() {
            6 => name == b"accept",
            7 => name == b"upgrade",
            8 => name == b"cdn-loop",
            10 => name == b"connection" || name == b"keep-alive",
            12 => name == b"content-type" || name == b"grpc-timeout",
            15 => name == b"idempotency-key",
            16 => name == b"proxy-connection",
            _ => false,
        };
        // And the request id field (the layer's default name), for a name that is none of these.
        let request_id = !wanted && name.len() == 12 && name == b"x-request-id";
        found += u32::from(wanted || request_id);
    }
    found
}

impl<S> Service<Request<Incoming>> for Bare<S>
where
    S: Service<Request<ClientBody>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Either<Incoming, Empty<Bytes>>>;
    type Error = Infallible;
    type Future = BareFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A failing poll_ready is answered on the next call.
        let _ = std::task::ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(member) = &self.cdn_loop_member {
            // Kept from the optimiser, so that the walk is made.
            std::hint::black_box(walk_fields(request.headers()));
            request
                .headers_mut()
                .append(CDN_LOOP.clone(), member.clone());
        }
        BareFuture {
            future: self.inner.call(request.map(UploadBody::unwatched)),
        }
    }
}

pin_project! {
    /// The future of [`Bare`].
    pub struct BareFuture<F> { #[pin] future: F }
}

impl<F, E> Future for BareFuture<F>
where
    F: Future<Output = Result<Response<Incoming>, E>>,
{
    type Output = Result<Response<Either<Incoming, Empty<Bytes>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx).map(|result| {
            Ok(match result {
                Ok(response) => response.map(Either::Left),
                Err(_) => {
                    let mut response = Response::new(Either::Right(Empty::new()));
                    *response.status_mut() = StatusCode::BAD_GATEWAY;
                    response
                }
            })
        })
    }
}

/// The limits of the server loop.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a client has to send its whole request head (against slowloris); for a client
    /// that opens with the HTTP/2 preface, how long it has to send that.
    pub header_read_timeout: Duration,
    /// The most bytes of request head hyper buffers; a longer head is answered 431 (HTTP/1.1),
    /// or refused by HPACK's header list limit (HTTP/2).
    pub max_head_bytes: usize,
    /// The most requests one HTTP/2 connection may have in flight.
    pub max_concurrent_streams: u32,
    /// How long a shutdown waits for the requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            max_head_bytes: 64 * 1024,
            max_concurrent_streams: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `service` until `shutdown` completes, then waits up to
/// [`ServeOptions::shutdown_grace`] for the requests in flight.
///
/// Each connection speaks HTTP/1.1 (with upgrades, for WebSocket) or, when it opens with the
/// HTTP/2 preface, h2c (prior knowledge: gRPC clients). The preface must arrive within the header
/// read timeout, like an HTTP/1.1 head.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Every connection task holds a sender; once all are gone, every connection has ended.
    let (alive, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(StatesTheClient {
            inner: service.clone(),
            client: Arc::new(ClientForwarding::new(peer.ip())),
        });
        let alive = alive.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let preface =
                tokio::time::timeout(options.header_read_timeout, opens_with_preface(&stream));
            match preface.await {
                Ok(Ok(true)) => {
                    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .max_concurrent_streams(options.max_concurrent_streams)
                        .max_header_list_size(
                            u32::try_from(options.max_head_bytes).unwrap_or(u32::MAX),
                        )
                        // A silent peer is pinged, and dropped if it does not answer.
                        .keep_alive_interval(Duration::from_secs(20))
                        .keep_alive_timeout(Duration::from_secs(20))
                        .serve_connection(TokioIo::new(stream), service);
                    until_stopped(connection, stopping, |c| c.graceful_shutdown()).await;
                }
                Ok(Ok(false)) => {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(options.header_read_timeout)
                        // `max_buf_size` alone is not a bound on the head: one read can take the
                        // buffer past it, and a head that arrived whole is then accepted.
                        // `max_header_size` is checked against the parsed head.
                        .max_buf_size(options.max_head_bytes)
                        .max_header_size(options.max_head_bytes)
                        .serve_connection(TokioIo::new(stream), service)
                        // Hands the connection over after a 101 (WebSocket).
                        .with_upgrades();
                    until_stopped(connection, stopping, |c| c.graceful_shutdown()).await;
                }
                // Closed, failed, or too slow to say which protocol it speaks.
                Ok(Err(_)) | Err(_) => {}
            }
        });
    }
    eprintln!(
        "shutting down: waiting up to {} s for requests in flight",
        options.shutdown_grace.as_secs()
    );
    let _ = stop.send(true);
    drop(alive);
    let _ = tokio::time::timeout(options.shutdown_grace, all_ended.recv()).await;
}

/// Replaces what each request of a connection claims about proxies with the gateway's own word
/// ([`ClientForwarding`]), before anything reads it.
#[derive(Clone)]
struct StatesTheClient<S> {
    inner: S,
    client: Arc<ClientForwarding>,
}

impl<S, B> Service<Request<B>> for StatesTheClient<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        self.client.state(&mut request);
        self.inner.call(request)
    }
}

/// Runs `connection` until it ends; when the server stops first, lets it finish the requests in
/// flight and close (an idle connection closes at once).
async fn until_stopped<C: Future>(
    connection: C,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
) {
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stopping.changed() => {}
    }
    graceful_shutdown(connection.as_mut());
    let _ = connection.await;
}

/// Whether the connection opens with the HTTP/2 preface, read without consuming it. Decided at the
/// first byte that differs, so an HTTP/1.1 request is told apart at once.
async fn opens_with_preface(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        if n == seen {
            // Part of the preface is here and the rest is not: peek would return at once again.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen = n;
    }
}
