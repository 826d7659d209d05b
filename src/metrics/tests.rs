use super::*;

#[test]
fn events_are_counted_with_their_labels() {
    let m = Metrics::new();
    let id = EventId::derive("p", "s", "x", crate::event::EventType::CallEnded);
    m.ingested(
        "pathors",
        IngestResult::Accepted(&id),
        Duration::from_millis(2),
    );
    m.ingested(
        "pathors",
        IngestResult::Duplicate(&id),
        Duration::from_millis(1),
    );
    m.ingested(
        "pathors",
        IngestResult::Rejected {
            reason: "unauthorized",
            message: "x",
            internal: false,
        },
        Duration::from_millis(1),
    );
    m.attempted(
        "crm",
        AttemptResult::Delivered,
        Duration::from_millis(5),
        Some(200),
        // Received just now; the vendor says it happened months ago (as the documented
        // fixtures do).
        Some(Timestamp::now()),
        Timestamp::parse("2026-05-03T08:42:11Z"),
    );
    m.attempted(
        "crm",
        AttemptResult::Dead {
            error: "HTTP 500",
            max_attempts: 1,
        },
        Duration::ZERO,
        Some(500),
        None,
        None,
    );
    m.set_delivery_counts(
        &["crm".to_owned()],
        &[
            TargetCounts {
                target: "crm".into(),
                pending: 7,
                dead: 2,
            },
            TargetCounts {
                target: "removed".into(),
                pending: 3,
                dead: 0,
            },
        ],
    );
    let text = m.render();
    for line in [
        r#"sessiongate_received_total{source="pathors"} 3"#,
        r#"sessiongate_accepted_total{source="pathors"} 1"#,
        r#"sessiongate_duplicate_total{source="pathors"} 1"#,
        r#"sessiongate_rejected_total{source="pathors",reason="unauthorized"} 1"#,
        r#"sessiongate_delivered_total{target="crm"} 1"#,
        r#"sessiongate_delivery_failed_attempts_total{target="crm"} 1"#,
        r#"sessiongate_dead_total{target="crm"} 1"#,
        r#"sessiongate_queue_depth{target="crm"} 7"#,
        r#"sessiongate_deliveries_dead{target="crm"} 2"#,
        r#"sessiongate_orphaned_deliveries{target="removed"} 3"#,
        &format!(
            r#"sessiongate_build_info{{version="{}"}} 1"#,
            crate::VERSION
        ),
        r#"sessiongate_end_to_end_seconds_count{target="crm"} 1"#,
        r#"sessiongate_ingest_duration_seconds_count{source="pathors"} 3"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(!text.contains("queue_depth{target=\"removed\"}"));
    // End to end counts from the gateway's receipt: within the first buckets. The
    // vendor-to-receiver figure keeps the vendor's months: only in +Inf.
    let bucket = |name: &str, le: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("sessiongate_{name}_bucket{{"))
                    && l.contains(&format!("le=\"{le}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|n| n.parse::<u64>().unwrap())
            .unwrap_or_else(|| panic!("no {name} bucket {le} in\n{text}"))
    };
    assert_eq!(bucket("end_to_end_seconds", "0.25"), 1);
    assert_eq!(bucket("vendor_to_receiver_seconds", "86400.0"), 0);
    assert_eq!(bucket("vendor_to_receiver_seconds", "+Inf"), 1);
}

#[test]
fn prometheus_text_names_counters_with_their_suffix_and_has_no_eof() {
    let m = Metrics::new();
    m.ingested("p", IngestResult::Ignored(None), Duration::ZERO);
    let text = m.render_prometheus();
    assert!(
        text.contains("# TYPE sessiongate_received_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# HELP sessiongate_received_total "),
        "{text}"
    );
    assert!(text.contains("sessiongate_received_total{source=\"p\"} 1\n"));
    assert!(text.contains("# TYPE sessiongate_ingest_duration_seconds histogram\n"));
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    assert!(m.render().ends_with("# EOF\n"));
}
