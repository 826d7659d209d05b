//! Several gateway replicas on one PostgreSQL database, and PostgreSQL going away.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_lose_nothing_when_one_is_killed_mid_run() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    // Slow enough that the killed replica has deliveries in flight.
    receiver.answer(Reply {
        status: 200,
        delay: Duration::from_millis(40),
    });
    let dir = tempfile::tempdir().unwrap();
    let config = process_config(
        dir.path(),
        "url = \"env:TEST_PG_URL\"\npool_size = 8",
        "timeout_ms = 1000\nlease_ms = 2000\nbackoff_initial_ms = 100\nmax_attempts = 50",
        &receiver.url("/crm"),
    );
    let env = [
        ("TEST_PG_URL", url.as_str()),
        ("TEST_PATHORS_TOKEN", PATHORS_TOKEN),
    ];
    let mut a = GatewayProcess::start(&config, &env);
    let b = GatewayProcess::start(&config, &env);
    let client = reqwest::Client::new();
    let post = |url: String, body: Vec<u8>| {
        let client = client.clone();
        async move {
            let response = client
                .post(url)
                .header("authorization", PATHORS_TOKEN)
                .body(body)
                .send()
                .await
                .ok()?;
            let status = response.status().as_u16();
            let answer: Value = response.json().await.ok()?;
            Some((status, answer["id"].as_str().unwrap_or("").to_owned()))
        }
    };

    const EVENTS: usize = 400;
    let mut accepted = HashSet::new();
    let mut duplicates_checked = 0;
    for i in 0..EVENTS {
        let body = call_ended(&format!("replica-{i}"));
        if i == EVENTS / 2 {
            a.kill_9();
        }
        let (first, other) = if i >= EVENTS / 2 || i % 2 == 1 {
            (&b, &a)
        } else {
            (&a, &b)
        };
        if let Some((202, id)) = post(first.url("/ingest/pathors"), body.clone()).await {
            accepted.insert(id.clone());
            // Before the kill, every tenth event is also sent to the other replica.
            if i < EVENTS / 2 && i % 10 == 0 {
                let (status, again) = post(other.url("/ingest/pathors"), body).await.unwrap();
                assert_eq!(
                    (status, again),
                    (200, id),
                    "a duplicate on another replica is a duplicate"
                );
                duplicates_checked += 1;
            }
        }
    }

    receiver
        .wait_until(Duration::from_secs(60), |r| {
            accepted.is_subset(&r.delivered_ids())
        })
        .await;
    let delivered = receiver.delivered_ids();
    let lost = accepted.difference(&delivered).count();
    let requests = receiver.received().len();
    println!(
        "replicas: sent {EVENTS}, accepted {}, delivered {} distinct in {requests} requests \
         ({} repeated after the kill), duplicates across replicas checked {duplicates_checked}, lost {lost}",
        accepted.len(),
        delivered.len(),
        requests - delivered.len(),
    );
    assert_eq!(lost, 0, "accepted events never reached the receiver");
    assert_eq!(
        accepted.len(),
        EVENTS,
        "the surviving replica kept accepting"
    );
    assert_eq!(
        delivered.len(),
        accepted.len(),
        "nothing was delivered that was not accepted"
    );
    assert_eq!(duplicates_checked, 20);
    drop(b);
}

