//! The host's own telemetry: Prometheus metrics on `/metrics` and the health endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::completeness_metrics::CompletenessMetrics;

/// Label set `{protocol}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// `grpc` or `http`.
    pub protocol: &'static str,
}

/// Label set `{reason}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why spans were dropped.
    pub reason: &'static str,
}

/// Label set `{decision,policy}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `sampled`, `not_sampled`, `dropped` or `fail_open`.
    pub decision: &'static str,
    /// The deciding policy.
    pub policy: String,
}

/// Label set `{kind}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `trap`, `timeout`, `memory` or `bad_answer`.
    pub kind: &'static str,
}

/// Label set `{queue}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// `ingest` (receivers to worker) or `export` (worker to exporter).
    pub queue: &'static str,
}

/// Label set `{outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `success` or `failed` (a permanent error: the request is dropped).
    pub outcome: &'static str,
}

/// Upper bounds (seconds) of the decision latency histogram's buckets.
pub const DECISION_LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Label set `{root_service,root_name}`: a root span type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RootLabels {
    /// `service.name` of the root span ("" for traces without a root).
    pub root_service: String,
    /// Name of the root span ("" for traces without a root).
    pub root_name: String,
}

/// Label set `{root_service,root_name,completeness}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RootCompletenessLabels {
    /// `service.name` of the root span.
    pub root_service: String,
    /// Name of the root span.
    pub root_name: String,
    /// `complete` or `incomplete`.
    pub completeness: &'static str,
}

/// Label set `{messaging_system,destination}`: a message queue.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `messaging.system` of the producer spans.
    pub messaging_system: String,
    /// `messaging.destination.name` of the producer spans.
    pub destination: String,
}

