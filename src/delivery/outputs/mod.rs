//! The output seam: how a delivery leaves the gateway.
//!
//! An [`Output`] takes one [`Outbound`] message and says what the receiver made of it, as an
//! [`OutputAnswer`] whose [`Verdict`] the retry rules read; nothing outside this folder knows
//! how an output speaks. A target's URL scheme picks its output ([`for_target`]): today
//! `http`/`https` ([`http`]). Adding one (a broker) is one file here and one line in
//! [`OUTPUTS`].

pub mod http;

use std::sync::Arc;

use async_trait::async_trait;

use super::retry::Verdict;
use crate::delivery::target::Target;
use crate::event::EventId;

/// One message for a target: the body it receives (the canonical event, with `raw` when
/// it wants it) and the event id receivers de-duplicate on.
pub struct Outbound<'a> {
    pub event_id: &'a EventId,
    pub body: Vec<u8>,
}

/// What the receiver made of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputAnswer {
    pub verdict: Verdict,
    /// The receiver's status code, where its protocol has one (recorded with the attempt).
    pub status: Option<u16>,
    /// Why it was not delivered, for `last_error` and the log.
    pub error: Option<String>,
}

impl OutputAnswer {
    /// A failure before the receiver could answer; retried.
    pub fn failed(error: String) -> OutputAnswer {
        OutputAnswer {
            verdict: Verdict::Retry { retry_after: None },
            status: None,
            error: Some(error),
        }
    }
}

/// A way to hand messages to one target. Sends must end within the target's timeout.
#[async_trait]
pub trait Output: Send + Sync {
    async fn send(&self, outbound: Outbound<'_>) -> OutputAnswer;
}

/// What outputs share, made once per process (the HTTP client and its connection pools).
pub struct Shared {
    pub http: reqwest::Client,
}

impl Shared {
    pub fn new() -> anyhow::Result<Shared> {
        Ok(Shared {
            http: http::client()?,
        })
    }
}

/// Makes the output of one target.
type Build = fn(&Arc<Target>, &Shared) -> anyhow::Result<Arc<dyn Output>>;

/// Every output, by the URL schemes it sends to: one line per output. The configuration
/// admits a target URL only if a line here takes its scheme.
const OUTPUTS: &[(&[&str], Build)] = &[(&["http", "https"], http::HttpOutput::build)];

/// Whether some output sends to `scheme://` URLs.
pub fn sends_to(scheme: &str) -> bool {
    OUTPUTS.iter().any(|(schemes, _)| schemes.contains(&scheme))
}

/// The URL schemes outputs send to, for error messages.
pub fn schemes() -> Vec<&'static str> {
    OUTPUTS
        .iter()
        .flat_map(|(schemes, _)| schemes.iter().copied())
        .collect()
}

/// The output a target's URL names.
pub fn for_target(target: &Arc<Target>, shared: &Shared) -> anyhow::Result<Arc<dyn Output>> {
    let scheme = target.url.scheme();
    match OUTPUTS
        .iter()
        .find(|(schemes, _)| schemes.contains(&scheme))
    {
        Some((_, build)) => build(target, shared),
        None => anyhow::bail!(
            "target `{}`: no output sends to `{scheme}://` URLs",
            target.name
        ),
    }
}
