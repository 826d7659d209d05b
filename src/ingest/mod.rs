//! `POST /ingest/{source}`: receive, authenticate, normalise, commit, answer.
//!
//! Everything shared by all vendors lives here: the source lookup, the body limit and read
//! timeout, authentication ([`crate::auth`]), ids and receive times, target matching, and the
//! answers of the README's "Answers" table. The answer is sent only after the store has
//! durably committed the event and its deliveries. Vendor specifics stay in
//! [`crate::vendors`].

pub mod connections;
pub mod recover;
pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::Instrument;

use self::settings::Source;
use crate::clock::Clock;
use crate::delivery::Dispatcher;
use crate::delivery::target::Target;
use crate::error::ApiError;
use crate::event::{EventId, EventType, Inbound, JobKind, NewEvent, NewJob, Timestamp};
use crate::metrics::{IngestResult, Metrics, UNKNOWN_SOURCE};
use crate::store::{IngestOutcome, Receipt, ReceiptOutcome, Store, StoreError};
use crate::telemetry::chain;
use crate::vendors::{Normalized, Recognized, printable};

/// Body bytes all requests together may buffer at once (`server.max_body_bytes_in_flight`),
/// so that many large bodies cannot exhaust memory. Permits are bytes. Half is for requests
/// whose head already authenticated them (a shared header), half for those whose signature
/// can only be checked over the body: senders without credentials can fill only their half,
/// and never hold up an authenticated vendor.
pub struct BodyBudget {
    authenticated: Semaphore,
    unverified: Semaphore,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            authenticated: Semaphore::new(bytes / 2),
            unverified: Semaphore::new(bytes - bytes / 2),
        }
    }

    fn for_source(&self, source: &Source) -> &Semaphore {
        if source.auth.authenticates_from_head() {
            &self.authenticated
        } else {
            &self.unverified
        }
    }
}

/// What the ingest handler needs, shared by all HTTP workers.
pub struct IngestState {
    pub sources: HashMap<String, Source>,
    pub targets: Vec<Arc<Target>>,
    pub store: Arc<dyn Store>,
    pub dispatcher: Dispatcher,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    pub body_budget: BodyBudget,
    pub body_timeout: Duration,
    pub clock: Clock,
    /// Wakes the job worker after a request left a job behind.
    pub jobs: Arc<tokio::sync::Notify>,
    /// With `[recordings]`: the longest an archive may wait after receipt (`max_wait`).
    pub archive_recordings: Option<Duration>,
    /// What the latest commits came to, for `/readyz`.
    pub commits: Arc<Commits>,
}

/// What ingest's latest commits came to: readiness follows the store's ability to commit,
/// which a read-only ping does not show (a full disk reads fine).
#[derive(Debug, Default)]
pub struct Commits {
    /// Unix ms of the latest commit that succeeded, and of the latest that failed.
    last_ok: std::sync::atomic::AtomicI64,
    last_failed: std::sync::atomic::AtomicI64,
}

impl Commits {
    pub fn record<T, E>(&self, now_ms: i64, result: &Result<T, E>) {
        use std::sync::atomic::Ordering::Relaxed;
        match result {
            Ok(_) => self.last_ok.fetch_max(now_ms, Relaxed),
            Err(_) => self.last_failed.fetch_max(now_ms, Relaxed),
        };
    }

    /// Whether the latest commit failed less than `window` ago, none succeeding since. After
    /// the window the gateway says it is ready again and the next request tells.
    pub fn failing(&self, now_ms: i64, window: Duration) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let failed = self.last_failed.load(Relaxed);
        failed > self.last_ok.load(Relaxed) && now_ms - failed < window.as_millis() as i64
    }
}

/// The JSON body ingest answers a vendor with.
#[derive(Serialize)]
struct IngestReply<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a EventId>,
}

/// How a request that passed every check ended.
enum Outcome {
    Accepted(EventId),
    Duplicate(EventId),
    Ignored(Option<String>),
}

pub async fn ingest(
    path: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<IngestState>,
) -> Result<HttpResponse, ApiError> {
    // Only a configured name reaches logs and labels: the path is the sender's text.
    let source = match state.sources.get_key_value(path.as_str()) {
        Some((name, _)) => name.as_str(),
        None => UNKNOWN_SOURCE,
    };
    let span = tracing::info_span!("ingest", source);
    ingest_as(source, &path, request, payload, &state)
        .instrument(span)
        .await
}

