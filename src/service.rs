//! [`GatewayError`]: the middleware service.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::GatewayBody;
use crate::future::ResponseFuture;
use crate::grpc;
use crate::layer::{Config, GatewayErrorLayer};
use crate::respond::RequestFacts;
use crate::trace;
use crate::BoxError;

/// Middleware that turns the failures of a proxying service into correct error responses.
///
/// Its error type is [`Infallible`]: every failure of the inner service, in `poll_ready` or in its
/// future, becomes a response. It can go anywhere axum or hyper expects a service.
///
/// Made by [`GatewayErrorLayer`]; see the [crate docs](crate).
pub struct GatewayError<S> {
    inner: S,
    config: Arc<Config>,
    /// The inner service failed in `poll_ready`: the next call answers with this error.
    ready_error: Option<BoxError>,
}

impl<S> GatewayError<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&GatewayErrorLayer::new(), inner)
    }

    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        GatewayError {
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

impl<S: Clone> Clone for GatewayError<S> {
    fn clone(&self) -> Self {
        GatewayError {
            inner: self.inner.clone(),
            config: self.config.clone(),
            ready_error: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for GatewayError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayError")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GatewayError<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
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

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let facts = RequestFacts::capture(&request, &self.config);
        let span = trace::request_span(self.config.span_level, &request);
        let timeout = facts.upstream_timeout(self.config.upstream_timeout);
        if facts.grpc().is_some() && !span.is_disabled() {
            grpc::record_call(&span, request.uri().path());
        }
        let config = self.config.clone();
        match self.ready_error.take() {
            Some(error) => ResponseFuture::failed(error, config, facts, span),
            None => {
                let future = {
                    let _entered = span.enter();
                    self.inner.call(request)
                };
                ResponseFuture::new(future, timeout, config, facts, span)
            }
        }
    }
}
