//! Enrichment: stored jobs that complete a session from outside its webhooks. Today: the
//! Agntix transcript ([`transcripts`]), which `session.finalized` waits for.
//!
//! Jobs are committed with the request that leaves them ([`crate::event::NewJob`]), so a
//! crash or restart loses none. One worker claims due jobs under a lease, runs them, and
//! ends each with [`Store::finish_job`], which releases the events it held; their targets'
//! delivery workers are woken. A job past its deadline ends with what is known.

pub mod recordings;
pub mod settings;
pub mod transcripts;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::recordings::ArchiveStore;
use self::recordings::Downloaded;
use self::transcripts::Fetched;
use crate::clock::Clock;
use crate::delivery::Dispatcher;
use crate::event::{Archive, JobKind, Recording, Session, Transcript, TranscriptStatus};
use crate::ingest::settings::Transcripts;
use crate::metrics::Metrics;
use crate::store::{ClaimedJob, JobEnd, JobResult, Store};
use crate::telemetry::chain;

/// Jobs run at once.
const CONCURRENCY: usize = 8;
/// How long a claimed job is this worker's before another (on any replica) may run it: a
/// run makes its requests within [`REQUEST_TIMEOUT`] each. Should a run outlast it, the
/// other run's end is the one recorded (a result with a lease that passed on is dropped).
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
    /// Where recordings are archived, and the largest taken.
    recordings: Option<(ArchiveStore, u64)>,
    dispatcher: Dispatcher,
    clock: Clock,
    client: reqwest::Client,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Enricher {
    /// `transcripts`: each source that fetches them, by name.
    pub fn new(
        store: Arc<dyn Store>,
        transcripts: HashMap<String, Arc<Transcripts>>,
        recordings: Option<(ArchiveStore, u64)>,
        dispatcher: Dispatcher,
        clock: Clock,
        metrics: Arc<Metrics>,
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
            let room = CONCURRENCY.saturating_sub(running.len());
            if room > 0 {
                match this.store.claim_jobs(room, LEASE).await {
                    Ok(jobs) => {
                        for job in jobs {
                            let this = this.clone();
                            running.spawn(async move { this.run_one(job).await });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %chain(&e), "Failed to claim jobs; will ask again")
                    }
                }
            }
            let next = match this.store.next_job_due().await {
                Ok(Some(at)) => this.clock.instant_at(at).min(Instant::now() + IDLE_POLL),
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
        let end = match job.kind {
            JobKind::Transcript => self.transcript(&job).await,
            JobKind::Recording => self.recording(&job).await,
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
            Ok(targets) => {
                for target in targets {
                    self.dispatcher.notify(&target);
                }
            }
            // The lease ends and the job runs again: a repeat, not a loss.
            Err(e) => {
                tracing::error!(error = %chain(&e), "Failed to record a job's end; it will run again")
            }
        }
    }

    /// Archives the session's recording (the one its record holds now). The result joins
    /// the record at the `recording.ready`'s time; an object outranks the archive's null
    /// there (the merge's tie-break), so the archived record replaces the bare one.
    async fn recording(&self, job: &ClaimedJob) -> JobEnd {
        let unchanged = JobEnd::Done {
            facts: Box::new(Session::default()),
        };
        let recording = match self.store.session(&job.vendor, &job.session_id).await {
            Ok(Some(view)) => view.session.recording,
            Ok(None) => None,
            Err(e) => {
                return JobEnd::RetryAt {
                    unix_ms: self.clock.now_ms() + BACKOFF.1.as_millis() as i64,
                    error: format!("cannot read the session: {}", chain(&e)),
                };
            }
        };
        // Archiving was turned off since, or there is no URL: the event goes out as it is.
        let (Some((store, max_bytes)), Some(recording)) = (&self.recordings, recording) else {
            return unchanged;
        };
        let Some(url) = recording.url.clone() else {
            return unchanged;
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
        let left = job.deadline.unix_millis() - self.clock.now_ms();
        if left <= 0 {
            // The last answer, if the host gave one; else the URL simply ran out.
            let reason = job
                .last_error
                .as_deref()
                .filter(|e| e.starts_with("http_"))
                .unwrap_or("expired");
            self.metrics.recording_failed(reason);
            return with(Archive::failed(reason));
        }
        let timeout = Duration::from_millis(left as u64);
        let session = (job.vendor.as_str(), job.session_id.as_str());
        match recordings::download(&self.client, &url, store, session, *max_bytes, timeout).await {
            Downloaded::Archived(archive) => {
                self.metrics.recording_archived(archive.bytes.unwrap_or(0));
                with(archive)
            }
            Downloaded::Final(reason) => {
                self.metrics.recording_failed(&reason);
                with(Archive::failed(reason))
            }
            Downloaded::Retry(error) => JobEnd::RetryAt {
                unix_ms: (self.clock.now_ms() + self.backoff(job).as_millis() as i64)
                    .min(job.deadline.unix_millis()),
                error,
            },
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
