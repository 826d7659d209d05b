//! Retention on SQLite: old finished work deleted in batches, each its own transaction.

use std::collections::HashSet;
use std::sync::Arc;

use rusqlite::params;

use super::SqliteStore;
use crate::event::Timestamp;
use crate::store::{PRUNE_BATCH, Pruned, StoreError};

/// See [`crate::store::Store::prune`].
pub(super) async fn prune(store: &SqliteStore, cutoff: Timestamp) -> Result<Pruned, StoreError> {
    // No index leads from an event to its deliveries here (it would cost every ingest a
    // random-key insert), so each table is walked oldest first, in batches, and an
    // event's deliveries go as they age: the same age as the event, except replays.
    let cutoff_text = cutoff.to_string();
    let cutoff_ms = cutoff.unix_millis();
    let pending: Arc<HashSet<String>> = Arc::new(
        store
            .call(|conn| {
                let mut pending: HashSet<String> = conn
                    .prepare_cached(
                        "SELECT DISTINCT event_id FROM deliveries WHERE status = 'pending'",
                    )?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                // Events a pending job holds have no deliveries yet: they are pending work.
                let holds: Vec<String> = conn
                    .prepare_cached("SELECT holds FROM jobs WHERE status = 'pending'")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for held in holds {
                    let held: Vec<crate::store::Hold> =
                        serde_json::from_str(&held).map_err(super::queries::json_error)?;
                    pending.extend(held.into_iter().map(|h| h.event));
                }
                Ok(pending)
            })
            .await?,
    );
    let mut pruned = Pruned::default();
    // Receipts of events kept for their pending deliveries.
    let mut kept_receipts = HashSet::new();
    let mut after = 0i64;
    loop {
        let (pending, cutoff) = (pending.clone(), cutoff_text.clone());
        let batch = store
            .call(move |conn| {
                let rows: Vec<(i64, String, i64, String)> = conn
                    .prepare_cached(
                        "SELECT seq, id, receipt_seq, received_at FROM events
                         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    )?
                    .query_map(params![after, PRUNE_BATCH], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let mut batch = PruneBatch {
                    done: (rows.len() as i64) < PRUNE_BATCH,
                    ..PruneBatch::default()
                };
                let mut delete = conn.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
                for (seq, id, receipt, received_at) in rows {
                    if received_at >= cutoff {
                        batch.done = true;
                        break;
                    }
                    batch.last = seq;
                    if pending.contains(&id) {
                        batch.kept.push(receipt);
                    } else {
                        batch.deleted += delete.execute([seq])? as u64;
                    }
                }
                Ok(batch)
            })
            .await?;
        pruned.events += batch.deleted;
        kept_receipts.extend(batch.kept);
        after = batch.last.max(after);
        if batch.done {
            break;
        }
    }
    let mut after = 0i64;
    loop {
        let pending = pending.clone();
        let batch = store
            .call(move |conn| {
                let rows: Vec<(i64, String, String, String, i64)> = conn
                    .prepare_cached(
                        "SELECT seq, id, event_id, status, created_at FROM deliveries
                         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    )?
                    .query_map(params![after, PRUNE_BATCH], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let mut batch = PruneBatch {
                    done: (rows.len() as i64) < PRUNE_BATCH,
                    ..PruneBatch::default()
                };
                let mut delete = conn.prepare_cached("DELETE FROM deliveries WHERE seq = ?1")?;
                let mut attempts =
                    conn.prepare_cached("DELETE FROM attempts WHERE delivery_id = ?1")?;
                for (seq, id, event_id, status, created_at) in rows {
                    if created_at >= cutoff_ms {
                        batch.done = true;
                        break;
                    }
                    batch.last = seq;
                    if status != "pending" && !pending.contains(&event_id) {
                        batch.deleted += delete.execute([seq])? as u64;
                        batch.attempts += attempts.execute([&id])? as u64;
                    }
                }
                Ok(batch)
            })
            .await?;
        pruned.deliveries += batch.deleted;
        pruned.attempts += batch.attempts;
        after = batch.last.max(after);
        if batch.done {
            break;
        }
    }
    let kept_receipts = Arc::new(kept_receipts);
    let mut after = 0i64;
    loop {
        let (kept, cutoff) = (kept_receipts.clone(), cutoff_text.clone());
        let batch = store
            .call(move |conn| {
                let rows: Vec<(i64, String)> = conn
                    .prepare_cached(
                        "SELECT seq, received_at FROM receipts WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    )?
                    .query_map(params![after, PRUNE_BATCH], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut batch = PruneBatch {
                    done: (rows.len() as i64) < PRUNE_BATCH,
                    ..PruneBatch::default()
                };
                let mut delete = conn.prepare_cached("DELETE FROM receipts WHERE seq = ?1")?;
                for (seq, received_at) in rows {
                    if received_at >= cutoff {
                        batch.done = true;
                        break;
                    }
                    batch.last = seq;
                    if !kept.contains(&seq) {
                        batch.deleted += delete.execute([seq])? as u64;
                    }
                }
                Ok(batch)
            })
            .await?;
        pruned.receipts += batch.deleted;
        after = batch.last.max(after);
        if batch.done {
            break;
        }
    }
    loop {
        let (gone, recordings) = store
            .call(move |conn| {
                // A session's archived object goes with its last recording job.
                let recordings: Vec<(String, String)> = conn
                    .prepare_cached(
                        "SELECT DISTINCT j.vendor, j.session_id FROM jobs j
                         WHERE j.seq IN (SELECT seq FROM jobs WHERE status = 'done'
                                           AND updated_at < ?1 ORDER BY seq LIMIT ?2)
                           AND j.kind = 'recording'
                           AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.kind = 'recording'
                               AND k.vendor = j.vendor AND k.session_id = j.session_id
                               AND (k.status = 'pending' OR k.updated_at >= ?1))",
                    )?
                    .query_map(rusqlite::params![cutoff_ms, PRUNE_BATCH], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let gone = conn
                    .prepare_cached(
                        "DELETE FROM jobs WHERE seq IN (
                             SELECT seq FROM jobs WHERE status = 'done' AND updated_at < ?1
                             ORDER BY seq LIMIT ?2)",
                    )?
                    .execute(rusqlite::params![cutoff_ms, PRUNE_BATCH])?;
                Ok((gone as u64, recordings))
            })
            .await?;
        pruned.jobs += gone;
        pruned.recordings.extend(recordings);
        if gone < PRUNE_BATCH as u64 {
            break;
        }
    }
    Ok(pruned)
}

/// One batch of a pruning walk: the last row looked at, what went, what stays.
#[derive(Default)]
struct PruneBatch {
    last: i64,
    deleted: u64,
    attempts: u64,
    kept: Vec<i64>,
    done: bool,
}
