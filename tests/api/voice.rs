//! The voice platforms through the real server: Retell, Vapi and ElevenLabs requests signed
//! exactly as each vendor signs them, their documented examples delivered as canonical v3
//! events, one `session.finalized` per session in every arrival order, and the finalize
//! wait for a completing event that never comes.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;
use sessiongate::store::DeliveryStatus;

use crate::helpers::*;

const RETELL_KEY: &str = "key_retell_test_0123456789";
const VAPI_SECRET: &str = "vapi_hmac_test_secret";
const ELEVENLABS_SECRET: &str = "wsec_test_0123456789";
const BLAND_SECRET: &str = "bland_test_secret";

/// The three sources, configured as the README's "Vendors" section says, with `extra`
/// written into the Retell source.
fn sources(retell_extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"retell\"\nvendor = \"retell\"\n\
         auth = {{ kind = \"retell\", api_key = \"{RETELL_KEY}\" }}\n{retell_extra}\n\
         [[sources]]\nname = \"vapi\"\nvendor = \"vapi\"\n\
         auth = {{ kind = \"hmac\", secret = \"{VAPI_SECRET}\", header = \"x-signature\", \
         timestamp_header = \"x-timestamp\", payload = \"{{timestamp}}.{{body}}\" }}\n\
         [[sources]]\nname = \"elevenlabs\"\nvendor = \"elevenlabs\"\n\
         auth = {{ kind = \"elevenlabs\", secret = \"{ELEVENLABS_SECRET}\" }}\n\
         [[sources]]\nname = \"bland\"\nvendor = \"bland\"\n\
         auth = {{ kind = \"hmac\", secret = \"{BLAND_SECRET}\", header = \"X-Webhook-Signature\", \
         payload = \"{{body}}\", encoding = \"hex\" }}\n"
    )
}

/// Options whose one target, `all`, is `receiver`.
fn delivering_to(receiver: &TestReceiver) -> Options {
    Options::with_targets(format!(
        "[[targets]]\nname = \"all\"\nurl = \"{}\"",
        receiver.url("/")
    ))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The headers each vendor signs `body` with, now.
fn signed(vendor: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    use sessiongate::testing::{elevenlabs_headers, retell_headers, vapi_hmac_headers};
    let ms = now_ms();
    match vendor {
        "retell" => retell_headers(RETELL_KEY, ms, body).to_vec(),
        "vapi" => vapi_hmac_headers(VAPI_SECRET, ms, body).to_vec(),
        "elevenlabs" => elevenlabs_headers(ELEVENLABS_SECRET, ms / 1000, body).to_vec(),
        // Bland: hex HMAC-SHA256 of the body, no timestamp.
        "bland" => sessiongate::testing::bland_headers(BLAND_SECRET, body).to_vec(),
        other => panic!("no signer for {other}"),
    }
}

/// A fixture with its call id replaced (`pointer` is where the vendor keeps it).
fn with_call_id(vendor: &str, name: &str, pointer: &str, id: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture(vendor, name)).unwrap();
    *v.pointer_mut(pointer).unwrap() = id.into();
    serde_json::to_vec(&v).unwrap()
}

fn validator() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/session-event.v3.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

