//! Jobs as the store keeps them: what a request leaves behind, and how a run ends.

use serde::Serialize;

use crate::event::{EventId, Inbound, JobKind, NewEvent, Session, Timestamp};

/// The events a job holds back: each one's id and the targets its deliveries go to once
/// the job has ended (stored with the job as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Hold {
    pub event: String,
    pub targets: Vec<String>,
}

/// A pending job handed to the job worker under a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub id: String,
    pub kind: JobKind,
    pub source: String,
    pub vendor: String,
    pub session_id: String,
    /// Runs before this one.
    pub attempts: u32,
    pub deadline: Timestamp,
    pub lease_token: i64,
    /// What the last run said, if it failed.
    pub last_error: Option<String>,
}

/// How a job run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    /// Merge `facts` into the session (at the job's event time), re-render the held events
    /// with it and make their deliveries.
    Done { facts: Box<Session> },
    /// Try again at `unix_ms` (never after the deadline).
    RetryAt { unix_ms: i64, error: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub id: String,
    pub lease_token: i64,
    pub end: JobEnd,
}

/// The job id a request's job is stored under: one per vendor event, like its events.
pub fn job_id(first_event: &EventId) -> String {
    format!("job_{}", first_event.as_str().trim_start_matches("evt_"))
}

/// The id of the event whose request left job `job_id` (the inverse of [`job_id`]).
pub fn event_of_job(job_id: &str) -> String {
    format!("evt_{}", job_id.trim_start_matches("job_"))
}

/// Which of a request's stored events its job holds back, with their targets.
pub(crate) fn holds(accept: &Inbound, events: &[(&NewEvent, String)]) -> Vec<Hold> {
    let Some(job) = &accept.job else {
        return Vec::new();
    };
    events
        .iter()
        .filter(|(e, _)| job.holds.contains(&e.event_type))
        .map(|(e, _)| Hold {
            event: e.id.as_str().to_owned(),
            targets: e.targets.clone(),
        })
        .collect()
}

/// The `session.finalized` of a request that would go out at once (its own job does not
/// hold it): if the session has an archive or a transcript fetch still running, it waits
/// for that job instead, so that it carries the result (the backends look that job up
/// only when there is such an event).
pub(crate) fn finalized_to_hold<'a>(
    events: &[(&'a NewEvent, String)],
    held: &[Hold],
) -> Option<&'a NewEvent> {
    events.iter().map(|(e, _)| *e).find(|e| {
        e.event_type == crate::event::EventType::SessionFinalized
            && !held.iter().any(|h| h.event == e.id.as_str())
    })
}

/// The pending jobs a session's `session.finalized` waits for, by kind.
pub(crate) const ENRICHMENT_KINDS: &str = "('recording', 'transcript')";

/// A held event's body re-rendered around the session as it now is.
pub(crate) fn rerender(body: &str, session: &Session) -> Result<String, serde_json::Error> {
    let mut event: serde_json::Value = serde_json::from_str(body)?;
    event["session"] = serde_json::to_value(session)?;
    serde_json::to_string(&event)
}
