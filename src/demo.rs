//! `sessiongate demo`: the whole pipeline in one command.
//!
//! Starts the gateway on a SQLite store in a temporary directory with a built-in receiver as
//! its only target, sends the vendors' documented example events through it — Pathors with
//! its shared header, Agntix signed with the `svix` crate like Svix does, including a
//! re-delivery, a Svix retry and events out of order — and prints what the receiver got,
//! then one session's `session.finalized` event. Fails (exit 1) if anything the receiver got
//! is missing, unsigned, or finalized twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::standard::Secret;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use serde_json::Value;
use tokio::sync::{Notify, oneshot};

use crate::app::Application;
use crate::config::Config;

/// The vendors' documented example payloads (also the test fixtures).
mod examples {
    pub const PATHORS_SESSION_ENDED: &str =
        include_str!("../tests/fixtures/pathors/session-ended.json");
    pub const PATHORS_CALL_ENDED: &str = include_str!("../tests/fixtures/pathors/call-ended.json");
    pub const PATHORS_FINALIZED_CALL: &str =
        include_str!("../tests/fixtures/pathors/session-finalized-call.json");
    pub const PATHORS_FINALIZED_TEXT: &str =
        include_str!("../tests/fixtures/pathors/session-finalized-text.json");
    pub const PATHORS_RECORDING_READY: &str =
        include_str!("../tests/fixtures/pathors/recording-ready.json");
    pub const AGNTIX_CREATED: &str = include_str!("../tests/fixtures/agntix/session-created.json");
    pub const AGNTIX_ENDED: &str = include_str!("../tests/fixtures/agntix/session-ended.json");
    pub const RETELL_ENDED: &str = include_str!("../tests/fixtures/retell/call-ended.json");
    pub const RETELL_ANALYZED: &str = include_str!("../tests/fixtures/retell/call-analyzed.json");
    pub const VAPI_REPORT: &str = include_str!("../tests/fixtures/vapi/end-of-call-report.json");
    pub const ELEVENLABS_TRANSCRIPTION: &str =
        include_str!("../tests/fixtures/elevenlabs/post-call-transcription.json");
    pub const BLAND_POST_CALL: &str = include_str!("../tests/fixtures/bland/post-call.json");
    pub const BLAND_DELAYED: &str = include_str!("../tests/fixtures/bland/post-call-delayed.json");
    pub const TWILIO_COMPLETED: &str =
        include_str!("../tests/fixtures/twilio/status-callback-completed.form");
}

/// Events the receiver must get: 4 of the Pathors call session, 1 of the text session,
/// 3 of the Agntix session (started, ended, finalized), and 3 of each voice platform's
/// call (session.ended, call.ended, session.finalized).
const EXPECTED_DELIVERIES: usize = 23;
/// Sessions, each finalized once.
const SESSIONS: usize = 8;
const PATIENCE: Duration = Duration::from_secs(20);

struct Sent {
    vendor: &'static str,
    body: &'static str,
    note: &'static str,
}

fn script() -> Vec<Sent> {
    use examples::*;
    let sent = |vendor, body, note| Sent { vendor, body, note };
    vec![
        sent(
            "pathors",
            PATHORS_CALL_ENDED,
            "out of order: before session.ended",
        ),
        sent("pathors", PATHORS_SESSION_ENDED, ""),
        sent("pathors", PATHORS_FINALIZED_CALL, ""),
        sent("pathors", PATHORS_RECORDING_READY, "after finalization"),
        sent("pathors", PATHORS_CALL_ENDED, "Pathors re-delivery"),
        sent("pathors", PATHORS_FINALIZED_TEXT, "a text session"),
        sent(
            "agntix",
            AGNTIX_ENDED,
            "out of order: before session.created",
        ),
        sent("agntix", AGNTIX_CREATED, ""),
        sent("agntix", AGNTIX_ENDED, "Svix retry with a new message id"),
        sent("retell", RETELL_ENDED, ""),
        sent("retell", RETELL_ANALYZED, "the completing event"),
        sent("retell", RETELL_ANALYZED, "Retell retry"),
        sent("vapi", VAPI_REPORT, "the ended status update never came"),
        sent("elevenlabs", ELEVENLABS_TRANSCRIPTION, ""),
        sent(
            "bland",
            BLAND_DELAYED,
            "out of order: before the immediate one",
        ),
        sent("bland", BLAND_POST_CALL, ""),
        sent("twilio", TWILIO_COMPLETED, "form-encoded"),
    ]
}

