//! The session record: every event of a session merged into one, in any arrival order.
//!
//! Each field of [`Session`] (and each key of `variables` and `extracted`) is kept with a
//! stamp: its lifecycle rank, the time of the event that said it, and the value itself.
//! Merging keeps, per field, the value with the greatest stamp. That is a maximum over a
//! total order, so merging is commutative, associative and idempotent: whatever order events
//! arrive in, however often they repeat, the record comes out the same. From the stamp order:
//!
//! - later lifecycle facts are never overwritten by earlier ones (`closed` outranks `open`,
//!   and `voice`, once any call event was seen, outranks `chat`), whatever the clocks say;
//! - between two values of the same rank, the later event time wins;
//! - null or absent fields are never offered, so they never erase a value;
//! - a key of `variables` or `extracted` is kept as the vendor sent it, a null included;
//!   a value for that key from any event outranks the null (a null never erases a fact).
//!
//! This module is pure: storage decides *when* to merge (inside its transaction), and
//! [`plan_accept`] what a request does to its session.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{
    Channel, EventId, EventType, Inbound, NewEvent, Session, SessionState, Timestamp,
};

/// Fields merged key by key rather than as a whole.
const KEYED_FIELDS: [&str; 2] = ["variables", "extracted"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    #[serde(default)]
    fields: BTreeMap<String, Stamped>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stamped {
    /// A null the vendor sent for a key of `variables` or `extracted`: kept as sent, but any
    /// value outranks it, whenever it was said (a null never erases a fact).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    null: bool,
    rank: u8,
    at: Timestamp,
    value: Value,
}

impl Stamped {
    /// The total order merging maximises. The value's JSON text breaks the last ties, so that
    /// even two different values at the same instant merge the same way in any order.
    fn beats(&self, other: &Stamped) -> bool {
        (!self.null, self.rank, self.at)
            .cmp(&(!other.null, other.rank, other.at))
            .then_with(|| self.value.to_string().cmp(&other.value.to_string()))
            == std::cmp::Ordering::Greater
    }
}

/// How far along the lifecycle each of an event's facts is, by the field's JSON name;
/// higher never yields to lower. The ranks are the types' own ([`SessionState`],
/// [`Channel`]); every other field ranks 0.
fn lifecycle_ranks(facts: &Session) -> [(&'static str, u8); 2] {
    [
        ("state", facts.state.map_or(0, SessionState::lifecycle_rank)),
        ("channel", facts.channel.map_or(0, Channel::lifecycle_rank)),
    ]
}

impl SessionRecord {
    /// Merges what one event says about the session, as of that event's time.
    pub fn merge(&mut self, facts: &Session, at: Timestamp) {
        let Ok(Value::Object(fields)) = serde_json::to_value(facts) else {
            unreachable!("a Session serialises to an object");
        };
        let ranks = lifecycle_ranks(facts);
        let rank_of = |name: &str| {
            ranks
                .iter()
                .find(|(field, _)| *field == name)
                .map_or(0, |(_, rank)| *rank)
        };
        for (name, value) in fields {
            if name == "id" {
                continue;
            }
            if KEYED_FIELDS.contains(&name.as_str()) {
                if let Value::Object(entries) = value {
                    for (key, value) in entries {
                        // Verbatim: a key the vendor sent as null is kept as null.
                        self.keep(format!("{name}.{key}"), value, 0, at);
                    }
                }
            } else {
                let rank = rank_of(&name);
                self.offer(name, value, rank, at);
            }
        }
    }

    /// A field's value; a null says nothing and is not kept.
    fn offer(&mut self, path: String, value: Value, rank: u8, at: Timestamp) {
        if !value.is_null() {
            self.keep(path, value, rank, at);
        }
    }

    /// A value, null included, under the stamp order.
    fn keep(&mut self, path: String, value: Value, rank: u8, at: Timestamp) {
        let candidate = Stamped {
            null: value.is_null(),
            rank,
            at,
            value,
        };
        match self.fields.get(&path) {
            Some(current) if !candidate.beats(current) => {}
            _ => {
                self.fields.insert(path, candidate);
            }
        }
    }

    /// Whether the session has ended: a closing state or an end time was said.
    pub fn has_ended(&self) -> bool {
        self.fields
            .get("state")
            .is_some_and(|s| s.rank == SessionState::Closed.lifecycle_rank())
            || self.fields.contains_key("endedAt")
    }

    /// The merged session as a canonical `session` object.
    pub fn session(&self, id: &str) -> Result<Session, serde_json::Error> {
        let mut object = Map::new();
        object.insert("id".into(), Value::String(id.to_owned()));
        for keyed in KEYED_FIELDS {
            object.insert(keyed.into(), Value::Object(Map::new()));
        }
        for (path, stamped) in &self.fields {
            match path.split_once('.') {
                Some((keyed, key)) if KEYED_FIELDS.contains(&keyed) => {
                    if let Some(Value::Object(entries)) = object.get_mut(keyed) {
                        entries.insert(key.to_owned(), stamped.value.clone());
                    }
                }
                _ => {
                    object.insert(path.clone(), stamped.value.clone());
                }
            }
        }
        serde_json::from_value(Value::Object(object))
    }
}

/// What committing an [`Inbound`] writes, given the session as stored.
pub enum AcceptPlan<'a> {
    /// A `session.finalized` for a session that is already finalized (say, from a second
    /// source of the same vendor): its facts join the record, nothing is emitted.
    AlreadyFinalized {
        record: SessionRecord,
        first: EventId,
    },
    Store {
        record: SessionRecord,
        finalized: Option<EventId>,
        /// Events to insert, each rendered with the record as of that event.
        events: Vec<(&'a NewEvent, String)>,
        /// A `session.finalized` held by a finalize wait that this request's own takes the
        /// place of: the backend deletes it (it was never delivered) and ends its job.
        supersedes: Option<EventId>,
    },
}

/// Whether a request is its vendor's completing event: it finalizes its session with an
/// event of its own (not one it implies, nor the stand-in its finalize wait holds).
pub fn finalizes(accept: &Inbound) -> bool {
    let stand_in = accept.jobs.iter().any(|j| {
        j.kind == crate::event::JobKind::Finalize && j.holds.contains(&EventType::SessionFinalized)
    });
    !stand_in
        && accept
            .events
            .iter()
            .any(|e| e.event_type == EventType::SessionFinalized && !e.implied)
}

/// Decides what an accepted request does to its session. Pure; the caller has read the
/// session as stored, checked that the request is not a duplicate, and writes the plan only
/// if the session has not changed since. `waiting`: the stored `finalized` is still held
/// by a finalize wait (the backend looks only when the request [`finalizes`]).
pub fn plan_accept(
    accept: &Inbound,
    mut record: SessionRecord,
    mut finalized: Option<EventId>,
    waiting: bool,
) -> Result<AcceptPlan<'_>, serde_json::Error> {
    // The vendor's completing event came within the wait: it finalizes the session, and
    // the event the wait held goes.
    let supersedes = if waiting && finalizes(accept) {
        finalized.take()
    } else {
        None
    };
    let primary = accept.primary();
    if primary.event_type == EventType::SessionFinalized
        && let Some(first) = finalized
    {
        record.merge(&primary.facts, primary.occurred_at);
        return Ok(AcceptPlan::AlreadyFinalized { record, first });
    }
    let mut events = Vec::with_capacity(accept.events.len());
    // The merged session after the previous event, and what that event said: an event
    // saying the same at the same instant (Agntix's session.ended and the session.finalized
    // it implies) merges to the same record, which is kept rather than merged and built again.
    let mut merged: Option<(&NewEvent, Session)> = None;
    for event in &accept.events {
        let same = merged.as_ref().is_some_and(|(previous, _)| {
            previous.occurred_at == event.occurred_at && previous.facts == event.facts
        });
        if !same {
            record.merge(&event.facts, event.occurred_at);
        }
        if event.event_type == EventType::SessionFinalized {
            if finalized.is_some() {
                if !same {
                    // The record moved on without a session built from it.
                    merged = None;
                }
                continue;
            }
            finalized = Some(event.id.clone());
        }
        let session = match merged.take() {
            Some((_, session)) if same => session,
            _ => record.session(&accept.session_id)?,
        };
        events.push((event, accept.render(event, &session)));
        merged = Some((event, session));
    }
    Ok(AcceptPlan::Store {
        record,
        finalized,
        events,
        supersedes,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{Channel, SessionState};
    use crate::vendors::test_support::{fixture, recognized};
    use crate::vendors::{Draft, Vendor};

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    fn drafts(vendor: Vendor, dir: &str, names: &[&str]) -> Vec<Draft> {
        names
            .iter()
            .map(|n| recognized(vendor, &fixture(dir, n)).events[0].clone())
            .collect()
    }

    fn merged(events: &[&Draft]) -> Session {
        let mut record = SessionRecord::default();
        for d in events {
            record.merge(&d.session, d.occurred_at);
        }
        record.session(&events[0].session.id).unwrap()
    }

    #[test]
    fn a_pathors_call_session_merges_into_one_complete_record() {
        let events = drafts(
            Vendor::Pathors,
            "pathors",
            &[
                "session-ended.json",
                "call-ended.json",
                "session-finalized-call.json",
                "recording-ready.json",
            ],
        );
        let s = merged(&events.iter().collect::<Vec<_>>());
        assert_eq!(s.channel, Some(Channel::Voice));
        assert_eq!(s.state, Some(SessionState::Closed));
        assert_eq!(s.ended_at, Some(ts("2026-05-03T08:42:11.512Z")));
        assert_eq!(s.message_count, Some(8));
        assert_eq!(
            s.project_id.as_deref(),
            Some("8f3e2c91-4a7b-4d6e-a23c-9b1f5e8d4c20")
        );
        assert_eq!(
            s.call.as_ref().unwrap().vendor_status.as_deref(),
            Some("userHangup")
        );
        assert!(s.recording.is_some());
        assert_eq!(
            Value::Object(s.extracted),
            json!({"name": "Nancy", "intention": "book a demo"})
        );
    }

    #[test]
    fn later_lifecycle_facts_win_even_against_later_clocks() {
        let mut open = Session {
            id: "s".into(),
            state: Some(SessionState::Open),
            ..Session::default()
        };
        let closed = Session {
            state: Some(SessionState::Closed),
            ..open.clone()
        };
        let mut record = SessionRecord::default();
        record.merge(&closed, ts("2026-01-01T00:00:00Z"));
        record.merge(&open, ts("2026-01-01T00:00:05Z"));
        assert_eq!(
            record.session("s").unwrap().state,
            Some(SessionState::Closed)
        );

        open.channel = Some(Channel::Chat);
        let voice = Session {
            channel: Some(Channel::Voice),
            ..Session::default()
        };
        let mut record = SessionRecord::default();
        record.merge(&voice, ts("2026-01-01T00:00:00Z"));
        record.merge(&open, ts("2026-01-01T00:00:09Z"));
        assert_eq!(record.session("s").unwrap().channel, Some(Channel::Voice));
    }

    #[test]
    fn null_never_erases_and_the_later_value_wins() {
        let mut record = SessionRecord::default();
        let early = Session {
            message_count: Some(3),
            current_node_id: Some("a".into()),
            extracted: json!({"name": "Nancy", "x": 1})
                .as_object()
                .unwrap()
                .clone(),
            ..Session::default()
        };
        let late = Session {
            message_count: Some(8),
            current_node_id: None,
            extracted: json!({"x": 2, "y": null}).as_object().unwrap().clone(),
            ..Session::default()
        };
        // Arrival order reversed on purpose: the later event arrives first.
        record.merge(&late, ts("2026-01-01T00:00:09Z"));
        record.merge(&early, ts("2026-01-01T00:00:01Z"));
        let s = record.session("s").unwrap();
        assert_eq!(s.message_count, Some(8));
        assert_eq!(s.current_node_id.as_deref(), Some("a"));
        // `y` was sent as null and no event gave it a value: kept verbatim, as null.
        assert_eq!(
            Value::Object(s.extracted),
            json!({"name": "Nancy", "x": 2, "y": null})
        );
    }

    #[test]
    fn variables_are_kept_verbatim_and_a_null_never_erases_a_value_in_any_order() {
        let vars = |v: Value| Session {
            variables: v.as_object().unwrap().clone(),
            ..Session::default()
        };
        let first = vars(json!({"nothing": null, "name": "Ada", "later": "set"}));
        let second = vars(json!({"later": null, "name": "Ada L."}));
        let (t1, t2) = (ts("2026-01-01T00:00:01Z"), ts("2026-01-01T00:00:09Z"));
        let mut forward = SessionRecord::default();
        forward.merge(&first, t1);
        forward.merge(&second, t2);
        let mut backward = SessionRecord::default();
        backward.merge(&second, t2);
        backward.merge(&first, t1);
        assert_eq!(forward, backward, "order-independent");
        assert_eq!(
            Value::Object(forward.session("s").unwrap().variables),
            json!({"nothing": null, "name": "Ada L.", "later": "set"})
        );
        // A record stored before nulls were kept reads back the same.
        let old: SessionRecord = serde_json::from_value(json!({"fields": {
            "variables.k": {"rank": 0, "at": "2026-01-01T00:00:01Z", "value": 1}
        }}))
        .unwrap();
        assert_eq!(
            Value::Object(old.session("s").unwrap().variables),
            json!({"k": 1})
        );
    }

    #[test]
    fn an_agntix_session_created_keeps_its_session_variables_as_sent() {
        let mut body: Value =
            serde_json::from_slice(&fixture("agntix", "session-created.json")).unwrap();
        body["metadata"]["sessionVariables"] =
            json!({"nothing": null, "n": 1, "deep": {"z": null}});
        let events = recognized(Vendor::Agntix, &serde_json::to_vec(&body).unwrap()).events;
        let mut record = SessionRecord::default();
        for d in &events {
            record.merge(&d.session, d.occurred_at);
        }
        assert_eq!(
            Value::Object(record.session("s").unwrap().variables),
            json!({"nothing": null, "n": 1, "deep": {"z": null}})
        );
    }

    #[test]
    fn merging_is_idempotent_and_survives_a_round_trip_through_json() {
        let events = drafts(
            Vendor::Agntix,
            "agntix",
            &["session-created.json", "session-ended.json"],
        );
        let mut record = SessionRecord::default();
        for d in events.iter().chain(events.iter()) {
            record.merge(&d.session, d.occurred_at);
        }
        let stored: SessionRecord =
            serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(stored, record);
        let s = stored
            .session("4981804c-2658-4893-84ff-9c2fa90fb3c2")
            .unwrap();
        assert_eq!(s.state, Some(SessionState::Closed));
        assert_eq!(s.started_at, Some(ts("2026-04-08T05:00:01.130Z")));
        assert!(s.analysis.is_some());
    }

    /// An Agntix session.ended: its session.ended and session.finalized say the same, and
    /// the second reuses the first's merged session. Each body must still be what merging
    /// every event on its own gives, for a new session and for one already recorded.
    #[test]
    fn events_saying_the_same_render_as_if_each_were_merged_on_its_own() {
        let created = drafts(Vendor::Agntix, "agntix", &["session-created.json"]);
        let ended = recognized(Vendor::Agntix, &fixture("agntix", "session-ended.json"));
        assert!(ended.events.len() >= 2, "ended implies finalized");
        // What makes the second reuse the first's session.
        assert_eq!(ended.events[0].session, ended.events[1].session);
        assert_eq!(ended.events[0].occurred_at, ended.events[1].occurred_at);
        let inbound = Inbound {
            source: "agntix".into(),
            vendor: "agntix".into(),
            session_id: ended.session_id.clone(),
            vendor_event_type: ended.vendor_event_type.clone(),
            message_id: None,
            recovered: false,
            received_at: ts("2026-04-08T05:10:00Z"),
            raw: b"{}".to_vec().into(),
            jobs: Vec::new(),
            events: ended
                .events
                .iter()
                .map(|d| NewEvent {
                    id: EventId::derive("agntix", &ended.session_id, "x", d.event_type),
                    event_type: d.event_type,
                    occurred_at: d.occurred_at,
                    facts: d.session.clone(),
                    targets: vec![],
                    implied: false,
                })
                .collect(),
        };
        let mut before = SessionRecord::default();
        before.merge(&created[0].session, created[0].occurred_at);
        for start in [SessionRecord::default(), before] {
            let AcceptPlan::Store { events, record, .. } =
                plan_accept(&inbound, start.clone(), None, false).unwrap()
            else {
                panic!("a new session is stored");
            };
            let mut naive = start;
            for (event, body) in &events {
                naive.merge(&event.facts, event.occurred_at);
                let session = naive.session(&inbound.session_id).unwrap();
                assert_eq!(body, &inbound.render(event, &session));
            }
            assert_eq!(record, naive);
            assert_eq!(events.len(), inbound.events.len());
        }
    }
}
