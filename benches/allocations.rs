//! Heap allocations per request: the same inner service bare and wrapped in the layer.
//!
//! `cargo bench --bench allocations` prints one row per case. A counting global allocator counts
//! every allocation made while requests are served (request construction is done before the
//! window opens); the difference between `layered` and `bare` is what the layer costs.
//!
//! `ns/req` is the wall time per request on one thread, a rough guide only: criterion benches
//! time things properly; this one counts.
//!
//! No tracing subscriber is installed, as in a service whose spans are filtered out; a subscriber
//! that records spans allocates for them on its own account.
//!
//! Rows marked `+ health` put `UpstreamHealthLayer` (5 consecutive failures) next to the inner
//! service, as a gateway has it: with an upstream it has never seen fail (untracked), with one
//! that failed once and succeeded since (tracked, closed), and with one marked unavailable (every
//! request refused without calling the inner service).
//!
//! With `--features metrics`, rows marked `+ metrics` use a layer that records OpenTelemetry
//! metrics into the SDK (a meter provider whose reader does not collect during the run),
//! each right after the same case without them: the difference is what recording costs.
//!
//! Rows marked `stale` use a layer with a last-good-copy store (an hour's default window). Their
//! requests carry a `Host` and a URI whose bytes are shared, as a request hyper parsed has (its
//! URI and header values are slices of one read buffer): cloning them is a reference count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gateway_errors::body::UploadBody;
use gateway_errors::health::UpstreamHealthLayer;
use gateway_errors::{GatewayErrorLayer, LoopDetection, ProxyName, TimeLimits};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REQUESTS: usize = 10_000;

/// The request body the inner service gets: the client's, as the layer watches it.
type Up = UploadBody<Full<Bytes>>;

fn requests(accept: Option<&'static str>) -> Vec<Request<Full<Bytes>>> {
    (0..REQUESTS)
        .map(|_| {
            // Every HTTP/1.1 request has a Host. A map built by inserting has room for six
            // fields, as does one hyper reuses on a kept-alive connection (see `full_requests`).
            let mut builder = Request::get("http://127.0.0.1/ok")
                .header(http::header::HOST, HeaderValue::from_static("127.0.0.1"));
            if let Some(accept) = accept {
                // Header values parsed by hyper share its read buffer, so the layer's clone of
                // one is a reference-count bump; a static value behaves the same. (A value copied
                // from a `&str` allocates once on its first clone, whoever clones it.)
                builder = builder.header(http::header::ACCEPT, HeaderValue::from_static(accept));
            }
            builder
                .body(Full::new(Bytes::new()))
                .expect("valid request")
        })
        .collect()
}

/// Requests whose header map is exactly full, as hyper sizes the map of the first request it
/// parses on a connection with one, two or three fields (later requests on the connection reuse
/// the map of the response before, which has room). Appending `CDN-Loop` then grows the map.
fn full_requests() -> Vec<Request<Full<Bytes>>> {
    (0..REQUESTS)
        .map(|_| {
            let mut request = Request::get("http://127.0.0.1/ok")
                .body(Full::new(Bytes::new()))
                .expect("valid request");
            let headers = request.headers_mut();
            headers.reserve(3);
            headers.insert(http::header::HOST, HeaderValue::from_static("127.0.0.1"));
            headers.insert(http::header::USER_AGENT, HeaderValue::from_static("curl/8"));
            headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
            assert_eq!(headers.capacity(), headers.len(), "a full map");
            request
        })
        .collect()
}

/// Reads a body to its end, dropping each frame (collecting would allocate a buffer list of its
/// own for every non-empty body and blur the count).
async fn drain<B>(body: B)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        drop(frame.unwrap());
    }
}