/// A gauge with a fractional value.
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Every metric the host exports (names in DESIGN.md section 5).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `tracekeeper_spans_received_total{protocol}`
    pub spans_received: Family<ProtocolLabel, Counter>,
    /// `tracekeeper_spans_exported_total`
    pub spans_exported: Counter,
    /// `tracekeeper_spans_dropped_total{reason}`
    pub spans_dropped: Family<ReasonLabel, Counter>,
    /// `tracekeeper_traces_decided_total{decision,policy}`
    pub traces_decided: Family<DecisionLabels, Counter>,
    /// `tracekeeper_traces_decided_early_total` (buffer full)
    pub traces_decided_early: Counter,
    /// `tracekeeper_traces_in_memory`
    pub traces_in_memory: Gauge,
    /// `tracekeeper_spans_late_total`
    pub spans_late: Counter,
    /// `tracekeeper_guest_faults_total{kind}`
    pub guest_faults: Family<KindLabel, Counter>,
    /// `tracekeeper_traces_total{root_service,root_name,completeness}`
    pub traces_by_root: Family<RootCompletenessLabels, Counter>,
    /// `tracekeeper_trace_completeness_ratio{root_service,root_name}`
    pub completeness_ratio: Family<RootLabels, FloatGauge>,
    /// `tracekeeper_messages_produced_total{messaging_system,destination}`
    pub messages_produced: Family<QueueLabels, Counter>,
    /// `tracekeeper_messages_consumed_total{messaging_system,destination}`
    pub messages_consumed: Family<QueueLabels, Counter>,
    /// `tracekeeper_late_completions_total{messaging_system,destination}`: messages consumed
    /// after their producer's trace was decided.
    pub late_completions: Family<QueueLabels, Counter>,
    /// `tracekeeper_oldest_unconsumed_message_age_seconds{messaging_system,destination}`
    pub oldest_unconsumed_age: Family<QueueLabels, FloatGauge>,
    /// The latest completeness gauges reported by the guest.
    pub completeness: CompletenessMetrics,
    /// `tracekeeper_guest_degraded` (1 while the guest keeps failing and every trace is kept)
    pub guest_degraded: Gauge,
    /// `tracekeeper_requests_refused_total{reason}`: requests answered with a retryable error
    /// because the pipeline was full (`buffer_full`, `queue_full`, `queued_bytes`).
    pub requests_refused: Family<ReasonLabel, Counter>,
    /// `tracekeeper_buffered_span_bytes`: memory held by buffered spans.
    pub buffered_bytes: Gauge,
    /// `tracekeeper_guest_memory_bytes`: linear memory of the guest instances.
    pub guest_memory: Gauge,
    /// `tracekeeper_queue_length{queue}`: items waiting in the ingest and export queues.
    pub queue_length: Family<QueueLabel, Gauge>,
    /// `tracekeeper_decision_latency_seconds`: from a trace's due time until its spans were
    /// handed to the exporter's queue.
    pub decision_latency: Histogram,
    /// `tracekeeper_export_requests_total{outcome}`
    pub export_requests: Family<OutcomeLabel, Counter>,
    /// `tracekeeper_export_retries_total`: failed attempts that are retried.
    pub export_retries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tracekeeper");
        let m = Metrics {
            registry: Registry::default(),
            spans_received: Family::default(),
            spans_exported: Counter::default(),
            spans_dropped: Family::default(),
            traces_decided: Family::default(),
            traces_decided_early: Counter::default(),
            traces_in_memory: Gauge::default(),
            spans_late: Counter::default(),
            guest_faults: Family::default(),
            traces_by_root: Family::default(),
            completeness_ratio: Family::default(),
            messages_produced: Family::default(),
            messages_consumed: Family::default(),
            late_completions: Family::default(),
            oldest_unconsumed_age: Family::default(),
            completeness: CompletenessMetrics::default(),
            guest_degraded: Gauge::default(),
            requests_refused: Family::default(),
            buffered_bytes: Gauge::default(),
            guest_memory: Gauge::default(),
            queue_length: Family::default(),
            decision_latency: Histogram::new(DECISION_LATENCY_BUCKETS),
            export_requests: Family::default(),
            export_retries: Counter::default(),
        };
        registry.register(
            "spans_received",
            "Spans accepted by the receivers",
            m.spans_received.clone(),
        );
        registry.register(
            "spans_exported",
            "Spans sent by the exporter",
            m.spans_exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans not exported for a reason other than sampling",
            m.spans_dropped.clone(),
        );
        registry.register(
            "traces_decided",
            "Traces decided, by decision and policy",
            m.traces_decided.clone(),
        );
        registry.register(
            "traces_decided_early",
            "Traces decided before they were due because the buffer was full",
            m.traces_decided_early.clone(),
        );
        registry.register(
            "traces_in_memory",
            "Traces buffered awaiting a decision",
            m.traces_in_memory.clone(),
        );
        registry.register(
            "spans_late",
            "Spans that arrived after their trace was decided",
            m.spans_late.clone(),
        );
        registry.register(
            "guest_faults",
            "Guest failures, by kind",
            m.guest_faults.clone(),
        );
        registry.register(
            "guest_degraded",
            "1 while the guest keeps failing: every trace is kept (fail open) and the guest is re-tried with backoff",
            m.guest_degraded.clone(),
        );
        registry.register(
            "traces",
            "Traces decided, by root span type (service and name) and completeness",
            m.traces_by_root.clone(),
        );
        registry.register(
            "trace_completeness_ratio",
            "Share of complete traces per root span type over the completeness window",
            m.completeness_ratio.clone(),
        );
        registry.register(
            "messages_produced",
            "Messages produced (producer spans), by messaging system and destination",
            m.messages_produced.clone(),
        );
        registry.register(
            "messages_consumed",
            "Messages consumed (first consumer span of each message), by messaging system and destination",
            m.messages_consumed.clone(),
        );
        registry.register(
            "late_completions",
            "Messages consumed after their producer's trace was decided",
            m.late_completions.clone(),
        );
        registry.register(
            "oldest_unconsumed_message_age_seconds",
            "Age of the oldest message no consumer span consumed yet",
            m.oldest_unconsumed_age.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests answered with a retryable error (gRPC UNAVAILABLE, HTTP 503) because the pipeline was full, by reason",
            m.requests_refused.clone(),
        );
        registry.register(
            "buffered_span_bytes",
            "Memory held by buffered spans (compared with memory_limit_mib)",
            m.buffered_bytes.clone(),
        );
        registry.register(
            "guest_memory_bytes",
            "Linear memory held by the guest instances (each capped by guest.memory_limit_mib; a guest's memory only grows, so this is its high-water mark)",
            m.guest_memory.clone(),
        );
        registry.register(
            "queue_length",
            "Items waiting in a queue: ingest (requests for the worker) or export (requests for the exporter)",
            m.queue_length.clone(),
        );
        registry.register(
            "decision_latency_seconds",
            "Time from a trace's due time until its spans were handed to the exporter",
            m.decision_latency.clone(),
        );
        registry.register(
            "export_requests",
            "Export requests finished, by outcome (success, or failed: a permanent error)",
            m.export_requests.clone(),
        );
        registry.register(
            "export_retries",
            "Export attempts that failed with a retryable error and were retried",
            m.export_retries.clone(),
        );
        // Families appear in the exposition only once they have a series: create the known
        // ones at zero so dashboards and alerts see every name from the start.
        for protocol in ["grpc", "http"] {
            drop(m.spans_received.get_or_create(&ProtocolLabel { protocol }));
        }
        for kind in ["trap", "timeout", "memory", "bad_answer"] {
            drop(m.guest_faults.get_or_create(&KindLabel { kind }));
        }
        for reason in [
            "invalid",
            "late_not_sampled",
            "export_failed",
            "export_rejected",
            "exporter_stopped",
            "shutdown",
        ] {
            drop(m.spans_dropped.get_or_create(&ReasonLabel { reason }));
        }
        for reason in ["buffer_full", "queue_full", "queued_bytes"] {
            drop(m.requests_refused.get_or_create(&ReasonLabel { reason }));
        }
        for queue in ["ingest", "export"] {
            drop(m.queue_length.get_or_create(&QueueLabel { queue }));
        }
        for outcome in ["success", "failed"] {
            drop(m.export_requests.get_or_create(&OutcomeLabel { outcome }));
        }
        Metrics { registry, ..m }
    }

    /// Counts dropped spans.
    pub fn drop_spans(&self, reason: &'static str, n: u64) {
        self.spans_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.completeness.refresh_ages_now(self);
        self.encode()
    }

    /// The Prometheus text exposition with message ages computed at `now` (Unix ns).
    pub fn render_at(&self, now: u64) -> String {
        self.completeness.refresh_ages(self, now);
        self.encode()
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Readiness shared by the receivers, the worker and the health endpoint.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Why the guest is degraded, while it is (set by the worker).
    degraded: std::sync::Mutex<Option<String>>,
    /// Since when every export attempt has failed (set by the export task).
    export_failing_since: std::sync::Mutex<Option<Instant>>,
    /// How long the exporter may fail before health answers 503 (`None`: never).
    export_unhealthy_after: std::sync::Mutex<Option<Duration>>,
}

