//! Regression tests for what an attack run and a first-day operator found (issue 11): inputs
//! that used to be stored and then fail, or fail in the database, now get a 4xx naming the
//! problem, the same on both stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::web;
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

/// A SQLite gateway, and a PostgreSQL one when the build runs the PostgreSQL tests
/// (`cfg(sg_postgres)`, see `build.rs`).
async fn both_stores() -> Vec<TestApp> {
    let mut apps = Vec::new();
    let mut options = Options::with_targets("");
    options.max_body_bytes = 2 * 1024 * 1024;
    apps.push(spawn_app_with(options, None).await);
    if cfg!(sg_postgres)
        && let Some(url) = postgres_schema_url().await
    {
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

/// Starts `sessiongate serve` with text logs (the default an operator reads) and returns
/// the process, its address and the channel of its stderr lines.
fn serve_with_text_logs(
    dir: &std::path::Path,
) -> (KillOnDrop, String, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let config = process_config(dir, &sqlite_in(dir), "", "http://127.0.0.1:9/x");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("TEST_PATHORS_TOKEN", PATHORS_TOKEN)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .split(b'\n')
            .map_while(Result::ok)
        {
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        }
    });
    let address = loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .expect("the gateway logs that it listens");
        if let Some(rest) = line
            .split("address=")
            .nth(1)
            .filter(|_| line.contains("Listening"))
        {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    (KillOnDrop(child), address, lines)
}

/// A child process that a failing test does not leave running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_source_path_cannot_forge_log_lines_or_write_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let (child, address, lines) = serve_with_text_logs(dir.path());
    let client = reqwest::Client::new();
    for path in [
        "pathors%0aINJECTED%20line",
        "x%1b[31mred",
        "pathors%0d%0aINJECTED",
    ] {
        let response = client
            .post(format!("http://{address}/ingest/{path}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains('\n') && !message.contains('\u{1b}'),
            "{message}"
        );
    }
    // A request that is logged after them marks the end of what they logged.
    let marker = client
        .post(format!("http://{address}/ingest/pathors"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(marker.status(), 401);
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|l: &String| l.contains("Rejected") && l.contains("source=\"pathors\""))
    {
        log.push(
            lines
                .recv_timeout(PATIENCE)
                .expect("the rejections are logged"),
        );
    }
    drop(child);
    let rejected = log
        .iter()
        .filter(|l| l.contains("Rejected a request"))
        .count();
    assert_eq!(rejected, 4, "{log:#?}");
    for line in &log {
        assert!(
            !line.trim_start().starts_with("INJECTED"),
            "forged line: {line:?}"
        );
        assert!(
            !line.contains('\u{1b}') && !line.contains('\r'),
            "raw escape: {line:?}"
        );
    }
}

/// Opens a connection, sends `head` and then all but the last byte of a 1 MiB body, and
/// keeps the connection open until the returned task is aborted.
async fn hold_a_body(address: &str, head: String) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncWriteExt;
    const BODY: usize = 1024 * 1024;
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    tokio::spawn(async move {
        let head = format!("{head}content-length: {BODY}\r\n\r\n");
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < BODY - 1 {
            let n = chunk.len().min(BODY - 1 - sent);
            if stream.write_all(&chunk[..n]).await.is_err() {
                return; // answered and closed before the body: what the gateway should do
            }
            sent += n;
        }
        std::future::pending::<()>().await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_cannot_exhaust_memory_nor_starve_a_vendor() {
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(dir.path(), &sqlite_in(dir.path()), AGNTIX_SOURCE);
    let gateway = GatewayProcess::start(
        &config,
        &[
            ("TEST_PATHORS_TOKEN", PATHORS_TOKEN),
            ("TEST_AGNTIX_SECRET", AGNTIX_SECRET),
        ],
    );
    let pid = gateway.child.id();
    let (idle, _) = memory_mib(pid);

    // 300 senders without credentials, each holding a 1 MiB body but its last byte: a wrong
    // Pathors token, Agntix requests without signature headers (both refused from the head)
    // and Agntix requests whose signature headers look right but sign nothing (these can only
    // be refused after the body, so they are what the body budget bounds).
    let now = unix_now();
    let mut held = Vec::new();
    for i in 0..300 {
        let head = match i % 3 {
            0 => "POST /ingest/pathors HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong\r\n"
                .to_owned(),
            1 => "POST /ingest/agntix HTTP/1.1\r\nhost: x\r\n".to_owned(),
            _ => format!(
                "POST /ingest/agntix HTTP/1.1\r\nhost: x\r\nsvix-id: msg_{i}\r\nsvix-timestamp: {now}\r\n\
                 svix-signature: v1,{}\r\n",
                "A".repeat(43) + "="
            ),
        };
        held.push(hold_a_body(&gateway.address, head).await);
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    // Meanwhile a vendor with credentials gets in at once.
    let started = std::time::Instant::now();
    let response = reqwest::Client::new()
        .post(gateway.url("/ingest/pathors"))
        .header("authorization", PATHORS_TOKEN)
        .body(fixture("pathors", "session-ended.json"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .expect("an authenticated request is answered within 5 s");
    assert_eq!(response.status(), 202);
    let waited = started.elapsed();

    let (during, peak) = memory_mib(pid);
    for task in held {
        task.abort();
    }
    println!(
        "RSS: idle {idle} MiB, under 300 held bodies {during} MiB, peak {peak} MiB; authenticated request answered in {waited:?}"
    );
    assert!(peak < 256, "peak RSS {peak} MiB (idle {idle} MiB)");
}

/// A client that holds a keep-alive connection from `from` and asks for `/healthz` every
/// `every`, connecting again whenever the server closes it; it counts its answers.
fn health_flood(
    address: std::net::SocketAddr,
    from: std::net::IpAddr,
    every: std::time::Duration,
    answers: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        loop {
            let Ok(mut stream) = connect_from(from, address).await else {
                tokio::time::sleep(every).await;
                continue;
            };
            let mut buffer = [0u8; 4096];
            loop {
                let asked = stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
                    .await;
                if asked.is_err() || !matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {
                    break;
                }
                answers.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(every).await;
            }
        }
    })
}

async fn connect_from(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

fn loopback(last: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_idle_connections_make_room_for_a_vendor() {
    let mut options = Options::with_targets("");
    options.server_extra = "max_connections = 40".into();
    let app = spawn_app_with(options, None).await;
    let address: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    // 40 clients hold every connection, each asking every second: well inside keep-alive.
    let answers = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..40)
        .map(|_| {
            health_flood(
                address,
                loopback(1),
                Duration::from_secs(1),
                answers.clone(),
            )
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while answers.load(Ordering::SeqCst) < 80 {
        assert!(Instant::now() < deadline, "the flood never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A vendor, from its own address, gets in within 2 s (three times over).
    let vendor = reqwest::Client::builder()
        .local_address(loopback(2))
        .build()
        .unwrap();
    for i in 0..3 {
        let started = Instant::now();
        let response = vendor
            .post(format!("{}/ingest/pathors", app.address))
            .header("authorization", PATHORS_TOKEN)
            .body(call_ended(&format!("s-flood-{i}")))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .expect("an authenticated vendor is answered within 2 s under the flood");
        assert_eq!(response.status(), 202);
        println!(
            "vendor answered in {:?} under a 40-connection flood",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"sessiongate_connections_closed_total{reason="idle_at_cap"}"#),
        "{metrics}"
    );
    for task in flood {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_holds_at_most_its_share_of_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut options = Options::with_targets("");
    options.server_extra = "max_connections = 100\nmax_connections_per_peer = 3".into();
    let app = spawn_app_with(options, None).await;
    let address: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    let ask = |mut stream: tokio::net::TcpStream| async move {
        let mut buffer = [0u8; 4096];
        let asked = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
            .await;
        let n = match asked {
            Ok(()) => stream.read(&mut buffer).await.unwrap_or(0),
            Err(_) => 0,
        };
        (n > 0, stream)
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let (answered, stream) = ask(connect_from(loopback(1), address).await.unwrap()).await;
        assert!(answered, "within the peer's share");
        held.push(stream);
    }
    let (answered, _) = ask(connect_from(loopback(1), address).await.unwrap()).await;
    assert!(!answered, "a fourth connection from one address is closed");
    // Another address is not affected.
    let (answered, _) = ask(connect_from(loopback(2), address).await.unwrap()).await;
    assert!(answered);
    // Once one of the three closes, the peer may connect again.
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (answered, _) = ask(connect_from(loopback(1), address).await.unwrap()).await;
        if answered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection was never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // From another address: this one's share may still be taken by connections the
    // server has not yet seen close.
    let metrics = reqwest::Client::builder()
        .local_address(loopback(3))
        .build()
        .unwrap()
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"sessiongate_connections_closed_total{reason="peer_cap"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_negotiate_their_format_and_count_dead_deliveries() {
    let receiver = TestReceiver::start().await;
    receiver.answer(Reply::status(500));
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"",
        receiver.url("/")
    ));
    options.max_attempts = 1;
    let app = spawn_app_with(options, None).await;
    assert_eq!(app.post_pathors(&call_ended("s-dead")).await.status(), 202);
    app.wait_for_deliveries(sessiongate::store::DeliveryStatus::Dead, 1)
        .await;

    // Store-derived gauges are reused for up to a second; wait for a fresh read.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let text = loop {
        let text = app.metrics().await;
        if text.contains(r#"sessiongate_deliveries_dead{target="crm"} 1"#) {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        text.contains("# TYPE sessiongate_dead_total counter"),
        "{text}"
    );
    assert!(text.contains(&format!(
        r#"sessiongate_build_info{{version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    )));
    assert!(!text.contains("# EOF"));

    let open = app
        .client
        .get(format!("{}/metrics", app.address))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    let content_type = open.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let open = open.text().await.unwrap();
    assert!(open.ends_with("# EOF\n") && open.contains("# TYPE sessiongate_dead counter"));
}

#[tokio::test]
async fn deliveries_of_a_removed_target_are_named_at_start_up_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let write = |targets: &str| {
        gateway_config(
            dir.path(),
            &sqlite_in(dir.path()),
            &format!("[delivery]\nbackoff_initial_ms = 600000\nbackoff_max_ms = 600000\n{targets}"),
        )
    };
    let env = [("TEST_PATHORS_TOKEN", PATHORS_TOKEN)];
    let client = reqwest::Client::new();
    {
        // Port 9 refuses: the delivery fails once and waits ten minutes for its retry.
        let config = write("[[targets]]\nname = \"crm\"\nurl = \"http://127.0.0.1:9/x\"");
        let gateway = GatewayProcess::start(&config, &env);
        for session in ["s-1", "s-2"] {
            let response = client
                .post(gateway.url("/ingest/pathors"))
                .header("authorization", PATHORS_TOKEN)
                .body(call_ended(session))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
    }
    let mut gateway = GatewayProcess::start(&write(""), &env);
    let text = client
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"sessiongate_orphaned_deliveries{target="crm"} 2"#),
        "{text}"
    );
    let warned = gateway.drain_log().iter().any(|line| {
        let entry: Value = serde_json::from_str(line).unwrap();
        entry["level"] == "WARN" && entry["target_name"] == "crm" && entry["pending"] == 2
    });
    assert!(warned, "{:#?}", gateway.drain_log());
}

#[tokio::test]
async fn gone_is_dead_at_once_and_a_target_may_set_its_own_attempt_budget() {
    let gone = TestReceiver::start().await;
    gone.answer(Reply::status(410));
    let failing = TestReceiver::start().await;
    failing.answer(Reply::status(500));
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"gone\"\nurl = \"{}\"\n[[targets]]\nname = \"short\"\nurl = \"{}\"\nmax_attempts = 2",
        gone.url("/"),
        failing.url("/")
    ));
    options.max_attempts = 5;
    let app = spawn_app_with(options, None).await;
    assert_eq!(app.post_pathors(&call_ended("s-gone")).await.status(), 202);
    let dead = app
        .wait_for_deliveries(sessiongate::store::DeliveryStatus::Dead, 2)
        .await;
    let of = |target: &str| dead.iter().find(|d| d.target == target).unwrap().clone();
    assert_eq!(of("gone").attempts, 1, "no attempt after 410");
    assert!(
        of("gone").last_error.unwrap().starts_with("gone"),
        "{:?}",
        of("gone")
    );
    assert_eq!(of("short").attempts, 2, "the target's own max_attempts");
    assert_eq!((gone.received().len(), failing.received().len()), (1, 2));
}

#[tokio::test]
async fn with_admin_listen_the_admin_api_and_metrics_leave_the_ingest_listener() {
    let mut options = Options::with_targets("");
    options.server_extra = "admin_listen = \"127.0.0.1:0\"".into();
    let app = spawn_app_with(options, None).await;
    assert_ne!(app.admin_address, app.address);
    for path in ["/metrics", "/admin/events", "/admin/sessions/pathors/x"] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} on the ingest listener");
    }
    assert!(app.metrics().await.contains("sessiongate_build_info"));
    let events = app.admin(reqwest::Method::GET, "/admin/events").await;
    assert_eq!(events.status(), 200);
    // Ingest and health stay where they were.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(app.post_pathors(&call_ended("s-admin")).await.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn receipts_show_what_vendors_sent_even_when_it_made_no_event() {
    let app = spawn_app("").await;
    let ended = fixture("pathors", "session-ended.json");
    assert_eq!(app.post_pathors(&ended).await.status(), 202);
    assert_eq!(app.post_pathors(&ended).await.status(), 200);
    let ignored = br#"{"event": "transcript.ready", "sessionId": "s-r"}"#;
    assert_eq!(app.post_pathors(ignored).await.status(), 202);

    let page: Value = app
        .admin(reqwest::Method::GET, "/admin/receipts?source=pathors")
        .await
        .json()
        .await
        .unwrap();
    let statuses: Vec<_> = page["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ignored", "duplicate", "accepted"], "{page}");
    let first = &page["receipts"][0];
    assert_eq!(first["vendorEventType"], "transcript.ready");
    assert_eq!(first["raw"]["sessionId"], "s-r", "the body as sent");

    let one: Value = app
        .admin(
            reqwest::Method::GET,
            "/admin/receipts?status=duplicate&limit=1",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["receipts"].as_array().unwrap().len(), 1);
    assert_eq!(
        one["receipts"][0]["raw"],
        serde_json::from_slice::<Value>(&ended).unwrap()
    );
    assert!(
        one.get("nextCursor").is_none_or(Value::is_null),
        "one duplicate, a page of one: nothing follows, so no cursor: {one}"
    );
    let all: Value = app
        .admin(reqwest::Method::GET, "/admin/receipts?limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        all["nextCursor"].is_string(),
        "three receipts, a page of two: {all}"
    );
    let bad = app
        .admin(reqwest::Method::GET, "/admin/receipts?status=lost")
        .await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn retention_prunes_delivered_events_on_its_schedule_and_counts_them() {
    let receiver = TestReceiver::start().await;
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\n[retention]\nmax_age = \"1s\"\ninterval = \"1s\"",
        receiver.url("/")
    ));
    options.admin_api = true;
    let app = spawn_app_with(options, None).await;
    assert_eq!(app.post_pathors(&call_ended("s-old")).await.status(), 202);
    app.wait_for_deliveries(sessiongate::store::DeliveryStatus::Delivered, 1)
        .await;
    // Within a few intervals the delivered event is older than max_age, and a run that
    // pruned it has finished (it counts what it deleted once it is done).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = app.metrics().await;
        // The delivery may go a run after its event: it was created a moment later.
        if text.contains(r#"sessiongate_retention_pruned_total{kind="events"} 1"#)
            && text.contains(r#"sessiongate_retention_pruned_total{kind="deliveries"} 1"#)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never pruned: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let page: Value = app
        .admin(reqwest::Method::GET, "/admin/events")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"], serde_json::json!([]));
    assert!(app.deliveries(None).await.is_empty());
    // The session record stays: a late duplicate is still recognised as the same session.
    let record = app
        .admin(reqwest::Method::GET, "/admin/sessions/pathors/s-old")
        .await;
    assert_eq!(record.status(), 200);
}

#[test]
fn check_config_shows_no_url_credentials_nor_query_strings() {
    let dir = tempfile::tempdir().unwrap();
    let config = process_config(
        dir.path(),
        &format!(
            "url = \"sqlite://{}\"",
            dir.path().join("gate.db").display()
        ),
        "",
        "https://hook-user:hunter2-password@crm.example.com/hooks?api_key=k3y-secret",
    );
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .env("TEST_PATHORS_TOKEN", PATHORS_TOKEN)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("https://hook-user:***@crm.example.com/hooks?***"),
        "{printed}"
    );
    for secret in ["hunter2-password", "k3y-secret", PATHORS_TOKEN] {
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
    }
}

/// An Agntix messages API whose answer is `size` bytes of one JSON array, streamed.
async fn huge_messages(size: web::Data<usize>) -> actix_web::HttpResponse {
    let size = **size;
    let piece = web::Bytes::from(
        r#"{"id":"m","role":"USER","content":"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOPQRSTUVWXYZ"},"#
            .repeat(1000),
    );
    let pieces = size / piece.len();
    let stream = futures_util::stream::iter(
        std::iter::once(web::Bytes::from_static(b"["))
            .chain(std::iter::repeat_n(piece, pieces))
            .chain(std::iter::once(web::Bytes::from_static(b"{}]")))
            .map(Ok::<_, std::io::Error>),
    );
    actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .streaming(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_transcript_answer_is_too_large_and_memory_stays_bounded() {
    let (api, _server) = serve(web::Data::new(200usize * 1024 * 1024), huge_messages);
    let receiver = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(
        dir.path(),
        &sqlite_in(dir.path()),
        &format!(
            "{AGNTIX_SOURCE}\ntranscripts = {{ api_url = \"http://{api}\", api_key = \"k\", wait_ms = 60000 }}\n\
             [[targets]]\nname = \"crm\"\nurl = \"{}\"",
            receiver.url("/")
        ),
    );
    let gateway = GatewayProcess::start(
        &config,
        &[
            ("TEST_PATHORS_TOKEN", PATHORS_TOKEN),
            ("TEST_AGNTIX_SECRET", AGNTIX_SECRET),
        ],
    );
    let pid = gateway.child.id();
    let (idle, _) = memory_mib(pid);
    let body = fixture("agntix", "session-ended.json");
    let mut request = reqwest::Client::new()
        .post(gateway.url("/ingest/agntix"))
        .body(body.clone());
    for (name, value) in svix_headers(AGNTIX_SECRET, "msg_huge", unix_now(), &body) {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 202);

    let got = receiver.wait_for(2).await;
    let finalized = got
        .iter()
        .map(|r| r.json())
        .find(|e| e["type"] == "session.finalized")
        .expect("session.finalized goes out");
    assert_eq!(
        finalized["session"]["transcript"],
        json!({"status": "unavailable", "reason": "too_large", "messages": []})
    );
    let (_, peak) = memory_mib(pid);
    println!("RSS: idle {idle} MiB, peak {peak} MiB after a 200 MiB transcript answer");
    assert!(peak < idle + 64, "peak RSS {peak} MiB (idle {idle} MiB)");
}
