//! One delivery attempt: hand the message to the target's output, record what happened.
//!
//! The message is the canonical event as JSON (with `raw` when the target wants it); how it
//! travels is the output's business ([`super::outputs`]). What the answer means for the
//! delivery is decided by the pure rules in [`super::retry`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, watch};

use super::outputs::{Outbound, Output};
use super::retry::{Next, RetryPolicy, next_step};
use crate::clock::Clock;
use crate::delivery::target::Target;
use crate::metrics::{AttemptResult, Metrics};
use crate::store::{AttemptRecord, ClaimedDelivery, Completion, Store};
use crate::telemetry::chain;

pub(super) struct Attempt {
    pub target: Arc<Target>,
    pub output: Arc<dyn Output>,
    pub store: Arc<dyn Store>,
    pub retry: RetryPolicy,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Counts results recorded, for whoever waits on them.
    pub recorded: Arc<watch::Sender<u64>>,
    pub delivery: ClaimedDelivery,
}

impl Attempt {
    /// What every line about attempt `attempt` of this delivery is logged within.
    fn span(&self, attempt: u32) -> tracing::Span {
        tracing::info_span!(
            "delivery_attempt",
            target = %self.target.name,
            delivery_id = %self.delivery.id,
            event_id = %self.delivery.event_id,
            attempt,
        )
    }

    /// Returns when this delivery falls due again (unix ms), if it stays pending: its retry
    /// time, or the end of its lease if the result could not be recorded.
    ///
    /// `slot` is the target's attempt slot: it is released as soon as the target has
    /// answered, so recording the result does not hold back the next attempt (the lease
    /// keeps the delivery from being claimed again meanwhile).
    pub async fn run(self, slot: OwnedSemaphorePermit) -> Option<i64> {
        let attempt = self.delivery.attempts + 1;
        let started_at_ms = self.clock.now_ms();
        let started = Instant::now();
        let answer = self
            .output
            .send(Outbound {
                event_id: &self.delivery.event_id,
                body: self.target.shape.body(&self.delivery),
                content_type: self.target.shape.format.content_type(),
                canonical: &self.delivery.body,
            })
            .await;
        let duration_ms = started.elapsed().as_millis() as i64;
        drop(slot);

        let next = next_step(
            answer.verdict,
            attempt,
            self.target.max_attempts,
            &self.retry,
            rand::random(),
        );
        let error = answer.error.as_deref().unwrap_or("");
        let (completion, result) = match next {
            Next::Delivered => (Completion::Delivered, AttemptResult::Delivered),
            Next::RetryIn(delay) => (
                Completion::RetryAt {
                    unix_ms: self.clock.now_ms() + delay.as_millis() as i64,
                },
                AttemptResult::Retry {
                    retry_in: delay,
                    error,
                },
            ),
            Next::Dead => (
                Completion::Dead,
                AttemptResult::Dead {
                    error,
                    max_attempts: self.target.max_attempts,
                },
            ),
        };
        let delivered = matches!(result, AttemptResult::Delivered);
        let attempted = || {
            self.metrics.attempted(
                &self.target.name,
                result,
                Duration::from_millis(duration_ms as u64),
                answer.status,
                self.delivery.received_at,
                self.delivery.occurred_at,
            )
        };
        // A delivered attempt logs only at debug (from `metrics`): at the usual info level
        // its span would be made (fields formatted, allocated) for no line at all, 2% of
        // the gateway's CPU under load.
        if delivered && !tracing::enabled!(target: "sessiongate::metrics", tracing::Level::DEBUG) {
            attempted();
        } else {
            self.span(attempt).in_scope(attempted);
        }
        let record = AttemptRecord {
            delivery_id: self.delivery.id.clone(),
            lease_token: self.delivery.lease_token,
            attempt,
            started_at_ms,
            duration_ms,
            status_code: answer.status,
            error: answer.error,
            next: completion,
        };
        match self.store.finish_attempt(record).await {
            Ok(()) => {
                self.recorded.send_modify(|n| *n += 1);
                match completion {
                    Completion::RetryAt { unix_ms } => Some(unix_ms),
                    Completion::Delivered | Completion::Dead => None,
                }
            }
            Err(e) => {
                // The lease expires and the delivery is attempted again: a repeat, not a loss.
                self.span(attempt).in_scope(|| {
                    tracing::error!(error = %chain(&e), "Failed to record a delivery attempt; it will be repeated")
                });
                Some(self.clock.now_ms() + self.target.lease.as_millis() as i64)
            }
        }
    }
}
