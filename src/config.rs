//! Configuration: TOML through the `config` crate, parsed once into validated types.
//!
//! Layers, later wins: the file, then `SESSIONGATE__SECTION__KEY` environment variables.
//! Unknown keys are errors. Secrets may be written `env:VAR_NAME` and are resolved here, at
//! start-up; a missing variable is an error naming it. Every error names the key at fault.
//! `config/sessiongate.toml` documents every key; this module does not re-document them.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::http::header::HeaderName;
use secrecy::SecretString;
use serde::Deserialize;
use svix::webhooks::Webhook;

use crate::auth::SourceAuth;
use crate::delivery::retry::RetryPolicy;
use crate::event::EventType;
use crate::vendors::Vendor;

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/sessiongate.toml";
const ENV_PREFIX: &str = "SESSIONGATE";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(String),
    #[error("invalid configuration at `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// Every problem found in one reading, so an operator fixes them in one go.
    #[error("{} problems:\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub delivery: DeliveryConfig,
    /// `None` = keep everything.
    pub retention: Option<RetentionConfig>,
    pub sources: Vec<Source>,
    pub targets: Vec<Target>,
    /// Things an operator should hear about at start-up (inline secrets, `auth = none`).
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where the admin API and `/metrics` listen when they are kept off `listen`.
    pub admin_listen: Option<SocketAddr>,
    pub max_body_bytes: usize,
    /// Request body bytes buffered at once across all requests.
    pub max_body_bytes_in_flight: usize,
    /// Open connections across all HTTP workers.
    pub max_connections: usize,
    pub admin_token: Option<SecretString>,
    pub workers: usize,
    pub body_timeout: Duration,
    pub header_timeout: Duration,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum StorageConfig {
    Sqlite {
        path: PathBuf,
        synchronous: Synchronous,
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

/// SQLite's `synchronous` setting. `full` makes every acknowledged event survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

/// What is pruned, and how often (`[retention]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    pub max_age: Duration,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub retry: RetryPolicy,
    pub max_in_flight: usize,
}

#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub vendor: Vendor,
    pub auth: SourceAuth,
}

/// A downstream receiver and what it wants.
pub struct Target {
    pub name: String,
    pub url: reqwest::Url,
    /// `None` = every event type.
    pub events: Option<Vec<EventType>>,
    /// `None` = every source.
    pub sources: Option<Vec<String>>,
    pub signer: Option<Webhook>,
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub include_raw: bool,
    pub timeout: Duration,
    /// Attempts before a delivery is dead (`[delivery] max_attempts` unless the target says).
    pub max_attempts: u32,
    /// How long a claimed or handed-over delivery stays leased to one worker; after that another worker
    /// (on any replica) may take it over.
    pub lease: Duration,
    pub max_in_flight: usize,
}

