//! A vendor declared in configuration (`vendor = "mapped"`, `[sources.mapping]`): JSON
//! Pointers (RFC 6901) into the payload say where the event type, the session id, the time
//! and the duplicate key are; an events table says which canonical events each vendor event
//! becomes; a fields table fills canonical fields; value tables translate enumerated ones.
//! Everything is checked against the canonical schema when the configuration is read, so
//! that a request can only fail on what its payload holds (400 naming the pointer).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::fields::PayloadError;
use super::{Draft, Normalized, Recognized};
use crate::event::schema;
use crate::event::{EventType, MAX_ID_LEN, Session, SessionState, Timestamp};
use crate::settings::{ConfigError, invalid};

/// `[sources.mapping]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMapping {
    event: String,
    session_id: String,
    occurred_at: String,
    dedup: Vec<String>,
    events: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    #[serde(default)]
    values: BTreeMap<String, RawValues>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValues {
    from: String,
    map: BTreeMap<String, String>,
    default: Option<String>,
}

/// What a canonical field holds, from the schema: how a payload value is read into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Count,
    Boolean,
    Timestamp,
    /// A free-form object (`variables`, `extracted`).
    Object,
    /// One of the schema's values (`call.outcome`, `direction`, …).
    Enum,
}

#[derive(Debug)]
struct Field {
    /// The canonical path below `session`.
    path: Vec<String>,
    kind: Kind,
    pointer: String,
    /// The schema's values, for an enumerated field.
    allowed: Vec<String>,
}

#[derive(Debug)]
struct Values {
    path: Vec<String>,
    from: String,
    map: HashMap<String, String>,
    default: Option<String>,
}

/// A declared vendor's mapping, checked.
#[derive(Debug)]
pub struct Mapping {
    event: String,
    session_id: String,
    occurred_at: String,
    dedup: Vec<String>,
    events: HashMap<String, Vec<EventType>>,
    fields: Vec<Field>,
    values: Vec<Values>,
}

/// Whether `pointer` is an RFC 6901 JSON Pointer: empty, or `/`-separated tokens in which
/// `~` is only ever `~0` or `~1`.
fn is_pointer(pointer: &str) -> bool {
    (pointer.is_empty() || pointer.starts_with('/'))
        && pointer
            .split('~')
            .skip(1)
            .all(|after| after.starts_with('0') || after.starts_with('1'))
}

fn pointer(key: &str, value: String) -> Result<String, ConfigError> {
    if is_pointer(&value) {
        Ok(value)
    } else {
        Err(invalid(
            key,
            format!("`{value}` is not a JSON Pointer (RFC 6901) such as \"/data/call_id\""),
        ))
    }
}

