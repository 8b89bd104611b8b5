//! What the breaker tells operators: the event of each transition, and the key's name as events
//! show it (bounded, since a key can come from a request).

use std::fmt::{self, Write as _};
use std::time::Duration;

use tracing::Level;

use crate::trace::TARGET;

use super::word::Phase;

/// The most bytes of a key's name that events show.
pub(super) const MAX_NAME: usize = 200;

/// Displays at most [`MAX_NAME`] bytes of a name, cut at a character boundary, with `...` where
/// it was cut.
pub(super) struct Bounded<'a>(pub(super) &'a dyn fmt::Display);

impl fmt::Display for Bounded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Cut<'a, 'b> {
            out: &'a mut fmt::Formatter<'b>,
            left: usize,
            cut: bool,
        }
        impl fmt::Write for Cut<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                if self.cut {
                    return Ok(());
                }
                if s.len() <= self.left {
                    self.left -= s.len();
                    return self.out.write_str(s);
                }
                let mut end = self.left;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                self.cut = true;
                self.out.write_str(&s[..end])?;
                self.out.write_str("...")
            }
        }
        let mut cut = Cut {
            out: f,
            left: MAX_NAME,
            cut: false,
        };
        write!(cut, "{}", self.0)
    }
}

/// The event every transition emits.
pub(super) fn transition_event(
    name: &str,
    to: Phase,
    reason: &dyn fmt::Display,
    open_for: Option<Duration>,
) {
    let message = match to {
        Phase::Open => "upstream marked unavailable",
        Phase::HalfOpen => "upstream open time over: probing",
        Phase::Closed => "upstream available again",
    };
    tracing::event!(
        target: TARGET,
        Level::WARN,
        gateway.upstream = name,
        gateway.upstream_state = to.as_str(),
        reason = %reason,
        gateway.open_ms = open_for.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        "{message}",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded() {
        let long = "é".repeat(300);
        let shown = Bounded(&long).to_string();
        assert!(shown.len() <= MAX_NAME + 3, "{}", shown.len());
        assert!(shown.ends_with("..."));
        assert_eq!(Bounded(&"short").to_string(), "short");
    }
}
