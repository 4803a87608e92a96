//! The worker: owns the trace buffer and the guest instance, feeds span views to the guest,
//! applies its decisions, hands kept spans to the exporter, and recovers from guest faults.
//!
//! There are `guest.workers` of them, each owning the traces whose ids map to it (see
//! [`crate::shard`]) with its share of the buffer limits; what follows is about one.
//!
//! It runs on its own thread, outside any async runtime (guest calls are synchronous wasm
//! execution, and wasmtime-wasi's synchronous bindings would block inside a runtime), and
//! receives batches from the receivers over a bounded channel ([`INGEST_QUEUE_LEN`]); when the
//! channel is full, receivers wait.
//!
//! # Fail open
//!
//! A guest fault never loses spans. When a call traps, runs past its deadline, fails for lack of
//! memory or answers something that breaks the contract, the worker keeps the traces the call
//! was about, tagged `tracekeeper.fail_open=true`, and only those:
//!
//! - `ingest`: the traces with spans in the batch;
//! - `tick`: the traces that were due. The host cannot see the guest's due times, so it keeps its
//!   own first-seen time per trace and counts as due every trace first seen at least the shortest
//!   configured wait ago (`decision_wait`, or `decision_wait_after_root_received` when shorter,
//!   of `processors.tail_sampling`; every pending trace when that section is absent, as the
//!   waits of a foreign guest are unknown), and at least the oldest pending trace, so that a
//!   fault that repeats makes progress;
//! - `decide-now`: the traces it listed; `flush`: every pending trace;
//! - a well-formed answer that breaks the contract: the traces it decides twice, and, when it
//!   decides a trace that is not pending (unknown, or already decided), the traces the call was
//!   about; its other decisions are applied.
//!
//! Then the instance is discarded and a fresh one is created from the precompiled component and
//! configured, and the still-pending traces are **replayed** into it from the host's copy of
//! their spans: in first-seen order, in batches of at most [`REPLAY_MAX_SPANS`] spans whose
//! first-seen times lie within [`REPLAY_MAX_SPREAD`], each passed with `now` = the newest
//! first-seen time of the batch (so the new instance computes nearly the same due times as the
//! old one), followed by a `tick` at the current time. A fault during replay keeps that replay
//! batch's traces and starts over with another instance. There is no pool of spare instances:
//! creating and configuring one costs about 0.1 ms (`cargo bench --bench guest_call`), far less
//! than replaying the pending traces into it, which a spare instance would need just the same.
//!
//! After `guest.max_consecutive_faults` faults in a row (replay calls do not count as successes)
//! the worker is **degraded**: it keeps every trace as it arrives, reports the reason on the
//! health endpoint (503) and in `tracekeeper_guest_degraded`, and re-tries the guest after
//! `guest.retry_initial_interval`, doubling the wait up to `guest.retry_max_interval` after each
//! failed re-try. A re-try creates an instance and calls `tick`; if that works the worker leaves
//! the degraded state on probation, and one more fault before a successful `ingest` makes it
//! degraded again with a doubled wait.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hashbrown::HashSet;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tracekeeper_abi::{Decision, DecisionReader, TraceId};

use crate::backpressure::Pressure;
use crate::buffer::{Cached, DecisionCache, TraceBuffer};
use crate::clock::WakeClock;
use crate::config::GuestSection;
use crate::export::ExportRequest;
use crate::export::builder::ExportBuilder;
use crate::guest::{FaultCause, GuestError, GuestInstance, GuestModule, Shard};
use crate::otlp::request::{Group, SpanInfo, span_info};
use crate::otlp::view::{Interest, ViewBuilder};
use crate::shard::{ShardStates, shard_of};
use crate::tags::{TagsInterner, TraceTags};
use crate::telemetry::{DecisionLabels, Health, KindLabel, Metrics, QueueLabel};

/// Batches waiting for the worker.
pub const INGEST_QUEUE_LEN: usize = 256;
/// Flush an export request once it holds this many bytes.
pub const MAX_EXPORT_REQUEST_BYTES: usize = 4 << 20;
/// Flush an export request once it holds this many spans (the collector's batch size).
pub const EXPORT_BATCH_SPANS: usize = 8192;
/// Longest a kept span waits in the worker for more to share its export request. Decisions come
/// a few traces at a time (every batch and every tick), so without it the exporter sent a
/// request of ~20 spans every few milliseconds at 50 000 spans/s, and each request (gzip, the
/// gRPC round trip, the wake-ups) cost more than its spans (BENCHMARKS.md). It counts in
/// `tracekeeper_decision_latency_seconds`.
pub const EXPORT_LINGER: Duration = Duration::from_millis(20);
/// How often the clock task checks whether a trace is due (bounds decision lateness).
pub const TICK_INTERVAL: Duration = Duration::from_millis(10);
/// Default `num_traces` (the collector's).
pub const DEFAULT_NUM_TRACES: usize = 50_000;
/// Default `memory_limit_mib`: most memory buffered spans may hold.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 1024;
/// With `block_on_overflow`, the buffer may pass its limits by the batches already queued when
/// the "full" flag went up; past this multiple of a limit the oldest traces are decided early
/// anyway, so memory stays bounded.
pub const OVERFLOW_HARD_LIMIT_FACTOR: usize = 2;
/// Default decision cache sizes when `decision_cache` is not configured.
pub const DEFAULT_SAMPLED_CACHE: usize = 100_000;
/// See [`DEFAULT_SAMPLED_CACHE`].
pub const DEFAULT_NON_SAMPLED_CACHE: usize = 100_000;
/// Most spans in one replay batch.
pub const REPLAY_MAX_SPANS: usize = 1024;
/// Widest spread of first-seen times in one replay batch (the most a replayed trace's decision
/// can move later).
pub const REPLAY_MAX_SPREAD: Duration = TICK_INTERVAL;
/// Default `guest.max_consecutive_faults`.
pub const DEFAULT_MAX_CONSECUTIVE_FAULTS: u32 = 5;
/// Default `guest.retry_initial_interval`.
pub const DEFAULT_RETRY_INITIAL_INTERVAL: Duration = Duration::from_secs(1);
/// Default `guest.retry_max_interval`.
pub const DEFAULT_RETRY_MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Native stack of the worker thread beyond the guest's wasm stack limit: host functions the
/// guest calls, and the host's own frames, run on the same stack.
pub const WORKER_STACK_MARGIN: usize = 1 << 20;
/// Smallest native stack of the worker thread (Rust's default for spawned threads).
pub const MIN_WORKER_STACK: usize = 2 << 20;

