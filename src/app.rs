//! The application: store, delivery workers and HTTP server, started and stopped together.
//!
//! [`Application::build`] binds the listener (port 0 works, for tests), opens the store and
//! starts the workers; [`Application::run_until_stopped`] serves until the shutdown future
//! completes, then stops in order: stop accepting and finish in-flight requests, let
//! in-flight deliveries finish (bounded), flush and close the store.

use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service as _};
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;
use serde_json::json;

use crate::admin::{self, AdminState};
use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::{WorkerHealth, Workers};
use crate::enrich::Enricher;
use crate::enrich::recordings::{ArchiveStore, Archiver};
use crate::error::{ApiError, error_response};
use crate::ingest::connections::{self, Connections};
use crate::ingest::{self, IngestState};
use crate::metrics::Metrics;
use crate::store::{self, Store};
use crate::telemetry::chain;

/// How long `/readyz` waits for the store before calling it unreachable.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// `/readyz` answers 503 while ingest's latest commit failed less than this long ago (and
/// none succeeded since); then it answers ready again and the next request tells.
const COMMIT_FAILURE_WINDOW: Duration = Duration::from_secs(30);

pub struct Application {
    /// The job worker (transcripts) and how to stop it.
    enricher: (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ),
    /// Deletes old finished work on `[retention]`'s schedule; stopped at shutdown.
    pruner: Option<tokio::task::JoinHandle<()>>,
    /// Polls the vendors' list APIs of the sources with `recover`, and how to stop it.
    recoverer: (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ),
    port: u16,
    server: Server,
    /// The admin API and `/metrics` on a listener of their own (`server.admin_listen`).
    admin_server: Option<(u16, Server)>,
    workers: Workers,
    store: Arc<dyn Store>,
    shutdown_timeout: Duration,
}

/// What the operational endpoints read.
struct Ops {
    store: Arc<dyn Store>,
    commits: Arc<ingest::Commits>,
    clock: Clock,
    workers: WorkerHealth,
    metrics: Arc<Metrics>,
    targets: Vec<String>,
    /// Each recovering source's state (`recover`).
    recovery: Arc<crate::recovery::Statuses>,
    /// When the store-derived gauges were last read; the lock makes concurrent scrapes
    /// share one read.
    gauges_read: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// How long store-derived gauges are reused: however many scrapers there are, the store
/// counts deliveries at most this often.
const GAUGES_FRESH_FOR: Duration = Duration::from_secs(1);

impl Ops {
    async fn refresh_gauges(&self) {
        let mut read = self.gauges_read.lock().await;
        if read.is_some_and(|at| at.elapsed() < GAUGES_FRESH_FOR) {
            return;
        }
        match self.store.delivery_counts().await {
            Ok(counts) => self.metrics.set_delivery_counts(&self.targets, &counts),
            Err(e) => {
                tracing::warn!(error = %chain(&e), "Cannot read delivery counts for /metrics")
            }
        }
        *read = Some(std::time::Instant::now());
    }
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        for warning in &config.warnings {
            tracing::warn!(warning = %warning, "Configuration warning");
        }
        // One clock for the store, ingest and delivery.
        let clock = Clock::system();
        let store = store::open(&config.storage, clock.clone()).await?;
        warn_of_orphans(store.as_ref(), &config.targets).await;
        let metrics = Arc::new(Metrics::new());
        let targets: Vec<_> = config.targets.into_iter().map(Arc::new).collect();
        let (dispatcher, workers) = Workers::start(
            targets.clone(),
            &config.delivery,
            store.clone(),
            metrics.clone(),
            clock.clone(),
        )?;

