//! Each vendor's list and get-call APIs (`../shared/vendor-docs/`, "API to recover missed
//! calls"), and the webhook bodies a call's answer stands for.
//!
//! A recovered call is mapped by the adapter its webhooks go to ([`crate::vendors`]): from
//! the vendor's own answer this builds the bodies those webhooks would have carried, in the
//! order the vendor sends them, so that each gets the same duplicate key (and event ids) as
//! the webhook would have. Nothing here maps a field to the canonical event.

use serde_json::{Map, Value, json};

use super::Failure;
use super::api::Api;
use crate::event::Timestamp;
use crate::vendors::Vendor;

/// Calls per page asked of a vendor that takes a page size (Retell's maximum is
/// unconfirmed; ElevenLabs allows 100; Vapi, Bland and Twilio 1,000).
fn page_size(vendor: Vendor) -> usize {
    match vendor {
        Vendor::Retell | Vendor::ElevenLabs => 100,
        _ => 1000,
    }
}

/// Where the API filters by start time (ElevenLabs, Bland), a call that started up to
/// this long before the window may have ended in it: listed too.
pub(super) const START_MARGIN_MS: i64 = 3_600_000;

/// A poll's window: calls that ended in `[since, until]` (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since: i64,
    pub until: i64,
}

impl Window {
    fn holds(&self, ended_ms: i64) -> bool {
        (self.since..=self.until).contains(&ended_ms)
    }
}

/// One call the vendor listed in the window.
#[derive(Debug)]
pub(super) struct Listed {
    /// The vendor's id of the call.
    pub id: String,
    /// The session it belongs to (a Twilio child leg's is its parent's).
    pub session: String,
    /// The list's item.
    pub item: Value,
}

impl Listed {
    /// A listed call that is its own session, its id at `key`.
    fn own(item: &Value, key: &str) -> Option<Listed> {
        let id = str_of(item, key)?.to_owned();
        Some(Listed {
            session: id.clone(),
            id,
            item: item.clone(),
        })
    }
}

/// The next page's cursor at `key` of a `has_more` answer (Retell, ElevenLabs).
fn cursor_if_more(answer: &Value, key: &str) -> Option<String> {
    let more = answer.get("has_more").and_then(Value::as_bool) == Some(true);
    more.then(|| str_of(answer, key).map(str::to_owned))
        .flatten()
}

pub(super) struct Page {
    pub calls: Vec<Listed>,
    /// The vendor's cursor of the next page; `None` on the last.
    pub next: Option<String>,
}

/// One page of the calls that ended in `window`, from `cursor` (`None`: the first).
pub(super) async fn list(
    api: &Api<'_>,
    window: Window,
    cursor: Option<&str>,
) -> Result<Page, Failure> {
    match api.vendor {
        Vendor::Retell => retell_list(api, window, cursor).await,
        Vendor::Vapi => vapi_list(api, window, cursor).await,
        Vendor::ElevenLabs => elevenlabs_list(api, window, cursor).await,
        Vendor::Bland => bland_list(api, window, cursor).await,
        Vendor::Twilio => twilio_list(api, window, cursor).await,
        vendor => Err(Failure::vendor(
            "bad_answer",
            format!("{vendor} has no list API"),
        )),
    }
}

/// The webhook bodies a listed call stands for, in the order the vendor sends them (the
/// last one completes the call); empty if the vendor no longer has the call.
pub(super) async fn bodies(
    api: &Api<'_>,
    listed: &Listed,
) -> Result<Vec<Map<String, Value>>, Failure> {
    match api.vendor {
        Vendor::Retell => {
            let path = format!("/v2/get-call/{}", segment(&listed.id));
            Ok(match api.get(&path).await? {
                Some(call) => retell_bodies(call),
                None => Vec::new(),
            })
        }
        // The list holds the whole call, its analysis and artifact included.
        Vendor::Vapi => Ok(vapi_bodies(&listed.item)),
        Vendor::ElevenLabs => {
            let path = format!("/v1/convai/conversations/{}", segment(&listed.id));
            Ok(match api.get(&path).await? {
                Some(conversation) => elevenlabs_bodies(conversation),
                None => Vec::new(),
            })
        }
        Vendor::Bland => {
            let path = format!("/v1/calls/{}", segment(&listed.id));
            Ok(match api.get(&path).await? {
                Some(call) => bland_bodies(call),
                None => Vec::new(),
            })
        }
        Vendor::Twilio => twilio_bodies(api, listed).await,
        _ => Ok(Vec::new()),
    }
}

