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
//!   events' unique id is a second guard). Two round trips, no transaction to hold open;
//! - deliveries are claimed with `FOR UPDATE SKIP LOCKED` under a lease with a token; a
//!   replica that dies mid-delivery leaves a lease that expires, and another replica takes
//!   the delivery over. A result recorded after its lease passed on is dropped;
//! - migrations run at start-up under an advisory lock, so replicas starting together apply
//!   them once;
//! - a connection failure answers [`StoreError`] (ingest says 503) and the pool reconnects on
//!   its own once PostgreSQL is back.
//!
//! PostgreSQL commits concurrent statements with its own group commit, so each request uses
//! its own statements on a pooled connection; every write is one statement (one round trip).

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::pg_tls;
use super::{
    Accept, AcceptPlan, AttemptInfo, AttemptRecord, COUNT_DELIVERIES, ClaimedDelivery, Completion,
    DeliveryFilter, DeliveryId, DeliveryInfo, DeliveryStatus, EventFilter, Handed, Handoff,
    IngestOutcome, NewEvent, PRUNE_BATCH, Pruned, RECEIPT_COLUMNS, Receipt, ReceiptFilter,
    ReceiptInfo, RetryOutcome, SessionView, Store, StoreError, StoredEvent, TargetCounts,
    fold_counts, lease_token, now_ms, plan_accept,
};
use crate::event::{EventId, Timestamp};
use crate::sessions::SessionRecord;

/// Serialises migrations across replicas (an arbitrary, fixed advisory lock key).
const MIGRATION_LOCK: i64 = 0x5e55_1047_6a7e;
/// How long a request waits for a pooled connection or a new one before failing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE receipts (
    seq BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL,
    outcome TEXT NOT NULL,
    vendor_event_type TEXT,
    message_id TEXT,
    received_at TEXT NOT NULL,
    raw BYTEA NOT NULL
);
CREATE TABLE events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    receipt_seq BIGINT NOT NULL REFERENCES receipts(seq),
    source TEXT NOT NULL,
    session_id TEXT NOT NULL,
    type TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_by_session ON events(source, session_id);
CREATE TABLE deliveries (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL REFERENCES events(id),
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT,
    lease_token BIGINT,
    last_status INTEGER,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries(target, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_event ON deliveries(event_id);
CREATE INDEX deliveries_by_target ON deliveries(target, seq);
CREATE TABLE attempts (
    seq BIGSERIAL PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status_code INTEGER,
    error TEXT
);
CREATE INDEX attempts_by_delivery ON attempts(delivery_id, seq);
CREATE TABLE sessions (
    vendor TEXT NOT NULL,
    session_id TEXT NOT NULL,
    record TEXT NOT NULL,
    finalized_event_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (vendor, session_id)
);
"#,
    // Retention deletes a receipt only when no event refers to it.
    r#"
CREATE INDEX events_by_receipt ON events(receipt_seq);
"#,
];

pub struct PgStore {
    pool: Pool,
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
                        error = %crate::error::chain(&e),
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

/// A statement prepared once per connection and cached: without it every query would pay
/// an extra round trip and a server-side parse.
async fn prepared(client: &impl GenericClient, sql: &str) -> Result<Statement, StoreError> {
    client.prepare_cached(sql).await.map_err(backend)
}

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
            pg_tls::split(url).map_err(|e| anyhow::anyhow!("Invalid PostgreSQL URL: {e}"))?;
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
        let store = PgStore { pool };
        store
            .migrate(schema)
            .await
            .with_context(|| format!("PostgreSQL with sslmode={}", tls.mode.as_str()))?;
        Ok(store)
    }

    async fn migrate(&self, schema: Option<&str>) -> anyhow::Result<()> {
        let mut client = self
            .pool
            .get()
            .await
            .context("Failed to connect to PostgreSQL")?;
        let tx = client.transaction().await?;
        tx.execute(
            &prepared(&tx, "SELECT pg_advisory_xact_lock($1)").await?,
            &[&MIGRATION_LOCK],
        )
        .await
        .context("Failed to take the migration lock")?;
        if let Some(schema) = schema {
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .with_context(|| format!("Failed to create the schema `{schema}`"))?;
        }
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS sessiongate_schema (version INTEGER NOT NULL)",
        )
        .await?;
        let version: i32 = tx
            .query_opt(
                &prepared(&tx, "SELECT version FROM sessiongate_schema").await?,
                &[],
            )
            .await?
            .map_or(0, |r| r.get(0));
        let version = version as usize;
        anyhow::ensure!(
            version <= MIGRATIONS.len(),
            "The database's schema version {version} is newer than this sessiongate knows ({}); \
             refusing to run an older binary on it",
            MIGRATIONS.len()
        );
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.batch_execute(sql)
                .await
                .with_context(|| format!("Failed to apply store migration {}", i + 1))?;
            tracing::info!(version = i + 1, "Applied store migration");
        }
        tx.execute(&prepared(&tx, "DELETE FROM sessiongate_schema").await?, &[])
            .await?;
        tx.execute(
            &prepared(&tx, "INSERT INTO sessiongate_schema (version) VALUES ($1)").await?,
            &[&(MIGRATIONS.len() as i32)],
        )
        .await?;
        tx.commit()
            .await
            .context("Failed to commit store migrations")?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(backend)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        on_connection!(self, |client| {
            match prepared(&client, sql).await {
                Ok(statement) => client.execute(&statement, params).await.map_err(backend),
                Err(e) => Err(e),
            }
        })
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        on_connection!(self, |client| {
            match prepared(&client, sql).await {
                Ok(statement) => client.query(&statement, params).await.map_err(backend),
                Err(e) => Err(e),
            }
        })
    }

    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StoreError> {
        on_connection!(self, |client| {
            match prepared(&client, sql).await {
                Ok(statement) => client.query_one(&statement, params).await.map_err(backend),
                Err(e) => Err(e),
            }
        })
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        on_connection!(self, |client| {
            match prepared(&client, sql).await {
                Ok(statement) => client.query_opt(&statement, params).await.map_err(backend),
                Err(e) => Err(e),
            }
        })
    }
}

