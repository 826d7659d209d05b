//! `[recordings]`: where recordings are archived before the vendor's URL expires.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::hosts::{HostRule, valid_pattern};
use crate::settings::{ConfigError, Context, in_range, invalid, parse_duration_in};

#[derive(Debug, Clone)]
pub struct RecordingsConfig {
    pub store: StoreConfig,
    /// A larger recording is not archived (reason `too_large`).
    pub max_bytes: u64,
    /// Which hosts may be fetched (reason `forbidden_host` otherwise).
    pub hosts: HostRule,
    /// An archive ends by `received + max_wait` at the latest, whatever the vendor's expiry.
    pub max_wait: Duration,
    /// The bounds of one download attempt.
    pub limits: DownloadLimits,
    /// How long a job run holds its claim before another replica may take it over; a run
    /// renews it every third of that while it lasts.
    pub lease: Duration,
}

/// The bounds of one download attempt: so a host that never answers, or trickles, holds a
/// job slot for a bounded time and the job is tried again later.
#[derive(Debug, Clone, Copy)]
pub struct DownloadLimits {
    /// To establish the connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// The longest wait for the next bytes of the answer.
    pub read_timeout: Duration,
    /// The whole attempt, from connecting to the last byte.
    pub attempt_timeout: Duration,
}

/// Where archived objects go: `<vendor>/<hex of the session id>` under either.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A directory (`file://PATH`).
    File { dir: PathBuf },
    /// An S3-compatible object store (`s3://BUCKET/PREFIX`).
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: String,
        access_key_id: Option<SecretString>,
        secret_access_key: Option<SecretString>,
    },
}

/// `[recordings]` as written; the table's presence turns archiving on.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecordings {
    store: String,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default)]
    allow_private_networks: bool,
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default = "default_max_wait")]
    max_wait: String,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: String,
    #[serde(default = "default_read_timeout")]
    read_timeout: String,
    #[serde(default = "default_attempt_timeout")]
    attempt_timeout: String,
    #[serde(default = "default_lease")]
    lease: String,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
}

fn default_max_bytes() -> u64 {
    512 * 1024 * 1024
}
fn default_max_wait() -> String {
    "24h".into()
}
fn default_connect_timeout() -> String {
    "10s".into()
}
fn default_read_timeout() -> String {
    "30s".into()
}
fn default_attempt_timeout() -> String {
    "5m".into()
}
fn default_lease() -> String {
    "60s".into()
}

impl RecordingsConfig {
    pub fn parse(raw: RawRecordings, cx: &mut Context) -> Result<RecordingsConfig, ConfigError> {
        in_range("recordings.max_bytes", raw.max_bytes, 1, i64::MAX as u64)?;
        let secs = Duration::from_secs;
        let max_wait = parse_duration_in(
            "recordings.max_wait",
            &raw.max_wait,
            secs(60),
            secs(30 * 86_400),
        )?;
        let limits = DownloadLimits {
            connect_timeout: parse_duration_in(
                "recordings.connect_timeout",
                &raw.connect_timeout,
                secs(1),
                secs(300),
            )?,
            read_timeout: parse_duration_in(
                "recordings.read_timeout",
                &raw.read_timeout,
                secs(1),
                secs(3600),
            )?,
            attempt_timeout: parse_duration_in(
                "recordings.attempt_timeout",
                &raw.attempt_timeout,
                secs(1),
                secs(86_400),
            )?,
        };
        let lease = parse_duration_in("recordings.lease", &raw.lease, secs(3), secs(3600))?;
        for (i, pattern) in raw.allow_hosts.iter().enumerate() {
            if !valid_pattern(pattern) {
                return Err(invalid(
                    format!("recordings.allow_hosts[{i}]"),
                    format!(
                        "`{pattern}` is not a host name or `*.` followed by a domain (e.g. \"*.vendor.com\")"
                    ),
                ));
            }
        }
        let store = if let Some(rest) = raw.store.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid(
                    "recordings.store",
                    "s3:// needs a bucket, e.g. s3://recordings/sessiongate",
                ));
            }
            let endpoint = raw
                .s3_endpoint
                .map(|e| cx.reference("recordings.s3_endpoint", &e))
                .transpose()?;
            if let Some(e) = &endpoint
                && reqwest::Url::parse(e).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
            {
                return Err(invalid(
                    "recordings.s3_endpoint",
                    format!("`{}` is not an http(s) URL", crate::settings::redact_url(e)),
                ));
            }
            let secret = |cx: &mut Context, key: &str, v: Option<String>| {
                v.map(|v| cx.secret(key, &v).map(SecretString::from))
                    .transpose()
            };
            let access_key_id = secret(cx, "recordings.s3_access_key_id", raw.s3_access_key_id)?;
            let secret_access_key = secret(
                cx,
                "recordings.s3_secret_access_key",
                raw.s3_secret_access_key,
            )?;
            if access_key_id.is_some() != secret_access_key.is_some() {
                return Err(invalid(
                    "recordings.s3_secret_access_key",
                    "s3_access_key_id and s3_secret_access_key go together (or neither, for the environment's credentials)",
                ));
            }
            StoreConfig::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
                endpoint,
                region: raw.s3_region.unwrap_or_else(|| "us-east-1".into()),
                access_key_id,
                secret_access_key,
            }
        } else {
            let s3_keys = [
                ("s3_endpoint", raw.s3_endpoint.is_some()),
                ("s3_region", raw.s3_region.is_some()),
                ("s3_access_key_id", raw.s3_access_key_id.is_some()),
                ("s3_secret_access_key", raw.s3_secret_access_key.is_some()),
            ];
            if let Some((name, _)) = s3_keys.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    format!("recordings.{name}"),
                    "is for s3:// stores; this store is file://",
                ));
            }
            match raw.store.strip_prefix("file://") {
                Some(path) if !path.is_empty() => StoreConfig::File {
                    dir: PathBuf::from(path),
                },
                _ => {
                    return Err(invalid(
                        "recordings.store",
                        "must be file://PATH or s3://BUCKET/PREFIX",
                    ));
                }
            }
        };
        Ok(RecordingsConfig {
            store,
            max_bytes: raw.max_bytes,
            hosts: HostRule {
                allow_private_networks: raw.allow_private_networks,
                allow_hosts: raw.allow_hosts,
            },
            max_wait,
            limits,
            lease,
        })
    }
}