/// The schema of the canonical field at `path` (`session.…`), and what it holds.
fn canonical(key: &str, path: &str) -> Result<(Vec<String>, Kind, Vec<String>), ConfigError> {
    let segments: Vec<&str> = path.split('.').collect();
    let unknown = || {
        invalid(
            key,
            format!(
                "the canonical event has no field `{path}` to fill (see schema/session-event.v3.json)"
            ),
        )
    };
    if segments.first() != Some(&"session") || segments.len() < 2 || segments[1] == "id" {
        return Err(unknown());
    }
    let node = schema::field(&segments).ok_or_else(unknown)?;
    let allowed: Vec<String> = node
        .get("enum")
        .and_then(Value::as_array)
        .map(|values| {
            values
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let kind = if !allowed.is_empty() {
        Kind::Enum
    } else if node
        .get("pattern")
        .and_then(Value::as_str)
        .is_some_and(|p| p.starts_with("^[0-9]{4}-"))
    {
        Kind::Timestamp
    } else {
        match schema::type_name(node) {
            Some("string") => Kind::Text,
            Some("number") => Kind::Number,
            Some("integer") => Kind::Count,
            Some("boolean") => Kind::Boolean,
            // Only the free-form ones: an object with fields of its own is filled field by
            // field (`session.call.outcome`, not `session.call`).
            Some("object") if node.get("properties").is_none() => Kind::Object,
            _ => {
                return Err(invalid(
                    key,
                    format!("`{path}` is an object with fields of its own: map its fields"),
                ));
            }
        }
    };
    let path = segments[1..].iter().map(|s| (*s).to_owned()).collect();
    Ok((path, kind, allowed))
}

impl Mapping {
    /// Checks a mapping; `key` is where it is written (`sources[0].mapping`).
    pub fn parse(key: &str, raw: RawMapping) -> Result<Mapping, ConfigError> {
        let event = pointer(&format!("{key}.event"), raw.event)?;
        let session_id = pointer(&format!("{key}.session_id"), raw.session_id)?;
        let occurred_at = pointer(&format!("{key}.occurred_at"), raw.occurred_at)?;
        if raw.dedup.is_empty() {
            return Err(invalid(
                format!("{key}.dedup"),
                "needs at least one pointer: what tells one vendor event from another",
            ));
        }
        let dedup = raw
            .dedup
            .into_iter()
            .enumerate()
            .map(|(i, p)| pointer(&format!("{key}.dedup[{i}]"), p))
            .collect::<Result<_, _>>()?;
        if raw.events.is_empty() {
            return Err(invalid(
                format!("{key}.events"),
                "needs at least one vendor event type and the canonical events it becomes",
            ));
        }
        let mut events = HashMap::new();
        for (vendor_type, types) in raw.events {
            let k = format!("{key}.events.\"{vendor_type}\"");
            if types.is_empty() {
                return Err(invalid(&k, "needs at least one canonical event type"));
            }
            let types = types
                .iter()
                .map(|t| {
                    EventType::parse(t).ok_or_else(|| {
                        invalid(
                            &k,
                            format!(
                                "`{t}` is not a canonical event type (one of {})",
                                EventType::ALL.map(EventType::as_str).join(", ")
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            events.insert(vendor_type, types);
        }
        let mut fields = Vec::new();
        for (path, p) in raw.fields {
            let k = format!("{key}.fields.\"{path}\"");
            let (path, kind, allowed) = canonical(&k, &path)?;
            fields.push(Field {
                path,
                kind,
                pointer: pointer(&k, p)?,
                allowed,
            });
        }
        let mut values = Vec::new();
        for (path, table) in raw.values {
            let k = format!("{key}.values.\"{path}\"");
            let (segments, kind, allowed) = canonical(&k, &path)?;
            if kind != Kind::Enum {
                return Err(invalid(
                    &k,
                    format!("`{path}` takes any value; map it in fields"),
                ));
            }
            for value in table.map.values().chain(table.default.iter()) {
                if !allowed.contains(value) {
                    return Err(invalid(
                        &k,
                        format!(
                            "`{value}` is not a value of `{path}` (one of {})",
                            allowed.join(", ")
                        ),
                    ));
                }
            }
            if fields.iter().any(|f| f.path == segments) {
                return Err(invalid(&k, format!("`{path}` is in fields too: keep one")));
            }
            values.push(Values {
                path: segments,
                from: pointer(&format!("{k}.from"), table.from)?,
                map: table.map.into_iter().collect(),
                default: table.default,
            });
        }
        let mapped =
            |p: &[&str]| fields.iter().any(|f| f.path == p) || values.iter().any(|v| v.path == p);
        if mapped(&["cost", "amount"]) != mapped(&["cost", "currency"]) {
            return Err(invalid(
                format!("{key}.fields"),
                "session.cost needs both amount and currency (money without its currency is not money)",
            ));
        }
        Ok(Mapping {
            event,
            session_id,
            occurred_at,
            dedup,
            events,
            fields,
            values,
        })
    }

    /// The canonical fields this mapping fills, with the payload pointer each is read from
    /// (for redaction of `raw`), as dotted paths.
    pub fn raw_fields(&self) -> Vec<(String, Vec<String>)> {
        self.fields
            .iter()
            .map(|f| (f.path.join("."), &f.pointer))
            .chain(self.values.iter().map(|v| (v.path.join("."), &v.from)))
            .map(|(path, pointer)| {
                let raw = pointer
                    .split('/')
                    .skip(1)
                    .map(|t| t.replace("~1", "/").replace("~0", "~"))
                    .collect();
                (format!("session.{path}"), raw)
            })
            .collect()
    }

    /// Maps one verified body.
    pub fn normalize(&self, body: &[u8]) -> Result<Normalized, PayloadError> {
        let root = Value::Object(super::fields::parse_object(body)?);
        let at = |p: &str| root.pointer(p).filter(|v| !v.is_null());
        let text = |p: &str| -> Result<String, PayloadError> {
            match at(p) {
                None => Err(PayloadError::Missing(p.to_owned())),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(_) => Err(PayloadError::WrongType {
                    field: p.to_owned(),
                    expected: "a string or a number",
                }),
            }
        };
        let vendor_type = text(&self.event)?;
        check_id(&self.event, &vendor_type)?;
        let Some(types) = self.events.get(&vendor_type) else {
            return Ok(Normalized::Ignored {
                vendor_event_type: Some(vendor_type),
            });
        };
        let session_id = text(&self.session_id)?;
        check_id(&self.session_id, &session_id)?;
        let occurred_at = timestamp(&self.occurred_at, at(&self.occurred_at))?
            .ok_or_else(|| PayloadError::Missing(self.occurred_at.clone()))?;
        let mut key = Vec::new();
        for p in &self.dedup {
            key.push(match at(p) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => return Err(PayloadError::Missing(p.clone())),
            });
        }
        // Length-prefixed, so that no two different keys read the same.
        let duplicate_key = key
            .iter()
            .map(|k| format!("{}:{k}", k.len()))
            .collect::<Vec<_>>()
            .join("|");

        let mut session = Map::new();
        for field in &self.fields {
            if let Some(value) = read(field, at(&field.pointer))? {
                put(&mut session, &field.path, value);
            }
        }
        for table in &self.values {
            let given = match at(&table.from) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            };
            let value = given
                .and_then(|g| table.map.get(&g).cloned())
                .or_else(|| table.default.clone());
            if let Some(value) = value {
                put(&mut session, &table.path, Value::String(value));
            }
        }
        // What the nested objects need to be canonical, where the mapping fills them in
        // part: a call with no outcome mapped is `unknown`; a recording with a URL is ready.
        if let Some(Value::Object(call)) = session.get_mut("call") {
            call.entry("outcome").or_insert_with(|| "unknown".into());
        }
        if let Some(Value::Object(recording)) = session.get_mut("recording") {
            let ready = recording.get("url").is_some_and(|u| !u.is_null());
            recording
                .entry("status")
                .or_insert_with(|| if ready { "ready" } else { "failed" }.into());
        }
        session.insert("id".into(), Value::String(session_id.clone()));
        for keyed in ["variables", "extracted"] {
            session
                .entry(keyed)
                .or_insert_with(|| Value::Object(Map::new()));
        }
        let mut facts: Session = serde_json::from_value(Value::Object(session)).map_err(|e| {
            PayloadError::WrongType {
                field: format!("mapping ({e})"),
                expected: "values of the canonical fields' types",
            }
        })?;
        // The vendor said the session ended, or began: its state, unless mapped.
        if facts.state.is_none() {
            facts.state = if types
                .iter()
                .any(|t| matches!(t, EventType::SessionEnded | EventType::SessionFinalized))
            {
                Some(SessionState::Closed)
            } else if types.contains(&EventType::SessionStarted) {
                Some(SessionState::Open)
            } else {
                None
            };
        }
        Ok(Normalized::Events(Recognized {
            duplicate_key,
            ..Recognized::new(
                &session_id,
                &vendor_type,
                types
                    .iter()
                    .map(|&t| Draft::new(t, occurred_at, facts.clone()))
                    .collect(),
            )
        }))
    }
}

fn check_id(pointer: &str, id: &str) -> Result<(), PayloadError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(PayloadError::WrongType {
            field: pointer.to_owned(),
            expected: "1 to 256 bytes of text without control characters",
        });
    }
    Ok(())
}

/// A time: RFC 3339 text, or a Unix time in seconds or milliseconds (by magnitude).
fn timestamp(pointer: &str, value: Option<&Value>) -> Result<Option<Timestamp>, PayloadError> {
    let wrong = || PayloadError::WrongType {
        field: pointer.to_owned(),
        expected: "an RFC 3339 timestamp or a Unix time in seconds or milliseconds",
    };
    let Some(value) = value else {
        return Ok(None);
    };
    let text_number = value
        .as_str()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<f64>().ok());
    let number = value.as_f64().or(text_number);
    match (value, number) {
        (_, Some(n)) => {
            let ms = if n < 1e11 { n * 1000.0 } else { n };
            if !(0.0..=253_402_300_799_999.0).contains(&ms) {
                return Err(wrong());
            }
            Ok(Some(Timestamp::from_unix_millis(ms.round() as i64)))
        }
        (Value::String(s), None) => Timestamp::parse(s).map(Some).ok_or_else(wrong),
        _ => Err(wrong()),
    }
}

/// A payload value read as the canonical field wants it; absent or null is nothing, and a
/// value of the wrong type is 400 naming the pointer. An enumerated field's value the
/// schema does not know is left out (`raw` keeps it), as the built-in adapters do.
fn read(field: &Field, value: Option<&Value>) -> Result<Option<Value>, PayloadError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let wrong = |expected| PayloadError::WrongType {
        field: field.pointer.clone(),
        expected,
    };
    Ok(Some(match field.kind {
        Kind::Text => match value {
            Value::String(_) => value.clone(),
            Value::Number(_) | Value::Bool(_) => Value::String(value.to_string()),
            _ => return Err(wrong("a string")),
        },
        Kind::Number => match value {
            Value::Number(_) => value.clone(),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| wrong("a number"))?,
            _ => return Err(wrong("a number")),
        },
        Kind::Count => match value
            .as_u64()
            .or_else(|| value.as_str()?.trim().parse().ok())
        {
            Some(n) => Value::from(n),
            None => return Err(wrong("a non-negative integer")),
        },
        Kind::Boolean => match value {
            Value::Bool(_) => value.clone(),
            Value::String(s) if s == "true" || s == "false" => Value::Bool(s == "true"),
            _ => return Err(wrong("a boolean")),
        },
        Kind::Timestamp => match timestamp(&field.pointer, Some(value))? {
            Some(t) => Value::String(t.to_string()),
            None => return Ok(None),
        },
        Kind::Object => match value {
            Value::Object(_) => value.clone(),
            _ => return Err(wrong("an object")),
        },
        Kind::Enum => match value.as_str() {
            Some(s) if field.allowed.iter().any(|a| a == s) => value.clone(),
            _ => return Ok(None),
        },
    }))
}

/// Sets `value` at `path` in `object`, making the objects on the way.
fn put(object: &mut Map<String, Value>, path: &[String], value: Value) {
    let (last, parents) = path.split_last().expect("a canonical path below session");
    let mut at = object;
    for segment in parents {
        let next = at
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        at = next.as_object_mut().expect("made an object above");
    }
    at.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::vendors::Vendor;
    use crate::vendors::test_support::{fixture, normalize as built_in};

    fn mapping(raw: Value) -> Result<Mapping, String> {
        let raw: RawMapping = serde_json::from_value(raw).map_err(|e| e.to_string())?;
        Mapping::parse("sources[0].mapping", raw).map_err(|e| e.to_string())
    }

    /// The contract's example (section 14).
    fn acme() -> Mapping {
        mapping(json!({
            "event": "/type",
            "session_id": "/data/call_id",
            "occurred_at": "/data/timestamp",
            "dedup": ["/type", "/data/call_id"],
            "events": {
                "call.started": ["session.started"],
                "call.completed": ["session.ended", "call.ended", "session.finalized"]
            },
            "fields": {
                "session.customer.phoneNumber": "/data/from",
                "session.call.durationSeconds": "/data/duration_sec",
                "session.call.vendorStatus": "/data/end_reason",
                "session.analysis.summary": "/data/summary",
                "session.extracted": "/data/extracted",
                "session.recording.url": "/data/recording_url"
            },
            "values": {
                "session.call.outcome": {
                    "from": "/data/end_reason",
                    "map": {"hangup": "completed", "no_answer": "no_answer"},
                    "default": "unknown"
                }
            }
        }))
        .unwrap()
    }

    fn events(m: &Mapping, body: Value) -> Result<Normalized, PayloadError> {
        m.normalize(&serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn the_contracts_example_maps_to_canonical_events() {
        let body = json!({"type": "call.completed", "data": {
            "call_id": "c-1", "timestamp": 1778601676, "from": "+14155550100",
            "duration_sec": "63", "end_reason": "hangup", "summary": "Booked.",
            "extracted": {"slot": "Thu"}, "recording_url": "https://r.example/c-1.wav"}});
        let Normalized::Events(r) = events(&acme(), body).unwrap() else {
            panic!("events")
        };
        assert_eq!(r.session_id, "c-1");
        assert_eq!(r.vendor_event_type, "call.completed");
        assert_eq!(r.duplicate_key, "14:call.completed|3:c-1");
        let types: Vec<_> = r.events.iter().map(|d| d.event_type).collect();
        assert_eq!(
            types,
            [
                EventType::SessionEnded,
                EventType::CallEnded,
                EventType::SessionFinalized
            ]
        );
        let d = &r.events[0];
        assert_eq!(d.occurred_at.to_string(), "2026-05-12T16:01:16.000Z");
        let s = &d.session;
        assert_eq!(
            s.state,
            Some(SessionState::Closed),
            "the vendor said it ended"
        );
        assert_eq!(
            s.customer.as_ref().unwrap().phone_number.as_deref(),
            Some("+14155550100")
        );
        let call = s.call.as_ref().unwrap();
        assert_eq!(call.outcome, crate::event::CallOutcome::Completed);
        assert_eq!(call.vendor_status.as_deref(), Some("hangup"));
        assert_eq!(call.duration_seconds.as_ref().unwrap().as_f64(), Some(63.0));
        assert_eq!(s.extracted["slot"], "Thu");
        let rec = s.recording.as_ref().unwrap();
        assert_eq!(rec.status, crate::event::RecordingStatus::Ready);
    }

    #[test]
    fn what_a_payload_lacks_or_gets_wrong_is_named_by_its_pointer() {
        let m = acme();
        let ok = json!({"type": "call.started", "data": {"call_id": "c", "timestamp": "2026-05-12T16:00:00Z"}});
        assert!(matches!(events(&m, ok.clone()), Ok(Normalized::Events(_))));
        let ignored = json!({"type": "call.ringing", "data": {}});
        assert!(matches!(
            events(&m, ignored),
            Ok(Normalized::Ignored { vendor_event_type: Some(t) }) if t == "call.ringing"
        ));
        for (pointer, value, error) in [
            ("/type", Value::Null, "missing required field `/type`"),
            (
                "/data/call_id",
                Value::Null,
                "missing required field `/data/call_id`",
            ),
            (
                "/data/timestamp",
                Value::Null,
                "missing required field `/data/timestamp`",
            ),
            (
                "/data/timestamp",
                json!("soon"),
                "field `/data/timestamp` must be an RFC 3339 timestamp or a Unix time in seconds or milliseconds",
            ),
            (
                "/data/duration_sec",
                json!([1]),
                "field `/data/duration_sec` must be a number",
            ),
            (
                "/data/extracted",
                json!("x"),
                "field `/data/extracted` must be an object",
            ),
        ] {
            let mut body = ok.clone();
            *body.pointer_mut(pointer).unwrap_or(&mut Value::Null) = value.clone();
            if value.is_null() {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                body.pointer_mut(if parent.is_empty() { "" } else { parent })
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove(key);
            } else if body.pointer(pointer).is_none() {
                body["data"][pointer.rsplit('/').next().unwrap()] = value;
            }
            let e = events(&m, body).unwrap_err();
            assert_eq!(e.to_string(), error, "{pointer}");
        }
    }

    #[test]
    fn check_config_refuses_what_could_never_map() {
        let base = json!({"event": "/t", "session_id": "/s", "occurred_at": "/at",
                          "dedup": ["/t"], "events": {"x": ["session.ended"]}});
        let with = |key: &str, value: Value| {
            let mut m = base.clone();
            m[key] = value;
            mapping(m).unwrap_err()
        };
        let cases = [
            (
                with("event", json!("type")),
                "sources[0].mapping.event`: `type` is not a JSON Pointer",
            ),
            (
                with("session_id", json!("/a~2b")),
                "sources[0].mapping.session_id`",
            ),
            (
                with("dedup", json!([])),
                "sources[0].mapping.dedup`: needs at least one pointer",
            ),
            (
                with("events", json!({"x": ["session.created"]})),
                "`session.created` is not a canonical event type",
            ),
            (with("events", json!({})), "sources[0].mapping.events`"),
            (
                with("fields", json!({"session.nope": "/x"})),
                "the canonical event has no field `session.nope`",
            ),
            (
                with("fields", json!({"session.call": "/x"})),
                "is an object with fields of its own",
            ),
            (
                with("fields", json!({"session.id": "/x"})),
                "has no field `session.id`",
            ),
            (
                with("fields", json!({"session.cost.amount": "/x"})),
                "session.cost needs both amount and currency",
            ),
            (
                with(
                    "values",
                    json!({"session.call.outcome": {"from": "/r", "map": {"a": "hung_up"}}}),
                ),
                "`hung_up` is not a value of `session.call.outcome`",
            ),
            (
                with(
                    "values",
                    json!({"session.agentId": {"from": "/r", "map": {}}}),
                ),
                "takes any value; map it in fields",
            ),
        ];
        for (error, expected) in cases {
            assert!(error.contains(expected), "{error}\n  expected: {expected}");
        }
        assert!(mapping(base).is_ok());
    }

    /// Pathors re-expressed as a mapping gives the built-in adapter's canonical events for
    /// every Pathors fixture, except what a mapping cannot say (named in the README):
    /// the channel told from which fields are present, `endedAt` from `session.ended`'s
    /// time only, `closed` on `call.ended`, and the recording URL's 15-minute expiry.
    #[test]
    fn pathors_as_a_mapping_matches_the_built_in_adapter() {
        let pathors = mapping(json!({
            "event": "/event",
            "session_id": "/sessionId",
            "occurred_at": "/timestamp",
            "dedup": ["/event"],
            "events": {
                "session.ended": ["session.ended"],
                "call.ended": ["call.ended"],
                "recording.ready": ["recording.ready"],
                "session.finalized": ["session.finalized"]
            },
            "fields": {
                "session.projectId": "/projectId",
                "session.messageCount": "/messagesCount",
                "session.currentNodeId": "/currentNodeId",
                "session.extracted": "/extractedVariables",
                "session.call.vendorStatus": "/callStatus",
                "session.call.durationSeconds": "/callDuration",
                "session.recording.url": "/recordingUrl"
            },
            "values": {
                "session.call.outcome": {"from": "/callStatus", "map": {
                    "userHangup": "completed", "agentHangup": "completed", "Ended": "completed",
                    "transferred": "transferred", "errorTransferred": "failed",
                    "voicemail": "voicemail", "busy": "busy", "userNoAnswer": "no_answer",
                    "agentNoAnswer": "no_answer", "userRejected": "rejected",
                    "invalidNumber": "failed", "sipTrunkFailure": "failed", "error": "failed"}},
                "session.call.endedBy": {"from": "/callStatus", "map": {
                    "userHangup": "user", "agentHangup": "agent", "transferred": "agent",
                    "agentNoAnswer": "agent", "userRejected": "user"}},
                "session.recording.status": {"from": "/success", "map": {
                    "true": "ready", "false": "failed"}}
            }
        }))
        .unwrap();
        let unsayable = ["channel", "endedAt", "state"];
        for name in [
            "session-ended.json",
            "call-ended.json",
            "recording-ready.json",
            "recording-failed.json",
            "session-finalized-call.json",
            "session-finalized-text.json",
        ] {
            let body = fixture("pathors", name);
            let (Ok(Normalized::Events(a)), Ok(Normalized::Events(b))) =
                (built_in(Vendor::Pathors, &body), pathors.normalize(&body))
            else {
                panic!("{name}: both map it");
            };
            assert_eq!(a.session_id, b.session_id, "{name}");
            assert_eq!(a.vendor_event_type, b.vendor_event_type, "{name}");
            assert_eq!(a.events.len(), b.events.len(), "{name}");
            for (x, y) in a.events.iter().zip(&b.events) {
                assert_eq!(
                    (x.event_type, x.occurred_at),
                    (y.event_type, y.occurred_at),
                    "{name}"
                );
                let shown = |s: &Session| {
                    let mut v = serde_json::to_value(s).unwrap();
                    for field in unsayable {
                        v[field] = Value::Null;
                    }
                    if v["recording"].is_object() {
                        v["recording"]["expiresAt"] = Value::Null;
                    }
                    v
                };
                assert_eq!(shown(&x.session), shown(&y.session), "{name}");
            }
        }
    }
}
