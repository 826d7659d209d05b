//! Twilio Voice: status callbacks and recording status callbacks, form-encoded.
//!
//! The parameters arrive as `application/x-www-form-urlencoded` (all strings) and are read
//! (and kept as `raw`) as one JSON object of strings. A call's `initiated`, `ringing` and
//! `in-progress` open its session (the first of them: they share one duplicate key, so the
//! later ones are answered as duplicates); its terminal status (`completed`, `busy`,
//! `no-answer`, `failed`, `canceled`) ends it. A child leg (`ParentCallSid`) joins its
//! parent's session: its end is a `call.ended` of that session under a key of its own,
//! carrying none of the leg's facts, so the parent's stay as they are. A recording callback
//! is `recording.ready` for the call recorded (always the parent leg): the recording is
//! `RecordingUrl` + `.wav`, fetched with the source's `recordings_auth`. Callbacks arrive in
//! any order; the merge's lifecycle rank keeps an end from being undone by a late start.
//! Facts: `../shared/vendor-docs/twilio.md`.

use serde_json::{Map, Number, Value};

use super::fields::{Fields, PayloadError};
use super::voice::{self, Ending};
use super::{Draft, Normalized, Recognized};
use crate::event::{
    Channel, Direction, EventType, Platform, Recording, RecordingStatus, Session, SessionState,
    Timestamp,
};

pub(super) const RAW_FIELDS: &[(&str, &str)] = &[
    ("session.id", "CallSid"),
    ("session.id", "ParentCallSid"),
    ("session.customer", "From"),
    ("session.customer", "To"),
    ("session.customer", "Caller"),
    ("session.customer", "Called"),
    ("session.agentNumber", "From"),
    ("session.agentNumber", "To"),
    ("session.agentNumber", "Caller"),
    ("session.agentNumber", "Called"),
    ("session.call", "CallStatus"),
    ("session.call", "CallDuration"),
    ("session.recording", "RecordingUrl"),
];

/// The parameters of a form-encoded body as a JSON object of strings (a repeated name
/// keeps its last value; Twilio's voice callbacks repeat none).
pub(super) fn parse_form(body: &[u8]) -> Map<String, Value> {
    form_urlencoded::parse(body)
        .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
        .collect()
}

pub(super) fn normalize(
    body: &Map<String, Value>,
    received_at: Timestamp,
) -> Result<Normalized, PayloadError> {
    let f = Fields::root(body);
    if let Some(status) = f.opt_id("RecordingStatus")? {
        return recording(&f, status, received_at);
    }
    let status = f.id("CallStatus")?;
    let call_sid = f.id("CallSid")?;
    let parent = f.opt_id("ParentCallSid")?;
    let occurred_at = match f.opt_str("Timestamp")? {
        Some(t) => chrono::DateTime::parse_from_rfc2822(t)
            .map(|t| Timestamp::from_unix_millis(t.timestamp_millis()))
            .map_err(|_| PayloadError::WrongType {
                field: "Timestamp".into(),
                expected: "an RFC 2822 date",
            })?,
        // Only call-progress events carry one; the default completed callback too.
        None => received_at,
    };
    let terminal = matches!(
        status,
        "completed" | "busy" | "no-answer" | "failed" | "canceled"
    );
    let opening = matches!(status, "queued" | "initiated" | "ringing" | "in-progress");
    if !terminal && !opening {
        return Ok(Normalized::Ignored {
            vendor_event_type: Some(status.to_owned()),
        });
    }
    if let Some(parent) = parent {
        // A child leg: its end joins the parent's session, its start is not the session's.
        if !terminal {
            return Ok(Normalized::Ignored {
                vendor_event_type: Some(status.to_owned()),
            });
        }
        let session = Session {
            id: parent.to_owned(),
            channel: Some(Channel::Voice),
            ..Session::default()
        };
        return Ok(Normalized::Events(Recognized {
            duplicate_key: format!("leg:{call_sid}:{status}"),
            ..Recognized::new(
                parent,
                status,
                vec![Draft::new(EventType::CallEnded, occurred_at, session)],
            )
        }));
    }
    let direction = match f.opt_str("Direction")? {
        Some("inbound") => Some(Direction::Inbound),
        Some(d) if d.starts_with("outbound") => Some(Direction::Outbound),
        _ => None,
    };
    let (customer, agent_number) = voice::parties(direction, f.opt_str("From")?, f.opt_str("To")?);
    let duration = f
        .opt_str("CallDuration")?
        .and_then(|d| d.parse::<u64>().ok())
        .map(Number::from);
    let session = Session {
        id: call_sid.to_owned(),
        channel: Some(Channel::Voice),
        platform: Some(Platform::Phone),
        direction,
        state: Some(if terminal {
            SessionState::Closed
        } else {
            SessionState::Open
        }),
        started_at: (status == "in-progress").then_some(occurred_at),
        ended_at: terminal.then_some(occurred_at),
        customer,
        agent_number,
        call: terminal.then(|| {
            voice::call(
                ending(status, f.opt_str("AnsweredBy").ok().flatten()),
                Some(status),
                duration,
            )
        }),
        ..Session::default()
    };
    let (key, events) = if terminal {
        (status, vec![EventType::SessionEnded, EventType::CallEnded])
    } else {
        ("started", vec![EventType::SessionStarted])
    };
    Ok(Normalized::Events(Recognized {
        duplicate_key: key.to_owned(),
        ..Recognized::new(
            call_sid,
            status,
            events
                .into_iter()
                .map(|t| Draft::new(t, occurred_at, session.clone()))
                .collect(),
        )
    }))
}

