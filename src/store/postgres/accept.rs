//! An ingest on PostgreSQL: one read (none for a session's first event), then one
//! data-modifying statement that saves the session with a compare-and-set on its row
//! version and writes everything else.

use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::GenericClient;

use super::{backend, prepared};
use crate::clock::Clock;
use crate::event::{EventId, EventType, Inbound, NewEvent};
use crate::sessions::SessionRecord;
use crate::sessions::{AcceptPlan, finalizes, plan_accept};
use crate::store::{
    DeliveryId, Handoff, IngestOutcome, Leased, SESSION_JOBS, SessionJobs, StoreError,
    ends_session, job_id, lease_token, needs_session_jobs, plan_jobs,
};

/// How often an ingest reads its session again after losing a race to change it.
const MAX_SESSION_RACES: usize = 50;

/// An ingest's one read: the session as stored (with its row version, `xmin`) and whether
/// the request's first event is already stored. Always one row.
const READ_SESSION: &str = "SELECT s.record, s.finalized_event_id, s.xmin::text,
        EXISTS (SELECT 1 FROM events WHERE id = $3)
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN sessions s ON s.vendor = $1 AND s.session_id = $2";

/// [`SESSION_JOBS`] in PostgreSQL's placeholders.
static SESSION_JOBS_PG: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| SESSION_JOBS.replace("?1", "$1").replace("?2", "$2"));

/// The finalize wait still holding a session's `session.finalized`, if any.
const WAITING_FINALIZE: &str = "SELECT id FROM jobs
    WHERE vendor = $1 AND session_id = $2 AND kind = 'finalize' AND status = 'pending'";

/// Saves a session record if its row is still the version that was read (`$6`, NULL if
/// there was none): a compare-and-set, so replicas merging events of one session at once
/// never lose each other's facts. Returns a row (the session's sequence) only when it saved.
const SAVE_SESSION: &str = "INSERT INTO sessions AS t
        (vendor, session_id, record, finalized_event_id, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $5)
    ON CONFLICT (vendor, session_id) DO UPDATE SET
        record = excluded.record, finalized_event_id = excluded.finalized_event_id,
        updated_at = excluded.updated_at
    WHERE t.xmin::text = $6
    RETURNING seq";

/// [`SAVE_SESSION`] alone, answering 1 if it saved and 0 if the session had changed.
static SAVE_SESSION_ONLY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("WITH s AS ({SAVE_SESSION}) SELECT count(*) FROM s"));

/// An ingest's one write, in one statement (so one round trip, and atomic without a
/// transaction): the session's compare-and-set, and only if it saved, the receipt, the
/// events not stored yet and their deliveries. Returns whether the session saved and the
/// ids of the deliveries inserted.
static WRITE_ACCEPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH s AS ({SAVE_SESSION}),
        r AS (INSERT INTO receipts (source, outcome, vendor_event_type, message_id, received_at, raw)
              SELECT $7, 'accepted', $8, $9, $10, $11 FROM s RETURNING seq),
        e AS (INSERT INTO events (id, receipt_seq, source, session_id, session_seq, type,
                  occurred_at, received_at, body)
              SELECT u.id, r.seq, $7, $2, s.seq, u.type, u.occurred_at, $10, u.body
              FROM r, s, unnest($12::text[], $13::text[], $14::text[], $15::text[])
                  WITH ORDINALITY AS u (id, type, occurred_at, body, n)
              ORDER BY u.n
              ON CONFLICT (id) DO NOTHING RETURNING id, seq),
        d AS (INSERT INTO deliveries (id, event_id, event_seq, target, status, attempts,
                  next_attempt_at, lease_until, lease_token, created_at, updated_at)
              SELECT v.id, v.event_id, e.seq, v.target, 'pending', 0, $5, v.lease_until,
                  v.lease_token, $5, $5
              FROM unnest($16::text[], $17::text[], $18::text[], $19::int8[], $20::int8[])
                  WITH ORDINALITY AS v (id, event_id, target, lease_until, lease_token, n)
              JOIN e ON e.id = v.event_id
              ORDER BY v.n
              RETURNING id),
        j AS (INSERT INTO jobs (id, kind, source, vendor, session_id, at, holds, status,
                  attempts, next_attempt_at, deadline, created_at, updated_at)
              SELECT w.id, w.kind, $7, $1, $2, $23::text, w.holds, 'pending', 0,
                  w.due, w.deadline, $5, $5
              FROM s, unnest($21::text[], $22::text[], $24::text[], $25::int8[], $26::int8[])
                  AS w (id, kind, holds, deadline, due)
              ON CONFLICT (id) DO NOTHING),
        x AS (DELETE FROM events WHERE id = $27::text AND EXISTS (SELECT 1 FROM s)),
        y AS (UPDATE jobs SET status = 'done', lease_until = NULL, lease_token = NULL,
                  updated_at = $5
              WHERE id = $28::text AND EXISTS (SELECT 1 FROM s)),
        h AS (UPDATE jobs SET holds = (holds::jsonb || $29::text::jsonb)::text
              WHERE id = $30::text AND status = 'pending' AND EXISTS (SELECT 1 FROM s)),
        z AS (UPDATE jobs SET next_attempt_at = $5
              WHERE $31::bool AND vendor = $1 AND session_id = $2 AND kind = 'await_end'
                AND status = 'pending' AND next_attempt_at > $5 AND EXISTS (SELECT 1 FROM s))
        SELECT (SELECT count(*) FROM s), ARRAY(SELECT id FROM d)"
    )
});

