//! One delivery attempt: build the request, send it, record what happened.
//!
//! The request is the canonical event as JSON (with `raw` when the target wants it), the
//! target's static headers, and Standard Webhooks signature headers when the target has a
//! secret (`webhook-id` is the event id, so a receiver can de-duplicate retries). What the
//! answer means is decided by the pure rules in [`super::retry`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tokio::sync::OwnedSemaphorePermit;

use super::retry::{Next, RetryPolicy, Verdict, classify_status, next_step};
use crate::config::Target;
use crate::error::chain;
use crate::event::with_raw;
use crate::metrics::{AttemptResult, Metrics};
use crate::store::{AttemptRecord, ClaimedDelivery, Completion, Store, now_ms};

/// How much of an error response body is kept in `last_error`.
const ERROR_BODY_BYTES: usize = 256;

/// The one HTTP client all targets share (connection pools are per host inside it).
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(format!("sessiongate/{}", crate::VERSION))
        // A redirect is not an acknowledgement; it is retried like any non-2xx.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .build()
        .context("Failed to build the delivery HTTP client")
}

/// The body a target receives for a delivery.
pub fn body_for(target: &Target, delivery: &ClaimedDelivery) -> Vec<u8> {
    if target.include_raw {
        with_raw(&delivery.body, &delivery.raw)
    } else {
        delivery.body.as_bytes().to_vec()
    }
}

pub(super) struct Job {
    pub target: Arc<Target>,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub retry: RetryPolicy,
    pub metrics: Arc<Metrics>,
    pub delivery: ClaimedDelivery,
}

/// What the receiver answered, as far as the retry rules and the record care.
struct Answer {
    verdict: Verdict,
    status: Option<u16>,
    error: Option<String>,
}

impl Job {
    #[tracing::instrument(
        name = "delivery_attempt",
        skip_all,
        fields(
            target = %self.target.name,
            delivery_id = %self.delivery.id,
            event_id = %self.delivery.event_id,
            attempt = self.delivery.attempts + 1,
        )
    )]
    /// Returns when this delivery falls due again (unix ms), if it stays pending: its retry
    /// time, or the end of its lease if the result could not be recorded.
    ///
    /// `slot` is the target's attempt slot: it is released as soon as the target has
    /// answered, so recording the result does not hold back the next attempt (the lease
    /// keeps the delivery from being claimed again meanwhile).
    pub async fn run(self, slot: OwnedSemaphorePermit) -> Option<i64> {
        let attempt = self.delivery.attempts + 1;
        let started_at_ms = now_ms();
        let clock = Instant::now();
        let answer = self.send().await;
        let duration_ms = clock.elapsed().as_millis() as i64;
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
                    unix_ms: now_ms() + delay.as_millis() as i64,
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
        self.metrics.attempted(
            &self.target.name,
            result,
            Duration::from_millis(duration_ms as u64),
            answer.status,
            self.delivery.occurred_at,
        );
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
            Ok(()) => match completion {
                Completion::RetryAt { unix_ms } => Some(unix_ms),
                Completion::Delivered | Completion::Dead => None,
            },
            Err(e) => {
                // The lease expires and the delivery is attempted again: a repeat, not a loss.
                tracing::error!(error = %chain(&e), "Failed to record a delivery attempt; it will be repeated");
                Some(now_ms() + self.target.lease.as_millis() as i64)
            }
        }
    }

    async fn send(&self) -> Answer {
        let body = body_for(&self.target, &self.delivery);
        let mut request = self
            .client
            .post(self.target.url.clone())
            .timeout(self.target.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &self.target.headers {
            request = request.header(name, value);
        }
        if let Some(signer) = &self.target.signer {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            match signer.sign(self.delivery.event_id.as_str(), timestamp, &body) {
                Ok(signature) => {
                    request = request
                        .header("webhook-id", self.delivery.event_id.as_str())
                        .header("webhook-timestamp", timestamp.to_string())
                        .header("webhook-signature", signature);
                }
                Err(e) => {
                    // Bodies are JSON we serialised, so always UTF-8; never send unsigned.
                    return Answer {
                        verdict: Verdict::Retry { retry_after: None },
                        status: None,
                        error: Some(format!("could not sign the request: {e}")),
                    };
                }
            }
        }
        match request.body(body).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let verdict = classify_status(status, retry_after.as_deref(), SystemTime::now());
                let error = match verdict {
                    Verdict::Delivered => None,
                    Verdict::Gone => {
                        Some(format!("gone: {}", describe_status(status, response).await))
                    }
                    Verdict::Retry { .. } => Some(describe_status(status, response).await),
                };
                Answer {
                    verdict,
                    status: Some(status),
                    error,
                }
            }
            Err(e) => Answer {
                verdict: Verdict::Retry { retry_after: None },
                status: None,
                error: Some(describe_error(&e)),
            },
        }
    }
}

async fn describe_status(status: u16, mut response: reqwest::Response) -> String {
    let mut snippet = Vec::new();
    while snippet.len() < ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => snippet.extend_from_slice(&chunk),
            _ => break,
        }
    }
    snippet.truncate(ERROR_BODY_BYTES);
    let text = String::from_utf8_lossy(&snippet);
    let text = text.trim();
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

fn describe_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(cause) => format!("{kind}: {}", chain(cause)),
        None => kind.to_owned(),
    }
}
