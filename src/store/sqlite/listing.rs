//! The operator's reads (session search, timelines, lists) on the reader connection, so that
//! a console page never queues behind, or holds up, the writer; and the bulk retry.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::SqliteStore;
use super::queries::{attempt_log, delivery_row, json_error, stored_event};
use crate::event::{EventId, Timestamp};
use crate::sessions::SessionRecord;
use crate::store::listing::{Arg, Built, TIMELINE_EVENTS, deliveries_query, sessions_query};
use crate::store::schema::Dialect;
use crate::store::{
    DELIVERY_COLUMNS, DeliveryFilter, DeliveryInfo, EVENT_COLUMNS, RECEIPT_COLUMNS, ReceiptInfo,
    Retried, SessionFilter, SessionListing, SessionView, StoreError, Timeline,
};

impl SqliteStore {
    /// Runs `f` on the reader connection (committed data, never the writer's queue).
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?
        .map_err(|e| StoreError::Backend(Box::new(e)))
    }
}

fn args(built: &Built) -> impl Iterator<Item = SqlValue> + '_ {
    built.args.iter().map(|a| match a {
        Arg::Text(s) => SqlValue::Text(s.clone()),
        Arg::Int(n) => SqlValue::Integer(*n),
    })
}

/// A session row in [`SESSION_COLUMNS`]' order.
pub(super) fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionListing> {
    let session_id: String = r.get(2)?;
    let record: String = r.get(3)?;
    let record: SessionRecord = serde_json::from_str(&record).map_err(json_error)?;
    Ok(SessionListing {
        seq: r.get(0)?,
        view: SessionView {
            vendor: r.get(1)?,
            session: record.session(&session_id).map_err(json_error)?,
            finalized_event_id: r.get::<_, Option<String>>(4)?.map(EventId::from_stored),
            first_seen_at: Timestamp::from_unix_millis(r.get(5)?),
            updated_at: Timestamp::from_unix_millis(r.get(6)?),
        },
    })
}

pub(super) fn sessions_in(
    conn: &Connection,
    filter: &SessionFilter,
) -> rusqlite::Result<Vec<SessionListing>> {
    let built = sessions_query(Dialect::Sqlite, filter);
    conn.prepare_cached(&built.sql)?
        .query_map(params_from_iter(args(&built)), session_row)?
        .collect()
}

pub(super) fn deliveries_in(
    conn: &Connection,
    filter: &DeliveryFilter,
) -> rusqlite::Result<Vec<DeliveryInfo>> {
    let built = deliveries_query(Dialect::Sqlite, DELIVERY_COLUMNS, filter);
    let mut found: Vec<DeliveryInfo> = conn
        .prepare_cached(&built.sql)?
        .query_map(params_from_iter(args(&built)), delivery_row)?
        .collect::<rusqlite::Result<_>>()?;
    if filter.with_attempts {
        for delivery in &mut found {
            delivery.attempt_log = Some(attempt_log(conn, delivery.id.as_str())?);
        }
    }
    Ok(found)
}

pub(super) fn receipt_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReceiptInfo> {
    Ok(ReceiptInfo {
        seq: r.get(0)?,
        source: r.get(1)?,
        outcome: r.get(2)?,
        vendor_event_type: r.get(3)?,
        message_id: r.get(4)?,
        received_at: r.get(5)?,
        raw: actix_web::web::Bytes::from(r.get::<_, Vec<u8>>(6)?),
    })
}

/// Every event of the session from `sources` (by `events_of_session`), their receipts (by
/// key) and deliveries (by `deliveries_of_event`), each with its attempts.
pub(super) fn timeline_in(
    conn: &Connection,
    vendor: &str,
    sources: &[String],
    session_id: &str,
) -> rusqlite::Result<Timeline> {
    let mut timeline = Timeline::default();
    let session: Option<i64> = conn
        .prepare_cached("SELECT seq FROM sessions WHERE vendor = ?1 AND session_id = ?2")?
        .query_row([vendor, session_id], |r| r.get(0))
        .optional()?;
    let Some(session) = session else {
        return Ok(timeline);
    };
    let mut event_stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS}, e.receipt_seq FROM events e JOIN receipts r ON r.seq = e.receipt_seq
         WHERE e.session_seq = ?1 AND e.source = ?2 ORDER BY e.seq LIMIT ?3"
    ))?;
    let mut receipt_seqs = Vec::new();
    for source in sources {
        let rows = event_stmt.query_map(
            rusqlite::params![session, source, TIMELINE_EVENTS as i64],
            |r| Ok((stored_event(r)?, r.get::<_, i64>(7)?)),
        )?;
        for row in rows {
            let (event, receipt_seq) = row?;
            timeline.events.push(event);
            receipt_seqs.push(receipt_seq);
        }
    }
    timeline.events.sort_by_key(|e| e.seq);
    timeline.events.truncate(TIMELINE_EVENTS);
    receipt_seqs.sort_unstable();
    receipt_seqs.dedup();
    let mut receipt_stmt = conn.prepare_cached(&format!(
        "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE seq = ?1"
    ))?;
    for seq in receipt_seqs {
        timeline
            .receipts
            .push(receipt_stmt.query_row([seq], receipt_row)?);
    }
    // The duplicates that repeated the session's events (by `receipts_repeating`).
    let mut repeats_stmt = conn.prepare_cached(&format!(
        "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE repeats = ?1"
    ))?;
    for event in &timeline.events {
        for receipt in repeats_stmt.query_map([event.id.as_str()], receipt_row)? {
            timeline.receipts.push(receipt?);
        }
    }
    timeline.receipts.sort_by_key(|r| r.seq);
    let mut delivery_stmt = conn.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE event_seq = ?1 ORDER BY seq"
    ))?;
    for event in &timeline.events {
        for delivery in delivery_stmt.query_map([event.seq], delivery_row)? {
            let mut delivery = delivery?;
            delivery.attempt_log = Some(attempt_log(conn, delivery.id.as_str())?);
            timeline.deliveries.push(delivery);
        }
    }
    timeline.deliveries.sort_by_key(|d| d.seq);
    Ok(timeline)
}

/// Re-queues every dead delivery (of `target`), in the writer's transaction.
pub(super) fn retry_dead_in(
    conn: &Connection,
    target: Option<&str>,
    now: i64,
) -> rusqlite::Result<Retried> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?1,
             lease_until = NULL, lease_token = NULL, updated_at = ?1
         WHERE status = 'dead' AND (?2 IS NULL OR target = ?2)
         RETURNING target",
    )?;
    stmt.query_map(rusqlite::params![now, target], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Retried>>()
}