/// One span of a batch: its trace, its group (index into [`IngestBatch::groups`]) and where
/// its bytes are in [`IngestBatch::body`] (a range rather than a `Bytes` of its own: a slice of
/// the body per span is an atomic update of its reference count when made and when dropped).
#[derive(Debug)]
pub struct BatchSpan {
    /// Trace id.
    pub trace_id: TraceId,
    /// Index into the batch's groups.
    pub group: u32,
    /// The encoded span's bytes in the body.
    pub range: Range<usize>,
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
    /// Switch to a new guest and configuration (SIGHUP), keeping the buffered traces.
    Reload(Box<Reload>),
}

/// A new guest and configuration for the worker. The worker configures an instance of the new
/// guest; if that fails it logs the error and keeps the old one; otherwise it switches and
/// replays the pending traces into the new instance, so they are decided by the new rules.
pub struct Reload {
    /// The (possibly new) guest component.
    pub module: GuestModule,
    /// The new settings (guest configuration, limits).
    pub settings: WorkerSettings,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("guest", &self.module.name())
            .field("settings", &self.settings)
            .finish()
    }
}

/// What a receiver hands to the worker: the spans of one request and their views.
#[derive(Debug)]
pub struct IngestBatch {
    /// Span-view batch for the guest, built by the receiver with the interest of the time.
    pub view: Vec<u8>,
    /// The spans, in the order of the view.
    pub spans: Vec<BatchSpan>,
    /// The request body (decompressed) the spans' ranges are in.
    pub body: Bytes,
    /// Resource/scope groups.
    pub groups: Vec<Arc<Group>>,
    /// Span-view batch of other workers' spans with links into this worker's traces, for the
    /// guest's `links` call (empty: none).
    pub links: Vec<u8>,
    /// The request body's place in the bound on queued bytes, shared by every worker's part of
    /// the request and given back when the last part is dropped.
    pub ticket: Option<Arc<crate::backpressure::BodyTicket>>,
}

impl IngestBatch {
    /// A span's encoded bytes (empty for a range outside the body, which the receiver never
    /// makes).
    pub fn bytes(&self, span: &BatchSpan) -> &[u8] {
        self.body.get(span.range.clone()).unwrap_or_default()
    }
}

/// What the worker does when the guest keeps failing.
#[derive(Debug, Clone, Copy)]
pub struct FaultPolicy {
    /// Faults in a row after which the worker is degraded.
    pub max_consecutive_faults: u32,
    /// First wait before re-trying the guest when degraded.
    pub retry_initial_interval: Duration,
    /// Longest wait between re-tries.
    pub retry_max_interval: Duration,
}

impl Default for FaultPolicy {
    fn default() -> Self {
        FaultPolicy {
            max_consecutive_faults: DEFAULT_MAX_CONSECUTIVE_FAULTS,
            retry_initial_interval: DEFAULT_RETRY_INITIAL_INTERVAL,
            retry_max_interval: DEFAULT_RETRY_MAX_INTERVAL,
        }
    }
}

impl FaultPolicy {
    /// The policy of a `guest:` configuration section (defaults for absent keys).
    pub fn from_section(section: &GuestSection) -> Self {
        let d = FaultPolicy::default();
        let initial = section
            .retry_initial_interval
            .unwrap_or(d.retry_initial_interval);
        FaultPolicy {
            max_consecutive_faults: section
                .max_consecutive_faults
                .unwrap_or(d.max_consecutive_faults)
                .max(1),
            retry_initial_interval: initial,
            retry_max_interval: section
                .retry_max_interval
                .unwrap_or(d.retry_max_interval)
                .max(initial),
        }
    }
}

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Guest configuration (JSON of `processors`).
    pub guest_config: String,
    /// Largest number of buffered traces before the oldest are decided early.
    pub num_traces: usize,
    /// Most bytes buffered spans may hold before the oldest traces are decided early.
    pub memory_limit_bytes: usize,
    /// At a limit, refuse new spans (retryable) instead of deciding the oldest traces early.
    pub block_on_overflow: bool,
    /// Decision cache sizes.
    pub sampled_cache: usize,
    /// See `sampled_cache`.
    pub non_sampled_cache: usize,
    /// Drop instead of deciding pending traces on shutdown.
    pub drop_pending_on_shutdown: bool,
    /// What to do when the guest keeps failing.
    pub faults: FaultPolicy,
}

/// The shortest wait from a trace's first span to its decision that the configuration allows,
/// for telling which traces a failed `tick` was about: `decision_wait`, or
/// `decision_wait_after_root_received` when shorter, of `processors.tail_sampling` (the
/// collector's default when absent). Zero (every pending trace counts as due) when the section
/// is absent or unreadable: a foreign guest's waits are unknown.
pub fn shortest_decision_wait(guest_config: &str) -> Duration {
    let Ok(config) = serde_json::from_str::<serde_json::Value>(guest_config) else {
        return Duration::ZERO;
    };
    let Some(ts) = config.get("tail_sampling") else {
        return Duration::ZERO;
    };
    let wait = |key: &str| {
        ts.get(key)
            .and_then(serde_json::Value::as_str)
            .and_then(|s| tracekeeper_guest::config::duration::parse(s).ok())
    };
    let decision_wait = match ts.get("decision_wait") {
        None => tracekeeper_guest::config::tail_sampling::DEFAULT_DECISION_WAIT,
        Some(_) => match wait("decision_wait") {
            Some(d) => d,
            None => return Duration::ZERO,
        },
    };
    match wait("decision_wait_after_root_received") {
        Some(root) => decision_wait.min(root),
        None => decision_wait,
    }
}

