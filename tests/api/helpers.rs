//! Test harness: the real server on a random port with its own store, a scriptable local
//! receiver, and vendor requests signed the way the vendors sign them.

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;
use sessiongate::app::Application;
use sessiongate::config::Config;
use sessiongate::store::{DeliveryFilter, DeliveryInfo, DeliveryStatus, Store};
use svix::webhooks::Webhook;
use tokio::sync::{Notify, oneshot};

pub const PATHORS_TOKEN: &str = "Bearer test-pathors-token";
pub const AGNTIX_SECRET: &str = "whsec_dGVzdC1hZ250aXgtY3VycmVudC1zZWNyZXQ=";
pub const AGNTIX_OLD_SECRET: &str = "whsec_dGVzdC1hZ250aXgtb2xkLXNlY3JldC1rZXk=";
pub const TARGET_SECRET: &str = "whsec_dGVzdC10YXJnZXQtc2lnbmluZy1zZWNyZXQ=";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// How long a test waits for something asynchronous before failing.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The secrets the test configuration names with `env:`, for a child process's environment.
pub const SECRET_ENV: [&str; 5] = [
    "PATHORS_TOKEN",
    "AGNTIX_SECRET",
    "AGNTIX_OLD_SECRET",
    "TARGET_SECRET",
    "ADMIN_TOKEN",
];

pub fn secret_env(name: &str) -> Option<String> {
    match name {
        "PATHORS_TOKEN" => Some(PATHORS_TOKEN.into()),
        "AGNTIX_SECRET" => Some(AGNTIX_SECRET.into()),
        "AGNTIX_OLD_SECRET" => Some(AGNTIX_OLD_SECRET.into()),
        "TARGET_SECRET" => Some(TARGET_SECRET.into()),
        "ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
        _ => None,
    }
}

pub use sessiongate::testing::{fixture, postgres_schema_url};

/// The documented Pathors call.ended, for a session of the caller's choosing.
pub fn call_ended(session: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("pathors", "call-ended.json")).unwrap();
    v["sessionId"] = session.into();
    serde_json::to_vec(&v).unwrap()
}

/// Writes the configuration of a gateway process: a Pathors source (token from
/// `TEST_PATHORS_TOKEN`), one target `crm`, the given `[storage]` and `[delivery]` keys.
pub fn process_config(
    dir: &std::path::Path,
    storage: &str,
    delivery: &str,
    target_url: &str,
) -> PathBuf {
    gateway_config(
        dir,
        storage,
        &format!("[delivery]\n{delivery}\n[[targets]]\nname = \"crm\"\nurl = \"{target_url}\""),
    )
}

/// Writes `dir/gate.toml` for a gateway process: port 0, the given `[storage]` keys, a
/// Pathors source (token from `TEST_PATHORS_TOKEN`), then `extra` TOML (`[delivery]`,
/// `[[targets]]`, [`AGNTIX_SOURCE`], …).
pub fn gateway_config(dir: &std::path::Path, storage: &str, extra: &str) -> PathBuf {
    let path = dir.join("gate.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
workers = 2
shutdown_timeout_ms = 1000
[storage]
{storage}
[[sources]]
name = "pathors"
vendor = "pathors"
auth = {{ kind = "header", header = "Authorization", value = "env:TEST_PATHORS_TOKEN" }}
{extra}
"#
        ),
    )
    .unwrap();
    path
}

/// An Agntix source for [`gateway_config`], its secret from `TEST_AGNTIX_SECRET`.
pub const AGNTIX_SOURCE: &str = "[[sources]]\nname = \"agntix\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"env:TEST_AGNTIX_SECRET\"] }";

