//! `Retry-After` (RFC 9110 §10.2.3): a delay in seconds, or a date.

use std::time::{Duration, SystemTime};

use http::HeaderValue;

/// A `Retry-After` value: a delay in seconds or an HTTP-date.
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::retry::RetryAfter;
///
/// let after = RetryAfter::from(Duration::from_secs(30));
/// assert_eq!(after.to_header_value(), "30");
/// assert_eq!(RetryAfter::parse(b"120"), Some(RetryAfter::Delay(Duration::from_secs(120))));
/// assert!(RetryAfter::parse(b"Sun, 06 Nov 1994 08:49:37 GMT").is_some());
/// assert_eq!(RetryAfter::parse(b"soon"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// Retry after this long (written in whole seconds, rounded up).
    Delay(Duration),
    /// Retry after this moment.
    At(SystemTime),
}

impl RetryAfter {
    /// Parses a `Retry-After` field value: `delay-seconds` or an HTTP-date. Anything else is `None`.
    pub fn parse(value: &[u8]) -> Option<RetryAfter> {
        let value = value.trim_ascii();
        if !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit) {
            let seconds = std::str::from_utf8(value).ok()?.parse::<u64>().ok()?;
            return Some(RetryAfter::Delay(Duration::from_secs(seconds)));
        }
        if value.len() > 64 {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?;
        httpdate::parse_http_date(text).ok().map(RetryAfter::At)
    }

    /// How long from `now` until a retry is advised (zero for a date in the past).
    pub fn delay_from(&self, now: SystemTime) -> Duration {
        match *self {
            RetryAfter::Delay(delay) => delay,
            RetryAfter::At(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        }
    }

    /// The advised delay from `now` in whole seconds, rounded up (a retry is never advised
    /// early), as `Retry-After` and the `{retry_after}` placeholder state it.
    pub fn seconds_from(&self, now: SystemTime) -> u64 {
        let delay = self.delay_from(now);
        delay
            .as_secs()
            .saturating_add(u64::from(delay.subsec_nanos() > 0))
    }

    /// The header value: whole seconds (rounded up), or an IMF-fixdate.
    pub fn to_header_value(&self) -> HeaderValue {
        match *self {
            RetryAfter::Delay(_) => HeaderValue::from(self.seconds_from(SystemTime::now())),
            RetryAfter::At(at) => HeaderValue::from_str(&httpdate::fmt_http_date(at))
                .expect("an HTTP-date is visible ASCII"),
        }
    }
}

impl From<Duration> for RetryAfter {
    fn from(delay: Duration) -> Self {
        RetryAfter::Delay(delay)
    }
}

impl From<SystemTime> for RetryAfter {
    fn from(at: SystemTime) -> Self {
        RetryAfter::At(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_rejects_garbage() {
        assert_eq!(
            RetryAfter::Delay(Duration::from_millis(1500)).to_header_value(),
            "2"
        );
        assert_eq!(RetryAfter::parse(b"99999999999999999999999"), None);
        assert_eq!(RetryAfter::parse(b"-1"), None);
        assert_eq!(RetryAfter::parse(b""), None);
        assert_eq!(RetryAfter::parse(&[0xff, 0xfe]), None);
    }
}
