//! Agntix transcripts: `GET {api_url}/api/v1/chat/sessions/{id}/messages` with `x-api-key`,
//! every page (`nextCursor` → `?cursor=`), mapped to the canonical `session.transcript`.

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::event::{Role, Timestamp, TranscriptMessage};
use crate::ingest::settings::Transcripts;

/// More pages than any session has: a cursor that never ends is a broken answer.
const MAX_PAGES: usize = 1000;

/// What one fetch came to.
#[derive(Debug, PartialEq)]
pub enum Fetched {
    Complete(Vec<TranscriptMessage>),
    /// It will not come: `unauthorized`, `not_found`, `http_<status>`, `invalid_answer`,
    /// `too_large`.
    Final(String),
    /// Worth another try (5xx, 429, a connection error, a timeout).
    Retry(String),
}

/// Fetches every page of a session's messages, each request within `timeout`.
pub async fn fetch(
    client: &reqwest::Client,
    settings: &Transcripts,
    session_id: &str,
    timeout: Duration,
) -> Fetched {
    let Some(url) = messages_url(&settings.api_url, session_id) else {
        // No session of the API can have such an id (ingest refuses them too).
        return Fetched::Final("not_found".into());
    };
    let mut key = HeaderValue::from_str(settings.api_key.expose_secret())
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    key.set_sensitive(true);
    let mut messages = Vec::new();
    let mut cursor: Option<String> = None;
    // Bytes read of this session's pages so far, against `max_bytes`.
    let mut read = 0u64;
    for _ in 0..MAX_PAGES {
        let mut page_url = url.clone();
        if let Some(cursor) = &cursor {
            page_url.query_pairs_mut().append_pair("cursor", cursor);
        }
        let answer = client
            .get(page_url)
            .header(HeaderName::from_static("x-api-key"), key.clone())
            .timeout(timeout)
            .send()
            .await;
        let response = match answer {
            Ok(response) => response,
            // The error names the URL, never the key (a header).
            Err(e) => {
                return Fetched::Retry(format!(
                    "the Agntix API did not answer: {}",
                    crate::telemetry::chain(&e)
                ));
            }
        };
        let status = response.status().as_u16();
        match status {
            200..=299 => {}
            401 | 403 => return Fetched::Final("unauthorized".into()),
            404 => return Fetched::Final("not_found".into()),
            429 | 500..=599 => return Fetched::Retry(format!("the Agntix API answered {status}")),
            _ => return Fetched::Final(format!("http_{status}")),
        }
        let bytes = match read_at_most(response, settings.max_bytes - read).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Fetched::Final("too_large".into()),
            Err(e) => {
                return Fetched::Retry(format!(
                    "reading the Agntix answer failed: {}",
                    crate::telemetry::chain(&e.without_url())
                ));
            }
        };
        read += bytes.len() as u64;
        let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
            return Fetched::Final("invalid_answer".into());
        };
        let (items, next) = match &body {
            Value::Array(items) => (items, None),
            Value::Object(page) => match page.get("data").or_else(|| page.get("messages")) {
                Some(Value::Array(items)) => (
                    items,
                    page.get("nextCursor")
                        .and_then(Value::as_str)
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned),
                ),
                _ => return Fetched::Final("invalid_answer".into()),
            },
            _ => return Fetched::Final("invalid_answer".into()),
        };
        for item in items {
            match message(item) {
                Some(m) => messages.push(m),
                None => return Fetched::Final("invalid_answer".into()),
            }
        }
        match next {
            Some(next) if cursor.as_deref() == Some(next.as_str()) => {
                return Fetched::Final("invalid_answer".into());
            }
            Some(next) => cursor = Some(next),
            None => return Fetched::Complete(messages),
        }
    }
    Fetched::Final("invalid_answer".into())
}

/// The body of `response` if it is at most `limit` bytes (`None` past it), read in chunks
/// so a huge answer is never held whole.
async fn read_at_most(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// `{api_url}/api/v1/chat/sessions/{id}/messages`, the id one encoded path segment (a `/`,
/// `?` or `%` in it cannot reach another path); `None` for `.` and `..`, which a URL path
/// resolves instead of keeping.
fn messages_url(api_url: &reqwest::Url, session_id: &str) -> Option<reqwest::Url> {
    if matches!(session_id, "" | "." | "..") {
        return None;
    }
    let mut url = api_url.clone();
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(["api", "v1", "chat", "sessions", session_id, "messages"]);
    Some(url)
}

/// One Agntix message, or `None` if it is not the documented shape.
fn message(item: &Value) -> Option<TranscriptMessage> {
    let id = item
        .get("id")
        .or_else(|| item.get("messageId"))
        .and_then(Value::as_str)?;
    let role = match item.get("role").and_then(Value::as_str)? {
        "USER" => Role::User,
        "ASSISTANT" => Role::Assistant,
        "TOOL" => Role::Tool,
        "SYSTEM" => Role::System,
        _ => return None,
    };
    let content = match item.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(_) => return None,
    };
    Some(TranscriptMessage {
        id: id.to_owned(),
        role,
        content,
        at: item
            .get("createdAt")
            .and_then(Value::as_str)
            .and_then(Timestamp::parse),
        tool_call: item.get("toolCall").filter(|v| !v.is_null()).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_session_id_is_one_path_segment_of_the_messages_url() {
        let api = reqwest::Url::parse("https://app.agntix.example/base/").unwrap();
        let url = |id: &str| messages_url(&api, id).map(|u| u.to_string());
        assert_eq!(
            url("s-1").as_deref(),
            Some("https://app.agntix.example/base/api/v1/chat/sessions/s-1/messages")
        );
        assert_eq!(
            url("a/../b?x=1#f%2e").as_deref(),
            Some(
                "https://app.agntix.example/base/api/v1/chat/sessions/a%2F..%2Fb%3Fx=1%23f%252e/messages"
            )
        );
        assert_eq!(url("."), None);
        assert_eq!(url(".."), None);
    }

    #[test]
    fn messages_map_to_the_canonical_shape() {
        let m = message(&json!({"messageId": "m1", "role": "TOOL", "content": "ok",
            "createdAt": "2026-04-08T05:00:00Z", "toolCall": {"name": "lookup"}}))
        .unwrap();
        assert_eq!(m.id, "m1");
        assert_eq!(m.role, Role::Tool);
        assert_eq!(m.at, Timestamp::parse("2026-04-08T05:00:00Z"));
        assert_eq!(m.tool_call, Some(json!({"name": "lookup"})));
        let plain = message(&json!({"id": "m2", "role": "USER", "content": "hi"})).unwrap();
        assert_eq!((plain.at, plain.tool_call), (None, None));
        for bad in [
            json!({"role": "USER"}),
            json!({"id": "x", "role": "BOT"}),
            json!({"id": "x", "role": "USER", "content": 3}),
        ] {
            assert!(message(&bad).is_none(), "{bad}");
        }
    }
}
