//! `[delivery]`: attempt timeouts, the retry schedule and concurrency, for every target
//! that does not say otherwise.

use std::time::Duration;

use serde::Deserialize;

use super::retry::RetryPolicy;
use crate::settings::limits::{ATTEMPTS, BACKOFF_MS, IN_FLIGHT, TIMEOUT_MS};
use crate::settings::{ConfigError, in_range, invalid};

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub retry: RetryPolicy,
    pub max_in_flight: usize,
    /// How long a delivery stays leased to one worker; `None` = each target's timeout plus
    /// a margin.
    pub lease: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    timeout_ms: u64,
    max_attempts: u32,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    backoff_multiplier: f64,
    jitter: f64,
    max_in_flight: usize,
    lease_ms: Option<u64>,
}

impl DeliveryConfig {
    pub fn parse(d: RawDelivery) -> Result<DeliveryConfig, ConfigError> {
        in_range("delivery.timeout_ms", d.timeout_ms, 1, TIMEOUT_MS)?;
        in_range("delivery.max_attempts", d.max_attempts.into(), 1, ATTEMPTS)?;
        in_range(
            "delivery.backoff_initial_ms",
            d.backoff_initial_ms,
            1,
            BACKOFF_MS,
        )?;
        in_range("delivery.backoff_max_ms", d.backoff_max_ms, 1, BACKOFF_MS)?;
        in_range(
            "delivery.max_in_flight",
            d.max_in_flight as u64,
            1,
            IN_FLIGHT,
        )?;
        if let Some(ms) = d.lease_ms {
            in_range("delivery.lease_ms", ms, 1, 2 * TIMEOUT_MS)?;
        }
        if d.backoff_max_ms < d.backoff_initial_ms {
            return Err(invalid(
                "delivery.backoff_max_ms",
                "must be at least delivery.backoff_initial_ms",
            ));
        }
        if !(1.0..=100.0).contains(&d.backoff_multiplier) {
            return Err(invalid(
                "delivery.backoff_multiplier",
                format!("{} is out of range: from 1 to 100", d.backoff_multiplier),
            ));
        }
        if !(0.0..=1.0).contains(&d.jitter) {
            return Err(invalid(
                "delivery.jitter",
                format!("{} is out of range: from 0 to 1", d.jitter),
            ));
        }
        Ok(DeliveryConfig {
            timeout: Duration::from_millis(d.timeout_ms),
            max_attempts: d.max_attempts,
            retry: RetryPolicy {
                initial: Duration::from_millis(d.backoff_initial_ms),
                max: Duration::from_millis(d.backoff_max_ms),
                multiplier: d.backoff_multiplier,
                jitter: d.jitter,
            },
            max_in_flight: d.max_in_flight,
            lease: d.lease_ms.map(Duration::from_millis),
        })
    }
}
