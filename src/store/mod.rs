//! The durable store: what must hold across requests, restarts and replicas.
//!
//! The store decides duplicates (an event id already stored), writes every accepted event
//! together with its deliveries in one transaction, and hands out due deliveries under a
//! lease so that each is attempted by one worker at a time. It does not know HTTP, vendors
//! or targets' URLs; callers pass it finished rows.
//!
//! What a request does to a session (merge, finalize once, render) is decided once, in
//! `plan_accept`; backends only read the session row and write the plan, with no other
//! write to that session in between (SQLite: its one writer; PostgreSQL: a compare-and-set).
//!
//! Implementations: [`sqlite`] (embedded, the default) and [`postgres`] (shared by replicas).

mod jobs;
pub mod listing;
pub mod postgres;
pub mod schema;
pub mod settings;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

use std::fmt;
use std::time::Duration;

use actix_web::web::Bytes;
use async_trait::async_trait;
use serde::Serialize;

use secrecy::ExposeSecret;

pub use self::jobs::{ClaimedJob, Hold, JobEnd, JobResult, event_of_job, job_id};
pub(crate) use self::jobs::{
    SESSION_JOBS, SessionJobs, ends_session, needs_session_jobs, plan_jobs, rerender,
};
pub use self::listing::{Retried, SessionFilter, SessionListing, Timeline};
use self::settings::StorageConfig;
use crate::clock::Clock;
use crate::event::{EventId, Inbound, JobKind, NewEvent, Session, Timestamp};

/// A delivery id, `dlv_` followed by a time-ordered UUID in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct DeliveryId(String);

impl DeliveryId {
    pub fn generate() -> DeliveryId {
        DeliveryId(format!("dlv_{}", uuid::Uuid::now_v7().simple()))
    }

    pub fn from_stored(id: String) -> DeliveryId {
        DeliveryId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The targets whose worker has room for each of a request's deliveries, with their lease
/// (the hand-over, [`crate::delivery::handoff`], decides). Those deliveries are
/// committed already leased to this process and come back in
/// [`IngestOutcome::Accepted`]'s `handed`, so nobody claims them back.
#[derive(Debug, Clone, Default)]
pub struct Handoff {
    leases: Vec<(String, Duration)>,
}

impl Handoff {
    /// No delivery handed over: every one waits in the store to be claimed.
    pub fn none() -> Handoff {
        Handoff::default()
    }

    pub fn new(leases: Vec<(String, Duration)>) -> Handoff {
        Handoff { leases }
    }

    /// When the lease of a new delivery to `target` committed at `now_ms` ends, if it is
    /// handed over (else it is committed unleased, for a claim).
    pub fn lease_until(&self, target: &str, now_ms: i64) -> Option<i64> {
        self.leases
            .iter()
            .find(|(name, _)| name == target)
            .map(|(_, lease)| now_ms + lease.as_millis() as i64)
    }
}

/// An authenticated request that stored no event, kept for audit (`GET /admin/receipts`):
/// a type no adapter maps, or a vendor event seen before.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub outcome: ReceiptOutcome,
    pub source: String,
    pub vendor_event_type: Option<String>,
    pub message_id: Option<String>,
    pub received_at: Timestamp,
    pub raw: Bytes,
    /// A duplicate's: the id of the event it repeated (its session's timeline shows it).
    pub repeats: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptOutcome {
    Ignored,
    Duplicate,
}

impl ReceiptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptOutcome::Ignored => "ignored",
            ReceiptOutcome::Duplicate => "duplicate",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReceiptFilter {
    pub source: Option<String>,
    /// `accepted`, `duplicate` or `ignored`.
    pub outcome: Option<String>,
    /// Only receipts older than this one (the page cursor).
    pub before: Option<i64>,
    pub limit: usize,
}

/// A stored receipt: one request a vendor sent, as received.
#[derive(Debug, Clone)]
pub struct ReceiptInfo {
    pub seq: i64,
    pub source: String,
    pub outcome: String,
    pub vendor_event_type: Option<String>,
    pub message_id: Option<String>,
    pub received_at: String,
    pub raw: Bytes,
}

/// The statements both stores list receipts with (`?`-style placeholders are rewritten for
/// PostgreSQL by the caller).
pub(crate) const RECEIPT_COLUMNS: &str =
    "seq, source, outcome, vendor_event_type, message_id, received_at, raw";

/// The columns both stores read a delivery with, in their `delivery_row`'s order.
pub const DELIVERY_COLUMNS: &str = "seq, id, event_id, target, status, attempts, next_attempt_at, \
                                    last_status, last_error, created_at, updated_at";

/// The columns both stores read an event with (`e`: events, `r`: its receipt).
pub(crate) const EVENT_COLUMNS: &str = "e.seq, e.id, e.source, e.session_id, e.type, e.body, r.raw";

#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    /// Stored. `targets` have new deliveries waiting in the store to be claimed; `handed`
    /// are the deliveries committed leased to this process (see [`Handoff`]).
    Accepted {
        id: EventId,
        targets: Vec<String>,
        handed: Vec<Leased>,
    },
    /// The same vendor event was stored before; nothing was written.
    Duplicate { id: EventId },
}

/// A delivery committed already leased to this process, with what its first attempt needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    pub target: String,
    pub delivery: ClaimedDelivery,
}

