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

/// A gateway archiving to `dir`, forwarding Pathors events to `receiver`; its recording
/// hosts are on loopback, so private networks are allowed.
fn gateway(dir: &std::path::Path, receiver: &TestReceiver) -> Options {
    gateway_with(dir, receiver, "allow_private_networks = true\n")
}

/// [`gateway`] with more `[recordings]` keys.
fn gateway_with(dir: &std::path::Path, receiver: &TestReceiver, keys: &str) -> Options {
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\nsources = [\"pathors\"]\n",
        receiver.url("/")
    ));
    options.tables = format!("[recordings]\nstore = \"file://{}\"\n{keys}", dir.display());
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
    // A download, never a page on the console's origin.
    assert_eq!(response.headers()["content-disposition"], "attachment");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["content-security-policy"], "sandbox");
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

#[cfg_attr(
    not(sg_s3),
    ignore = "needs an S3 store: set SESSIONGATE_TEST_S3_ENDPOINT, _BUCKET, _KEY, _SECRET"
)]
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
        "[recordings]\nstore = \"s3://{}/{prefix}\"\nallow_private_networks = true\n\
         s3_endpoint = \"{}\"\ns3_region = \"us-east-1\"\n\
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
            "[recordings]\nstore = \"file://{}\"\nallow_private_networks = true\n\
             [delivery]\nbackoff_initial_ms = 50\n\
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

/// The documented `recording.ready` of session `id`, pointing at `url`, sent now.
fn recording_ready_of(id: &str, url: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&recording_ready(url, Duration::ZERO)).unwrap();
    v["sessionId"] = id.into();
    serde_json::to_vec(&v).unwrap()
}

/// A host that serves its body in `piece`-byte pieces, one every `every`.
struct Slow {
    body: Vec<u8>,
    piece: usize,
    every: Duration,
    hits: AtomicUsize,
}

async fn slowly(host: web::Data<Slow>) -> HttpResponse {
    host.hits.fetch_add(1, Ordering::SeqCst);
    let data = host.into_inner();
    let stream = futures_util::stream::unfold(0usize, move |at| {
        let data = data.clone();
        async move {
            if at >= data.body.len() {
                return None;
            }
            tokio::time::sleep(data.every).await;
            let end = (at + data.piece).min(data.body.len());
            Some((
                Ok::<_, std::io::Error>(web::Bytes::copy_from_slice(&data.body[at..end])),
                end,
            ))
        }
    });
    HttpResponse::Ok()
        .content_type("audio/wav")
        .streaming(stream)
}

