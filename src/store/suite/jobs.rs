//! The suite's cases about jobs: committed with their request, leased, and ended in one
//! transaction that releases the events they hold.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::event::{JobKind, NewJob, Transcript, TranscriptMessage, TranscriptStatus};

pub(super) fn with_job(mut a: Inbound, wait_ms: i64) -> Inbound {
    a.jobs = vec![NewJob {
        kind: JobKind::Transcript,
        deadline: Timestamp::now().plus_millis(wait_ms),
        holds: vec![EventType::SessionFinalized],
    }];
    a
}

fn transcript() -> Session {
    Session {
        transcript: Some(Transcript {
            status: TranscriptStatus::Complete,
            reason: None,
            messages: vec![TranscriptMessage {
                id: "m1".into(),
                role: crate::event::Role::User,
                content: "hello".into(),
                at: None,
                tool_call: None,
            }],
        }),
        ..Session::default()
    }
}

pub(super) async fn a_job_holds_its_events_deliveries_until_it_ends(s: Arc<dyn Store>) {
    let a = with_job(
        accept(
            "s1",
            &[EventType::SessionEnded, EventType::SessionFinalized],
            &["t"],
        ),
        60_000,
    );
    let finalized = a.events[1].id.clone();
    s.accept(a).await.unwrap();
    let deliveries = s.deliveries(all()).await.unwrap();
    assert_eq!(deliveries.len(), 1, "only session.ended goes out at once");
    assert_ne!(deliveries[0].event_id, finalized);

    let jobs = s
        .claim_jobs(JobKind::Transcript, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let job = jobs[0].clone();
    assert_eq!(
        (job.kind, job.session_id.as_str(), job.attempts),
        (JobKind::Transcript, "s1", 0)
    );
    assert!(
        s.claim_jobs(JobKind::Transcript, 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );

    // A run whose lease passed on decides nothing.
    let stale = JobResult {
        id: job.id.clone(),
        lease_token: job.lease_token ^ 1,
        end: JobEnd::Done {
            facts: Box::new(transcript()),
        },
    };
    assert_eq!(s.finish_job(stale).await.unwrap(), None, "stale");
    assert_eq!(s.deliveries(all()).await.unwrap().len(), 1);

    let released = s
        .finish_job(JobResult {
            id: job.id.clone(),
            lease_token: job.lease_token,
            end: JobEnd::Done {
                facts: Box::new(transcript()),
            },
        })
        .await
        .unwrap();
    assert_eq!(released, Some(vec!["t".to_owned()]));
    let deliveries = s.deliveries(all()).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(
        deliveries
            .iter()
            .any(|d| d.event_id == finalized && d.status == DeliveryStatus::Pending)
    );
    let of_event = s
        .deliveries(DeliveryFilter {
            event_id: Some(finalized.as_str().to_owned()),
            ..all()
        })
        .await
        .unwrap();
    assert_eq!(
        of_event.len(),
        1,
        "the job's delivery is found by its event"
    );
    let event = s.event(finalized.as_str()).await.unwrap().unwrap();
    let body: serde_json::Value = serde_json::from_str(&event.body).unwrap();
    assert_eq!(body["session"]["transcript"]["status"], "complete");
    assert_eq!(
        body["session"]["transcript"]["messages"][0]["content"],
        "hello"
    );
    assert_eq!(
        body["session"]["messageCount"], 3,
        "the rest of the record stays"
    );
    let session = s.session("pathors", "s1").await.unwrap().unwrap();
    assert_eq!(
        session.session.transcript,
        transcript().transcript,
        "merged into the record"
    );
    assert!(
        s.claim_jobs(JobKind::Transcript, 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "done"
    );
    assert_eq!(s.next_job_due(&[JobKind::Transcript]).await.unwrap(), None);
    // Retention takes an ended job once it is older than the cutoff.
    let later = Timestamp::now().plus_millis(60_000);
    assert_eq!(s.prune(later).await.unwrap().jobs, 1);
}

pub(super) async fn a_job_run_that_fails_waits_for_its_retry(s: Arc<dyn Store>) {
    let a = with_job(
        accept(
            "s2",
            &[EventType::SessionEnded, EventType::SessionFinalized],
            &["t"],
        ),
        60_000,
    );
    let held = a.events[1].id.clone();
    s.accept(a).await.unwrap();
    let job = s
        .claim_jobs(JobKind::Transcript, 10, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    let later = crate::clock::Clock::system().now_ms() + 30_000;
    let released = s
        .finish_job(JobResult {
            id: job.id.clone(),
            lease_token: job.lease_token,
            end: JobEnd::RetryAt {
                unix_ms: later,
                error: "HTTP 503".into(),
            },
        })
        .await
        .unwrap();
    assert_eq!(released, Some(Vec::new()));
    assert_eq!(
        s.next_job_due(&[JobKind::Transcript]).await.unwrap(),
        Some(later)
    );
    assert!(
        s.claim_jobs(JobKind::Transcript, 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    assert_eq!(s.deliveries(all()).await.unwrap().len(), 1, "still held");
    // A pending job is never pruned, nor the event it holds.
    let pruned = s.prune(Timestamp::now().plus_millis(60_000)).await.unwrap();
    assert_eq!(pruned.jobs, 0);
    assert!(
        s.event(held.as_str()).await.unwrap().is_some(),
        "the held event is kept"
    );
    assert_eq!(
        s.next_job_due(&[JobKind::Transcript]).await.unwrap(),
        Some(later)
    );
}

pub(super) async fn pruning_a_sessions_last_recording_job_names_its_object(s: Arc<dyn Store>) {
    let mut a = accept("s3", &[EventType::RecordingReady], &["t"]);
    a.jobs = vec![NewJob {
        kind: JobKind::Recording,
        deadline: Timestamp::now().plus_millis(60_000),
        holds: vec![EventType::RecordingReady],
    }];
    s.accept(a).await.unwrap();
    let job = s
        .claim_jobs(JobKind::Recording, 10, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(job.kind, JobKind::Recording);
    s.finish_job(JobResult {
        id: job.id,
        lease_token: job.lease_token,
        end: JobEnd::Done {
            facts: Box::default(),
        },
    })
    .await
    .unwrap();
    let pruned = s.prune(Timestamp::now().plus_millis(60_000)).await.unwrap();
    assert_eq!(pruned.jobs, 1);
    assert_eq!(
        pruned.recordings,
        vec![("pathors".to_owned(), "s3".to_owned())]
    );
}

fn with_recording_job(mut a: Inbound) -> Inbound {
    a.jobs = vec![NewJob {
        kind: JobKind::Recording,
        deadline: Timestamp::now().plus_millis(600_000),
        holds: vec![EventType::RecordingReady],
    }];
    a
}

/// A run that dies or hangs lets its lease lapse: the job is claimed again, counts that run
/// as an attempt, and waits behind the jobs that fell due before its lease ended; a run
/// that renews keeps it; a claim takes one kind only.
pub(super) async fn a_lapsed_job_lease_is_an_attempt_and_waits_its_turn(s: Arc<dyn Store>) {
    let lease = Duration::from_millis(300);
    s.accept(with_recording_job(accept(
        "slow",
        &[EventType::RecordingReady],
        &["t"],
    )))
    .await
    .unwrap();
    let first = s
        .claim_jobs(JobKind::Recording, 1, lease)
        .await
        .unwrap()
        .remove(0);
    assert_eq!((first.session_id.as_str(), first.attempts), ("slow", 0));
    s.accept(with_recording_job(accept(
        "next",
        &[EventType::RecordingReady],
        &["t"],
    )))
    .await
    .unwrap();
    assert!(
        s.claim_jobs(JobKind::Transcript, 10, lease)
            .await
            .unwrap()
            .is_empty(),
        "a claim takes its own kind only"
    );
    tokio::time::sleep(lease + Duration::from_millis(50)).await;

    let claimed = s.claim_jobs(JobKind::Recording, 1, lease).await.unwrap();
    assert_eq!(
        claimed[0].session_id, "next",
        "the job that waited goes before the one whose lease lapsed"
    );
    let again = s
        .claim_jobs(JobKind::Recording, 1, lease)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(again.session_id, "slow");
    assert_eq!(again.attempts, 1, "the lapsed run counts as an attempt");
    assert!(
        !s.renew_job(&first.id, first.lease_token, lease)
            .await
            .unwrap(),
        "the first run's lease has passed on"
    );

    // A run that renews keeps its job past the first lease.
    assert!(
        s.renew_job(&again.id, again.lease_token, Duration::from_secs(60))
            .await
            .unwrap()
    );
    tokio::time::sleep(lease + Duration::from_millis(50)).await;
    let others = s.claim_jobs(JobKind::Recording, 10, lease).await.unwrap();
    assert!(
        others.iter().all(|j| j.session_id != "slow"),
        "renewed: {others:?}"
    );
    let due = s
        .next_job_due(&[JobKind::Recording])
        .await
        .unwrap()
        .unwrap();
    assert!(due <= crate::clock::Clock::system().now_ms() + 60_000);
    let ended = s
        .finish_job(JobResult {
            id: again.id.clone(),
            lease_token: again.lease_token,
            end: JobEnd::Done {
                facts: Box::default(),
            },
        })
        .await
        .unwrap();
    assert_eq!(ended, Some(vec!["t".to_owned()]));
    assert!(
        !s.renew_job(&again.id, again.lease_token, lease)
            .await
            .unwrap(),
        "an ended job is not renewed"
    );
}

/// A session's end carrying a `session.finalized` held by a finalize wait of `wait_ms`.
fn ended_with_wait(session: &str, wait_ms: i64) -> Inbound {
    let mut a = accept(
        session,
        &[EventType::SessionEnded, EventType::SessionFinalized],
        &["t"],
    );
    a.jobs = vec![NewJob {
        kind: JobKind::Finalize,
        deadline: Timestamp::now().plus_millis(wait_ms),
        holds: vec![EventType::SessionFinalized],
    }];
    a
}

/// The vendor's completing event: a `session.finalized` under a key of its own.
fn completing(session: &str) -> Inbound {
    let mut a = accept(session, &[EventType::SessionFinalized], &["t"]);
    a.vendor_event_type = "completing".into();
    a.events[0].id = EventId::derive("src", session, "completing", EventType::SessionFinalized);
    a.events[0].facts.message_count = Some(9);
    a
}

pub(super) async fn a_completing_event_takes_the_place_of_a_waiting_finalize(s: Arc<dyn Store>) {
    let ended = ended_with_wait("w1", 60_000);
    let held = ended.events[1].id.clone();
    s.accept(ended).await.unwrap();
    assert_eq!(
        s.deliveries(all()).await.unwrap().len(),
        1,
        "session.ended only"
    );
    let wait = s.next_job_due(&[JobKind::Finalize]).await.unwrap().unwrap();
    assert!(wait > Timestamp::now().plus_millis(50_000).unix_millis());
    assert!(
        s.claim_jobs(JobKind::Finalize, 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "due only when the wait ends"
    );

    let c = completing("w1");
    let own = c.events[0].id.clone();
    let IngestOutcome::Accepted { id, .. } = s.accept(c.clone()).await.unwrap() else {
        panic!("the completing event is accepted, not a duplicate");
    };
    assert_eq!(id, own);
    let deliveries = s.deliveries(all()).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries.iter().any(|d| d.event_id == own));
    assert!(
        s.event(held.as_str()).await.unwrap().is_none(),
        "the held one is gone"
    );
    let view = s.session("pathors", "w1").await.unwrap().unwrap();
    assert_eq!(view.finalized_event_id, Some(own.clone()));
    assert_eq!(view.session.message_count, Some(9));
    assert_eq!(
        s.next_job_due(&[JobKind::Finalize]).await.unwrap(),
        None,
        "the wait ended"
    );
    assert_eq!(
        s.accept(c).await.unwrap(),
        IngestOutcome::Duplicate { id: own }
    );
}

pub(super) async fn a_finalize_wait_that_ends_releases_its_event_once(s: Arc<dyn Store>) {
    let ended = ended_with_wait("w2", 0);
    let held = ended.events[1].id.clone();
    s.accept(ended).await.unwrap();
    let jobs = s
        .claim_jobs(JobKind::Finalize, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "a wait that has ended is due");
    let released = s
        .finish_job(JobResult {
            id: jobs[0].id.clone(),
            lease_token: jobs[0].lease_token,
            end: JobEnd::Done {
                facts: Box::new(Session::default()),
            },
        })
        .await
        .unwrap();
    assert_eq!(released, Some(vec!["t".to_owned()]));
    // The completing event, late: its facts join the record, nothing more goes out.
    let late = s.accept(completing("w2")).await.unwrap();
    assert_eq!(late, IngestOutcome::Duplicate { id: held.clone() });
    let deliveries = s.deliveries(all()).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries.iter().filter(|d| d.event_id == held).count(), 1);

    // The other order: completed first, then the end with a wait, which holds nothing.
    s.accept(completing("w3")).await.unwrap();
    s.accept(ended_with_wait("w3", 0)).await.unwrap();
    assert!(
        s.claim_jobs(JobKind::Finalize, 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "no wait for a session finalized already"
    );
    let finalized = s
        .events(EventFilter {
            session_id: Some("w3".into()),
            event_type: Some("session.finalized".into()),
            limit: 10,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(finalized.len(), 1);
}

pub(super) async fn a_finalized_waits_for_its_sessions_running_archive(s: Arc<dyn Store>) {
    let mut ready = accept("h1", &[EventType::RecordingReady], &["t"]);
    ready.jobs = vec![NewJob {
        kind: JobKind::Recording,
        deadline: Timestamp::now().plus_millis(60_000),
        holds: vec![EventType::RecordingReady],
    }];
    s.accept(ready).await.unwrap();
    let finalized = accept("h1", &[EventType::SessionFinalized], &["t"]);
    let finalized_id = finalized.events[0].id.clone();
    assert!(matches!(
        s.accept(finalized).await.unwrap(),
        IngestOutcome::Accepted { .. }
    ));
    assert!(
        s.deliveries(all()).await.unwrap().is_empty(),
        "both wait for the archive"
    );
    let jobs = s
        .claim_jobs(JobKind::Recording, 10, Duration::from_secs(60))
        .await
        .unwrap();
    let archived = Session {
        agent_number: Some("+14155550100".into()),
        ..Session::default()
    };
    let released = s
        .finish_job(JobResult {
            id: jobs[0].id.clone(),
            lease_token: jobs[0].lease_token,
            end: JobEnd::Done {
                facts: Box::new(archived),
            },
        })
        .await
        .unwrap();
    assert_eq!(released, Some(vec!["t".to_owned()]));
    let deliveries = s.deliveries(all()).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    let event = s.event(finalized_id.as_str()).await.unwrap().unwrap();
    let body: serde_json::Value = serde_json::from_str(&event.body).unwrap();
    assert_eq!(
        body["session"]["agentNumber"], "+14155550100",
        "it carries the archive's result"
    );

    // With no job running, a session.finalized goes out at once.
    s.accept(accept("h2", &[EventType::SessionFinalized], &["t"]))
        .await
        .unwrap();
    assert_eq!(s.deliveries(all()).await.unwrap().len(), 3);
}

fn archive_job(holds: &[EventType]) -> NewJob {
    NewJob {
        kind: JobKind::Recording,
        deadline: Timestamp::now().plus_millis(60_000),
        holds: holds.to_vec(),
    }
}

/// One archive per session: a second request carrying the recording joins the archive
/// running, and once it is done, a later one leaves none and goes out at once. A request
/// may leave two jobs: an archive and a finalize wait.
pub(super) async fn a_session_has_one_archive_whoever_carries_its_recording(s: Arc<dyn Store>) {
    // The end of a call carries the recording: its archive starts, holding nothing; its
    // session.finalized waits for the vendor's completing event.
    let mut ended = ended_with_wait("a1", 60_000);
    ended.jobs.push(archive_job(&[]));
    s.accept(ended).await.unwrap();
    assert_eq!(s.deliveries(all()).await.unwrap().len(), 1, "session.ended");
    // The completing event carries it too: it takes the wait's place and joins the archive.
    let mut c = completing("a1");
    c.jobs.push(archive_job(&[EventType::SessionFinalized]));
    let own = c.events[0].id.clone();
    s.accept(c).await.unwrap();
    assert_eq!(
        s.deliveries(all()).await.unwrap().len(),
        1,
        "it waits for the archive"
    );
    let jobs = s
        .claim_jobs(JobKind::Recording, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "one archive");
    let released = s
        .finish_job(JobResult {
            id: jobs[0].id.clone(),
            lease_token: jobs[0].lease_token,
            end: JobEnd::Done {
                facts: Box::new(Session::default()),
            },
        })
        .await
        .unwrap();
    assert_eq!(released, Some(vec!["t".to_owned()]));
    let deliveries = s.deliveries(all()).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries.iter().any(|d| d.event_id == own));

    // Archived already: a later recording.ready leaves no job and goes out at once.
    let mut late = accept("a1", &[EventType::RecordingReady], &["t"]);
    late.jobs = vec![archive_job(&[EventType::RecordingReady])];
    s.accept(late).await.unwrap();
    assert_eq!(s.deliveries(all()).await.unwrap().len(), 3);
    assert!(
        s.claim_jobs(JobKind::Recording, 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A finalize wait that ends while its session's archive still runs: its
/// `session.finalized` waits on for the archive, and goes out with it.
pub(super) async fn a_finalize_wait_ending_during_an_archive_hands_its_event_on(s: Arc<dyn Store>) {
    let mut ended = ended_with_wait("f1", 0);
    ended.jobs.push(archive_job(&[]));
    let held = ended.events[1].id.clone();
    s.accept(ended).await.unwrap();
    let wait = s
        .claim_jobs(JobKind::Finalize, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(wait.len(), 1);
    let released = s
        .finish_job(JobResult {
            id: wait[0].id.clone(),
            lease_token: wait[0].lease_token,
            end: JobEnd::Done {
                facts: Box::new(Session::default()),
            },
        })
        .await
        .unwrap();
    assert_eq!(released, Some(Vec::new()), "handed on, not released");
    assert_eq!(
        s.deliveries(all()).await.unwrap().len(),
        1,
        "session.ended only"
    );
    let archive = s
        .claim_jobs(JobKind::Recording, 10, Duration::from_secs(60))
        .await
        .unwrap();
    s.finish_job(JobResult {
        id: archive[0].id.clone(),
        lease_token: archive[0].lease_token,
        end: JobEnd::Done {
            facts: Box::new(Session {
                agent_number: Some("+14155550100".into()),
                ..Session::default()
            }),
        },
    })
    .await
    .unwrap();
    let deliveries = s.deliveries(all()).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    let event = s.event(held.as_str()).await.unwrap().unwrap();
    assert!(
        event.body.contains("+14155550100"),
        "it carries the archive"
    );
}

/// A completing event that arrives before its session ended and carries too little to
/// stand alone (Bland's delayed post-call) waits for the end: the ending request's commit
/// makes it due at once. After the end, it leaves no wait.
pub(super) async fn a_finalized_awaiting_the_end_is_due_when_the_session_ends(s: Arc<dyn Store>) {
    let mut early = completing("e1");
    early.jobs = vec![NewJob {
        kind: JobKind::AwaitEnd,
        deadline: Timestamp::now().plus_millis(60_000),
        holds: vec![EventType::SessionFinalized],
    }];
    s.accept(early).await.unwrap();
    assert!(s.deliveries(all()).await.unwrap().is_empty(), "it waits");
    assert!(
        s.claim_jobs(JobKind::AwaitEnd, 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "not due before the end"
    );
    s.accept(accept("e1", &[EventType::SessionEnded], &["t"]))
        .await
        .unwrap();
    let due = s
        .claim_jobs(JobKind::AwaitEnd, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "due once the session ended");

    // Ended first (its record says so): the completing event goes out at once.
    let mut ended = accept("e2", &[EventType::SessionEnded], &["t"]);
    ended.events[0].facts.state = Some(crate::event::SessionState::Closed);
    s.accept(ended).await.unwrap();
    let mut late = completing("e2");
    late.jobs = vec![NewJob {
        kind: JobKind::AwaitEnd,
        deadline: Timestamp::now().plus_millis(60_000),
        holds: vec![EventType::SessionFinalized],
    }];
    let own = late.events[0].id.clone();
    s.accept(late).await.unwrap();
    assert!(
        s.deliveries(all())
            .await
            .unwrap()
            .iter()
            .any(|d| d.event_id == own)
    );
}
