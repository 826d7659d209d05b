//! The operator's reads (session search, timelines, lists) and the bulk retry.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::queries::{delivery_row, stored_event};
use super::{PgStore, backend, prepared};
use crate::event::{EventId, Timestamp};
use crate::sessions::SessionRecord;
use crate::store::listing::{
    Arg, Built, SESSION_COLUMNS, TIMELINE_EVENTS, deliveries_query, sessions_query,
};
use crate::store::schema::Dialect;
use crate::store::{
    AttemptInfo, DELIVERY_COLUMNS, DeliveryFilter, DeliveryInfo, EVENT_COLUMNS, RECEIPT_COLUMNS,
    ReceiptInfo, Retried, SessionFilter, SessionListing, SessionView, StoreError, Timeline,
};

fn args(built: &Built) -> Vec<Box<dyn ToSql + Sync + Send>> {
    built
        .args
        .iter()
        .map(|a| -> Box<dyn ToSql + Sync + Send> {
            match a {
                Arg::Text(s) => Box::new(s.clone()),
                Arg::Int(n) => Box::new(*n),
            }
        })
        .collect()
}

fn refs(args: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// A session row in [`SESSION_COLUMNS`]' order.
pub(super) fn session_row(r: &Row) -> Result<SessionListing, StoreError> {
    let session_id: &str = r.get(2);
    let record: SessionRecord = serde_json::from_str(r.get(3)).map_err(backend)?;
    Ok(SessionListing {
        seq: r.get(0),
        view: SessionView {
            vendor: r.get(1),
            session: record.session(session_id).map_err(backend)?,
            finalized_event_id: r.get::<_, Option<String>>(4).map(EventId::from_stored),
            first_seen_at: Timestamp::from_unix_millis(r.get(5)),
            updated_at: Timestamp::from_unix_millis(r.get(6)),
        },
    })
}

pub(super) fn receipt_row(r: &Row) -> ReceiptInfo {
    ReceiptInfo {
        seq: r.get(0),
        source: r.get(1),
        outcome: r.get(2),
        vendor_event_type: r.get(3),
        message_id: r.get(4),
        received_at: r.get(5),
        raw: actix_web::web::Bytes::from(r.get::<_, Vec<u8>>(6)),
    }
}

impl PgStore {
    pub(super) async fn session_by_key(
        &self,
        vendor: &str,
        session_id: &str,
    ) -> Result<Option<SessionView>, StoreError> {
        let row = self
            .query_opt(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE vendor = $1 AND session_id = $2"
                ),
                &[&vendor, &session_id],
            )
            .await?;
        Ok(row.as_ref().map(session_row).transpose()?.map(|l| l.view))
    }

    pub(super) async fn list_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionListing>, StoreError> {
        let built = sessions_query(Dialect::Postgres, filter);
        let args = args(&built);
        let rows = self.query(&built.sql, &refs(&args)).await?;
        rows.iter().map(session_row).collect()
    }

    pub(super) async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryInfo>, StoreError> {
        let built = deliveries_query(Dialect::Postgres, DELIVERY_COLUMNS, filter);
        let args = args(&built);
        let rows = self.query(&built.sql, &refs(&args)).await?;
        let mut found: Vec<DeliveryInfo> = rows.iter().map(delivery_row).collect();
        if filter.with_attempts {
            self.attach_attempts(&mut found).await?;
        }
        Ok(found)
    }

    /// Fills each delivery's attempt log, in one query (`attempts_by_delivery`).
    async fn attach_attempts(&self, deliveries: &mut [DeliveryInfo]) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
        let attempts = self
            .query(
                "SELECT delivery_id, attempt, started_at, duration_ms, status_code, error
                 FROM attempts WHERE delivery_id = ANY($1) ORDER BY seq",
                &[&ids],
            )
            .await?;
        for delivery in deliveries.iter_mut() {
            delivery.attempt_log = Some(
                attempts
                    .iter()
                    .filter(|a| a.get::<_, &str>(0) == delivery.id.as_str())
                    .map(|a| AttemptInfo {
                        attempt: a.get::<_, i32>(1) as u32,
                        started_at: Timestamp::from_unix_millis(a.get(2)),
                        duration_ms: a.get(3),
                        status_code: a.get::<_, Option<i32>>(4).map(|s| s as u16),
                        error: a.get(5),
                    })
                    .collect(),
            );
        }
        Ok(())
    }

    /// Every event of the session from `sources` (`events_by_session`, then the session's
    /// sequence), their receipts (by key) and deliveries (`deliveries_by_event`), each with
    /// its attempts.
    pub(super) async fn session_timeline(
        &self,
        vendor: &str,
        sources: &[String],
        session_id: &str,
    ) -> Result<Timeline, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS}, e.receipt_seq FROM events e
                     JOIN receipts r ON r.seq = e.receipt_seq
                     WHERE e.source = ANY($1) AND e.session_id = $2
                       AND e.session_seq = (SELECT seq FROM sessions
                                            WHERE vendor = $4 AND session_id = $2)
                     ORDER BY e.seq LIMIT $3"
                ),
                &[&sources, &session_id, &(TIMELINE_EVENTS as i64), &vendor],
            )
            .await?;
        let events: Vec<_> = rows.iter().map(stored_event).collect();
        let mut receipt_seqs: Vec<i64> = rows.iter().map(|r| r.get("receipt_seq")).collect();
        receipt_seqs.sort_unstable();
        receipt_seqs.dedup();
        let event_ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        // The requests that made the events, and the duplicates that repeated them.
        let receipts = self
            .query(
                &format!(
                    "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE seq = ANY($1)
                     UNION SELECT {RECEIPT_COLUMNS} FROM receipts WHERE repeats = ANY($2)
                     ORDER BY 1"
                ),
                &[&receipt_seqs, &event_ids],
            )
            .await?
            .iter()
            .map(receipt_row)
            .collect();
        let mut deliveries: Vec<DeliveryInfo> = self
            .query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE event_id = ANY($1) ORDER BY seq"
                ),
                &[&event_ids],
            )
            .await?
            .iter()
            .map(delivery_row)
            .collect();
        self.attach_attempts(&mut deliveries).await?;
        Ok(Timeline {
            events,
            receipts,
            deliveries,
        })
    }

    pub(super) async fn requeue_dead(&self, target: Option<&str>) -> Result<Retried, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prepared(
                    &client,
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1,
                         lease_until = NULL, lease_token = NULL, updated_at = $1
                     WHERE status = 'dead' AND ($2::TEXT IS NULL OR target = $2)
                     RETURNING target",
                )
                .await?,
                &[&self.clock.now_ms(), &target],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
    }
}
