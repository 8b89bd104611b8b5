//! What a request's future, then its body, reports to the table when it ends.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use http::StatusCode;

use crate::classify::classify;
use crate::deadline;
use crate::kind::ProxyErrorKind;

use super::attempt::Attempt;
use super::state::{Admission, Cause, Outcome, Table};

/// A request's place in the table: the admission its outcome is recorded against, and its key.
pub(crate) struct Record<T> {
    table: Arc<Table>,
    hash: u64,
    admission: Admission,
    key: Named<T>,
}

/// A key with its `Display`, taken where the bound is known: the future and the body that hold it
/// are dropped where it is not.
struct Named<T> {
    key: T,
    display: fn(&T, &mut fmt::Formatter<'_>) -> fmt::Result,
}

impl<T> fmt::Display for Named<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.display)(&self.key, f)
    }
}

impl<T: fmt::Display> Record<T> {
    pub(crate) fn new(table: Arc<Table>, hash: u64, admission: Admission, key: T) -> Self {
        Record {
            table,
            hash,
            admission,
            key: Named {
                key,
                display: <T as fmt::Display>::fmt,
            },
        }
    }
}

impl<T> Record<T> {
    /// The response head arrived with `status`; `empty` says whether its body is already over.
    /// Returns the record for the body, if its end still matters.
    ///
    /// A probe is decided here: the upstream answered. Any other request is a success only once
    /// its body has ended well (at once for an empty body), so that a body that breaks counts
    /// as a failure that no head's success has just undone.
    pub(crate) fn head(self, status: StatusCode, empty: bool) -> Option<Self> {
        let attempt = Attempt {
            status: Some(status),
            kind: None,
            error: None,
            after_head: false,
        };
        if self.table.settings().is_failure(&attempt) {
            self.table.record(
                self.admission,
                self.hash,
                Outcome::Failure(Cause::Status(status)),
                &self.key,
            );
            return None;
        }
        let decided_now = empty
            || matches!(
                self.admission,
                Admission::Probe { .. } | Admission::Bystander { .. }
            );
        if !decided_now {
            return Some(self);
        }
        let next = self
            .table
            .record(self.admission, self.hash, Outcome::Success, &self.key)?;
        (!empty).then_some(Record {
            admission: next,
            ..self
        })
    }

    /// The body ended well: a success.
    pub(crate) fn ended(self) {
        self.table
            .record(self.admission, self.hash, Outcome::Success, &self.key);
    }

    /// The request failed with `error`: before the head, or after it (the body broke off).
    pub(crate) fn failed(self, error: &(dyn StdError + 'static), after_head: bool) {
        let classification = classify(&self.table.settings().classifiers, error);
        if !after_head && !classification.fault().is_upstream() {
            // The client's own doing (its upload stalled or broke off) or the gateway's: never
            // the upstream's failure, whatever rule is set.
            self.table
                .record(self.admission, self.hash, Outcome::Neutral, &self.key);
            return;
        }
        let kind = classification.kind();
        let kind = if after_head { body_kind(kind) } else { kind };
        self.judge(Attempt {
            status: None,
            kind,
            error: Some(error),
            after_head,
        });
    }

    /// The future or body was dropped before it ended: one of the operator's limits ran out
    /// while the gateway waited on the origin (a failure of the upstream), or its client went
    /// away, or a limit the client set or used up ran out (a gRPC caller's own deadline, a
    /// response deadline spent on a client that reads slowly): nothing to say about the upstream.
    pub(crate) fn dropped(self, after_head: bool) {
        match deadline::dropped_for() {
            Some(timed_out) if timed_out.is_upstreams() => self.judge(Attempt {
                status: None,
                kind: Some(timed_out.kind()),
                error: Some(&timed_out),
                after_head,
            }),
            _ => {
                self.table
                    .record(self.admission, self.hash, Outcome::Neutral, &self.key);
            }
        }
    }

    /// The table its outcome goes to.
    pub(crate) fn table(&self) -> &Arc<Table> {
        &self.table
    }

    fn judge(self, attempt: Attempt<'_>) {
        let outcome = if self.table.settings().is_failure(&attempt) {
            Outcome::Failure(attempt.kind.map_or(Cause::Unrecognized, Cause::Kind))
        } else {
            Outcome::Neutral
        };
        self.table
            .record(self.admission, self.hash, outcome, &self.key);
    }
}

/// The kind of a body's error: a timeout stays one; anything else cut the response short.
fn body_kind(kind: Option<ProxyErrorKind>) -> Option<ProxyErrorKind> {
    match kind {
        Some(
            timeout @ (ProxyErrorKind::ConnectionReadTimeout | ProxyErrorKind::HttpResponseTimeout),
        ) => Some(timeout),
        _ => Some(ProxyErrorKind::HttpResponseIncomplete),
    }
}