impl Target {
    pub fn accepts(&self, source: &str, event_type: EventType) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&event_type))
            && self
                .sources
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| s == source))
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("url", &redact_url(self.url.as_str()))
            .field("events", &self.events)
            .field("sources", &self.sources)
            .field("signed", &self.signer.is_some())
            .field("include_raw", &self.include_raw)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads `path`, then applies `SESSIONGATE__…` environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars().collect(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// [`Config::load`] with the process environment given explicitly: `vars` for the
    /// `SESSIONGATE__…` overrides, `env` for `env:` references.
    pub fn load_with_env(
        path: &Path,
        vars: std::collections::HashMap<String, String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::Load(format!(
                "no configuration file at {} (pass --config FILE or set SESSIONGATE_CONFIG)",
                path.display()
            )));
        }
        let builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                // No `try_parsing`: it would turn a secret such as `000123456789` into the
                // number 123456789. Values stay strings, and numeric keys parse them.
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(vars.into_iter().collect())),
            );
        Self::build(builder, env)
    }

    /// Parses a TOML document alone (no environment overrides); `env:` secrets are resolved
    /// with `env`. Used by tests and the demo.
    pub fn from_toml(
        toml: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let builder = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml));
        Self::build(builder, env)
    }

    /// Reads the layers and reports every problem found: each unknown key, each missing
    /// environment variable, and the first other validation error.
    fn build(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: config::Value = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut problems = Vec::new();
        // Each unknown key fails deserialisation on its own: note it, drop it, read again.
        let raw = loop {
            match tree.clone().try_deserialize::<RawConfig>() {
                Ok(raw) => break Some(raw),
                Err(e) => {
                    let message = e.to_string();
                    match unknown_key(&message) {
                        Some(path) if remove_key(&mut tree, &path) => {
                            problems.push(invalid(path, "unknown key"));
                        }
                        _ => {
                            problems.push(ConfigError::Load(message));
                            break None;
                        }
                    }
                }
            }
        };
        let mut missing = Vec::new();
        missing_variables(&tree, String::new(), env, &mut missing);
        let missing_keys: Vec<String> = missing
            .iter()
            .filter_map(|e| match e {
                ConfigError::Invalid { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        problems.extend(missing);
        if raw.as_ref().is_some_and(|raw| raw.sources.is_empty()) {
            problems.push(invalid(
                "sources",
                "no [[sources]] are configured, so nothing could be received: add one per vendor endpoint",
            ));
        }
        if let Some(raw) = raw {
            match raw.validate(env) {
                Ok(config) if problems.is_empty() => return Ok(config),
                Ok(_) => {}
                // A missing variable it stopped at is listed already.
                Err(ConfigError::Invalid { key, .. }) if missing_keys.contains(&key) => {}
                Err(e) => problems.push(e),
            }
        }
        match problems.len() {
            1 => Err(problems.remove(0)),
            _ => Err(ConfigError::Many(problems)),
        }
    }
}

// ---- what the file may say ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    delivery: RawDelivery,
    retention: Option<RawRetention>,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    targets: Vec<RawTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    admin_listen: Option<String>,
    max_body_bytes: usize,
    max_body_bytes_in_flight: usize,
    max_connections: usize,
    admin_token: Option<String>,
    workers: Option<usize>,
    body_timeout_ms: u64,
    header_timeout_ms: u64,
    shutdown_timeout_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            admin_listen: None,
            max_body_bytes: 1024 * 1024,
            max_body_bytes_in_flight: 64 * 1024 * 1024,
            max_connections: 2048,
            admin_token: None,
            workers: None,
            body_timeout_ms: 15_000,
            header_timeout_ms: 5_000,
            shutdown_timeout_ms: 30_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    url: String,
    synchronous: Synchronous,
    pool_size: usize,
    schema: Option<String>,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            url: "sqlite://data/sessiongate.db".into(),
            synchronous: Synchronous::Full,
            pool_size: 16,
            schema: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    timeout_ms: u64,
    max_attempts: u32,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    backoff_multiplier: f64,
    jitter: f64,
    max_in_flight: usize,
    lease_ms: Option<u64>,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            timeout_ms: 10_000,
            max_attempts: 12,
            backoff_initial_ms: 10_000,
            backoff_max_ms: 2 * 60 * 60 * 1000,
            backoff_multiplier: 2.0,
            jitter: 0.2,
            max_in_flight: 32,
            lease_ms: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    max_age: String,
    #[serde(default = "default_retention_interval")]
    interval: String,
}

fn default_retention_interval() -> String {
    "1h".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    vendor: Vendor,
    auth: RawAuth,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RawAuth {
    Svix {
        secrets: Vec<String>,
        #[serde(default = "default_tolerance")]
        tolerance_seconds: u64,
    },
    Header {
        header: String,
        value: String,
    },
    None,
}

fn default_tolerance() -> u64 {
    300
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    url: String,
    events: Option<Vec<String>>,
    sources: Option<Vec<String>>,
    secret: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "yes")]
    include_raw: bool,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    max_in_flight: Option<usize>,
}

fn yes() -> bool {
    true
}

/// Headers a target may not set: the gateway owns them.
const RESERVED_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "host",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

impl RawConfig {
    fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let mut inline_secrets = Vec::new();
        let mut secret = |key: &str, value: &str| -> Result<String, ConfigError> {
            match value.strip_prefix("env:") {
                Some(_) => reference(key, value, env),
                None if value.is_empty() => Err(invalid(key, "must not be empty")),
                None => {
                    inline_secrets.push(format!(
                        "secret `{key}` is written inline in the configuration; use env:VAR in production"
                    ));
                    Ok(value.to_owned())
                }
            }
        };

