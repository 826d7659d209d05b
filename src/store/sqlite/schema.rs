//! The SQLite schema: the shared migrations ([`crate::store::schema`]) applied in order at
//! start-up, and the connection's settings.

use anyhow::Context;
use rusqlite::Connection;

use crate::store::schema::{Dialect, MIGRATIONS, check_version, migration};

/// Turns off SQLite's memory statistics, once per process and before its first connection:
/// with them on, every allocation SQLite makes takes a global mutex to count it (measured:
/// 3% of the gateway's CPU under load, in `pthread_mutex_lock`/`unlock` from the writer).
/// Nothing here reads the statistics. If SQLite was started already (a test opened a
/// connection first), the setting is refused and the statistics stay on: slower, not wrong.
pub(super) fn tune_library() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_config` takes this option with one int argument; it only runs
        // before SQLite's initialisation, and answers SQLITE_MISUSE after it.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::os::raw::c_int,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(
                rc,
                "SQLite was initialised already; its memory statistics stay on"
            );
        }
    });
}

/// The page size of a new store. Most pages a commit writes are leaves of the two
/// random-key indexes (events by id, sessions by vendor id), each written whole to the WAL
/// for one changed row: 2 KiB pages wrote 14% fewer bytes per request than SQLite's 4 KiB
/// (BENCHMARKS.md, sixth stop), 1 KiB no fewer. A store created with another page size
/// keeps it (SQLite fixes it when the file is first written).
pub(super) const PAGE_SIZE: i64 = 2048;

/// Sets the connection up; answers the store's page size, which a WAL frame holds.
pub(super) fn configure(conn: &Connection) -> anyhow::Result<i64> {
    conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE};"))
        .context("Failed to set the SQLite page size")?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .context("Failed to switch the SQLite store to WAL")?;
    anyhow::ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "SQLite refused WAL mode (got {mode})"
    );
    // SQLite commits with NORMAL: `synchronous = "full"` is kept by the syncer thread, which
    // fsyncs the WAL before any answer, so the writer never stalls on fsync. Savepoint
    // journals stay in memory; a 16 MiB page cache (8192 pages of 2 KiB: SQLite walks every
    // cached page at a commit that split a B-tree page, so more pages cost every commit more,
    // and 32 MiB measured no faster); checkpoints are the checkpointer
    // thread's job, so commits never stop to copy the WAL back; a WAL that grew past 64 MiB
    // is cut back when it starts over.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = OFF;
         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = 67108864;",
    )
    .context("Failed to configure the SQLite store")?;
    conn.query_row("PRAGMA page_size", [], |r| r.get(0))
        .context("Failed to read the SQLite page size")
}

pub(crate) fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .context("Failed to read the store's schema version")? as usize;
    check_version(version)?;
    for i in version..MIGRATIONS.len() {
        let tx = conn.transaction()?;
        tx.execute_batch(&migration(Dialect::Sqlite, i))
            .with_context(|| format!("Failed to apply store migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "Applied store migration");
    }
    Ok(())
}
