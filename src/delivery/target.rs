//! A downstream receiver (`[[targets]]`): where events go, which ones, and how.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::message::{Format, Shape};
use super::outputs;
use super::settings::DeliveryConfig;
use crate::event::EventType;
use crate::settings::limits::{ATTEMPTS, IN_FLIGHT, TIMEOUT_MS};
use crate::settings::{ConfigError, Context, in_range, invalid, redact_url, unique_name};

/// A downstream receiver and what it wants.
pub struct Target {
    pub name: String,
    pub url: reqwest::Url,
    /// `None` = every event type.
    pub events: Option<Vec<EventType>>,
    /// `None` = every source.
    pub sources: Option<Vec<String>>,
    pub signer: Option<crate::auth::standard::Secret>,
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    /// What the target receives: format, `raw` or not, redactions.
    pub shape: Shape,
    /// The output its URL names, and that output's settings.
    pub output: outputs::Settings,
    pub timeout: Duration,
    /// Attempts before a delivery is dead (`[delivery] max_attempts` unless the target says).
    pub max_attempts: u32,
    /// How long a claimed or handed-over delivery stays leased to one worker; after that
    /// another worker (on any replica) may take it over.
    pub lease: Duration,
    pub max_in_flight: usize,
}

impl Target {
    /// The routing rule: whether an event of `event_type` from `source` goes to this target.
    pub fn accepts(&self, source: &str, event_type: EventType) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&event_type))
            && self
                .sources
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| s == source))
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("url", &redact_url(self.url.as_str()))
            .field("events", &self.events)
            .field("sources", &self.sources)
            .field("signed", &self.signer.is_some())
            .field("shape", &self.shape)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// `[[targets]]` as written. Keys it does not name are the output's ([`outputs::Keys`]),
/// which refuses any it does not take, so a typo is still an error naming the key.
#[derive(Deserialize)]
pub struct RawTarget {
    name: String,
    url: String,
    events: Option<Vec<String>>,
    sources: Option<Vec<String>>,
    secret: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "yes")]
    include_raw: bool,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    max_in_flight: Option<usize>,
    format: Option<Format>,
    redact: Option<Vec<String>>,
    #[serde(flatten)]
    output: BTreeMap<String, serde_json::Value>,
}

impl RawTarget {
    /// Takes out every key neither a target nor any output knows, as an error naming it
    /// (`key` is the entry's), so that they are reported with the file's other problems.
    pub fn take_unknown(&mut self, key: &str) -> Vec<ConfigError> {
        let unknown: Vec<String> = self
            .output
            .keys()
            .filter(|name| !outputs::takes_key(name))
            .cloned()
            .collect();
        unknown
            .into_iter()
            .map(|name| {
                self.output.remove(&name);
                invalid(format!("{key}.{name}"), "unknown key")
            })
            .collect()
    }
}

/// Array entries take no defaults from the defaults layer, so this one is written here.
fn yes() -> bool {
    true
}

/// Headers a target may not set: the gateway owns them.
const RESERVED_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "host",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// By default a lease outlives the attempt's timeout by this much.
const DEFAULT_LEASE_MARGIN: Duration = Duration::from_secs(30);

impl Target {
    /// Every `[[targets]]` entry; names are unique and `sources` name configured sources.
    pub fn parse_all(
        raw: Vec<RawTarget>,
        delivery: &DeliveryConfig,
        source_names: &HashSet<&str>,
        cx: &mut Context,
    ) -> Result<Vec<Target>, ConfigError> {
        let mut targets = Vec::with_capacity(raw.len());
        let mut names = HashSet::new();
        for (i, t) in raw.into_iter().enumerate() {
            let key = format!("targets[{i}]");
            unique_name(&key, "target", &t.name, &mut names)?;
            targets.push(Target::parse(&key, t, delivery, source_names, cx)?);
        }
        Ok(targets)
    }