        let listener = TcpListener::bind(config.server.listen)
            .with_context(|| format!("Failed to listen on {}", config.server.listen))?;
        let address = listener.local_addr()?;
        let sources: HashMap<_, _> = config
            .sources
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let transcripts = sources
            .values()
            .filter_map(|s| Some((s.name.clone(), s.transcripts.clone()?)))
            .collect();
        let archive = config
            .recordings
            .as_ref()
            .map(|r| ArchiveStore::open(&r.store))
            .transpose()
            .context("Cannot open the recordings store")?;
        let archiver = match (&archive, &config.recordings) {
            (Some(archive), Some(recordings)) => Some(
                Archiver::new(archive.clone(), recordings)?.with_credentials(
                    sources
                        .values()
                        .filter_map(|s| Some((s.name.clone(), s.recordings_auth.clone()?)))
                        .collect(),
                ),
            ),
            _ => None,
        };
        let enricher = Enricher::new(
            store.clone(),
            transcripts,
            archiver,
            dispatcher.clone(),
            clock.clone(),
            metrics.clone(),
            config.recordings.as_ref().map(|r| r.lease),
        )?;
        let jobs = enricher.waker();
        let (stop_jobs, jobs_stopping) = tokio::sync::watch::channel(false);
        let enricher = tokio::spawn(enricher.run(jobs_stopping));
        tracing::info!(
            %address,
            sources = sources.len(),
            targets = targets.len(),
            "Listening"
        );
        let commits = Arc::new(ingest::Commits::default());
        let source_vendors: Vec<_> = sources
            .values()
            .map(|s| (s.name.clone(), s.vendor))
            .collect();
        let ingest_state = web::Data::new(IngestState {
            sources,
            targets: targets.clone(),
            store: store.clone(),
            dispatcher: dispatcher.clone(),
            metrics: metrics.clone(),
            max_body_bytes: config.server.max_body_bytes,
            body_budget: ingest::BodyBudget::new(config.server.max_body_bytes_in_flight),
            body_timeout: config.server.body_timeout,
            clock: clock.clone(),
            jobs,
            archive_recordings: config.recordings.as_ref().map(|r| r.max_wait),
            commits: commits.clone(),
        });
        let (stop_recovery, recovery_stopping) = tokio::sync::watch::channel(false);
        let recoverer = Arc::new(crate::recovery::Recoverer::new(
            ingest_state.clone(),
            recovery_stopping,
        )?);
        let recovery = recoverer.statuses.clone();
        let recovering = tokio::spawn(recoverer.clone().run());
        let admin = config.server.admin_token.map(|token| {
            web::Data::new(AdminState {
                token,
                store: store.clone(),
                dispatcher: dispatcher.clone(),
                targets: targets.clone(),
                sources: source_vendors,
                archive: archive.clone(),
                recoverer: recoverer.clone(),
                guard: Default::default(),
            })
        });
        if admin.is_none() {
            tracing::info!("No server.admin_token configured: the admin API is off");
        }
        let ops = web::Data::new(Ops {
            store: store.clone(),
            commits: commits.clone(),
            clock: clock.clone(),
            workers: workers.health(),
            metrics: metrics.clone(),
            targets: targets.iter().map(|t| t.name.clone()).collect(),
            recovery,
            gauges_read: tokio::sync::Mutex::new(None),
        });
        // With `admin_listen`, the admin API and /metrics answer only there (404 on `listen`).
        let separate_admin = config.server.admin_listen.is_some();
        let query_errors = || {
            web::QueryConfig::default().error_handler(|e, _| {
                ApiError::InvalidRequest(format!("bad query string: {e}")).into()
            })
        };
        // One console for every worker: its logins live here.
        let console = web::Data::new(crate::console::Console::default());
        let operator_routes = {
            let (ops, admin) = (ops.clone(), admin.clone());
            move |config: &mut web::ServiceConfig| {
                config
                    .app_data(ops.clone())
                    .route("/metrics", web::get().to(metrics_text));
                if let Some(admin) = &admin {
                    config
                        .app_data(admin.clone())
                        .app_data(console.clone())
                        .configure(admin::routes)
                        .configure(crate::console::routes);
                }
            }
        };
        let ingest_routes = operator_routes.clone();
        let connections = Connections::new(
            config.server.max_connections,
            config.server.max_connections_per_peer,
            metrics.clone(),
        );
        let on_connect = {
            let connections = connections.clone();
            move |io: &dyn std::any::Any, extensions: &mut actix_web::dev::Extensions| {
                connections.on_connect(io, extensions)
            }
        };
        let server = HttpServer::new(move || {
            let mut app = App::new()
                .app_data(ingest_state.clone())
                .app_data(ops.clone())
                .app_data(query_errors());
            if !separate_admin {
                app = app.configure(ingest_routes.clone());
            }
            app.service(
                web::resource("/ingest/{source}")
                    .route(web::post().to(ingest::ingest))
                    .default_service(web::to(method_not_allowed)),
            )
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .default_service(web::to(no_route))
            // A connection with a request in progress is never the one closed for room.
            .wrap_fn(|request, service| {
                let busy = connections::track(&request);
                let answer = service.call(request);
                async move {
                    let answer = answer.await;
                    drop(busy);
                    answer
                }
            })
        })
        .workers(config.server.workers)
        // The caps are kept by `connections` (per peer, and in total with idle ones closed
        // to make room); actix's own cap, per worker, only has to stay out of its way.
        .on_connect(on_connect)
        .max_connections(connections.listener_cap())
        // A client that trickles its headers is cut off (408) after this; slow bodies are
        // bounded by server.body_timeout_ms in the ingest handler.
        .client_request_timeout(config.server.header_timeout)
        .disable_signals()
        .shutdown_timeout(config.server.shutdown_timeout.as_secs().max(1))
        .listen(listener)?
        .run();

