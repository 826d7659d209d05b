//! The PostgreSQL store: one database shared by several gateway replicas.
//!
//! Same semantics as the SQLite store, decided by the database rather than one process:
//!
//! - an ingest reads its session's row (and whether its first event is stored) in one
//!   statement, merges in Rust (`plan_accept`), and writes everything in a second
//!   statement that first saves the session with a compare-and-set on the row's version
//!   (`xmin`): if another request changed the session in between, nothing is written and the
//!   ingest starts over from the read. So events of one session, on any replica, never lose
//!   each other's facts, duplicates are caught, and `session.finalized` is stored once (the
//!   events' unique id is a second guard). Two round trips, no transaction to hold open; a
//!   session's first event skips the read and writes as if the session were new (one round
//!   trip), reading only if the compare-and-set finds it was not;
//! - deliveries are claimed with `FOR UPDATE SKIP LOCKED` under a lease with a token; a
//!   replica that dies mid-delivery leaves a lease that expires, and another replica takes
//!   the delivery over. A result recorded after its lease passed on is dropped. Results
//!   that arrive together are recorded by one statement (`attempts`);
//! - migrations run at start-up under an advisory lock, so replicas starting together apply
//!   them once;
//! - a connection failure answers [`StoreError`] (ingest says 503) and the pool reconnects on
//!   its own once PostgreSQL is back.
//!
//! Here: the pool, its connection handling and error mapping; `accept` the ingest path;
//! `attempts` the grouped results; `queries` every other operation; `schema` the
//! migrations; [`tls`] `sslmode`.
//!
//! PostgreSQL commits concurrent statements with its own group commit, so each request uses
//! its own statements on a pooled connection; every write is one statement (one round trip),
//! and attempt results, as frequent as ingests, share theirs.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::StoreError;
use crate::clock::Clock;

/// How long a request waits for a pooled connection or a new one before failing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgStore {
    pool: Pool,
    /// Reads "now" for leases and due times (tests: a manual clock).
    clock: Clock,
    /// Delivery attempt results, recorded in groups.
    results: std::sync::Arc<attempts::Results>,
    /// Session reads by ingests so far (the tests count the ones skipped).
    session_reads: std::sync::atomic::AtomicU64,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// Whether an operation failed because its pooled connection was dead (the server
/// restarted, or terminated the backend) rather than because of the operation: worth one
/// more try on a fresh connection before a vendor is answered 503.
fn connection_lost(e: &StoreError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match e {
        StoreError::Backend(e) => Some(e.as_ref()),
        StoreError::Closed => None,
    };
    while let Some(e) = cause {
        if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
            let code = pg.code().map(|c| c.code());
            // 08: connection exceptions; 57P01-3: admin / crash shutdown, cannot connect now.
            if pg.is_closed()
                || code.is_some_and(|c| {
                    c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
                })
            {
                return true;
            }
        }
        if e.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Runs `$body` with a pooled connection bound to `$client`; if that connection turns out
/// to be dead, runs it again on another, until one is alive: after a server restart every
/// pooled connection may be dead, and each dead one fails at once. Only for operations that
/// are safe to repeat (reads, and writes whose repeat is recognised: an ingest that did
/// commit reads back as a duplicate of itself).
macro_rules! on_connection {
    ($store:expr, |$client:ident| $body:expr) => {{
        // One more than the pool holds: by then a connection was made afresh.
        let mut tries_left = $store.pool.status().max_size + 1;
        loop {
            let $client = $store.client().await?;
            match $body {
                Err(e) if tries_left > 0 && connection_lost(&e) => {
                    tries_left -= 1;
                    tracing::warn!(
                        error = %crate::telemetry::chain(&e),
                        "A pooled PostgreSQL connection was dead; trying another"
                    );
                    // Not back into the pool: it is of no use to anyone.
                    let _dead = deadpool_postgres::Object::take($client);
                }
                result => break result,
            }
        }
    }};
}

/// `$method` (`execute`, `query`, `query_one`, `query_opt`) of `$sql`, prepared and cached,
/// on a live pooled connection.
macro_rules! statement {
    ($store:expr, $method:ident, $sql:expr, $params:expr) => {
        on_connection!($store, |client| match prepared(&client, $sql).await {
            Ok(statement) => client.$method(&statement, $params).await.map_err(backend),
            Err(e) => Err(e),
        })
    };
}

/// A statement prepared once per connection and cached: without it every query would pay
/// an extra round trip and a server-side parse.
async fn prepared(client: &impl GenericClient, sql: &str) -> Result<Statement, StoreError> {
    client.prepare_cached(sql).await.map_err(backend)
}

// After the macro, so that they may use it.
mod accept;
mod attempts;
mod jobs;
mod listing;
mod queries;
mod recovery;
mod schema;
#[cfg(test)]
mod tests;
pub mod tls;

impl PgStore {
    pub async fn open(url: &str, pool_size: usize) -> anyhow::Result<PgStore> {
        Self::open_in(url, pool_size, None).await
    }

    /// Opens the store with its tables in `schema` (created if missing), else in the
    /// connection's default search path.
    pub async fn open_in(
        url: &str,
        pool_size: usize,
        schema: Option<&str>,
    ) -> anyhow::Result<PgStore> {
        let (url, tls) =
            tls::split(url).map_err(|e| anyhow::anyhow!("Invalid PostgreSQL URL: {e}"))?;
        let mut config: tokio_postgres::Config = url.parse().context("Invalid PostgreSQL URL")?;
        config.ssl_mode(tls.mode.negotiation());
        if let Some(schema) = schema {
            // Every pooled connection starts with the schema first in its search path (the
            // name is checked to be a plain lowercase identifier at configuration time).
            let options = match config.get_options() {
                Some(given) => format!("{given} -csearch_path={schema}"),
                None => format!("-csearch_path={schema}"),
            };
            config.options(&options);
        }
        let manager = Manager::from_config(
            config,
            tls.connector()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .context("Failed to build the PostgreSQL pool")?;
        let store = PgStore {
            results: std::sync::Arc::new(attempts::Results::new(pool.clone(), Clock::system())),
            pool,
            clock: Clock::system(),
            session_reads: Default::default(),
        };
        schema::migrate(&store.pool, schema)
            .await
            .with_context(|| format!("PostgreSQL with sslmode={}", tls.mode.as_str()))?;
        Ok(store)
    }

    /// The same store reading `clock` for leases and due times (tests: a manual clock).
    pub fn with_clock(mut self, clock: Clock) -> PgStore {
        self.results =
            std::sync::Arc::new(attempts::Results::new(self.pool.clone(), clock.clone()));
        self.clock = clock;
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(backend)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        statement!(self, execute, sql, params)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        statement!(self, query, sql, params)
    }

    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StoreError> {
        statement!(self, query_one, sql, params)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        statement!(self, query_opt, sql, params)
    }
}
