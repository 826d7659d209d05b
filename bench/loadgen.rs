//! Load generator and benchmark: how fast sessiongate ingests and delivers, measured against
//! a bare actix-web handler that reads the body and answers 202 on the same machine, in the
//! same run, with the same load.
//!
//!     cargo run --release --bin loadgen                  # full run (see BENCHMARKS.md)
//!     cargo run --release --bin loadgen -- --smoke       # a few seconds, for CI
//!     cargo run --release --bin loadgen -- --nats nats://127.0.0.1:4222
//!                              # a second target on NATS JetStream, counted beside HTTP
//!     cargo run --release --bin loadgen -- --traffic agntix  # Agntix created/ended only
//!     cargo run --release --bin loadgen -- --traffic retell  # or vapi, elevenlabs: one
//!                              # platform's events, signed its way (its verify + map cost)
//!     cargo run --release --bin loadgen -- --traffic pathors         # Pathors call.ended, and
//!     cargo run --release --bin loadgen -- --traffic pathors-mapped  # the same to Pathors
//!                              # declared as a mapped vendor: the mapping's cost
//!     cargo run --release --bin loadgen -- --session-ids counter
//!                              # ascending session ids instead of the vendors' random UUIDs
//!     cargo run --release --bin loadgen -- --scrapers 16 --pending 1000000
//!                              # ingest latency while /metrics is scraped over a big backlog
//!
//! Roles (the binary re-executes itself, so each server is its own process whose memory and
//! CPU can be read from /proc): `--role bare PORT_FILE`, `--role forwarder RECEIVER_PORT
//! PORT_FILE` and `--role gateway CONFIG PORT_FILE`.
//! The load generator and the delivery receiver run in the parent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context, bail};
use sessiongate::app::Application;
use sessiongate::auth::standard::Secret;
use sessiongate::config::Config;
use sessiongate::telemetry::{self, LogFormat};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The `sessiongate` binary's allocator (see `src/main.rs`), so the gateway role measures
/// what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AGNTIX_SECRET: &str = "whsec_YmVuY2htYXJrLWFnbnRpeC1zaWduaW5nLXNlY3JldA==";
const PATHORS_TOKEN: &str = "Bearer benchmark-pathors-token";
const RETELL_KEY: &str = "key_benchmark_retell";
const VAPI_SECRET: &str = "benchmark-vapi-hmac-secret";
const ELEVENLABS_SECRET: &str = "wsec_benchmark_elevenlabs";

struct Settings {
    connections: usize,
    duration: Duration,
    store: String,
    smoke: bool,
    /// `Some((scrapers, pending))`: the scrape-stall run instead of the benchmark.
    scrape: Option<(usize, u64)>,
    /// A NATS server: every event also goes to a JetStream target, counted from its stream.
    nats: Option<String>,
    traffic: Traffic,
}

/// What the vendors send.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mix {
    /// Agntix session.created, Agntix session.ended, Pathors call.ended, in turn.
    Mixed,
    /// `--traffic agntix`: Agntix session.created and session.ended (with analysis) in
    /// turn, each for a session of its own; 1.5 deliveries per request.
    Agntix,
    /// `--traffic retell`: call_ended (with its transcript; its session.finalized waits
    /// for call_analyzed) and call_analyzed in turn, each for a call of its own.
    Retell,
    /// `--traffic vapi`: the ended status-update and the end-of-call-report in turn.
    Vapi,
    /// `--traffic elevenlabs`: post_call_transcription and call_initiation_failure in turn.
    ElevenLabs,
    /// `--traffic pathors`: Pathors call.ended, each for a session of its own.
    Pathors,
    /// `--traffic pathors-mapped`: the same requests to a source that declares Pathors as a
    /// mapped vendor (`[sources.mapping]`), to set the mapping's cost beside the adapter's.
    PathorsMapped,
}

/// How each request's session is named.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SessionIds {
    /// A random UUID, as the vendors name sessions (Agntix's ids are UUIDs): the store's
    /// indexes on session ids take them at random places.
    Uuid,
    /// `--session-ids counter`: `bench-SALT-N`, ascending, as runs before 2026-12-02 sent.
    Counter,
}

/// The requests a run sends: which vendors' events, and how their sessions are named.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Traffic {
    mix: Mix,
    ids: SessionIds,
}

impl Traffic {
    fn kind(self, n: u64) -> u64 {
        self.mix.kind(n)
    }
}

/// The requests the mixes send, by kind.
mod kind {
    pub const AGNTIX_CREATED: u64 = 0;
    pub const AGNTIX_ENDED: u64 = 1;
    pub const PATHORS_CALL_ENDED: u64 = 2;
    pub const RETELL_ENDED: u64 = 3;
    pub const RETELL_ANALYZED: u64 = 4;
    pub const VAPI_ENDED: u64 = 5;
    pub const VAPI_REPORT: u64 = 6;
    pub const ELEVENLABS_TRANSCRIPTION: u64 = 7;
    pub const ELEVENLABS_FAILURE: u64 = 8;
    pub const PATHORS_MAPPED: u64 = 9;
}

