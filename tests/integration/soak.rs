//! Fault soak: 64 concurrent clients drive the example gateway (the proxy and server loop of
//! `examples/gateway.rs`, from `examples/support/proxy.rs`) while the demo upstream rotates through
//! each of its faults and healthy responses with bodies up to 2 MiB. Every response is
//! checked against what that route must give:
//!
//! - a generated error: its status, its `Proxy-Status` token, a body in the negotiated format that
//!   says the same, and no upstream address in it;
//! - an origin response: status, headers and body byte for byte (hashed), untouched;
//! - a body the origin cut short, or stalled past the read timeout: an error for the client, never
//!   a complete short body;
//! - heads dripped under and over the timeout, 103 Early Hints before the answer or before
//!   silence, a 101 nobody asked for, and a 101 that refuses the offered upgrade;
//! - every request within the upstream timeout plus a margin, or it counts as hung.
//!
//! It also counts panics anywhere in the process, and compares resident memory after the run
//! with memory after a warm-up. Both readings are of the whole process, so the soak runs in a
//! process of its own: `fault_soak` starts this test binary again for `fault_soak_alone` alone.
//!
//! `SOAK_SECONDS` sets the duration (default 5, for CI); the long run is
//! `SOAK_SECONDS=120 cargo test --release --test integration soak -- --nocapture`.
//!
//! Faults the example's own client cannot produce on demand (a resolver that fails, a connect
//! that never completes) are served by a gateway built the same way around a client with a custom
//! resolver or connector, as `tests/integration/upstream_faults.rs` does. Loopback only.

use crate::proxy;
use crate::support;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_errors::TimeLimits;
use gateway_errors::{GatewayErrorLayer, ProxyName};
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tower::timeout::Timeout;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, service_fn};

use crate::support::demo_upstream::{
    self, OK_BODY, ORIGIN_500_BODY, ORIGIN_502_BODY, ORIGIN_503_BODY, large_body,
};

/// Concurrent clients.
const CLIENTS: usize = 64;
/// The gateway's upstream timeout: `/slow` is answered 504 after this.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(500);
/// The upstream timeout of [`Target::Patient`].
const PATIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long past the upstream timeout a request may take before it counts as hung. Generous,
/// because 64 clients share two cores with the gateway and the upstream in a debug build; a hang
/// is forever, and the longest wait seen is printed.
const HANG_MARGIN: Duration = Duration::from_secs(5);
/// Resident memory may grow by 10% of its warmed-up size, or by this much if that is more: with
/// the allocator pinned (see [`allocator`]) two readings at rest differ by a few hundred KiB from
/// run to run (thread-local caches, a page more or less of a heap), which on a process of about
/// 11 MiB would be most of a 10% margin.
const RSS_FLOOR: u64 = 1024 * 1024;
/// `/large` body sizes, cycled: empty, odd sizes around buffer boundaries, up to 2 MiB.
const LARGE_SIZES: [usize; 10] = [
    0,
    1,
    63,
    4_096,
    16_385,
    65_537,
    300_001,
    1_048_576,
    1_500_003,
    2 * 1024 * 1024,
];

// ---------------------------------------------------------------------------------------------
// What each route must give

#[derive(Clone, Copy)]
enum Target {
    /// The example gateway in front of the demo upstream.
    Demo,
    /// The same with a longer upstream timeout ([`PATIENT_TIMEOUT`]), for a slow head that must
    /// arrive within it even when 64 clients keep both cores busy.
    Patient,
    /// The example gateway in front of a closed port.
    Refused,
    /// A gateway whose resolver fails.
    Dns,
    /// A gateway whose connects never complete.
    ConnectStall,
}

