//! What one target receives for one delivery: the canonical event (with `raw` when it wants
//! it), redacted at the target's paths, in the target's format.
//!
//! The stored event is rendered once ([`crate::event::Inbound::render`]); the common case
//! (canonical format, nothing redacted) splices `raw` in and re-serialises nothing. Only a
//! target that redacts or wants CloudEvents parses the event, per attempt.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::event::with_raw;
use crate::settings::{ConfigError, invalid};
use crate::store::ClaimedDelivery;

use crate::event::schema::SCHEMA;

/// What replaces every redacted string.
pub const REDACTED: &str = "[redacted]";

/// The body's shape (`format` of a target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The canonical event itself (`application/json`).
    Canonical,
    /// A CloudEvents 1.0 structured-mode envelope whose `data` is the canonical event.
    Cloudevents,
}

impl<'de> Deserialize<'de> for Format {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Format, D::Error> {
        let all = [Format::Canonical, Format::Cloudevents];
        crate::settings::one_of(d, &all.map(|f| (f.as_str(), f)))
    }
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Canonical => "canonical",
            Format::Cloudevents => "cloudevents",
        }
    }

    /// The media type of a body in this format, for outputs that carry one.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Canonical => "application/json",
            Format::Cloudevents => "application/cloudevents+json",
        }
    }
}

/// How a target's messages are shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub format: Format,
    pub include_raw: bool,
    /// Dotted paths, split; every string at or under each is replaced by [`REDACTED`].
    pub redact: Vec<Vec<String>>,
}

impl Shape {
    /// Checks each `redact` path (`key` names the list) against the canonical schema;
    /// `raw.…` reaches into the vendor payload, which has no schema.
    pub fn parse_redact(key: &str, paths: &[String]) -> Result<Vec<Vec<String>>, ConfigError> {
        paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(invalid(
                        format!("{key}[{i}]"),
                        format!("`{path}` is not a dotted path such as \"session.customer.phoneNumber\""),
                    ));
                }
                if !crate::event::schema::knows(&segments) {
                    return Err(invalid(
                        format!("{key}[{i}]"),
                        format!("the canonical event has no field at `{path}` (see schema/session-event.v3.json; `raw.…` reaches into the vendor's payload)"),
                    ));
                }
                Ok(segments)
            })
            .collect()
    }

    /// The body of `delivery` for this target.
    pub fn body(&self, delivery: &ClaimedDelivery) -> Vec<u8> {
        let canonical = if self.include_raw {
            with_raw(&delivery.body, &delivery.raw)
        } else {
            delivery.body.as_bytes().to_vec()
        };
        if self.format == Format::Canonical && self.redact.is_empty() {
            return canonical;
        }
        let mut event: Value =
            serde_json::from_slice(&canonical).expect("a stored event and its raw body are JSON");
        for path in &self.redact {
            redact(&mut event, path);
        }
        // A canonical field redacted is redacted where it came from in the vendor's payload
        // too: "this data never leaves" is what the operator means.
        let vendor = event["source"]["vendor"]
            .as_str()
            .and_then(crate::vendors::Vendor::parse);
        // A declared vendor's fields are mapped per source, out of sight here: its raw goes
        // whole when a session field is redacted (too much redacted is safe).
        if vendor == Some(crate::vendors::Vendor::Mapped)
            && self
                .redact
                .iter()
                .any(|p| p.first().is_some_and(|s| s == "session"))
            && let Some(object) = event.as_object_mut()
        {
            object.remove("raw");
        }
        if let (Some(vendor), Some(raw)) = (vendor, event.get_mut("raw")) {
            for path in &self.redact {
                for source in vendor.raw_sources(path) {
                    redact(raw, &source);
                }
            }
        }
        let out = match self.format {
            Format::Canonical => event,
            Format::Cloudevents => cloudevent(event),
        };
        serde_json::to_vec(&out).expect("JSON values serialise")
    }
}

/// Replaces every string at `path` (through arrays on the way) and under it.
fn redact(value: &mut Value, path: &[String]) {
    match (value, path.split_first()) {
        (value, None) => redact_all(value),
        (Value::Object(map), Some((first, rest))) => {
            if let Some(child) = map.get_mut(first) {
                redact(child, rest);
            }
        }
        (Value::Array(items), Some(_)) => {
            for item in items {
                redact(item, path);
            }
        }
        _ => {}
    }
}

fn redact_all(value: &mut Value) {
    match value {
        Value::String(s) => *s = REDACTED.to_owned(),
        Value::Array(items) => items.iter_mut().for_each(redact_all),
        Value::Object(map) => map.values_mut().for_each(redact_all),
        _ => {}
    }
}