impl Health {
    /// Marks the process ready (receivers up, guest loaded) or not (starting, draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    /// Current readiness.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    /// Marks the guest degraded (with the reason health reports) or recovered (`None`).
    pub fn set_degraded(&self, reason: Option<String>) {
        *self
            .degraded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reason;
    }
    /// Why the guest is degraded, if it is.
    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
    /// Health answers 503 once the exporter has failed for longer than `after`.
    pub fn set_export_unhealthy_after(&self, after: Duration) {
        *self
            .export_unhealthy_after
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(after);
    }
    /// Records an export attempt: a failure starts (or continues) the failing period, a
    /// success ends it.
    pub fn export_attempt(&self, ok: bool) {
        let mut since = self
            .export_failing_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ok {
            *since = None;
        } else if since.is_none() {
            *since = Some(Instant::now());
        }
    }
    /// Why the exporter makes the process unhealthy, if it does: it has failed for longer than
    /// the configured time.
    pub fn export_unhealthy(&self) -> Option<String> {
        let after = (*self
            .export_unhealthy_after
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))?;
        let since = (*self
            .export_failing_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))?;
        let failing = since.elapsed();
        (failing > after)
            .then(|| format!("the exporter has failed for {failing:.0?} (more than {after:?})"))
    }
}

/// Serves `GET /` (health: 200 ready, 503 otherwise) on `health_addr` and `GET /metrics` on
/// `metrics_addr` until `shutdown` resolves.
pub async fn serve(
    health_addr: SocketAddr,
    metrics_addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: crate::shutdown::Shutdown,
) -> anyhow::Result<()> {
    let health_app = Router::new().route(
        "/",
        get(move || {
            let h = Arc::clone(&health);
            async move {
                if !h.is_ready() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "{\"status\":\"Server not available\"}".to_string(),
                    )
                } else if let Some(reason) = h.degraded().or_else(|| h.export_unhealthy()) {
                    let body = serde_json::json!({"status": "Server degraded", "reason": reason});
                    (StatusCode::SERVICE_UNAVAILABLE, body.to_string())
                } else {
                    (
                        StatusCode::OK,
                        "{\"status\":\"Server available\"}".to_string(),
                    )
                }
            }
        }),
    );
    let metrics_app = Router::new().route(
        "/metrics",
        get(move || {
            let m = Arc::clone(&metrics);
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
                    .into_response()
            }
        }),
    );
    let hl = tokio::net::TcpListener::bind(health_addr)
        .await
        .map_err(|e| anyhow::anyhow!("extensions.health_check.endpoint {health_addr}: {e}"))?;
    let ml = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(|e| anyhow::anyhow!("service.telemetry.metrics.address {metrics_addr}: {e}"))?;
    let s1 = shutdown.clone();
    let s2 = shutdown;
    let h = axum::serve(hl, health_app).with_graceful_shutdown(async move { s1.wait().await });
    let m = axum::serve(ml, metrics_app).with_graceful_shutdown(async move { s2.wait().await });
    tokio::try_join!(async { h.await }, async { m.await })?;
    Ok(())
}
