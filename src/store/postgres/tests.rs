use super::*;
use crate::store::Store;
use crate::store::schema::MIGRATIONS;
use crate::store::suite::postgres_schema_url;

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
