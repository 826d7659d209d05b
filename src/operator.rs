//! `sessiongate admin …`: the operator's command line, a client of a gateway's admin API:
//! the one `--url` and `--token` name (or `SESSIONGATE_ADMIN_URL` and
//! `SESSIONGATE_ADMIN_TOKEN`), else the one a configuration file describes — of which only
//! the admin address and token are read, so no other production secret is needed.
//!
//! Tables for people, `--json` for scripts (the API's own answer, unchanged). A call that
//! fails prints the API's error message and exits non-zero: [`EXIT_API`] when the API said
//! no, [`EXIT_UNREACHABLE`] when it could not be reached, [`EXIT_CONFIG`] when the
//! configuration does not allow a call.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::settings::{ConfigError, invalid, socket_address};
use crate::telemetry::shorten;

/// The API answered with an error.
pub const EXIT_API: u8 = 1;
/// The configuration names no admin API to call.
pub const EXIT_CONFIG: u8 = 2;
/// The admin API could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// One `sessiongate admin` call.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Deliveries {
        status: Option<String>,
        target: Option<String>,
        limit: Option<usize>,
        cursor: Option<String>,
    },
    Retry {
        id: String,
    },
    RetryDead {
        target: Option<String>,
    },
    Replay {
        event_id: String,
        target: Option<String>,
    },
    /// Recover a source's calls that ended in a window, from its vendor's list API.
    Recover {
        source: String,
        since: String,
        until: String,
    },
    /// Queue a target's deliveries of the events received in a window.
    Backfill {
        target: String,
        since: String,
        until: String,
        dry_run: bool,
    },
}

/// Why a call failed, and the exit code it gives.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
}

impl CallError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::Config(_) => EXIT_CONFIG,
            CallError::Unreachable { .. } => EXIT_UNREACHABLE,
            CallError::Api { .. } => EXIT_API,
        }
    }
}

/// The admin API a call goes to.
pub struct Endpoint {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    pub token: SecretString,
}

/// What `--url`/`--token` (or their environment variables) gave; the rest comes from the
/// configuration file at `config`, which is read only when something is missing.
pub fn endpoint(
    url: Option<String>,
    token: Option<String>,
    config: &Path,
) -> Result<Endpoint, CallError> {
    let url = url.filter(|u| !u.is_empty());
    let token = token.filter(|t| !t.is_empty());
    let from_file = match (&url, &token) {
        (Some(_), Some(_)) => None,
        _ => Some(admin_of_file(config).map_err(|e| {
            CallError::Config(format!(
                "{}: {e} (or pass --url and --token, or set SESSIONGATE_ADMIN_URL and SESSIONGATE_ADMIN_TOKEN)",
                config.display()
            ))
        })?),
    };
    let base = match url {
        Some(url) => {
            let parsed = reqwest::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if parsed.is_none() {
                return Err(CallError::Config(format!(
                    "--url `{}` is not an http(s) URL such as http://127.0.0.1:9090",
                    crate::settings::redact_url(&url)
                )));
            }
            url.trim_end_matches('/').to_owned()
        }
        None => from_file
            .as_ref()
            .expect("read when a part is missing")
            .0
            .clone(),
    };
    let token = match token {
        Some(token) => SecretString::from(token),
        None => from_file
            .and_then(|(_, token)| token)
            .ok_or_else(|| {
                CallError::Config(
                    "server.admin_token is not set in this configuration, so its gateway has no admin API \
                     (or pass --token / set SESSIONGATE_ADMIN_TOKEN)"
                        .into(),
                )
            })?,
    };
    Ok(Endpoint { base, token })
}

/// `[server]` as far as the admin command reads it; every other key is left unread.
#[derive(Deserialize)]
struct AdminFile {
    server: AdminServer,
}

#[derive(Deserialize)]
struct AdminServer {
    listen: String,
    admin_listen: Option<String>,
    admin_token: Option<String>,
}