#[derive(Clone, Copy)]
enum Expect {
    /// The origin's response, passed through.
    Origin(OriginCheck),
    /// A generated error of this status and `Proxy-Status` token.
    Generated(u16, &'static str),
    /// The origin's head, then a body that must fail.
    Cut,
}

#[derive(Clone, Copy)]
enum OriginCheck {
    Ok,
    Large,
    Echo,
    Origin500,
    Origin503,
    Origin502,
}

#[derive(Clone)]
struct Route {
    name: &'static str,
    method: Method,
    path: &'static str,
    target: Target,
    expect: Expect,
    /// Extra request headers (an upgrade request's).
    headers: &'static [(&'static str, &'static str)],
}

fn routes() -> Vec<Route> {
    use Expect::{Cut, Generated, Origin};
    let route = |name, method, path, target, expect| Route {
        name,
        method,
        path,
        target,
        expect,
        headers: &[],
    };
    vec![
        route(
            "/ok",
            Method::GET,
            "/ok",
            Target::Demo,
            Origin(OriginCheck::Ok),
        ),
        route(
            "/large?bytes=N",
            Method::GET,
            "/large",
            Target::Demo,
            Origin(OriginCheck::Large),
        ),
        route(
            "POST /echo",
            Method::POST,
            "/echo",
            Target::Demo,
            Origin(OriginCheck::Echo),
        ),
        route(
            "/slow",
            Method::GET,
            "/slow",
            Target::Demo,
            Generated(504, "http_response_timeout"),
        ),
        route(
            "/garbage",
            Method::GET,
            "/garbage",
            Target::Demo,
            Generated(502, "http_protocol_error"),
        ),
        route(
            "/close",
            Method::GET,
            "/close",
            Target::Demo,
            Generated(502, "connection_terminated"),
        ),
        route(
            "HEAD /close",
            Method::HEAD,
            "/close",
            Target::Demo,
            Generated(502, "connection_terminated"),
        ),
        route(
            "/reset",
            Method::GET,
            "/reset",
            Target::Demo,
            Generated(502, "connection_terminated"),
        ),
        route("/cut", Method::GET, "/cut", Target::Demo, Cut),
        route(
            "/huge-head",
            Method::GET,
            "/huge-head",
            Target::Demo,
            Generated(502, "http_response_header_section_size"),
        ),
        route(
            "/origin-500",
            Method::GET,
            "/origin-500",
            Target::Demo,
            Origin(OriginCheck::Origin500),
        ),
        route(
            "/origin-503",
            Method::GET,
            "/origin-503",
            Target::Demo,
            Origin(OriginCheck::Origin503),
        ),
        route(
            "/origin-502",
            Method::GET,
            "/origin-502",
            Target::Demo,
            Origin(OriginCheck::Origin502),
        ),
        route("/stall-body", Method::GET, "/stall-body", Target::Demo, Cut),
        route(
            "/stall-chunked",
            Method::GET,
            "/stall-chunked",
            Target::Demo,
            Cut,
        ),
        route(
            "/drip?ms=300",
            Method::GET,
            "/drip?ms=300",
            Target::Patient,
            Origin(OriginCheck::Ok),
        ),
        route(
            "/drip?ms=2000",
            Method::GET,
            "/drip?ms=2000",
            Target::Demo,
            Generated(504, "http_response_timeout"),
        ),
        route(
            "/early-hints",
            Method::GET,
            "/early-hints",
            Target::Demo,
            Origin(OriginCheck::Ok),
        ),
        route(
            "/hints-then-stall",
            Method::GET,
            "/hints-then-stall",
            Target::Demo,
            Generated(504, "http_response_timeout"),
        ),
        route(
            "/switch",
            Method::GET,
            "/switch",
            Target::Demo,
            Generated(502, "http_protocol_error"),
        ),
        Route {
            headers: &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            ..route(
                "upgrade refused",
                Method::GET,
                "/switch",
                Target::Demo,
                Generated(502, "http_upgrade_failed"),
            )
        },
        route(
            "closed port",
            Method::GET,
            "/",
            Target::Refused,
            Generated(502, "connection_refused"),
        ),
        route(
            "failing resolver",
            Method::POST,
            "/",
            Target::Dns,
            Generated(502, "dns_error"),
        ),
        route(
            "stalled connect",
            Method::GET,
            "/",
            Target::ConnectStall,
            Generated(504, "connection_timeout"),
        ),
    ]
}

const ACCEPTS: [&str; 3] = ["application/json", "text/html", "text/plain"];

/// FNV-1a, 64 bits: enough to tell a body from a cut, shifted or corrupted one.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// The gateways

/// Aborts a spawned task when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn layer() -> GatewayErrorLayer {
    layer_with_timeout(UPSTREAM_TIMEOUT)
}

