//! Hostile input, fuzzed with proptest: every parser a client or an upstream can feed.
//!
//! - `Accept` negotiation: any header bytes give a format; generated lists of media ranges with
//!   q-values give the format a small reference model of RFC 9110 §12.5.1 picks; a 64 KiB hostile
//!   header is handled in time linear in its length.
//! - templates: any source either compiles or fails with a position inside it; well-formed
//!   templates render what a reference renderer says; a problem+json template that compiles
//!   renders a JSON object for every view, however hostile its values.
//! - `Retry-After`: any bytes parse or not without a panic; seconds and HTTP-dates round-trip.
//! - `Idempotency-Key`, through the layer: a POST that may have reached the origin is retryable
//!   exactly when it carries a valid Structured Field string key.
//! - `Proxy-Status`, through the layer: whatever the origin sent, our member is appended last and
//!   the result is a valid header value.
//! - `CDN-Loop`, through the layer: lists of other intermediaries never make a loop, our own
//!   well-formed member always does, and any bytes are handled.
//!
//! Cases per property: proptest's default (256), or `PROPTEST_CASES`. The properties that go
//! through the layer run a quarter of that.

use crate::support::statuses;
use std::convert::Infallible;
use std::io;
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use gateway_errors::headers::{CDN_LOOP, PROXY_STATUS};
use gateway_errors::render::{ErrorView, Format, Template, negotiate};
use gateway_errors::retry::{IDEMPOTENCY_KEY, RetryAfter};
use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind, ProxyName};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use proptest::test_runner::Config;
use tower::{ServiceBuilder, ServiceExt, service_fn};

// ---------------------------------------------------------------------------------------------
// Configuration

/// The default configuration (which reads `PROPTEST_CASES`), without regression files in the tree.
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// For properties that run the layer: a quarter of the cases, at least 16.
fn layer_config() -> Config {
    let base = config();
    Config {
        cases: (base.cases / 4).max(16),
        ..base
    }
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

// ---------------------------------------------------------------------------------------------
// Accept negotiation

/// Bytes that make a valid header value most of the time: visible ASCII, spaces, tabs, obs-text,
/// and the characters the parser cares about, over-represented.
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => 0x20u8..0x7f,
        2 => prop::sample::select(b",;=\"\\/*q0.1 \t".to_vec()),
        1 => 0x80u8..=0xff,
    ];
    prop::collection::vec(byte, 0..max)
}

const FORMATS: [Format; 3] = [Format::ProblemJson, Format::Html, Format::Text];

fn format() -> impl Strategy<Value = Format> {
    prop::sample::select(FORMATS.to_vec())
}

/// One media range as a client might write it, well-formed or not.
#[derive(Debug, Clone)]
struct RangeSpec {
    media: &'static str,
    params: Vec<&'static str>,
    q: Option<String>,
    /// Parameters after q (accept-ext): they never change the match.
    ext: Option<&'static str>,
    space: bool,
}

impl RangeSpec {
    fn write(&self, out: &mut String) {
        let sep = if self.space { " ; " } else { ";" };
        out.push_str(self.media);
        for param in &self.params {
            out.push_str(sep);
            out.push_str(param);
        }
        if let Some(q) = &self.q {
            out.push_str(sep);
            out.push_str(q);
            // Only after a q-value is a parameter an extension rather than part of the range.
            if let Some(ext) = self.ext {
                out.push_str(sep);
                out.push_str(ext);
            }
        }
    }
}

fn range_spec() -> impl Strategy<Value = RangeSpec> {
    let media = prop::sample::select(vec![
        "application/problem+json",
        "application/json",
        "text/html",
        "text/plain",
        "text/*",
        "*/*",
        "application/*",
        "image/png",
        "text/xml",
        "TEXT/HTML",
        "Application/Problem+JSON",
        "Text/*",
        // Malformed: ignored.
        "*/json",
        "text/",
        "html",
        "text/html/x",
    ]);
    let param = prop::sample::select(vec![
        "charset=utf-8",
        "charset=UTF-8",
        "level=1",
        "charset=latin1",
        "x",
    ]);
    let q = prop_oneof![
        3 => Just(None),
        4 => (0u16..=1000).prop_map(|t| Some(if t == 1000 {
            "q=1.000".to_owned()
        } else {
            format!("q=0.{t:03}")
        })),
        2 => prop::sample::select(vec![
            "q=0", "q=1", "q=0.5", "Q=0.3", "q=1.0", "q=0.", "q=1.",
            // Malformed: the whole range is ignored.
            "q=1.5", "q=abc", "q=0.1234", "q=-0", "q=", "q=2",
        ])
        .prop_map(|q| Some(q.to_owned())),
    ];
    (
        media,
        prop::collection::vec(param, 0..2),
        q,
        prop::option::weighted(0.1, Just("level=2")),
        any::<bool>(),
    )
        .prop_map(|(media, params, q, ext, space)| RangeSpec {
            media,
            params,
            q,
            ext,
            space,
        })
}

