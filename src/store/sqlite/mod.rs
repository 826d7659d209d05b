//! The embedded SQLite store, with group commit.
//!
//! One writer thread owns the connection. Every operation is a closure sent to it; the
//! thread runs operations as they come, all in one open transaction (one that fails is
//! undone by running the others again, so it does not undo them), and commits when the
//! syncer is free.
//! Under `synchronous = "full"` the syncer thread then fsyncs the WAL — one fsync for every
//! batch committed since the last — and only then answers the callers, while the writer
//! already runs the next batch. Concurrent ingests therefore share commits and fsyncs
//! instead of queueing one each, and no caller hears back before its data is on disk.
//!
//! The database file is locked for the life of the store: one gateway process per file.
//! That makes every lease left in the file at start-up stale, so opening releases them and
//! pending deliveries resume at once after a restart.

mod attempts;
mod jobs;
mod listing;
mod prune;
mod queries;
mod recovery;
pub(crate) mod schema;
mod vfs;
mod wal;
mod writer;

use std::cell::Cell;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use attempts::AttemptQueue;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::settings::Synchronous;
use crate::clock::Clock;
use crate::event::{EventId, JobKind, Timestamp};
use crate::store::listing::SESSION_COLUMNS;
use crate::store::{
    AttemptRecord, Backfill, COUNT_DELIVERIES, ClaimedDelivery, ClaimedJob, DeliveryFilter,
    DeliveryId, DeliveryInfo, DeliveryStatus, EVENT_COLUMNS, EventFilter, Handoff, Inbound,
    IngestOutcome, JobResult, Pruned, RECEIPT_COLUMNS, Receipt, ReceiptFilter, ReceiptInfo,
    RecoveryClaim, RecoveryProgress, Retried, RetryOutcome, SessionFilter, SessionListing,
    SessionView, Store, StoreError, StoredEvent, TargetCounts, Timeline, fold_counts, lease_token,
};
use listing::{deliveries_in, receipt_row, retry_dead_in, session_row, sessions_in, timeline_in};
use queries::*;
use schema::{configure, migrate, tune_library};
pub use wal::DEFAULT_WAL_SIZE_MIB;
use wal::{WalState, checkpointer, restart_frames};
use writer::{Msg, QUEUE_DEPTH, Reply, SyncCounts, SyncerHandle, SyncerLink, Work, Writer, syncer};

pub struct SqliteStore {
    tx: mpsc::Sender<Msg>,
    /// A read-only connection for reads that must not wait for, nor hold up, the writer.
    reader: Arc<std::sync::Mutex<Connection>>,
    /// Reads "now" for leases and due times, outside the writer (tests use a manual one).
    clock: Clock,
    /// Attempt results waiting for the writer, which records them together.
    attempts: AttemptQueue,
    /// Which thread made each commit durable (the unit tests look).
    #[cfg_attr(not(test), allow(dead_code))]
    syncs: Arc<SyncCounts>,
    /// Ingests the writer planned itself, not using a plan made before its turn (the unit
    /// tests count them).
    planned_by_writer: Arc<std::sync::atomic::AtomicU64>,
}

impl SqliteStore {
    pub async fn open(path: &Path, synchronous: Synchronous) -> anyhow::Result<SqliteStore> {
        SqliteStore::open_with_wal(path, synchronous, DEFAULT_WAL_SIZE_MIB).await
    }

