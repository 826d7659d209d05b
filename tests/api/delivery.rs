//! Delivery: signing, filters, raw, retries, dead letters, isolation and restarts.

use std::time::{Duration, Instant};

use serde_json::Value;
use sessiongate::store::DeliveryStatus;
use svix::webhooks::Webhook;

use crate::helpers::*;

fn target(name: &str, url: &str, extra: &str) -> String {
    format!("[[targets]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

#[tokio::test]
async fn a_delivery_is_the_signed_canonical_event_with_static_headers() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(target(
        "crm",
        &receiver.url("/sessions"),
        "secret = \"env:TARGET_SECRET\"\nheaders = { \"X-Tenant\" = \"acme\" }",
    ))
    .await;
    let raw = fixture("pathors", "session-ended.json");
    let accepted: Value = app.post_pathors(&raw).await.json().await.unwrap();

    let got = receiver.wait_for(1).await.remove(0);
    assert_eq!(got.path, "/sessions");
    assert_eq!(got.header("content-type"), "application/json");
    assert!(
        got.header("user-agent").starts_with("sessiongate/"),
        "{}",
        got.header("user-agent")
    );
    assert_eq!(got.header("x-tenant"), "acme");
    let event = got.json();
    assert_eq!(event["id"], accepted["id"]);
    assert_eq!(got.header("webhook-id"), accepted["id"].as_str().unwrap());
    assert_eq!(event["type"], "session.ended");
    assert_eq!(event["source"]["name"], "pathors");
    assert_eq!(event["raw"], serde_json::from_slice::<Value>(&raw).unwrap());

    // The official library verifies what we signed.
    let mut headers = http1::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, got.header(name).parse().unwrap());
    }
    Webhook::new(TARGET_SECRET)
        .unwrap()
        .verify(&got.body, &headers)
        .expect("the outbound signature verifies with the svix crate");
    assert!(
        Webhook::new(AGNTIX_SECRET)
            .unwrap()
            .verify(&got.body, &headers)
            .is_err()
    );
}

/// Deliveries to one target share kept-alive connections rather than opening one each: a
/// TCP (and, to an https target, TLS) handshake per event would cost more than the event.
/// At most 4 attempts are in flight, so 4 connections serve them all: with the default 32
/// the count followed how many deliveries happened to overlap (12 of 60 once, in CI).
#[tokio::test]
async fn deliveries_to_a_target_reuse_their_connections() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(target(
        "crm",
        &receiver.url("/sessions"),
        "max_in_flight = 4",
    ))
    .await;
    const EVENTS: usize = 60;
    for i in 0..EVENTS {
        let body = call_ended(&format!("reuse-{i}"));
        assert_eq!(app.post_pathors(&body).await.status().as_u16(), 202);
    }
    let got = receiver.wait_for(EVENTS).await;
    let connections: std::collections::HashSet<_> = got.iter().map(|r| r.peer.unwrap()).collect();
    println!(
        "{} deliveries over {} connections",
        got.len(),
        connections.len()
    );
    assert!(
        connections.len() <= 8,
        "{} deliveries opened {} connections",
        got.len(),
        connections.len()
    );
}

#[tokio::test]
async fn targets_get_only_the_events_and_sources_they_filter_for() {
    let finalized = TestReceiver::start().await;
    let pathors_only = TestReceiver::start().await;
    let everything = TestReceiver::start().await;
    let app = spawn_app(
        target(
            "finalized",
            &finalized.url("/"),
            "events = [\"session.finalized\"]",
        ) + &target(
            "pathors-only",
            &pathors_only.url("/"),
            "sources = [\"pathors\"]",
        ) + &target("everything", &everything.url("/"), "include_raw = false"),
    )
    .await;
    assert_eq!(
        app.post_agntix(&fixture("agntix", "session-ended.json"))
            .await
            .status()
            .as_u16(),
        202
    );
    assert_eq!(
        app.post_pathors(&fixture("pathors", "call-ended.json"))
            .await
            .status()
            .as_u16(),
        202
    );
    app.wait_for_deliveries(DeliveryStatus::Delivered, 5).await;
    let _ = app.stop().await;

    let types = |r: &TestReceiver| {
        let mut t: Vec<String> = r
            .received()
            .iter()
            .map(|g| g.json()["type"].as_str().unwrap().to_owned())
            .collect();
        t.sort();
        t
    };
    assert_eq!(types(&finalized), ["session.finalized"]);
    assert_eq!(finalized.received()[0].json()["source"]["vendor"], "agntix");
    assert_eq!(types(&pathors_only), ["call.ended"]);
    assert_eq!(
        types(&everything),
        ["call.ended", "session.ended", "session.finalized"]
    );
    for got in everything.received() {
        assert!(
            got.json().get("raw").is_none(),
            "include_raw = false leaves raw out"
        );
        assert_eq!(
            got.header("webhook-signature"),
            "",
            "no secret, no signature"
        );
    }
    let agntix = everything
        .received()
        .into_iter()
        .find(|g| g.json()["source"]["vendor"] == "agntix")
        .unwrap();
    assert!(
        agntix.json()["source"]["messageId"]
            .as_str()
            .unwrap()
            .starts_with("msg_")
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_until_one_succeeds() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(target("flaky", &receiver.url("/"), "")).await;
    receiver.script(&[500, 503, 429, 404]);
    app.post_pathors(&fixture("pathors", "call-ended.json"))
        .await;

    let delivered = app.wait_for_deliveries(DeliveryStatus::Delivered, 1).await;
    assert_eq!(delivered[0].attempts, 5);
    let got = receiver.received();
    assert_eq!(
        got.iter().map(|g| g.status).collect::<Vec<_>>(),
        [500, 503, 429, 404, 200]
    );
    let ids: Vec<_> = got
        .iter()
        .map(|g| g.header("webhook-id").to_owned())
        .collect();
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "every retry carries the same event id"
    );
    assert_eq!(got[0].body, got[4].body);
}

