//! Bland AI: two post-call POSTs per call, each the call object as JSON.
//!
//! The immediate one, when the call ends, carries the call, its transcript, summary and
//! extraction: it ends the session. The delayed one, 30–60 s later, carries
//! `corrected_transcript` and `citations`: it finalizes the session, its transcript
//! replacing the first. Bland sends no event type and no event id: the duplicate key is
//! `(call_id, "post-call")` or `(call_id, "post-call-delayed")`, told apart by
//! `corrected_transcript`. Facts: `../shared/vendor-docs/bland.md`.

use serde_json::{Map, Number, Value};

use super::fields::{Fields, PayloadError};
use super::voice::{self, Ending, Turn};
use super::{Draft, Normalized, Recognized};
use crate::event::{
    Analysis, Channel, Cost, Direction, EventType, Platform, Recording, RecordingStatus, Role,
    Session, SessionState, Timestamp, Transcript,
};

pub(super) const RAW_FIELDS: &[(&str, &str)] = &[
    ("session.id", "call_id"),
    ("session.id", "c_id"),
    ("session.customer", "to"),
    ("session.customer", "from"),
    ("session.agentNumber", "to"),
    ("session.agentNumber", "from"),
    ("session.variables", "metadata"),
    ("session.variables", "variables"),
    ("session.variables", "request_data"),
    ("session.extracted", "analysis"),
    ("session.extracted", "citations"),
    ("session.analysis.summary", "summary"),
    ("session.call", "call_ended_by"),
    ("session.call", "answered_by"),
    ("session.call", "error_message"),
    ("session.call.durationSeconds", "corrected_duration"),
    ("session.call.durationSeconds", "call_length"),
    ("session.cost", "price"),
    ("session.transcript", "transcripts"),
    ("session.transcript", "concatenated_transcript"),
    ("session.transcript", "corrected_transcript"),
    ("session.recording.url", "recording_url"),
];

pub(super) fn normalize(
    body: &Map<String, Value>,
    received_at: Timestamp,
) -> Result<Normalized, PayloadError> {
    let f = Fields::root(body);
    let session_id = f.id("call_id")?;
    if f.has("corrected_transcript") {
        return delayed(&f, session_id, received_at);
    }
    let started_at = f.opt_timestamp("started_at")?;
    let duration = duration(&f)?;
    // `end_at` is when `max_duration` would have cut the call, not its end: the end is the
    // start plus the duration.
    let ended_at = started_at
        .zip(duration.as_ref().and_then(Number::as_f64))
        .map(|(start, secs)| voice::after(start, secs));
    let occurred_at = match ended_at.or(started_at) {
        Some(t) => t,
        None => f.timestamp("created_at")?,
    };
    let direction = match f.opt_bool("inbound")? {
        Some(true) => Some(Direction::Inbound),
        Some(false) => Some(Direction::Outbound),
        None => None,
    };
    let (customer, agent_number) = voice::parties(direction, f.opt_str("from")?, f.opt_str("to")?);
    let (ending, reason) = ending(&f)?;
    let session = Session {
        id: session_id.to_owned(),
        channel: Some(Channel::Voice),
        platform: Some(Platform::Phone),
        direction,
        state: Some(SessionState::Closed),
        started_at,
        ended_at,
        customer,
        agent_number,
        variables: f.opt_map("metadata")?.cloned().unwrap_or_default(),
        extracted: f.opt_map("analysis")?.cloned().unwrap_or_default(),
        call: Some(voice::call(ending, reason, duration)),
        analysis: f.opt_str("summary")?.map(|summary| Analysis {
            summary: Some(summary.to_owned()),
            intent: None,
            sentiment: None,
            resolution: None,
            successful: None,
        }),
        cost: f.opt_non_negative("price")?.map(|amount| Cost {
            amount,
            currency: "USD".into(),
        }),
        recording: f.opt_str("recording_url")?.map(|url| Recording {
            status: RecordingStatus::Ready,
            url: Some(url.to_owned()),
            // Its lifetime is not documented (unconfirmed): archived at once all the same.
            expires_at: None,
            archive: None,
            in_body: false,
        }),
        transcript: transcripts(&f)?,
        ..Session::default()
    };
    Ok(Normalized::Events(Recognized::new(
        session_id,
        "post-call",
        [EventType::SessionEnded, EventType::CallEnded]
            .into_iter()
            .map(|t| Draft::new(t, occurred_at, session.clone()))
            .collect(),
    )))
}

