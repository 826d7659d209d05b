//! HTTP(S) targets: a POST of the body, signed when the target has a secret.
//!
//! The request is the body as `application/json`, the target's static headers, and Standard
//! Webhooks signature headers when the target has a secret (`webhook-id` is the event id, so
//! a receiver can de-duplicate retries). 2xx is delivered, 410 Gone is gone, anything else
//! (redirects included) is retried, honouring `Retry-After` on 429 and 503.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::{Outbound, Output, OutputAnswer, Signed};
use crate::delivery::retry::Verdict;
use crate::delivery::target::Target;
use crate::telemetry::chain;

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

pub struct HttpOutput {
    target: Arc<Target>,
    client: reqwest::Client,
}

impl HttpOutput {
    pub fn new(target: Arc<Target>, client: reqwest::Client) -> HttpOutput {
        HttpOutput { target, client }
    }
}

#[async_trait]
impl Output for HttpOutput {
    async fn send(&self, outbound: Outbound<'_>) -> OutputAnswer {
        let target = &self.target;
        let mut request = self
            .client
            .post(target.url.clone())
            .timeout(target.timeout)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static(outbound.content_type),
            );
        for (name, value) in &target.headers {
            request = request.header(name, value);
        }
        match Signed::sign(target, &outbound) {
            Ok(Some(signed)) => {
                for (name, value) in signed.pairs() {
                    request = request.header(name, value);
                }
            }
            Ok(None) => {}
            Err(e) => return OutputAnswer::failed(e),
        }
        match request.body(outbound.body).send().await {
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
                OutputAnswer {
                    verdict,
                    status: Some(status),
                    error,
                }
            }
            Err(e) => OutputAnswer::failed(describe_error(&e)),
        }
    }
}

/// Classifies a received HTTP status. Transport errors and timeouts are
/// `Verdict::Retry { retry_after: None }` ([`OutputAnswer::failed`]).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
