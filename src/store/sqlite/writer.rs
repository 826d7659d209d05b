//! The writer thread: group commit of every store operation, and the syncer that makes each
//! commit durable before its callers hear back.
//!
//! Operations run one after another in one open transaction, which commits when the syncer
//! is free (or the batch is full). An operation that fails may have written part of its
//! work: then the transaction is rolled back and the operations before it run again, so one
//! failure undoes only itself. (Each operation had its own savepoint before; its journal
//! copied every page the operation changed, 5% of the gateway's CPU under load, to undo
//! failures that hardly ever happen.) Under `synchronous = "full"` the syncer fsyncs the
//! WAL, once for every batch committed since the last, and only then answers the callers.
//!
//! When the WAL is long, the writer checkpoints it between two batches so that the next
//! commit starts it over. Under `full` that checkpoint skips SQLite's own fsyncs: it runs
//! only once the syncer has made every commit durable (so the WAL needs no sync first), and
//! the syncer fsyncs the database file before the next commit may overwrite the WAL (so
//! what was copied is on disk first). The writer goes on running operations meanwhile;
//! `tests/api/powerloss.rs` cuts the power around this order.

use std::cell::Cell;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::wal::{WalState, passive_checkpoint};

/// The most operations one transaction takes.
pub(super) const MAX_BATCH: usize = 1024;
/// Operations waiting for the writer before callers are made to wait (back-pressure).
pub(super) const QUEUE_DEPTH: usize = 8192;

/// One operation for the writer: `run` it in the open transaction (its reply is answered
/// after the commit), or `refuse` it unrun when no transaction can hold it.
pub(super) struct Work {
    pub(super) run: Run,
    pub(super) refuse: Box<dyn FnOnce(String) + Send>,
}

/// Runs an operation: whether it succeeded (its writes stay), and how to answer its caller.
/// It may run again, from the same state, when a later operation of its transaction fails;
/// only the reply of its last run is answered (the others are dropped unanswered).
pub(super) type Run = Box<dyn FnMut(&Connection) -> (bool, Reply) + Send>;
pub(super) type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

pub(super) enum Msg {
    Work(Work),
    Close(oneshot::Sender<()>),
    /// From the syncer: every commit handed to it is durable and answered.
    Synced,
}

/// What the writer hands the syncer.
pub(super) enum Synced {
    /// A committed batch's replies, answered once the WAL is on disk.
    Batch(Vec<Reply>, Result<(), String>),
    /// The database file, after a checkpoint without fsyncs: on disk before the next commit
    /// starts the WAL over on top of the frames that checkpoint copied.
    Database,
}

/// How often the writer looks whether the syncer is done, when it must wait for it.
const SYNCER_POLL: Duration = Duration::from_micros(100);
/// The largest batch the writer makes durable itself, when the syncer is idle: for a few
/// callers one fsync on the writer costs less than handing the batch to the syncer and its
/// answer back (two thread wake-ups, each a wait for a core on a loaded 2-core machine);
/// a large batch goes to the syncer, so that the next one gathers meanwhile.
pub(super) const INLINE_SYNC_MAX: usize = 8;

/// How many fsyncs of the WAL each thread made for commits (the unit tests read them).
#[derive(Default)]
pub(super) struct SyncCounts {
    pub(super) by_writer: AtomicU64,
    pub(super) by_syncer: AtomicU64,
}

/// Makes committed batches durable, then answers them, while the writer goes on with the
/// next batch: fsync latency is overlapped with work instead of stalling the writer. The
/// WAL is append-only between checkpoints, so one fsync covers every batch committed before
/// it; replies leave in commit order, so no answer (say, "duplicate") can get ahead of the
/// durability of what it depends on. When it has answered everything it was given, it tells
/// the writer, which holds its open transaction until then (see [`Writer::run`]).
pub(super) fn syncer(
    wal: File,
    database: File,
    batches: std::sync::mpsc::Receiver<Synced>,
    writer: SyncerLink,
    syncs: Arc<SyncCounts>,
) {
    while let Ok(first) = batches.recv() {
        let mut pending = vec![first];
        pending.extend(batches.try_iter());
        let commits = pending.iter().any(|p| matches!(p, Synced::Batch(..)));
        let synced = if commits {
            syncs.by_syncer.fetch_add(1, Ordering::Relaxed);
            sync_wal(&wal)
        } else {
            Ok(())
        };
        let count = pending.len();
        for item in pending {
            match item {
                Synced::Batch(replies, committed) => {
                    let outcome = committed.and(synced.clone());
                    for reply in replies {
                        reply(outcome.clone());
                    }
                }
                Synced::Database => {
                    if let Err(e) = database.sync_data() {
                        // The WAL still holds every commit, and the writer commits nothing
                        // more (a commit would start the WAL over on unsynced pages).
                        tracing::error!(error = %crate::telemetry::chain(&e), "Failed to fsync the SQLite database file after a checkpoint; the store refuses writes until restarted");
                        writer.database_failed.store(true, Ordering::Release);
                    }
                }
            }
        }
        if writer.unsynced.fetch_sub(count, Ordering::AcqRel) == count {
            // A full queue means the writer has work to wake it anyway.
            if let Some(tx) = writer.wake.upgrade() {
                // Full: the writer has work that wakes it anyway; closed: it has stopped.
                tx.try_send(Msg::Synced).unwrap_or(());
            }
        }
    }
}