/// The types each session received, in arrival order.
fn by_session(received: &[Received]) -> HashMap<String, Vec<String>> {
    let mut sessions: HashMap<String, Vec<String>> = HashMap::new();
    for r in received {
        let event = r.json();
        sessions
            .entry(event["session"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["type"].as_str().unwrap().to_owned());
    }
    sessions
}

#[tokio::test]
async fn every_voice_platform_fixture_is_delivered_as_canonical_v3_events() {
    let receiver = TestReceiver::start().await;
    let mut options = delivering_to(&receiver);
    options.tables = sources("");
    let app = spawn_app_with(options, None).await;
    let requests = [
        ("retell", "call-started.json", 202),
        ("retell", "call-ended.json", 202),
        ("retell", "call-analyzed.json", 202),
        ("vapi", "status-update-in-progress.json", 202),
        ("vapi", "status-update-ended.json", 202),
        ("vapi", "end-of-call-report.json", 202),
        ("elevenlabs", "post-call-transcription.json", 202),
        ("elevenlabs", "post-call-audio.json", 202),
        ("elevenlabs", "call-initiation-failure.json", 202),
    ];
    for (vendor, name, status) in requests {
        let body = fixture(vendor, name);
        let path = format!("/ingest/{vendor}");
        let answer = app.post(&path, &body, &signed(vendor, &body)).await;
        assert_eq!(answer.status(), status, "{vendor} {name}");
        // Re-delivered (Retell retries; the others may if the customer set it up): 200.
        let again = app.post(&path, &body, &signed(vendor, &body)).await;
        assert_eq!(again.status(), 200, "{vendor} {name} again");
        // Signed with another key, or not at all: 401.
        let mut forged = signed(vendor, &body);
        forged[0].1 = forged[0].1.replace('a', "b").replace('1', "2");
        assert_eq!(
            app.post(&path, &body, &forged).await.status(),
            401,
            "{vendor} {name} forged"
        );
        assert_eq!(
            app.post(&path, &body, &[]).await.status(),
            401,
            "{vendor} {name} unsigned"
        );
    }
    // Retell 4 (started, ended, call.ended, finalized); Vapi 4 (the report's session.ended
    // is the ended update's, stored once); ElevenLabs 4 + 3.
    let received = receiver.wait_for(15).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, 15).await;
    let validator = validator();
    for r in &received {
        let event = r.json();
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{}: {errors:?}",
            event["source"]["eventType"]
        );
        assert_eq!(event["specVersion"], "3");
        assert_eq!(event["source"]["recovered"], false);
    }
    let sessions = by_session(&received);
    let expect = |id: &str, types: &[&str]| {
        let mut got = sessions[id].clone();
        got.sort();
        let mut want: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "{id}");
    };
    let call = [
        "session.started",
        "session.ended",
        "call.ended",
        "session.finalized",
    ];
    expect("call_3f9d2a61c84b4e07b1d5e9a7c20f4b18", &call);
    expect("6e0b2f3c-1a4d-4b7e-9f21-8c5d3a7e0b94", &call);
    expect(
        "conv_01jx8m3q5v7w9y1z3b5d7f9h2k",
        &[
            "session.ended",
            "call.ended",
            "session.finalized",
            "recording.ready",
        ],
    );
    expect(
        "conv_01jx8k7d2f4h6j8m0p2r4t6v8x",
        &["session.ended", "call.ended", "session.finalized"],
    );

    let finalized = |id: &str| {
        received
            .iter()
            .map(Received::json)
            .find(|e| e["session"]["id"] == id && e["type"] == "session.finalized")
            .unwrap()
    };
    let retell = finalized("call_3f9d2a61c84b4e07b1d5e9a7c20f4b18");
    assert_eq!(retell["source"]["eventType"], "call_analyzed");
    assert_eq!(retell["session"]["analysis"]["successful"], true);
    assert_eq!(
        retell["session"]["cost"],
        serde_json::json!({"amount": 0.175, "currency": "USD"})
    );
    assert_eq!(retell["session"]["call"]["outcome"], "completed");
    assert_eq!(retell["session"]["transcript"]["status"], "complete");
    assert_eq!(retell["raw"]["event"], "call_analyzed");
    let vapi = finalized("6e0b2f3c-1a4d-4b7e-9f21-8c5d3a7e0b94");
    assert_eq!(vapi["session"]["call"]["endedBy"], "user");
    assert_eq!(vapi["session"]["extracted"]["rescheduled"], true);
    let eleven = finalized("conv_01jx8m3q5v7w9y1z3b5d7f9h2k");
    assert_eq!(eleven["session"]["agentNumber"], "+14155550123");
    assert_eq!(eleven["session"]["cost"], Value::Null);
    let failed = finalized("conv_01jx8k7d2f4h6j8m0p2r4t6v8x");
    assert_eq!(failed["session"]["call"]["outcome"], "no_answer");
}

