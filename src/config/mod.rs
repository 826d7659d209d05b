//! The configuration: each room's settings, read from one set of layers.
//!
//! [`crate::settings`] reads the layers (compiled-in defaults, the file, environment
//! overrides) and holds the pieces every room parses with; each room parses its own part:
//! [`ServerConfig`] and [`Source`] (ingest), [`StorageConfig`] and [`RetentionConfig`]
//! (store), [`DeliveryConfig`] and [`Target`] (delivery). `config/defaults.toml` documents
//! every key; this module does not re-document them.

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use crate::delivery::settings::{DeliveryConfig, RawDelivery};
use crate::delivery::target::{RawTarget, Target};
use crate::enrich::settings::{RawRecordings, RecordingsConfig};
use crate::ingest::settings::{RawServer, RawSource, ServerConfig, Source};
use crate::settings::{self, ConfigError, Context, invalid};
use crate::store::settings::{RawRetention, RawStorage, RetentionConfig, StorageConfig};

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/sessiongate.toml";

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub delivery: DeliveryConfig,
    /// `None` = keep everything.
    pub retention: Option<RetentionConfig>,
    /// `None` = recordings are not archived (events carry the vendor's URL).
    pub recordings: Option<RecordingsConfig>,
    pub sources: Vec<Source>,
    pub targets: Vec<Target>,
    /// Things an operator should hear about at start-up (inline secrets, `auth = none`).
    pub warnings: Vec<String>,
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
        let names: Vec<String> = vars.keys().cloned().collect();
        Self::build(settings::file_layers(path, vars)?, env)
            .map_err(|e| settings::name_environment_keys(e, &names))
    }

    /// Parses a TOML document over the defaults (no environment overrides); `env:` secrets
    /// are resolved with `env`. Used by tests and the demo.
    pub fn from_toml(
        toml: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::build(settings::toml_layers(toml), env)
    }

    /// Reads the layers and reports every problem found: each unknown key, each missing
    /// environment variable, and the first other validation error.
    fn build(
        layers: config::ConfigBuilder<config::builder::DefaultState>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut read = settings::read::<RawConfig>(layers, env)?;
        let mut problems = read.problems;
        if let Some(raw) = read.raw.as_mut() {
            for (i, target) in raw.targets.iter_mut().enumerate() {
                problems.extend(target.take_unknown(&format!("targets[{i}]")));
            }
        }
        if read.raw.as_ref().is_some_and(|raw| raw.sources.is_empty()) {
            problems.push(invalid(
                "sources",
                "no [[sources]] are configured, so nothing could be received: add one per vendor endpoint",
            ));
        }
        if let Some(raw) = read.raw {
            match raw.validate(Context::new(env)) {
                Ok(config) if problems.is_empty() => return Ok(config),
                Ok(_) => {}
                // A missing variable it stopped at is listed already.
                Err(ConfigError::Invalid { key, .. }) if read.missing_keys.contains(&key) => {}
                Err(e) => problems.push(e),
            }
        }
        Err(ConfigError::of(problems))
    }
}

/// What the file may say; each part is its room's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    storage: RawStorage,
    delivery: RawDelivery,
    retention: Option<RawRetention>,
    recordings: Option<RawRecordings>,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    targets: Vec<RawTarget>,
}

impl RawConfig {
    fn validate(self, mut cx: Context) -> Result<Config, ConfigError> {
        let server = ServerConfig::parse(self.server, &mut cx)?;
        let storage = StorageConfig::parse(self.storage, &mut cx)?;
        let delivery = DeliveryConfig::parse(self.delivery)?;
        let retention = self
            .retention
            .map(|r| RetentionConfig::parse(r, &mut cx))
            .transpose()?;
        let recordings = self
            .recordings
            .map(|r| RecordingsConfig::parse(r, &mut cx))
            .transpose()?;
        let sources = Source::parse_all(self.sources, &mut cx)?;
        // A source's own body limit must fit its half of the body budget, as the server's does.
        for (i, source) in sources.iter().enumerate() {
            if let Some(limit) = source.max_body_bytes
                && limit > server.max_body_bytes_in_flight / 2
            {
                return Err(crate::settings::invalid(
                    format!("sources[{i}].max_body_bytes"),
                    format!(
                        "{limit} is more than half of server.max_body_bytes_in_flight ({}): \
                         raise that, or a body of this size could never be read",
                        server.max_body_bytes_in_flight
                    ),
                ));
            }
        }
        let source_names: HashSet<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        let targets = Target::parse_all(self.targets, &delivery, &source_names, &mut cx)?;
        Ok(Config {
            server,
            storage,
            delivery,
            retention,
            recordings,
            sources,
            targets,
            warnings: cx.into_warnings(),
        })
    }
}