#[tokio::test]
async fn a_delivery_is_dead_after_max_attempts_and_stays_visible() {
    let receiver = TestReceiver::start().await;
    let mut options = Options::with_targets(target("down", &receiver.url("/"), ""));
    options.max_attempts = 3;
    let app = spawn_app_with(options, None).await;
    receiver.answer(Reply::status(500));
    app.post_pathors(&fixture("pathors", "call-ended.json"))
        .await;

    let dead = app.wait_for_deliveries(DeliveryStatus::Dead, 1).await;
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_status, Some(500));
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("HTTP 500"),
        "{:?}",
        dead[0].last_error
    );
    let _ = app.stop().await;
    assert_eq!(receiver.received().len(), 3, "no attempt after the last");
}

#[tokio::test]
async fn connection_errors_and_timeouts_are_retried_and_recorded() {
    let slow = TestReceiver::start().await;
    slow.answer(Reply {
        status: 200,
        delay: Duration::from_secs(5),
    });
    // A port held on 127.0.0.1 for the whole test, asked for on 127.0.0.2 where nothing
    // listens: refused every time, and no other test can take it meanwhile.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://127.0.0.2:{}/", held.local_addr().unwrap().port());
    let mut options = Options::with_targets(
        target("refused", &closed, "") + &target("slow", &slow.url("/"), "timeout_ms = 200"),
    );
    options.max_attempts = 2;
    let app = spawn_app_with(options, None).await;
    app.post_pathors(&fixture("pathors", "call-ended.json"))
        .await;

    let dead = app.wait_for_deliveries(DeliveryStatus::Dead, 2).await;
    let error_of = |t: &str| {
        dead.iter()
            .find(|d| d.target == t)
            .unwrap()
            .last_error
            .clone()
            .unwrap()
    };
    assert!(
        error_of("refused").starts_with("connection failed"),
        "{}",
        error_of("refused")
    );
    assert!(
        error_of("slow").starts_with("timed out"),
        "{}",
        error_of("slow")
    );
    assert!(
        dead.iter()
            .all(|d| d.attempts == 2 && d.last_status.is_none())
    );
}

#[tokio::test]
async fn a_slow_target_delays_neither_other_targets_nor_ingest() {
    let slow = TestReceiver::start().await;
    let fast = TestReceiver::start().await;
    slow.answer(Reply {
        status: 200,
        delay: Duration::from_secs(3),
    });
    let mut options = Options::with_targets(
        target("slow", &slow.url("/"), "") + &target("fast", &fast.url("/"), ""),
    );
    options.timeout_ms = 10_000;
    let app = spawn_app_with(options, None).await;

    let started = Instant::now();
    app.post_pathors(&fixture("pathors", "call-ended.json"))
        .await;
    slow.wait_for(1).await;
    fast.wait_for(1).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "fast target waited {:?}",
        started.elapsed()
    );

    // Ingest keeps answering while the slow target holds its attempts.
    let started = Instant::now();
    for i in 0..20 {
        let body = format!(
            r#"{{"event":"call.ended","sessionId":"s{i}","timestamp":"2026-05-03T08:42:14Z","callStatus":"busy"}}"#
        );
        assert_eq!(
            app.post_pathors(body.as_bytes()).await.status().as_u16(),
            202
        );
    }
    fast.wait_for(21).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "ingest and the fast target took {:?}",
        started.elapsed()
    );
    assert!(
        app.deliveries(Some(DeliveryStatus::Delivered))
            .await
            .iter()
            .all(|d| d.target == "fast")
    );
}

