//! Turns the metrics section of the guest's decision batches (`wit/README.md` §9.6) into the
//! completeness metrics of DESIGN §5: traces per root type and completeness, the completeness
//! ratio per root type over the guest's sliding window, and per messaging system + destination
//! the messages produced, consumed and consumed late, and the age of the oldest message nobody
//! consumed.
//!
//! Counters advance by the deltas the guest reports, so they stay monotonic when a failed guest
//! instance is replaced by a fresh one. Gauges follow the latest section, which lists every queue
//! and root type the guest tracks; the age of the oldest unconsumed message is computed from its
//! production time when `/metrics` is scraped. Series are bounded ([`MAX_QUEUE_SERIES`],
//! [`MAX_ROOT_SERIES`]) whatever the guest sends.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hashbrown::{HashMap, HashSet};
use tracekeeper_abi::{DecisionReader, LayoutError, MetricsView};

use crate::telemetry::{Metrics, QueueLabels, RootCompletenessLabels, RootLabels};

/// Most queues (system + destination) with their own series; further ones are folded into
/// [`OVERFLOW_LABEL`].
pub const MAX_QUEUE_SERIES: usize = 1_000;
/// Most root types (service + name) with their own series; further ones are folded into
/// [`OVERFLOW_LABEL`].
pub const MAX_ROOT_SERIES: usize = 1_000;
/// Label value of the series that collects queues or root types beyond the bounds.
pub const OVERFLOW_LABEL: &str = "_overflow";
/// Longest label value kept, in bytes; longer values are cut at a character boundary.
pub const MAX_LABEL_LEN: usize = 256;

const NANOS_PER_SECOND: f64 = 1e9;

/// What the last metrics section of one guest instance (worker) said about the gauges.
#[derive(Debug, Default)]
struct WorkerGauges {
    /// Production time (Unix ns, 0 = none) of the oldest unconsumed message, per queue.
    oldest: HashMap<QueueLabels, u64>,
    /// Sliding-window (complete, incomplete) counts per root type.
    windows: HashMap<RootLabels, (u64, u64)>,
}

/// The gauges of every worker, and what they add up to.
#[derive(Debug, Default)]
struct Snapshot {
    /// Per worker (index = worker).
    workers: Vec<WorkerGauges>,
    /// Production time (Unix ns, 0 = none) of the oldest unconsumed message, per queue, over
    /// every worker.
    oldest: HashMap<QueueLabels, u64>,
    /// Root types with a ratio series.
    ratios: HashSet<RootLabels>,
    /// Every queue and root type that ever had a series (for the bounds).
    known_queues: HashSet<QueueLabels>,
    known_roots: HashSet<RootLabels>,
}

/// The host's side of the completeness metrics: the latest gauge values reported by the guest.
#[derive(Debug, Default)]
pub struct CompletenessMetrics {
    snapshot: Mutex<Snapshot>,
}

