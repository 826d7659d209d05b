//! What only the SQLite store does; shared behaviour is in `store::suite`.

use super::*;
use crate::event::NewEvent;
use crate::event::{EventType, Session};
use crate::store::schema::{Dialect, MIGRATIONS, migration};
use actix_web::web::Bytes;

fn accept(session: &str) -> Inbound {
    Inbound {
        source: "src".into(),
        vendor: "pathors".into(),
        session_id: session.into(),
        vendor_event_type: "x".into(),
        message_id: None,
        recovered: false,
        received_at: Timestamp::now(),
        raw: b"{}".to_vec().into(),
        jobs: Vec::new(),
        events: vec![NewEvent {
            id: EventId::derive("src", session, "x", EventType::SessionEnded),
            event_type: EventType::SessionEnded,
            occurred_at: Timestamp::now(),
            facts: Session {
                id: session.into(),
                ..Session::default()
            },
            targets: vec!["t".into()],
            implied: false,
        }],
    }
}

/// Holds the writer inside an operation until `release` is sent (or 30 s pass): what is
/// sent meanwhile queues behind it. Returns once the writer is held.
fn hold_writer(
    store: &Arc<SqliteStore>,
) -> (
    tokio::task::JoinHandle<Result<(), StoreError>>,
    std::sync::mpsc::Sender<()>,
) {
    let (started, writer_busy) = std::sync::mpsc::channel();
    let (release, until_released) = std::sync::mpsc::channel::<()>();
    let blocked = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .call(move |_| {
                    started.send(()).unwrap();
                    let _ = until_released.recv_timeout(Duration::from_secs(30));
                    Ok(())
                })
                .await
        }
    });
    writer_busy.recv().unwrap();
    (blocked, release)
}

/// A store written by a release with the first schema opens with everything in it.
#[tokio::test]
async fn migrating_from_the_first_schema_keeps_sessions_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&migration(Dialect::Sqlite, 0)).unwrap();
        conn.execute_batch(
            r#"PRAGMA user_version = 1;
            INSERT INTO receipts (source, outcome, received_at, raw)
                VALUES ('src', 'accepted', '2026-01-01T00:00:00Z', X'7B7D');
            INSERT INTO events (id, receipt_seq, source, session_id, type, occurred_at, received_at, body)
                VALUES ('evt_old', 1, 'src', 's1', 'session.ended', '2026-01-01T00:00:00Z',
                        '2026-01-01T00:00:00Z', '{"source":{"name":"src","vendor":"pathors"}}');
            INSERT INTO sessions VALUES ('pathors', 's1',
                '{"fields":{}}', 'evt_old', 1, 2);
            INSERT INTO deliveries (id, event_id, target, status, attempts, next_attempt_at,
                                    created_at, updated_at)
                VALUES ('dlv_old', 'evt_old', 't', 'delivered', 1, 0, 1, 1);"#,
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path, Synchronous::Full).await.unwrap();
    let view = s
        .session("pathors", "s1")
        .await
        .unwrap()
        .expect("the session survives");
    assert_eq!(view.finalized_event_id.unwrap().as_str(), "evt_old");
    assert_eq!(view.updated_at, Timestamp::from_unix_millis(2));
    assert!(s.event("evt_old").await.unwrap().is_some());
    // Migration 5 gave the old delivery its event's sequence, by which it is found.
    let of_event = s
        .deliveries(DeliveryFilter {
            event_id: Some("evt_old".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(of_event.len(), 1);
    assert_eq!(of_event[0].id.as_str(), "dlv_old");
    // Migration 6 found the old event's session through the vendor in its body.
    let timeline = s
        .timeline("pathors", vec!["src".into()], "s1")
        .await
        .unwrap();
    assert_eq!(timeline.events.len(), 1);
    assert_eq!(timeline.deliveries.len(), 1);
    // The migrated table takes new records and updates old ones.
    s.accept(accept("s1")).await.unwrap();
    s.accept(accept("s2")).await.unwrap();
    assert!(s.session("pathors", "s2").await.unwrap().is_some());
    let version: i64 = s
        .call(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
}

#[tokio::test]
async fn reopening_releases_leases_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let s = SqliteStore::open(&path, Synchronous::Full).await.unwrap();
        s.accept(accept("s1")).await.unwrap();
        assert_eq!(
            s.claim_due("t", 10, Duration::from_secs(600))
                .await
                .unwrap()
                .len(),
            1
        );
        let second = SqliteStore::open(&path, Synchronous::Full).await;
        assert!(second.is_err(), "one process per SQLite file");
        s.close().await;
        assert!(matches!(s.ping().await, Err(StoreError::Closed)));
    }
    let s = SqliteStore::open(&path, Synchronous::Full).await.unwrap();
    assert_eq!(
        s.claim_due("t", 10, Duration::from_secs(600))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(matches!(
        s.accept(accept("s1")).await.unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
}

/// Under writes that never pause, the WAL must still start over: otherwise it grows for
/// as long as the load lasts (it reached ~900 MB in 8 s of benchmark before the writer
/// took over the last step of the checkpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_sustained_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let wal = dir.path().join("s.db-wal");
    let store = std::sync::Arc::new(SqliteStore::open(&path, Synchronous::Full).await.unwrap());
    let raw: Bytes = vec![b'x'; 16 * 1024].into();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (store, raw) = (store.clone(), raw.clone());
            tokio::spawn(async move {
                for n in 0..160 {
                    let mut a = accept(&format!("w{w}-{n}"));
                    a.raw = raw.clone();
                    store.accept(a).await.unwrap();
                }
            })
        })
        .collect();
    let mut largest = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let written = 16 * 160 * raw.len() as u64;
    eprintln!(
        "wrote {} MiB of bodies; the WAL peaked at {} KiB",
        written >> 20,
        largest >> 10
    );
    // Without restarts the WAL holds every body at least once (more than `written`); with
    // them it peaks at a few times the 1 MiB restart size (2.5–4.4 MiB measured, higher
    // when the whole suite shares the cores), so a quarter of `written` tells them apart.
    assert!(
        largest < written / 4,
        "the WAL grew to {largest} bytes for {written} bytes of bodies: it never starts over"
    );
    let counts = store.delivery_counts().await.unwrap();
    assert_eq!(
        counts,
        vec![TargetCounts {
            target: "t".to_owned(),
            pending: 16 * 160,
            dead: 0
        }],
        "nothing lost on the way"
    );
}

/// `/metrics` reads delivery counts on every scrape: they must come while the writer is
/// busy, and must not make the writer wait (with a million pending deliveries one count
/// took 0.1 s, and 16 scrapers put ingest p95 at 1.4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_counts_never_wait_for_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("s.db"), Synchronous::Full)
            .await
            .unwrap(),
    );
    store.accept(accept("s1")).await.unwrap();
    let (blocked, release) = hold_writer(&store);
    let counts = tokio::time::timeout(Duration::from_secs(5), store.delivery_counts())
        .await
        .expect("counted while the writer is busy")
        .unwrap();
    assert_eq!(counts[0].pending, 1);
    release.send(()).unwrap();
    blocked.await.unwrap().unwrap();
}

