//! One target's worker: starts attempts as its slots free, from the hand-over first, then
//! from the store when it may hold due work.
//!
//! The work of a turn is [`TargetWorker::step`], given the time; [`TargetWorker::run`] is a
//! thin loop that steps, then waits for whatever could change the answer (a wake-up, a
//! hand-over, a finished attempt, a free slot, the time the next turn is due, shutdown).
//! Tests drive `step` with paused time and a manual clock instead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::attempt;
use super::handoff::{Inbox, Queued};
use super::outputs::Output;
use super::retry::RetryPolicy;
use super::target::Target;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{ClaimedDelivery, Store};

/// How long a worker waits at most when nothing is due, to notice leases that expired.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How long a worker waits before asking a failing store again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// An attempt's task: when its delivery falls due again, if it does.
type InFlight = JoinSet<Option<i64>>;

/// What a worker needs besides its target.
pub(super) struct Parts {
    pub retry: RetryPolicy,
    pub store: Arc<dyn Store>,
    pub output: Arc<dyn Output>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Counts attempt results recorded in the store.
    pub recorded: Arc<watch::Sender<u64>>,
}

pub(super) struct TargetWorker {
    target: Arc<Target>,
    parts: Parts,
    inbox: Inbox,
    /// One permit per attempt waiting for the target's answer.
    slots: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    in_flight: InFlight,
    /// Handed-over deliveries waiting for a slot, oldest first.
    ready: VecDeque<Queued>,
    /// Whether the store may hold due work that was not handed over.
    claim: bool,
    /// When the next turn is due at the latest.
    look_again: Instant,
}

impl TargetWorker {
    pub fn new(
        target: Arc<Target>,
        parts: Parts,
        inbox: Inbox,
        shutdown: watch::Receiver<bool>,
    ) -> TargetWorker {
        TargetWorker {
            slots: Arc::new(Semaphore::new(target.max_in_flight)),
            target,
            parts,
            inbox,
            shutdown,
            in_flight: InFlight::new(),
            ready: VecDeque::new(),
            // At start: whatever an earlier run, or another replica, left due.
            claim: true,
            look_again: Instant::now() + IDLE_POLL,
        }
    }

    /// Steps until shutdown, waiting between turns; then lets attempts in flight finish
    /// and record their results.
    #[tracing::instrument(name = "delivery_worker", skip_all, fields(target = %self.target.name))]
    pub async fn run(mut self) {
        while !*self.shutdown.borrow() {
            self.step(Instant::now()).await;
            self.wait().await;
        }
        while self.in_flight.join_next().await.is_some() {}
    }

    /// One turn at `now`: takes in finished attempts and hand-overs, starts handed-over
    /// deliveries as slots free, and claims from the store only when it may hold due work
    /// that was not handed over: at start, when woken (a delivery committed without room
    /// here, an admin retry or replay), when a retry falls due, when a claim filled every
    /// free slot, and every [`IDLE_POLL`] for leases that ended elsewhere. Returns when
    /// the next turn is due at the latest.
    pub async fn step(&mut self, now: Instant) -> Instant {
        // Reap every finished attempt, not just one per turn, so none piles up.
        while let Some(done) = self.in_flight.try_join_next() {
            self.fold(done);
        }
        while let Ok(handed) = self.inbox.handed.try_recv() {
            self.ready.push_back(handed);
        }
        if now >= self.look_again {
            self.claim = true;
            self.look_again = now + IDLE_POLL;
        }
        // Handed-over deliveries first: they are due now and cost the store nothing.
        while !self.ready.is_empty() {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            let handed = self.ready.pop_front().expect("not empty");
            if handed.startable(now, self.target.timeout) {
                self.parts.metrics.handed_over(&self.target.name);
                self.start(handed.delivery, slot);
            } else {
                // Too close to its lease's end to finish within it: a claim takes it once
                // the lease has ended.
                self.look_again = self.look_again.min(handed.lease_ends);
            }
        }
        if self.claim && self.ready.is_empty() {
            self.claim_due(now).await;
        }
        self.look_again
    }

