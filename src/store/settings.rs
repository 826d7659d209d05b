//! `[storage]` and `[retention]`: which store, and what it keeps.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::settings::{ConfigError, Context, has_password, in_range, invalid, parse_duration_in};

#[derive(Debug, Clone)]
pub enum StorageConfig {
    Sqlite {
        path: PathBuf,
        synchronous: Synchronous,
        /// How far (MiB) the WAL may grow under load before the writer starts it over.
        wal_size_mib: u32,
    },
    Postgres {
        /// May carry a password, so it is kept secret.
        url: SecretString,
        pool_size: usize,
        /// The schema the tables live in (created if missing); `None` = the connection's
        /// default search path.
        schema: Option<String>,
    },
}

/// What `check-config` shows: the kind of store and its settings, never the URL (it may
/// carry a password).
impl std::fmt::Display for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageConfig::Sqlite {
                path,
                synchronous,
                wal_size_mib,
            } => {
                write!(
                    f,
                    "sqlite {} (synchronous = {synchronous:?}, WAL started over at {wal_size_mib} MiB)",
                    path.display()
                )
            }
            StorageConfig::Postgres {
                pool_size, schema, ..
            } => write!(
                f,
                "postgres (pool of {pool_size} connections, schema {})",
                schema
                    .as_deref()
                    .unwrap_or("of the connection's search_path")
            ),
        }
    }
}

/// SQLite's `synchronous` setting. `full` makes every acknowledged event survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

impl<'de> Deserialize<'de> for Synchronous {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Synchronous, D::Error> {
        crate::settings::one_of(
            d,
            &[("full", Synchronous::Full), ("normal", Synchronous::Normal)],
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    url: String,
    synchronous: Synchronous,
    wal_size_mib: u32,
    /// Absent: sized from the machine ([`default_pool_size`]).
    pool_size: Option<usize>,
    schema: Option<String>,
}

/// PostgreSQL connections per replica when `storage.pool_size` is not set: four per core
/// this process may run on, between 4 and 32. More backends than that only queue on the
/// cores (measured in BENCHMARKS.md: 8 on 2 cores did no worse than 16).
pub fn default_pool_size() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (4 * cores).clamp(4, 32)
}

impl StorageConfig {
    pub fn parse(raw: RawStorage, cx: &mut Context) -> Result<StorageConfig, ConfigError> {
        let url = match raw.url.strip_prefix("env:") {
            Some(_) => cx.secret("storage.url", &raw.url)?,
            None => raw.url.clone(),
        };
        let storage = parse_url(&url, &raw)?;
        if !raw.url.starts_with("env:") && has_password(&url) {
            cx.warn(
                "`storage.url` carries a password inline; use env:VAR in production".to_owned(),
            );
        }
        Ok(storage)
    }
}

/// What is pruned, and how often (`[retention]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    pub max_age: Duration,
    pub interval: Duration,
}

/// `[retention]`; the table's presence turns pruning on, so it has no defaults layer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    max_age: String,
    #[serde(default = "default_retention_interval")]
    interval: String,
}

fn default_retention_interval() -> String {
    "1h".into()
}

impl RetentionConfig {
    pub fn parse(r: RawRetention, cx: &mut Context) -> Result<RetentionConfig, ConfigError> {
        let day = Duration::from_secs(86_400);
        let max_age = parse_duration_in(
            "retention.max_age",
            &r.max_age,
            Duration::from_secs(1),
            36_500 * day,
        )?;
        let interval = parse_duration_in(
            "retention.interval",
            &r.interval,
            Duration::from_secs(1),
            30 * day,
        )?;
        if max_age < Duration::from_secs(48 * 3600) {
            cx.warn(format!(
                "retention.max_age = \"{}\" is under 2 days: Agntix retries for 24 h, and a \
                 retry that arrives after its first delivery was pruned is accepted and \
                 forwarded again",
                r.max_age
            ));
        }
        Ok(RetentionConfig { max_age, interval })
    }
}

fn parse_url(url: &str, raw: &RawStorage) -> Result<StorageConfig, ConfigError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if raw.schema.is_some() {
            return Err(invalid(
                "storage.schema",
                "is for PostgreSQL only; a SQLite store is one file",
            ));
        }
        if path.is_empty() {
            return Err(invalid(
                "storage.url",
                "sqlite:// needs a file path, e.g. sqlite://data/sessiongate.db",
            ));
        }
        in_range("storage.wal_size_mib", raw.wal_size_mib as u64, 1, 65_536)?;
        return Ok(StorageConfig::Sqlite {
            path: PathBuf::from(path),
            synchronous: raw.synchronous,
            wal_size_mib: raw.wal_size_mib,
        });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (rest, _) = super::postgres::tls::split(url).map_err(|e| invalid("storage.url", e))?;
        if let Err(e) = rest.parse::<tokio_postgres::Config>() {
            return Err(invalid(
                "storage.url",
                format!("not a valid PostgreSQL URL: {e}"),
            ));
        }
        let pool_size = raw.pool_size.unwrap_or_else(default_pool_size);
        in_range("storage.pool_size", pool_size as u64, 1, 1_024)?;
        if let Some(schema) = &raw.schema {
            let ok = schema.len() <= 63
                && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && schema
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(invalid(
                    "storage.schema",
                    format!(
                        "`{schema}` must be 1 to 63 lowercase letters, digits or '_', not starting with a digit"
                    ),
                ));
            }
        }
        return Ok(StorageConfig::Postgres {
            url: SecretString::from(url.to_owned()),
            pool_size,
            schema: raw.schema.clone(),
        });
    }
    Err(invalid(
        "storage.url",
        "must be sqlite://PATH or postgres://USER@HOST/DATABASE",
    ))
}
