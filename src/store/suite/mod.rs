//! One behaviour suite for every store backend.
//!
//! Each test is written once against `&dyn Store` and generated for SQLite (a file in a
//! temporary directory) and for PostgreSQL (a schema of its own in the database named by
//! `SESSIONGATE_TEST_POSTGRES_URL`, so tests run in parallel). Without that variable the
//! PostgreSQL half skips with a printed reason — except under `CI=true`, where a skipped
//! half is a failure.

use std::sync::Arc;

use super::*;
use crate::event::{EventType, Session, Timestamp};
pub(crate) use crate::testing::postgres_schema_url;

fn now_ms() -> i64 {
    crate::clock::Clock::system().now_ms()
}

pub(crate) struct TestStore {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

pub(crate) async fn sqlite() -> TestStore {
    sqlite_on(crate::clock::Clock::system()).await
}

/// A SQLite store in a temporary directory that reads `clock`.
pub(crate) async fn sqlite_on(clock: crate::clock::Clock) -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite::SqliteStore::open(
        &dir.path().join("s.db"),
        crate::store::settings::Synchronous::Full,
    )
    .await
    .unwrap()
    .with_clock(clock);
    TestStore {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

pub(crate) async fn postgres() -> Option<TestStore> {
    let url = postgres_schema_url().await?;
    let store = postgres::PgStore::open(&url, 8).await.unwrap();
    Some(TestStore {
        store: Arc::new(store),
        _dir: None,
    })
}

mod deliveries;
mod jobs;
mod listing;
mod recovery;
use deliveries::*;
use jobs::*;
use listing::*;
use recovery::*;

/// Generates every case for one backend: `mod $backend { #[tokio::test] fn $case … }`,
/// where `$backend()` opens a fresh store of that kind. PostgreSQL's cases are ignored, with
/// how to run them, unless the build has `cfg(sg_postgres)` (`build.rs`).
macro_rules! cases_on {
    ($backend:ident, [$($case:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(s) = super::$backend().await else { return };
                    super::$case(s.store.clone()).await;
                }
            )*
        }
    };
    ($backend:ident needs postgres, [$($case:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(sg_postgres), ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL")]
                async fn $case() {
                    let Some(s) = super::$backend().await else { return };
                    super::$case(s.store.clone()).await;
                }
            )*
        }
    };
}

/// Every case on every backend.
macro_rules! suite {
    (backends: [$sqlite:ident, $postgres:ident $(,)?], cases: $cases:tt) => {
        cases_on!($sqlite, $cases);
        cases_on!($postgres needs postgres, $cases);
    };
}

suite!(
    // One line per backend: a function returning `Option<TestStore>`.
    backends: [on_sqlite, on_postgres],
    cases: [
        a_second_accept_of_the_same_event_is_a_duplicate,
        concurrent_duplicates_are_accepted_once,
        a_session_is_finalized_once_even_from_two_sources,
        events_merge_into_the_session_record_in_any_order,
        claims_lease_and_finishing_moves_deliveries_on,
        handed_over_deliveries_are_committed_leased,
        concurrent_events_of_one_session_all_merge,
        a_result_after_the_lease_passed_on_is_dropped,
        results_arriving_together_are_each_recorded_once,
        a_result_whose_error_holds_a_nul_is_recorded,
        retry_requeues_only_dead_deliveries_and_replay_adds_deliveries,
        events_and_deliveries_page_newest_first,
        ignored_requests_are_kept_and_ping_answers,
        pruning_deletes_finished_work_and_never_pending_work,
        a_job_holds_its_events_deliveries_until_it_ends,
        a_job_run_that_fails_waits_for_its_retry,
        a_lapsed_job_lease_is_an_attempt_and_waits_its_turn,
        a_completing_event_takes_the_place_of_a_waiting_finalize,
        a_finalize_wait_that_ends_releases_its_event_once,
        a_finalized_waits_for_its_sessions_running_archive,
        a_session_has_one_archive_whoever_carries_its_recording,
        a_finalize_wait_ending_during_an_archive_hands_its_event_on,
        a_finalized_awaiting_the_end_is_due_when_the_session_ends,
        pruning_a_sessions_last_recording_job_names_its_object,
        sessions_are_searched_newest_first_and_paged,
        a_timeline_holds_requests_events_and_every_attempt,
        bulk_retry_requeues_dead_deliveries_of_one_target_or_all,
        recovery_progress_is_kept_under_one_lease,
        a_backfill_queues_what_the_target_lacks_once_behind_live_work,
    ]
);

async fn on_sqlite() -> Option<TestStore> {
    Some(sqlite().await)
}

async fn on_postgres() -> Option<TestStore> {
    postgres().await
}

pub(crate) fn accept_from(
    source: &str,
    session: &str,
    types: &[EventType],
    targets: &[&str],
) -> Inbound {
    Inbound {
        source: source.into(),
        vendor: "pathors".into(),
        session_id: session.into(),
        vendor_event_type: "x".into(),
        message_id: None,
        recovered: false,
        received_at: Timestamp::now(),
        raw: br#"{"raw":true}"#.to_vec().into(),
        jobs: Vec::new(),
        events: types
            .iter()
            .map(|&t| NewEvent {
                id: EventId::derive(source, session, "x", t),
                event_type: t,
                occurred_at: Timestamp::now(),
                facts: Session {
                    id: session.into(),
                    message_count: Some(3),
                    ..Session::default()
                },
                targets: targets.iter().map(|s| s.to_string()).collect(),
                implied: false,
            })
            .collect(),
    }
}

pub(crate) fn accept(session: &str, types: &[EventType], targets: &[&str]) -> Inbound {
    accept_from("src", session, types, targets)
}

fn all() -> DeliveryFilter {
    DeliveryFilter {
        limit: 1000,
        ..Default::default()
    }
}

pub(crate) fn attempt(c: &ClaimedDelivery, next: Completion) -> AttemptRecord {
    AttemptRecord {
        delivery_id: c.id.clone(),
        lease_token: c.lease_token,
        attempt: c.attempts + 1,
        started_at_ms: now_ms(),
        duration_ms: 1,
        status_code: Some(500),
        error: Some("HTTP 500".into()),
        next,
    }
}

async fn a_second_accept_of_the_same_event_is_a_duplicate(s: Arc<dyn Store>) {
    let first = s
        .accept(accept("s1", &[EventType::SessionEnded], &["t"]))
        .await
        .unwrap();
    let again = s
        .accept(accept("s1", &[EventType::SessionEnded], &["t"]))
        .await
        .unwrap();
    let IngestOutcome::Accepted {
        id,
        targets,
        handed,
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!(targets, ["t"]);
    assert!(handed.is_empty(), "nothing was asked to be handed over");
    assert_eq!(again, IngestOutcome::Duplicate { id });
    assert_eq!(
        s.deliveries(all()).await.unwrap().len(),
        1,
        "a duplicate creates no deliveries"
    );
}

async fn concurrent_duplicates_are_accepted_once(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.accept(accept(
                    "s1",
                    &[EventType::SessionEnded, EventType::SessionFinalized],
                    &["a", "b"],
                ))
                .await
                .unwrap()
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), IngestOutcome::Accepted { .. }) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(
        s.deliveries(all()).await.unwrap().len(),
        4,
        "two events times two targets"
    );
}