/// The delayed post-call: the corrected transcript. It states no time (which other fields
/// it repeats is unconfirmed; none is relied on), so it counts from its receipt, after the
/// immediate one: its transcript is the later, and replaces the first.
fn delayed(
    f: &Fields<'_>,
    session_id: &str,
    received_at: Timestamp,
) -> Result<Normalized, PayloadError> {
    let corrected = f
        .opt_object("corrected_transcript", "corrected_transcript")?
        .ok_or_else(|| PayloadError::WrongType {
            field: "corrected_transcript".into(),
            expected: "an object",
        })?;
    let session = Session {
        id: session_id.to_owned(),
        channel: Some(Channel::Voice),
        state: Some(SessionState::Closed),
        transcript: segments(&corrected)?,
        ..Session::default()
    };
    Ok(Normalized::Events(Recognized {
        waits_for_end: true,
        ..Recognized::new(
            session_id,
            "post-call-delayed",
            vec![Draft::new(
                EventType::SessionFinalized,
                received_at,
                session,
            )],
        )
    }))
}

/// `corrected_duration` (seconds, as a string) where given, else `call_length` (minutes).
fn duration(f: &Fields<'_>) -> Result<Option<Number>, PayloadError> {
    let seconds = match f.opt_str("corrected_duration") {
        Ok(Some(s)) => s.trim().parse::<f64>().ok(),
        Ok(None) => None,
        // A number is read as it is.
        Err(_) => f
            .opt_non_negative("corrected_duration")?
            .and_then(|n| n.as_f64()),
    };
    let seconds = match seconds {
        Some(s) => Some(s),
        None => f
            .opt_non_negative("call_length")?
            .and_then(|m| m.as_f64())
            .map(|minutes| minutes * 60.0),
    };
    Ok(seconds
        .filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(Number::from_f64))
}

/// How the call ended, from what Bland reports: an error, voicemail, a transfer, or who
/// hung up (`call_ended_by`, whose casing differs between Bland's pages: normalised).
fn ending<'a>(f: &Fields<'a>) -> Result<(Ending, Option<&'a str>), PayloadError> {
    if let Some(error) = f.opt_str("error_message")? {
        return Ok((voice::FAILED, Some(error)));
    }
    if f.opt_str("answered_by")? == Some("voicemail") {
        return Ok((voice::VOICEMAIL, Some("voicemail")));
    }
    if f.has("transferred_to") {
        return Ok((voice::TRANSFERRED, f.opt_str("call_ended_by")?));
    }
    let by = f.opt_str("call_ended_by")?;
    let ending = match by.map(str::to_ascii_lowercase).as_deref() {
        Some("user") => voice::USER_HUNG_UP,
        Some("assistant" | "agent") => voice::AGENT_HUNG_UP,
        // The platform ended it: a timeout or the maximum duration.
        Some("system") => voice::TIMED_OUT,
        _ => match f.opt_str("status")? {
            Some("busy") => return Ok((voice::BUSY, Some("busy"))),
            Some("no-answer" | "no_answer") => return Ok((voice::NO_ANSWER, Some("no-answer"))),
            Some("failed") => return Ok((voice::FAILED, Some("failed"))),
            _ => voice::UNKNOWN,
        },
    };
    Ok((ending, by))
}

/// Bland's speakers: `robot` is the agent, `agent-action` a tool step.
fn role(speaker: &str) -> Option<Role> {
    match speaker {
        "robot" => Some(Role::Assistant),
        "agent-action" => Some(Role::Tool),
        other => voice::role(other),
    }
}

