//! Enrichment: stored jobs that complete a session from outside its webhooks: the Agntix
//! transcript ([`transcripts`]), which `session.finalized` waits for, the recording
//! archive ([`recordings`]), which the event carrying the recording waits for, and the
//! finalize wait, which holds a `session.finalized` for the vendor's completing event.
//!
//! Jobs are committed with the request that leaves them ([`crate::event::NewJob`]), so a
//! crash or restart loses none. One worker claims due jobs of each kind into that kind's
//! own slots under a lease, runs them, renews the lease while a run lasts, and ends each
//! with [`Store::finish_job`], which releases the events it held; their targets' delivery
//! workers are woken. A run that dies lets its lease lapse: the job is due again behind the
//! jobs already waiting, with that run counted as an attempt. A job past its deadline ends
//! with what is known.

pub mod hosts;
pub mod recordings;
pub mod settings;
pub mod transcripts;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::recordings::{Archiver, Downloaded};
use self::transcripts::Fetched;
use crate::clock::Clock;
use crate::delivery::Dispatcher;
use crate::event::{Archive, JobKind, Recording, Session, Transcript, TranscriptStatus};
use crate::ingest::settings::Transcripts;
use crate::metrics::Metrics;
use crate::store::{ClaimedJob, JobEnd, JobResult, Store};
use crate::telemetry::chain;

/// Jobs of each kind run at once. Each kind has its own slots, so a transcript wait (a
/// few seconds, which a `session.finalized` waits on) never queues behind downloads.
const CONCURRENCY: usize = 8;
const KINDS: [JobKind; 4] = [
    JobKind::Transcript,
    JobKind::Recording,
    JobKind::Finalize,
    JobKind::AwaitEnd,
];
/// How long a claimed job is this worker's unless renewed, when `[recordings]` does not say.
const LEASE: Duration = Duration::from_secs(60);
/// One request to a vendor API.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between looks at the store for work nobody announced.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// First and largest pause between the runs of a failing job (never past its deadline).
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

pub struct Enricher {
    store: Arc<dyn Store>,
    transcripts: HashMap<String, Arc<Transcripts>>,
    /// Where recordings are archived, and how they are fetched.
    recordings: Option<Archiver>,
    dispatcher: Dispatcher,
    clock: Clock,
    client: reqwest::Client,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// A run holds its job this long, and renews it every third of it while it lasts.
    lease: Duration,
    /// Runs in flight, by kind (`KINDS` order).
    running: [AtomicUsize; 3],
}

/// What a run came to, told (logged and counted) once its end is recorded: a run whose
/// lease passed on tells nothing, so a recording is counted once however often it ran.
enum Outcome {
    Silent,
    Archived(u64),
    NotArchived(String),
}

fn slot(kind: JobKind) -> usize {
    match kind {
        JobKind::Transcript => 0,
        JobKind::Recording => 1,
        JobKind::Finalize | JobKind::AwaitEnd => 2,
    }
}

