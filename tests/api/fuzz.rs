//! Property-based fuzzing of everything that parses untrusted input: the vendor adapters,
//! the signature headers, and the configuration. No input may panic; every input an adapter
//! accepts must become events that validate against the schema.
//!
//! (`cargo fuzz` needs a nightly toolchain, which this project's machines do not have; these
//! run in `cargo test` with a bounded number of cases.)

use std::sync::OnceLock;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::web::Bytes;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sessiongate::auth::SourceAuth;
use sessiongate::config::Config;
use sessiongate::event::{Session, Timestamp};
use sessiongate::ingest::settings::Source;
use sessiongate::ingest::{Arrival, build_accept};
use sessiongate::vendors::{Normalized, Vendor};

use crate::helpers::*;

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/session-event.v3.json");
        let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    })
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        Just(json!("2026-05-03T08:42:11.512Z")),
        Just(json!("2026-05-03T10:42:11+02:00")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A vendor-shaped body: the fields the adapters read, each present or not, with values
/// that are sometimes right and sometimes anything at all.
fn vendor_body() -> impl Strategy<Value = Value> {
    let keys = [
        "event",
        "eventType",
        "reason",
        "sessionId",
        "id",
        "timestamp",
        "createdAt",
        "endedAt",
        "updatedAt",
        "lastActivityAt",
        "type",
        "platform",
        "direction",
        "state",
        "agentId",
        "projectId",
        "messagesCount",
        "currentNodeId",
        "extractedVariables",
        "callStatus",
        "callDuration",
        "success",
        "recordingUrl",
        "metadata",
        "analysis",
        "data",
    ];
    let known = prop_oneof![
        Just(json!("session.ended")),
        Just(json!("call.ended")),
        Just(json!("recording.ready")),
        Just(json!("session.finalized")),
        Just(json!("session.created")),
        Just(json!("VOICE")),
        Just(json!("PHONE")),
        Just(json!("CLOSED")),
        Just(json!("userHangup")),
        Just(json!(8)),
        Just(json!({"customerPhoneNumber": "+1", "sessionVariables": {"a": 1}})),
        Just(
            json!({"summary": "s", "intent": {"conversation": {"intent": "x", "confidence": 0.5}},
                    "sentiment": {"conversation": {"sentiment": "NEGATIVE", "score": -0.2}},
                    "resolution": {"classification": "UNRESOLVED", "evidence": []},
                    "extractedData": {"k": "v"}})
        ),
        Just(json!("2026-05-03T08:42:11.512Z")),
    ];
    let value = prop_oneof![3 => known, 1 => any_json()];
    prop::collection::vec((prop::sample::select(keys.to_vec()), value), 0..14).prop_map(|fields| {
        let mut map = Map::new();
        for (k, v) in fields {
            map.insert(k.to_owned(), v);
        }
        Value::Object(map)
    })
}

/// A documented example with some fields replaced by anything, or removed.
fn mutated_fixture() -> impl Strategy<Value = (Vendor, Value)> {
    let fixtures: Vec<(Vendor, Value)> = [
        ("pathors", "session-ended.json"),
        ("pathors", "call-ended.json"),
        ("pathors", "recording-ready.json"),
        ("pathors", "recording-failed.json"),
        ("pathors", "session-finalized-call.json"),
        ("pathors", "session-finalized-text.json"),
        ("agntix", "session-created.json"),
        ("agntix", "session-ended.json"),
        ("retell", "call-started.json"),
        ("retell", "call-ended.json"),
        ("retell", "call-analyzed.json"),
        ("vapi", "status-update-in-progress.json"),
        ("vapi", "status-update-ended.json"),
        ("vapi", "end-of-call-report.json"),
        ("elevenlabs", "post-call-transcription.json"),
        ("elevenlabs", "call-initiation-failure.json"),
        ("elevenlabs", "post-call-audio.json"),
        ("bland", "post-call.json"),
        ("bland", "post-call-delayed.json"),
    ]
    .iter()
    .map(|(dir, name)| {
        let vendor = Vendor::parse(dir).expect("a fixture folder is a vendor's name");
        (vendor, serde_json::from_slice(&fixture(dir, name)).unwrap())
    })
    .collect();
    let edit = (".{0,2}|[a-zA-Z]{1,16}", prop::option::of(any_json()));
    (
        prop::sample::select(fixtures),
        prop::collection::vec(edit, 0..4),
        prop::collection::vec(any::<prop::sample::Index>(), 0..3),
    )
        .prop_map(|((vendor, mut body), edits, overwrite)| {
            let object = body.as_object_mut().unwrap();
            let keys: Vec<String> = object.keys().cloned().collect();
            for (i, (key, value)) in edits.into_iter().enumerate() {
                // Half the edits hit existing fields, so most bodies stay recognisable.
                let key = match overwrite.get(i) {
                    Some(index) => keys[index.index(keys.len())].clone(),
                    None => key,
                };
                match value {
                    Some(v) => object.insert(key, v),
                    None => object.remove(&key),
                };
            }
            (vendor, body)
        })
}

fn source(vendor: Vendor) -> Source {
    Source {
        name: vendor.as_str().to_owned(),
        vendor,
        auth: SourceAuth::None,
        transcripts: None,
        max_body_bytes: None,
        finalize_wait: vendor.finalize_wait(),
        recordings_auth: None,
        mapping: None,
        recover: None,
    }
}

/// Runs a body through an adapter and, when it is accepted, renders its events the way the
/// store does and validates them against the schema.
fn check_body(vendor: Vendor, body: &[u8]) -> Result<(), TestCaseError> {
    let source = source(vendor);
    let verified = source
        .auth
        .verify(&HeaderMap::new(), Bytes::copy_from_slice(body))
        .unwrap();
    match vendor.normalize(&verified, sessiongate::event::Timestamp::now()) {
        Err(e) => prop_assert!(!e.to_string().is_empty()),
        Ok(Normalized::Ignored { .. }) => {}
        Ok(Normalized::Events(recognized)) => {
            prop_assert!(!recognized.events.is_empty());
            let arrival = Arrival {
                message_id: None,
                received_at: Timestamp::now(),
                raw: verified.bytes().clone(),
                recovered: false,
                finalize_wait: source.finalize_wait,
            };
            let accept = build_accept(&source, recognized, arrival, &[], None);
            let mut record = sessiongate::sessions::SessionRecord::default();
            for event in &accept.events {
                record.merge(&event.facts, event.occurred_at);
                let session: Session = record.session(&accept.session_id).unwrap();
                let mut rendered: Value =
                    serde_json::from_str(&accept.render(event, &session)).unwrap();
                rendered["raw"] = serde_json::from_slice(body).unwrap();
                let errors: Vec<String> = validator()
                    .iter_errors(&rendered)
                    .map(|e| format!("{e} at {}", e.instance_path))
                    .collect();
                prop_assert!(errors.is_empty(), "{errors:?}\n{rendered:#}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn adapters_never_panic_and_accepted_input_validates(body in vendor_body(), pathors in any::<bool>()) {
        let vendor = if pathors { Vendor::Pathors } else { Vendor::Agntix };
        check_body(vendor, body.to_string().as_bytes())?;
    }

}

proptest! {
    // The richest strategy: most bodies are recognisable, so most cases reach validation.
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_examples_are_rejected_cleanly_or_validate((vendor, body) in mutated_fixture()) {
        check_body(vendor, body.to_string().as_bytes())?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn adapters_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_body(Vendor::Pathors, &bytes)?;
        check_body(Vendor::Agntix, &bytes)?;
    }

    #[test]
    fn signature_headers_never_panic_and_never_verify_without_the_secret(
        id in ".{0,40}",
        timestamp in prop_oneof![".{0,20}", (0i64..4_000_000_000).prop_map(|t| t.to_string()), Just(unix_now().to_string())],
        signature in prop_oneof![".{0,120}", "(v1,[A-Za-z0-9+/=]{0,60} ?){0,4}"],
        unbranded in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let auth = SourceAuth::Svix {
            secrets: vec![sessiongate::auth::standard::Secret::parse(AGNTIX_SECRET).unwrap()],
            tolerance: std::time::Duration::from_secs(300),
        };
        let prefix = if unbranded { "webhook" } else { "svix" };
        let mut headers = HeaderMap::new();
        for (name, value) in [("id", &id), ("timestamp", &timestamp), ("signature", &signature)] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_bytes(format!("{prefix}-{name}").as_bytes()).unwrap(), value);
            }
        }
        prop_assert!(auth.verify(&headers, Bytes::from(body)).is_err());
    }

    #[test]
    fn configuration_parsing_never_panics(toml in "(\\[\\[?(server|storage|delivery|sources|targets)\\]\\]?\n|[a-z_]{1,16} = (\"[a-z:/_.0-9]{0,20}\"|[0-9]{1,6}|true|\\[\"[a-z.]{0,18}\"\\]|\\{ kind = \"(svix|header|none)\" \\})\n){0,12}") {
        let env = |_: &str| None;
        if let Err(e) = Config::from_toml(&toml, &env) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn the_fuzz_corpus_reaches_the_accepting_paths() {
    // Guard against a strategy that only ever produces rejects: the fixtures must pass
    // through the same checks.
    for name in [
        "session-ended.json",
        "call-ended.json",
        "recording-ready.json",
        "session-finalized-call.json",
    ] {
        check_body(Vendor::Pathors, &fixture("pathors", name)).unwrap();
    }
    for name in ["session-created.json", "session-ended.json"] {
        check_body(Vendor::Agntix, &fixture("agntix", name)).unwrap();
    }
}
