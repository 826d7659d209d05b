//! Recordings archived before the vendor's URL expires: a local recording host that serves
//! a file, fails on demand and refuses after expiry; `recording.ready` waits for the archive.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::*;

struct Host {
    body: Vec<u8>,
    /// Answer 503 to this many requests first.
    fail_first: usize,
    /// Answer 403 to everything (an expired URL).
    refuse: bool,
    hits: AtomicUsize,
}

struct RecordingHost {
    url: String,
    host: Arc<Host>,
    _server: actix_web::dev::ServerHandle,
}

impl RecordingHost {
    async fn start(body: Vec<u8>, fail_first: usize, refuse: bool) -> RecordingHost {
        let host = Arc::new(Host {
            body,
            fail_first,
            refuse,
            hits: AtomicUsize::new(0),
        });
        let (address, handle) = serve(web::Data::from(host.clone()), answer);
        let url = format!("http://{address}/rec/2c4f9a13.wav?token=short-lived");
        RecordingHost {
            url,
            host,
            _server: handle,
        }
    }

    fn hits(&self) -> usize {
        self.host.hits.load(Ordering::SeqCst)
    }
}

async fn answer(host: web::Data<Host>) -> HttpResponse {
    let n = host.hits.fetch_add(1, Ordering::SeqCst);
    if host.refuse {
        return HttpResponse::Forbidden().body("expired");
    }
    if n < host.fail_first {
        return HttpResponse::ServiceUnavailable().finish();
    }
    HttpResponse::Ok()
        .content_type("audio/wav")
        .body(host.body.clone())
}

/// A gateway archiving to `dir`, forwarding Pathors events to `receiver`.
fn gateway(dir: &std::path::Path, receiver: &TestReceiver) -> Options {
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\nsources = [\"pathors\"]\n",
        receiver.url("/")
    ));
    options.tables = format!("[recordings]\nstore = \"file://{}\"\n", dir.display());
    options
}

/// The documented `recording.ready`, pointing at `url`, sent `age` after the vendor's event.
fn recording_ready(url: &str, age: Duration) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("pathors", "recording-ready.json")).unwrap();
    let at = chrono::Utc::now() - chrono::Duration::from_std(age).unwrap();
    v["timestamp"] = at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .into();
    v["recordingUrl"] = url.into();
    serde_json::to_vec(&v).unwrap()
}

