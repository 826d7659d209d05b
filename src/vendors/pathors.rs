//! Pathors: `postSessionWebhook` events, a union on the top-level `event` field.
//!
//! Pathors signs nothing and never retries (authentication is a custom header, handled by
//! [`crate::auth`]). The mapping fills the canonical schema
//! (`schema/session-event.v3.json`) from Pathors fields.

use serde_json::{Map, Value};

use super::fields::{Fields, PayloadError};
use super::{Draft, Normalized, Recognized};
use crate::event::{
    Call, CallOutcome, Channel, EventType, Party, Recording, RecordingStatus, Session, SessionState,
};

/// How long a Pathors recording URL stays valid after the event (vendor docs: ~15 minutes).
const RECORDING_URL_LIFETIME_SECONDS: i64 = 15 * 60;

/// Which field of the payload each canonical field is read from (canonical path, payload
/// path): a target that redacts the canonical field also redacts the payload's in `raw`.
pub(super) const RAW_FIELDS: &[(&str, &str)] = &[
    ("session.id", "sessionId"),
    ("session.projectId", "projectId"),
    ("session.messageCount", "messagesCount"),
    ("session.currentNodeId", "currentNodeId"),
    ("session.extracted", "extractedVariables"),
    ("session.call.vendorStatus", "callStatus"),
    ("session.call.outcome", "callStatus"),
    ("session.call.endedBy", "callStatus"),
    ("session.call.durationSeconds", "callDuration"),
    ("session.recording.url", "recordingUrl"),
];

pub(super) fn normalize(body: &Map<String, Value>) -> Result<Normalized, PayloadError> {
    let f = Fields::root(body);
    let vendor_event_type = match (f.opt_id("event")?, f.opt_id("reason")?) {
        (Some(event), _) => event.to_owned(),
        // `reason` is the deprecated alias of `event`, spelled with an underscore.
        (None, Some(reason)) => reason.replacen('_', ".", 1),
        (None, None) => return Err(PayloadError::Missing("event".into())),
    };
    let event_type = match vendor_event_type.as_str() {
        "session.ended" => EventType::SessionEnded,
        "call.ended" => EventType::CallEnded,
        "recording.ready" => EventType::RecordingReady,
        "session.finalized" => EventType::SessionFinalized,
        _ => {
            return Ok(Normalized::Ignored {
                vendor_event_type: Some(vendor_event_type),
            });
        }
    };
    let session_id = f.id("sessionId")?;
    let timestamp = f.timestamp("timestamp")?;

    let call = read_call(&f)?;
    let channel = if call.is_some()
        || matches!(event_type, EventType::CallEnded | EventType::RecordingReady)
    {
        Some(Channel::Voice)
    } else if event_type == EventType::SessionFinalized {
        // Text sessions are told apart by the call fields being omitted entirely.
        Some(Channel::Chat)
    } else {
        None
    };
    let state = match event_type {
        EventType::RecordingReady => None,
        _ => Some(SessionState::Closed),
    };
    let recording = match event_type {
        EventType::RecordingReady => Some(read_recording(&f, timestamp)?),
        _ => None,
    };

    let session = Session {
        id: session_id.to_owned(),
        channel,
        state,
        project_id: f.opt_str("projectId")?.map(str::to_owned),
        ended_at: (event_type == EventType::SessionEnded).then_some(timestamp),
        message_count: f.opt_count("messagesCount")?,
        current_node_id: f.opt_str("currentNodeId")?.map(str::to_owned),
        extracted: f
            .opt_map("extractedVariables")?
            .cloned()
            .unwrap_or_default(),
        call,
        recording,
        ..Session::default()
    };
    Ok(Normalized::Events(Recognized::new(
        session_id,
        &vendor_event_type,
        vec![Draft::new(event_type, timestamp, session)],
    )))
}

fn read_call(f: &Fields<'_>) -> Result<Option<Call>, PayloadError> {
    let status = f.opt_str("callStatus")?;
    let duration = f.opt_non_negative("callDuration")?;
    if status.is_none() && duration.is_none() {
        return Ok(None);
    }
    let (outcome, ended_by) = status.map_or((CallOutcome::Unknown, None), call_outcome);
    Ok(Some(Call {
        outcome,
        ended_by,
        vendor_status: status.map(str::to_owned),
        duration_seconds: duration,
    }))
}

