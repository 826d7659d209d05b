//! The hand-over: how a delivery goes from ingest's commit straight to its worker, so that
//! its first attempt costs the store nothing more.
//!
//! 1. Before the commit, ingest asks [`Dispatcher::reserve`] for room in each target
//!    worker's queue; the [`Handoff`] names the targets that have room, with their lease.
//! 2. The store commits those deliveries already leased to this process
//!    ([`Handoff::lease_until`]) and returns them, bodies included ([`Leased`]).
//! 3. [`Dispatcher::hand_over`] queues each for its worker in the room reserved for it.
//! 4. The worker starts it when a slot frees, unless too little of its lease is left to
//!    finish within it (`Queued::startable`); then it is left to a claim once the
//!    lease ends, so it is never sent twice at once.
//!
//! Targets without room, and everything not handed over (retries, restarts, other
//! replicas' leases, admin replays), wait in the store for the worker to claim them; the
//! worker is woken with [`Dispatcher::notify`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::target::Target;
use crate::event::Inbound;
use crate::store::{ClaimedDelivery, Handoff, Leased};

/// How many handed-over deliveries may wait for an attempt slot, per slot.
const QUEUE_PER_SLOT: usize = 4;

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
    handed: mpsc::UnboundedSender<Queued>,
    stopping: watch::Receiver<bool>,
}

/// A worker's end of the hand-over: its wake-ups and its queue.
pub(super) struct Inbox {
    pub waker: Arc<Notify>,
    pub handed: mpsc::UnboundedReceiver<Queued>,
}

/// A delivery committed leased to this process, on its way to its worker.
pub(super) struct Queued {
    pub delivery: ClaimedDelivery,
    /// No later than the end of its lease (counted from before the commit).
    pub lease_ends: Instant,
    /// Its place in the worker's queue, given back when the attempt starts.
    _room: OwnedSemaphorePermit,
}

impl Queued {
    /// Whether an attempt started at `now` ends within the lease, whatever the target takes.
    pub fn startable(&self, now: Instant, timeout: Duration) -> bool {
        self.lease_ends > now + timeout
    }
}

/// Queue room reserved for the deliveries of one request (see [`Dispatcher::reserve`]).
pub struct Reservation {
    at: Instant,
    room: Vec<(String, OwnedSemaphorePermit)>,
}

impl Dispatcher {
    /// A dispatcher for `targets`, and each one's [`Inbox`] in the same order. Once
    /// `stopping` turns true nothing more is handed over.
    pub(super) fn new(
        targets: &[Arc<Target>],
        stopping: watch::Receiver<bool>,
    ) -> (Dispatcher, Vec<Inbox>) {
        let mut handles = HashMap::new();
        let mut inboxes = Vec::with_capacity(targets.len());
        for target in targets {
            let waker = Arc::new(Notify::new());
            let (handed, handed_rx) = mpsc::unbounded_channel();
            handles.insert(
                target.name.clone(),
                TargetHandle {
                    waker: waker.clone(),
                    room: Arc::new(Semaphore::new(target.max_in_flight * QUEUE_PER_SLOT)),
                    lease: target.lease,
                    handed,
                    stopping: stopping.clone(),
                },
            );
            inboxes.push(Inbox {
                waker,
                handed: handed_rx,
            });
        }
        (
            Dispatcher {
                targets: Arc::new(handles),
            },
            inboxes,
        )
    }

    /// Wakes `target`'s worker to claim what the store holds for it.
    pub fn notify(&self, target: &str) {
        if let Some(handle) = self.targets.get(target) {
            handle.waker.notify_one();
        }
    }

    /// For each target whose worker has room for every delivery `accept` would create,
    /// reserves it and names the target in the [`Handoff`] the store is given. Targets
    /// without room get their deliveries the usual way (a claim).
    pub fn reserve(&self, accept: &Inbound) -> (Reservation, Handoff) {
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
    pub fn hand_over(&self, mut reservation: Reservation, handed: Vec<Leased>) {
        for Leased { target, delivery } in handed {
            let room = reservation
                .room
                .iter_mut()
                .find(|(t, _)| *t == target)
                .and_then(|(_, room)| room.split(1));
            let (Some(handle), Some(room)) = (self.targets.get(&target), room) else {
                tracing::warn!(%target, delivery_id = %delivery.id, "A delivery was handed over without reserved room; it is attempted when its lease ends");
                continue;
            };
            let handed = Queued {
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
