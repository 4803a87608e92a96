//! The wasmtime runtime for the sampler guest: compile once, instantiate in a sandbox, call.
//!
//! The guest gets WASI with no preopened directories, no sockets (TCP, UDP and name lookup are
//! refused), no environment and no arguments; stdin is closed, and what it writes to stdout or
//! stderr goes to the host log, line by line, with the guest's name and a rate limit
//! ([`GuestOutput`]). Its linear memory is capped, its wasm stack is limited, and every call has
//! a deadline enforced by epoch interruption ([`GuestLimits`]). Any failure comes back as a
//! [`GuestError`] carrying its [`FaultKind`], so the caller can fail open and count it.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::config::GuestSection;
use crate::otlp::view::Interest;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sampler-guest",
});

/// Bindings of the optional `shard` interface (world `sharded-sampler-guest`).
mod sharded {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sharded-sampler-guest",
    });
}

use sharded::exports::tracekeeper::sampler::shard::{
    Guest as ShardBindings, GuestIndices as ShardIndices,
};

/// The guest compiled into the binary at build time (see `build.rs`).
pub const DEFAULT_GUEST: &[u8] = include_bytes!(env!("TRACEKEEPER_DEFAULT_GUEST"));

/// The WIT package (name and version) of the contract this host implements.
pub const CONTRACT_PACKAGE: &str = "tracekeeper:sampler@1.0.0";
/// The exported interface name a compatible guest must have (the contract version is the WIT
/// package version).
pub const EXPORT_NAME: &str = "tracekeeper:sampler/sampler@1.0.0";
/// The exported interface name without its version, to recognise a guest built against another
/// version of the contract.
const EXPORT_UNVERSIONED: &str = "tracekeeper:sampler/sampler";
/// The optional interface of a guest that can run as one of several instances (shards).
pub const SHARD_EXPORT_NAME: &str = "tracekeeper:sampler/shard@1.0.0";

/// Which of several guest instances (shards) an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index.
    pub index: u32,
    /// Number of instances, at least 1.
    pub count: u32,
}

impl Shard {
    /// The only instance.
    pub const SOLE: Shard = Shard { index: 0, count: 1 };
}

/// Shortest interval at which the epoch advances: the resolution of call deadlines, and the
/// shortest `guest.call_timeout`.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Longest interval at which the epoch advances.
pub const MAX_EPOCH_TICK: Duration = Duration::from_millis(100);
/// Epoch ticks in one `guest.call_timeout` (when that keeps the tick within [`EPOCH_TICK`] and
/// [`MAX_EPOCH_TICK`]): a call is stopped within one tick before its timeout, never after.
pub const EPOCH_TICKS_PER_TIMEOUT: u32 = 20;

/// How often the epoch advances for a call timeout: a twentieth of it, within [`EPOCH_TICK`]
/// and [`MAX_EPOCH_TICK`]. The ticker thread wakes this often for as long as the engine lives,
/// busy or idle; at the default timeout (2 s) that is 10 times a second instead of 100.
pub fn epoch_tick(call_timeout: Duration) -> Duration {
    (call_timeout / EPOCH_TICKS_PER_TIMEOUT).clamp(EPOCH_TICK, MAX_EPOCH_TICK)
}

/// Set to `1` to have wasmtime write `/tmp/perf-<pid>.map`, so `perf report` names the guest's
/// functions instead of showing bare JIT addresses (BENCHMARKS.md, "Profile"). Set to `jitdump`
/// (in a build with the `profiling` feature) for a `jit-<pid>.dump` that `perf inject --jit`
/// reads instead; use that where a process compiles the guest more than once (the benches): a
/// perf map cannot tell apart two modules that used the same code addresses one after the other.
pub const PERF_MAP_ENV: &str = "TRACEKEEPER_GUEST_PERF_MAP";

