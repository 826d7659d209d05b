//! Agntix transcripts: a local server that answers as the Agntix messages API documents
//! (`GET /api/v1/chat/sessions/{id}/messages`, `x-api-key`, an array or `data`/`messages`
//! with `nextCursor`); `session.finalized` waits for the fetch, `session.ended` does not.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::helpers::*;

const API_KEY: &str = "test-agntix-api-key-0123456789";

/// One scripted answer: a status and a JSON body.
type Answer = (u16, Value);

#[derive(Default)]
struct Api {
    answers: Mutex<VecDeque<Answer>>,
    /// `(path and query, x-api-key)` of every request.
    requests: Mutex<Vec<(String, String)>>,
}

struct FakeAgntix {
    url: String,
    api: Arc<Api>,
    _server: actix_web::dev::ServerHandle,
}

impl FakeAgntix {
    /// Answers from `answers` in order, then 500 to anything more.
    async fn start(answers: Vec<Answer>) -> FakeAgntix {
        let api = Arc::new(Api::default());
        api.answers.lock().unwrap().extend(answers);
        let (address, handle) = serve(web::Data::from(api.clone()), answer);
        FakeAgntix {
            url: format!("http://{address}"),
            api,
            _server: handle,
        }
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.api.requests.lock().unwrap().clone()
    }
}

async fn answer(request: HttpRequest, api: web::Data<Api>) -> HttpResponse {
    let key = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let path = match request.query_string() {
        "" => request.path().to_owned(),
        q => format!("{}?{q}", request.path()),
    };
    api.requests.lock().unwrap().push((path, key));
    let (status, body) = api
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((500, json!({"error": "out of script"})));
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(body)
}

fn gateway(api: &FakeAgntix, wait_ms: u64, receiver: &TestReceiver) -> Options {
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\nsources = [\"agntix\"]\n",
        receiver.url("/")
    ));
    options.agntix_extra = format!(
        "transcripts = {{ api_url = \"{}\", api_key = \"{API_KEY}\", wait_ms = {wait_ms} }}",
        api.url
    );
    options
}

fn session_id() -> String {
    let body: Value = serde_json::from_slice(&fixture("agntix", "session-ended.json")).unwrap();
    body["id"].as_str().unwrap().to_owned()
}

fn by_type<'a>(got: &'a [Received], event_type: &str) -> &'a Received {
    got.iter()
        .find(|r| r.json()["type"] == event_type)
        .unwrap_or_else(|| panic!("no {event_type} among {} deliveries", got.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_finalized_carries_every_page_of_the_transcript() {
    let id = session_id();
    let api = FakeAgntix::start(vec![
        (
            200,
            json!({"data": [
                {"id": "m1", "role": "USER", "content": "Hi, I need to move my booking", "createdAt": "2026-04-08T05:00:01Z"},
                {"messageId": "m2", "role": "ASSISTANT", "content": "Of course."}
            ], "nextCursor": "page-2"}),
        ),
        (
            200,
            json!({"messages": [
                {"id": "m3", "role": "TOOL", "content": "{\"ok\":true}", "toolCall": {"name": "rebook"}}
            ], "nextCursor": ""}),
        ),
    ])
    .await;
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(gateway(&api, 30_000, &receiver), None).await;
    let sent = fixture("agntix", "session-ended.json");
    assert_eq!(app.post_agntix(&sent).await.status().as_u16(), 202);

    let got = receiver.wait_for(2).await;
    let ended = by_type(&got, "session.ended").json();
    assert!(
        ended["session"]["transcript"].is_null(),
        "session.ended does not wait"
    );
    let finalized = by_type(&got, "session.finalized").json();
    let transcript = &finalized["session"]["transcript"];
    assert_eq!(transcript["status"], "complete", "{finalized}");
    let messages = transcript["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(
        messages[0],
        json!({"id": "m1", "role": "user", "content": "Hi, I need to move my booking", "at": "2026-04-08T05:00:01.000Z", "toolCall": null})
    );
    assert_eq!(messages[1]["id"], "m2");
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["toolCall"]["name"], "rebook");
    assert!(transcript.get("reason").is_none());

    let requests = api.requests();
    assert_eq!(
        requests,
        vec![
            (
                format!("/api/v1/chat/sessions/{id}/messages"),
                API_KEY.to_owned()
            ),
            (
                format!("/api/v1/chat/sessions/{id}/messages?cursor=page-2"),
                API_KEY.to_owned()
            ),
        ]
    );
    // The admin API shows the merged record with it, and never the key.
    let session: Value = app
        .admin(
            reqwest::Method::GET,
            &format!("/admin/sessions/agntix/{id}"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        session["session"]["transcript"]["messages"][2]["id"], "m3",
        "{session}"
    );
    assert!(!session.to_string().contains(API_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_ends_the_wait_at_once_with_the_reason() {
    let api = FakeAgntix::start(vec![(401, json!({"error": "invalid api key"}))]).await;
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(gateway(&api, 30_000, &receiver), None).await;
    let started = Instant::now();
    assert_eq!(
        app.post_agntix(&fixture("agntix", "session-ended.json"))
            .await
            .status()
            .as_u16(),
        202
    );
    let got = receiver.wait_for(2).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "did not wait out wait_ms"
    );
    let transcript = &by_type(&got, "session.finalized").json()["session"]["transcript"];
    assert_eq!(
        *transcript,
        json!({"status": "unavailable", "reason": "unauthorized", "messages": []})
    );
    assert_eq!(api.requests().len(), 1, "401 is final: no retry");
    let metrics = app.metrics().await;
    assert!(!metrics.contains(API_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_within_the_wait_then_it_goes_out_without() {
    // Every answer is 503: retried until wait_ms, then session.finalized goes out anyway.
    let api = FakeAgntix::start(vec![]).await;
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(gateway(&api, 1500, &receiver), None).await;
    let started = Instant::now();
    assert_eq!(
        app.post_agntix(&fixture("agntix", "session-ended.json"))
            .await
            .status()
            .as_u16(),
        202
    );
    let got = receiver.wait_for(2).await;
    let finalized = by_type(&got, "session.finalized").json();
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "went out before the wait ended: {:?}",
        started.elapsed()
    );
    assert_eq!(
        finalized["session"]["transcript"],
        json!({"status": "unavailable", "reason": "timeout", "messages": []})
    );
    assert!(api.requests().len() >= 2, "retried: {:?}", api.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_survives_a_restart() {
    // The API fails until after the restart; the job is stored, so the restarted gateway
    // runs it and sends session.finalized with the transcript.
    let api = FakeAgntix::start(vec![(503, json!({})), (503, json!({}))]).await;
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(gateway(&api, 30_000, &receiver), None).await;
    assert_eq!(
        app.post_agntix(&fixture("agntix", "session-ended.json"))
            .await
            .status()
            .as_u16(),
        202
    );
    receiver.wait_for(1).await;
    let dir = app.stop().await;
    api.api.answers.lock().unwrap().extend([(
        200,
        json!([{"id": "m1", "role": "USER", "content": "hello"}]),
    )]);
    let _again = spawn_app_with(gateway(&api, 30_000, &receiver), Some(dir)).await;
    let got = receiver.wait_for(2).await;
    let finalized = by_type(&got, "session.finalized").json();
    assert_eq!(
        finalized["session"]["transcript"]["status"], "complete",
        "{finalized}"
    );
    assert_eq!(
        finalized["session"]["transcript"]["messages"][0]["content"],
        "hello"
    );
}
