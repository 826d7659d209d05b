//! Cases for the operator's lists: session search, a session's timeline, bulk retry.

use super::*;

/// Kills every pending delivery of `target` after one failed attempt.
async fn kill_all(s: &Arc<dyn Store>, target: &str) -> usize {
    let claimed = s
        .claim_due(target, 100, Duration::from_secs(60))
        .await
        .unwrap();
    for c in &claimed {
        s.finish_attempt(attempt(c, Completion::Dead))
            .await
            .unwrap();
    }
    claimed.len()
}

pub(super) async fn sessions_are_searched_newest_first_and_paged(s: Arc<dyn Store>) {
    for i in 0..5 {
        s.accept(accept(
            &format!("s{i}"),
            &[EventType::SessionStarted],
            &["t"],
        ))
        .await
        .unwrap();
        // Distinct first-seen times, so that newest first is decided by the clock.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let page = |limit, before| SessionFilter {
        limit,
        before,
        ..Default::default()
    };
    let first = s.sessions(page(2, None)).await.unwrap();
    let ids: Vec<_> = first.iter().map(|l| l.view.session.id.clone()).collect();
    assert_eq!(ids, ["s4", "s3"]);
    assert!(first[0].view.first_seen_at >= first[1].view.first_seen_at);
    let cursor = (first[1].view.first_seen_at.unix_millis(), first[1].seq);
    let second = s.sessions(page(10, Some(cursor))).await.unwrap();
    let ids: Vec<_> = second.iter().map(|l| l.view.session.id.clone()).collect();
    assert_eq!(
        ids,
        ["s2", "s1", "s0"],
        "the next page starts after the cursor"
    );

    let by_id = |vendor: Option<&str>, vendors: &[&str]| SessionFilter {
        vendor: vendor.map(Into::into),
        session_id: Some("s2".into()),
        vendors: vendors.iter().map(|v| v.to_string()).collect(),
        limit: 10,
        ..Default::default()
    };
    let found = s
        .sessions(by_id(None, &["agntix", "pathors"]))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].view.vendor, "pathors");
    assert_eq!(found[0].view.session.message_count, Some(3));
    assert!(
        s.sessions(by_id(Some("agntix"), &[]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.sessions(by_id(Some("pathors"), &[])).await.unwrap().len(),
        1
    );

    // A time window: first seen at or after the third session, before the fifth.
    let all = s.sessions(page(10, None)).await.unwrap();
    let window = SessionFilter {
        since: Some(all[2].view.first_seen_at.unix_millis()),
        until: Some(all[0].view.first_seen_at.unix_millis()),
        limit: 10,
        ..Default::default()
    };
    let ids: Vec<_> = s
        .sessions(window)
        .await
        .unwrap()
        .iter()
        .map(|l| l.view.session.id.clone())
        .collect();
    assert_eq!(ids, ["s3", "s2"]);
}

pub(super) async fn a_timeline_holds_requests_events_and_every_attempt(s: Arc<dyn Store>) {
    s.accept(accept_from("a", "s1", &[EventType::SessionStarted], &["t"]))
        .await
        .unwrap();
    s.accept(accept_from(
        "b",
        "s1",
        &[EventType::SessionEnded],
        &["t", "u"],
    ))
    .await
    .unwrap();
    // Another session's events stay out of it.
    s.accept(accept_from("a", "s2", &[EventType::SessionEnded], &["t"]))
        .await
        .unwrap();
    kill_all(&s, "u").await;
    // The vendor sent the start again: a duplicate, shown with the requests it repeated.
    let started = EventId::derive("a", "s1", "x", EventType::SessionStarted);
    s.record_receipt(Receipt {
        outcome: ReceiptOutcome::Duplicate,
        source: "a".into(),
        vendor_event_type: Some("x".into()),
        message_id: None,
        received_at: Timestamp::now(),
        raw: b"{\"again\":true}".to_vec().into(),
        repeats: Some(started.as_str().to_owned()),
    })
    .await
    .unwrap();

    let timeline = s
        .timeline("pathors", vec!["a".into(), "b".into()], "s1")
        .await
        .unwrap();
    let types: Vec<_> = timeline
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(types, ["session.started", "session.ended"], "oldest first");
    assert_eq!(
        timeline.receipts.len(),
        3,
        "both requests and the duplicate"
    );
    assert_eq!(&timeline.receipts[0].raw[..], br#"{"raw":true}"#);
    assert_eq!(timeline.receipts[2].outcome, "duplicate");
    assert_eq!(&timeline.receipts[2].raw[..], br#"{"again":true}"#);
    assert_eq!(timeline.deliveries.len(), 3);
    let dead: Vec<_> = timeline
        .deliveries
        .iter()
        .filter(|d| d.status == DeliveryStatus::Dead)
        .collect();
    assert_eq!(dead.len(), 1);
    let log = dead[0].attempt_log.as_ref().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status_code, Some(500));
    assert_eq!(log[0].error.as_deref(), Some("HTTP 500"));

    let only_a = s.timeline("pathors", vec!["a".into()], "s1").await.unwrap();
    assert_eq!(only_a.events.len(), 1, "looked up under the sources given");
    assert!(
        s.timeline("pathors", vec![], "s1")
            .await
            .unwrap()
            .events
            .is_empty()
    );
    let elsewhere = s.timeline("agntix", vec!["a".into()], "s1").await.unwrap();
    assert!(elsewhere.events.is_empty(), "another vendor's session s1");
}

pub(super) async fn bulk_retry_requeues_dead_deliveries_of_one_target_or_all(s: Arc<dyn Store>) {
    for i in 0..3 {
        s.accept(accept(
            &format!("s{i}"),
            &[EventType::SessionEnded],
            &["t", "u"],
        ))
        .await
        .unwrap();
    }
    assert_eq!(kill_all(&s, "t").await, 3);
    assert_eq!(kill_all(&s, "u").await, 3);
    let dead = |target: Option<&str>| DeliveryFilter {
        status: Some(DeliveryStatus::Dead),
        target: target.map(Into::into),
        ..all()
    };
    assert_eq!(s.deliveries(dead(Some("t"))).await.unwrap().len(), 3);

    let one = s.retry_dead(Some("t".into())).await.unwrap();
    assert_eq!(one.retried, 3);
    assert_eq!(one.targets, ["t"]);
    assert!(s.deliveries(dead(Some("t"))).await.unwrap().is_empty());
    assert_eq!(
        s.deliveries(dead(None)).await.unwrap().len(),
        3,
        "u's stay dead"
    );
    let again = s.claim_due("t", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again.len(), 3);
    assert!(
        again.iter().all(|c| c.attempts == 0),
        "a fresh attempt budget"
    );

    let rest = s.retry_dead(None).await.unwrap();
    assert_eq!(rest.retried, 3);
    assert_eq!(rest.targets, ["u"]);
    assert_eq!(s.retry_dead(None).await.unwrap().retried, 0);
}
