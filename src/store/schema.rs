//! The store's schema, written once for both SQL dialects.
//!
//! One list of migrations: a step is either shared, with `{key}`, `{int}`, `{bytes}` and
//! `{without_rowid}` standing for what the dialects spell differently, or belongs to one dialect, with
//! a comment saying why it differs. Each backend applies the steps of its dialect, in order,
//! recording the number of migrations applied, so the two cannot drift apart unnoticed: a
//! test compares the tables and columns both end with.

/// The SQL dialect a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One step of a migration.
pub enum Step {
    Shared(&'static str),
    Only(Dialect, &'static str),
}

use Dialect::{Postgres, Sqlite};
use Step::{Only, Shared};

/// Every migration, in the order applied. Never edit one that has shipped: add another.
pub const MIGRATIONS: &[&[Step]] = &[
    &[
        Shared(
            r#"
CREATE TABLE receipts (
    seq {key},
    source TEXT NOT NULL,
    outcome TEXT NOT NULL,             -- accepted | ignored | duplicate
    vendor_event_type TEXT,
    message_id TEXT,
    received_at TEXT NOT NULL,
    raw {bytes} NOT NULL
);
CREATE TABLE events (
    seq {key},
    id TEXT NOT NULL UNIQUE,
    receipt_seq {int} NOT NULL REFERENCES receipts(seq),
    source TEXT NOT NULL,
    session_id TEXT NOT NULL,
    type TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_by_session ON events(source, session_id);
CREATE TABLE deliveries (
    seq {key},
    id TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL REFERENCES events(id),
    target TEXT NOT NULL,
    status TEXT NOT NULL,              -- pending | delivered | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {int} NOT NULL,    -- unix ms
    lease_until {int},                 -- unix ms; NULL = not leased
    lease_token {int},                 -- the current claim's token
    last_status INTEGER,
    last_error TEXT,
    created_at {int} NOT NULL,
    updated_at {int} NOT NULL
);
CREATE INDEX deliveries_due ON deliveries(target, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_event ON deliveries(event_id);
CREATE INDEX deliveries_by_target ON deliveries(target, seq);
CREATE TABLE attempts (
    seq {key},
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,          -- from 1 within the delivery's current schedule
    started_at {int} NOT NULL,         -- unix ms
    duration_ms {int} NOT NULL,
    status_code INTEGER,
    error TEXT
);
CREATE INDEX attempts_by_delivery ON attempts(delivery_id, seq);
"#,
        ),
        // SQLite first kept session records in a WITHOUT ROWID table ({without_rowid});
        // migration 2 undoes it.
        Shared(
            r#"
CREATE TABLE sessions (
    vendor TEXT NOT NULL,
    session_id TEXT NOT NULL,
    record TEXT NOT NULL,              -- JSON of sessions::SessionRecord
    finalized_event_id TEXT,           -- set once: exactly one session.finalized per session
    created_at {int} NOT NULL,
    updated_at {int} NOT NULL,
    PRIMARY KEY (vendor, session_id)
){without_rowid};
"#,
        ),
    ],
    &[
        // Fewer SQLite pages written per ingest (measured: 28 KB of WAL per request before,
        // 16 KB after). Indexes on random keys dirty a page of their own per insert, and no
        // SQLite query used these two: its admin listings filter as they scan newest first.
        // Session records (kilobytes of JSON) inserted at random places in a WITHOUT ROWID
        // b-tree split pages all the time; as a rowid table they are appended, and only the
        // small key index takes random inserts. PostgreSQL's planner uses both indexes.
        Only(
            Sqlite,
            r#"
DROP INDEX events_by_session;
DROP INDEX deliveries_by_event;
CREATE TABLE sessions_by_rowid (
    seq INTEGER PRIMARY KEY,
    vendor TEXT NOT NULL,
    session_id TEXT NOT NULL,
    record TEXT NOT NULL,
    finalized_event_id TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (vendor, session_id)
);
INSERT INTO sessions_by_rowid (vendor, session_id, record, finalized_event_id, created_at, updated_at)
    SELECT vendor, session_id, record, finalized_event_id, created_at, updated_at
    FROM sessions ORDER BY created_at;
DROP TABLE sessions;
ALTER TABLE sessions_by_rowid RENAME TO sessions;
"#,
        ),
        // PostgreSQL's retention deletes a receipt in one statement when no event refers to
        // it, which needs this index; SQLite's prunes in batches it reads in `seq` order.
        Only(
            Postgres,
            "CREATE INDEX events_by_receipt ON events(receipt_seq);",
        ),
    ],
    // Stored work a request leaves behind (a transcript to fetch), committed with it;
    // the deliveries of the events it holds are made when it ends.
    &[Shared(
        r#"
CREATE TABLE jobs (
    seq {key},
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,                -- transcript
    source TEXT NOT NULL,
    vendor TEXT NOT NULL,
    session_id TEXT NOT NULL,
    at TEXT NOT NULL,                  -- the event time its result is merged at
    holds TEXT NOT NULL,               -- JSON: the held events, each with its targets
    status TEXT NOT NULL,              -- pending | done
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {int} NOT NULL,    -- unix ms
    deadline {int} NOT NULL,           -- unix ms: ended by then, with whatever is known
    lease_until {int},
    lease_token {int},
    last_error TEXT,
    created_at {int} NOT NULL,
    updated_at {int} NOT NULL
);
CREATE INDEX jobs_due ON jobs(next_attempt_at) WHERE status = 'pending';
"#,
    )],
    // The operator's lists, each a bounded, indexed query (store/listing.rs): sessions
    // newest first (all, or of one vendor) paged by `(created_at, seq)`, and dead letters,
    // whose partial indexes hold only dead deliveries and so cost ingest nothing.
    &[
        // PostgreSQL's sessions had no sequence; SQLite's got its rowid `seq` in migration 2.
        Only(Postgres, "ALTER TABLE sessions ADD COLUMN seq BIGSERIAL;"),
        Shared(
            r#"
CREATE INDEX sessions_newest ON sessions(created_at, seq);
CREATE INDEX sessions_newest_by_vendor ON sessions(vendor, created_at, seq);
CREATE INDEX deliveries_dead ON deliveries(seq) WHERE status = 'dead';
CREATE INDEX deliveries_dead_by_target ON deliveries(target, seq) WHERE status = 'dead';
"#,
        ),
        // A session's timeline finds its events, and their deliveries, by index. Migration
        // 2 dropped these two from SQLite to write fewer pages per ingest; the console needs
        // them back (the cost is measured in BENCHMARKS.md). PostgreSQL kept both.
        Only(
            Sqlite,
            r#"
CREATE INDEX events_by_session ON events(source, session_id);
CREATE INDEX deliveries_by_event ON deliveries(event_id);
"#,
        ),
    ],
    // A delivery names its event by sequence as well as by id. Event ids are hashes, so
    // an index on them takes every insert at a random page: measured in a closed-loop
    // commit of ~240 WAL pages, `deliveries_by_event` wrote 61, as many as the events' own
    // id index. Sequences grow, so their index is appended to.
    &[
        Shared(
            r#"
ALTER TABLE deliveries ADD COLUMN event_seq {int};
UPDATE deliveries SET event_seq = (SELECT e.seq FROM events e WHERE e.id = deliveries.event_id);
"#,
        ),
        // PostgreSQL keeps `deliveries_by_event`: its foreign key from deliveries to events
        // needs it whenever retention deletes events.
        Only(
            Sqlite,
            r#"
DROP INDEX deliveries_by_event;
CREATE INDEX deliveries_of_event ON deliveries(event_seq);
"#,
        ),
    ],
    // An event names its session by sequence as well as by id, for the same reason:
    // vendors' session ids are random (Agntix's are UUIDs), so `events_by_session` took
    // each event at a random page too. The session's vendor is in the event's body.
    &[
        Shared("ALTER TABLE events ADD COLUMN session_seq {int};"),
        Only(
            Sqlite,
            r#"
UPDATE events SET session_seq = (SELECT s.seq FROM sessions s
    WHERE s.vendor = json_extract(events.body, '$.source.vendor')
      AND s.session_id = events.session_id);
DROP INDEX events_by_session;
CREATE INDEX events_of_session ON events(session_seq);
"#,
        ),
        // PostgreSQL keeps `events_by_session`, which its event list filters by.
        Only(
            Postgres,
            r#"
UPDATE events SET session_seq = (SELECT s.seq FROM sessions s
    WHERE s.vendor = events.body::jsonb -> 'source' ->> 'vendor'
      AND s.session_id = events.session_id);
"#,
        ),
    ],
    // A duplicate request names the event it repeated, so a session's timeline shows every
    // request its vendor sent, duplicates too. Only duplicates carry it: the partial index
    // costs accepted requests nothing.
    &[Shared(
        r#"
ALTER TABLE receipts ADD COLUMN repeats TEXT;
CREATE INDEX receipts_repeating ON receipts(repeats) WHERE repeats IS NOT NULL;
"#,
    )],
    // A commit looks up its session's jobs: the finalize wait a vendor's completing event
    // replaces, the archive a second recording joins (one per session, running or done),
    // the archive or transcript fetch a session.finalized waits for.
    &[Shared(
        "CREATE INDEX jobs_by_session ON jobs(vendor, session_id, kind);",
    )],
    // Recovery from vendors' list APIs (recovery/mod.rs): per source, how far its polls
    // have got and which run holds its lease, so that a restart resumes and replicas
    // take turns.
    &[Shared(
        r#"
CREATE TABLE recoveries (
    source TEXT PRIMARY KEY,
    done_until {int},                  -- unix ms: calls that ended before were looked at
    window_since {int},                -- the window a poll is in, unix ms
    window_until {int},
    cursor TEXT,                       -- the vendor's cursor of the next page in it
    lease_until {int},
    lease_token {int},
    updated_at {int} NOT NULL
);
"#,
    )],
];

/// Refuses a store migrated by a newer sessiongate: an older binary must not write to it.
pub fn check_version(version: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        version <= MIGRATIONS.len(),
        "The store's schema version {version} is newer than this sessiongate knows ({}); \
         refusing to run an older binary on it",
        MIGRATIONS.len()
    );
    Ok(())
}

/// Migration `index` (0-based) as `dialect` runs it.
pub fn migration(dialect: Dialect, index: usize) -> String {
    let (key, int, bytes, without_rowid) = match dialect {
        Sqlite => ("INTEGER PRIMARY KEY", "INTEGER", "BLOB", " WITHOUT ROWID"),
        Postgres => ("BIGSERIAL PRIMARY KEY", "BIGINT", "BYTEA", ""),
    };
    MIGRATIONS[index]
        .iter()
        .filter_map(|step| match step {
            Shared(sql) => Some(*sql),
            Only(d, sql) if *d == dialect => Some(*sql),
            Only(..) => None,
        })
        .map(|sql| {
            sql.replace("{key}", key)
                .replace("{int}", int)
                .replace("{bytes}", bytes)
                .replace("{without_rowid}", without_rowid)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_replaced_in_both_dialects() {
        for dialect in [Sqlite, Postgres] {
            for i in 0..MIGRATIONS.len() {
                let sql = migration(dialect, i);
                assert!(!sql.contains('{'), "{dialect:?} migration {}: {sql}", i + 1);
                assert!(
                    !sql.trim().is_empty(),
                    "{dialect:?} migration {} is empty",
                    i + 1
                );
            }
        }
    }

    /// `(table, column)` for every column of the store's tables, sorted.
    type Columns = Vec<(String, String)>;
    fn sqlite_columns() -> Columns {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut conn).unwrap();
        let mut columns = Vec::new();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for table in tables {
            let mut stmt = conn
                .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .unwrap();
            for name in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
                columns.push((table.clone(), name.unwrap()));
            }
        }
        columns.sort();
        columns
    }

    /// The two backends end with the same tables and columns (their indexes may differ,
    /// and only where a dialect step says why). SQLite's sessions keep a rowid `seq`.
    #[tokio::test]
    #[cfg_attr(
        not(sg_postgres),
        ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
    )]
    async fn both_dialects_end_with_the_same_tables_and_columns() {
        let sqlite = sqlite_columns();
        assert!(sqlite.contains(&("deliveries".into(), "lease_token".into())));
        let Some(url) = crate::testing::postgres_schema_url().await else {
            return;
        };
        let store = crate::store::postgres::PgStore::open(&url, 1)
            .await
            .unwrap();
        let mut postgres: Columns = store
            .columns()
            .await
            .unwrap()
            .into_iter()
            .filter(|(t, _)| t != "sessiongate_schema")
            .collect();
        postgres.sort();
        assert_eq!(sqlite, postgres);
    }
}