/// A reference model of the negotiation rules in `src/negotiate.rs`'s docs, written from the
/// rules with plain string handling.
mod model {
    use super::{Format, RangeSpec};

    struct Parsed {
        ty: String,
        subtype: String,
        has_params: bool,
        params_hold: bool,
        quality: u16,
    }

    fn is_token(s: &str) -> bool {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    }

    fn qvalue(v: &str) -> Option<u16> {
        let (int, frac) = match v.split_once('.') {
            Some((i, f)) => (i, f),
            None => (v, ""),
        };
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let frac_value: u16 = format!("{frac:0<3}").parse().ok()?;
        match int {
            "0" => Some(frac_value),
            "1" if frac_value == 0 => Some(1000),
            _ => None,
        }
    }

    fn parse(spec: &RangeSpec) -> Option<Parsed> {
        let (ty, subtype) = spec.media.split_once('/')?;
        if !is_token(ty) || !is_token(subtype) || (ty == "*" && subtype != "*") {
            return None;
        }
        let mut parsed = Parsed {
            ty: ty.to_ascii_lowercase(),
            subtype: subtype.to_ascii_lowercase(),
            has_params: !spec.params.is_empty(),
            params_hold: true,
            quality: 1000,
        };
        for param in &spec.params {
            // A parameter without a value is malformed: the range is ignored.
            let (name, value) = param.split_once('=')?;
            parsed.params_hold &=
                name.eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8");
        }
        if let Some(q) = &spec.q {
            let (name, value) = q.split_once('=')?;
            debug_assert!(name.eq_ignore_ascii_case("q"));
            parsed.quality = qvalue(value)?;
        }
        Some(parsed)
    }

    /// How specifically `range` names `ty/subtype`: 0 not at all; then `*/*` < `type/*` <
    /// `type/subtype`, each beaten by the same with parameters.
    fn specificity(range: &Parsed, ty: &str, subtype: &str) -> u8 {
        if !range.params_hold {
            return 0;
        }
        let base = if range.ty == "*" {
            1
        } else if range.ty != ty {
            return 0;
        } else if range.subtype == "*" {
            2
        } else if range.subtype == subtype {
            3
        } else {
            return 0;
        };
        base * 2 + u8::from(range.has_params)
    }

    /// (specificity, quality) of the first most specific range for `ty/subtype`.
    fn best(ranges: &[Parsed], ty: &str, subtype: &str) -> (u8, u16) {
        let mut best = (0, 0);
        for range in ranges {
            let s = specificity(range, ty, subtype);
            if s > best.0 {
                best = (s, range.quality);
            }
        }
        best
    }

    pub(super) fn negotiate(lines: &[Vec<RangeSpec>], default: Format) -> Format {
        let ranges: Vec<Parsed> = lines.iter().flatten().filter_map(parse).collect();
        let problem = best(&ranges, "application", "problem+json");
        let json = best(&ranges, "application", "json");
        // problem+json also answers application/json; on equal specificity, its own type wins.
        let json_quality = if json.0 > problem.0 {
            json.1
        } else {
            problem.1
        };
        let quality = |format: Format| match format {
            Format::ProblemJson => json_quality,
            Format::Html => best(&ranges, "text", "html").1,
            Format::Text => best(&ranges, "text", "plain").1,
        };
        let mut chosen = default;
        for format in super::FORMATS {
            if quality(format) > quality(chosen) {
                chosen = format;
            }
        }
        if quality(chosen) == 0 {
            default
        } else {
            chosen
        }
    }
}