    async fn claim_due(&mut self, now: Instant) {
        let slots = self.free_slots();
        if slots.is_empty() {
            return;
        }
        let asked = slots.len();
        let name = &self.target.name;
        match self
            .parts
            .store
            .claim_due(name, asked, self.target.lease)
            .await
        {
            Ok(claimed) => {
                self.parts.metrics.claimed(name, asked, claimed.len());
                // Every slot taken: more may be due; claim again when one frees.
                self.claim = claimed.len() == asked;
                for (delivery, slot) in claimed.into_iter().zip(slots) {
                    self.start(delivery, slot);
                }
                if !self.claim {
                    let next = self.next_due(now).await;
                    self.look_again = self.look_again.min(next);
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::chain(&e), "Failed to claim deliveries; will ask the store again");
                self.claim = false;
                self.look_again = self.look_again.min(now + STORE_RETRY);
            }
        }
    }

    /// Waits for anything that could give the next turn something to do.
    async fn wait(&mut self) {
        let wants_slot = !self.ready.is_empty() || self.claim;
        let finished = tokio::select! {
            _ = self.inbox.waker.notified() => {
                self.claim = true;
                None
            }
            Some(handed) = self.inbox.handed.recv() => {
                self.ready.push_back(handed);
                None
            }
            Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => Some(done),
            // A slot is free (the next turn takes it).
            _ = self.slots.acquire(), if wants_slot => None,
            _ = tokio::time::sleep_until(self.look_again) => None,
            _ = self.shutdown.changed() => None,
        };
        if let Some(done) = finished {
            self.fold(done);
        }
    }

    /// A finished attempt: the next turn is due no later than its delivery's next attempt
    /// (if the attempt panicked, its delivery stays leased until the lease may have ended).
    fn fold(&mut self, done: Result<Option<i64>, tokio::task::JoinError>) {
        let due = match done {
            Ok(Some(at)) => self.parts.clock.instant_at(at),
            Ok(None) | Err(_) => Instant::now() + IDLE_POLL,
        };
        self.look_again = self.look_again.min(due);
    }

    /// Takes every free attempt slot.
    fn free_slots(&self) -> Vec<OwnedSemaphorePermit> {
        std::iter::from_fn(|| self.slots.clone().try_acquire_owned().ok()).collect()
    }

    fn start(&mut self, delivery: ClaimedDelivery, slot: OwnedSemaphorePermit) {
        let job = attempt::Attempt {
            target: self.target.clone(),
            output: self.parts.output.clone(),
            store: self.parts.store.clone(),
            retry: self.parts.retry.clone(),
            metrics: self.parts.metrics.clone(),
            clock: self.parts.clock.clone(),
            recorded: self.parts.recorded.clone(),
            delivery,
        };
        self.in_flight.spawn(job.run(slot));
    }

    /// When the earliest pending delivery not leased falls due, capped at [`IDLE_POLL`].
    async fn next_due(&self, now: Instant) -> Instant {
        match self.parts.store.next_due_at(&self.target.name).await {
            Ok(Some(at)) => self.parts.clock.instant_at(at).min(now + IDLE_POLL),
            Ok(None) => now + IDLE_POLL,
            Err(_) => now + STORE_RETRY,
        }
    }