        let server = {
            let s = self.server;
            let listen = socket_address("server.listen", &s.listen)?;
            let admin_listen = s
                .admin_listen
                .as_deref()
                .map(|a| socket_address("server.admin_listen", a))
                .transpose()?;
            if admin_listen.is_some_and(|a| a == listen && a.port() != 0) {
                return Err(invalid(
                    "server.admin_listen",
                    "must differ from server.listen (it keeps the admin API and /metrics off the ingest listener)",
                ));
            }
            positive("server.max_body_bytes", s.max_body_bytes as u64)?;
            positive("server.max_connections", s.max_connections as u64)?;
            if s.max_body_bytes_in_flight / 2 < s.max_body_bytes {
                return Err(invalid(
                    "server.max_body_bytes_in_flight",
                    "must be at least twice server.max_body_bytes (half is for requests a header \
                     authenticates, half for signed ones), or a body of the largest size allowed \
                     could not be read",
                ));
            }
            if s.max_body_bytes_in_flight > u32::MAX as usize {
                return Err(invalid(
                    "server.max_body_bytes_in_flight",
                    format!("must be at most {} bytes", u32::MAX),
                ));
            }
            positive("server.body_timeout_ms", s.body_timeout_ms)?;
            positive("server.header_timeout_ms", s.header_timeout_ms)?;
            let workers = match s.workers {
                Some(0) => return Err(invalid("server.workers", "must be at least 1")),
                Some(n) => n,
                None => std::thread::available_parallelism().map_or(2, |n| n.get()),
            };
            ServerConfig {
                listen,
                admin_listen,
                max_body_bytes: s.max_body_bytes,
                max_body_bytes_in_flight: s.max_body_bytes_in_flight,
                max_connections: s.max_connections,
                admin_token: s
                    .admin_token
                    .map(|t| secret("server.admin_token", &t).map(SecretString::from))
                    .transpose()?,
                workers,
                body_timeout: Duration::from_millis(s.body_timeout_ms),
                header_timeout: Duration::from_millis(s.header_timeout_ms),
                shutdown_timeout: Duration::from_millis(s.shutdown_timeout_ms),
            }
        };

        let storage_url = match self.storage.url.strip_prefix("env:") {
            Some(_) => secret("storage.url", &self.storage.url)?,
            None => self.storage.url.clone(),
        };
        let storage = parse_storage_url(&storage_url, &self.storage)?;
        if !self.storage.url.starts_with("env:") && has_password(&storage_url) {
            warnings.push(
                "`storage.url` carries a password inline; use env:VAR in production".to_owned(),
            );
        }

        let lease_ms = self.delivery.lease_ms;
        let delivery = {
            let d = self.delivery;
            positive("delivery.timeout_ms", d.timeout_ms)?;
            positive("delivery.max_attempts", d.max_attempts.into())?;
            positive("delivery.backoff_initial_ms", d.backoff_initial_ms)?;
            positive("delivery.max_in_flight", d.max_in_flight as u64)?;
            if d.backoff_max_ms < d.backoff_initial_ms {
                return Err(invalid(
                    "delivery.backoff_max_ms",
                    "must be at least delivery.backoff_initial_ms",
                ));
            }
            if !(d.backoff_multiplier >= 1.0 && d.backoff_multiplier.is_finite()) {
                return Err(invalid(
                    "delivery.backoff_multiplier",
                    "must be a number of at least 1",
                ));
            }
            if !(0.0..=1.0).contains(&d.jitter) {
                return Err(invalid("delivery.jitter", "must be between 0 and 1"));
            }
            DeliveryConfig {
                timeout: Duration::from_millis(d.timeout_ms),
                max_attempts: d.max_attempts,
                retry: RetryPolicy {
                    initial: Duration::from_millis(d.backoff_initial_ms),
                    max: Duration::from_millis(d.backoff_max_ms),
                    multiplier: d.backoff_multiplier,
                    jitter: d.jitter,
                },
                max_in_flight: d.max_in_flight,
            }
        };

        let retention = match self.retention {
            None => None,
            Some(r) => {
                let max_age = parse_duration("retention.max_age", &r.max_age)?;
                let interval = parse_duration("retention.interval", &r.interval)?;
                if max_age < Duration::from_secs(48 * 3600) {
                    warnings.push(format!(
                        "retention.max_age = \"{}\" is under 2 days: Agntix retries for 24 h, and a \
                         retry that arrives after its first delivery was pruned is accepted and \
                         forwarded again",
                        r.max_age
                    ));
                }
                Some(RetentionConfig { max_age, interval })
            }
        };