/// An operation that failed after writing must leave nothing behind, and undo nothing of
/// the operations that ran before it in the same transaction: they run again and commit,
/// and each caller hears its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_operation_leaves_nothing_and_keeps_the_others_in_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("s.db"), Synchronous::Full)
            .await
            .unwrap(),
    );
    let insert = |conn: &Connection, source: &str| {
        conn.execute(
            "INSERT INTO receipts (source, outcome, received_at, raw) VALUES (?1, 'ignored', 'x', X'')",
            [source],
        )
    };
    // Holds the writer (the first time it runs) until the others are queued behind it, so
    // all three run in one transaction.
    let (started, writer_busy) = std::sync::mpsc::channel();
    let (release, until_released) = std::sync::mpsc::channel::<()>();
    let runs = Arc::new(AtomicUsize::new(0));
    let first = tokio::spawn({
        let (store, runs) = (store.clone(), runs.clone());
        async move {
            store
                .call(move |conn| {
                    if runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        started.send(()).unwrap();
                        let _ = until_released.recv_timeout(Duration::from_secs(30));
                    }
                    insert(conn, "first")
                })
                .await
        }
    });
    writer_busy.recv().unwrap();
    let failed = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .call(move |conn| {
                    insert(conn, "failed")?;
                    Err::<usize, _>(rusqlite::Error::InvalidQuery)
                })
                .await
        }
    });
    let after = tokio::spawn({
        let store = store.clone();
        async move { store.call(move |conn| insert(conn, "after")).await }
    });
    while QUEUE_DEPTH - store.tx.capacity() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert!(failed.await.unwrap().is_err());
    assert_eq!(after.await.unwrap().unwrap(), 1);
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the operation before the failure ran again"
    );
    let sources = store
        .call(|conn| {
            conn.prepare("SELECT source FROM receipts ORDER BY seq")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
        .unwrap();
    assert_eq!(
        sources,
        ["first", "after"],
        "a failed operation's write was committed"
    );
}

/// A successful attempt's result.
fn success(delivery_id: DeliveryId, lease_token: i64, attempt: u32) -> AttemptRecord {
    AttemptRecord {
        delivery_id,
        lease_token,
        attempt,
        started_at_ms: 0,
        duration_ms: 1,
        status_code: Some(200),
        error: None,
        next: crate::store::Completion::Delivered,
    }
}

/// Attempt results that arrive while the writer is busy go to it as one operation, not one
/// each; every result is still recorded, and answered once committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_results_arriving_while_the_writer_is_busy_share_one_operation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("s.db"), Synchronous::Full)
            .await
            .unwrap(),
    );
    for i in 0..5 {
        store.accept(accept(&format!("s{i}"))).await.unwrap();
    }
    let claimed = store
        .claim_due("t", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    let (started, writer_busy) = std::sync::mpsc::channel();
    let (release, until_released) = std::sync::mpsc::channel::<()>();
    let mut first_run = true;
    let blocked = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .call(move |_| {
                    // Runs again when the failure below undoes the batch.
                    if std::mem::take(&mut first_run) {
                        started.send(()).unwrap();
                        let _ = until_released.recv_timeout(Duration::from_secs(30));
                    }
                    Ok(())
                })
                .await
        }
    });
    writer_busy.recv().unwrap();
    let results: Vec<_> = claimed
        .iter()
        .map(|c| {
            let store = store.clone();
            let record = success(c.id.clone(), c.lease_token, 1);
            tokio::spawn(async move { store.finish_attempt(record).await })
        })
        .collect();
    // Every result is queued before the writer is let go.
    while store.attempts.len() < 5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        QUEUE_DEPTH - store.tx.capacity(),
        1,
        "five results, one operation queued for the writer"
    );
    // An operation failing after the group in the same batch: the group runs again, and
    // its callers are answered from that run.
    let failing = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .call(|_| Err::<(), _>(rusqlite::Error::InvalidQuery))
                .await
        }
    });
    while QUEUE_DEPTH - store.tx.capacity() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    release.send(()).unwrap();
    assert!(failing.await.unwrap().is_err());
    blocked.await.unwrap().unwrap();
    for result in results {
        result.await.unwrap().unwrap();
    }
    let delivered = store
        .deliveries(DeliveryFilter {
            status: Some(DeliveryStatus::Delivered),
            with_attempts: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(delivered.len(), 5);
    assert!(
        delivered
            .iter()
            .all(|d| d.attempt_log.as_ref().is_some_and(|log| log.len() == 1))
    );
    // Queued after the group was taken: a new operation takes it.
    let more = store.finish_attempt(success(claimed[0].id.clone(), claimed[0].lease_token, 2));
    tokio::time::timeout(Duration::from_secs(5), more)
        .await
        .expect("answered")
        .unwrap();
}

/// A result that reaches a closed store is answered with an error, not left waiting.
#[tokio::test]
async fn an_attempt_result_after_close_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db"), Synchronous::Full)
        .await
        .unwrap();
    store.close().await;
    let record = success(DeliveryId::generate(), 1, 1);
    let answered = tokio::time::timeout(Duration::from_secs(5), store.finish_attempt(record))
        .await
        .expect("answered, not left waiting");
    assert!(answered.is_err());
    // And the next one starts afresh rather than waiting on the failed group.
    let record = success(DeliveryId::generate(), 1, 1);
    let again = tokio::time::timeout(Duration::from_secs(5), store.finish_attempt(record))
        .await
        .expect("answered, not left waiting");
    assert!(again.is_err());
}