/// How often an ingest reads its session again after losing a race to change it.
const MAX_SESSION_RACES: usize = 50;

/// An ingest's one read: the session as stored (with its row version, `xmin`) and whether
/// the request's first event is already stored. Always one row.
const READ_SESSION: &str = "SELECT s.record, s.finalized_event_id, s.xmin::text,
        EXISTS (SELECT 1 FROM events WHERE id = $3)
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN sessions s ON s.vendor = $1 AND s.session_id = $2";

/// Saves a session record if its row is still the version that was read (`$6`, NULL if
/// there was none): a compare-and-set, so replicas merging events of one session at once
/// never lose each other's facts. Returns a row only when it saved.
const SAVE_SESSION: &str = "INSERT INTO sessions AS t
        (vendor, session_id, record, finalized_event_id, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $5)
    ON CONFLICT (vendor, session_id) DO UPDATE SET
        record = excluded.record, finalized_event_id = excluded.finalized_event_id,
        updated_at = excluded.updated_at
    WHERE t.xmin::text = $6
    RETURNING 1";

/// [`SAVE_SESSION`] alone, answering 1 if it saved and 0 if the session had changed.
static SAVE_SESSION_ONLY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("WITH s AS ({SAVE_SESSION}) SELECT count(*) FROM s"));

/// An ingest's one write, in one statement (so one round trip, and atomic without a
/// transaction): the session's compare-and-set, and only if it saved, the receipt, the
/// events not stored yet and their deliveries. Returns whether the session saved and the
/// ids of the deliveries inserted.
static WRITE_ACCEPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH s AS ({SAVE_SESSION}),
        r AS (INSERT INTO receipts (source, outcome, vendor_event_type, message_id, received_at, raw)
              SELECT $7, 'accepted', $8, $9, $10, $11 FROM s RETURNING seq),
        e AS (INSERT INTO events (id, receipt_seq, source, session_id, type, occurred_at, received_at, body)
              SELECT u.id, r.seq, $7, $2, u.type, u.occurred_at, $10, u.body
              FROM r, unnest($12::text[], $13::text[], $14::text[], $15::text[])
                  WITH ORDINALITY AS u (id, type, occurred_at, body, n)
              ORDER BY u.n
              ON CONFLICT (id) DO NOTHING RETURNING id),
        d AS (INSERT INTO deliveries (id, event_id, target, status, attempts, next_attempt_at,
                  lease_until, lease_token, created_at, updated_at)
              SELECT v.id, v.event_id, v.target, 'pending', 0, $5, v.lease_until, v.lease_token, $5, $5
              FROM unnest($16::text[], $17::text[], $18::text[], $19::int8[], $20::int8[])
                  WITH ORDINALITY AS v (id, event_id, target, lease_until, lease_token, n)
              WHERE v.event_id IN (SELECT id FROM e)
              ORDER BY v.n
              RETURNING id)
        SELECT (SELECT count(*) FROM s), ARRAY(SELECT id FROM d)"
    )
});

