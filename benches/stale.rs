//! What the last-good-copy store costs: a request it cannot use, a response it stores, and an
//! answer from a copy, each next to the same request through the layer without a store.
//!
//! `cargo bench --bench stale`. One request per iteration, through the layer's service on a
//! current-thread runtime, its body read to the end (which is when a copy is stored). The inner
//! service answers at once, so what is timed is the layer's own work. BENCHMARKS.md reads the
//! cost of storing a response, and the latency of a stale answer, off these numbers.

use std::convert::Infallible;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use gateway_errors::body::UploadBody;
use gateway_errors::stale::Store;
use gateway_errors::{GatewayErrorLayer, ProxyName};
use http::header::{CACHE_CONTROL, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

/// The request body the inner service gets: the client's, as the layer watches it.
type Up = UploadBody<Full<Bytes>>;

/// A GET as hyper hands it over: an origin-form URI and a `Host`, their bytes shared.
fn get() -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = Uri::from_static("/articles/42?page=2");
    request
        .headers_mut()
        .insert(HOST, HeaderValue::from_static("www.example.com"));
    request
}

/// `Date: <now>`, as an origin sends it.
fn date_now() -> HeaderValue {
    HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
        .expect("an HTTP date")
}

/// An origin that answers every request with `body` and `cache_control`, with a declared length
/// and a `Date`.
fn origin(
    cache_control: &'static str,
    body: Bytes,
) -> impl Service<Request<Up>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    let date = date_now();
    tower::service_fn(move |_request: Request<Up>| {
        let mut response = Response::new(Full::new(body.clone()));
        let headers = response.headers_mut();
        headers.insert(http::header::DATE, date.clone());
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
        headers.insert("content-type", HeaderValue::from_static("text/html"));
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

/// An origin that answers its first request with a `body` the store keeps, then refuses every
/// connection.
fn up_then_refused(
    body: Bytes,
) -> impl Service<Request<Up>, Response = Response<Full<Bytes>>, Error = io::Error> + Clone {
    let answered = Arc::new(AtomicBool::new(false));
    tower::service_fn(move |_request: Request<Up>| {
        let first = !answered.swap(true, Ordering::SeqCst);
        let body = body.clone();
        async move {
            if !first {
                return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
            }
            let mut response = Response::new(Full::new(body));
            let headers = response.headers_mut();
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
            headers.insert(http::header::DATE, date_now());
            Ok(response)
        }
    })
}

fn refused()
-> impl Service<Request<Up>, Response = Response<Full<Bytes>>, Error = io::Error> + Clone {
    tower::service_fn(|_request: Request<Up>| async {
        Err::<Response<Full<Bytes>>, _>(io::Error::from(io::ErrorKind::ConnectionRefused))
    })
}

/// One request through `service`, its body read to the end; the status it got.
async fn once<S, B>(service: &S) -> StatusCode
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(get()).await.unwrap();
    let status = response.status();
    let mut body = std::pin::pin!(response.into_body());
    while let Some(frame) = body.frame().await {
        drop(frame.unwrap());
    }
    status
}

/// One case: a name, and one request through its service.
type Case = (String, Box<dyn Fn() -> StatusCode>);

/// Every case, on `runtime`. Each has already sent its first request (a store that answers
/// from a copy has its copy; a store that stores has stored).
fn cases(runtime: &Rc<tokio::runtime::Runtime>) -> Vec<Case> {
    fn case<S, B>(runtime: &Rc<tokio::runtime::Runtime>, name: String, service: S) -> Case
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>
            + Clone
            + 'static,
        B: http_body::Body + 'static,
        B::Error: std::fmt::Debug,
    {
        let runtime = runtime.clone();
        runtime.block_on(once(&service));
        (name, Box::new(move || runtime.block_on(once(&service))))
    }
    let layer = GatewayErrorLayer::new().proxy_name(ProxyName::from_static("edge-1"));
    let store = || Store::new().default_window(Duration::from_secs(3600));
    let with_store = |store: &Store| layer.clone().serve_stale(store.clone());
    let page = |bytes: usize| Bytes::from(vec![b'x'; bytes]);

    let mut cases = Vec::new();
    for (size, name) in [(4 * 1024, "4 KiB"), (64 * 1024, "64 KiB")] {
        let cacheable = origin("max-age=60", page(size));
        cases.push(case(
            runtime,
            format!("GET {name}, layer without a store"),
            layer.layer(cacheable.clone()),
        ));
        let kept = store();
        cases.push(case(
            runtime,
            format!("GET {name}, stored (replacing the copy)"),
            with_store(&kept).layer(cacheable),
        ));
        assert_eq!(kept.len(), 1, "the response is stored");
        cases.push(case(
            runtime,
            format!("GET {name} no-store, layer with a store"),
            with_store(&store()).layer(origin("no-store", page(size))),
        ));
    }
    cases.push(case(
        runtime,
        "GET refused, generated 502".to_owned(),
        layer.layer(refused()),
    ));
    for (size, name) in [(4 * 1024, "4 KiB"), (64 * 1024, "64 KiB")] {
        cases.push(case(
            runtime,
            format!("GET refused, answered from a {name} copy"),
            with_store(&store()).layer(up_then_refused(page(size))),
        ));
    }
    for (name, run) in &cases {
        let expected = if name.contains("502") {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::OK
        };
        assert_eq!(run(), expected, "{name}");
    }
    cases
}

fn stale(c: &mut Criterion) {
    let runtime = Rc::new(runtime());
    let mut group = c.benchmark_group("stale");
    for (name, run) in cases(&runtime) {
        group.bench_function(name, |b| b.iter(&run));
    }
    group.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

criterion_group!(benches, stale);

/// `--count N --case NAME`: sends N requests of one case and nothing else, for an instruction
/// counter (scripts/stale_instructions.sh runs it under callgrind at two counts and takes the
/// difference). Otherwise, criterion.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    if let (Some(count), Some(wanted)) = (value("--count"), value("--case")) {
        let count: usize = count.parse().expect("--count N");
        let runtime = Rc::new(runtime());
        let cases = cases(&runtime);
        let (_, run) = cases
            .iter()
            .find(|(name, _)| name == wanted)
            .unwrap_or_else(|| panic!("no case {wanted:?}"));
        for _ in 0..count {
            std::hint::black_box(run());
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