/// A batch of a few callers is made durable by the writer itself when the syncer is idle
/// (no hand-off to another thread and back); a large one goes to the syncer, so that the
/// next batch gathers while its fsync runs. Both answer only once durable, and the store
/// reopens with both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_batch_is_made_durable_by_the_writer_and_a_large_one_by_the_syncer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Arc::new(SqliteStore::open(&path, Synchronous::Full).await.unwrap());
    let by = |store: &SqliteStore| {
        (
            store
                .syncs
                .by_writer
                .load(std::sync::atomic::Ordering::Relaxed),
            store
                .syncs
                .by_syncer
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let before = by(&store);
    store.accept(accept("alone")).await.unwrap();
    let after_one = by(&store);
    assert_eq!(
        (after_one.0 - before.0, after_one.1 - before.1),
        (1, 0),
        "one caller with the syncer idle: the writer fsyncs"
    );

    // Hold the writer until more than INLINE_SYNC_MAX callers wait, so they share a batch.
    let (blocked, release) = hold_writer(&store);
    let many = writer::INLINE_SYNC_MAX * 2;
    let waiting: Vec<_> = (0..many)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.accept(accept(&format!("many-{n}"))).await })
        })
        .collect();
    while QUEUE_DEPTH - store.tx.capacity() < many {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    release.send(()).unwrap();
    blocked.await.unwrap().unwrap();
    for w in waiting {
        assert!(matches!(
            w.await.unwrap().unwrap(),
            IngestOutcome::Accepted { .. }
        ));
    }
    let after_many = by(&store);
    assert!(
        after_many.1 > after_one.1,
        "a batch of {} callers was not handed to the syncer: {after_many:?}",
        many + 1
    );
    store.close().await;
    let reopened = SqliteStore::open(&path, Synchronous::Full).await.unwrap();
    let pending = reopened.delivery_counts().await.unwrap()[0].pending;
    assert_eq!(
        pending as usize,
        1 + many,
        "every answered accept is in the file"
    );
}

