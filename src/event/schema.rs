//! The canonical event's JSON Schema (`schema/session-event.v3.json`), bundled and parsed
//! once: redaction paths and declared vendors' mappings are checked against it.

use serde_json::Value;

const TEXT: &str = include_str!("../../schema/session-event.v3.json");

/// The schema, parsed once (its `$id` is also every CloudEvent's `dataschema`).
pub static SCHEMA: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| serde_json::from_str(TEXT).expect("the bundled schema is JSON"));

/// `node` with its `$ref` followed.
fn resolve(node: &'static Value) -> Option<&'static Value> {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference
            .strip_prefix("#/")
            .and_then(|p| p.split('/').try_fold(&*SCHEMA, |n, s| n.get(s))),
        None => Some(node),
    }
}

/// Whether `path` names a field of the canonical event (following `$ref`s and `oneOf`);
/// below an object that declares no properties (variables, extracted, raw) any path goes.
pub fn knows(path: &[String]) -> bool {
    knows_below(&SCHEMA, path)
}

fn knows_below(node: &'static Value, path: &[String]) -> bool {
    let Some(node) = resolve(node) else {
        return false;
    };
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    if let Some(alternatives) = node.get("oneOf").and_then(Value::as_array) {
        return alternatives.iter().any(|a| knows_below(a, path));
    }
    match node.get("properties").and_then(Value::as_object) {
        Some(properties) => properties
            .get(first)
            .is_some_and(|child| knows_below(child, rest)),
        // A free-form object: whatever the vendor or the session put there.
        None => node.get("type").and_then(Value::as_str) == Some("object"),
    }
}

/// The schema of the field at `path` (its non-null alternative, `$ref`s followed), if the
/// canonical event declares one there.
pub fn field(path: &[&str]) -> Option<&'static Value> {
    let mut node = resolve(&SCHEMA)?;
    for segment in path {
        node = non_null(node)?;
        node = resolve(node.get("properties")?.get(*segment)?)?;
    }
    non_null(node)
}

/// A field's JSON type, its `null` alternative left out (`["integer", "null"]`: `integer`).
pub fn type_name(node: &Value) -> Option<&str> {
    match node.get("type")? {
        Value::String(t) => Some(t),
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null"),
        _ => None,
    }
}

/// A nullable node's other alternative (`oneOf`/`anyOf` with `{"type": "null"}`).
fn non_null(node: &'static Value) -> Option<&'static Value> {
    let node = resolve(node)?;
    for key in ["oneOf", "anyOf"] {
        if let Some(alternatives) = node.get(key).and_then(Value::as_array) {
            let other = alternatives
                .iter()
                .find(|a| a.get("type").and_then(Value::as_str) != Some("null"))?;
            return non_null(other);
        }
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_resolve_through_refs_and_nullable_alternatives() {
        let outcome = field(&["session", "call", "outcome"]).unwrap();
        assert!(
            outcome["enum"]
                .as_array()
                .unwrap()
                .contains(&"no_answer".into())
        );
        let started = field(&["session", "startedAt"]).unwrap();
        assert!(
            started["pattern"]
                .as_str()
                .unwrap()
                .starts_with("^[0-9]{4}")
        );
        assert_eq!(
            type_name(field(&["session", "messageCount"]).unwrap()),
            Some("integer")
        );
        assert!(field(&["session", "nope"]).is_none());
        assert!(knows(&[
            "session".into(),
            "extracted".into(),
            "anything".into()
        ]));
        assert!(!knows(&["session".into(), "nope".into()]));
    }
}
