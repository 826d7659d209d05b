//! `[recordings]`: where recordings are archived before the vendor's URL expires.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use crate::settings::{ConfigError, Context, invalid, positive};

#[derive(Debug, Clone)]
pub struct RecordingsConfig {
    pub store: StoreConfig,
    /// A larger recording is not archived (reason `too_large`).
    pub max_bytes: u64,
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
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
}

fn default_max_bytes() -> u64 {
    512 * 1024 * 1024
}

impl RecordingsConfig {
    pub fn parse(raw: RawRecordings, cx: &mut Context) -> Result<RecordingsConfig, ConfigError> {
        positive("recordings.max_bytes", raw.max_bytes)?;
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
        })
    }
}
