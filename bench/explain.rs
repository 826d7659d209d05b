//! The operator's lists at scale: fills a store with 1M events (500k sessions, 1.5M
//! deliveries of which 1% dead) and prints, for each list the console and the admin API
//! read, the SQL the store runs, its plan and its time, on SQLite and on PostgreSQL.
//!
//! `cargo run --release --bin explain [-- --events N]`; PostgreSQL runs when
//! `SESSIONGATE_TEST_POSTGRES_URL` is set (in a schema of its own, dropped at the end).

use std::time::Instant;

use sessiongate::store::listing::{Arg, Built, deliveries_query, sessions_query};
use sessiongate::store::schema::Dialect;
use sessiongate::store::{DELIVERY_COLUMNS, DeliveryFilter, DeliveryStatus, SessionFilter};

/// The lists, as the store builds them: (what, statement for each dialect).
/// A session the fill made, with two events: `s-K` has events `2K` and `2K + 1` (Agntix's,
/// as `2K` is a multiple of 4).
fn probe(events: i64) -> (String, i64) {
    let k = events / 8 * 2;
    (format!("s-{k}"), 2 * k)
}

fn lists(dialect: Dialect, newest_ms: i64, probe_session: &str) -> Vec<(&'static str, Built)> {
    let session = |f: SessionFilter| sessions_query(dialect, &SessionFilter { limit: 25, ..f });
    let dead = |target: Option<&str>| {
        deliveries_query(
            dialect,
            DELIVERY_COLUMNS,
            &DeliveryFilter {
                status: Some(DeliveryStatus::Dead),
                target: target.map(Into::into),
                limit: 50,
                ..Default::default()
            },
        )
    };
    vec![
        ("sessions, newest first", session(SessionFilter::default())),
        (
            "sessions of one vendor",
            session(SessionFilter {
                vendor: Some("agntix".into()),
                ..Default::default()
            }),
        ),
        (
            "a session by id (any vendor)",
            session(SessionFilter {
                session_id: Some(probe_session.into()),
                vendors: vec!["pathors".into(), "agntix".into()],
                ..Default::default()
            }),
        ),
        (
            "sessions first seen in one hour, two hours back",
            session(SessionFilter {
                since: Some(newest_ms - 7_200_000),
                until: Some(newest_ms - 3_600_000),
                ..Default::default()
            }),
        ),
        (
            "the next page of sessions",
            session(SessionFilter {
                before: Some((newest_ms - 3_600_000, 400_000)),
                ..Default::default()
            }),
        ),
        ("dead letters", dead(None)),
        ("dead letters of one target", dead(Some("crm"))),
    ]
}

fn sqlite_args(built: &Built) -> Vec<rusqlite::types::Value> {
    built
        .args
        .iter()
        .map(|a| match a {
            Arg::Text(s) => rusqlite::types::Value::Text(s.clone()),
            Arg::Int(n) => rusqlite::types::Value::Integer(*n),
        })
        .collect()
}

/// Rows: 1 receipt and 1 event each; 2 events per session; 1.5 deliveries per event.
const FILL_SQLITE: &str = "
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
INSERT INTO receipts (seq, source, outcome, vendor_event_type, message_id, received_at, raw)
SELECT i, CASE i % 4 WHEN 0 THEN 'agntix' WHEN 1 THEN 'agntix' ELSE 'pathors' END, 'accepted',
       'x', NULL, '2026-12-01T00:00:00Z', x'7b7d' FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
INSERT INTO events (seq, id, receipt_seq, source, session_id, session_seq, type, occurred_at,
                    received_at, body)
SELECT i, 'evt_' || lower(hex(randomblob(16))), i,
       CASE i % 4 WHEN 0 THEN 'agntix' WHEN 1 THEN 'agntix' ELSE 'pathors' END,
       's-' || (i / 2), i / 2 + 1, 'session.ended', '2026-12-01T00:00:00Z', '2026-12-01T00:00:00Z', '{}' FROM n;