impl Leased {
    /// The first attempt of a delivery of `event` (rendered as `body`) just committed.
    pub(crate) fn new(
        accept: &Inbound,
        target: &str,
        id: DeliveryId,
        event: &NewEvent,
        body: &str,
        lease_token: i64,
    ) -> Leased {
        Leased {
            target: target.to_owned(),
            delivery: ClaimedDelivery {
                id,
                event_id: event.id.clone(),
                attempts: 0,
                lease_token,
                occurred_at: Some(event.occurred_at),
                received_at: Some(accept.received_at),
                body: body.to_owned(),
                raw: accept.raw.clone(),
            },
        }
    }
}

/// A due delivery handed to a worker under a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    pub id: DeliveryId,
    pub event_id: EventId,
    /// Attempts made before this one.
    pub attempts: u32,
    /// Proves the lease when the result is recorded; a stale lease's result is dropped.
    pub lease_token: i64,
    /// When the vendor says the event happened (the vendor-to-receiver histogram).
    pub occurred_at: Option<Timestamp>,
    /// When the gateway received it (the end-to-end histogram).
    pub received_at: Option<Timestamp>,
    /// The serialised canonical event, without `raw`.
    pub body: String,
    pub raw: Bytes,
}

/// The result of one attempt, to be recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: DeliveryId,
    /// The claim's lease token: the result is recorded only while the lease is still ours.
    pub lease_token: i64,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub next: Completion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Delivered,
    RetryAt { unix_ms: i64 },
    Dead,
}

impl Completion {
    /// The delivery's status afterwards, and its next attempt time if that changes.
    pub(crate) fn status(self) -> (DeliveryStatus, Option<i64>) {
        match self {
            Completion::Delivered => (DeliveryStatus::Delivered, None),
            Completion::RetryAt { unix_ms } => (DeliveryStatus::Pending, Some(unix_ms)),
            Completion::Dead => (DeliveryStatus::Dead, None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// Where a source's recovery stands ([`crate::recovery`]), kept so that a restart resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryProgress {
    /// Every call that ended before this (unix ms) has been looked at.
    pub done_until: Option<i64>,
    /// The window `[since, until]` (unix ms) a poll is working through, and the vendor's
    /// cursor of the next page in it (`None`: the first).
    pub window: Option<(i64, i64)>,
    pub cursor: Option<String>,
}

/// A recovery lease taken: its token and the progress stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryClaim {
    pub token: i64,
    pub progress: RecoveryProgress,
}

/// Which stored events a backfill queues for one target ([`Store::backfill`]).
#[derive(Debug, Clone)]
pub struct Backfill {
    pub target: String,
    /// Events received in `[since, until)`.
    pub since: Timestamp,
    pub until: Timestamp,
    /// The target's filters: its sources and event types (`None`: all).
    pub sources: Option<Vec<String>>,
    pub event_types: Option<Vec<crate::event::EventType>>,
    /// Only count.
    pub dry_run: bool,
    /// How far apart the queued deliveries fall due, so that the target's live deliveries,
    /// due at once, go first.
    pub spacing_ms: i64,
}

impl Backfill {
    /// Whether the target's filters take a stored event of `source` and `event_type`.
    pub(crate) fn takes(&self, source: &str, event_type: &str) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s == source))
            && self.event_types.as_ref().is_none_or(|types| {
                crate::event::EventType::parse(event_type).is_some_and(|t| types.contains(&t))
            })
    }
}

