//! What a request says that its answer may need, read once when the request arrives, without
//! allocating: the answer is decided after the request itself has gone to the inner service.

use std::pin::Pin;
use std::thread::LocalKey;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};

use crate::config::Config;
use crate::deadline::Limit;
use crate::grpc::call::GrpcCall;
use crate::render::negotiate::{Format, negotiate, negotiate_line};
use crate::retry::hint::IdempotencyKey;
use crate::spare::{Recycle, Recycled, Spare};
use crate::stale::request::CapturedRequest;

/// What the answer may need from the request. Header values are kept as the request held them:
/// cloning a parsed header value shares its bytes, it does not copy them.
///
/// Small enough to be moved without a call to `memcpy` (see the size test): what most requests
/// lack (the request id, `Idempotency-Key`, `Upgrade`, the store's capture) is out of line, in
/// one box that a request without any of them does not take.
pub(crate) struct RequestFacts {
    accept: AcceptSnapshot,
    pub(crate) is_head: bool,
    pub(crate) idempotent_method: bool,
    /// A gRPC caller is answered in gRPC's terms; `None` for every other request.
    pub(crate) grpc: Option<GrpcCall>,
    /// The rarely present parts; `None` for a request with none of them.
    rare: Option<Recycled<Rare>>,
    /// When the request arrived, and its method's attribute; only when metrics are recorded.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Started>,
}

/// What few requests have, kept out of line.
#[derive(Default)]
struct Rare {
    /// Parsed only if an error needs the retry hint.
    idempotency_key: IdempotencyKey,
    request_id: Option<HeaderValue>,
    /// The protocols the client asked to switch to (`Upgrade`), if any.
    upgrade: Option<HeaderValue>,
    /// What the last-good-copy store needs of the request; `None` without a store, and for a
    /// request it has no use for.
    stale: Option<CapturedRequest>,
}

/// The fields the layer reads, found in one walk over the request's fields: a request costs a
/// comparison of each of its field names, not a hashed lookup for every name the layer might
/// read. Several lines of a field are noted, and read in full only then (rarely).
pub(crate) struct Fields<'a> {
    accept: Lines<'a>,
    idempotency_key: Lines<'a>,
    request_id: Option<&'a HeaderValue>,
    upgrade: Option<&'a HeaderValue>,
    content_type: Option<&'a HeaderValue>,
    grpc_timeout: Option<&'a HeaderValue>,
    /// Whether `CDN-Loop` is present: counted only then.
    pub(crate) cdn_loop: bool,
    connection: bool,
    /// `Keep-Alive` or `Proxy-Connection`.
    other_hop_by_hop: bool,
}

/// The bytes of a field name (lowercase, as every `HeaderName` is).
#[inline]
fn bytes(name: &HeaderName) -> &[u8] {
    name.as_str().as_bytes()
}

/// The first line of a field, and whether there are more.
#[derive(Default, Clone, Copy)]
struct Lines<'a> {
    first: Option<&'a HeaderValue>,
    more: bool,
}

impl<'a> Lines<'a> {
    /// Notes one more line; true, for [`Fields::scan`]'s match.
    fn add(&mut self, line: &'a HeaderValue) -> bool {
        match self.first {
            None => self.first = Some(line),
            Some(_) => self.more = true,
        }
        true
    }
}

/// Keeps the first line of a field; true, for [`Fields::scan`]'s match.
fn set<'a>(slot: &mut Option<&'a HeaderValue>, line: &'a HeaderValue) -> bool {
    slot.get_or_insert(line);
    true
}

/// Notes that a field is present; true, for [`Fields::scan`]'s match.
fn mark(present: &mut bool) -> bool {
    *present = true;
    true
}