/// Fsyncs the WAL; the error is what every caller of the batches it covers hears.
fn sync_wal(wal: &File) -> Result<(), String> {
    wal.sync_data().map_err(|e| {
        tracing::error!(error = %crate::telemetry::chain(&e), "Failed to fsync the SQLite WAL; answering the batch with an error");
        format!("fsync failed: {e}")
    })
}

/// The syncer as the writer holds it: its queue and its thread, and the writer's own handle
/// on the WAL for the small batches it makes durable itself (see [`INLINE_SYNC_MAX`]),
/// opened by its path as SQLite's is, so that a kernel or a test's power-loss layer sees
/// its fsyncs as the file's.
pub(super) struct SyncerHandle {
    pub(super) to_syncer: std::sync::mpsc::Sender<Synced>,
    pub(super) thread: std::thread::JoinHandle<()>,
    pub(super) wal: File,
}

/// How the syncer reaches the writer: how many commits it has not answered yet, and a
/// weak handle on the writer's queue (so the queue still closes when the store is dropped).
pub(super) struct SyncerLink {
    pub(super) unsynced: Arc<AtomicUsize>,
    pub(super) wake: mpsc::WeakSender<Msg>,
    /// Set when the database file could not be fsynced after a checkpoint.
    pub(super) database_failed: Arc<AtomicBool>,
}

/// The writer thread's state: the connection and the file lock until the store closes.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) lock: File,
    pub(super) wal: Arc<WalState>,
    pub(super) stop_checkpoints: std::sync::mpsc::Sender<()>,
    /// `None` under `synchronous = "normal"`.
    pub(super) syncer: Option<SyncerHandle>,
    pub(super) syncs: Arc<SyncCounts>,
    /// Commits (and database-file syncs) handed to the syncer and not yet done.
    pub(super) unsynced: Arc<AtomicUsize>,
    /// A checkpoint without fsyncs copied frames into the database file, whose fsync the
    /// syncer has not finished: no commit until it has.
    pub(super) database_pending: Cell<bool>,
    /// The syncer could not fsync the database file: every write is refused from then on.
    pub(super) database_failed: Arc<AtomicBool>,
}

/// The writer's open transaction: the operations whose writes it holds, each with the reply
/// of its last run, and the replies of operations that failed in it (answered with it).
pub(super) struct Open {
    pub(super) done: Vec<(Run, Reply)>,
    pub(super) failed: Vec<Reply>,
}

impl Open {
    fn len(&self) -> usize {
        self.done.len() + self.failed.len()
    }

    fn replies(self) -> impl Iterator<Item = Reply> {
        self.done
            .into_iter()
            .map(|(_, reply)| reply)
            .chain(self.failed)
    }
}