        let admin_server = match config.server.admin_listen {
            None => None,
            Some(admin_address) => {
                let listener = TcpListener::bind(admin_address)
                    .with_context(|| format!("Failed to listen on {admin_address}"))?;
                let address = listener.local_addr()?;
                tracing::info!(%address, "Admin API and /metrics listening");
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(query_errors())
                        .configure(operator_routes.clone())
                        .route("/healthz", web::get().to(healthz))
                        .default_service(web::to(no_route))
                })
                .workers(1)
                .max_connections(256)
                .client_request_timeout(config.server.header_timeout)
                .disable_signals()
                .shutdown_timeout(config.server.shutdown_timeout.as_secs().max(1))
                .listen(listener)?
                .run();
                Some((address.port(), server))
            }
        };

        let pruner = config.retention.map(|retention| {
            tokio::spawn(prune_forever(
                store.clone(),
                metrics.clone(),
                retention,
                archive.clone(),
            ))
        });

        Ok(Application {
            enricher: (stop_jobs, enricher),
            pruner,
            recoverer: (stop_recovery, recovering),
            port: address.port(),
            server,
            admin_server,
            workers,
            store,
            shutdown_timeout: config.server.shutdown_timeout,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port, when `server.admin_listen` is set.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_server.as_ref().map(|(port, _)| *port)
    }

    /// Changes each time a delivery attempt's result is committed to the store.
    pub fn results_recorded(&self) -> tokio::sync::watch::Receiver<u64> {
        self.workers.results_recorded()
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut servers = vec![("The HTTP server", self.server)];
        servers.extend(self.admin_server.map(|(_, s)| ("The admin HTTP server", s)));
        let handles: Vec<_> = servers.iter().map(|(_, s)| s.handle()).collect();
        let mut tasks: Vec<_> = servers
            .into_iter()
            .map(|(what, s)| (what, tokio::spawn(s)))
            .collect();
        // A server that ends on its own has failed: it stops the other too.
        let ended = tokio::select! {
            (result, i, _) = futures_util::future::select_all(tasks.iter_mut().map(|(_, t)| t)) => {
                Some((i, result))
            }
            () = shutdown => None,
        };
        if ended.is_none() {
            tracing::info!("Shutting down: finishing requests in flight");
        }
        for handle in &handles {
            handle.stop(true).await;
        }
        let mut ended = ended;
        let mut result = Ok(());
        for (i, (what, task)) in tasks.into_iter().enumerate() {
            let outcome = match ended.take_if(|(done, _)| *done == i) {
                Some((_, outcome)) => outcome,
                None => task.await,
            };
            let outcome = outcome
                .with_context(|| format!("{what} task failed"))
                .and_then(|r| r.with_context(|| format!("{what} failed")));
            if result.is_ok() {
                result = outcome;
            }
        }
        if let Some(pruner) = &self.pruner {
            // Each batch is its own transaction: stopping between two loses nothing.
            pruner.abort();
        }
        // A poll stopped between two calls loses nothing: each call's commit is whole, and
        // the next poll resumes from the page saved last.
        let (stop_recovery, mut recovering) = self.recoverer;
        stop_recovery.send(true).unwrap_or(());
        if tokio::time::timeout(self.shutdown_timeout, &mut recovering)
            .await
            .is_err()
        {
            recovering.abort();
            tracing::warn!(
                "Recovery polls still running at shutdown were abandoned; their leases run out"
            );
        }
        tracing::info!("Waiting for jobs and delivery attempts in flight");
        let (stop_jobs, mut enricher) = self.enricher;
        // Fails only if the worker has ended already.
        stop_jobs.send(true).unwrap_or(());
        if tokio::time::timeout(self.shutdown_timeout, &mut enricher)
            .await
            .is_err()
        {
            enricher.abort();
            // A run cut short ends its lease and runs again after a restart.
            tracing::warn!("Jobs still running at shutdown were abandoned; they will run again");
        }
        self.workers.stop(self.shutdown_timeout).await;
        self.store.close().await;
        tracing::info!("Stopped");
        result
    }
}

