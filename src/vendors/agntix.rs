//! Agntix: `session.created` / `session.ended`, delivered through Svix.
//!
//! Both events of one session share the top-level `id` (the session UUID); the kind is in
//! `eventType`. Agntix's announced envelope (`{id, type, createdAt, data}`, no `eventType`)
//! is recognised and ignored. The mapping fills the canonical schema
//! (`schema/session-event.v3.json`) from Agntix fields.

use serde_json::{Map, Value};

use super::fields::{Fields, PayloadError};
use super::{Draft, Normalized, Recognized};
use crate::event::{
    Analysis, Channel, Customer, Direction, EventType, Intent, Platform, Recording,
    RecordingStatus, Resolution, ResolutionStatus, Sentiment, SentimentLabel, Session,
    SessionState,
};

/// Which field of the payload each canonical field is read from (canonical path, payload
/// path): a target that redacts the canonical field also redacts the payload's in `raw`.
pub(super) const RAW_FIELDS: &[(&str, &str)] = &[
    ("session.id", "id"),
    ("session.channel", "type"),
    ("session.platform", "platform"),
    ("session.direction", "direction"),
    ("session.state", "state"),
    ("session.agentId", "agentId"),
    ("session.lastActivityAt", "lastActivityAt"),
    (
        "session.customer.phoneNumber",
        "metadata.customerPhoneNumber",
    ),
    ("session.variables", "metadata.sessionVariables"),
    ("session.extracted", "analysis.extractedData"),
    ("session.analysis.summary", "analysis.summary"),
    ("session.analysis.intent", "analysis.intent"),
    ("session.analysis.sentiment", "analysis.sentiment"),
    ("session.analysis.resolution", "analysis.resolution"),
    ("session.recording.url", "recordingUrl"),
];

pub(super) fn normalize(body: &Map<String, Value>) -> Result<Normalized, PayloadError> {
    let f = Fields::root(body);
    let Some(vendor_event_type) = f.opt_id("eventType")? else {
        if f.has("data") {
            // The planned `{id, type, createdAt, data}` envelope: authenticated and
            // well-formed, but no event we map yet.
            return Ok(Normalized::Ignored {
                // An unusable `type` is audited as absent rather than refused.
                vendor_event_type: f.opt_id("type").ok().flatten().map(str::to_owned),
            });
        }
        return Err(PayloadError::Missing("eventType".into()));
    };
    let event_types: &[EventType] = match vendor_event_type {
        "session.created" => &[EventType::SessionStarted],
        // Agntix sends nothing after session.ended, so it also finalizes the session.
        "session.ended" => &[EventType::SessionEnded, EventType::SessionFinalized],
        _ => {
            return Ok(Normalized::Ignored {
                vendor_event_type: Some(vendor_event_type.to_owned()),
            });
        }
    };
    let session_id = f.id("id")?;
    // The id is a path segment of the Agntix API (transcripts); `.` and `..` would name
    // another path there.
    if matches!(session_id, "." | "..") {
        return Err(PayloadError::WrongType {
            field: "id".into(),
            expected: "a session id other than `.` and `..`",
        });
    }
    let created_at = f.timestamp("createdAt")?;
    let ended_at = f.opt_timestamp("endedAt")?;
    let updated_at = f.opt_timestamp("updatedAt")?;
    let occurred_at = match event_types[0] {
        EventType::SessionStarted => created_at,
        _ => ended_at.or(updated_at).unwrap_or(created_at),
    };

    let metadata = f.opt_object("metadata", "metadata")?;
    let analysis = f.opt_object("analysis", "analysis")?;
    let session = Session {
        id: session_id.to_owned(),
        channel: enum_field(
            &f,
            "type",
            &[("VOICE", Channel::Voice), ("CHAT", Channel::Chat)],
        )?,
        platform: enum_field(
            &f,
            "platform",
            &[
                ("PHONE", Platform::Phone),
                ("WEB", Platform::Web),
                ("WHATSAPP", Platform::Whatsapp),
            ],
        )?,
        direction: enum_field(
            &f,
            "direction",
            &[
                ("INBOUND", Direction::Inbound),
                ("OUTBOUND", Direction::Outbound),
            ],
        )?,
        state: enum_field(
            &f,
            "state",
            &[
                ("OPEN", SessionState::Open),
                ("CLOSED", SessionState::Closed),
                ("EXPIRED", SessionState::Expired),
            ],
        )?,
        agent_id: f.opt_str("agentId")?.map(str::to_owned),
        started_at: Some(created_at),
        ended_at,
        last_activity_at: f.opt_timestamp("lastActivityAt")?,
        customer: match metadata {
            Some(m) => m.opt_str("customerPhoneNumber")?.map(|p| Customer {
                phone_number: Some(p.to_owned()),
            }),
            None => None,
        },
        variables: match metadata {
            Some(m) => m.opt_map("sessionVariables")?.cloned().unwrap_or_default(),
            None => Map::new(),
        },
        extracted: match analysis {
            Some(a) => a.opt_map("extractedData")?.cloned().unwrap_or_default(),
            None => Map::new(),
        },
        analysis: analysis.map(|a| read_analysis(&a)).transpose()?,
        recording: f.opt_str("recordingUrl")?.map(|url| Recording {
            status: RecordingStatus::Ready,
            url: Some(url.to_owned()),
            expires_at: None,
            archive: None,
            in_body: false,
        }),
        ..Session::default()
    };

    Ok(Normalized::Events(Recognized::new(
        session_id,
        vendor_event_type,
        event_types
            .iter()
            .map(|&event_type| Draft::new(event_type, occurred_at, session.clone()))
            .collect(),
    )))
}

