//! What a request says that its answer may need, read once when the request arrives, without
//! allocating: the answer is decided after the request itself has gone to the inner service.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request};

use crate::config::Config;
use crate::deadline::Limit;
use crate::grpc::call::GrpcCall;
use crate::negotiate::{Format, negotiate, negotiate_line};
use crate::retry::hint::IdempotencyKey;
use crate::stale::request::CapturedRequest;

/// What the answer may need from the request. Header values are kept as the request held them:
/// cloning a parsed header value shares its bytes, it does not copy them.
pub(crate) struct RequestFacts {
    accept: AcceptSnapshot,
    pub(crate) is_head: bool,
    pub(crate) idempotent_method: bool,
    /// Parsed only if an error needs the retry hint.
    pub(crate) idempotency_key: IdempotencyKey,
    request_id: Option<HeaderValue>,
    /// The protocols the client asked to switch to (`Upgrade`), if any.
    pub(crate) upgrade: Option<HeaderValue>,
    /// A gRPC caller is answered in gRPC's terms; `None` for every other request.
    pub(crate) grpc: Option<GrpcCall>,
    /// What the last-good-copy store needs of the request; `None` without a store, and for a
    /// request it has no use for.
    pub(crate) stale: Option<CapturedRequest>,
    /// When the request arrived, and its method's attribute; only when metrics are recorded.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Started>,
}

impl RequestFacts {
    pub(crate) fn capture<B>(request: &Request<B>, config: &Config) -> Self {
        let headers = request.headers();
        #[cfg(feature = "tower-http")]
        let request_id = request
            .extensions()
            .get::<tower_http::request_id::RequestId>()
            .map(|id| id.header_value().clone())
            .or_else(|| headers.get(&config.request_id_header).cloned());
        #[cfg(not(feature = "tower-http"))]
        let request_id = headers.get(&config.request_id_header).cloned();
        let mut accept_lines = headers.get_all(header::ACCEPT).iter();
        let accept = match (accept_lines.next(), accept_lines.next()) {
            (None, _) => AcceptSnapshot::Absent,
            (Some(line), None) => AcceptSnapshot::One(line.clone()),
            // Several lines are rare: negotiate now rather than keep them all.
            _ => AcceptSnapshot::Decided(negotiate(
                headers.get_all(header::ACCEPT),
                config.default_format,
            )),
        };
        let grpc = GrpcCall::detect(headers);
        let stale = match (&config.stale, grpc) {
            (Some(store), None) => store.capture(request),
            _ => None,
        };
        RequestFacts {
            accept,
            is_head: request.method() == Method::HEAD,
            idempotent_method: config.retry.is_idempotent(request.method()),
            idempotency_key: IdempotencyKey::capture(headers),
            request_id,
            upgrade: headers.get(header::UPGRADE).cloned(),
            grpc,
            stale,
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::Started::capture(config.metrics.as_ref(), request.method()),
        }
    }

    /// The limit on the response head: the configured upstream timeout, or the gRPC caller's
    /// own deadline (`grpc-timeout`) when that is sooner. Either is answered the same way; they
    /// are kept apart because only the operator's limit counts against the upstream. On a tie the
    /// operator's limit is the one that fires: it would have fired anyway.
    pub(crate) fn upstream_timeout(&self, configured: Option<Duration>) -> Option<Limit> {
        let callers = self.grpc.and_then(|call| call.timeout);
        match (configured, callers) {
            (Some(configured), Some(callers)) if callers < configured => {
                Some(Limit::Caller(callers))
            }
            (Some(configured), _) => Some(Limit::Head(configured)),
            (None, callers) => callers.map(Limit::Caller),
        }
    }

    /// The body format, negotiated only now that an error needs a body.
    pub(crate) fn format(&self, default: Format) -> Format {
        match &self.accept {
            AcceptSnapshot::Absent => default,
            AcceptSnapshot::One(line) => negotiate_line(line, default),
            AcceptSnapshot::Decided(format) => *format,
        }
    }

    /// The request id, if it is printable ASCII of a sane length. Anything else is dropped rather
    /// than reflected.
    pub(crate) fn request_id(&self) -> Option<&str> {
        let id = self.request_id.as_ref()?.to_str().ok()?;
        let sane = !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic());
        sane.then_some(id)
    }
}

/// The request's `Accept`, kept so that a successful request never pays for negotiation.
enum AcceptSnapshot {
    Absent,
    One(HeaderValue),
    Decided(Format),
}