/// A recording status callback: `completed` is the recording, `absent` and `failed` say
/// there is none; `in-progress` is ignored.
fn recording(
    f: &Fields<'_>,
    status: &str,
    received_at: Timestamp,
) -> Result<Normalized, PayloadError> {
    let recording = match status {
        "completed" => Recording {
            status: RecordingStatus::Ready,
            // Without an extension Twilio answers with metadata; `.wav` is the audio.
            url: Some(format!("{}.wav", f.str("RecordingUrl")?)),
            expires_at: None,
            archive: None,
            in_body: false,
        },
        "absent" | "failed" => Recording {
            status: RecordingStatus::Failed,
            url: None,
            expires_at: None,
            archive: None,
            in_body: false,
        },
        _ => {
            return Ok(Normalized::Ignored {
                vendor_event_type: Some(format!("recording-{status}")),
            });
        }
    };
    let call_sid = f.id("CallSid")?;
    let recording_sid = f.id("RecordingSid")?;
    let session = Session {
        id: call_sid.to_owned(),
        channel: Some(Channel::Voice),
        recording: Some(recording),
        ..Session::default()
    };
    // The callback states no time of its own (RecordingStartTime is when it began).
    Ok(Normalized::Events(Recognized {
        duplicate_key: format!("recording:{recording_sid}:{status}"),
        ..Recognized::new(
            call_sid,
            &format!("recording-{status}"),
            vec![Draft::new(EventType::RecordingReady, received_at, session)],
        )
    }))
}

