//! The suite's cases about recovery progress and its lease, and backfills.

use std::sync::Arc;
use std::time::Duration;

use super::*;

const LEASE: Duration = Duration::from_secs(60);

pub(super) async fn recovery_progress_is_kept_under_one_lease(s: Arc<dyn Store>) {
    let first = s.claim_recovery("retell", LEASE).await.unwrap().unwrap();
    assert_eq!(first.progress, RecoveryProgress::default(), "never polled");
    assert!(
        s.claim_recovery("retell", LEASE).await.unwrap().is_none(),
        "held by the first run"
    );
    assert!(
        s.claim_recovery("vapi", LEASE).await.unwrap().is_some(),
        "each source has its own"
    );
    let midway = RecoveryProgress {
        done_until: Some(1_000),
        window: Some((900, 2_000)),
        cursor: Some("page-2".into()),
    };
    assert!(
        s.save_recovery("retell", first.token, midway.clone(), LEASE)
            .await
            .unwrap()
    );
    assert!(
        !s.save_recovery(
            "retell",
            first.token + 1,
            RecoveryProgress::default(),
            LEASE
        )
        .await
        .unwrap(),
        "another run's token saves nothing"
    );
    assert!(s.claim_recovery("retell", LEASE).await.unwrap().is_none());
    // Released (a restart after a failed poll): the next run resumes at the page saved.
    assert!(
        s.save_recovery("retell", first.token, midway.clone(), Duration::ZERO)
            .await
            .unwrap()
    );
    let next = s.claim_recovery("retell", LEASE).await.unwrap().unwrap();
    assert_eq!(next.progress, midway);
    assert!(
        !s.save_recovery("retell", first.token, RecoveryProgress::default(), LEASE)
            .await
            .unwrap(),
        "the first run's lease has passed on"
    );
    // A lease that runs out is taken over.
    let short = Duration::from_millis(1);
    assert!(
        s.save_recovery("retell", next.token, midway.clone(), short)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(s.claim_recovery("retell", LEASE).await.unwrap().is_some());
}

fn backfill(target: &str, dry_run: bool) -> Backfill {
    Backfill {
        target: target.into(),
        since: Timestamp::now().minus(Duration::from_secs(3600)),
        until: Timestamp::now().plus_millis(1_000),
        sources: None,
        event_types: None,
        dry_run,
        spacing_ms: 60_000,
    }
}

pub(super) async fn a_backfill_queues_what_the_target_lacks_once_behind_live_work(
    s: Arc<dyn Store>,
) {
    use EventType::*;
    // Two sessions the new target "b" never got; one event "b" has already.
    s.accept(accept("s1", &[SessionStarted, SessionEnded], &["a"]))
        .await
        .unwrap();
    s.accept(accept_from("other", "s2", &[SessionEnded], &["a"]))
        .await
        .unwrap();
    s.accept(accept("s3", &[SessionFinalized], &["a", "b"]))
        .await
        .unwrap();
    // A held event gets its deliveries when its job ends: not backfilled.
    s.accept(super::jobs::with_job(
        accept("s4", &[SessionFinalized], &["a"]),
        60_000,
    ))
    .await
    .unwrap();
    assert_eq!(s.backfill(backfill("b", true)).await.unwrap(), 3);
    let pending_b = |s: Arc<dyn Store>| async move {
        s.deliveries(DeliveryFilter {
            target: Some("b".into()),
            ..all()
        })
        .await
        .unwrap()
        .len()
    };
    assert_eq!(pending_b(s.clone()).await, 1, "a dry run queues nothing");
    // The target's filters choose.
    let only_ended = Backfill {
        event_types: Some(vec![SessionEnded]),
        sources: Some(vec!["src".into()]),
        ..backfill("b", true)
    };
    assert_eq!(s.backfill(only_ended).await.unwrap(), 1);
    let outside = Backfill {
        until: Timestamp::now().minus(Duration::from_secs(1800)),
        ..backfill("b", true)
    };
    assert_eq!(
        s.backfill(outside).await.unwrap(),
        0,
        "received in the window"
    );

    assert_eq!(s.backfill(backfill("b", false)).await.unwrap(), 3);
    assert_eq!(pending_b(s.clone()).await, 4);
    assert_eq!(
        s.backfill(backfill("b", false)).await.unwrap(),
        0,
        "queued once"
    );
    // Spread out from now: the live delivery and the first backfilled one are due, the
    // rest a spacing apart after.
    let due = s.next_due_at("b").await.unwrap().unwrap();
    assert!(due <= now_ms());
    let claimed = s.claim_due("b", 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 2, "the rest fall due later");
}