/// An id as one path segment.
fn segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

fn object(value: Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn str_of<'a>(item: &'a Value, key: &str) -> Option<&'a str> {
    item.get(key).and_then(Value::as_str)
}

fn bad(vendor: Vendor, what: &str) -> Failure {
    Failure::vendor(
        "bad_answer",
        format!("the {vendor} API answered without {what}"),
    )
}

fn iso(ms: i64) -> String {
    Timestamp::from_unix_millis(ms).to_string()
}

// --- Retell: POST /v3/list-calls (cursor `pagination_key`), GET /v2/get-call/{id} ---

async fn retell_list(api: &Api<'_>, window: Window, cursor: Option<&str>) -> Result<Page, Failure> {
    let mut query = json!({
        "filter_criteria": {
            "end_timestamp": {"type": "range", "op": "bt", "value": [window.since, window.until]}
        },
        "sort_order": "ascending",
        "limit": page_size(Vendor::Retell),
    });
    if let Some(cursor) = cursor {
        query["pagination_key"] = cursor.into();
    }
    let answer = api
        .post("/v3/list-calls", &query)
        .await?
        .ok_or_else(|| bad(Vendor::Retell, "its list (404)"))?;
    let items = answer
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(Vendor::Retell, "`items`"))?;
    let calls = items
        .iter()
        // The range filter is the API's; kept here too, in case it is not applied.
        .filter(|c| {
            c.get("end_timestamp")
                .and_then(Value::as_i64)
                .is_some_and(|end| window.holds(end))
        })
        .filter_map(|c| Listed::own(c, "call_id"))
        .collect();
    let next = cursor_if_more(&answer, "pagination_key");
    Ok(Page { calls, next })
}

/// `call_started` (for a call that connected; Retell sends none otherwise), `call_ended`,
/// and `call_analyzed` once the call is analysed. The started body carries what is known
/// at the start, as Retell's does.
fn retell_bodies(call: Value) -> Vec<Map<String, Value>> {
    let Some(call) = object(call) else {
        return Vec::new();
    };
    let mut bodies = Vec::new();
    let connected = call.get("call_status").and_then(Value::as_str) != Some("not_connected");
    if connected && call.contains_key("start_timestamp") {
        let started: Map<String, Value> = call
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "call_id"
                        | "call_type"
                        | "agent_id"
                        | "agent_version"
                        | "agent_name"
                        | "direction"
                        | "from_number"
                        | "to_number"
                        | "start_timestamp"
                        | "metadata"
                        | "retell_llm_dynamic_variables"
                        | "telephony_identifier"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([("call_status".to_owned(), json!("ongoing"))])
            .collect();
        bodies.push(webhook("call_started", started));
    }
    let analyzed = call.contains_key("call_analysis");
    bodies.push(webhook("call_ended", call.clone()));
    if analyzed {
        bodies.push(webhook("call_analyzed", call));
    }
    bodies
}

fn webhook(event: &str, call: Map<String, Value>) -> Map<String, Value> {
    Map::from_iter([
        ("event".to_owned(), json!(event)),
        ("call".to_owned(), Value::Object(call)),
    ])
}

// --- Vapi: GET /call (a bare array, bounded by `updatedAt`, no cursor) ---

