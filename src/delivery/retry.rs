//! Retry decisions: pure functions from an attempt's result to what happens next.
//!
//! 2xx is delivered; 410 Gone is dead at once (the receiver says the endpoint is gone for
//! good); anything else (status, timeout, connection error) is retried on an
//! exponential schedule with jitter, honouring `Retry-After` on 429 and 503, until
//! `max_attempts`, after which the delivery is dead. No I/O and no clock reads here: the
//! worker passes `now` and a random number in, so every rule is table-tested.

use std::time::{Duration, SystemTime};

/// The backoff schedule between attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// No delay is longer than this, `Retry-After` included.
    pub max: Duration,
    /// Each further failure multiplies the delay by this.
    pub multiplier: f64,
    /// Spread: each delay is scaled by a random factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The delay after `failed_attempts` (≥ 1) failures. `random` is uniform in `[0, 1)`.
    pub fn delay(
        &self,
        failed_attempts: u32,
        retry_after: Option<Duration>,
        random: f64,
    ) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let jittered = base * (1.0 + self.jitter * (2.0 * random - 1.0));
        let max = self.max.as_secs_f64();
        let chosen = jittered.min(max).max(0.0);
        let chosen = match retry_after {
            Some(after) => chosen.max(after.as_secs_f64().min(max)),
            None => chosen,
        };
        Duration::from_secs_f64(chosen)
    }
}

/// What one attempt's answer means, before the attempt budget is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 410: the receiver will never take it; no further attempts.
    Gone,
    Retry {
        retry_after: Option<Duration>,
    },
}

/// Classifies a received HTTP status. Transport errors and timeouts are
/// `Verdict::Retry { retry_after: None }`.
pub fn classify_status(status: u16, retry_after: Option<&str>, now: SystemTime) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        429 | 503 => Verdict::Retry {
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        _ => Verdict::Retry { retry_after: None },
    }
}

/// `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 section 10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::from(date.with_timezone(&chrono::Utc));
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Delivered,
    RetryIn(Duration),
    Dead,
}

/// Decides the next step after attempt number `attempts_made` (counting this one).
pub fn next_step(
    verdict: Verdict,
    attempts_made: u32,
    max_attempts: u32,
    policy: &RetryPolicy,
    random: f64,
) -> Next {
    match verdict {
        Verdict::Delivered => Next::Delivered,
        Verdict::Gone => Next::Dead,
        Verdict::Retry { .. } if attempts_made >= max_attempts => Next::Dead,
        Verdict::Retry { retry_after } => {
            Next::RetryIn(policy.delay(attempts_made, retry_after, random))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_is_dead_at_once_whatever_the_budget() {
        let now = SystemTime::now();
        assert_eq!(classify_status(410, None, now), Verdict::Gone);
        assert_eq!(next_step(Verdict::Gone, 1, 12, &policy(), 0.5), Next::Dead);
        for other in [400, 404, 409, 500] {
            assert!(matches!(
                next_step(classify_status(other, None, now), 1, 12, &policy(), 0.5),
                Next::RetryIn(_)
            ));
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(3600),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = policy();
        let mid = 0.5; // no jitter
        let table = [
            (1, 10),
            (2, 20),
            (3, 40),
            (4, 80),
            (9, 2560),
            (10, 3600),
            (40, 3600),
        ];
        for (failed, secs) in table {
            assert_eq!(
                p.delay(failed, None, mid),
                Duration::from_secs(secs),
                "after {failed}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let p = policy();
        assert_eq!(p.delay(1, None, 0.0), Duration::from_secs(8));
        let top = p.delay(1, None, 0.999_999);
        assert!(top > Duration::from_millis(11_999) && top <= Duration::from_secs(12));
    }

    #[test]
    fn retry_after_lengthens_but_never_passes_the_cap() {
        let p = policy();
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(120)), 0.5),
            Duration::from_secs(120)
        );
        assert_eq!(
            p.delay(3, Some(Duration::from_secs(1)), 0.5),
            Duration::from_secs(40)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(86_400)), 0.5),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn statuses_are_classified() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let table = [
            (200, None, Verdict::Delivered),
            (204, None, Verdict::Delivered),
            (299, None, Verdict::Delivered),
            (301, None, Verdict::Retry { retry_after: None }),
            (400, None, Verdict::Retry { retry_after: None }),
            (410, Some("5"), Verdict::Gone),
            (404, None, Verdict::Retry { retry_after: None }),
            (500, Some("5"), Verdict::Retry { retry_after: None }),
            (
                429,
                Some("7"),
                Verdict::Retry {
                    retry_after: Some(Duration::from_secs(7)),
                },
            ),
            (503, Some("nonsense"), Verdict::Retry { retry_after: None }),
            (503, None, Verdict::Retry { retry_after: None }),
        ];
        for (status, header, verdict) in table {
            assert_eq!(
                classify_status(status, header, now),
                verdict,
                "{status} {header:?}"
            );
        }
    }

    #[test]
    fn retry_after_accepts_http_dates() {
        let now =
            SystemTime::from(chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap());
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
    }

    #[test]
    fn the_attempt_budget_ends_in_dead() {
        let p = policy();
        let retry = Verdict::Retry { retry_after: None };
        assert_eq!(
            next_step(Verdict::Delivered, 12, 12, &p, 0.5),
            Next::Delivered
        );
        assert_eq!(
            next_step(retry, 1, 12, &p, 0.5),
            Next::RetryIn(Duration::from_secs(10))
        );
        assert_eq!(
            next_step(retry, 11, 12, &p, 0.5),
            Next::RetryIn(Duration::from_secs(3600))
        );
        assert_eq!(next_step(retry, 12, 12, &p, 0.5), Next::Dead);
        assert_eq!(next_step(retry, 1, 1, &p, 0.5), Next::Dead);
    }
}
