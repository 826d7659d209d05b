//! Recovery: the calls a vendor never sent, found in its own list API.
//!
//! Several vendors send a webhook once and never again (Vapi by default, ElevenLabs unless
//! retries are enabled, Bland, Pathors), so a gateway that was down or unreachable for ten
//! minutes would lose every call that ended meanwhile. A source with `recover` polls its
//! vendor's list API every `interval` ([`calls`]) for the calls that ended in the window
//! since its last complete poll (less [`OVERLAP`]; the first poll looks back `lookback`),
//! and for each call whose session it has not finalized it builds the webhook bodies the
//! vendor would have sent and passes them through the same adapter and the same commit as
//! ingest ([`crate::ingest::build_accept`], [`crate::ingest::commit_now`]). The events get
//! the webhook's duplicate keys, so a late webhook is answered `duplicate` and a call that
//! was received is not stored twice; they say `source.recovered = true`.
//!
//! A window ends [`settle`] before now: a call that ended later may still get its webhooks,
//! and is left to the next poll. A recovered call is then complete: its
//! `session.finalized` is released at once rather than after the source's `finalize_wait`.
//!
//! Progress is stored ([`Store::claim_recovery`]): the window a poll is in and the
//! vendor's cursor, saved after each page under a lease, so that a restart resumes and
//! replicas on one PostgreSQL take turns. A vendor answering 429 or 5xx is asked again
//! ([`api`]); one refusing the key (401, 403) stops that source's recovery, which
//! `/readyz`, the metrics and the console show; ingest carries on.

pub mod api;
pub mod calls;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web;
use futures_util::StreamExt;
use serde::Serialize;

use self::api::Api;
use self::calls::{Listed, Window};
use crate::event::Timestamp;
use crate::ingest::settings::Source;
use crate::ingest::{Arrival, IngestState, build_accept, commit_now};
use crate::store::{IngestOutcome, RecoveryProgress, StoreError};
use crate::telemetry::chain;
use crate::vendors::Normalized;

/// Each poll looks again at this much before where the last one ended: calls a vendor
/// lists late (its clock, its indexing) are still found.
pub const OVERLAP: Duration = Duration::from_secs(120);
/// A poll's hold on its source; renewed after every page. A replica that dies mid-poll
/// holds its sources this long.
const LEASE: Duration = Duration::from_secs(60);
/// The shortest time after a call's end before recovery takes it: its webhooks go first.
const MIN_SETTLE: Duration = Duration::from_secs(60);
/// Calls of one page recovered at once. Each call's commits wait for their fsync, so
/// calls in flight together share group commits: 10,000 Retell calls from a local
/// stand-in (`recovery::throughput`) took 29–31 s with 8 at once and 20–28 s with 32.
const CONCURRENCY: usize = 32;

/// How long after a call's end a source's polls wait before recovering it: `settle`, else
/// the source's finalize wait (its vendor's completing webhook comes within it) and at
/// least a minute.
pub fn settle(source: &Source) -> Duration {
    match source.recover.as_ref().and_then(|r| r.settle) {
        Some(settle) => settle,
        None => source.finalize_wait.unwrap_or_default().max(MIN_SETTLE),
    }
}

/// Why a poll did not complete.
#[derive(Debug)]
pub enum Failure {
    /// The vendor refused the key: this source's recovery stops.
    Unauthorized(String),
    /// The vendor's API failed (`reason`: rate_limited, server_error, unreachable,
    /// bad_answer); the next poll resumes.
    Vendor {
        reason: &'static str,
        message: String,
    },
    Store(StoreError),
    /// Another run took the source's lease (this one took longer than it).
    LostLease,
    /// The gateway is shutting down.
    Stopped,
}

