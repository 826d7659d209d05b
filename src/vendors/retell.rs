//! Retell AI: `{"event": …, "call": {…}}` with the call object of `GET /v2/get-call`.
//!
//! `call_started` opens the session (never sent for calls that did not connect),
//! `call_ended` ends it, `call_analyzed` (the call object with `call_analysis`) is the
//! completing event. Every other event (`transcript_updated`, `transfer_*`) is ignored.
//! Retell sends no event id: the duplicate key is `(call_id, event)`. Times are Unix
//! milliseconds. Facts: `../shared/vendor-docs/retell.md`.

use serde_json::{Map, Number, Value};

use super::fields::{Fields, PayloadError};
use super::voice::{self, Ending, Turn};
use super::{Draft, Normalized, Recognized};
use crate::event::{
    Analysis, Channel, Cost, Direction, EventType, Platform, Recording, RecordingStatus, Sentiment,
    SentimentLabel, Session, SessionState, Timestamp,
};

/// Which field of the payload each canonical field is read from (canonical path, payload
/// path): a target that redacts the canonical field also redacts the payload's in `raw`.
pub(super) const RAW_FIELDS: &[(&str, &str)] = &[
    ("session.id", "call.call_id"),
    ("session.agentId", "call.agent_id"),
    ("session.direction", "call.direction"),
    ("session.customer.phoneNumber", "call.from_number"),
    ("session.customer.phoneNumber", "call.to_number"),
    ("session.agentNumber", "call.from_number"),
    ("session.agentNumber", "call.to_number"),
    ("session.variables", "call.metadata"),
    ("session.variables", "call.retell_llm_dynamic_variables"),
    (
        "session.extracted",
        "call.call_analysis.custom_analysis_data",
    ),
    (
        "session.analysis.summary",
        "call.call_analysis.call_summary",
    ),
    (
        "session.analysis.sentiment",
        "call.call_analysis.user_sentiment",
    ),
    (
        "session.analysis.successful",
        "call.call_analysis.call_successful",
    ),
    ("session.call.vendorStatus", "call.disconnection_reason"),
    ("session.call.outcome", "call.disconnection_reason"),
    ("session.call.endedBy", "call.disconnection_reason"),
    ("session.call.durationSeconds", "call.duration_ms"),
    ("session.cost", "call.call_cost"),
    ("session.transcript", "call.transcript"),
    ("session.transcript", "call.transcript_object"),
    ("session.transcript", "call.transcript_with_tool_calls"),
    (
        "session.transcript",
        "call.scrubbed_transcript_with_tool_calls",
    ),
    ("session.recording.url", "call.recording_url"),
    ("session.recording.url", "call.recording_multi_channel_url"),
    ("session.recording.url", "call.scrubbed_recording_url"),
    (
        "session.recording.url",
        "call.scrubbed_recording_multi_channel_url",
    ),
];

/// How long a recording URL lives when the agent does not store everything (vendor docs:
/// 10 minutes after the webhook) and when URLs are signed (24 hours after generation).
/// Counted from the call's end, which is before either webhook: an earlier deadline is safe.
const RESTRICTED_URL_SECONDS: i64 = 10 * 60;
const SIGNED_URL_SECONDS: i64 = 24 * 60 * 60;

