//! The statements an ingest runs, and the rows the store reads back.

use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};

use crate::event::{EventId, EventType, Inbound, Timestamp};
use crate::sessions::SessionRecord;
use crate::sessions::{AcceptPlan, finalizes, plan_accept};
use crate::store::{
    AttemptInfo, DeliveryId, DeliveryInfo, DeliveryStatus, Handoff, Hold, IngestOutcome, Leased,
    SESSION_JOBS, SessionJobs, StoredEvent, ends_session, job_id, lease_token, needs_session_jobs,
    plan_jobs,
};

/// Lets JSON (de)serialisation failures travel as SQLite errors inside a store call.
pub(super) fn json_error(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

pub(super) fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryInfo> {
    let status: String = r.get(4)?;
    let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
    Ok(DeliveryInfo {
        seq: r.get(0)?,
        id: DeliveryId::from_stored(r.get(1)?),
        event_id: EventId::from_stored(r.get(2)?),
        target: r.get(3)?,
        status,
        attempts: r.get(5)?,
        next_attempt_at: (status == DeliveryStatus::Pending)
            .then(|| r.get(6).map(Timestamp::from_unix_millis))
            .transpose()?,
        last_status: r.get(7)?,
        last_error: r.get(8)?,
        created_at: Timestamp::from_unix_millis(r.get(9)?),
        updated_at: Timestamp::from_unix_millis(r.get(10)?),
        attempt_log: None,
    })
}

pub(super) fn attempt_log(
    conn: &Connection,
    delivery_id: &str,
) -> rusqlite::Result<Vec<AttemptInfo>> {
    conn.prepare_cached(
        "SELECT attempt, started_at, duration_ms, status_code, error FROM attempts
         WHERE delivery_id = ?1 ORDER BY seq",
    )?
    .query_map([delivery_id], |r| {
        Ok(AttemptInfo {
            attempt: r.get(0)?,
            started_at: Timestamp::from_unix_millis(r.get(1)?),
            duration_ms: r.get(2)?,
            status_code: r.get(3)?,
            error: r.get(4)?,
        })
    })?
    .collect()
}

/// An event as a delivery names it: by id, and by sequence for the index.
#[derive(Clone, Copy)]
pub(super) struct EventKey<'a> {
    pub(super) id: &'a str,
    pub(super) seq: i64,
}

/// The sequence of the stored event `id`, if there is one.
pub(super) fn event_seq(conn: &Connection, id: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT seq FROM events WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()
}

/// Inserts a pending delivery, leased until `lease` (unix ms, with its token) if given.
pub(super) fn insert_delivery(
    conn: &Connection,
    event: EventKey<'_>,
    target: &str,
    now: i64,
    lease: Option<(i64, i64)>,
) -> rusqlite::Result<DeliveryId> {
    let id = DeliveryId::generate();
    conn.prepare_cached(
        "INSERT INTO deliveries (id, event_id, event_seq, target, status, attempts,
             next_attempt_at, lease_until, lease_token, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6, ?7, ?5, ?5)",
    )?
    .execute(params![
        id.as_str(),
        event.id,
        event.seq,
        target,
        now,
        lease.map(|l| l.0),
        lease.map(|l| l.1)
    ])?;
    Ok(id)
}

/// What a request stores if its session is new, planned before the writer's turn.
///
/// The writer is the one thread every ingest passes through, and on shared cores it is the
/// first to run out of time (the loadgen prints its share). Merging and rendering are most of
/// a first event's work there, and a session's first event (`session.started`) almost always
/// finds no session: so the caller plans it against an empty record, on its own thread, and
/// the writer uses that plan only if it finds no session stored, which is exactly the
/// state it was planned from ([`plan_accept`] is pure). Otherwise the writer plans again
/// from the record as stored, as for every other event.
pub(crate) struct FirstEventPlan {
    /// The record's JSON.
    record: String,
    finalized: Option<EventId>,
    /// Each event to store, by its index in the request, with its rendered body.
    events: Vec<(usize, String)>,
}