/// A new store is made of 2 KiB pages; one created with SQLite's 4 KiB keeps them (SQLite
/// cannot change them in WAL mode) and opens with everything in it, and the WAL's restart
/// size in frames follows the page size either way.
#[tokio::test]
async fn a_new_store_has_small_pages_and_an_existing_one_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let page_size = |store: &SqliteStore| {
        let reader = store.reader.lock().unwrap();
        reader
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    let fresh = SqliteStore::open(&dir.path().join("new.db"), Synchronous::Full)
        .await
        .unwrap();
    assert_eq!(page_size(&fresh), schema::PAGE_SIZE);
    assert_eq!(schema::PAGE_SIZE, 2048);

    let old = dir.path().join("old.db");
    {
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE kept (x);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&old, Synchronous::Full).await.unwrap();
    assert_eq!(
        page_size(&store),
        4096,
        "an existing store keeps its page size"
    );
    store.accept(accept("s1")).await.unwrap();
    assert!(matches!(
        store.accept(accept("s1")).await.unwrap(),
        IngestOutcome::Duplicate { .. }
    ));

    assert_eq!(wal::restart_frames(32, 4096), 8192);
    assert_eq!(wal::restart_frames(32, 2048), 16384);
}

/// A session's first event is planned before the writer's turn, and that plan is used only
/// if the writer finds no session stored: a start queued behind another start of the same
/// session (two sources, say), or arriving after the session's end, is planned again by the
/// writer from the record as stored, so no fact is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_event_planned_before_the_writer_is_used_only_for_a_new_session() {
    use crate::store::suite::accept_from;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("s.db"), Synchronous::Full)
            .await
            .unwrap(),
    );
    let by_writer = || {
        store
            .planned_by_writer
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let started = |source: &str, session: &str, key: &str| {
        let mut start = accept_from(source, session, &[EventType::SessionStarted], &["t"]);
        start.events[0]
            .facts
            .variables
            .insert(key.into(), serde_json::json!(true));
        start
    };

    let outcome = store.accept(started("a", "new", "from_a")).await.unwrap();
    assert!(
        matches!(outcome, IngestOutcome::Accepted { .. }),
        "{outcome:?}"
    );
    assert_eq!(by_writer(), 0, "a new session's first event comes planned");

    // Two sources start one session while the writer is busy: both are planned against no
    // session; the second finds the first's session stored and is planned again.
    let (blocked, release) = hold_writer(&store);
    let first = tokio::spawn({
        let store = store.clone();
        let start = started("a", "both", "from_a");
        async move { store.accept(start).await }
    });
    let second = tokio::spawn({
        let store = store.clone();
        let start = started("b", "both", "from_b");
        async move { store.accept(start).await }
    });
    // Both are queued behind the held writer before it is let go.
    while store.tx.capacity() > QUEUE_DEPTH - 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    release.send(()).unwrap();
    blocked.await.unwrap().unwrap();
    for outcome in [first.await.unwrap(), second.await.unwrap()] {
        assert!(
            matches!(outcome, Ok(IngestOutcome::Accepted { .. })),
            "{outcome:?}"
        );
    }
    assert_eq!(by_writer(), 1, "only the second start was planned again");
    let view = store.session("pathors", "both").await.unwrap().unwrap();
    assert_eq!(view.session.variables["from_a"], serde_json::json!(true));
    assert_eq!(view.session.variables["from_b"], serde_json::json!(true));

    // The end before the start: the start merges into the session the end made.
    crate::store::suite::a_start_after_its_end(&*store, by_writer).await;
}