async fn ingest_as(
    source: &str,
    path: &str,
    request: HttpRequest,
    payload: web::Payload,
    state: &IngestState,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = handle(path, &request, payload, state).await;
    let elapsed = started.elapsed();
    match result {
        Ok(Outcome::Accepted(id)) => {
            state
                .metrics
                .ingested(source, IngestResult::Accepted(&id), elapsed);
            Ok(HttpResponse::Accepted().json(IngestReply {
                status: "accepted",
                id: Some(&id),
            }))
        }
        Ok(Outcome::Duplicate(id)) => {
            state
                .metrics
                .ingested(source, IngestResult::Duplicate(&id), elapsed);
            Ok(HttpResponse::Ok().json(IngestReply {
                status: "duplicate",
                id: Some(&id),
            }))
        }
        Ok(Outcome::Ignored(vendor_event_type)) => {
            state.metrics.ingested(
                source,
                IngestResult::Ignored(vendor_event_type.as_deref()),
                elapsed,
            );
            Ok(HttpResponse::Accepted().json(IngestReply {
                status: "ignored",
                id: None,
            }))
        }
        Err(e) => {
            let (message, internal) = match &e {
                ApiError::Unavailable(cause) => (chain(cause), true),
                other => (other.to_string(), false),
            };
            state.metrics.ingested(
                source,
                IngestResult::Rejected {
                    reason: e.code(),
                    message: &message,
                    internal,
                },
                elapsed,
            );
            Err(e)
        }
    }
}

async fn handle(
    source_name: &str,
    request: &HttpRequest,
    payload: web::Payload,
    state: &IngestState,
) -> Result<Outcome, ApiError> {
    let source = state
        .sources
        .get(source_name)
        .ok_or_else(|| ApiError::UnknownSource(printable(source_name, 64)))?;
    // Refuse what the head already shows to be unauthenticated before reading any body.
    source.auth.check_head(request.headers())?;
    let budget = state.body_budget.for_source(source);
    let limit = source.max_body_bytes.unwrap_or(state.max_body_bytes);
    let (body, _reserved) = read_body(request, payload, budget, limit, state).await?;
    let received_at = Timestamp::from_unix_millis(state.clock.now_ms());
    let verified = source.auth.verify(request.headers(), body)?;
    let message_id = verified.message_id().map(str::to_owned);
    // As stored and delivered: a form-encoded vendor's parameters as JSON.
    let raw = source.vendor.raw(verified.bytes());

    match source.normalize(&verified, received_at)? {
        Normalized::Ignored { vendor_event_type } => {
            let receipt = state
                .store
                .record_receipt(Receipt {
                    outcome: ReceiptOutcome::Ignored,
                    source: source.name.clone(),
                    vendor_event_type: vendor_event_type.clone(),
                    message_id,
                    received_at,
                    raw: raw.clone(),
                    repeats: None,
                })
                .await;
            state.commits.record(state.clock.now_ms(), &receipt);
            receipt.map_err(ApiError::Unavailable)?;
            Ok(Outcome::Ignored(vendor_event_type))
        }
        Normalized::Events(recognized) => {
            let vendor_event_type = recognized.vendor_event_type.clone();
            let arrival = Arrival {
                message_id: message_id.clone(),
                received_at,
                raw: raw.clone(),
                recovered: false,
                finalize_wait: source.finalize_wait,
            };
            let accept = build_accept(
                source,
                recognized,
                arrival,
                &state.targets,
                state.archive_recordings,
            );
            let committed = commit(state, accept).await;
            state.commits.record(state.clock.now_ms(), &committed);
            match committed? {
                IngestOutcome::Accepted { id, .. } => Ok(Outcome::Accepted(id)),
                IngestOutcome::Duplicate { id } => {
                    // The event is stored already, so the vendor hears "duplicate" even if
                    // this audit row cannot be written.
                    let receipt = Receipt {
                        outcome: ReceiptOutcome::Duplicate,
                        source: source.name.clone(),
                        vendor_event_type: Some(vendor_event_type),
                        message_id,
                        received_at,
                        raw: raw.clone(),
                        repeats: Some(id.as_str().to_owned()),
                    };
                    if let Err(e) = state.store.record_receipt(receipt).await {
                        tracing::warn!(error = %crate::telemetry::chain(&e), "Cannot keep the receipt of a duplicate");
                    }
                    Ok(Outcome::Duplicate(id))
                }
            }
        }
    }
}