/// `[storage]` keys for a SQLite store in `dir`.
pub fn sqlite_in(dir: &std::path::Path) -> String {
    format!("url = \"sqlite://{}\"", dir.join("gate.db").display())
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Svix headers for `body`, signed with `secret` by the `svix` crate, as Agntix sends them.
pub fn svix_headers(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    // Signed by the `svix` crate, as Agntix's sender signs.
    let signature = Webhook::new(secret)
        .unwrap()
        .sign(msg_id, timestamp, body)
        .unwrap();
    vec![
        ("svix-id", msg_id.to_owned()),
        ("svix-timestamp", timestamp.to_string()),
        ("svix-signature", signature),
    ]
}

/// What the gateway under test is started with.
pub struct Options {
    /// `[[targets]]` tables, TOML.
    pub targets: String,
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub admin_api: bool,
    /// A `postgres://` URL; the default is a SQLite file in the app's directory.
    pub storage_url: Option<String>,
    /// Extra `[server]` keys, TOML.
    pub server_extra: String,
    /// Extra keys of the Agntix source, TOML (e.g. `transcripts = {…}`).
    pub agntix_extra: String,
    /// Extra top-level tables, TOML (e.g. `[recordings]`).
    pub tables: String,
}

impl Options {
    pub fn with_targets(targets: impl Into<String>) -> Options {
        Options {
            targets: targets.into(),
            max_attempts: 5,
            backoff_initial_ms: 20,
            timeout_ms: 2000,
            shutdown_timeout_ms: 5000,
            max_body_bytes: 64 * 1024,
            admin_api: true,
            storage_url: None,
            server_extra: String::new(),
            agntix_extra: String::new(),
            tables: String::new(),
        }
    }

    /// The configuration file these options make, with its store at `db`.
    pub fn toml(&self, db: &std::path::Path) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
workers = 1
max_body_bytes = {max_body}
shutdown_timeout_ms = {shutdown}
{admin}
{server_extra}

[storage]
url = "{db}"

[delivery]
timeout_ms = {timeout}
max_attempts = {attempts}
backoff_initial_ms = {backoff}
backoff_max_ms = {backoff_max}
jitter = 0.0

{tables}

[[sources]]
name = "pathors"
vendor = "pathors"
auth = {{ kind = "header", header = "Authorization", value = "env:PATHORS_TOKEN" }}

[[sources]]
name = "agntix"
vendor = "agntix"
auth = {{ kind = "svix", secrets = ["env:AGNTIX_OLD_SECRET", "env:AGNTIX_SECRET"] }}
{agntix_extra}

{targets}
"#,
            max_body = self.max_body_bytes,
            server_extra = self.server_extra,
            agntix_extra = self.agntix_extra,
            tables = self.tables,
            admin = if self.admin_api {
                "admin_token = \"env:ADMIN_TOKEN\""
            } else {
                ""
            },
            shutdown = self.shutdown_timeout_ms,
            db = self
                .storage_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", db.display())),
            timeout = self.timeout_ms,
            attempts = self.max_attempts,
            backoff = self.backoff_initial_ms,
            backoff_max = self.backoff_initial_ms * 4,
            targets = self.targets,
        )
    }
}

pub struct TestApp {
    pub address: String,
    /// Where the admin API and `/metrics` answer: `address` unless `admin_listen` is set.
    pub admin_address: String,
    pub store: Arc<dyn Store>,
    pub client: reqwest::Client,
    /// Changes after each delivery attempt's result is committed.
    recorded: tokio::sync::watch::Receiver<u64>,
    dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app(targets: impl Into<String>) -> TestApp {
    spawn_app_with(Options::with_targets(targets), None).await
}

/// Starts the gateway; reuses `dir` (and the store in it) when given, as after a restart.
pub async fn spawn_app_with(options: Options, dir: Option<tempfile::TempDir>) -> TestApp {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let config = Config::from_toml(&options.toml(&dir.path().join("gate.db")), &secret_env)
        .expect("test configuration is valid");
    let app = Application::build(config)
        .await
        .expect("the gateway starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = app
        .admin_port()
        .map_or(address.clone(), |port| format!("http://127.0.0.1:{port}"));
    let store = app.store();
    let recorded = app.results_recorded();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        admin_address,
        store,
        client: reqwest::Client::new(),
        recorded,
        dir: Some(dir),
        shutdown: Some(shutdown),
        task: Some(task),
    }
}

impl TestApp {
    pub async fn post(
        &self,
        path: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send().await.expect("the gateway answers")
    }

    pub async fn post_pathors(&self, body: &[u8]) -> reqwest::Response {
        self.post(
            "/ingest/pathors",
            body,
            &[("authorization", PATHORS_TOKEN.into())],
        )
        .await
    }

    /// Posts `body` signed with the current Agntix secret and a fresh message id.
    pub async fn post_agntix(&self, body: &[u8]) -> reqwest::Response {
        let msg_id = format!("msg_{}", uuid_like());
        self.post(
            "/ingest/agntix",
            body,
            &svix_headers(AGNTIX_SECRET, &msg_id, unix_now(), body),
        )
        .await
    }

    /// An admin API call with the right token.
    pub async fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.client
            .request(method, format!("{}{path}", self.admin_address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("the gateway answers")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the gateway answers")
    }

    /// `/metrics` as a Prometheus scraper gets it by default: text format 0.0.4.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.admin_address))
            .send()
            .await
            .expect("the gateway answers");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        response.text().await.unwrap()
    }

    pub async fn deliveries(&self, status: Option<DeliveryStatus>) -> Vec<DeliveryInfo> {
        self.store
            .deliveries(DeliveryFilter {
                status,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// Waits until `n` deliveries have `status`.
    /// Reads the store again only after another attempt result was committed.
    pub async fn wait_for_deliveries(&self, status: DeliveryStatus, n: usize) -> Vec<DeliveryInfo> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut recorded = self.recorded.clone();
        loop {
            recorded.mark_unchanged();
            let found = self.deliveries(Some(status)).await;
            if found.len() >= n {
                return found;
            }
            match tokio::time::timeout_at(deadline, recorded.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    panic!("the gateway stopped while waiting for {n} {status:?} deliveries")
                }
                Err(_) => panic!(
                    "expected {n} {status:?} deliveries, have {:?}",
                    self.deliveries(None).await
                ),
            }
        }
    }

    /// Shuts the gateway down gracefully and hands back its directory for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.shutdown.take().unwrap().send(());
        self.task
            .take()
            .unwrap()
            .await
            .unwrap()
            .expect("clean shutdown");
        self.dir.take().unwrap()
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{:x}{:x}", unix_now(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The status the receiver answered with.
    pub status: u16,
    /// The connection it came on (the sender's address and port).
    pub peer: Option<std::net::SocketAddr>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("deliveries are JSON")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
        }
    }
}

struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    arrived: Notify,
}

/// A local downstream receiver that records requests and answers as scripted.
pub struct TestReceiver {
    base: String,
    state: Arc<ReceiverState>,
}

impl TestReceiver {
    pub async fn start() -> TestReceiver {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap()).await
    }

    /// Starts on a listener the test chose (say, a port a target already points at).
    pub async fn start_on(listener: TcpListener) -> TestReceiver {
        let state = Arc::new(ReceiverState {
            received: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::status(200)),
            arrived: Notify::new(),
        });
        let base = format!("http://{}", listener.local_addr().unwrap());
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        TestReceiver { base, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Answers every request not scripted otherwise.
    pub fn answer(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = reply;
    }

    /// Answers the next requests with these statuses, in order, then the default.
    pub fn script(&self, statuses: &[u16]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(statuses.iter().map(|&s| Reply::status(s)));
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The distinct event ids this receiver acknowledged with 200.
    pub fn delivered_ids(&self) -> std::collections::HashSet<String> {
        self.received()
            .iter()
            .filter(|g| g.status == 200)
            .map(|g| g.json()["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until the requests received satisfy `done`, looking again at each arrival;
    /// false if `patience` ran out first.
    pub async fn wait_until(&self, patience: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return done(self);
            }
        }
    }

    /// Waits until at least `n` requests arrived and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "expected {n} requests at the receiver, got {}",
                    self.received().len()
                );
            }
        }
    }
}

async fn receive(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<ReceiverState>,
) -> HttpResponse {
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| *state.default.lock().unwrap());
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    state.received.lock().unwrap().push(Received {
        path: request.path().to_owned(),
        headers,
        body: body.to_vec(),
        status: reply.status,
        peer: request.peer_addr(),
    });
    state.arrived.notify_waiters();
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(reply.status).unwrap()).finish()
}

/// The gateway's binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");

/// A `sessiongate serve` process with JSON logs collected from its stderr.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub address: String,
    pub lines: std::sync::mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl GatewayProcess {
    /// Starts `serve` on `config` and waits until it says where it listens.
    pub fn start(config: &std::path::Path, env: &[(&str, &str)]) -> GatewayProcess {
        Self::try_start(config, env).expect("the gateway logs that it listens")
    }

    /// [`GatewayProcess::start`], or `None` when the process ended before it listened.
    pub fn try_start(config: &std::path::Path, env: &[(&str, &str)]) -> Option<GatewayProcess> {
        use std::io::BufRead;
        let mut command = std::process::Command::new(BIN);
        command
            .args(["serve", "--log-format", "json", "--config"])
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut log = Vec::new();
        let address = loop {
            let line = match lines.recv_timeout(PATIENCE) {
                Ok(line) => line,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    child.wait().unwrap();
                    return None;
                }
                Err(timeout) => panic!("the gateway did not log that it listens: {timeout}"),
            };
            log.push(line.clone());
            let entry: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
            if entry["message"] == "Listening" {
                break entry["address"].as_str().unwrap().to_owned();
            }
        };
        Some(GatewayProcess {
            child,
            address,
            lines,
            log,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Everything logged so far.
    pub fn drain_log(&mut self) -> &[String] {
        self.log.extend(self.lines.try_iter());
        &self.log
    }

    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points a PostgreSQL URL at another `host:port`.
pub fn via(url: &str, address: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{address}/{path}")
}

/// A TCP proxy to PostgreSQL that a test can cut (every connection dropped, new ones
/// refused) and restore: the database going away and coming back, as the gateway sees it.
pub struct DbProxy {
    pub address: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl DbProxy {
    pub async fn start(upstream: &str) -> DbProxy {
        let config: tokio_postgres::Config = upstream.parse().unwrap();
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[allow(unreachable_patterns)]
            _ => "127.0.0.1".to_owned(),
        };
        let upstream = format!(
            "{host}:{}",
            config.get_ports().first().copied().unwrap_or(5432)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (up2, connections2) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections2.lock().unwrap().push(task);
            }
        });
        DbProxy {
            address,
            up,
            connections,
        }
    }

    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Serves `handler` (every path) with `data` on a random loopback port, on one worker: a
/// stand-in for a vendor API or a file host. Returns its address; the server stops with
/// the handle (or the test).
pub fn serve<T, F, Args>(
    data: web::Data<T>,
    handler: F,
) -> (std::net::SocketAddr, actix_web::dev::ServerHandle)
where
    T: Send + Sync + 'static + ?Sized,
    F: actix_web::Handler<Args> + Clone + Send + 'static,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .default_service(web::to(handler.clone()))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (address, handle)
}

/// Resident and peak resident memory of a process, in MiB.
pub fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap()
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}