impl Mix {
    /// Which request kind request `n` is.
    fn kind(self, n: u64) -> u64 {
        use kind::*;
        let turn = |kinds: &[u64]| kinds[(n % kinds.len() as u64) as usize];
        match self {
            Mix::Mixed => turn(&[AGNTIX_CREATED, AGNTIX_ENDED, PATHORS_CALL_ENDED]),
            Mix::Agntix => turn(&[AGNTIX_CREATED, AGNTIX_ENDED]),
            Mix::Retell => turn(&[RETELL_ENDED, RETELL_ANALYZED]),
            Mix::Vapi => turn(&[VAPI_ENDED, VAPI_REPORT]),
            Mix::ElevenLabs => turn(&[ELEVENLABS_TRANSCRIPTION, ELEVENLABS_FAILURE]),
            Mix::Pathors => PATHORS_CALL_ENDED,
            Mix::PathorsMapped => PATHORS_MAPPED,
        }
    }

    /// The deliveries an accepted request of `kind` makes at once, beyond its first: each
    /// request is a session of its own, so a Retell call_ended's session.finalized waits
    /// for a call_analyzed that does not come within the run.
    fn extra_deliveries(kind: u64) -> u64 {
        use kind::*;
        match kind {
            AGNTIX_ENDED | RETELL_ENDED | VAPI_ENDED => 1,
            VAPI_REPORT | ELEVENLABS_TRANSCRIPTION | ELEVENLABS_FAILURE => 2,
            _ => 0,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--role") {
        return role(&args[2..]);
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let settings = Settings {
        connections: value("--connections").map_or(Ok(64), |v| v.parse())?,
        duration: Duration::from_secs(
            value("--seconds").map_or(Ok(if smoke { 2 } else { 10 }), |v| v.parse())?,
        ),
        store: value("--store").unwrap_or_else(|| "sqlite".into()),
        smoke,
        scrape: match value("--scrapers") {
            Some(n) => Some((
                n.parse()?,
                value("--pending").map_or(Ok(1_000_000), |v| v.parse())?,
            )),
            None => None,
        },
        nats: value("--nats"),
        traffic: Traffic {
            mix: match value("--traffic").as_deref() {
                None | Some("mixed") => Mix::Mixed,
                Some("agntix") => Mix::Agntix,
                Some("retell") => Mix::Retell,
                Some("vapi") => Mix::Vapi,
                Some("elevenlabs") => Mix::ElevenLabs,
                Some("pathors") => Mix::Pathors,
                Some("pathors-mapped") => Mix::PathorsMapped,
                Some(other) => bail!(
                    "--traffic must be mixed, agntix, retell, vapi, elevenlabs, pathors or pathors-mapped, not {other}"
                ),
            },
            ids: match value("--session-ids").as_deref() {
                None | Some("uuid") => SessionIds::Uuid,
                Some("counter") => SessionIds::Counter,
                Some(other) => bail!("--session-ids must be uuid or counter, not {other}"),
            },
        },
    };
    if let Some((scrapers, pending)) = settings.scrape {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(scrape_stall(settings, scrapers, pending));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(run(settings))
}

/// The child processes: a bare handler, or the gateway.
fn role(args: &[String]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("bare") => runtime.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            std::fs::write(&args[1], listener.local_addr()?.port().to_string())?;
            HttpServer::new(|| {
                App::new().default_service(web::to(|_body: web::Bytes| async {
                    HttpResponse::Accepted().finish()
                }))
            })
            .workers(2)
            .listen(listener)?
            .run()
            .await?;
            Ok(())
        }),
        // Receives, forwards the body to the receiver, answers once it answered: what a
        // gateway that stores nothing and verifies nothing does, on the same stacks.
        Some("forwarder") => runtime.block_on(async {
            let target = format!("http://127.0.0.1:{}/forwarded", args[1]);
            let client = reqwest::Client::new();
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            std::fs::write(&args[2], listener.local_addr()?.port().to_string())?;
            HttpServer::new(move || {
                let (client, target) = (client.clone(), target.clone());
                App::new().default_service(web::to(move |body: web::Bytes| {
                    let (client, target) = (client.clone(), target.clone());
                    async move {
                        match client.post(&target).body(body).send().await {
                            Ok(r) if r.status().is_success() => HttpResponse::Accepted().finish(),
                            _ => HttpResponse::BadGateway().finish(),
                        }
                    }
                }))
            })
            .workers(2)
            .listen(listener)?
            .run()
            .await?;
            Ok(())
        }),
        Some("gateway") => runtime.block_on(async {
            // As `sessiongate serve` sets it up.
            telemetry::init(LogFormat::Text, "info");
            let config = Config::load(Path::new(&args[1]))?;
            let app = Application::build(config).await?;
            std::fs::write(&args[2], app.port().to_string())?;
            app.run_until_stopped(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
        }),
        _ => bail!("unknown role"),
    }
}

/// A server process under test.
struct Child {
    process: std::process::Child,
    port: u16,
}

impl Child {
    fn spawn(args: &[&str], dir: &Path) -> anyhow::Result<Child> {
        let port_file = dir.join(format!("port-{}", args[0]));
        // Each child logs to a file of its own: the gateway at `serve`'s level, so that the
        // spans and fields production pays for are in the figures.
        let log = dir.join(format!("{}.log", args[0]));
        // A role run a second time must not read the port its first run left.
        std::fs::remove_file(&port_file).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })?;
        let process = std::process::Command::new(std::env::current_exe()?)
            .arg("--role")
            .args(args)
            .arg(&port_file)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(port)) = std::fs::read_to_string(&port_file).map(|p| p.trim().parse()) {
                return Ok(Child { process, port });
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} process did not start; its log:\n{}",
                    args[0],
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.process.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }

    /// Bytes of file pages the process has dirtied so far (`write_bytes` of /proc/PID/io):
    /// for the gateway, the store's WAL and the checkpoints' copies into the database file.
    fn written(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/io", self.process.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("write_bytes:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// User + system CPU time used so far.
    fn cpu(&self) -> Duration {
        process_cpu(&self.process.id().to_string())
    }
}

