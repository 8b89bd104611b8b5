//! The bodies of generated errors: what they may say ([`ErrorView`]), the built-in templates,
//! your own [`Template`]s and renderers, and how the form is chosen from `Accept` ([`negotiate`]).
//!
//! # The form
//!
//! A generated error has one body, in the form the request's `Accept` asks for (RFC 9110
//! §12.5.1):
//!
//! | the client accepts | it gets |
//! |---|---|
//! | `application/problem+json` or `application/json` | RFC 9457 problem details, `application/problem+json` |
//! | `text/html` (every browser's navigation) | an HTML page, `text/html; charset=utf-8` |
//! | `text/plain` | plain text, `text/plain; charset=utf-8` |
//! | no `Accept`, `*/*` (curl, `fetch()`), or a tie | the default form: problem+json unless [`Bodies::default_format`] says otherwise |
//! | none of them (`image/png`, `*/*;q=0`) | still the error's status, in the default form: never a 406 |
//!
//! - Each form takes the q-value of the most specific range that matches it (`text/html` over
//!   `text/*` over `*/*`), so `text/html;q=0, text/*` gets plain text.
//! - `q=0` means "not this"; several `Accept` lines count as one list; names and `q` are
//!   case-insensitive.
//! - A range with parameters matches only if they hold for the body: `text/plain;charset=utf-8`
//!   does, `text/html;level=1` does not.
//! - `application/json` asks for problem+json, unless `application/problem+json` is named as well
//!   (its q-value then wins).
//! - A malformed range (`text/`, `q=abc`, an unclosed quote) is skipped and the rest still counts.
//!   The parser makes one pass over the header and allocates nothing, so a hostile `Accept` costs
//!   what a long one does.
//!
//! A gRPC call is answered in gRPC's terms instead, whatever its `Accept` (see [`crate::grpc`]).
//!
//! # What every form says
//!
//! The status and its reason phrase, a sentence on what failed, and whether waiting or a retry will
//! help (after a POST that may have reached the origin: "check whether it took effect before
//! sending it again"). problem+json carries `error_type` (the RFC 9209 token), `retryable`,
//! `retry_after` (where known) and `request_id` as extension members, and its `status` is always
//! the response's status. The upstream's address and the error's own text never appear in a body:
//! they go to the span.
//!
//! ```text
//! HTTP/1.1 504 Gateway Timeout
//! content-type: text/plain; charset=utf-8
//! cache-control: no-store
//! vary: accept
//! proxy-status: edge-1; error=http_response_timeout
//!
//! 504 Gateway Timeout
//!
//! The upstream server did not respond in time.
//! This is usually temporary: the request can safely be sent again in a moment.
//! Error type: http_response_timeout
//! Request ID: 0f9c2e41
//! ```
//!
//! The HTML page ([`DEFAULT_HTML`]) is a centred card, light, and dark when the system asks for it;
//! it loads nothing else (no script, font, stylesheet or image). `scripts/screenshot.sh` in the
//! repository takes screenshots of it with headless Chromium and checks the DOM it built.
//!
//! The request id comes from tower-http's `RequestId` extension (`SetRequestIdLayer`), else from the
//! `x-request-id` header ([`Telemetry::request_id_header`](crate::Telemetry::request_id_header)
//! names another). It is shown only if it is visible ASCII of at most 200 bytes; anything else is
//! dropped, not reflected.
//!
//! Every generated error has `Content-Type` (with `charset=utf-8` for HTML and text),
//! `Content-Length`, `Vary: accept` and `Cache-Control: no-store`; a HEAD gets the same headers,
//! including the `Content-Length` of the GET body, and no body; a status without content (1xx, 204,
//! 304, should a classifier pick one) gets neither a body nor `Content-Length`.
//!
//! # Your own bodies
//!
//! [`Bodies`] gathers them, for [`GatewayErrorLayer::bodies`](crate::GatewayErrorLayer::bodies). A
//! [`Template`] is compiled when it is made; a mistake is a [`TemplateError`] then, with its place.
//! For each form, the first that applies wins: the renderer, the kind's template, the status's
//! template, the form's template, the built-in one ([`DEFAULT_HTML`], [`DEFAULT_TEXT`],
//! [`DEFAULT_PROBLEM_JSON`]).
//!
//! ```
//! use gateway_errors::render::{Bodies, Template, TemplateError};
//! use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
//! use http::StatusCode;
//!
//! const PAGE: &str = r#"<!DOCTYPE html>
//! <html lang="en"><meta charset="utf-8"><title>{title}</title>
//! <style>body {{ font-family: sans-serif }}</style>
//! <h1>{status} {title}</h1>
//! <p>{detail} {advice}</p>
//! {#request_id}<p>Reference: {request_id}</p>{/request_id}"#;
//!
//! fn layer() -> Result<GatewayErrorLayer, TemplateError> {
//!     let bodies = Bodies::new()
//!         // every HTML error
//!         .template(Template::html(PAGE)?)
//!         // plain text for every 503
//!         .template_for_status(
//!             StatusCode::SERVICE_UNAVAILABLE,
//!             Template::text("{status} {title}: down for maintenance.\n")?,
//!         )
//!         // plain text for timeouts only
//!         .template_for_kind(
//!             ProxyErrorKind::HttpResponseTimeout,
//!             Template::text("{status} {title}: the upstream is slow. {advice}\n")?,
//!         );
//!     Ok(GatewayErrorLayer::new().bodies(bodies))
//! }
//! # layer().unwrap();
//! ```
//!
//! To render with your own engine (askama, minijinja, tera, ...), give [`Bodies::renderer`] a
//! closure or a [`RenderBody`]. It gets the [`ErrorView`] and the negotiated [`Format`]; `None`
//! leaves that body to the templates. The layer still sets the status and every header.
//! `examples/custom_templates.rs` renders problem+json through minijinja.
//!
//! ```
//! use bytes::Bytes;
//! use gateway_errors::GatewayErrorLayer;
//! use gateway_errors::render::{Bodies, ErrorView, Format};
//!
//! let bodies = Bodies::new().renderer(|view: &ErrorView<'_>, format: Format| {
//!     let text = format!("{} {}: please try again later\n", view.status().as_u16(), view.title());
//!     (format == Format::Text).then(|| Bytes::from(text))
//! });
//! let layer = GatewayErrorLayer::new().bodies(bodies);
//! ```