async fn vapi_list(api: &Api<'_>, window: Window, cursor: Option<&str>) -> Result<Page, Failure> {
    // No cursor, and no documented order: pages are spans of `updatedAt`. A span whose
    // answer is full may hold more than it returned, so it is narrowed until its answer is
    // not full; the span after it starts twice as long. The cursor is `from:span` (ms).
    let limit = page_size(Vendor::Vapi);
    let (from, mut span) = cursor
        .and_then(|c| c.split_once(':'))
        .and_then(|(f, s)| Some((f.parse::<i64>().ok()?, s.parse::<i64>().ok()?)))
        .unwrap_or((window.since, window.until - window.since + 1));
    loop {
        let to = from.saturating_add(span - 1).min(window.until);
        let path = format!(
            "/call?updatedAtGe={}&updatedAtLe={}&limit={limit}",
            iso(from),
            iso(to)
        );
        let answer = api
            .get(&path)
            .await?
            .ok_or_else(|| bad(Vendor::Vapi, "its list (404)"))?;
        let items = answer
            .as_array()
            .ok_or_else(|| bad(Vendor::Vapi, "an array of calls"))?;
        if items.len() >= limit && span > 1 {
            // Narrow to the span below the page's median update (the calls missing from
            // it may be anywhere, so the narrower span is asked again); halve where the
            // page does not tell.
            let mut updated: Vec<i64> = items
                .iter()
                .filter_map(|c| str_of(c, "updatedAt").and_then(Timestamp::parse))
                .map(Timestamp::unix_millis)
                .collect();
            updated.sort_unstable();
            let median = updated.get(updated.len() / 2).copied().unwrap_or(to);
            span = if median > from && median < to {
                median - from + 1
            } else {
                span / 2
            };
            continue;
        }
        if items.len() >= limit {
            tracing::warn!(
                source = api.source,
                at = %iso(from),
                "Vapi lists more calls updated in one millisecond than a page holds; some may be missed"
            );
        }
        let calls = items
            .iter()
            .filter(|c| str_of(c, "status") == Some("ended"))
            .filter_map(|c| Listed::own(c, "id"))
            .collect();
        let next = (to < window.until).then(|| format!("{}:{}", to + 1, span.saturating_mul(2)));
        return Ok(Page { calls, next });
    }
}

/// A `status-update` `in-progress` (Vapi's start) for a call that started, and the
/// `end-of-call-report`, both as Vapi's server messages carry them.
fn vapi_bodies(call: &Value) -> Vec<Map<String, Value>> {
    let Some(full) = call.as_object() else {
        return Vec::new();
    };
    let message =
        |m: Map<String, Value>| Map::from_iter([("message".to_owned(), Value::Object(m))]);
    let mut bodies = Vec::new();
    if let Some(started) = full.get("startedAt") {
        let at_start: Map<String, Value> = full
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "id" | "orgId"
                        | "type"
                        | "createdAt"
                        | "startedAt"
                        | "assistantId"
                        | "phoneNumberId"
                        | "customer"
                        | "metadata"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([
                ("status".to_owned(), json!("in-progress")),
                ("updatedAt".to_owned(), started.clone()),
            ])
            .collect();
        let mut m = Map::new();
        m.insert("type".into(), json!("status-update"));
        m.insert("status".into(), json!("in-progress"));
        m.insert("call".into(), Value::Object(at_start));
        if let Some(ms) = started.as_str().and_then(Timestamp::parse) {
            m.insert("timestamp".into(), json!(ms.unix_millis()));
        }
        bodies.push(message(m));
    }
    let mut m = Map::new();
    m.insert("type".into(), json!("end-of-call-report"));
    for key in [
        "endedReason",
        "startedAt",
        "endedAt",
        "cost",
        "costBreakdown",
        "analysis",
        "artifact",
        "customer",
    ] {
        if let Some(v) = full.get(key) {
            m.insert(key.into(), v.clone());
        }
    }
    if let Some(ended) = full
        .get("endedAt")
        .and_then(Value::as_str)
        .and_then(Timestamp::parse)
    {
        m.insert("timestamp".into(), json!(ended.unix_millis()));
    }
    m.insert("call".into(), Value::Object(full.clone()));
    bodies.push(message(m));
    bodies
}

// --- ElevenLabs: GET /v1/convai/conversations (cursor), GET …/{id} ---