/// Retell's events are not blocking and a retry can come late: whatever the order, and
/// however often each comes, one `session.finalized`, carrying the analysis.
#[tokio::test]
async fn a_retell_call_is_finalized_once_in_every_arrival_order() {
    let receiver = TestReceiver::start().await;
    let mut options = delivering_to(&receiver);
    options.tables = sources("");
    let app = spawn_app_with(options, None).await;
    let orders: [&[&str]; 4] = [
        &["call-started.json", "call-ended.json", "call-analyzed.json"],
        &["call-analyzed.json", "call-ended.json", "call-started.json"],
        &[
            "call-ended.json",
            "call-analyzed.json",
            "call-ended.json",
            "call-analyzed.json",
        ],
        &[
            "call-ended.json",
            "call-started.json",
            "call-analyzed.json",
            "call-started.json",
        ],
    ];
    let mut expected = 0;
    for (n, order) in orders.iter().enumerate() {
        let id = format!("call_order_{n}");
        for name in *order {
            let body = with_call_id("retell", name, "/call/call_id", &id);
            let answer = app
                .post("/ingest/retell", &body, &signed("retell", &body))
                .await;
            assert!(matches!(answer.status().as_u16(), 200 | 202), "{id} {name}");
        }
        let mut types: Vec<&str> = order.to_vec();
        types.sort();
        types.dedup();
        // started 1, ended 2 (session.ended and call.ended), analyzed 1.
        expected += types
            .iter()
            .map(|t| if *t == "call-ended.json" { 2 } else { 1 })
            .sum::<usize>();
    }
    let received = receiver.wait_for(expected).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, expected)
        .await;
    assert_eq!(receiver.received().len(), expected, "nothing more");
    for n in 0..orders.len() {
        let id = format!("call_order_{n}");
        let finals: Vec<Value> = received
            .iter()
            .map(Received::json)
            .filter(|e| e["session"]["id"] == id.as_str() && e["type"] == "session.finalized")
            .collect();
        assert_eq!(finals.len(), 1, "{id}");
        assert_eq!(finals[0]["source"]["eventType"], "call_analyzed", "{id}");
        assert_eq!(finals[0]["session"]["analysis"]["successful"], true, "{id}");
        assert_eq!(finals[0]["session"]["state"], "closed", "{id}");
    }
}

/// A Retell `call_analyzed` that never comes: `finalize_wait` after the `call_ended`, the
/// session is finalized with what is known.
#[tokio::test]
async fn the_finalize_wait_finalizes_a_session_whose_completing_event_never_came() {
    let receiver = TestReceiver::start().await;
    let mut options = delivering_to(&receiver);
    options.tables = sources("finalize_wait = \"1s\"");
    let app = spawn_app_with(options, None).await;
    let body = fixture("retell", "call-ended.json");
    let sent = std::time::Instant::now();
    let answer = app
        .post("/ingest/retell", &body, &signed("retell", &body))
        .await;
    assert_eq!(answer.status(), 202);
    let received = receiver.wait_for(3).await;
    let finalized = received
        .iter()
        .map(Received::json)
        .find(|e| e["type"] == "session.finalized")
        .expect("the wait released session.finalized");
    assert!(
        sent.elapsed() >= std::time::Duration::from_secs(1),
        "not before the wait ended"
    );
    assert_eq!(finalized["source"]["eventType"], "call_ended");
    assert_eq!(finalized["session"]["call"]["vendorStatus"], "user_hangup");
    assert_eq!(
        finalized["session"]["analysis"],
        Value::Null,
        "no analysis came"
    );
    assert_eq!(finalized["raw"]["event"], "call_ended");
    // The analysis, late: its facts join the record; nothing more is delivered.
    let late = fixture("retell", "call-analyzed.json");
    let answer = app
        .post("/ingest/retell", &late, &signed("retell", &late))
        .await;
    assert_eq!(answer.status(), 200);
    app.wait_for_deliveries(DeliveryStatus::Delivered, 3).await;
    assert_eq!(receiver.received().len(), 3);
}

