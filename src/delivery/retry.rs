//! Retry decisions: pure functions from an attempt's [`Verdict`] to what happens next.
//!
//! A verdict says nothing of how the output speaks (each output maps its own answers, e.g.
//! HTTP statuses in [`super::outputs::http`]): delivered; gone, which is dead at once; or
//! retry, on an exponential schedule with jitter, honouring the receiver's "retry after",
//! until `max_attempts`, after which the delivery is dead. No I/O and no clock reads here: the
//! worker passes `now` and a random number in, so every rule is table-tested.

use std::time::Duration;

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
        assert_eq!(next_step(Verdict::Gone, 1, 12, &policy(), 0.5), Next::Dead);
        let retry = Verdict::Retry { retry_after: None };
        assert!(matches!(
            next_step(retry, 1, 12, &policy(), 0.5),
            Next::RetryIn(_)
        ));
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