impl Failure {
    pub fn vendor(reason: &'static str, message: impl Into<String>) -> Failure {
        Failure::Vendor {
            reason,
            message: message.into(),
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Unauthorized(_) => "unauthorized",
            Failure::Vendor { reason, .. } => reason,
            Failure::Store(_) => "store",
            Failure::LostLease => "lost_lease",
            Failure::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unauthorized(m) | Failure::Vendor { message: m, .. } => f.write_str(m),
            Failure::Store(e) => write!(f, "the store: {}", chain(e)),
            Failure::LostLease => f.write_str("another run took this source's recovery over"),
            Failure::Stopped => f.write_str("the gateway is shutting down"),
        }
    }
}

/// What one recovery over a window came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Found {
    /// Calls the vendor listed as ended in the window.
    pub listed: u64,
    /// Calls that produced events the gateway did not have.
    pub recovered: u64,
}

/// Each recovering source's state, for `/readyz`, the metrics and the console.
#[derive(Debug, Default)]
pub struct Statuses(Mutex<BTreeMap<String, Status>>);

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `recovering`, or `stopped` after the vendor refused the key.
    pub state: &'static str,
    pub last_success: Option<Timestamp>,
    pub last_error: Option<String>,
}

impl Statuses {
    fn update(&self, source: &str, change: impl FnOnce(&mut Status)) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let status = all.entry(source.to_owned()).or_insert_with(|| Status {
            state: "recovering",
            ..Status::default()
        });
        change(status);
    }

    /// Every recovering source's status, by name.
    pub fn all(&self) -> BTreeMap<String, Status> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs the polls of every source with `recover`, and one-off recoveries for the admin API.
