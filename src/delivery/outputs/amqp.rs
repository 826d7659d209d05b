//! `amqp://` targets: RabbitMQ. Every message is published with `mandatory = true` on a
//! channel in confirm mode, persistent, `message_id` = event id, `content_type` the body's.
//! Delivered only when the broker acks it *and* did not return it: an unroutable message
//! (returned, `NO_ROUTE`) or a nack is a failed attempt, retried.

use std::sync::Arc;

use async_trait::async_trait;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use super::{Keys, Outbound, Output, OutputAnswer, Settings as OutputSettings, Signed, Template};
use crate::delivery::target::Target;
use crate::settings::{ConfigError, redact_url};

/// The target keys an `amqp://` target takes.
pub const KEYS: &[&str] = &["exchange", "routing_key"];

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `""` = the default exchange (routing key = queue name).
    pub exchange: Template,
    pub routing_key: Template,
}

impl Settings {
    pub fn parse(_: &reqwest::Url, keys: &mut Keys) -> Result<OutputSettings, ConfigError> {
        let exchange = keys.string("exchange")?.unwrap_or_default();
        let exchange = Template::parse(&keys.at("exchange"), &exchange)?;
        let routing_key = keys.required_string("routing_key")?;
        let routing_key = Template::parse(&keys.at("routing_key"), &routing_key)?;
        Ok(OutputSettings::Amqp(Settings {
            exchange,
            routing_key,
        }))
    }
}

/// AMQP's persistent delivery mode.
const PERSISTENT: u8 = 2;

pub struct AmqpOutput {
    target: Arc<Target>,
    settings: Settings,
    /// The connection and its confirm-mode channel, made on first use and again after
    /// either closes.
    link: Mutex<Option<(Connection, Channel)>>,
}

impl AmqpOutput {
    pub fn new(target: Arc<Target>, settings: Settings) -> AmqpOutput {
        AmqpOutput {
            target,
            settings,
            link: Mutex::new(None),
        }
    }

    /// A live confirm-mode channel (shared by every attempt of this target).
    async fn channel(&self) -> Result<Channel, String> {
        let mut link = self.link.lock().await;
        if let Some((connection, channel)) = link.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *link = None;
        let shown = redact_url(self.target.url.as_str());
        let connect = async {
            let connection =
                Connection::connect(self.target.url.as_str(), ConnectionProperties::default())
                    .await
                    .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| format!("cannot open a channel on {shown}: {e}"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| format!("cannot enable publisher confirms on {shown}: {e}"))?;
            Ok::<_, String>((connection, channel))
        };
        let (connection, channel) = tokio::time::timeout(self.target.timeout, connect)
            .await
            .map_err(|_| {
                format!(
                    "no connection to {shown} within {} ms",
                    self.target.timeout.as_millis()
                )
            })??;
        *link = Some((connection, channel.clone()));
        Ok(channel)
    }
}

#[async_trait]
impl Output for AmqpOutput {
    async fn send(&self, outbound: Outbound<'_>) -> OutputAnswer {
        let route = match outbound.route() {
            Ok(route) => route,
            Err(e) => return OutputAnswer::failed(e),
        };
        let exchange = self.settings.exchange.render(&route);
        let routing_key = self.settings.routing_key.render(&route);
        let (Ok(exchange_name), Ok(key)) = (
            ShortString::try_new(exchange.clone()),
            ShortString::try_new(routing_key.clone()),
        ) else {
            return OutputAnswer::failed(format!(
                "exchange `{exchange}` or routing key `{routing_key}` is longer than AMQP's 255 bytes"
            ));
        };
        let mut headers = FieldTable::default();
        match Signed::sign(&self.target, &outbound) {
            Ok(Some(signed)) => {
                for (name, value) in signed.pairs() {
                    headers.insert(
                        name.into(),
                        AMQPValue::LongString(LongString::from(value.to_owned())),
                    );
                }
            }
            Ok(None) => {}
            Err(e) => return OutputAnswer::failed(e),
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(outbound.event_id.as_str().into())
            .with_content_type(outbound.content_type.into())
            .with_headers(headers);
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(e) => return OutputAnswer::failed(e),
        };
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmed = async {
            channel
                .basic_publish(exchange_name, key, options, &outbound.body, properties)
                .await?
                .await
        };
        let place = format!("exchange `{exchange}` with routing key `{routing_key}`");
        match tokio::time::timeout(self.target.timeout, confirmed).await {
            Ok(Ok(Confirmation::Ack(None))) => OutputAnswer::delivered(),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => OutputAnswer::failed(format!(
                "RabbitMQ returned the message unroutable ({} {}) from {place}",
                returned.reply_code, returned.reply_text
            )),
            Ok(Ok(Confirmation::Nack(_))) => {
                OutputAnswer::failed(format!("RabbitMQ refused (nacked) the message for {place}"))
            }
            Ok(Ok(Confirmation::NotRequested)) => {
                OutputAnswer::failed("the channel is not in confirm mode".to_owned())
            }
            Ok(Err(e)) => {
                // The channel or connection may be gone: the next attempt makes new ones.
                self.link.lock().await.take();
                OutputAnswer::failed(format!("publishing to {place} failed: {e}"))
            }
            Err(_) => OutputAnswer::failed(format!(
                "no RabbitMQ confirm for {place} within {} ms",
                self.target.timeout.as_millis()
            )),
        }
    }
}
