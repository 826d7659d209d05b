//! Prometheus metrics, and the telemetry events that feed them.
//!
//! Each thing worth observing is one method here that both logs and counts with the same
//! labels, so logs and metrics always agree. `/metrics` renders the registry in the
//! Prometheus/OpenMetrics text format; the queue depth is read from the store at scrape time
//! (it must be right across restarts and replicas, which a counter in memory is not).
//!
//! Labels are bounded: source and target names come from the configuration, never from a
//! request (an unknown source is counted as `_unknown`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::event::{EventId, Timestamp};
use crate::store::{Pruned, TargetCounts};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    source: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputLabels {
    target: String,
    output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn ingest_buckets() -> Histogram {
    // 0.25 ms … ~4 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_25, 2.0, 15,
    ))
}

fn attempt_buckets() -> Histogram {
    // 1 ms … ~33 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

fn end_to_end_buckets() -> Histogram {
    // Vendors may deliver late (Agntix retries for a day), so this reaches far.
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        21600.0, 86400.0,
    ])
}

/// The source label for requests to a source name that is not configured.
pub const UNKNOWN_SOURCE: &str = "_unknown";

/// How an ingest request ended, for [`Metrics::ingested`].
pub enum IngestResult<'a> {
    Accepted(&'a EventId),
    Duplicate(&'a EventId),
    Ignored(Option<&'a str>),
    Rejected {
        reason: &'static str,
        message: &'a str,
        internal: bool,
    },
}

/// How a delivery attempt ended, for [`Metrics::attempted`].
pub enum AttemptResult<'a> {
    Delivered,
    Retry { retry_in: Duration, error: &'a str },
    Dead { error: &'a str, max_attempts: u32 },
}

pub struct Metrics {
    registry: Registry,
    received: Family<SourceLabels, Counter>,
    accepted: Family<SourceLabels, Counter>,
    duplicate: Family<SourceLabels, Counter>,
    ignored: Family<SourceLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    ingest_seconds: Histograms<SourceLabels>,
    delivered: Family<TargetLabels, Counter>,
    failed_attempts: Family<TargetLabels, Counter>,
    dead: Family<TargetLabels, Counter>,
    queue_depth: Family<TargetLabels, Gauge>,
    deliveries_dead: Family<TargetLabels, Gauge>,
    orphaned: Family<TargetLabels, Gauge>,
    pruned: Family<KindLabels, Counter>,
    claims: Family<TargetLabels, Counter>,
    handed_over: Family<TargetLabels, Counter>,
    targets: Family<OutputLabels, Gauge>,
    recordings_archived: Counter,
    recordings_failed: Family<ReasonLabels, Counter>,
    recording_bytes: Counter,
    connections_closed: Family<ReasonLabels, Counter>,
    attempt_seconds: Histograms<TargetLabels>,
    end_to_end_seconds: Histograms<TargetLabels>,
    vendor_to_receiver_seconds: Histograms<TargetLabels>,
    recovered: Family<SourceLabels, Counter>,
    recovery_last_success: Family<SourceLabels, Gauge>,
    recovery_errors: Family<RejectLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sessiongate");
        let m = Metrics {
            received: Family::default(),
            accepted: Family::default(),
            duplicate: Family::default(),
            ignored: Family::default(),
            rejected: Family::default(),
            ingest_seconds: Family::new_with_constructor(ingest_buckets),
            delivered: Family::default(),
            failed_attempts: Family::default(),
            dead: Family::default(),
            queue_depth: Family::default(),
            deliveries_dead: Family::default(),
            orphaned: Family::default(),
            pruned: Family::default(),
            claims: Family::default(),
            handed_over: Family::default(),
            targets: Family::default(),
            recordings_archived: Counter::default(),
            recordings_failed: Family::default(),
            recording_bytes: Counter::default(),
            connections_closed: Family::default(),
            attempt_seconds: Family::new_with_constructor(attempt_buckets),
            end_to_end_seconds: Family::new_with_constructor(end_to_end_buckets),
            vendor_to_receiver_seconds: Family::new_with_constructor(end_to_end_buckets),
            recovered: Family::default(),
            recovery_last_success: Family::default(),
            recovery_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "received",
            "Ingest requests received, per source",
            m.received.clone(),
        );
        registry.register(
            "accepted",
            "Vendor events accepted and stored",
            m.accepted.clone(),
        );
        registry.register(
            "duplicate",
            "Vendor events seen before (answered 200, not forwarded)",
            m.duplicate.clone(),
        );
        registry.register(
            "ignored",
            "Authenticated events of types no adapter maps",
            m.ignored.clone(),
        );
        registry.register(
            "rejected",
            "Ingest requests refused, by reason (the error code)",
            m.rejected.clone(),
        );
        registry.register(
            "ingest_duration_seconds",
            "Time from request to answer, commit included",
            m.ingest_seconds.clone(),
        );
        registry.register(
            "delivered",
            "Deliveries acknowledged with 2xx",
            m.delivered.clone(),
        );
        registry.register(
            "delivery_failed_attempts",
            "Delivery attempts that failed",
            m.failed_attempts.clone(),
        );
        registry.register(
            "dead",
            "Deliveries that ran out of attempts",
            m.dead.clone(),
        );
        registry.register(
            "queue_depth",
            "Pending deliveries (due or waiting to retry)",
            m.queue_depth.clone(),
        );
        registry.register(
            "deliveries_dead",
            "Dead deliveries now (kept, retryable from the admin API)",
            m.deliveries_dead.clone(),
        );
        registry.register(
            "orphaned_deliveries",
            "Pending deliveries of a target no longer configured; delivered once it is again",
            m.orphaned.clone(),
        );
        registry.register(
            "retention_pruned",
            "Rows deleted by retention, by kind (events, receipts, deliveries, attempts)",
            m.pruned.clone(),
        );
        let build_info: Family<VersionLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabels {
                version: crate::VERSION.to_owned(),
            })
            .set(1);
        registry.register("build_info", "The running build (always 1)", build_info);
        registry.register(
            "recordings_archived",
            "Recordings archived to the store",
            m.recordings_archived.clone(),
        );
        registry.register(
            "recordings_failed",
            "Recordings that could not be archived, by reason (expired, too_large, http_<status>, io)",
            m.recordings_failed.clone(),
        );
        registry.register(
            "recording_bytes",
            "Bytes of recordings archived",
            m.recording_bytes.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the server closed to keep room, by reason (peer_cap, idle_at_cap, full)",
            m.connections_closed.clone(),
        );
        registry.register(
            "target_info",
            "Each configured target and its output kind (http, nats, amqp, redis; always 1): join on `target`",
            m.targets.clone(),
        );
        registry.register(
            "delivery_claims",
            "Times a delivery worker asked the store for due deliveries",
            m.claims.clone(),
        );
        registry.register(
            "delivery_handed_over",
            "Deliveries handed to their worker as they were committed, without a claim",
            m.handed_over.clone(),
        );
        registry.register(
            "delivery_attempt_duration_seconds",
            "Time one delivery attempt took",
            m.attempt_seconds.clone(),
        );
        registry.register(
            "end_to_end_seconds",
            "Time from the gateway receiving an event (its receivedAt) to the target's acknowledgement",
            m.end_to_end_seconds.clone(),
        );
        registry.register(
            "vendor_to_receiver_seconds",
            "Time from the vendor's event timestamp (occurredAt) to the target's acknowledgement; \
             clamped at 0 when the vendor's clock is ahead. Includes the vendor's own delays and \
             retries, and any clock difference",
            m.vendor_to_receiver_seconds.clone(),
        );
        registry.register(
            "recovered",
            "Calls recovered from a vendor's list API that produced events its webhooks had not",
            m.recovered.clone(),
        );
        registry.register(
            "recovery_last_success_timestamp_seconds",
            "When a source's latest recovery poll completed (unix seconds)",
            m.recovery_last_success.clone(),
        );
        registry.register(
            "recovery_errors",
            "Failed answers of a vendor's API to recovery (retried or not) and polls the store failed, by reason (unauthorized, rate_limited, server_error, unreachable, bad_answer, store, lost_lease)",
            m.recovery_errors.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts calls a recovery poll of `source` recovered.
    pub fn recovered(&self, source: &str, calls: u64) {
        self.recovered
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .inc_by(calls);
    }

    /// Records a completed recovery poll: logs what it found.
    pub fn recovery_succeeded(&self, source: &str, at: Timestamp, listed: u64, recovered: u64) {
        self.recovery_last_success
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .set(at.unix_millis() / 1000);
        if recovered > 0 {
            tracing::info!(
                source,
                listed,
                recovered,
                "Recovered calls the vendor never sent"
            );
        } else {
            tracing::debug!(source, listed, "Recovery found nothing missing");
        }
    }

    /// Counts a failed answer of a vendor's API to a recovery (retried or not), or a poll
    /// that failed for the store, and logs why.
    pub fn recovery_failed(&self, source: &str, reason: &str, message: &str) {
        self.recovery_errors
            .get_or_create(&RejectLabels {
                source: source.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
        tracing::warn!(source, reason, error = message, "Recovery poll failed");
    }

    /// Records one ingest request's outcome: logs it and counts it.
    pub fn ingested(&self, source: &str, result: IngestResult<'_>, elapsed: Duration) {
        let labels = SourceLabels {
            source: source.to_owned(),
        };
        self.received.get_or_create(&labels).inc();
        self.ingest_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        match result {
            IngestResult::Accepted(id) => {
                self.accepted.get_or_create(&labels).inc();
                tracing::debug!(source, event_id = %id, "Accepted");
            }
            IngestResult::Duplicate(id) => {
                self.duplicate.get_or_create(&labels).inc();
                tracing::debug!(source, event_id = %id, "Duplicate; nothing forwarded again");
            }
            IngestResult::Ignored(vendor_event_type) => {
                self.ignored.get_or_create(&labels).inc();
                tracing::info!(
                    source,
                    vendor_event_type = vendor_event_type.unwrap_or(""),
                    "Ignored an event type this adapter does not map"
                );
            }
            IngestResult::Rejected {
                reason,
                message,
                internal,
            } => {
                self.rejected
                    .get_or_create(&RejectLabels {
                        source: source.to_owned(),
                        reason: reason.to_owned(),
                    })
                    .inc();
                if internal {
                    tracing::error!(
                        source,
                        reason,
                        error = message,
                        "Cannot store the event; answered 503"
                    );
                } else {
                    tracing::warn!(source, reason, error = message, "Rejected a request");
                }
            }
        }
    }

    /// Records one delivery attempt's outcome: logs it and counts it.
    pub fn attempted(
        &self,
        target: &str,
        result: AttemptResult<'_>,
        duration: Duration,
        status: Option<u16>,
        received_at: Option<Timestamp>,
        occurred_at: Option<Timestamp>,
    ) {
        let labels = TargetLabels {
            target: target.to_owned(),
        };
        self.attempt_seconds
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        let duration_ms = duration.as_millis() as u64;
        match result {
            AttemptResult::Delivered => {
                self.delivered.get_or_create(&labels).inc();
                let now = Timestamp::now().unix_millis();
                let since = |at: Timestamp| (now - at.unix_millis()).max(0) as f64 / 1000.0;
                if let Some(at) = received_at {
                    self.end_to_end_seconds
                        .get_or_create(&labels)
                        .observe(since(at));
                }
                if let Some(at) = occurred_at {
                    self.vendor_to_receiver_seconds
                        .get_or_create(&labels)
                        .observe(since(at));
                }
                tracing::debug!(duration_ms, status, "Delivered");
            }
            AttemptResult::Retry { retry_in, error } => {
                self.failed_attempts.get_or_create(&labels).inc();
                tracing::warn!(
                    duration_ms,
                    status,
                    error,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "Delivery attempt failed; will retry"
                );
            }
            AttemptResult::Dead {
                error,
                max_attempts,
            } => {
                self.failed_attempts.get_or_create(&labels).inc();
                self.dead.get_or_create(&labels).inc();
                tracing::error!(
                    duration_ms,
                    status,
                    error,
                    max_attempts,
                    "Delivery is dead after its last attempt; retry it with `sessiongate admin retry <delivery id>`, \
                     from the console's Dead letters page (/console/dead) or POST /admin/deliveries/{{id}}/retry"
                );
            }
        }
    }

    /// Counts one claim of due deliveries from the store and what it returned.
    pub fn claimed(&self, target: &str, asked: usize, got: usize) {
        self.claims
            .get_or_create(&TargetLabels {
                target: target.to_owned(),
            })
            .inc();
        tracing::trace!(target, asked, got, "Claimed due deliveries");
    }

    /// Counts one recording archived, of `bytes`.
    pub fn recording_archived(&self, bytes: u64) {
        self.recordings_archived.inc();
        self.recording_bytes.inc_by(bytes);
        tracing::info!(bytes, "Recording archived");
    }

    /// Counts one connection closed to keep room for others (logged at debug: under a flood
    /// there is one per connection; the counter is what an operator watches).
    pub fn connection_closed(&self, reason: &str) {
        self.connections_closed
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        tracing::debug!(reason, "Connection closed to keep room");
    }

    /// Counts one recording that could not be archived.
    pub fn recording_failed(&self, reason: &str) {
        self.recordings_failed
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        tracing::warn!(reason, "Recording not archived");
    }

    /// Names a configured target's output kind (`sessiongate_target_info`).
    pub fn target(&self, target: &str, output: &str) {
        self.targets
            .get_or_create(&OutputLabels {
                target: target.to_owned(),
                output: output.to_owned(),
            })
            .set(1);
    }

    /// Counts a delivery whose first attempt starts without a claim.
    pub fn handed_over(&self, target: &str) {
        self.handed_over
            .get_or_create(&TargetLabels {
                target: target.to_owned(),
            })
            .inc();
    }

    /// Records one retention run: logs it and counts what it deleted.
    pub fn pruned(&self, pruned: Pruned, took: Duration) {
        for (kind, n) in [
            ("events", pruned.events),
            ("receipts", pruned.receipts),
            ("deliveries", pruned.deliveries),
            ("attempts", pruned.attempts),
            ("jobs", pruned.jobs),
        ] {
            self.pruned
                .get_or_create(&KindLabels {
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
        tracing::info!(
            events = pruned.events,
            receipts = pruned.receipts,
            deliveries = pruned.deliveries,
            attempts = pruned.attempts,
            jobs = pruned.jobs,
            took_ms = took.as_millis() as u64,
            "Retention pruned what is older than max_age"
        );
    }

    /// Sets the store-derived gauges: queue depth and dead deliveries of every configured
    /// target (0 when it has none), and pending deliveries of targets no longer configured.
    pub fn set_delivery_counts(&self, configured: &[String], counts: &[TargetCounts]) {
        let label = |target: &str| TargetLabels {
            target: target.to_owned(),
        };
        for target in configured {
            let c = counts.iter().find(|c| &c.target == target);
            let label = label(target);
            self.queue_depth
                .get_or_create(&label)
                .set(c.map_or(0, |c| c.pending) as i64);
            self.deliveries_dead
                .get_or_create(&label)
                .set(c.map_or(0, |c| c.dead) as i64);
        }
        // Orphans that were delivered or retargeted since the last scrape drop to 0.
        self.orphaned.clear();
        for c in counts.iter().filter(|c| !configured.contains(&c.target)) {
            let label = label(&c.target);
            if c.pending > 0 {
                self.orphaned.get_or_create(&label).set(c.pending as i64);
            }
            if c.dead > 0 {
                self.deliveries_dead
                    .get_or_create(&label)
                    .set(c.dead as i64);
            }
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The registry in the Prometheus text format 0.0.4, what a scraper gets unless it asks
    /// for OpenMetrics. The two differ only in metadata: a counter's `# TYPE`/`# HELP` name
    /// carries its `_total` suffix, and there are no `# UNIT` or `# EOF` lines.
    pub fn render_prometheus(&self) -> String {
        let open = self.render();
        let counters: Vec<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let meta = ["# TYPE ", "# HELP "]
                .iter()
                .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
            match meta {
                Some((prefix, rest)) => {
                    let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    if counters.contains(&name) {
                        out.push_str(&format!("{prefix}{name}_total {tail}"));
                    } else {
                        out.push_str(line);
                    }
                }
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests;