/// ElevenLabs' `post_call_audio` carries the whole call as base64 MP3: a 20 MiB recording
/// (a 27 MiB body) is accepted under the source's own body limit and archived from the
/// stored body, decoded a slice at a time, with the gateway's memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_elevenlabs_audio_body_is_archived_with_bounded_memory() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let recordings = dir.path().join("recordings");
    let extra = format!(
        "[[sources]]\nname = \"elevenlabs\"\nvendor = \"elevenlabs\"\n\
         auth = {{ kind = \"elevenlabs\", secret = \"env:TEST_ELEVENLABS_SECRET\" }}\n\
         max_body_bytes = 33554432\n\
         [recordings]\nstore = \"file://{}\"\n\
         [[targets]]\nname = \"r\"\nurl = \"{}\"\ninclude_raw = false\n",
        recordings.display(),
        receiver.url("/")
    );
    let config = gateway_config(dir.path(), &sqlite_in(dir.path()), &extra);
    let gateway = GatewayProcess::start(
        &config,
        &[
            ("TEST_PATHORS_TOKEN", PATHORS_TOKEN),
            ("TEST_ELEVENLABS_SECRET", ELEVENLABS_SECRET),
        ],
    );
    let pid = gateway.child.id();
    let (idle, _) = memory_mib(pid);

    // 20 MiB that do not compress, as MP3 does not.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let audio: Vec<u8> = (0..20 * 1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "type": "post_call_audio",
        "event_timestamp": unix_now(),
        "data": {
            "agent_id": "agent_big",
            "conversation_id": "conv_big_audio",
            "full_audio": base64::engine::general_purpose::STANDARD.encode(&audio),
        }
    }))
    .unwrap();
    let body_mib = body.len() / (1024 * 1024);
    let mut request = reqwest::Client::new()
        .post(gateway.url("/ingest/elevenlabs"))
        .header("content-type", "application/json")
        .timeout(std::time::Duration::from_secs(60))
        .body(body.clone());
    for (name, value) in
        sessiongate::testing::elevenlabs_headers(ELEVENLABS_SECRET, unix_now(), &body)
    {
        request = request.header(name, value);
    }
    let answer = request.send().await.unwrap();
    assert_eq!(answer.status(), 202, "{}", answer.text().await.unwrap());
    drop(body);

    let received = receiver.wait_for(1).await;
    let event = received[0].json();
    assert_eq!(event["type"], "recording.ready");
    let archive = &event["session"]["recording"]["archive"];
    assert_eq!(archive["status"], "archived", "{archive}");
    assert_eq!(archive["bytes"], audio.len());
    assert_eq!(archive["contentType"], "audio/mpeg");
    let sha = hex::encode(sha2::Sha256::digest(&audio));
    assert_eq!(archive["sha256"], sha.as_str());
    let path = archive["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("file://");
    assert_eq!(
        std::fs::read(path).unwrap(),
        audio,
        "the archived object is the audio"
    );

    let (_, peak) = memory_mib(pid);
    println!("RSS while archiving a {body_mib} MiB audio body: idle {idle} MiB, peak {peak} MiB");
    // The body is held while it is verified and parsed, and read back once for the
    // archive; the decoded audio is never whole in memory.
    assert!(
        peak < idle + 5 * body_mib as u64,
        "peak RSS {peak} MiB (idle {idle} MiB)"
    );
}

/// The admin API and the metrics know the new sources by name, with no vendor-specific code:
/// a Retell call's merged record, its timeline and its requests counted under `retell`.
#[tokio::test]
async fn admin_and_metrics_show_voice_platform_sessions_by_source() {
    let mut options = Options::with_targets("");
    options.tables = sources("");
    let app = spawn_app_with(options, None).await;
    for name in ["call-ended.json", "call-analyzed.json"] {
        let body = fixture("retell", name);
        let answer = app
            .post("/ingest/retell", &body, &signed("retell", &body))
            .await;
        assert_eq!(answer.status(), 202);
    }
    let list: Value = app
        .admin(reqwest::Method::GET, "/admin/sessions?vendor=retell")
        .await
        .json()
        .await
        .unwrap();
    let text = list.to_string();
    assert!(
        text.contains("call_3f9d2a61c84b4e07b1d5e9a7c20f4b18"),
        "{text}"
    );
    let one = app
        .admin(
            reqwest::Method::GET,
            "/admin/sessions/retell/call_3f9d2a61c84b4e07b1d5e9a7c20f4b18",
        )
        .await;
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["session"]["analysis"]["successful"], true, "{one}");
    assert_eq!(one["session"]["agentNumber"], "+14155550123", "{one}");
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("source=\"retell\"") && l.contains("accepted")),
        "{metrics}"
    );
}

