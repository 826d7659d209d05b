//! Every answer of the README's "Answers" table, the authentication cases, and health.

use std::io::{Read, Write};

use serde_json::{Value, json};
use sessiongate::event::{EventId, EventType};

use crate::helpers::*;

async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error bodies are JSON");
    (
        status,
        body["error"]["code"].as_str().unwrap().to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_new_pathors_event_is_accepted_with_its_stable_id() {
    let app = spawn_app("").await;
    let response = app
        .post_pathors(&fixture("pathors", "session-ended.json"))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    let expected = EventId::derive(
        "pathors",
        "2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04",
        "session.ended",
        EventType::SessionEnded,
    );
    assert_eq!(body, json!({"status": "accepted", "id": expected.as_str()}));
}

#[tokio::test]
async fn a_repeated_vendor_event_is_a_duplicate_and_forwarded_once() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(format!(
        "[[targets]]\nname = \"all\"\nurl = \"{}\"",
        receiver.url("/hook")
    ))
    .await;
    let body = fixture("pathors", "call-ended.json");

    let first: Value = app.post_pathors(&body).await.json().await.unwrap();
    let again = app.post_pathors(&body).await;
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, json!({"status": "duplicate", "id": first["id"]}));

    // Agntix retries arrive with a new Svix message id and timestamp: still a duplicate.
    let agntix = fixture("agntix", "session-created.json");
    assert_eq!(app.post_agntix(&agntix).await.status().as_u16(), 202);
    assert_eq!(app.post_agntix(&agntix).await.status().as_u16(), 200);

    app.wait_for_deliveries(sessiongate::store::DeliveryStatus::Delivered, 2)
        .await;
    let stopped = app.stop().await;
    drop(stopped);
    assert_eq!(
        receiver.received().len(),
        2,
        "each event reaches the receiver once"
    );
}

#[tokio::test]
async fn agntix_accepts_either_rotated_secret_and_both_header_sets() {
    let app = spawn_app("").await;
    let created = fixture("agntix", "session-created.json");
    let ended = fixture("agntix", "session-ended.json");
    let old = svix_headers(AGNTIX_OLD_SECRET, "msg_old", unix_now(), &created);
    assert_eq!(
        app.post("/ingest/agntix", &created, &old)
            .await
            .status()
            .as_u16(),
        202
    );

    let unbranded: Vec<_> = svix_headers(AGNTIX_SECRET, "msg_new", unix_now(), &ended)
        .into_iter()
        .map(|(k, v)| (k.replacen("svix", "webhook", 1), v))
        .collect();
    let unbranded: Vec<(&str, String)> = unbranded
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    assert_eq!(
        app.post("/ingest/agntix", &ended, &unbranded)
            .await
            .status()
            .as_u16(),
        202
    );
}

#[tokio::test]
async fn several_signatures_in_one_header_verify_if_any_matches() {
    let app = spawn_app("").await;
    let body = fixture("agntix", "session-created.json");
    let mut headers = svix_headers(AGNTIX_SECRET, "msg_multi", unix_now(), &body);
    let other = svix_headers(
        "whsec_c29tZW9uZS1lbHNlcy1zZWNyZXQ=",
        "msg_multi",
        unix_now(),
        &body,
    );
    headers[2].1 = format!("{} {}", other[2].1, headers[2].1);
    assert_eq!(
        app.post("/ingest/agntix", &body, &headers)
            .await
            .status()
            .as_u16(),
        202
    );
}