/// Default `guest.memory_limit_mib`.
pub const DEFAULT_MEMORY_LIMIT_MIB: usize = 512;
/// Largest `guest.memory_limit_mib`: a 32-bit linear memory cannot exceed 4 GiB.
pub const MAX_MEMORY_LIMIT_MIB: usize = 4096;
/// Default `guest.call_timeout`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `guest.stack_limit_kib` (wasm stack of one call).
pub const DEFAULT_STACK_LIMIT_KIB: usize = 1024;
/// Smallest `guest.stack_limit_kib`.
pub const MIN_STACK_LIMIT_KIB: usize = 64;
/// Largest `guest.stack_limit_kib` (the worker thread's native stack is sized from it).
pub const MAX_STACK_LIMIT_KIB: usize = 64 * 1024;
/// Core instances, tables and memories one guest store may create (a Rust component has a few:
/// the guest's own module and the WASI adapter; components from other toolchains have more).
/// The memory cap applies to the total of all memories, so this only bounds bookkeeping.
pub const MAX_INSTANCES_PER_STORE: usize = 100;

/// Sustained rate of guest output lines written to the host log, per guest.
pub const GUEST_OUTPUT_LINES_PER_SECOND: f64 = 20.0;
/// Lines a guest may write at once before [`GUEST_OUTPUT_LINES_PER_SECOND`] applies.
pub const GUEST_OUTPUT_BURST_LINES: f64 = 100.0;
/// Longest guest output line logged, in bytes; the rest of a longer line is cut.
pub const GUEST_OUTPUT_MAX_LINE: usize = 1024;
/// Bytes the guest may hand over in one WASI `write` (the stream's write permit).
pub const GUEST_OUTPUT_WRITE_PERMIT: usize = 4096;

/// Sandbox limits for one guest instance.
#[derive(Debug, Clone, Copy)]
pub struct GuestLimits {
    /// Largest total of the guest's linear memories; `None` leaves memory uncapped.
    pub memory_limit_bytes: Option<usize>,
    /// Deadline of one call; `None` compiles the guest without deadline checks.
    pub call_timeout: Option<Duration>,
    /// Largest wasm stack of one call.
    pub max_wasm_stack_bytes: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            memory_limit_bytes: Some(DEFAULT_MEMORY_LIMIT_MIB << 20),
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            max_wasm_stack_bytes: DEFAULT_STACK_LIMIT_KIB << 10,
        }
    }
}

impl GuestLimits {
    /// The limits of a `guest:` configuration section (defaults for absent keys).
    pub fn from_section(section: &GuestSection) -> Self {
        let d = GuestLimits::default();
        GuestLimits {
            memory_limit_bytes: section
                .memory_limit_mib
                .map(|mib| mib << 20)
                .or(d.memory_limit_bytes),
            call_timeout: section.call_timeout.or(d.call_timeout),
            max_wasm_stack_bytes: section
                .stack_limit_kib
                .map(|kib| kib << 10)
                .unwrap_or(d.max_wasm_stack_bytes),
        }
    }

    /// No memory cap and no deadline (the stack limit stays: wasmtime always has one). For
    /// measuring what the limits cost; a host running untrusted guests never uses this.
    pub fn unlimited() -> Self {
        GuestLimits {
            memory_limit_bytes: None,
            call_timeout: None,
            ..GuestLimits::default()
        }
    }

    /// A call's deadline in epoch ticks ([`epoch_tick`]): the most whole ticks within the
    /// timeout, at least one.
    fn deadline_ticks(&self) -> Option<u64> {
        self.call_timeout.map(|t| {
            let ticks = t.as_nanos() / epoch_tick(t).as_nanos().max(1);
            u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
        })
    }
}

/// The kind of a guest fault, the `kind` label of `tracekeeper_guest_faults_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The guest trapped (`unreachable`, out-of-bounds access, stack overflow, a Rust panic...).
    Trap,
    /// A call ran past its deadline.
    Timeout,
    /// The guest failed in a call during which it was refused memory (its cap was reached), or
    /// its initial memory is above the cap.
    Memory,
    /// The guest answered something that breaks the contract: an `Err`, malformed bytes, a trace
    /// it cannot decide (unknown, or twice in one answer).
    BadAnswer,
}