/// The admin address and token of the gateway a configuration file describes, its layers
/// applied (defaults, the file, `SESSIONGATE__SERVER__…`); `env:` resolved for the token only.
fn admin_of_file(path: &Path) -> Result<(String, Option<SecretString>), ConfigError> {
    let layers = crate::settings::file_layers(path, std::env::vars().collect())?;
    let file: AdminFile = layers
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    let listen = socket_address("server.listen", &file.server.listen)?;
    let admin_listen = file
        .server
        .admin_listen
        .as_deref()
        .map(|a| socket_address("server.admin_listen", a))
        .transpose()?;
    let written = file.server.admin_token.is_some();
    let token = file
        .server
        .admin_token
        .map(|t| crate::settings::reference("server.admin_token", &t, &|v| std::env::var(v).ok()))
        .transpose()?
        .filter(|t| !t.is_empty())
        .map(SecretString::from);
    if written && token.is_none() {
        return Err(invalid("server.admin_token", "must not be empty"));
    }
    Ok((admin_base(listen, admin_listen), token))
}

/// Where the admin API answers: `admin_listen`, else `listen`; an address that listens on
/// every interface is called on loopback.
pub fn admin_base(listen: SocketAddr, admin_listen: Option<SocketAddr>) -> String {
    let address = admin_listen.unwrap_or(listen);
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, address.port()))
}