    fn parse(
        key: &str,
        t: RawTarget,
        delivery: &DeliveryConfig,
        source_names: &HashSet<&str>,
        cx: &mut Context,
    ) -> Result<Target, ConfigError> {
        // Any url and header value may be `env:VAR` (a URL or header can carry a token).
        let t_url = cx.reference(&format!("{key}.url"), &t.url)?;
        let not_an_output = || {
            invalid(
                format!("{key}.url"),
                format!(
                    "`{}` is not a URL any output sends to (schemes: {})",
                    redact_url(&t_url),
                    outputs::schemes().join(", ")
                ),
            )
        };
        let url = reqwest::Url::parse(&t_url)
            .ok()
            .filter(|u| u.host().is_some())
            .ok_or_else(not_an_output)?;
        let mut keys = outputs::Keys::new(key, url.scheme(), t.output);
        let output = outputs::parse(&url, &mut keys).ok_or_else(not_an_output)??;
        keys.finish()?;
        if output != outputs::Settings::Http && !t.headers.is_empty() {
            return Err(invalid(
                format!("{key}.headers"),
                format!(
                    "static headers are for http(s) targets; a {}:// target carries only the signature headers",
                    url.scheme()
                ),
            ));
        }
        let shape = Shape {
            format: t.format.unwrap_or(Format::Canonical),
            include_raw: t.include_raw,
            redact: Shape::parse_redact(
                &format!("{key}.redact"),
                t.redact.as_deref().unwrap_or_default(),
            )?,
        };
        let events = t
            .events
            .map(|events| {
                events
                    .iter()
                    .enumerate()
                    .map(|(j, e)| {
                        EventType::parse(e).ok_or_else(|| {
                            invalid(
                                format!("{key}.events[{j}]"),
                                format!(
                                    "unknown event type `{e}` (known: {})",
                                    EventType::ALL.map(EventType::as_str).join(", ")
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        if let Some(names) = &t.sources {
            for (j, name) in names.iter().enumerate() {
                if !source_names.contains(name.as_str()) {
                    return Err(invalid(
                        format!("{key}.sources[{j}]"),
                        format!("no source named `{name}` is configured"),
                    ));
                }
            }
        }
        let signer = t
            .secret
            .map(|s| {
                let k = format!("{key}.secret");
                crate::auth::standard::parse_whsec(&k, &cx.secret(&k, &s)?)
            })
            .transpose()?;
        let mut headers = Vec::with_capacity(t.headers.len());
        for (name, value) in &t.headers {
            let k = format!("{key}.headers.{name}");
            let header = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(&k, "is not a valid header name"))?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(invalid(
                    &k,
                    "is set by the gateway and cannot be overridden",
                ));
            }
            let value = cx.reference(&k, value)?;
            let mut value = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|_| invalid(&k, "is not a valid header value"))?;
            value.set_sensitive(true);
            headers.push((header, value));
        }
        if let Some(ms) = t.timeout_ms {
            in_range(&format!("{key}.timeout_ms"), ms, 1, TIMEOUT_MS)?;
        }
        if let Some(n) = t.max_in_flight {
            in_range(&format!("{key}.max_in_flight"), n as u64, 1, IN_FLIGHT)?;
        }
        if let Some(n) = t.max_attempts {
            in_range(&format!("{key}.max_attempts"), n.into(), 1, ATTEMPTS)?;
        }
        let timeout = t.timeout_ms.map_or(delivery.timeout, Duration::from_millis);
        let lease = match delivery.lease {
            Some(lease) if lease <= timeout => {
                return Err(invalid(
                    "delivery.lease_ms",
                    format!(
                        "must be longer than every attempt timeout (target `{}` allows {} ms)",
                        t.name,
                        timeout.as_millis()
                    ),
                ));
            }
            Some(lease) => lease,
            None => timeout + DEFAULT_LEASE_MARGIN,
        };
        Ok(Target {
            name: t.name,
            url,
            events,
            sources: t.sources,
            signer,
            headers,
            shape,
            output,
            timeout,
            max_attempts: t.max_attempts.unwrap_or(delivery.max_attempts),
            lease,
            max_in_flight: t.max_in_flight.unwrap_or(delivery.max_in_flight),
        })
    }
}