impl FaultKind {
    /// Every kind, for metrics that should show each one from the start.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Trap,
        FaultKind::Timeout,
        FaultKind::Memory,
        FaultKind::BadAnswer,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Timeout => "timeout",
            FaultKind::Memory => "memory",
            FaultKind::BadAnswer => "bad_answer",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong in a guest fault.
#[derive(Debug, thiserror::Error)]
pub enum FaultCause {
    /// The guest trapped or ran out of time (wasmtime's error, with the trap and backtrace).
    #[error("{0:#}")]
    Trap(wasmtime::Error),
    /// The guest returned `Err(message)`.
    #[error("returned an error: {0}")]
    Returned(String),
    /// The answer is not a well-formed decision batch.
    #[error("malformed decision batch: {0}")]
    Malformed(tracekeeper_abi::LayoutError),
    /// The answer is well formed but breaks the contract.
    #[error("{0}")]
    Contract(String),
}

/// A guest fault: which call, what kind, and why.
#[derive(Debug, thiserror::Error)]
#[error("guest {call} failed ({kind}): {cause}")]
pub struct GuestError {
    /// The call (`instantiate`, `configure`, `ingest`, `tick`, `decide-now`, `flush`).
    pub call: &'static str,
    /// The fault kind.
    pub kind: FaultKind,
    /// Why.
    #[source]
    pub cause: FaultCause,
}

impl GuestError {
    /// The fault kind for metrics.
    pub fn kind(&self) -> FaultKind {
        self.kind
    }

    /// A bad answer to `call`.
    pub fn bad_answer(call: &'static str, cause: FaultCause) -> Self {
        GuestError {
            call,
            kind: FaultKind::BadAnswer,
            cause,
        }
    }

    /// Classifies a wasmtime error of a call; `memory_denied` tells whether the guest was
    /// refused memory during the call.
    fn from_wasmtime(call: &'static str, source: wasmtime::Error, memory_denied: bool) -> Self {
        let kind = match source.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => FaultKind::Timeout,
            _ if memory_denied => FaultKind::Memory,
            _ => FaultKind::Trap,
        };
        GuestError {
            call,
            kind,
            cause: FaultCause::Trap(source),
        }
    }

    fn returned(call: &'static str, message: String, memory_denied: bool) -> Self {
        GuestError {
            call,
            kind: if memory_denied {
                FaultKind::Memory
            } else {
                FaultKind::BadAnswer
            },
            cause: FaultCause::Returned(message),
        }
    }
}

/// The compiled guest, shared by every instance.
#[derive(Clone)]
pub struct GuestModule {
    engine: Engine,
    pre: SamplerGuestPre<State>,
    /// The `shard` interface, when the guest exports it.
    shard: Option<ShardIndices>,
    limits: GuestLimits,
    name: Arc<str>,
    output_gate: Arc<Mutex<OutputGate>>,
}

impl std::fmt::Debug for GuestModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestModule")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The per-store state: WASI (granting nothing) and the memory limiter.
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// wasmtime's [`StoreLimits`] (counts, and the cap for each memory), plus the cap on the total
/// of all linear memories and a record of whether memory was refused, so that a failure caused
/// by the memory cap is told apart from other traps without guessing from messages.
#[derive(Debug)]
struct Limiter {
    limits: StoreLimits,
    /// Cap on the sum of all linear memories.
    total_cap: Option<usize>,
    /// Sum of all linear memories (wasmtime reports a new memory as growing from 0).
    total: usize,
    memory_denied: bool,
}