async fn elevenlabs_list(
    api: &Api<'_>,
    window: Window,
    cursor: Option<&str>,
) -> Result<Page, Failure> {
    // Filtered by start time only (Unix seconds).
    let mut path = format!(
        "/v1/convai/conversations?call_start_after_unix={}&call_start_before_unix={}&page_size={}",
        (window.since - START_MARGIN_MS).div_euclid(1000),
        window.until.div_euclid(1000) + 1,
        page_size(Vendor::ElevenLabs)
    );
    if let Some(cursor) = cursor {
        path.push_str("&cursor=");
        path.extend(form_urlencoded::byte_serialize(cursor.as_bytes()));
    }
    let answer = api
        .get(&path)
        .await?
        .ok_or_else(|| bad(Vendor::ElevenLabs, "its list (404)"))?;
    let items = answer
        .get("conversations")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(Vendor::ElevenLabs, "`conversations`"))?;
    let calls = items
        .iter()
        // Done: the post-call transcription webhook is sent for these (whether failed
        // initiations are listed is unconfirmed; they are not recovered).
        .filter(|c| str_of(c, "status") == Some("done"))
        .filter(|c| {
            let start = c.get("start_time_unix_secs").and_then(Value::as_i64);
            let length = c
                .get("call_duration_secs")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            start.is_some_and(|s| window.holds((s + length) * 1000))
        })
        .filter_map(|c| Listed::own(c, "conversation_id"))
        .collect();
    let next = cursor_if_more(&answer, "next_cursor");
    Ok(Page { calls, next })
}

/// The `post_call_transcription` webhook: its `data` has the conversation's shape. The
/// audio webhook is not rebuilt (the audio is a separate download).
fn elevenlabs_bodies(conversation: Value) -> Vec<Map<String, Value>> {
    let metadata = conversation.get("metadata");
    let start = metadata
        .and_then(|m| m.get("start_time_unix_secs"))
        .and_then(Value::as_i64);
    let length = metadata
        .and_then(|m| m.get("call_duration_secs"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let Some(start) = start else {
        return Vec::new();
    };
    vec![Map::from_iter([
        ("type".to_owned(), json!("post_call_transcription")),
        ("event_timestamp".to_owned(), json!(start + length)),
        ("data".to_owned(), conversation),
    ])]
}

// --- Bland: GET /v1/calls (an index range, newest first), GET /v1/calls/{id} ---

async fn bland_list(api: &Api<'_>, window: Window, cursor: Option<&str>) -> Result<Page, Failure> {
    // Newest first from index `from`: calls created meanwhile push the others further
    // down, so resuming at an index sees some twice and skips none.
    let from = cursor.and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
    let limit = page_size(Vendor::Bland);
    let path = format!(
        "/v1/calls?from={from}&to={}&limit={limit}&ascending=false",
        from + limit
    );
    let answer = api
        .get(&path)
        .await?
        .ok_or_else(|| bad(Vendor::Bland, "its list (404)"))?;
    let items = answer
        .get("calls")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(Vendor::Bland, "`calls`"))?;
    let created = |c: &Value| {
        str_of(c, "created_at")
            .and_then(Timestamp::parse)
            .map(Timestamp::unix_millis)
    };
    // No time filter is confirmed: the window is applied here, by creation plus length.
    let calls = items
        .iter()
        .filter(|c| c.get("completed").and_then(Value::as_bool) == Some(true))
        .filter(|c| {
            let minutes = c.get("call_length").and_then(Value::as_f64).unwrap_or(0.0);
            created(c).is_some_and(|at| window.holds(at + (minutes * 60_000.0) as i64))
        })
        .filter_map(|c| Listed::own(c, "call_id"))
        .collect();
    let oldest = items.iter().filter_map(created).min();
    let past_window = oldest.is_some_and(|at| at < window.since - START_MARGIN_MS);
    let next = (items.len() >= limit && !past_window).then(|| (from + items.len()).to_string());
    Ok(Page { calls, next })
}

/// The immediate post-call webhook is the call object; Bland's get API has no delayed
/// post-call, so the call is finalized from this one (its corrected transcript, if the
/// object has one, would make it read as the delayed webhook: left out).
fn bland_bodies(call: Value) -> Vec<Map<String, Value>> {
    match object(call) {
        Some(mut call) => {
            call.remove("corrected_transcript");
            vec![call]
        }
        None => Vec::new(),
    }
}

// --- Twilio: GET …/Calls.json (`next_page_uri`), GET …/Calls/{sid}/Recordings.json ---

async fn twilio_list(api: &Api<'_>, window: Window, cursor: Option<&str>) -> Result<Page, Failure> {
    let account = api.recover.account_sid.as_deref().unwrap_or("");
    let day = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let path = match cursor {
        // Only a path on the same API: its credentials go nowhere else.
        Some(next) if next.starts_with('/') && !next.starts_with("//") => next.to_owned(),
        _ => format!(
            // `EndTime>` is on or after a day, `EndTime<` before one (UTC days).
            "/2010-04-01/Accounts/{account}/Calls.json?EndTime%3E={}&EndTime%3C={}&PageSize={}",
            day(window.since),
            day(window.until + 86_400_000),
            page_size(Vendor::Twilio)
        ),
    };
    let answer = api
        .get(&path)
        .await?
        .ok_or_else(|| bad(Vendor::Twilio, "its call list (404)"))?;
    let items = answer
        .get("calls")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(Vendor::Twilio, "`calls`"))?;
    let calls = items
        .iter()
        .filter(|c| {
            matches!(
                str_of(c, "status"),
                Some("completed" | "busy" | "no-answer" | "failed" | "canceled")
            )
        })
        .filter(|c| {
            str_of(c, "end_time")
                .and_then(|t| chrono::DateTime::parse_from_rfc2822(t).ok())
                .is_some_and(|t| window.holds(t.timestamp_millis()))
        })
        .filter_map(|c| {
            let id = str_of(c, "sid")?.to_owned();
            let session = str_of(c, "parent_call_sid").unwrap_or(&id).to_owned();
            Some(Listed {
                id,
                session,
                item: c.clone(),
            })
        })
        .collect();
    let next = str_of(&answer, "next_page_uri").map(str::to_owned);
    Ok(Page { calls, next })
}