        let mut sources = Vec::with_capacity(self.sources.len());
        let mut source_names = HashSet::new();
        for (i, s) in self.sources.into_iter().enumerate() {
            let key = format!("sources[{i}]");
            check_name(&format!("{key}.name"), &s.name)?;
            if !source_names.insert(s.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("source name `{}` is used twice", s.name),
                ));
            }
            let auth = match s.auth {
                RawAuth::Svix {
                    secrets,
                    tolerance_seconds,
                } => {
                    if secrets.is_empty() {
                        return Err(invalid(
                            format!("{key}.auth.secrets"),
                            "needs at least one whsec_ secret",
                        ));
                    }
                    let secrets = secrets
                        .iter()
                        .enumerate()
                        .map(|(j, value)| {
                            let k = format!("{key}.auth.secrets[{j}]");
                            parse_whsec(&k, &secret(&k, value)?)
                        })
                        .collect::<Result<_, _>>()?;
                    positive(&format!("{key}.auth.tolerance_seconds"), tolerance_seconds)?;
                    SourceAuth::Svix {
                        secrets,
                        tolerance: Duration::from_secs(tolerance_seconds),
                    }
                }
                RawAuth::Header { header, value } => {
                    let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                        invalid(
                            format!("{key}.auth.header"),
                            format!("`{header}` is not a valid header name"),
                        )
                    })?;
                    let value = secret(&format!("{key}.auth.value"), &value)?;
                    if actix_web::http::header::HeaderValue::from_str(&value).is_err() {
                        return Err(invalid(
                            format!("{key}.auth.value"),
                            "is not a valid header value",
                        ));
                    }
                    SourceAuth::Header {
                        name,
                        value: SecretString::from(value),
                    }
                }
                RawAuth::None => {
                    warnings.push(format!(
                        "source `{}` accepts unauthenticated requests (auth kind = \"none\")",
                        s.name
                    ));
                    SourceAuth::None
                }
            };
            sources.push(Source {
                name: s.name,
                vendor: s.vendor,
                auth,
            });
        }

        let mut targets = Vec::with_capacity(self.targets.len());
        let mut target_names = HashSet::new();
        for (i, t) in self.targets.into_iter().enumerate() {
            let key = format!("targets[{i}]");
            check_name(&format!("{key}.name"), &t.name)?;
            if !target_names.insert(t.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("target name `{}` is used twice", t.name),
                ));
            }
            // Any url and header value may be `env:VAR` (a URL or header can carry a token).
            let t_url = reference(&format!("{key}.url"), &t.url, env)?;
            let url = reqwest::Url::parse(&t_url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| {
                    invalid(
                        format!("{key}.url"),
                        format!("`{}` is not an http(s) URL", redact_url(&t_url)),
                    )
                })?;
            let events = t
                .events
                .map(|events| {
                    events
                        .iter()
                        .enumerate()
                        .map(|(j, e)| {
                            EventType::parse(e).ok_or_else(|| {
                                invalid(
                                    format!("{key}.events[{j}]"),
                                    format!(
                                        "unknown event type `{e}` (known: {})",
                                        EventType::ALL.map(EventType::as_str).join(", ")
                                    ),
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            if let Some(names) = &t.sources {
                for (j, name) in names.iter().enumerate() {
                    if !source_names.contains(name) {
                        return Err(invalid(
                            format!("{key}.sources[{j}]"),
                            format!("no source named `{name}` is configured"),
                        ));
                    }
                }
            }
            let signer = t
                .secret
                .map(|s| {
                    let k = format!("{key}.secret");
                    parse_whsec(&k, &secret(&k, &s)?)
                })
                .transpose()?;
            let mut headers = Vec::with_capacity(t.headers.len());
            for (name, value) in &t.headers {
                let k = format!("{key}.headers.{name}");
                let header = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| invalid(&k, "is not a valid header name"))?;
                if RESERVED_HEADERS.contains(&header.as_str()) {
                    return Err(invalid(
                        &k,
                        "is set by the gateway and cannot be overridden",
                    ));
                }
                let value = reference(&k, value, env)?;
                let mut value = reqwest::header::HeaderValue::from_str(&value)
                    .map_err(|_| invalid(&k, "is not a valid header value"))?;
                value.set_sensitive(true);
                headers.push((header, value));
            }
            if let Some(ms) = t.timeout_ms {
                positive(&format!("{key}.timeout_ms"), ms)?;
            }
            if let Some(n) = t.max_in_flight {
                positive(&format!("{key}.max_in_flight"), n as u64)?;
            }
            if let Some(n) = t.max_attempts {
                positive(&format!("{key}.max_attempts"), n.into())?;
            }
            let timeout = t.timeout_ms.map_or(delivery.timeout, Duration::from_millis);
            let lease = match lease_ms {
                Some(ms) if Duration::from_millis(ms) <= timeout => {
                    return Err(invalid(
                        "delivery.lease_ms",
                        format!(
                            "must be longer than every attempt timeout (target `{}` allows {} ms)",
                            t.name,
                            timeout.as_millis()
                        ),
                    ));
                }
                Some(ms) => Duration::from_millis(ms),
                None => timeout + DEFAULT_LEASE_MARGIN,
            };
            targets.push(Target {
                name: t.name,
                url,
                events,
                sources: t.sources,
                signer,
                headers,
                include_raw: t.include_raw,
                timeout,
                max_attempts: t.max_attempts.unwrap_or(delivery.max_attempts),
                lease,
                max_in_flight: t.max_in_flight.unwrap_or(delivery.max_in_flight),
            });
        }

        inline_secrets.append(&mut warnings);
        Ok(Config {
            server,
            storage,
            delivery,
            retention,
            sources,
            targets,
            warnings: inline_secrets,
        })
    }
}

/// The dotted key of an "unknown field" error of the `config` crate
/// (``unknown field `x`, expected … for key `targets[0]` `` → `targets[0].x`).
fn unknown_key(message: &str) -> Option<String> {
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    match message.rsplit_once(" for key `") {
        Some((_, key)) => Some(format!("{}.{field}", key.trim_end_matches('`'))),
        None => Some(field.to_owned()),
    }
}

/// Removes `path` (`a.b[0].c`) from a configuration tree; false if it is not there.
fn remove_key(tree: &mut config::Value, path: &str) -> bool {
    let mut node = tree;
    let mut segments: Vec<&str> = path.split('.').collect();
    let Some(last) = segments.pop() else {
        return false;
    };
    for segment in segments {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let config::ValueKind::Table(table) = &mut node.kind else {
            return false;
        };
        let Some(child) = table.get_mut(name) else {
            return false;
        };
        node = match index {
            None => child,
            Some(i) => match &mut child.kind {
                config::ValueKind::Array(items) => match items.get_mut(i) {
                    Some(item) => item,
                    None => return false,
                },
                _ => return false,
            },
        };
    }
    match &mut node.kind {
        config::ValueKind::Table(table) => table.remove(last).is_some(),
        _ => false,
    }
}

/// Every `env:VAR` anywhere in the configuration whose variable is unset or empty.
fn missing_variables(
    value: &config::Value,
    key: String,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut Vec<ConfigError>,
) {
    match &value.kind {
        config::ValueKind::String(s) => {
            if let Some(var) = s.strip_prefix("env:")
                && env(var).is_none_or(|v| v.is_empty())
            {
                out.push(invalid(
                    key,
                    format!("environment variable {var} is not set or empty"),
                ));
            }
        }
        config::ValueKind::Table(table) => {
            let mut entries: Vec<_> = table.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (name, child) in entries {
                let key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                missing_variables(child, key, env, out);
            }
        }
        config::ValueKind::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                missing_variables(child, format!("{key}[{i}]"), env, out);
            }
        }
        _ => {}
    }
}

/// A value that may be written `env:VAR`: the variable's value (an error naming it when
/// unset or empty), else the value as written.
fn reference(
    key: &str,
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    match value.strip_prefix("env:") {
        Some(var) => env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
            invalid(
                key,
                format!("environment variable {var} is not set or empty"),
            )
        }),
        None => Ok(value.to_owned()),
    }
}

