//! The output seam: how a delivery leaves the gateway.
//!
//! An [`Output`] takes one [`Outbound`] message and says what the receiver made of it, as an
//! [`OutputAnswer`] whose [`Verdict`] the retry rules read; nothing outside this folder knows
//! how an output speaks. A target's URL scheme picks its output ([`for_target`]): today
//! `http`/`https` ([`http`]). Adding one (a broker) is one file here and one arm there.

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

/// The output a target's URL names (the configuration admits only these schemes).
pub fn for_target(
    target: &Arc<Target>,
    client: &reqwest::Client,
) -> anyhow::Result<Arc<dyn Output>> {
    match target.url.scheme() {
        "http" | "https" => Ok(Arc::new(http::HttpOutput::new(
            target.clone(),
            client.clone(),
        ))),
        other => anyhow::bail!(
            "target `{}`: no output sends to `{other}://` URLs",
            target.name
        ),
    }
}