/// The recording status callbacks of a parent call's completed recordings, then its
/// status callback (so that the end finalizes the call with its recording); a child leg's
/// status callback alone.
async fn twilio_bodies(api: &Api<'_>, listed: &Listed) -> Result<Vec<Map<String, Value>>, Failure> {
    let status = twilio_status(listed);
    if status.contains_key("ParentCallSid") {
        return Ok(vec![status]);
    }
    let account = api.recover.account_sid.as_deref().unwrap_or("");
    let path = format!(
        "/2010-04-01/Accounts/{account}/Calls/{}/Recordings.json",
        segment(&listed.id)
    );
    let base = api.recover.api_url.as_str().trim_end_matches('/');
    let mut bodies = match api.get(&path).await? {
        Some(answer) => twilio_recordings(&answer, listed, base),
        None => Vec::new(),
    };
    bodies.push(status);
    Ok(bodies)
}

/// Twilio's form parameters, all strings, as the adapter reads them.
fn form<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), Value::String(value?.to_owned()))))
        .collect()
}

/// A call's status callback, from its list item.
fn twilio_status(listed: &Listed) -> Map<String, Value> {
    let c = &listed.item;
    if let Some(parent) = str_of(c, "parent_call_sid") {
        return form([
            ("AccountSid", str_of(c, "account_sid")),
            ("CallSid", Some(listed.id.as_str())),
            ("CallStatus", str_of(c, "status")),
            ("ParentCallSid", Some(parent)),
        ]);
    }
    form([
        ("AccountSid", str_of(c, "account_sid")),
        ("ApiVersion", str_of(c, "api_version")),
        ("CallSid", Some(listed.id.as_str())),
        ("CallStatus", str_of(c, "status")),
        ("CallDuration", str_of(c, "duration")),
        ("Direction", str_of(c, "direction")),
        ("From", str_of(c, "from")),
        ("To", str_of(c, "to")),
        ("AnsweredBy", str_of(c, "answered_by")),
        ("Timestamp", str_of(c, "end_time")),
    ])
}