fn bounded(s: &str) -> String {
    if s.len() <= MAX_LABEL_LEN {
        return s.to_owned();
    }
    let mut end = MAX_LABEL_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Host clock in Unix nanoseconds.
fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Records the metrics section of a decision batch, if it has one: the worker's hook, called with
/// every answer of the guest. Reading the section checks the whole batch, so nothing is recorded
/// from a malformed one; the worker's own reading of the batch reports it (fail open).
pub fn record(metrics: &Metrics, worker: u32, batch: &[u8]) {
    if let Err(e) = try_record(metrics, worker, batch) {
        tracing::debug!("decision batch metrics not recorded: {e}");
    }
}

/// [`record`], with the reason a malformed batch was not recorded.
pub fn try_record(metrics: &Metrics, worker: u32, batch: &[u8]) -> Result<(), LayoutError> {
    let reader = DecisionReader::new(batch)?;
    if !reader.has_metrics() {
        return Ok(());
    }
    if let Some(view) = reader.into_metrics()? {
        metrics.completeness.apply(metrics, worker, &view);
    }
    Ok(())
}

impl CompletenessMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one metrics section of worker `worker`'s guest instance. Counters add up the
    /// deltas of every worker; the gauges combine each worker's latest section (the oldest
    /// unconsumed message of any worker, the ratio over the sum of the workers' windows).
    pub fn apply(&self, metrics: &Metrics, worker: u32, view: &MetricsView<'_>) {
        let mut snap = self.lock();
        let mut listed_queues: HashMap<QueueLabels, u64> = HashMap::new();
        for q in view.queues() {
            let mut labels = QueueLabels {
                messaging_system: bounded(q.system),
                destination: bounded(q.destination),
            };
            if !snap.known_queues.contains(&labels) {
                if snap.known_queues.len() >= MAX_QUEUE_SERIES {
                    labels = QueueLabels {
                        messaging_system: OVERFLOW_LABEL.to_owned(),
                        destination: OVERFLOW_LABEL.to_owned(),
                    };
                }
                snap.known_queues.insert(labels.clone());
            }
            metrics
                .messages_produced
                .get_or_create(&labels)
                .inc_by(q.produced);
            metrics
                .messages_consumed
                .get_or_create(&labels)
                .inc_by(q.consumed);
            metrics
                .late_completions
                .get_or_create(&labels)
                .inc_by(q.consumed_late);
            // Folded queues: the oldest message of any of them.
            let oldest = listed_queues.entry(labels).or_insert(0);
            if q.oldest_unconsumed != 0 && (*oldest == 0 || q.oldest_unconsumed < *oldest) {
                *oldest = q.oldest_unconsumed;
            }
        }
        let w = worker as usize;
        if snap.workers.len() <= w {
            snap.workers.resize_with(w + 1, WorkerGauges::default);
        }
        if let Some(g) = snap.workers.get_mut(w) {
            g.oldest = listed_queues;
        }
        let mut oldest: HashMap<QueueLabels, u64> = HashMap::new();
        for (labels, &t) in snap.workers.iter().flat_map(|g| g.oldest.iter()) {
            let o = oldest.entry(labels.clone()).or_insert(0);
            if t != 0 && (*o == 0 || t < *o) {
                *o = t;
            }
        }
        for gone in snap.oldest.keys().filter(|k| !oldest.contains_key(*k)) {
            metrics.oldest_unconsumed_age.remove(gone);
        }
        snap.oldest = oldest;

        let mut windows: HashMap<RootLabels, (u64, u64)> = HashMap::new();
        for r in view.roots() {
            let mut labels = RootLabels {
                root_service: bounded(r.service),
                root_name: bounded(r.name),
            };
            if !snap.known_roots.contains(&labels) {
                if snap.known_roots.len() >= MAX_ROOT_SERIES {
                    labels = RootLabels {
                        root_service: OVERFLOW_LABEL.to_owned(),
                        root_name: OVERFLOW_LABEL.to_owned(),
                    };
                }
                snap.known_roots.insert(labels.clone());
            }
            for (completeness, n) in [("complete", r.complete), ("incomplete", r.incomplete)] {
                metrics
                    .traces_by_root
                    .get_or_create(&RootCompletenessLabels {
                        root_service: labels.root_service.clone(),
                        root_name: labels.root_name.clone(),
                        completeness,
                    })
                    .inc_by(n);
            }
            let w = windows.entry(labels).or_insert((0, 0));
            w.0 = w.0.saturating_add(r.window_complete);
            w.1 = w.1.saturating_add(r.window_incomplete);
        }
        if let Some(g) = snap.workers.get_mut(w) {
            g.windows = windows;
        }
        let mut all: HashMap<RootLabels, (u64, u64)> = HashMap::new();
        for (labels, &(c, i)) in snap.workers.iter().flat_map(|g| g.windows.iter()) {
            let a = all.entry(labels.clone()).or_insert((0, 0));
            a.0 = a.0.saturating_add(c);
            a.1 = a.1.saturating_add(i);
        }
        let mut ratios = HashSet::new();
        for (labels, (complete, incomplete)) in all {
            let total = complete.saturating_add(incomplete);
            if total == 0 {
                continue;
            }
            metrics
                .completeness_ratio
                .get_or_create(&labels)
                .set(complete as f64 / total as f64);
            ratios.insert(labels);
        }
        for gone in snap.ratios.difference(&ratios) {
            metrics.completeness_ratio.remove(gone);
        }
        snap.ratios = ratios;
    }

    /// Sets the age gauges from the latest production times, at `now` (Unix ns).
    pub fn refresh_ages(&self, metrics: &Metrics, now: u64) {
        let snap = self.lock();
        for (labels, &oldest) in &snap.oldest {
            let age = if oldest == 0 {
                0.0
            } else {
                now.saturating_sub(oldest) as f64 / NANOS_PER_SECOND
            };
            metrics.oldest_unconsumed_age.get_or_create(labels).set(age);
        }
    }

    /// [`CompletenessMetrics::refresh_ages`] at the host clock's current time.
    pub fn refresh_ages_now(&self, metrics: &Metrics) {
        self.refresh_ages(metrics, now_unix_nanos());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tracekeeper_abi::{DecisionWriter, MetricsWriter, QueueMetrics, RootMetrics};

    use super::*;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    fn section(queues: &[QueueMetrics<'_>], roots: &[RootMetrics<'_>]) -> Vec<u8> {
        let mut m = MetricsWriter::new();
        for q in queues {
            m.queue(q);
        }
        for r in roots {
            m.root(r);
        }
        DecisionWriter::new().finish_with_metrics(0, &m)
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l[series.len()..].trim().parse().ok())
    }

    const Q: &str = r#"{messaging_system="rabbitmq",destination="order_confirmed"}"#;
    const ROOT: &str = r#"{root_service="checkout",root_name="POST /checkout"}"#;

    fn queue(produced: u64, consumed: u64, late: u64, oldest: u64) -> QueueMetrics<'static> {
        QueueMetrics {
            system: "rabbitmq",
            destination: "order_confirmed",
            produced,
            consumed,
            consumed_late: late,
            oldest_unconsumed: oldest,
        }
    }

    fn root(c: u64, i: u64, wc: u64, wi: u64) -> RootMetrics<'static> {
        RootMetrics {
            service: "checkout",
            name: "POST /checkout",
            complete: c,
            incomplete: i,
            window_complete: wc,
            window_incomplete: wi,
        }
    }

    #[test]
    fn the_workers_sections_add_up() {
        let m = Metrics::new();
        let age = |text: &str| {
            value(
                text,
                &format!("tracekeeper_oldest_unconsumed_message_age_seconds{Q}"),
            )
        };
        let ratio =
            |text: &str| value(text, &format!("tracekeeper_trace_completeness_ratio{ROOT}"));
        let s0 = section(&[queue(2, 1, 0, T0 + 10 * SEC)], &[root(3, 1, 3, 1)]);
        try_record(&m, 0, &s0).unwrap();
        try_record(&m, 1, &section(&[queue(3, 2, 0, T0)], &[root(1, 3, 1, 3)])).unwrap();
        let text = m.render_at(T0 + 90 * SEC);
        assert_eq!(
            value(&text, &format!("tracekeeper_messages_produced_total{Q}")),
            Some(5.0)
        );
        assert_eq!(
            value(&text, &format!("tracekeeper_messages_consumed_total{Q}")),
            Some(3.0)
        );
        // The oldest unconsumed message of either worker; the ratio over both windows.
        assert_eq!(age(&text), Some(90.0));
        assert_eq!(ratio(&text), Some(0.5));
        // Worker 1 has nothing left unconsumed and an empty window; worker 0's gauges stand.
        try_record(&m, 1, &section(&[queue(0, 1, 0, 0)], &[root(0, 0, 0, 0)])).unwrap();
        let text = m.render_at(T0 + 90 * SEC);
        assert_eq!(age(&text), Some(80.0));
        assert_eq!(ratio(&text), Some(0.75));
    }

    #[test]
    fn sections_become_counters_and_gauges() {
        let m = Metrics::new();
        try_record(&m, 0, &section(&[queue(5, 2, 1, T0)], &[root(3, 1, 3, 1)])).unwrap();
        try_record(&m, 0, &section(&[queue(4, 0, 0, T0)], &[root(0, 4, 3, 5)])).unwrap();
        let text = m.render_at(T0 + 90 * SEC);
        assert_eq!(
            value(&text, &format!("tracekeeper_messages_produced_total{Q}")),
            Some(9.0)
        );
        assert_eq!(
            value(&text, &format!("tracekeeper_messages_consumed_total{Q}")),
            Some(2.0)
        );
        assert_eq!(
            value(&text, &format!("tracekeeper_late_completions_total{Q}")),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                &format!("tracekeeper_oldest_unconsumed_message_age_seconds{Q}")
            ),
            Some(90.0)
        );
        let traces = |c: &str| {
            value(
                &text,
                &format!(
                    r#"tracekeeper_traces_total{{root_service="checkout",root_name="POST /checkout",completeness="{c}"}}"#
                ),
            )
        };
        assert_eq!(traces("complete"), Some(3.0));
        assert_eq!(traces("incomplete"), Some(5.0));
        assert_eq!(
            value(
                &text,
                &format!("tracekeeper_trace_completeness_ratio{ROOT}")
            ),
            Some(3.0 / 8.0)
        );
    }

    #[test]
    fn gauges_follow_the_latest_section() {
        let m = Metrics::new();
        try_record(&m, 0, &section(&[queue(1, 0, 0, T0)], &[root(1, 0, 1, 0)])).unwrap();
        // Consumed: the age is 0. The root type's window emptied: no ratio series.
        try_record(&m, 0, &section(&[queue(0, 1, 0, 0)], &[root(0, 0, 0, 0)])).unwrap();
        let text = m.render_at(T0 + 10 * SEC);
        assert_eq!(
            value(
                &text,
                &format!("tracekeeper_oldest_unconsumed_message_age_seconds{Q}")
            ),
            Some(0.0)
        );
        assert!(
            !text.contains("tracekeeper_trace_completeness_ratio{"),
            "{text}"
        );
        // A section that no longer lists the queue (a fresh guest instance) removes its gauge.
        try_record(&m, 0, &section(&[], &[])).unwrap();
        let text = m.render_at(T0 + 10 * SEC);
        assert!(
            !text.contains("tracekeeper_oldest_unconsumed_message_age_seconds{"),
            "{text}"
        );
        // Counters stay.
        assert_eq!(
            value(&text, &format!("tracekeeper_messages_produced_total{Q}")),
            Some(1.0)
        );
    }

    #[test]
    fn batches_without_a_section_and_malformed_ones() {
        let m = Metrics::new();
        try_record(&m, 0, &DecisionWriter::new().finish(0)).unwrap();
        let mut bad = section(&[queue(1, 0, 0, T0)], &[]);
        bad.pop();
        assert!(try_record(&m, 0, &bad).is_err());
        record(&m, 0, &bad);
        assert!(
            !m.render_at(T0)
                .contains("tracekeeper_messages_produced_total{")
        );
    }

    #[test]
    fn series_are_bounded() {
        let m = Metrics::new();
        let names: Vec<String> = (0..MAX_QUEUE_SERIES + 3).map(|i| format!("q{i}")).collect();
        let queues: Vec<QueueMetrics<'_>> = names
            .iter()
            .map(|n| QueueMetrics {
                system: "kafka",
                destination: n,
                produced: 1,
                consumed: 0,
                consumed_late: 0,
                oldest_unconsumed: T0,
            })
            .collect();
        try_record(&m, 0, &section(&queues, &[])).unwrap();
        let text = m.render_at(T0 + SEC);
        let produced = text
            .lines()
            .filter(|l| l.starts_with("tracekeeper_messages_produced_total{"))
            .count();
        assert_eq!(produced, MAX_QUEUE_SERIES + 1);
        assert_eq!(
            value(
                &text,
                r#"tracekeeper_messages_produced_total{messaging_system="_overflow",destination="_overflow"}"#
            ),
            Some(3.0)
        );
        assert_eq!(bounded(&"x".repeat(1000)).len(), MAX_LABEL_LEN);
    }
}
