//! A stored copy answering in place of an error (RFC 5861 `stale-if-error`): the layer's own
//! error, or an origin's that the copy's origin or the operator lets a copy hide.

use std::error::Error as StdError;

use http::{Response, StatusCode};

use super::Pending;
use super::head::{Generated, detailed_member, plain_member};
use crate::body::GatewayBody;
use crate::classify::classification::Classification;
use crate::error::ProxyError;
use crate::kind::Phase;
use crate::stale::{FromCopy, Hides, StaleIfError};
use crate::trace;

/// An origin error a copy answers in place of, when one may: a copy whose origin sent
/// `stale-if-error`, or any copy for a status the operator names (see
/// [`StaleIfError::answer_origin_errors`](crate::stale::StaleIfError::answer_origin_errors)).
pub(super) fn origin_error_from_copy<B>(
    pending: &Pending,
    status: StatusCode,
) -> Option<Response<GatewayBody<B>>> {
    if pending.config.stale.is_none()
        || pending.facts.stale.is_none()
        || !StaleIfError::may_hide(status, None)
    {
        return None;
    }
    let error = ProxyError::from_classification(
        Classification::unrecognized()
            .with_status(status)
            .with_phase(Phase::MaybeSent),
    );
    from_copy(pending, error, Some(status), Hides::OriginError(status)).ok()
}

/// A stale copy in place of the error the layer would answer a GET or HEAD with (a 500, 502,
/// 503 or 504, RFC 5861's errors), when the store has one that may answer; else the error,
/// untouched. `received` is the origin's status when the error stands for one.
pub(super) fn from_copy<B>(
    pending: &Pending,
    error: ProxyError,
    received: Option<StatusCode>,
    hides: Hides,
) -> Result<Response<GatewayBody<B>>, ProxyError> {
    let (Some(store), Some(request)) = (&pending.config.stale, &pending.facts.stale) else {
        return Err(error);
    };
    let hidden = error.status();
    // A copy stands in only for the upstream's failure: never for what a client did.
    if !error.fault().is_upstream() || !StaleIfError::may_hide(hidden, error.kind()) {
        return Err(error);
    }
    let Some(answer) = store.answer(request, hides) else {
        return Err(error);
    };
    let config = &pending.config;
    let kind = error.kind();
    let plain = || plain_member(config, kind, received);
    let member = detailed_member(config, &error, received, plain).unwrap_or_else(plain);
    let age = answer.age;
    let (sent, headers, body) = answer.into_parts(&config.proxy_status.get(None), member, hidden);
    trace::record_stale(
        &pending.span,
        &trace::StaleAnswer {
            error_type: match kind {
                Some(kind) => kind.token(),
                None => hidden.as_str(),
            },
            sent,
            age,
            cause: StdError::source(&error),
        },
    );
    #[cfg(feature = "metrics")]
    crate::metrics::stale_served(
        config.metrics.as_ref(),
        pending.facts.metrics.as_ref(),
        sent,
        kind,
        hidden,
    );
    let mut response = Response::new(GatewayBody::generated(body));
    *response.status_mut() = sent;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(FromCopy::new(age, error));
    // An outer layer leaves it alone, as it leaves a generated error.
    response.extensions_mut().insert(Generated);
    Ok(response)
}