/// Serves every request with `service`, consuming each body, and returns allocations and bytes
/// per request inside the window.
async fn measure<S, B>(mut service: S, requests: Vec<Request<Full<Bytes>>>) -> (f64, f64, f64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    // Warm up lazily initialised state (built-in templates, the timer wheel).
    let mut requests = requests;
    let warm: Vec<_> = requests.drain(..100).collect();
    for request in warm {
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        drain(response.into_body()).await;
    }
    let count = requests.len() as f64;
    ALLOCATIONS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    for request in requests {
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        drain(response.into_body()).await;
    }
    let elapsed = started.elapsed();
    COUNTING.store(false, Ordering::SeqCst);
    (
        ALLOCATIONS.load(Ordering::SeqCst) as f64 / count,
        BYTES.load(Ordering::SeqCst) as f64 / count,
        elapsed.as_nanos() as f64 / count,
    )
}

/// gRPC calls: `Content-Type` as a gRPC client sends it, and a deadline in `grpc-timeout`.
fn grpc_requests(content_type: &'static str) -> Vec<Request<Full<Bytes>>> {
    (0..REQUESTS)
        .map(|_| {
            Request::post("http://127.0.0.1/demo.Demo/Ok")
                .header(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type),
                )
                .header("te", HeaderValue::from_static("trailers"))
                .header("grpc-timeout", HeaderValue::from_static("5S"))
                .body(Full::new(Bytes::new()))
                .expect("valid request")
        })
        .collect()
}

/// Requests as hyper hands them over, for the store: origin-form URI and a `Host`, their bytes
/// shared (static here; a slice of hyper's read buffer in a server).
fn shared_requests(method: http::Method) -> Vec<Request<Full<Bytes>>> {
    (0..REQUESTS)
        .map(|_| {
            let mut request = Request::new(Full::new(Bytes::new()));
            *request.method_mut() = method.clone();
            *request.uri_mut() = http::Uri::from_static("/page?id=7");
            request.headers_mut().insert(
                http::header::HOST,
                HeaderValue::from_static("www.example.com"),
            );
            request
        })
        .collect()
}

/// `Date: <now>`, as an origin sends it (a response without one is stored with the time it
/// arrived, which costs the copy one more allocation).
fn date_now() -> HeaderValue {
    HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
        .expect("an HTTP date")
}

