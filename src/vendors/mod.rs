//! Vendor adapters: verified bytes in, canonical event drafts out.
//!
//! Each vendor is one file and one arm of [`Vendor`]. An adapter only parses and maps; it
//! never sees an unverified body (it takes [`Verified`]), and it does no I/O. HTTP, limits,
//! authentication, ids, storage and answers all live outside this folder. An event type an
//! adapter does not know is a value ([`Normalized::Ignored`]), not an error.
//!
//! Adding a vendor: a new file with a `normalize` function, one arm here.

mod agntix;
mod bland;
mod elevenlabs;
mod fields;
pub mod mapped;
mod pathors;
mod retell;
mod twilio;
mod vapi;
mod voice;

use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use fields::{PayloadError, printable};

use crate::auth::Verified;
use crate::event::{EventType, Session, Timestamp};

/// The vendors sessiongate understands, as written in `[[sources]] vendor = "…"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Pathors,
    Agntix,
    Retell,
    Vapi,
    ElevenLabs,
    Bland,
    Twilio,
    /// Declared in configuration (`[sources.mapping]`, [`mapped`]).
    Mapped,
}

impl<'de> Deserialize<'de> for Vendor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Vendor, D::Error> {
        crate::settings::one_of(d, &Vendor::ALL.map(|v| (v.as_str(), v)))
    }
}