fn layer_with_timeout(timeout: Duration) -> GatewayErrorLayer {
    // As examples/gateway.rs configures it (the read timeout follows the upstream timeout).
    GatewayErrorLayer::new()
        .proxy_name(ProxyName::from_static("edge-1"))
        .time_limits(TimeLimits::new().upstream_timeout(timeout))
}

/// The example's gateway (its proxy, its server loop) in front of `upstream`.
async fn example_gateway(upstream: SocketAddr, timeout: Duration) -> (SocketAddr, Task) {
    let uri: Uri = format!("http://{upstream}").parse().expect("a URI");
    let proxy = proxy::Proxy::new(&uri, "edge-1", 10 * 1024 * 1024).expect("a proxy");
    let service = ServiceBuilder::new()
        .layer(layer_with_timeout(timeout))
        .service(proxy);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(proxy::serve(
        listener,
        service,
        proxy::ServeOptions::default(),
        std::future::pending(),
    ));
    (addr, Task(task))
}

/// A gateway whose client resolves every name with an error.
async fn dns_gateway() -> crate::support::RunningServer {
    let resolver = service_fn(|_name: Name| async {
        Err::<std::vec::IntoIter<SocketAddr>, _>(io::Error::new(
            io::ErrorKind::NotFound,
            "no such host",
        ))
    });
    let connector = HttpConnector::new_with_resolver(resolver);
    let gateway = support::gateway(layer(), support::client_with(connector), "upstream.invalid");
    support::serve(gateway).await
}

/// A gateway whose client's connects never complete (cut off after 200 ms).
async fn connect_stall_gateway() -> crate::support::RunningServer {
    let stalled =
        service_fn(|_uri: Uri| std::future::pending::<Result<TokioIo<TcpStream>, io::Error>>());
    let connector = BoxCloneSyncService::new(Timeout::new(stalled, Duration::from_millis(200)));
    let gateway = support::gateway(layer(), support::client_with(connector), "upstream.invalid");
    support::serve(gateway).await
}

// ---------------------------------------------------------------------------------------------
// One request, checked

struct Tally {
    /// Per route: requests, answered as expected, wrong, hung, longest wait.
    routes: Vec<Counts>,
    /// The first few wrong answers, for the report.
    wrong: Vec<String>,
}

/// How a right answer came.
enum Verdict {
    /// As the route's expected outcome says.
    Expected,
    /// The other correct form of it (for `/cut`: no response at all, the connection closed).
    Alternate,
}

#[derive(Default, Clone)]
struct Counts {
    requests: u64,
    right: u64,
    /// Right answers in the route's other correct form.
    alternate: u64,
    wrong: u64,
    hung: u64,
    longest: Duration,
}

struct Setup {
    routes: Vec<Route>,
    addrs: BTreeMap<&'static str, SocketAddr>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Hash of each `/large` body, by size.
    large_hashes: Vec<u64>,
    /// The upstream's port: no generated body may name it.
    upstream_port: String,
    next: AtomicUsize,
    tally: Mutex<Tally>,
}

impl Setup {
    fn addr(&self, target: Target) -> SocketAddr {
        let key = match target {
            Target::Demo => "demo",
            Target::Patient => "patient",
            Target::Refused => "refused",
            Target::Dns => "dns",
            Target::ConnectStall => "stall",
        };
        self.addrs[key]
    }
}