pub(crate) mod bodies;
pub(crate) mod negotiate;
pub(crate) mod template;

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::StatusCode;

pub use bodies::Bodies;
pub use negotiate::{Format, negotiate};
pub use template::{Template, TemplateError};

use crate::headers::DEFAULT_NAME;
use crate::kind::ProxyErrorKind;

/// Everything a body template or renderer may show about one generated error.
///
/// Every value here is safe to show a client: the classified kind, a fixed sentence, the request id
/// the client sent or was given, and the configured proxy name. The error's text and the upstream's
/// address never reach this view.
#[derive(Debug, Clone, Copy)]
pub struct ErrorView<'a> {
    pub(crate) status: StatusCode,
    pub(crate) kind: Option<ProxyErrorKind>,
    pub(crate) detail: &'a str,
    pub(crate) request_id: Option<&'a str>,
    pub(crate) retryable: bool,
    pub(crate) retry_after_seconds: Option<u64>,
    pub(crate) proxy: &'a str,
}

impl ErrorView<'static> {
    /// A view of an error of `kind` (or of an unrecognised error, for `None`) with the kind's
    /// status and detail, not retryable, no request id, proxy name `gateway`. For rendering a
    /// template outside the layer, e.g. to test it:
    ///
    /// ```
    /// use gateway_errors::ProxyErrorKind;
    /// use gateway_errors::render::{ErrorView, Template};
    ///
    /// let page = Template::text("{status} {title}: {detail}").unwrap();
    /// let view = ErrorView::new(Some(ProxyErrorKind::HttpResponseTimeout)).with_retryable(true);
    /// let mut body = Vec::new();
    /// page.render(&view, &mut body);
    /// assert_eq!(body, b"504 Gateway Timeout: The upstream server did not respond in time.");
    /// ```
    pub fn new(kind: Option<ProxyErrorKind>) -> Self {
        ErrorView {
            status: kind.map_or(StatusCode::BAD_GATEWAY, ProxyErrorKind::status),
            kind,
            detail: kind.map_or(UNRECOGNIZED_DETAIL, ProxyErrorKind::detail),
            request_id: None,
            retryable: false,
            retry_after_seconds: None,
            proxy: DEFAULT_NAME,
        }
    }
}