/// Vapi's messages and ElevenLabs' two post-call webhooks, in every order and repeated:
/// one `session.finalized` per call; with `[recordings]`, ElevenLabs' audio is archived
/// once, and a `session.finalized` after it carries the archive.
#[tokio::test]
async fn vapi_and_elevenlabs_calls_are_finalized_once_in_every_order() {
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"all\"\nurl = \"{}\"\ninclude_raw = false",
        receiver.url("/")
    ));
    options.max_body_bytes = 256 * 1024;
    options.tables = format!(
        "[recordings]\nstore = \"file://{}\"\n{}",
        dir.path().join("recordings").display(),
        sources("")
    );
    let app = spawn_app_with(options, None).await;
    let vapi: [&[&str]; 3] = [
        &[
            "status-update-in-progress.json",
            "status-update-ended.json",
            "end-of-call-report.json",
        ],
        &[
            "end-of-call-report.json",
            "status-update-ended.json",
            "status-update-in-progress.json",
        ],
        &[
            "status-update-ended.json",
            "end-of-call-report.json",
            "end-of-call-report.json",
        ],
    ];
    let eleven: [&[&str]; 3] = [
        &["post-call-audio.json", "post-call-transcription.json"],
        &["post-call-transcription.json", "post-call-audio.json"],
        &[
            "post-call-audio.json",
            "post-call-audio.json",
            "post-call-transcription.json",
            "post-call-transcription.json",
        ],
    ];
    let mut expected = 0;
    for (n, order) in vapi.iter().enumerate() {
        let id = format!("vapi-order-{n}");
        for name in *order {
            let body = with_call_id("vapi", name, "/message/call/id", &id);
            let status = app
                .post("/ingest/vapi", &body, &signed("vapi", &body))
                .await
                .status();
            assert!(
                matches!(status.as_u16(), 200 | 202),
                "{id} {name}: {status}"
            );
        }
        // started (if sent), ended, call.ended, finalized.
        expected += if order.contains(&"status-update-in-progress.json") {
            4
        } else {
            3
        };
    }
    for (n, order) in eleven.iter().enumerate() {
        let id = format!("conv-order-{n}");
        for name in *order {
            let body = with_call_id("elevenlabs", name, "/data/conversation_id", &id);
            let status = app
                .post("/ingest/elevenlabs", &body, &signed("elevenlabs", &body))
                .await
                .status();
            assert!(
                matches!(status.as_u16(), 200 | 202),
                "{id} {name}: {status}"
            );
        }
        // ended, call.ended, finalized, recording.ready.
        expected += 4;
    }
    let received = receiver.wait_for(expected).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, expected)
        .await;
    assert_eq!(receiver.received().len(), expected, "nothing more");
    let events: Vec<Value> = received.iter().map(Received::json).collect();
    let of = |id: &str, t: &str| {
        events
            .iter()
            .filter(|e| e["session"]["id"] == id && e["type"] == t)
            .collect::<Vec<_>>()
    };
    for n in 0..vapi.len() {
        let id = format!("vapi-order-{n}");
        assert_eq!(of(&id, "session.finalized").len(), 1, "{id}");
        assert_eq!(of(&id, "session.ended").len(), 1, "{id}");
    }
    for (n, order) in eleven.iter().enumerate() {
        let id = format!("conv-order-{n}");
        let finals = of(&id, "session.finalized");
        assert_eq!(finals.len(), 1, "{id}");
        let ready = of(&id, "recording.ready");
        assert_eq!(ready.len(), 1, "{id}");
        assert_eq!(
            ready[0]["session"]["recording"]["archive"]["status"], "archived",
            "{id}"
        );
        if order[0] == "post-call-audio.json" {
            assert_eq!(
                finals[0]["session"]["recording"]["archive"]["status"], "archived",
                "{id}: the audio came first, so the finalized carries its archive"
            );
        }
    }
}

/// Bland's two post-call POSTs signed as Bland signs, in every order and repeated: the
/// immediate one ends the session, the delayed one finalizes it with the corrected
/// transcript, once; a replay (no timestamp is signed) is a duplicate.
#[tokio::test]
async fn bland_calls_are_verified_mapped_and_finalized_once_in_every_order() {
    let receiver = TestReceiver::start().await;
    let mut options = delivering_to(&receiver);
    options.tables = sources("");
    let app = spawn_app_with(options, None).await;
    let orders: [&[&str]; 3] = [
        &["post-call.json", "post-call-delayed.json"],
        &["post-call-delayed.json", "post-call.json"],
        &[
            "post-call.json",
            "post-call.json",
            "post-call-delayed.json",
            "post-call-delayed.json",
        ],
    ];
    for (n, order) in orders.iter().enumerate() {
        let id = format!("bland-order-{n}");
        for (i, name) in order.iter().enumerate() {
            let body = with_call_id("bland", name, "/call_id", &id);
            let answer = app
                .post("/ingest/bland", &body, &signed("bland", &body))
                .await;
            let repeat = order[..i].contains(name);
            assert_eq!(
                answer.status(),
                if repeat { 200 } else { 202 },
                "{id} {name}"
            );
            let mut forged = signed("bland", &body);
            forged[0].1 = forged[0].1.replace('a', "b").replace('1', "2");
            assert_eq!(
                app.post("/ingest/bland", &body, &forged).await.status(),
                401
            );
        }
    }
    // ended, call.ended, finalized per call.
    let expected = 3 * orders.len();
    let received = receiver.wait_for(expected).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, expected)
        .await;
    assert_eq!(receiver.received().len(), expected, "nothing more");
    let validator = validator();
    for r in &received {
        let event = r.json();
        assert!(validator.is_valid(&event), "{event}");
    }
    for n in 0..orders.len() {
        let id = format!("bland-order-{n}");
        let finals: Vec<Value> = received
            .iter()
            .map(Received::json)
            .filter(|e| e["session"]["id"] == id.as_str() && e["type"] == "session.finalized")
            .collect();
        assert_eq!(finals.len(), 1, "{id}");
        let f = &finals[0];
        assert_eq!(f["source"]["eventType"], "post-call-delayed", "{id}");
        assert_eq!(f["session"]["cost"]["amount"], 0.041, "{id}");
        assert_eq!(f["session"]["call"]["durationSeconds"], 27.0, "{id}");
        // The delayed transcript has no ids of its own: turns are numbered.
        assert_eq!(f["session"]["transcript"]["messages"][0]["id"], "0", "{id}");
    }
}