/// Commits an accepted request and passes its deliveries to their workers, in a task of its
/// own: if the vendor hangs up meanwhile, the commit still hands its deliveries over (left
/// behind, they would wait for their lease to end before a worker claims them).
async fn commit(state: &IngestState, accept: Inbound) -> Result<IngestOutcome, ApiError> {
    let store = state.store.clone();
    let dispatcher = state.dispatcher.clone();
    let jobs = state.jobs.clone();
    actix_web::rt::spawn(async move { commit_now(&*store, &dispatcher, &jobs, accept).await })
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))
        .flatten()
        .map_err(ApiError::Unavailable)
}

/// Commits an accept and hands its deliveries to their workers, waking the job worker
/// when it left a job behind: what every accepted event goes through, received or
/// recovered.
pub(crate) async fn commit_now(
    store: &dyn Store,
    dispatcher: &Dispatcher,
    jobs: &tokio::sync::Notify,
    accept: Inbound,
) -> Result<IngestOutcome, StoreError> {
    let (slots, handoff) = dispatcher.reserve(&accept);
    // A job left behind, or one this request may have made due (a finalize wait
    // that waited for the session's end).
    let left_a_job = !accept.jobs.is_empty()
        || accept
            .events
            .iter()
            .any(|e| e.event_type == EventType::SessionEnded);
    let mut outcome = store.accept_handing_over(accept, handoff).await?;
    if let IngestOutcome::Accepted {
        targets, handed, ..
    } = &mut outcome
    {
        dispatcher.hand_over(slots, std::mem::take(handed));
        for target in targets.iter() {
            dispatcher.notify(target);
        }
        if left_a_job {
            jobs.notify_one();
        }
    }
    Ok(outcome)
}

/// How a vendor's body came to the gateway: what [`build_accept`] needs besides what the
/// adapter recognised in it.
pub struct Arrival {
    pub message_id: Option<String>,
    pub received_at: Timestamp,
    /// As stored and delivered.
    pub raw: Bytes,
    /// Recovered from the vendor's list API ([`crate::recovery`]).
    pub recovered: bool,
    /// How long its `session.finalized` waits for a completing event after the end: the
    /// source's `finalize_wait` for a webhook; zero for a recovered call whose vendor has
    /// said all it will.
    pub finalize_wait: Option<Duration>,
}

/// Stamps ids on a vendor's drafts, picks each event's targets and the job the request
/// leaves behind, if any (`archive_recordings`: `[recordings]` is set). The store merges
/// the facts into the session record and renders the events in its transaction.
///
/// A request that ends its session without finalizing it, from a source with a
/// `finalize_wait`, also carries the `session.finalized` the wait may release: held by a
/// finalize job due when the wait ends (at once for a wait of zero).
pub fn build_accept(
    source: &Source,
    recognized: Recognized,
    arrival: Arrival,
    targets: &[Arc<Target>],
    archive_recordings: Option<Duration>,
) -> Inbound {
    let Arrival {
        message_id,
        received_at,
        raw,
        recovered,
        finalize_wait,
    } = arrival;
    let new_event = |key: &str, event_type: EventType, occurred_at, facts, implied| NewEvent {
        id: EventId::derive(&source.name, &recognized.session_id, key, event_type),
        event_type,
        occurred_at,
        facts,
        targets: targets
            .iter()
            .filter(|t| t.accepts(&source.name, event_type))
            .map(|t| t.name.clone())
            .collect(),
        implied,
    };
    let key = recognized.duplicate_key.as_str();
    let mut events = recognized
        .events
        .into_iter()
        .map(|draft| {
            let implied = draft.implied_by.is_some();
            new_event(
                draft.implied_by.as_deref().unwrap_or(key),
                draft.event_type,
                draft.occurred_at,
                draft.session,
                implied,
            )
        })
        .collect::<Vec<_>>();
    let has = |events: &[NewEvent], t: EventType| events.iter().any(|e| e.event_type == t);
    let mut jobs = Vec::new();
    if let Some(wait) = finalize_wait
        && !has(&events, EventType::SessionFinalized)
        && let Some(ended) = events
            .iter()
            .find(|e| e.event_type == EventType::SessionEnded)
    {
        let finalized = new_event(
            key,
            EventType::SessionFinalized,
            ended.occurred_at,
            ended.facts.clone(),
            false,
        );
        events.push(finalized);
        if !wait.is_zero() {
            jobs.push(NewJob {
                kind: JobKind::Finalize,
                deadline: received_at.plus_millis(wait.as_millis() as i64),
                holds: vec![EventType::SessionFinalized],
            });
        }
    }
    // A completing event that carries too little to stand alone waits for the end.
    if recognized.waits_for_end
        && let Some(wait) = finalize_wait.filter(|w| !w.is_zero())
    {
        jobs.push(NewJob {
            kind: JobKind::AwaitEnd,
            deadline: received_at.plus_millis(wait.as_millis() as i64),
            holds: vec![EventType::SessionFinalized],
        });
    }
    // An event waits for one job at most: a finalize wait's event is not also held by
    // the archive (which starts at once all the same; the store lets one archive run per
    // session, and a session.finalized committed while it runs joins it).
    let waited_for: Vec<EventType> = jobs.iter().flat_map(|j| j.holds.clone()).collect();
    let archive = archive_recordings.filter(|_| source.vendor.archives_recordings());
    jobs.extend(
        transcript_job(source, &events, received_at)
            .or_else(|| recording_job(&events, received_at, archive)),
    );
    for job in jobs
        .iter_mut()
        .filter(|j| !matches!(j.kind, JobKind::Finalize | JobKind::AwaitEnd))
    {
        job.holds.retain(|t| !waited_for.contains(t));
    }
    Inbound {
        source: source.name.clone(),
        vendor: source.vendor.as_str().to_owned(),
        session_id: recognized.session_id,
        vendor_event_type: recognized.vendor_event_type,
        message_id,
        recovered,
        received_at,
        raw,
        jobs,
        events,
    }
}