/// For each thread name of process `pid`: how many threads, the time they ran on a core and
/// the time they were ready to run but waited for one (`/proc/PID/task/*/schedstat`, in ns).
fn thread_times(pid: u32) -> std::collections::BTreeMap<String, (usize, u64, u64)> {
    let mut threads = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let read = |file: &str| std::fs::read_to_string(task.path().join(file));
        let (Ok(name), Ok(stat)) = (read("comm"), read("schedstat")) else {
            continue;
        };
        let mut fields = stat
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        let (ran, waited) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
        let entry = threads.entry(name.trim().to_owned()).or_insert((0, 0, 0));
        *entry = (entry.0 + 1, entry.1 + ran, entry.2 + waited);
    }
    threads
}

/// The share of `elapsed` each kind of thread spent on a core and waiting for one between
/// two [`thread_times`], busiest first: on shared cores a single thread that every request
/// passes through (the SQLite writer) bounds the rate before the cores are all busy.
fn thread_shares(
    before: &std::collections::BTreeMap<String, (usize, u64, u64)>,
    after: &std::collections::BTreeMap<String, (usize, u64, u64)>,
    elapsed: Duration,
) -> String {
    let wall = elapsed.as_nanos().max(1) as f64;
    let mut shares: Vec<(String, usize, f64, f64)> = after
        .iter()
        .map(|(name, &(count, ran, waited))| {
            let (_, ran_before, waited_before) = before.get(name).copied().unwrap_or_default();
            let ran = ran.saturating_sub(ran_before) as f64 / wall;
            let waited = waited.saturating_sub(waited_before) as f64 / wall;
            (name.clone(), count, ran, waited)
        })
        .filter(|(_, _, ran, _)| *ran >= 0.01)
        .collect();
    shares.sort_by(|a, b| b.2.total_cmp(&a.2));
    shares
        .iter()
        .map(|(name, count, ran, waited)| {
            format!(
                "{name} ×{count} {:.0}% / {:.0}%",
                ran * 100.0,
                waited * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// User + system CPU time process `pid` (or `self`) has used so far, all threads.
fn process_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.process.id().to_string()])
            .status();
        let _ = self.process.wait();
    }
}

/// Distinct vendor requests, signed like the vendors sign them, as raw HTTP/1.1 bytes.
struct Requests {
    agntix: Secret,
    created: String,
    ended: String,
    pathors: String,
    /// The voice platforms' documented examples, by request kind.
    voice: std::collections::HashMap<u64, String>,
    port: u16,
    traffic: Traffic,
}

impl Requests {
    fn new(port: u16, traffic: Traffic) -> anyhow::Result<Requests> {
        let fixture = |vendor: &str, name: &str| {
            String::from_utf8(sessiongate::testing::fixture(vendor, name))
        };
        Ok(Requests {
            agntix: Secret::parse(AGNTIX_SECRET).context("the Agntix secret")?,
            created: fixture("agntix", "session-created.json")?,
            ended: fixture("agntix", "session-ended.json")?,
            pathors: fixture("pathors", "call-ended.json")?,
            voice: [
                (kind::RETELL_ENDED, fixture("retell", "call-ended.json")?),
                (
                    kind::RETELL_ANALYZED,
                    fixture("retell", "call-analyzed.json")?,
                ),
                (
                    kind::VAPI_ENDED,
                    fixture("vapi", "status-update-ended.json")?,
                ),
                (
                    kind::VAPI_REPORT,
                    fixture("vapi", "end-of-call-report.json")?,
                ),
                (
                    kind::ELEVENLABS_TRANSCRIPTION,
                    fixture("elevenlabs", "post-call-transcription.json")?,
                ),
                (
                    kind::ELEVENLABS_FAILURE,
                    fixture("elevenlabs", "call-initiation-failure.json")?,
                ),
            ]
            .into_iter()
            .collect(),
            port,
            traffic,
        })
    }

