//! The suite's cases about deliveries: claims, leases, hand-over, results, retries,
//! replays, listings and retention.

use std::sync::Arc;
use std::time::Duration;

use super::*;

pub(super) async fn claims_lease_and_finishing_moves_deliveries_on(s: Arc<dyn Store>) {
    s.accept(accept("s1", &[EventType::SessionEnded], &["t"]))
        .await
        .unwrap();
    s.accept(accept("s2", &[EventType::SessionEnded], &["t", "u"]))
        .await
        .unwrap();
    let lease = Duration::from_secs(60);
    let claimed = s.claim_due("t", 10, lease).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(&claimed[0].raw[..], br#"{"raw":true}"#);
    assert!(claimed[0].occurred_at.is_some());
    assert!(
        s.claim_due("t", 10, lease).await.unwrap().is_empty(),
        "leased"
    );
    assert_eq!(s.next_due_at("t").await.unwrap(), None);

    s.finish_attempt(attempt(&claimed[0], Completion::Delivered))
        .await
        .unwrap();
    s.finish_attempt(attempt(
        &claimed[1],
        Completion::RetryAt {
            unix_ms: now_ms() - 1,
        },
    ))
    .await
    .unwrap();
    let again = s.claim_due("t", 10, lease).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, claimed[1].id);
    assert_eq!(again[0].attempts, 1);
    s.finish_attempt(attempt(&again[0], Completion::Dead))
        .await
        .unwrap();

    let dead = s
        .deliveries(DeliveryFilter {
            status: Some(DeliveryStatus::Dead),
            with_attempts: true,
            ..all()
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].last_status, Some(500));
    assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(dead[0].attempt_log.as_ref().unwrap().len(), 2);
    assert!(
        s.next_due_at("u").await.unwrap().is_some(),
        "other targets untouched"
    );
    let mut counts = s.delivery_counts().await.unwrap();
    counts.sort_by(|a, b| a.target.cmp(&b.target));
    assert_eq!(
        counts,
        [
            TargetCounts {
                target: "t".into(),
                pending: 0,
                dead: 1
            },
            TargetCounts {
                target: "u".into(),
                pending: 1,
                dead: 0
            }
        ]
    );
}

pub(super) async fn handed_over_deliveries_are_committed_leased(s: Arc<dyn Store>) {
    let lease = Duration::from_secs(60);
    let both = accept(
        "s1",
        &[EventType::SessionEnded, EventType::SessionFinalized],
        &["t", "u"],
    );
    let to_t = Handoff::new(vec![("t".into(), lease)]);
    let IngestOutcome::Accepted {
        targets, handed, ..
    } = s
        .accept_handing_over(both.clone(), to_t.clone())
        .await
        .unwrap()
    else {
        panic!("accepted")
    };
    assert_eq!(targets, ["u"], "only the target not handed over is woken");
    assert_eq!(handed.len(), 2, "one per event");
    for (h, event) in handed.iter().zip(&both.events) {
        assert_eq!(h.target, "t");
        assert_eq!(h.delivery.event_id, event.id);
        assert_eq!(h.delivery.attempts, 0);
        assert_eq!(&h.delivery.raw[..], br#"{"raw":true}"#);
        let stored = s.event(event.id.as_str()).await.unwrap().unwrap();
        assert_eq!(h.delivery.body, stored.body, "the body as committed");
    }
    assert!(
        s.claim_due("t", 10, lease).await.unwrap().is_empty(),
        "handed-over deliveries are leased: no worker claims them again"
    );
    assert_eq!(s.next_due_at("t").await.unwrap(), None);
    assert_eq!(s.claim_due("u", 10, lease).await.unwrap().len(), 2);

    // The hand-over's token is the lease: its result is recorded.
    s.finish_attempt(AttemptRecord {
        next: Completion::Delivered,
        status_code: Some(200),
        error: None,
        ..attempt(&handed[0].delivery, Completion::Delivered)
    })
    .await
    .unwrap();
    s.finish_attempt(attempt(
        &handed[1].delivery,
        Completion::RetryAt {
            unix_ms: now_ms() - 1,
        },
    ))
    .await
    .unwrap();
    let delivered = s
        .deliveries(DeliveryFilter {
            status: Some(DeliveryStatus::Delivered),
            ..all()
        })
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].id, handed[0].delivery.id);
    let retried = s.claim_due("t", 10, lease).await.unwrap();
    assert_eq!(retried.len(), 1, "a failed hand-over is retried by claim");
    assert_eq!(retried[0].id, handed[1].delivery.id);
    assert_eq!(retried[0].attempts, 1);

    // A duplicate hands nothing over.
    let again = accept("s1", &[EventType::SessionEnded], &["t"]);
    assert!(matches!(
        s.accept_handing_over(again, to_t).await.unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
}

pub(super) async fn concurrent_events_of_one_session_all_merge(s: Arc<dyn Store>) {
    // Distinct events of one session committed at once (on PostgreSQL, racing to change
    // the same row): each one's facts must survive in the record.
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut a = accept_from(&format!("v{i}"), "s1", &[EventType::SessionEnded], &["t"]);
                a.events[0]
                    .facts
                    .variables
                    .insert(format!("k{i}"), serde_json::json!(i));
                s.accept(a).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), IngestOutcome::Accepted { .. }));
    }
    let view = s.session("pathors", "s1").await.unwrap().unwrap();
    let mut keys: Vec<_> = view.session.variables.keys().cloned().collect();
    keys.sort();
    let mut want: Vec<_> = (0..12).map(|i| format!("k{i}")).collect();
    want.sort();
    assert_eq!(keys, want, "no event's facts were lost");
    assert_eq!(s.deliveries(all()).await.unwrap().len(), 12);
}

