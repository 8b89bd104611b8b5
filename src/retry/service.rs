//! [`RetryService`]: the middleware service.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use http::Request;
use tower_service::Service;

use super::attempt::Attempt;
use super::body::{TryCloneBody, try_clone};
use super::future::ResponseFuture;
use super::policy::RetryPolicy;

/// Sends a request again when the [`GatewayErrorService`](crate::GatewayErrorService) inside
/// it says so. Made by [`RetryLayer`](super::RetryLayer), which says how it decides.
///
/// Its response and error are the inner service's: only the answer of the last attempt reaches
/// the caller.
pub struct RetryService<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
    /// Whether the warning that no `GatewayErrorLayer` sees its requests has been given; shared
    /// by the clones of this service.
    warned: Arc<AtomicBool>,
}

impl<S> RetryService<S> {
    pub(super) fn from_parts(inner: S, policy: Arc<RetryPolicy>, warned: Arc<AtomicBool>) -> Self {
        RetryService {
            inner,
            policy,
            warned,
        }
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

impl<S: Clone> Clone for RetryService<S> {
    fn clone(&self) -> Self {
        RetryService::from_parts(self.inner.clone(), self.policy.clone(), self.warned.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for RetryService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for RetryService<S>
where
    S: Service<Request<B>> + Clone,
    B: TryCloneBody,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        self.policy.budget.deposit();
        // The copy is made before the first attempt: the body may be gone once it is sent.
        let mut copy = if self.policy.max_attempts > 1 {
            try_clone(&request)
        } else {
            None
        };
        let attempt = Attempt::first(self.policy.clone(), copy.is_some());
        if let Some(copy) = copy.as_mut() {
            copy.extensions_mut().insert(attempt.clone());
        }
        request.extensions_mut().insert(attempt.clone());
        // The service that was polled ready makes this call; the future keeps it for the next
        // attempts, and `self` keeps a clone that is polled ready for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = inner.call(request);
        ResponseFuture::new(future, inner, copy, attempt, self.warned.clone())
    }
}