    /// Request `n`: an Agntix session.created (~0.4 KB), an Agntix session.ended (~1.6 KB) or
    /// a Pathors call.ended, each for a session of its own, stamped with the send time.
    fn build(&self, n: u64, salt: u64) -> Vec<u8> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let stamp = chrono::DateTime::from_timestamp_millis(now.as_millis() as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let session = match self.traffic.ids {
            SessionIds::Uuid => uuid::Uuid::new_v4().to_string(),
            SessionIds::Counter => format!("bench-{salt:x}-{n}"),
        };
        let header_lines = |headers: &[(&str, String)]| {
            headers
                .iter()
                .map(|(name, value)| format!("{name}: {value}\r\n"))
                .collect::<String>()
        };
        let ms = now.as_millis() as i64;
        let (path, body, headers) = match self.traffic.kind(n) {
            k @ (kind::RETELL_ENDED | kind::RETELL_ANALYZED) => {
                let body =
                    self.voice[&k].replace("call_3f9d2a61c84b4e07b1d5e9a7c20f4b18", &session);
                let headers = sessiongate::testing::retell_headers(RETELL_KEY, ms, body.as_bytes());
                ("/ingest/retell", body, header_lines(&headers))
            }
            k @ (kind::VAPI_ENDED | kind::VAPI_REPORT) => {
                let body = self.voice[&k]
                    .replace("6e0b2f3c-1a4d-4b7e-9f21-8c5d3a7e0b94", &session)
                    .replace("1778599291902", &ms.to_string())
                    .replace("1778599299880", &ms.to_string());
                let headers =
                    sessiongate::testing::vapi_hmac_headers(VAPI_SECRET, ms, body.as_bytes());
                ("/ingest/vapi", body, header_lines(&headers))
            }
            k @ (kind::ELEVENLABS_TRANSCRIPTION | kind::ELEVENLABS_FAILURE) => {
                let body = self.voice[&k]
                    .replace("conv_01jx8m3q5v7w9y1z3b5d7f9h2k", &session)
                    .replace("conv_01jx8k7d2f4h6j8m0p2r4t6v8x", &session)
                    .replace("1778601676", &(ms / 1000).to_string())
                    .replace("1778600741", &(ms / 1000).to_string());
                let headers = sessiongate::testing::elevenlabs_headers(
                    ELEVENLABS_SECRET,
                    ms / 1000,
                    body.as_bytes(),
                );
                ("/ingest/elevenlabs", body, header_lines(&headers))
            }
            k @ (kind::AGNTIX_CREATED | kind::AGNTIX_ENDED) => {
                let template = if k == kind::AGNTIX_CREATED {
                    &self.created
                } else {
                    &self.ended
                };
                let body = template
                    .replace("4981804c-2658-4893-84ff-9c2fa90fb3c2", &session)
                    .replace("2026-04-08T05:00:01.130Z", &stamp)
                    .replace("2026-04-08T05:00:10.546Z", &stamp);
                let id = format!("msg_{session}");
                let ts = now.as_secs() as i64;
                let headers =
                    sessiongate::testing::svix_headers(&self.agntix, &id, ts, body.as_bytes())
                        .iter()
                        .map(|(name, value)| format!("{name}: {value}\r\n"))
                        .collect::<String>();
                ("/ingest/agntix", body, headers)
            }
            k => {
                let body = self
                    .pathors
                    .replace("2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04", &session)
                    .replace("2026-05-03T08:42:14.022Z", &stamp);
                let path = if k == kind::PATHORS_MAPPED {
                    "/ingest/pathors-mapped"
                } else {
                    "/ingest/pathors"
                };
                (path, body, format!("authorization: {PATHORS_TOKEN}\r\n"))
            }
        };
        format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{body}",
            self.port,
            body.len()
        )
        .into_bytes()
    }
}

/// One keep-alive connection: writes a request, reads the answer, returns its status.
struct Connection {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    line: String,
}

impl Connection {
    async fn open(port: u16) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        Ok(Connection {
            reader: BufReader::new(read),
            writer,
            line: String::new(),
        })
    }

    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<u16> {
        self.writer.write_all(request).await?;
        self.line.clear();
        self.reader.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let mut length = 0usize;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line).await? == 0 {
                bail!("connection closed");
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).await?;
        Ok(status)
    }
}

#[derive(Default)]
struct Latencies(Vec<u32>);

impl Latencies {
    fn percentile(&mut self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.sort_unstable();
        let index = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
        Duration::from_micros(self.0[index] as u64)
    }
}