/// Twilio's form-encoded callbacks signed as Twilio signs them: the status callback ends
/// and (with a finalize wait for the recording) finalizes the call; the recording callback's
/// `.wav` is fetched with the source's HTTP Basic credentials and archived; `raw` is the
/// parameters as a JSON object; a bad signature is 401, a repeat 200.
#[tokio::test]
async fn twilio_callbacks_are_verified_mapped_and_the_recording_fetched_with_basic_auth() {
    use base64::Engine as _;
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const SID: &str = "AC4f2a6c8e0b1d3f5a7c9e2b4d6f8a0c13";
    const URL: &str = "https://gateway.example.com/ingest/twilio";
    // The recording host: the audio only for the account's credentials.
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"))
    );
    let (host, _handle) = serve(
        web::Data::new(expected),
        |request: HttpRequest, expected: web::Data<String>| async move {
            let authorized = request
                .headers()
                .get("authorization")
                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
            if !authorized {
                return HttpResponse::Unauthorized().finish();
            }
            if !request.path().ends_with(".wav") {
                return HttpResponse::NotFound().finish();
            }
            HttpResponse::Ok()
                .content_type("audio/x-wav")
                .body(vec![7u8; 4096])
        },
    );
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut options = delivering_to(&receiver);
    options.tables = format!(
        "[recordings]\nstore = \"file://{}\"\nallow_private_networks = true\n\
         [[sources]]\nname = \"twilio\"\nvendor = \"twilio\"\n\
         auth = {{ kind = \"twilio\", auth_token = \"{TOKEN}\", public_url = \"{URL}#rc=3\" }}\n\
         recordings_auth = {{ username = \"{SID}\", password = \"{TOKEN}\" }}\n\
         finalize_wait = \"3s\"\n",
        dir.path().join("recordings").display()
    );
    let app = spawn_app_with(options, None).await;
    let post = |body: Vec<u8>, headers: Vec<(&'static str, String)>| {
        let mut request = app
            .client
            .post(format!("{}/ingest/twilio", app.address))
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let status = fixture("twilio", "status-callback-completed.form");
    let signed = |body: &[u8]| sessiongate::testing::twilio_headers(TOKEN, URL, body).to_vec();
    assert_eq!(post(status.clone(), signed(&status)).await, 202);
    assert_eq!(post(status.clone(), signed(&status)).await, 200, "a repeat");
    let mut forged = signed(&status);
    forged[0].1 = sessiongate::testing::twilio_headers("another-token", URL, &status)[0]
        .1
        .clone();
    assert_eq!(post(status.clone(), forged).await, 401);
    let other_url =
        sessiongate::testing::twilio_headers(TOKEN, "https://elsewhere.example/x", &status);
    assert_eq!(post(status.clone(), other_url.to_vec()).await, 401);
    assert_eq!(post(status.clone(), Vec::new()).await, 401, "unsigned");
    let tampered = [&status[..], b"&Extra=1"].concat();
    assert_eq!(post(tampered, signed(&status)).await, 401);

    // The recording callback, its URL on the local host.
    let recording = String::from_utf8(fixture("twilio", "recording-status-completed.form"))
        .unwrap()
        .replace(
            "https%3A%2F%2Fapi.twilio.example",
            &format!("http%3A%2F%2F{host}"),
        )
        .into_bytes();
    assert_eq!(post(recording.clone(), signed(&recording)).await, 202);

    // session.ended, call.ended, recording.ready and (the wait over) session.finalized.
    let received = receiver.wait_for(4).await;
    let events: Vec<Value> = received.iter().map(Received::json).collect();
    let of = |t: &str| events.iter().find(|e| e["type"] == t).unwrap();
    let ready = of("recording.ready");
    let archive = &ready["session"]["recording"]["archive"];
    assert_eq!(archive["status"], "archived", "{ready}");
    assert_eq!(archive["bytes"], 4096);
    let finalized = of("session.finalized");
    assert_eq!(
        finalized["session"]["recording"]["archive"]["status"], "archived",
        "the finalize wait let the recording in"
    );
    assert_eq!(finalized["session"]["call"]["durationSeconds"], 85);
    let ended = of("session.ended");
    assert_eq!(
        ended["raw"]["CallSid"], "CA8e1c5a9d3f7b2e6a0c4d8f2b6e0a4c97",
        "raw is JSON"
    );
    assert_eq!(ended["raw"]["Timestamp"], "Tue, 12 May 2026 18:01:32 +0000");
    let validator = validator();
    for e in &events {
        assert!(validator.is_valid(e), "{e}");
    }
}