pub(super) fn normalize(body: &Map<String, Value>) -> Result<Normalized, PayloadError> {
    let f = Fields::root(body);
    let event = f.id("event")?;
    let call = f
        .opt_object("call", "call")?
        .ok_or_else(|| PayloadError::Missing("call".into()))?;
    let phone = call.opt_str("call_type")? == Some("phone_call");
    let events: &[EventType] = match event {
        "call_started" => &[EventType::SessionStarted],
        "call_ended" if phone => &[EventType::SessionEnded, EventType::CallEnded],
        "call_ended" => &[EventType::SessionEnded],
        "call_analyzed" => &[EventType::SessionFinalized],
        _ => {
            return Ok(Normalized::Ignored {
                vendor_event_type: Some(event.to_owned()),
            });
        }
    };
    let session_id = call.id("call_id")?;
    let started_at = call.opt_unix_millis("start_timestamp")?;
    let ended_at = call.opt_unix_millis("end_timestamp")?;
    let occurred_at = match event {
        "call_started" => started_at,
        // A call that never connected has no start.
        _ => ended_at.or(started_at),
    }
    .ok_or_else(|| {
        PayloadError::Missing(
            if event == "call_started" {
                "call.start_timestamp"
            } else {
                "call.end_timestamp"
            }
            .into(),
        )
    })?;
    let direction = match call.opt_str("direction")? {
        Some("inbound") => Some(Direction::Inbound),
        Some("outbound") => Some(Direction::Outbound),
        _ => None,
    };
    let (customer, agent_number) = voice::parties(
        direction,
        call.opt_str("from_number")?,
        call.opt_str("to_number")?,
    );
    let reason = call.opt_str("disconnection_reason")?;
    let analysis = call.opt_object("call_analysis", "call.call_analysis")?;
    let session = Session {
        id: session_id.to_owned(),
        channel: Some(Channel::Voice),
        platform: match call.opt_str("call_type")? {
            Some("phone_call") => Some(Platform::Phone),
            Some("web_call") => Some(Platform::Web),
            _ => None,
        },
        direction,
        state: Some(if event == "call_started" {
            SessionState::Open
        } else {
            SessionState::Closed
        }),
        agent_id: call.opt_str("agent_id")?.map(str::to_owned),
        started_at,
        ended_at,
        customer,
        agent_number,
        variables: variables(&call)?,
        extracted: match analysis {
            Some(a) => a
                .opt_map("custom_analysis_data")?
                .cloned()
                .unwrap_or_default(),
            None => Map::new(),
        },
        call: match (event, reason) {
            ("call_started", _) | (_, None) => None,
            (_, Some(reason)) => Some(voice::call(
                ending(reason),
                Some(reason),
                call.opt_non_negative("duration_ms")?
                    .as_ref()
                    .and_then(voice::seconds_from_millis),
            )),
        },
        analysis: analysis.map(|a| read_analysis(&a)).transpose()?,
        cost: cost(&call)?,
        recording: recording(&call, occurred_at)?,
        transcript: transcript(&call, started_at)?,
        ..Session::default()
    };
    Ok(Normalized::Events(Recognized::new(
        session_id,
        event,
        events
            .iter()
            .map(|&event_type| Draft::new(event_type, occurred_at, session.clone()))
            .collect(),
    )))
}

