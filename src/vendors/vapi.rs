//! Vapi: server messages, `{"message": {"type": …, "call": {…}, …}}`.
//!
//! `status-update` `in-progress` opens the session and `ended` ends it; the
//! `end-of-call-report`, sent once post-processing is done, finalizes it. Vapi retries
//! nothing by default, so the report also stands in for the `ended` status update it may
//! have missed (its `session.ended` and `call.ended` are stored under that message's
//! duplicate key, once whichever arrives). Other messages (`conversation-update`,
//! `tool-calls`, …) are ignored. Vapi sends no message id: the duplicate key is
//! `(call.id, type, status)`. Facts: `../shared/vendor-docs/vapi.md`.

use serde_json::{Map, Number, Value};

use super::fields::{Fields, PayloadError};
use super::voice::{self, Ending, Turn};
use super::{Draft, Normalized, Recognized};
use crate::event::{
    Analysis, Channel, Cost, Customer, Direction, EventType, Platform, Recording, RecordingStatus,
    Session, SessionState, Timestamp, Transcript,
};

pub(super) const RAW_FIELDS: &[(&str, &str)] = &[
    ("session.id", "message.call.id"),
    ("session.agentId", "message.call.assistantId"),
    ("session.customer", "message.customer"),
    ("session.customer", "message.call.customer"),
    ("session.agentNumber", "message.phoneNumber"),
    ("session.variables", "message.call.metadata"),
    ("session.extracted", "message.analysis.structuredData"),
    ("session.analysis.summary", "message.analysis.summary"),
    (
        "session.analysis.successful",
        "message.analysis.successEvaluation",
    ),
    ("session.call", "message.endedReason"),
    ("session.call", "message.call.endedReason"),
    ("session.cost", "message.cost"),
    ("session.cost", "message.costs"),
    ("session.cost", "message.call.cost"),
    ("session.transcript", "message.artifact.messages"),
    (
        "session.transcript",
        "message.artifact.messagesOpenAIFormatted",
    ),
    ("session.transcript", "message.artifact.transcript"),
    ("session.recording", "message.artifact.recording"),
    ("session.recording", "message.artifact.recordingUrl"),
    ("session.recording", "message.artifact.stereoRecordingUrl"),
    ("session.recording", "message.artifact.presignedMonoUrl"),
    ("session.recording", "message.artifact.presignedStereoUrl"),
];

/// The duplicate key of the `ended` status update, which the report stands in for.
const ENDED: &str = "status-update:ended";