#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_never_2xx_and_recovers_without_a_restart() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let proxy = DbProxy::start(&url).await;
    let mut options = Options::with_targets("");
    options.storage_url = Some(via(&url, proxy.address));
    let app = spawn_app_with(options, None).await;
    assert_eq!(
        app.post_pathors(&call_ended("before"))
            .await
            .status()
            .as_u16(),
        202
    );

    proxy.down();
    for i in 0..5 {
        let response = app.post_pathors(&call_ended(&format!("during-{i}"))).await;
        assert_eq!(
            response.status().as_u16(),
            503,
            "never a 2xx for an event that was not stored"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
    }
    assert_eq!(app.get("/readyz").await.status().as_u16(), 503);
    assert_eq!(app.get("/healthz").await.status().as_u16(), 200);

    proxy.up();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = app
            .post_pathors(&call_ended("during-0"))
            .await
            .status()
            .as_u16();
        if status == 202 {
            break; // accepted, not a duplicate: the 503 stored nothing
        }
        assert!(
            status == 503 && tokio::time::Instant::now() < deadline,
            "got {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.get("/readyz").await.status().as_u16(), 200);
    assert_eq!(
        app.post_pathors(&call_ended("before"))
            .await
            .status()
            .as_u16(),
        200,
        "still a duplicate"
    );
}

/// Retell calls whose `call_ended` and `call_analyzed` reach two replicas at once (and each
/// again at the other): every call gets one `session.finalized`, the vendor's own, whichever
/// replica committed what first — the completing event taking a waiting finalize's place
/// races the other replica's commits on the session's compare-and-set.
#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_finalize_each_retell_call_once() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    const KEY: &str = "key_replicas_retell";
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[sources]]\nname = \"retell\"\nvendor = \"retell\"\n\
         auth = {{ kind = \"retell\", api_key = \"env:TEST_RETELL_KEY\" }}\n\
         [[targets]]\nname = \"crm\"\nurl = \"{}\"\n",
        receiver.url("/crm")
    );
    let config = gateway_config(
        dir.path(),
        "url = \"env:TEST_PG_URL\"\npool_size = 4",
        &extra,
    );
    let env = [
        ("TEST_PG_URL", url.as_str()),
        ("TEST_PATHORS_TOKEN", PATHORS_TOKEN),
        ("TEST_RETELL_KEY", KEY),
    ];
    let a = GatewayProcess::start(&config, &env);
    let b = GatewayProcess::start(&config, &env);
    let client = reqwest::Client::new();
    let send = |gateway: &GatewayProcess, name: &str, call: &str| {
        let mut v: Value = serde_json::from_slice(&fixture("retell", name)).unwrap();
        v["call"]["call_id"] = call.into();
        let body = serde_json::to_vec(&v).unwrap();
        let mut request = client
            .post(gateway.url("/ingest/retell"))
            .body(body.clone());
        let ms = unix_now() * 1000;
        for (name, value) in sessiongate::testing::retell_headers(KEY, ms, &body) {
            request = request.header(name, value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    const CALLS: usize = 30;
    for i in 0..CALLS {
        let call = format!("call_replica_{i}");
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let (ended, analyzed) = tokio::join!(
            send(first, "call-ended.json", &call),
            send(second, "call-analyzed.json", &call)
        );
        assert!(matches!(ended, 200 | 202) && matches!(analyzed, 200 | 202));
        // Each again at the other replica: a duplicate there.
        let (ended, analyzed) = tokio::join!(
            send(second, "call-ended.json", &call),
            send(first, "call-analyzed.json", &call)
        );
        assert_eq!((ended, analyzed), (200, 200), "{call}");
    }
    // Each call: session.ended, call.ended and one session.finalized.
    receiver
        .wait_until(Duration::from_secs(60), |r| r.received().len() >= 3 * CALLS)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: Vec<Value> = receiver.received().iter().map(Received::json).collect();
    for i in 0..CALLS {
        let call = format!("call_replica_{i}");
        let finals: Vec<&Value> = events
            .iter()
            .filter(|e| e["session"]["id"] == call.as_str() && e["type"] == "session.finalized")
            .collect();
        assert_eq!(finals.len(), 1, "{call}");
        assert_eq!(finals[0]["source"]["eventType"], "call_analyzed", "{call}");
        assert_eq!(
            finals[0]["session"]["analysis"]["successful"], true,
            "{call}"
        );
    }
    let distinct: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(distinct.len(), 3 * CALLS, "nothing more, nothing less");
}