impl<'a> ErrorView<'a> {
    /// The same view with another status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The same view with a request id.
    pub fn with_request_id<'b>(self, request_id: &'b str) -> ErrorView<'b>
    where
        'a: 'b,
    {
        ErrorView {
            request_id: Some(request_id),
            ..self
        }
    }

    /// The same view with another retry hint.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The same view with an advised delay before a retry.
    pub fn with_retry_after_seconds(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    /// The same view with another proxy name.
    pub fn with_proxy<'b>(self, proxy: &'b str) -> ErrorView<'b>
    where
        'a: 'b,
    {
        ErrorView { proxy, ..self }
    }

    /// The status code of the response.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The status's reason phrase (`Bad Gateway`), the problem's `title`.
    pub fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }

    /// The RFC 9209 kind, if the error was recognised.
    pub fn kind(&self) -> Option<ProxyErrorKind> {
        self.kind
    }

    /// The RFC 9209 token (`connection_refused`), if the error was recognised.
    pub fn error_type(&self) -> Option<&'static str> {
        self.kind.map(ProxyErrorKind::token)
    }

    /// A sentence for the client saying what failed.
    pub fn detail(&self) -> &'a str {
        self.detail
    }

    /// A sentence saying whether waiting or retrying will help.
    pub fn advice(&self) -> &'static str {
        // The request did not arrive in time (a stalled upload, or an origin's own 408).
        if self.status == StatusCode::REQUEST_TIMEOUT {
            return "The request did not arrive in time: it can be sent again, in full.";
        }
        // A loop is a gateway's configuration, and a refused certificate the upstream's: neither
        // passes by itself.
        let temporary = matches!(self.status.as_u16(), 502..=504)
            && !matches!(
                self.kind,
                Some(ProxyErrorKind::ProxyLoopDetected | ProxyErrorKind::TlsCertificateError)
            );
        match (temporary, self.retryable) {
            (true, true) => {
                "This is usually temporary: the request can safely be sent again in a moment."
            }
            (true, false) => {
                "This is usually temporary, but the request may have reached the upstream server: check whether it took effect before sending it again."
            }
            (false, _) => "Sending the same request again will not help.",
        }
    }

    /// The request id, from tower-http's `RequestId` or the request id header.
    pub fn request_id(&self) -> Option<&'a str> {
        self.request_id
    }

    /// Whether the client may safely send the request again.
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// The advised delay before a retry, in seconds, where one is configured.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        self.retry_after_seconds
    }

    /// The configured proxy name.
    pub fn proxy(&self) -> &'a str {
        self.proxy
    }

    /// A view with hostile values in every string a request can influence: templates are checked
    /// against it when they are made.
    pub(crate) fn sample() -> ErrorView<'static> {
        ErrorView {
            status: StatusCode::BAD_GATEWAY,
            kind: Some(ProxyErrorKind::ConnectionRefused),
            detail: ProxyErrorKind::ConnectionRefused.detail(),
            request_id: Some("<req \"1\">"),
            retryable: true,
            retry_after_seconds: Some(5),
            proxy: "edge-1",
        }
    }

    #[cfg(test)]
    pub(crate) fn without_request_id(mut self) -> Self {
        self.request_id = None;
        self
    }
}

/// The detail sentence for an error the classifier did not recognise.
pub(crate) const UNRECOGNIZED_DETAIL: &str =
    "The gateway could not get a valid response from the upstream server.";