/// A vendor declared in configuration (the contract's example, section 14): its requests
/// signed with the generic HMAC scheme, mapped by JSON Pointers into canonical events that
/// are delivered, merged and finalized once like any other vendor's; a payload missing a
/// mapped pointer is 400 naming it; an unmapped type 202 `ignored`; a repeat 200.
#[tokio::test]
async fn a_declared_vendor_is_verified_mapped_and_delivered_like_a_built_in_one() {
    const SECRET: &str = "acme_test_secret";
    let receiver = TestReceiver::start().await;
    let mut options = delivering_to(&receiver);
    options.tables = format!(
        r#"[[sources]]
name = "acme"
vendor = "mapped"
auth = {{ kind = "hmac", secret = "{SECRET}", header = "X-Acme-Signature", payload = "{{timestamp}}.{{body}}", timestamp_header = "X-Acme-Timestamp", encoding = "hex" }}
[sources.mapping]
event = "/type"
session_id = "/data/call_id"
occurred_at = "/data/timestamp"
dedup = ["/type", "/data/call_id"]
events = {{ "call.started" = ["session.started"], "call.completed" = ["session.ended", "call.ended", "session.finalized"] }}
[sources.mapping.fields]
"session.customer.phoneNumber" = "/data/from"
"session.call.durationSeconds" = "/data/duration_sec"
"session.call.vendorStatus" = "/data/end_reason"
"session.analysis.summary" = "/data/summary"
"session.extracted" = "/data/extracted"
[sources.mapping.values]
"session.call.outcome" = {{ from = "/data/end_reason", map = {{ "hangup" = "completed", "no_answer" = "no_answer" }}, default = "unknown" }}
"#
    );
    let app = spawn_app_with(options, None).await;
    let signed = |body: &[u8]| {
        let ts = unix_now().to_string();
        let mac = sessiongate::auth::schemes::Algorithm::Sha256
            .mac(SECRET.as_bytes(), &[ts.as_bytes(), b".", body]);
        vec![
            ("x-acme-signature", hex::encode(mac)),
            ("x-acme-timestamp", ts),
        ]
    };
    let body = |v: Value| serde_json::to_vec(&v).unwrap();
    let completed = body(serde_json::json!({"type": "call.completed", "data": {
        "call_id": "acme-1", "timestamp": "2026-12-07T10:01:00Z", "from": "+14155550100",
        "duration_sec": 63, "end_reason": "hangup", "summary": "Booked.",
        "extracted": {"slot": "Thu"}}}));
    let started = body(serde_json::json!({"type": "call.started", "data": {
        "call_id": "acme-1", "timestamp": 1796637600000_u64}}));
    // Out of order: the end first.
    assert_eq!(
        app.post("/ingest/acme", &completed, &signed(&completed))
            .await
            .status(),
        202
    );
    assert_eq!(
        app.post("/ingest/acme", &started, &signed(&started))
            .await
            .status(),
        202
    );
    assert_eq!(
        app.post("/ingest/acme", &completed, &signed(&completed))
            .await
            .status(),
        200
    );
    let mut forged = signed(&completed);
    forged[0].1 = "00".repeat(32);
    assert_eq!(
        app.post("/ingest/acme", &completed, &forged).await.status(),
        401
    );
    let ringing = body(serde_json::json!({"type": "call.ringing", "data": {}}));
    let answer = app.post("/ingest/acme", &ringing, &signed(&ringing)).await;
    assert_eq!(answer.status(), 202);
    assert_eq!(answer.json::<Value>().await.unwrap()["status"], "ignored");
    let missing = body(serde_json::json!({"type": "call.completed", "data": {"timestamp": 1}}));
    let answer = app.post("/ingest/acme", &missing, &signed(&missing)).await;
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("/data/call_id"));

    let received = receiver.wait_for(4).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, 4).await;
    assert_eq!(receiver.received().len(), 4);
    let validator = validator();
    let events: Vec<Value> = received.iter().map(Received::json).collect();
    for e in &events {
        assert!(validator.is_valid(e), "{e}");
        assert_eq!(e["source"]["vendor"], "mapped");
        assert_eq!(e["source"]["name"], "acme");
    }
    let finalized: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "session.finalized")
        .collect();
    assert_eq!(finalized.len(), 1);
    let s = &finalized[0]["session"];
    assert_eq!(s["call"]["outcome"], "completed");
    assert_eq!(s["call"]["durationSeconds"], 63);
    assert_eq!(s["customer"]["phoneNumber"], "+14155550100");
    assert_eq!(s["extracted"]["slot"], "Thu");
    assert_eq!(s["state"], "closed");
    assert_eq!(finalized[0]["raw"]["data"]["summary"], "Booked.");
}

