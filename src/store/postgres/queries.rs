//! Every other operation of the store, each one statement.

use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::Row;

use super::accept::accept_on;
use super::listing::receipt_row;
use super::{PgStore, backend, connection_lost, prepared};
use crate::event::{EventId, JobKind, Timestamp};
use crate::store::{
    AttemptRecord, Backfill, COUNT_DELIVERIES, ClaimedDelivery, ClaimedJob, DeliveryFilter,
    DeliveryId, DeliveryInfo, DeliveryStatus, EVENT_COLUMNS, EventFilter, Handoff, Inbound,
    IngestOutcome, JobResult, PRUNE_BATCH, Pruned, RECEIPT_COLUMNS, Receipt, ReceiptFilter,
    ReceiptInfo, RecoveryClaim, RecoveryProgress, Retried, RetryOutcome, SessionFilter,
    SessionListing, SessionView, Store, StoreError, StoredEvent, TargetCounts, Timeline,
    fold_counts, lease_token,
};

pub(super) fn delivery_row(r: &Row) -> DeliveryInfo {
    let status: String = r.get("status");
    let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
    DeliveryInfo {
        seq: r.get("seq"),
        id: DeliveryId::from_stored(r.get("id")),
        event_id: EventId::from_stored(r.get("event_id")),
        target: r.get("target"),
        status,
        attempts: r.get::<_, i32>("attempts") as u32,
        next_attempt_at: (status == DeliveryStatus::Pending)
            .then(|| Timestamp::from_unix_millis(r.get("next_attempt_at"))),
        last_status: r.get::<_, Option<i32>>("last_status").map(|s| s as u16),
        last_error: r.get("last_error"),
        created_at: Timestamp::from_unix_millis(r.get("created_at")),
        updated_at: Timestamp::from_unix_millis(r.get("updated_at")),
        attempt_log: None,
    }
}

