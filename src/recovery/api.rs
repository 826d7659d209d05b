//! A vendor's API as recovery calls it: its base URL and key, bounded answers, and the
//! retry rules (429 and 5xx again after `Retry-After` or a growing pause; 401 and 403 stop).

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::Failure;
use crate::ingest::recover::Recover;
use crate::vendors::Vendor;

/// Tries of one request before the poll gives up (and the next poll resumes).
const ATTEMPTS: u32 = 5;
/// The longest pause between tries, whatever `Retry-After` asks.
const MAX_PAUSE: Duration = Duration::from_secs(300);
/// The most bytes read of one answer (a page of 1,000 Vapi calls with their artifacts).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// One request's timeout: Retell's SDK gives its list call 300 s.
const TIMEOUT: Duration = Duration::from_secs(300);

pub(super) struct Api<'a> {
    pub client: &'a reqwest::Client,
    pub recover: &'a Recover,
    pub vendor: Vendor,
    /// The source recovering, which the errors and their metrics name.
    pub source: &'a str,
    pub metrics: &'a crate::metrics::Metrics,
}

impl Api<'_> {
    /// A request to `path` (with its query) under the API's base URL, authenticated as
    /// the vendor documents.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let base = self.recover.api_url.as_str().trim_end_matches('/');
        let key = self.recover.api_key.expose_secret();
        let request = self
            .client
            .request(method, format!("{base}{path}"))
            .timeout(TIMEOUT);
        match self.vendor {
            Vendor::ElevenLabs => request.header("xi-api-key", key),
            // Bland's key goes bare, without "Bearer".
            Vendor::Bland => request.header("authorization", key),
            Vendor::Twilio => {
                request.basic_auth(self.recover.account_sid.as_deref().unwrap_or(""), Some(key))
            }
            _ => request.bearer_auth(key),
        }
    }

    /// `GET path` as JSON; `None` if the vendor answers 404 (the call is gone).
    pub async fn get(&self, path: &str) -> Result<Option<Value>, Failure> {
        self.send(|| self.request(Method::GET, path)).await
    }

    /// `POST path` with a JSON body, answered as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Option<Value>, Failure> {
        let body = serde_json::to_vec(body).expect("values serialise");
        self.send(|| {
            self.request(Method::POST, path)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
    }

    /// Sends a request until it is answered, counting every failed answer
    /// (`sessiongate_recovery_errors_total`).
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<Option<Value>, Failure> {
        let result = self.send_until_answered(build).await;
        if let Err(failure) = &result {
            self.metrics
                .recovery_failed(self.source, failure.reason(), &failure.to_string());
        }
        result
    }

    async fn send_until_answered(
        &self,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Option<Value>, Failure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (failure, retry_after) = match build().send().await {
                Err(e) => (
                    Failure::vendor("unreachable", format!("the {} API: {e}", self.vendor)),
                    None,
                ),
                Ok(answer) => {
                    let status = answer.status();
                    if status.is_success() {
                        return read_json(answer).await.map(Some);
                    }
                    match status {
                        StatusCode::NOT_FOUND => return Ok(None),
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            return Err(Failure::Unauthorized(format!(
                                "source `{}`: the {} API refused the key (HTTP {}); check its recover.api_key",
                                self.source,
                                self.vendor,
                                status.as_u16()
                            )));
                        }
                        StatusCode::TOO_MANY_REQUESTS => (
                            Failure::vendor(
                                "rate_limited",
                                format!("the {} API answered 429", self.vendor),
                            ),
                            retry_after(&answer),
                        ),
                        s if s.is_server_error() => (
                            Failure::vendor(
                                "server_error",
                                format!("the {} API answered {}", self.vendor, s.as_u16()),
                            ),
                            retry_after(&answer),
                        ),
                        s => {
                            // Another 4xx will repeat for the same request: no retry.
                            return Err(Failure::vendor(
                                "bad_answer",
                                format!("the {} API answered {}", self.vendor, s.as_u16()),
                            ));
                        }
                    }
                }
            };
            if attempt >= ATTEMPTS {
                return Err(failure);
            }
            self.metrics
                .recovery_failed(self.source, failure.reason(), &failure.to_string());
            let pause = retry_after
                .unwrap_or_else(|| Duration::from_secs(1 << (attempt - 1)))
                .min(MAX_PAUSE);
            tracing::debug!(vendor = %self.vendor, attempt, pause_ms = pause.as_millis() as u64, "Vendor API busy; trying again");
            tokio::time::sleep(pause).await;
        }
    }
}

/// `Retry-After` as seconds or an HTTP date, read as delivery reads a receiver's.
fn retry_after(answer: &reqwest::Response) -> Option<Duration> {
    let value = answer
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    crate::delivery::outputs::http::parse_retry_after(value, std::time::SystemTime::now())
}

async fn read_json(mut answer: reqwest::Response) -> Result<Value, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| Failure::vendor("unreachable", e.to_string()))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Failure::vendor(
                "bad_answer",
                format!("an answer larger than {MAX_ANSWER_BYTES} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| Failure::vendor("bad_answer", format!("an answer that is not JSON: {e}")))
}