/// Sends request number `n` (which picks route, format and size) and checks the answer.
async fn one_request(setup: &Setup, n: usize) -> Result<Verdict, String> {
    let routes = setup.routes.len();
    let index = n % routes;
    let round = n / routes;
    let route = &setup.routes[index];
    let accept = ACCEPTS[round % ACCEPTS.len()];
    let size = LARGE_SIZES[round % LARGE_SIZES.len()];

    let path = match route.expect {
        Expect::Origin(OriginCheck::Large) => format!("{}?bytes={size}", route.path),
        _ => route.path.to_owned(),
    };
    // The echo body differs per request, so a mixed-up response cannot pass.
    let sent: Vec<u8> = match route.expect {
        Expect::Origin(OriginCheck::Echo) => format!("request {n}: ")
            .into_bytes()
            .into_iter()
            .chain(large_body(size % (64 * 1024)))
            .collect(),
        _ if route.method == Method::POST => b"order=42".to_vec(),
        _ => Vec::new(),
    };
    let uri = format!("http://{}{path}", setup.addr(route.target));
    let mut request = Request::builder()
        .method(route.method.clone())
        .uri(uri)
        .header(header::ACCEPT, accept);
    for (name, value) in route.headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(sent.clone())))
        .expect("a valid request");

    let response = match setup.client.request(request).await {
        Ok(response) => response,
        // The origin's FIN can come with the last bytes it sends: the gateway's body then fails
        // before hyper has flushed the head, and the connection closes with nothing written. The
        // client sees an error, which is what a cut body must be for it.
        Err(e) if matches!(route.expect, Expect::Cut) && !e.is_connect() => {
            return Ok(Verdict::Alternate);
        }
        Err(e) => return Err(format!("the gateway did not answer: {e}")),
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes());
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let status = parts.status.as_u16();

    let verdict = match route.expect {
        Expect::Cut => {
            return match body {
                Err(_) if status == 200 => Ok(Verdict::Expected),
                Err(e) => Err(format!("status {status}, body error {e}")),
                Ok(bytes) if status == 200 => Err(format!(
                    "a body cut short or stalled arrived as complete ({} bytes)",
                    bytes.len()
                )),
                // No origin head at all (a 504 when the machine is too busy to read it in time):
                // wrong for this route, but not a cut body passed off as whole.
                Ok(_) => Err(format!("status {status} instead of the origin's head")),
            };
        }
        Expect::Origin(check) => {
            let body = match body {
                Ok(body) => body,
                Err(e) => return Err(format!("origin body failed: {e}")),
            };
            if header("proxy-status").is_some() && !matches!(check, OriginCheck::Origin502) {
                return Err(format!(
                    "an origin response got a Proxy-Status: {:?} ({status})",
                    header("proxy-status")
                ));
            }
            let expected: (u16, &[u8]) = match check {
                OriginCheck::Ok => (200, OK_BODY.as_bytes()),
                OriginCheck::Origin500 => (500, ORIGIN_500_BODY.as_bytes()),
                OriginCheck::Origin503 => (503, ORIGIN_503_BODY.as_bytes()),
                OriginCheck::Origin502 => (502, ORIGIN_502_BODY.as_bytes()),
                OriginCheck::Large | OriginCheck::Echo => (200, &[]),
            };
            let size_index = round % LARGE_SIZES.len();
            if status != expected.0 {
                Err(format!("status {status}, expected {}", expected.0))
            } else {
                match check {
                    OriginCheck::Large => (body.len() == size
                        && fnv1a(&body) == setup.large_hashes[size_index])
                        .then_some(())
                        .ok_or_else(|| {
                            format!("/large?bytes={size}: {} bytes, wrong hash", body.len())
                        }),
                    OriginCheck::Echo => {
                        let head = "POST /echo\n";
                        (body.starts_with(head.as_bytes()) && body.ends_with(&sent))
                            .then_some(())
                            .ok_or_else(|| format!("echo of {} bytes came back wrong", sent.len()))
                    }
                    OriginCheck::Origin503 if header("retry-after").as_deref() != Some("7") => {
                        Err("the origin's Retry-After was lost".into())
                    }
                    OriginCheck::Origin500 if header("x-origin").as_deref() != Some("yes") => {
                        Err("the origin's x-origin header was lost".into())
                    }
                    OriginCheck::Origin502
                        if header("proxy-status").as_deref()
                            != Some("origin-lb; error=connection_refused") =>
                    {
                        Err(format!(
                            "the origin's Proxy-Status changed: {:?}",
                            header("proxy-status")
                        ))
                    }
                    _ => (fnv1a(&body) == fnv1a(expected.1))
                        .then_some(())
                        .ok_or_else(|| format!("origin body changed: {body:?}")),
                }
            }
        }
        Expect::Generated(want_status, token) => {
            let body = match body {
                Ok(body) => body,
                Err(e) => return Err(format!("generated body failed: {e}")),
            };
            check_generated(
                setup,
                route,
                accept,
                status,
                &parts.headers,
                &body,
                want_status,
                token,
            )
        }
    };
    verdict.map(|()| Verdict::Expected)
}