/// What [`plan_accept`] decided to store.
struct Planned<'a> {
    record: &'a SessionRecord,
    finalized: Option<&'a EventId>,
    events: &'a [(&'a NewEvent, String)],
    /// The held `session.finalized` this request's own replaces, and its finalize wait:
    /// the event is deleted (never delivered) and the job ended.
    supersedes: Option<(&'a EventId, &'a str)>,
    /// The session had ended before this request.
    ended_before: bool,
}

/// Writes an accepted request's plan if the session is still at `version`; `None` if it
/// changed meanwhile (nothing was written).
async fn write_accept(
    client: &deadpool_postgres::Object,
    accept: &Inbound,
    handoff: &Handoff,
    planned: Planned<'_>,
    version: Option<String>,
    now: i64,
) -> Result<Option<IngestOutcome>, StoreError> {
    let Planned {
        record,
        finalized,
        events,
        supersedes,
        ended_before,
    } = planned;
    let token = lease_token();
    let primary = accept.primary();
    // The session's archive and transcript jobs, read before the write: should one end
    // meanwhile, its end changes the session row, the compare-and-set fails and the ingest
    // reads again.
    let session_jobs = if needs_session_jobs(accept, events) {
        let rows = client
            .query(
                &prepared(client, &SESSION_JOBS_PG).await?,
                &[&accept.vendor, &accept.session_id],
            )
            .await
            .map_err(backend)?;
        SessionJobs::from_rows(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))))
    } else {
        SessionJobs::default()
    };
    let jobs = plan_jobs(accept, events, &session_jobs, ended_before);
    let mut inserted_jobs = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (job, holds) in &jobs.insert {
        inserted_jobs.0.push(job_id(&primary.id, job.kind));
        inserted_jobs.1.push(job.kind.as_str());
        inserted_jobs
            .2
            .push(serde_json::to_string(holds).map_err(backend)?);
        inserted_jobs.3.push(job.deadline.unix_millis());
        inserted_jobs.4.push(job.first_due(now));
    }
    let join = match &jobs.join {
        Some((job, holds)) => Some((job.as_str(), serde_json::to_string(holds).map_err(backend)?)),
        None => None,
    };
    // (id, event, its body, target, lease end if handed over), in insertion order; the
    // deliveries of held events are made when their job ends.
    let mut deliveries = Vec::new();
    for (event, body) in events {
        if jobs.holds(&event.id) {
            continue;
        }
        for target in &event.targets {
            let lease_until = handoff.lease_until(target, now);
            deliveries.push((DeliveryId::generate(), *event, body, target, lease_until));
        }
    }
    let event_ids: Vec<&str> = events.iter().map(|(e, _)| e.id.as_str()).collect();
    let event_types: Vec<&str> = events.iter().map(|(e, _)| e.event_type.as_str()).collect();
    let bodies: Vec<&str> = events.iter().map(|(_, body)| body.as_str()).collect();
    let received_at = accept.received_at.to_string();
    let occurred_at: Vec<String> = events
        .iter()
        .map(|(e, _)| e.occurred_at.to_string())
        .collect();
    let row = client
        .query_one(
            &prepared(client, &WRITE_ACCEPT).await?,
            &[
                &accept.vendor,
                &accept.session_id,
                &serde_json::to_string(record).map_err(backend)?,
                &finalized.map(EventId::as_str),
                &now,
                &version,
                &accept.source,
                &accept.vendor_event_type,
                &accept.message_id,
                &received_at,
                &&accept.raw[..],
                &event_ids,
                &event_types,
                &occurred_at,
                &bodies,
                &deliveries.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(),
                &deliveries
                    .iter()
                    .map(|d| d.1.id.as_str())
                    .collect::<Vec<_>>(),
                &deliveries.iter().map(|d| d.3.as_str()).collect::<Vec<_>>(),
                &deliveries.iter().map(|d| d.4).collect::<Vec<_>>(),
                &deliveries
                    .iter()
                    .map(|d| d.4.map(|_| token))
                    .collect::<Vec<_>>(),
                &inserted_jobs.0,
                &inserted_jobs.1,
                &primary.occurred_at.to_string(),
                &inserted_jobs.2,
                &inserted_jobs.3,
                &inserted_jobs.4,
                &supersedes.map(|(event, _)| event.as_str()),
                &supersedes.map(|(_, job)| job),
                &join.as_ref().map(|(_, holds)| holds.as_str()),
                &join.as_ref().map(|(job, _)| *job),
                // The session.finalized that waited for its end: due now.
                &ends_session(accept),
            ],
        )
        .await
        .map_err(backend)?;
    if row.get::<_, i64>(0) == 0 {
        return Ok(None);
    }
    let inserted: Vec<String> = row.get(1);
    let mut targets = Vec::new();
    let mut handed = Vec::new();
    for (id, event, body, target, lease_until) in deliveries {
        if !inserted.iter().any(|i| i == id.as_str()) {
            continue;
        }
        if lease_until.is_some() {
            handed.push(Leased::new(accept, target, id, event, body, token));
        } else if !targets.contains(target) {
            targets.push(target.clone());
        }
    }
    Ok(Some(IngestOutcome::Accepted {
        id: primary.id.clone(),
        targets,
        handed,
    }))
}

