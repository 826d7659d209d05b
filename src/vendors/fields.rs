//! Typed reads from a vendor's JSON object, with errors that name the field.
//!
//! Adapters read through [`Fields`] rather than deriving `Deserialize`, so that a request
//! with a wrong or missing field is answered with the field's full path
//! (`analysis.resolution.confidenceScore`), not a byte offset. `null` counts as absent.

use std::fmt;

use serde_json::{Map, Number, Value};

use crate::event::Timestamp;

/// Why a vendor body cannot be turned into events. Answered as 400 `invalid_payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    NotJson(String),
    NotAnObject,
    Missing(String),
    WrongType {
        field: String,
        expected: &'static str,
    },
    /// An object or array nested deeper than `MAX_DEPTH` levels, under `field`.
    TooDeep {
        field: String,
    },
}

/// How deep a vendor body may nest. The stored event wraps the body's objects a few levels
/// further down (`session.extracted…`, `raw…`), and every later read of it must stay within
/// serde_json's recursion limit of 128; real vendor payloads nest fewer than 10 levels.
pub const MAX_DEPTH: usize = 64;

pub use crate::event::MAX_ID_LEN;

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::NotJson(e) => write!(f, "body is not valid JSON: {e}"),
            PayloadError::NotAnObject => f.write_str("body must be a JSON object"),
            PayloadError::Missing(field) => write!(f, "missing required field `{field}`"),
            PayloadError::WrongType { field, expected } => {
                write!(f, "field `{field}` must be {expected}")
            }
            PayloadError::TooDeep { field } => write!(
                f,
                "field `{field}` nests objects or arrays deeper than {MAX_DEPTH} levels"
            ),
        }
    }
}

impl std::error::Error for PayloadError {}

pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, PayloadError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => {
            check_depth(&map)?;
            Ok(map)
        }
        Ok(_) => Err(PayloadError::NotAnObject),
        Err(e) => Err(PayloadError::NotJson(e.to_string())),
    }
}