impl<'a> Fields<'a> {
    /// Walks `headers` once; `request_id` is the configured request id field.
    pub(crate) fn scan(headers: &'a HeaderMap, request_id: &HeaderName) -> Self {
        let mut fields = Fields {
            accept: Lines::default(),
            idempotency_key: Lines::default(),
            request_id: None,
            upgrade: None,
            content_type: None,
            grpc_timeout: None,
            cdn_loop: false,
            connection: false,
            other_hop_by_hop: false,
        };
        let request_id = bytes(request_id);
        for (name, value) in headers {
            // Names are lowercase, standard or not: their length picks the one or two names each
            // could be, and a comparison with a literal of that length (a few loads, not a call)
            // settles it. Most fields are none of these. A test checks each literal against its
            // `HeaderName`.
            let name = bytes(name);
            let read = match name.len() {
                6 => name == b"accept" && fields.accept.add(value),
                7 => name == b"upgrade" && set(&mut fields.upgrade, value),
                8 => name == b"cdn-loop" && mark(&mut fields.cdn_loop),
                10 => match name {
                    b"connection" => mark(&mut fields.connection),
                    b"keep-alive" => mark(&mut fields.other_hop_by_hop),
                    _ => false,
                },
                12 => match name {
                    b"content-type" => set(&mut fields.content_type, value),
                    b"grpc-timeout" => set(&mut fields.grpc_timeout, value),
                    _ => false,
                },
                15 => name == b"idempotency-key" && fields.idempotency_key.add(value),
                16 => name == b"proxy-connection" && mark(&mut fields.other_hop_by_hop),
                _ => false,
            };
            // The configured request id field, when the name is none of the above (it cannot
            // stand for one of them).
            if !read && name.len() == request_id.len() && name == request_id {
                set(&mut fields.request_id, value);
            }
        }
        fields
    }

    /// Whether the request holds a field a proxy does not forward: `Connection` and what it
    /// names, `Keep-Alive`, `Proxy-Connection`, or an `Upgrade` no `Connection` asks for.
    pub(crate) fn has_hop_by_hop(&self) -> bool {
        self.connection || self.other_hop_by_hop || self.upgrade.is_some()
    }
}

impl RequestFacts {
    /// What the answer may need, from `request` and the fields `scan` found in it.
    pub(crate) fn capture<B>(request: &Request<B>, fields: &Fields<'_>, config: &Config) -> Self {
        let headers = request.headers();
        #[cfg(feature = "tower-http")]
        let request_id = request
            .extensions()
            .get::<tower_http::request_id::RequestId>()
            .map(|id| id.header_value())
            .or(fields.request_id)
            .cloned();
        #[cfg(not(feature = "tower-http"))]
        let request_id = fields.request_id.cloned();
        let accept = match fields.accept {
            Lines { first: None, .. } => AcceptSnapshot::Absent,
            Lines {
                first: Some(line),
                more: false,
            } => AcceptSnapshot::One(line.clone()),
            // Several lines are rare: negotiate now rather than keep them all.
            Lines { more: true, .. } => AcceptSnapshot::Decided(negotiate(
                headers.get_all(header::ACCEPT),
                config.default_format,
            )),
        };
        let grpc = fields
            .content_type
            .and_then(|content_type| GrpcCall::detect(content_type, fields.grpc_timeout));
        let stale = match (&config.stale, grpc) {
            (Some(store), None) => store.capture(request),
            _ => None,
        };
        // Tested before anything is built: most requests have none of these.
        let none_rare = fields.idempotency_key.first.is_none()
            && request_id.is_none()
            && fields.upgrade.is_none()
            && stale.is_none();
        let rare = if none_rare {
            None
        } else {
            Some(Recycled::new(Rare {
                idempotency_key: match fields.idempotency_key {
                    Lines { first: None, .. } => IdempotencyKey::Absent,
                    Lines {
                        first: Some(line),
                        more: false,
                    } => IdempotencyKey::One(line.clone()),
                    Lines { more: true, .. } => IdempotencyKey::Several,
                },
                request_id,
                upgrade: fields.upgrade.cloned(),
                stale,
            }))
        };
        RequestFacts {
            accept,
            is_head: request.method() == Method::HEAD,
            idempotent_method: config.retry.is_idempotent(request.method()),
            grpc,
            rare,
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::Started::capture(config.metrics.as_ref(), request.method()),
        }
    }

    /// What the last-good-copy store needs of the request, if it has a use for it.
    pub(crate) fn stale(&self) -> Option<&CapturedRequest> {
        self.rare.as_deref()?.stale.as_ref()
    }

    /// The protocols the client asked to switch to (`Upgrade`), if any.
    pub(crate) fn upgrade(&self) -> Option<&HeaderValue> {
        self.rare.as_deref()?.upgrade.as_ref()
    }

    /// The request's `Idempotency-Key`, as it came.
    pub(crate) fn idempotency_key(&self) -> &IdempotencyKey {
        match self.rare.as_deref() {
            Some(rare) => &rare.idempotency_key,
            None => &IdempotencyKey::Absent,
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
        let id = self.rare.as_deref()?.request_id.as_ref()?.to_str().ok()?;
        let sane = !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic());
        sane.then_some(id)
    }
}