/// A terminal `CallStatus` as the contract's outcome. Twilio does not say who hung up.
fn ending(status: &str, answered_by: Option<&str>) -> Ending {
    if answered_by.is_some_and(|a| a.starts_with("machine") || a == "fax") {
        return voice::VOICEMAIL;
    }
    match status {
        "completed" => (crate::event::CallOutcome::Completed, None),
        "busy" => voice::BUSY,
        "no-answer" => voice::NO_ANSWER,
        "failed" => voice::FAILED,
        // Canceled by the caller's application while queued or ringing.
        _ => voice::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{CallOutcome, Party};
    use crate::vendors::Vendor;
    use crate::vendors::test_support::{fixture, normalize, received, recognized};

    const CALL: &str = "CA8e1c5a9d3f7b2e6a0c4d8f2b6e0a4c97";

    fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
            .into_bytes()
    }

    #[test]
    fn every_call_status_has_an_outcome() {
        type Row<'a> = (
            &'a str,
            Option<&'a str>,
            Option<(CallOutcome, Option<Party>)>,
        );
        let table: &[Row<'_>] = &[
            ("queued", None, None),
            ("initiated", None, None),
            ("ringing", None, None),
            ("in-progress", None, None),
            ("completed", None, Some((CallOutcome::Completed, None))),
            (
                "completed",
                Some("machine_end_beep"),
                Some((CallOutcome::Voicemail, None)),
            ),
            ("busy", None, Some((CallOutcome::Busy, None))),
            ("no-answer", None, Some((CallOutcome::NoAnswer, None))),
            ("failed", None, Some((CallOutcome::Failed, None))),
            ("canceled", None, Some((CallOutcome::Unknown, None))),
        ];
        for &(status, answered_by, outcome) in table {
            let mut pairs = vec![("CallSid", "CA1"), ("CallStatus", status)];
            if let Some(a) = answered_by {
                pairs.push(("AnsweredBy", a));
            }
            let r = recognized(Vendor::Twilio, &form(&pairs));
            let s = &r.events[0].session;
            assert_eq!(
                s.call.as_ref().map(|c| (c.outcome, c.ended_by)),
                outcome,
                "{status}"
            );
            let types: Vec<_> = r.events.iter().map(|d| d.event_type).collect();
            match outcome {
                Some(_) => {
                    assert_eq!(types, [EventType::SessionEnded, EventType::CallEnded]);
                    assert_eq!(r.duplicate_key, status);
                }
                None => {
                    assert_eq!(types, [EventType::SessionStarted]);
                    assert_eq!(r.duplicate_key, "started", "the first of them opens it");
                }
            }
        }
    }

    #[test]
    fn the_completed_status_callback_fixture() {
        let r = recognized(
            Vendor::Twilio,
            &fixture("twilio", "status-callback-completed.form"),
        );
        assert_eq!(r.session_id, CALL);
        assert_eq!(r.vendor_event_type, "completed");
        let d = &r.events[0];
        assert_eq!(d.occurred_at.to_string(), "2026-05-12T18:01:32.000Z");
        let s = &d.session;
        assert_eq!(
            (s.platform, s.direction),
            (Some(Platform::Phone), Some(Direction::Outbound))
        );
        assert_eq!(
            s.customer.as_ref().unwrap().phone_number.as_deref(),
            Some("+14155550134")
        );
        assert_eq!(s.agent_number.as_deref(), Some("+14155550123"));
        let call = s.call.as_ref().unwrap();
        assert_eq!(call.duration_seconds.as_ref().unwrap().as_u64(), Some(85));
        assert_eq!(call.vendor_status.as_deref(), Some("completed"));
        assert_eq!(
            s.recording, None,
            "the recording comes with its own callback"
        );
    }

    #[test]
    fn the_recording_callback_fixture_is_a_wav_to_fetch() {
        let r = recognized(
            Vendor::Twilio,
            &fixture("twilio", "recording-status-completed.form"),
        );
        assert_eq!(r.session_id, CALL);
        assert_eq!(
            r.duplicate_key,
            "recording:RE2b7d1f5a9c3e8b0d4f6a2c8e1b5d9f36:completed"
        );
        let d = &r.events[0];
        assert_eq!(d.event_type, EventType::RecordingReady);
        assert_eq!(d.occurred_at, received());
        let rec = d.session.recording.as_ref().unwrap();
        assert!(
            rec.url
                .as_deref()
                .unwrap()
                .ends_with("/Recordings/RE2b7d1f5a9c3e8b0d4f6a2c8e1b5d9f36.wav")
        );
        let absent = form(&[
            ("CallSid", "CA1"),
            ("RecordingSid", "RE1"),
            ("RecordingStatus", "absent"),
        ]);
        let r = recognized(Vendor::Twilio, &absent);
        let rec = r.events[0].session.recording.clone().unwrap();
        assert_eq!((rec.status, rec.url), (RecordingStatus::Failed, None));
        let started = form(&[
            ("CallSid", "CA1"),
            ("RecordingSid", "RE1"),
            ("RecordingStatus", "in-progress"),
        ]);
        assert!(matches!(
            normalize(Vendor::Twilio, &started),
            Ok(Normalized::Ignored { .. })
        ));
    }

    #[test]
    fn a_child_leg_joins_its_parents_session() {
        let leg = form(&[
            ("CallSid", "CAchild"),
            ("ParentCallSid", "CAparent"),
            ("CallStatus", "completed"),
            ("Direction", "outbound-dial"),
        ]);
        let r = recognized(Vendor::Twilio, &leg);
        assert_eq!(r.session_id, "CAparent");
        assert_eq!(r.duplicate_key, "leg:CAchild:completed");
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].event_type, EventType::CallEnded);
        assert_eq!(
            r.events[0].session.call, None,
            "the parent's call facts stay"
        );
        let ringing = form(&[
            ("CallSid", "CAchild"),
            ("ParentCallSid", "CAparent"),
            ("CallStatus", "ringing"),
        ]);
        assert!(matches!(
            normalize(Vendor::Twilio, &ringing),
            Ok(Normalized::Ignored { .. })
        ));
    }

    #[test]
    fn bad_callbacks_are_named() {
        for (pairs, error) in [
            (
                vec![("CallStatus", "completed")],
                "missing required field `CallSid`",
            ),
            (
                vec![("CallSid", "CA1")],
                "missing required field `CallStatus`",
            ),
            (
                vec![
                    ("CallSid", "CA1"),
                    ("CallStatus", "completed"),
                    ("Timestamp", "yesterday"),
                ],
                "field `Timestamp` must be an RFC 2822 date",
            ),
            (
                vec![
                    ("CallSid", "CA1"),
                    ("RecordingSid", "RE1"),
                    ("RecordingStatus", "completed"),
                ],
                "missing required field `RecordingUrl`",
            ),
        ] {
            let e = normalize(Vendor::Twilio, &form(&pairs)).unwrap_err();
            assert_eq!(e.to_string(), error);
        }
    }
}