/// Frees a run's slot however the run ends (a panic too).
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Enricher {
    /// `transcripts`: each source that fetches them, by name; `lease`: how long a run holds
    /// its job between renewals (`[recordings] lease`).
    pub fn new(
        store: Arc<dyn Store>,
        transcripts: HashMap<String, Arc<Transcripts>>,
        recordings: Option<Archiver>,
        dispatcher: Dispatcher,
        clock: Clock,
        metrics: Arc<Metrics>,
        lease: Option<Duration>,
    ) -> anyhow::Result<Enricher> {
        Ok(Enricher {
            store,
            transcripts,
            recordings,
            dispatcher,
            clock,
            client: crate::delivery::outputs::http::client()?,
            wake: Arc::new(Notify::new()),
            metrics,
            lease: lease.unwrap_or(LEASE),
            running: [
                AtomicUsize::new(0),
                AtomicUsize::new(0),
                AtomicUsize::new(0),
            ],
        })
    }

    /// Wakes the worker after a job was committed.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs jobs until `stop` turns true, then lets the runs in flight end.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut running: JoinSet<()> = JoinSet::new();
        while !*stop.borrow() {
            while running.try_join_next().is_some() {}
            // The kinds with a free slot after this turn's claims: only their next due
            // time is worth waking for (a full kind wakes the loop when a run ends).
            let mut open = Vec::new();
            for kind in KINDS {
                let busy = &this.running[slot(kind)];
                let room = CONCURRENCY.saturating_sub(busy.load(Ordering::SeqCst));
                if room == 0 {
                    continue;
                }
                match this.store.claim_jobs(kind, room, this.lease).await {
                    Ok(jobs) => {
                        if jobs.len() < room {
                            open.push(kind);
                        }
                        for job in jobs {
                            busy.fetch_add(1, Ordering::SeqCst);
                            let this = this.clone();
                            running.spawn(async move {
                                let _slot = Running(&this.running[slot(job.kind)]);
                                this.run_one(job).await
                            });
                        }
                    }
                    Err(e) => {
                        open.push(kind);
                        tracing::warn!(error = %chain(&e), "Failed to claim jobs; will ask again")
                    }
                }
            }
            let next = match (open.is_empty(), this.store.next_job_due(&open).await) {
                (false, Ok(Some(at))) => this.clock.instant_at(at).min(Instant::now() + IDLE_POLL),
                _ => Instant::now() + IDLE_POLL,
            };
            tokio::select! {
                _ = this.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = stop.changed() => {}
            }
        }
        while running.join_next().await.is_some() {}
    }

    #[tracing::instrument(name = "job", skip_all, fields(job_id = %job.id, kind = job.kind.as_str(), session_id = %job.session_id))]
    async fn run_one(&self, job: ClaimedJob) {
        let work = async {
            match job.kind {
                JobKind::Transcript => (self.transcript(&job).await, Outcome::Silent),
                JobKind::Recording => self.recording(&job).await,
                // The completing event never came within the wait: the held
                // `session.finalized` goes out with what is known.
                JobKind::Finalize | JobKind::AwaitEnd => (
                    JobEnd::Done {
                        facts: Box::new(Session::default()),
                    },
                    Outcome::Silent,
                ),
            }
        };
        // The run keeps its lease while it lasts (each download attempt is bounded); once
        // the lease is lost the job is another run's, and this one stops.
        let (end, outcome) = tokio::select! {
            done = work => done,
            () = self.keep_lease(&job) => {
                tracing::warn!("The job's lease passed to another run; this run stops");
                return;
            }
        };
        if let JobEnd::RetryAt { error, .. } = &end {
            tracing::warn!(error = %error, attempt = job.attempts + 1, "Job run failed; will try again");
        }
        let result = JobResult {
            id: job.id.clone(),
            lease_token: job.lease_token,
            end,
        };
        match self.store.finish_job(result).await {
            Ok(Some(targets)) => {
                for target in targets {
                    self.dispatcher.notify(&target);
                }
                match outcome {
                    Outcome::Silent => {}
                    Outcome::Archived(bytes) => self.metrics.recording_archived(bytes),
                    Outcome::NotArchived(reason) => self.metrics.recording_failed(&reason),
                }
            }
            Ok(None) => tracing::info!("The job's lease passed on; this run's result is dropped"),
            // The lease ends and the job runs again: a repeat, not a loss.
            Err(e) => {
                tracing::error!(error = %chain(&e), "Failed to record a job's end; it will run again")
            }
        }
    }

    /// Renews the job's lease every third of it; returns once the lease is lost.
    async fn keep_lease(&self, job: &ClaimedJob) {
        let every = self.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            match self
                .store
                .renew_job(&job.id, job.lease_token, self.lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                // The store may be back before the lease ends; the next renewal tells.
                Err(e) => tracing::warn!(error = %chain(&e), "Cannot renew a job's lease"),
            }
        }
    }

    /// Archives the session's recording (the one its record holds now). The result joins
    /// the record at the `recording.ready`'s time; an object outranks the archive's null
    /// there (the merge's tie-break), so the archived record replaces the bare one.
    async fn recording(&self, job: &ClaimedJob) -> (JobEnd, Outcome) {
        let unchanged = JobEnd::Done {
            facts: Box::new(Session::default()),
        };
        let recording = match self.store.session(&job.vendor, &job.session_id).await {
            Ok(Some(view)) => view.session.recording,
            Ok(None) => None,
            Err(e) => {
                let end = JobEnd::RetryAt {
                    unix_ms: self.clock.now_ms() + BACKOFF.1.as_millis() as i64,
                    error: format!("cannot read the session: {}", chain(&e)),
                };
                return (end, Outcome::Silent);
            }
        };
        // Archiving was turned off since, or there is no URL: the event goes out as it is.
        let (Some(archiver), Some(recording)) = (&self.recordings, recording) else {
            return (unchanged, Outcome::Silent);
        };
        let with = |archive: Archive| JobEnd::Done {
            facts: Box::new(Session {
                recording: Some(Recording {
                    archive: Some(archive),
                    ..recording.clone()
                }),
                ..Session::default()
            }),
        };
        let failed =
            |reason: String| (with(Archive::failed(&reason)), Outcome::NotArchived(reason));
        let session = (job.vendor.as_str(), job.session_id.as_str());
        let downloaded = match recording.url.clone() {
            Some(url) => {
                let left = job.deadline.unix_millis() - self.clock.now_ms();
                if left <= 0 {
                    // The last answer, if the host gave one; else the URL simply ran out.
                    let reason = job
                        .last_error
                        .as_deref()
                        .filter(|e| e.starts_with("http_"))
                        .unwrap_or("expired");
                    return failed(reason.to_owned());
                }
                let left = Duration::from_millis(left as u64);
                archiver
                    .download(&url, &job.source, session, job.lease_token, left)
                    .await
            }
            // No URL: the vendor sent the audio in the body (ElevenLabs), stored with the
            // request that left this job; archived from there, nothing is downloaded.
            None => {
                let event = crate::store::event_of_job(&job.id);
                let raw = match self.store.event(&event).await {
                    Ok(Some(stored)) => stored.raw,
                    // Pruned meanwhile: nothing left to archive.
                    Ok(None) => return (unchanged, Outcome::Silent),
                    Err(e) => {
                        let end = JobEnd::RetryAt {
                            unix_ms: self.clock.now_ms() + BACKOFF.1.as_millis() as i64,
                            error: format!("cannot read the request's body: {}", chain(&e)),
                        };
                        return (end, Outcome::Silent);
                    }
                };
                let audio = crate::vendors::Vendor::parse(&job.vendor)
                    .ok_or_else(|| format!("unknown vendor {}", job.vendor))
                    .and_then(|vendor| vendor.audio_in_body(&raw));
                match audio {
                    Ok(audio) => {
                        archiver
                            .archive_base64(&audio, session, job.lease_token, "audio/mpeg")
                            .await
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "A recording has neither a URL nor audio in its body");
                        return failed("invalid_audio".into());
                    }
                }
            }
        };
        match downloaded {
            Downloaded::Archived(archive) => {
                let bytes = archive.bytes.unwrap_or(0);
                (with(archive), Outcome::Archived(bytes))
            }
            Downloaded::Final(reason) => failed(reason),
            Downloaded::Retry(error) => {
                let end = JobEnd::RetryAt {
                    unix_ms: (self.clock.now_ms() + self.backoff(job).as_millis() as i64)
                        .min(job.deadline.unix_millis()),
                    error,
                };
                (end, Outcome::Silent)
            }
        }
    }

    fn backoff(&self, job: &ClaimedJob) -> Duration {
        BACKOFF
            .0
            .saturating_mul(1 << job.attempts.min(8))
            .min(BACKOFF.1)
    }

    async fn transcript(&self, job: &ClaimedJob) -> JobEnd {
        let now = self.clock.now_ms();
        let left = job.deadline.unix_millis() - now;
        let done = |transcript: Transcript| JobEnd::Done {
            facts: Box::new(Session {
                transcript: Some(transcript),
                ..Session::default()
            }),
        };
        if left <= 0 {
            return done(Transcript::unavailable("timeout"));
        }
        let Some(settings) = self.transcripts.get(&job.source) else {
            // The source no longer fetches transcripts: the events go out without one.
            return done(Transcript::unavailable("not_configured"));
        };
        let timeout = REQUEST_TIMEOUT.min(Duration::from_millis(left as u64));
        match transcripts::fetch(&self.client, settings, &job.session_id, timeout).await {
            Fetched::Complete(messages) => done(Transcript {
                status: TranscriptStatus::Complete,
                reason: None,
                messages,
            }),
            Fetched::Final(reason) => {
                tracing::info!(%reason, "The transcript is unavailable");
                done(Transcript::unavailable(reason))
            }
            Fetched::Retry(error) => JobEnd::RetryAt {
                unix_ms: (self.clock.now_ms() + self.backoff(job).as_millis() as i64)
                    .min(job.deadline.unix_millis()),
                error,
            },
        }
    }
}