/// Fault bookkeeping.
#[derive(Debug, Default)]
struct FaultState {
    /// Faults since the last successful call (replay calls do not reset it).
    consecutive: u32,
    /// Keeping every trace; the guest is re-tried at `retry_at`.
    degraded: bool,
    /// Left the degraded state, but no `ingest` has succeeded since.
    probation: bool,
    /// When to re-try the guest (Unix ns), while degraded.
    retry_at: u64,
    /// The current wait between re-tries.
    backoff: Duration,
    /// The last fault, for logs and health.
    last: String,
    /// Inside recovery (replay calls): successes do not reset `consecutive`.
    recovering: bool,
    /// The instance was discarded and must be re-created and replayed into.
    needs_recovery: bool,
}

/// What a fault in a guest call affects.
enum Affected<'a> {
    /// The traces of this batch, except the spans at these indices (late spans, not sent;
    /// ascending, so they are looked up by binary search).
    Batch(&'a IngestBatch, &'a [usize]),
    /// These traces.
    Traces(&'a [TraceId]),
    /// The traces due at this time (see the module docs).
    DueAt(u64),
    /// Every pending trace.
    All,
}

/// Contract violations in a well-formed answer.
#[derive(Debug, Default)]
struct Violations {
    /// Traces decided more than once.
    twice: Vec<TraceId>,
    /// Records for traces that are not pending.
    unknown: usize,
}

/// The worker state.
pub struct Worker {
    module: GuestModule,
    settings: WorkerSettings,
    /// Which worker this is, of how many.
    shard: Shard,
    /// Every worker's figures, for the process-wide gauges and health.
    states: Arc<ShardStates>,
    instance: Option<GuestInstance>,
    interest: Arc<RwLock<Arc<Interest>>>,
    buffer: TraceBuffer,
    /// (trace, first-seen Unix ns) in arrival order; entries of decided traces are skipped and
    /// compacted away.
    arrivals: VecDeque<(TraceId, u64)>,
    cache: DecisionCache,
    /// Shares the tags of kept traces that are tagged alike (in the decision cache).
    interner: TagsInterner,
    /// `tracekeeper_traces_decided_total`'s counters, at hand.
    decided: DecidedCounters,
    builder: ExportBuilder,
    builder_bytes: usize,
    /// Host time (Unix ns) the oldest span in `builder` was added (0 when empty).
    builder_since: u64,
    export: mpsc::Sender<ExportRequest>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// See [`shortest_decision_wait`].
    due_age: Duration,
    faults: FaultState,
    stopping: bool,
    /// Host time (Unix ns) of the next due trace, 0 when none.
    next_due: u64,
    /// Where the worker publishes when it wants a tick (next due trace, end of the export
    /// linger, next re-try), for its clock task.
    clock: Arc<WakeClock>,
    /// The "full" flag for the receivers (raised only with `block_on_overflow`).
    pressure: Arc<Pressure>,
    /// Decision latencies (seconds) waiting for their spans to be handed to the exporter.
    latencies: Vec<f64>,
}

/// Most `(decision, policy)` counters [`DecidedCounters`] keeps at hand; past them (a guest
/// naming ever new policies) the family is looked up each time, as before.
const MAX_DECIDED_COUNTERS: usize = 64;

/// The worker's handles on `tracekeeper_traces_decided_total{decision,policy}`. Looking a
/// counter up in its family takes an owned label set (the policy name copied) and a hash per
/// decided trace; the handles found once are kept, and share the family's counters.
#[derive(Debug, Default)]
struct DecidedCounters {
    known: Vec<(&'static str, Box<str>, Counter)>,
}

impl DecidedCounters {
    /// Counts one trace decided `decision` by `policy`.
    fn inc(&mut self, metrics: &Metrics, decision: &'static str, policy: &str) {
        if let Some((_, _, c)) = self
            .known
            .iter()
            .find(|(d, p, _)| *d == decision && **p == *policy)
        {
            c.inc();
            return;
        }
        let c = metrics.traces_decided.get_or_create(&DecisionLabels {
            decision,
            policy: policy.to_string(),
        });
        c.inc();
        if self.known.len() < MAX_DECIDED_COUNTERS {
            self.known.push((decision, policy.into(), c.clone()));
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("shard", &self.shard)
            .field("traces", &self.buffer.len())
            .field("degraded", &self.faults.degraded)
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

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Worker {
    /// Where the worker publishes the next time it wants a tick, for its clock task
    /// ([`crate::clock::run`]).
    pub fn clock(&self) -> Arc<WakeClock> {
        Arc::clone(&self.clock)
    }

    /// The "full" flag the worker raises at its limits with `block_on_overflow`, for the
    /// receivers.
    pub fn pressure(&self) -> Arc<Pressure> {
        Arc::clone(&self.pressure)
    }

    /// The native stack the worker thread needs: the guest's wasm stack limit plus
    /// [`WORKER_STACK_MARGIN`], at least [`MIN_WORKER_STACK`].
    pub fn thread_stack_size(&self) -> usize {
        self.module
            .limits()
            .max_wasm_stack_bytes
            .saturating_add(WORKER_STACK_MARGIN)
            .max(MIN_WORKER_STACK)
    }

    /// Creates worker `shard` with a configured guest instance, and writes the interest the
    /// receivers must use into `interest` (shared by every worker, so a reload can swap it).
    /// `settings` are this worker's own (its share of the buffer limits).
    ///
    /// The instance is created on a short-lived thread of its own, outside any async runtime,
    /// like every later guest call (see [`Worker::run`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        module: GuestModule,
        settings: WorkerSettings,
        shard: Shard,
        states: Arc<ShardStates>,
        interest: Arc<RwLock<Arc<Interest>>>,
        export: mpsc::Sender<ExportRequest>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> anyhow::Result<Worker> {
        let stack = module
            .limits()
            .max_wasm_stack_bytes
            .saturating_add(WORKER_STACK_MARGIN)
            .max(MIN_WORKER_STACK);
        let (instance, interest_now) = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("tracekeeper-configure".into())
                .stack_size(stack)
                .spawn_scoped(s, || {
                    module.instantiate_shard(&settings.guest_config, shard)
                })
                .map_err(|e| anyhow::anyhow!("starting a thread to configure the guest: {e}"))?
                .join()
                .map_err(|_| anyhow::anyhow!("configuring the guest panicked"))?
                .map_err(anyhow::Error::from)
        })?;
        match interest.write() {
            Ok(mut i) => *i = Arc::new(interest_now),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(interest_now),
        }
        let w = Worker {
            shard,
            states,
            cache: DecisionCache::new(settings.sampled_cache, settings.non_sampled_cache),
            interner: TagsInterner::default(),
            decided: DecidedCounters::default(),
            due_age: shortest_decision_wait(&settings.guest_config),
            module,
            settings,
            instance: Some(instance),
            interest: Arc::clone(&interest),
            buffer: TraceBuffer::new(),
            arrivals: VecDeque::new(),
            builder: ExportBuilder::new(),
            builder_bytes: 0,
            builder_since: 0,
            export,
            metrics,
            health,
            faults: FaultState::default(),
            stopping: false,
            next_due: 0,
            clock: Arc::new(WakeClock::new()),
            pressure: Arc::new(Pressure::default()),
            latencies: Vec::new(),
        };
        Ok(w)
    }

    /// Runs until [`WorkerMsg::Shutdown`] (or until every sender is gone), then decides (or
    /// drops) what is pending and hands the last requests to the exporter.
    ///
    /// This must run on a thread outside any tokio runtime: wasmtime-wasi's synchronous
    /// bindings (a guest writing to stdout, opening a socket...) block on a runtime of their
    /// own, which tokio forbids inside another runtime's context. Give the thread
    /// [`Worker::thread_stack_size`] of stack.
    pub fn run(mut self, mut rx: mpsc::Receiver<WorkerMsg>) {
        // The gauges (the guest's memory among them) hold from the start, not from the first
        // batch.
        self.publish_state();
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                WorkerMsg::Batch(batch) => self.ingest(batch),
                WorkerMsg::Tick => self.clock.ticked(),
                WorkerMsg::Shutdown => break,
                WorkerMsg::Reload(reload) => self.reload(*reload),
            }
            let wake = self.guest_wake_at();
            if wake != 0 && now_unix_nanos() >= wake {
                self.on_due();
            }
            // Kept spans of this batch's or tick's decisions are handed over here (or sooner,
            // at the size limits in `add_to_export`), once they have lingered.
            self.flush_export_if_due();
            self.publish_state();
            self.states
                .set_ingest_queue(&self.metrics, self.shard.index, rx.len());
        }
        self.shutdown();
    }

