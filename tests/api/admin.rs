//! The admin API (README, "Admin API") and `/metrics`.

use reqwest::Method;
use serde_json::Value;
use sessiongate::store::DeliveryStatus;

use crate::helpers::*;

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

#[tokio::test]
async fn admin_routes_need_the_token_and_exist_only_when_one_is_configured() {
    let app = spawn_app("").await;
    for (method, path) in [
        (Method::GET, "/admin/events"),
        (Method::GET, "/admin/deliveries"),
        (Method::GET, "/admin/sessions/pathors/x"),
        (Method::POST, "/admin/deliveries/dlv_x/retry"),
        (Method::POST, "/admin/events/evt_x/replay"),
    ] {
        let none = app
            .client
            .request(method.clone(), format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        let wrong = app
            .client
            .request(method.clone(), format!("{}{path}", app.address))
            .bearer_auth("test-admin-token-012345678")
            .send()
            .await
            .unwrap();
        for response in [none, wrong] {
            let (status, body) = json(response).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (401, Some("unauthorized")),
                "{method} {path}"
            );
        }
    }

    let mut options = Options::with_targets("");
    options.admin_api = false;
    let closed = spawn_app_with(options, None).await;
    let (status, body) = json(closed.admin(Method::GET, "/admin/events").await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test]
async fn sessions_and_events_can_be_looked_up_and_paged() {
    let app = spawn_app("").await;
    for name in [
        "session-ended.json",
        "call-ended.json",
        "session-finalized-call.json",
        "session-finalized-text.json",
    ] {
        assert_eq!(
            app.post_pathors(&fixture("pathors", name))
                .await
                .status()
                .as_u16(),
            202
        );
    }
    assert_eq!(
        app.post_agntix(&fixture("agntix", "session-created.json"))
            .await
            .status()
            .as_u16(),
        202
    );

    let (status, view) = json(
        app.admin(
            Method::GET,
            "/admin/sessions/pathors/2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04",
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(view["vendor"], "pathors");
    assert_eq!(view["session"]["call"]["outcome"], "completed");
    assert!(
        view["finalizedEventId"]
            .as_str()
            .unwrap()
            .starts_with("evt_")
    );
    let (status, body) = json(app.admin(Method::GET, "/admin/sessions/pathors/nope").await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // All five, newest first, two at a time.
    let mut seen = Vec::new();
    let mut path = "/admin/events?limit=2".to_owned();
    loop {
        let (status, page) = json(app.admin(Method::GET, &path).await).await;
        assert_eq!(status, 200);
        for e in page["events"].as_array().unwrap() {
            assert!(
                e["raw"].is_object(),
                "admin events include the vendor payload"
            );
            seen.push(e["type"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/admin/events?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "session.started",
            "session.finalized",
            "session.finalized",
            "call.ended",
            "session.ended"
        ]
    );

    let (_, page) = json(
        app.admin(
            Method::GET,
            "/admin/events?source=pathors&type=session.finalized",
        )
        .await,
    )
    .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let (_, page) = json(
        app.admin(
            Method::GET,
            "/admin/events?session=5d8e1f2a-9c4b-4e7d-b3a8-6f9c2d5e8a01",
        )
        .await,
    )
    .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["nextCursor"], Value::Null);

    for bad in [
        "/admin/events?type=session.created",
        "/admin/events?limit=0",
        "/admin/events?limit=9999",
        "/admin/events?cursor=abc",
        "/admin/events?colour=red",
        "/admin/deliveries?status=lost",
    ] {
        let (status, body) = json(app.admin(Method::GET, bad).await).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn failing_deliveries_are_listed_with_their_attempts() {
    let receiver = TestReceiver::start().await;
    receiver.answer(Reply::status(502));
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"",
        receiver.url("/")
    ));
    options.backoff_initial_ms = 60_000;
    let app = spawn_app_with(options, None).await;
    app.post_pathors(&fixture("pathors", "call-ended.json"))
        .await;
    receiver.wait_for(1).await;
    let page = loop {
        let (_, page) = json(
            app.admin(Method::GET, "/admin/deliveries?status=failed&target=crm")
                .await,
        )
        .await;
        if !page["deliveries"].as_array().unwrap().is_empty() {
            break page;
        }
    };
    let d = &page["deliveries"][0];
    assert_eq!(d["status"], "pending");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["lastStatus"], 502);
    assert!(d["nextAttemptAt"].is_string());
    assert_eq!(d["attemptLog"][0]["statusCode"], 502);
    let (_, dead) = json(
        app.admin(Method::GET, "/admin/deliveries?status=dead")
            .await,
    )
    .await;
    assert!(dead["deliveries"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn dead_deliveries_can_be_retried_and_events_replayed_with_the_same_id() {
    let receiver = TestReceiver::start().await;
    receiver.answer(Reply::status(500));
    let mut options = Options::with_targets(
        format!(
            "[[targets]]\nname = \"crm\"\nurl = \"{}\"\n",
            receiver.url("/crm")
        ) + &format!(
            "[[targets]]\nname = \"audit\"\nurl = \"{}\"\nevents = [\"session.started\"]\n",
            receiver.url("/audit")
        ),
    );
    options.max_attempts = 1;
    let app = spawn_app_with(options, None).await;
    let (_, accepted) = json(
        app.post_pathors(&fixture("pathors", "call-ended.json"))
            .await,
    )
    .await;
    let event_id = accepted["id"].as_str().unwrap().to_owned();

    let dead = app.wait_for_deliveries(DeliveryStatus::Dead, 1).await;
    let (_, listed) = json(
        app.admin(Method::GET, "/admin/deliveries?status=dead")
            .await,
    )
    .await;
    assert_eq!(listed["deliveries"][0]["id"], dead[0].id.as_str());
    assert_eq!(listed["deliveries"][0]["lastError"], "HTTP 500");

    receiver.answer(Reply::status(200));
    let retry = format!("/admin/deliveries/{}/retry", dead[0].id);
    let (status, body) = json(app.admin(Method::POST, &retry).await).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("requeued")));
    app.wait_for_deliveries(DeliveryStatus::Delivered, 1).await;
    let (status, body) = json(app.admin(Method::POST, &retry).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "only dead ones"
    );
    let (status, _) = json(
        app.admin(Method::POST, "/admin/deliveries/dlv_nope/retry")
            .await,
    )
    .await;
    assert_eq!(status, 404);

    // Replay to the matching targets (crm only: audit takes session.started), then to a named one.
    let (status, body) = json(
        app.admin(Method::POST, &format!("/admin/events/{event_id}/replay"))
            .await,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(body["deliveries"].as_array().unwrap().len(), 1);
    let (status, _) = json(
        app.admin(
            Method::POST,
            &format!("/admin/events/{event_id}/replay?target=audit"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202);
    let got = receiver.wait_for(4).await;
    let to_audit: Vec<_> = got.iter().filter(|g| g.path == "/audit").collect();
    assert_eq!(to_audit.len(), 1);
    assert!(
        got.iter().all(|g| g.json()["id"] == event_id.as_str()),
        "replays keep the event id"
    );

    for (path, code) in [
        (format!("/admin/events/{event_id}/replay?target=ghost"), 404),
        ("/admin/events/evt_nope/replay".to_owned(), 404),
    ] {
        let (status, body) = json(app.admin(Method::POST, &path).await).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (code, Some("not_found")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn metrics_move_as_events_flow() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"",
        receiver.url("/")
    ))
    .await;
    let before = app.metrics().await;
    assert!(
        before.contains(r#"sessiongate_queue_depth{target="crm"} 0"#),
        "{before}"
    );
    assert!(!before.contains("sessiongate_accepted_total{"));

    let body = fixture("pathors", "call-ended.json");
    app.post_pathors(&body).await;
    app.post_pathors(&body).await;
    app.post(
        "/ingest/pathors",
        &body,
        &[("authorization", "Bearer nope".into())],
    )
    .await;
    app.post("/ingest/elsewhere", &body, &[]).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, 1).await;

    let after = app.metrics().await;
    for line in [
        r#"sessiongate_received_total{source="pathors"} 3"#,
        r#"sessiongate_accepted_total{source="pathors"} 1"#,
        r#"sessiongate_duplicate_total{source="pathors"} 1"#,
        r#"sessiongate_rejected_total{source="pathors",reason="unauthorized"} 1"#,
        r#"sessiongate_rejected_total{source="_unknown",reason="unknown_source"} 1"#,
        r#"sessiongate_delivered_total{target="crm"} 1"#,
        r#"sessiongate_queue_depth{target="crm"} 0"#,
        r#"sessiongate_end_to_end_seconds_count{target="crm"} 1"#,
        r#"sessiongate_delivery_attempt_duration_seconds_count{target="crm"} 1"#,
        r#"sessiongate_ingest_duration_seconds_count{source="pathors"} 3"#,
    ] {
        assert!(after.contains(line), "missing {line} in\n{after}");
    }
}

#[tokio::test]
async fn guessing_the_admin_token_is_answered_429_with_a_growing_retry_after() {
    let app = spawn_app("").await;
    let guess = |token: &'static str| {
        app.client
            .get(format!("{}/admin/events", app.address))
            .bearer_auth(token)
            .send()
    };
    for _ in 0..sessiongate::admin::guard::FREE_FAILURES {
        assert_eq!(guess("a-wrong-guess").await.unwrap().status(), 401);
    }
    let mut waits = Vec::new();
    for _ in 0..3 {
        let response = guess("a-wrong-guess").await.unwrap();
        assert_eq!(response.status(), 429);
        waits.push(
            response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        let (_, body) = json(response).await;
        assert_eq!(body["error"]["code"], "too_many_requests");
    }
    assert!(
        waits[0] >= 1 && waits[1] > waits[0] && waits[2] > waits[1],
        "{waits:?}"
    );
    // While shut out, the right token waits too (a guess that hit would tell nothing).
    let (status, _) = json(app.admin(Method::GET, "/admin/events").await).await;
    assert_eq!(status, 429);
    // The console's login counts against the same peer.
    let login = app
        .client
        .post(format!("{}/console/login", app.address))
        .form(&[("token", "another-wrong-guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 429);
    assert!(login.headers().contains_key("retry-after"));
}