#[tokio::test]
async fn unknown_event_types_are_ignored_and_not_forwarded() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(format!(
        "[[targets]]\nname = \"all\"\nurl = \"{}\"",
        receiver.url("/hook")
    ))
    .await;
    let cases: [(&str, &[u8]); 3] = [
        ("pathors", br#"{"event":"transcript.ready","sessionId":"s1","timestamp":"2026-05-03T08:42:11Z"}"#),
        ("agntix", br#"{"id":"evt_1","type":"message.added","createdAt":"2026-04-08T05:00:00Z","data":{"text":"hi"}}"#),
        ("agntix", br#"{"id":"s2","eventType":"session.updated","createdAt":"2026-04-08T05:00:00Z"}"#),
    ];
    for (source, body) in cases {
        let response = match source {
            "pathors" => app.post_pathors(body).await,
            _ => app.post_agntix(body).await,
        };
        assert_eq!(response.status().as_u16(), 202);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"status": "ignored"})
        );
    }
    assert!(
        app.deliveries(None).await.is_empty(),
        "ignored events create no deliveries"
    );
}

#[tokio::test]
async fn an_unknown_source_is_404() {
    let app = spawn_app("").await;
    let (status, code, message) = error_of(app.post("/ingest/zoom", b"{}", &[]).await).await;
    assert_eq!((status, code.as_str()), (404, "unknown_source"));
    assert!(message.contains("zoom"), "{message}");
}

#[tokio::test]
async fn bad_credentials_are_401_and_say_which_kind_of_problem() {
    let app = spawn_app("").await;
    let pathors = fixture("pathors", "session-ended.json");
    let agntix = fixture("agntix", "session-created.json");
    let now = unix_now();
    let signed = svix_headers(AGNTIX_SECRET, "msg_1", now, &agntix);
    let mut tampered = agntix.clone();
    let at = tampered.iter().position(|&b| b == b'+').unwrap();
    tampered[at + 1] = b'8';

    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        ("/ingest/pathors", pathors.clone(), vec![], "missing"),
        (
            "/ingest/pathors",
            pathors.clone(),
            vec![("authorization", "Bearer wrong".into())],
            "do not match",
        ),
        ("/ingest/agntix", agntix.clone(), vec![], "missing"),
        ("/ingest/agntix", tampered, signed.clone(), "do not match"),
        (
            "/ingest/agntix",
            agntix.clone(),
            svix_headers(AGNTIX_SECRET, "msg_1", now - 301, &agntix),
            "away from the gateway's clock",
        ),
        (
            "/ingest/agntix",
            agntix.clone(),
            svix_headers(AGNTIX_SECRET, "msg_1", now + 600, &agntix),
            "away from the gateway's clock",
        ),
        (
            "/ingest/agntix",
            agntix.clone(),
            svix_headers("whsec_bm90LXRoZS1yaWdodC1zZWNyZXQ=", "msg_1", now, &agntix),
            "do not match",
        ),
        (
            "/ingest/agntix",
            agntix.clone(),
            vec![
                ("svix-id", "msg_1".into()),
                ("svix-timestamp", "yesterday".into()),
                ("svix-signature", signed[2].1.clone()),
            ],
            "malformed",
        ),
    ];
    for (path, body, headers, says) in cases {
        let (status, code, message) = error_of(app.post(path, &body, &headers).await).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "unauthorized"),
            "{path} {headers:?}"
        );
        assert!(message.contains(says), "{message:?} should say {says:?}");
        assert!(!message.contains("whsec_"), "never names a secret");
    }
    assert!(app.deliveries(None).await.is_empty());
}