impl Call {
    fn request(&self) -> (reqwest::Method, String, Vec<(&'static str, String)>) {
        let some = |name, value: &Option<String>| value.clone().map(|v| (name, v));
        match self {
            Call::Deliveries {
                status,
                target,
                limit,
                cursor,
            } => (
                reqwest::Method::GET,
                "/admin/deliveries".into(),
                [
                    some("status", status),
                    some("target", target),
                    some("limit", &limit.map(|l| l.to_string())),
                    some("cursor", cursor),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            Call::Retry { id } => (
                reqwest::Method::POST,
                format!("/admin/deliveries/{}/retry", path_segment(id)),
                vec![],
            ),
            Call::RetryDead { target } => (
                reqwest::Method::POST,
                "/admin/deliveries/retry".into(),
                [Some(("status", "dead".to_owned())), some("target", target)]
                    .into_iter()
                    .flatten()
                    .collect(),
            ),
            Call::Replay { event_id, target } => (
                reqwest::Method::POST,
                format!("/admin/events/{}/replay", path_segment(event_id)),
                some("target", target).into_iter().collect(),
            ),
            Call::Recover {
                source,
                since,
                until,
            } => (
                reqwest::Method::POST,
                format!("/admin/sources/{}/recover", path_segment(source)),
                vec![("since", since.clone()), ("until", until.clone())],
            ),
            Call::Backfill {
                target,
                since,
                until,
                dry_run,
            } => (
                reqwest::Method::POST,
                format!("/admin/targets/{}/backfill", path_segment(target)),
                vec![
                    ("since", since.clone()),
                    ("until", until.clone()),
                    ("dry_run", dry_run.to_string()),
                ],
            ),
        }
    }

    /// How long the call may take: a recovery lists and fetches from a vendor's API.
    fn timeout(&self) -> std::time::Duration {
        match self {
            Call::Recover { .. } => std::time::Duration::from_secs(3600),
            _ => std::time::Duration::from_secs(30),
        }
    }
}

/// An id as one path segment: anything but the characters ids are made of is escaped.
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Makes `call` against the admin API at `endpoint`; answers what to print.
pub async fn run(endpoint: &Endpoint, call: &Call, json: bool) -> Result<String, CallError> {
    let token = &endpoint.token;
    let base = endpoint.base.clone();
    let (method, path, query) = call.request();
    let url = reqwest::Url::parse_with_params(&format!("{base}{path}"), &query)
        .map_err(|e| CallError::Config(format!("the admin address {base} is not a URL: {e}")))?;
    let response = reqwest::Client::new()
        .request(method, url.clone())
        .bearer_auth(token.expose_secret())
        .timeout(call.timeout())
        .send()
        .await
        .map_err(|e| CallError::Unreachable {
            url: base.clone(),
            reason: crate::telemetry::chain(&e),
        })?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| CallError::Unreachable {
        url: base.clone(),
        reason: crate::telemetry::chain(&e),
    })?;
    let answer: Value = serde_json::from_str(&body).map_err(|_| CallError::Api {
        status,
        code: "not_json".into(),
        message: format!(
            "{url} answered something that is not the admin API: {}",
            body.chars().take(200).collect::<String>()
        ),
    })?;
    if status >= 400 {
        let field = |name: &str| answer["error"][name].as_str().unwrap_or("").to_owned();
        return Err(CallError::Api {
            status,
            code: field("code"),
            message: field("message"),
        });
    }
    if json {
        return Ok(format!("{answer:#}\n"));
    }
    Ok(match call {
        Call::Deliveries { .. } => deliveries_table(&answer),
        Call::Retry { id } => format!("requeued {id}\n"),
        Call::RetryDead { target } => format!(
            "retried {} dead deliveries{}\n",
            answer["retried"],
            target
                .as_ref()
                .map_or(String::new(), |t| format!(" of target {t}"))
        ),
        Call::Replay { event_id, .. } => {
            let ids: Vec<&str> = answer["deliveries"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!(
                "replaying {event_id} as {} new deliveries: {}\n",
                ids.len(),
                ids.join(", ")
            )
        }
        Call::Recover { source, .. } => format!(
            "{source}: the vendor listed {} calls in the window; {} recovered\n",
            answer["listed"], answer["recovered"]
        ),
        Call::Backfill {
            target, dry_run, ..
        } => format!(
            "{} {} deliveries to {target}\n",
            if *dry_run { "would queue" } else { "queued" },
            answer["queued"]
        ),
    })
}

fn deliveries_table(answer: &Value) -> String {
    let rows: Vec<[String; 6]> = answer["deliveries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let text = |name: &str| d[name].as_str().unwrap_or("").to_owned();
            let last = match (&d["lastStatus"], d["lastError"].as_str()) {
                (Value::Number(code), _) => format!("HTTP {code}"),
                (_, Some(error)) => shorten(error, 40),
                _ => "-".into(),
            };
            [
                text("id"),
                text("target"),
                text("status"),
                d["attempts"].to_string(),
                last,
                text("eventId"),
            ]
        })
        .collect();
    let header = ["ID", "TARGET", "STATUS", "ATTEMPTS", "LAST", "EVENT"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    match answer["nextCursor"].as_str() {
        Some(cursor) => {
            let _ = writeln!(out, "more: --cursor {cursor}");
        }
        None if rows.is_empty() => {
            let _ = writeln!(out, "(no deliveries)");
        }
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_path_segment_and_filters_are_query_parameters() {
        let (method, path, query) = Call::RetryDead {
            target: Some("crm".into()),
        }
        .request();
        assert_eq!(method, reqwest::Method::POST);
        assert_eq!(path, "/admin/deliveries/retry");
        assert_eq!(
            query,
            [("status", "dead".to_owned()), ("target", "crm".to_owned())]
        );
        let (_, path, _) = Call::Retry {
            id: "../x?y".into(),
        }
        .request();
        assert_eq!(path, "/admin/deliveries/..%2Fx%3Fy/retry");
    }

    #[test]
    fn a_table_lines_its_columns_up_and_says_when_more_follow() {
        let answer = serde_json::json!({
            "deliveries": [
                {"id": "dlv_1", "target": "crm", "status": "dead", "attempts": 5,
                 "lastStatus": 500, "lastError": "HTTP 500", "eventId": "evt_a"},
                {"id": "dlv_22", "target": "warehouse", "status": "pending", "attempts": 0,
                 "lastStatus": null, "lastError": null, "eventId": "evt_b"},
            ],
            "nextCursor": "7"
        });
        let table = deliveries_table(&answer);
        assert_eq!(
            shorten("connection refused by the peer", 12),
            "connection …"
        );
        assert_eq!(shorten("short", 12), "short");
        assert_eq!(
            table,
            "ID      TARGET     STATUS   ATTEMPTS  LAST      EVENT\n\
             dlv_1   crm        dead     5         HTTP 500  evt_a\n\
             dlv_22  warehouse  pending  0         -         evt_b\n\
             more: --cursor 7\n"
        );
    }
}
