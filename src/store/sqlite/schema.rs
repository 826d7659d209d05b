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

pub(super) fn configure(conn: &Connection) -> anyhow::Result<()> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .context("Failed to switch the SQLite store to WAL")?;
    anyhow::ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "SQLite refused WAL mode (got {mode})"
    );
    // SQLite commits with NORMAL: `synchronous = "full"` is kept by the syncer thread, which
    // fsyncs the WAL before any answer, so the writer never stalls on fsync. Savepoint
    // journals stay in memory; a 32 MiB page cache; checkpoints are the checkpointer
    // thread's job, so commits never stop to copy the WAL back; a WAL that grew past 64 MiB
    // is cut back when it starts over.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = OFF;
         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -32768; PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = 67108864;",
    )
    .context("Failed to configure the SQLite store")?;
    Ok(())
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