impl Writer {
    /// Runs every operation as it arrives, each in its own savepoint of one open
    /// transaction, and commits when the syncer is free to make the commit durable at once
    /// (or the batch is full). A commit made while the syncer is still busy would wait for
    /// the next fsync anyway; holding the transaction open until then gathers more work into
    /// each commit, so pages that several operations touch are written to the WAL once.
    pub(super) fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut open: Option<Open> = None;
        let mut closing = None;
        'serve: loop {
            if let Some(batch) = &open
                && (batch.len() >= MAX_BATCH || self.unsynced.load(Ordering::Acquire) == 0)
            {
                let batch = open.take().expect("checked above");
                self.commit(batch);
                self.restart_wal();
                continue;
            }
            let first = match rx.blocking_recv() {
                Some(msg) => msg,
                None => break,
            };
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Work(work) => self.execute(&mut open, work),
                    Msg::Close(done) => {
                        closing = Some(done);
                        break 'serve;
                    }
                    Msg::Synced => {}
                }
                if open.as_ref().is_some_and(|b| b.len() >= MAX_BATCH) {
                    break;
                }
                next = rx.try_recv().ok();
            }
        }
        if let Some(batch) = open.take() {
            self.commit(batch);
        }
        // Refuse whatever is still queued, so no caller waits forever.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Work(work) => (work.refuse)("the store is closing".to_owned()),
                // A closer that has gone needs no answer.
                Msg::Close(done) => done.send(()).unwrap_or(()),
                Msg::Synced => {}
            }
        }
        let Writer {
            conn,
            lock,
            stop_checkpoints,
            syncer,
            ..
        } = self;
        // Let the syncer make the last batches durable and answer them.
        if let Some(SyncerHandle {
            to_syncer, thread, ..
        }) = syncer
        {
            drop(to_syncer);
            if thread.join().is_err() {
                // Its batches' callers were answered with an error when their replies dropped.
                tracing::error!("The SQLite sync thread panicked");
            }
        }
        drop(stop_checkpoints);
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "Failed to checkpoint the SQLite store at close");
        }
        drop(conn);
        // Release the file before answering `close`, so the caller may reopen it at once.
        drop(lock);
        if let Some(done) = closing {
            // A closer that has gone needs no answer.
            done.send(()).unwrap_or(());
        }
    }

    /// Runs one operation in the open transaction (opening one if needed). If it fails,
    /// its writes are undone by rolling the transaction back and running again the
    /// operations before it.
    fn execute(&self, open: &mut Option<Open>, work: Work) {
        if self.database_failed.load(Ordering::Acquire) {
            (work.refuse)(DATABASE_FAILED.to_owned());
            return;
        }
        if open.is_none() {
            if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
                // Run outside a transaction, its writes would commit one by one whatever
                // its answer: refuse it unrun.
                tracing::error!(error = %e, "Store transaction failed to begin; refusing the operation");
                (work.refuse)(format!("cannot begin a transaction: {e}"));
                return;
            }
            *open = Some(Open {
                done: Vec::with_capacity(64),
                failed: Vec::new(),
            });
        }
        let mut run = work.run;
        let (ok, reply) = run(&self.conn);
        let batch = open.as_mut().expect("opened above");
        if ok {
            batch.done.push((run, reply));
            return;
        }
        batch.failed.push(reply);
        if let Err(e) = self.redo(batch) {
            // A failed operation's writes may still be in the transaction, where they would
            // commit with the batch: undo the whole transaction and fail every caller in it
            // (each will retry), rather than commit what was answered as failed.
            tracing::error!(error = %e, "Store transaction could not be undone and redone; failing the batch");
            let batch = open.take().expect("opened above");
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "Store rollback failed");
            }
            let why = format!("cannot undo a failed operation: {e}");
            for reply in batch.replies() {
                reply(Err(why.clone()));
            }
        }
    }

    /// Rolls the open transaction back and runs its successful operations again, in order,
    /// so it holds their writes and none of the failed ones'. An operation that fails on
    /// its second run joins the failed, and the rest run again without it.
    fn redo(&self, batch: &mut Open) -> rusqlite::Result<()> {
        'again: loop {
            self.conn.execute_batch("ROLLBACK; BEGIN IMMEDIATE")?;
            for i in 0..batch.done.len() {
                let (run, reply) = &mut batch.done[i];
                let (ok, again) = run(&self.conn);
                // The earlier run's reply is dropped unanswered; this one stands.
                *reply = again;
                if !ok {
                    let (_, reply) = batch.done.remove(i);
                    batch.failed.push(reply);
                    continue 'again;
                }
            }
            return Ok(());
        }
    }

    /// Commits the open transaction and has its callers answered once it is durable; first,
    /// after a checkpoint without fsyncs, waits until the database file is on disk.
    fn commit(&self, batch: Open) {
        let spill_off = self.database_pending.replace(false);
        if spill_off {
            self.wait_for_syncer();
        }
        if self.database_failed.load(Ordering::Acquire) {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "Store rollback failed");
            }
            for reply in batch.replies() {
                reply(Err(DATABASE_FAILED.to_owned()));
            }
            return;
        }
        let committed = self.conn.execute_batch("COMMIT").map_err(|e| {
            tracing::error!(error = %e, "Store commit failed; answering every caller in the batch with an error");
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "Store rollback after a failed commit failed");
            }
            format!("commit failed: {e}")
        });
        if spill_off && let Err(e) = self.conn.execute_batch("PRAGMA cache_spill = ON") {
            tracing::warn!(error = %e, "SQLite cache spill stays off");
        }
        self.answer(batch.replies().collect(), committed);
    }

    /// Blocks until the syncer has done everything handed to it (one fsync, usually).
    fn wait_for_syncer(&self) {
        while self.unsynced.load(Ordering::Acquire) != 0 {
            if self
                .syncer
                .as_ref()
                .is_none_or(|syncer| syncer.thread.is_finished())
            {
                // It has gone (it panicked): what it held was answered with an error.
                self.database_failed.store(true, Ordering::Release);
                return;
            }
            std::thread::sleep(SYNCER_POLL);
        }
    }

    /// Answers a committed batch once the WAL is on disk: a small one after the writer's
    /// own fsync when the syncer holds nothing (so every earlier commit is durable and
    /// answered, and answers still leave in commit order), any other through the syncer.
    /// Without a syncer (`synchronous = "normal"`), at once.
    fn answer(&self, replies: Vec<Reply>, committed: Result<(), String>) {
        if let Some(syncer) = &self.syncer
            && replies.len() <= INLINE_SYNC_MAX
            && self.unsynced.load(Ordering::Acquire) == 0
        {
            self.syncs.by_writer.fetch_add(1, Ordering::Relaxed);
            let outcome = committed.and_then(|()| sync_wal(&syncer.wal));
            for reply in replies {
                reply(outcome.clone());
            }
            return;
        }
        match &self.syncer {
            Some(SyncerHandle { to_syncer, .. }) => {
                self.unsynced.fetch_add(1, Ordering::AcqRel);
                if let Err(std::sync::mpsc::SendError(Synced::Batch(replies, _))) =
                    to_syncer.send(Synced::Batch(replies, committed))
                {
                    self.unsynced.fetch_sub(1, Ordering::AcqRel);
                    for reply in replies {
                        reply(Err("the store is closing".into()));
                    }
                }
            }
            None => {
                for reply in replies {
                    reply(committed.clone());
                }
            }
        }
    }

    /// Once the checkpointer has copied a long WAL, finishes the checkpoint between two
    /// batches, when no commit is in progress: only the frames committed since its pass are
    /// left to copy, and with every frame copied the next transaction writes the WAL from its
    /// start again. Without it the WAL grows for as long as the load lasts, and every commit
    /// pays for extending a file (measured: ~900 MB in 8 s, 11% of the writer's time zeroing
    /// new blocks).
    fn restart_wal(&self) {
        if !self.wal.restart.load(Ordering::Acquire) {
            return;
        }
        let outcome = match &self.syncer {
            Some(SyncerHandle { to_syncer, .. }) => self.checkpoint_synced(to_syncer),
            // SQLite's own checkpoint: it fsyncs the WAL, copies, fsyncs the database file.
            None => passive_checkpoint(&self.conn).map(drop),
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "SQLite checkpoint failed; will try again");
        }
        // Whatever the outcome, the checkpointer goes on; it hands over again when needed.
        self.wal.restart.store(false, Ordering::Release);
    }

    /// The checkpoint without SQLite's two fsyncs, which stalled every caller for both:
    /// the WAL needs none once the syncer has made every commit durable (this waits for
    /// it, one fsync at most), and the database file's is the syncer's, finished before the
    /// next commit (see [`Writer::commit`]). Until then no frame may reach the WAL, so the
    /// page cache does not spill.
    fn checkpoint_synced(
        &self,
        to_syncer: &std::sync::mpsc::Sender<Synced>,
    ) -> rusqlite::Result<()> {
        self.wait_for_syncer();
        if self.database_failed.load(Ordering::Acquire) {
            return Ok(());
        }
        // From here the next commit turns the page cache's spilling back on.
        self.database_pending.set(true);
        self.conn
            .execute_batch("PRAGMA cache_spill = OFF; PRAGMA synchronous = OFF")?;
        let copied = passive_checkpoint(&self.conn);
        if let Err(e) = self.conn.execute_batch("PRAGMA synchronous = NORMAL") {
            // Later checkpoints (the one at close too) would skip their fsyncs.
            tracing::error!(error = %e, "SQLite synchronous could not be restored; the store refuses writes until restarted");
            self.database_failed.store(true, Ordering::Release);
        }
        self.unsynced.fetch_add(1, Ordering::AcqRel);
        if to_syncer.send(Synced::Database).is_err() {
            self.unsynced.fetch_sub(1, Ordering::AcqRel);
            self.database_failed.store(true, Ordering::Release);
        }
        copied.map(drop)
    }
}

/// Why every write is refused once a checkpoint could not be made durable.
const DATABASE_FAILED: &str = "the SQLite database file could not be made durable after a checkpoint; \
     the store refuses writes until the gateway is restarted (the WAL still holds every commit)";