/// The rare parts live in a box used again from one request to the next; it goes back holding
/// none of an old request's bytes.
impl Recycle for Rare {
    fn spare() -> &'static LocalKey<Spare<Self>> {
        thread_local! {
            static SPARE: Spare<Rare> = const { Spare::new() };
        }
        &SPARE
    }

    fn empty(mut self: Pin<&mut Self>) {
        self.set(Rare::default());
    }
}

/// The request's `Accept`, kept so that a successful request never pays for negotiation.
enum AcceptSnapshot {
    Absent,
    One(HeaderValue),
    Decided(Format),
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::grpc::call::GRPC_TIMEOUT;
    use crate::headers::cdn_loop::CDN_LOOP;
    use crate::headers::connection::{KEEP_ALIVE, PROXY_CONNECTION};
    use crate::retry::IDEMPOTENCY_KEY;

    use crate::testing::header_map as map;

    #[test]
    fn one_walk_finds_every_field_the_layer_reads() {
        let request_id = HeaderName::from_static("x-request-id");
        let headers = map(&[
            ("host", "shop.test"),
            ("accept", "text/html"),
            ("content-type", "application/grpc"),
            ("grpc-timeout", "1m"),
            ("idempotency-key", "\"a\""),
            ("x-request-id", "r-1"),
            ("cdn-loop", "other"),
        ]);
        let fields = Fields::scan(&headers, &request_id);
        assert_eq!(fields.accept.first.unwrap(), "text/html");
        assert!(!fields.accept.more);
        assert_eq!(fields.content_type.unwrap(), "application/grpc");
        assert_eq!(fields.grpc_timeout.unwrap(), "1m");
        assert_eq!(fields.idempotency_key.first.unwrap(), "\"a\"");
        assert_eq!(fields.request_id.unwrap(), "r-1");
        assert!(fields.cdn_loop);
        assert!(!fields.has_hop_by_hop());
    }

    #[test]
    fn the_literals_the_walk_compares_are_the_names_of_the_fields() {
        for (name, literal) in [
            (&header::ACCEPT, "accept"),
            (&header::CONTENT_TYPE, "content-type"),
            (&header::CONNECTION, "connection"),
            (&header::UPGRADE, "upgrade"),
            (&CDN_LOOP, "cdn-loop"),
            (&IDEMPOTENCY_KEY, "idempotency-key"),
            (&GRPC_TIMEOUT, "grpc-timeout"),
            (&KEEP_ALIVE, "keep-alive"),
            (&PROXY_CONNECTION, "proxy-connection"),
        ] {
            assert_eq!(name.as_str(), literal);
        }
    }

    #[test]
    fn a_name_as_long_as_one_the_layer_reads_is_none_of_them() {
        let request_id = HeaderName::from_static("x-request-id");
        // Each as long as a name the layer reads, and none of them.
        let headers = map(&[
            ("accepts", "text/html"),
            ("content-typo", "application/grpc"),
            ("connexion", "close"),
            ("upgrades", "websocket"),
            ("cdn-loops", "edge-1"),
            ("x-forwarded-for", "\"a\""),
            ("grpc-timeouts", "1m"),
            ("keep-alivf", "x"),
            ("proxy-connectiom", "x"),
            ("x-request-ie", "r-1"),
        ]);
        let fields = Fields::scan(&headers, &request_id);
        assert!(fields.accept.first.is_none());
        assert!(fields.content_type.is_none());
        assert!(fields.upgrade.is_none());
        assert!(fields.grpc_timeout.is_none());
        assert!(fields.idempotency_key.first.is_none());
        assert!(fields.request_id.is_none());
        assert!(!fields.cdn_loop);
        assert!(!fields.has_hop_by_hop());
    }

    #[test]
    fn several_lines_and_hop_by_hop_fields_are_noted() {
        let request_id = HeaderName::from_static("x-request-id");
        let headers = map(&[
            ("accept", "text/html"),
            ("accept", "application/json"),
            ("idempotency-key", "\"a\""),
            ("idempotency-key", "\"b\""),
        ]);
        let fields = Fields::scan(&headers, &request_id);
        assert!(fields.accept.more);
        assert!(fields.idempotency_key.more);
        assert!(!fields.cdn_loop);
        assert!(!fields.has_hop_by_hop());
        for hop in ["connection", "keep-alive", "proxy-connection", "upgrade"] {
            let headers = map(&[(hop, "x")]);
            assert!(
                Fields::scan(&headers, &request_id).has_hop_by_hop(),
                "{hop}"
            );
        }
    }
}