    /// Switches to a new guest and configuration unless the new guest cannot be configured
    /// (then the old one stays, with an error in the log); replays the pending traces into the
    /// new instance.
    fn reload(&mut self, reload: Reload) {
        let Reload { module, settings } = reload;
        let (instance, interest) =
            match module.instantiate_shard(&settings.guest_config, self.shard) {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::error!(
                        guest = module.name(),
                        "reload rejected: the new configuration does not configure the guest; \
                     keeping the running one: {e}"
                    );
                    return;
                }
            };
        if (settings.sampled_cache, settings.non_sampled_cache)
            != (self.settings.sampled_cache, self.settings.non_sampled_cache)
        {
            tracing::warn!("decision_cache sizes are not reloaded; restart to change them");
        }
        self.due_age = shortest_decision_wait(&settings.guest_config);
        self.settings = WorkerSettings {
            sampled_cache: self.settings.sampled_cache,
            non_sampled_cache: self.settings.non_sampled_cache,
            ..settings
        };
        self.module = module;
        match self.interest.write() {
            Ok(mut i) => *i = Arc::new(interest),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(interest),
        }
        self.instance = Some(instance);
        self.next_due = 0;
        // A new guest starts with a clean fault record.
        self.faults = FaultState::default();
        self.set_degraded(None);
        let pending = self.buffer.len();
        self.faults.recovering = true;
        self.replay();
        self.faults.recovering = false;
        self.recover();
        self.enforce_capacity(now_unix_nanos());
        self.flush_export();
        tracing::info!(
            guest = self.module.name(),
            traces = pending,
            "configuration reloaded; pending traces replayed into the new guest instance"
        );
    }

    /// When the guest wants the worker to run next: its next due time, or the next re-try.
    fn guest_wake_at(&self) -> u64 {
        if self.faults.degraded {
            self.faults.retry_at
        } else {
            self.next_due
        }
    }

    /// When the worker wants to run next (0: not until a batch comes): the guest's wake time or
    /// the end of the export linger, whichever is first.
    fn wake_at(&self) -> u64 {
        let guest = self.guest_wake_at();
        match self.export_due() {
            0 => guest,
            export if guest == 0 => export,
            export => guest.min(export),
        }
    }

    /// When the export request being built must be handed over (0 when empty).
    fn export_due(&self) -> u64 {
        if self.builder.is_empty() {
            0
        } else {
            self.builder_since
                .saturating_add(EXPORT_LINGER.as_nanos() as u64)
        }
    }

    fn publish_state(&self) {
        self.states.set_buffer(
            &self.metrics,
            self.shard.index,
            self.buffer.len(),
            self.buffer.bytes(),
        );
        self.metrics
            .queue_length
            .get_or_create(&QueueLabel { queue: "export" })
            .set((self.export.max_capacity() - self.export.capacity()) as i64);
        self.states.set_guest_memory(
            &self.metrics,
            self.shard.index,
            self.instance
                .as_ref()
                .map_or(0, GuestInstance::memory_bytes),
        );
        self.clock.publish(self.wake_at());
        self.pressure.set_full(
            self.settings.block_on_overflow
                && (self.buffer.len() >= self.settings.num_traces
                    || self.buffer.bytes() >= self.settings.memory_limit_bytes),
        );
    }

    fn on_due(&mut self) {
        if self.faults.degraded {
            self.retry();
        } else {
            self.tick();
        }
    }

    fn ingest(&mut self, batch: IngestBatch) {
        let now = now_unix_nanos();
        // Indices of late spans, ascending (looked up by binary search: a request can hold
        // tens of thousands of late spans).
        let mut late = Vec::new();
        // A run of consecutive spans of one trace and one group (a request usually carries a
        // trace's spans together) is looked up once and buffered as one piece.
        let mut start = 0;
        while let Some(first) = batch.spans.get(start) {
            let len = batch.spans[start..]
                .iter()
                .position(|s| s.trace_id != first.trace_id || s.group != first.group)
                .unwrap_or(batch.spans.len() - start);
            let run = start..start + len;
            start = run.end;
            let Some(group) = batch.groups.get(first.group as usize) else {
                continue;
            };
            if !self.buffer.contains(&first.trace_id)
                && let Some(c) = self.cache.get(&first.trace_id)
            {
                late.extend(run.clone());
                match c {
                    Cached::Kept(tags) => {
                        for span in &batch.spans[run] {
                            self.add_to_export(group, batch.bytes(span), &tags, true);
                        }
                    }
                    Cached::NotKept => self.metrics.drop_spans("late_not_sampled", len as u64),
                }
                self.metrics.spans_late.inc_by(len as u64);
                continue;
            }
            let spans = batch.spans[run].iter().map(|s| batch.bytes(s));
            if self.buffer.push_run(first.trace_id, group, spans) {
                self.arrivals.push_back((first.trace_id, now));
            }
        }
        let affected = Affected::Batch(&batch, &late);
        let ok = if batch.spans.is_empty() {
            false
        } else if late.is_empty() {
            self.call("ingest", affected, |g| g.ingest(&batch.view, now))
        } else {
            // Late spans must not reach the guest (it would see a new, orphaned trace): rebuild
            // the views without them.
            let view = self.view_of(&batch, |i| late.binary_search(&i).is_err());
            view.span_count() > 0
                && self.call("ingest", affected, |g| g.ingest(view.as_bytes(), now))
        };
        if ok {
            // An ingest went through: a guest that recovered from the degraded state is trusted
            // again.
            self.faults.probation = false;
        }
        self.recover();
        if !batch.links.is_empty() {
            self.links(&batch.links, now);
        }
        if !late.is_empty() && self.module.shardable() {
            // Late spans of decided traces: the guest sees their messaging relations (a late
            // consumer completes its producer's message) without buffering them.
            let view = self.view_of(&batch, |i| late.binary_search(&i).is_ok());
            if view.span_count() > 0 {
                self.links(view.as_bytes(), now);
            }
        }
        self.enforce_capacity(now);
    }

    /// The guest's `links` call: spans that belong to no pending trace here (other workers'
    /// spans linking into this worker's traces, late spans of decided traces). A fault affects
    /// no trace of its own (the spans are not buffered): the instance is replaced as after any
    /// fault, and those relations are not matched.
    fn links(&mut self, view: &[u8], now: u64) {
        self.call("links", Affected::Traces(&[]), |g| {
            g.links(view, now).unwrap_or_else(|| {
                Err(GuestError::bad_answer(
                    "links",
                    FaultCause::Contract("the guest has no shard interface".into()),
                ))
            })
        });
        self.recover();
    }

    /// The views of the batch's spans at the indices `pick` selects, with only the links into
    /// this worker's traces (as the receivers route them).
    fn view_of(&self, batch: &IngestBatch, pick: impl Fn(usize) -> bool) -> ViewBuilder {
        let interest = self.current_interest();
        let mut view = ViewBuilder::new();
        for (i, span) in batch.spans.iter().enumerate() {
            if !pick(i) {
                continue;
            }
            if let (Some(group), Some(info)) = (
                batch.groups.get(span.group as usize),
                span_info(batch.bytes(span)),
            ) {
                self.add_view(&mut view, &interest, group, batch.bytes(span), &info);
            }
        }
        view
    }

    /// Adds a span's view with only the links into this worker's traces.
    fn add_view(
        &self,
        view: &mut ViewBuilder,
        interest: &Interest,
        group: &Arc<Group>,
        bytes: &[u8],
        info: &SpanInfo,
    ) {
        let Shard { index, count } = self.shard;
        if count > 1 {
            view.add_with_links(interest, group, bytes, info, |t| {
                shard_of(t, count) == index
            });
        } else {
            view.add(interest, group, bytes, info);
        }
    }

    fn current_interest(&self) -> Arc<Interest> {
        match self.interest.read() {
            Ok(i) => Arc::clone(&i),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn tick(&mut self) {
        let now = now_unix_nanos();
        self.call("tick", Affected::DueAt(now), |g| g.tick(now));
        self.recover();
    }

    /// Records the decision latencies of traces whose spans were just handed over.
    fn observe_latencies(&mut self) {
        if self.latencies.is_empty() {
            return;
        }
        let now = now_unix_nanos() as f64;
        for due in self.latencies.drain(..) {
            self.metrics
                .decision_latency
                .observe(((now - due) / 1e9).max(0.0));
        }
    }

    /// Decides the oldest traces early while more than `num_traces` are buffered or their
    /// spans hold more than `memory_limit_mib` (with `block_on_overflow`, only past
    /// [`OVERFLOW_HARD_LIMIT_FACTOR`] times those limits: below, the receivers are refusing).
    fn enforce_capacity(&mut self, now: u64) {
        let factor = if self.settings.block_on_overflow {
            OVERFLOW_HARD_LIMIT_FACTOR
        } else {
            1
        };
        let max_traces = self.settings.num_traces.saturating_mul(factor);
        let max_bytes = self.settings.memory_limit_bytes.saturating_mul(factor);
        let oldest = self.buffer.oldest_over(max_traces, max_bytes);
        if oldest.is_empty() {
            self.compact();
            return;
        }
        let over = oldest.len();
        let ids: Vec<u8> = oldest.iter().flat_map(|t| t.0).collect();
        tracing::warn!(
            traces = over,
            num_traces = self.settings.num_traces,
            bytes = self.buffer.bytes(),
            memory_limit_bytes = self.settings.memory_limit_bytes,
            "trace buffer full: deciding the oldest traces early"
        );
        self.metrics.traces_decided_early.inc_by(over as u64);
        self.call("decide-now", Affected::Traces(&oldest), |g| {
            g.decide_now(&ids, now)
        });
        self.recover();
        self.compact();
    }

    fn compact(&mut self) {
        self.buffer.compact();
        if self.arrivals.len() > 2 * self.buffer.len() + 1024 {
            let buffer = &self.buffer;
            self.arrivals.retain(|(id, _)| buffer.contains(id));
        }
    }

    /// Makes one guest call and applies its answer; on a fault, keeps the affected traces and
    /// marks the instance for re-creation ([`Worker::recover`]). Without an instance (degraded),
    /// keeps the affected traces at once. Returns true when the answer was applied cleanly.
    fn call(
        &mut self,
        name: &'static str,
        affected: Affected<'_>,
        f: impl FnOnce(&mut GuestInstance) -> Result<Vec<u8>, GuestError>,
    ) -> bool {
        let Some(instance) = self.instance.as_mut() else {
            let ids = self.resolve(&affected);
            self.keep_fail_open(&ids);
            return false;
        };
        match f(instance).and_then(|bytes| self.apply(name, &bytes)) {
            Ok(v) if v.twice.is_empty() && v.unknown == 0 => {
                self.succeeded();
                true
            }
            Ok(v) => {
                // A well-formed answer that breaks the contract: its other decisions stand and
                // the instance, whose view of what is pending has drifted from the host's, is
                // replaced. The traces it decided twice are kept; when it decided traces that
                // are not pending, so are the traces the call was about (replaying them would
                // most likely repeat the error).
                let e = GuestError::bad_answer(
                    name,
                    FaultCause::Contract(format!(
                        "{} trace(s) decided more than once and {} decision(s) for traces that \
                         are not pending (unknown or already decided)",
                        v.twice.len(),
                        v.unknown
                    )),
                );
                let mut ids = v.twice;
                if v.unknown > 0 {
                    ids.extend(self.resolve(&affected));
                }
                self.fault(e, &Affected::Traces(&ids));
                false
            }
            Err(e) => {
                self.fault(e, &affected);
                false
            }
        }
    }

    fn succeeded(&mut self) {
        if !self.faults.recovering {
            self.faults.consecutive = 0;
        }
    }

    /// The traces a failed call affects.
    fn resolve(&self, affected: &Affected<'_>) -> Vec<TraceId> {
        match affected {
            Affected::Traces(ids) => ids.to_vec(),
            Affected::Batch(batch, late) => {
                let mut seen = HashSet::new();
                batch
                    .spans
                    .iter()
                    .enumerate()
                    .filter(|(i, s)| late.binary_search(i).is_err() && seen.insert(s.trace_id))
                    .map(|(_, s)| s.trace_id)
                    .collect()
            }
            Affected::All => self.pending().into_iter().map(|(id, _)| id).collect(),
            Affected::DueAt(now) => {
                let cutoff = now.saturating_sub(nanos(self.due_age));
                let mut seen = HashSet::new();
                let mut due: Vec<TraceId> = self
                    .arrivals
                    .iter()
                    .take_while(|(_, first)| *first <= cutoff)
                    .filter(|(id, _)| self.buffer.contains(id) && seen.insert(*id))
                    .map(|(id, _)| *id)
                    .collect();
                if due.is_empty()
                    && let Some(oldest) = self
                        .arrivals
                        .iter()
                        .find(|(id, _)| self.buffer.contains(id))
                {
                    due.push(oldest.0);
                }
                due
            }
        }
    }

    /// Pending traces with their first-seen times, oldest first (a trace id that came back
    /// after its decision was forgotten counts from its latest arrival).
    fn pending(&self) -> Vec<(TraceId, u64)> {
        let mut seen = HashSet::with_capacity(self.buffer.len());
        let mut out: Vec<(TraceId, u64)> = self
            .arrivals
            .iter()
            .rev()
            .filter(|(id, _)| self.buffer.contains(id) && seen.insert(*id))
            .copied()
            .collect();
        out.reverse();
        out
    }

    /// Checks a whole decision batch, then applies it. A malformed batch applies nothing.
    /// Returns the contract violations: traces decided more than once (not applied: the caller
    /// keeps them fail-open) and records for traces that are not pending (ignored).
    fn apply(&mut self, call: &'static str, bytes: &[u8]) -> Result<Violations, GuestError> {
        crate::completeness_metrics::record(&self.metrics, self.shard.index, bytes);
        let malformed = |e| GuestError::bad_answer(call, FaultCause::Malformed(e));
        let reader = DecisionReader::new(bytes).map_err(malformed)?;
        let mut seen = HashSet::with_capacity(reader.len());
        let mut twice = Vec::new();
        for rec in reader.clone() {
            let rec = rec.map_err(malformed)?;
            if !seen.insert(rec.trace_id) && !twice.contains(&rec.trace_id) {
                twice.push(rec.trace_id);
            }
        }
        // Decisions of a `tick` or an `ingest` were due at the earliest at the due time the guest
        // announced before the call: their latency is measured from there (an upper bound for
        // traces due later). Early (`decide-now`), shutdown and replay decisions are not.
        let due = match call {
            "tick" | "ingest" => self.next_due,
            _ => 0,
        };
        self.next_due = reader.next_due();
        let mut unknown = 0usize;
        for rec in reader.flatten() {
            if twice.contains(&rec.trace_id) {
                continue;
            }
            let Some(entry) = self.buffer.remove(&rec.trace_id) else {
                unknown += 1;
                continue;
            };
            self.decided
                .inc(&self.metrics, rec.decision.as_str(), rec.policy);
            if due != 0 {
                self.latencies.push(due as f64);
            }
            if rec.decision == Decision::Sampled {
                let tags = self.interner.for_decision(&rec);
                for (group, span) in entry.spans() {
                    self.add_to_export(group, span, &tags, false);
                }
                self.cache.insert(rec.trace_id, Cached::Kept(tags));
            } else {
                self.cache.insert(rec.trace_id, Cached::NotKept);
            }
        }
        Ok(Violations { twice, unknown })
    }

    fn count_fault(&self, kind: crate::guest::FaultKind) {
        self.metrics
            .guest_faults
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts and logs a fault, keeps the traces it affects, and discards the instance.
    fn fault(&mut self, e: GuestError, affected: &Affected<'_>) {
        self.count_fault(e.kind());
        let ids = self.resolve(affected);
        tracing::error!(
            guest = self.module.name(),
            call = e.call,
            kind = e.kind().as_str(),
            traces = ids.len(),
            "guest fault; keeping the affected traces (fail open) and re-creating the instance: {}",
            e.cause
        );
        self.keep_fail_open(&ids);
        self.instance = None;
        self.next_due = 0;
        self.faults.consecutive = self.faults.consecutive.saturating_add(1);
        self.faults.last = e.to_string();
        if self.faults.probation
            || self.faults.consecutive >= self.settings.faults.max_consecutive_faults
        {
            self.degrade();
        } else {
            self.faults.needs_recovery = true;
        }
    }

    /// Re-creates the instance after a fault and replays the pending traces into it, until that
    /// works or the worker is degraded. Every pass either succeeds or counts a fault, so this
    /// ends within `max_consecutive_faults` passes.
    fn recover(&mut self) {
        if self.stopping {
            self.faults.needs_recovery = false;
            return;
        }
        while self.faults.needs_recovery && !self.faults.degraded {
            self.faults.needs_recovery = false;
            self.faults.recovering = true;
            if self.create_instance() {
                self.replay();
            }
            self.faults.recovering = false;
        }
    }

    /// Creates and configures a fresh instance; counts a fault when that fails.
    fn create_instance(&mut self) -> bool {
        match self
            .module
            .instantiate_shard(&self.settings.guest_config, self.shard)
        {
            Ok((instance, _)) => {
                self.instance = Some(instance);
                true
            }
            Err(e) => {
                self.fault(e, &Affected::Traces(&[]));
                false
            }
        }
    }

    /// Replays every pending trace into the (fresh) instance, then ticks it to the current time.
    /// Stops at the first fault (its batch's traces are kept; recovery starts over).
    fn replay(&mut self) {
        let pending = self.pending();
        if !pending.is_empty() {
            tracing::info!(
                guest = self.module.name(),
                traces = pending.len(),
                "replaying pending traces into a new guest instance"
            );
        }
        let interest = self.current_interest();
        let mut view = ViewBuilder::new();
        let mut chunk: Vec<TraceId> = Vec::new();
        let mut chunk_first = 0u64;
        let mut chunk_now = 0u64;
        let spread = nanos(REPLAY_MAX_SPREAD);
        for (id, first_seen) in pending {
            if self.instance.is_none() {
                return;
            }
            let Some(entry) = self.buffer.get(&id) else {
                // Decided by an earlier replay answer.
                continue;
            };
            if !chunk.is_empty()
                && (view.span_count() + entry.len() > REPLAY_MAX_SPANS
                    || first_seen.saturating_sub(chunk_first) > spread)
            {
                self.replay_chunk(&view, &chunk, chunk_now);
                view.clear();
                chunk.clear();
                chunk_now = 0;
                // The entry may have been decided by that answer.
                if !self.buffer.contains(&id) {
                    continue;
                }
            }
            let Some(entry) = self.buffer.get(&id) else {
                continue;
            };
            if chunk.is_empty() {
                chunk_first = first_seen;
            }
            for (group, bytes) in entry.spans() {
                if let Some(info) = span_info(bytes) {
                    self.add_view(&mut view, &interest, group, bytes, &info);
                }
            }
            chunk.push(id);
            chunk_now = chunk_now.max(first_seen);
        }
        if !chunk.is_empty() && self.instance.is_some() {
            self.replay_chunk(&view, &chunk, chunk_now);
        }
        if self.instance.is_some() {
            let now = now_unix_nanos();
            self.call("tick", Affected::DueAt(now), |g| g.tick(now));
        }
    }

    fn replay_chunk(&mut self, view: &ViewBuilder, chunk: &[TraceId], now: u64) {
        if view.span_count() == 0 || self.instance.is_none() {
            return;
        }
        self.call("ingest (replay)", Affected::Traces(chunk), |g| {
            g.ingest(view.as_bytes(), now)
        });
    }

    /// Stops asking the guest: keeps every pending trace and schedules a re-try.
    fn degrade(&mut self) {
        let now = now_unix_nanos();
        let all = self.resolve(&Affected::All);
        self.keep_fail_open(&all);
        self.instance = None;
        self.next_due = 0;
        self.faults.needs_recovery = false;
        let policy = self.settings.faults;
        self.faults.backoff = if self.faults.degraded || self.faults.probation {
            (self.faults.backoff * 2).min(policy.retry_max_interval)
        } else {
            policy.retry_initial_interval
        };
        self.faults.degraded = true;
        self.faults.probation = false;
        self.faults.retry_at = now.saturating_add(nanos(self.faults.backoff));
        let reason = format!(
            "guest {} failed {} time(s) in a row; keeping every trace (fail open) and re-trying \
             in {:?}; last fault: {}",
            self.module.name(),
            self.faults.consecutive,
            self.faults.backoff,
            self.faults.last
        );
        tracing::error!(guest = self.module.name(), "guest degraded: {reason}");
        self.set_degraded(Some(reason));
    }

    /// While degraded: tries a fresh instance and a `tick`; leaves the degraded state (on
    /// probation) when both work, or waits twice as long.
    fn retry(&mut self) {
        tracing::info!(guest = self.module.name(), "re-trying the degraded guest");
        self.faults.recovering = true;
        let ok = match self
            .module
            .instantiate_shard(&self.settings.guest_config, self.shard)
        {
            Ok((instance, _)) => {
                self.instance = Some(instance);
                let now = now_unix_nanos();
                self.call("tick", Affected::DueAt(now), |g| g.tick(now))
            }
            Err(e) => {
                self.fault(e, &Affected::Traces(&[]));
                false
            }
        };
        self.faults.recovering = false;
        // On failure `fault` has made the worker degraded again, with a doubled wait.
        if ok {
            tracing::info!(
                guest = self.module.name(),
                "guest recovered; sending it traces again"
            );
            self.faults.degraded = false;
            self.faults.probation = true;
            self.faults.consecutive = 0;
            self.faults.needs_recovery = false;
            self.set_degraded(None);
        }
    }

    /// Keeps these traces (if still pending), tagged `tracekeeper.fail_open=true`.
    fn keep_fail_open(&mut self, ids: &[TraceId]) {
        if ids.is_empty() {
            return;
        }
        let tags = Arc::new(TraceTags::fail_open());
        for id in ids {
            let Some(entry) = self.buffer.remove(id) else {
                continue;
            };
            self.decided.inc(&self.metrics, "fail_open", "");
            for (group, span) in entry.spans() {
                self.add_to_export(group, span, &tags, false);
            }
            self.cache.insert(*id, Cached::Kept(Arc::clone(&tags)));
        }
    }

    fn add_to_export(&mut self, group: &Arc<Group>, span: &[u8], tags: &TraceTags, late: bool) {
        if self.builder.is_empty() {
            self.builder_since = now_unix_nanos();
        }
        self.builder.add(group, span, tags, late);
        self.builder_bytes += span.len() + 64;
        if self.builder_bytes >= MAX_EXPORT_REQUEST_BYTES
            || self.builder.span_count() >= EXPORT_BATCH_SPANS
        {
            self.flush_export();
        }
    }

    /// Hands the export request over once it has lingered [`EXPORT_LINGER`] (the size limits
    /// are checked as spans are added); until then more decisions may join it.
    fn flush_export_if_due(&mut self) {
        let due = self.export_due();
        if due == 0 || now_unix_nanos() >= due {
            self.flush_export();
        }
    }

    /// Hands the export request over now (when it holds anything).
    fn flush_export(&mut self) {
        if self.builder.is_empty() {
            self.observe_latencies();
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
        self.observe_latencies();
    }

    fn shutdown(&mut self) {
        self.stopping = true;
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
            self.call("flush", Affected::All, |g| g.flush(now));
            if !self.buffer.is_empty() {
                // The guest did not decide some traces: keep them rather than lose them.
                let e = GuestError::bad_answer(
                    "flush",
                    FaultCause::Contract(format!(
                        "flush left {} trace(s) undecided",
                        self.buffer.len()
                    )),
                );
                self.fault(e, &Affected::All);
            }
        }
        self.flush_export();
        self.states
            .set_buffer(&self.metrics, self.shard.index, 0, 0);
    }

    /// Records this worker's guest as degraded (with the reason) or not, for the gauge and
    /// health (which report every worker's).
    fn set_degraded(&self, reason: Option<String>) {
        self.states
            .set_degraded(&self.metrics, &self.health, self.shard.index, reason);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn decided_counters_count_in_the_family_whether_kept_at_hand_or_not() {
        let metrics = Metrics::new();
        let mut decided = DecidedCounters::default();
        let get = |decision: &'static str, policy: &str| {
            metrics
                .traces_decided
                .get_or_create(&DecisionLabels {
                    decision,
                    policy: policy.to_string(),
                })
                .get()
        };
        decided.inc(&metrics, "sampled", "errors");
        decided.inc(&metrics, "sampled", "errors");
        decided.inc(&metrics, "not_sampled", "errors");
        decided.inc(&metrics, "fail_open", "");
        assert_eq!(get("sampled", "errors"), 2);
        assert_eq!(get("not_sampled", "errors"), 1);
        assert_eq!(get("fail_open", ""), 1);
        assert_eq!(decided.known.len(), 3);
        // Past the handles kept, counting still goes to the family.
        for n in 0..MAX_DECIDED_COUNTERS {
            decided.inc(&metrics, "sampled", &format!("p{n}"));
        }
        assert_eq!(decided.known.len(), MAX_DECIDED_COUNTERS);
        let last = format!("p{}", MAX_DECIDED_COUNTERS - 1);
        decided.inc(&metrics, "sampled", &last);
        assert_eq!(get("sampled", &last), 2);
        decided.inc(&metrics, "sampled", "errors");
        assert_eq!(get("sampled", "errors"), 3);
    }

    #[test]
    fn shortest_wait_comes_from_tail_sampling() {
        assert_eq!(shortest_decision_wait("{}"), Duration::ZERO);
        assert_eq!(shortest_decision_wait("not json"), Duration::ZERO);
        assert_eq!(
            shortest_decision_wait(r#"{"tail_sampling":{}}"#),
            tracekeeper_guest::config::tail_sampling::DEFAULT_DECISION_WAIT
        );
        assert_eq!(
            shortest_decision_wait(r#"{"tail_sampling":{"decision_wait":"5s"}}"#),
            Duration::from_secs(5)
        );
        assert_eq!(
            shortest_decision_wait(
                r#"{"tail_sampling":{"decision_wait":"5s","decision_wait_after_root_received":"500ms"}}"#
            ),
            Duration::from_millis(500)
        );
        assert_eq!(
            shortest_decision_wait(r#"{"tail_sampling":{"decision_wait":"soon"}}"#),
            Duration::ZERO
        );
    }

    #[test]
    fn fault_policy_defaults_and_bounds() {
        let p = FaultPolicy::from_section(&GuestSection::default());
        assert_eq!(p.max_consecutive_faults, DEFAULT_MAX_CONSECUTIVE_FAULTS);
        assert_eq!(p.retry_initial_interval, DEFAULT_RETRY_INITIAL_INTERVAL);
        assert_eq!(p.retry_max_interval, DEFAULT_RETRY_MAX_INTERVAL);
        let p = FaultPolicy::from_section(&GuestSection {
            max_consecutive_faults: Some(0),
            retry_initial_interval: Some(Duration::from_secs(90)),
            ..GuestSection::default()
        });
        assert_eq!(p.max_consecutive_faults, 1);
        assert_eq!(p.retry_max_interval, Duration::from_secs(90));
    }
}
