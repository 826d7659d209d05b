//! Delivery: forwards stored events to targets, at least once, with retries.
//!
//! Each target has its own worker task with its own concurrency limit, so a slow or dead
//! target never delays another target or ingest. Every attempt runs under a lease on its
//! delivery, attempts it ([`attempt`]) and records the result; the pure [`retry`] rules
//! decide what comes next.
//!
//! Deliveries reach a worker two ways. Fresh ones are handed over by ingest
//! ([`Dispatcher::reserve`] / [`Dispatcher::hand_over`]): committed already leased to this
//! process, with their bodies, so the first attempt costs the store nothing more. The rest
//! (no room at the worker, retries, work left by a restart or another replica, admin
//! replays) wait in the store, and the worker claims them when woken
//! ([`Dispatcher::notify`]), when a retry falls due, and every few seconds.
//!
//! A crash at any point repeats work, never loses it: deliveries only leave `pending` after
//! the attempt's result is committed, and the event id (`webhook-id`) stays the same.

pub mod attempt;
pub mod outputs;
pub mod retry;
pub mod settings;
pub mod target;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::settings::DeliveryConfig;
use self::target::Target;
use crate::metrics::Metrics;
use crate::store::{Accept, ClaimedDelivery, Handed, Handoff, Store, now_ms};

/// How long a worker sleeps at most when nothing is due, to notice leases that expired.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How long a worker waits before asking a failing store again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// How many handed-over deliveries may wait for an attempt slot, per slot.
const HANDOFF_QUEUE_PER_SLOT: usize = 4;

/// Connects ingest to the target workers: wakes them when deliveries are committed to
/// the store, and hands them deliveries committed already leased to them.
#[derive(Clone, Default)]
pub struct Dispatcher {
    targets: Arc<HashMap<String, TargetHandle>>,
}

struct TargetHandle {
    waker: Arc<Notify>,
    /// Room in the worker's queue of handed-over deliveries; ingest reserves it first.
    room: Arc<Semaphore>,
    lease: Duration,
    handed: mpsc::UnboundedSender<HandedOver>,
    stopping: watch::Receiver<bool>,
}

/// A delivery committed leased to this process, on its way to its worker.
struct HandedOver {
    delivery: ClaimedDelivery,
    /// No later than the end of its lease (counted from before the commit).
    lease_ends: Instant,
    /// Its place in the worker's queue, given back when the attempt starts.
    _room: OwnedSemaphorePermit,
}

/// Queue room reserved for the deliveries of one request (see [`Dispatcher::reserve`]).
pub struct Reservation {
    at: Instant,
    room: Vec<(String, OwnedSemaphorePermit)>,
}

impl Dispatcher {
    /// Wakes `target`'s worker to claim what the store holds for it.
    pub fn notify(&self, target: &str) {
        if let Some(handle) = self.targets.get(target) {
            handle.waker.notify_one();
        }
    }

    /// For each target whose worker has room for every delivery `accept` would create,
    /// reserves it and names the target in the [`Handoff`] the store is given. It commits
    /// those deliveries leased to this process and returns them, and
    /// [`Dispatcher::hand_over`] queues them for their workers: nobody claims them back from
    /// the store. Targets without room get their deliveries the usual way.
    pub fn reserve(&self, accept: &Accept) -> (Reservation, Handoff) {
        let mut wanted: Vec<(&str, u32)> = Vec::new();
        for target in accept.events.iter().flat_map(|e| &e.targets) {
            match wanted.iter_mut().find(|(t, _)| t == target) {
                Some((_, n)) => *n += 1,
                None => wanted.push((target, 1)),
            }
        }
        let mut reservation = Reservation {
            at: Instant::now(),
            room: Vec::new(),
        };
        for (target, n) in wanted {
            let Some(handle) = self.targets.get(target) else {
                continue;
            };
            if *handle.stopping.borrow() {
                continue;
            }
            if let Ok(room) = handle.room.clone().try_acquire_many_owned(n) {
                reservation.room.push((target.to_owned(), room));
            }
        }
        let handoff = Handoff::new(
            reservation
                .room
                .iter()
                .map(|(target, _)| (target.clone(), self.targets[target].lease))
                .collect(),
        );
        (reservation, handoff)
    }