fn accept_lines(lines: &[Vec<RangeSpec>], comma_space: bool) -> Vec<HeaderValue> {
    lines
        .iter()
        .map(|ranges| {
            let mut text = String::new();
            for (i, range) in ranges.iter().enumerate() {
                if i > 0 {
                    text.push_str(if comma_space { ", " } else { "," });
                }
                range.write(&mut text);
            }
            HeaderValue::from_str(&text).expect("generated ranges are visible ASCII")
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn negotiate_never_panics_on_any_header_bytes(
        lines in prop::collection::vec(header_bytes(256), 1..4),
        default in format(),
    ) {
        let values: Vec<HeaderValue> =
            lines.iter().filter_map(|b| HeaderValue::from_bytes(b).ok()).collect();
        let chosen = negotiate(&values, default);
        // Nothing acceptable is never an error: some format always comes back, and the same one
        // every time.
        prop_assert!(FORMATS.contains(&chosen));
        prop_assert_eq!(chosen, negotiate(&values, default));
    }

    #[test]
    fn negotiate_agrees_with_the_reference_model(
        lines in prop::collection::vec(prop::collection::vec(range_spec(), 0..6), 1..3),
        default in format(),
        comma_space in any::<bool>(),
    ) {
        let values = accept_lines(&lines, comma_space);
        let expected = model::negotiate(&lines, default);
        prop_assert_eq!(
            negotiate(&values, default),
            expected,
            "Accept: {:?}",
            values
        );
    }
}

/// Hostile `Accept` shapes, each `len` bytes long.
fn hostile_accepts(len: usize) -> Vec<(&'static str, HeaderValue)> {
    let repeat = |unit: &str| -> HeaderValue {
        let mut s = unit.repeat(len / unit.len() + 1);
        s.truncate(len);
        HeaderValue::from_str(&s).expect("visible ASCII")
    };
    vec![
        ("many ranges", repeat("text/html;q=0.5,")),
        ("many params", repeat(";a=b")),
        ("params without =", repeat(";a")),
        ("unclosed quote", {
            let mut s = String::from("text/html;x=\"");
            s.push_str(&"a\\\"".repeat(len / 3));
            s.truncate(len);
            HeaderValue::from_str(&s).expect("visible ASCII")
        }),
        ("alternating quotes", repeat("\",")),
        ("commas", repeat(",")),
        ("spaces then slash", repeat(" /")),
        ("one long token", repeat("a")),
    ]
}

/// The least time of a few runs: what the work costs, without a noisy neighbour's share.
fn least_time(accept: &HeaderValue) -> Duration {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(negotiate([accept], Format::ProblemJson));
            started.elapsed()
        })
        .min()
        .expect("five runs")
}