/// A delivery as the store knows it.
/// What one pruning run deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub receipts: u64,
    pub deliveries: u64,
    pub attempts: u64,
    /// Jobs that ended before the cutoff (pending ones are never pruned).
    pub jobs: u64,
    /// `(vendor, session id)` of sessions whose last recording job went: their archived
    /// object goes too (the caller deletes it from the recordings store).
    pub recordings: Vec<(String, String)>,
}

/// Rows one pruning batch looks at.
pub(crate) const PRUNE_BATCH: i64 = 500;

/// How many deliveries of one target wait, and how many are dead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetCounts {
    pub target: String,
    pub pending: u64,
    pub dead: u64,
}

/// Folds `(target, status, count)` rows into one [`TargetCounts`] per target.
pub(crate) fn fold_counts(
    rows: impl IntoIterator<Item = (String, String, u64)>,
) -> Vec<TargetCounts> {
    let mut counts: Vec<TargetCounts> = Vec::new();
    for (target, status, n) in rows {
        let i = match counts.iter().position(|c| c.target == target) {
            Some(i) => i,
            None => {
                counts.push(TargetCounts {
                    target,
                    ..TargetCounts::default()
                });
                counts.len() - 1
            }
        };
        match status.as_str() {
            "pending" => counts[i].pending += n,
            "dead" => counts[i].dead += n,
            _ => {}
        }
    }
    counts
}

/// The statement both stores count deliveries with.
pub(crate) const COUNT_DELIVERIES: &str = "SELECT target, status, COUNT(*) FROM deliveries \
     WHERE status IN ('pending', 'dead') GROUP BY target, status";

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryInfo {
    #[serde(skip)]
    pub seq: i64,
    /// `dlv_` and a time-ordered UUID.
    #[schema(value_type = String)]
    pub id: DeliveryId,
    #[schema(value_type = String)]
    pub event_id: EventId,
    pub target: String,
    pub status: DeliveryStatus,
    /// Attempts in the current schedule.
    pub attempts: u32,
    /// When a pending delivery is next tried; null otherwise.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<Timestamp>,
    /// The last attempt's HTTP status, if it got one.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Every attempt, oldest first; filled when [`DeliveryFilter::with_attempts`] is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<AttemptInfo>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptInfo {
    pub attempt: u32,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    /// Only pending deliveries that have failed at least once.
    pub failing: bool,
    pub target: Option<String>,
    pub event_id: Option<String>,
    /// Only deliveries older than this cursor (a `seq` from an earlier page).
    pub before: Option<i64>,
    pub limit: usize,
    pub with_attempts: bool,
}

/// A stored canonical event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: EventId,
    pub source: String,
    pub session_id: String,
    pub event_type: String,
    /// The serialised canonical event, without `raw`.
    pub body: String,
    pub raw: Bytes,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub source: Option<String>,
    pub session_id: Option<String>,
    pub event_type: Option<String>,
    /// Only events older than this cursor (a `seq` from an earlier page).
    pub before: Option<i64>,
    pub limit: usize,
}

