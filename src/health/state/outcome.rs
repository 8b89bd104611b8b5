//! What the table tells a request ([`Admission`], [`Refusal`]), what it is told when the request
//! ends ([`Outcome`], [`Cause`]), and why an upstream is marked unavailable ([`Trip`]).

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::kind::ProxyErrorKind;

use super::word::Phase;

/// What a request is allowed to do, and what its outcome will be recorded against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Forwarded; the key has no slot (it has not failed lately).
    Untracked,
    /// Forwarded while closed, under `epoch`.
    Closed { slot: u32, epoch: u32 },
    /// Forwarded as the one probe of a half-open upstream.
    Probe { slot: u32, epoch: u32 },
    /// Forwarded although the upstream is marked unavailable (the layer forwards anyway).
    Bystander { slot: u32, epoch: u32, phase: Phase },
    /// Not forwarded: the upstream is marked unavailable.
    Refused(Refusal),
}

/// A request refused because its upstream is marked unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The whole seconds until a probe may go, at least one.
    pub(crate) retry_after: Duration,
    pub(crate) phase: Phase,
}

/// Why a request counted as a failure, as events state it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    Kind(ProxyErrorKind),
    Status(StatusCode),
    /// The failure rule counted an error the classifier does not recognise.
    Unrecognized,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Kind(kind) => f.write_str(kind.token()),
            Cause::Status(status) => write!(f, "origin status {}", status.as_u16()),
            Cause::Unrecognized => f.write_str("an unrecognised error"),
        }
    }
}

/// How one request to an upstream ended, as the table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The upstream answered (a response head that is not counted as a failure).
    Success,
    /// A failure of the upstream.
    Failure(Cause),
    /// Says nothing about the upstream: the client went away, or the error was not the
    /// upstream's. Releases a probe.
    Neutral,
}

/// Why an upstream was marked unavailable, or stays so.
pub(super) enum Trip {
    Consecutive {
        failures: u32,
        last: Cause,
    },
    Ratio {
        failures: u32,
        requests: u32,
        last: Cause,
    },
    ProbeFailed(Cause),
    ProbeUnanswered(Duration),
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trip::Consecutive { failures, last } => {
                write!(f, "{failures} consecutive failures, the last {last}")
            }
            Trip::Ratio {
                failures,
                requests,
                last,
            } => write!(
                f,
                "{failures} failures in the last {requests} requests, the last {last}"
            ),
            Trip::ProbeFailed(cause) => write!(f, "the probe failed: {cause}"),
            Trip::ProbeUnanswered(after) => {
                write!(f, "the probe got no answer within {after:?}")
            }
        }
    }
}

/// `duration` rounded up to whole seconds, and at least one: what `Retry-After` can state.
pub(super) fn whole_seconds(duration: Duration) -> Duration {
    let seconds = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    Duration::from_secs(seconds.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn whole_seconds_round_up_and_are_never_zero() {
        assert_eq!(whole_seconds(Duration::ZERO), SECOND);
        assert_eq!(whole_seconds(Duration::from_nanos(1)), SECOND);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2 * SECOND);
        assert_eq!(whole_seconds(10 * SECOND), 10 * SECOND);
    }
}