/// The secrets the demo's voice platforms sign with.
const RETELL_KEY: &str = "key_demo_retell";
const VAPI_SECRET: &str = "demo-vapi-hmac-secret";
const ELEVENLABS_SECRET: &str = "wsec_demo_elevenlabs";
const BLAND_SECRET: &str = "demo-bland-webhook-secret";
const TWILIO_TOKEN: &str = "demo-twilio-auth-token";
/// The URL the demo's Twilio signs: what `public_url` says Twilio calls.
const TWILIO_URL: &str = "https://gateway.example.com/ingest/twilio";

/// The vendor's own name for an event type, as the demo prints it.
fn vendor_event_type(vendor: &str, body: &Value) -> String {
    let found = match vendor {
        "pathors" => body.get("event"),
        "agntix" => body.get("eventType"),
        "retell" => body.get("event"),
        "vapi" => body.pointer("/message/type"),
        "twilio" => body.get("CallStatus"),
        "bland" => {
            return if body.get("corrected_transcript").is_some() {
                "post-call (delayed)"
            } else {
                "post-call"
            }
            .to_owned();
        }
        _ => body.get("type"),
    };
    found.and_then(Value::as_str).unwrap_or("?").to_owned()
}

fn random_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

struct Received {
    body: Value,
    signature_ok: bool,
}

struct Receiver {
    verifier: Secret,
    got: Mutex<Vec<Received>>,
    arrived: Notify,
}

async fn receive(
    request: HttpRequest,
    body: web::Bytes,
    receiver: web::Data<Receiver>,
) -> HttpResponse {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let signature_ok = header("webhook-timestamp")
        .parse::<i64>()
        .is_ok_and(|timestamp| {
            receiver.verifier.verifies(
                header("webhook-id"),
                timestamp,
                &body,
                header("webhook-signature"),
            )
        });
    let Ok(body) = serde_json::from_slice(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    receiver
        .got
        .lock()
        .expect("receiver lock")
        .push(Received { body, signature_ok });
    receiver.arrived.notify_waiters();
    HttpResponse::NoContent().finish()
}

/// A stand-in for the Agntix messages API, answering as Agntix documents it: the session's
/// messages in two pages, to a request that carries the key.
async fn agntix_messages(request: HttpRequest, key: web::Data<String>) -> HttpResponse {
    let given = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok());
    if given != Some(key.as_str()) {
        return HttpResponse::Unauthorized().finish();
    }
    if request.query_string().contains("cursor=2") {
        return HttpResponse::Ok().json(serde_json::json!({"data": [
            {"id": "msg-3", "role": "ASSISTANT", "content": "Done: you are booked for Thursday at 10:00.", "createdAt": "2026-04-08T05:01:02Z"}
        ]}));
    }
    HttpResponse::Ok().json(serde_json::json!({"data": [
        {"id": "msg-1", "role": "USER", "content": "Can I move my appointment to Thursday?", "createdAt": "2026-04-08T05:00:41Z"},
        {"id": "msg-2", "role": "TOOL", "content": "slot 10:00 free", "toolCall": {"name": "find_slot"}, "createdAt": "2026-04-08T05:00:55Z"}
    ], "nextCursor": "2"}))
}

/// One second of 8 kHz 16-bit mono silence with a WAV header: what the stand-in host serves.
fn demo_recording() -> Vec<u8> {
    let data_len: u32 = 16_000;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&8_000u32.to_le_bytes());
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.resize(44 + data_len as usize, 0);
    wav
}

