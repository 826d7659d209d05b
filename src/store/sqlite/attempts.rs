//! Attempt results, recorded in groups: every result that arrives while the writer is busy
//! waits in one queue, and the writer records the whole queue as one operation.
//!
//! A delivery's result is small (one update, one insert), and under load they arrive about
//! as often as ingests. As operations of their own, each paid for its own trip through the
//! writer's queue and its own wake-up; grouped, those are paid once for all the results that
//! came in during one turn of the writer. Every caller is still answered only after the commit
//! that holds its result is durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::writer::{Reply, Work};
use crate::store::{AttemptRecord, StoreError, error_text};

/// A result waiting for the writer: the record, when it arrived (unix ms), its caller.
type Waiting = (AttemptRecord, i64, oneshot::Sender<Result<(), StoreError>>);

/// The results no writer operation has taken yet.
#[derive(Clone, Default)]
pub(super) struct AttemptQueue(Arc<Mutex<Vec<Waiting>>>);

impl AttemptQueue {
    /// Queues a result. Returns the operation to send the writer when the queue was empty:
    /// then no operation is on its way to take it; otherwise the one on its way takes it too.
    pub(super) fn push(
        &self,
        record: AttemptRecord,
        now: i64,
        done: oneshot::Sender<Result<(), StoreError>>,
    ) -> Option<Work> {
        let mut queue = self.0.lock().unwrap_or_else(|p| p.into_inner());
        queue.push((record, now, done));
        (queue.len() == 1).then(|| self.work())
    }

    /// How many results are queued.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn take(&self) -> Vec<Waiting> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Answers every queued result with `why` (the writer refused, or never ran, the
    /// operation that was to take them).
    pub(super) fn fail_all(&self, why: &str) {
        fail(self.take(), why);
    }

    /// The writer operation that takes the queue as it is when it runs.
    fn work(&self) -> Work {
        let ticket = Arc::new(Ticket {
            queue: self.clone(),
            taken: AtomicBool::new(false),
        });
        let refused = ticket.clone();
        // The results this operation took: its reply answers them; a run again (after a
        // later operation of the batch failed) records the same results.
        let taken: Arc<Mutex<Vec<Waiting>>> = Arc::default();
        Work {
            run: Box::new(move |conn| {
                let mut group = taken.lock().unwrap_or_else(|p| p.into_inner());
                group.extend(ticket.take());
                let recorded = record_all(conn, &group);
                drop(group);
                let ok = recorded.is_ok();
                let failure = recorded.err().map(|e| e.to_string());
                let group = taken.clone();
                let reply: Reply = Box::new(move |committed| {
                    let outcome = match failure {
                        Some(e) => Err(e),
                        None => committed,
                    };
                    let waiting =
                        std::mem::take(&mut *group.lock().unwrap_or_else(|p| p.into_inner()));
                    for (.., done) in waiting {
                        let answer = outcome.clone().map_err(|e| StoreError::Backend(e.into()));
                        // A caller that has gone needs no answer.
                        done.send(answer).unwrap_or(());
                    }
                });
                (ok, reply)
            }),
            refuse: Box::new(move |why| fail(refused.take(), &why)),
        }
    }
}

/// Answers each of `waiting` with the error `why`.
fn fail(waiting: Vec<Waiting>, why: &str) {
    for (.., done) in waiting {
        // A caller that has gone needs no answer.
        done.send(Err(StoreError::Backend(why.into())))
            .unwrap_or(());
    }
}

/// One operation's claim on the queue: taken once, by whichever of its run and refusal
/// comes; if the writer drops the operation with neither (it stopped), the queue's callers
/// are failed then, so none waits forever and the next result starts a new operation.
struct Ticket {
    queue: AttemptQueue,
    taken: AtomicBool,
}

impl Ticket {
    fn take(&self) -> Vec<Waiting> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return Vec::new();
        }
        self.queue.take()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.taken.load(Ordering::Acquire) {
            self.queue.fail_all("the store is closing");
        }
    }
}

/// Records each result: the delivery's new state and the attempt's line in its log, unless
/// the delivery's lease has passed on (then the result is dropped, as the lease's new
/// holder attempts it again). One failure fails them all: they are one operation.
fn record_all(conn: &Connection, waiting: &[Waiting]) -> rusqlite::Result<()> {
    let mut update = conn.prepare_cached(
        "UPDATE deliveries SET status = ?2, attempts = ?3,
             next_attempt_at = COALESCE(?4, next_attempt_at), lease_until = NULL,
             lease_token = NULL, last_status = ?5, last_error = ?6, updated_at = ?7
         WHERE id = ?1 AND lease_token = ?8",
    )?;
    let mut log = conn.prepare_cached(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (record, now, _) in waiting {
        let (status, next_attempt_at) = record.next.status();
        let updated = update.execute(params![
            record.delivery_id.as_str(),
            status.as_str(),
            record.attempt,
            next_attempt_at,
            record.status_code,
            record.error.as_deref().map(error_text),
            now,
            record.lease_token
        ])?;
        if updated == 0 {
            tracing::warn!(delivery_id = %record.delivery_id, "Attempt result arrived after its lease passed on; dropped");
            continue;
        }
        log.execute(params![
            record.delivery_id.as_str(),
            record.attempt,
            record.started_at_ms,
            record.duration_ms,
            record.status_code,
            record.error.as_deref().map(error_text)
        ])?;
    }
    Ok(())
}