pub struct Recoverer {
    ingest: web::Data<IngestState>,
    client: reqwest::Client,
    pub statuses: Arc<Statuses>,
    /// Turns true at shutdown: polls stop asking vendors and release their leases.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Recoverer {
    pub fn new(
        ingest: web::Data<IngestState>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Recoverer> {
        let client = reqwest::Client::builder()
            .user_agent(format!("sessiongate/{}", crate::VERSION))
            .connect_timeout(Duration::from_secs(10))
            // A vendor's redirect would carry its API key elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let statuses = Statuses::default();
        for source in ingest.sources.values().filter(|s| s.recover.is_some()) {
            statuses.update(&source.name, |_| {});
        }
        Ok(Recoverer {
            ingest,
            client,
            statuses: Arc::new(statuses),
            stop,
        })
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// `work` (a request to a vendor, with its retries), unless the gateway stops first.
    async fn until_stopped<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let mut stop = self.stop.clone();
        tokio::select! {
            result = work => result,
            _ = stop.wait_for(|stopping| *stopping) => Err(Failure::Stopped),
        }
    }

    /// Whether any source recovers.
    pub fn any(&self) -> bool {
        self.ingest.sources.values().any(|s| s.recover.is_some())
    }

    /// Polls every recovering source until the gateway stops.
    pub async fn run(self: Arc<Self>) {
        let polls: Vec<_> = self
            .ingest
            .sources
            .values()
            .filter(|s| s.recover.is_some())
            .map(|s| self.clone().poll_forever(s.name.clone()))
            .collect();
        futures_util::future::join_all(polls).await;
    }

    async fn poll_forever(self: Arc<Self>, source: String) {
        let Some(interval) = self
            .source(&source)
            .and_then(|s| s.recover.as_ref())
            .map(|r| r.interval)
        else {
            return;
        };
        let mut stop = self.stop.clone();
        loop {
            // At shutdown a poll winds down itself, releasing its lease.
            let outcome = self.poll(&source).await;
            if self.stopping() {
                return;
            }
            let metrics = &self.ingest.metrics;
            match outcome {
                Ok(Some(found)) => {
                    let now = Timestamp::from_unix_millis(self.ingest.clock.now_ms());
                    metrics.recovery_succeeded(&source, now, found.listed, found.recovered);
                    self.statuses.update(&source, |s| {
                        s.last_success = Some(now);
                        s.last_error = None;
                    });
                }
                // Another replica holds the lease: it polls this time.
                Ok(None) => {}
                Err(failure) => {
                    let message = failure.to_string();
                    // The vendor's failures were counted as they were answered.
                    if matches!(failure, Failure::Store(_) | Failure::LostLease) {
                        metrics.recovery_failed(&source, failure.reason(), &message);
                    }
                    let stopped = matches!(failure, Failure::Unauthorized(_));
                    self.statuses.update(&source, |s| {
                        s.last_error = Some(message);
                        if stopped {
                            s.state = "stopped";
                        }
                    });
                    if stopped {
                        tracing::error!(
                            source,
                            "Recovery stopped until the key is fixed and the gateway restarted; ingest carries on"
                        );
                        return;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|stopping| *stopping) => return,
            }
        }
    }

    fn source(&self, name: &str) -> Option<&Source> {
        self.ingest.sources.get(name)
    }

    /// One poll of `source` under its lease: from where the stored progress says, to
    /// [`settle`] before now. `None` if another run holds the lease.
    pub async fn poll(&self, name: &str) -> Result<Option<Found>, Failure> {
        let source = self.source(name).expect("polled sources are configured");
        let recover = source.recover.as_ref().expect("polled sources recover");
        let store = &self.ingest.store;
        let Some(claim) = store
            .claim_recovery(name, LEASE)
            .await
            .map_err(Failure::Store)?
        else {
            return Ok(None);
        };
        let now = self.ingest.clock.now_ms();
        let (window, cursor) = match claim.progress.window {
            Some((since, until)) => (Window { since, until }, claim.progress.cursor.clone()),
            None => {
                let floor = now - recover.lookback.as_millis() as i64;
                let since = claim
                    .progress
                    .done_until
                    .map_or(floor, |done| (done - OVERLAP.as_millis() as i64).max(floor));
                let until = now - settle(source).as_millis() as i64;
                (Window { since, until }, None)
            }
        };
        let done_until = claim.progress.done_until;
        // The progress saved last: what a failed poll leaves for the next to resume from.
        let saved_last = Mutex::new(RecoveryProgress {
            done_until,
            window: Some((window.since, window.until)),
            cursor,
        });
        let save = |progress: RecoveryProgress, lease: Duration| async move {
            store
                .save_recovery(name, claim.token, progress, lease)
                .await
                .map_err(Failure::Store)
        };
        let start = saved_last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cursor
            .clone();
        let swept = if window.until > window.since {
            self.sweep(source, window, start, |next| {
                let progress = RecoveryProgress {
                    done_until,
                    window: Some((window.since, window.until)),
                    cursor: Some(next.to_owned()),
                };
                *saved_last.lock().unwrap_or_else(|p| p.into_inner()) = progress.clone();
                async move {
                    match save(progress, LEASE).await? {
                        true => Ok(()),
                        false => Err(Failure::LostLease),
                    }
                }
            })
            .await
        } else {
            Ok(Found::default())
        };
        match swept {
            Ok(found) => {
                let done = RecoveryProgress {
                    done_until: Some(window.until.max(done_until.unwrap_or(i64::MIN))),
                    window: None,
                    cursor: None,
                };
                if !save(done, Duration::ZERO).await? {
                    return Err(Failure::LostLease);
                }
                Ok(Some(found))
            }
            Err(Failure::LostLease) => Err(Failure::LostLease),
            Err(failure) => {
                // The next poll (or the next start) resumes at the page this one failed
                // on, without waiting for the lease to run out.
                let last = saved_last.into_inner().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = save(last, Duration::ZERO).await {
                    tracing::debug!(error = %e, "Could not release the recovery lease early");
                }
                Err(failure)
            }
        }
    }

    /// One recovery of `source` over an explicit window, now, without its lease or stored
    /// progress (`POST /admin/sources/{name}/recover`). `None` if the source does not
    /// recover.
    pub async fn recover_window(
        &self,
        name: &str,
        since: Timestamp,
        until: Timestamp,
    ) -> Option<Result<Found, Failure>> {
        let source = self.source(name).filter(|s| s.recover.is_some())?;
        let window = Window {
            since: since.unix_millis(),
            until: until.unix_millis(),
        };
        Some(self.sweep(source, window, None, |_| async { Ok(()) }).await)
    }

    /// Lists every page of `window` from `cursor` and recovers each call listed; after each
    /// page, `saved` is given the cursor of the next.
    async fn sweep<F, Fut>(
        &self,
        source: &Source,
        window: Window,
        mut cursor: Option<String>,
        saved: F,
    ) -> Result<Found, Failure>
    where
        F: Fn(&str) -> Fut,
        Fut: std::future::Future<Output = Result<(), Failure>>,
    {
        let recover = source.recover.as_ref().expect("recovering sources recover");
        let api = Api {
            client: &self.client,
            recover,
            vendor: source.vendor,
            source: &source.name,
            metrics: &self.ingest.metrics,
        };
        let mut found = Found::default();
        loop {
            let page = self
                .until_stopped(calls::list(&api, window, cursor.as_deref()))
                .await?;
            found.listed += page.calls.len() as u64;
            let each: Vec<_> = page
                .calls
                .iter()
                .map(|listed| self.recover_call(source, &api, listed))
                .collect();
            let results: Vec<Result<bool, Failure>> = futures_util::stream::iter(each)
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            let mut recovered = 0;
            for result in results {
                recovered += u64::from(result?);
            }
            found.recovered += recovered;
            self.ingest.metrics.recovered(&source.name, recovered);
            match page.next {
                Some(next) => {
                    saved(&next).await?;
                    cursor = Some(next);
                }
                None => return Ok(found),
            }
        }
    }

    /// Recovers one call unless its session is finalized: true if it stored new events.
    async fn recover_call(
        &self,
        source: &Source,
        api: &Api<'_>,
        listed: &Listed,
    ) -> Result<bool, Failure> {
        let state = &self.ingest;
        let stored = state
            .store
            .session(source.vendor.as_str(), &listed.session)
            .await
            .map_err(Failure::Store)?;
        if stored.is_some_and(|s| s.finalized_event_id.is_some()) {
            return Ok(false);
        }
        // A commit under way is never cut short; the vendor's answers are.
        let bodies = self.until_stopped(calls::bodies(api, listed)).await?;
        let last = bodies.len().saturating_sub(1);
        let mut new = false;
        for (i, body) in bodies.into_iter().enumerate() {
            let received_at = Timestamp::from_unix_millis(state.clock.now_ms());
            let recognized = match source.vendor.normalize_body(&body, received_at) {
                Ok(Normalized::Events(recognized)) => recognized,
                Ok(Normalized::Ignored { .. }) => continue,
                Err(e) => {
                    // The vendor's answer for this call cannot be mapped; the others can.
                    state.metrics.recovery_failed(
                        &source.name,
                        "bad_answer",
                        &format!("call {}: {e}", listed.id),
                    );
                    return Ok(new);
                }
            };
            let arrival = Arrival {
                message_id: None,
                received_at,
                raw: serde_json::to_vec(&body).expect("values serialise").into(),
                recovered: true,
                // The vendor has said all it will: the last body finalizes at once.
                finalize_wait: source
                    .finalize_wait
                    .filter(|_| i == last)
                    .map(|_| Duration::ZERO),
            };
            let accept = build_accept(
                source,
                recognized,
                arrival,
                &state.targets,
                state.archive_recordings,
            );
            let outcome = commit_now(&*state.store, &state.dispatcher, &state.jobs, accept)
                .await
                .map_err(Failure::Store)?;
            new |= matches!(outcome, IngestOutcome::Accepted { .. });
        }
        Ok(new)
    }
}