pub(super) fn stored_event(r: &Row) -> StoredEvent {
    StoredEvent {
        seq: r.get("seq"),
        id: EventId::from_stored(r.get("id")),
        source: r.get("source"),
        session_id: r.get("session_id"),
        event_type: r.get("type"),
        body: r.get("body"),
        raw: r.get::<_, Vec<u8>>("raw").into(),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn accept_handing_over(
        &self,
        accept: Inbound,
        handoff: Handoff,
    ) -> Result<IngestOutcome, StoreError> {
        on_connection!(self, |client| {
            accept_on(&client, &accept, &handoff, &self.clock, &self.session_reads).await
        })
    }

    async fn receipts(&self, filter: ReceiptFilter) -> Result<Vec<ReceiptInfo>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {RECEIPT_COLUMNS} FROM receipts
                     WHERE ($1::TEXT IS NULL OR source = $1) AND ($2::TEXT IS NULL OR outcome = $2)
                       AND ($3::BIGINT IS NULL OR seq < $3)
                     ORDER BY seq DESC LIMIT $4"
                ),
                &[
                    &filter.source,
                    &filter.outcome,
                    &filter.before,
                    &(filter.limit as i64),
                ],
            )
            .await?;
        Ok(rows.iter().map(receipt_row).collect())
    }

    async fn record_receipt(&self, receipt: Receipt) -> Result<(), StoreError> {
        self.execute(
                "INSERT INTO receipts (source, outcome, vendor_event_type, message_id, received_at, raw, repeats)
                 VALUES ($1, $6, $2, $3, $4, $5, $7)",
                &[
                    &receipt.source,
                    &receipt.vendor_event_type,
                    &receipt.message_id,
                    &receipt.received_at.to_string(),
                    &&receipt.raw[..],
                    &receipt.outcome.as_str(),
                    &receipt.repeats,
                ],
            ).await?;
        Ok(())
    }

    async fn claim_due(
        &self,
        target: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let client = self.client().await?;
        let now = self.clock.now_ms();
        let token = lease_token();
        let leased = client
            .query(
                &prepared(
                    &client,
                    "UPDATE deliveries d SET lease_until = $1, lease_token = $5
                 FROM (SELECT seq FROM deliveries
                       WHERE target = $2 AND status = 'pending' AND next_attempt_at <= $3
                         AND (lease_until IS NULL OR lease_until <= $3)
                       ORDER BY next_attempt_at LIMIT $4
                       FOR UPDATE SKIP LOCKED) due
                 WHERE d.seq = due.seq
                 RETURNING d.id, d.event_id, d.attempts",
                )
                .await?,
                &[
                    &(now + lease.as_millis() as i64),
                    &target,
                    &now,
                    &(limit as i64),
                    &token,
                ],
            )
            .await
            .map_err(backend)?;
        if leased.is_empty() {
            return Ok(Vec::new());
        }
        let event_ids: Vec<String> = leased.iter().map(|r| r.get(1)).collect();
        let bodies = client
            .query(
                &prepared(
                    &client,
                    "SELECT e.id, e.body, r.raw, e.occurred_at, e.received_at FROM events e
                 JOIN receipts r ON r.seq = e.receipt_seq WHERE e.id = ANY($1)",
                )
                .await?,
                &[&event_ids],
            )
            .await
            .map_err(backend)?;
        let mut claimed = Vec::with_capacity(leased.len());
        for row in leased {
            let event_id: String = row.get(1);
            let Some(event) = bodies.iter().find(|b| b.get::<_, &str>(0) == event_id) else {
                continue;
            };
            claimed.push(ClaimedDelivery {
                id: DeliveryId::from_stored(row.get(0)),
                attempts: row.get::<_, i32>(2) as u32,
                lease_token: token,
                occurred_at: Timestamp::parse(event.get(3)),
                received_at: Timestamp::parse(event.get(4)),
                body: event.get(1),
                raw: event.get::<_, Vec<u8>>(2).into(),
                event_id: EventId::from_stored(event_id),
            });
        }
        Ok(claimed)
    }

    async fn claim_jobs(
        &self,
        kind: JobKind,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        self.claim_jobs_now(kind, limit, lease).await
    }

    async fn renew_job(
        &self,
        id: &str,
        lease_token: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.renew_job_now(id, lease_token, lease).await
    }

    async fn finish_job(&self, result: JobResult) -> Result<Option<Vec<String>>, StoreError> {
        self.finish_job_now(result).await
    }

    async fn next_job_due(&self, kinds: &[JobKind]) -> Result<Option<i64>, StoreError> {
        self.next_job_due_now(kinds).await
    }

    async fn finish_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        self.results.record(record).await
    }

    async fn next_due_at(&self, target: &str) -> Result<Option<i64>, StoreError> {
        let row = self.query_one(
                "SELECT MIN(next_attempt_at) FROM deliveries
                 WHERE target = $1 AND status = 'pending' AND (lease_until IS NULL OR lease_until <= $2)",
                &[&target, &self.clock.now_ms()],
            ).await?;
        Ok(row.get(0))
    }

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryInfo>, StoreError> {
        self.list_deliveries(&filter).await
    }

    async fn retry_dead(&self, target: Option<String>) -> Result<Retried, StoreError> {
        self.requeue_dead(target.as_deref()).await
    }

    async fn sessions(&self, filter: SessionFilter) -> Result<Vec<SessionListing>, StoreError> {
        self.list_sessions(&filter).await
    }

    async fn timeline(
        &self,
        vendor: &str,
        sources: Vec<String>,
        session_id: &str,
    ) -> Result<Timeline, StoreError> {
        self.session_timeline(vendor, &sources, session_id).await
    }

    async fn retry_delivery(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        let client = self.client().await?;
        let requeued = client
            .query_opt(
                &prepared(
                    &client,
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2,
                     lease_until = NULL, lease_token = NULL, updated_at = $2
                 WHERE id = $1 AND status = 'dead' RETURNING target",
                )
                .await?,
                &[&id, &self.clock.now_ms()],
            )
            .await
            .map_err(backend)?;
        if let Some(row) = requeued {
            return Ok(RetryOutcome::Requeued { target: row.get(0) });
        }
        let status = client
            .query_opt(
                &prepared(&client, "SELECT status FROM deliveries WHERE id = $1").await?,
                &[&id],
            )
            .await
            .map_err(backend)?;
        Ok(match status.and_then(|r| DeliveryStatus::parse(r.get(0))) {
            Some(status) => RetryOutcome::NotDead(status),
            None => RetryOutcome::NotFound,
        })
    }

    async fn replay(
        &self,
        event_id: &str,
        targets: Vec<String>,
    ) -> Result<Option<Vec<DeliveryId>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let Some(event) = tx
            .query_opt(
                &prepared(&tx, "SELECT seq FROM events WHERE id = $1").await?,
                &[&event_id],
            )
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let event_seq: i64 = event.get(0);
        let now = self.clock.now_ms();
        let mut created = Vec::with_capacity(targets.len());
        for target in &targets {
            let id = DeliveryId::generate();
            tx.execute(
                &prepared(&tx, "INSERT INTO deliveries (id, event_id, event_seq, target, status, attempts, next_attempt_at, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $5)").await?,
                &[&id.as_str(), &event_id, &event_seq, target, &now],
            )
            .await
            .map_err(backend)?;
            created.push(id);
        }
        tx.commit().await.map_err(backend)?;
        Ok(Some(created))
    }

    async fn events(&self, filter: EventFilter) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = self.query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events e JOIN receipts r ON r.seq = e.receipt_seq
                     WHERE ($1::TEXT IS NULL OR e.source = $1) AND ($2::TEXT IS NULL OR e.session_id = $2)
                       AND ($3::TEXT IS NULL OR e.type = $3) AND ($4::BIGINT IS NULL OR e.seq < $4)
                     ORDER BY e.seq DESC LIMIT $5"
                ),
                &[
                    &filter.source,
                    &filter.session_id,
                    &filter.event_type,
                    &filter.before,
                    &(filter.limit as i64),
                ],
            ).await?;
        Ok(rows.iter().map(stored_event).collect())
    }

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let row = self.query_opt(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events e JOIN receipts r ON r.seq = e.receipt_seq WHERE e.id = $1"
                ),
                &[&id],
            ).await?;
        Ok(row.as_ref().map(stored_event))
    }

    async fn session(
        &self,
        vendor: &str,
        session_id: &str,
    ) -> Result<Option<SessionView>, StoreError> {
        self.session_by_key(vendor, session_id).await
    }

    async fn delivery_counts(&self) -> Result<Vec<TargetCounts>, StoreError> {
        let rows = self.query(COUNT_DELIVERIES, &[]).await?;
        Ok(fold_counts(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as u64)),
        ))
    }

    async fn prune(&self, cutoff: Timestamp) -> Result<Pruned, StoreError> {
        let cutoff = cutoff.to_string();
        let mut pruned = Pruned::default();
        // An event goes with all its deliveries and their attempts, in one statement (the
        // foreign keys hold at its end), once none of its deliveries is pending.
        loop {
            let row = self
                .query_one(
                    "WITH doomed AS (
                         SELECT e.seq, e.id FROM events e
                         WHERE e.received_at < $1 AND NOT EXISTS (
                             SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status = 'pending')
                           -- events a pending job holds have no deliveries yet
                           AND NOT EXISTS (
                             SELECT 1 FROM jobs j WHERE j.status = 'pending'
                               AND j.source = e.source AND j.session_id = e.session_id)
                         ORDER BY e.seq LIMIT $2),
                     gone_deliveries AS (
                         DELETE FROM deliveries d USING doomed WHERE d.event_id = doomed.id RETURNING d.id),
                     gone_attempts AS (
                         DELETE FROM attempts a USING gone_deliveries g WHERE a.delivery_id = g.id RETURNING 1),
                     gone_events AS (
                         DELETE FROM events e USING doomed WHERE e.seq = doomed.seq RETURNING 1)
                     SELECT (SELECT count(*) FROM gone_events), (SELECT count(*) FROM gone_deliveries),
                            (SELECT count(*) FROM gone_attempts)",
                    &[&cutoff, &PRUNE_BATCH],
                )
                .await?;
            let events = row.get::<_, i64>(0) as u64;
            pruned.events += events;
            pruned.deliveries += row.get::<_, i64>(1) as u64;
            pruned.attempts += row.get::<_, i64>(2) as u64;
            if events < PRUNE_BATCH as u64 {
                break;
            }
        }
        loop {
            let gone = self
                .execute(
                    "DELETE FROM receipts WHERE seq IN (
                         SELECT r.seq FROM receipts r
                         WHERE r.received_at < $1
                           AND NOT EXISTS (SELECT 1 FROM events e WHERE e.receipt_seq = r.seq)
                         ORDER BY r.seq LIMIT $2)",
                    &[&cutoff, &PRUNE_BATCH],
                )
                .await?;
            pruned.receipts += gone;
            if gone < PRUNE_BATCH as u64 {
                break;
            }
        }
        let cutoff_ms = Timestamp::parse(&cutoff).map_or(0, Timestamp::unix_millis);
        loop {
            // A session's archived object goes with its last recording job.
            let rows = self
                .query(
                    "WITH gone AS (
                         DELETE FROM jobs WHERE seq IN (
                             SELECT seq FROM jobs WHERE status = 'done' AND updated_at < $1
                             ORDER BY seq LIMIT $2)
                         RETURNING kind, vendor, session_id)
                     SELECT DISTINCT g.kind, g.vendor, g.session_id,
                         NOT EXISTS (SELECT 1 FROM jobs k WHERE k.kind = 'recording'
                             AND k.vendor = g.vendor AND k.session_id = g.session_id
                             AND (k.status = 'pending' OR k.updated_at >= $1)),
                         (SELECT count(*) FROM gone)
                     FROM gone g",
                    &[&cutoff_ms, &PRUNE_BATCH],
                )
                .await?;
            let gone = rows.first().map_or(0, |r| r.get::<_, i64>(4) as u64);
            for row in &rows {
                if row.get::<_, &str>(0) == "recording" && row.get::<_, bool>(3) {
                    pruned.recordings.push((row.get(1), row.get(2)));
                }
            }
            pruned.jobs += gone;
            if gone < PRUNE_BATCH as u64 {
                break;
            }
        }
        Ok(pruned)
    }

    async fn claim_recovery(
        &self,
        source: &str,
        lease: Duration,
    ) -> Result<Option<RecoveryClaim>, StoreError> {
        self.claim_recovery_row(source, lease).await
    }

    async fn save_recovery(
        &self,
        source: &str,
        token: i64,
        progress: RecoveryProgress,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.save_recovery_row(source, token, progress, lease).await
    }

    async fn backfill(&self, backfill: Backfill) -> Result<usize, StoreError> {
        self.backfill_target(backfill).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .simple_query("SELECT 1")
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close();
    }
}