pub(super) async fn a_result_after_the_lease_passed_on_is_dropped(s: Arc<dyn Store>) {
    ended_sessions(&*s, 1).await;
    let short = a_lapsed_claim(&*s).await;
    let taken_over = s
        .claim_due("t", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        taken_over.id, short.id,
        "an expired lease can be claimed again"
    );
    s.finish_attempt(attempt(&short, Completion::Dead))
        .await
        .unwrap();
    s.finish_attempt(attempt(&taken_over, Completion::Delivered))
        .await
        .unwrap();
    let d = s.deliveries(all()).await.unwrap();
    assert_eq!(
        d[0].status,
        DeliveryStatus::Delivered,
        "the stale worker's verdict did not count"
    );
}

/// Results arriving together are recorded together (both backends group them): each
/// once, under its own lease, and a stale one among them is still dropped.
pub(super) async fn results_arriving_together_are_each_recorded_once(s: Arc<dyn Store>) {
    ended_sessions(&*s, 40).await;
    let short = a_lapsed_claim(&*s).await;
    let claimed = s
        .claim_due("t", 100, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        claimed.len(),
        40,
        "the expired lease is claimed again with the rest"
    );
    let mut results: Vec<AttemptRecord> = claimed
        .iter()
        .map(|c| attempt(c, Completion::Delivered))
        .collect();
    // The stale worker's verdict arrives among the others.
    results.insert(20, attempt(&short, Completion::Dead));
    let tasks: Vec<_> = results
        .into_iter()
        .map(|r| {
            let s = s.clone();
            tokio::spawn(async move { s.finish_attempt(r).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let d = s
        .deliveries(DeliveryFilter {
            with_attempts: true,
            ..all()
        })
        .await
        .unwrap();
    assert_eq!(d.len(), 40);
    for delivery in &d {
        assert_eq!(
            delivery.status,
            DeliveryStatus::Delivered,
            "{}",
            delivery.id
        );
        assert_eq!(delivery.attempts, 1);
        assert_eq!(
            delivery.attempt_log.as_ref().unwrap().len(),
            1,
            "one line per recorded attempt; none for the stale one"
        );
    }
}

/// A receiver's answer is kept in the attempt's error as text, whatever bytes it held: a
/// NUL (which PostgreSQL's text refuses) must not stop the result from being recorded, nor
/// the results recorded with it.
pub(super) async fn a_result_whose_error_holds_a_nul_is_recorded(s: Arc<dyn Store>) {
    ended_sessions(&*s, 2).await;
    let claimed = s.claim_due("t", 10, Duration::from_secs(60)).await.unwrap();
    let mut odd = attempt(&claimed[0], Completion::Dead);
    odd.error = Some("HTTP 500: a\0b".into());
    let (odd, fine) = tokio::join!(
        s.finish_attempt(odd),
        s.finish_attempt(attempt(&claimed[1], Completion::Dead))
    );
    odd.unwrap();
    fine.unwrap();
    let d = s.deliveries(all()).await.unwrap();
    assert!(d.iter().all(|d| d.status == DeliveryStatus::Dead));
    let odd = d.iter().find(|d| d.id == claimed[0].id).unwrap();
    let kept = odd.last_error.as_deref().unwrap();
    assert_eq!(kept, "HTTP 500: a\u{FFFD}b");
}

pub(super) async fn retry_requeues_only_dead_deliveries_and_replay_adds_deliveries(
    s: Arc<dyn Store>,
) {
    let IngestOutcome::Accepted { id, .. } = s
        .accept(accept("s1", &[EventType::SessionEnded], &["t"]))
        .await
        .unwrap()
    else {
        panic!()
    };
    let claimed = s
        .claim_due("t", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        s.retry_delivery(claimed.id.as_str()).await.unwrap(),
        RetryOutcome::NotDead(DeliveryStatus::Pending)
    );
    assert_eq!(
        s.retry_delivery("dlv_nope").await.unwrap(),
        RetryOutcome::NotFound
    );
    s.finish_attempt(attempt(&claimed, Completion::Dead))
        .await
        .unwrap();
    assert_eq!(
        s.retry_delivery(claimed.id.as_str()).await.unwrap(),
        RetryOutcome::Requeued { target: "t".into() }
    );
    let again = s.claim_due("t", 1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again[0].attempts, 0, "a fresh attempt budget");
    let log = s
        .deliveries(DeliveryFilter {
            with_attempts: true,
            ..all()
        })
        .await
        .unwrap();
    assert_eq!(
        log[0].attempt_log.as_ref().unwrap().len(),
        1,
        "history is kept"
    );

    assert_eq!(s.replay("evt_nope", vec!["t".into()]).await.unwrap(), None);
    let replayed = s
        .replay(id.as_str(), vec!["t".into(), "u".into()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replayed.len(), 2);
    // Another event's delivery stays out of the event's list.
    s.accept(accept("s2", &[EventType::SessionEnded], &["t"]))
        .await
        .unwrap();
    let of_event = s
        .deliveries(DeliveryFilter {
            event_id: Some(id.as_str().to_owned()),
            ..all()
        })
        .await
        .unwrap();
    let mut found: Vec<_> = of_event.iter().map(|d| d.id.clone()).collect();
    found.retain(|d| replayed.contains(d));
    assert_eq!(of_event.len(), 3, "the first delivery and both replays");
    assert_eq!(found.len(), 2, "the replays are found by their event");
    assert!(of_event.iter().all(|d| d.event_id == id));
    let mut depth: Vec<_> = s
        .delivery_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.target, c.pending))
        .collect();
    depth.sort();
    assert_eq!(depth, [("t".to_owned(), 3), ("u".to_owned(), 1)]);
}

pub(super) async fn events_and_deliveries_page_newest_first(s: Arc<dyn Store>) {
    for i in 0..5 {
        s.accept(accept(&format!("s{i}"), &[EventType::SessionEnded], &["t"]))
            .await
            .unwrap();
    }
    let first = s
        .events(EventFilter {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let rest = s
        .events(EventFilter {
            limit: 10,
            before: Some(first[1].seq),
            ..Default::default()
        })
        .await
        .unwrap();
    let sessions: Vec<_> = first
        .iter()
        .chain(rest.iter())
        .map(|e| e.session_id.clone())
        .collect();
    assert_eq!(sessions, ["s4", "s3", "s2", "s1", "s0"]);
    let one = s
        .events(EventFilter {
            session_id: Some("s2".into()),
            source: Some("src".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert!(s.event(one[0].id.as_str()).await.unwrap().is_some());
    assert!(s.event("evt_nope").await.unwrap().is_none());

    let page = s
        .deliveries(DeliveryFilter { limit: 3, ..all() })
        .await
        .unwrap();
    let rest = s
        .deliveries(DeliveryFilter {
            before: Some(page[2].seq),
            ..all()
        })
        .await
        .unwrap();
    assert_eq!(page.len() + rest.len(), 5);
    assert!(page[0].seq > page[2].seq && rest[0].seq < page[2].seq);
}

pub(super) async fn ignored_requests_are_kept_and_ping_answers(s: Arc<dyn Store>) {
    s.record_receipt(Receipt {
        outcome: ReceiptOutcome::Ignored,
        source: "src".into(),
        vendor_event_type: Some("message.added".into()),
        message_id: Some("msg_1".into()),
        received_at: Timestamp::now(),
        raw: b"{}".to_vec().into(),
        repeats: None,
    })
    .await
    .unwrap();
    s.ping().await.unwrap();
    assert!(s.deliveries(all()).await.unwrap().is_empty());
    s.accept(accept("s1", &[EventType::SessionEnded], &["t"]))
        .await
        .unwrap();
    let listed = s
        .receipts(ReceiptFilter {
            limit: 10,
            ..ReceiptFilter::default()
        })
        .await
        .unwrap();
    let outcomes: Vec<_> = listed.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["accepted", "ignored"], "newest first");
    assert_eq!(&listed[1].raw[..], b"{}");
    assert_eq!(listed[1].message_id.as_deref(), Some("msg_1"));
    let ignored = s
        .receipts(ReceiptFilter {
            outcome: Some("ignored".into()),
            before: Some(listed[0].seq),
            limit: 10,
            ..ReceiptFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ignored.len(), 1);
}

pub(super) async fn pruning_deletes_finished_work_and_never_pending_work(s: Arc<dyn Store>) {
    let lease = Duration::from_secs(60);
    for session in ["delivered", "pending", "dead"] {
        s.accept(accept(session, &[EventType::SessionEnded], &["t"]))
            .await
            .unwrap();
    }
    s.record_receipt(Receipt {
        outcome: ReceiptOutcome::Ignored,
        source: "src".into(),
        vendor_event_type: Some("other".into()),
        message_id: None,
        received_at: Timestamp::now(),
        raw: b"{}".to_vec().into(),
        repeats: None,
    })
    .await
    .unwrap();
    let claimed = s.claim_due("t", 10, lease).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let session_of = |c: &ClaimedDelivery| c.event_id.clone();
    for c in &claimed {
        let next = if session_of(c)
            == EventId::derive("src", "delivered", "x", EventType::SessionEnded)
        {
            Completion::Delivered
        } else if session_of(c) == EventId::derive("src", "dead", "x", EventType::SessionEnded) {
            Completion::Dead
        } else {
            Completion::RetryAt {
                unix_ms: now_ms() + 60_000,
            }
        };
        s.finish_attempt(attempt(c, next)).await.unwrap();
    }

    // Nothing is old yet: nothing goes.
    let nothing = s
        .prune(Timestamp::from_unix_millis(now_ms() - 3_600_000))
        .await
        .unwrap();
    assert_eq!(nothing, Pruned::default());

    // Everything is old: what is finished goes, the pending delivery and its event stay.
    let pruned = s
        .prune(Timestamp::from_unix_millis(now_ms() + 60_000))
        .await
        .unwrap();
    assert_eq!(
        (
            pruned.events,
            pruned.deliveries,
            pruned.attempts,
            pruned.receipts
        ),
        (2, 2, 2, 3),
        "{pruned:?}"
    );
    let events = s
        .events(EventFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].session_id, "pending");
    let deliveries = s.deliveries(all()).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, DeliveryStatus::Pending);
    assert_eq!(deliveries[0].attempts, 1);
    let receipts = s
        .receipts(ReceiptFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(receipts.len(), 1, "the pending event's receipt stays");
    assert!(
        s.session("pathors", "delivered").await.unwrap().is_some(),
        "records stay"
    );
    // A second run finds nothing more.
    let again = s
        .prune(Timestamp::from_unix_millis(now_ms() + 60_000))
        .await
        .unwrap();
    assert_eq!(again, Pruned::default());
}
