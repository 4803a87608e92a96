//! The wasmtime runtime for the sampler guest: compile once, instantiate in a sandbox, call.
//!
//! The guest gets WASI with no preopened directories, no sockets, no environment and no
//! arguments; its memory is capped ([`GuestLimits::memory_limit_bytes`]) and every call has a
//! deadline enforced by epoch interruption. Errors of any kind (trap, deadline, guest error
//! string, broken answer) come back as [`GuestError`] so the caller can fail open.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::otlp::view::Interest;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sampler-guest",
});

/// The guest compiled into the binary at build time (see `build.rs`).
pub const DEFAULT_GUEST: &[u8] = include_bytes!(env!("TRACEKEEPER_DEFAULT_GUEST"));

/// The exported interface name a compatible guest must have (the contract version is the WIT
/// package version).
pub const EXPORT_NAME: &str = "tracekeeper:sampler/sampler@1.0.0";

/// How often the epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Sandbox limits for one guest instance.
#[derive(Debug, Clone, Copy)]
pub struct GuestLimits {
    /// Largest linear memory the guest may grow to.
    pub memory_limit_bytes: usize,
    /// Deadline of one call.
    pub call_timeout: Duration,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            memory_limit_bytes: 512 << 20,
            call_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a guest call failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The guest trapped (including running out of memory or past its deadline).
    #[error("guest trapped in {call}: {source:#}")]
    Trap {
        /// The call.
        call: &'static str,
        /// The trap.
        source: wasmtime::Error,
    },
    /// The guest returned an error string.
    #[error("guest {call} returned an error: {message}")]
    Returned {
        /// The call.
        call: &'static str,
        /// Its message.
        message: String,
    },
}

impl GuestError {
    /// The fault kind for metrics (`trap`, `timeout`, `memory`, `bad_answer`).
    pub fn kind(&self) -> &'static str {
        match self {
            GuestError::Trap { source, .. } => match source.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::Interrupt) => "timeout",
                Some(wasmtime::Trap::HeapMisaligned | wasmtime::Trap::MemoryOutOfBounds) => "trap",
                _ if format!("{source:#}").contains("memory") => "memory",
                _ => "trap",
            },
            GuestError::Returned { .. } => "bad_answer",
        }
    }
}

/// The compiled guest, shared by every instance.
#[derive(Clone)]
pub struct GuestModule {
    engine: Engine,
    pre: SamplerGuestPre<State>,
    limits: GuestLimits,
    name: Arc<str>,
}

impl std::fmt::Debug for GuestModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestModule")
            .field("name", &self.name)
            .finish()
    }
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Builds the engine: epoch interruption for deadlines, the on-disk compilation cache when a
/// cache directory is available (so restarts do not recompile the same guest).
fn engine() -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.max_wasm_stack(1 << 20);
    if let Ok(cache) = wasmtime::Cache::new(wasmtime::CacheConfig::new()) {
        config.cache(Some(cache));
    }
    let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
    start_epoch_ticker(&engine);
    Ok(engine)
}

/// One ticker thread per engine advances the epoch; it stops when the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let stop = Arc::new(AtomicBool::new(false));
    let _ = std::thread::Builder::new()
        .name("tracekeeper-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            }
        });
}

impl GuestModule {
    /// Compiles a guest component (from `path`, or the embedded default).
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
        let engine = engine()?;
        let component = Component::from_binary(&engine, &bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling guest {name}"))?;
        let has_export = component
            .component_type()
            .exports(&engine)
            .any(|(n, _)| n == EXPORT_NAME);
        if !has_export {
            let found: Vec<String> = component
                .component_type()
                .exports(&engine)
                .map(|(n, _)| n.to_string())
                .collect();
            bail!(
                "guest {name} does not implement the tracekeeper contract: it must export \
                 `{EXPORT_NAME}` (found exports: {found:?}); rebuild it against wit/tracekeeper.wit"
            );
        }
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("linking guest {name}"))?;
        let pre = SamplerGuestPre::new(pre).map_err(anyhow::Error::from)?;
        Ok(GuestModule {
            engine,
            pre,
            limits,
            name,
        })
    }

    /// The guest's name for logs (its path, or `default`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates a fresh sandboxed instance and configures it with `config_json`.
    pub fn instantiate(&self, config_json: &str) -> anyhow::Result<(GuestInstance, Interest)> {
        let state = State {
            // No preopens, no env, no args, no network: WasiCtxBuilder grants nothing by default.
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_limit_bytes)
                .instances(4)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("instantiating guest {}", self.name))?;
        let mut inst = GuestInstance {
            store,
            bindings,
            deadline_ticks: self.deadline_ticks(),
        };
        let interest = inst
            .configure(config_json)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((inst, interest))
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// One configured guest instance with its own store.
pub struct GuestInstance {
    store: Store<State>,
    bindings: SamplerGuest,
    deadline_ticks: u64,
}

impl std::fmt::Debug for GuestInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestInstance")
    }
}

type CallResult = wasmtime::Result<Result<Vec<u8>, String>>;

impl GuestInstance {
    fn finish(call: &'static str, r: CallResult) -> Result<Vec<u8>, GuestError> {
        match r {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(message)) => Err(GuestError::Returned { call, message }),
            Err(source) => Err(GuestError::Trap { call, source }),
        }
    }

    fn configure(&mut self, config_json: &str) -> Result<Interest, GuestError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let sampler = self.bindings.tracekeeper_sampler_sampler();
        match sampler.call_configure(&mut self.store, config_json) {
            Ok(Ok(i)) => Ok(Interest::new(
                &i.span_attributes,
                &i.resource_attributes,
                i.all_span_attributes,
                i.all_resource_attributes,
                i.links,
                i.events,
            )),
            Ok(Err(message)) => Err(GuestError::Returned {
                call: "configure",
                message,
            }),
            Err(source) => Err(GuestError::Trap {
                call: "configure",
                source,
            }),
        }
    }

    /// Sends a span-view batch; returns a decision batch.
    pub fn ingest(&mut self, batch: &[u8], now: u64) -> Result<Vec<u8>, GuestError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let s = self.bindings.tracekeeper_sampler_sampler();
        Self::finish("ingest", s.call_ingest(&mut self.store, batch, now))
    }

    /// Advances the clock; returns a decision batch.
    pub fn tick(&mut self, now: u64) -> Result<Vec<u8>, GuestError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let s = self.bindings.tracekeeper_sampler_sampler();
        Self::finish("tick", s.call_tick(&mut self.store, now))
    }

    /// Forces decisions for these traces (16-byte ids, concatenated).
    pub fn decide_now(&mut self, ids: &[u8], now: u64) -> Result<Vec<u8>, GuestError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let s = self.bindings.tracekeeper_sampler_sampler();
        Self::finish("decide-now", s.call_decide_now(&mut self.store, ids, now))
    }

    /// Decides everything pending.
    pub fn flush(&mut self, now: u64) -> Result<Vec<u8>, GuestError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let s = self.bindings.tracekeeper_sampler_sampler();
        Self::finish("flush", s.call_flush(&mut self.store, now))
    }
}