/// A duration written as a whole number and a unit: `90s`, `15m`, `12h`, `30d`.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        invalid(
            key,
            format!("`{value}` is not a duration such as \"90s\", \"15m\", \"12h\" or \"30d\""),
        )
    };
    let unit_at = value.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = value.split_at(unit_at);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(seconds) {
        Some(0) => Err(invalid(key, "must be greater than 0")),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Err(bad()),
    }
}

fn socket_address(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| invalid(key, format!("`{value}` is not a host:port address")))
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(())
}

/// Source and target names appear in URLs, metrics labels and the store.
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(invalid(
            key,
            format!("`{name}` must be 1 to 64 characters of letters, digits, '-' or '_'"),
        ));
    }
    Ok(())
}

/// The shortest signing key Standard Webhooks allows (its secrets are 24 to 64 bytes).
const MIN_SECRET_BYTES: usize = 24;

fn parse_whsec(key: &str, value: &str) -> Result<Webhook, ConfigError> {
    let Some(encoded) = value.strip_prefix("whsec_") else {
        return Err(invalid(key, "must start with `whsec_` followed by base64"));
    };
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(bytes) if bytes.len() >= MIN_SECRET_BYTES => {
            Webhook::new(value).map_err(|_| invalid(key, "is not a valid whsec_ secret"))
        }
        Ok(bytes) => Err(invalid(
            key,
            format!(
                "the key is {} bytes; Standard Webhooks requires at least {MIN_SECRET_BYTES} \
                 (whsec_ followed by the base64 of 24 to 64 random bytes)",
                bytes.len()
            ),
        )),
        Err(_) => Err(invalid(key, "the part after `whsec_` must be base64")),
    }
}

/// By default a lease outlives the attempt's timeout by this much.
const DEFAULT_LEASE_MARGIN: Duration = Duration::from_secs(30);

fn parse_storage_url(url: &str, raw: &RawStorage) -> Result<StorageConfig, ConfigError> {
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
        return Ok(StorageConfig::Sqlite {
            path: PathBuf::from(path),
            synchronous: raw.synchronous,
        });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (rest, _) = crate::store::pg_tls::split(url).map_err(|e| invalid("storage.url", e))?;
        if let Err(e) = rest.parse::<tokio_postgres::Config>() {
            return Err(invalid(
                "storage.url",
                format!("not a valid PostgreSQL URL: {e}"),
            ));
        }
        positive("storage.pool_size", raw.pool_size as u64)?;
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
            pool_size: raw.pool_size,
            schema: raw.schema.clone(),
        });
    }
    Err(invalid(
        "storage.url",
        "must be sqlite://PATH or postgres://USER@HOST/DATABASE",
    ))
}