impl Vendor {
    /// Every vendor sessiongate speaks.
    pub const ALL: [Vendor; 8] = [
        Vendor::Pathors,
        Vendor::Agntix,
        Vendor::Retell,
        Vendor::Vapi,
        Vendor::ElevenLabs,
        Vendor::Bland,
        Vendor::Twilio,
        Vendor::Mapped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Pathors => "pathors",
            Vendor::Agntix => "agntix",
            Vendor::Retell => "retell",
            Vendor::Vapi => "vapi",
            Vendor::ElevenLabs => "elevenlabs",
            Vendor::Bland => "bland",
            Vendor::Twilio => "twilio",
            Vendor::Mapped => "mapped",
        }
    }

    /// The payload fields (dotted, under `raw`) that the canonical field at `path`, or any
    /// field under it, is read from. Redacting a field inside one of them redacts all of it:
    /// a vendor's inner shape need not match the canonical one, and too much redacted is
    /// safe where too little is a leak.
    pub fn raw_sources(self, path: &[String]) -> Vec<Vec<String>> {
        let table = match self {
            Vendor::Pathors => pathors::RAW_FIELDS,
            Vendor::Agntix => agntix::RAW_FIELDS,
            Vendor::Retell => retell::RAW_FIELDS,
            Vendor::Vapi => vapi::RAW_FIELDS,
            Vendor::ElevenLabs => elevenlabs::RAW_FIELDS,
            Vendor::Bland => bland::RAW_FIELDS,
            Vendor::Twilio => twilio::RAW_FIELDS,
            // Per source: the delivery side drops a mapped vendor's raw when it redacts.
            Vendor::Mapped => &[],
        };
        let mut found: Vec<Vec<String>> = Vec::new();
        for (canonical, raw) in table {
            let canonical: Vec<&str> = canonical.split('.').collect();
            let related = path.iter().zip(&canonical).all(|(a, b)| a == b);
            let raw: Vec<String> = raw.split('.').map(str::to_owned).collect();
            if related && !found.contains(&raw) {
                found.push(raw);
            }
        }
        found
    }

    /// Whether a session of this vendor can end before it is finalized (its completing
    /// event comes later), so that a `finalize_wait` can bound the wait for that event.
    pub fn ends_before_it_finalizes(self) -> bool {
        match self {
            Vendor::Pathors
            | Vendor::Retell
            | Vendor::Vapi
            | Vendor::Bland
            | Vendor::Twilio
            | Vendor::Mapped => true,
            // The event that ends the session finalizes it.
            Vendor::Agntix | Vendor::ElevenLabs => false,
        }
    }

    /// How long a session that ended waits for the vendor's completing event unless the
    /// source says (`finalize_wait`). Retell sends `call_analyzed` after every call, the
    /// post-call analysis taking seconds to minutes (unconfirmed how long at most); 15
    /// minutes bounds a lost one. Pathors and Vapi send their completing event right
    /// after the end, so none is set: the source may.
    pub fn finalize_wait(self) -> Option<std::time::Duration> {
        match self {
            Vendor::Retell => Some(std::time::Duration::from_secs(15 * 60)),
            // The delayed post-call comes 30–60 s after the immediate one (Bland's cookbook).
            Vendor::Bland => Some(std::time::Duration::from_secs(120)),
            // Twilio has no completing event: the end finalizes at once. Set a wait when calls
            // are recorded, for the recording callback (which comes after the end).
            Vendor::Twilio => Some(std::time::Duration::ZERO),
            _ => None,
        }
    }

    /// Whether a source of this vendor can fetch each session's transcript from the
    /// vendor's API (`transcripts`, [`crate::enrich::transcripts`]): Agntix's webhooks are
    /// summary-grade; the voice platforms' carry the turns.
    pub fn fetches_transcripts(self) -> bool {
        matches!(self, Vendor::Agntix)
    }

    /// Whether the recording URL this vendor sends is the recording itself (archived with
    /// `[recordings]`) rather than a page about it (Agntix links its dashboard).
    pub fn archives_recordings(self) -> bool {
        !matches!(self, Vendor::Agntix)
    }

    /// The base64 audio a request of this vendor carried in its body, for a recording whose
    /// [`crate::event::Recording::in_body`] is set (ElevenLabs `post_call_audio`).
    pub fn audio_in_body(self, raw: &[u8]) -> Result<std::borrow::Cow<'_, str>, String> {
        match self {
            Vendor::ElevenLabs => elevenlabs::audio_in_body(raw),
            other => Err(format!("{other} sends no audio in its bodies")),
        }
    }

    pub fn parse(name: &str) -> Option<Vendor> {
        Vendor::ALL.into_iter().find(|v| v.as_str() == name)
    }

    /// Maps one verified request body to canonical event drafts. `received_at` stands in
    /// for the event's time where the vendor states none (Bland's delayed post-call).
    pub fn normalize(
        self,
        input: &Verified,
        received_at: Timestamp,
    ) -> Result<Normalized, PayloadError> {
        let body = match self {
            Vendor::Twilio => twilio::parse_form(input.body()),
            _ => fields::parse_object(input.body())?,
        };
        self.normalize_body(&body, received_at)
    }

    /// [`Vendor::normalize`] of a body already read as a JSON object (a form-encoded
    /// vendor's: its parameters as strings). Recovery builds such bodies from the vendor's
    /// API, so that a recovered call is mapped by the very adapter its webhook would be.
    pub fn normalize_body(
        self,
        body: &Map<String, Value>,
        received_at: Timestamp,
    ) -> Result<Normalized, PayloadError> {
        match self {
            Vendor::Pathors => pathors::normalize(body),
            Vendor::Agntix => agntix::normalize(body),
            Vendor::Retell => retell::normalize(body),
            Vendor::Vapi => vapi::normalize(body),
            Vendor::ElevenLabs => elevenlabs::normalize(body),
            Vendor::Bland => bland::normalize(body, received_at),
            Vendor::Twilio => twilio::normalize(body, received_at),
            // A declared vendor is normalised by its source's mapping (`Source::normalize`).
            Vendor::Mapped => Err(PayloadError::Missing("[sources.mapping]".into())),
        }
    }

    /// The body as stored and delivered as `raw`: the vendor's JSON as received, or, for a
    /// form-encoded vendor (Twilio), its parameters as one JSON object of strings.
    pub fn raw(self, body: &actix_web::web::Bytes) -> actix_web::web::Bytes {
        match self {
            Vendor::Twilio => serde_json::to_vec(&twilio::parse_form(body))
                .expect("strings serialise")
                .into(),
            _ => body.clone(),
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a vendor request means.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalized {
    /// A known event: one or more canonical events, in emission order.
    Events(Recognized),
    /// Authenticated and well-formed, but not an event type this adapter maps. Kept for
    /// audit, never forwarded.
    Ignored { vendor_event_type: Option<String> },
}

/// A recognised vendor event and the canonical events it becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    /// The vendor's session id (Pathors `sessionId`, Agntix `id`, Retell `call_id`, …).
    pub session_id: String,
    /// The vendor's event type, verbatim (`source.eventType`).
    pub vendor_event_type: String,
    /// With the session id and the source, what tells this vendor event from every other:
    /// the event type, or more where one type carries several events (Vapi's
    /// `status-update:ended`).
    pub duplicate_key: String,
    pub events: Vec<Draft>,
    /// A completing event that carries too little to stand alone (Bland's delayed
    /// post-call: the corrected transcript only): arriving before the session ended, its
    /// `session.finalized` waits for the end, at most the source's `finalize_wait`.
    pub waits_for_end: bool,
}

impl Recognized {
    /// A vendor event whose type is its duplicate key.
    pub fn new(session_id: &str, vendor_event_type: &str, events: Vec<Draft>) -> Recognized {
        Recognized {
            session_id: session_id.to_owned(),
            vendor_event_type: vendor_event_type.to_owned(),
            duplicate_key: vendor_event_type.to_owned(),
            events,
            waits_for_end: false,
        }
    }
}

/// One canonical event before ingest gives it an id and a receive time.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub event_type: EventType,
    pub occurred_at: Timestamp,
    pub session: Session,
    /// The duplicate key of the vendor event this one stands in for, when it is not the
    /// request's own: Vapi's `end-of-call-report` implies the `session.ended` of the
    /// `status-update` `ended` it may have missed, under that message's key, so that the
    /// event is stored once whichever arrives.
    pub implied_by: Option<String>,
}