#[test]
fn hostile_64_kib_accept_is_handled_in_linear_time() {
    let small = hostile_accepts(4 * 1024);
    let large = hostile_accepts(64 * 1024);
    for ((name, small), (_, large)) in small.iter().zip(&large) {
        let t_small = least_time(small);
        let t_large = least_time(large);
        // 16 times the input: linear work takes about 16 times as long, quadratic 256 times. The
        // bound leaves room for noise, and a floor keeps timer resolution out of it.
        let bound = t_small * 48 + Duration::from_millis(2);
        assert!(
            t_large <= bound,
            "{name}: 64 KiB took {t_large:?}, 4 KiB {t_small:?}: not linear"
        );
        // However it scales, a 64 KiB header costs well under a millisecond per KiB.
        assert!(
            t_large < Duration::from_millis(64),
            "{name}: 64 KiB took {t_large:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Templates

/// A piece of a well-formed template.
#[derive(Debug, Clone)]
enum Node {
    Literal(String),
    OpenBrace,
    CloseBrace,
    Field(&'static str),
    Section {
        name: &'static str,
        inverted: bool,
        body: Vec<Node>,
    },
}

const FIELD_NAMES: [&str; 9] = [
    "status",
    "title",
    "detail",
    "advice",
    "error_type",
    "request_id",
    "retryable",
    "retry_after",
    "proxy",
];

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        4 => "[^{}]{0,8}".prop_map(Node::Literal),
        1 => Just(Node::OpenBrace),
        1 => Just(Node::CloseBrace),
        3 => prop::sample::select(FIELD_NAMES.to_vec()).prop_map(Node::Field),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        (
            prop::sample::select(FIELD_NAMES.to_vec()),
            any::<bool>(),
            prop::collection::vec(inner, 0..6),
        )
            .prop_map(|(name, inverted, body)| Node::Section {
                name,
                inverted,
                body,
            })
    })
}

fn write_source(nodes: &[Node], out: &mut String) {
    for node in nodes {
        match node {
            Node::Literal(text) => out.push_str(text),
            Node::OpenBrace => out.push_str("{{"),
            Node::CloseBrace => out.push_str("}}"),
            Node::Field(name) => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
            Node::Section {
                name,
                inverted,
                body,
            } => {
                out.push_str(if *inverted { "{^" } else { "{#" });
                out.push_str(name);
                out.push('}');
                write_source(body, out);
                out.push_str("{/");
                out.push_str(name);
                out.push('}');
            }
        }
    }
}

/// HTML escaping as the template docs promise it: the five characters that matter in text and
/// in quoted attributes.
fn html_escape_model(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What a well-formed template renders, from the placeholder table in `Template`'s docs.
fn render_model(nodes: &[Node], view: &ErrorView<'_>, html: bool, out: &mut String) {
    let escape = |value: &str| {
        if html {
            html_escape_model(value)
        } else {
            value.to_owned()
        }
    };
    for node in nodes {
        match node {
            Node::Literal(text) => out.push_str(text),
            Node::OpenBrace => out.push('{'),
            Node::CloseBrace => out.push('}'),
            Node::Field(name) => out.push_str(&match *name {
                "status" => view.status().as_str().to_owned(),
                "title" => escape(view.title()),
                "detail" => escape(view.detail()),
                "advice" => escape(view.advice()),
                "error_type" => escape(view.error_type().unwrap_or("")),
                "request_id" => escape(view.request_id().unwrap_or("")),
                "retryable" => view.retryable().to_string(),
                "retry_after" => view
                    .retry_after_seconds()
                    .map_or(String::new(), |s| s.to_string()),
                "proxy" => escape(view.proxy()),
                other => unreachable!("{other}"),
            }),
            Node::Section {
                name,
                inverted,
                body,
            } => {
                let present = match *name {
                    "error_type" => view.error_type().is_some(),
                    "request_id" => view.request_id().is_some(),
                    "retry_after" => view.retry_after_seconds().is_some(),
                    "retryable" => view.retryable(),
                    _ => true,
                };
                if present != *inverted {
                    render_model(body, view, html, out);
                }
            }
        }
    }
}

/// The parts of an [`ErrorView`] a test varies; the view borrows the strings from here.
#[derive(Debug, Clone)]
struct ViewSpec {
    kind: Option<ProxyErrorKind>,
    status: u16,
    request_id: Option<String>,
    proxy: Option<String>,
    retryable: bool,
    retry_after: Option<u64>,
}

impl ViewSpec {
    fn view(&self) -> ErrorView<'_> {
        let mut view = ErrorView::new(self.kind)
            .with_status(StatusCode::from_u16(self.status).expect("a valid status"))
            .with_retryable(self.retryable);
        if let Some(seconds) = self.retry_after {
            view = view.with_retry_after_seconds(seconds);
        }
        let view = match &self.request_id {
            Some(id) => view.with_request_id(id),
            None => view,
        };
        match &self.proxy {
            Some(proxy) => view.with_proxy(proxy),
            None => view,
        }
    }
}

/// Strings built to break out of HTML, JSON and lines, mixed with anything at all.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        3 => prop::collection::vec(
            prop::sample::select(vec![
                "<script>", "</script>", "\"", "'", "\\", "}", "{", "}}", "{{", "{status}",
                "\n", "\r\n", "\u{0}", "\u{7f}", "\u{2028}", "&amp;", "</dd>", "],", "\":1,\"",
                "é", "😀", "\u{feff}", " ", "a",
            ]),
            0..12,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn view_spec() -> impl Strategy<Value = ViewSpec> {
    let kind = prop::option::of(prop::sample::select(ProxyErrorKind::ALL.to_vec()));
    (
        kind,
        100u16..1000,
        prop::option::of(hostile_string()),
        prop::option::of(hostile_string()),
        any::<bool>(),
        prop::option::of(prop_oneof![
            Just(0u64),
            Just(5),
            Just(u64::MAX),
            any::<u64>()
        ]),
    )
        .prop_map(
            |(kind, status, request_id, proxy, retryable, retry_after)| ViewSpec {
                kind,
                status,
                request_id,
                proxy,
                retryable,
                retry_after,
            },
        )
}

/// Template sources: anything, and near-templates rich in braces and placeholder names.
fn template_source() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        3 => prop::collection::vec(
            prop::sample::select(vec![
                "{", "}", "{{", "}}", "{status}", "{title}", "{#request_id}", "{/request_id}",
                "{^retryable}", "{/retryable}", "{#retry_after}", "{/retry_after}", "{nope}",
                "{Status}", "{#}", "{/}", "{ status}", "{#status", "é", "x", "\n", "\"", ":",
                ",", "{{status}}", "{#error_type}", "{/error_type}", "😀",
            ]),
            0..24,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

/// JSON-shaped template sources: members whose values are placeholders in every position,
/// some inside sections, some not.
fn json_template_source() -> impl Strategy<Value = String> {
    let value = prop::sample::select(vec![
        "\"{title}\"",
        "\"{detail}\"",
        "\"{request_id}\"",
        "\"{proxy}\"",
        "\"{error_type}\"",
        "\"x{advice}y\"",
        "{status}",
        "{retryable}",
        "{retry_after}",
        "1{retry_after}",
        "{retry_after}1",
        "-{retry_after}",
        "\"{retry_after}\"",
        "[{status},{retryable}]",
        "{request_id}",
        "null",
        "0",
    ]);
    let member = (
        "[a-z]{1,6}",
        value,
        prop::option::of(prop::sample::select(vec![
            "request_id",
            "retry_after",
            "error_type",
            "retryable",
        ])),
        any::<bool>(),
    );
    prop::collection::vec(member, 1..6).prop_map(|members| {
        let mut source = String::from("{{\"type\":\"about:blank\"");
        for (key, value, section, inverted) in members {
            let member = format!(",\"{key}\":{value}");
            match section {
                Some(name) => {
                    let sigil = if inverted { '^' } else { '#' };
                    source.push_str(&format!("{{{sigil}{name}}}{member}{{/{name}}}"));
                }
                None => source.push_str(&member),
            }
        }
        source.push_str("}}");
        source
    })
}

fn render(template: &Template, view: &ErrorView<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    template.render(view, &mut out);
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_template_source_compiles_or_points_inside_it(
        source in template_source(),
        spec in view_spec(),
    ) {
        for format in FORMATS {
            match Template::compile(format, &source) {
                Ok(template) => {
                    // Whatever compiled renders, for any view.
                    let _ = render(&template, &spec.view());
                }
                Err(error) => {
                    prop_assert!(error.byte_offset() <= source.len());
                    prop_assert!(source.is_char_boundary(error.byte_offset()));
                    prop_assert!(error.line() >= 1 && error.column() >= 1);
                    prop_assert!(error.line() <= source.matches('\n').count() + 1);
                    prop_assert!(!error.to_string().is_empty());
                }
            }
        }
        // The JSON constructor also renders what compiled; it must never panic either.
        let _ = Template::problem_json(&source);
    }

    #[test]
    fn well_formed_templates_render_as_the_model_says(
        nodes in prop::collection::vec(node(), 0..8),
        spec in view_spec(),
    ) {
        let mut source = String::new();
        write_source(&nodes, &mut source);
        let view = spec.view();

        let text = Template::text(&source);
        prop_assert!(text.is_ok(), "{:?}: {:?}", source, text.err());
        let mut expected = String::new();
        render_model(&nodes, &view, false, &mut expected);
        prop_assert_eq!(String::from_utf8(render(&text.unwrap(), &view)).unwrap(), expected);

        let html = Template::html(&source).expect("the same source compiles as HTML");
        let mut expected = String::new();
        render_model(&nodes, &view, true, &mut expected);
        prop_assert_eq!(String::from_utf8(render(&html, &view)).unwrap(), expected);
    }

    #[test]
    fn a_broken_well_formed_template_fails_inside_it(
        nodes in prop::collection::vec(node(), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut source = String::new();
        write_source(&nodes, &mut source);
        // Every piece of a valid template holds two braces (`{{`, `}}`, `{name}`): with one
        // removed the count is odd, so the source cannot be valid.
        let braces: Vec<usize> = source
            .char_indices()
            .filter(|(_, c)| *c == '{' || *c == '}')
            .map(|(i, _)| i)
            .collect();
        prop_assume!(!braces.is_empty());
        let at = braces[cut.index(braces.len())];
        source.remove(at);
        let error = Template::text(&source).expect_err("an odd number of braces compiled");
        prop_assert!(error.byte_offset() <= source.len());
        prop_assert!(source.is_char_boundary(error.byte_offset()));
    }

    #[test]
    fn problem_json_templates_that_compile_always_render_json_objects(
        source in json_template_source(),
        specs in prop::collection::vec(view_spec(), 1..8),
    ) {
        if let Ok(template) = Template::problem_json(&source) {
            for spec in &specs {
                let body = render(&template, &spec.view());
                let parsed = serde_json::from_slice::<serde_json::Value>(&body);
                prop_assert!(
                    matches!(parsed, Ok(serde_json::Value::Object(_))),
                    "template {:?} accepted, but for {:?} renders {:?}",
                    source,
                    spec,
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }

    #[test]
    fn string_placeholders_round_trip_through_json(spec in view_spec()) {
        let template = Template::problem_json(
            r#"{{"id":"{request_id}","proxy":"{proxy}","title":"{title}"}}"#,
        )
        .expect("a valid template");
        let view = spec.view();
        let body = render(&template, &view);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        prop_assert_eq!(&value["id"], view.request_id().unwrap_or(""));
        prop_assert_eq!(&value["proxy"], view.proxy());
        prop_assert_eq!(&value["title"], view.title());
        prop_assert_eq!(value.as_object().map(|o| o.len()), Some(3));
    }
}

// ---------------------------------------------------------------------------------------------
// Retry-After

proptest! {
    #![proptest_config(config())]

    #[test]
    fn retry_after_parse_never_panics(bytes in header_bytes(96)) {
        if let Some(after) = RetryAfter::parse(&bytes) {
            // Whatever parsed can be written back as a valid header value.
            let _ = after.to_header_value();
        }
    }

    #[test]
    fn retry_after_seconds_round_trip(
        seconds in prop_oneof![0u64..100_000, 0u64..=9_999_999_999_999_999_999],
        before in "[ \t]{0,2}",
        after in "[ \t]{0,2}",
    ) {
        let text = format!("{before}{seconds}{after}");
        let parsed = RetryAfter::parse(text.as_bytes());
        prop_assert_eq!(parsed, Some(RetryAfter::Delay(Duration::from_secs(seconds))));
        let written = seconds.to_string();
        prop_assert_eq!(parsed.unwrap().to_header_value(), written.as_str());
    }

    #[test]
    fn retry_after_dates_round_trip(seconds in 0u64..253_402_300_799) {
        // Whole seconds from 1970 to the end of year 9999: what an IMF-fixdate can say.
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        let value = RetryAfter::At(at).to_header_value();
        prop_assert_eq!(RetryAfter::parse(value.as_bytes()), Some(RetryAfter::At(at)));
    }

    #[test]
    fn any_delay_becomes_a_header_value(
        secs in prop_oneof![any::<u64>(), u64::MAX - 2..=u64::MAX],
        nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
    ) {
        let delay = Duration::new(secs, nanos);
        let value = RetryAfter::Delay(delay).to_header_value();
        let written: u64 = value.to_str().unwrap().parse().unwrap();
        // Rounded up to whole seconds, saturating at the largest.
        let expected = secs.saturating_add(u64::from(nanos > 0));
        prop_assert_eq!(written, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Idempotency-Key, through the layer

/// A Structured Field string (RFC 9651 §3.3.3) that holds at least one character.
fn valid_sf_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            6 => (0x20u8..0x7f)
                .prop_filter("quote and backslash are escaped", |b| *b != b'"' && *b != b'\\')
                .prop_map(|b| char::from(b).to_string()),
            1 => Just("\\\"".to_owned()),
            1 => Just("\\\\".to_owned()),
        ],
        1..40,
    )
    .prop_map(|chars| format!("\"{}\"", chars.concat()))
}

/// A valid key: an sf-string, maybe with parameters, maybe with spaces around.
fn valid_idempotency_key() -> impl Strategy<Value = String> {
    (
        valid_sf_string(),
        prop::option::of(prop::sample::select(vec![
            ";a", ";a=1", ";x=?1", ";k=\"v\"",
        ])),
        "[ ]{0,2}",
        "[ ]{0,2}",
    )
        .prop_map(|(key, params, before, after)| {
            format!("{before}{key}{}{after}", params.unwrap_or_default())
        })
}

/// A key that is not one sf-string: a token, an empty string, an unterminated string, a bad
/// escape, a character outside printable ASCII, a list of two.
fn invalid_idempotency_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9-]{1,36}".prop_map(String::into_bytes),
        Just(b"\"\"".to_vec()),
        valid_sf_string().prop_map(|s| s.as_bytes()[..s.len() - 1].to_vec()),
        valid_sf_string().prop_map(|s| format!("{}\\x\"", &s[..s.len() - 1]).into_bytes()),
        (valid_sf_string(), 0x80u8..=0xff).prop_map(|(s, b)| {
            let mut bytes = s.into_bytes();
            bytes.insert(1, b);
            bytes
        }),
        (valid_sf_string(), valid_sf_string()).prop_map(|(a, b)| format!("{a}, {b}").into_bytes()),
        (valid_sf_string(), "\t").prop_map(|(s, tab)| {
            let mut bytes = s.into_bytes();
            bytes.insert(1, tab.as_bytes()[0]);
            bytes
        }),
    ]
}

/// Sends a POST that fails after it may have reached the origin, with these `Idempotency-Key`
/// lines, and returns the retry hint the layer gave (checked to agree between extension and body).
fn post_retryable(keys: &[Vec<u8>]) -> bool {
    let failing = service_fn(|_request: Request<crate::support::Upload>| async {
        // Unrecognised: the request may have been sent.
        Err::<Response<Full<Bytes>>, _>(io::Error::other("upstream went away"))
    });
    let gateway = ServiceBuilder::new()
        .layer(GatewayErrorLayer::new())
        .service(failing);
    let mut request = Request::post("/orders").body(Body::from("x")).unwrap();
    for key in keys {
        let value = HeaderValue::from_bytes(key).expect("a valid header value");
        request.headers_mut().append(IDEMPOTENCY_KEY.clone(), value);
    }
    RUNTIME.block_on(async {
        let response = match gateway.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let error = parts.extensions.get::<ProxyError>().expect("a ProxyError");
        let body = body.collect().await.expect("a generated body").to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("problem+json");
        assert_eq!(json["retryable"], error.is_retryable());
        error.is_retryable()
    })
}

proptest! {
    #![proptest_config(layer_config())]

    #[test]
    fn post_with_a_valid_idempotency_key_is_retryable(key in valid_idempotency_key()) {
        prop_assert!(post_retryable(&[key.into_bytes()]), "key rejected");
    }

    #[test]
    fn post_with_an_invalid_idempotency_key_is_not(key in invalid_idempotency_key()) {
        prop_assume!(HeaderValue::from_bytes(&key).is_ok());
        prop_assert!(!post_retryable(&[key]), "key accepted");
    }

    #[test]
    fn post_with_two_idempotency_keys_is_not(a in valid_sf_string(), b in valid_sf_string()) {
        // Which of two keys would the origin honour? Neither: not retryable.
        prop_assert!(!post_retryable(&[a.into_bytes(), b.into_bytes()]));
    }

    #[test]
    fn any_idempotency_key_bytes_are_handled(key in header_bytes(64)) {
        prop_assume!(HeaderValue::from_bytes(&key).is_ok());
        let retryable = post_retryable(std::slice::from_ref(&key));
        if retryable {
            // Only something that starts as an sf-string can have been accepted.
            prop_assert_eq!(key.trim_ascii_start().first(), Some(&b'"'));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Proxy-Status appending, through the layer

/// Sends a request to an origin that answers `status` with these `Proxy-Status` lines, through a
/// layer that replaces origin errors, and returns the `Proxy-Status` the client gets.
fn intercepted_proxy_status(status: u16, lines: &[Vec<u8>]) -> HeaderValue {
    let lines: Vec<HeaderValue> = lines
        .iter()
        .map(|l| HeaderValue::from_bytes(l).expect("valid"))
        .collect();
    let origin = service_fn(move |_request: Request<crate::support::Upload>| {
        let lines = lines.clone();
        async move {
            let mut response = Response::new(Full::new(Bytes::from_static(b"origin body")));
            *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
            for line in lines {
                response.headers_mut().append(PROXY_STATUS.clone(), line);
            }
            Ok::<_, Infallible>(response)
        }
    });
    let gateway = ServiceBuilder::new()
        .layer(
            GatewayErrorLayer::new()
                .proxy_name(ProxyName::from_static("edge-1"))
                .failure_statuses(statuses(400..=599)),
        )
        .service(origin);
    RUNTIME.block_on(async {
        let response = match gateway.oneshot(Request::new(Body::empty())).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        assert_eq!(
            response.status().as_u16(),
            status,
            "the origin's status is kept"
        );
        let mut values = response.headers().get_all(&PROXY_STATUS).iter();
        let value = values.next().expect("a Proxy-Status").clone();
        assert!(values.next().is_none(), "one Proxy-Status line");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        value
    })
}

proptest! {
    #![proptest_config(layer_config())]

    #[test]
    fn our_member_is_appended_to_whatever_the_origin_sent(
        status in 400u16..600,
        lines in prop::collection::vec(header_bytes(120), 0..4),
    ) {
        let lines: Vec<Vec<u8>> = lines
            .into_iter()
            .filter(|l| HeaderValue::from_bytes(l).is_ok())
            .collect();
        let value = intercepted_proxy_status(status, &lines);

        let ours = format!("edge-1; received-status={status}");
        prop_assert!(HeaderValue::from_bytes(value.as_bytes()).is_ok());
        prop_assert!(
            value.as_bytes().ends_with(ours.as_bytes()),
            "{:?} does not end with our member",
            value
        );
        // The members already there come first, in order, trimmed, empty ones dropped.
        let mut expected: Vec<u8> = Vec::new();
        for line in &lines {
            let trimmed = line.trim_ascii();
            if !trimmed.is_empty() {
                expected.extend_from_slice(trimmed);
                expected.extend_from_slice(b", ");
            }
        }
        expected.extend_from_slice(ours.as_bytes());
        prop_assert_eq!(value.as_bytes(), &expected[..]);
    }
}

// ---------------------------------------------------------------------------------------------
// CDN-Loop, through the layer

/// A well-formed `cdn-info` of another intermediary: a token or host (never `edge-1`, in any
/// case) with optional parameters, and optional whitespace around.
fn other_member() -> impl Strategy<Value = String> {
    (
        "[a-zA-Z0-9][a-zA-Z0-9.-]{0,14}(:[0-9]{1,5})?"
            .prop_filter("not our name", |id| !id.eq_ignore_ascii_case("edge-1")),
        prop::collection::vec(
            prop_oneof![
                "[a-z]{1,6}=[a-z0-9]{1,6}",
                "[a-z]{1,6}=\"[ a-z0-9,;=-]{0,12}\"",
            ],
            0..3,
        ),
        "[ \t]{0,2}",
    )
        .prop_map(|(id, params, space)| {
            let params: String = params
                .iter()
                .map(|p| format!("{space};{space}{p}"))
                .collect();
            format!("{space}{id}{params}{space}")
        })
}

/// Our own member, as another gateway might have written it: any case, maybe with parameters.
fn our_member() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["edge-1", "EDGE-1", "Edge-1"]),
        prop::option::of("[a-z]{1,6}=[a-z0-9]{1,6}"),
    )
        .prop_map(|(id, param)| match param {
            Some(param) => format!("{id}; {param}"),
            None => id.to_owned(),
        })
}

/// Sends a GET with this `CDN-Loop` value through a layer named `edge-1`; true if it was
/// answered as a loop, false if it was forwarded.
fn looped(value: &[u8]) -> bool {
    let origin = service_fn(|_request: Request<crate::support::Upload>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let gateway = ServiceBuilder::new()
        .layer(GatewayErrorLayer::new().proxy_name(ProxyName::from_static("edge-1")))
        .service(origin);
    let mut request = Request::get("/").body(Body::empty()).unwrap();
    let value = HeaderValue::from_bytes(value).expect("a valid header value");
    request.headers_mut().insert(CDN_LOOP.clone(), value);
    RUNTIME.block_on(async {
        let response = match gateway.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        match response.status() {
            StatusCode::OK => false,
            StatusCode::BAD_GATEWAY => {
                let error = response
                    .extensions()
                    .get::<ProxyError>()
                    .expect("a ProxyError");
                assert_eq!(error.kind(), Some(ProxyErrorKind::ProxyLoopDetected));
                true
            }
            other => panic!("neither forwarded nor a loop: {other}"),
        }
    })
}

proptest! {
    #![proptest_config(layer_config())]

    #[test]
    fn other_intermediaries_never_make_a_loop_and_our_member_always_does(
        others in prop::collection::vec(other_member(), 0..12),
        ours in our_member(),
        at in any::<prop::sample::Index>(),
    ) {
        let list = others.join(",");
        prop_assert!(!looped(list.as_bytes()), "{list:?} taken for a loop");
        let mut with_ours = others.clone();
        with_ours.insert(at.index(others.len() + 1), ours);
        let list = with_ours.join(",");
        prop_assert!(looped(list.as_bytes()), "{list:?} not taken for a loop");
    }

    #[test]
    fn any_cdn_loop_bytes_are_handled(value in header_bytes(160)) {
        prop_assume!(HeaderValue::from_bytes(&value).is_ok());
        if looped(&value) {
            // Only a value that names us can have been taken for a loop.
            let text = String::from_utf8_lossy(&value).to_ascii_lowercase();
            prop_assert!(text.contains("edge-1"), "{text:?}");
        }
    }
}