/// With `[recordings]`, a request whose own events carry a recording (a URL, or audio in
/// the body) leaves an archive job behind, due by the URL's expiry but never later than
/// `max_wait` after receipt (the expiry comes from the sender's clock); its
/// `recording.ready` or `session.finalized` carrying the recording waits for it.
fn recording_job(
    events: &[NewEvent],
    received_at: Timestamp,
    max_wait: Option<Duration>,
) -> Option<NewJob> {
    let max_wait = max_wait?;
    let carrying = |e: &&NewEvent| {
        !e.implied
            && e.facts.recording.as_ref().is_some_and(|r| {
                r.status == crate::event::RecordingStatus::Ready && (r.url.is_some() || r.in_body)
            })
    };
    let event = events.iter().find(carrying)?;
    let latest = received_at.plus_millis(max_wait.as_millis() as i64);
    let expires_at = event.facts.recording.as_ref().and_then(|r| r.expires_at);
    let mut holds: Vec<EventType> = events
        .iter()
        .filter(carrying)
        .map(|e| e.event_type)
        .filter(|t| matches!(t, EventType::RecordingReady | EventType::SessionFinalized))
        .collect();
    holds.dedup();
    Some(NewJob {
        kind: JobKind::Recording,
        deadline: expires_at.map_or(latest, |e| e.min(latest)),
        holds,
    })
}

/// A request that finalizes a session of a source that fetches transcripts (Agntix's
/// `session.ended`) leaves a transcript job behind, and its `session.finalized` waits for
/// it (at most `wait_ms`).
fn transcript_job(source: &Source, events: &[NewEvent], received_at: Timestamp) -> Option<NewJob> {
    let transcripts = source.transcripts.as_ref()?;
    events
        .iter()
        .any(|e| e.event_type == EventType::SessionFinalized)
        .then(|| NewJob {
            kind: JobKind::Transcript,
            deadline: received_at.plus_millis(transcripts.wait.as_millis() as i64),
            holds: vec![EventType::SessionFinalized],
        })
}

/// Reads the whole body within `body_timeout`, refusing it as soon as it is known to exceed
/// `limit` (the source's `max_body_bytes`, else the server's). The bytes are first reserved from the source's share of the body budget (the declared
/// length, else the limit); the reservation is held for as long as the body is.
async fn read_body<'a>(
    request: &HttpRequest,
    mut payload: web::Payload,
    budget: &'a Semaphore,
    limit: usize,
    state: &IngestState,
) -> Result<(Bytes, SemaphorePermit<'a>), ApiError> {
    let timeout = state.body_timeout;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let deadline = tokio::time::Instant::now() + timeout;
    // `max_body_bytes_in_flight` is checked to fit in u32 and to hold `limit` in each half.
    let reserve = declared.unwrap_or(limit).max(1) as u32;
    let permit = match tokio::time::timeout_at(deadline, budget.acquire_many(reserve)).await {
        Ok(Ok(permit)) => permit,
        // Waiting for room is the gateway's state, not the sender's fault: retryable.
        Ok(Err(_)) | Err(_) => return Err(ApiError::Overloaded),
    };
    let read = async {
        let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::UnreadableBody(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body.freeze(), permit))
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout.as_millis() as u64))?
}