/// A session record as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub vendor: String,
    /// The merged session: the canonical event's `session` object
    /// (schema/session-event.v3.json).
    #[schema(value_type = Object)]
    pub session: Session,
    #[schema(value_type = Option<String>)]
    pub finalized_event_id: Option<EventId>,
    /// When the gateway first stored anything of the session.
    #[schema(value_type = String, format = DateTime)]
    pub first_seen_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    Requeued { target: String },
    NotDead(DeliveryStatus),
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is closed")]
    Closed,
    #[error("store operation failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Commits a recognised request: merges it into its session record, stores its events
    /// (each carrying the merged record as of that event) and their deliveries — or nothing
    /// new if its first event id is already stored. A `session.finalized` is stored at most
    /// once per session. Returns only once the commit is durable.
    async fn accept_handing_over(
        &self,
        accept: Inbound,
        handoff: Handoff,
    ) -> Result<IngestOutcome, StoreError>;

    /// [`Store::accept_handing_over`] with nothing handed over.
    async fn accept(&self, accept: Inbound) -> Result<IngestOutcome, StoreError> {
        self.accept_handing_over(accept, Handoff::none()).await
    }

    /// Keeps a request that stored no event for audit. Durable on return.
    async fn record_receipt(&self, receipt: Receipt) -> Result<(), StoreError>;

    /// What vendors sent (accepted, duplicate and ignored requests), newest first.
    async fn receipts(&self, filter: ReceiptFilter) -> Result<Vec<ReceiptInfo>, StoreError>;

    /// Leases up to `limit` due pending deliveries of `target` for `lease`.
    async fn claim_due(
        &self,
        target: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Leases up to `limit` due pending jobs of `kind` for `lease`, oldest due first (a job
    /// past its deadline is due). A job whose previous lease lapsed (its run died or hung)
    /// counts that run as an attempt; a leased job falls due again when its lease ends.
    async fn claim_jobs(
        &self,
        kind: JobKind,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError>;

    /// Extends a run's lease to `lease` from now; false if it has passed to another run or
    /// the job has ended (the run should stop: its result would be dropped).
    async fn renew_job(
        &self,
        id: &str,
        lease_token: i64,
        lease: Duration,
    ) -> Result<bool, StoreError>;

    /// Ends a job run: on `Done`, in one transaction, merges its facts into the session,
    /// re-renders the events it held, makes their deliveries and marks it done; returns the
    /// targets that got deliveries. On `RetryAt` it waits again. A result whose lease has
    /// passed on is dropped: `None`.
    async fn finish_job(&self, result: JobResult) -> Result<Option<Vec<String>>, StoreError>;

    /// When the next pending job of one of `kinds` falls due (unix ms); a leased one falls
    /// due when its lease ends.
    async fn next_job_due(&self, kinds: &[JobKind]) -> Result<Option<i64>, StoreError>;

    /// Records an attempt and moves its delivery on; releases the lease. If the lease has
    /// since passed to another worker (it expired), the result is dropped: that worker's
    /// attempt decides.
    async fn finish_attempt(&self, record: AttemptRecord) -> Result<(), StoreError>;

    /// When the next pending, unleased delivery of `target` falls due (unix ms).
    async fn next_due_at(&self, target: &str) -> Result<Option<i64>, StoreError>;

    /// Deliveries, newest first.
    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryInfo>, StoreError>;

    /// Puts a dead delivery back in the queue with a fresh attempt budget.
    async fn retry_delivery(&self, id: &str) -> Result<RetryOutcome, StoreError>;

    /// Puts every dead delivery (of `target`, when given) back in the queue, in one
    /// transaction, each with a fresh attempt budget.
    async fn retry_dead(&self, target: Option<String>) -> Result<Retried, StoreError>;

    /// Creates new pending deliveries of a stored event (same event id) to `targets`.
    /// `None` if there is no such event.
    async fn replay(
        &self,
        event_id: &str,
        targets: Vec<String>,
    ) -> Result<Option<Vec<DeliveryId>>, StoreError>;

    /// Events, newest first.
    async fn events(&self, filter: EventFilter) -> Result<Vec<StoredEvent>, StoreError>;

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError>;

    async fn session(
        &self,
        vendor: &str,
        session_id: &str,
    ) -> Result<Option<SessionView>, StoreError>;

    /// Sessions, newest first by when first seen.
    async fn sessions(&self, filter: SessionFilter) -> Result<Vec<SessionListing>, StoreError>;

    /// Everything stored about one session of `vendor`: its events (those from `sources`,
    /// the vendor's sources), their receipts and deliveries with attempts.
    async fn timeline(
        &self,
        vendor: &str,
        sources: Vec<String>,
        session_id: &str,
    ) -> Result<Timeline, StoreError>;

    /// Pending and dead deliveries per target, read off the write path (gauges are read on
    /// every scrape and must never hold up ingest).
    async fn delivery_counts(&self) -> Result<Vec<TargetCounts>, StoreError>;

    /// Deletes what is older than `cutoff` and no longer needed (`[retention]`): events
    /// (with their raw bodies) and their deliveries and attempts once none of the event's
    /// deliveries is pending, and receipts no kept event refers to. Pending work is never
    /// pruned. Session records are kept. Works in small batches, each its own transaction,
    /// so ingest never waits long behind it.
    async fn prune(&self, cutoff: Timestamp) -> Result<Pruned, StoreError>;

    /// Takes `source`'s recovery lease for `lease`: its token and the progress stored, or
    /// `None` while another run (another replica) holds it.
    async fn claim_recovery(
        &self,
        source: &str,
        lease: Duration,
    ) -> Result<Option<RecoveryClaim>, StoreError>;

    /// Stores `source`'s recovery progress and extends the lease to `lease` from now (zero
    /// releases it); false, storing nothing, if the lease has passed to another run.
    async fn save_recovery(
        &self,
        source: &str,
        token: i64,
        progress: RecoveryProgress,
        lease: Duration,
    ) -> Result<bool, StoreError>;

    /// Queues a delivery to `backfill.target` of every stored event received in the window
    /// that its filters match, that the target has neither delivered nor pending, and that
    /// no job holds; in one transaction. Returns how many (with `dry_run`, would be).
    async fn backfill(&self, backfill: Backfill) -> Result<usize, StoreError>;

    /// Succeeds while the store can serve requests.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Finishes queued work and releases the store. Later calls fail with `Closed`.
    async fn close(&self);
}

/// Opens the store a configuration names, running migrations.
pub async fn open(
    config: &StorageConfig,
    clock: Clock,
) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    match config {
        StorageConfig::Sqlite {
            path,
            synchronous,
            wal_size_mib,
        } => {
            let store = sqlite::SqliteStore::open_with_wal(path, *synchronous, *wal_size_mib)
                .await?
                .with_clock(clock);
            Ok(std::sync::Arc::new(store))
        }
        StorageConfig::Postgres {
            url,
            pool_size,
            schema,
        } => {
            let store =
                postgres::PgStore::open_in(url.expose_secret(), *pool_size, schema.as_deref())
                    .await?
                    .with_clock(clock);
            Ok(std::sync::Arc::new(store))
        }
    }
}

/// An attempt's error as both stores keep it: a receiver's answer is quoted in it whatever
/// bytes it held, and PostgreSQL's text refuses NUL, so a NUL becomes U+FFFD (on either
/// store, so that both show the same).
pub(crate) fn error_text(error: &str) -> std::borrow::Cow<'_, str> {
    if error.contains('\0') {
        error.replace('\0', "\u{FFFD}").into()
    } else {
        error.into()
    }
}

/// A fresh lease token for a claim.
pub(crate) fn lease_token() -> i64 {
    rand::random::<i64>()
}