/// A URL as it may be shown (logs, `check-config`, `Debug`): a password in the user-info
/// becomes `***` and the query string `?***`, since either may carry a credential.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?***"),
        None => (url, ""),
    };
    let (base, fragment) = match base.split_once('#') {
        Some((base, _)) => (base, "#***"),
        None => (base, ""),
    };
    let shown = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                    let password = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{password}@{host}{path}")
                }
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    format!("{shown}{query}{fragment}")
}

/// Whether a URL's user-info part carries a password (`scheme://user:password@host`).
fn has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    /// A source, for configurations a test is not about sources in (one is required).
    const SOURCE: &str = "\n[[sources]]\nname = \"s\"\nvendor = \"pathors\"\nauth = { kind = \"header\", header = \"X-T\", value = \"env:PATHORS_TOKEN\" }\n";

    fn env(name: &str) -> Option<String> {
        match name {
            "AGNTIX_SECRET" => Some(SECRET.into()),
            "PATHORS_TOKEN" => Some("Bearer t0ken".into()),
            _ => None,
        }
    }

    const FULL: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        [storage]
        url = "sqlite://data/x.db"
        [delivery]
        max_attempts = 3
        [[sources]]
        name = "pathors"
        vendor = "pathors"
        auth = { kind = "header", header = "Authorization", value = "env:PATHORS_TOKEN" }
        [[sources]]
        name = "agntix"
        vendor = "agntix"
        auth = { kind = "svix", secrets = ["env:AGNTIX_SECRET"] }
        [[targets]]
        name = "crm"
        url = "https://crm.example.com/hooks"
        events = ["session.finalized"]
        sources = ["agntix"]
        secret = "env:AGNTIX_SECRET"
        headers = { "X-Tenant" = "acme" }
        include_raw = false
    "#;

    fn parse(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml(toml, &env)
    }

    fn error_of(toml: &str) -> String {
        parse(toml).unwrap_err().to_string()
    }

    #[test]
    fn a_full_config_parses_with_env_secrets_and_no_warnings() {
        let c = parse(FULL).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.delivery.max_attempts, 3);
        assert_eq!(c.delivery.timeout, Duration::from_secs(10));
        let t = &c.targets[0];
        assert!(t.accepts("agntix", EventType::SessionFinalized));
        assert!(!t.accepts("pathors", EventType::SessionFinalized));
        assert!(!t.accepts("agntix", EventType::SessionEnded));
        assert!(!t.include_raw);
        assert!(t.signer.is_some());
        assert_eq!(t.headers[0].0.as_str(), "x-tenant");
        assert!(matches!(
            c.storage,
            StorageConfig::Sqlite {
                synchronous: Synchronous::Full,
                ..
            }
        ));
    }

    #[test]
    fn postgres_urls_are_secrets_and_leases_default_past_the_timeout() {
        let env = |name: &str| {
            (name == "PG_URL")
                .then(|| "postgres://gate:pw@db/sessions".to_owned())
                .or_else(|| env(name))
        };
        let c = Config::from_toml(
            &format!("[storage]\nurl = \"env:PG_URL\"\npool_size = 4\n[[targets]]\nname = \"t\"\nurl = \"http://x\"\ntimeout_ms = 2000{SOURCE}"),
            &env,
        )
        .unwrap();
        assert!(matches!(
            c.storage,
            StorageConfig::Postgres { pool_size: 4, .. }
        ));
        assert!(
            !format!("{:?}", c.storage).contains("pw"),
            "the URL's password never prints"
        );
        assert!(c.warnings.is_empty());
        assert_eq!(c.targets[0].lease, Duration::from_secs(32));

        let inline = parse(&format!(
            "[storage]\nurl = \"postgres://gate:pw@db/sessions\"{SOURCE}"
        ))
        .unwrap();
        assert!(
            inline.warnings[0].contains("storage.url"),
            "{:?}",
            inline.warnings
        );
        assert!(
            parse(&format!(
                "[storage]\nurl = \"postgres://gate@db/sessions\"{SOURCE}"
            ))
            .unwrap()
            .warnings
            .is_empty()
        );
    }

    #[test]
    fn omitted_filters_accept_everything() {
        let c = parse(&format!(
            "[[targets]]\nname = \"all\"\nurl = \"http://127.0.0.1:9/x\"{SOURCE}"
        ))
        .unwrap();
        for t in EventType::ALL {
            assert!(c.targets[0].accepts("anything", t));
        }
        assert!(c.targets[0].include_raw, "include_raw defaults to true");
    }

    #[test]
    fn inline_secrets_and_auth_none_warn() {
        let c = parse(
            r#"[[sources]]
               name = "p"
               vendor = "pathors"
               auth = { kind = "header", header = "X-Token", value = "inline" }
               [[sources]]
               name = "open"
               vendor = "agntix"
               auth = { kind = "none" }"#,
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("sources[0].auth.value"));
        assert!(c.warnings[1].contains("`open`"));
    }

    #[test]
    fn target_urls_and_headers_may_come_from_the_environment_and_override_attempts() {
        let env = |name: &str| match name {
            "CRM_URL" => Some("https://crm.example.com/hooks?key=k".to_owned()),
            "CRM_TOKEN" => Some("Bearer crm-token".to_owned()),
            other => env(other),
        };
        let c = Config::from_toml(
            &format!("[delivery]\nmax_attempts = 12\n[[targets]]\nname = \"crm\"\nurl = \"env:CRM_URL\"\nheaders = {{ \"Authorization\" = \"env:CRM_TOKEN\" }}\nmax_attempts = 20\ntimeout_ms = 5000\n[[targets]]\nname = \"other\"\nurl = \"http://x\"{SOURCE}"),
            &env,
        )
        .unwrap();
        let t = &c.targets[0];
        assert_eq!(t.url.as_str(), "https://crm.example.com/hooks?key=k");
        assert_eq!(t.headers[0].1, "Bearer crm-token");
        assert!(t.headers[0].1.is_sensitive());
        assert_eq!((t.max_attempts, t.timeout), (20, Duration::from_secs(5)));
        assert_eq!(c.targets[1].max_attempts, 12);
        for (toml, key) in [
            (
                "[[targets]]\nname = \"t\"\nurl = \"env:NOPE_URL\"",
                "NOPE_URL",
            ),
            (
                "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nheaders = { \"X-A\" = \"env:NOPE_H\" }",
                "targets[0].headers.X-A",
            ),
            (
                "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nmax_attempts = 0",
                "targets[0].max_attempts",
            ),
        ] {
            let err = Config::from_toml(toml, &env).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn urls_shown_carry_no_password_nor_query() {
        assert_eq!(
            redact_url("https://user:s3cret@crm.example.com:8443/hooks?token=abc#x"),
            "https://user:***@crm.example.com:8443/hooks?***"
        );
        assert_eq!(redact_url("http://u@h/p"), "http://u@h/p");
        assert_eq!(redact_url("http://h/p"), "http://h/p");
        assert_eq!(redact_url("not a url?key=1"), "not a url?***");
        let c = parse(&format!(
            "[[targets]]\nname = \"t\"\nurl = \"https://u:pw0rd@h.example/x?api_key=k3y\"{SOURCE}"
        ))
        .unwrap();
        let shown = format!("{:?}", c.targets[0]);
        assert!(
            !shown.contains("pw0rd") && !shown.contains("k3y"),
            "{shown}"
        );
        let e = error_of("[[targets]]\nname = \"t\"\nurl = \"ftp://u:pw0rd@h/?k3y\"");
        assert!(!e.contains("pw0rd") && !e.contains("k3y"), "{e}");
    }

    #[test]
    fn empty_and_short_secrets_are_refused_wherever_they_come_from() {
        let cases = [
            (
                "[[sources]]\nname = \"p\"\nvendor = \"pathors\"\nauth = { kind = \"header\", header = \"X-T\", value = \"\" }",
                "sources[0].auth.value",
            ),
            ("[server]\nadmin_token = \"\"", "server.admin_token"),
            (
                "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"whsec_eA==\"] }",
                "sources[0].auth.secrets[0]",
            ),
            (
                "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"env:SHORT\"] }",
                "sources[0].auth.secrets[0]",
            ),
            (
                "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nsecret = \"env:SHORT\"",
                "targets[0].secret",
            ),
        ];
        // 23 bytes: one short of the Standard Webhooks minimum.
        let short = |name: &str| {
            (name == "SHORT").then(|| "whsec_YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=".to_owned())
        };
        for (toml, key) in cases {
            let err = Config::from_toml(toml, &short).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn environment_overrides_keep_strings_as_strings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("[delivery]\nmax_attempts = 3{SOURCE}")).unwrap();
        let vars = [
            ("SESSIONGATE__SERVER__ADMIN_TOKEN", "000123456789"),
            ("SESSIONGATE__DELIVERY__MAX_ATTEMPTS", "20"),
            ("SESSIONGATE__DELIVERY__JITTER", "0.5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let c = Config::load_with_env(&path, vars, &env).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(
            c.server.admin_token.unwrap().expose_secret(),
            "000123456789"
        );
        assert_eq!(c.delivery.max_attempts, 20);
        assert_eq!(c.delivery.retry.jitter, 0.5);
    }

    #[test]
    fn every_unknown_key_and_missing_variable_is_reported_at_once() {
        let e = parse(
            "[server]\nlisen = 1\nadmin_token = \"env:NOPE_A\"\n[delivery]\nmax_atempts = 3\n[[targets]]\nname = \"t\"\nurl = \"env:NOPE_B\"\ncolour = 1",
        )
        .unwrap_err()
        .to_string();
        for part in [
            "server.lisen",
            "delivery.max_atempts",
            "targets[0].colour",
            "NOPE_A",
            "NOPE_B",
            "no [[sources]]",
        ] {
            assert!(e.contains(part), "missing {part} in {e}");
        }
        assert!(e.starts_with("6 problems:"), "{e}");
    }

    #[test]
    fn retention_durations_parse_and_a_short_max_age_warns() {
        for (text, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("12h", 43_200),
            ("30d", 2_592_000),
        ] {
            assert_eq!(
                parse_duration("k", text).unwrap(),
                Duration::from_secs(secs)
            );
        }
        for bad in ["", "30", "d", "1.5h", "-1d", "0s", "3w", "1 h"] {
            assert!(parse_duration("k", bad).is_err(), "{bad}");
        }
        let c = parse(&format!("[retention]\nmax_age = \"30d\"{SOURCE}")).unwrap();
        assert_eq!(
            c.retention,
            Some(RetentionConfig {
                max_age: Duration::from_secs(30 * 86_400),
                interval: Duration::from_secs(3600)
            })
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let short = parse(&format!(
            "[retention]\nmax_age = \"1h\"\ninterval = \"5m\"{SOURCE}"
        ))
        .unwrap();
        assert!(
            short.warnings[0].contains("retention.max_age"),
            "{:?}",
            short.warnings
        );
        assert!(parse(SOURCE).unwrap().retention.is_none());
        let e = error_of(&format!("[retention]\nmax_age = \"soon\"{SOURCE}"));
        assert!(e.contains("retention.max_age"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1", "lisen"),
            ("[storage]\nurl = \"mysql://x\"", "storage.url"),
            (
                "[storage]\nurl = \"postgres://a@h/d?sslmode=sometimes\"",
                "storage.url",
            ),
            ("[storage]\nurl = \"env:NOPE_PG\"", "NOPE_PG"),
            (
                "[storage]\nurl = \"postgres://a@h/d\"\nschema = \"Bad-Name\"",
                "storage.schema",
            ),
            ("[storage]\nschema = \"gw\"", "storage.schema"),
            (
                "[delivery]\nlease_ms = 5000\n[[targets]]\nname = \"t\"\nurl = \"http://x\"",
                "delivery.lease_ms",
            ),
            ("[delivery]\nmax_attempts = 0", "delivery.max_attempts"),
            ("[delivery]\njitter = 2.0", "delivery.jitter"),
            (
                "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"env:NOPE\"] }",
                "sources[0].auth.secrets[0]",
            ),
            (
                "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"whsec_!!!\"] }",
                "sources[0].auth.secrets[0]",
            ),
            (
                "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"] }",
                "sources[0].auth.secrets[0]",
            ),
            (
                "[[sources]]\nname = \"a\"\nvendor = \"pathors\"\nauth = { kind = \"none\" }\n[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"none\" }",
                "sources[1].name",
            ),
            (
                "[[sources]]\nname = \"a b\"\nvendor = \"pathors\"\nauth = { kind = \"none\" }",
                "sources[0].name",
            ),
            (
                "[[targets]]\nname = \"t\"\nurl = \"ftp://x\"",
                "targets[0].url",
            ),
            (
                "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nevents = [\"session.created\"]",
                "targets[0].events[0]",
            ),
            (
                "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nsources = [\"ghost\"]",
                "targets[0].sources[0]",
            ),
            (
                "[[targets]]\nname = \"t\"\nurl = \"http://x\"\n[[targets]]\nname = \"t\"\nurl = \"http://y\"",
                "targets[1].name",
            ),
            (
                "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nsecret = \"notwhsec\"",
                "targets[0].secret",
            ),
            (
                "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nheaders = { \"webhook-id\" = \"x\" }",
                "targets[0].headers.webhook-id",
            ),
            (
                "[[targets]]\nname = \"t\"\nurl = \"http://x\"\ncolour = 1",
                "colour",
            ),
            (
                "[[sources]]\nname = \"a\"\nvendor = \"zoom\"\nauth = { kind = \"none\" }",
                "zoom",
            ),
        ];
        for (toml, key) in cases {
            let err = error_of(toml);
            assert!(
                err.contains(key),
                "error for {toml:?} should name {key}: {err}"
            );
        }
    }
}