/// Writes an accepted request's plan if the session is still at `version`; `None` if it
/// changed meanwhile (nothing was written).
async fn write_accept(
    client: &deadpool_postgres::Object,
    accept: &Accept,
    handoff: &Handoff,
    record: &SessionRecord,
    finalized: Option<&EventId>,
    events: &[(&NewEvent, String)],
    version: Option<String>,
) -> Result<Option<IngestOutcome>, StoreError> {
    let now = now_ms();
    let token = lease_token();
    // (id, event, its body, target, lease end if handed over), in insertion order.
    let mut deliveries = Vec::new();
    for (event, body) in events {
        for target in &event.targets {
            let lease_until = handoff
                .lease(target)
                .map(|lease| now + lease.as_millis() as i64);
            deliveries.push((DeliveryId::generate(), *event, body, target, lease_until));
        }
    }
    let event_ids: Vec<&str> = events.iter().map(|(e, _)| e.id.as_str()).collect();
    let event_types: Vec<&str> = events.iter().map(|(e, _)| e.event_type.as_str()).collect();
    let bodies: Vec<&str> = events.iter().map(|(_, body)| body.as_str()).collect();
    let received_at = accept.received_at.to_string();
    let occurred_at: Vec<String> = events
        .iter()
        .map(|(e, _)| e.occurred_at.to_string())
        .collect();
    let row = client
        .query_one(
            &prepared(client, &WRITE_ACCEPT).await?,
            &[
                &accept.vendor,
                &accept.session_id,
                &serde_json::to_string(record).map_err(backend)?,
                &finalized.map(EventId::as_str),
                &now,
                &version,
                &accept.source,
                &accept.vendor_event_type,
                &accept.message_id,
                &received_at,
                &&accept.raw[..],
                &event_ids,
                &event_types,
                &occurred_at,
                &bodies,
                &deliveries.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(),
                &deliveries
                    .iter()
                    .map(|d| d.1.id.as_str())
                    .collect::<Vec<_>>(),
                &deliveries.iter().map(|d| d.3.as_str()).collect::<Vec<_>>(),
                &deliveries.iter().map(|d| d.4).collect::<Vec<_>>(),
                &deliveries
                    .iter()
                    .map(|d| d.4.map(|_| token))
                    .collect::<Vec<_>>(),
            ],
        )
        .await
        .map_err(backend)?;
    if row.get::<_, i64>(0) == 0 {
        return Ok(None);
    }
    let inserted: Vec<String> = row.get(1);
    let mut targets = Vec::new();
    let mut handed = Vec::new();
    for (id, event, body, target, lease_until) in deliveries {
        if !inserted.iter().any(|i| i == id.as_str()) {
            continue;
        }
        if lease_until.is_some() {
            handed.push(Handed::new(accept, target, id, event, body, token));
        } else if !targets.contains(target) {
            targets.push(target.clone());
        }
    }
    Ok(Some(IngestOutcome::Accepted {
        id: accept.events[0].id.clone(),
        targets,
        handed,
    }))
}

fn delivery_row(r: &Row) -> DeliveryInfo {
    let status: String = r.get("status");
    let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
    DeliveryInfo {
        seq: r.get("seq"),
        id: DeliveryId::from_stored(r.get("id")),
        event_id: EventId::from_stored(r.get("event_id")),
        target: r.get("target"),
        status,
        attempts: r.get::<_, i32>("attempts") as u32,
        next_attempt_at: (status == DeliveryStatus::Pending)
            .then(|| Timestamp::from_unix_millis(r.get("next_attempt_at"))),
        last_status: r.get::<_, Option<i32>>("last_status").map(|s| s as u16),
        last_error: r.get("last_error"),
        created_at: Timestamp::from_unix_millis(r.get("created_at")),
        updated_at: Timestamp::from_unix_millis(r.get("updated_at")),
        attempt_log: None,
    }
}

