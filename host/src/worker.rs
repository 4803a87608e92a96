//! The worker: owns the trace buffer and the guest instance, feeds span views to the guest,
//! applies its decisions, and hands kept spans to the exporter.
//!
//! It runs on its own thread, outside any async runtime (guest calls are synchronous wasm
//! execution), and receives batches from the receivers over a bounded channel
//! ([`INGEST_QUEUE_LEN`]); when the channel is full, receivers wait. A guest failure never loses spans: every buffered trace is exported with
//! `tracekeeper.fail_open=true` and a fresh instance replaces the failed one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracekeeper_abi::{Decision, DecisionReader, LayoutError, TraceId};

use crate::buffer::{Cached, DecisionCache, TraceBuffer};
use crate::export::ExportRequest;
use crate::export::builder::ExportBuilder;
use crate::guest::{GuestError, GuestInstance, GuestModule};
use crate::otlp::request::{Group, span_info};
use crate::otlp::view::{Interest, ViewBuilder};
use crate::tags::TraceTags;
use crate::telemetry::{DecisionLabels, KindLabel, Metrics};

/// Batches waiting for the worker.
pub const INGEST_QUEUE_LEN: usize = 256;
/// Flush an export request once it holds this many bytes.
pub const MAX_EXPORT_REQUEST_BYTES: usize = 4 << 20;
/// How often the clock task checks whether a trace is due (bounds decision lateness).
pub const TICK_INTERVAL: Duration = Duration::from_millis(10);
/// Default `num_traces` (the collector's).
pub const DEFAULT_NUM_TRACES: usize = 50_000;
/// Default decision cache sizes when `decision_cache` is not configured.
pub const DEFAULT_SAMPLED_CACHE: usize = 100_000;
/// See [`DEFAULT_SAMPLED_CACHE`].
pub const DEFAULT_NON_SAMPLED_CACHE: usize = 100_000;

/// One span of a batch: its trace, its group (index into [`IngestBatch::groups`]) and bytes.
#[derive(Debug)]
pub struct BatchSpan {
    /// Trace id.
    pub trace_id: TraceId,
    /// Index into the batch's groups.
    pub group: u32,
    /// The encoded span (a slice of the request body).
    pub bytes: Bytes,
}

/// What the worker receives.
#[derive(Debug)]
pub enum WorkerMsg {
    /// The spans of one request.
    Batch(IngestBatch),
    /// The clock task saw the next due time pass.
    Tick,
    /// Decide what is pending, export it, and stop.
    Shutdown,
}

/// What a receiver hands to the worker: the spans of one request and their views.
#[derive(Debug)]
pub struct IngestBatch {
    /// Span-view batch for the guest, built by the receiver with the interest of the time.
    pub view: Vec<u8>,
    /// The spans, in the order of the view.
    pub spans: Vec<BatchSpan>,
    /// Resource/scope groups.
    pub groups: Vec<Arc<Group>>,
}

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Guest configuration (JSON of `processors`).
    pub guest_config: String,
    /// Largest number of buffered traces before the oldest are decided early.
    pub num_traces: usize,
    /// Decision cache sizes.
    pub sampled_cache: usize,
    /// See `sampled_cache`.
    pub non_sampled_cache: usize,
    /// Drop instead of deciding pending traces on shutdown.
    pub drop_pending_on_shutdown: bool,
}

/// The worker state.
pub struct Worker {
    module: GuestModule,
    settings: WorkerSettings,
    instance: Option<GuestInstance>,
    interest: Arc<RwLock<Arc<Interest>>>,
    buffer: TraceBuffer,
    cache: DecisionCache,
    builder: ExportBuilder,
    builder_bytes: usize,
    export: mpsc::Sender<ExportRequest>,
    metrics: Arc<Metrics>,
    /// Host time (Unix ns) of the next due trace, 0 when none.
    next_due: u64,
    /// `next_due`, shared with the clock task.
    due: Arc<AtomicU64>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("traces", &self.buffer.len())
            .finish()
    }
}