/// Runs the demo, writing the tour to `out`.
pub async fn run(out: &mut impl Write) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("Failed to create a temporary directory")?;
    let agntix_secret = random_secret();
    let target_secret = random_secret();
    let pathors_token = format!("Bearer demo-{:x}", rand::random::<u64>());

    let receiver = web::Data::new(Receiver {
        verifier: Secret::parse(&target_secret)
            .context("Failed to build the receiver's verifier")?,
        got: Mutex::new(Vec::new()),
        arrived: Notify::new(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").context("Failed to bind the demo receiver")?;
    let receiver_url = format!("http://{}/sessions", listener.local_addr()?);
    let receiver_server = {
        let receiver = receiver.clone();
        HttpServer::new(move || {
            App::new()
                .app_data(receiver.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run()
    };
    let receiver_handle = receiver_server.handle();
    tokio::spawn(receiver_server);

    let api_key = format!("demo-agntix-key-{:x}", rand::random::<u64>());
    let api_listener =
        TcpListener::bind("127.0.0.1:0").context("Failed to bind the Agntix API stand-in")?;
    let api_url = format!("http://{}", api_listener.local_addr()?);
    let api_server = {
        let key = web::Data::new(api_key.clone());
        HttpServer::new(move || {
            App::new()
                .app_data(key.clone())
                .default_service(web::to(agntix_messages))
        })
        .workers(1)
        .disable_signals()
        .listen(api_listener)?
        .run()
    };
    let api_handle = api_server.handle();
    tokio::spawn(api_server);

    // A stand-in for Pathors' recording host: the file its short-lived URL points at.
    let recording = web::Data::new(demo_recording());
    let recording_listener =
        TcpListener::bind("127.0.0.1:0").context("Failed to bind the recording host stand-in")?;
    let recording_url = format!(
        "http://{}/recordings/2c4f9a13.wav?token=short-lived",
        recording_listener.local_addr()?
    );
    let recording_server = {
        let recording = recording.clone();
        HttpServer::new(move || {
            App::new()
                .app_data(recording.clone())
                .default_service(web::to(|bytes: web::Data<Vec<u8>>| async move {
                    HttpResponse::Ok()
                        .content_type("audio/wav")
                        .body(bytes.get_ref().clone())
                }))
        })
        .workers(1)
        .disable_signals()
        .listen(recording_listener)?
        .run()
    };
    let recording_handle = recording_server.handle();
    tokio::spawn(recording_server);

    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[storage]
url = "sqlite://{db}"
[recordings]
store = "file://{recordings}"
# The demo's recording host is a stand-in on loopback.
allow_private_networks = true
[delivery]
backoff_initial_ms = 100
backoff_max_ms = 1000
[[sources]]
name = "pathors"
vendor = "pathors"
auth = {{ kind = "header", header = "Authorization", value = "env:PATHORS_TOKEN" }}
[[sources]]
name = "agntix"
vendor = "agntix"
auth = {{ kind = "svix", secrets = ["env:AGNTIX_SECRET"] }}
transcripts = {{ api_url = "{api_url}", api_key = "env:AGNTIX_API_KEY", wait_ms = 10000 }}
[[sources]]
name = "retell"
vendor = "retell"
auth = {{ kind = "retell", api_key = "env:RETELL_API_KEY" }}
[[sources]]
name = "vapi"
vendor = "vapi"
auth = {{ kind = "hmac", secret = "env:VAPI_HMAC_SECRET", header = "x-signature", timestamp_header = "x-timestamp", payload = "{{timestamp}}.{{body}}" }}
[[sources]]
name = "elevenlabs"
vendor = "elevenlabs"
auth = {{ kind = "elevenlabs", secret = "env:ELEVENLABS_WEBHOOK_SECRET" }}
[[sources]]
name = "twilio"
vendor = "twilio"
auth = {{ kind = "twilio", auth_token = "env:TWILIO_AUTH_TOKEN", public_url = "{TWILIO_URL}" }}
[[sources]]
name = "bland"
vendor = "bland"
auth = {{ kind = "hmac", secret = "env:BLAND_WEBHOOK_SECRET", header = "X-Webhook-Signature", payload = "{{body}}", encoding = "hex" }}
[[targets]]
name = "receiver"
url = "{receiver_url}"
secret = "env:TARGET_SECRET"
include_raw = false
"#,
        db = dir.path().join("demo.db").display(),
        recordings = dir.path().join("recordings").display()
    );
    let env = |name: &str| match name {
        "PATHORS_TOKEN" => Some(pathors_token.clone()),
        "AGNTIX_SECRET" => Some(agntix_secret.clone()),
        "TARGET_SECRET" => Some(target_secret.clone()),
        "AGNTIX_API_KEY" => Some(api_key.clone()),
        "RETELL_API_KEY" => Some(RETELL_KEY.to_owned()),
        "VAPI_HMAC_SECRET" => Some(VAPI_SECRET.to_owned()),
        "ELEVENLABS_WEBHOOK_SECRET" => Some(ELEVENLABS_SECRET.to_owned()),
        "BLAND_WEBHOOK_SECRET" => Some(BLAND_SECRET.to_owned()),
        "TWILIO_AUTH_TOKEN" => Some(TWILIO_TOKEN.to_owned()),
        _ => None,
    };
    let config = Config::from_toml(&toml, &env).context("The demo configuration is invalid")?;
    let app = Application::build(config).await?;
    let gateway = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async {
        // Sent or dropped, either way the demo is over.
        stopped.await.unwrap_or(());
    }));

    writeln!(
        out,
        "sessiongate demo: a gateway on a temporary SQLite store, a built-in receiver,"
    )?;
    writeln!(
        out,
        "and the vendors' documented example events, sent like the real senders.\n"
    )?;
    writeln!(out, "Sent to the gateway:")?;
    let client = reqwest::Client::new();
    let signer = Secret::parse(&agntix_secret).context("the demo's Agntix secret")?;
    for (i, sent) in script().iter().enumerate() {
        let form = sent.vendor == "twilio";
        let mut v: Value = if form {
            Value::Object(
                form_urlencoded::parse(sent.body.as_bytes())
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect(),
            )
        } else {
            serde_json::from_str(sent.body)?
        };
        let event_type = vendor_event_type(sent.vendor, &v);
        // Recording URLs point at the stand-in host, sent now (a Pathors URL's 15 minutes
        // run from the event).
        let body = match (sent.vendor, event_type.as_str()) {
            ("pathors", "recording.ready") => {
                v["timestamp"] = crate::event::Timestamp::now().to_string().into();
                v["recordingUrl"] = recording_url.clone().into();
                serde_json::to_string(&v)?
            }
            ("retell", _) => {
                v["call"]["recording_url"] = recording_url.clone().into();
                serde_json::to_string(&v)?
            }
            ("bland", "post-call") => {
                v["recording_url"] = recording_url.clone().into();
                serde_json::to_string(&v)?
            }
            ("vapi", _) => {
                v["message"]["artifact"]["presignedMonoUrl"] = recording_url.clone().into();
                v["message"]["artifact"]["presignedUrlsExpiresAt"] = crate::event::Timestamp::now()
                    .plus_seconds(3600)
                    .to_string()
                    .into();
                serde_json::to_string(&v)?
            }
            _ => sent.body.to_owned(),
        };
        let mut request = client
            .post(format!("{gateway}/ingest/{}", sent.vendor))
            .header(
                "content-type",
                if form {
                    "application/x-www-form-urlencoded"
                } else {
                    "application/json"
                },
            )
            .body(body.clone());
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
        let bytes = body.as_bytes();
        // Each signed as its vendor signs.
        let headers: Vec<(&str, String)> = match sent.vendor {
            "pathors" => vec![("authorization", pathors_token.clone())],
            "agntix" => {
                let msg_id = format!("msg_demo{i}");
                crate::testing::svix_headers(&signer, &msg_id, now_ms / 1000, bytes).to_vec()
            }
            "retell" => crate::testing::retell_headers(RETELL_KEY, now_ms, bytes).to_vec(),
            "vapi" => crate::testing::vapi_hmac_headers(VAPI_SECRET, now_ms, bytes).to_vec(),
            "bland" => crate::testing::bland_headers(BLAND_SECRET, bytes).to_vec(),
            "twilio" => {
                crate::testing::twilio_headers(TWILIO_TOKEN, TWILIO_URL, bytes)[..1].to_vec()
            }
            _ => {
                crate::testing::elevenlabs_headers(ELEVENLABS_SECRET, now_ms / 1000, bytes).to_vec()
            }
        };
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.context("The gateway did not answer")?;
        let status = response.status().as_u16();
        let answer: Value = serde_json::from_slice(&response.bytes().await?).unwrap_or(Value::Null);
        let note = if sent.note.is_empty() {
            String::new()
        } else {
            format!("  ({})", sent.note)
        };
        writeln!(
            out,
            "  {:<10} {:<24} {} {:<9} {}{note}",
            sent.vendor,
            event_type,
            status,
            answer["status"].as_str().unwrap_or("?"),
            answer["id"].as_str().unwrap_or(""),
        )?;
        ensure!(
            status == 200 || status == 202,
            "the gateway answered {status}: {answer}"
        );
    }

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let arrived = receiver.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if receiver.got.lock().expect("receiver lock").len() >= EXPECTED_DELIVERIES {
            break;
        }
        if tokio::time::timeout_at(deadline, arrived).await.is_err() {
            bail!(
                "the receiver got {} of {EXPECTED_DELIVERIES} events in {PATIENCE:?}",
                receiver.got.lock().expect("receiver lock").len()
            );
        }
    }
    // The gateway task may have ended on its own; its result is read next.
    stop.send(()).unwrap_or(());
    running.await.context("The gateway task failed")??;
    receiver_handle.stop(true).await;
    api_handle.stop(true).await;
    recording_handle.stop(true).await;

    let got = std::mem::take(&mut *receiver.got.lock().expect("receiver lock"));
    writeln!(out, "\nThe receiver got {} events:", got.len())?;
    let mut finalized: BTreeMap<String, usize> = BTreeMap::new();
    for r in &got {
        let e = &r.body;
        let session = e["session"]["id"].as_str().unwrap_or("?");
        if e["type"] == "session.finalized" {
            *finalized.entry(session.to_owned()).or_default() += 1;
        }
        writeln!(
            out,
            "  {:<18} {:<10} session {}…  {}  signature {}",
            e["type"].as_str().unwrap_or("?"),
            e["source"]["vendor"].as_str().unwrap_or("?"),
            session.get(..8).unwrap_or(session),
            e["id"].as_str().unwrap_or("?"),
            if r.signature_ok {
                "verified"
            } else {
                "INVALID"
            },
        )?;
    }
    ensure!(
        got.len() == EXPECTED_DELIVERIES,
        "expected {EXPECTED_DELIVERIES} events, got {}",
        got.len()
    );
    ensure!(
        got.iter().all(|r| r.signature_ok),
        "a delivery's signature did not verify"
    );
    ensure!(
        finalized.len() == SESSIONS && finalized.values().all(|&n| n == 1),
        "expected one session.finalized for each of {SESSIONS} sessions, got {finalized:?}"
    );

    let shown = got
        .iter()
        .find(|r| r.body["type"] == "session.finalized" && r.body["session"]["call"].is_object())
        .context("no session.finalized of the Pathors call session arrived")?;
    writeln!(
        out,
        "\nOne session.finalized per session ({} sessions). The Pathors call session's, as the\n\
         receiver got it: call.ended, session.ended and session.finalized merged into one record\n\
         (endedAt and the call outcome come from the events before it):",
        finalized.len()
    )?;
    writeln!(out, "{}", serde_json::to_string_pretty(&shown.body)?)?;

    let agntix = got
        .iter()
        .find(|r| r.body["type"] == "session.finalized" && r.body["source"]["vendor"] == "agntix")
        .context("no Agntix session.finalized arrived")?;
    let transcript = &agntix.body["session"]["transcript"];
    ensure!(
        transcript["status"] == "complete",
        "the Agntix session.finalized has no transcript: {transcript}"
    );
    writeln!(
        out,
        "\nThe Agntix session.finalized waited for its transcript, which the webhook does not carry:\n\
         the gateway fetched every page from the Agntix messages API (here a local stand-in that\n\
         answers as Agntix documents it) and merged it into the record. session.transcript\n\
         ({}):",
        transcript["status"].as_str().unwrap_or("?")
    )?;
    for m in transcript["messages"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {:<9} {}",
            m["role"].as_str().unwrap_or("?"),
            m["content"].as_str().unwrap_or("")
        )?;
    }
    let ready = got
        .iter()
        .find(|r| r.body["type"] == "recording.ready")
        .context("no recording.ready arrived")?;
    let archive = &ready.body["session"]["recording"]["archive"];
    ensure!(
        archive["status"] == "archived",
        "the recording was not archived: {archive}"
    );
    writeln!(
        out,
        "\nThe Pathors recording.ready went out once the recording was archived: its URL works for\n\
         about 15 minutes, so the gateway streamed the file to its store first (here a local\n\
         stand-in host). session.recording.archive: {} bytes, sha256 {}…, {}.\n\
         GET /admin/recordings/pathors/{{sessionId}} serves it back.",
        archive["bytes"],
        archive["sha256"]
            .as_str()
            .unwrap_or("?")
            .get(..16)
            .unwrap_or("?"),
        archive["contentType"].as_str().unwrap_or("?"),
    )?;
    writeln!(
        out,
        "\nOrder is not a promise. Above, events arrived in the order the gateway could deliver\n\
         them, which is not the order they happened: an Agntix session.finalized can come before\n\
         its session.started, and a retry repeats an event with the same id. Receivers must not\n\
         rely on order: de-duplicate on the event id (the webhook-id header), and read the whole\n\
         session from session.finalized, which always carries the merged record.\n\
         \n\
         To run it for real:\n\
         \x20 cargo run -- serve --config config/dev.toml    # 127.0.0.1:8080, a local SQLite file\n\
         and POST to http://127.0.0.1:8080/ingest/{{source}} (README, \"Send a test event\"); for a\n\
         vendor to reach it, listen publicly (SESSIONGATE__SERVER__LISTEN=0.0.0.0:8080). For production,\n\
         start from config/sessiongate.toml (every key: config/defaults.toml), check it with\n\
         `sessiongate check-config --config FILE`, and read the README's \"Running in production\"."
    )?;
    Ok(())
}