fn stored_event(r: &Row) -> StoredEvent {
    StoredEvent {
        seq: r.get("seq"),
        id: EventId::from_stored(r.get("id")),
        source: r.get("source"),
        session_id: r.get("session_id"),
        event_type: r.get("type"),
        body: r.get("body"),
        raw: r.get::<_, Vec<u8>>("raw").into(),
    }
}

const EVENT_COLUMNS: &str = "e.seq, e.id, e.source, e.session_id, e.type, e.body, r.raw";
const DELIVERY_COLUMNS: &str = "seq, id, event_id, target, status, attempts, next_attempt_at, \
                                last_status, last_error, created_at, updated_at";

/// One ingest on one connection: read the session, merge, write with a compare-and-set,
/// and read again when another request changed the session meanwhile.
async fn accept_on(
    client: &deadpool_postgres::Object,
    accept: &Accept,
    handoff: &Handoff,
) -> Result<IngestOutcome, StoreError> {
    let read = prepared(client, READ_SESSION).await?;
    let primary = &accept.events[0];
    for _ in 0..MAX_SESSION_RACES {
        let row = client
            .query_one(
                &read,
                &[&accept.vendor, &accept.session_id, &primary.id.as_str()],
            )
            .await
            .map_err(backend)?;
        if row.get::<_, bool>(3) {
            return Ok(IngestOutcome::Duplicate {
                id: primary.id.clone(),
            });
        }
        let version: Option<String> = row.get(2);
        let (record, finalized) = match row.get::<_, Option<&str>>(0) {
            Some(json) => (
                serde_json::from_str::<SessionRecord>(json).map_err(backend)?,
                row.get::<_, Option<String>>(1).map(EventId::from_stored),
            ),
            None => (SessionRecord::default(), None),
        };
        let saved = match plan_accept(accept, record, finalized).map_err(backend)? {
            AcceptPlan::AlreadyFinalized { record, first } => {
                let saved = client
                    .query_one(
                        &prepared(client, &SAVE_SESSION_ONLY).await?,
                        &[
                            &accept.vendor,
                            &accept.session_id,
                            &serde_json::to_string(&record).map_err(backend)?,
                            &first.as_str(),
                            &now_ms(),
                            &version,
                        ],
                    )
                    .await
                    .map_err(backend)?;
                if saved.get::<_, i64>(0) == 1 {
                    return Ok(IngestOutcome::Duplicate { id: first });
                }
                None
            }
            AcceptPlan::Store {
                record,
                finalized,
                events,
            } => {
                write_accept(
                    client,
                    accept,
                    handoff,
                    &record,
                    finalized.as_ref(),
                    &events,
                    version,
                )
                .await?
            }
        };
        if let Some(outcome) = saved {
            return Ok(outcome);
        }
        // Another request changed the session since it was read: read it again.
    }
    Err(backend(std::io::Error::other(format!(
        "session {} changed under {MAX_SESSION_RACES} attempts in a row to commit an event",
        accept.session_id
    ))))
}

#[async_trait]
impl Store for PgStore {
    async fn accept_handing_over(
        &self,
        accept: Accept,
        handoff: Handoff,
    ) -> Result<IngestOutcome, StoreError> {
        on_connection!(self, |client| accept_on(&client, &accept, &handoff).await)
    }