fn pseudo_random(n: usize) -> Vec<u8> {
    (0..n as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_archived_before_recording_ready_goes_out() {
    let bytes = pseudo_random(3 * 1024 * 1024 + 17);
    let host = RecordingHost::start(bytes.clone(), 2, false).await;
    let store = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(gateway(store.path(), &receiver), None).await;
    let status = app
        .post_pathors(&recording_ready(&host.url, Duration::ZERO))
        .await
        .status();
    assert_eq!(status.as_u16(), 202);

    let got = receiver.wait_for(1).await;
    let event = got[0].json();
    assert_eq!(event["type"], "recording.ready");
    let recording = &event["session"]["recording"];
    assert_eq!(
        recording["url"],
        host.url.as_str(),
        "the vendor's URL stays"
    );
    let archive = &recording["archive"];
    assert_eq!(archive["status"], "archived", "{event}");
    assert_eq!(archive["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(archive["bytes"], bytes.len() as u64);
    assert_eq!(archive["contentType"], "audio/wav");
    assert!(
        archive["url"].as_str().unwrap().starts_with("file:///"),
        "{archive}"
    );
    assert!(archive["archivedAt"].is_string());
    assert!(archive.get("reason").is_none());
    assert_eq!(host.hits(), 3, "two 503s retried, then the download");

    // The bytes come back from the admin API.
    let response = app
        .admin(
            reqwest::Method::GET,
            "/admin/recordings/pathors/2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04",
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    assert_eq!(response.bytes().await.unwrap().to_vec(), bytes);

    // Every event rendered afterwards carries the archive.
    let mut ended: Value =
        serde_json::from_slice(&fixture("pathors", "session-ended.json")).unwrap();
    ended["timestamp"] = chrono::Utc::now().to_rfc3339().into();
    app.post_pathors(&serde_json::to_vec(&ended).unwrap()).await;
    let got = receiver.wait_for(2).await;
    let later = got
        .iter()
        .map(|r| r.json())
        .find(|e| e["type"] == "session.ended")
        .unwrap();
    assert_eq!(
        later["session"]["recording"]["archive"]["status"],
        "archived"
    );

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("sessiongate_recordings_archived_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "sessiongate_recording_bytes_total {}",
            bytes.len()
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_expires_first_fails_the_archive_with_the_hosts_answer() {
    let host = RecordingHost::start(Vec::new(), 0, true).await;
    let store = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(gateway(store.path(), &receiver), None).await;
    // Its 15 minutes are all but over: 2 s are left.
    let sent = Instant::now();
    let body = recording_ready(&host.url, Duration::from_secs(15 * 60 - 2));
    assert_eq!(app.post_pathors(&body).await.status().as_u16(), 202);

    let got = receiver.wait_for(1).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "went out before expiry"
    );
    let archive = got[0].json()["session"]["recording"]["archive"].clone();
    assert_eq!(
        archive,
        serde_json::json!({"status": "failed", "reason": "http_403", "url": null, "sha256": null,
            "bytes": null, "contentType": null, "archivedAt": null})
    );
    assert!(host.hits() >= 2, "retried until expiry");
    let response = app
        .admin(
            reqwest::Method::GET,
            "/admin/recordings/pathors/2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04",
        )
        .await;
    assert_eq!(response.status().as_u16(), 404);
    assert!(
        app.metrics()
            .await
            .contains(r#"sessiongate_recordings_failed_total{reason="http_403"} 1"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_recordings_configured_recording_ready_goes_out_at_once_with_no_archive() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\n",
        receiver.url("/")
    ))
    .await;
    let body = recording_ready("http://127.0.0.1:9/never.wav", Duration::ZERO);
    assert_eq!(app.post_pathors(&body).await.status().as_u16(), 202);
    let event = receiver.wait_for(1).await[0].json();
    assert!(event["session"]["recording"]["archive"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_archived_object_with_its_events() {
    let host = RecordingHost::start(pseudo_random(64 * 1024), 0, false).await;
    let store = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    let mut options = gateway(store.path(), &receiver);
    options.tables += "[retention]\nmax_age = \"1s\"\ninterval = \"1s\"\n";
    let app = spawn_app_with(options, None).await;
    let body = recording_ready(&host.url, Duration::ZERO);
    assert_eq!(app.post_pathors(&body).await.status().as_u16(), 202);
    let archive = receiver.wait_for(1).await[0].json()["session"]["recording"]["archive"].clone();
    let path = archive["url"]
        .as_str()
        .unwrap()
        .strip_prefix("file://")
        .unwrap()
        .to_owned();
    assert!(std::path::Path::new(&path).is_file());

    let deadline = Instant::now() + PATIENCE;
    while std::path::Path::new(&path).exists() {
        assert!(Instant::now() < deadline, "retention never deleted {path}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = app
        .admin(
            reqwest::Method::GET,
            "/admin/recordings/pathors/2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04",
        )
        .await;
    assert_eq!(response.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_archive_to_an_s3_compatible_store_and_come_back() {
    let Some(s3) = sessiongate::testing::s3() else {
        return;
    };
    let bytes = pseudo_random(7 * 1024 * 1024 + 5);
    let host = RecordingHost::start(bytes.clone(), 1, false).await;
    let receiver = TestReceiver::start().await;
    let prefix = format!("sgtest-{:08x}", rand::random::<u32>());
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\nsources = [\"pathors\"]\n",
        receiver.url("/")
    ));
    options.tables = format!(
        "[recordings]\nstore = \"s3://{}/{prefix}\"\ns3_endpoint = \"{}\"\ns3_region = \"us-east-1\"\n\
         s3_access_key_id = \"{}\"\ns3_secret_access_key = \"{}\"\n",
        s3.bucket, s3.endpoint, s3.key, s3.secret
    );
    let app = spawn_app_with(options, None).await;
    let body = recording_ready(&host.url, Duration::ZERO);
    assert_eq!(app.post_pathors(&body).await.status().as_u16(), 202);

    let archive = receiver.wait_for(1).await[0].json()["session"]["recording"]["archive"].clone();
    assert_eq!(archive["status"], "archived", "{archive}");
    assert_eq!(archive["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(archive["bytes"], bytes.len() as u64);
    let url = archive["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("s3://{}/{prefix}/pathors/", s3.bucket)),
        "{url}"
    );
    // Served back from the object store, whole.
    let response = app
        .admin(
            reqwest::Method::GET,
            "/admin/recordings/pathors/2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04",
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    assert_eq!(response.bytes().await.unwrap().to_vec(), bytes);
}

/// Serves `body` in 16 KiB pieces, one every 20 ms, counting the bytes sent: slow enough to
/// kill the gateway mid-download.
async fn trickle(body: web::Data<(Vec<u8>, AtomicUsize)>) -> HttpResponse {
    let data = body.clone();
    let stream = futures_util::stream::unfold(0usize, move |at| {
        let data = data.clone();
        async move {
            if at >= data.0.len() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let end = (at + 16 * 1024).min(data.0.len());
            data.1.fetch_add(end - at, Ordering::SeqCst);
            Some((
                Ok::<_, std::io::Error>(web::Bytes::copy_from_slice(&data.0[at..end])),
                end,
            ))
        }
    });
    HttpResponse::Ok()
        .content_type("audio/wav")
        .streaming(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_download_resumes_after_the_restart() {
    let bytes = pseudo_random(1024 * 1024);
    let data = web::Data::new((bytes.clone(), AtomicUsize::new(0)));
    let (address, _host) = serve(data.clone(), trickle);
    let url = format!("http://{address}/slow.wav");

    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(
        dir.path(),
        &format!(
            "url = \"sqlite://{}\"",
            dir.path().join("gate.db").display()
        ),
        &format!(
            "[recordings]\nstore = \"file://{}\"\n[delivery]\nbackoff_initial_ms = 50\n\
             [[targets]]\nname = \"crm\"\nurl = \"{}\"",
            dir.path().join("recordings").display(),
            receiver.url("/")
        ),
    );
    let env = [("TEST_PATHORS_TOKEN", PATHORS_TOKEN)];
    let mut gateway = GatewayProcess::start(&config, &env);
    let status = reqwest::Client::new()
        .post(gateway.url("/ingest/pathors"))
        .header("authorization", PATHORS_TOKEN)
        .body(recording_ready(&url, Duration::ZERO))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202);
    // Some of it has arrived, most has not: kill -9.
    let deadline = Instant::now() + PATIENCE;
    while data.1.load(Ordering::SeqCst) < 128 * 1024 {
        assert!(Instant::now() < deadline, "the download never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.kill_9();
    assert!(
        receiver.received().is_empty(),
        "nothing went out before the archive"
    );

    let _restarted = GatewayProcess::start(&config, &env);
    let event = receiver.wait_for(1).await[0].json();
    let archive = &event["session"]["recording"]["archive"];
    assert_eq!(archive["status"], "archived", "{event}");
    assert_eq!(archive["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(archive["bytes"], bytes.len() as u64);
    // No partial file is left beside the archive.
    let objects: Vec<_> = std::fs::read_dir(dir.path().join("recordings/pathors"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(objects.len(), 1, "{objects:?}");
}