pub(super) fn normalize(body: &Map<String, Value>) -> Result<Normalized, PayloadError> {
    let root = Fields::root(body);
    let m = root
        .opt_object("message", "message")?
        .ok_or_else(|| PayloadError::Missing("message".into()))?;
    let kind = m.id("type")?;
    let status = m.opt_id("status")?;
    let duplicate_key = match (kind, status) {
        ("status-update", Some(s @ ("in-progress" | "ended"))) => format!("{kind}:{s}"),
        ("end-of-call-report", _) => kind.to_owned(),
        _ => {
            return Ok(Normalized::Ignored {
                vendor_event_type: Some(kind.to_owned()),
            });
        }
    };
    let call = m
        .opt_object("call", "message.call")?
        .ok_or_else(|| PayloadError::Missing("message.call".into()))?;
    let session_id = call.id("id")?;
    // "number" in Vapi's spec; milliseconds in its examples (unconfirmed): read by magnitude.
    let occurred_at = match m.opt_unix_any("timestamp")? {
        Some(t) => t,
        None => call.timestamp("updatedAt")?,
    };
    let (platform, direction) = match call.opt_str("type")? {
        Some("inboundPhoneCall") => (Some(Platform::Phone), Some(Direction::Inbound)),
        Some("outboundPhoneCall") => (Some(Platform::Phone), Some(Direction::Outbound)),
        Some("webCall" | "vapi.websocketCall") => (Some(Platform::Web), None),
        _ => (None, None),
    };
    let opening = duplicate_key == "status-update:in-progress";
    let customer_number = match m.opt_object("customer", "message.customer")? {
        Some(c) => c.opt_str("number")?,
        None => match call.opt_object("customer", "message.call.customer")? {
            Some(c) => c.opt_str("number")?,
            None => None,
        },
    };
    let agent_number = match m.opt_object("phoneNumber", "message.phoneNumber")? {
        Some(p) => p.opt_str("number")?,
        None => None,
    };
    let started_at = match m.opt_timestamp("startedAt")? {
        Some(t) => Some(t),
        None => call.opt_timestamp("startedAt")?,
    };
    let ended_at = match m.opt_timestamp("endedAt")? {
        Some(t) => Some(t),
        None => call.opt_timestamp("endedAt")?,
    };
    let reason = match m.opt_str("endedReason")? {
        Some(r) => Some(r),
        None => call.opt_str("endedReason")?,
    };
    let analysis = m.opt_object("analysis", "message.analysis")?;
    let artifact = m.opt_object("artifact", "message.artifact")?;
    let session = Session {
        id: session_id.to_owned(),
        channel: Some(Channel::Voice),
        platform,
        direction,
        state: Some(if opening {
            SessionState::Open
        } else {
            SessionState::Closed
        }),
        agent_id: call.opt_str("assistantId")?.map(str::to_owned),
        started_at,
        ended_at: ended_at.filter(|_| !opening),
        customer: customer_number.map(|n| Customer {
            phone_number: Some(n.to_owned()),
        }),
        agent_number: agent_number.map(str::to_owned),
        variables: call.opt_map("metadata")?.cloned().unwrap_or_default(),
        extracted: match analysis {
            Some(a) => a.opt_map("structuredData")?.cloned().unwrap_or_default(),
            None => Map::new(),
        },
        call: match reason.filter(|_| !opening) {
            Some(reason) => Some(voice::call(
                ending(reason),
                Some(reason),
                duration(&m, started_at, ended_at)?,
            )),
            None => None,
        },
        analysis: match analysis {
            Some(a) => Some(Analysis {
                summary: a.opt_str("summary")?.map(str::to_owned),
                intent: None,
                sentiment: None,
                resolution: None,
                successful: success(a.opt_value("successEvaluation")),
            }),
            None => None,
        },
        cost: match m.opt_non_negative("cost")? {
            Some(amount) => Some(amount),
            None => call.opt_non_negative("cost")?,
        }
        .map(|amount| Cost {
            amount,
            currency: "USD".into(),
        }),
        recording: match artifact {
            Some(a) => recording(&a)?,
            None => None,
        },
        transcript: match artifact {
            Some(a) => transcript(&a)?,
            None => None,
        },
        ..Session::default()
    };
    let phone = platform == Some(Platform::Phone);
    let draft = |event_type| Draft::new(event_type, occurred_at, session.clone());
    let events = match duplicate_key.as_str() {
        "status-update:in-progress" => vec![draft(EventType::SessionStarted)],
        ENDED => {
            let mut events = vec![draft(EventType::SessionEnded)];
            if phone {
                events.push(draft(EventType::CallEnded));
            }
            events
        }
        _ => {
            let implied = |event_type| Draft {
                implied_by: Some(ENDED.to_owned()),
                ..draft(event_type)
            };
            let mut events = vec![implied(EventType::SessionEnded)];
            if phone {
                events.push(implied(EventType::CallEnded));
            }
            events.push(draft(EventType::SessionFinalized));
            events
        }
    };
    Ok(Normalized::Events(Recognized {
        session_id: session_id.to_owned(),
        vendor_event_type: kind.to_owned(),
        duplicate_key,
        events,
        waits_for_end: false,
    }))
}

/// The report's `durationSeconds` where it states one, else its end less its start.
fn duration(
    m: &Fields<'_>,
    started_at: Option<Timestamp>,
    ended_at: Option<Timestamp>,
) -> Result<Option<Number>, PayloadError> {
    if let Some(seconds) = m.opt_non_negative("durationSeconds")? {
        return Ok(Some(seconds));
    }
    Ok(started_at
        .zip(ended_at)
        .map(|(s, e)| e.unix_millis() - s.unix_millis())
        .filter(|ms| *ms >= 0)
        .and_then(|ms| Number::from_f64(ms as f64 / 1000.0)))
}

