//! Settings: the layers a configuration is read from, and the pieces every room parses
//! its own part with.
//!
//! Layers, later wins: the compiled-in defaults (`config/defaults.toml`, which also documents
//! every key), the file, then `SESSIONGATE__SECTION__KEY` environment variables. Unknown keys
//! are errors. Secrets may be written `env:VAR_NAME` and are resolved at start-up; a missing
//! variable is an error naming it. Every error names the key at fault.
//!
//! This module knows no room: [`crate::config`] puts the rooms' parts together.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// Every key with its default, and what it means: the first layer of every configuration.
pub const DEFAULTS: &str = include_str!("../config/defaults.toml");
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

impl ConfigError {
    /// One error, or all of them.
    pub fn of(mut problems: Vec<ConfigError>) -> ConfigError {
        match problems.len() {
            1 => problems.remove(0),
            _ => ConfigError::Many(problems),
        }
    }
}

pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// What a room parses its part with: `env:` references resolved through `env`, and the
/// warnings an operator should hear at start-up.
pub struct Context<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    inline_secrets: Vec<String>,
    warnings: Vec<String>,
}

impl<'a> Context<'a> {
    pub fn new(env: &'a dyn Fn(&str) -> Option<String>) -> Context<'a> {
        Context {
            env,
            inline_secrets: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// A secret: `env:VAR` resolved, or the value written inline (which is warned of).
    pub fn secret(&mut self, key: &str, value: &str) -> Result<String, ConfigError> {
        match value.strip_prefix("env:") {
            Some(_) => reference(key, value, self.env),
            None if value.is_empty() => Err(invalid(key, "must not be empty")),
            None => {
                self.inline_secrets.push(format!(
                    "secret `{key}` is written inline in the configuration; use env:VAR in production"
                ));
                Ok(value.to_owned())
            }
        }
    }

    /// A value that may be written `env:VAR` (not a secret when inline).
    pub fn reference(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        reference(key, value, self.env)
    }

    pub fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    /// The warnings, inline secrets first.
    pub fn into_warnings(mut self) -> Vec<String> {
        self.inline_secrets.append(&mut self.warnings);
        self.inline_secrets
    }
}

/// Says which problems are at keys an environment variable set (`names`: the variables
/// of the process), so that `SESSIONGATE__DELIVERY__MAX_ATEMPTS=3` is not looked for in
/// the file.
pub fn name_environment_keys(error: ConfigError, names: &[String]) -> ConfigError {
    let variable = |key: &str| {
        let wanted = format!("{ENV_PREFIX}__{}", key.replace('.', "__")).to_ascii_uppercase();
        names
            .iter()
            .find(|n| n.to_ascii_uppercase() == wanted)
            .cloned()
    };
    match error {
        ConfigError::Invalid { key, message } => match variable(&key) {
            Some(var) => ConfigError::Invalid {
                message: format!("{message} (set by the environment variable {var})"),
                key,
            },
            None => ConfigError::Invalid { key, message },
        },
        ConfigError::Many(problems) => ConfigError::Many(
            problems
                .into_iter()
                .map(|p| name_environment_keys(p, names))
                .collect(),
        ),
        other => other,
    }
}

/// The layers of a configuration file: defaults, the file, then `SESSIONGATE__…` variables.
pub fn file_layers(
    path: &Path,
    vars: std::collections::HashMap<String, String>,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError::Load(format!(
            "no configuration file at {} (pass --config FILE or set SESSIONGATE_CONFIG)",
            path.display()
        )));
    }
    Ok(defaults()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            // No `try_parsing`: it would turn a secret such as `000123456789` into the
            // number 123456789. Values stay strings, and numeric keys parse them.
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .source(Some(vars.into_iter().collect())),
        ))
}

/// The defaults, then one TOML document (no environment overrides).
pub fn toml_layers(toml: &str) -> config::ConfigBuilder<config::builder::DefaultState> {
    defaults().add_source(config::File::from_str(toml, config::FileFormat::Toml))
}

fn defaults() -> config::ConfigBuilder<config::builder::DefaultState> {
    config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
}