impl Limiter {
    fn new(limits: StoreLimits, total_cap: Option<usize>) -> Self {
        Limiter {
            limits,
            total_cap,
            total: 0,
            memory_denied: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        let allowed = self.limits.memory_growing(current, desired, maximum)?
            && self.total_cap.is_none_or(|cap| total <= cap);
        if allowed {
            self.total = total;
        } else {
            self.memory_denied = true;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_denied = true;
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Builds the engine: epoch interruption for deadlines (when limited), the stack limit, and the
/// on-disk compilation cache when a cache directory is available (so restarts do not recompile
/// the same guest).
fn engine(limits: &GuestLimits) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    match std::env::var_os(PERF_MAP_ENV) {
        Some(v) if v == "1" => {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        #[cfg(feature = "profiling")]
        Some(v) if v == "jitdump" => {
            config.profiler(wasmtime::ProfilingStrategy::JitDump);
        }
        Some(v) => tracing::warn!(
            value = %v.to_string_lossy(),
            "{PERF_MAP_ENV} is `1` (perf map) or, in a build with the `profiling` feature, \
             `jitdump`; ignored"
        ),
        None => {}
    }
    config.epoch_interruption(limits.call_timeout.is_some());
    config.max_wasm_stack(limits.max_wasm_stack_bytes);
    if let Ok(cache) = wasmtime::Cache::new(wasmtime::CacheConfig::new()) {
        config.cache(Some(cache));
    }
    let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
    if let Some(timeout) = limits.call_timeout {
        start_epoch_ticker(&engine, epoch_tick(timeout));
    }
    Ok(engine)
}

/// One ticker thread per engine advances the epoch every `tick`; it stops when the engine is
/// dropped.
fn start_epoch_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    let _ = std::thread::Builder::new()
        .name("tracekeeper-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            }
        });
}

/// The message for a component that does not export the contract interface, naming a
/// different contract version when that is what it exports.
fn missing_export_message(name: &str, exports: &[String]) -> String {
    let other = exports.iter().find(|e| {
        e.strip_prefix(EXPORT_UNVERSIONED)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('@'))
    });
    match other {
        Some(found) => {
            let version = found
                .strip_prefix(EXPORT_UNVERSIONED)
                .and_then(|v| v.strip_prefix('@'))
                .unwrap_or("(unversioned)");
            format!(
                "guest {name} was built against version {version} of the tracekeeper guest \
                 contract (it exports `{found}`), but this tracekeeper implements version \
                 {CONTRACT_PACKAGE} and needs the export `{EXPORT_NAME}`: rebuild the guest \
                 against this tracekeeper's wit/tracekeeper.wit, or run a tracekeeper that \
                 implements {version}"
            )
        }
        None => format!(
            "guest {name} does not implement the tracekeeper guest contract: it must export \
             `{EXPORT_NAME}` (found exports: {exports:?}); build it for the world \
             `sampler-guest` of wit/tracekeeper.wit"
        ),
    }
}

impl GuestModule {
    /// Compiles a guest component (from `path`, or the embedded default) and links it against
    /// WASI, checking that it implements this contract version.
    pub fn load(path: Option<&Path>, limits: GuestLimits) -> anyhow::Result<Self> {
        let (bytes, name): (std::borrow::Cow<'_, [u8]>, Arc<str>) = match path {
            Some(p) => (
                std::fs::read(p)
                    .with_context(|| format!("reading guest {}", p.display()))?
                    .into(),
                p.display().to_string().into(),
            ),
            None => (DEFAULT_GUEST.into(), "default".into()),
        };
        Self::from_bytes(&bytes, name, limits)
    }

