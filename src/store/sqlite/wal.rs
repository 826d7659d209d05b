//! The WAL's checkpointer thread, and the hand-over that lets the writer start the WAL over.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::Connection;

/// How often the checkpointer copies the WAL back into the database file (more often in
/// tests, whose WAL is to stay small).
pub(super) const CHECKPOINT_EVERY: Duration =
    Duration::from_millis(if cfg!(test) { 10 } else { 100 });
/// The WAL size (MiB) past which the writer itself finishes a checkpoint between two
/// batches, so that its next transaction starts the WAL over (`storage.wal_size_mib`; 1 MiB
/// in unit tests, so that they can show the WAL staying bounded without writing hundreds of
/// megabytes).
pub const DEFAULT_WAL_SIZE_MIB: u32 = if cfg!(test) { 1 } else { 32 };
/// The WAL frames in `mib` MiB, for a store of `page_bytes` pages (a frame's payload).
pub(super) fn restart_frames(mib: u32, page_bytes: i64) -> i64 {
    i64::from(mib) * 1024 * 1024 / page_bytes.max(512)
}
/// Passes the checkpointer makes at most to catch up before it hands over to the writer, and
/// the frames left uncopied that are few enough to hand over at once.
const CATCH_UP_PASSES: usize = 4;
const CATCH_UP_FRAMES: i64 = 64;
/// How often the checkpointer looks whether the writer has taken its turn.
pub(super) const HANDOVER_POLL: Duration = Duration::from_millis(1);

/// The handover between the checkpointer and the writer.
#[derive(Default)]
pub(super) struct WalState {
    /// Set by the checkpointer when it has copied a long WAL: the writer may now finish the
    /// checkpoint (only what was committed since) and start the WAL over. Cleared by the
    /// writer when done; the checkpointer waits meanwhile, so the two never contend.
    pub(super) restart: AtomicBool,
}

/// Copies committed WAL frames into the database file from its own connection, with PASSIVE
/// checkpoints that never block the writer. Under sustained load the writer commits while a
/// checkpoint runs, so the WAL is never wholly copied and could never start over; once it is
/// long, the checkpointer hands over to the writer, which alone can find a moment with no
/// commit in progress (see [`Writer::restart_wal`]). Stops when `stop` is dropped.
///
/// A passive checkpoint that does not copy the whole WAL leaves what it copied to the
/// kernel (SQLite fsyncs the database file only once the WAL is wholly copied), so under
/// load the pages copied since the last restart waited in the page cache for the fsync that
/// must precede it, which then took 12–15 ms (up to 29) while every caller of the batch held
/// open meanwhile waited. The checkpointer fsyncs the file itself after each pass that
/// copied something, on its own thread, leaving that fsync only the frames of the writer's
/// last pass to write.
pub(super) fn checkpointer(
    path: PathBuf,
    wal: Arc<WalState>,
    restart_frames: i64,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let conn = match Connection::open(&path) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::error!(error = %crate::telemetry::chain(&e), "The SQLite checkpointer cannot open the store; the WAL will grow");
            return;
        }
    };
    if let Err(e) = conn.execute_batch("PRAGMA busy_timeout = 1000;") {
        tracing::warn!(error = %crate::telemetry::chain(&e), "The SQLite checkpointer runs without a busy timeout");
    }
    let mut flush = Flush::open(&path);
    let mut wait = CHECKPOINT_EVERY;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(wait) {
        wait = CHECKPOINT_EVERY;
        if wal.restart.load(Ordering::Acquire) {
            // The writer has not taken its turn yet (it does after its next batch).
            wait = HANDOVER_POLL;
            continue;
        }
        match passive_checkpoint(&conn) {
            Ok((_, frames, copied)) if frames >= restart_frames => {
                flush.after(copied);
                // Copy what was committed during that pass too, so that the writer's own
                // turn, which holds up every caller, has only a few frames left to copy.
                for _ in 0..CATCH_UP_PASSES {
                    match passive_checkpoint(&conn) {
                        Ok((_, frames, copied)) => {
                            flush.after(copied);
                            if frames - copied <= CATCH_UP_FRAMES {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
                wal.restart.store(true, Ordering::Release);
                wait = HANDOVER_POLL;
            }
            Ok((_, _, copied)) => flush.after(copied),
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::chain(&e), "SQLite checkpoint failed; will try again")
            }
        }
    }
}

/// The checkpointer's own handle on the database file, to fsync what its passes copied.
struct Flush {
    file: Option<std::fs::File>,
    /// The WAL frames copied as of the last fsync (SQLite counts from the WAL's start).
    flushed: i64,
}

impl Flush {
    fn open(path: &std::path::Path) -> Flush {
        let file = std::fs::File::open(path)
            .inspect_err(|e| {
                tracing::warn!(error = %crate::telemetry::chain(e), "The SQLite checkpointer cannot open the database file to flush it; the WAL restarts will wait longer")
            })
            .ok();
        Flush { file, flushed: 0 }
    }

    /// Fsyncs the database file if SQLite's count of copied frames moved since the last
    /// fsync. The count starts from zero again when the WAL starts over; a pass that lands
    /// on the old count by chance skips one fsync, which costs the next restart a little
    /// time and nothing else.
    fn after(&mut self, copied: i64) {
        if copied == self.flushed || copied <= 0 {
            self.flushed = copied.max(0);
            return;
        }
        let Some(file) = &self.file else { return };
        match file.sync_data() {
            Ok(()) => self.flushed = copied,
            // Not needed for durability (the writer's restart fsyncs the file before the WAL
            // starts over); only for speed.
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::chain(&e), "The SQLite checkpointer failed to fsync the database file; the next WAL restart flushes it")
            }
        }
    }
}

/// Copies what it can of the WAL into the database file without waiting for anyone.
/// Returns (busy, frames in the WAL, frames copied).
pub(super) fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}