/// A successful origin whose response says `cache_control` and carries `body`.
fn cacheable_service(
    cache_control: &'static str,
    body: Bytes,
) -> impl Service<Request<Up>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone {
    let date = date_now();
    tower::service_fn(move |_request: Request<Up>| {
        let mut response = Response::new(Full::new(body.clone()));
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        response
            .headers_mut()
            .insert(http::header::DATE, date.clone());
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

/// An origin that answers its first request (with a page the store keeps), then refuses every
/// connection: every later request is answered from the copy.
fn up_then_refused_service()
-> impl Service<Request<Up>, Response = Response<Full<Bytes>>, Error = io::Error, Future = impl Send>
+ Clone {
    let answered = std::sync::Arc::new(AtomicBool::new(false));
    let body = Bytes::from(vec![b'x'; 4096]);
    tower::service_fn(move |_request: Request<Up>| {
        let first = !answered.swap(true, Ordering::SeqCst);
        let body = body.clone();
        async move {
            if !first {
                return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
            }
            let mut response = Response::new(Full::new(body));
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            response
                .headers_mut()
                .insert(http::header::DATE, date_now());
            Ok(response)
        }
    })
}

fn ok_service()
-> impl Service<Request<Up>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone {
    tower::service_fn(|_request: Request<Up>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
    })
}

/// A successful origin that reads the whole upload first, as a client sending it upstream does.
fn reading_ok_service()
-> impl Service<Request<Up>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone {
    tower::service_fn(|request: Request<Up>| async move {
        drain(request.into_body()).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
    })
}

/// POSTs that carry a 1 KiB body (shared bytes: the body itself allocates nothing).
fn upload_requests() -> Vec<Request<Full<Bytes>>> {
    let body = Bytes::from(vec![b'x'; 1024]);
    (0..REQUESTS)
        .map(|_| {
            Request::post("http://127.0.0.1/orders")
                .header(http::header::HOST, HeaderValue::from_static("127.0.0.1"))
                .body(Full::new(body.clone()))
                .expect("valid request")
        })
        .collect()
}

/// A body that makes its reader wait once before each of its two frames, as a body streamed from
/// a socket does: the layer's read timer is armed for real.
struct Streamed {
    frames: u8,
    waited: bool,
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.frames == 0 {
            return std::task::Poll::Ready(None);
        }
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.waited = false;
        self.frames -= 1;
        let frame = http_body::Frame::data(Bytes::from_static(b"hello"));
        std::task::Poll::Ready(Some(Ok(frame)))
    }
}

fn streamed_service()
-> impl Service<Request<Up>, Response = Response<Streamed>, Error = Infallible, Future = impl Send>
+ Clone {
    tower::service_fn(|_request: Request<Up>| async {
        let body = Streamed {
            frames: 2,
            waited: false,
        };
        Ok::<_, Infallible>(Response::new(body))
    })
}

/// An upstream whose connection is refused. `io::Error::from(kind)` does not allocate, so the
/// error itself costs nothing and what is counted is the layer's work.
fn refused_service()
-> impl Service<Request<Up>, Response = Response<Full<Bytes>>, Error = io::Error, Future = impl Send>
+ Clone {
    tower::service_fn(|_request: Request<Up>| async {
        Err::<Response<Full<Bytes>>, _>(io::Error::from(io::ErrorKind::ConnectionRefused))
    })
}

/// The same refused upstream behind a service whose error type is already boxed (tower's
/// `BoxError` convention, as the example gateway's proxy): the box is the inner service's own.
fn refused_boxed_service()
-> impl Service<Request<Up>, Response = Response<Full<Bytes>>, Error = BoxError, Future = impl Send>
+ Clone {
    tower::service_fn(|_request: Request<Up>| async {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        Err::<Response<Full<Bytes>>, BoxError>(Box::new(refused))
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What http itself allocates for any response that carries a head and one typed extension,
/// whoever builds it: the head is cloned from a prepared one (its index and its entries), the
/// extension needs the map's box, its table and the value's box. The error is not even kept.
fn floor_service()
-> impl Service<Request<Up>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone {
    #[derive(Clone)]
    struct Marker(#[allow(dead_code)] u64);
    let mut head = http::HeaderMap::with_capacity(6);
    for (name, value) in [
        ("content-type", "application/problem+json"),
        ("content-length", "200"),
        ("cache-control", "no-store"),
        ("vary", "accept"),
        ("proxy-status", "edge-1; error=connection_refused"),
    ] {
        head.insert(name, HeaderValue::from_static(value));
    }
    let body = Bytes::from_static(b"{}");
    tower::service_fn(move |_request: Request<Up>| {
        let mut response = Response::new(Full::new(body.clone()));
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        *response.headers_mut() = head.clone();
        response.extensions_mut().insert(Marker(1));
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

/// `service` without the layer: the client's body goes to it unwatched, as the layer would hand
/// it over for a request that has nothing to watch.
fn bare<S>(
    service: S,
) -> impl Service<Request<Full<Bytes>>, Response = S::Response, Error = S::Error, Future = S::Future>
+ Clone
where
    S: Service<Request<Up>> + Clone,
{
    tower::util::MapRequestLayer::new(|request: Request<Full<Bytes>>| {
        request.map(UploadBody::unwatched)
    })
    .layer(service)
}

/// The `--bare` baseline of the error path: an empty 502.
fn bare_errors<S>(
    service: S,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>
where
    S: Service<Request<Up>, Response = Response<Full<Bytes>>> + Clone,
{
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let service = service.clone();
        // The same inner service, without the layer: its body type, unwatched.
        let request = request.map(UploadBody::unwatched);
        async move {
            Ok::<_, Infallible>(service.oneshot(request).await.unwrap_or_else(|_| {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                response
            }))
        }
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let layer = GatewayErrorLayer::new().proxy_name(ProxyName::from_static("edge-1"));
    let limits = TimeLimits::new().upstream_timeout(Duration::from_secs(30));
    let timed = layer.clone().time_limits(limits);
    // Kept alive for the whole run: dropping the provider would shut its instruments down.
    #[cfg(feature = "metrics")]
    let (metered, _provider) = {
        use opentelemetry::metrics::MeterProvider;
        use opentelemetry_sdk::metrics::{
            InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
        };
        // The reader's interval is longer than the run: no export happens while it counts.
        let reader = PeriodicReader::builder(InMemoryMetricExporter::default())
            .with_interval(Duration::from_secs(3600))
            .build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        let metered = layer
            .clone()
            .telemetry(gateway_errors::Telemetry::new().metrics(&provider.meter("gateway-errors")));
        (metered, provider)
    };

    println!("heap allocations per request ({REQUESTS} requests each; no tracing subscriber)");
    println!(
        "{:<46} {:>12} {:>12} {:>10}",
        "case", "allocs/req", "bytes/req", "ns/req"
    );
    let row = |name: &str, (allocs, bytes, nanos): (f64, f64, f64)| {
        println!("{name:<46} {allocs:>12.2} {bytes:>12.0} {nanos:>10.0}");
    };
    runtime.block_on(async {
        row(
            "success: bare",
            measure(bare(ok_service()), requests(None)).await,
        );
        row(
            "success: layered",
            measure(layer.layer(ok_service()), requests(None)).await,
        );
        row(
            "upload 1 KiB: bare",
            measure(bare(reading_ok_service()), upload_requests()).await,
        );
        // The one allocation a request with a body costs: the watch its body and future share.
        row(
            "upload 1 KiB: layered (watched)",
            measure(layer.layer(reading_ok_service()), upload_requests()).await,
        );
        #[cfg(feature = "metrics")]
        row(
            "success: layered + metrics",
            measure(metered.layer(ok_service()), requests(None)).await,
        );
        row(
            "success: layered, loop detection off",
            measure(
                layer
                    .clone()
                    .loop_detection(LoopDetection::off())
                    .layer(ok_service()),
                requests(None),
            )
            .await,
        );
        row(
            "success: bare, request map full",
            measure(bare(ok_service()), full_requests()).await,
        );
        row(
            "success: layered, request map full",
            measure(layer.layer(ok_service()), full_requests()).await,
        );
        row(
            "success: layered, map full, loop detection off",
            measure(
                layer
                    .clone()
                    .loop_detection(LoopDetection::off())
                    .layer(ok_service()),
                full_requests(),
            )
            .await,
        );
        row(
            "success: layered + upstream_timeout",
            measure(timed.layer(ok_service()), requests(None)).await,
        );
        row(
            "streamed success: bare",
            measure(bare(streamed_service()), requests(None)).await,
        );
        row(
            "streamed success: layered, no timers",
            measure(layer.layer(streamed_service()), requests(None)).await,
        );
        row(
            "streamed success: layered + read timeout armed",
            measure(timed.layer(streamed_service()), requests(None)).await,
        );
        row(
            "streamed: + read timeout + response_deadline",
            measure(
                layer
                    .clone()
                    .time_limits(limits.response_deadline(Duration::from_secs(60)))
                    .layer(streamed_service()),
                requests(None),
            )
            .await,
        );
        row(
            "success: layered, browser Accept",
            measure(
                layer.layer(ok_service()),
                requests(Some(
                    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                )),
            )
            .await,
        );
        row(
            "refused: bare (empty 502)",
            measure(bare_errors(refused_service()), requests(None)).await,
        );
        for (name, accept) in [
            ("refused: layered, problem+json", None),
            ("refused: layered, HTML", Some("text/html")),
            ("refused: layered, text", Some("text/plain")),
        ] {
            row(
                name,
                measure(layer.layer(refused_service()), requests(accept)).await,
            );
        }
        // The same head with another content type: what detection and the deadline add.
        row(
            "success: layered, same head, not gRPC",
            measure(layer.layer(ok_service()), grpc_requests("application/json")).await,
        );
        row(
            "success: layered, gRPC call",
            measure(layer.layer(ok_service()), grpc_requests("application/grpc")).await,
        );
        for (name, content_type) in [
            ("refused: layered, same head, not gRPC", "application/json"),
            ("refused: layered, gRPC (trailers-only)", "application/grpc"),
            ("refused: layered, gRPC-Web", "application/grpc-web+proto"),
            (
                "refused: layered, gRPC-Web text",
                "application/grpc-web-text",
            ),
        ] {
            row(
                name,
                measure(layer.layer(refused_service()), grpc_requests(content_type)).await,
            );
        }
        #[cfg(feature = "metrics")]
        row(
            "refused: layered + metrics, problem+json",
            measure(metered.layer(refused_service()), requests(None)).await,
        );
        row(
            "refused: bare, inner error already boxed",
            measure(bare_errors(refused_boxed_service()), requests(None)).await,
        );
        row(
            "refused: layered, inner error already boxed",
            measure(layer.layer(refused_boxed_service()), requests(None)).await,
        );
        row(
            "floor: any response with a head + 1 extension",
            measure(bare(floor_service()), requests(None)).await,
        );

        // The last-good-copy store: what a request that cannot use it costs (nothing), what a
        // stored response costs, and what an answer from a copy costs.
        let stale = layer.clone().serve_stale(
            gateway_errors::stale::Store::new().default_window(Duration::from_secs(3600)),
        );
        let page = Bytes::from(vec![b'x'; 4096]);
        row(
            "stale: POST, bare",
            measure(bare(ok_service()), shared_requests(http::Method::POST)).await,
        );
        row(
            "stale: POST, layered",
            measure(
                layer.layer(ok_service()),
                shared_requests(http::Method::POST),
            )
            .await,
        );
        row(
            "stale: POST, layered + store",
            measure(
                stale.layer(ok_service()),
                shared_requests(http::Method::POST),
            )
            .await,
        );
        let no_store = || cacheable_service("no-store", page.clone());
        row(
            "stale: GET no-store 4 KiB, bare",
            measure(bare(no_store()), shared_requests(http::Method::GET)).await,
        );
        row(
            "stale: GET no-store 4 KiB, layered",
            measure(layer.layer(no_store()), shared_requests(http::Method::GET)).await,
        );
        row(
            "stale: GET no-store 4 KiB, layered + store",
            measure(stale.layer(no_store()), shared_requests(http::Method::GET)).await,
        );
        let stored = || cacheable_service("max-age=60", page.clone());
        row(
            "stale: GET stored 4 KiB, layered",
            measure(layer.layer(stored()), shared_requests(http::Method::GET)).await,
        );
        row(
            "stale: GET stored 4 KiB, layered + store",
            measure(stale.layer(stored()), shared_requests(http::Method::GET)).await,
        );
        row(
            "stale: GET refused, layered (a 502)",
            measure(
                layer.layer(refused_service()),
                shared_requests(http::Method::GET),
            )
            .await,
        );
        row(
            "stale: GET refused, layered + store (a copy)",
            measure(
                stale.layer(up_then_refused_service()),
                shared_requests(http::Method::GET),
            )
            .await,
        );
        // The health layer next to the inner service.
        let health = UpstreamHealthLayer::new();
        row(
            "success: layered + health, untracked upstream",
            measure(layer.layer(health.layer(ok_service())), requests(None)).await,
        );
        // One failure gives the upstream a slot; the successes that follow find it.
        let tracked = UpstreamHealthLayer::new();
        let _ = tracked
            .layer(refused_service())
            .oneshot(requests(None).remove(0).map(UploadBody::unwatched))
            .await;
        row(
            "success: layered + health, tracked upstream",
            measure(layer.layer(tracked.layer(ok_service())), requests(None)).await,
        );
        row(
            "streamed: + read timeout + health (tracked)",
            measure(
                timed.layer(tracked.layer(streamed_service())),
                requests(None),
            )
            .await,
        );
        // Marked unavailable by the warm-up's first five requests; refused from then on.
        for (name, accept) in [
            ("refused: + health, unavailable, problem+json", None),
            ("refused: + health, unavailable, HTML", Some("text/html")),
        ] {
            let open = UpstreamHealthLayer::new().open_time(Duration::from_secs(3600));
            row(
                name,
                measure(layer.layer(open.layer(refused_service())), requests(accept)).await,
            );
        }
        let open = UpstreamHealthLayer::new().open_time(Duration::from_secs(3600));
        row(
            "refused: + health, unavailable, gRPC",
            measure(
                layer.layer(open.layer(refused_service())),
                grpc_requests("application/grpc"),
            )
            .await,
        );
    });
}
