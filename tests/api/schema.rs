//! Every event the gateway produces from the vendors' documented examples validates against
//! `schema/session-event.v3.json`.

use serde_json::Value;
use sessiongate::store::DeliveryStatus;

use crate::helpers::*;

fn validator() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/session-event.v3.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

#[tokio::test]
async fn every_fixture_produces_events_that_validate_against_the_schema() {
    let with_raw = TestReceiver::start().await;
    let without_raw = TestReceiver::start().await;
    let app = spawn_app(format!(
        "[[targets]]\nname = \"raw\"\nurl = \"{}\"\n[[targets]]\nname = \"lean\"\nurl = \"{}\"\ninclude_raw = false\nsecret = \"env:TARGET_SECRET\"",
        with_raw.url("/"),
        without_raw.url("/")
    ))
    .await;
    let pathors = [
        "session-ended.json",
        "call-ended.json",
        "recording-ready.json",
        "recording-failed.json",
        "session-finalized-call.json",
        "session-finalized-text.json",
    ];
    let mut accepted = 0;
    for name in pathors {
        if app
            .post_pathors(&fixture("pathors", name))
            .await
            .status()
            .as_u16()
            == 202
        {
            accepted += 1;
        }
    }
    for name in ["session-created.json", "session-ended.json"] {
        assert_eq!(
            app.post_agntix(&fixture("agntix", name))
                .await
                .status()
                .as_u16(),
            202
        );
    }
    // recording-failed shares its duplicate key with recording-ready (same session, same
    // event type): Pathors' key is (sessionId, event), so it is a duplicate.
    assert_eq!(accepted, 5);
    let events = 5 + 1 + 2;
    app.wait_for_deliveries(DeliveryStatus::Delivered, 2 * events)
        .await;

    let validator = validator();
    for got in with_raw
        .received()
        .iter()
        .chain(without_raw.received().iter())
    {
        let event = got.json();
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not validate: {errors:#?}",
            event["type"]
        );
    }
    let mut types: Vec<String> = with_raw
        .received()
        .iter()
        .map(|g| g.json()["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "call.ended",
            "recording.ready",
            "session.ended",
            "session.ended",
            "session.finalized",
            "session.finalized",
            "session.finalized",
            "session.started"
        ]
    );
}

#[test]
fn the_schema_rejects_what_the_contract_forbids() {
    let validator = validator();
    let good: Value = serde_json::json!({
        "specVersion": "3",
        "id": "evt_0123456789abcdef0123456789abcdef",
        "type": "session.ended",
        "occurredAt": "2026-05-03T08:42:11.512Z",
        "receivedAt": "2026-05-03T08:42:11.530Z",
        "source": {"name": "p", "vendor": "pathors", "eventType": "session.ended", "messageId": null, "recovered": false},
        "session": {
            "id": "s", "channel": null, "platform": null, "direction": null, "state": "closed",
            "agentId": null, "projectId": null, "startedAt": null, "endedAt": null,
            "lastActivityAt": null, "messageCount": 3, "currentNodeId": null, "customer": null,
            "agentNumber": null, "variables": {}, "extracted": {}, "call": null, "analysis": null,
            "cost": null, "recording": null, "transcript": null
        }
    });
    assert!(validator.is_valid(&good));
    let broken = |path: &[&str], value: Value| {
        let mut v = good.clone();
        let mut at = &mut v;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        v
    };
    assert!(!validator.is_valid(&broken(&["type"], "session.created".into())));
    assert!(!validator.is_valid(&broken(&["session", "channel"], "video".into())));
    assert!(!validator.is_valid(&broken(&["session", "messageCount"], (-1).into())));
    assert!(!validator.is_valid(&broken(&["occurredAt"], "2026-05-03 08:42".into())));
    assert!(!validator.is_valid(&broken(&["id"], "123".into())));
    let cost = |c: Value| broken(&["session", "cost"], c);
    assert!(validator.is_valid(&cost(
        serde_json::json!({"amount": 0.175, "currency": "USD"})
    )));
    assert!(!validator.is_valid(&cost(
        serde_json::json!({"amount": 412, "currency": "credits"})
    )));
    assert!(!validator.is_valid(&broken(&["source", "recovered"], Value::Null)));
    let transcript = |t: Value| broken(&["session", "transcript"], t);
    assert!(validator.is_valid(&transcript(serde_json::json!({
        "status": "complete",
        "messages": [{"id": "m1", "role": "user", "content": "hi", "at": null, "toolCall": null}]
    }))));
    assert!(validator.is_valid(&transcript(
        serde_json::json!({"status": "unavailable", "reason": "http_503", "messages": []})
    )));
    assert!(!validator.is_valid(&transcript(
        serde_json::json!({"status": "partial", "messages": []})
    )));
    assert!(!validator.is_valid(&transcript(
        serde_json::json!({"status": "complete", "messages": [{"id": "m1", "role": "USER", "content": "hi", "at": null, "toolCall": null}]})
    )));
}