/// The layers merged into the file's shape `T`, with every problem found on the way.
pub struct Read<T> {
    /// `None` when the tree could not take the shape even without its unknown keys.
    pub raw: Option<T>,
    /// Each unknown key and each missing environment variable.
    pub problems: Vec<ConfigError>,
    /// The keys of the missing variables, so a room's error at one is not listed twice.
    pub missing_keys: Vec<String>,
}

/// Merges the layers and reads them as `T`, noting each unknown key (and dropping it, to
/// read on) and each `env:VAR` whose variable is unset.
pub fn read<T: DeserializeOwned>(
    layers: config::ConfigBuilder<config::builder::DefaultState>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Read<T>, ConfigError> {
    let mut tree: config::Value = layers
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    let mut problems = Vec::new();
    let defaults: Option<config::Value> = defaults().build().and_then(|c| c.try_deserialize()).ok();
    // Each unknown key, and each value of the wrong type, fails deserialisation on its own:
    // note it, drop it (or put back its default), read again, so that one problem does not
    // hide the others.
    let mut dropped: Vec<String> = Vec::new();
    let raw = loop {
        match tree.clone().try_deserialize::<T>() {
            Ok(raw) => break Some(raw),
            Err(e) => {
                let message = e.to_string();
                if let Some(path) = unknown_key(&message)
                    && remove_key(&mut tree, &path)
                {
                    problems.push(invalid(path, "unknown key"));
                    continue;
                }
                match keyed(&message) {
                    // A key dropped for its value is now missing: that was said already.
                    Some((path, _)) if dropped.contains(&path) => break None,
                    Some((path, what)) if what.starts_with("missing field") => {
                        problems.push(invalid(path, "is required"));
                        break None;
                    }
                    Some((path, what)) => {
                        problems.push(invalid(path.clone(), what.clone()));
                        // A word not among the valid ones reads on as the first valid one.
                        let default = defaults
                            .as_ref()
                            .and_then(|d| lookup(d, &path))
                            .cloned()
                            .or_else(|| {
                                let first =
                                    what.split_once("is not one of: ")?.1.split(", ").next()?;
                                Some(config::Value::new(None, first))
                            });
                        let repaired = match default {
                            Some(value) => replace_key(&mut tree, &path, value),
                            None => remove_key(&mut tree, &path),
                        };
                        dropped.push(path);
                        if !repaired {
                            break None;
                        }
                    }
                    None => {
                        problems.push(ConfigError::Load(message));
                        break None;
                    }
                }
            }
        }
    };
    let mut missing = Vec::new();
    missing_variables(&tree, String::new(), env, &mut missing);
    let missing_keys = missing
        .iter()
        .filter_map(|e| match e {
            ConfigError::Invalid { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    problems.extend(missing);
    Ok(Read {
        raw,
        problems,
        missing_keys,
    })
}

/// The dotted key of an "unknown field" error of the `config` crate
/// (``unknown field `x`, expected … for key `targets[0]` `` → `targets[0].x`).
fn unknown_key(message: &str) -> Option<String> {
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    match message.rsplit_once(" for key `") {
        Some((_, key)) => Some(format!("{}.{field}", normal_key(key.trim_end_matches('`')))),
        None => Some(field.to_owned()),
    }
}

/// The key and the complaint of a `config` crate error that names one
/// (`… for key `targets[0]format`` → `targets[0].format`). A missing field is named inside
/// the table it is missing from.
fn keyed(message: &str) -> Option<(String, String)> {
    if let Some(key) = message
        .strip_prefix("missing configuration field \"")
        .and_then(|k| k.strip_suffix('"'))
    {
        return Some((normal_key(key), "missing field".into()));
    }
    let (what, key) = message.rsplit_once(" for key `")?;
    let key = normal_key(key.trim_end_matches('`'));
    if let Some(field) = what.strip_prefix("missing field `") {
        let field = field.split('`').next().unwrap_or(field);
        return Some((format!("{key}.{field}"), "missing field".into()));
    }
    Some((key, what.to_owned()))
}

/// `targets[0]format` (as the `config` crate writes it) → `targets[0].format`.
fn normal_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']' && chars.peek().is_some_and(|n| *n != '.' && *n != '[') {
            out.push('.');
        }
    }
    out
}

/// The value at `path` of a configuration tree.
fn lookup<'a>(tree: &'a config::Value, path: &str) -> Option<&'a config::Value> {
    let mut node = tree;
    for segment in path.split('.') {
        let config::ValueKind::Table(table) = &node.kind else {
            return None;
        };
        node = table.get(segment)?;
    }
    Some(node)
}