    /// [`SqliteStore::open`], starting the WAL over once it grows past `wal_size_mib`.
    pub async fn open_with_wal(
        path: &Path,
        synchronous: Synchronous,
        wal_size_mib: u32,
    ) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("Failed to create the store directory {}", dir.display())
            })?;
        }
        let lock = lock_file(path)?;
        tune_library();
        // The writer's connection hands each commit's WAL frames to the kernel in one write.
        vfs::register()?;
        let mut conn =
            Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs::NAME)
                .with_context(|| format!("Failed to open the SQLite store {}", path.display()))?;
        let page_bytes = configure(&conn)?;
        migrate(&mut conn)?;
        let released = conn
            .execute(
                "UPDATE deliveries SET lease_until = NULL, lease_token = NULL
                 WHERE status = 'pending' AND lease_until IS NOT NULL",
                [],
            )
            .context("Failed to release stale delivery leases")?;
        if released > 0 {
            tracing::info!(released, "Released leases left by a previous run");
        }
        // The same for jobs: one process per file, so no lease here is anyone else's. A
        // claimed job is due at its lease's end; the run that was cut short counts as an
        // attempt, and the job is due now.
        let now = crate::clock::Clock::system().now_ms();
        conn.execute(
            "UPDATE jobs SET lease_until = NULL, lease_token = NULL, attempts = attempts + 1,
                 next_attempt_at = MIN(next_attempt_at, ?1)
             WHERE status = 'pending' AND lease_until IS NOT NULL",
            [now],
        )
        .context("Failed to release stale job leases")?;

        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| {
            conn.execute_batch("PRAGMA busy_timeout = 5000;")
                .map(|()| conn)
        })
        .with_context(|| {
            format!(
                "Failed to open a reader on the SQLite store {}",
                path.display()
            )
        })?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let unsynced = Arc::new(AtomicUsize::new(0));
        let database_failed = Arc::new(AtomicBool::new(false));
        let syncs = Arc::new(SyncCounts::default());
        let syncer = match synchronous {
            Synchronous::Full => {
                let mut wal_path = path.as_os_str().to_owned();
                wal_path.push("-wal");
                let open_wal = || {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&wal_path)
                        .with_context(|| {
                            format!(
                                "Failed to open the SQLite WAL {}",
                                Path::new(&wal_path).display()
                            )
                        })
                };
                let wal = open_wal()?;
                // The writer's own, opened again rather than duplicated (see SyncerHandle).
                let writers_wal = open_wal()?;
                // The database file, which the syncer fsyncs after a checkpoint.
                let database = File::open(path).with_context(|| {
                    format!("Failed to open the SQLite store {}", path.display())
                })?;
                let (to_syncer, batches) = std::sync::mpsc::channel();
                let link = SyncerLink {
                    unsynced: unsynced.clone(),
                    wake: tx.downgrade(),
                    database_failed: database_failed.clone(),
                };
                let thread = std::thread::Builder::new()
                    .name("sqlite-sync".into())
                    .spawn({
                        let syncs = syncs.clone();
                        move || syncer(wal, database, batches, link, syncs)
                    })
                    .context("Failed to start the SQLite sync thread")?;
                Some(SyncerHandle {
                    to_syncer,
                    thread,
                    wal: writers_wal,
                })
            }
            Synchronous::Normal => None,
        };
        let (stop_checkpoints, checkpoints_stopped) = std::sync::mpsc::channel();
        let checkpoint_path = path.to_owned();
        let wal = Arc::new(WalState::default());
        let checkpoint_wal = wal.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                checkpointer(
                    checkpoint_path,
                    checkpoint_wal,
                    restart_frames(wal_size_mib, page_bytes),
                    checkpoints_stopped,
                )
            })
            .context("Failed to start the SQLite checkpointer thread")?;
        let writer = Writer {
            conn,
            lock,
            wal,
            stop_checkpoints,
            syncer,
            syncs: syncs.clone(),
            unsynced,
            database_pending: Cell::new(false),
            database_failed,
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .context("Failed to start the SQLite writer thread")?;
        Ok(SqliteStore {
            tx,
            reader: Arc::new(std::sync::Mutex::new(reader)),
            clock: Clock::system(),
            attempts: AttemptQueue::default(),
            syncs,
            planned_by_writer: Arc::default(),
        })
    }

    /// The same store reading `clock` for leases and due times (tests: a manual clock).
    pub fn with_clock(mut self, clock: Clock) -> SqliteStore {
        self.clock = clock;
        self
    }

    /// Runs `f` on the writer thread inside the next batch; answers after the commit.
    /// `f` runs again, from the same state, if a later operation in its batch fails (see
    /// [`writer`]), so it must do nothing but its work on the connection.
    async fn call<T, F>(&self, mut f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (done, answer) = oneshot::channel::<Result<T, StoreError>>();
        // `refuse`, or one reply of `run`'s, answers; the others find the answer sent.
        let done = Arc::new(std::sync::Mutex::new(Some(done)));
        let answer_with = |done: &std::sync::Mutex<Option<_>>, outcome| {
            let sender = done.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(sender) = sender {
                // The caller may have gone (it hung up): nobody is left to tell.
                let _: Result<(), _> = oneshot::Sender::send(sender, outcome);
            }
        };
        let refused = done.clone();
        let work = Work {
            run: Box::new(move |conn| {
                let result = f(conn);
                let ok = result.is_ok();
                let done = done.clone();
                let reply: Reply = Box::new(move |committed| {
                    let outcome = match (committed, result) {
                        (Ok(()), Ok(value)) => Ok(value),
                        (_, Err(e)) => Err(StoreError::Backend(Box::new(e))),
                        (Err(e), Ok(_)) => Err(StoreError::Backend(e.into())),
                    };
                    answer_with(&done, outcome);
                });
                (ok, reply)
            }),
            refuse: Box::new(move |why| {
                answer_with(&refused, Err(StoreError::Backend(why.into())));
            }),
        };
        self.tx
            .send(Msg::Work(work))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn lock_file(path: &Path) -> anyhow::Result<File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = File::create(&lock_path).with_context(|| {
        format!(
            "Failed to create the lock file {}",
            Path::new(&lock_path).display()
        )
    })?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "The SQLite store {} is in use by another sessiongate process; \
             run one process per SQLite file (use PostgreSQL for several replicas)",
            path.display()
        )
    })?;
    Ok(file)
}