impl Draft {
    pub fn new(event_type: EventType, occurred_at: Timestamp, session: Session) -> Draft {
        Draft {
            event_type,
            occurred_at,
            session,
            implied_by: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::auth::SourceAuth;

    pub use crate::testing::fixture;

    pub fn normalize(vendor: Vendor, body: &[u8]) -> Result<Normalized, PayloadError> {
        let verified = SourceAuth::None
            .verify(
                &actix_web::http::header::HeaderMap::new(),
                body.to_vec().into(),
            )
            .expect("auth none accepts everything");
        vendor.normalize(&verified, received())
    }

    /// The receive time adapters' tests are run with.
    pub fn received() -> Timestamp {
        Timestamp::parse("2026-05-12T18:00:00Z").expect("a valid instant")
    }

    pub fn recognized(vendor: Vendor, body: &[u8]) -> Recognized {
        match normalize(vendor, body) {
            Ok(Normalized::Events(r)) => r,
            other => panic!("expected events, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod raw_sources_tests {
    use super::*;

    fn sources(vendor: Vendor, path: &str) -> Vec<String> {
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        vendor
            .raw_sources(&path)
            .into_iter()
            .map(|p| p.join("."))
            .collect()
    }

    #[test]
    fn a_canonical_field_names_the_payload_fields_it_came_from() {
        assert_eq!(
            sources(Vendor::Agntix, "session.variables"),
            ["metadata.sessionVariables"]
        );
        assert_eq!(
            sources(Vendor::Agntix, "session.variables.customerName"),
            ["metadata.sessionVariables"],
            "a field inside one: all of it"
        );
        assert_eq!(
            sources(Vendor::Agntix, "session.customer"),
            ["metadata.customerPhoneNumber"],
            "a field above one: each below it"
        );
        assert_eq!(
            sources(Vendor::Pathors, "session.call"),
            ["callStatus", "callDuration"]
        );
        assert!(sources(Vendor::Pathors, "session.customer").is_empty());
        assert!(sources(Vendor::Agntix, "raw.metadata").is_empty());
    }
}
