//! The output seam: how a delivery leaves the gateway.
//!
//! An [`Output`] takes one [`Outbound`] message and says what the receiver made of it, as an
//! [`OutputAnswer`] whose [`Verdict`] the retry rules read; nothing outside this folder knows
//! how an output speaks. A target's URL scheme picks its output: `http`/`https` ([`http`]),
//! `nats` ([`nats`], JetStream), `amqp`/`amqps` ([`amqp`], RabbitMQ), `redis`/`rediss`
//! ([`redis`], Streams). Every output counts a message delivered only once its receiver or
//! broker has confirmed it.
//!
//! Adding one (Kafka, say) is one file here with its settings and its `Output`, a variant of
//! [`Settings`], a line in `OUTPUTS` and an arm in [`for_target`].

pub mod amqp;
pub mod http;
pub mod nats;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::retry::Verdict;
use crate::delivery::target::Target;
use crate::event::EventId;
use crate::settings::{ConfigError, invalid};

/// One message for a target: its body (shaped for the target, [`super::message`]), the
/// event id receivers de-duplicate on, and the stored canonical event, which brokers route
/// on ([`Outbound::route`]).
pub struct Outbound<'a> {
    pub event_id: &'a EventId,
    pub body: Vec<u8>,
    /// The body's media type.
    pub content_type: &'static str,
    /// The canonical event as stored (without `raw`).
    pub canonical: &'a str,
}

/// What a subject, routing key or stream name may be made of (`{type}` and so on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub event_type: String,
    pub source: String,
    pub vendor: String,
}

impl Outbound<'_> {
    /// The event's type, source and vendor, read from the stored event.
    pub fn route(&self) -> Result<Route, String> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            event_type: String,
            source: Source,
        }
        #[derive(Deserialize)]
        struct Source {
            name: String,
            vendor: String,
        }
        let head: Head = serde_json::from_str(self.canonical)
            .map_err(|e| format!("the stored event cannot be routed: {e}"))?;
        Ok(Route {
            event_type: head.event_type,
            source: head.source.name,
            vendor: head.source.vendor,
        })
    }
}

/// A name with `{type}`, `{source}` and `{vendor}` in it, filled per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    pub fn parse(key: &str, text: &str) -> Result<Template, ConfigError> {
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                return Err(invalid(
                    key,
                    format!("`{text}` has a `{{` without its `}}`"),
                ));
            };
            let name = &rest[open + 1..open + close];
            if !matches!(name, "type" | "source" | "vendor") {
                return Err(invalid(
                    key,
                    format!(
                        "`{{{name}}}` is not a placeholder (known: {{type}}, {{source}}, {{vendor}})"
                    ),
                ));
            }
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(invalid(
                key,
                format!("`{text}` has a `}}` without its `{{`"),
            ));
        }
        Ok(Template(text.to_owned()))
    }

    pub fn render(&self, route: &Route) -> String {
        self.0
            .replace("{type}", &route.event_type)
            .replace("{source}", &route.source)
            .replace("{vendor}", &route.vendor)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The Standard Webhooks headers of a message, when its target has a secret.
pub struct Signed {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
}

impl Signed {
    /// Signs `outbound` with `target`'s secret, if it has one. Bodies are JSON the gateway
    /// serialised, so this fails only if the signer does; a message is never sent unsigned.
    pub fn sign(target: &Target, outbound: &Outbound<'_>) -> Result<Option<Signed>, String> {
        let Some(signer) = &target.signer else {
            return Ok(None);
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = signer.sign(outbound.event_id.as_str(), timestamp, &outbound.body);
        Ok(Some(Signed {
            id: outbound.event_id.as_str().to_owned(),
            timestamp: timestamp.to_string(),
            signature,
        }))
    }

    /// `(name, value)` pairs, as HTTP, NATS, AMQP and Redis carry them.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            ("webhook-id", &self.id),
            ("webhook-timestamp", &self.timestamp),
            ("webhook-signature", &self.signature),
        ]
    }
}

/// A target's output-specific keys as written (`subject`, `exchange`, …); each output takes
/// the ones it knows and any left over is an error naming it.
pub struct Keys {
    key: String,
    scheme: String,
    values: BTreeMap<String, Value>,
}

impl Keys {
    pub fn new(key: &str, scheme: &str, values: BTreeMap<String, Value>) -> Keys {
        Keys {
            key: key.to_owned(),
            scheme: scheme.to_owned(),
            values,
        }
    }