/// `metadata` (any JSON; only an object is a set of variables) with the dynamic variables
/// injected at the start merged over it.
fn variables(call: &Fields<'_>) -> Result<Map<String, Value>, PayloadError> {
    let mut variables = match call.opt_map("metadata") {
        Ok(Some(m)) => m.clone(),
        _ => Map::new(),
    };
    if let Some(dynamic) = call.opt_map("retell_llm_dynamic_variables")? {
        variables.extend(dynamic.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok(variables)
}

fn read_analysis(a: &Fields<'_>) -> Result<Analysis, PayloadError> {
    let label = match a.opt_str("user_sentiment")? {
        Some("Positive") => Some(SentimentLabel::Positive),
        Some("Neutral") => Some(SentimentLabel::Neutral),
        Some("Negative") => Some(SentimentLabel::Negative),
        // `Unknown`, or a value Retell adds later.
        _ => None,
    };
    Ok(Analysis {
        summary: a.opt_str("call_summary")?.map(str::to_owned),
        intent: None,
        sentiment: label.map(|label| Sentiment {
            label: Some(label),
            score: None,
            language: None,
        }),
        resolution: None,
        successful: a.opt_bool("call_successful")?,
    })
}

/// `call_cost.combined_cost` is in US cents.
fn cost(call: &Fields<'_>) -> Result<Option<Cost>, PayloadError> {
    let Some(c) = call.opt_object("call_cost", "call.call_cost")? else {
        return Ok(None);
    };
    Ok(c.opt_non_negative("combined_cost")?
        .and_then(|cents| Number::from_f64(cents.as_f64()? / 100.0))
        .map(|amount| Cost {
            amount,
            currency: "USD".into(),
        }))
}

fn recording(call: &Fields<'_>, at: Timestamp) -> Result<Option<Recording>, PayloadError> {
    let Some(url) = call.opt_str("recording_url")? else {
        return Ok(None);
    };
    let restricted = call
        .opt_str("data_storage_setting")?
        .is_some_and(|s| s != "everything");
    let expires_at = if restricted {
        Some(at.plus_seconds(RESTRICTED_URL_SECONDS))
    } else if call.opt_bool("opt_in_signed_url")? == Some(true) {
        Some(at.plus_seconds(SIGNED_URL_SECONDS))
    } else {
        // Unsigned URLs do not expire by default.
        None
    };
    Ok(Some(Recording {
        status: RecordingStatus::Ready,
        url: Some(url.to_owned()),
        expires_at,
        archive: None,
        in_body: false,
    }))
}

/// `transcript_object`: utterances whose words carry seconds from the call's start.
fn transcript(
    call: &Fields<'_>,
    started_at: Option<Timestamp>,
) -> Result<Option<crate::event::Transcript>, PayloadError> {
    let turns = call.opt_array("transcript_object")?;
    voice::transcript_of(turns, "call.transcript_object", |t| {
        let Some(role) = t.opt_str("role")?.and_then(voice::role) else {
            return Ok(None);
        };
        let offset = t
            .opt_array("words")?
            .and_then(|w| w.first())
            .and_then(|w| w.get("start"))
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0);
        Ok(Some(Turn {
            id: None,
            role,
            content: t.opt_str("content")?.unwrap_or_default().to_owned(),
            at: started_at
                .zip(offset)
                .map(|(start, s)| voice::after(start, s)),
            tool_call: None,
        }))
    })
}

/// Every `disconnection_reason` Retell's SDK lists (`call.ts`), as the contract's outcome.
fn ending(reason: &str) -> Ending {
    match reason {
        "user_hangup" => voice::USER_HUNG_UP,
        "agent_hangup" => voice::AGENT_HUNG_UP,
        "call_transfer" | "transfer_bridged" => voice::TRANSFERRED,
        "voicemail_reached" => voice::VOICEMAIL,
        "inactivity" | "max_duration_reached" => voice::TIMED_OUT,
        "dial_busy" => voice::BUSY,
        "dial_no_answer" => voice::NO_ANSWER,
        "user_declined" => voice::DECLINED,
        "dial_failed"
        | "invalid_destination"
        | "telephony_provider_permission_denied"
        | "telephony_provider_unavailable"
        | "sip_routing_error"
        | "marked_as_spam"
        | "concurrency_limit_reached"
        | "no_valid_payment"
        | "scam_detected"
        | "registered_call_timeout" => voice::FAILED,
        r if r.starts_with("error_") => voice::FAILED,
        // `ivr_reached`, `transfer_cancelled`, `manual_stopped`, and values added later.
        _ => voice::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{CallOutcome, Party, Role};
    use crate::vendors::Vendor;
    use crate::vendors::test_support::{fixture, normalize, recognized};

    const CALL: &str = "call_3f9d2a61c84b4e07b1d5e9a7c20f4b18";

    #[test]
    fn every_documented_disconnection_reason_has_an_outcome() {
        use CallOutcome::*;
        let table: &[(&str, CallOutcome, Option<Party>)] = &[
            ("user_hangup", Completed, Some(Party::User)),
            ("agent_hangup", Completed, Some(Party::Agent)),
            ("call_transfer", Transferred, Some(Party::Agent)),
            ("transfer_bridged", Transferred, Some(Party::Agent)),
            ("transfer_cancelled", Unknown, None),
            ("voicemail_reached", Voicemail, None),
            ("ivr_reached", Unknown, None),
            ("inactivity", Completed, None),
            ("max_duration_reached", Completed, None),
            ("dial_busy", Busy, None),
            ("dial_failed", Failed, None),
            ("dial_no_answer", NoAnswer, None),
            ("invalid_destination", Failed, None),
            ("user_declined", Rejected, Some(Party::User)),
            ("error_llm_websocket_open", Failed, None),
            ("error_asr", Failed, None),
            ("error_unknown", Failed, None),
            ("manual_stopped", Unknown, None),
            ("concurrency_limit_reached", Failed, None),
            ("a_reason_added_later", Unknown, None),
        ];
        for &(reason, outcome, by) in table {
            assert_eq!(ending(reason), (outcome, by), "{reason}");
        }
    }

    #[test]
    fn call_started_opens_the_session() {
        let r = recognized(Vendor::Retell, &fixture("retell", "call-started.json"));
        assert_eq!(
            (r.session_id.as_str(), r.duplicate_key.as_str()),
            (CALL, "call_started")
        );
        let d = &r.events[0];
        assert_eq!(d.event_type, EventType::SessionStarted);
        assert_eq!(d.occurred_at.to_string(), "2026-05-12T14:03:07.412Z");
        let s = &d.session;
        assert_eq!(s.state, Some(SessionState::Open));
        assert_eq!(s.direction, Some(Direction::Outbound));
        assert_eq!(s.platform, Some(Platform::Phone));
        assert_eq!(
            s.customer.as_ref().unwrap().phone_number.as_deref(),
            Some("+14155550187")
        );
        assert_eq!(s.agent_number.as_deref(), Some("+14155550123"));
        assert_eq!(
            Value::Object(s.variables.clone()),
            json!({"crm_contact_id": "CRM-7728", "campaign_id": "spring-redelivery",
                   "customer_name": "Alex Morgan", "order_id": "ORD-40917"})
        );
        assert_eq!(s.call, None);
    }

    #[test]
    fn call_ended_ends_the_session_and_the_call_with_the_transcript() {
        let r = recognized(Vendor::Retell, &fixture("retell", "call-ended.json"));
        let types: Vec<_> = r.events.iter().map(|d| d.event_type).collect();
        assert_eq!(types, [EventType::SessionEnded, EventType::CallEnded]);
        let s = &r.events[0].session;
        assert_eq!(
            r.events[0].occurred_at.to_string(),
            "2026-05-12T14:04:21.938Z"
        );
        assert_eq!(s.state, Some(SessionState::Closed));
        let call = s.call.as_ref().unwrap();
        assert_eq!(
            (call.outcome, call.ended_by),
            (CallOutcome::Completed, Some(Party::User))
        );
        assert_eq!(call.vendor_status.as_deref(), Some("user_hangup"));
        assert_eq!(
            call.duration_seconds.as_ref().unwrap().as_f64(),
            Some(74.526)
        );
        let t = s.transcript.as_ref().unwrap();
        assert_eq!(t.messages.len(), 6);
        assert_eq!(t.messages[0].role, Role::Assistant);
        assert_eq!(t.messages[1].role, Role::User);
        assert_eq!(t.messages[1].id, "1");
        // The call started at 14:03:07.412; the first word at 0.42 s.
        assert_eq!(
            t.messages[0].at.unwrap().to_string(),
            "2026-05-12T14:03:07.832Z"
        );
        assert!(s.analysis.is_none());
    }

    #[test]
    fn call_analyzed_finalizes_with_the_analysis_cost_and_recording() {
        let r = recognized(Vendor::Retell, &fixture("retell", "call-analyzed.json"));
        assert_eq!(r.events.len(), 1);
        let d = &r.events[0];
        assert_eq!(d.event_type, EventType::SessionFinalized);
        let s = &d.session;
        let a = s.analysis.as_ref().unwrap();
        assert_eq!(a.successful, Some(true));
        assert_eq!(
            a.sentiment.as_ref().unwrap().label,
            Some(SentimentLabel::Positive)
        );
        assert!(
            a.summary
                .as_deref()
                .unwrap()
                .starts_with("Agent rescheduled")
        );
        assert_eq!(s.extracted["preferred_day"], "Wednesday");
        let cost = s.cost.as_ref().unwrap();
        assert_eq!(
            (cost.amount.as_f64(), cost.currency.as_str()),
            (Some(0.175), "USD")
        );
        let rec = s.recording.as_ref().unwrap();
        assert!(
            rec.url
                .as_deref()
                .unwrap()
                .starts_with("https://recordings.example.com/retell/")
        );
        assert_eq!(
            rec.expires_at, None,
            "storage `everything`, unsigned: no expiry"
        );
    }

    #[test]
    fn a_restricted_or_signed_recording_expires() {
        let mut body: Value =
            serde_json::from_slice(&fixture("retell", "call-analyzed.json")).unwrap();
        body["call"]["data_storage_setting"] = json!("basic_attributes_only");
        let r = recognized(Vendor::Retell, &serde_json::to_vec(&body).unwrap());
        let end = r.events[0].occurred_at;
        let rec = r.events[0].session.recording.clone().unwrap();
        assert_eq!(rec.expires_at, Some(end.plus_seconds(600)));
        body["call"]["data_storage_setting"] = json!("everything");
        body["call"]["opt_in_signed_url"] = json!(true);
        let r = recognized(Vendor::Retell, &serde_json::to_vec(&body).unwrap());
        let rec = r.events[0].session.recording.clone().unwrap();
        assert_eq!(rec.expires_at, Some(end.plus_seconds(86_400)));
    }

    #[test]
    fn other_events_are_ignored_and_bad_calls_are_named() {
        let body = json!({"event": "transcript_updated", "call": {"call_id": "c"}});
        assert!(matches!(
            normalize(Vendor::Retell, &serde_json::to_vec(&body).unwrap()),
            Ok(Normalized::Ignored { vendor_event_type: Some(t) }) if t == "transcript_updated"
        ));
        for (body, error) in [
            (
                json!({"event": "call_ended"}),
                "missing required field `call`",
            ),
            (
                json!({"event": "call_ended", "call": {"call_id": "c"}}),
                "missing required field `call.end_timestamp`",
            ),
            (
                json!({"event": "call_ended", "call": {"end_timestamp": 1}}),
                "missing required field `call.call_id`",
            ),
            (
                json!({"event": "call_ended", "call": {"call_id": "c", "end_timestamp": "x"}}),
                "field `call.end_timestamp` must be a Unix time in milliseconds",
            ),
        ] {
            let e = normalize(Vendor::Retell, &serde_json::to_vec(&body).unwrap()).unwrap_err();
            assert_eq!(e.to_string(), error);
        }
    }
}