#[tokio::test]
async fn malformed_payloads_are_400_naming_the_field() {
    let app = spawn_app("").await;
    let cases: [(&str, &[u8], &str); 6] = [
        ("pathors", b"not json", "not valid JSON"),
        ("pathors", b"[1,2]", "JSON object"),
        (
            "pathors",
            br#"{"event":"session.ended","timestamp":"2026-05-03T08:42:11Z"}"#,
            "`sessionId`",
        ),
        (
            "pathors",
            br#"{"event":"session.ended","sessionId":"s"}"#,
            "`timestamp`",
        ),
        (
            "agntix",
            br#"{"id":"s","createdAt":"2026-04-08T05:00:00Z"}"#,
            "`eventType`",
        ),
        (
            "agntix",
            br#"{"eventType":"session.created","id":"s","createdAt":"not a time"}"#,
            "`createdAt`",
        ),
    ];
    for (source, body, says) in cases {
        let response = match source {
            "pathors" => app.post_pathors(body).await,
            _ => app.post_agntix(body).await,
        };
        let (status, code, message) = error_of(response).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_payload"),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(message.contains(says), "{message:?} should say {says:?}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_declared_or_streamed() {
    let mut options = Options::with_targets("");
    options.max_body_bytes = 2048;
    let app = spawn_app_with(options, None).await;
    let big = format!(
        r#"{{"event":"session.ended","pad":"{}"}}"#,
        "x".repeat(4096)
    );
    let (status, code, _) = error_of(app.post_pathors(big.as_bytes()).await).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));

    // Chunked, with no Content-Length: refused while reading.
    let address = app.address.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "POST /ingest/pathors HTTP/1.1\r\nHost: x\r\nAuthorization: {PATHORS_TOKEN}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        for _ in 0..4 {
            let chunk = "y".repeat(1000);
            if write!(stream, "{:x}\r\n{chunk}\r\n", chunk.len()).is_err() {
                break;
            }
        }
        let _ = write!(stream, "0\r\n\r\n");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn a_closed_store_answers_503_and_readyz_turns_503() {
    let app = spawn_app("").await;
    assert_eq!(app.get("/readyz").await.status().as_u16(), 200);
    app.store.close().await;
    let response = app
        .post_pathors(&fixture("pathors", "session-ended.json"))
        .await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    assert!(
        !message.to_lowercase().contains("sqlite"),
        "5xx bodies say nothing internal"
    );
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(ready.json::<Value>().await.unwrap()["store"], "unreachable");
    assert_eq!(
        app.get("/healthz").await.status().as_u16(),
        200,
        "the process still runs"
    );
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let app = spawn_app("").await;
    assert_eq!(
        app.get("/healthz").await.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let ready = app.get("/readyz").await.json::<Value>().await.unwrap();
    assert_eq!(
        ready,
        json!({"status": "ready", "store": "ok", "workers": "running"})
    );
    let (status, code, _) = error_of(app.get("/nowhere").await).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let (status, code, _) = error_of(app.get("/ingest/pathors").await).await;
    assert_eq!(
        (status, code.as_str()),
        (405, "method_not_allowed"),
        "ingest is POST only"
    );
}

/// The voice platforms' signature kinds over HTTP: a source signed Retell's way, one signed
/// ElevenLabs' way and one with the generic HMAC scheme (Bland's settings), each taking a
/// request signed as its vendor signs and refusing a wrong, stale or missing signature.
#[tokio::test]
async fn retell_elevenlabs_and_hmac_signatures_are_verified_over_the_raw_body() {
    use sessiongate::auth::schemes::Algorithm;
    let mut options = Options::with_targets("");
    options.tables = "[[sources]]\nname = \"retell\"\nvendor = \"pathors\"\n\
        auth = { kind = \"retell\", api_key = \"key_retell_0123456789\" }\n\
        [[sources]]\nname = \"eleven\"\nvendor = \"pathors\"\n\
        auth = { kind = \"elevenlabs\", secret = \"wsec_test_0123456789\" }\n\
        [[sources]]\nname = \"bland\"\nvendor = \"pathors\"\n\
        auth = { kind = \"hmac\", secret = \"bland_test_secret\", header = \"X-Webhook-Signature\", payload = \"{body}\", encoding = \"hex\" }\n"
        .into();
    let app = spawn_app_with(options, None).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let session = |n: &str| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&fixture("pathors", "session-ended.json")).unwrap();
        v["sessionId"] = format!("sig-{n}").into();
        serde_json::to_vec(&v).unwrap()
    };

    // Retell: the body followed by the timestamp in ms.
    let retell = |body: &[u8], ts: i64, key: &[u8]| {
        let d = hex::encode(Algorithm::Sha256.mac(key, &[body, ts.to_string().as_bytes()]));
        vec![("x-retell-signature", format!("v={ts},d={d}"))]
    };
    let body = session("retell");
    let ok = app
        .post(
            "/ingest/retell",
            &body,
            &retell(&body, now_ms, b"key_retell_0123456789"),
        )
        .await;
    assert_eq!(ok.status(), 202);
    let wrong = app
        .post(
            "/ingest/retell",
            &session("r2"),
            &retell(&body, now_ms, b"key_retell_0123456789"),
        )
        .await;
    assert_eq!(wrong.status(), 401, "signed another body");
    let stale = app
        .post(
            "/ingest/retell",
            &body,
            &retell(&body, now_ms - 400_000, b"key_retell_0123456789"),
        )
        .await;
    assert_eq!(stale.status(), 401);
    assert!(stale.text().await.unwrap().contains("300 s"));
    let none = app.post("/ingest/retell", &body, &[]).await;
    assert_eq!(none.status(), 401);
    assert!(none.text().await.unwrap().contains("x-retell-signature"));

    // ElevenLabs: `t.body`, the timestamp in seconds.
    let eleven = |body: &[u8], t: i64| {
        let v0 = hex::encode(Algorithm::Sha256.mac(
            b"wsec_test_0123456789",
            &[t.to_string().as_bytes(), b".", body],
        ));
        vec![("elevenlabs-signature", format!("t={t},v0={v0}"))]
    };
    let body = session("eleven");
    let t = now_ms / 1000;
    assert_eq!(
        app.post("/ingest/eleven", &body, &eleven(&body, t))
            .await
            .status(),
        202
    );
    assert_eq!(
        app.post("/ingest/eleven", &body, &eleven(&body, t))
            .await
            .status(),
        200,
        "the same request again is a duplicate"
    );
    assert_eq!(
        app.post("/ingest/eleven", &session("e2"), &eleven(&body, t))
            .await
            .status(),
        401
    );
    assert_eq!(
        app.post("/ingest/eleven", &body, &eleven(&body, t + 600))
            .await
            .status(),
        401,
        "ahead of the clock"
    );

    // The generic scheme with Bland's settings: hex HMAC-SHA256 of the body, any case.
    let body = session("bland");
    let mac = hex::encode(Algorithm::Sha256.mac(b"bland_test_secret", &[&body]));
    assert_eq!(
        app.post(
            "/ingest/bland",
            &body,
            &[("x-webhook-signature", mac.to_uppercase())]
        )
        .await
        .status(),
        202
    );
    assert_eq!(
        app.post(
            "/ingest/bland",
            &session("b2"),
            &[("x-webhook-signature", mac)]
        )
        .await
        .status(),
        401
    );
}