/// A generated error: status, `Proxy-Status`, framing and a body in the asked format that says
/// the same, without the upstream's address.
#[allow(clippy::too_many_arguments)]
fn check_generated(
    setup: &Setup,
    route: &Route,
    accept: &str,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
    want_status: u16,
    token: &str,
) -> Result<(), String> {
    if status != want_status {
        return Err(format!("status {status}, expected {want_status}"));
    }
    let proxy_status = headers.get("proxy-status").map(|v| v.as_bytes());
    let want = format!("edge-1; error={token}");
    if proxy_status != Some(want.as_bytes()) {
        return Err(format!("Proxy-Status {proxy_status:?}, expected {want:?}"));
    }
    if headers.get(header::CACHE_CONTROL).map(|v| v.as_bytes()) != Some(b"no-store") {
        return Err("no Cache-Control: no-store".into());
    }
    let declared: Option<usize> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if route.method == Method::HEAD {
        return match (declared, body.is_empty()) {
            (Some(len), true) if len > 0 => Ok(()),
            _ => Err(format!(
                "HEAD: Content-Length {declared:?}, {} body bytes",
                body.len()
            )),
        };
    }
    if declared != Some(body.len()) {
        return Err(format!(
            "Content-Length {declared:?} for {} bytes",
            body.len()
        ));
    }
    let text = std::str::from_utf8(body).map_err(|_| "a body that is not UTF-8".to_owned())?;
    let title = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let says_it = match accept {
        "application/json" => {
            let json: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))?;
            content_type == "application/problem+json"
                && json["status"] == want_status
                && json["error_type"] == token
                && json["title"] == title
        }
        "text/html" => {
            content_type == "text/html; charset=utf-8"
                && text.contains(&format!("<title>{status} {title}</title>"))
                && text.contains(token)
        }
        _ => {
            content_type == "text/plain; charset=utf-8"
                && text.starts_with(&format!("{status} {title}\n"))
                && text.contains(&format!("Error type: {token}\n"))
        }
    };
    if !says_it {
        return Err(format!(
            "{accept}: the body does not say {status} {token}: {text}"
        ));
    }
    if text.contains("127.0.0.1") || text.contains(&format!(":{}", setup.upstream_port)) {
        return Err(format!("the body names the upstream: {text}"));
    }
    Ok(())
}

/// Runs `CLIENTS` clients until `deadline`, each sending one request after another.
async fn drive(setup: Arc<Setup>, deadline: Instant) {
    let bound = UPSTREAM_TIMEOUT + HANG_MARGIN;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let setup = setup.clone();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let n = setup.next.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    let outcome = tokio::time::timeout(bound, one_request(&setup, n)).await;
                    let waited = started.elapsed();
                    let index = n % setup.routes.len();
                    let mut tally = setup.tally.lock().unwrap();
                    let counts = &mut tally.routes[index];
                    counts.requests += 1;
                    counts.longest = counts.longest.max(waited);
                    match outcome {
                        Ok(Ok(Verdict::Expected)) => counts.right += 1,
                        Ok(Ok(Verdict::Alternate)) => {
                            counts.right += 1;
                            counts.alternate += 1;
                        }
                        Ok(Err(why)) => {
                            counts.wrong += 1;
                            let name = setup.routes[index].name;
                            if tally.wrong.len() < 10 {
                                tally.wrong.push(format!("{name}: {why}"));
                            }
                        }
                        Err(_) => counts.hung += 1,
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("a client task panicked");
    }
}

/// glibc's allocator, told to behave the same way in both phases: every allocation of 128 KiB or
/// more gets its own mapping, returned to the system when freed. Left alone, glibc raises that
/// threshold after the first large buffer is freed, and from then on carves the 1-2 MiB bodies of
/// this soak out of the heap between small long-lived allocations, where their pages stay
/// resident in a pattern that changes from run to run. Neither setting can hide a leak: leaked
/// memory is in use, and stays resident.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod allocator {
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
        fn malloc_trim(pad: usize) -> i32;
    }
    /// glibc's `M_MMAP_THRESHOLD`.
    const M_MMAP_THRESHOLD: i32 = -3;

    pub(super) fn pin_mmap_threshold() {
        // SAFETY: mallopt takes plain integers and may be called at any time.
        let set = unsafe { mallopt(M_MMAP_THRESHOLD, 128 * 1024) };
        assert_eq!(set, 1, "mallopt(M_MMAP_THRESHOLD) is accepted");
    }

    /// Gives the free pages the allocator keeps for reuse back to the system, so that a reading
    /// counts what the process uses.
    pub(super) fn release_free_pages() {
        // SAFETY: malloc_trim takes no pointers and may be called at any time, from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod allocator {
    pub(super) fn pin_mmap_threshold() {}
    pub(super) fn release_free_pages() {}
}