    /// Compiles a guest component from its bytes; `name` identifies it in logs.
    pub fn from_bytes(bytes: &[u8], name: Arc<str>, limits: GuestLimits) -> anyhow::Result<Self> {
        let engine = engine(&limits)?;
        let component = Component::from_binary(&engine, bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling guest {name}"))?;
        let exports: Vec<String> = component
            .component_type()
            .exports(&engine)
            .map(|(n, _)| n.to_string())
            .collect();
        if !exports.iter().any(|n| n == EXPORT_NAME) {
            anyhow::bail!(missing_export_message(&name, &exports));
        }
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("linking guest {name} (a guest may import nothing but WASI 0.2)")
            })?;
        let shard = if exports.iter().any(|n| n == SHARD_EXPORT_NAME) {
            Some(
                ShardIndices::new(&pre)
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("guest {name}: export {SHARD_EXPORT_NAME}"))?,
            )
        } else {
            None
        };
        let pre = SamplerGuestPre::new(pre).map_err(anyhow::Error::from)?;
        Ok(GuestModule {
            engine,
            pre,
            shard,
            limits,
            name,
            output_gate: Arc::new(Mutex::new(OutputGate::new())),
        })
    }

    /// The guest's name for logs (its path, or `default`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Can the guest run as one of several instances (does it export the `shard` interface)?
    pub fn shardable(&self) -> bool {
        self.shard.is_some()
    }

    /// The limits instances run under.
    pub fn limits(&self) -> &GuestLimits {
        &self.limits
    }

    /// The WASI context of one instance: nothing granted, output to the host log.
    fn wasi(&self) -> WasiCtx {
        let out = |stream| GuestOutput::new(Arc::clone(&self.name), stream, &self.output_gate);
        let mut b = WasiCtxBuilder::new();
        // No preopens, no env, no args: the builder grants none unless asked. Sockets are
        // refused explicitly rather than relying on defaults.
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .stdout(out("stdout"))
            .stderr(out("stderr"));
        b.build()
    }

    /// Creates a fresh sandboxed instance (from the precompiled, pre-linked component) and
    /// configures it with `config_json`, as the only instance.
    pub fn instantiate(&self, config_json: &str) -> Result<(GuestInstance, Interest), GuestError> {
        self.instantiate_shard(config_json, Shard::SOLE)
    }

    /// [`GuestModule::instantiate`] for one of several instances: tells the guest which one
    /// (`set-shard`) before configuring it. A guest without the `shard` interface can only be
    /// the sole instance.
    pub fn instantiate_shard(
        &self,
        config_json: &str,
        shard: Shard,
    ) -> Result<(GuestInstance, Interest), GuestError> {
        let mut limits = StoreLimitsBuilder::new()
            .instances(MAX_INSTANCES_PER_STORE)
            .tables(MAX_INSTANCES_PER_STORE)
            .memories(MAX_INSTANCES_PER_STORE);
        if let Some(bytes) = self.limits.memory_limit_bytes {
            limits = limits.memory_size(bytes);
        }
        let state = State {
            wasi: self.wasi(),
            table: ResourceTable::new(),
            limiter: Limiter::new(limits.build(), self.limits.memory_limit_bytes),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let deadline_ticks = self.deadline_ticks();
        if let Some(ticks) = deadline_ticks {
            store.epoch_deadline_trap();
            store.set_epoch_deadline(ticks);
        }
        let loaded = self
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .and_then(|instance| {
                let bindings = SamplerGuest::new(&mut store, &instance)?;
                let shard = match &self.shard {
                    Some(ix) => Some(ix.load(&mut store, &instance)?),
                    None => None,
                };
                Ok((bindings, shard))
            });
        let (bindings, shard_bindings) = match loaded {
            Ok(b) => b,
            Err(e) => {
                let denied = store.data().limiter.memory_denied;
                return Err(GuestError::from_wasmtime("instantiate", e, denied));
            }
        };
        let mut inst = GuestInstance {
            store,
            bindings,
            shard: shard_bindings,
            deadline_ticks,
        };
        if shard.count > 1 {
            inst.set_shard(shard)?;
        }
        let interest = inst.configure(config_json)?;
        Ok((inst, interest))
    }

    fn deadline_ticks(&self) -> Option<u64> {
        self.limits.deadline_ticks()
    }
}

/// One configured guest instance with its own store.
pub struct GuestInstance {
    store: Store<State>,
    bindings: SamplerGuest,
    shard: Option<ShardBindings>,
    deadline_ticks: Option<u64>,
}

impl std::fmt::Debug for GuestInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestInstance")
    }
}

type CallResult = wasmtime::Result<Result<Vec<u8>, String>>;

impl GuestInstance {
    /// Arms the deadline and clears the memory record before a call.
    fn arm(&mut self) {
        if let Some(ticks) = self.deadline_ticks {
            self.store.set_epoch_deadline(ticks);
        }
        self.store.data_mut().limiter.memory_denied = false;
    }