async fn a_session_is_finalized_once_even_from_two_sources(s: Arc<dyn Store>) {
    let first = s
        .accept(accept_from(
            "a",
            "s1",
            &[EventType::SessionFinalized],
            &["t"],
        ))
        .await
        .unwrap();
    let IngestOutcome::Accepted { id, .. } = first else {
        panic!("{first:?}")
    };
    // Concurrently, from other sources: still the first one.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.accept(accept_from(
                    &format!("b{i}"),
                    "s1",
                    &[EventType::SessionFinalized],
                    &["t"],
                ))
                .await
                .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            IngestOutcome::Duplicate { id: id.clone() }
        );
    }
    let view = s.session("pathors", "s1").await.unwrap().unwrap();
    assert_eq!(view.finalized_event_id, Some(id));
    assert_eq!(view.session.message_count, Some(3));
    assert_eq!(
        s.events(EventFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );
}

async fn events_merge_into_the_session_record_in_any_order(s: Arc<dyn Store>) {
    let at = |secs: i64| {
        Timestamp::parse("2026-05-03T08:00:00Z")
            .unwrap()
            .plus_seconds(secs)
    };
    let mut late = accept("s1", &[EventType::SessionFinalized], &[]);
    late.events[0].occurred_at = at(10);
    late.events[0].facts.message_count = Some(8);
    let mut early = accept("s1", &[EventType::SessionEnded], &[]);
    early.events[0].occurred_at = at(1);
    early.events[0].facts.current_node_id = Some("end".into());
    s.accept(late).await.unwrap();
    s.accept(early).await.unwrap();
    let view = s.session("pathors", "s1").await.unwrap().unwrap();
    assert_eq!(
        view.session.message_count,
        Some(8),
        "the later event's value stays"
    );
    assert_eq!(
        view.session.current_node_id.as_deref(),
        Some("end"),
        "absent never erases"
    );
    // The second event's stored body carries the record as of that event.
    let ended = s
        .events(EventFilter {
            event_type: Some("session.ended".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&ended[0].body).unwrap();
    assert_eq!(body["session"]["messageCount"], 8);
    assert_eq!(body["session"]["currentNodeId"], "end");
    assert!(s.session("pathors", "nope").await.unwrap().is_none());
}

/// Accepts `n` sessions (`s0`, `s1`, …), each with one `session.ended` for target `t`.
pub(crate) async fn ended_sessions(s: &dyn Store, n: usize) {
    for i in 0..n {
        s.accept(accept(&format!("s{i}"), &[EventType::SessionEnded], &["t"]))
            .await
            .unwrap();
    }
}

/// A session's end stored before its start: the start, carrying a fact of its own, merges
/// into the session the end made, and the end's facts are kept. `counted` (a store's count
/// of ingests that read or planned from the stored session) goes up by exactly one: a
/// first event that finds its session stored cannot use what it assumed.
pub(crate) async fn a_start_after_its_end(s: &dyn Store, counted: impl Fn() -> u64) {
    s.accept(accept("late", &[EventType::SessionEnded], &["t"]))
        .await
        .unwrap();
    let before = counted();
    let mut late_start = accept("late", &[EventType::SessionStarted], &["t"]);
    late_start.events[0]
        .facts
        .variables
        .insert("from_start".into(), serde_json::json!(true));
    let merged = s.accept(late_start).await.unwrap();
    assert!(
        matches!(merged, IngestOutcome::Accepted { .. }),
        "{merged:?}"
    );
    assert_eq!(counted() - before, 1);
    let view = s.session("pathors", "late").await.unwrap().unwrap();
    assert_eq!(
        view.session.variables["from_start"],
        serde_json::json!(true)
    );
    assert_eq!(
        view.session.message_count,
        Some(3),
        "the end's facts are kept"
    );
}

/// Claims one due delivery of `t` under a 1 ms lease and lets the lease end: what a stale
/// worker holds once the delivery is claimed again.
pub(crate) async fn a_lapsed_claim(s: &dyn Store) -> ClaimedDelivery {
    let claim = s
        .claim_due("t", 1, std::time::Duration::from_millis(1))
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    claim
}