/// One ingest on one connection: read the session, merge, write with a compare-and-set,
/// and read again when another request changed the session meanwhile.
///
/// A session's first event (`session.started`) is written without the read, as if the
/// session were new, which it usually is: if it is not, the compare-and-set (against "no
/// row") saves nothing and the ingest reads and merges as any other. Nothing can be missed
/// by skipping the read: sessions are never deleted and an event is only stored with its
/// session, so where there is no session the event is not stored either. One transaction
/// fewer for half of Agntix's requests.
pub(super) async fn accept_on(
    client: &deadpool_postgres::Object,
    accept: &Inbound,
    handoff: &Handoff,
    clock: &Clock,
    reads: &AtomicU64,
) -> Result<IngestOutcome, StoreError> {
    let read = prepared(client, READ_SESSION).await?;
    let primary = accept.primary();
    let mut assume_new = primary.event_type == EventType::SessionStarted;
    for _ in 0..MAX_SESSION_RACES {
        let (record, finalized, version) = if std::mem::take(&mut assume_new) {
            (SessionRecord::default(), None, None)
        } else {
            reads.fetch_add(1, Ordering::Relaxed);
            let row = client
                .query_one(
                    &read,
                    &[&accept.vendor, &accept.session_id, &primary.id.as_str()],
                )
                .await
                .map_err(backend)?;
            if row.get::<_, bool>(3) {
                return Ok(IngestOutcome::Duplicate {
                    id: primary.id.clone(),
                });
            }
            let version: Option<String> = row.get(2);
            match row.get::<_, Option<&str>>(0) {
                Some(json) => (
                    serde_json::from_str::<SessionRecord>(json).map_err(backend)?,
                    row.get::<_, Option<String>>(1).map(EventId::from_stored),
                    version,
                ),
                None => (SessionRecord::default(), None, version),
            }
        };
        let ended_before = record.has_ended();
        // A completing event may take the place of a `session.finalized` held by a finalize
        // wait: only then is the wait looked up. Should the wait end meanwhile, its end
        // changes the session row, and the compare-and-set below fails and reads again.
        let waiting: Option<String> = match &finalized {
            Some(_) if finalizes(accept) => client
                .query_opt(
                    &prepared(client, WAITING_FINALIZE).await?,
                    &[&accept.vendor, &accept.session_id],
                )
                .await
                .map_err(backend)?
                .map(|row| row.get(0)),
            _ => None,
        };
        let saved =
            match plan_accept(accept, record, finalized, waiting.is_some()).map_err(backend)? {
                AcceptPlan::AlreadyFinalized { record, first } => {
                    let saved = client
                        .query_one(
                            &prepared(client, &SAVE_SESSION_ONLY).await?,
                            &[
                                &accept.vendor,
                                &accept.session_id,
                                &serde_json::to_string(&record).map_err(backend)?,
                                &first.as_str(),
                                &clock.now_ms(),
                                &version,
                            ],
                        )
                        .await
                        .map_err(backend)?;
                    if saved.get::<_, i64>(0) == 1 {
                        return Ok(IngestOutcome::Duplicate { id: first });
                    }
                    None
                }
                AcceptPlan::Store {
                    record,
                    finalized,
                    events,
                    supersedes,
                } => {
                    write_accept(
                        client,
                        accept,
                        handoff,
                        Planned {
                            record: &record,
                            finalized: finalized.as_ref(),
                            events: &events,
                            supersedes: supersedes.as_ref().zip(waiting.as_deref()),
                            ended_before,
                        },
                        version,
                        clock.now_ms(),
                    )
                    .await?
                }
            };
        if let Some(outcome) = saved {
            return Ok(outcome);
        }
        // Another request changed the session since it was read: read it again.
    }
    Err(backend(std::io::Error::other(format!(
        "session {} changed under {MAX_SESSION_RACES} attempts in a row to commit an event",
        accept.session_id
    ))))
}
