//! [`GatewayErrorService`]: the middleware service.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::BoxError;
use crate::body::{GatewayBody, UploadBody};
use crate::config::Config;
use crate::deadline::{HeadClock, ResponseDeadline};
use crate::error::ProxyError;
use crate::facts::{Fields, RequestFacts};
use crate::future::{Held, ResponseFuture};
use crate::grpc::call::service_and_method;
use crate::headers::cdn_loop::{CDN_LOOP, LoopDetected, count_member};
use crate::kind::ProxyErrorKind;
use crate::layer::GatewayErrorLayer;
use crate::respond::Pending;
use crate::retry::attempt::Attempt;
use crate::trace;
use crate::upload::UploadWatch;

/// Middleware that turns the failures of a proxying service into correct error responses.
///
/// Its error type is [`Infallible`]: every failure of the inner service, in `poll_ready` or in its
/// future, becomes a response. It can go anywhere axum or hyper expects a service.
///
/// Made by [`GatewayErrorLayer`]; see the [crate docs](crate).
pub struct GatewayErrorService<S> {
    inner: S,
    config: Arc<Config>,
    /// The inner service failed in `poll_ready`: the next call answers with this error.
    ready_error: Option<BoxError>,
}

impl<S> GatewayErrorService<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&GatewayErrorLayer::new(), inner)
    }

    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        GatewayErrorService {
            inner,
            config,
            ready_error: None,
        }
    }

    /// The layer with the default configuration.
    pub fn layer() -> GatewayErrorLayer {
        GatewayErrorLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for GatewayErrorService<S> {
    /// A clone for another request: the same inner service and configuration. An error the
    /// inner service gave in `poll_ready` belongs to the call that follows it on this value, so
    /// the clone does not carry it (it polls readiness again itself).
    #[inline]
    fn clone(&self) -> Self {
        // A server clones the service for every request. The inner service is cloned last,
        // straight into its place: an atomic increment (the configuration's count) between its
        // clone and its move would have the compiler copy it there from a temporary.
        GatewayErrorService {
            config: self.config.clone(),
            ready_error: None,
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for GatewayErrorService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayErrorService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GatewayErrorService<S>
where
    S: Service<Request<UploadBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<GatewayBody<ResBody>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready_error.is_none() {
            if let Err(error) = ready!(self.inner.poll_ready(cx)) {
                self.ready_error = Some(error.into());
            }
        }
        Poll::Ready(Ok(()))
    }

    // Kept out of its caller: inlined, the request is first copied whole into the caller's
    // frame, and the success path counts about 150 more instructions
    // (`CONNECTIONS=1 CASE=happy scripts/instructions.sh`).
    #[inline(never)]
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Made by a retry service outside, if there is one: one lookup in a map that is usually
        // empty.
        let attempt = Attempt::find(&request);
        // One walk over the fields finds all the layer reads. Hop-by-hop fields go first, so that
        // everything below reads (and `CDN-Loop` is written into) what the next hop gets: the walk
        // is made again after a removal (rare: most requests carry none).
        let mut fields = Fields::scan(request.headers(), &self.config.request_id_header);
        if fields.has_hop_by_hop() {
            crate::headers::remove_hop_by_hop(request.headers_mut());
            fields = Fields::scan(request.headers(), &self.config.request_id_header);
        }
        let mut facts = RequestFacts::capture(&request, &fields, &self.config);
        let has_cdn_loop = fields.cdn_loop;
        let level = self.config.span_level;
        let (span, elapsed) = match &attempt {
            None => (trace::request_span(level, &request), Duration::ZERO),
            Some(attempt) => attempt.enter(
                || trace::request_span(level, &request),
                &self.config,
                &mut facts,
            ),
        };
        if facts.grpc.is_some() && !span.is_disabled() {
            trace::record_rpc_call(&span, service_and_method(request.uri().path()));
        }
        let config = self.config.clone();
        let ready_error = self.ready_error.take();
        if let Some(threshold) = config.loop_threshold {
            let headers = request.headers_mut();
            let times = if has_cdn_loop {
                count_member(
                    headers.get_all(&CDN_LOOP).iter(),
                    config.proxy_name.as_str().as_bytes(),
                    threshold,
                )
            } else {
                0
            };
            if times >= threshold {
                // Been here before: forwarding it again would go round once more.
                let error = ProxyError::new(ProxyErrorKind::ProxyLoopDetected)
                    .with_source(LoopDetected { times });
                let pending = Pending::new(config, facts, span, None, attempt);
                return ResponseFuture::failed(Box::new(error), pending);
            }
            // RFC 8586: every intermediary appends itself, keeping the members before it.
            headers.append(CDN_LOOP.clone(), config.cdn_loop_member.clone());
        }
        if let Some(error) = ready_error {
            return ResponseFuture::failed(error, Pending::new(config, facts, span, None, attempt));
        }
        // Watched only when there is a body to wait for: a request without one costs nothing here.
        let upload = UploadWatch::start(request.body(), config.client_body_timeout);
        // The clock is read only when a limit needs a start.
        // A later attempt gets what the earlier ones left of each limit.
        let left = |limit: Option<Duration>| limit.map(|limit| limit.saturating_sub(elapsed));
        let response_deadline = left(config.response_deadline).map(ResponseDeadline::start);
        let head = HeadClock::new(
            facts.upstream_timeout(left(config.upstream_timeout)),
            response_deadline,
        );
        let body_upload = upload.clone();
        // The box is filled before the inner service is called: the inner future, made last,
        // then moves once, into the response future, instead of waiting in a temporary while
        // the box is filled.
        let pending = Pending::new(config, facts, span, response_deadline, attempt);
        let held = Held::new(head, pending, upload);
        let future = {
            let _entered = held.span().enter();
            // The request is made again around the watched body right where the inner service
            // takes it: made earlier, it is copied there whole.
            let (parts, body) = request.into_parts();
            self.inner.call(Request::from_parts(
                parts,
                UploadBody::new(body, body_upload),
            ))
        };
        ResponseFuture::waiting(future, held)
    }
}