    async fn receipts(&self, filter: ReceiptFilter) -> Result<Vec<ReceiptInfo>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {RECEIPT_COLUMNS} FROM receipts
                     WHERE ($1::TEXT IS NULL OR source = $1) AND ($2::TEXT IS NULL OR outcome = $2)
                       AND ($3::BIGINT IS NULL OR seq < $3)
                     ORDER BY seq DESC LIMIT $4"
                ),
                &[
                    &filter.source,
                    &filter.outcome,
                    &filter.before,
                    &(filter.limit as i64),
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ReceiptInfo {
                seq: r.get(0),
                source: r.get(1),
                outcome: r.get(2),
                vendor_event_type: r.get(3),
                message_id: r.get(4),
                received_at: r.get(5),
                raw: actix_web::web::Bytes::from(r.get::<_, Vec<u8>>(6)),
            })
            .collect())
    }

    async fn record_receipt(&self, receipt: Receipt) -> Result<(), StoreError> {
        self.execute(
                "INSERT INTO receipts (source, outcome, vendor_event_type, message_id, received_at, raw)
                 VALUES ($1, $6, $2, $3, $4, $5)",
                &[
                    &receipt.source,
                    &receipt.vendor_event_type,
                    &receipt.message_id,
                    &receipt.received_at.to_string(),
                    &&receipt.raw[..],
                    &receipt.outcome.as_str(),
                ],
            ).await?;
        Ok(())
    }

    async fn claim_due(
        &self,
        target: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let client = self.client().await?;
        let now = now_ms();
        let token = lease_token();
        let leased = client
            .query(
                &prepared(
                    &client,
                    "UPDATE deliveries d SET lease_until = $1, lease_token = $5
                 FROM (SELECT seq FROM deliveries
                       WHERE target = $2 AND status = 'pending' AND next_attempt_at <= $3
                         AND (lease_until IS NULL OR lease_until <= $3)
                       ORDER BY next_attempt_at LIMIT $4
                       FOR UPDATE SKIP LOCKED) due
                 WHERE d.seq = due.seq
                 RETURNING d.id, d.event_id, d.attempts",
                )
                .await?,
                &[
                    &(now + lease.as_millis() as i64),
                    &target,
                    &now,
                    &(limit as i64),
                    &token,
                ],
            )
            .await
            .map_err(backend)?;
        if leased.is_empty() {
            return Ok(Vec::new());
        }
        let event_ids: Vec<String> = leased.iter().map(|r| r.get(1)).collect();
        let bodies = client
            .query(
                &prepared(
                    &client,
                    "SELECT e.id, e.body, r.raw, e.occurred_at FROM events e
                 JOIN receipts r ON r.seq = e.receipt_seq WHERE e.id = ANY($1)",
                )
                .await?,
                &[&event_ids],
            )
            .await
            .map_err(backend)?;
        let mut claimed = Vec::with_capacity(leased.len());
        for row in leased {
            let event_id: String = row.get(1);
            let Some(event) = bodies.iter().find(|b| b.get::<_, &str>(0) == event_id) else {
                continue;
            };
            claimed.push(ClaimedDelivery {
                id: DeliveryId::from_stored(row.get(0)),
                attempts: row.get::<_, i32>(2) as u32,
                lease_token: token,
                occurred_at: Timestamp::parse(event.get(3)),
                body: event.get(1),
                raw: event.get::<_, Vec<u8>>(2).into(),
                event_id: EventId::from_stored(event_id),
            });
        }
        Ok(claimed)
    }

    async fn finish_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        let (status, next_attempt_at) = match record.next {
            Completion::Delivered => (DeliveryStatus::Delivered, None),
            Completion::RetryAt { unix_ms } => (DeliveryStatus::Pending, Some(unix_ms)),
            Completion::Dead => (DeliveryStatus::Dead, None),
        };
        // One statement, so one round trip and atomic: the attempt is logged only if the
        // lease was still ours and the delivery moved on.
        let logged = self
            .execute(
                "WITH u AS (
                     UPDATE deliveries SET status = $2, attempts = $3,
                         next_attempt_at = COALESCE($4, next_attempt_at), lease_until = NULL,
                         lease_token = NULL, last_status = $5, last_error = $6, updated_at = $7
                     WHERE id = $1 AND lease_token = $8
                     RETURNING id)
                 INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
                 SELECT u.id, $3, $9, $10, $5, $6 FROM u",
                &[
                    &record.delivery_id.as_str(),
                    &status.as_str(),
                    &(record.attempt as i32),
                    &next_attempt_at,
                    &record.status_code.map(i32::from),
                    &record.error,
                    &now_ms(),
                    &record.lease_token,
                    &record.started_at_ms,
                    &record.duration_ms,
                ],
            )
            .await?;
        if logged == 0 {
            tracing::warn!(delivery_id = %record.delivery_id, "Attempt result arrived after its lease passed on; dropped");
        }
        Ok(())
    }

    async fn next_due_at(&self, target: &str) -> Result<Option<i64>, StoreError> {
        let row = self.query_one(
                "SELECT MIN(next_attempt_at) FROM deliveries
                 WHERE target = $1 AND status = 'pending' AND (lease_until IS NULL OR lease_until <= $2)",
                &[&target, &now_ms()],
            ).await?;
        Ok(row.get(0))
    }

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryInfo>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prepared(
                    &client,
                    &format!(
                        "SELECT {DELIVERY_COLUMNS} FROM deliveries
                     WHERE ($1::TEXT IS NULL OR status = $1) AND ($2::TEXT IS NULL OR target = $2)
                       AND ($3::TEXT IS NULL OR event_id = $3) AND ($4::BIGINT IS NULL OR seq < $4)
                       AND (NOT $5 OR attempts > 0)
                     ORDER BY seq DESC LIMIT $6"
                    ),
                )
                .await?,
                &[
                    &filter.status.map(DeliveryStatus::as_str),
                    &filter.target,
                    &filter.event_id,
                    &filter.before,
                    &filter.failing,
                    &(filter.limit as i64),
                ],
            )
            .await
            .map_err(backend)?;
        let mut found: Vec<DeliveryInfo> = rows.iter().map(delivery_row).collect();
        if filter.with_attempts && !found.is_empty() {
            let ids: Vec<&str> = found.iter().map(|d| d.id.as_str()).collect();
            let attempts = client
                .query(
                    &prepared(
                        &client,
                        "SELECT delivery_id, attempt, started_at, duration_ms, status_code, error
                     FROM attempts WHERE delivery_id = ANY($1) ORDER BY seq",
                    )
                    .await?,
                    &[&ids],
                )
                .await
                .map_err(backend)?;
            for delivery in &mut found {
                delivery.attempt_log = Some(
                    attempts
                        .iter()
                        .filter(|a| a.get::<_, &str>(0) == delivery.id.as_str())
                        .map(|a| AttemptInfo {
                            attempt: a.get::<_, i32>(1) as u32,
                            started_at: Timestamp::from_unix_millis(a.get(2)),
                            duration_ms: a.get(3),
                            status_code: a.get::<_, Option<i32>>(4).map(|s| s as u16),
                            error: a.get(5),
                        })
                        .collect(),
                );
            }
        }
        Ok(found)
    }

    async fn retry_delivery(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        let client = self.client().await?;
        let requeued = client
            .query_opt(
                &prepared(
                    &client,
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2,
                     lease_until = NULL, lease_token = NULL, updated_at = $2
                 WHERE id = $1 AND status = 'dead' RETURNING target",
                )
                .await?,
                &[&id, &now_ms()],
            )
            .await
            .map_err(backend)?;
        if let Some(row) = requeued {
            return Ok(RetryOutcome::Requeued { target: row.get(0) });
        }
        let status = client
            .query_opt(
                &prepared(&client, "SELECT status FROM deliveries WHERE id = $1").await?,
                &[&id],
            )
            .await
            .map_err(backend)?;
        Ok(match status.and_then(|r| DeliveryStatus::parse(r.get(0))) {
            Some(status) => RetryOutcome::NotDead(status),
            None => RetryOutcome::NotFound,
        })
    }

    async fn replay(
        &self,
        event_id: &str,
        targets: Vec<String>,
    ) -> Result<Option<Vec<DeliveryId>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let exists = tx
            .query_opt(
                &prepared(&tx, "SELECT 1 FROM events WHERE id = $1").await?,
                &[&event_id],
            )
            .await
            .map_err(backend)?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let now = now_ms();
        let mut created = Vec::with_capacity(targets.len());
        for target in &targets {
            let id = DeliveryId::generate();
            tx.execute(
                &prepared(&tx, "INSERT INTO deliveries (id, event_id, target, status, attempts, next_attempt_at, created_at, updated_at)
                 VALUES ($1, $2, $3, 'pending', 0, $4, $4, $4)").await?,
                &[&id.as_str(), &event_id, target, &now],
            )
            .await
            .map_err(backend)?;
            created.push(id);
        }
        tx.commit().await.map_err(backend)?;
        Ok(Some(created))
    }

    async fn events(&self, filter: EventFilter) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = self.query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events e JOIN receipts r ON r.seq = e.receipt_seq
                     WHERE ($1::TEXT IS NULL OR e.source = $1) AND ($2::TEXT IS NULL OR e.session_id = $2)
                       AND ($3::TEXT IS NULL OR e.type = $3) AND ($4::BIGINT IS NULL OR e.seq < $4)
                     ORDER BY e.seq DESC LIMIT $5"
                ),
                &[
                    &filter.source,
                    &filter.session_id,
                    &filter.event_type,
                    &filter.before,
                    &(filter.limit as i64),
                ],
            ).await?;
        Ok(rows.iter().map(stored_event).collect())
    }

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let row = self.query_opt(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events e JOIN receipts r ON r.seq = e.receipt_seq WHERE e.id = $1"
                ),
                &[&id],
            ).await?;
        Ok(row.as_ref().map(stored_event))
    }

    async fn session(
        &self,
        vendor: &str,
        session_id: &str,
    ) -> Result<Option<SessionView>, StoreError> {
        let row = self
            .query_opt(
                "SELECT record, finalized_event_id, updated_at FROM sessions
                 WHERE vendor = $1 AND session_id = $2",
                &[&vendor, &session_id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let record: SessionRecord = serde_json::from_str(row.get(0)).map_err(backend)?;
        Ok(Some(SessionView {
            vendor: vendor.to_owned(),
            session: record.session(session_id).map_err(backend)?,
            finalized_event_id: row.get::<_, Option<String>>(1).map(EventId::from_stored),
            updated_at: Timestamp::from_unix_millis(row.get(2)),
        }))
    }

    async fn delivery_counts(&self) -> Result<Vec<TargetCounts>, StoreError> {
        let rows = self.query(COUNT_DELIVERIES, &[]).await?;
        Ok(fold_counts(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as u64)),
        ))
    }

    async fn prune(&self, cutoff: Timestamp) -> Result<Pruned, StoreError> {
        let cutoff = cutoff.to_string();
        let mut pruned = Pruned::default();
        // An event goes with all its deliveries and their attempts, in one statement (the
        // foreign keys hold at its end), once none of its deliveries is pending.
        loop {
            let row = self
                .query_one(
                    "WITH doomed AS (
                         SELECT e.seq, e.id FROM events e
                         WHERE e.received_at < $1 AND NOT EXISTS (
                             SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status = 'pending')
                         ORDER BY e.seq LIMIT $2),
                     gone_deliveries AS (
                         DELETE FROM deliveries d USING doomed WHERE d.event_id = doomed.id RETURNING d.id),
                     gone_attempts AS (
                         DELETE FROM attempts a USING gone_deliveries g WHERE a.delivery_id = g.id RETURNING 1),
                     gone_events AS (
                         DELETE FROM events e USING doomed WHERE e.seq = doomed.seq RETURNING 1)
                     SELECT (SELECT count(*) FROM gone_events), (SELECT count(*) FROM gone_deliveries),
                            (SELECT count(*) FROM gone_attempts)",
                    &[&cutoff, &PRUNE_BATCH],
                )
                .await?;
            let events = row.get::<_, i64>(0) as u64;
            pruned.events += events;
            pruned.deliveries += row.get::<_, i64>(1) as u64;
            pruned.attempts += row.get::<_, i64>(2) as u64;
            if events < PRUNE_BATCH as u64 {
                break;
            }
        }
        loop {
            let gone = self
                .execute(
                    "DELETE FROM receipts WHERE seq IN (
                         SELECT r.seq FROM receipts r
                         WHERE r.received_at < $1
                           AND NOT EXISTS (SELECT 1 FROM events e WHERE e.receipt_seq = r.seq)
                         ORDER BY r.seq LIMIT $2)",
                    &[&cutoff, &PRUNE_BATCH],
                )
                .await?;
            pruned.receipts += gone;
            if gone < PRUNE_BATCH as u64 {
                break;
            }
        }
        Ok(pruned)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .simple_query("SELECT 1")
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