struct LoadResult {
    requests: u64,
    errors: u64,
    /// Deliveries the accepted requests made beyond one each (an Agntix session.ended: two).
    extra_deliveries: u64,
    elapsed: Duration,
    latencies: Latencies,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// `rate = None`: closed loop, each connection sends as fast as answers come back.
/// `rate = Some(r)`: open loop at `r` requests/s in all; latency counts from the scheduled
/// send time, so a stalled server cannot hide its queueing (no coordinated omission).
/// Half a second of closed-loop load before a phase is measured: connections open, caches warm.
async fn warm_up(port: u16, connections: usize, traffic: Traffic) -> anyhow::Result<LoadResult> {
    load(port, connections, Duration::from_millis(500), None, traffic).await
}

async fn load(
    port: u16,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    traffic: Traffic,
) -> anyhow::Result<LoadResult> {
    let requests = Arc::new(Requests::new(port, traffic)?);
    let salt: u64 = rand::random();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(port).await?;
            let mut latencies = Vec::new();
            let (mut sent, mut errors, mut extra_deliveries) = (0u64, 0u64, 0u64);
            let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
            let offset =
                interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / connections as f64));
            let mut n = c as u64;
            while started.elapsed() < duration {
                let scheduled = match interval {
                    Some(i) => {
                        let at = started + offset + i * sent as u32;
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                let request = requests.build(n, salt);
                let extra = Mix::extra_deliveries(traffic.kind(n));
                match connection.exchange(&request).await {
                    Ok(status) if status / 100 == 2 => extra_deliveries += extra,
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        connection = Connection::open(port).await?;
                    }
                }
                n += connections as u64;
                sent += 1;
                latencies.push(scheduled.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            anyhow::Ok((sent, errors, extra_deliveries, latencies))
        }));
    }
    let mut result = LoadResult {
        requests: 0,
        errors: 0,
        extra_deliveries: 0,
        elapsed: Duration::ZERO,
        latencies: Latencies::default(),
    };
    for task in tasks {
        let (sent, errors, extra_deliveries, latencies) = task.await??;
        result.requests += sent;
        result.errors += errors;
        result.extra_deliveries += extra_deliveries;
        result.latencies.0.extend(latencies);
    }
    result.elapsed = started.elapsed();
    Ok(result)
}

/// Counts deliveries and measures vendor-send → downstream-receipt latency.
struct Receiver {
    delivered: AtomicU64,
    end_to_end: std::sync::Mutex<Vec<u32>>,
    recording: AtomicBool,
    /// Only events the vendor sent after this (unix ms) count for end-to-end latency.
    since_ms: AtomicU64,
}

