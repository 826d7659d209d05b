use std::time::Duration;

use super::*;
use crate::store::Store;
use crate::store::schema::MIGRATIONS;
use crate::store::suite::postgres_schema_url;

#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::open(&url, 2).await })
        })
        .collect();
    for open in opens {
        let store = open.await.unwrap().expect("every replica starts");
        store.ping().await.unwrap();
    }
    let store = PgStore::open(&url, 1).await.unwrap();
    let versions = store
        .query("SELECT version FROM sessiongate_schema", &[])
        .await
        .unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].get::<_, i32>(0), MIGRATIONS.len() as i32);
}

async fn encrypted(store: &PgStore) -> bool {
    store
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The local server has `ssl = on` with Debian's snakeoil certificate (CN and SAN
/// `localhost`, self-signed): each mode is tried against it.
#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test]
async fn each_sslmode_does_what_it_promises() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let with = |url: &str, params: &str| format!("{url}&{params}");
    let plain = PgStore::open(&with(&url, "sslmode=disable"), 1)
        .await
        .unwrap();
    assert!(!encrypted(&plain).await, "disable: plain TCP");
    let cert: String = plain
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    for mode in ["prefer", "require"] {
        let store = PgStore::open(&with(&url, &format!("sslmode={mode}")), 1)
            .await
            .unwrap();
        assert!(encrypted(&store).await, "{mode}: TLS");
    }
    let root = format!("sslrootcert={cert}");
    let store = PgStore::open(&with(&url, &format!("sslmode=verify-ca&{root}")), 1)
        .await
        .expect("verify-ca: the chain leads to the root given");
    assert!(encrypted(&store).await);
    let by_name = url.replace("127.0.0.1", "localhost");
    let store = PgStore::open(&with(&by_name, &format!("sslmode=verify-full&{root}")), 1)
        .await
        .expect("verify-full: the certificate names localhost");
    assert!(encrypted(&store).await);

    // The certificate does not name 127.0.0.1; and it chains to none of the public roots.
    for (params, says) in [
        (format!("sslmode=verify-full&{root}"), "sslmode=verify-full"),
        (
            "sslmode=verify-ca&sslrootcert=/etc/ssl/certs/ca-certificates.crt".to_owned(),
            "sslmode=verify-ca",
        ),
    ] {
        let url = with(&url, &params);
        let e = match PgStore::open(&url, 1).await {
            Ok(_) => panic!("{params} must refuse this server"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains(says) && e.to_lowercase().contains("certificate"),
            "{e}"
        );
    }
}

/// A backend that dies under a pooled connection (a server restart, an operator's
/// pg_terminate_backend) costs no ingest a 503: the operation runs once more on a fresh
/// connection.
#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test]
async fn a_dead_pooled_connection_is_replaced_not_answered_503() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let name = format!("sg_dead_{:08x}", rand::random::<u32>());
    let store = PgStore::open(&format!("{url}&application_name={name}"), 4)
        .await
        .unwrap();
    let killer = PgStore::open(&url, 1).await.unwrap();
    for round in 0..5 {
        // Fill the pool, then end every backend behind it: all four pooled
        // connections are dead at once, as after a server restart.
        let clients: Vec<_> = futures_util::future::join_all((0..4).map(|_| store.client()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        drop(clients);
        let ended = killer
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .await
            .unwrap();
        assert!(!ended.is_empty());
        let outcome = store
            .accept(crate::store::suite::accept(
                &format!("s{round}"),
                &[crate::event::EventType::SessionEnded],
                &["t"],
            ))
            .await;
        assert!(outcome.is_ok(), "round {round}: {outcome:?}");
    }
}

/// Results that arrive while a statement is on its way wait for the next one: a hundred
/// results at once take a few statements (transactions), not a hundred, and each is
/// answered only once its own statement has committed.
#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_arriving_together_share_statements() {
    use crate::store::Completion;
    use crate::store::suite::{attempt, ended_sessions};
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let store = std::sync::Arc::new(PgStore::open(&url, 4).await.unwrap());
    ended_sessions(&*store, 100).await;
    let claimed = store
        .claim_due("t", 100, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 100);
    let before = store.results.statements();
    let tasks: Vec<_> = claimed
        .into_iter()
        .map(|c| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .finish_attempt(attempt(&c, Completion::Delivered))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let statements = store.results.statements() - before;
    let delivered: i64 = store
        .query_one(
            "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let logged: i64 = store
        .query_one("SELECT count(*) FROM attempts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((delivered, logged), (100, 100));
    assert!(
        statements < 50,
        "{statements} statements recorded 100 results that arrived together"
    );
}

/// A stale result and the current one for the same delivery in one statement: only the
/// current lease's result moves the delivery on and is logged.
#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test]
async fn a_stale_result_in_the_same_group_is_dropped() {
    use crate::store::Completion;
    use crate::store::suite::{a_lapsed_claim, attempt, ended_sessions};
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let store = PgStore::open(&url, 2).await.unwrap();
    ended_sessions(&store, 1).await;
    let short = a_lapsed_claim(&store).await;
    let current = store
        .claim_due("t", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    let stale = attempt(&short, Completion::Dead);
    let fresh = attempt(&current, Completion::Delivered);
    let recorded = store.results.record_group(&[&stale, &fresh]).await.unwrap();
    assert_eq!(
        recorded.into_iter().collect::<Vec<_>>(),
        [(current.id.to_string(), current.lease_token)]
    );
    let d = store
        .deliveries(crate::store::DeliveryFilter {
            limit: 10,
            with_attempts: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(d[0].status, crate::store::DeliveryStatus::Delivered);
    assert_eq!(d[0].attempt_log.as_ref().unwrap().len(), 1);
}

/// A session's first event is written without reading the session first; where the
/// session exists after all (an event came before it, or this is a repeat), the write
/// saves nothing and the ingest reads and merges as any other.
#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test]
async fn a_first_event_skips_the_read_unless_its_session_exists() {
    use crate::event::EventType;
    use crate::store::IngestOutcome;
    use crate::store::suite::accept;
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let store = PgStore::open(&url, 2).await.unwrap();
    let reads = || {
        store
            .session_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    let started = store
        .accept(accept("new", &[EventType::SessionStarted], &["t"]))
        .await
        .unwrap();
    assert!(
        matches!(started, IngestOutcome::Accepted { .. }),
        "{started:?}"
    );
    assert_eq!(reads(), 0, "a new session's first event is written at once");
    let again = store
        .accept(accept("new", &[EventType::SessionStarted], &["t"]))
        .await
        .unwrap();
    assert!(
        matches!(again, IngestOutcome::Duplicate { .. }),
        "{again:?}"
    );
    assert_eq!(reads(), 1, "a repeat finds the session and reads it");

    // The end before the start: the start merges into the session the end made.
    crate::store::suite::a_start_after_its_end(&store, reads).await;
    let events: i64 = store
        .query_one("SELECT count(*) FROM events WHERE session_id = 'late'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(events >= 2, "both events stored ({events})");
}

#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test]
async fn storage_schema_holds_the_tables_and_is_created_if_missing() {
    // A schema of its own within the test schema's database; the URL's own search path
    // (the test schema) comes after it.
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let schema = format!("sg_own_{:08x}", rand::random::<u32>());
    let store = PgStore::open_in(&url, 1, Some(&schema)).await.unwrap();
    store
        .accept(crate::store::suite::accept(
            "s1",
            &[crate::event::EventType::SessionEnded],
            &["t"],
        ))
        .await
        .unwrap();
    let other = PgStore::open(&url, 1).await.unwrap();
    let count: i64 = other
        .query_one(&format!("SELECT count(*) FROM {schema}.events"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    // Opening again finds the schema and its tables.
    let again = PgStore::open_in(&url, 1, Some(&schema)).await.unwrap();
    assert_eq!(again.delivery_counts().await.unwrap()[0].pending, 1);
}

impl PgStore {
    /// `(table, column)` for every column in the store's schema.
    pub(crate) async fn columns(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .query(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema()",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