#[async_trait]
impl Store for SqliteStore {
    async fn accept_handing_over(
        &self,
        accept: Inbound,
        handoff: Handoff,
    ) -> Result<IngestOutcome, StoreError> {
        let now = self.clock.now_ms();
        let new_session =
            FirstEventPlan::plan(&accept).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let planned = self.planned_by_writer.clone();
        self.call(move |conn| {
            accept_in(conn, &accept, &handoff, now, new_session.as_ref(), &planned)
        })
        .await
    }

    async fn receipts(&self, filter: ReceiptFilter) -> Result<Vec<ReceiptInfo>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {RECEIPT_COLUMNS} FROM receipts
                 WHERE (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR outcome = ?2)
                   AND (?3 IS NULL OR seq < ?3)
                 ORDER BY seq DESC LIMIT ?4"
            ))?
            .query_map(
                params![
                    filter.source,
                    filter.outcome,
                    filter.before,
                    filter.limit as i64
                ],
                receipt_row,
            )?
            .collect()
        })
        .await
    }

    async fn record_receipt(&self, ignored: Receipt) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT INTO receipts (source, outcome, vendor_event_type, message_id, received_at, raw, repeats)
                 VALUES (?1, ?6, ?2, ?3, ?4, ?5, ?7)",
            )?
            .execute(params![
                ignored.source,
                ignored.vendor_event_type,
                ignored.message_id,
                ignored.received_at.to_string(),
                &ignored.raw[..],
                ignored.outcome.as_str(),
                ignored.repeats
            ])?;
            Ok(())
        })
        .await
    }

    async fn claim_due(
        &self,
        target: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let target = target.to_owned();
        let now = self.clock.now_ms();
        self.call(move |conn| {
            let token = lease_token();
            let leased: Vec<(String, String, u32)> = conn
                .prepare_cached(
                    "UPDATE deliveries SET lease_until = ?1, lease_token = ?5
                     WHERE seq IN (
                         SELECT seq FROM deliveries
                         WHERE target = ?2 AND status = 'pending' AND next_attempt_at <= ?3
                           AND (lease_until IS NULL OR lease_until <= ?3)
                         ORDER BY next_attempt_at LIMIT ?4)
                     RETURNING id, event_id, attempts",
                )?
                .query_map(
                    params![now + lease.as_millis() as i64, target, now, limit as i64, token],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect::<rusqlite::Result<_>>()?;
            let mut load = conn.prepare_cached(
                "SELECT e.body, r.raw, e.occurred_at, e.received_at FROM events e JOIN receipts r ON r.seq = e.receipt_seq WHERE e.id = ?1",
            )?;
            leased
                .into_iter()
                .map(|(id, event_id, attempts)| {
                    let (body, raw, occurred_at, received_at): (String, Vec<u8>, String, String) =
                        load.query_row([&event_id], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })?;
                    Ok(ClaimedDelivery {
                        id: DeliveryId::from_stored(id),
                        event_id: EventId::from_stored(event_id),
                        attempts,
                        lease_token: token,
                        occurred_at: Timestamp::parse(&occurred_at),
                        received_at: Timestamp::parse(&received_at),
                        body,
                        raw: raw.into(),
                    })
                })
                .collect()
        })
        .await
    }

    async fn claim_jobs(
        &self,
        kind: JobKind,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = self.clock.now_ms();
        let token = lease_token();
        self.call(move |conn| jobs::claim(conn, now, kind, limit, lease, token))
            .await
    }

    async fn renew_job(
        &self,
        id: &str,
        lease_token: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let id = id.to_owned();
        self.call(move |conn| jobs::renew(conn, now, &id, lease_token, lease))
            .await
    }

    async fn finish_job(&self, result: JobResult) -> Result<Option<Vec<String>>, StoreError> {
        let now = self.clock.now_ms();
        self.call(move |conn| jobs::finish(conn, &result, now))
            .await
    }

    async fn next_job_due(&self, kinds: &[JobKind]) -> Result<Option<i64>, StoreError> {
        let kinds = kinds.to_vec();
        self.call(move |conn| jobs::next_due(conn, &kinds)).await
    }

    async fn finish_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        if let Some(work) = self.attempts.push(record, self.clock.now_ms(), done) {
            // If the writer has stopped, the operation comes back in the error and is
            // dropped, which fails every result it was to take, this one too.
            let _closed = self.tx.send(Msg::Work(work)).await;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn next_due_at(&self, target: &str) -> Result<Option<i64>, StoreError> {
        let target = target.to_owned();
        let now = self.clock.now_ms();
        self.call(move |conn| {
            conn.prepare_cached(
                "SELECT MIN(next_attempt_at) FROM deliveries
                 WHERE target = ?1 AND status = 'pending' AND (lease_until IS NULL OR lease_until <= ?2)",
            )?
            .query_row(params![target, now], |r| r.get(0))
            .optional()
            .map(Option::flatten)
        })
        .await
    }

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryInfo>, StoreError> {
        self.read(move |conn| deliveries_in(conn, &filter)).await
    }

    async fn retry_dead(&self, target: Option<String>) -> Result<Retried, StoreError> {
        let now = self.clock.now_ms();
        self.call(move |conn| retry_dead_in(conn, target.as_deref(), now))
            .await
    }

    async fn sessions(&self, filter: SessionFilter) -> Result<Vec<SessionListing>, StoreError> {
        self.read(move |conn| sessions_in(conn, &filter)).await
    }

    async fn timeline(
        &self,
        vendor: &str,
        sources: Vec<String>,
        session_id: &str,
    ) -> Result<Timeline, StoreError> {
        let (vendor, session_id) = (vendor.to_owned(), session_id.to_owned());
        self.read(move |conn| timeline_in(conn, &vendor, &sources, &session_id))
            .await
    }

    async fn retry_delivery(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        let id = id.to_owned();
        let now = self.clock.now_ms();
        self.call(move |conn| {
            let requeued: Option<String> = conn
                .prepare_cached(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?2,
                         lease_until = NULL, lease_token = NULL, updated_at = ?2
                     WHERE id = ?1 AND status = 'dead'
                     RETURNING target",
                )?
                .query_row(params![id, now], |r| r.get(0))
                .optional()?;
            if let Some(target) = requeued {
                return Ok(RetryOutcome::Requeued { target });
            }
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM deliveries WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?;
            Ok(match status.as_deref().and_then(DeliveryStatus::parse) {
                Some(status) => RetryOutcome::NotDead(status),
                None => RetryOutcome::NotFound,
            })
        })
        .await
    }

    async fn replay(
        &self,
        event_id: &str,
        targets: Vec<String>,
    ) -> Result<Option<Vec<DeliveryId>>, StoreError> {
        let event_id = event_id.to_owned();
        let now = self.clock.now_ms();
        self.call(move |conn| {
            let Some(seq) = event_seq(conn, &event_id)? else {
                return Ok(None);
            };
            let key = EventKey { id: &event_id, seq };
            targets
                .iter()
                .map(|target| insert_delivery(conn, key, target, now, None))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(Some)
        })
        .await
    }

    async fn events(&self, filter: EventFilter) -> Result<Vec<StoredEvent>, StoreError> {
        self.call(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events e JOIN receipts r ON r.seq = e.receipt_seq
                 WHERE (?1 IS NULL OR e.source = ?1) AND (?2 IS NULL OR e.session_id = ?2)
                   AND (?3 IS NULL OR e.type = ?3) AND (?4 IS NULL OR e.seq < ?4)
                 ORDER BY e.seq DESC LIMIT ?5"
            ))?
            .query_map(
                params![
                    filter.source,
                    filter.session_id,
                    filter.event_type,
                    filter.before,
                    filter.limit as i64
                ],
                stored_event,
            )?
            .collect()
        })
        .await
    }

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events e JOIN receipts r ON r.seq = e.receipt_seq WHERE e.id = ?1"
            ))?
            .query_row([&id], stored_event)
            .optional()
        })
        .await
    }

    async fn session(
        &self,
        vendor: &str,
        session_id: &str,
    ) -> Result<Option<SessionView>, StoreError> {
        let (vendor, session_id) = (vendor.to_owned(), session_id.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE vendor = ?1 AND session_id = ?2"
            ))?
            .query_row([&vendor, &session_id], session_row)
            .optional()
            .map(|found| found.map(|listing| listing.view))
        })
        .await
    }

    async fn delivery_counts(&self) -> Result<Vec<TargetCounts>, StoreError> {
        // On the reader connection, never the writer: a count over a million pending
        // deliveries takes ~0.1 s, which on the writer thread every ingest would wait for.
        self.read(|conn| {
            conn.prepare_cached(COUNT_DELIVERIES)?
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(fold_counts)
        })
        .await
    }

    async fn prune(&self, cutoff: Timestamp) -> Result<Pruned, StoreError> {
        prune::prune(self, cutoff).await
    }

    async fn claim_recovery(
        &self,
        source: &str,
        lease: Duration,
    ) -> Result<Option<RecoveryClaim>, StoreError> {
        self.claim_recovery_row(source, lease).await
    }

    async fn save_recovery(
        &self,
        source: &str,
        token: i64,
        progress: RecoveryProgress,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.save_recovery_row(source, token, progress, lease).await
    }

    async fn backfill(&self, backfill: Backfill) -> Result<usize, StoreError> {
        self.backfill_target(backfill).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).await.is_ok() {
            // Answered once the writer has finished; dropped if it had stopped already.
            closed.await.unwrap_or(());
        }
    }
}

#[cfg(test)]
mod tests;