/// Twilio's callbacks in any order: the end first, then the starts (the first of them is
/// session.started, the next a duplicate), then a child leg's end: one session.finalized,
/// the session stays closed, and the leg's call.ended joins the parent's session without
/// changing its call.
#[tokio::test]
async fn twilio_callbacks_in_any_order_finalize_once() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const URL: &str = "https://gateway.example.com/ingest/twilio";
    let receiver = TestReceiver::start().await;
    let mut options = delivering_to(&receiver);
    options.tables = format!(
        "[[sources]]\nname = \"twilio\"\nvendor = \"twilio\"\n\
         auth = {{ kind = \"twilio\", auth_token = \"{TOKEN}\", public_url = \"{URL}\" }}\n"
    );
    let app = spawn_app_with(options, None).await;
    let form = |pairs: &[(&str, &str)]| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
            .into_bytes()
    };
    let call = |status: &str, seq: &str, at: &str| {
        form(&[
            ("CallSid", "CAorder"),
            ("CallStatus", status),
            ("Direction", "inbound"),
            ("From", "+14155550111"),
            ("To", "+14155550199"),
            ("SequenceNumber", seq),
            ("Timestamp", at),
            ("CallDuration", "42"),
        ])
    };
    let sends = [
        (
            call("completed", "3", "Tue, 12 May 2026 18:01:32 +0000"),
            202,
        ),
        (
            call("initiated", "0", "Tue, 12 May 2026 18:00:40 +0000"),
            202,
        ),
        (call("ringing", "1", "Tue, 12 May 2026 18:00:41 +0000"), 200),
        (
            form(&[
                ("CallSid", "CAleg"),
                ("ParentCallSid", "CAorder"),
                ("CallStatus", "no-answer"),
                ("Timestamp", "Tue, 12 May 2026 18:01:00 +0000"),
            ]),
            202,
        ),
    ];
    for (body, status) in sends {
        let mut request = app
            .client
            .post(format!("{}/ingest/twilio", app.address))
            .body(body.clone());
        for (name, value) in sessiongate::testing::twilio_headers(TOKEN, URL, &body) {
            request = request.header(name, value);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), status);
    }
    // ended, call.ended, finalized (the end finalizes: no wait), started, the leg's call.ended.
    let received = receiver.wait_for(5).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, 5).await;
    assert_eq!(receiver.received().len(), 5);
    let events: Vec<Value> = received.iter().map(Received::json).collect();
    let count = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert_eq!(
        (
            count("session.started"),
            count("session.ended"),
            count("call.ended"),
            count("session.finalized")
        ),
        (1, 1, 2, 1)
    );
    for e in &events {
        assert_eq!(e["session"]["id"], "CAorder");
        if e["type"] != "session.started" {
            assert_eq!(e["session"]["state"], "closed", "{e}");
        }
    }
    let leg = events
        .iter()
        .find(|e| e["type"] == "call.ended" && e["source"]["eventType"] == "no-answer")
        .unwrap();
    assert_eq!(
        leg["session"]["call"]["outcome"], "completed",
        "the parent's call stays"
    );
    assert_eq!(leg["session"]["customer"]["phoneNumber"], "+14155550111");
}