/// Refuses a body whose nesting would make its stored event unreadable, naming the
/// top-level field that nests too deep. Iterative, so a hostile body cannot overflow the stack.
fn check_depth(map: &Map<String, Value>) -> Result<(), PayloadError> {
    for (key, value) in map {
        // The body itself is level 1, so `key`'s value starts at level 2.
        let mut stack = vec![(value, 2usize)];
        while let Some((value, depth)) = stack.pop() {
            if !(value.is_object() || value.is_array()) {
                continue;
            }
            if depth > MAX_DEPTH {
                return Err(PayloadError::TooDeep {
                    field: printable(key, 64),
                });
            }
            match value {
                Value::Object(m) => stack.extend(m.values().map(|c| (c, depth + 1))),
                Value::Array(a) => stack.extend(a.iter().map(|c| (c, depth + 1))),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Sender-supplied text made safe to log and echo: control characters escaped, at most
/// `max` characters kept.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// A JSON object and its path from the body's root.
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Fields<'a> {
    pub fn root(map: &'a Map<String, Value>) -> Self {
        Fields { map, path: "" }
    }

    /// An object found at `path` (an array's element, say `call.transcript_object.3`).
    pub fn at(map: &'a Map<String, Value>, path: &'a str) -> Self {
        Fields { map, path }
    }

    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn present(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, expected: &'static str) -> PayloadError {
        PayloadError::WrongType {
            field: self.name(key),
            expected,
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, PayloadError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong(key, "a string")),
        }
    }

    pub fn str(&self, key: &str) -> Result<&'a str, PayloadError> {
        match self.opt_str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(self.wrong(key, "a non-empty string")),
            None => Err(PayloadError::Missing(self.name(key))),
        }
    }

    /// An identifier the store keys on (a session id, an event type): present, at most
    /// [`MAX_ID_LEN`] bytes and free of control characters, so that every store takes it
    /// and every log line shows it as it is.
    pub fn id(&self, key: &str) -> Result<&'a str, PayloadError> {
        let id = self.str(key)?;
        self.check_id(key, id)
    }

    /// An optional identifier, checked like [`Fields::id`] when present.
    pub fn opt_id(&self, key: &str) -> Result<Option<&'a str>, PayloadError> {
        self.opt_str(key)?
            .map(|id| self.check_id(key, id))
            .transpose()
    }

    fn check_id(&self, key: &str, id: &'a str) -> Result<&'a str, PayloadError> {
        if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
            return Err(self.wrong(key, "1 to 256 bytes of text without control characters"));
        }
        Ok(id)
    }

    pub fn opt_timestamp(&self, key: &str) -> Result<Option<Timestamp>, PayloadError> {
        match self.opt_str(key) {
            Ok(None) => Ok(None),
            Ok(Some(s)) => Timestamp::parse(s)
                .map(Some)
                .ok_or_else(|| self.wrong(key, "an RFC 3339 timestamp")),
            Err(_) => Err(self.wrong(key, "an RFC 3339 timestamp")),
        }
    }

    pub fn timestamp(&self, key: &str) -> Result<Timestamp, PayloadError> {
        self.opt_timestamp(key)?
            .ok_or_else(|| PayloadError::Missing(self.name(key)))
    }

    /// A Unix time in milliseconds (Retell's `start_timestamp`, Vapi's `timestamp`).
    pub fn opt_unix_millis(&self, key: &str) -> Result<Option<Timestamp>, PayloadError> {
        self.opt_unix(key, 1, "a Unix time in milliseconds")
    }

    /// A Unix time in seconds (ElevenLabs' `event_timestamp`).
    pub fn opt_unix_seconds(&self, key: &str) -> Result<Option<Timestamp>, PayloadError> {
        self.opt_unix(key, 1000, "a Unix time in seconds")
    }

    /// A Unix time whose unit no source settles: below 10^11 it is seconds (10^11 s is the
    /// year 5138), else milliseconds (10^11 ms is March 1973). Digits in a string are read
    /// too, where a vendor's documents disagree on the type.
    pub fn opt_unix_any(&self, key: &str) -> Result<Option<Timestamp>, PayloadError> {
        const EXPECTED: &str = "a Unix time in seconds or milliseconds";
        let value = match self.present(key) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<f64>().ok()
            }
            Some(_) => None,
        }
        .ok_or_else(|| self.wrong(key, EXPECTED))?;
        let ms = if value < 1e11 { value * 1000.0 } else { value };
        if !(0.0..=253_402_300_799_999.0).contains(&ms) {
            return Err(self.wrong(key, EXPECTED));
        }
        Ok(Some(Timestamp::from_unix_millis(ms.round() as i64)))
    }

    fn opt_unix(
        &self,
        key: &str,
        millis_per_unit: i64,
        expected: &'static str,
    ) -> Result<Option<Timestamp>, PayloadError> {
        /// The last millisecond of the year 9999: later instants cannot be written back.
        const LATEST_MS: f64 = 253_402_300_799_999.0;
        let Some(n) = self
            .opt_number(key)
            .map_err(|_| self.wrong(key, expected))?
        else {
            return Ok(None);
        };
        let ms = n.as_f64().unwrap_or(-1.0) * millis_per_unit as f64;
        if !(0.0..=LATEST_MS).contains(&ms) {
            return Err(self.wrong(key, expected));
        }
        Ok(Some(Timestamp::from_unix_millis(ms.round() as i64)))
    }

    pub fn opt_number(&self, key: &str) -> Result<Option<Number>, PayloadError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n.clone())),
            Some(_) => Err(self.wrong(key, "a number")),
        }
    }

    pub fn opt_non_negative(&self, key: &str) -> Result<Option<Number>, PayloadError> {
        match self.opt_number(key) {
            Ok(Some(n)) if n.as_f64().is_some_and(|f| f >= 0.0) => Ok(Some(n)),
            Ok(None) => Ok(None),
            _ => Err(self.wrong(key, "a non-negative number")),
        }
    }

    pub fn opt_count(&self, key: &str) -> Result<Option<u64>, PayloadError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a non-negative integer")),
            Some(_) => Err(self.wrong(key, "a non-negative integer")),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, PayloadError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong(key, "a boolean")),
        }
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, PayloadError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(self.wrong(key, "an array")),
        }
    }

    /// An object field, kept verbatim (e.g. vendor variables).
    pub fn opt_map(&self, key: &str) -> Result<Option<&'a Map<String, Value>>, PayloadError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(self.wrong(key, "an object")),
        }
    }

    /// A nested object to read further fields from. `path` must be this object's path to it
    /// (callers pass a literal such as `"analysis.intent"`), so errors can name nested fields
    /// without allocating on the success path.
    pub fn opt_object(&self, key: &str, path: &'a str) -> Result<Option<Fields<'a>>, PayloadError> {
        debug_assert_eq!(path, self.name(key));
        Ok(self.opt_map(key)?.map(|map| Fields { map, path }))
    }

    /// A field of any type, verbatim (a vendor's tool calls).
    pub fn opt_value(&self, key: &str) -> Option<&'a Value> {
        self.present(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.present(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn errors_name_the_full_path() {
        let map = obj(json!({"a": {"b": "x", "n": -1}}));
        let root = Fields::root(&map);
        let a = root.opt_object("a", "a").unwrap().unwrap();
        assert_eq!(
            a.opt_number("b").unwrap_err().to_string(),
            "field `a.b` must be a number"
        );
        assert_eq!(
            a.opt_count("n").unwrap_err().to_string(),
            "field `a.n` must be a non-negative integer"
        );
        assert_eq!(
            a.opt_non_negative("n").unwrap_err().to_string(),
            "field `a.n` must be a non-negative number"
        );
        assert_eq!(
            root.str("missing").unwrap_err().to_string(),
            "missing required field `missing`"
        );
    }

    #[test]
    fn null_counts_as_absent() {
        let map = obj(json!({"s": null, "t": null}));
        let root = Fields::root(&map);
        assert_eq!(root.opt_str("s").unwrap(), None);
        assert_eq!(root.opt_timestamp("t").unwrap(), None);
        assert!(matches!(root.str("s"), Err(PayloadError::Missing(_))));
    }

    #[test]
    fn unix_times_are_read_in_their_unit_and_bounded() {
        let o = obj(
            json!({"ms": 1778594587412_u64, "s": 1778601676, "neg": -1, "far": 1e20, "t": "1"}),
        );
        let f = Fields::root(&o);
        assert_eq!(
            f.opt_unix_millis("ms").unwrap().unwrap().to_string(),
            "2026-05-12T14:03:07.412Z"
        );
        assert_eq!(
            f.opt_unix_seconds("s").unwrap().unwrap().to_string(),
            "2026-05-12T16:01:16.000Z"
        );
        assert_eq!(f.opt_unix_seconds("absent").unwrap(), None);
        for bad in ["neg", "far", "t"] {
            assert_eq!(
                f.opt_unix_millis(bad).unwrap_err().to_string(),
                format!("field `{bad}` must be a Unix time in milliseconds")
            );
        }
    }

    #[test]
    fn a_unix_time_of_unsettled_unit_is_read_by_its_magnitude() {
        let o = obj(
            json!({"s": 1778601676, "ms": 1778599291902_u64, "text": "1778601676", "neg": -5, "word": "soon"}),
        );
        let f = Fields::root(&o);
        let read = |k| f.opt_unix_any(k).unwrap().unwrap().to_string();
        assert_eq!(read("s"), "2026-05-12T16:01:16.000Z");
        assert_eq!(read("ms"), "2026-05-12T15:21:31.902Z");
        assert_eq!(read("text"), "2026-05-12T16:01:16.000Z");
        for bad in ["neg", "word"] {
            assert!(f.opt_unix_any(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_must_be_rfc3339() {
        let map = obj(json!({"t": "2026-05-03 08:42", "u": 5}));
        let root = Fields::root(&map);
        assert_eq!(
            root.timestamp("t").unwrap_err().to_string(),
            "field `t` must be an RFC 3339 timestamp"
        );
        assert!(root.timestamp("u").is_err());
    }

    #[test]
    fn ids_are_bounded_text_without_control_characters() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        let map = obj(json!({
            "nul": "a\u{0}b", "newline": "a\nb", "escape": "\u{1b}[31m", "long": long,
            "ok": "x".repeat(MAX_ID_LEN), "empty": "", "unicode": "sesión-✓"
        }));
        let root = Fields::root(&map);
        for bad in ["nul", "newline", "escape", "long", "empty"] {
            let e = root.id(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
            assert!(root.opt_id(bad).is_err());
        }
        assert!(root.id("ok").is_ok());
        assert_eq!(root.id("unicode").unwrap(), "sesión-✓");
        assert_eq!(root.opt_id("absent").unwrap(), None);
    }

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn bodies_nesting_too_deep_are_refused_naming_the_field() {
        // The body is level 1, so a field may hold MAX_DEPTH - 1 levels.
        let ok = format!(r#"{{"a": 1, "deep": {}}}"#, nested(MAX_DEPTH - 1));
        assert!(parse_object(ok.as_bytes()).is_ok());
        let deep = format!(r#"{{"a": 1, "deep": {}}}"#, nested(MAX_DEPTH));
        assert_eq!(
            parse_object(deep.as_bytes()).unwrap_err(),
            PayloadError::TooDeep {
                field: "deep".into()
            }
        );
        // Just under serde_json's own limit: refused here, not stored to fail on every read.
        let hostile = format!(r#"{{"extractedVariables": {}}}"#, nested(125));
        assert!(
            parse_object(hostile.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("`extractedVariables`")
        );
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(matches!(
            parse_object(b"[1]"),
            Err(PayloadError::NotAnObject)
        ));
        assert!(matches!(
            parse_object(b"{nope"),
            Err(PayloadError::NotJson(_))
        ));
        assert!(parse_object(b"{}").is_ok());
    }
}
