//! The `sessiongate` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sessiongate::app::Application;
use sessiongate::config::{self, Config};
use sessiongate::telemetry::{self, LogFormat};

/// mimalloc for Rust and, through `override`, for SQLite's C allocations too: measured on
/// `loadgen --traffic agntix`, 20% less CPU per request than glibc's malloc. Without huge
/// pages (`no_thp`), which raised the idle RSS from 19 to 34 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "Webhook gateway for AI voice/chat agent platforms"
)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: ingest, delivery workers and health endpoints.
    Serve {
        /// Configuration file [default: $SESSIONGATE_CONFIG, else config/sessiongate.toml]
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A one-command tour: a temporary gateway, a built-in receiver, the vendors' example
    /// events sent signed like the real senders, and what the receiver got.
    Demo,
    /// Validate the configuration and print the sources and targets it defines.
    CheckConfig {
        /// Configuration file [default: $SESSIONGATE_CONFIG, else config/sessiongate.toml]
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Call a gateway's admin API: the one --url and --token name, else the one the
    /// configuration describes (only its admin address and token are read). Exit codes:
    /// 1 the API refused, 2 no admin API to call, 3 unreachable.
    Admin {
        /// Configuration file [default: $SESSIONGATE_CONFIG, else config/sessiongate.toml];
        /// read only for what --url and --token do not give.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The admin API's base URL, e.g. http://127.0.0.1:9090.
        #[arg(long, global = true, env = "SESSIONGATE_ADMIN_URL")]
        url: Option<String>,
        /// The admin token (prefer the environment variable: a flag shows in `ps`).
        #[arg(
            long,
            global = true,
            env = "SESSIONGATE_ADMIN_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
        /// Print the API's JSON answer instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        call: AdminCall,
    },
}

#[derive(Subcommand)]
enum AdminCall {
    /// List deliveries, newest first.
    Deliveries {
        /// pending, failed (pending after a failed attempt), dead or delivered.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// Page size, 1 to 500.
        #[arg(long)]
        limit: Option<usize>,
        /// The cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Retry one dead delivery, or with --dead every dead delivery (of --target).
    Retry {
        /// The delivery id (dlv_…).
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        id: Option<String>,
        /// Every dead delivery.
        #[arg(long)]
        dead: bool,
        /// With --dead: only this target's.
        #[arg(long, requires = "dead")]
        target: Option<String>,
    },
    /// Send a stored event again (same event id) to its targets, or to --target.
    Replay {
        /// The event id (evt_…).
        event_id: String,
        #[arg(long)]
        target: Option<String>,
    },
    /// Recover the calls of SOURCE that ended between --since and --until from its
    /// vendor's list API (an outage you know of).
    Recover {
        /// A source with `recover`.
        source: String,
        /// RFC 3339, e.g. 2026-12-07T02:10:00Z.
        #[arg(long)]
        since: String,
        /// RFC 3339.
        #[arg(long)]
        until: String,
    },
    /// Queue TARGET's deliveries of the stored events received between --since and
    /// --until that it takes and has not been delivered (a target added today gets history).
    Backfill {
        target: String,
        /// RFC 3339.
        #[arg(long)]
        since: String,
        /// RFC 3339.
        #[arg(long)]
        until: String,
        /// Only count.
        #[arg(long)]
        dry_run: bool,
    },
}

impl AdminCall {
    fn call(self) -> sessiongate::operator::Call {
        use sessiongate::operator::Call;
        match self {
            AdminCall::Deliveries {
                status,
                target,
                limit,
                cursor,
            } => Call::Deliveries {
                status,
                target,
                limit,
                cursor,
            },
            AdminCall::Retry {
                id: Some(id),
                dead: false,
                ..
            } => Call::Retry { id },
            AdminCall::Retry { target, .. } => Call::RetryDead { target },
            AdminCall::Replay { event_id, target } => Call::Replay { event_id, target },
            AdminCall::Recover {
                source,
                since,
                until,
            } => Call::Recover {
                source,
                since,
                until,
            },
            AdminCall::Backfill {
                target,
                since,
                until,
                dry_run,
            } => Call::Backfill {
                target,
                since,
                until,
                dry_run,
            },
        }
    }
}

fn admin(
    config: Option<PathBuf>,
    (url, token): (Option<String>, Option<String>),
    json: bool,
    call: AdminCall,
) -> ExitCode {
    let endpoint = match sessiongate::operator::endpoint(url, token, &config_path(config)) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sessiongate::operator::run(&endpoint, &call.call(), json)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("SESSIONGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config_path(config)),
        Command::Admin {
            config,
            url,
            token,
            json,
            call,
        } => {
            telemetry::init(cli.log_format, "warn");
            admin(config, (url, token), json, call)
        }
        Command::Demo => {
            // The tour goes to stdout; only warnings and errors go to stderr unless asked.
            telemetry::init(cli.log_format, "warn");
            match runtime()
                .and_then(|rt| rt.block_on(sessiongate::demo::run(&mut std::io::stdout())))
            {
                Ok(()) => ExitCode::SUCCESS,
                // `sessiongate demo | head` closes stdout early; that is the reader's choice.
                Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config } => {
            telemetry::init(cli.log_format, "info");
            let path = config_path(config);
            let config = match Config::load(&path) {
                Ok(config) => config,
                Err(e) => {
                    tracing::error!(config = %path.display(), error = %e, "Invalid configuration");
                    return ExitCode::FAILURE;
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "Failed to start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "sessiongate stopped with an error"
                    );
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown_signal()).await
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM; only Ctrl-C stops the gateway");
                interrupted(interrupt.await);
            }
        }
    }
    #[cfg(not(unix))]
    interrupted(interrupt.await);
}

/// Without a Ctrl-C listener the gateway cannot wait for one: it stops, saying why.
fn interrupted(result: std::io::Result<()>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "Cannot listen for Ctrl-C; shutting down");
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    println!("configuration {}: OK", path.display());
    println!("listen: {}", config.server.listen);
    let admin_at =
        sessiongate::operator::admin_base(config.server.listen, config.server.admin_listen);
    match (&config.server.admin_token, config.server.admin_listen) {
        (None, _) => println!("admin API and console: off (no server.admin_token)"),
        (Some(_), Some(listen)) => {
            println!("admin API, console and /metrics: {listen} (own listener)");
            println!("console: {admin_at}/console");
        }
        (Some(_), None) => {
            println!("admin API, console and /metrics: on the ingest listener");
            println!("console: {admin_at}/console");
        }
    }
    println!("storage: {}", config.storage);
    println!("sources ({}):", config.sources.len());
    for s in &config.sources {
        let mut extras = String::new();
        if let Some(limit) = s.max_body_bytes {
            extras.push_str(&format!("; bodies up to {limit} bytes"));
        }
        if let Some(wait) = s.finalize_wait {
            extras.push_str(&format!(
                "; session.finalized {} s after the end at the latest",
                wait.as_secs()
            ));
        }
        if s.transcripts.is_some() {
            extras.push_str("; transcripts fetched");
        }
        println!(
            "  {:<16} vendor {:<10} POST /ingest/{}  auth: {}{extras}",
            s.name,
            s.vendor.as_str(),
            s.name,
            s.auth.describe()
        );
    }
    println!("targets ({}):", config.targets.len());
    for t in &config.targets {
        let events = t.events.as_ref().map_or("all".to_owned(), |e| {
            e.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")
        });
        let sources = t
            .sources
            .as_ref()
            .map_or("all".to_owned(), |s| s.join(", "));
        println!(
            "  {:<16} {} {}  events: {events}; sources: {sources}; {}; raw {}; format {}{}",
            t.name,
            t.output.kind(),
            sessiongate::settings::redact_url(t.url.as_str()),
            if t.signer.is_some() {
                "signed"
            } else {
                "unsigned"
            },
            if t.shape.include_raw {
                "included"
            } else {
                "omitted"
            },
            t.shape.format.as_str(),
            if t.shape.redact.is_empty() {
                String::new()
            } else {
                format!("; {} redacted paths", t.shape.redact.len())
            },
        );
    }
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    ExitCode::SUCCESS
}