fn start_slow(
    body: Vec<u8>,
    piece: usize,
    every: Duration,
) -> (String, Arc<Slow>, actix_web::dev::ServerHandle) {
    let host = Arc::new(Slow {
        body,
        piece,
        every,
        hits: AtomicUsize::new(0),
    });
    let (address, handle) = serve(web::Data::from(host.clone()), slowly);
    (
        format!("http://{address}/rec/slow.wav?token=t"),
        host,
        handle,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_longer_than_its_lease_runs_once_and_counts_once() {
    // 768 KiB over about 7 s, with a 3 s lease: the run must keep renewing it.
    let bytes = pseudo_random(768 * 1024);
    let (url, host, _server) = start_slow(bytes.clone(), 16 * 1024, Duration::from_millis(150));
    let store = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(
        gateway_with(
            store.path(),
            &receiver,
            "allow_private_networks = true\nlease = \"3s\"\n",
        ),
        None,
    )
    .await;
    let started = Instant::now();
    assert_eq!(
        app.post_pathors(&recording_ready(&url, Duration::ZERO))
            .await
            .status()
            .as_u16(),
        202
    );

    let event = receiver.wait_for(1).await[0].json();
    let took = started.elapsed();
    eprintln!(
        "downloads per recording: {}, archived after {took:?}",
        host.hits.load(Ordering::SeqCst)
    );
    assert!(
        took > Duration::from_secs(6),
        "the download outlasted two leases: {took:?}"
    );
    let archive = &event["session"]["recording"]["archive"];
    assert_eq!(archive["status"], "archived", "{event}");
    assert_eq!(archive["sha256"], hex::encode(Sha256::digest(&bytes)));
    assert_eq!(
        host.hits.load(Ordering::SeqCst),
        1,
        "one download, not one per lease"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("sessiongate_recordings_archived_total 1\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("sessiongate_recordings_failed_total{"),
        "{metrics}"
    );
    let objects: Vec<_> = std::fs::read_dir(store.path().join("pathors"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(objects.len(), 1, "one object, no partial file: {objects:?}");
    let response = app
        .admin(
            reqwest::Method::GET,
            "/admin/recordings/pathors/2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04",
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap().to_vec(), bytes);
    assert_eq!(
        receiver.received().len(),
        1,
        "recording.ready went out once"
    );
}

/// Accepts connections and never answers, keeping them open.
fn silent_host() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(64) {
            match stream {
                Ok(s) => held.push(s),
                Err(_) => return,
            }
        }
    });
    (address, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hosts_do_not_stall_the_other_jobs() {
    // Nine recordings whose host never answers and one that trickles a byte a second fill
    // more than every recording slot; a good recording sent after them is still archived,
    // and an Agntix transcript wait (its API never answers either) ends on time.
    let (silent, _thread) = silent_host();
    let (trickle_url, _trickler, _t) = start_slow(vec![7; 4096], 1, Duration::from_secs(1));
    let good = RecordingHost::start(pseudo_random(64 * 1024), 0, false).await;
    let store = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    let mut options = gateway_with(
        store.path(),
        &receiver,
        "allow_private_networks = true\nread_timeout = \"1s\"\nattempt_timeout = \"2s\"\nlease = \"3s\"\n",
    );
    options.targets = format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\n",
        receiver.url("/")
    );
    options.agntix_extra = format!(
        "transcripts = {{ api_url = \"http://{silent}\", api_key = \"k\", wait_ms = 3000 }}"
    );
    let app = spawn_app_with(options, None).await;
    for i in 0..9 {
        let body = recording_ready_of(&format!("silent-{i}"), &format!("http://{silent}/r.wav"));
        assert_eq!(app.post_pathors(&body).await.status().as_u16(), 202);
    }
    let body = recording_ready_of("trickle", &trickle_url);
    assert_eq!(app.post_pathors(&body).await.status().as_u16(), 202);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    let body = recording_ready_of("good", &good.url);
    assert_eq!(app.post_pathors(&body).await.status().as_u16(), 202);
    let ended = fixture("agntix", "session-ended.json");
    assert_eq!(app.post_agntix(&ended).await.status().as_u16(), 202);

    let find = |wanted: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(event) = receiver
                .received()
                .iter()
                .map(|r| r.json())
                .find(|e| wanted(e))
            {
                break event;
            }
            assert!(Instant::now() < deadline, "waited behind the hostile hosts");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let event = find(&|e| e["session"]["id"] == "good");
    eprintln!(
        "the good recording went out {:?} after it was sent",
        sent.elapsed()
    );
    assert_eq!(
        event["session"]["recording"]["archive"]["status"], "archived",
        "{event}"
    );
    assert_eq!(good.hits(), 1);
    let finalized = find(&|e| e["type"] == "session.finalized");
    let waited = sent.elapsed();
    eprintln!("session.finalized (wait_ms = 3000) went out {waited:?} after session.ended");
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    assert_eq!(
        finalized["session"]["transcript"]["status"], "unavailable",
        "{finalized}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_urls_on_private_networks_or_not_http_are_refused_at_once() {
    let store = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    // The default: private networks refused.
    let app = spawn_app_with(gateway_with(store.path(), &receiver, ""), None).await;
    let port = app.admin_address.rsplit(':').next().unwrap().to_owned();
    let urls = [
        (
            "own-metrics",
            format!("http://127.0.0.1:{port}/metrics"),
            "forbidden_host",
        ),
        (
            "decimal",
            format!("http://2130706433:{port}/metrics"),
            "forbidden_host",
        ),
        (
            "by-name",
            format!("http://localhost:{port}/metrics?token=secret"),
            "forbidden_host",
        ),
        (
            "mapped",
            format!("http://[::ffff:127.0.0.1]:{port}/metrics"),
            "forbidden_host",
        ),
        (
            "ftp",
            "ftp://recordings.example/x.wav".to_owned(),
            "invalid_url",
        ),
        ("garbage", "not a url at all".to_owned(), "invalid_url"),
    ];
    let sent = Instant::now();
    for (id, url, _) in &urls {
        assert_eq!(
            app.post_pathors(&recording_ready_of(id, url))
                .await
                .status()
                .as_u16(),
            202
        );
    }
    let got = receiver.wait_for(urls.len()).await;
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "final at once, not retried: {:?}",
        sent.elapsed()
    );
    for (id, _, reason) in &urls {
        let event = got
            .iter()
            .map(|r| r.json())
            .find(|e| e["session"]["id"] == *id)
            .unwrap_or_else(|| panic!("no event for {id}"));
        let archive = &event["session"]["recording"]["archive"];
        assert_eq!(archive["status"], "failed", "{id}: {event}");
        assert_eq!(archive["reason"], *reason, "{id}: {event}");
    }
    assert!(
        std::fs::read_dir(store.path()).map_or(true, |mut d| d.next().is_none()),
        "nothing was archived"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"sessiongate_recordings_failed_total{reason="forbidden_host"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sessiongate_recordings_failed_total{reason="invalid_url"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_hosts_admits_only_the_hosts_it_names() {
    let host = RecordingHost::start(pseudo_random(1024), 0, false).await;
    let store = tempfile::tempdir().unwrap();
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(
        gateway_with(
            store.path(),
            &receiver,
            "allow_private_networks = true\nallow_hosts = [\"localhost\"]\n",
        ),
        None,
    )
    .await;
    let by_name = host.url.replace("127.0.0.1", "localhost");
    assert_eq!(
        app.post_pathors(&recording_ready_of("named", &by_name))
            .await
            .status()
            .as_u16(),
        202
    );
    assert_eq!(
        app.post_pathors(&recording_ready_of("other", &host.url))
            .await
            .status()
            .as_u16(),
        202
    );
    let got = receiver.wait_for(2).await;
    let reason = |id: &str| {
        let e = got
            .iter()
            .map(|r| r.json())
            .find(|e| e["session"]["id"] == id)
            .unwrap();
        e["session"]["recording"]["archive"].clone()
    };
    assert_eq!(reason("named")["status"], "archived");
    assert_eq!(reason("other")["reason"], "forbidden_host");
    assert_eq!(host.hits(), 1);
}