/// A webhook's arrival now, for tests.
#[cfg(test)]
fn arrival(source: &Source) -> Arrival {
    Arrival {
        message_id: None,
        received_at: Timestamp::now(),
        raw: Bytes::new(),
        recovered: false,
        finalize_wait: source.finalize_wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Recording, RecordingStatus, Session};

    fn recording_ready(expires_at: Option<Timestamp>) -> NewEvent {
        NewEvent {
            id: EventId::derive(
                "pathors",
                "s1",
                "recording.ready",
                EventType::RecordingReady,
            ),
            event_type: EventType::RecordingReady,
            occurred_at: Timestamp::now(),
            facts: Session {
                recording: Some(Recording {
                    status: RecordingStatus::Ready,
                    url: Some("https://recordings.example/1.wav".into()),
                    expires_at,
                    archive: None,
                    in_body: false,
                }),
                ..Session::default()
            },
            targets: vec![],
            implied: false,
        }
    }

    #[test]
    fn commits_fail_readiness_until_one_succeeds_or_the_window_passes() {
        let commits = Commits::default();
        let window = Duration::from_secs(30);
        assert!(!commits.failing(1_000, window));
        commits.record::<(), ()>(1_000, &Err(()));
        assert!(commits.failing(1_000, window));
        assert!(commits.failing(30_999, window));
        assert!(!commits.failing(31_000, window), "the window passed");
        commits.record::<(), ()>(2_000, &Ok(()));
        assert!(!commits.failing(2_000, window), "a commit succeeded since");
    }

    #[test]
    fn an_archive_waits_at_most_max_wait_whatever_the_sender_says() {
        let received = Timestamp::now();
        let day = Duration::from_secs(86_400);
        // A sender dated its event in the year 9000: its URL "expires" then.
        let far = Timestamp::parse("9000-01-01T00:00:00Z").unwrap();
        let job = recording_job(&[recording_ready(Some(far))], received, Some(day)).unwrap();
        assert_eq!(job.deadline, received.plus_seconds(86_400));
        // An earlier expiry stands.
        let soon = received.plus_seconds(600);
        let job = recording_job(&[recording_ready(Some(soon))], received, Some(day)).unwrap();
        assert_eq!(job.deadline, soon);
        assert!(recording_job(&[recording_ready(Some(soon))], received, None).is_none());
    }
}

#[cfg(test)]
mod audio_tests {
    use super::*;
    use crate::vendors::Vendor;
    use crate::vendors::test_support::recognized;

    #[test]
    fn audio_in_the_body_leaves_an_archive_job_that_holds_its_recording_ready() {
        let r = recognized(
            Vendor::ElevenLabs,
            &crate::testing::fixture("elevenlabs", "post-call-audio.json"),
        );
        let source = Source {
            name: "elevenlabs".into(),
            vendor: Vendor::ElevenLabs,
            auth: crate::auth::SourceAuth::None,
            transcripts: None,
            max_body_bytes: None,
            finalize_wait: None,
            recordings_auth: None,
            mapping: None,
            recover: None,
        };
        let accept = build_accept(
            &source,
            r,
            arrival(&source),
            &[],
            Some(Duration::from_secs(60)),
        );
        assert_eq!(accept.jobs.len(), 1);
        let job = &accept.jobs[0];
        assert_eq!(job.kind, JobKind::Recording);
        assert_eq!(job.holds, [EventType::RecordingReady]);
    }
}

#[cfg(test)]
mod await_end_tests {
    use super::*;
    use crate::vendors::Vendor;
    use crate::vendors::test_support::recognized;

    #[test]
    fn a_delayed_bland_post_call_waits_for_the_end() {
        let r = recognized(
            Vendor::Bland,
            &crate::testing::fixture("bland", "post-call-delayed.json"),
        );
        let source = Source {
            name: "bland".into(),
            vendor: Vendor::Bland,
            auth: crate::auth::SourceAuth::None,
            transcripts: None,
            max_body_bytes: None,
            finalize_wait: Vendor::Bland.finalize_wait(),
            recordings_auth: None,
            mapping: None,
            recover: None,
        };
        let accept = build_accept(&source, r, arrival(&source), &[], None);
        assert_eq!(accept.jobs.len(), 1);
        assert_eq!(accept.jobs[0].kind, JobKind::AwaitEnd);
        assert_eq!(accept.jobs[0].holds, [EventType::SessionFinalized]);
        assert!(
            crate::sessions::finalizes(&accept),
            "its own, not a stand-in"
        );
    }
}
