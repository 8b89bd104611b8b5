//! The body and head of a generated error in the form the caller gets: the negotiated format, or
//! gRPC's own answer. Built once and kept where the answer depends on its form, kind and retry
//! hint alone.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};

use super::head::{ErrorHead, Keep, grpc_reused, with_member};
use crate::cache::Answer;
use crate::grpc::GrpcCode;
use crate::grpc::answer::{self as grpc_answer, GrpcStatus};
use crate::grpc::call::GrpcCall;
use crate::negotiate::Format;
use crate::render::ErrorView;

/// The body in the negotiated format, and its head; `detailed` is our `Proxy-Status` member with
/// its details, if any.
pub(super) fn answer_negotiated(
    head: &ErrorHead<'_>,
    view: &ErrorView<'_>,
    retryable: bool,
    detailed: Option<HeaderValue>,
) -> (Bytes, HeaderMap) {
    let config = head.config;
    let format = head.format;
    let keep = if view.request_id.is_some() || config.templates.has_renderer() {
        Keep::Never
    } else {
        head.keep()
    };
    let build = |detailed: Option<HeaderValue>| {
        let body = config.templates.render(view, format);
        let headers = head.headers(&body, detailed);
        Answer { body, headers }
    };
    // A clone of the kept head costs the map's two allocations and no hashing.
    let kept = match keep {
        Keep::Never => {
            let built = build(detailed);
            return (built.body, built.headers);
        }
        Keep::BySlot => config
            .answers
            .get_or_build(format.index(), head.kind, retryable, || build(None)),
        Keep::ByDelay(seconds) => config.answers.get_or_build_delayed(
            format.index(),
            head.kind,
            retryable,
            seconds,
            || build(None),
        ),
    };
    (
        kept.body.clone(),
        with_member(kept.headers.clone(), detailed),
    )
}

/// A gRPC caller's answer ([`grpc_answer::body`], [`ErrorHead::grpc_headers`]): the error in
/// gRPC's own fields, with the same `Proxy-Status` and `Retry-After` as any generated error.
pub(super) fn answer_grpc(
    head: &ErrorHead<'_>,
    call: GrpcCall,
    code: GrpcCode,
    detail: &str,
    detailed: Option<HeaderValue>,
) -> (Bytes, HeaderMap) {
    let build = |detailed: Option<HeaderValue>| {
        // The delay the caller is told, an origin's own on a rewrite included.
        let pushback = head
            .retry_after_sent()
            .map(|after| after.delay_from(SystemTime::now()));
        let status = GrpcStatus::new(code, detail, pushback);
        let body = grpc_answer::body(call, &status);
        let headers = head.grpc_headers(call, &status, &body, detailed);
        Answer { body, headers }
    };
    // Kept once per framing, not per retry hint: a gRPC answer does not state the hint.
    let form = Format::ALL.len() + call.framing_index();
    let answers = &head.config.answers;
    let kept = match head.keep() {
        Keep::Never => {
            let built = build(detailed);
            return (built.body, built.headers);
        }
        Keep::BySlot => answers.get_or_build(form, head.kind, false, || build(None)),
        Keep::ByDelay(seconds) => {
            answers.get_or_build_delayed(form, head.kind, false, seconds, || build(None))
        }
    };
    (
        kept.body.clone(),
        grpc_reused(kept.headers.clone(), call, detailed),
    )
}
