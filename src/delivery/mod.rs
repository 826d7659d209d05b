//! Delivery: forwards stored events to targets, at least once, with retries.
//!
//! Each target has its own worker task with its own concurrency limit, so a slow or dead
//! target never delays another target or ingest. A worker claims due deliveries from the
//! store under a lease, attempts them ([`attempt`]), and records each result; the pure
//! [`retry`] rules decide what comes next. Workers wake when ingest commits a delivery for
//! them ([`Dispatcher::notify`]), when a retry falls due, or when an attempt finishes.
//!
//! A crash at any point repeats work, never loses it: deliveries only leave `pending` after
//! the attempt's result is committed, and the event id (`webhook-id`) stays the same.

pub mod attempt;
pub mod retry;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{DeliveryConfig, Target};
use crate::metrics::Metrics;
use crate::store::{Store, now_ms};

/// How long a worker sleeps at most when nothing is due, to notice leases that expired.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How long a worker waits before asking a failing store again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Wakes target workers when new deliveries are committed.
#[derive(Clone, Default)]
pub struct Dispatcher {
    wakers: Arc<HashMap<String, Arc<Notify>>>,
}

impl Dispatcher {
    pub fn notify(&self, target: &str) {
        if let Some(waker) = self.wakers.get(target) {
            waker.notify_one();
        }
    }
}

/// The running workers.
pub struct Workers {
    shutdown: watch::Sender<bool>,
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
    ) -> anyhow::Result<(Dispatcher, Workers)> {
        let client = attempt::client()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut wakers = HashMap::new();
        let mut tasks = JoinSet::new();
        let alive = Arc::new(AtomicUsize::new(0));
        let started = targets.len();
        for target in targets {
            let waker = Arc::new(Notify::new());
            wakers.insert(target.name.clone(), waker.clone());
            let worker = TargetWorker {
                target,
                config: config.clone(),
                store: store.clone(),
                client: client.clone(),
                metrics: metrics.clone(),
                waker,
                shutdown: shutdown_rx.clone(),
            };
            let alive = Alive::new(alive.clone());
            tasks.spawn(async move {
                worker.run().await;
                drop(alive);
            });
        }
        Ok((
            Dispatcher {
                wakers: Arc::new(wakers),
            },
            Workers {
                shutdown,
                tasks,
                started,
                alive,
            },
        ))
    }

    /// A handle that answers [`Workers::running`] without owning the workers.
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
        let _ = self.shutdown.send(true);
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

struct TargetWorker {
    target: Arc<Target>,
    config: DeliveryConfig,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    waker: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
}

impl TargetWorker {
    #[tracing::instrument(name = "delivery_worker", skip_all, fields(target = %self.target.name))]
    async fn run(mut self) {
        let permits = Arc::new(Semaphore::new(self.target.max_in_flight));
        let lease = self.target.lease;
        let mut in_flight = JoinSet::new();
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            // Reap every finished attempt, not just one per turn, so none piles up.
            while in_flight.try_join_next().is_some() {}
            let free = permits.available_permits();
            let mut wait = IDLE_POLL;
            if free > 0 {
                match self.store.claim_due(&self.target.name, free, lease).await {
                    Ok(claimed) => {
                        let full = claimed.len() == free;
                        for delivery in claimed {
                            let permit = permits
                                .clone()
                                .try_acquire_owned()
                                .expect("a permit per claimed delivery");
                            let job = attempt::Job {
                                target: self.target.clone(),
                                client: self.client.clone(),
                                store: self.store.clone(),
                                max_attempts: self.config.max_attempts,
                                retry: self.config.retry.clone(),
                                metrics: self.metrics.clone(),
                                delivery,
                            };
                            in_flight.spawn(async move {
                                job.run().await;
                                drop(permit);
                            });
                        }
                        if full {
                            // There may be more due right now; claim again once a permit frees.
                            wait = Duration::ZERO;
                        } else {
                            wait = self.until_next_due().await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Failed to claim deliveries; will ask the store again");
                        wait = STORE_RETRY;
                    }
                }
            }
            let saturated = permits.available_permits() == 0;
            tokio::select! {
                _ = self.waker.notified(), if !saturated => {}
                _ = tokio::time::sleep(wait), if !saturated && !wait.is_zero() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = self.shutdown.changed() => {}
                // Nothing in flight and nothing to wait for: claim again.
                _ = std::future::ready(()), if wait.is_zero() && !saturated => {}
            }
        }
        // Let attempts in flight finish and record their results.
        while in_flight.join_next().await.is_some() {}
    }

    async fn until_next_due(&self) -> Duration {
        match self.store.next_due_at(&self.target.name).await {
            Ok(Some(at)) => {
                let ms = (at - now_ms()).max(0) as u64;
                Duration::from_millis(ms).clamp(Duration::from_millis(1), IDLE_POLL)
            }
            Ok(None) => IDLE_POLL,
            Err(_) => STORE_RETRY,
        }
    }
}
