//! The canonical session event (schema v3, `schema/session-event.v3.json`) and its ids.
//!
//! This module only describes the shape every delivery carries; vendors fill it
//! ([`crate::vendors`]) and the ingest path stamps ids and times on it. It knows nothing of
//! HTTP or storage.

use std::fmt;

use actix_web::web::Bytes;
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

pub mod schema;
mod session;
pub use session::*;

/// A canonical event type. The closed set of `schema/session-event.v3.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "session.started")]
    SessionStarted,
    #[serde(rename = "session.ended")]
    SessionEnded,
    #[serde(rename = "call.ended")]
    CallEnded,
    #[serde(rename = "recording.ready")]
    RecordingReady,
    #[serde(rename = "session.finalized")]
    SessionFinalized,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::SessionStarted,
        EventType::SessionEnded,
        EventType::CallEnded,
        EventType::RecordingReady,
        EventType::SessionFinalized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::SessionStarted => "session.started",
            EventType::SessionEnded => "session.ended",
            EventType::CallEnded => "call.ended",
            EventType::RecordingReady => "recording.ready",
            EventType::SessionFinalized => "session.finalized",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A canonical event id, `evt_` followed by 32 hex digits.
///
/// Derived from the vendor's duplicate key and the canonical type, so the same vendor event
/// always gets the same id: retries, replays and restarts carry it unchanged, and downstream
/// receivers can de-duplicate on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    pub fn derive(
        source: &str,
        session_id: &str,
        vendor_event_type: &str,
        event_type: EventType,
    ) -> EventId {
        let mut hasher = Sha256::new();
        for part in [source, session_id, vendor_event_type, event_type.as_str()] {
            // Length-prefix each part so that no two different keys hash the same bytes.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        EventId(format!("evt_{}", hex::encode(&digest[..16])))
    }

    /// Wraps an id read back from the store.
    pub fn from_stored(id: String) -> EventId {
        EventId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest id or event type accepted (session ids are UUIDs; event types are short;
/// message ids are a vendor's): every store keys on them.
pub const MAX_ID_LEN: usize = 256;

/// An instant, serialised as RFC 3339 UTC with milliseconds (`2026-05-03T08:42:11.512Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(Utc::now())
    }

    /// Parses RFC 3339. An instant whose UTC form falls outside the years 0000–9999 (which
    /// RFC 3339 can write, e.g. `9999-12-31T23:59:59-23:00`) is refused: it could not be
    /// written back as RFC 3339.
    pub fn parse(s: &str) -> Option<Timestamp> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .filter(|t| (0..=9999).contains(&t.year()))
            .map(Timestamp)
    }

    /// Adds seconds, staying within the years RFC 3339 can write.
    pub fn plus_seconds(self, seconds: i64) -> Timestamp {
        Timestamp::writable(
            self.0
                .checked_add_signed(chrono::Duration::seconds(seconds))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }

    /// Adds milliseconds, staying within the years RFC 3339 can write.
    pub fn plus_millis(self, millis: i64) -> Timestamp {
        Timestamp::writable(
            self.0
                .checked_add_signed(chrono::Duration::milliseconds(millis))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }

    /// This instant less `d`, staying within the years RFC 3339 can write.
    pub fn minus(self, d: std::time::Duration) -> Timestamp {
        Timestamp::writable(
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| self.0.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        )
    }

    /// `t`, clamped to 0000-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z.
    fn writable(t: DateTime<Utc>) -> Timestamp {
        /// The bounds in unix milliseconds (0000-01-01 and the last millisecond of 9999).
        const EARLIEST_MS: i64 = -62_167_219_200_000;
        const LATEST_MS: i64 = 253_402_300_799_999;
        let ms = t.timestamp_millis().clamp(EARLIEST_MS, LATEST_MS);
        if ms == t.timestamp_millis() {
            Timestamp(t)
        } else {
            Timestamp::from_unix_millis(ms)
        }
    }

    pub fn unix_millis(self) -> i64 {
        self.0.timestamp_millis()
    }

    pub fn from_unix_millis(ms: i64) -> Timestamp {
        Timestamp(DateTime::from_timestamp_millis(ms).unwrap_or_default())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `source` of a canonical event: where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef<'a> {
    pub name: &'a str,
    pub vendor: &'a str,
    /// The vendor's own event type, verbatim.
    pub event_type: &'a str,
    /// The Svix message id, where the vendor sent one.
    pub message_id: Option<&'a str>,
    /// Recovered from the vendor's list API rather than received as a webhook.
    pub recovered: bool,
}

/// A canonical event as stored: everything but `raw`, which is attached per target at
/// delivery time (see [`with_raw`]).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CanonicalEvent<'a> {
    pub spec_version: &'static str,
    pub id: &'a EventId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
    pub source: SourceRef<'a>,
    pub session: &'a Session,
}

pub const SPEC_VERSION: &str = "3";

/// Appends `"raw": <raw>` to a serialised event object.
///
/// `event` must be a JSON object as produced by serialising [`CanonicalEvent`] and `raw` the
/// verified vendor body, which ingest has already parsed as JSON. Splicing the bytes avoids
/// re-serialising the vendor payload for every delivery.
pub fn with_raw(event: &str, raw: &[u8]) -> Vec<u8> {
    let head = event
        .trim_end()
        .strip_suffix('}')
        .expect("a serialised canonical event is a JSON object");
    let mut out = Vec::with_capacity(event.len() + raw.len() + 8);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(b",\"raw\":");
    out.extend_from_slice(raw);
    out.push(b'}');
    out
}

/// An authenticated vendor request that produced canonical events, ready to commit.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub source: String,
    pub vendor: String,
    /// The vendor's session id; with `vendor` it names the session record.
    pub session_id: String,
    pub vendor_event_type: String,
    pub message_id: Option<String>,
    /// Recovered from the vendor's list API ([`crate::recovery`]) rather than received.
    pub recovered: bool,
    pub received_at: Timestamp,
    /// The vendor's body exactly as received (a recovered call's: the webhook body it
    /// stands for, built from the vendor's API).
    pub raw: Bytes,
    /// In emission order. The first event not [`NewEvent::implied`] is the request's
    /// own: its id is the request's duplicate key ([`Inbound::primary`]).
    pub events: Vec<NewEvent>,
    /// Work the request leaves behind, committed with it (a transcript to fetch, a
    /// recording to archive, a finalize wait). An event is held by one job at most.
    pub jobs: Vec<NewJob>,
}

/// Stored work a request leaves behind, committed in its transaction so that neither a
/// crash nor a restart loses it. While it runs, the deliveries of the events it holds wait.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: JobKind,
    /// Finished by then, with whatever is known.
    pub deadline: Timestamp,
    /// The events whose deliveries wait for the job (by type, among the request's events).
    pub holds: Vec<EventType>,
}

