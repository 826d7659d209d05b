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
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::NotJson(e) => write!(f, "body is not valid JSON: {e}"),
            PayloadError::NotAnObject => f.write_str("body must be a JSON object"),
            PayloadError::Missing(field) => write!(f, "missing required field `{field}`"),
            PayloadError::WrongType { field, expected } => {
                write!(f, "field `{field}` must be {expected}")
            }
        }
    }
}

impl std::error::Error for PayloadError {}

pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, PayloadError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(PayloadError::NotAnObject),
        Err(e) => Err(PayloadError::NotJson(e.to_string())),
    }
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
