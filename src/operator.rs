//! `sessiongate admin …`: the operator's command line, a client of the admin API of the
//! gateway that a configuration file describes (its admin address and token).
//!
//! Tables for people, `--json` for scripts (the API's own answer, unchanged). A call that
//! fails prints the API's error message and exits non-zero: [`EXIT_API`] when the API said
//! no, [`EXIT_UNREACHABLE`] when it could not be reached, [`EXIT_CONFIG`] when the
//! configuration does not allow a call.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::Config;

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

/// Where the admin API of `config`'s gateway answers: `admin_listen`, else `listen`; an
/// address that listens on every interface is called on loopback.
pub fn admin_base(config: &Config) -> String {
    let address = config.server.admin_listen.unwrap_or(config.server.listen);
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

/// Makes `call` against the admin API of `config`'s gateway; answers what to print.
pub async fn run(config: &Config, call: &Call, json: bool) -> Result<String, CallError> {
    let token = config.server.admin_token.as_ref().ok_or_else(|| {
        CallError::Config(
            "server.admin_token is not set in this configuration, so its gateway has no admin API"
                .into(),
        )
    })?;
    let base = admin_base(config);
    let (method, path, query) = call.request();
    let url = reqwest::Url::parse_with_params(&format!("{base}{path}"), &query)
        .map_err(|e| CallError::Config(format!("the admin address {base} is not a URL: {e}")))?;
    let response = reqwest::Client::new()
        .request(method, url.clone())
        .bearer_auth(token.expose_secret())
        .timeout(std::time::Duration::from_secs(30))
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
    })
}

/// `text`, cut to `max` characters with an ellipsis when longer.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
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
