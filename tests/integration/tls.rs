//! HTTPS upstreams through the example gateway (`examples/support/proxy.rs`, as `--upstream
//! https://... --upstream-ca PEM_FILE` builds it): real TLS origins on loopback, with certificates
//! the tests make, each failure named as RFC 9209 names it.
//!
//! - a good certificate: 200, over HTTP/1.1 or, where the origin's ALPN offers it, HTTP/2;
//! - expired, not yet valid, issued by a CA the gateway does not trust, or for another name:
//!   502 `tls_certificate_error`, not sent, so retryable;
//! - an origin that demands a client certificate: 502 `tls_alert_received` with `alert-id=116`
//!   and `alert-message="certificate_required"`; one that shares no ALPN protocol with the gateway:
//!   `alert-id=120`, during the handshake, so retryable even for a POST;
//! - a plain-HTTP server spoken to over TLS: 502 `tls_protocol_error`;
//! - a TLS server spoken to over plain HTTP: 502 `http_protocol_error` (hyper reads its alert);
//! - a certificate error counts against the upstream: after enough of them the breaker answers
//!   503 `destination_unavailable` at once;
//! - the reason (rustls's message) is on the span's event, and in `Proxy-Status` `details` only
//!   when the operator turns details on; the body never names the certificate or the host.
//!
//! The origin drains a connection whose handshake failed before closing it, so that its alert is
//! read before the close rather than lost to a reset.

use crate::proxy::{self, ClientBody, Proxy, ServeOptions};
use crate::support::capture::{Captured, Installed};
use crate::support::{self, PROXY_NAME, within};

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use gateway_errors::TimeLimits;
use gateway_errors::headers::PROXY_STATUS;
use gateway_errors::health::UpstreamHealthLayer;
use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate authority the test makes.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a key");
        let cert = params.self_signed(&key).expect("a CA certificate");
        Ca { cert, key }
    }

    /// The CA as a PEM file, as an operator gives it with `--upstream-ca`.
    fn pem_file(&self) -> TempFile {
        TempFile::with(self.cert.pem().as_bytes())
    }
}

/// When a certificate is valid.
#[derive(Clone, Copy)]
enum Validity {
    Now,
    Expired,
    NotYetValid,
}

/// A server certificate for `san`, issued by `ca`, and its key.
fn leaf(
    ca: &Ca,
    san: SanType,
    validity: Validity,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "origin");
    params.subject_alt_names = vec![san];
    (params.not_before, params.not_after) = match validity {
        Validity::Now => (date_time_ymd(2000, 1, 1), date_time_ymd(4000, 1, 1)),
        Validity::Expired => (date_time_ymd(2000, 1, 1), date_time_ymd(2001, 1, 1)),
        Validity::NotYetValid => (date_time_ymd(3000, 1, 1), date_time_ymd(4000, 1, 1)),
    };
    let key = KeyPair::generate().expect("a key");
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("a leaf certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert.der().clone(), key)
}

fn ip_san() -> SanType {
    SanType::IpAddress(LOOPBACK)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // The provider the example gateway uses (see `proxy.rs`).
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An origin's TLS settings: its certificate, the ALPN protocols it picks from, and, if set, the
/// CA whose client certificates it demands.
fn server_config(
    (cert, key): (CertificateDer<'static>, PrivateKeyDer<'static>),
    alpn: &[&[u8]],
    client_ca: Option<&Ca>,
) -> ServerConfig {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.cert.der().clone()).expect("a CA");
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                .build()
                .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(vec![cert], key)
        .expect("a certificate and its key");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A file under the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn with(contents: &[u8]) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("gateway-errors-ca-{}-{n}.pem", std::process::id()));
        std::fs::write(&path, contents).expect("write a temporary file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Origins

/// Aborts a spawned task when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Origin {
    addr: SocketAddr,
    /// The HTTP version of each request that reached it.
    versions: Arc<Mutex<Vec<Version>>>,
    _task: Task,
}