    fn finish(&self, call: &'static str, r: CallResult) -> Result<Vec<u8>, GuestError> {
        let denied = self.store.data().limiter.memory_denied;
        match r {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(message)) => Err(GuestError::returned(call, message, denied)),
            Err(source) => Err(GuestError::from_wasmtime(call, source, denied)),
        }
    }

    fn configure(&mut self, config_json: &str) -> Result<Interest, GuestError> {
        self.arm();
        let sampler = self.bindings.tracekeeper_sampler_sampler();
        let r = sampler.call_configure(&mut self.store, config_json);
        let denied = self.store.data().limiter.memory_denied;
        match r {
            Ok(Ok(i)) => Ok(Interest::new(
                &i.span_attributes,
                &i.resource_attributes,
                i.all_span_attributes,
                i.all_resource_attributes,
                i.links,
                i.events,
            )),
            Ok(Err(message)) => Err(GuestError::returned("configure", message, denied)),
            Err(source) => Err(GuestError::from_wasmtime("configure", source, denied)),
        }
    }

    fn set_shard(&mut self, shard: Shard) -> Result<(), GuestError> {
        self.arm();
        let Some(bindings) = &self.shard else {
            return Err(GuestError::returned(
                "set-shard",
                format!("the guest does not export {SHARD_EXPORT_NAME}"),
                false,
            ));
        };
        let r = bindings.call_set_shard(&mut self.store, shard.index, shard.count);
        let denied = self.store.data().limiter.memory_denied;
        r.map_err(|source| GuestError::from_wasmtime("set-shard", source, denied))
    }

    /// Sends the views of other shards' spans that link into this shard's traces; returns a
    /// decision batch. `None` when the guest has no `shard` interface (then it is the only
    /// instance and there are no other shards).
    pub fn links(&mut self, batch: &[u8], now: u64) -> Option<Result<Vec<u8>, GuestError>> {
        self.arm();
        let bindings = self.shard.as_ref()?;
        let r = bindings.call_links(&mut self.store, batch, now);
        Some(self.finish("links", r))
    }

    /// Bytes of linear memory the instance holds (the sum of its memories). A guest's memory
    /// only grows: this is the high-water mark of its heap, what `guest.memory_limit_mib` caps.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limiter.total
    }

    /// Sends a span-view batch; returns a decision batch.
    pub fn ingest(&mut self, batch: &[u8], now: u64) -> Result<Vec<u8>, GuestError> {
        self.arm();
        let s = self.bindings.tracekeeper_sampler_sampler();
        let r = s.call_ingest(&mut self.store, batch, now);
        self.finish("ingest", r)
    }

    /// Advances the clock; returns a decision batch.
    pub fn tick(&mut self, now: u64) -> Result<Vec<u8>, GuestError> {
        self.arm();
        let s = self.bindings.tracekeeper_sampler_sampler();
        let r = s.call_tick(&mut self.store, now);
        self.finish("tick", r)
    }

    /// Forces decisions for these traces (16-byte ids, concatenated).
    pub fn decide_now(&mut self, ids: &[u8], now: u64) -> Result<Vec<u8>, GuestError> {
        self.arm();
        let s = self.bindings.tracekeeper_sampler_sampler();
        let r = s.call_decide_now(&mut self.store, ids, now);
        self.finish("decide-now", r)
    }

    /// Decides everything pending.
    pub fn flush(&mut self, now: u64) -> Result<Vec<u8>, GuestError> {
        self.arm();
        let s = self.bindings.tracekeeper_sampler_sampler();
        let r = s.call_flush(&mut self.store, now);
        self.finish("flush", r)
    }
}

/// The rate limit on guest output lines, shared by every instance of a guest (a guest that
/// faults and is re-created keeps its budget). A token bucket of lines.
#[derive(Debug)]
struct OutputGate {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl OutputGate {
    fn new() -> Self {
        OutputGate {
            tokens: GUEST_OUTPUT_BURST_LINES,
            last: Instant::now(),
            suppressed: 0,
        }
    }

