//! Jobs on PostgreSQL: claimed with `FOR UPDATE SKIP LOCKED` under a lease, and ended in one
//! transaction that locks the job and its session row, merges the result, re-renders the
//! events the job held and makes their deliveries.

use std::time::Duration;

use super::{PgStore, backend, prepared};
use crate::event::{JobKind, Timestamp};
use crate::sessions::SessionRecord;
use crate::store::{
    ClaimedJob, DeliveryId, Hold, JobEnd, JobResult, SESSION_JOBS, SessionJobs, StoreError,
    lease_token, rerender,
};

impl PgStore {
    pub(super) async fn claim_jobs_now(
        &self,
        kind: JobKind,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = self.clock.now_ms();
        let token = lease_token();
        let until = now.saturating_add(lease.as_millis() as i64);
        // `next_attempt_at` moves to the lease's end, so a run that dies or hangs falls due
        // behind the jobs already waiting, and its lapsed lease counts as an attempt.
        let rows = self
            .query(
                "UPDATE jobs SET lease_until = $1, lease_token = $2, next_attempt_at = $1,
                     attempts = attempts + CASE WHEN lease_until IS NULL THEN 0 ELSE 1 END
                 WHERE seq IN (
                     SELECT seq FROM jobs
                     WHERE status = 'pending' AND kind = $5 AND next_attempt_at <= $3
                       AND (lease_until IS NULL OR lease_until <= $3)
                     ORDER BY next_attempt_at, seq LIMIT $4
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, kind, source, vendor, session_id, attempts, deadline, last_error",
                &[&until, &token, &now, &(limit as i64), &kind.as_str()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ClaimedJob {
                id: r.get(0),
                kind: JobKind::parse(r.get(1)).unwrap_or(JobKind::Transcript),
                source: r.get(2),
                vendor: r.get(3),
                session_id: r.get(4),
                attempts: r.get::<_, i32>(5) as u32,
                deadline: Timestamp::from_unix_millis(r.get(6)),
                lease_token: token,
                last_error: r.get(7),
            })
            .collect())
    }

    pub(super) async fn renew_job_now(
        &self,
        id: &str,
        token: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let until = self.clock.now_ms().saturating_add(lease.as_millis() as i64);
        let changed = self
            .execute(
                "UPDATE jobs SET lease_until = $3, next_attempt_at = $3
                 WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
                &[&id, &token, &until],
            )
            .await?;
        Ok(changed == 1)
    }

    pub(super) async fn next_job_due_now(
        &self,
        kinds: &[JobKind],
    ) -> Result<Option<i64>, StoreError> {
        let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        let row = self
            .query_one(
                "SELECT MIN(next_attempt_at) FROM jobs
                 WHERE status = 'pending' AND kind = ANY($1)",
                &[&kinds],
            )
            .await?;
        Ok(row.get(0))
    }

    pub(super) async fn finish_job_now(
        &self,
        result: JobResult,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let now = self.clock.now_ms();
        if let JobEnd::RetryAt { unix_ms, error } = &result.end {
            let changed = self
                .execute(
                "UPDATE jobs SET attempts = attempts + 1, next_attempt_at = $3, last_error = $4,
                     lease_until = NULL, lease_token = NULL, updated_at = $5
                 WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
                &[&result.id, &result.lease_token, unix_ms, error, &now],
            )
            .await?;
            return Ok((changed == 1).then(Vec::new));
        }
        let JobEnd::Done { facts } = &result.end else {
            unreachable!("handled above");
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // The session row is locked before the job's, the order an ingest takes them in
        // (its session's compare-and-set, then a job it ends or adds a hold to), so the two
        // never wait for each other.
        let Some(owner) = tx
            .query_opt(
                &prepared(&tx, "SELECT vendor, session_id FROM jobs WHERE id = $1").await?,
                &[&result.id],
            )
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let (vendor, session_id): (String, String) = (owner.get(0), owner.get(1));
        let stored = tx
            .query_opt(
                &prepared(
                    &tx,
                    "SELECT record FROM sessions WHERE vendor = $1 AND session_id = $2 FOR UPDATE",
                )
                .await?,
                &[&vendor, &session_id],
            )
            .await
            .map_err(backend)?;
        let job = tx
            .query_opt(
                &prepared(
                    &tx,
                    "SELECT at, holds, kind FROM jobs
                     WHERE id = $1 AND status = 'pending' AND lease_token = $2 FOR UPDATE",
                )
                .await?,
                &[&result.id, &result.lease_token],
            )
            .await
            .map_err(backend)?;
        // The lease passed to another run, or an ingest ended the job: that decides.
        let Some(job) = job else {
            return Ok(None);
        };
        let at = Timestamp::parse(job.get(0)).unwrap_or_else(|| Timestamp::from_unix_millis(now));
        let mut holds: Vec<Hold> = serde_json::from_str(job.get(1)).map_err(backend)?;
        let kind = JobKind::parse(job.get(2)).unwrap_or(JobKind::Transcript);
        if matches!(kind, JobKind::Finalize | JobKind::AwaitEnd) {
            // A finalize wait's event waits on for an archive or transcript still running;
            // the session row, locked above, keeps their ends and ingests out meanwhile.
            let rows = tx
                .query(
                    &prepared(&tx, &SESSION_JOBS.replace("?1", "$1").replace("?2", "$2")).await?,
                    &[&vendor, &session_id],
                )
                .await
                .map_err(backend)?;
            let session_jobs =
                SessionJobs::from_rows(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))));
            if let Some(next) = session_jobs.hand_on(kind) {
                tx.execute(
                    &prepared(
                        &tx,
                        "UPDATE jobs SET holds = (holds::jsonb || $2::text::jsonb)::text
                         WHERE id = $1",
                    )
                    .await?,
                    &[&next, &serde_json::to_string(&holds).map_err(backend)?],
                )
                .await
                .map_err(backend)?;
                holds.clear();
            }
        }
        let mut record = match stored {
            Some(row) => serde_json::from_str::<SessionRecord>(row.get(0)).map_err(backend)?,
            None => SessionRecord::default(),
        };
        record.merge(facts, at);
        tx.execute(
            &prepared(
                &tx,
                "UPDATE sessions SET record = $3, updated_at = $4 WHERE vendor = $1 AND session_id = $2",
            )
            .await?,
            &[
                &vendor,
                &session_id,
                &serde_json::to_string(&record).map_err(backend)?,
                &now,
            ],
        )
        .await
        .map_err(backend)?;
        let session = record.session(&session_id).map_err(backend)?;
        let mut targets = Vec::new();
        for hold in holds {
            let event = tx
                .query_opt(
                    &prepared(&tx, "SELECT seq, body FROM events WHERE id = $1").await?,
                    &[&hold.event],
                )
                .await
                .map_err(backend)?;
            // Pruned meanwhile (a retention shorter than the wait): nothing left to send.
            let Some(event) = event else { continue };
            let event_seq: i64 = event.get(0);
            let body = rerender(event.get(1), &session).map_err(backend)?;
            tx.execute(
                &prepared(&tx, "UPDATE events SET body = $2 WHERE seq = $1").await?,
                &[&event_seq, &body],
            )
            .await
            .map_err(backend)?;
            for target in hold.targets {
                tx.execute(
                    &prepared(
                        &tx,
                        "INSERT INTO deliveries (id, event_id, event_seq, target, status,
                             attempts, next_attempt_at, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $5)",
                    )
                    .await?,
                    &[
                        &DeliveryId::generate().as_str(),
                        &hold.event,
                        &event_seq,
                        &target,
                        &now,
                    ],
                )
                .await
                .map_err(backend)?;
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
        }
        tx.execute(
            &prepared(
                &tx,
                "UPDATE jobs SET status = 'done', attempts = attempts + 1, lease_until = NULL,
                     lease_token = NULL, updated_at = $2 WHERE id = $1",
            )
            .await?,
            &[&result.id, &now],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(targets))
    }
}