/// Ends a phase: drops its client, with the connections it pooled, gives the connection tasks on
/// both sides a moment to end, and returns what the phase counted.
async fn finish(setup: Arc<Setup>) -> Tally {
    let setup = Arc::into_inner(setup).expect("the clients are done");
    let tally = setup.tally.into_inner().expect("not poisoned");
    drop(setup.client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    tally
}

/// Resident memory of this process, from /proc (Linux).
fn resident_bytes() -> u64 {
    allocator::release_free_pages();
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The soak, in a process of its own: the other tests of this binary, running beside it, would
/// add their memory and their panics to its readings.
#[test]
fn fault_soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // Files rather than pipes: a pipe that nobody reads until the end could fill and stall it.
    let out_path =
        std::env::temp_dir().join(format!("gateway-errors-soak-{}.out", std::process::id()));
    let err_path = out_path.with_extension("err");
    let create =
        |path: &std::path::Path| std::fs::File::create(path).expect("a file for the soak's output");
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "soak::fault_soak_alone",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .stdout(create(&out_path))
        .stderr(create(&err_path))
        .spawn()
        .expect("the test binary starts again");
    // Bounded like every test: the soak itself, its warm-up and its gateways' start, and a margin.
    let limit = Duration::from_secs(seconds + (seconds / 2).clamp(2, 10) + 60);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the soak process") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the soak still runs after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = (
        std::fs::remove_file(&out_path),
        std::fs::remove_file(&err_path),
    );
    // Printed through the harness, so that `--nocapture` shows the soak's table.
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(status.success(), "the soak failed: {status}");
    assert!(stdout.contains("1 passed"), "the soak did not run");
}