/// Answers 200 `hello`, and notes the request's version.
fn hello(
    versions: Arc<Mutex<Vec<Version>>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    hyper::service::service_fn(move |request: Request<Incoming>| {
        versions.lock().unwrap().push(request.version());
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello")))) }
    })
}

/// A TLS origin on loopback: HTTP/2 when ALPN picked `h2`, else HTTP/1.1.
async fn tls_origin(config: ServerConfig) -> Origin {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let versions = Arc::new(Mutex::new(Vec::new()));
    let service = hello(versions.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let service = service.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).into_fallible().await {
                    Ok(tls) => tls,
                    Err((_, mut tcp)) => {
                        // Its alert is written; read what the client still sends (bounded), so
                        // that the close is a FIN after the alert, not a reset that may beat it.
                        let mut sink = [0u8; 1024];
                        let drain = async { while let Ok(1..) = tcp.read(&mut sink).await {} };
                        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
                        return;
                    }
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    Origin {
        addr,
        versions,
        _task: Task(task),
    }
}

/// A plain-HTTP origin on loopback.
async fn plain_origin() -> Origin {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let versions = Arc::new(Mutex::new(Vec::new()));
    let service = hello(versions.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Origin {
        addr,
        versions,
        _task: Task(task),
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway of examples/gateway.rs

struct Gateway {
    addr: SocketAddr,
    _task: Task,
}

/// The example's gateway in front of `upstream` (`https://...` or `http://...`), trusting the
/// CA in `ca` as `--upstream-ca` does; `details` turns `Proxy-Status` details on.
async fn gateway(upstream: &str, ca: Option<&TempFile>, details: bool) -> Gateway {
    let uri = upstream.parse().expect("a URI");
    let mut proxy = Proxy::new(&uri, PROXY_NAME, 1024).expect("a proxy");
    if let Some(ca) = ca {
        proxy = proxy.upstream_ca(&ca.0).expect("the CA file loads");
    }
    let layer = support::layer()
        .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(3)))
        .proxy_status_details(details);
    gateway_with(proxy, layer).await
}

async fn gateway_with(proxy: Proxy, layer: GatewayErrorLayer) -> Gateway {
    let service = ServiceBuilder::new().layer(layer).service(proxy);
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(proxy::serve(
        listener,
        service,
        ServeOptions::default(),
        std::future::pending(),
    ));
    Gateway {
        addr,
        _task: Task(task),
    }
}

/// What a client got.
struct Answer {
    status: StatusCode,
    proxy_status: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn send(gateway: &Gateway, method: &str) -> Answer {
    let client = support::http_client();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{}/page", gateway.addr))
        .header("accept", "application/problem+json")
        .body(Body::from(if method == "POST" { "order=42" } else { "" }))
        .expect("a request");
    let response = within("the gateway's answer", client.request(request))
        .await
        .expect("the gateway answers");
    let status = response.status();
    let proxy_status = response
        .headers()
        .get(&PROXY_STATUS)
        .map(|v| v.to_str().expect("ASCII").to_owned());
    let body = within("the body", response.into_body().collect())
        .await
        .expect("a whole body")
        .to_bytes();
    Answer {
        status,
        proxy_status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The span's event

/// The layer's events, captured on this test's thread (each test has its own current-thread
/// runtime, so the gateway's tasks run here too).
#[derive(Clone, Default)]
struct Events(Captured);

impl Events {
    fn capture() -> (Events, Installed) {
        let events = Events::default();
        let installed = events.0.install();
        (events, installed)
    }

    /// The one decision event: its `error.type` and the reason in its `error` chain.
    fn decision(&self) -> (String, String) {
        let events = self.0.events();
        let decisions: Vec<_> = events
            .iter()
            .filter(|event| event.target == "gateway_errors")
            .filter(|event| event.fields.contains_key("error.type"))
            .collect();
        assert_eq!(decisions.len(), 1, "one decision event: {events:?}");
        let fields = &decisions[0].fields;
        (
            fields["error.type"].clone(),
            fields.get("error").cloned().unwrap_or_default(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The checks

/// Checks a TLS failure as the client and the operator see it: the status, the whole
/// `Proxy-Status`, the body's type and retry hint, a body that names neither the certificate nor
/// the host, and the reason on the span's event.
fn assert_failure(
    answer: &Answer,
    events: &Events,
    kind: ProxyErrorKind,
    proxy_status: &str,
    retryable: bool,
    reason: &str,
) {
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
    assert_eq!(answer.proxy_status.as_deref(), Some(proxy_status));
    let json = answer.json();
    assert_eq!(json["error_type"], kind.token());
    assert_eq!(json["detail"], kind.detail());
    assert_eq!(json["retryable"], retryable);
    for private in ["127.0.0.1", "other.test", "certificate expired", "UNIX"] {
        assert!(!answer.body.contains(private), "{private}: {}", answer.body);
    }
    let (error_type, error) = events.decision();
    assert_eq!(error_type, kind.token());
    assert!(
        error.contains(reason),
        "the span's reason {reason:?} in {error:?}"
    );
}

#[tokio::test]
async fn a_good_certificate_is_answered_by_the_origin_over_http1_or_http2_as_alpn_says() {
    let ca = Ca::new("test CA");
    let pem = ca.pem_file();
    for (alpn, version) in [
        (&[b"http/1.1" as &[u8]][..], Version::HTTP_11),
        (&[b"h2" as &[u8]][..], Version::HTTP_2),
    ] {
        let origin = tls_origin(server_config(
            leaf(&ca, ip_san(), Validity::Now),
            alpn,
            None,
        ))
        .await;
        let gateway = gateway(&format!("https://{}", origin.addr), Some(&pem), false).await;
        let answer = send(&gateway, "GET").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body, "hello");
        assert_eq!(answer.proxy_status, None);
        assert_eq!(*origin.versions.lock().unwrap(), [version]);
    }
}

#[tokio::test]
async fn plain_http_upstreams_still_work_beside_tls() {
    let origin = plain_origin().await;
    let gateway = gateway(&format!("http://{}", origin.addr), None, false).await;
    let answer = send(&gateway, "GET").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body, "hello");
}

/// A TLS origin with `cert`, behind the gateway that trusts `trusted`; the events of one GET.
async fn certificate_failure(
    cert: (CertificateDer<'static>, PrivateKeyDer<'static>),
    trusted: &Ca,
    method: &str,
) -> (Answer, Events) {
    let (events, _guard) = Events::capture();
    let origin = tls_origin(server_config(cert, &[b"http/1.1"], None)).await;
    let pem = trusted.pem_file();
    let gateway = gateway(&format!("https://{}", origin.addr), Some(&pem), false).await;
    let answer = send(&gateway, method).await;
    assert!(
        origin.versions.lock().unwrap().is_empty(),
        "nothing reached the origin"
    );
    (answer, events)
}

/// An HTTP/1.1 origin whose certificate, issued by `ca`, expired long ago.
async fn expired_origin(ca: &Ca) -> Origin {
    tls_origin(server_config(
        leaf(ca, ip_san(), Validity::Expired),
        &[b"http/1.1"],
        None,
    ))
    .await
}

const CERTIFICATE_ERROR: &str = "edge-1; error=tls_certificate_error";

#[tokio::test]
async fn an_expired_certificate_is_a_certificate_error_and_the_request_was_not_sent() {
    let ca = Ca::new("test CA");
    let cert = leaf(&ca, ip_san(), Validity::Expired);
    // A POST: never sent, so safe to retry (if useless: the certificate stays expired).
    let (answer, events) = certificate_failure(cert, &ca, "POST").await;
    assert_failure(
        &answer,
        &events,
        ProxyErrorKind::TlsCertificateError,
        CERTIFICATE_ERROR,
        true,
        "invalid peer certificate: certificate expired",
    );
}

#[tokio::test]
async fn a_certificate_not_yet_valid_is_a_certificate_error() {
    let ca = Ca::new("test CA");
    let cert = leaf(&ca, ip_san(), Validity::NotYetValid);
    let (answer, events) = certificate_failure(cert, &ca, "GET").await;
    assert_failure(
        &answer,
        &events,
        ProxyErrorKind::TlsCertificateError,
        CERTIFICATE_ERROR,
        true,
        "certificate not valid yet",
    );
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_a_certificate_error() {
    let trusted = Ca::new("trusted CA");
    let other = Ca::new("other CA");
    let cert = leaf(&other, ip_san(), Validity::Now);
    let (answer, events) = certificate_failure(cert, &trusted, "GET").await;
    assert_failure(
        &answer,
        &events,
        ProxyErrorKind::TlsCertificateError,
        CERTIFICATE_ERROR,
        true,
        "UnknownIssuer",
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_certificate_error() {
    let ca = Ca::new("test CA");
    // The gateway connects to 127.0.0.1; the certificate names `other.test` (never looked up).
    let san = SanType::DnsName("other.test".try_into().expect("a DNS name"));
    let cert = leaf(&ca, san, Validity::Now);
    let (answer, events) = certificate_failure(cert, &ca, "GET").await;
    assert_failure(
        &answer,
        &events,
        ProxyErrorKind::TlsCertificateError,
        CERTIFICATE_ERROR,
        true,
        "certificate not valid for name",
    );
}

#[tokio::test]
async fn the_reason_is_in_proxy_status_details_only_when_turned_on() {
    let ca = Ca::new("test CA");
    let origin = expired_origin(&ca).await;
    let pem = ca.pem_file();
    let upstream = format!("https://{}", origin.addr);
    let quiet = gateway(&upstream, Some(&pem), false).await;
    let answer = send(&quiet, "GET").await;
    assert_eq!(answer.proxy_status.as_deref(), Some(CERTIFICATE_ERROR));
    let detailed = gateway(&upstream, Some(&pem), true).await;
    let answer = send(&detailed, "GET").await;
    let proxy_status = answer.proxy_status.expect("Proxy-Status");
    assert!(
        proxy_status.starts_with(&format!("{CERTIFICATE_ERROR}; details=\"")),
        "{proxy_status}"
    );
    assert!(
        proxy_status.contains("certificate expired"),
        "{proxy_status}"
    );
    // Still nothing of it in the body.
    assert!(!answer.body.contains("expired"), "{}", answer.body);
}

#[tokio::test]
async fn an_origin_that_demands_a_client_certificate_sends_an_alert_that_is_named() {
    let (events, _guard) = Events::capture();
    let ca = Ca::new("test CA");
    let clients = Ca::new("client CA");
    let config = server_config(
        leaf(&ca, ip_san(), Validity::Now),
        &[b"http/1.1"],
        Some(&clients),
    );
    let origin = tls_origin(config).await;
    let pem = ca.pem_file();
    let gateway = gateway(&format!("https://{}", origin.addr), Some(&pem), false).await;
    let answer = send(&gateway, "GET").await;
    // TLS 1.3: the origin checks the client's certificate after the client's side of the
    // handshake is over, so the alert comes after the request was written: only an idempotent
    // request may be sent again, as for any request that may have reached the origin.
    assert_failure(
        &answer,
        &events,
        ProxyErrorKind::TlsAlertReceived,
        "edge-1; error=tls_alert_received; alert-id=116; alert-message=\"certificate_required\"",
        true,
        "received fatal alert: CertificateRequired",
    );
    // A POST, then, may not be sent again.
    let answer = send(&gateway, "POST").await;
    assert_eq!(answer.json()["retryable"], false, "{}", answer.body);
    assert!(origin.versions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_origin_with_no_protocol_in_common_sends_an_alert_during_the_handshake() {
    let (events, _guard) = Events::capture();
    let ca = Ca::new("test CA");
    // The gateway offers h2 and http/1.1 by ALPN; this origin speaks neither.
    let config = server_config(leaf(&ca, ip_san(), Validity::Now), &[b"acme-tls/1"], None);
    let origin = tls_origin(config).await;
    let pem = ca.pem_file();
    let gateway = gateway(&format!("https://{}", origin.addr), Some(&pem), false).await;
    // A POST: the handshake failed in the connect step, so nothing was sent and a retry is safe.
    let answer = send(&gateway, "POST").await;
    assert_failure(
        &answer,
        &events,
        ProxyErrorKind::TlsAlertReceived,
        "edge-1; error=tls_alert_received; alert-id=120; alert-message=\"no_application_protocol\"",
        true,
        "received fatal alert: NoApplicationProtocol",
    );
}

#[tokio::test]
async fn a_plain_http_server_spoken_to_over_tls_is_a_tls_protocol_error() {
    let (events, _guard) = Events::capture();
    let origin = plain_origin().await;
    let gateway = gateway(&format!("https://{}", origin.addr), None, false).await;
    let answer = send(&gateway, "POST").await;
    assert_failure(
        &answer,
        &events,
        ProxyErrorKind::TlsProtocolError,
        "edge-1; error=tls_protocol_error",
        true,
        "received corrupt message",
    );
    assert!(origin.versions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_tls_server_spoken_to_over_plain_http_is_an_http_protocol_error() {
    let (events, _guard) = Events::capture();
    let ca = Ca::new("test CA");
    let origin = tls_origin(server_config(
        leaf(&ca, ip_san(), Validity::Now),
        &[b"http/1.1"],
        None,
    ))
    .await;
    let gateway = gateway(&format!("http://{}", origin.addr), None, false).await;
    let answer = send(&gateway, "GET").await;
    // What came back was a TLS alert record, not HTTP: hyper could not parse it.
    assert_failure(
        &answer,
        &events,
        ProxyErrorKind::HttpProtocolError,
        "edge-1; error=http_protocol_error",
        true,
        "invalid HTTP",
    );
}

#[tokio::test]
async fn an_upstream_with_an_expired_certificate_is_marked_unavailable_by_the_breaker() {
    let ca = Ca::new("test CA");
    let origin = expired_origin(&ca).await;
    let pem = ca.pem_file();
    let upstream = format!("https://{}", origin.addr);
    let proxy = Proxy::new(&upstream.parse().expect("a URI"), PROXY_NAME, 1024)
        .expect("a proxy")
        .upstream_ca(&pem.0)
        .expect("the CA file loads");
    // As the example's `--breaker-failures 2`: every request is keyed by its one upstream.
    let key: Arc<str> = upstream.into();
    let health = UpstreamHealthLayer::new()
        .consecutive_failures(2)
        .open_time(Duration::from_secs(60))
        .key_by(move |_: &Request<ClientBody>| Some(key.clone()));
    let service = ServiceBuilder::new()
        .layer(support::layer())
        .layer(health)
        .service(proxy);
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
    let gateway = Gateway {
        addr: listener.local_addr().expect("address"),
        _task: Task(tokio::spawn(proxy::serve(
            listener,
            service,
            ServeOptions::default(),
            std::future::pending(),
        ))),
    };
    // Each certificate error counts against the upstream (the default rule)...
    for _ in 0..2 {
        let answer = send(&gateway, "GET").await;
        assert_eq!(answer.proxy_status.as_deref(), Some(CERTIFICATE_ERROR));
    }
    // ...and then its requests are answered at once, without a handshake each.
    let answer = send(&gateway, "GET").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.proxy_status.as_deref(),
        Some("edge-1; error=destination_unavailable")
    );
}

#[test]
fn an_upstream_ca_file_without_a_certificate_is_refused_with_its_name() {
    let uri = "https://127.0.0.1:1".parse().expect("a URI");
    let proxy = Proxy::new(&uri, PROXY_NAME, 1024).expect("a proxy");
    let empty = TempFile::with(b"not a certificate\n");
    let Err(error) = proxy.upstream_ca(&empty.0) else {
        panic!("a file without a certificate is refused");
    };
    let message = error.to_string();
    assert!(message.contains(&*empty.0.to_string_lossy()), "{message}");
    assert!(message.contains("no CERTIFICATE"), "{message}");
}
