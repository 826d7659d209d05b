//! Regression tests for what an attack run and a first-day operator found (issue 11): inputs
//! that used to be stored and then fail, or fail in the database, now get a 4xx naming the
//! problem, the same on both stores.

use serde_json::{Value, json};

use crate::helpers::*;

fn pathors(event: &str, session: &str) -> Value {
    let mut v: Value = serde_json::from_slice(&fixture("pathors", "session-ended.json")).unwrap();
    v["event"] = event.into();
    v["sessionId"] = session.into();
    v
}

async fn answer(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A SQLite gateway, and a PostgreSQL one when the test database is configured.
async fn both_stores() -> Vec<TestApp> {
    let mut apps = Vec::new();
    let mut options = Options::with_targets("");
    options.max_body_bytes = 2 * 1024 * 1024;
    apps.push(spawn_app_with(options, None).await);
    if let Some(url) = postgres_schema_url().await {
        let mut options = Options::with_targets("");
        options.max_body_bytes = 2 * 1024 * 1024;
        options.storage_url = Some(url);
        apps.push(spawn_app_with(options, None).await);
    }
    apps
}

#[tokio::test]
async fn ids_no_store_can_key_on_are_400_naming_the_field_on_both_stores() {
    for app in both_stores().await {
        let long = "s".repeat(1024 * 1024);
        let cases = [
            (pathors("session.ended", "a\u{0}b"), "`sessionId`"),
            (pathors("session.ended", &long), "`sessionId`"),
            (pathors("session.ended", "line\nINJECTED"), "`sessionId`"),
            (pathors("transcript\u{0}.ready", "s-1"), "`event`"),
        ];
        for (body, field) in cases {
            let (status, text) =
                answer(app.post_pathors(&serde_json::to_vec(&body).unwrap()).await).await;
            assert_eq!(status, 400, "{field}: {text:.200}");
            assert!(text.contains(field), "{text:.200}");
        }
        let agntix = json!({"id": "x\u{0}", "eventType": "session.created", "createdAt": "2026-04-08T05:00:00Z"});
        let (status, text) =
            answer(app.post_agntix(&serde_json::to_vec(&agntix).unwrap()).await).await;
        assert_eq!((status, text.contains("`id`")), (400, true), "{text}");
        // The store still works, and nothing was kept of the refused requests.
        let ok = pathors("session.ended", "s-ok");
        assert_eq!(
            app.post_pathors(&serde_json::to_vec(&ok).unwrap())
                .await
                .status(),
            202
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_body_nesting_too_deep_is_400_and_the_session_stays_readable() {
    for app in both_stores().await {
        let mut deep = Value::from(1);
        for _ in 0..125 {
            deep = json!({ "k": deep });
        }
        let mut ended = pathors("session.ended", "s-deep");
        ended["extractedVariables"] = deep;
        let (status, text) =
            answer(app.post_pathors(&serde_json::to_vec(&ended).unwrap()).await).await;
        assert_eq!(status, 400, "{text:.300}");
        assert!(text.contains("`extractedVariables`"), "{text:.300}");

        // The session's other events still get in, and the session is finalized.
        for event in ["session.ended", "session.finalized"] {
            let body = pathors(event, "s-deep");
            let response = app.post_pathors(&serde_json::to_vec(&body).unwrap()).await;
            assert_eq!(response.status(), 202, "{event}");
        }
        let record = app
            .admin(reqwest::Method::GET, "/admin/sessions/pathors/s-deep")
            .await;
        assert_eq!(record.status(), 200);
        let record: Value = record.json().await.unwrap();
        assert!(record["finalizedEventId"].is_string(), "{record}");
        app.stop().await;
    }
}

#[tokio::test]
async fn timestamps_rfc_3339_cannot_write_are_400_naming_the_field() {
    let app = spawn_app("").await;
    for ts in ["9999-12-31T23:59:59-23:59", "0000-01-01T00:00:00+01:00"] {
        let mut body = pathors("session.ended", "s-time");
        body["timestamp"] = ts.into();
        let (status, text) =
            answer(app.post_pathors(&serde_json::to_vec(&body).unwrap()).await).await;
        assert_eq!(status, 400, "{ts}: {text}");
        assert!(text.contains("`timestamp`"), "{text}");
    }
    let agntix = json!({"id": "s-time", "eventType": "session.created",
                        "createdAt": "2026-04-08T05:00:00Z", "endedAt": "+10000-01-01T00:00:00Z"});
    let (status, text) = answer(app.post_agntix(&serde_json::to_vec(&agntix).unwrap()).await).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("`endedAt`"), "{text}");
}
