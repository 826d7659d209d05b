//! ElevenLabs Agents: post-call webhooks, `{"type": …, "event_timestamp": …, "data": {…}}`.
//!
//! ElevenLabs sends nothing while a call runs. `post_call_transcription` (the conversation
//! as `GET /v1/convai/conversations/{id}` returns it) ends and finalizes the session;
//! `call_initiation_failure` does the same for an outbound call that never started;
//! `post_call_audio` carries the whole call as base64 MP3 (`recording.ready`). Other types
//! (`voice_removal_notice`, …) are ignored. No event id: the duplicate key is
//! `(conversation_id, type)`. Times are Unix seconds. Facts:
//! `../shared/vendor-docs/elevenlabs.md`.

use serde_json::{Map, Value};

use super::fields::{Fields, PayloadError};
use super::voice::{self, Ending, Turn};
use super::{Draft, Normalized, Recognized};
use crate::event::{
    Analysis, Channel, Direction, EventType, Platform, Recording, RecordingStatus, Session,
    SessionState, Timestamp, Transcript,
};

pub(super) const RAW_FIELDS: &[(&str, &str)] = &[
    ("session.id", "data.conversation_id"),
    ("session.agentId", "data.agent_id"),
    ("session.customer", "data.metadata.phone_call"),
    ("session.customer", "data.metadata.body"),
    ("session.agentNumber", "data.metadata.phone_call"),
    ("session.agentNumber", "data.metadata.body"),
    (
        "session.variables",
        "data.conversation_initiation_client_data",
    ),
    ("session.extracted", "data.analysis.data_collection_results"),
    (
        "session.analysis.summary",
        "data.analysis.transcript_summary",
    ),
    (
        "session.analysis.summary",
        "data.analysis.call_summary_title",
    ),
    (
        "session.analysis.successful",
        "data.analysis.call_successful",
    ),
    ("session.call", "data.metadata.termination_reason"),
    ("session.call", "data.failure_reason"),
    (
        "session.call.durationSeconds",
        "data.metadata.call_duration_secs",
    ),
    ("session.transcript", "data.transcript"),
    ("session.recording", "data.full_audio"),
];

/// The base64 audio of a `post_call_audio` body (`data.full_audio`), read without copying
/// it where the JSON string has no escapes (base64 needs none).
pub(super) fn audio_in_body(raw: &[u8]) -> Result<std::borrow::Cow<'_, str>, String> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        full_audio: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Envelope<'_>>(raw)
        .map(|e| e.data.full_audio)
        .map_err(|e| format!("no audio in the stored body: {e}"))
}

pub(super) fn normalize(body: &Map<String, Value>) -> Result<Normalized, PayloadError> {
    let f = Fields::root(body);
    let kind = f.id("type")?;
    let events: &[EventType] = match kind {
        "post_call_transcription" | "call_initiation_failure" => &[
            EventType::SessionEnded,
            EventType::CallEnded,
            EventType::SessionFinalized,
        ],
        "post_call_audio" => &[EventType::RecordingReady],
        _ => {
            return Ok(Normalized::Ignored {
                vendor_event_type: Some(kind.to_owned()),
            });
        }
    };
    // Seconds in every example; an older page typed it a string (unconfirmed): a string
    // of digits is read too, so that a change of type does not cost the event.
    let occurred_at = f
        .opt_unix_any("event_timestamp")?
        .ok_or_else(|| PayloadError::Missing("event_timestamp".into()))?;
    let data = f
        .opt_object("data", "data")?
        .ok_or_else(|| PayloadError::Missing("data".into()))?;
    let session_id = data.id("conversation_id")?;
    let mut session = Session {
        id: session_id.to_owned(),
        channel: Some(Channel::Voice),
        agent_id: data.opt_str("agent_id")?.map(str::to_owned),
        ..Session::default()
    };
    match kind {
        "post_call_transcription" => conversation(&data, &mut session)?,
        "call_initiation_failure" => failure(&data, &mut session)?,
        _ => {
            // The audio itself is in the body (`data.full_audio`), not behind a URL.
            data.str("full_audio")?;
            session.recording = Some(Recording {
                status: RecordingStatus::Ready,
                url: None,
                expires_at: None,
                archive: None,
                in_body: true,
            });
        }
    }
    // A conversation without a phone call (the web widget) has no `call.ended`.
    let phone = session.platform == Some(Platform::Phone);
    Ok(Normalized::Events(Recognized::new(
        session_id,
        kind,
        events
            .iter()
            .filter(|&&t| phone || t != EventType::CallEnded)
            .map(|&event_type| Draft::new(event_type, occurred_at, session.clone()))
            .collect(),
    )))
}