/// `successEvaluation` is whatever the rubric produced: only a boolean, or a string that
/// reads as one, is a verdict.
fn success(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// The presigned mono link (downloadable without credentials until
/// `presignedUrlsExpiresAt`) where the report carries one; else the stored recording's
/// URL, which Vapi serves only with its API key, so an archive of it may fail (`http_401`).
fn recording(a: &Fields<'_>) -> Result<Option<Recording>, PayloadError> {
    let expires_at = a.opt_timestamp("presignedUrlsExpiresAt")?;
    let presigned = a.opt_str("presignedMonoUrl")?;
    let stored = match a.opt_object("recording", "message.artifact.recording")? {
        Some(r) => match r.opt_object("mono", "message.artifact.recording.mono")? {
            Some(mono) => mono.opt_str("combinedUrl")?,
            None => None,
        },
        None => None,
    };
    let (url, expires_at) = match (presigned, stored.or(a.opt_str("recordingUrl")?)) {
        (Some(url), _) => (url, expires_at),
        (None, Some(url)) => (url, None),
        (None, None) => return Ok(None),
    };
    Ok(Some(Recording {
        status: RecordingStatus::Ready,
        url: Some(url.to_owned()),
        expires_at,
        archive: None,
        in_body: false,
    }))
}

/// `artifact.messages`: turns with `time` in Unix milliseconds. A tool call turn carries
/// `toolCalls` instead of a message.
fn transcript(a: &Fields<'_>) -> Result<Option<Transcript>, PayloadError> {
    voice::transcript_of(a.opt_array("messages")?, "message.artifact.messages", |t| {
        let Some(role) = t.opt_str("role")?.and_then(voice::role) else {
            return Ok(None);
        };
        Ok(Some(Turn {
            id: None,
            role,
            content: t.opt_str("message")?.unwrap_or_default().to_owned(),
            at: t.opt_unix_any("time")?,
            tool_call: t.opt_value("toolCalls").cloned(),
        }))
    })
}

/// Vapi's `endedReason` (627 values in its spec) by the families the vendor note lists.
fn ending(reason: &str) -> Ending {
    match reason {
        "customer-ended-call" => voice::USER_HUNG_UP,
        "assistant-ended-call"
        | "assistant-said-end-call-phrase"
        | "assistant-ended-call-after-message-spoken"
        | "assistant-ended-call-with-hangup-task" => voice::AGENT_HUNG_UP,
        "assistant-forwarded-call" => voice::TRANSFERRED,
        "voicemail" => voice::VOICEMAIL,
        "customer-busy" => voice::BUSY,
        "customer-did-not-answer" => voice::NO_ANSWER,
        "silence-timed-out" | "exceeded-max-duration" => voice::TIMED_OUT,
        r if r.starts_with("call.in-progress.error")
            || r.starts_with("pipeline-error")
            || r.starts_with("call.start.error")
            || r.contains("failed-to-connect")
            || r.contains("-error-") =>
        {
            voice::FAILED
        }
        // `manually-canceled`, and everything else.
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

    const CALL: &str = "6e0b2f3c-1a4d-4b7e-9f21-8c5d3a7e0b94";

    #[test]
    fn every_ended_reason_the_vendor_note_lists_has_an_outcome() {
        use CallOutcome::*;
        let table: &[(&str, CallOutcome, Option<Party>)] = &[
            ("customer-ended-call", Completed, Some(Party::User)),
            ("assistant-ended-call", Completed, Some(Party::Agent)),
            (
                "assistant-said-end-call-phrase",
                Completed,
                Some(Party::Agent),
            ),
            ("customer-busy", Busy, None),
            ("customer-did-not-answer", NoAnswer, None),
            ("silence-timed-out", Completed, None),
            ("exceeded-max-duration", Completed, None),
            ("voicemail", Voicemail, None),
            ("assistant-forwarded-call", Transferred, Some(Party::Agent)),
            ("manually-canceled", Unknown, None),
            ("twilio-failed-to-connect-call", Failed, None),
            (
                "call.in-progress.error-vapifault-openai-llm-failed",
                Failed,
                None,
            ),
            ("pipeline-error-openai-llm-failed", Failed, None),
            ("a-reason-added-later", Unknown, None),
        ];
        for &(reason, outcome, by) in table {
            assert_eq!(ending(reason), (outcome, by), "{reason}");
        }
    }

    #[test]
    fn status_updates_open_and_end_the_session() {
        let r = recognized(
            Vendor::Vapi,
            &fixture("vapi", "status-update-in-progress.json"),
        );
        assert_eq!(r.session_id, CALL);
        assert_eq!(r.vendor_event_type, "status-update");
        assert_eq!(r.duplicate_key, "status-update:in-progress");
        assert_eq!(r.events[0].event_type, EventType::SessionStarted);
        assert_eq!(
            r.events[0].occurred_at.to_string(),
            "2026-05-12T15:20:03.540Z"
        );
        let s = &r.events[0].session;
        assert_eq!(
            (s.platform, s.direction),
            (Some(Platform::Phone), Some(Direction::Outbound))
        );
        assert_eq!(
            s.customer.as_ref().unwrap().phone_number.as_deref(),
            Some("+14155550142")
        );
        assert_eq!(s.state, Some(SessionState::Open));

        let r = recognized(Vendor::Vapi, &fixture("vapi", "status-update-ended.json"));
        assert_eq!(r.duplicate_key, ENDED);
        let types: Vec<_> = r.events.iter().map(|d| d.event_type).collect();
        assert_eq!(types, [EventType::SessionEnded, EventType::CallEnded]);
        assert!(r.events.iter().all(|d| d.implied_by.is_none()));
        let call = r.events[0].session.call.clone().unwrap();
        assert_eq!(
            (call.outcome, call.ended_by),
            (CallOutcome::Completed, Some(Party::User))
        );
        assert_eq!(call.duration_seconds.unwrap().as_f64(), Some(88.362));
    }

    #[test]
    fn the_report_finalizes_and_stands_in_for_a_missed_ended_update() {
        let r = recognized(Vendor::Vapi, &fixture("vapi", "end-of-call-report.json"));
        assert_eq!(r.duplicate_key, "end-of-call-report");
        let kinds: Vec<_> = r
            .events
            .iter()
            .map(|d| (d.event_type, d.implied_by.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                (EventType::SessionEnded, Some(ENDED)),
                (EventType::CallEnded, Some(ENDED)),
                (EventType::SessionFinalized, None)
            ]
        );
        let s = &r.events[2].session;
        let a = s.analysis.as_ref().unwrap();
        assert_eq!(a.successful, Some(true), "\"true\" reads as a verdict");
        assert_eq!(s.extracted["newTime"], "14:30");
        assert_eq!(s.cost.as_ref().unwrap().amount.as_f64(), Some(0.1259));
        let rec = s.recording.as_ref().unwrap();
        assert_eq!(
            rec.expires_at.unwrap().to_string(),
            "2026-05-12T16:21:39.880Z"
        );
        assert!(
            rec.url
                .as_deref()
                .unwrap()
                .contains("storage.example.com/vapi/")
        );
        let t = s.transcript.as_ref().unwrap();
        assert_eq!(t.messages[0].role, Role::System);
        assert_eq!(
            t.messages[1].role,
            Role::Assistant,
            "`bot` is the assistant"
        );
        assert_eq!(
            t.messages[1].at.unwrap().to_string(),
            "2026-05-12T15:20:04.740Z"
        );
    }

    #[test]
    fn verdicts_are_read_only_from_booleans() {
        for (value, verdict) in [
            (json!(true), Some(true)),
            (json!("false"), Some(false)),
            (json!("TRUE"), Some(true)),
            (json!("8/10"), None),
            (json!(7), None),
        ] {
            assert_eq!(success(Some(&value)), verdict, "{value}");
        }
    }

    #[test]
    fn other_messages_are_ignored_and_bad_ones_named() {
        for body in [
            json!({"message": {"type": "conversation-update", "call": {"id": "c"}}}),
            json!({"message": {"type": "status-update", "status": "ringing", "call": {"id": "c"}}}),
        ] {
            assert!(matches!(
                normalize(Vendor::Vapi, &serde_json::to_vec(&body).unwrap()),
                Ok(Normalized::Ignored { .. })
            ));
        }
        for (body, error) in [
            (
                json!({"type": "status-update"}),
                "missing required field `message`",
            ),
            (
                json!({"message": {"type": "end-of-call-report"}}),
                "missing required field `message.call`",
            ),
            (
                json!({"message": {"type": "end-of-call-report", "timestamp": 1, "call": {}}}),
                "missing required field `message.call.id`",
            ),
            (
                json!({"message": {"type": "end-of-call-report", "call": {"id": "c"}}}),
                "missing required field `message.call.updatedAt`",
            ),
        ] {
            let e = normalize(Vendor::Vapi, &serde_json::to_vec(&body).unwrap()).unwrap_err();
            assert_eq!(e.to_string(), error);
        }
    }
}