    /// Takes a token for one line. `Some(n)`: log it, after saying that `n` lines were
    /// suppressed since the last logged one; `None`: suppress it.
    fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * GUEST_OUTPUT_LINES_PER_SECOND;
        self.tokens = (self.tokens + refill).min(GUEST_OUTPUT_BURST_LINES);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The line being assembled on one output stream of one instance.
#[derive(Debug)]
struct LineBuffer {
    guest: Arc<str>,
    stream: &'static str,
    gate: Arc<Mutex<OutputGate>>,
    line: Vec<u8>,
    /// The current line passed [`GUEST_OUTPUT_MAX_LINE`]; its rest is dropped.
    cut: bool,
}

impl LineBuffer {
    fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (part, rest, end) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            let room = GUEST_OUTPUT_MAX_LINE.saturating_sub(self.line.len());
            if part.len() > room {
                self.cut = true;
            }
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            if end {
                self.emit();
            }
            bytes = rest;
        }
    }

    fn emit(&mut self) {
        let admitted = lock(&self.gate).admit();
        if let Some(suppressed) = admitted {
            if suppressed > 0 {
                tracing::warn!(
                    target: "tracekeeper::guest_output",
                    guest = %self.guest,
                    suppressed,
                    "guest output over the rate limit; lines were dropped"
                );
            }
            let text = String::from_utf8_lossy(&self.line);
            let text = text.trim_end_matches('\r');
            let cut = if self.cut { " [line cut]" } else { "" };
            tracing::info!(
                target: "tracekeeper::guest_output",
                guest = %self.guest,
                stream = self.stream,
                "{text}{cut}"
            );
        }
        self.line.clear();
        self.cut = false;
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

/// A guest's stdout or stderr: complete lines go to the host log (`tracing`, target
/// `tracekeeper::guest_output`, with the guest's name and the stream), rate limited per guest.
/// Writing never blocks and never fails, so a printing guest cannot stall the worker.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    buffer: Arc<Mutex<LineBuffer>>,
}

impl GuestOutput {
    fn new(guest: Arc<str>, stream: &'static str, gate: &Arc<Mutex<OutputGate>>) -> Self {
        GuestOutput {
            buffer: Arc::new(Mutex::new(LineBuffer {
                guest,
                stream,
                gate: Arc::clone(gate),
                line: Vec::new(),
                cut: false,
            })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        lock(&self.buffer).write(bytes);
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(GUEST_OUTPUT_WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn other_contract_versions_are_named() {
        let m =
            missing_export_message("g.wasm", &["tracekeeper:sampler/sampler@2.0.0".to_string()]);
        assert!(m.contains("version 2.0.0"), "{m}");
        assert!(m.contains(EXPORT_NAME), "{m}");
        let m = missing_export_message("g.wasm", &["wasi:cli/run@0.2.0".to_string()]);
        assert!(m.contains("does not implement"), "{m}");
        assert!(m.contains("wasi:cli/run@0.2.0"), "{m}");
        // A name that merely starts like ours is not another version of it.
        let m = missing_export_message(
            "g.wasm",
            &["tracekeeper:sampler/sampler-extra@1.0.0".to_string()],
        );
        assert!(m.contains("does not implement"), "{m}");
    }

    #[test]
    fn output_gate_admits_a_burst_then_counts_what_it_drops() {
        let mut gate = OutputGate::new();
        // `last` is reset before each line, so almost nothing refills during the loop.
        let burst = GUEST_OUTPUT_BURST_LINES as usize;
        let mut admitted = 0;
        for _ in 0..burst * 3 {
            gate.last = Instant::now();
            if gate.admit().is_some() {
                admitted += 1;
            }
        }
        // Refill during the loop is at most a few lines at 20/s.
        assert!(admitted >= burst, "admitted {admitted}");
        assert!(admitted < burst * 2, "admitted {admitted}");
        assert!(gate.suppressed > 0);
        gate.tokens = 1.0;
        assert_eq!(gate.admit(), Some((burst * 3 - admitted) as u64));
    }

    #[test]
    fn the_memory_cap_is_on_the_total_of_all_memories() {
        let mib = 1 << 20;
        let mut l = Limiter::new(
            StoreLimitsBuilder::new().memory_size(8 * mib).build(),
            Some(8 * mib),
        );
        // Two memories of 4 MiB fit; growing either beyond the total does not.
        assert!(l.memory_growing(0, 4 * mib, None).unwrap());
        assert!(l.memory_growing(0, 4 * mib, None).unwrap());
        assert!(!l.memory_denied);
        assert!(!l.memory_growing(4 * mib, 5 * mib, None).unwrap());
        assert!(l.memory_denied);
        // One memory alone is capped too.
        let mut l = Limiter::new(
            StoreLimitsBuilder::new().memory_size(8 * mib).build(),
            Some(8 * mib),
        );
        assert!(l.memory_growing(0, mib, None).unwrap());
        assert!(!l.memory_growing(mib, 9 * mib, None).unwrap());
        // Uncapped.
        let mut l = Limiter::new(StoreLimitsBuilder::new().build(), None);
        assert!(l.memory_growing(0, 1 << 31, None).unwrap());
        assert!(!l.memory_denied);
    }

    #[test]
    fn lines_are_split_and_cut() {
        let gate = Arc::new(Mutex::new(OutputGate::new()));
        let out = GuestOutput::new("t".into(), "stdout", &gate);
        out.write_bytes(b"one\ntw");
        out.write_bytes(b"o\n");
        let long = vec![b'x'; GUEST_OUTPUT_MAX_LINE * 2];
        out.write_bytes(&long);
        {
            let b = lock(&out.buffer);
            assert_eq!(b.line.len(), GUEST_OUTPUT_MAX_LINE);
            assert!(b.cut);
        }
        out.write_bytes(b"\n");
        let b = lock(&out.buffer);
        assert!(b.line.is_empty());
        assert!(!b.cut);
        // Three lines went through the gate (each took a token; refill in between is tiny).
        let tokens = lock(&gate).tokens;
        assert!(tokens < GUEST_OUTPUT_BURST_LINES - 2.5, "{tokens}");
    }

    #[test]
    fn the_epoch_tick_is_a_twentieth_of_the_timeout_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(epoch_tick(DEFAULT_CALL_TIMEOUT), ms(100));
        assert_eq!(epoch_tick(ms(400)), ms(20));
        assert_eq!(epoch_tick(ms(10)), EPOCH_TICK);
        assert_eq!(epoch_tick(Duration::from_secs(60)), MAX_EPOCH_TICK);
        // A call never runs past its timeout: deadline ticks × tick ≤ timeout (at least one).
        for t in [10, 15, 199, 200, 2000, 2050, 60_000] {
            let l = GuestLimits {
                call_timeout: Some(ms(t)),
                ..GuestLimits::unlimited()
            };
            let ticks = l.deadline_ticks().expect("limited");
            assert!(ticks >= 1);
            assert!(
                epoch_tick(ms(t)) * ticks as u32 <= ms(t),
                "{t} ms: {ticks} ticks"
            );
            assert!(
                epoch_tick(ms(t)) * (ticks as u32 + 1) > ms(t),
                "{t} ms: {ticks} ticks"
            );
        }
    }

    #[test]
    fn limits_from_section_apply_defaults() {
        let l = GuestLimits::from_section(&GuestSection::default());
        assert_eq!(l.memory_limit_bytes, Some(DEFAULT_MEMORY_LIMIT_MIB << 20));
        assert_eq!(l.call_timeout, Some(DEFAULT_CALL_TIMEOUT));
        assert_eq!(l.max_wasm_stack_bytes, DEFAULT_STACK_LIMIT_KIB << 10);
        let s = GuestSection {
            memory_limit_mib: Some(16),
            call_timeout: Some(Duration::from_millis(200)),
            stack_limit_kib: Some(256),
            ..GuestSection::default()
        };
        let l = GuestLimits::from_section(&s);
        assert_eq!(l.memory_limit_bytes, Some(16 << 20));
        assert_eq!(l.call_timeout, Some(Duration::from_millis(200)));
        assert_eq!(l.max_wasm_stack_bytes, 256 << 10);
    }
}
