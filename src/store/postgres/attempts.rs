//! Attempt results, recorded in groups: every result that arrives while one group's
//! statement is on its way waits, and the next statement records all of them.
//!
//! Under load a result arrives about as often as an ingest (1.5 a request on Agntix-like
//! traffic), and each was a transaction of its own: of the ~3.8 PostgreSQL transactions a
//! request cost, 1.5 were results, each with its own commit record, WAL flush and executor
//! start-up in a backend on cores the gateway shares. Grouped, a result costs a row of one
//! statement's arrays. Every caller is still answered only after the commit that holds its
//! result; a result whose lease has passed on is dropped, as before.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Pool;
use tokio::sync::oneshot;

use super::{backend, connection_lost, prepared};
use crate::clock::Clock;
use crate::store::{AttemptRecord, StoreError, error_text};

/// Results one statement records at most; more wait for the next.
const GROUP_MAX: usize = 256;

/// Records each result of the group whose lease is still the one it names: the delivery
/// moves on and the attempt is logged. `r` is the group, one row per result; a result
/// whose (delivery, token) no longer matches updates nothing and so logs nothing. Answers
/// the (delivery, token) of each result recorded.
const RECORD_GROUP: &str = "WITH r AS (
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::int[], $5::bigint[],
                              $6::int[], $7::text[], $8::bigint[], $9::bigint[])
             AS r(id, token, status, attempt, next_at, code, error, started, duration)),
     u AS (
         UPDATE deliveries d SET status = r.status, attempts = r.attempt,
             next_attempt_at = COALESCE(r.next_at, d.next_attempt_at), lease_until = NULL,
             lease_token = NULL, last_status = r.code, last_error = r.error, updated_at = $10
         FROM r WHERE d.id = r.id AND d.lease_token = r.token
         RETURNING r.id, r.token),
     logged AS (
         INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
         SELECT r.id, r.attempt, r.started, r.duration, r.code, r.error
         FROM r JOIN u ON u.id = r.id AND u.token = r.token)
     SELECT id, token FROM u";

type Waiting = (AttemptRecord, oneshot::Sender<Result<(), StoreError>>);

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A task is recording groups; it takes whatever waits when its statement returns.
    recording: bool,
}

/// The results waiting for a statement, and what records them.
pub(super) struct Results {
    pool: Pool,
    clock: Clock,
    queue: Mutex<Queue>,
    /// Statements run so far (the tests compare it with the results recorded).
    statements: AtomicU64,
}

impl Results {
    pub(super) fn new(pool: Pool, clock: Clock) -> Results {
        Results {
            pool,
            clock,
            queue: Mutex::default(),
            statements: AtomicU64::new(0),
        }
    }

    /// Records `record` with whatever other results wait; answers once its group's
    /// statement has committed (or failed).
    pub(super) async fn record(
        self: &std::sync::Arc<Self>,
        record: AttemptRecord,
    ) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push((record, done));
            !std::mem::replace(&mut queue.recording, true)
        };
        if start {
            // A task of its own, so that a caller that stops waiting cannot strand the
            // group it had taken.
            tokio::spawn(self.clone().record_while_waiting());
        }
        // No answer at all: the runtime stopped the recording task.
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    #[cfg(test)]
    pub(super) fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Records groups until none waits.
    async fn record_while_waiting(self: std::sync::Arc<Self>) {
        loop {
            let group: Vec<Waiting> = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.waiting.is_empty() {
                    queue.recording = false;
                    return;
                }
                let take = queue.waiting.len().min(GROUP_MAX);
                queue.waiting.drain(..take).collect()
            };
            let records: Vec<&AttemptRecord> = group.iter().map(|(r, _)| r).collect();
            let outcome = self.record_group(&records).await;
            for (record, done) in group {
                let answer = match &outcome {
                    Ok(logged) => {
                        let key = (record.delivery_id.to_string(), record.lease_token);
                        if !logged.contains(&key) {
                            tracing::warn!(delivery_id = %record.delivery_id, "Attempt result arrived after its lease passed on; dropped");
                        }
                        Ok(())
                    }
                    Err(e) => Err(StoreError::Backend(e.to_string().into())),
                };
                // A caller that has gone needs no answer.
                done.send(answer).unwrap_or(());
            }
        }
    }

    /// One statement for `group`; answers the (delivery, token) of each result it
    /// recorded. Safe to
    /// run again after a lost connection: a result that did commit has cleared its lease
    /// token, so its repeat matches nothing.
    pub(super) async fn record_group(
        &self,
        group: &[&AttemptRecord],
    ) -> Result<HashSet<(String, i64)>, StoreError> {
        let mut ids = Vec::with_capacity(group.len());
        let mut tokens = Vec::with_capacity(group.len());
        let mut statuses = Vec::with_capacity(group.len());
        let mut attempts = Vec::with_capacity(group.len());
        let mut next_at = Vec::with_capacity(group.len());
        let mut codes = Vec::with_capacity(group.len());
        let mut errors = Vec::with_capacity(group.len());
        let mut started = Vec::with_capacity(group.len());
        let mut durations = Vec::with_capacity(group.len());
        for record in group {
            let (status, next_attempt_at) = record.next.status();
            ids.push(record.delivery_id.as_str());
            tokens.push(record.lease_token);
            statuses.push(status.as_str());
            attempts.push(record.attempt as i32);
            next_at.push(next_attempt_at);
            codes.push(record.status_code.map(i32::from));
            errors.push(record.error.as_deref().map(error_text));
            started.push(record.started_at_ms);
            durations.push(record.duration_ms);
        }
        let now = self.clock.now_ms();
        let rows = on_connection!(self, |client| {
            self.statements.fetch_add(1, Ordering::Relaxed);
            match prepared(&client, RECORD_GROUP).await {
                Ok(statement) => client
                    .query(
                        &statement,
                        &[
                            &ids, &tokens, &statuses, &attempts, &next_at, &codes, &errors,
                            &started, &durations, &now,
                        ],
                    )
                    .await
                    .map_err(backend),
                Err(e) => Err(e),
            }
        })?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(backend)
    }
}
