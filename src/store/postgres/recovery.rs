//! Recovery progress and leases, and backfills, on PostgreSQL (see [`crate::store::Store`]).

use std::time::Duration;

use super::{PgStore, backend, prepared};
use crate::store::{
    Backfill, DeliveryId, RecoveryClaim, RecoveryProgress, StoreError, lease_token,
};

impl PgStore {
    pub(super) async fn claim_recovery_row(
        &self,
        source: &str,
        lease: Duration,
    ) -> Result<Option<RecoveryClaim>, StoreError> {
        let client = self.client().await?;
        let now = self.clock.now_ms();
        let until = now + lease.as_millis() as i64;
        client
            .execute(
                &prepared(
                    &client,
                    "INSERT INTO recoveries (source, updated_at) VALUES ($1, $2)
                     ON CONFLICT (source) DO NOTHING",
                )
                .await?,
                &[&source, &now],
            )
            .await
            .map_err(backend)?;
        let token = lease_token();
        // One UPDATE decides between replicas: the row lock makes the second wait, and
        // then find the lease taken.
        let row = client
            .query_opt(
                &prepared(
                    &client,
                    "UPDATE recoveries SET lease_until = $3, lease_token = $4, updated_at = $2
                     WHERE source = $1 AND (lease_until IS NULL OR lease_until <= $2)
                     RETURNING done_until, window_since, window_until, cursor",
                )
                .await?,
                &[&source, &now, &until, &token],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| {
            let window = match (r.get(1), r.get(2)) {
                (Some(since), Some(until)) => Some((since, until)),
                _ => None,
            };
            RecoveryClaim {
                token,
                progress: RecoveryProgress {
                    done_until: r.get(0),
                    window,
                    cursor: r.get(3),
                },
            }
        }))
    }

    pub(super) async fn save_recovery_row(
        &self,
        source: &str,
        token: i64,
        progress: RecoveryProgress,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let now = self.clock.now_ms();
        let (lease_until, lease_token) = if lease.is_zero() {
            (None, None)
        } else {
            (Some(now + lease.as_millis() as i64), Some(token))
        };
        let saved = client
            .execute(
                &prepared(
                    &client,
                    "UPDATE recoveries SET done_until = $3, window_since = $4, window_until = $5,
                         cursor = $6, lease_until = $7, lease_token = $8, updated_at = $9
                     WHERE source = $1 AND lease_token = $2",
                )
                .await?,
                &[
                    &source,
                    &token,
                    &progress.done_until,
                    &progress.window.map(|w| w.0),
                    &progress.window.map(|w| w.1),
                    &progress.cursor,
                    &lease_until,
                    &lease_token,
                    &now,
                ],
            )
            .await
            .map_err(backend)?;
        Ok(saved == 1)
    }

    pub(super) async fn backfill_target(&self, backfill: Backfill) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let now = self.clock.now_ms();
        let tx = client.transaction().await.map_err(backend)?;
        // Held events get their deliveries when their job ends: never queue them here.
        let rows = tx
            .query(
                &prepared(
                    &tx,
                    "SELECT e.id, e.seq, e.source, e.type FROM events e
                     WHERE e.received_at >= $1 AND e.received_at < $2
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id
                           AND d.target = $3 AND d.status IN ('pending', 'delivered'))
                       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.status = 'pending'
                           AND j.source = e.source AND j.session_id = e.session_id
                           AND strpos(j.holds, e.id) > 0)
                     ORDER BY e.seq",
                )
                .await?,
                &[
                    &backfill.since.to_string(),
                    &backfill.until.to_string(),
                    &backfill.target,
                ],
            )
            .await
            .map_err(backend)?;
        let chosen: Vec<(String, i64)> = rows
            .iter()
            .filter(|r| backfill.takes(r.get(2), r.get(3)))
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if backfill.dry_run {
            return Ok(chosen.len());
        }
        let insert = prepared(
            &tx,
            "INSERT INTO deliveries (id, event_id, event_seq, target, status, attempts,
                 next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6, $6)",
        )
        .await?;
        for (i, (id, seq)) in chosen.iter().enumerate() {
            let due = now + i as i64 * backfill.spacing_ms;
            let delivery = DeliveryId::generate();
            tx.execute(
                &insert,
                &[&delivery.as_str(), id, seq, &backfill.target, &due, &now],
            )
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(chosen.len())
    }
}
