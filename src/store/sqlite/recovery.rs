//! Recovery progress and leases, and backfills, on SQLite (see [`crate::store::Store`]).

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::store::{
    Backfill, DeliveryId, RecoveryClaim, RecoveryProgress, StoreError, lease_token,
};

impl SqliteStore {
    pub(super) async fn claim_recovery_row(
        &self,
        source: &str,
        lease: Duration,
    ) -> Result<Option<RecoveryClaim>, StoreError> {
        let source = source.to_owned();
        let now = self.clock.now_ms();
        let until = now + lease.as_millis() as i64;
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT INTO recoveries (source, updated_at) VALUES (?1, ?2)
                 ON CONFLICT (source) DO NOTHING",
            )?
            .execute(params![source, now])?;
            let token = lease_token();
            conn.prepare_cached(
                "UPDATE recoveries SET lease_until = ?3, lease_token = ?4, updated_at = ?2
                 WHERE source = ?1 AND (lease_until IS NULL OR lease_until <= ?2)
                 RETURNING done_until, window_since, window_until, cursor",
            )?
            .query_row(params![source, now, until, token], |r| {
                let window = match (r.get(1)?, r.get(2)?) {
                    (Some(since), Some(until)) => Some((since, until)),
                    _ => None,
                };
                Ok(RecoveryClaim {
                    token,
                    progress: RecoveryProgress {
                        done_until: r.get(0)?,
                        window,
                        cursor: r.get(3)?,
                    },
                })
            })
            .optional()
        })
        .await
    }

    pub(super) async fn save_recovery_row(
        &self,
        source: &str,
        token: i64,
        progress: RecoveryProgress,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let source = source.to_owned();
        let now = self.clock.now_ms();
        let (lease_until, lease_token) = if lease.is_zero() {
            (None, None)
        } else {
            (Some(now + lease.as_millis() as i64), Some(token))
        };
        self.call(move |conn| {
            let saved = conn
                .prepare_cached(
                    "UPDATE recoveries SET done_until = ?3, window_since = ?4, window_until = ?5,
                         cursor = ?6, lease_until = ?7, lease_token = ?8, updated_at = ?9
                     WHERE source = ?1 AND lease_token = ?2",
                )?
                .execute(params![
                    source,
                    token,
                    progress.done_until,
                    progress.window.map(|w| w.0),
                    progress.window.map(|w| w.1),
                    progress.cursor,
                    lease_until,
                    lease_token,
                    now
                ])?;
            Ok(saved == 1)
        })
        .await
    }

    pub(super) async fn backfill_target(&self, backfill: Backfill) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        // The writer runs this in its transaction, as one commit.
        self.call(move |tx| {
            // Held events get their deliveries when their job ends: never queue them here.
            let candidates: Vec<(String, i64, String, String)> = tx
                .prepare_cached(
                    "SELECT e.id, e.seq, e.source, e.type FROM events e
                     WHERE e.received_at >= ?1 AND e.received_at < ?2
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq
                           AND d.target = ?3 AND d.status IN ('pending', 'delivered'))
                       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.status = 'pending'
                           AND j.source = e.source AND j.session_id = e.session_id
                           AND instr(j.holds, e.id) > 0)
                     ORDER BY e.seq",
                )?
                .query_map(
                    params![
                        backfill.since.to_string(),
                        backfill.until.to_string(),
                        backfill.target
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?
                .collect::<rusqlite::Result<_>>()?;
            let chosen: Vec<(String, i64)> = candidates
                .into_iter()
                .filter(|(_, _, source, event_type)| backfill.takes(source, event_type))
                .map(|(id, seq, _, _)| (id, seq))
                .collect();
            if !backfill.dry_run {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO deliveries (id, event_id, event_seq, target, status, attempts,
                         next_attempt_at, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6, ?6)",
                )?;
                for (i, (id, seq)) in chosen.iter().enumerate() {
                    let due = now + i as i64 * backfill.spacing_ms;
                    let delivery = DeliveryId::generate();
                    insert.execute(params![
                        delivery.as_str(),
                        id,
                        seq,
                        backfill.target,
                        due,
                        now
                    ])?;
                }
                drop(insert);
            }
            Ok(chosen.len())
        })
        .await
    }
}
