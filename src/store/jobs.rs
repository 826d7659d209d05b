//! Jobs as the store keeps them: what a request leaves behind, and how a run ends.

use serde::Serialize;

use crate::event::{EventId, EventType, Inbound, JobKind, NewEvent, NewJob, Session, Timestamp};

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

/// The id a request's job of `kind` is stored under: one per vendor event and kind, like
/// its events.
pub fn job_id(first_event: &EventId, kind: JobKind) -> String {
    format!(
        "job_{}_{}",
        first_event.as_str().trim_start_matches("evt_"),
        kind.as_str()
    )
}

/// The id of the event whose request left job `job_id` (the inverse of [`job_id`]; ids
/// stored before jobs were named by kind too have no `_kind`).
pub fn event_of_job(job_id: &str) -> String {
    let hex = job_id.trim_start_matches("job_");
    format!("evt_{}", hex.split('_').next().unwrap_or(hex))
}

/// A session's archive and transcript jobs as stored, as far as a commit needs them.
#[derive(Debug, Default)]
pub(crate) struct SessionJobs {
    /// A pending archive of the session, and a pending transcript fetch (ids).
    pub recording: Option<String>,
    pub transcript: Option<String>,
    /// An archive of the session has ended: the recording is in the record already.
    pub archived: bool,
}

impl SessionJobs {
    /// From `(id, kind, status)` rows of the session's recording and transcript jobs.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, String, String)>) -> SessionJobs {
        let mut jobs = SessionJobs::default();
        for (id, kind, status) in rows {
            match (kind.as_str(), status.as_str()) {
                ("recording", "pending") => jobs.recording = jobs.recording.or(Some(id)),
                ("transcript", "pending") => jobs.transcript = jobs.transcript.or(Some(id)),
                ("recording", _) => jobs.archived = true,
                _ => {}
            }
        }
        jobs
    }
}

/// The statement both stores read a session's archive and transcript jobs with
/// ([`SessionJobs::from_rows`]); `?N` placeholders are `$N` on PostgreSQL.
pub(crate) const SESSION_JOBS: &str = "SELECT id, kind, status FROM jobs
     WHERE vendor = ?1 AND session_id = ?2 AND kind IN ('recording', 'transcript')";

impl SessionJobs {
    /// Where the events a job of `kind` held go when it ends: a finalize wait's
    /// `session.finalized` waits on for an archive or transcript fetch of its session still
    /// running (that job's id), so that it carries the result.
    pub fn hand_on(&self, kind: JobKind) -> Option<&str> {
        match kind {
            JobKind::Finalize | JobKind::AwaitEnd => {
                self.recording.as_deref().or(self.transcript.as_deref())
            }
            JobKind::Recording | JobKind::Transcript => None,
        }
    }
}

/// What a commit does about jobs.
#[derive(Debug, Default)]
pub(crate) struct JobPlan<'a> {
    /// The request's jobs to insert, each with the events it holds.
    pub insert: Vec<(&'a NewJob, Vec<Hold>)>,
    /// Holds added to a pending job of the session (its id): the request's archive when
    /// one runs already (one archive per session), and a `session.finalized` committed
    /// while an archive or transcript fetch of its session runs, so it carries the result.
    pub join: Option<(String, Vec<Hold>)>,
}

impl JobPlan<'_> {
    /// Whether `event`'s deliveries wait for a job.
    pub fn holds(&self, event: &EventId) -> bool {
        self.insert
            .iter()
            .flat_map(|(_, holds)| holds)
            .chain(self.join.iter().flat_map(|(_, holds)| holds))
            .any(|h| h.event == event.as_str())
    }
}

fn hold(event: &NewEvent) -> Hold {
    Hold {
        event: event.id.as_str().to_owned(),
        targets: event.targets.clone(),
    }
}

/// Whether a request ends its session (an own `session.ended`): its commit makes the
/// session's [`JobKind::AwaitEnd`] jobs due at once.
pub(crate) fn ends_session(accept: &Inbound) -> bool {
    accept
        .events
        .iter()
        .any(|e| e.event_type == EventType::SessionEnded && !e.implied)
}

/// Whether [`plan_jobs`] needs the session's jobs: the request leaves an archive, or has a
/// `session.finalized` none of its own jobs holds.
pub(crate) fn needs_session_jobs(accept: &Inbound, events: &[(&NewEvent, String)]) -> bool {
    accept.jobs.iter().any(|j| j.kind == JobKind::Recording)
        || events.iter().any(|(e, _)| {
            e.event_type == EventType::SessionFinalized
                && !accept.jobs.iter().any(|j| j.holds.contains(&e.event_type))
        })
}

/// Decides, from the session's jobs as stored, which of the request's jobs are inserted
/// and which holds join a running job. Pure; the backends write it in the request's commit.
///
/// `ended_before`: the session had ended before this request (its record as read). A
/// finalize wait of a request that does not end the session is then moot: its
/// `session.finalized` waited for the end only ([`crate::vendors::Recognized::waits_for_end`]).
pub(crate) fn plan_jobs<'a>(
    accept: &'a Inbound,
    events: &[(&NewEvent, String)],
    session: &SessionJobs,
    ended_before: bool,
) -> JobPlan<'a> {
    let ends = ends_session(accept);
    let holds_of = |job: &NewJob| -> Vec<Hold> {
        events
            .iter()
            .filter(|(e, _)| job.holds.contains(&e.event_type))
            .map(|(e, _)| hold(e))
            .collect()
    };
    let mut plan = JobPlan::default();
    let mut joining: Vec<Hold> = Vec::new();
    for job in &accept.jobs {
        let holds = holds_of(job);
        match job.kind {
            // Its event was not stored (the session is finalized already): nothing waits.
            JobKind::Finalize | JobKind::AwaitEnd if holds.is_empty() => {}
            JobKind::AwaitEnd if ended_before && !ends => {}
            JobKind::Recording if session.recording.is_some() => joining.extend(holds),
            // Archived already: the record carries it, and the events go out now.
            JobKind::Recording if session.archived => {}
            _ => plan.insert.push((job, holds)),
        }
    }
    if let Some(target) = session.recording.clone().or(session.transcript.clone()) {
        let finalized = events.iter().map(|(e, _)| *e).find(|e| {
            e.event_type == EventType::SessionFinalized
                && !plan.holds(&e.id)
                && !joining.iter().any(|h| h.event == e.id.as_str())
        });
        joining.extend(finalized.map(hold));
        if !joining.is_empty() {
            plan.join = Some((target, joining));
        }
    }
    plan
}

/// A held event's body re-rendered around the session as it now is.
pub(crate) fn rerender(body: &str, session: &Session) -> Result<String, serde_json::Error> {
    let mut event: serde_json::Value = serde_json::from_str(body)?;
    event["session"] = serde_json::to_value(session)?;
    serde_json::to_string(&event)
}