/// Puts `value` at `path` (which must exist); false if it is not there.
fn replace_key(tree: &mut config::Value, path: &str, value: config::Value) -> bool {
    let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
    match parent_table(tree, parent) {
        Some(table) if table.contains_key(last) => table.insert(last.to_owned(), value).is_some(),
        _ => false,
    }
}

/// Removes `path` (`a.b[0].c`) from a configuration tree; false if it is not there.
fn remove_key(tree: &mut config::Value, path: &str) -> bool {
    let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
    parent_table(tree, parent).is_some_and(|table| table.remove(last).is_some())
}

/// The table at `path` (`a.b[0]`; empty for the root) of a configuration tree.
fn parent_table<'a>(
    tree: &'a mut config::Value,
    path: &str,
) -> Option<&'a mut config::Map<String, config::Value>> {
    let mut node = tree;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (
                name,
                Some(rest.trim_end_matches(']').parse::<usize>().ok()?),
            ),
            None => (segment, None),
        };
        let config::ValueKind::Table(table) = &mut node.kind else {
            return None;
        };
        let child = table.get_mut(name)?;
        node = match index {
            None => child,
            Some(i) => match &mut child.kind {
                config::ValueKind::Array(items) => items.get_mut(i)?,
                _ => return None,
            },
        };
    }
    match &mut node.kind {
        config::ValueKind::Table(table) => Some(table),
        _ => None,
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
pub fn reference(
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

pub fn socket_address(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| invalid(key, format!("`{value}` is not a host:port address")))
}

/// The ranges numeric keys share: long enough for any real use, short of what overflows
/// arithmetic on instants and counters.
pub mod limits {
    /// An attempt's or a request's timeout: up to an hour.
    pub const TIMEOUT_MS: u64 = 3_600_000;
    /// A pause between retries: up to a week.
    pub const BACKOFF_MS: u64 = 7 * 86_400_000;
    /// Attempts of one delivery.
    pub const ATTEMPTS: u64 = 1_000;
    /// Deliveries in flight per target.
    pub const IN_FLIGHT: u64 = 100_000;
}

/// A duration key (`"90s"`, `"15m"`, …) within `[min, max]`; the error names both.
pub fn parse_duration_in(
    key: &str,
    value: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = parse_duration(key, value)?;
    if d < min || d > max {
        return Err(invalid(
            key,
            format!(
                "`{value}` is out of range: from {}s to {}s",
                min.as_secs(),
                max.as_secs()
            ),
        ));
    }
    Ok(d)
}

/// Deserializes one of a fixed set of words, the error listing them all (the `config`
/// crate's own message for an enum names none): for the enums a configuration holds.
pub fn one_of<'de, D, T: Copy>(deserializer: D, values: &[(&'static str, T)]) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let word = <String as serde::Deserialize>::deserialize(deserializer)?;
    match values.iter().find(|(name, _)| *name == word) {
        Some((_, value)) => Ok(*value),
        None => {
            let names: Vec<&'static str> = values.iter().map(|(name, _)| *name).collect();
            Err(serde::de::Error::custom(format!(
                "`{word}` is not one of: {}",
                names.join(", ")
            )))
        }
    }
}

/// A number within `[min, max]`; the error names the key and the range.
pub fn in_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            format!("{value} is out of range: from {min} to {max}"),
        ));
    }
    Ok(())
}

pub fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(())
}

/// A `[[sources]]` or `[[targets]]` entry's name (`key` is the entry's): well formed, and
/// not used by an earlier entry (`seen`).
pub fn unique_name(
    key: &str,
    what: &str,
    name: &str,
    seen: &mut std::collections::HashSet<String>,
) -> Result<(), ConfigError> {
    check_name(&format!("{key}.name"), name)?;
    if !seen.insert(name.to_owned()) {
        return Err(invalid(
            format!("{key}.name"),
            format!("{what} name `{name}` is used twice"),
        ));
    }
    Ok(())
}

/// Source and target names appear in URLs, metrics labels and the store.
pub fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
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
pub fn has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}