";

fn sqlite(events: i64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("explain.db");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let store = sessiongate::store::sqlite::SqliteStore::open(
            &path,
            sessiongate::store::settings::Synchronous::Normal,
        )
        .await?;
        sessiongate::store::Store::close(&store).await;
        anyhow::Ok(())
    })?;
    let conn = rusqlite::Connection::open(&path)?;
    let started = Instant::now();
    for statement in FILL_SQLITE.split(';').filter(|s| !s.trim().is_empty()) {
        conn.execute(statement, [events])?;
    }
    let newest_ms: i64 = 1_790_000_000_000 + events / 2 * 100;
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 / 2)
         INSERT INTO sessions (seq, vendor, session_id, record, finalized_event_id, created_at, updated_at)
         SELECT i + 1, CASE i % 2 WHEN 0 THEN 'agntix' ELSE 'pathors' END, 's-' || i, '{}', NULL,
                ?2 - (?1 / 2 - i) * 100, ?2 FROM n",
        [events, newest_ms],
    )?;
    conn.execute(
        "INSERT INTO deliveries (id, event_id, event_seq, target, status, attempts,
                                 next_attempt_at, created_at, updated_at)
         SELECT 'dlv_' || lower(hex(randomblob(16))), id, seq, 'crm',
                CASE WHEN seq % 100 = 7 THEN 'dead' ELSE 'delivered' END, 1, 0, 0, 0 FROM events;
        ",
        [],
    )?;
    conn.execute(
        "INSERT INTO deliveries (id, event_id, event_seq, target, status, attempts,
                                 next_attempt_at, created_at, updated_at)
         SELECT 'dlv_' || lower(hex(randomblob(16))), id, seq, 'warehouse',
                CASE WHEN seq % 100 = 9 THEN 'dead' ELSE 'delivered' END, 1, 0, 0, 0
         FROM events WHERE seq % 2 = 0",
        [],
    )?;
    let count = |table: &str| -> rusqlite::Result<i64> {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
    };
    println!(
        "## SQLite: {} events, {} sessions, {} deliveries ({} dead), filled in {:.1} s\n",
        count("events")?,
        count("sessions")?,
        count("deliveries")?,
        conn.query_row(
            "SELECT count(*) FROM deliveries WHERE status = 'dead'",
            [],
            |r| r.get::<_, i64>(0)
        )?,
        started.elapsed().as_secs_f64()
    );
    let mut timeline = vec![
        (
            "a session's events (timeline)",
            Built {
                sql: "SELECT e.seq, e.id FROM events e JOIN receipts r ON r.seq = e.receipt_seq \
                      WHERE e.session_seq = ?1 AND e.source = ?2 ORDER BY e.seq LIMIT 500"
                    .into(),
                // Session `s-K` is row K + 1.
                args: vec![
                    Arg::Int(probe(events).1 / 2 + 1),
                    Arg::Text("agntix".into()),
                ],
            },
        ),
        (
            "an event's deliveries (timeline)",
            Built {
                sql: "SELECT seq, id FROM deliveries WHERE event_seq = ?1 ORDER BY seq".into(),
                args: vec![Arg::Int(probe(events).1)],
            },
        ),
    ];
    let mut all = lists(Dialect::Sqlite, newest_ms, &probe(events).0);
    all.append(&mut timeline);
    for (what, built) in all {
        let args = sqlite_args(&built);
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", built.sql))?
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                r.get::<_, String>(3)
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let mut stmt = conn.prepare_cached(&built.sql)?;
            rows = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |_| Ok(()))?
                .count();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "### {what}: {rows} rows, median {:.3} ms\n```sql\n{}\n```",
            times[2], built.sql
        );
        println!("```\n{}\n```\n", plan.join("\n"));
    }
    Ok(())
}