/// The CloudEvents 1.0 structured-mode envelope of a canonical event.
fn cloudevent(event: Value) -> Value {
    let text = |path: &[&str]| {
        path.iter()
            .try_fold(&event, |v, k| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut envelope = Map::new();
    envelope.insert("specversion".into(), "1.0".into());
    envelope.insert("id".into(), text(&["id"]).into());
    envelope.insert(
        "source".into(),
        format!("/sessiongate/sources/{}", text(&["source", "name"])).into(),
    );
    envelope.insert(
        "type".into(),
        format!("dev.sessiongate.{}", text(&["type"])).into(),
    );
    envelope.insert("subject".into(), text(&["session", "id"]).into());
    envelope.insert("time".into(), text(&["occurredAt"]).into());
    envelope.insert("datacontenttype".into(), "application/json".into());
    envelope.insert("dataschema".into(), SCHEMA["$id"].clone());
    envelope.insert("data".into(), event);
    Value::Object(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;
    use crate::store::DeliveryId;

    fn delivery() -> ClaimedDelivery {
        ClaimedDelivery {
            id: DeliveryId::from_stored("dlv_1".into()),
            event_id: EventId::from_stored("evt_1".into()),
            attempts: 0,
            lease_token: 1,
            occurred_at: None,
            received_at: None,
            body: r#"{"id":"evt_1","type":"session.ended","occurredAt":"2026-12-01T10:00:00.000Z","source":{"name":"agntix"},"session":{"id":"s1","customer":{"phoneNumber":"+15550100"},"variables":{"name":"Ada","age":36},"messageCount":4}}"#.into(),
            raw: br#"{"metadata":{"customerPhoneNumber":"+15550100"},"transcript":[{"text":"hi"},{"text":"bye"}]}"#.to_vec().into(),
        }
    }

    fn shape(format: Format, redact: &[&str]) -> Shape {
        let paths: Vec<String> = redact.iter().map(|p| p.to_string()).collect();
        Shape {
            format,
            include_raw: true,
            redact: Shape::parse_redact("targets[0].redact", &paths).unwrap(),
        }
    }

    #[test]
    fn the_plain_body_is_spliced_not_reserialised() {
        let d = delivery();
        let body = shape(Format::Canonical, &[]).body(&d);
        assert_eq!(body, with_raw(&d.body, &d.raw));
    }

    #[test]
    fn redaction_replaces_strings_at_and_under_each_path_and_keeps_other_values() {
        let s = shape(
            Format::Canonical,
            &[
                "session.customer.phoneNumber",
                "session.variables",
                "raw.metadata.customerPhoneNumber",
                "raw.transcript.text",
            ],
        );
        let v: Value = serde_json::from_slice(&s.body(&delivery())).unwrap();
        assert_eq!(v["session"]["customer"]["phoneNumber"], REDACTED);
        assert_eq!(v["session"]["variables"]["name"], REDACTED);
        assert_eq!(v["session"]["variables"]["age"], 36, "numbers stay");
        assert_eq!(v["raw"]["metadata"]["customerPhoneNumber"], REDACTED);
        assert_eq!(v["raw"]["transcript"][1]["text"], REDACTED);
        assert_eq!(v["session"]["messageCount"], 4);
        assert_eq!(v["session"]["id"], "s1", "what is not named stays");
    }

    #[test]
    fn cloudevents_wrap_the_canonical_event() {
        let v: Value = serde_json::from_slice(
            &shape(Format::Cloudevents, &["session.customer"]).body(&delivery()),
        )
        .unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "evt_1");
        assert_eq!(v["source"], "/sessiongate/sources/agntix");
        assert_eq!(v["type"], "dev.sessiongate.session.ended");
        assert_eq!(v["subject"], "s1");
        assert_eq!(v["time"], "2026-12-01T10:00:00.000Z");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(
            v["dataschema"],
            "https://sessiongate.dev/schema/session-event.v3.json"
        );
        assert_eq!(v["data"]["session"]["customer"]["phoneNumber"], REDACTED);
        assert_eq!(v["data"]["raw"]["transcript"][0]["text"], "hi");
    }

    #[test]
    fn paths_the_schema_does_not_know_are_refused() {
        for ok in [
            "session.customer.phoneNumber",
            "session.variables.anything",
            "raw.x.y",
            "session.call",
            "source.name",
        ] {
            assert!(Shape::parse_redact("r", &[ok.into()]).is_ok(), "{ok}");
        }
        for bad in ["session.customer.email", "sesion.id", "session..id", "nope"] {
            let e = Shape::parse_redact("targets[0].redact", &[bad.into()])
                .unwrap_err()
                .to_string();
            assert!(e.contains("targets[0].redact[0]"), "{e}");
        }
    }
}