async fn receive(body: web::Bytes, receiver: web::Data<Receiver>) -> HttpResponse {
    receiver.delivered.fetch_add(1, Ordering::Relaxed);
    if receiver.recording.load(Ordering::Relaxed)
        && let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(at) = event["occurredAt"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        && at.timestamp_millis() >= receiver.since_ms.load(Ordering::Relaxed) as i64
    {
        let lag = chrono::Utc::now()
            .signed_duration_since(at)
            .num_microseconds()
            .unwrap_or(0)
            .max(0);
        receiver.end_to_end.lock().unwrap().push(lag as u32);
    }
    HttpResponse::NoContent().finish()
}

fn gateway_config(
    dir: &Path,
    store: &str,
    receiver_port: u16,
    extra_targets: &str,
) -> anyhow::Result<PathBuf> {
    let storage = match store {
        "sqlite" => format!(
            "url = \"sqlite://{}\"\nsynchronous = \"full\"",
            dir.join("bench.db").display()
        ),
        // The pool as a deployment gets it: sized from the machine (`storage.pool_size`
        // unset), not the 32 of the first runs, which only queued on 2 cores.
        url if url.starts_with("postgres") => format!("url = \"{url}\""),
        other => bail!("--store must be sqlite or a postgres:// URL, not {other}"),
    };
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[storage]
{storage}
[delivery]
backoff_initial_ms = 100
max_in_flight = 64
[[sources]]
name = "agntix"
vendor = "agntix"
auth = {{ kind = "svix", secrets = ["{AGNTIX_SECRET}"] }}
[[sources]]
name = "pathors"
vendor = "pathors"
auth = {{ kind = "header", header = "Authorization", value = "{PATHORS_TOKEN}" }}
[[sources]]
name = "pathors-mapped"
vendor = "mapped"
auth = {{ kind = "header", header = "Authorization", value = "{PATHORS_TOKEN}" }}
[sources.mapping]
event = "/event"
session_id = "/sessionId"
occurred_at = "/timestamp"
dedup = ["/event"]
events = {{ "session.ended" = ["session.ended"], "call.ended" = ["call.ended"], "recording.ready" = ["recording.ready"], "session.finalized" = ["session.finalized"] }}
[sources.mapping.fields]
"session.projectId" = "/projectId"
"session.messageCount" = "/messagesCount"
"session.currentNodeId" = "/currentNodeId"
"session.extracted" = "/extractedVariables"
"session.call.vendorStatus" = "/callStatus"
"session.call.durationSeconds" = "/callDuration"
"session.recording.url" = "/recordingUrl"
[sources.mapping.values]
"session.call.outcome" = {{ from = "/callStatus", map = {{ "userHangup" = "completed", "agentHangup" = "completed", "Ended" = "completed", "transferred" = "transferred", "voicemail" = "voicemail", "busy" = "busy", "userNoAnswer" = "no_answer", "error" = "failed" }}, default = "unknown" }}
"session.call.endedBy" = {{ from = "/callStatus", map = {{ "userHangup" = "user", "agentHangup" = "agent", "transferred" = "agent" }} }}
[[sources]]
name = "retell"
vendor = "retell"
auth = {{ kind = "retell", api_key = "{RETELL_KEY}" }}
[[sources]]
name = "vapi"
vendor = "vapi"
auth = {{ kind = "hmac", secret = "{VAPI_SECRET}", header = "x-signature", timestamp_header = "x-timestamp", payload = "{{timestamp}}.{{body}}" }}
[[sources]]
name = "elevenlabs"
vendor = "elevenlabs"
auth = {{ kind = "elevenlabs", secret = "{ELEVENLABS_SECRET}" }}
[[targets]]
name = "receiver"
url = "http://127.0.0.1:{receiver_port}/events"
include_raw = false
{extra_targets}
"#
    );
    let path = dir.join("bench.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// A JetStream stream the `--nats` target publishes to, created and deleted by the run.
struct NatsSink {
    url: String,
    name: String,
    jetstream: async_nats::jetstream::Context,
}

impl NatsSink {
    async fn create(url: &str) -> anyhow::Result<NatsSink> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("--nats: cannot connect to {url}"))?;
        let jetstream = async_nats::jetstream::new(client);
        let name = format!("SGBENCH{:08x}", rand::random::<u32>());
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.>", name.to_lowercase())],
                ..Default::default()
            })
            .await
            .context("--nats: cannot create the benchmark's stream")?;
        Ok(NatsSink {
            url: url.to_owned(),
            name,
            jetstream,
        })
    }

    fn target(&self) -> String {
        format!(
            "[[targets]]\nname = \"nats\"\nurl = \"{}\"\nsubject = \"{}.{{type}}\"\ninclude_raw = false\n",
            self.url,
            self.name.to_lowercase()
        )
    }

    /// Messages the stream has stored (each one acknowledged to the gateway).
    async fn stored(&self) -> anyhow::Result<u64> {
        let stream = self.jetstream.get_stream(&self.name).await?;
        Ok(stream.get_info().await?.state.messages)
    }

    async fn delete(&self) -> anyhow::Result<()> {
        self.jetstream.delete_stream(&self.name).await?;
        Ok(())
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let receiver = web::Data::new(Receiver {
        delivered: AtomicU64::new(0),
        end_to_end: std::sync::Mutex::new(Vec::new()),
        recording: AtomicBool::new(false),
        since_ms: AtomicU64::new(u64::MAX),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let receiver_port = listener.local_addr()?.port();
    let data = receiver.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(receive))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    tokio::spawn(server);

    let (connections, duration, traffic) =
        (settings.connections, settings.duration, settings.traffic);
    println!(
        "loadgen: {connections} connections, {duration:?} per phase, store {}, traffic {:?}, \
         session ids {:?}",
        settings.store, traffic.mix, traffic.ids
    );

    // The ceiling: a bare actix-web handler, same client, same requests.
    let bare = Child::spawn(&["bare"], dir.path())?;
    warm_up(bare.port, connections, traffic).await?;
    let client_cpu_before = process_cpu("self");
    let ceiling = load(bare.port, connections, duration, None, traffic).await?;
    // This process is the client (and, later, the receiver): what it costs per request is
    // part of every server's budget on shared cores.
    let client_cpu = process_cpu("self") - client_cpu_before;
    drop(bare);

    // A bare forwarder: receive, forward to the same receiver, answer; no verification,
    // no store. How close to forwarding with no work the gateway gets.
    let forwarder = Child::spawn(&["forwarder", &receiver_port.to_string()], dir.path())?;
    warm_up(forwarder.port, connections, traffic).await?;
    let forwarder_cpu_before = forwarder.cpu();
    let forwarded = load(forwarder.port, connections, duration, None, traffic).await?;
    let forwarder_cpu = forwarder.cpu() - forwarder_cpu_before;
    drop(forwarder);
    // The gateway's deliveries are counted from here.
    let delivered_at_start = receiver.delivered.load(Ordering::Relaxed);

    // With --nats: a stream of its own, and a target publishing every event to it.
    let nats = match &settings.nats {
        Some(url) => Some(NatsSink::create(url).await?),
        None => None,
    };
    let extra = nats.as_ref().map_or(String::new(), NatsSink::target);
    let config = gateway_config(dir.path(), &settings.store, receiver_port, &extra)?;
    let gateway = Child::spawn(
        &["gateway", config.to_str().context("UTF-8 path")?],
        dir.path(),
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = gateway.status_kib("VmRSS:");
    let warmed = warm_up(gateway.port, connections, traffic).await?;

    // Closed loop: how much durable ingest the gateway sustains.
    let cpu_before = gateway.cpu();
    let own_cpu_before = process_cpu("self");
    let threads_before = thread_times(gateway.process.id());
    let written_before = gateway.written();
    let delivered_before = receiver.delivered.load(Ordering::Relaxed);
    let nats_before = match &nats {
        Some(sink) => sink.stored().await?,
        None => 0,
    };
    let mut closed = load(gateway.port, connections, duration, None, traffic).await?;
    let cpu = gateway.cpu() - cpu_before;
    let own_cpu = process_cpu("self") - own_cpu_before;
    let threads = thread_shares(
        &threads_before,
        &thread_times(gateway.process.id()),
        closed.elapsed,
    );
    let written = gateway.written() - written_before;
    let delivered_during = receiver.delivered.load(Ordering::Relaxed) - delivered_before;
    let nats_during = match &nats {
        Some(sink) => sink.stored().await? - nats_before,
        None => 0,
    };
    // Every accepted event is one delivery, or two for Agntix session.ended (+ finalized).
    let expected_deliveries = [&warmed, &closed]
        .iter()
        .map(|r| r.requests - r.errors + r.extra_deliveries)
        .sum::<u64>();
    let drain_started = Instant::now();
    while receiver.delivered.load(Ordering::Relaxed) - delivered_at_start < expected_deliveries
        && drain_started.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = drain_started.elapsed();
    if let Some(sink) = &nats {
        while sink.stored().await? < expected_deliveries
            && drain_started.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let nats_drain = drain_started.elapsed();

    // Open loop at half the closed-loop rate: latency under a steady, sustainable load,
    // and end-to-end latency of deliveries.
    let half = (closed.rate() / 2.0).max(10.0);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    receiver.since_ms.store(now_ms, Ordering::Relaxed);
    receiver.recording.store(true, Ordering::Relaxed);
    let mut open = load(gateway.port, connections, duration, Some(half), traffic).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    receiver.recording.store(false, Ordering::Relaxed);
    let peak_rss = gateway.status_kib("VmHWM:");
    drop(gateway);
    let mut end_to_end = Latencies(std::mem::take(&mut *receiver.end_to_end.lock().unwrap()));
    // The same open loop against the bare handler and the bare forwarder: how much of the
    // gateway's tail this machine (client, receiver and server on the same cores) gives any
    // server at that rate.
    let mut open_baseline = Vec::new();
    let receiver_arg = receiver_port.to_string();
    for args in [&["bare"][..], &["forwarder", &receiver_arg]] {
        let server = Child::spawn(args, dir.path())?;
        warm_up(server.port, connections, traffic).await?;
        let mut result = load(server.port, connections, duration, Some(half), traffic).await?;
        open_baseline.push((
            result.latencies.percentile(0.5),
            result.latencies.percentile(0.99),
        ));
    }

    let ratio = |x: f64| format!("{:.1}%", 100.0 * x / ceiling.rate());
    println!();
    println!("| measure | value | vs bare 202 handler |");
    println!("|---|---|---|");
    println!(
        "| bare actix-web 202 handler | {:.0} req/s | 100% |",
        ceiling.rate()
    );
    println!(
        "| bare forwarder (receive, forward, answer; no verify, no store) | {:.0} req/s, {:.1} µs CPU/request | {} |",
        forwarded.rate(),
        forwarder_cpu.as_secs_f64() * 1e6 / forwarded.requests.max(1) as f64,
        ratio(forwarded.rate())
    );
    println!(
        "| sessiongate durable ingest, closed loop ({connections} conns) | {:.0} req/s | {} |",
        closed.rate(),
        ratio(closed.rate())
    );
    println!(
        "| ingest latency, closed loop p50 / p99 / p99.9 | {} / {} / {} | bare p99 {} |",
        ms(closed.latencies.percentile(0.5)),
        ms(closed.latencies.percentile(0.99)),
        ms(closed.latencies.percentile(0.999)),
        ms(ceiling.latencies.clone_percentile(0.99))
    );
    println!(
        "| ingest latency, open loop at {:.0} req/s p50 / p99 / p99.9 | {} / {} / {} | same rate p50 / p99: bare {} / {}, forwarder {} / {} |",
        open.rate(),
        ms(open.latencies.percentile(0.5)),
        ms(open.latencies.percentile(0.99)),
        ms(open.latencies.percentile(0.999)),
        ms(open_baseline[0].0),
        ms(open_baseline[0].1),
        ms(open_baseline[1].0),
        ms(open_baseline[1].1)
    );
    println!(
        "| delivered during the closed-loop run | {:.0} deliveries/s | {} |",
        delivered_during as f64 / closed.elapsed.as_secs_f64(),
        ratio(delivered_during as f64 / closed.elapsed.as_secs_f64())
    );
    println!(
        "| backlog drained after the closed-loop run in | {} | |",
        ms(drain)
    );
    if let Some(sink) = &nats {
        println!(
            "| delivered to NATS JetStream (acknowledged) during the closed-loop run | {:.0} deliveries/s | {} |",
            nats_during as f64 / closed.elapsed.as_secs_f64(),
            ratio(nats_during as f64 / closed.elapsed.as_secs_f64())
        );
        println!(
            "| NATS backlog drained after the closed-loop run in | {} | |",
            ms(nats_drain)
        );
        sink.delete().await?;
    }
    println!(
        "| end to end (vendor send → receiver), open loop p50 / p99 | {} / {} | |",
        ms(end_to_end.percentile(0.5)),
        ms(end_to_end.percentile(0.99))
    );
    println!(
        "| gateway RSS idle / peak | {:.1} MiB / {:.1} MiB | |",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    println!(
        "| gateway CPU per ingested request (closed loop) | {:.1} µs | |",
        cpu.as_secs_f64() * 1e6 / closed.requests.max(1) as f64
    );
    println!(
        "| gateway threads in the closed loop: on a core / ready but waiting for one (share of the run's time) | {threads} | |"
    );
    // The budget the cores give: at a fifth of the ceiling, everything one request costs
    // (the gateway, the client sending it, the receiver taking its deliveries) must fit in
    // `cores / (0.2 × ceiling)` of CPU time.
    let per_request = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let client_and_receiver = per_request(own_cpu, closed.requests);
    let budget = cores as f64 * 1e6 / (0.2 * ceiling.rate().max(1.0));
    println!(
        "| client CPU per request (bare handler run) / client + receiver (closed loop) | {:.1} µs / {:.1} µs | |",
        per_request(client_cpu, ceiling.requests),
        client_and_receiver
    );
    println!(
        "| CPU per request that {cores} cores give at 0.20 of the ceiling, all processes / left for the gateway (and a database on the same cores) | {:.1} µs / {:.1} µs | |",
        budget,
        budget - client_and_receiver
    );
    println!(
        "| store bytes written per ingested request (closed loop; WAL + checkpoints, /proc/PID/io) | {:.1} KiB | |",
        written as f64 / 1024.0 / closed.requests.max(1) as f64
    );
    println!(
        "| errors (non-2xx or broken connections): bare / forwarder / closed / open | {} / {} / {} / {} | |",
        ceiling.errors, forwarded.errors, closed.errors, open.errors
    );
    if settings.smoke
        && (closed.requests == 0 || closed.errors > 0 || ceiling.errors > 0 || forwarded.errors > 0)
    {
        bail!("the smoke run saw errors or no requests");
    }
    Ok(())
}

impl Latencies {
    fn clone_percentile(&self, p: f64) -> Duration {
        Latencies(self.0.clone()).percentile(p)
    }
}

/// Ingest latency while `scrapers` clients scrape `/metrics` back to back, with `pending`
/// deliveries waiting in the SQLite store (of a target no longer configured, so no worker
/// touches them): what an operator's dashboards cost the vendors.
async fn scrape_stall(settings: Settings, scrapers: usize, pending: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let receiver_port = listener.local_addr()?.port();
    tokio::spawn(
        HttpServer::new(|| {
            App::new().default_service(web::to(|| async { HttpResponse::NoContent().finish() }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run(),
    );
    let config = gateway_config(dir.path(), "sqlite", receiver_port, "")?;
    // Start once for the schema, then fill the backlog while the gateway is down.
    drop(Child::spawn(
        &["gateway", config.to_str().context("UTF-8 path")?],
        dir.path(),
    )?);
    std::fs::remove_file(dir.path().join("port-gateway"))?;
    let db = rusqlite::Connection::open(dir.path().join("bench.db"))?;
    // The backlog's event is not stored: only the deliveries' count matters here.
    db.execute_batch("PRAGMA foreign_keys = OFF")?;
    db.execute(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?1)
         INSERT INTO deliveries (id, event_id, target, status, next_attempt_at, created_at, updated_at)
         SELECT 'dlv_backlog_' || x, 'evt_backlog', 'removed', 'pending', 0, 0, 0 FROM n",
        [pending as i64],
    )?;
    drop(db);
    let gateway = Child::spawn(
        &["gateway", config.to_str().context("UTF-8 path")?],
        dir.path(),
    )?;
    println!(
        "loadgen --scrapers {scrapers} --pending {pending}: {} connections, {:?} per phase",
        settings.connections, settings.duration
    );

    let mut quiet = load(
        gateway.port,
        settings.connections,
        settings.duration,
        None,
        settings.traffic,
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(std::sync::Mutex::new(Latencies::default()));
    let mut tasks = Vec::new();
    for _ in 0..scrapers {
        let (stop, scrapes) = (stop.clone(), scrapes.clone());
        let request = format!(
            "GET /metrics HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n\r\n",
            gateway.port
        );
        let port = gateway.port;
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(port).await?;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                connection.exchange(request.as_bytes()).await?;
                let took = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                scrapes.lock().unwrap().0.push(took);
            }
            anyhow::Ok(())
        }));
    }
    let mut scraped = load(
        gateway.port,
        settings.connections,
        settings.duration,
        None,
        settings.traffic,
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let mut scrapes = std::mem::take(&mut *scrapes.lock().unwrap());
    println!();
    println!("| ingest, closed loop | req/s | p50 | p95 | p99 |");
    println!("|---|---|---|---|---|");
    for (name, r) in [("no scrapers", &mut quiet), ("while scraped", &mut scraped)] {
        println!(
            "| {name} | {:.0} | {} | {} | {} |",
            r.rate(),
            ms(r.latencies.percentile(0.5)),
            ms(r.latencies.percentile(0.95)),
            ms(r.latencies.percentile(0.99))
        );
    }
    println!(
        "| /metrics scrapes: {} in all, p50 / p95 | {} / {} | | | |",
        scrapes.0.len(),
        ms(scrapes.percentile(0.5)),
        ms(scrapes.percentile(0.95))
    );
    if scraped.errors + quiet.errors > 0 {
        bail!("{} ingest errors", scraped.errors + quiet.errors);
    }
    Ok(())
}
