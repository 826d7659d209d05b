//! `[recordings]`: where recordings are archived before the vendor's URL expires.

use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::{ConfigError, invalid, positive};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingsConfig {
    /// The directory of a `file://` store; objects are `<vendor>/<hex of session id>`.
    pub dir: PathBuf,
    /// A larger recording is not archived (reason `too_large`).
    pub max_bytes: u64,
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
    pub fn parse(raw: RawRecordings) -> Result<RecordingsConfig, ConfigError> {
        positive("recordings.max_bytes", raw.max_bytes)?;
        if raw.store.starts_with("s3://") {
            return Err(invalid(
                "recordings.store",
                "s3:// stores are not in this build yet; use file://PATH",
            ));
        }
        let s3_keys = [
            ("s3_endpoint", &raw.s3_endpoint),
            ("s3_region", &raw.s3_region),
            ("s3_access_key_id", &raw.s3_access_key_id),
            ("s3_secret_access_key", &raw.s3_secret_access_key),
        ];
        if let Some((name, _)) = s3_keys.iter().find(|(_, v)| v.is_some()) {
            return Err(invalid(
                format!("recordings.{name}"),
                "is for s3:// stores; this store is file://",
            ));
        }
        match raw.store.strip_prefix("file://") {
            Some(path) if !path.is_empty() => Ok(RecordingsConfig {
                dir: PathBuf::from(path),
                max_bytes: raw.max_bytes,
            }),
            _ => Err(invalid(
                "recordings.store",
                "must be file://PATH, e.g. file://data/recordings",
            )),
        }
    }
}
