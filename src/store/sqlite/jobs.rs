//! Jobs on SQLite: claimed under a lease, and ended in one transaction that merges their
//! result into the session, re-renders the events they held and makes their deliveries.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::queries::{EventKey, insert_delivery, json_error};
use crate::event::{JobKind, Timestamp};
use crate::sessions::SessionRecord;
use crate::store::{ClaimedJob, Hold, JobEnd, JobResult, SESSION_JOBS, SessionJobs, rerender};

pub(super) fn claim(
    conn: &Connection,
    now: i64,
    kind: JobKind,
    limit: usize,
    lease: Duration,
    token: i64,
) -> rusqlite::Result<Vec<ClaimedJob>> {
    let until = now.saturating_add(lease.as_millis() as i64);
    // `next_attempt_at` moves to the lease's end, so a run that dies or hangs falls due
    // behind the jobs already waiting, and its lapsed lease counts as an attempt.
    conn.prepare_cached(
        "UPDATE jobs SET lease_until = ?1, lease_token = ?2, next_attempt_at = ?1,
             attempts = attempts + CASE WHEN lease_until IS NULL THEN 0 ELSE 1 END
         WHERE seq IN (
             SELECT seq FROM jobs
             WHERE status = 'pending' AND kind = ?5 AND next_attempt_at <= ?3
               AND (lease_until IS NULL OR lease_until <= ?3)
             ORDER BY next_attempt_at, seq LIMIT ?4)
         RETURNING id, kind, source, vendor, session_id, attempts, deadline, last_error",
    )?
    .query_map(
        params![until, token, now, limit as i64, kind.as_str()],
        |r| {
            let kind: String = r.get(1)?;
            Ok(ClaimedJob {
                id: r.get(0)?,
                kind: JobKind::parse(&kind).unwrap_or(JobKind::Transcript),
                source: r.get(2)?,
                vendor: r.get(3)?,
                session_id: r.get(4)?,
                attempts: r.get(5)?,
                deadline: Timestamp::from_unix_millis(r.get(6)?),
                lease_token: token,
                last_error: r.get(7)?,
            })
        },
    )?
    .collect()
}

pub(super) fn renew(
    conn: &Connection,
    now: i64,
    id: &str,
    token: i64,
    lease: Duration,
) -> rusqlite::Result<bool> {
    let until = now.saturating_add(lease.as_millis() as i64);
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET lease_until = ?3, next_attempt_at = ?3
             WHERE id = ?1 AND lease_token = ?2 AND status = 'pending'",
        )?
        .execute(params![id, token, until])?;
    Ok(changed == 1)
}

pub(super) fn next_due(conn: &Connection, kinds: &[JobKind]) -> rusqlite::Result<Option<i64>> {
    let mut next: Option<i64> = None;
    for kind in kinds {
        let due: Option<i64> = conn
            .prepare_cached(
                "SELECT MIN(next_attempt_at) FROM jobs WHERE status = 'pending' AND kind = ?1",
            )?
            .query_row([kind.as_str()], |r| r.get(0))?;
        next = match (next, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(next)
}

pub(super) fn finish(
    conn: &Connection,
    result: &JobResult,
    now: i64,
) -> rusqlite::Result<Option<Vec<String>>> {
    let job: Option<(String, String, String, String, String)> = conn
        .prepare_cached(
            "SELECT vendor, session_id, at, holds, kind FROM jobs
             WHERE id = ?1 AND status = 'pending' AND lease_token = ?2",
        )?
        .query_row(params![result.id, result.lease_token], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    // The lease passed to another run: that run decides.
    let Some((vendor, session_id, at, holds, kind)) = job else {
        return Ok(None);
    };
    let facts = match &result.end {
        JobEnd::RetryAt { unix_ms, error } => {
            conn.prepare_cached(
                "UPDATE jobs SET attempts = attempts + 1, next_attempt_at = ?3, last_error = ?4,
                     lease_until = NULL, lease_token = NULL, updated_at = ?5
                 WHERE id = ?1 AND lease_token = ?2",
            )?
            .execute(params![result.id, result.lease_token, unix_ms, error, now])?;
            return Ok(Some(Vec::new()));
        }
        JobEnd::Done { facts } => facts,
    };
    let stored: Option<String> = conn
        .prepare_cached("SELECT record FROM sessions WHERE vendor = ?1 AND session_id = ?2")?
        .query_row([&vendor, &session_id], |r| r.get(0))
        .optional()?;
    let mut record = match stored {
        Some(json) => serde_json::from_str::<SessionRecord>(&json).map_err(json_error)?,
        None => SessionRecord::default(),
    };
    let at = Timestamp::parse(&at).unwrap_or_else(|| Timestamp::from_unix_millis(now));
    record.merge(facts, at);
    conn.prepare_cached(
        "UPDATE sessions SET record = ?3, updated_at = ?4 WHERE vendor = ?1 AND session_id = ?2",
    )?
    .execute(params![
        vendor,
        session_id,
        serde_json::to_string(&record).map_err(json_error)?,
        now
    ])?;
    let session = record.session(&session_id).map_err(json_error)?;
    let holds: Vec<Hold> = serde_json::from_str(&holds).map_err(json_error)?;
    let mut targets = Vec::new();
    let kind = JobKind::parse(&kind).unwrap_or(JobKind::Transcript);
    let session_jobs = if matches!(kind, JobKind::Finalize | JobKind::AwaitEnd) {
        let rows = conn
            .prepare_cached(SESSION_JOBS)?
            .query_map([&vendor, &session_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        SessionJobs::from_rows(rows)
    } else {
        SessionJobs::default()
    };
    // A finalize wait's event waits on for an archive or transcript still running.
    let holds = match session_jobs.hand_on(kind) {
        Some(next) => {
            let stored: String = conn
                .prepare_cached("SELECT holds FROM jobs WHERE id = ?1")?
                .query_row([next], |r| r.get(0))?;
            let mut waiting: Vec<Hold> = serde_json::from_str(&stored).map_err(json_error)?;
            waiting.extend(holds);
            conn.prepare_cached("UPDATE jobs SET holds = ?2 WHERE id = ?1")?
                .execute(params![
                    next,
                    serde_json::to_string(&waiting).map_err(json_error)?
                ])?;
            Vec::new()
        }
        None => holds,
    };
    for hold in holds {
        let stored: Option<(i64, String)> = conn
            .prepare_cached("SELECT seq, body FROM events WHERE id = ?1")?
            .query_row([&hold.event], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        // Pruned meanwhile (a retention shorter than the wait): nothing left to send.
        let Some((seq, body)) = stored else { continue };
        conn.prepare_cached("UPDATE events SET body = ?2 WHERE seq = ?1")?
            .execute(params![seq, rerender(&body, &session).map_err(json_error)?])?;
        let key = EventKey {
            id: &hold.event,
            seq,
        };
        for target in hold.targets {
            insert_delivery(conn, key, &target, now, None)?;
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
    }
    conn.prepare_cached(
        "UPDATE jobs SET status = 'done', attempts = attempts + 1, lease_until = NULL,
             lease_token = NULL, updated_at = ?2
         WHERE id = ?1",
    )?
    .execute(params![result.id, now])?;
    Ok(Some(targets))
}