    /// Waits for every attempt in flight to finish, folding in when each falls due again
    /// (tests: what `run` does between turns, without the rest of its wait).
    #[cfg(test)]
    pub async fn settle(&mut self) {
        while let Some(done) = self.in_flight.join_next().await {
            self.fold(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::delivery::handoff::Dispatcher;
    use crate::delivery::outputs::{Outbound, OutputAnswer};
    use crate::delivery::retry::Verdict;
    use crate::event::EventType;
    use crate::store::suite::{TestStore, accept};
    use crate::store::{DeliveryFilter, DeliveryStatus, IngestOutcome};

    /// An output that answers from a script and counts what it was sent.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Verdict>>,
        sent: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Output for Scripted {
        async fn send(&self, outbound: Outbound<'_>) -> OutputAnswer {
            self.sent
                .lock()
                .unwrap()
                .push(outbound.event_id.as_str().to_owned());
            let verdict = self.answers.lock().unwrap().pop_front().expect("scripted");
            OutputAnswer {
                status: Some(if verdict == Verdict::Delivered {
                    200
                } else {
                    503
                }),
                error: (verdict != Verdict::Delivered).then(|| "scripted failure".to_owned()),
                verdict,
            }
        }
    }

    impl Scripted {
        fn sent(&self) -> usize {
            self.sent.lock().unwrap().len()
        }
    }

    struct Rig {
        worker: TargetWorker,
        dispatcher: Dispatcher,
        output: Arc<Scripted>,
        clock: Clock,
        store: TestStore,
        _shutdown: watch::Sender<bool>,
    }

    /// One target `t` (10 s attempt timeout, so a 40 s lease; retries after 10 s ± 20%)
    /// on a SQLite store, all on a manual clock. Time must be paused.
    async fn rig(answers: &[Verdict]) -> Rig {
        let clock = Clock::manual(1_800_000_000_000);
        let config = crate::config::Config::from_toml(
            "[[sources]]\nname = \"src\"\nvendor = \"pathors\"\nauth = { kind = \"none\" }\n\
             [[targets]]\nname = \"t\"\nurl = \"http://127.0.0.1:9/\"\n",
            &|_| None,
        )
        .unwrap();
        let store = crate::store::suite::sqlite_on(clock.clone()).await;
        let target = Arc::new(config.targets.into_iter().next().unwrap());
        let output = Arc::new(Scripted::default());
        output
            .answers
            .lock()
            .unwrap()
            .extend(answers.iter().cloned());
        let (shutdown, stopping) = watch::channel(false);
        let (dispatcher, mut inboxes) = Dispatcher::new(std::slice::from_ref(&target), stopping);
        let parts = Parts {
            retry: config.delivery.retry.clone(),
            store: store.store.clone(),
            output: output.clone(),
            metrics: Arc::new(Metrics::new()),
            clock: clock.clone(),
            recorded: Arc::new(watch::channel(0).0),
        };
        let worker = TargetWorker::new(target, parts, inboxes.remove(0), shutdown.subscribe());
        Rig {
            worker,
            dispatcher,
            output,
            clock,
            store,
            _shutdown: shutdown,
        }
    }

    impl Rig {
        /// Commits one event for `t` the way ingest does: reserve, commit, hand over.
        async fn ingest(&self, session: &str) {
            let accept = accept(session, &[EventType::SessionStarted], &["t"]);
            let (reservation, handoff) = self.dispatcher.reserve(&accept);
            let outcome = self
                .store
                .store
                .accept_handing_over(accept, handoff)
                .await
                .unwrap();
            let IngestOutcome::Accepted { handed, .. } = outcome else {
                panic!("not accepted: {outcome:?}");
            };
            self.dispatcher.hand_over(reservation, handed);
        }

        /// A turn now, then every attempt it started finished and recorded.
        async fn turn(&mut self) -> Instant {
            self.worker.step(Instant::now()).await;
            self.worker.settle().await;
            self.worker.look_again
        }

        fn claims(&self) -> u64 {
            let text = self.worker.parts.metrics.render_prometheus();
            text.lines()
                .find(|l| l.starts_with("sessiongate_delivery_claims_total{"))
                .and_then(|l| l.rsplit(' ').next())
                .map_or(0, |n| n.parse().unwrap())
        }

        async fn status(&self) -> (DeliveryStatus, u32) {
            let all = self
                .store
                .store
                .deliveries(DeliveryFilter {
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(all.len(), 1);
            (all[0].status, all[0].attempts)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_handed_over_delivery_starts_without_a_claim_and_its_retry_waits_for_its_time() {
        let mut rig = rig(&[Verdict::Retry { retry_after: None }, Verdict::Delivered]).await;
        rig.turn().await; // the start-up claim: nothing yet
        assert_eq!(rig.claims(), 1);

        rig.ingest("s1").await;
        let due = rig.turn().await;
        assert_eq!(rig.output.sent(), 1, "handed over and attempted at once");
        assert_eq!(rig.claims(), 1, "without asking the store");
        assert_eq!(rig.status().await, (DeliveryStatus::Pending, 1));
        // The retry is due in 10 s ± 20% jitter; the worker looks again by then (at the
        // latest after its idle poll).
        let retry_at = rig.store.store.next_due_at("t").await.unwrap().unwrap();
        let wait = Duration::from_millis((retry_at - rig.clock.now_ms()) as u64);
        assert!(
            (Duration::from_secs(8)..=Duration::from_secs(12)).contains(&wait),
            "{wait:?}"
        );
        assert!(due <= Instant::now() + IDLE_POLL.min(wait));

        // Before then, turns attempt nothing (the store holds it back too).
        rig.turn().await;
        crate::clock::advance(&rig.clock, wait - Duration::from_millis(10)).await;
        let due = rig.turn().await;
        assert_eq!(rig.output.sent(), 1);
        assert_eq!(
            due,
            Instant::now() + Duration::from_millis(10),
            "looks again when due"
        );

        crate::clock::advance(&rig.clock, Duration::from_millis(10)).await;
        rig.turn().await;
        assert_eq!(rig.output.sent(), 2, "claimed and attempted once due");
        assert_eq!(rig.status().await, (DeliveryStatus::Delivered, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hand_over_too_close_to_its_lease_end_is_left_to_a_claim_after_it() {
        let mut rig = rig(&[Verdict::Delivered]).await;
        rig.turn().await;
        rig.ingest("s1").await;
        // 31 s of the 40 s lease pass before the worker's turn: 9 s is less than the 10 s an
        // attempt may take, so it must not start under this lease.
        crate::clock::advance(&rig.clock, Duration::from_secs(31)).await;
        let due = rig.turn().await;
        assert_eq!(rig.output.sent(), 0);
        assert!(
            due <= Instant::now() + Duration::from_secs(9),
            "looks again by the lease's end"
        );

        // Nor may a claim take it while the store still has it leased.
        crate::clock::advance(&rig.clock, Duration::from_secs(5)).await;
        rig.worker.claim = true;
        rig.turn().await;
        assert_eq!(rig.output.sent(), 0);

        crate::clock::advance(&rig.clock, Duration::from_secs(4)).await;
        rig.worker.claim = true;
        rig.turn().await;
        assert_eq!(rig.output.sent(), 1, "claimed once the lease ended");
        assert_eq!(rig.status().await, (DeliveryStatus::Delivered, 1));
    }

    /// What an info-level subscriber saw: its formatted lines, and how many
    /// `delivery_attempt` spans were made.
    #[derive(Clone, Default)]
    struct Seen {
        lines: Arc<Mutex<Vec<u8>>>,
        spans: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl std::io::Write for Seen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.lines.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if attrs.metadata().name() == "delivery_attempt" {
                self.spans
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// At info, a delivered attempt makes no span (it would log nothing within it), and a
    /// failed one logs its line within one that names the delivery.
    #[tokio::test(start_paused = true)]
    async fn only_attempts_that_log_make_a_span() {
        use tracing_subscriber::layer::SubscriberExt;
        let seen = Seen::default();
        let writer = seen.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(seen.clone())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            );
        // This test's runtime has one thread: the attempts run on it.
        let _default = tracing::subscriber::set_default(subscriber);
        let mut rig = rig(&[Verdict::Retry { retry_after: None }, Verdict::Delivered]).await;
        rig.turn().await;
        rig.ingest("s1").await;
        rig.turn().await;
        let spans = || seen.spans.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            spans(),
            1,
            "the failed attempt's line is logged within its span"
        );
        let lines = String::from_utf8(seen.lines.lock().unwrap().clone()).unwrap();
        let line = lines
            .lines()
            .find(|l| l.contains("will retry"))
            .expect("the failure is logged");
        let id = &rig
            .store
            .store
            .deliveries(DeliveryFilter {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()[0]
            .id;
        assert!(
            line.contains(&format!("delivery_id={id}")) && line.contains("attempt=1"),
            "{line}"
        );

        let wait = rig.store.store.next_due_at("t").await.unwrap().unwrap() - rig.clock.now_ms();
        crate::clock::advance(&rig.clock, Duration::from_millis(wait as u64)).await;
        rig.turn().await;
        assert_eq!(rig.status().await, (DeliveryStatus::Delivered, 2));
        assert_eq!(spans(), 1, "no span for the delivered attempt");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_claims_every_idle_poll_for_leases_that_ended_elsewhere() {
        let mut rig = rig(&[]).await;
        rig.turn().await;
        rig.turn().await;
        assert_eq!(rig.claims(), 1, "no claim while nothing could be due");
        crate::clock::advance(&rig.clock, IDLE_POLL).await;
        rig.turn().await;
        assert_eq!(rig.claims(), 2);
    }
}