async fn postgres(events: i64) -> anyhow::Result<()> {
    let Ok(base) = std::env::var("SESSIONGATE_TEST_POSTGRES_URL") else {
        println!("## PostgreSQL: skipped (SESSIONGATE_TEST_POSTGRES_URL is not set)");
        return Ok(());
    };
    let schema = format!("sg_explain_{}", std::process::id());
    let store = sessiongate::store::postgres::PgStore::open_in(&base, 2, Some(&schema)).await?;
    sessiongate::store::Store::close(&store).await;
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("SET search_path = {schema}"))
        .await?;
    let started = Instant::now();
    let newest_ms: i64 = 1_790_000_000_000 + events / 2 * 100;
    client
        .batch_execute(&format!(
            "INSERT INTO receipts (seq, source, outcome, vendor_event_type, received_at, raw)
             SELECT i, CASE i % 4 WHEN 0 THEN 'agntix' WHEN 1 THEN 'agntix' ELSE 'pathors' END,
                    'accepted', 'x', '2026-12-01T00:00:00Z', '\\x7b7d' FROM generate_series(1, {events}) i;
             INSERT INTO events (seq, id, receipt_seq, source, session_id, session_seq, type, occurred_at, received_at, body)
             SELECT i, 'evt_' || md5(i::text), i,
                    CASE i % 4 WHEN 0 THEN 'agntix' WHEN 1 THEN 'agntix' ELSE 'pathors' END,
                    's-' || (i / 2), i / 2 + 1, 'session.ended', 'x', 'x', '{{}}' FROM generate_series(1, {events}) i;
             INSERT INTO sessions (vendor, session_id, record, created_at, updated_at)
             SELECT CASE i % 2 WHEN 0 THEN 'agntix' ELSE 'pathors' END, 's-' || i, '{{}}',
                    {newest_ms} - ({events} / 2 - i) * 100, {newest_ms}
             FROM generate_series(0, {events} / 2) i;
             INSERT INTO deliveries (id, event_id, event_seq, target, status, attempts, next_attempt_at, created_at, updated_at)
             SELECT 'dlv_' || md5('c' || seq), id, seq, 'crm',
                    CASE WHEN seq % 100 = 7 THEN 'dead' ELSE 'delivered' END, 1, 0, 0, 0 FROM events;
             INSERT INTO deliveries (id, event_id, event_seq, target, status, attempts, next_attempt_at, created_at, updated_at)
             SELECT 'dlv_' || md5('w' || seq), id, seq, 'warehouse',
                    CASE WHEN seq % 100 = 9 THEN 'dead' ELSE 'delivered' END, 1, 0, 0, 0
             FROM events WHERE seq % 2 = 0;
             ANALYZE;"
        ))
        .await?;
    let count = |table: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .map(|r| r.get::<_, i64>(0))
        }
    };
    println!(
        "## PostgreSQL: {} events, {} sessions, {} deliveries, filled in {:.1} s (then ANALYZE, as autovacuum would)\n",
        count("events").await?,
        count("sessions").await?,
        count("deliveries").await?,
        started.elapsed().as_secs_f64()
    );
    for (what, built) in lists(Dialect::Postgres, newest_ms, &probe(events).0) {
        let args: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = built
            .args
            .iter()
            .map(|a| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
                match a {
                    Arg::Text(s) => Box::new(s.clone()),
                    Arg::Int(n) => Box::new(*n),
                }
            })
            .collect();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            args.iter().map(|a| a.as_ref() as _).collect();
        let plan = client
            .query(
                &format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}", built.sql),
                &refs,
            )
            .await?;
        let plan: Vec<String> = plan.iter().map(|r| r.get(0)).collect();
        println!(
            "### {what}\n```sql\n{}\n```\n```\n{}\n```\n",
            built.sql,
            plan.join("\n")
        );
    }
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(1_000_000), |n| n.parse())?;
    sqlite(events)?;
    tokio::runtime::Runtime::new()?.block_on(postgres(events))
}