/// An upper-case vendor enum. A value we do not know maps to null (the raw payload keeps
/// it) rather than failing the request: Agntix may add values, and an unknown one must not
/// cost the event.
fn enum_field<T: Copy>(
    f: &Fields<'_>,
    key: &str,
    values: &[(&str, T)],
) -> Result<Option<T>, PayloadError> {
    Ok(f.opt_str(key)?.and_then(|s| {
        values
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, v)| v)
    }))
}

fn read_analysis(a: &Fields<'_>) -> Result<Analysis, PayloadError> {
    let intent = match a.opt_object("intent", "analysis.intent")? {
        Some(i) => match i.opt_object("conversation", "analysis.intent.conversation")? {
            Some(c) => Some(Intent {
                name: c.opt_str("intent")?.map(str::to_owned),
                confidence: c.opt_number("confidence")?,
                explanation: c.opt_str("explanation")?.map(str::to_owned),
            }),
            None => None,
        },
        None => None,
    };
    let sentiment = match a.opt_object("sentiment", "analysis.sentiment")? {
        Some(s) => match s.opt_object("conversation", "analysis.sentiment.conversation")? {
            Some(c) => Some(Sentiment {
                label: enum_field(
                    &c,
                    "sentiment",
                    &[
                        ("POSITIVE", SentimentLabel::Positive),
                        ("NEUTRAL", SentimentLabel::Neutral),
                        ("NEGATIVE", SentimentLabel::Negative),
                    ],
                )?,
                score: c.opt_number("score")?,
                language: c.opt_str("detectedLanguage")?.map(str::to_owned),
            }),
            None => None,
        },
        None => None,
    };
    let resolution = match a.opt_object("resolution", "analysis.resolution")? {
        Some(r) => Some(Resolution {
            status: enum_field(
                &r,
                "classification",
                &[
                    ("RESOLVED", ResolutionStatus::Resolved),
                    ("PARTIALLY_RESOLVED", ResolutionStatus::PartiallyResolved),
                    ("UNRESOLVED", ResolutionStatus::Unresolved),
                    ("NOT_APPLICABLE", ResolutionStatus::NotApplicable),
                ],
            )?,
            confidence: r.opt_number("confidenceScore")?,
            satisfied_checklist_items: r
                .opt_array("satisfiedChecklistItems")?
                .cloned()
                .unwrap_or_default(),
            evidence: r.opt_array("evidence")?.cloned().unwrap_or_default(),
            explanation: r.opt_str("explanation")?.map(str::to_owned),
        }),
        None => None,
    };
    Ok(Analysis {
        summary: a.opt_str("summary")?.map(str::to_owned),
        intent,
        sentiment,
        resolution,
        successful: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::Timestamp;
    use crate::vendors::Vendor;
    use crate::vendors::test_support::{fixture, normalize, recognized};

    const SESSION: &str = "4981804c-2658-4893-84ff-9c2fa90fb3c2";

    fn ts(s: &str) -> Option<Timestamp> {
        Some(Timestamp::parse(s).unwrap())
    }

    #[test]
    fn session_created_fixture() {
        let r = recognized(Vendor::Agntix, &fixture("agntix", "session-created.json"));
        assert_eq!(r.session_id, SESSION);
        assert_eq!(r.vendor_event_type, "session.created");
        assert_eq!(r.events.len(), 1);
        let d = &r.events[0];
        assert_eq!(d.event_type, EventType::SessionStarted);
        assert_eq!(Some(d.occurred_at), ts("2026-04-08T05:00:01.130Z"));
        let s = &d.session;
        assert_eq!(s.channel, Some(Channel::Voice));
        assert_eq!(s.platform, Some(Platform::Phone));
        assert_eq!(s.direction, Some(Direction::Outbound));
        assert_eq!(s.state, Some(SessionState::Open));
        assert_eq!(
            s.agent_id.as_deref(),
            Some("40235145-aa3d-443e-9d0c-841dd0716a2f")
        );
        assert_eq!(s.started_at, ts("2026-04-08T05:00:01.130Z"));
        assert_eq!(s.ended_at, None);
        assert_eq!(
            s.customer,
            Some(Customer {
                phone_number: Some("+971501234567".into())
            })
        );
        assert_eq!(
            Value::Object(s.variables.clone()),
            json!({"crmContactId": "CRM-7728", "customerName": "Alex Morgan"})
        );
        assert!(s.extracted.is_empty());
        assert_eq!(s.analysis, None);
        assert_eq!(s.recording, None);
        assert_eq!(s.call, None, "Agntix reports no call status");
        assert_eq!(s.project_id, None);
        assert_eq!(s.message_count, None);
    }

    #[test]
    fn session_ended_fixture_finalizes_too() {
        let r = recognized(Vendor::Agntix, &fixture("agntix", "session-ended.json"));
        let types: Vec<_> = r.events.iter().map(|d| d.event_type).collect();
        assert_eq!(
            types,
            [EventType::SessionEnded, EventType::SessionFinalized]
        );
        assert_eq!(r.events[0].session, r.events[1].session);
        let d = &r.events[0];
        assert_eq!(
            Some(d.occurred_at),
            ts("2026-04-08T05:00:10.546Z"),
            "endedAt"
        );
        let s = &d.session;
        assert_eq!(s.state, Some(SessionState::Closed));
        assert_eq!(s.ended_at, ts("2026-04-08T05:00:10.546Z"));
        assert_eq!(s.last_activity_at, ts("2026-04-08T05:00:01.130Z"));
        assert_eq!(s.extracted["preferredDay"], "Wednesday");
        assert_eq!(s.extracted["slotConfirmed"], true);
        assert_eq!(
            s.recording,
            Some(Recording {
                status: RecordingStatus::Ready,
                url: Some(format!(
                    "https://app.agntix.ai/en/logs-history?opened={SESSION}"
                )),
                expires_at: None,
                archive: None,
                in_body: false,
            })
        );
        let analysis = serde_json::to_value(s.analysis.as_ref().unwrap()).unwrap();
        assert_eq!(
            analysis,
            json!({
                "summary": "Customer confirmed delivery slot for Wednesday afternoon.",
                "intent": {"name": "Slot-Confirmed", "confidence": 0.92, "explanation": "…"},
                "sentiment": {"label": "positive", "score": 0.4, "language": "en"},
                "resolution": {
                    "status": "resolved",
                    "confidence": 0.88,
                    "satisfiedChecklistItems": ["delivery_slot_agreed"],
                    "evidence": ["Customer: yes Wednesday afternoon works."],
                    "explanation": "Customer agreed to a specific slot."
                },
                "successful": null
            })
        );
    }

    #[test]
    fn occurred_at_falls_back_from_ended_to_updated_to_created() {
        let base =
            json!({"id": "s", "eventType": "session.ended", "createdAt": "2026-04-08T05:00:00Z"});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            recognized(Vendor::Agntix, v.to_string().as_bytes()).events[0].occurred_at
        };
        assert_eq!(Some(with(json!({}))), ts("2026-04-08T05:00:00Z"));
        assert_eq!(
            Some(with(json!({"updatedAt": "2026-04-08T05:00:05Z"}))),
            ts("2026-04-08T05:00:05Z")
        );
        assert_eq!(
            Some(with(
                json!({"updatedAt": "2026-04-08T05:00:05Z", "endedAt": "2026-04-08T05:00:09Z"})
            )),
            ts("2026-04-08T05:00:09Z")
        );
    }

    #[test]
    fn absent_analysis_blocks_are_null_never_invented() {
        let body = json!({
            "id": "s", "eventType": "session.ended", "createdAt": "2026-04-08T05:00:00Z",
            "analysis": {"summary": "short"}
        });
        let r = recognized(Vendor::Agntix, body.to_string().as_bytes());
        let a = r.events[0].session.analysis.clone().unwrap();
        assert_eq!(a.summary.as_deref(), Some("short"));
        assert_eq!((a.intent, a.sentiment, a.resolution), (None, None, None));
    }

    #[test]
    fn unknown_enum_values_map_to_null() {
        let body = json!({
            "id": "s", "eventType": "session.created", "createdAt": "2026-04-08T05:00:00Z",
            "type": "VIDEO", "platform": "sms", "direction": "inbound", "state": "PAUSED"
        });
        let s = &recognized(Vendor::Agntix, body.to_string().as_bytes()).events[0].session;
        assert_eq!((s.channel, s.platform, s.state), (None, None, None));
        assert_eq!(s.direction, Some(Direction::Inbound));
    }

    #[test]
    fn planned_envelope_and_unknown_types_are_ignored() {
        let envelope = br#"{"id":"evt_1","type":"message.added","createdAt":"2026-04-08T05:00:00Z","data":{}}"#;
        assert_eq!(
            normalize(Vendor::Agntix, envelope).unwrap(),
            Normalized::Ignored {
                vendor_event_type: Some("message.added".into())
            }
        );
        let future = br#"{"id":"s","eventType":"session.updated"}"#;
        assert!(matches!(
            normalize(Vendor::Agntix, future).unwrap(),
            Normalized::Ignored { .. }
        ));
    }

    #[test]
    fn required_fields_are_named() {
        let cases: [(&[u8], &str); 7] = [
            (br#"{"id":"s","createdAt":"2026-04-08T05:00:00Z"}"#, "`eventType`"),
            // The id is a path segment of the transcripts API.
            (br#"{"id":".","eventType":"session.ended","createdAt":"2026-04-08T05:00:00Z"}"#, "`id` must be a session id other than"),
            (br#"{"id":"..","eventType":"session.ended","createdAt":"2026-04-08T05:00:00Z"}"#, "`id` must be a session id other than"),
            (br#"{"eventType":"session.created","createdAt":"2026-04-08T05:00:00Z"}"#, "`id`"),
            (br#"{"id":"s","eventType":"session.created"}"#, "`createdAt`"),
            (
                br#"{"id":"s","eventType":"session.created","createdAt":"2026-04-08T05:00:00Z","metadata":{"sessionVariables":[1]}}"#,
                "`metadata.sessionVariables`",
            ),
            (
                br#"{"id":"s","eventType":"session.ended","createdAt":"2026-04-08T05:00:00Z","analysis":{"resolution":{"confidenceScore":"high"}}}"#,
                "`analysis.resolution.confidenceScore`",
            ),
        ];
        for (body, field) in cases {
            let err = normalize(Vendor::Agntix, body).unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }
}