/// The recording status callbacks of a call's completed recordings (`Recordings.json`).
fn twilio_recordings(answer: &Value, listed: &Listed, base: &str) -> Vec<Map<String, Value>> {
    let account = str_of(&listed.item, "account_sid");
    answer
        .get("recordings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| str_of(r, "status") == Some("completed"))
        .filter_map(|r| {
            let sid = str_of(r, "sid")?;
            // The callback's `RecordingUrl` is the media URL without an extension.
            let url = match (str_of(r, "media_url"), str_of(r, "uri")) {
                (Some(media), _) => media.to_owned(),
                (None, Some(uri)) => format!("{base}{}", uri.trim_end_matches(".json")),
                (None, None) => return None,
            };
            Some(form([
                ("AccountSid", account),
                ("CallSid", Some(listed.id.as_str())),
                ("RecordingSid", Some(sid)),
                ("RecordingStatus", Some("completed")),
                ("RecordingUrl", Some(url.as_str())),
                ("RecordingDuration", str_of(r, "duration")),
            ]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture;
    use crate::vendors::{Normalized, Recognized};

    fn recognized(vendor: Vendor, body: &Map<String, Value>) -> Recognized {
        match vendor.normalize_body(body, Timestamp::now()).unwrap() {
            Normalized::Events(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn webhook_fixture(vendor: Vendor, name: &str) -> Recognized {
        crate::vendors::test_support::recognized(vendor, &fixture(vendor.as_str(), name))
    }

    fn json_fixture(vendor: &str, name: &str) -> Value {
        serde_json::from_slice(&fixture(vendor, name)).unwrap()
    }

    fn keys(vendor: Vendor, bodies: &[Map<String, Value>]) -> Vec<String> {
        bodies
            .iter()
            .map(|b| recognized(vendor, b).duplicate_key)
            .collect()
    }

    #[test]
    fn a_retell_call_is_its_three_webhooks_under_their_keys() {
        let page = json_fixture("retell", "list-calls-page.json");
        let call = page["items"][0].clone();
        let bodies = retell_bodies(call);
        assert_eq!(
            keys(Vendor::Retell, &bodies),
            ["call_started", "call_ended", "call_analyzed"]
        );
        // The same session and facts as the webhook of the same call.
        let ended = recognized(Vendor::Retell, &bodies[1]);
        let webhook = webhook_fixture(Vendor::Retell, "call-ended.json");
        assert_eq!(ended.session_id, webhook.session_id);
        assert_eq!(ended.duplicate_key, webhook.duplicate_key);
        // A start carries only what is known at the start.
        assert!(bodies[0]["call"].get("call_analysis").is_none());
        assert!(bodies[0]["call"].get("end_timestamp").is_none());
    }

    #[test]
    fn a_retell_call_not_connected_or_not_analysed_has_fewer_webhooks() {
        let page = json_fixture("retell", "list-calls-page.json");
        let mut call = page["items"][0].clone();
        call["call_status"] = json!("not_connected");
        call.as_object_mut().unwrap().remove("call_analysis");
        assert_eq!(keys(Vendor::Retell, &retell_bodies(call)), ["call_ended"]);
    }

    #[test]
    fn a_vapi_call_is_its_start_and_its_report() {
        let calls = json_fixture("vapi", "list-calls-page.json");
        let bodies = vapi_bodies(&calls[0]);
        assert_eq!(
            keys(Vendor::Vapi, &bodies),
            ["status-update:in-progress", "end-of-call-report"]
        );
        let report = recognized(Vendor::Vapi, &bodies[1]);
        assert_eq!(report.session_id, calls[0]["id"].as_str().unwrap());
        let finalized = report.events.last().unwrap();
        assert_eq!(
            finalized.event_type,
            crate::event::EventType::SessionFinalized
        );
        assert!(finalized.session.transcript.is_some(), "from the artifact");
        assert!(finalized.session.ended_at.is_some());
    }

    #[test]
    fn an_elevenlabs_conversation_is_its_transcription_webhook() {
        let webhook = json_fixture("elevenlabs", "post-call-transcription.json");
        let bodies = elevenlabs_bodies(webhook["data"].clone());
        let recovered = recognized(Vendor::ElevenLabs, &bodies[0]);
        let received = webhook_fixture(Vendor::ElevenLabs, "post-call-transcription.json");
        assert_eq!(recovered.duplicate_key, received.duplicate_key);
        assert_eq!(recovered.session_id, received.session_id);
        let facts = |r: &Recognized| {
            r.events
                .iter()
                .map(|d| d.session.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(facts(&recovered), facts(&received));
    }

    #[test]
    fn a_bland_call_object_is_its_immediate_post_call_even_with_a_corrected_transcript() {
        let mut call = json_fixture("bland", "post-call.json");
        call["corrected_transcript"] = json!("Agent: hello");
        let bodies = bland_bodies(call);
        let recovered = recognized(Vendor::Bland, &bodies[0]);
        let received = webhook_fixture(Vendor::Bland, "post-call.json");
        assert_eq!(recovered, received);
    }

    #[test]
    fn a_twilio_call_is_its_status_callback_and_a_child_leg_joins_its_parent() {
        let page = json_fixture("twilio", "list-calls-page.json");
        let mut item = page["calls"][0].clone();
        let listed = Listed {
            id: item["sid"].as_str().unwrap().to_owned(),
            session: item["sid"].as_str().unwrap().to_owned(),
            item: item.clone(),
        };
        let recovered = recognized(Vendor::Twilio, &twilio_status(&listed));
        let received = webhook_fixture(Vendor::Twilio, "status-callback-completed.form");
        assert_eq!(recovered.duplicate_key, received.duplicate_key);
        assert_eq!(recovered.session_id, received.session_id);
        let facts = |r: &Recognized| {
            r.events
                .iter()
                .map(|d| d.session.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(facts(&recovered), facts(&received));

        item["parent_call_sid"] = json!("CAparent");
        let child = Listed {
            id: "CAchild".into(),
            session: "CAparent".into(),
            item,
        };
        let leg = recognized(Vendor::Twilio, &twilio_status(&child));
        assert_eq!(leg.session_id, "CAparent");
        assert_eq!(leg.duplicate_key, "leg:CAchild:completed");
    }

    #[test]
    fn a_twilio_recording_is_its_recording_callback() {
        let listed = Listed {
            id: "CA8e1c5a9d3f7b2e6a0c4d8f2b6e0a4c97".into(),
            session: "CA8e1c5a9d3f7b2e6a0c4d8f2b6e0a4c97".into(),
            item: json!({"account_sid": "AC4f2a6c8e0b1d3f5a7c9e2b4d6f8a0c13"}),
        };
        let answer = json!({"recordings": [
            {"sid": "RE2b7d1f5a9c3e8b0d4f6a2c8e1b5d9f36", "status": "completed", "duration": "84",
             "uri": "/2010-04-01/Accounts/AC4f2a6c8e0b1d3f5a7c9e2b4d6f8a0c13/Recordings/RE2b7d1f5a9c3e8b0d4f6a2c8e1b5d9f36.json"},
            {"sid": "RE-processing", "status": "processing"}
        ]});
        let bodies = twilio_recordings(&answer, &listed, "https://api.twilio.example");
        assert_eq!(bodies.len(), 1, "only completed recordings");
        let recovered = recognized(Vendor::Twilio, &bodies[0]);
        let received = webhook_fixture(Vendor::Twilio, "recording-status-completed.form");
        assert_eq!(recovered.duplicate_key, received.duplicate_key);
        let url = |r: &Recognized| r.events[0].session.recording.clone().unwrap().url;
        assert_eq!(url(&recovered), url(&received));
    }

    #[test]
    fn a_window_holds_both_ends() {
        let w = Window {
            since: 10,
            until: 20,
        };
        assert!(w.holds(10) && w.holds(20) && !w.holds(9) && !w.holds(21));
    }
}
