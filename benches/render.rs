//! Negotiation and rendering, next to a plain `serde_json::to_vec` of the same fields.
//!
//! `cargo bench --bench render`. The ratios in BENCHMARKS.md divide each case's time by the
//! `serde_json::to_vec` baseline's.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway_errors::ProxyErrorKind;
use gateway_errors::render::{
    DEFAULT_HTML, DEFAULT_PROBLEM_JSON, ErrorView, Format, Template, negotiate,
};
use http::HeaderValue;

/// Chrome's `Accept` for a page load.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";

#[derive(serde::Serialize)]
struct Problem<'a> {
    r#type: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    error_type: &'a str,
    retryable: bool,
    request_id: &'a str,
}

fn view() -> ErrorView<'static> {
    ErrorView::new(Some(ProxyErrorKind::ConnectionRefused))
        .with_retryable(true)
        .with_request_id("7f3c9a1e-5b2d-4c8e-9f01-2a3b4c5d6e7f")
}

fn rendering(c: &mut Criterion) {
    let accept = HeaderValue::from_static(BROWSER_ACCEPT);
    let html = Template::html(DEFAULT_HTML).expect("built-in template");
    let json = Template::problem_json(DEFAULT_PROBLEM_JSON).expect("built-in template");
    let view = view();

    let mut group = c.benchmark_group("render");
    group.bench_function("serde_json::to_vec (baseline)", |b| {
        b.iter(|| {
            let problem = Problem {
                r#type: "about:blank",
                title: black_box(view.title()),
                status: black_box(view.status().as_u16()),
                detail: black_box(view.detail()),
                error_type: black_box(view.error_type().unwrap_or("")),
                retryable: black_box(view.retryable()),
                request_id: black_box(view.request_id().unwrap_or("")),
            };
            serde_json::to_vec(&problem).expect("serializable")
        })
    });
    group.bench_function("problem+json template", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(256);
            json.render(black_box(&view), &mut out);
            out
        })
    });
    group.bench_function("negotiate browser Accept + HTML page", |b| {
        b.iter(|| {
            let format = negotiate([black_box(&accept)], Format::ProblemJson);
            assert_eq!(format, Format::Html);
            let mut out = Vec::with_capacity(2048);
            html.render(black_box(&view), &mut out);
            out
        })
    });
    group.bench_function("negotiate browser Accept", |b| {
        b.iter(|| negotiate([black_box(&accept)], Format::ProblemJson))
    });
    group.finish();
}

/// A hostile `Accept` costs what a long one does: time per byte stays flat from 1 KiB to 64 KiB.
fn hostile_accept(c: &mut Criterion) {
    let mut group = c.benchmark_group("negotiate hostile Accept");
    for kib in [1usize, 8, 64] {
        let shapes = [
            ("ranges", "a/b;q=0.1,"),
            ("params", ";x=\"\\\"\";"),
            ("commas", ",,,,,,,,,,"),
        ];
        for (name, unit) in shapes {
            let text = unit.repeat(kib * 1024 / unit.len());
            let value = HeaderValue::from_str(&text).expect("visible ASCII");
            group.throughput(Throughput::Bytes(text.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(name, format!("{kib}KiB")),
                &value,
                |b, v| b.iter(|| negotiate([black_box(v)], Format::ProblemJson)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, rendering, hostile_accept);
criterion_main!(benches);