    pub fn at(&self, name: &str) -> String {
        format!("{}.{name}", self.key)
    }

    /// A string key (an environment override arrives as a string too).
    pub fn string(&mut self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(self.at(name), "must be a string")),
        }
    }

    pub fn required_string(&mut self, name: &str) -> Result<String, ConfigError> {
        self.string(name)?.ok_or_else(|| {
            invalid(
                self.at(name),
                format!("is required for {}:// targets", self.scheme),
            )
        })
    }

    pub fn template(&mut self, name: &str) -> Result<Option<Template>, ConfigError> {
        let key = self.at(name);
        self.string(name)?
            .map(|t| Template::parse(&key, &t))
            .transpose()
    }

    /// A positive whole number (written as a number, or a string from the environment).
    pub fn positive(&mut self, name: &str) -> Result<Option<u64>, ConfigError> {
        let key = self.at(name);
        let n = match self.values.remove(name) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            Some(_) => None,
        };
        match n {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(invalid(key, "must be a whole number greater than 0")),
        }
    }

    /// Every key no output took is unknown for this one.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(name) => Err(invalid(
                self.at(name),
                format!("unknown key (not one a {}:// target takes)", self.scheme),
            )),
        }
    }
}

/// What a target's output needs besides its URL, checked at start-up.
#[derive(Debug, Clone, PartialEq)]
pub enum Settings {
    Http,
    Nats(nats::Settings),
    Amqp(amqp::Settings),
    Redis(redis::Settings),
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
    /// Confirmed by a broker (which has no status code).
    pub fn delivered() -> OutputAnswer {
        OutputAnswer {
            verdict: Verdict::Delivered,
            status: None,
            error: None,
        }
    }

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

/// Reads a target's output keys.
type Parse = fn(&reqwest::Url, &mut Keys) -> Result<Settings, ConfigError>;

/// Every output: the URL schemes it sends to, the target keys it takes, and how it reads
/// them; one line per output. The configuration admits a target URL only if a line here
/// takes its scheme.
const OUTPUTS: &[(&[&str], &[&str], Parse)] = &[
    (&["http", "https"], &[], |_, _| Ok(Settings::Http)),
    (&["nats"], nats::KEYS, nats::Settings::parse),
    (&["amqp", "amqps"], amqp::KEYS, amqp::Settings::parse),
    (&["redis", "rediss"], redis::KEYS, redis::Settings::parse),
];

/// Whether some output takes a target key of this name.
pub fn takes_key(name: &str) -> bool {
    OUTPUTS.iter().any(|(_, keys, _)| keys.contains(&name))
}

/// The URL schemes outputs send to, for error messages.
pub fn schemes() -> Vec<&'static str> {
    OUTPUTS
        .iter()
        .flat_map(|(schemes, _, _)| schemes.iter().copied())
        .collect()
}

/// The settings of the output `url` names, from its keys; `None` if no output sends there.
pub fn parse(url: &reqwest::Url, keys: &mut Keys) -> Option<Result<Settings, ConfigError>> {
    OUTPUTS
        .iter()
        .find(|(schemes, _, _)| schemes.contains(&url.scheme()))
        .map(|(_, _, parse)| parse(url, keys))
}

/// The output of a target. Brokers connect on first use and reconnect on their own, so a
/// broker that is down at start-up delays nothing: its deliveries wait and retry.
pub fn for_target(target: &Arc<Target>, shared: &Shared) -> anyhow::Result<Arc<dyn Output>> {
    Ok(match &target.output {
        Settings::Http => Arc::new(http::HttpOutput::new(target.clone(), shared.http.clone())),
        Settings::Nats(settings) => {
            Arc::new(nats::NatsOutput::new(target.clone(), settings.clone()))
        }
        Settings::Amqp(settings) => {
            Arc::new(amqp::AmqpOutput::new(target.clone(), settings.clone()))
        }
        Settings::Redis(settings) => {
            Arc::new(redis::RedisOutput::new(target.clone(), settings.clone())?)
        }
    })
}

impl Settings {
    /// The output kind, as metrics and `check-config` name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Settings::Http => "http",
            Settings::Nats(_) => "nats",
            Settings::Amqp(_) => "amqp",
            Settings::Redis(_) => "redis",
        }
    }
}