impl NewJob {
    /// When the job is first due (unix ms), committed at `now_ms`: a finalize wait at its
    /// deadline, other work at once.
    pub fn first_due(&self, now_ms: i64) -> i64 {
        match self.kind {
            JobKind::Finalize | JobKind::AwaitEnd => self.deadline.unix_millis(),
            JobKind::Transcript | JobKind::Recording => now_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Fetch an Agntix session's transcript from the vendor's messages API.
    Transcript,
    /// Archive a recording before the vendor's URL expires.
    Recording,
    /// Hold a `session.finalized` for the vendor's completing event, at most the source's
    /// `finalize_wait`: due at its deadline, it then releases the event with what is known.
    /// The completing event, arriving first, takes the held event's place.
    Finalize,
    /// Hold a completing event's own `session.finalized` that arrived before the session
    /// ended and carries too little to stand alone (Bland's delayed post-call), until the
    /// event that ends the session commits (which makes it due) or `finalize_wait` passes.
    AwaitEnd,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Transcript => "transcript",
            JobKind::Recording => "recording",
            JobKind::Finalize => "finalize",
            JobKind::AwaitEnd => "await_end",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "transcript" => Some(JobKind::Transcript),
            "recording" => Some(JobKind::Recording),
            "finalize" => Some(JobKind::Finalize),
            "await_end" => Some(JobKind::AwaitEnd),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: EventType,
    pub occurred_at: Timestamp,
    /// What this event alone says about the session; merged into the record on commit.
    pub facts: Session,
    /// Targets to deliver to: one pending delivery each, created in the same transaction.
    pub targets: Vec<String>,
    /// Stands in for another vendor event that may not have arrived (its id is derived from
    /// that event's key): stored only if that event was not, and never the request's
    /// duplicate key.
    pub implied: bool,
}

impl Inbound {
    /// The request's own first event, whose id is its duplicate key.
    pub fn primary(&self) -> &NewEvent {
        self.events
            .iter()
            .find(|e| !e.implied)
            .expect("a request has an event of its own")
    }

    /// The canonical event one of this request's events becomes around the merged
    /// `session`, serialised: the one place a canonical event is built and rendered. It
    /// is stored without `raw`, which [`with_raw`] adds per target.
    pub fn render(&self, event: &NewEvent, session: &Session) -> String {
        serde_json::to_string(&CanonicalEvent {
            spec_version: SPEC_VERSION,
            id: &event.id,
            event_type: event.event_type,
            occurred_at: event.occurred_at,
            received_at: self.received_at,
            source: SourceRef {
                name: &self.source,
                vendor: &self.vendor,
                event_type: &self.vendor_event_type,
                message_id: self.message_id.as_deref(),
                recovered: self.recovered,
            },
            session,
        })
        .expect("canonical events always serialise")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn event_ids_are_stable_and_distinct_per_key_part() {
        let a = EventId::derive("agntix", "s1", "session.ended", EventType::SessionEnded);
        let b = EventId::derive("agntix", "s1", "session.ended", EventType::SessionEnded);
        let c = EventId::derive("agntix", "s1", "session.ended", EventType::SessionFinalized);
        let d = EventId::derive("agntix2", "s1", "session.ended", EventType::SessionEnded);
        // Moving bytes between parts must not collide.
        let e = EventId::derive("agnti", "xs1", "session.ended", EventType::SessionEnded);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(a, e);
        assert!(a.as_str().starts_with("evt_"));
        assert_eq!(a.as_str().len(), 4 + 32);
    }

    #[test]
    fn timestamps_serialise_as_utc_millis() {
        let t = Timestamp::parse("2026-05-03T10:42:11.5123+02:00").unwrap();
        assert_eq!(t.to_string(), "2026-05-03T08:42:11.512Z");
        assert_eq!(t.plus_seconds(900).to_string(), "2026-05-03T08:57:11.512Z");
        assert!(Timestamp::parse("yesterday").is_none());
    }

    #[test]
    fn instants_rfc_3339_cannot_write_are_refused_and_sums_stay_writable() {
        for outside in ["9999-12-31T23:59:59-23:59", "0000-01-01T00:00:00+01:00"] {
            assert!(Timestamp::parse(outside).is_none(), "{outside}");
        }
        for edge in ["9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z"] {
            let t = Timestamp::parse(edge).unwrap();
            assert!(Timestamp::parse(&t.to_string()).is_some(), "{t}");
        }
        let late = Timestamp::parse("9999-12-31T23:59:00Z").unwrap();
        assert_eq!(
            late.plus_seconds(900).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn event_types_round_trip_through_their_names() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("session.created"), None);
    }

    #[test]
    fn raw_is_spliced_as_the_last_member() {
        let out = with_raw(r#"{"id":"evt_1"}"#, br#"{"a": [1, 2]}"#);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "evt_1");
        assert_eq!(v["raw"]["a"][1], 2);
    }
}