/// Runs retention now and then every `interval`; a failed run is logged and tried again at
/// the next one.
async fn prune_forever(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    retention: crate::store::settings::RetentionConfig,
    archive: Option<ArchiveStore>,
) {
    let mut ticks = tokio::time::interval(retention.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let cutoff = crate::event::Timestamp::now().minus(retention.max_age);
        let started = std::time::Instant::now();
        match store.prune(cutoff).await {
            Ok(pruned) => {
                if let Some(archive) = &archive {
                    for (vendor, session_id) in &pruned.recordings {
                        archive.delete(vendor, session_id).await;
                    }
                }
                metrics.pruned(pruned, started.elapsed())
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "Retention could not prune; it tries again next interval")
            }
        }
    }
}

/// Pending deliveries of a target that is no longer configured wait, listed and retryable,
/// until it is configured again; say so at start-up, naming each target and its count.
async fn warn_of_orphans(store: &dyn Store, targets: &[crate::delivery::target::Target]) {
    match store.delivery_counts().await {
        Ok(counts) => {
            for c in counts
                .iter()
                .filter(|c| c.pending > 0 && !targets.iter().any(|t| t.name == c.target))
            {
                tracing::warn!(
                    target_name = %c.target,
                    pending = c.pending,
                    "Pending deliveries of a target that is not configured wait until it is again"
                );
            }
        }
        Err(e) => tracing::warn!(error = %chain(&e), "Cannot count deliveries at start-up"),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(health: web::Data<Ops>) -> HttpResponse {
    let reachable = matches!(
        tokio::time::timeout(READY_TIMEOUT, health.store.ping()).await,
        Ok(Ok(()))
    );
    // A store that answers but cannot commit (a full disk) is not ready either.
    let failing = health
        .commits
        .failing(health.clock.now_ms(), COMMIT_FAILURE_WINDOW);
    let store_ok = reachable && !failing;
    let workers_ok = health.workers.running();
    let mut body = json!({
        "status": if store_ok && workers_ok { "ready" } else { "not_ready" },
        "store": match (reachable, failing) {
            (false, _) => "unreachable",
            (true, true) => "failing_commits",
            (true, false) => "ok",
        },
        "workers": if workers_ok { "running" } else { "stopped" },
    });
    // Recovery's state is shown, never counted against readiness: ingest does not need it.
    let recovery = health.recovery.all();
    if !recovery.is_empty() {
        body["recovery"] = json!(recovery);
    }
    if store_ok && workers_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus text 0.0.4, or OpenMetrics when the scraper's `Accept` asks for it.
async fn metrics_text(request: HttpRequest, ops: web::Data<Ops>) -> HttpResponse {
    ops.refresh_gauges().await;
    let openmetrics = request
        .headers()
        .get_all(actix_web::http::header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().starts_with("application/openmetrics-text"));
    if openmetrics {
        HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(ops.metrics.render())
    } else {
        HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(ops.metrics.render_prometheus())
    }
}

async fn method_not_allowed(request: HttpRequest) -> HttpResponse {
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!(
            "{} is not allowed on {}; use POST",
            request.method(),
            request.path()
        ),
    );
    response.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static("POST"),
    );
    response
}

async fn no_route(request: HttpRequest) -> HttpResponse {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no route for {} {}", request.method(), request.path()),
    )
}