/// The canonical `call` block: Pathors `callStatus` to outcome and who ended the call.
pub(crate) fn call_outcome(status: &str) -> (CallOutcome, Option<Party>) {
    use CallOutcome::*;
    match status {
        "userHangup" => (Completed, Some(Party::User)),
        "agentHangup" => (Completed, Some(Party::Agent)),
        "Ended" => (Completed, None),
        "transferred" => (Transferred, Some(Party::Agent)),
        "errorTransferred" => (Failed, None),
        "voicemail" => (Voicemail, None),
        "busy" => (Busy, None),
        "userNoAnswer" => (NoAnswer, None),
        "agentNoAnswer" => (NoAnswer, Some(Party::Agent)),
        "userRejected" => (Rejected, Some(Party::User)),
        "invalidNumber" | "sipTrunkFailure" | "error" => (Failed, None),
        _ => (Unknown, None),
    }
}

fn read_recording(
    f: &Fields<'_>,
    timestamp: crate::event::Timestamp,
) -> Result<Recording, PayloadError> {
    let url = f.opt_str("recordingUrl")?;
    // `success` is documented on every recording.ready; if a sender ever leaves it out, the
    // presence of the URL says the same thing, and the event is not lost over it.
    let success = f.opt_bool("success")?.unwrap_or(url.is_some());
    Ok(match (success, url) {
        (true, Some(url)) => Recording {
            status: RecordingStatus::Ready,
            url: Some(url.to_owned()),
            expires_at: Some(timestamp.plus_seconds(RECORDING_URL_LIFETIME_SECONDS)),
            archive: None,
            in_body: false,
        },
        _ => Recording {
            status: RecordingStatus::Failed,
            url: None,
            expires_at: None,
            archive: None,
            in_body: false,
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::Timestamp;
    use crate::vendors::Vendor;
    use crate::vendors::test_support::{fixture, normalize, recognized};

    fn only_event(name: &str) -> (Recognized, Draft) {
        let r = recognized(Vendor::Pathors, &fixture("pathors", name));
        assert_eq!(r.events.len(), 1, "{name} maps to one canonical event");
        let d = r.events[0].clone();
        (r, d)
    }

    fn ts(s: &str) -> Option<Timestamp> {
        Some(Timestamp::parse(s).unwrap())
    }

    #[test]
    fn session_ended_fixture() {
        let (r, d) = only_event("session-ended.json");
        assert_eq!(r.session_id, "2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04");
        assert_eq!(r.vendor_event_type, "session.ended");
        assert_eq!(d.event_type, EventType::SessionEnded);
        assert_eq!(Some(d.occurred_at), ts("2026-05-03T08:42:11.512Z"));
        let s = d.session;
        assert_eq!(
            s.channel, None,
            "session.ended alone does not say voice or chat"
        );
        assert_eq!(s.state, Some(SessionState::Closed));
        assert_eq!(s.ended_at, ts("2026-05-03T08:42:11.512Z"));
        assert_eq!(s.message_count, Some(8));
        assert_eq!(s.current_node_id.as_deref(), Some("ask_intention"));
        assert_eq!(
            Value::Object(s.extracted),
            json!({"name": "Nancy", "intention": "book a demo"})
        );
        assert_eq!(s.call, None);
        assert_eq!(s.recording, None);
        assert_eq!(s.project_id, None);
        assert!(s.variables.is_empty());
        assert_eq!(s.customer, None);
        assert_eq!(s.analysis, None);
    }

    #[test]
    fn call_ended_fixture() {
        let (_, d) = only_event("call-ended.json");
        assert_eq!(d.event_type, EventType::CallEnded);
        let s = d.session;
        assert_eq!(s.channel, Some(Channel::Voice));
        assert_eq!(
            s.project_id.as_deref(),
            Some("8f3e2c91-4a7b-4d6e-a23c-9b1f5e8d4c20")
        );
        assert_eq!(s.ended_at, None, "endedAt comes from session.ended only");
        assert_eq!(
            s.call,
            Some(Call {
                outcome: CallOutcome::Completed,
                ended_by: Some(Party::User),
                vendor_status: Some("userHangup".into()),
                duration_seconds: Some(78.into()),
            })
        );
    }

    #[test]
    fn finalized_call_fixture_is_voice_with_call() {
        let (_, d) = only_event("session-finalized-call.json");
        assert_eq!(d.event_type, EventType::SessionFinalized);
        let s = d.session;
        assert_eq!(s.channel, Some(Channel::Voice));
        assert_eq!(s.state, Some(SessionState::Closed));
        assert_eq!(s.message_count, Some(8));
        assert_eq!(s.call.unwrap().outcome, CallOutcome::Completed);
    }

    #[test]
    fn finalized_text_fixture_is_chat_without_call() {
        let (r, d) = only_event("session-finalized-text.json");
        assert_eq!(r.session_id, "5d8e1f2a-9c4b-4e7d-b3a8-6f9c2d5e8a01");
        let s = d.session;
        assert_eq!(s.channel, Some(Channel::Chat));
        assert_eq!(s.call, None);
        assert_eq!(s.message_count, Some(10));
        assert_eq!(s.current_node_id.as_deref(), Some("start"));
    }

    #[test]
    fn recording_ready_fixture_expires_after_fifteen_minutes() {
        let (_, d) = only_event("recording-ready.json");
        assert_eq!(d.event_type, EventType::RecordingReady);
        assert_eq!(d.session.channel, Some(Channel::Voice));
        assert_eq!(d.session.state, None);
        assert_eq!(
            d.session.recording,
            Some(Recording {
                status: RecordingStatus::Ready,
                url: Some(
                    "https://recordings.example.invalid/2c4f9a13.wav?token=short-lived".into()
                ),
                expires_at: ts("2026-05-03T08:58:02.117Z"),
                archive: None,
                in_body: false,
            })
        );
    }

    #[test]
    fn recording_failed_fixture() {
        let (_, d) = only_event("recording-failed.json");
        assert_eq!(
            d.session.recording,
            Some(Recording {
                status: RecordingStatus::Failed,
                url: None,
                expires_at: None,
                archive: None,
                in_body: false,
            })
        );
    }

    #[test]
    fn call_outcome_table() {
        use CallOutcome::*;
        let table = [
            ("userHangup", Completed, Some(Party::User)),
            ("agentHangup", Completed, Some(Party::Agent)),
            ("Ended", Completed, None),
            ("transferred", Transferred, Some(Party::Agent)),
            ("errorTransferred", Failed, None),
            ("voicemail", Voicemail, None),
            ("busy", Busy, None),
            ("userNoAnswer", NoAnswer, None),
            ("agentNoAnswer", NoAnswer, Some(Party::Agent)),
            ("userRejected", Rejected, Some(Party::User)),
            ("invalidNumber", Failed, None),
            ("sipTrunkFailure", Failed, None),
            ("error", Failed, None),
            ("unknown", Unknown, None),
            ("somethingNew", Unknown, None),
            ("ended", Unknown, None),
        ];
        for (status, outcome, ended_by) in table {
            assert_eq!(call_outcome(status), (outcome, ended_by), "{status}");
        }
    }

    #[test]
    fn unknown_event_types_are_ignored_even_without_other_fields() {
        let n = normalize(Vendor::Pathors, br#"{"event": "transcript.ready"}"#).unwrap();
        assert_eq!(
            n,
            Normalized::Ignored {
                vendor_event_type: Some("transcript.ready".into())
            }
        );
    }

    #[test]
    fn deprecated_reason_stands_in_for_event() {
        let body =
            br#"{"reason":"session_ended","sessionId":"s","timestamp":"2026-05-03T08:42:11Z"}"#;
        let r = recognized(Vendor::Pathors, body);
        assert_eq!(r.vendor_event_type, "session.ended");
        assert_eq!(r.events[0].event_type, EventType::SessionEnded);
    }

    #[test]
    fn required_fields_are_named() {
        let cases: [(&[u8], &str); 7] = [
            (br#"{"sessionId":"s","timestamp":"2026-05-03T08:42:11Z"}"#, "`event`"),
            (br#"{"event":"call.ended","timestamp":"2026-05-03T08:42:11Z"}"#, "`sessionId`"),
            (br#"{"event":"call.ended","sessionId":"s"}"#, "`timestamp`"),
            (br#"{"event":"call.ended","sessionId":"s","timestamp":"soon"}"#, "`timestamp`"),
            (
                br#"{"event":"session.ended","sessionId":"s","timestamp":"2026-05-03T08:42:11Z","messagesCount":"8"}"#,
                "`messagesCount`",
            ),
            (br#"{"event":"call.ended","sessionId":"","timestamp":"2026-05-03T08:42:11Z"}"#, "`sessionId`"),
            (br#"{"event":"call.ended","sessionId":"s","timestamp":"2026-05-03T08:42:11Z","callDuration":-1}"#, "`callDuration`"),
        ];
        for (body, field) in cases {
            let err = normalize(Vendor::Pathors, body).unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }
}
