//! The durable store: what must hold across requests, restarts and replicas.
//!
//! The store decides duplicates (an event id already stored), writes every accepted event
//! together with its deliveries in one transaction, and hands out due deliveries under a
//! lease so that each is attempted by one worker at a time. It does not know HTTP, vendors
//! or targets' URLs; callers pass it finished rows.
//!
//! Implementations: [`sqlite`] (embedded, the default).

pub mod sqlite;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::web::Bytes;
use async_trait::async_trait;
use serde::Serialize;

use crate::config::StorageConfig;
use crate::event::{EventId, EventType, Timestamp};

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

/// An authenticated vendor request that produced canonical events, ready to commit.
#[derive(Debug, Clone)]
pub struct Accept {
    pub source: String,
    pub vendor_event_type: String,
    pub message_id: Option<String>,
    pub received_at: Timestamp,
    /// The vendor's body exactly as received.
    pub raw: Bytes,
    /// The first event's id is the request's duplicate key.
    pub events: Vec<NewEvent>,
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: EventType,
    pub session_id: String,
    pub occurred_at: Timestamp,
    /// The serialised canonical event, without `raw`.
    pub body: String,
    /// Targets to deliver to: one pending delivery each, created in the same transaction.
    pub targets: Vec<String>,
}

/// An authenticated request of a type no adapter maps; kept for audit.
#[derive(Debug, Clone)]
pub struct Ignored {
    pub source: String,
    pub vendor_event_type: Option<String>,
    pub message_id: Option<String>,
    pub received_at: Timestamp,
    pub raw: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored, with deliveries to these targets.
    Accepted { id: EventId, targets: Vec<String> },
    /// The same vendor event was stored before; nothing was written.
    Duplicate { id: EventId },
}

/// A due delivery handed to a worker under a lease.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: DeliveryId,
    pub event_id: EventId,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The serialised canonical event, without `raw`.
    pub body: String,
    pub raw: Bytes,
}

/// The result of one attempt, to be recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: DeliveryId,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// A delivery as the store knows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryInfo {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub target: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at_ms: Option<i64>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub target: Option<String>,
    pub event_id: Option<String>,
    pub limit: usize,
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
    /// Commits a recognised request: its events and their deliveries, or nothing if its
    /// first event id is already stored. Returns only once the commit is durable.
    async fn accept(&self, accept: Accept) -> Result<IngestOutcome, StoreError>;

    /// Keeps an ignored request for audit. Durable on return.
    async fn record_ignored(&self, ignored: Ignored) -> Result<(), StoreError>;

    /// Leases up to `limit` due pending deliveries of `target` for `lease`.
    async fn claim_due(
        &self,
        target: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Records an attempt and moves its delivery on; releases the lease.
    async fn finish_attempt(&self, record: AttemptRecord) -> Result<(), StoreError>;

    /// When the next pending, unleased delivery of `target` falls due (unix ms).
    async fn next_due_at(&self, target: &str) -> Result<Option<i64>, StoreError>;

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryInfo>, StoreError>;

    /// Succeeds while the store can serve requests.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Finishes queued work and releases the store. Later calls fail with `Closed`.
    async fn close(&self);
}

/// Opens the store a configuration names, running migrations.
pub async fn open(config: &StorageConfig) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    match config {
        StorageConfig::Sqlite { path, synchronous } => {
            let store = sqlite::SqliteStore::open(path, *synchronous).await?;
            Ok(std::sync::Arc::new(store))
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