/// `transcripts[]`: `{id, created_at, text, user}`, times absolute.
fn transcripts(f: &Fields<'_>) -> Result<Option<Transcript>, PayloadError> {
    voice::transcript_of(f.opt_array("transcripts")?, "transcripts", |t| {
        let Some(role) = t.opt_str("user")?.and_then(role) else {
            return Ok(None);
        };
        let id = match t.opt_value("id") {
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(Some(Turn {
            id,
            role,
            content: t.opt_str("text")?.unwrap_or_default().to_owned(),
            at: t.opt_timestamp("created_at")?,
            tool_call: None,
        }))
    })
}

/// `corrected_transcript.segments[]`: `{speaker, text, start, end}`, seconds into the call;
/// the payload gives no start to add them to, so `at` is null.
fn segments(corrected: &Fields<'_>) -> Result<Option<Transcript>, PayloadError> {
    let turns = corrected.opt_array("segments")?;
    voice::transcript_of(turns, "corrected_transcript.segments", |t| {
        let Some(role) = t.opt_str("speaker")?.and_then(role) else {
            return Ok(None);
        };
        Ok(Some(Turn {
            id: None,
            role,
            content: t.opt_str("text")?.unwrap_or_default().to_owned(),
            at: None,
            tool_call: None,
        }))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{CallOutcome, Party};
    use crate::vendors::Vendor;
    use crate::vendors::test_support::{fixture, normalize, received, recognized};

    const CALL: &str = "7c3e9a51-2d8b-4f60-9e14-b5a2c7d0f389";

    fn with(extra: Value) -> Vec<u8> {
        let mut body: Value = serde_json::from_slice(&fixture("bland", "post-call.json")).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::to_vec(&body).unwrap()
    }

    #[test]
    fn every_way_a_call_ends_has_an_outcome() {
        use CallOutcome::*;
        let table: &[(Value, CallOutcome, Option<Party>, Option<&str>)] = &[
            (
                json!({"call_ended_by": "USER"}),
                Completed,
                Some(Party::User),
                Some("USER"),
            ),
            (
                json!({"call_ended_by": "user"}),
                Completed,
                Some(Party::User),
                Some("user"),
            ),
            (
                json!({"call_ended_by": "ASSISTANT"}),
                Completed,
                Some(Party::Agent),
                Some("ASSISTANT"),
            ),
            (
                json!({"call_ended_by": "agent"}),
                Completed,
                Some(Party::Agent),
                Some("agent"),
            ),
            (
                json!({"call_ended_by": "SYSTEM"}),
                Completed,
                None,
                Some("SYSTEM"),
            ),
            (
                json!({"answered_by": "voicemail", "call_ended_by": "ASSISTANT"}),
                Voicemail,
                None,
                Some("voicemail"),
            ),
            (
                json!({"transferred_to": "+14155550100", "call_ended_by": "ASSISTANT"}),
                Transferred,
                Some(Party::Agent),
                Some("ASSISTANT"),
            ),
            (
                json!({"error_message": "Dial failed", "call_ended_by": null}),
                Failed,
                None,
                Some("Dial failed"),
            ),
            (
                json!({"call_ended_by": null, "status": "busy"}),
                Busy,
                None,
                Some("busy"),
            ),
            (
                json!({"call_ended_by": null, "status": "no-answer"}),
                NoAnswer,
                None,
                Some("no-answer"),
            ),
            (
                json!({"call_ended_by": null, "status": "completed"}),
                Unknown,
                None,
                None,
            ),
        ];
        for (extra, outcome, by, status) in table {
            let r = recognized(Vendor::Bland, &with(extra.clone()));
            let call = r.events[0].session.call.clone().unwrap();
            assert_eq!((call.outcome, call.ended_by), (*outcome, *by), "{extra}");
            assert_eq!(call.vendor_status.as_deref(), *status, "{extra}");
        }
    }

    #[test]
    fn the_immediate_post_call_ends_the_session_and_the_call() {
        let r = recognized(Vendor::Bland, &fixture("bland", "post-call.json"));
        assert_eq!(
            (r.session_id.as_str(), r.duplicate_key.as_str()),
            (CALL, "post-call")
        );
        let types: Vec<_> = r.events.iter().map(|d| d.event_type).collect();
        assert_eq!(types, [EventType::SessionEnded, EventType::CallEnded]);
        let d = &r.events[0];
        // Started 17:10:09 and lasted 27 s: end_at (17:40:09) is the cut-off, not the end.
        assert_eq!(d.occurred_at.to_string(), "2026-05-12T17:10:36.000Z");
        let s = &d.session;
        assert_eq!(s.ended_at, Some(d.occurred_at));
        assert_eq!(s.direction, Some(Direction::Outbound));
        assert_eq!(
            s.customer.as_ref().unwrap().phone_number.as_deref(),
            Some("+14155550153")
        );
        assert_eq!(s.agent_number.as_deref(), Some("+14155550123"));
        let call = s.call.as_ref().unwrap();
        assert_eq!(
            (call.outcome, call.ended_by),
            (CallOutcome::Completed, Some(Party::User))
        );
        assert_eq!(call.duration_seconds.as_ref().unwrap().as_f64(), Some(27.0));
        assert_eq!(s.cost.as_ref().unwrap().amount.as_f64(), Some(0.041));
        assert_eq!(s.extracted["visit_window"], "Thursday 09:00-12:00");
        assert_eq!(s.variables["ticket_id"], "MR-55120");
        assert!(
            s.analysis
                .as_ref()
                .unwrap()
                .summary
                .as_deref()
                .unwrap()
                .starts_with("Jordan")
        );
        let t = s.transcript.as_ref().unwrap();
        assert_eq!(t.messages[0].id, "918273640");
        assert_eq!(t.messages[0].role, Role::Assistant);
        assert_eq!(
            t.messages[1].at.unwrap().to_string(),
            "2026-05-12T17:10:17.602Z"
        );
        assert!(s.recording.as_ref().unwrap().url.is_some());
    }

    #[test]
    fn call_length_in_minutes_stands_in_for_a_missing_corrected_duration() {
        let r = recognized(Vendor::Bland, &with(json!({"corrected_duration": null})));
        let call = r.events[0].session.call.clone().unwrap();
        assert_eq!(call.duration_seconds.unwrap().as_f64(), Some(27.0));
    }

    #[test]
    fn the_delayed_post_call_finalizes_with_the_corrected_transcript() {
        let r = recognized(Vendor::Bland, &fixture("bland", "post-call-delayed.json"));
        assert_eq!(r.duplicate_key, "post-call-delayed");
        assert_eq!(r.events.len(), 1);
        let d = &r.events[0];
        assert_eq!(d.event_type, EventType::SessionFinalized);
        assert_eq!(
            d.occurred_at,
            received(),
            "no time in the payload: its receipt"
        );
        let t = d.session.transcript.as_ref().unwrap();
        assert_eq!(t.messages.len(), 5);
        assert_eq!(t.messages[1].content, "Yes, this is Taylor.");
        assert_eq!(t.messages[1].role, Role::User);
    }

    #[test]
    fn bad_payloads_are_named() {
        for (body, error) in [
            (
                json!({"corrected_transcript": {}}),
                "missing required field `call_id`",
            ),
            (
                json!({"call_id": "c"}),
                "missing required field `created_at`",
            ),
            (
                json!({"call_id": "c", "corrected_transcript": "text"}),
                "field `corrected_transcript` must be an object",
            ),
            (
                json!({"call_id": "c", "created_at": "2026-05-12T17:10:02Z", "transcripts": [1]}),
                "field `transcripts.0` must be an object",
            ),
        ] {
            let e = normalize(Vendor::Bland, &serde_json::to_vec(&body).unwrap()).unwrap_err();
            assert_eq!(e.to_string(), error, "{body}");
        }
    }
}