/// Renders error bodies with your own engine (askama, minijinja, ...).
///
/// Return `None` to fall back to the layer's templates for this error and format. Closures with
/// the signature `Fn(&ErrorView<'_>, Format) -> Option<Bytes>` implement this trait (annotate the
/// parameter types: the closure is generic over the view's lifetime).
///
/// ```
/// use bytes::Bytes;
/// use gateway_errors::GatewayErrorLayer;
/// use gateway_errors::render::{Bodies, ErrorView, Format};
///
/// let layer = GatewayErrorLayer::new().bodies(Bodies::new().renderer(|view: &ErrorView<'_>, format: Format| {
///     (format == Format::Text).then(|| Bytes::from(format!("{} — try later\n", view.status())))
/// }));
/// # let _ = layer;
/// ```
pub trait RenderBody: Send + Sync + 'static {
    /// The body for `view` in `format`, or `None` for the templates' body.
    fn render(&self, view: &ErrorView<'_>, format: Format) -> Option<Bytes>;
}

impl<F> RenderBody for F
where
    F: Fn(&ErrorView<'_>, Format) -> Option<Bytes> + Send + Sync + 'static,
{
    fn render(&self, view: &ErrorView<'_>, format: Format) -> Option<Bytes> {
        self(view, format)
    }
}

/// The built-in `application/problem+json` template (RFC 9457).
pub const DEFAULT_PROBLEM_JSON: &str = concat!(
    r#"{{"type":"about:blank","title":"{title}","status":{status},"detail":"{detail}""#,
    r#"{#error_type},"error_type":"{error_type}"{/error_type},"retryable":{retryable}"#,
    r#"{#retry_after},"retry_after":{retry_after}{/retry_after}"#,
    r#"{#request_id},"request_id":"{request_id}"{/request_id}}}"#,
);

/// The built-in plain-text template.
pub const DEFAULT_TEXT: &str = "{status} {title}\n\n{detail}\n{advice}\n\
{#retry_after}Retry after: {retry_after} seconds\n{/retry_after}\
{#error_type}Error type: {error_type}\n{/error_type}\
{#request_id}Request ID: {request_id}\n{/request_id}";

/// The built-in HTML page: self-contained (no scripts, fonts or images), light and dark.
pub const DEFAULT_HTML: &str = include_str!("default.html");

static BUILT_IN: LazyLock<[Template; 3]> = LazyLock::new(|| {
    [
        Template::problem_json(DEFAULT_PROBLEM_JSON).expect("built-in JSON template compiles"),
        Template::html(DEFAULT_HTML).expect("built-in HTML template compiles"),
        Template::text(DEFAULT_TEXT).expect("built-in text template compiles"),
    ]
});

/// The templates of one layer: per error kind, per status, per format, then the built-in ones.
#[derive(Clone, Default)]
pub(crate) struct Templates {
    by_kind: Vec<(ProxyErrorKind, Template)>,
    by_status: Vec<(StatusCode, Template)>,
    by_format: [Option<Template>; 3],
    renderer: Option<Arc<dyn RenderBody>>,
}

impl Templates {
    pub(crate) fn set_default(&mut self, template: Template) {
        let slot = template.format().index();
        self.by_format[slot] = Some(template);
    }

    pub(crate) fn set_for_status(&mut self, status: StatusCode, template: Template) {
        let format = template.format();
        self.by_status
            .retain(|(s, t)| !(*s == status && t.format() == format));
        self.by_status.push((status, template));
    }

    pub(crate) fn set_for_kind(&mut self, kind: ProxyErrorKind, template: Template) {
        let format = template.format();
        self.by_kind
            .retain(|(k, t)| !(*k == kind && t.format() == format));
        self.by_kind.push((kind, template));
    }

    pub(crate) fn set_renderer(&mut self, renderer: Arc<dyn RenderBody>) {
        self.renderer = Some(renderer);
    }

    fn pick(&self, view: &ErrorView<'_>, format: Format) -> &Template {
        let by_kind = view.kind.and_then(|kind| {
            self.by_kind
                .iter()
                .find(|(k, t)| *k == kind && t.format() == format)
                .map(|(_, t)| t)
        });
        let by_status = || {
            self.by_status
                .iter()
                .find(|(s, t)| *s == view.status && t.format() == format)
                .map(|(_, t)| t)
        };
        by_kind
            .or_else(by_status)
            .or(self.by_format[format.index()].as_ref())
            .unwrap_or(&BUILT_IN[format.index()])
    }

    /// The body for `view` in `format`.
    pub(crate) fn render(&self, view: &ErrorView<'_>, format: Format) -> Bytes {
        if let Some(body) = self.renderer.as_ref().and_then(|r| r.render(view, format)) {
            return body;
        }
        let template = self.pick(view, format);
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // Render into a buffer reused by the thread, then copy once: one allocation of the exact
        // size, where a fresh `Vec` would grow and then need a second one to become `Bytes`.
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            scratch.reserve(template.size_hint());
            template.render(view, scratch);
            let body = Bytes::copy_from_slice(scratch);
            if scratch.capacity() > 64 * 1024 {
                *scratch = Vec::new();
            }
            body
        })
    }

    /// Whether a custom renderer is set (its output is never cached: it may vary per request).
    pub(crate) fn has_renderer(&self) -> bool {
        self.renderer.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_says_whether_sending_again_can_help() {
        let refused = ErrorView::new(Some(ProxyErrorKind::ConnectionRefused)).with_retryable(true);
        assert!(refused.advice().starts_with("This is usually temporary"));
        // A refused certificate stays refused until it is replaced; a loop stays a loop.
        for kind in [
            ProxyErrorKind::TlsCertificateError,
            ProxyErrorKind::ProxyLoopDetected,
        ] {
            let view = ErrorView::new(Some(kind)).with_retryable(true);
            assert_eq!(
                view.advice(),
                "Sending the same request again will not help.",
                "{kind}"
            );
        }
        let stalled = ErrorView {
            status: StatusCode::REQUEST_TIMEOUT,
            ..ErrorView::new(None)
        };
        assert!(stalled.advice().contains("can be sent again"));
    }

    #[test]
    fn built_in_bodies_render_for_every_format() {
        let templates = Templates::default();
        let view = ErrorView::sample();
        let json = templates.render(&view, Format::ProblemJson);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["status"], 502);
        assert_eq!(value["title"], "Bad Gateway");
        assert_eq!(value["error_type"], "connection_refused");
        assert_eq!(value["request_id"], "<req \"1\">");
        assert_eq!(value["retryable"], true);

        let text = templates.render(&view, Format::Text);
        let text = std::str::from_utf8(&text).unwrap();
        assert!(text.starts_with("502 Bad Gateway\n"), "{text}");
        assert!(text.contains("Error type: connection_refused\n"), "{text}");

        let html = templates.render(&view, Format::Html);
        let html = std::str::from_utf8(&html).unwrap();
        assert!(html.contains("&lt;req &quot;1&quot;&gt;"), "{html}");
        assert!(!html.contains("<req"), "{html}");
    }

    #[test]
    fn kind_beats_status_beats_format() {
        let mut templates = Templates::default();
        templates.set_default(Template::text("format").unwrap());
        templates.set_for_status(StatusCode::BAD_GATEWAY, Template::text("status").unwrap());
        let view = ErrorView::sample();
        assert_eq!(templates.render(&view, Format::Text), "status");
        templates.set_for_kind(
            ProxyErrorKind::ConnectionRefused,
            Template::text("kind").unwrap(),
        );
        assert_eq!(templates.render(&view, Format::Text), "kind");
        let other = ErrorView {
            status: StatusCode::GATEWAY_TIMEOUT,
            kind: Some(ProxyErrorKind::HttpResponseTimeout),
            ..view
        };
        assert_eq!(templates.render(&other, Format::Text), "format");
    }
}