/// A source may take larger bodies than the server's limit (ElevenLabs sends the whole call
/// as base64), and only that source.
#[tokio::test]
async fn a_source_may_have_a_body_limit_of_its_own() {
    let mut options = Options::with_targets("");
    // The server's limit is 64 KiB; this source's is 1 MiB.
    options.tables =
        "[[sources]]\nname = \"big\"\nvendor = \"pathors\"\nmax_body_bytes = 1048576\n\
        auth = { kind = \"header\", header = \"Authorization\", value = \"env:PATHORS_TOKEN\" }\n"
            .into();
    let app = spawn_app_with(options, None).await;
    let mut v: serde_json::Value =
        serde_json::from_slice(&fixture("pathors", "session-ended.json")).unwrap();
    v["padding"] = "x".repeat(200 * 1024).into();
    let body = serde_json::to_vec(&v).unwrap();
    let auth = [("authorization", PATHORS_TOKEN.to_owned())];
    assert_eq!(app.post("/ingest/big", &body, &auth).await.status(), 202);
    let refused = app.post("/ingest/pathors", &body, &auth).await;
    assert_eq!(
        refused.status(),
        413,
        "the other source keeps the server's limit"
    );
    v["padding"] = "x".repeat(1100 * 1024).into();
    let too_big = serde_json::to_vec(&v).unwrap();
    assert_eq!(app.post("/ingest/big", &too_big, &auth).await.status(), 413);
}
