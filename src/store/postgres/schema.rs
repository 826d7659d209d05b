//! Migrations at start-up, under an advisory lock so that replicas starting together apply
//! them once. The migrations themselves are shared with SQLite ([`crate::store::schema`]).

use anyhow::Context;
use deadpool_postgres::Pool;

use super::prepared;
use crate::store::schema::{Dialect, MIGRATIONS, check_version, migration};

/// Serialises migrations across replicas (an arbitrary, fixed advisory lock key).
const MIGRATION_LOCK: i64 = 0x5e55_1047_6a7e;
pub(super) async fn migrate(pool: &Pool, schema: Option<&str>) -> anyhow::Result<()> {
    let mut client = pool
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
    tx.batch_execute("CREATE TABLE IF NOT EXISTS sessiongate_schema (version INTEGER NOT NULL)")
        .await?;
    let version: i32 = tx
        .query_opt(
            &prepared(&tx, "SELECT version FROM sessiongate_schema").await?,
            &[],
        )
        .await?
        .map_or(0, |r| r.get(0));
    let version = version as usize;
    check_version(version)?;
    for i in version..MIGRATIONS.len() {
        tx.batch_execute(&migration(Dialect::Postgres, i))
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
