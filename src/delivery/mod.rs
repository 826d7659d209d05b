//! Delivery: forwards stored events to targets, at least once, with retries.
//!
//! Each target has its own worker task with its own concurrency limit, so a slow or dead
//! target never delays another target or ingest. Every attempt runs under a lease on its
//! delivery, attempts it ([`attempt`]) and records the result; the pure [`retry`] rules
//! decide what comes next.
//!
//! Deliveries reach a worker two ways. Fresh ones are handed over by ingest ([`handoff`]):
//! committed already leased to this process, with their bodies, so the first attempt costs
//! the store nothing more. The rest (no room at the worker, retries, work left by a restart
//! or another replica, admin replays) wait in the store, and the worker claims them when
//! woken ([`Dispatcher::notify`]), when a retry falls due, and every few seconds.
//!
//! Rooms: [`target`] (a receiver and its routing rule), [`handoff`], `worker` (one turn,
//! `step(now)`, and a thin loop), [`attempt`], [`retry`] (pure), [`outputs`] (how a message
//! leaves: the `Output` seam), [`settings`] (`[delivery]`).
//!
//! A crash at any point repeats work, never loses it: deliveries only leave `pending` after
//! the attempt's result is committed, and the event id (`webhook-id`) stays the same.

pub mod attempt;
pub mod handoff;
pub mod message;
pub mod outputs;
pub mod retry;
pub mod settings;
pub mod target;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

pub use self::handoff::{Dispatcher, Reservation};
use self::settings::DeliveryConfig;
use self::target::Target;
use self::worker::{Parts, TargetWorker};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::Store;

/// The running workers.
pub struct Workers {
    shutdown: watch::Sender<bool>,
    recorded: Arc<watch::Sender<u64>>,
    tasks: JoinSet<()>,
    started: usize,
    alive: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts one worker per target.
    pub fn start(
        targets: Vec<Arc<Target>>,
        config: &DeliveryConfig,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> anyhow::Result<(Dispatcher, Workers)> {
        let shared = outputs::Shared::new()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (dispatcher, inboxes) = Dispatcher::new(&targets, shutdown_rx.clone());
        let mut tasks = JoinSet::new();
        let alive = Arc::new(AtomicUsize::new(0));
        let started = targets.len();
        let recorded = Arc::new(watch::channel(0).0);
        for (target, inbox) in targets.into_iter().zip(inboxes) {
            metrics.target(&target.name, target.output.kind());
            let parts = Parts {
                retry: config.retry.clone(),
                store: store.clone(),
                output: outputs::for_target(&target, &shared)?,
                metrics: metrics.clone(),
                clock: clock.clone(),
                recorded: recorded.clone(),
            };
            let worker = TargetWorker::new(target, parts, inbox, shutdown_rx.clone());
            let alive = Alive::new(alive.clone());
            tasks.spawn(async move {
                worker.run().await;
                drop(alive);
            });
        }
        Ok((
            dispatcher,
            Workers {
                shutdown,
                recorded,
                tasks,
                started,
                alive,
            },
        ))
    }

    /// How many attempt results the workers have recorded in the store; it changes after
    /// each one is committed (tests wait on it instead of polling the store).
    pub fn results_recorded(&self) -> watch::Receiver<u64> {
        self.recorded.subscribe()
    }

    /// A handle that answers [`WorkerHealth::running`] without owning the workers.
    pub fn health(&self) -> WorkerHealth {
        WorkerHealth {
            shutdown: self.shutdown.subscribe(),
            started: self.started,
            alive: self.alive.clone(),
        }
    }

    /// Stops claiming new work and waits up to `grace` for attempts in flight; what is not
    /// finished by then is retried after a restart.
    pub async fn stop(mut self, grace: Duration) {
        // Fails only when no worker listens any more: then none is left to stop.
        self.shutdown.send(true).unwrap_or(());
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "Delivery attempts still running at shutdown were abandoned; they will be retried"
            );
            self.tasks.shutdown().await;
        }
    }
}

/// Answers whether every delivery worker still runs (for `/readyz`).
#[derive(Clone)]
pub struct WorkerHealth {
    shutdown: watch::Receiver<bool>,
    started: usize,
    alive: Arc<AtomicUsize>,
}

impl WorkerHealth {
    pub fn running(&self) -> bool {
        !*self.shutdown.borrow() && self.alive.load(Ordering::Acquire) == self.started
    }
}

/// Counts a worker as alive until it is dropped, whether it returns or panics.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(count: Arc<AtomicUsize>) -> Alive {
        count.fetch_add(1, Ordering::AcqRel);
        Alive(count)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