impl FirstEventPlan {
    /// The plan for `accept` if its first event starts a session; `None` for other events,
    /// whose session is usually stored already.
    pub(crate) fn plan(accept: &Inbound) -> Result<Option<FirstEventPlan>, serde_json::Error> {
        if accept.primary().event_type != EventType::SessionStarted {
            return Ok(None);
        }
        match plan_accept(accept, SessionRecord::default(), None, false)? {
            AcceptPlan::Store {
                record,
                finalized,
                events,
                supersedes: _,
            } => Ok(Some(FirstEventPlan {
                record: serde_json::to_string(&record)?,
                finalized,
                events: events
                    .into_iter()
                    .map(|(event, body)| {
                        let index = accept
                            .events
                            .iter()
                            .position(|e| std::ptr::eq(e, event))
                            .expect("a planned event is one of the request's");
                        (index, body)
                    })
                    .collect(),
            })),
            // Only a session already finalized answers this, and a new one is not.
            AcceptPlan::AlreadyFinalized { .. } => Ok(None),
        }
    }
}

/// Ingests `accept`; `new_session` is its plan made before the writer's turn, if any, used
/// only if the session is not stored.
pub(super) fn accept_in(
    conn: &Connection,
    accept: &Inbound,
    handoff: &Handoff,
    now: i64,
    new_session: Option<&FirstEventPlan>,
    planned_by_writer: &AtomicU64,
) -> rusqlite::Result<IngestOutcome> {
    let primary = accept.primary();
    let seen = conn
        .prepare_cached("SELECT 1 FROM events WHERE id = ?1")?
        .exists([primary.id.as_str()])?;
    if seen {
        return Ok(IngestOutcome::Duplicate {
            id: primary.id.clone(),
        });
    }
    // The single writer thread is this store's session lock.
    let stored: Option<(String, Option<String>)> = conn
        .prepare_cached(
            "SELECT record, finalized_event_id FROM sessions WHERE vendor = ?1 AND session_id = ?2",
        )?
        .query_row([&accept.vendor, &accept.session_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    // Saves the session's record and answers its sequence, which its events are kept under.
    let save_record = |record: &str, finalized: Option<&EventId>| -> rusqlite::Result<i64> {
        conn.prepare_cached(
            "INSERT INTO sessions (vendor, session_id, record, finalized_event_id, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (vendor, session_id) DO UPDATE SET
                 record = excluded.record, finalized_event_id = excluded.finalized_event_id,
                 updated_at = excluded.updated_at
             RETURNING seq",
        )?
        .query_row(
            params![
                accept.vendor,
                accept.session_id,
                record,
                finalized.map(EventId::as_str),
                now
            ],
            |r| r.get(0),
        )
    };

    let (record, finalized, events, ended_before) = match (stored, new_session) {
        (None, Some(plan)) => (
            std::borrow::Cow::Borrowed(plan.record.as_str()),
            plan.finalized.clone(),
            plan.events
                .iter()
                .map(|(index, body)| (&accept.events[*index], body.clone()))
                .collect(),
            false,
        ),
        (stored, _) => {
            planned_by_writer.fetch_add(1, Ordering::Relaxed);
            let (record, finalized) = match stored {
                Some((json, finalized)) => (
                    serde_json::from_str::<SessionRecord>(&json).map_err(json_error)?,
                    finalized.map(EventId::from_stored),
                ),
                None => (SessionRecord::default(), None),
            };
            let ended_before = record.has_ended();
            // A completing event may take the place of a `session.finalized` held by a
            // finalize wait: only then is the wait looked up.
            let waiting = match &finalized {
                Some(_) if finalizes(accept) => waiting_finalize(conn, accept)?,
                _ => None,
            };
            match plan_accept(accept, record, finalized, waiting.is_some()).map_err(json_error)? {
                AcceptPlan::AlreadyFinalized { record, first } => {
                    save_record(
                        &serde_json::to_string(&record).map_err(json_error)?,
                        Some(&first),
                    )?;
                    return Ok(IngestOutcome::Duplicate { id: first });
                }
                AcceptPlan::Store {
                    record,
                    finalized,
                    events,
                    supersedes,
                } => {
                    if let (Some(held), Some(job)) = (supersedes, waiting) {
                        // Never delivered (it was held), so nobody has seen its id.
                        conn.prepare_cached("DELETE FROM events WHERE id = ?1")?
                            .execute([held.as_str()])?;
                        conn.prepare_cached(
                            "UPDATE jobs SET status = 'done', lease_until = NULL,
                                 lease_token = NULL, updated_at = ?2
                             WHERE id = ?1",
                        )?
                        .execute(params![job, now])?;
                    }
                    (
                        std::borrow::Cow::Owned(
                            serde_json::to_string(&record).map_err(json_error)?,
                        ),
                        finalized,
                        events,
                        ended_before,
                    )
                }
            }
        }
    };

    let session_seq = save_record(&record, finalized.as_ref())?;
    let received_at = accept.received_at.to_string();
    conn.prepare_cached(
        "INSERT INTO receipts (source, outcome, vendor_event_type, message_id, received_at, raw)
         VALUES (?1, 'accepted', ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        accept.source,
        accept.vendor_event_type,
        accept.message_id,
        received_at,
        &accept.raw[..]
    ])?;
    let receipt = conn.last_insert_rowid();
    let mut insert_event = conn.prepare_cached(
        "INSERT OR IGNORE INTO events (id, receipt_seq, source, session_id, session_seq, type,
             occurred_at, received_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut targets = Vec::new();
    let mut handed = Vec::new();
    let token = lease_token();
    let session_jobs = if needs_session_jobs(accept, &events) {
        let rows = conn
            .prepare_cached(SESSION_JOBS)?
            .query_map([&accept.vendor, &accept.session_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        SessionJobs::from_rows(rows)
    } else {
        SessionJobs::default()
    };
    let jobs = plan_jobs(accept, &events, &session_jobs, ended_before);
    if ends_session(accept) {
        // The session.finalized that waited for its end: due now.
        conn.prepare_cached(
            "UPDATE jobs SET next_attempt_at = ?3
             WHERE vendor = ?1 AND session_id = ?2 AND kind = 'await_end'
               AND status = 'pending' AND next_attempt_at > ?3",
        )?
        .execute(params![accept.vendor, accept.session_id, now])?;
    }
    for (event, body) in events {
        let inserted = insert_event.execute(params![
            event.id.as_str(),
            receipt,
            accept.source,
            accept.session_id,
            session_seq,
            event.event_type.as_str(),
            event.occurred_at.to_string(),
            received_at,
            body,
        ])?;
        if inserted == 0 || jobs.holds(&event.id) {
            continue;
        }
        let key = EventKey {
            id: event.id.as_str(),
            seq: conn.last_insert_rowid(),
        };
        for target in &event.targets {
            let lease = handoff.lease_until(target, now).map(|until| (until, token));
            let id = insert_delivery(conn, key, target, now, lease)?;
            if lease.is_some() {
                handed.push(Leased::new(accept, target, id, event, &body, token));
            } else if !targets.contains(target) {
                targets.push(target.clone());
            }
        }
    }
    for (job, holds) in &jobs.insert {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO jobs (id, kind, source, vendor, session_id, at, holds, status,
                 attempts, next_attempt_at, deadline, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 0, ?10, ?9, ?8, ?8)",
        )?
        .execute(params![
            job_id(&primary.id, job.kind),
            job.kind.as_str(),
            accept.source,
            accept.vendor,
            accept.session_id,
            primary.occurred_at.to_string(),
            serde_json::to_string(holds).map_err(json_error)?,
            now,
            job.deadline.unix_millis(),
            job.first_due(now),
        ])?;
    }
    if let Some((job, joining)) = &jobs.join {
        let stored: String = conn
            .prepare_cached("SELECT holds FROM jobs WHERE id = ?1")?
            .query_row([job], |r| r.get(0))?;
        let mut holds: Vec<Hold> = serde_json::from_str(&stored).map_err(json_error)?;
        holds.extend(joining.iter().cloned());
        conn.prepare_cached("UPDATE jobs SET holds = ?2 WHERE id = ?1")?
            .execute(params![
                job,
                serde_json::to_string(&holds).map_err(json_error)?
            ])?;
    }
    Ok(IngestOutcome::Accepted {
        id: primary.id.clone(),
        targets,
        handed,
    })
}

/// The finalize wait still holding the session's `session.finalized`, if any.
fn waiting_finalize(conn: &Connection, accept: &Inbound) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(
        "SELECT id FROM jobs
         WHERE vendor = ?1 AND session_id = ?2 AND kind = 'finalize' AND status = 'pending'",
    )?
    .query_row([&accept.vendor, &accept.session_id], |r| r.get(0))
    .optional()
}

pub(super) fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: r.get(0)?,
        id: EventId::from_stored(r.get(1)?),
        source: r.get(2)?,
        session_id: r.get(3)?,
        event_type: r.get(4)?,
        body: r.get(5)?,
        raw: r.get::<_, Vec<u8>>(6)?.into(),
    })
}