/// `post_call_transcription`: the whole conversation.
fn conversation(data: &Fields<'_>, session: &mut Session) -> Result<(), PayloadError> {
    session.state = Some(SessionState::Closed);
    let metadata = data.opt_object("metadata", "data.metadata")?;
    let mut started_at = None;
    if let Some(m) = metadata {
        started_at = m.opt_unix_seconds("start_time_unix_secs")?;
        let duration = m.opt_non_negative("call_duration_secs")?;
        session.started_at = started_at;
        session.ended_at = started_at
            .zip(duration.as_ref().and_then(|d| d.as_f64()))
            .map(|(start, secs)| voice::after(start, secs));
        let reason = m.opt_str("termination_reason")?.filter(|r| !r.is_empty());
        session.call = Some(voice::call(
            reason.map_or(voice::UNKNOWN, termination),
            reason,
            duration,
        ));
        if let Some(p) = m.opt_object("phone_call", "data.metadata.phone_call")? {
            session.platform = Some(Platform::Phone);
            session.direction = match p.opt_str("direction")? {
                Some("inbound") => Some(Direction::Inbound),
                Some("outbound") => Some(Direction::Outbound),
                _ => None,
            };
            session.customer = p
                .opt_str("external_number")?
                .map(|n| crate::event::Customer {
                    phone_number: Some(n.to_owned()),
                });
            session.agent_number = p.opt_str("agent_number")?.map(str::to_owned);
        }
    }
    if let Some(a) = data.opt_object("analysis", "data.analysis")? {
        session.analysis = Some(Analysis {
            summary: a.opt_str("transcript_summary")?.map(str::to_owned),
            intent: None,
            sentiment: None,
            resolution: None,
            successful: match a.opt_str("call_successful")? {
                Some("success") => Some(true),
                Some("failure") => Some(false),
                _ => None,
            },
        });
        if let Some(results) = a.opt_map("data_collection_results")? {
            session.extracted = results
                .iter()
                .map(|(id, r)| (id.clone(), r.get("value").cloned().unwrap_or(Value::Null)))
                .collect();
        }
    }
    if let Some(client) = data.opt_object(
        "conversation_initiation_client_data",
        "data.conversation_initiation_client_data",
    )? && let Some(vars) = client.opt_map("dynamic_variables")?
    {
        session.variables = vars
            .iter()
            .filter(|(k, _)| !k.starts_with("system__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    session.transcript = transcript(data, started_at)?;
    Ok(())
}

/// `call_initiation_failure`: an outbound call that never started.
fn failure(data: &Fields<'_>, session: &mut Session) -> Result<(), PayloadError> {
    session.state = Some(SessionState::Closed);
    session.platform = Some(Platform::Phone);
    session.direction = Some(Direction::Outbound);
    let reason = data.opt_str("failure_reason")?;
    let ending = match reason {
        Some("busy") => voice::BUSY,
        Some("no-answer") => voice::NO_ANSWER,
        // `unknown`: the call could not be placed.
        _ => voice::FAILED,
    };
    session.call = Some(voice::call(ending, reason, None));
    // The telephony provider's own report: Twilio's status parameters or the SIP result.
    if let Some(m) = data.opt_object("metadata", "data.metadata")?
        && let Some(b) = m.opt_object("body", "data.metadata.body")?
    {
        let (from, to) = match m.opt_str("type")? {
            Some("twilio") => (b.opt_str("From")?, b.opt_str("To")?),
            _ => (b.opt_str("from_number")?, b.opt_str("to_number")?),
        };
        (session.customer, session.agent_number) =
            voice::parties(Some(Direction::Outbound), from, to);
    }
    Ok(())
}

/// `transcript`: turns with `time_in_call_secs` from the call's start.
fn transcript(
    data: &Fields<'_>,
    started_at: Option<Timestamp>,
) -> Result<Option<Transcript>, PayloadError> {
    voice::transcript_of(data.opt_array("transcript")?, "data.transcript", |t| {
        let Some(role) = t.opt_str("role")?.and_then(voice::role) else {
            return Ok(None);
        };
        let offset = t.opt_non_negative("time_in_call_secs")?;
        Ok(Some(Turn {
            id: None,
            role,
            content: t.opt_str("message")?.unwrap_or_default().to_owned(),
            at: started_at
                .zip(offset.and_then(|o| o.as_f64()))
                .map(|(start, s)| voice::after(start, s)),
            tool_call: t
                .opt_array("tool_calls")?
                .filter(|calls| !calls.is_empty())
                .map(|calls| Value::Array(calls.clone())),
        }))
    })
}

/// `metadata.termination_reason` is free text (the vendor note lists no values). These are
/// the phrases ElevenLabs is seen to write (unconfirmed: none is documented); anything else
/// is `unknown`, with the text kept in `call.vendorStatus`.
fn termination(reason: &str) -> Ending {
    let r = reason.to_ascii_lowercase();
    if r.contains("remote party") || r.starts_with("client disconnected") {
        voice::USER_HUNG_UP
    } else if r.contains("end_call tool") {
        voice::AGENT_HUNG_UP
    } else if r.contains("transfer") {
        voice::TRANSFERRED
    } else if r.contains("voicemail") {
        voice::VOICEMAIL
    } else if r.contains("max duration")
        || r.contains("maximum duration")
        || r.contains("timed out")
        || r.contains("timeout")
        || r.contains("silence")
    {
        voice::TIMED_OUT
    } else if r.contains("error") || r.contains("failed") {
        voice::FAILED
    } else {
        voice::UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{CallOutcome, Party, Role};
    use crate::vendors::Vendor;
    use crate::vendors::test_support::{fixture, normalize, recognized};

    #[test]
    fn termination_reasons_and_failure_reasons_have_outcomes() {
        use CallOutcome::*;
        let table: &[(&str, CallOutcome, Option<Party>)] = &[
            ("Call ended by remote party", Completed, Some(Party::User)),
            ("Client disconnected: 1000", Completed, Some(Party::User)),
            ("end_call tool was called.", Completed, Some(Party::Agent)),
            (
                "transfer_to_number tool was called.",
                Transferred,
                Some(Party::Agent),
            ),
            ("Voicemail detected", Voicemail, None),
            ("Max duration exceeded", Completed, None),
            ("Conversation timed out due to silence", Completed, None),
            ("LLM error", Failed, None),
            ("something else", Unknown, None),
        ];
        for &(reason, outcome, by) in table {
            assert_eq!(termination(reason), (outcome, by), "{reason}");
        }
        for (reason, outcome) in [("busy", Busy), ("no-answer", NoAnswer), ("unknown", Failed)] {
            let body = json!({"type": "call_initiation_failure", "event_timestamp": 1778600741,
                "data": {"conversation_id": "c", "failure_reason": reason}});
            let r = recognized(Vendor::ElevenLabs, &serde_json::to_vec(&body).unwrap());
            assert_eq!(
                r.events[0].session.call.as_ref().unwrap().outcome,
                outcome,
                "{reason}"
            );
        }
    }

    #[test]
    fn a_transcription_ends_and_finalizes_the_conversation() {
        let r = recognized(
            Vendor::ElevenLabs,
            &fixture("elevenlabs", "post-call-transcription.json"),
        );
        assert_eq!(r.session_id, "conv_01jx8m3q5v7w9y1z3b5d7f9h2k");
        let types: Vec<_> = r.events.iter().map(|d| d.event_type).collect();
        assert_eq!(
            types,
            [
                EventType::SessionEnded,
                EventType::CallEnded,
                EventType::SessionFinalized
            ]
        );
        let d = &r.events[2];
        assert_eq!(d.occurred_at.to_string(), "2026-05-12T16:01:16.000Z");
        let s = &d.session;
        assert_eq!(
            s.started_at.unwrap().to_string(),
            "2026-05-12T16:00:05.000Z"
        );
        assert_eq!(s.ended_at.unwrap().to_string(), "2026-05-12T16:01:08.000Z");
        assert_eq!(
            (s.platform, s.direction),
            (Some(Platform::Phone), Some(Direction::Outbound))
        );
        assert_eq!(
            s.customer.as_ref().unwrap().phone_number.as_deref(),
            Some("+14155550168")
        );
        assert_eq!(s.agent_number.as_deref(), Some("+14155550123"));
        let call = s.call.as_ref().unwrap();
        assert_eq!(
            (call.outcome, call.ended_by),
            (CallOutcome::Completed, Some(Party::User))
        );
        assert_eq!(call.duration_seconds.as_ref().unwrap().as_u64(), Some(63));
        let a = s.analysis.as_ref().unwrap();
        assert_eq!(a.successful, Some(true));
        assert_eq!(
            Value::Object(s.extracted.clone()),
            json!({"keep_coverage": true, "send_documents_by_email": true})
        );
        assert_eq!(s.variables.get("customer_name"), Some(&json!("Daniel")));
        assert!(s.variables.keys().all(|k| !k.starts_with("system__")));
        assert_eq!(s.cost, None, "credits are not money");
        let t = s.transcript.as_ref().unwrap();
        assert_eq!(t.messages[0].role, Role::Assistant);
        assert_eq!(
            t.messages[1].at.unwrap().to_string(),
            "2026-05-12T16:00:13.000Z"
        );
    }

    #[test]
    fn an_initiation_failure_ends_an_outbound_call_that_never_started() {
        let r = recognized(
            Vendor::ElevenLabs,
            &fixture("elevenlabs", "call-initiation-failure.json"),
        );
        assert_eq!(r.events.len(), 3);
        let s = &r.events[0].session;
        let call = s.call.as_ref().unwrap();
        assert_eq!(call.outcome, CallOutcome::NoAnswer);
        assert_eq!(call.vendor_status.as_deref(), Some("no-answer"));
        assert_eq!(
            s.customer.as_ref().unwrap().phone_number.as_deref(),
            Some("+14155550168")
        );
        assert_eq!(s.agent_number.as_deref(), Some("+14155550123"));
    }

    #[test]
    fn audio_is_a_recording_and_other_types_are_ignored() {
        let r = recognized(
            Vendor::ElevenLabs,
            &fixture("elevenlabs", "post-call-audio.json"),
        );
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].event_type, EventType::RecordingReady);
        assert!(r.events[0].session.recording.as_ref().unwrap().in_body);
        let body = json!({"type": "voice_removal_notice", "event_timestamp": 1, "data": {}});
        assert!(matches!(
            normalize(Vendor::ElevenLabs, &serde_json::to_vec(&body).unwrap()),
            Ok(Normalized::Ignored { .. })
        ));
        for (body, error) in [
            (
                json!({"type": "post_call_audio", "event_timestamp": 1, "data": {"conversation_id": "c"}}),
                "missing required field `data.full_audio`",
            ),
            (
                json!({"type": "post_call_transcription", "data": {}}),
                "missing required field `event_timestamp`",
            ),
            (
                json!({"type": "post_call_transcription", "event_timestamp": 1, "data": {}}),
                "missing required field `data.conversation_id`",
            ),
        ] {
            let e = normalize(Vendor::ElevenLabs, &serde_json::to_vec(&body).unwrap()).unwrap_err();
            assert_eq!(e.to_string(), error);
        }
    }
}