/// The value of `sessiongate_{name}{target="…"}` in `/metrics` text, 0 if absent.
fn metric(text: &str, name: &str, target: &str) -> u64 {
    let line = format!("sessiongate_{name}{{target=\"{target}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `sent` deliveries are delivered, checks the receiver got each exactly once,
/// and returns `/metrics` as it stands then.
async fn all_delivered_once(app: &TestApp, receiver: &TestReceiver, sent: usize) -> String {
    app.wait_for_deliveries(DeliveryStatus::Delivered, sent)
        .await;
    assert_eq!(receiver.delivered_ids().len(), sent);
    assert_eq!(
        receiver.received().len(),
        sent,
        "each delivered once, none twice"
    );
    app.metrics().await
}

#[tokio::test]
async fn committed_deliveries_go_straight_to_their_worker_without_claims() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(target("crm", &receiver.url("/"), "")).await;
    // The worker's first claim (at start) finds nothing; wait until it has run.
    let deadline = Instant::now() + PATIENCE;
    while metric(&app.metrics().await, "delivery_claims_total", "crm") == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker never claimed at start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = 40;
    for i in 0..sent {
        let status = app
            .post_pathors(&call_ended(&format!("handed-{i}")))
            .await
            .status();
        assert_eq!(status.as_u16(), 202);
    }
    let metrics = all_delivered_once(&app, &receiver, sent).await;
    let handed = metric(&metrics, "delivery_handed_over_total", "crm");
    let claims = metric(&metrics, "delivery_claims_total", "crm");
    println!("{sent} deliveries: {handed} handed over, {claims} claims");
    assert_eq!(handed, sent as u64, "every delivery handed over at commit");
    // The start-up claim, and at most one after the idle poll on a slow machine.
    assert!(claims <= 2, "{claims} claims for {sent} deliveries");
}

#[tokio::test]
async fn deliveries_without_room_at_their_worker_are_claimed_once_each() {
    let receiver = TestReceiver::start().await;
    // Slow enough that all 12 requests are committed before a second attempt starts (and
    // gives its room back), so at most 4 + 1 can be handed over even on a busy machine.
    receiver.answer(Reply {
        status: 200,
        delay: Duration::from_millis(400),
    });
    // One attempt at a time and room for 4 more: most of 12 must go through the store.
    let app = spawn_app(target("slow", &receiver.url("/"), "max_in_flight = 1")).await;
    let sent = 12;
    let posts = (0..sent).map(|i| {
        let body = call_ended(&format!("crowded-{i}"));
        let app = &app;
        async move { app.post_pathors(&body).await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");

    let metrics = all_delivered_once(&app, &receiver, sent).await;
    let handed = metric(&metrics, "delivery_handed_over_total", "slow");
    println!("{sent} deliveries to a crowded target: {handed} handed over");
    assert!(handed <= 5, "only as many as there was room for: {handed}");
    assert!(
        metric(&metrics, "delivery_claims_total", "slow") >= 2,
        "the rest were claimed"
    );
}

#[tokio::test]
async fn pending_deliveries_resume_after_a_restart() {
    let receiver = TestReceiver::start().await;
    // The first attempt hangs past the shutdown grace period, so it is cut off mid-flight.
    receiver.answer(Reply {
        status: 200,
        delay: Duration::from_secs(30),
    });
    let options = || {
        let mut o = Options::with_targets(target("crm", &receiver.url("/"), ""));
        o.timeout_ms = 60_000;
        o.shutdown_timeout_ms = 200;
        o
    };
    let app = spawn_app_with(options(), None).await;
    let accepted: Value = app
        .post_pathors(&fixture("pathors", "session-finalized-call.json"))
        .await
        .json()
        .await
        .unwrap();
    receiver.wait_for(1).await;
    let dir = app.stop().await;

    receiver.answer(Reply::status(200));
    let app = spawn_app_with(options(), Some(dir)).await;
    let delivered = app.wait_for_deliveries(DeliveryStatus::Delivered, 1).await;
    assert_eq!(
        delivered[0].event_id.as_str(),
        accepted["id"].as_str().unwrap()
    );
    let got = receiver.received();
    assert_eq!(got.len(), 2, "the cut-off attempt is repeated once");
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    // The event itself survived the restart too: sending it again is a duplicate.
    let again = app
        .post_pathors(&fixture("pathors", "session-finalized-call.json"))
        .await;
    assert_eq!(again.status().as_u16(), 200);
}