/// Host clock in Unix nanoseconds.
pub fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Worker {
    /// The next due time (Unix ns, 0 = none), for the clock task.
    pub fn due(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.due)
    }

    /// Creates the worker with a configured guest instance. Returns it with the interest the
    /// receivers must use (shared, so a reload can swap it).
    pub fn new(
        module: GuestModule,
        settings: WorkerSettings,
        export: mpsc::Sender<ExportRequest>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Worker, Arc<RwLock<Arc<Interest>>>)> {
        let (instance, interest) = module.instantiate(&settings.guest_config)?;
        let interest = Arc::new(RwLock::new(Arc::new(interest)));
        let w = Worker {
            module,
            cache: DecisionCache::new(settings.sampled_cache, settings.non_sampled_cache),
            settings,
            instance: Some(instance),
            interest: Arc::clone(&interest),
            buffer: TraceBuffer::new(),
            builder: ExportBuilder::new(),
            builder_bytes: 0,
            export,
            metrics,
            next_due: 0,
            due: Arc::new(AtomicU64::new(0)),
        };
        Ok((w, interest))
    }

    /// Runs until [`WorkerMsg::Shutdown`] (or until every sender is gone), then decides (or
    /// drops) what is pending and hands the last requests to the exporter.
    ///
    /// This must run on a thread outside any tokio runtime: wasmtime's WASI output streams
    /// (a guest writing to stdout, or a Rust guest panicking) block on a runtime of their own,
    /// which tokio forbids inside another runtime's context.
    pub fn run(mut self, mut rx: mpsc::Receiver<WorkerMsg>) {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                WorkerMsg::Batch(batch) => self.ingest(batch),
                WorkerMsg::Tick => {}
                WorkerMsg::Shutdown => break,
            }
            if self.next_due != 0 && now_unix_nanos() >= self.next_due {
                self.tick();
            }
            self.publish_state();
        }
        self.shutdown();
    }

    fn publish_state(&self) {
        self.metrics.traces_in_memory.set(self.buffer.len() as i64);
        self.due.store(self.next_due, Ordering::Relaxed);
    }

    fn ingest(&mut self, batch: IngestBatch) {
        let now = now_unix_nanos();
        let mut late = Vec::new();
        for (i, span) in batch.spans.iter().enumerate() {
            let group = match batch.groups.get(span.group as usize) {
                Some(g) => g,
                None => continue,
            };
            if !self.buffer.contains(&span.trace_id)
                && let Some(c) = self.cache.get(&span.trace_id)
            {
                late.push(i);
                match c {
                    Cached::Kept(tags) => {
                        let tags = Arc::clone(tags);
                        self.add_to_export(group, &span.bytes, &tags, true);
                    }
                    Cached::NotKept => self.metrics.drop_spans("late_not_sampled", 1),
                }
                self.metrics.spans_late.inc();
                continue;
            }
            self.buffer.push(span.trace_id, group, &span.bytes);
        }
        let answer = if late.is_empty() {
            self.call(|g| g.ingest(&batch.view, now))
        } else {
            // Late spans must not reach the guest (it would see a new, orphaned trace): rebuild
            // the views without them.
            let view = self.rebuild_view(&batch, &late);
            if view.span_count() == 0 {
                Ok(None)
            } else {
                self.call(|g| g.ingest(view.as_bytes(), now))
            }
        };
        self.handle(answer);
        self.enforce_capacity(now);
        self.flush_export();
    }

    fn rebuild_view(&self, batch: &IngestBatch, skip: &[usize]) -> ViewBuilder {
        let interest = self.current_interest();
        let mut view = ViewBuilder::new();
        for (i, span) in batch.spans.iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            if let (Some(group), Some(info)) = (
                batch.groups.get(span.group as usize),
                span_info(&span.bytes),
            ) {
                view.add(&interest, group, &span.bytes, &info);
            }
        }
        view
    }

    fn current_interest(&self) -> Arc<Interest> {
        match self.interest.read() {
            Ok(i) => Arc::clone(&i),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn tick(&mut self) {
        let now = now_unix_nanos();
        let answer = self.call(|g| g.tick(now));
        self.handle(answer);
        self.flush_export();
    }

    /// Decides the oldest traces early when more than `num_traces` are buffered.
    fn enforce_capacity(&mut self, now: u64) {
        let over = self.buffer.len().saturating_sub(self.settings.num_traces);
        if over == 0 {
            self.buffer.compact();
            return;
        }
        let ids: Vec<u8> = self.buffer.oldest(over).iter().flat_map(|t| t.0).collect();
        tracing::warn!(
            traces = over,
            num_traces = self.settings.num_traces,
            "trace buffer full: deciding the oldest traces early"
        );
        self.metrics.traces_decided_early.inc_by(over as u64);
        let answer = self.call(|g| g.decide_now(&ids, now));
        self.handle(answer);
        self.buffer.compact();
    }

    /// Calls the guest (re-creating the instance first if a previous call failed).
    fn call(
        &mut self,
        f: impl FnOnce(&mut GuestInstance) -> Result<Vec<u8>, GuestError>,
    ) -> Result<Option<Vec<u8>>, GuestError> {
        if self.instance.is_none() {
            match self.module.instantiate(&self.settings.guest_config) {
                Ok((inst, _)) => self.instance = Some(inst),
                Err(e) => {
                    tracing::error!(
                        guest = self.module.name(),
                        "re-creating the guest failed: {e:#}"
                    );
                    return Ok(None);
                }
            }
        }
        match self.instance.as_mut() {
            Some(inst) => f(inst).map(Some),
            None => Ok(None),
        }
    }

    /// Applies a guest answer, or fails open on an error.
    fn handle(&mut self, answer: Result<Option<Vec<u8>>, GuestError>) {
        match answer {
            Ok(Some(bytes)) => {
                if let Err(e) = self.apply(&bytes) {
                    self.fail_open("bad_answer", &format!("malformed decision batch: {e}"));
                }
            }
            Ok(None) => {
                // No usable instance: keep everything rather than hold it without a decider.
                if !self.buffer.is_empty() {
                    self.fail_open("trap", "no guest instance");
                }
            }
            Err(e) => {
                let kind = e.kind();
                self.fail_open(kind, &e.to_string());
            }
        }
    }

    fn apply(&mut self, bytes: &[u8]) -> Result<(), LayoutError> {
        crate::completeness_metrics::record(&self.metrics, bytes);
        let reader = DecisionReader::new(bytes)?;
        self.next_due = reader.next_due();
        for rec in reader {
            let rec = rec?;
            let Some(entry) = self.buffer.remove(&rec.trace_id) else {
                self.metrics
                    .guest_faults
                    .get_or_create(&KindLabel { kind: "bad_answer" })
                    .inc();
                tracing::warn!(
                    guest = self.module.name(),
                    trace_id = %rec.trace_id,
                    "guest decided a trace that is not buffered; ignored"
                );
                continue;
            };
            self.metrics
                .traces_decided
                .get_or_create(&DecisionLabels {
                    decision: rec.decision.as_str(),
                    policy: rec.policy.to_string(),
                })
                .inc();
            if rec.decision == Decision::Sampled {
                let tags = Arc::new(TraceTags::new(
                    rec.policy.to_string(),
                    Some(rec.completeness),
                    rec.missing().map(str::to_string).collect(),
                    rec.threshold,
                    false,
                    rec.extra_attributes()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ));
                for (group, span) in entry.spans() {
                    self.add_to_export(group, span, &tags, false);
                }
                self.cache.insert(rec.trace_id, Cached::Kept(tags));
            } else {
                self.cache.insert(rec.trace_id, Cached::NotKept);
            }
        }
        Ok(())
    }

    /// Keeps every buffered trace, tagged `tracekeeper.fail_open=true`, and discards the
    /// instance (the next call creates a fresh one).
    fn fail_open(&mut self, kind: &'static str, why: &str) {
        self.metrics
            .guest_faults
            .get_or_create(&KindLabel { kind })
            .inc();
        let traces = self.buffer.drain();
        tracing::error!(
            guest = self.module.name(),
            kind,
            traces = traces.len(),
            "guest failed, keeping every pending trace (fail open): {why}"
        );
        self.instance = None;
        self.next_due = 0;
        let tags = Arc::new(TraceTags::fail_open());
        for (id, entry) in traces {
            self.metrics
                .traces_decided
                .get_or_create(&DecisionLabels {
                    decision: "fail_open",
                    policy: String::new(),
                })
                .inc();
            for (group, span) in entry.spans() {
                self.add_to_export(group, span, &tags, false);
            }
            self.cache.insert(id, Cached::Kept(Arc::clone(&tags)));
        }
    }

    fn add_to_export(&mut self, group: &Arc<Group>, span: &[u8], tags: &TraceTags, late: bool) {
        self.builder.add(group, span, tags, late);
        self.builder_bytes += span.len() + 64;
        if self.builder_bytes >= MAX_EXPORT_REQUEST_BYTES {
            self.flush_export();
        }
    }

    fn flush_export(&mut self) {
        if self.builder.is_empty() {
            return;
        }
        let spans = self.builder.span_count();
        let body = Bytes::from(self.builder.finish());
        self.builder_bytes = 0;
        if self
            .export
            .blocking_send(ExportRequest { body, spans })
            .is_err()
        {
            self.metrics.drop_spans("exporter_stopped", spans as u64);
        }
    }

    fn shutdown(&mut self) {
        if self.settings.drop_pending_on_shutdown {
            let traces = self.buffer.drain();
            let spans: usize = traces.iter().map(|(_, e)| e.len()).sum();
            tracing::info!(
                traces = traces.len(),
                "shutdown: dropping pending traces as configured"
            );
            self.metrics.drop_spans("shutdown", spans as u64);
        } else {
            tracing::info!(
                traces = self.buffer.len(),
                "shutdown: deciding pending traces"
            );
            let now = now_unix_nanos();
            let answer = self.call(|g| g.flush(now));
            self.handle(answer);
            if !self.buffer.is_empty() {
                // The guest did not decide some traces: keep them rather than lose them.
                self.fail_open("bad_answer", "flush left traces undecided");
            }
        }
        self.flush_export();
        self.metrics.traces_in_memory.set(0);
    }
}
