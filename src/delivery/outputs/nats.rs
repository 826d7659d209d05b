//! `nats://` targets: NATS JetStream. Delivered when JetStream acknowledges the publish
//! (`PubAck`), which it sends once a stream has stored the message. A subject no stream
//! captures gets no ack: a failed attempt, retried, with the broker's answer recorded.
//! `Nats-Msg-Id` is the event id, so a repeat inside the stream's duplicate window is
//! dropped by JetStream, and its ack (marked duplicate) counts as delivered.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{Keys, Outbound, Output, OutputAnswer, Settings as OutputSettings, Signed, Template};
use crate::delivery::target::Target;
use crate::settings::ConfigError;

/// The target keys a `nats://` target takes.
pub const KEYS: &[&str] = &["subject"];

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The subject each message is published to (`{type}`, `{source}`, `{vendor}`).
    pub subject: Template,
}

impl Settings {
    pub fn parse(_: &reqwest::Url, keys: &mut Keys) -> Result<OutputSettings, ConfigError> {
        let subject = keys.required_string("subject")?;
        let subject = Template::parse(&keys.at("subject"), &subject)?;
        Ok(OutputSettings::Nats(Settings { subject }))
    }
}

pub struct NatsOutput {
    target: Arc<Target>,
    settings: Settings,
    /// Connected on first use; the client reconnects on its own afterwards.
    jetstream: OnceCell<jetstream::Context>,
}

impl NatsOutput {
    pub fn new(target: Arc<Target>, settings: Settings) -> NatsOutput {
        NatsOutput {
            target,
            settings,
            jetstream: OnceCell::new(),
        }
    }

    async fn context(&self) -> Result<&jetstream::Context, String> {
        self.jetstream
            .get_or_try_init(|| async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(self.target.timeout)
                    .name(format!("sessiongate/{}", self.target.name))
                    .connect(self.target.url.as_str())
                    .await
                    .map_err(|e| format!("cannot connect to NATS: {e}"))?;
                let mut context = jetstream::new(client);
                context.set_timeout(self.target.timeout);
                Ok(context)
            })
            .await
    }
}

#[async_trait]
impl Output for NatsOutput {
    async fn send(&self, outbound: Outbound<'_>) -> OutputAnswer {
        let route = match outbound.route() {
            Ok(route) => route,
            Err(e) => return OutputAnswer::failed(e),
        };
        let subject = self.settings.subject.render(&route);
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            outbound.event_id.as_str(),
        );
        headers.insert("content-type", outbound.content_type);
        match Signed::sign(&self.target, &outbound) {
            Ok(Some(signed)) => {
                for (name, value) in signed.pairs() {
                    headers.insert(name, value);
                }
            }
            Ok(None) => {}
            Err(e) => return OutputAnswer::failed(e),
        }
        let context = match self.context().await {
            Ok(context) => context,
            Err(e) => return OutputAnswer::failed(e),
        };
        let published = async {
            context
                .publish_with_headers(subject.clone(), headers, outbound.body.into())
                .await?
                .await
        };
        match tokio::time::timeout(self.target.timeout, published).await {
            Ok(Ok(_ack)) => OutputAnswer::delivered(),
            Ok(Err(e)) => OutputAnswer::failed(format!("JetStream did not take `{subject}`: {e}")),
            Err(_) => OutputAnswer::failed(format!(
                "no JetStream acknowledgement for `{subject}` within {} ms",
                self.target.timeout.as_millis()
            )),
        }
    }
}