    /// Queues each delivery committed leased to this process for its worker, in the room
    /// reserved for it. Unused room is given back.
    pub fn hand_over(&self, mut reservation: Reservation, handed: Vec<Handed>) {
        for Handed { target, delivery } in handed {
            let room = reservation
                .room
                .iter_mut()
                .find(|(t, _)| *t == target)
                .and_then(|(_, room)| room.split(1));
            let (Some(handle), Some(room)) = (self.targets.get(&target), room) else {
                tracing::warn!(%target, delivery_id = %delivery.id, "A delivery was handed over without reserved room; it is attempted when its lease ends");
                continue;
            };
            let handed = HandedOver {
                delivery,
                lease_ends: reservation.at + handle.lease,
                _room: room,
            };
            if handle.handed.send(handed).is_err() {
                // The worker has stopped: the lease ends and the delivery is claimed again
                // (at the latest when the gateway restarts).
                tracing::debug!(%target, "Delivery worker stopped; a handed-over delivery waits for its lease to end");
            }
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
        let client = outputs::http::client()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut handles = HashMap::new();
        let mut tasks = JoinSet::new();
        let alive = Arc::new(AtomicUsize::new(0));
        let started = targets.len();
        for target in targets {
            let waker = Arc::new(Notify::new());
            let (handed, handed_rx) = mpsc::unbounded_channel();
            handles.insert(
                target.name.clone(),
                TargetHandle {
                    waker: waker.clone(),
                    room: Arc::new(Semaphore::new(
                        target.max_in_flight * HANDOFF_QUEUE_PER_SLOT,
                    )),
                    lease: target.lease,
                    handed,
                    stopping: shutdown_rx.clone(),
                },
            );
            let slots = Arc::new(Semaphore::new(target.max_in_flight));
            let output = outputs::for_target(&target, &client)?;
            let worker = TargetWorker {
                target,
                config: config.clone(),
                store: store.clone(),
                output,
                metrics: metrics.clone(),
                waker,
                slots,
                handed: handed_rx,
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
                targets: Arc::new(handles),
            },
            Workers {
                shutdown,
                tasks,
                started,
                alive,
            },
        ))
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
    output: Arc<dyn outputs::Output>,
    metrics: Arc<Metrics>,
    waker: Arc<Notify>,
    /// One permit per attempt waiting for the target's answer.
    slots: Arc<Semaphore>,
    handed: mpsc::UnboundedReceiver<HandedOver>,
    shutdown: watch::Receiver<bool>,
}

/// An attempt's task: when its delivery falls due again, if it does.
type InFlight = JoinSet<Option<i64>>;

impl TargetWorker {
    /// Attempts deliveries handed over by ingest as slots free, and claims from the store
    /// only when it may hold due work that was not handed over: at start, when woken (a
    /// delivery committed without room here, an admin retry or replay), when a retry falls
    /// due, when a claim filled every free slot, and every [`IDLE_POLL`] for leases that
    /// ended elsewhere.
    #[tracing::instrument(name = "delivery_worker", skip_all, fields(target = %self.target.name))]
    async fn run(mut self) {
        let mut in_flight = InFlight::new();
        let mut ready: VecDeque<HandedOver> = VecDeque::new();
        let mut claim = true;
        let mut look_again = Instant::now() + IDLE_POLL;
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            // Reap every finished attempt, not just one per turn, so none piles up.
            while let Some(done) = in_flight.try_join_next() {
                look_again = look_again.min(due_instant(done));
            }
            while let Ok(handed) = self.handed.try_recv() {
                ready.push_back(handed);
            }
            if Instant::now() >= look_again {
                claim = true;
                look_again = Instant::now() + IDLE_POLL;
            }
            // Handed-over deliveries first: they are due now and cost the store nothing.
            while !ready.is_empty() {
                let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                    break;
                };
                let handed = ready.pop_front().expect("not empty");
                // Too close to its lease's end to finish within it: leave it to a claim.
                if handed.lease_ends > Instant::now() + self.target.timeout {
                    self.metrics.handed_over(&self.target.name);
                    self.start(&mut in_flight, handed.delivery, slot);
                } else {
                    look_again = look_again.min(handed.lease_ends);
                }
            }
            if claim && ready.is_empty() {
                let slots = self.free_slots();
                if !slots.is_empty() {
                    let asked = slots.len();
                    match self
                        .store
                        .claim_due(&self.target.name, asked, self.target.lease)
                        .await
                    {
                        Ok(claimed) => {
                            self.metrics
                                .claimed(&self.target.name, asked, claimed.len());
                            // Every slot taken: more may be due; claim again when one frees.
                            claim = claimed.len() == asked;
                            for (delivery, slot) in claimed.into_iter().zip(slots) {
                                self.start(&mut in_flight, delivery, slot);
                            }
                            if !claim {
                                look_again = look_again.min(self.next_due().await);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::error::chain(&e), "Failed to claim deliveries; will ask the store again");
                            claim = false;
                            look_again = look_again.min(Instant::now() + STORE_RETRY);
                        }
                    }
                }
            }
            let wants_slot = !ready.is_empty() || claim;
            tokio::select! {
                _ = self.waker.notified() => claim = true,
                Some(handed) = self.handed.recv() => ready.push_back(handed),
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    look_again = look_again.min(due_instant(done));
                }
                // A slot is free (the next turn takes it).
                _ = self.slots.acquire(), if wants_slot => {}
                _ = tokio::time::sleep_until(look_again) => {}
                _ = self.shutdown.changed() => {}
            }
        }
        // Let attempts in flight finish and record their results.
        while in_flight.join_next().await.is_some() {}
    }

    /// Takes every free attempt slot.
    fn free_slots(&self) -> Vec<OwnedSemaphorePermit> {
        std::iter::from_fn(|| self.slots.clone().try_acquire_owned().ok()).collect()
    }

    fn start(
        &self,
        in_flight: &mut InFlight,
        delivery: ClaimedDelivery,
        slot: OwnedSemaphorePermit,
    ) {
        let job = attempt::Job {
            target: self.target.clone(),
            output: self.output.clone(),
            store: self.store.clone(),
            retry: self.config.retry.clone(),
            metrics: self.metrics.clone(),
            delivery,
        };
        in_flight.spawn(job.run(slot));
    }

    /// When the earliest pending delivery not leased falls due, capped at [`IDLE_POLL`].
    async fn next_due(&self) -> Instant {
        match self.store.next_due_at(&self.target.name).await {
            Ok(Some(at)) => instant_at(at).min(Instant::now() + IDLE_POLL),
            Ok(None) => Instant::now() + IDLE_POLL,
            Err(_) => Instant::now() + STORE_RETRY,
        }
    }
}

/// When a finished attempt's delivery falls due again; far off if it does not (or if the
/// attempt panicked, leaving its delivery leased until the lease may have ended).
fn due_instant(done: Result<Option<i64>, tokio::task::JoinError>) -> Instant {
    match done {
        Ok(Some(at)) => instant_at(at),
        Ok(None) | Err(_) => Instant::now() + IDLE_POLL,
    }
}

/// The instant of a unix time in ms (now, if it has passed).
fn instant_at(unix_ms: i64) -> Instant {
    Instant::now() + Duration::from_millis((unix_ms - now_ms()).max(0) as u64)
}