#[ignore = "run by `fault_soak`, in a process of its own"]
#[tokio::test(flavor = "multi_thread")]
async fn fault_soak_alone() {
    count_panics();
    allocator::pin_mmap_threshold();
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let warm_up = Duration::from_secs((seconds / 2).clamp(2, 10));

    let upstream = demo_upstream::spawn().await.expect("the demo upstream");
    let (demo, _demo_task) = example_gateway(upstream.addr, UPSTREAM_TIMEOUT).await;
    let (patient, _patient_task) = example_gateway(upstream.addr, PATIENT_TIMEOUT).await;
    let dns = dns_gateway().await;
    let stall = connect_stall_gateway().await;
    // Last, so that no listener made after it can take the port back.
    let (refused, _refused_task) =
        example_gateway(demo_upstream::closed_port(), UPSTREAM_TIMEOUT).await;

    let addrs = BTreeMap::from([
        ("demo", demo),
        ("patient", patient),
        ("refused", refused),
        ("dns", dns.addr),
        ("stall", stall.addr),
    ]);
    let large_hashes: Vec<u64> = LARGE_SIZES.iter().map(|&n| fnv1a(&large_body(n))).collect();
    // Each phase has its own client, so that its pooled connections (and the gateway's side of
    // them) are gone when memory is read: both readings are taken at rest.
    let phase = || {
        let routes = routes();
        Arc::new(Setup {
            addrs: addrs.clone(),
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(CLIENTS)
                .build_http(),
            large_hashes: large_hashes.clone(),
            upstream_port: upstream.addr.port().to_string(),
            next: AtomicUsize::new(0),
            tally: Mutex::new(Tally {
                routes: vec![Counts::default(); routes.len()],
                wrong: Vec::new(),
            }),
            routes,
        })
    };

    // Warm up: buffers, caches and allocator arenas reach their working size first.
    let warm_setup = phase();
    drive(warm_setup.clone(), Instant::now() + warm_up).await;
    let warm = finish(warm_setup).await;
    let rss_before = resident_bytes();

    let setup = phase();
    let routes = setup.routes.clone();
    let started = Instant::now();
    drive(setup.clone(), started + Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed();
    let tally = finish(setup).await;
    let rss_after = resident_bytes();
    let total = tally.routes.iter().fold(Counts::default(), |mut sum, c| {
        sum.requests += c.requests;
        sum.right += c.right;
        sum.wrong += c.wrong;
        sum.hung += c.hung;
        sum.longest = sum.longest.max(c.longest);
        sum
    });
    let panics = PANICS.load(Ordering::SeqCst);

    println!();
    println!(
        "fault soak: {} s, {CLIENTS} clients, upstream timeout {} ms, /large up to 2 MiB",
        elapsed.as_secs(),
        UPSTREAM_TIMEOUT.as_millis()
    );
    println!(
        "{:<18} {:<44} {:>9} {:>8} {:>6} {:>5} {:>9}",
        "route", "expected outcome", "requests", "as said", "wrong", "hung", "longest"
    );
    for (route, counts) in routes.iter().zip(&tally.routes) {
        let outcome = match route.expect {
            Expect::Origin(_) => "origin response, byte-exact".to_owned(),
            Expect::Generated(status, token) => format!("{status} {token}"),
            Expect::Cut => "200 head, then a body error".to_owned(),
        };
        println!(
            "{:<18} {:<44} {:>9} {:>8} {:>6} {:>5} {:>7}ms",
            route.name,
            outcome,
            counts.requests,
            counts.right - counts.alternate,
            counts.wrong,
            counts.hung,
            counts.longest.as_millis()
        );
        if matches!(route.expect, Expect::Cut) {
            println!(
                "{:<18} {:<44} {:>9} {:>8}",
                "", "or: no response, connection closed", "", counts.alternate
            );
        }
    }
    println!(
        "{:<18} {:<44} {:>9} {:>8} {:>6} {:>5} {:>7}ms",
        "total",
        format!(
            "{:.0} requests/s",
            total.requests as f64 / elapsed.as_secs_f64()
        ),
        total.requests,
        total.right,
        total.wrong,
        total.hung,
        total.longest.as_millis()
    );
    let growth = rss_after as f64 / rss_before as f64 - 1.0;
    println!(
        "resident memory at rest: {:.1} MiB after a {} s warm-up ({} requests), {:.1} MiB after \
         the run ({:+.1} MiB, {:+.1}%; allowed: +{:.1} MiB)",
        mib(rss_before),
        warm_up.as_secs(),
        warm.routes.iter().map(|c| c.requests).sum::<u64>(),
        mib(rss_after),
        mib(rss_after) - mib(rss_before),
        growth * 100.0,
        mib((rss_before / 10).max(RSS_FLOOR))
    );
    let by_outcome = |pick: fn(&Expect) -> bool| -> u64 {
        routes
            .iter()
            .zip(&tally.routes)
            .filter(|(route, _)| pick(&route.expect))
            .map(|(_, counts)| counts.right)
            .sum()
    };
    println!(
        "by outcome: {} origin responses byte-exact, {} generated errors as their fault says, \
         {} cut bodies seen by the client as errors; wrong {}, hung {}",
        by_outcome(|e| matches!(e, Expect::Origin(_))),
        by_outcome(|e| matches!(e, Expect::Generated(..))),
        by_outcome(|e| matches!(e, Expect::Cut)),
        total.wrong,
        total.hung
    );
    println!("panics: {panics}");
    for wrong in warm.wrong.iter().chain(&tally.wrong) {
        println!("wrong: {wrong}");
    }
    for (route, counts) in routes.iter().zip(&warm.routes) {
        assert_eq!(
            counts.wrong + counts.hung,
            0,
            "{}: wrong or hung during the warm-up",
            route.name
        );
    }

    assert_eq!(total.wrong, 0, "wrong answers: {:?}", tally.wrong);
    assert_eq!(total.hung, 0, "hung requests");
    assert_eq!(panics, 0, "panics during the soak");
    for (route, counts) in routes.iter().zip(&tally.routes) {
        assert!(counts.requests > 0, "{} was never requested", route.name);
    }
    let allowed = (rss_before / 10).max(RSS_FLOOR);
    assert!(
        rss_after <= rss_before + allowed,
        "resident memory grew from {:.1} MiB to {:.1} MiB",
        mib(rss_before),
        mib(rss_after)
    );
    drop(upstream);
}
