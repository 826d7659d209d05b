//! Faults: a crash under load, a receiver that fails every way, a full disk, slow and
//! oversized clients. Bounded in time, loopback only.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sessiongate::store::DeliveryStatus;

use crate::helpers::*;

/// Polls a condition of the test's own making (its senders' progress), not the gateway's.
async fn poll_until(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = process_config(
        dir.path(),
        &format!(
            "url = \"sqlite://{}\"",
            dir.path().join("gate.db").display()
        ),
        "backoff_initial_ms = 50\nmax_attempts = 100",
        &receiver.url("/crm"),
    );
    let env = [("TEST_PATHORS_TOKEN", PATHORS_TOKEN)];
    let mut gateway = GatewayProcess::start(&config, &env);

    // Eight senders keep the gateway busy; the kill lands while requests are in flight.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = reqwest::Client::new();
    let senders: Vec<_> = (0..8)
        .map(|worker| {
            let (client, url) = (client.clone(), gateway.url("/ingest/pathors"));
            let (acknowledged, sent, stop) = (acknowledged.clone(), sent.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = call_ended(&format!("crash-{worker}-{i}"));
                    let Ok(response) = client
                        .post(&url)
                        .header("authorization", PATHORS_TOKEN)
                        .body(body)
                        .send()
                        .await
                    else {
                        continue; // the gateway died under this request: not acknowledged
                    };
                    if response.status().as_u16() == 202
                        && let Ok(answer) = response.json::<Value>().await
                    {
                        acknowledged
                            .lock()
                            .unwrap()
                            .push(answer["id"].as_str().unwrap().to_owned());
                    }
                }
            })
        })
        .collect();
    poll_until("load to build up", PATIENCE, || {
        acknowledged.lock().unwrap().len() >= 300
    })
    .await;
    gateway.kill_9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    let acknowledged: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    let delivered_before = receiver.delivered_ids().len();

    let _restarted = GatewayProcess::start(&config, &env);
    assert!(
        receiver
            .wait_until(Duration::from_secs(60), |r| acknowledged
                .is_subset(&r.delivered_ids()))
            .await,
        "timed out waiting for every acknowledged event to arrive"
    );
    let delivered = receiver.delivered_ids();
    println!(
        "kill -9 under load: sent {}, acknowledged {}, delivered before the kill {delivered_before}, \
         delivered in all {} in {} requests, lost {}",
        sent.load(std::sync::atomic::Ordering::SeqCst),
        acknowledged.len(),
        delivered.len(),
        receiver.received().len(),
        acknowledged.difference(&delivered).count()
    );
    assert!(acknowledged.is_subset(&delivered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_failing_then_slow_gets_everything_and_delays_no_one() {
    // The flaky receiver's port is chosen now but nothing listens there yet: refused.
    let flaky_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let flaky_url = format!("http://{}/flaky", flaky_listener.local_addr().unwrap());
    drop(flaky_listener);
    let healthy = TestReceiver::start().await;
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"flaky\"\nurl = \"{flaky_url}\"\ntimeout_ms = 200\n\
         [[targets]]\nname = \"healthy\"\nurl = \"{}\"\n",
        healthy.url("/healthy")
    ));
    options.max_attempts = 1000;
    options.backoff_initial_ms = 50;
    let app = spawn_app_with(options, None).await;

    // Each phase: 25 new events, then time for the workers to try them against that phase.
    let mut sent = 0;
    let mut slowest_ingest = Duration::ZERO;
    let mut phase = async |app: &TestApp| {
        for _ in 0..25 {
            let started = Instant::now();
            let body = call_ended(&format!("flaky-{sent}"));
            assert_eq!(app.post_pathors(&body).await.status().as_u16(), 202);
            slowest_ingest = slowest_ingest.max(started.elapsed());
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    };

    // Phase 1: connection refused.
    phase(&app).await;
    // Phase 2: up, but every answer is 500.
    let address = flaky_url
        .trim_start_matches("http://")
        .trim_end_matches("/flaky");
    let flaky = TestReceiver::start_on(std::net::TcpListener::bind(address).unwrap()).await;
    flaky.answer(Reply::status(500));
    phase(&app).await;
    // Phase 3: answers 200, but only after the attempt timeout.
    flaky.answer(Reply {
        status: 200,
        delay: Duration::from_millis(500),
    });
    phase(&app).await;
    // The healthy target kept up all along.
    healthy.wait_for(sent).await;
    // Phase 4: healthy.
    flaky.answer(Reply::status(200));

    app.wait_for_deliveries(DeliveryStatus::Delivered, 2 * sent)
        .await;
    assert!(
        app.deliveries(Some(DeliveryStatus::Dead)).await.is_empty(),
        "none dead"
    );
    let distinct = flaky.delivered_ids();
    assert_eq!(distinct.len(), sent);
    println!(
        "flaky receiver: {sent} events, {} requests to it, slowest ingest answer {slowest_ingest:?}",
        flaky.received().len()
    );
    assert!(
        slowest_ingest < Duration::from_millis(500),
        "ingest slowed to {slowest_ingest:?}"
    );
}

/// A small tmpfs mounted for one test: a disk that can really fill up.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        // Runs only with SESSIONGATE_TEST_TMPFS set or under CI=true (build.rs).
        assert!(
            mounted.status.success(),
            "cannot mount a tmpfs here (it needs root): {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        Some(SmallDisk { dir })
    }

    fn fill(&self) -> std::fs::File {
        let mut filler = std::fs::File::create(self.dir.path().join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.write_all(&[0u8; 512]);
        filler
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[cfg_attr(
    not(sg_tmpfs),
    ignore = "needs root to mount a tmpfs: set SESSIONGATE_TEST_TMPFS=1"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_never_2xx_and_recovers_without_a_restart() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    let mut options = Options::with_targets("");
    options.storage_url = Some(format!(
        "sqlite://{}",
        disk.dir.path().join("gate.db").display()
    ));
    let app = spawn_app_with(options, None).await;
    assert_eq!(
        app.post_pathors(&call_ended("before"))
            .await
            .status()
            .as_u16(),
        202
    );

    let filler = disk.fill();
    // "Full" is not exact: pages SQLite already owns (a WAL that starts over, a partly used
    // tmpfs page) may still take an event. So the rule checked is the one that matters: a
    // 2xx only for an event that is stored, a 503 only for one that is not, and at least one
    // 503 once the events written are far more than any such slack.
    let padded = |session: &str| {
        let mut body: Value = serde_json::from_slice(&call_ended(session)).unwrap();
        // Big enough that SQLite must grow its files.
        body["padding"] = "x".repeat(16 * 1024).into();
        body.to_string().into_bytes()
    };
    let (mut refused, mut stored) = (Vec::new(), Vec::new());
    let mut last = 0;
    for i in 0..20 {
        let session = format!("full-{i}");
        let status = app.post_pathors(&padded(&session)).await.status().as_u16();
        last = status;
        match status {
            503 => refused.push(session),
            202 => stored.push(session),
            other => panic!("{session}: answered {other}; only 202 or 503 can be right"),
        }
    }
    assert!(
        !refused.is_empty(),
        "320 KiB of events on a full disk: at least one must be refused"
    );
    // Readiness follows the store's ability to commit, not its ability to answer a read.
    let ready = |app: &TestApp| {
        let url = format!("{}/readyz", app.address);
        let client = app.client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    if last == 503 {
        let (status, body) = ready(&app).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["store"], "failing_commits", "{body}");
    }
    drop(filler);
    disk.free();
    for session in &refused {
        let status = app.post_pathors(&padded(session)).await.status().as_u16();
        assert_eq!(
            status, 202,
            "{session}: answered 503 while full, so it was not stored: accepted now, not a duplicate"
        );
    }
    for session in &stored {
        let status = app.post_pathors(&padded(session)).await.status().as_u16();
        assert_eq!(
            status, 200,
            "{session}: answered 202 while full, so it was stored"
        );
    }
    assert_eq!(
        app.post_pathors(&call_ended("before"))
            .await
            .status()
            .as_u16(),
        200
    );
    let (status, body) = ready(&app).await;
    assert_eq!(
        (status, &body["store"]),
        (200, &Value::from("ok")),
        "{body}"
    );
    let refused = refused.len();
    println!("full disk: {refused} requests answered 503, recovered without a restart");
    let _ = app.stop().await;
}

fn raw_request(address: &str, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

fn status_of(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_clients_are_cut_off_and_cannot_starve_others() {
    let mut options = Options::with_targets("");
    options.max_body_bytes = 4096;
    options.server_extra = "body_timeout_ms = 800\nheader_timeout_ms = 800".into();
    let app = spawn_app_with(options, None).await;
    let address = app.address.trim_start_matches("http://").to_owned();

    // Fifty clients that send headers and then trickle their bodies, and ten that never
    // finish their headers.
    let mut tricklers = Vec::new();
    for _ in 0..50 {
        let address = address.clone();
        tricklers.push(tokio::task::spawn_blocking(move || {
            let mut s = raw_request(
                &address,
                &format!("POST /ingest/pathors HTTP/1.1\r\nHost: x\r\nAuthorization: {PATHORS_TOKEN}\r\nContent-Length: 100\r\n\r\n{{"),
            );
            let started = Instant::now();
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(100));
                if s.write_all(b" ").is_err() {
                    break;
                }
            }
            (status_of(&mut s), started.elapsed())
        }));
    }
    for _ in 0..10 {
        let address = address.clone();
        tricklers.push(tokio::task::spawn_blocking(move || {
            let mut s = raw_request(&address, "POST /ingest/pathors HTTP/1.1\r\nHost: x\r\n");
            let started = Instant::now();
            (status_of(&mut s), started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Meanwhile a normal request is served promptly.
    let started = Instant::now();
    assert_eq!(
        app.post_pathors(&call_ended("prompt"))
            .await
            .status()
            .as_u16(),
        202
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "starved: {:?}",
        started.elapsed()
    );

    for t in tricklers {
        let (status, took) = t.await.unwrap();
        assert!(
            status.starts_with("HTTP/1.1 408"),
            "a slow client got {status:?}"
        );
        assert!(
            took < Duration::from_secs(3),
            "a slow client held on for {took:?}"
        );
    }

    // Oversized: a declared body over the limit is refused before it is sent.
    let mut s = raw_request(
        &address,
        &format!(
            "POST /ingest/pathors HTTP/1.1\r\nHost: x\r\nAuthorization: {PATHORS_TOKEN}\r\nContent-Length: 10000000\r\n\r\n"
        ),
    );
    let started = Instant::now();
    assert!(status_of(&mut s).starts_with("HTTP/1.1 413"));
    assert!(started.elapsed() < Duration::from_secs(1));
    // Oversized heads are refused too: actix-http caps them at 128 KiB and 96 headers.
    let huge = "a".repeat(200 * 1024);
    let mut s = raw_request(
        &address,
        &format!("POST /ingest/pathors HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n"),
    );
    let status = status_of(&mut s);
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut s = raw_request(
        &address,
        &format!("POST /ingest/pathors HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
    );
    let status = status_of(&mut s);
    assert!(
        status.starts_with("HTTP/1.1 431") || status.starts_with("HTTP/1.1 400"),
        "{status}"
    );
}
