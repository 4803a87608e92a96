//! Wires the pieces into a running sidecar and shuts them down in order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::config::{Config, DEFAULT_EXPORTER_UNHEALTHY_AFTER, DEFAULT_SHUTDOWN_TIMEOUT, resolve};
use crate::export::{self, Exporter};
use crate::guest::{GuestLimits, GuestModule, SHARD_EXPORT_NAME, Shard};
use crate::otlp::view::Interest;
use crate::receiver::{self, Ingest, WorkerQueue};
use crate::shard::{ShardStates, default_workers};
use crate::shutdown;
use crate::telemetry::{self, Health, Metrics};
use crate::worker::{
    DEFAULT_MEMORY_LIMIT_MIB, DEFAULT_NON_SAMPLED_CACHE, DEFAULT_NUM_TRACES, DEFAULT_SAMPLED_CACHE,
    FaultPolicy, INGEST_QUEUE_LEN, Reload, WORKER_STACK_MARGIN, Worker, WorkerMsg, WorkerSettings,
};

/// Loads the guest a config and an optional `--guest` name, with the config's limits.
pub fn load_guest(config: &Config, guest: Option<&Path>) -> anyhow::Result<GuestModule> {
    let limits = GuestLimits::from_section(&config.guest);
    let path = guest.or(config.guest.path.as_deref());
    GuestModule::load(path, limits)
}

/// Checks a config completely, including the guest's part (by configuring a guest instance,
/// as the first of the workers the config asks for).
pub fn validate(config: &Config, guest: Option<&Path>) -> anyhow::Result<()> {
    let module = load_guest(config, guest)?;
    let count = worker_count(config, &module)?;
    module.instantiate_shard(&config.guest_json(), Shard { index: 0, count })?;
    Ok(())
}

/// How many workers (guest instances) to run: `guest.workers`, or by default one per three
/// CPUs ([`crate::shard::default_workers_for`]) when the guest exports the `shard` interface
/// and 1 when it does not. More than one needs that interface.
pub fn worker_count(config: &Config, module: &GuestModule) -> anyhow::Result<u32> {
    match config.guest.workers {
        Some(n) if n > 1 && !module.shardable() => anyhow::bail!(
            "guest.workers: {n} workers need a guest that exports `{SHARD_EXPORT_NAME}`, and \
             guest {} does not; set guest.workers to 1 (or leave it out)",
            module.name()
        ),
        Some(n) => Ok(n.max(1)),
        None if module.shardable() => Ok(default_workers()),
        None => Ok(1),
    }
}

/// One worker's share of settings made for the whole process: the buffer limits and decision
/// caches divided among `count` workers (rounded up).
pub fn share_settings(settings: &WorkerSettings, count: u32) -> WorkerSettings {
    let n = count.max(1) as usize;
    WorkerSettings {
        num_traces: settings.num_traces.div_ceil(n).max(1),
        memory_limit_bytes: settings.memory_limit_bytes.div_ceil(n).max(1),
        sampled_cache: settings.sampled_cache.div_ceil(n),
        non_sampled_cache: settings.non_sampled_cache.div_ceil(n),
        ..settings.clone()
    }
}

/// The worker's settings from a configuration.
pub fn worker_settings(config: &Config) -> anyhow::Result<WorkerSettings> {
    let host_ts = config.host_tail_sampling()?;
    Ok(WorkerSettings {
        guest_config: config.guest_json(),
        num_traces: host_ts
            .num_traces
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_NUM_TRACES)
            .max(1),
        memory_limit_bytes: usize::try_from(
            host_ts
                .memory_limit_mib
                .unwrap_or(DEFAULT_MEMORY_LIMIT_MIB)
                .max(1)
                .saturating_mul(1 << 20),
        )
        .unwrap_or(usize::MAX),
        block_on_overflow: host_ts.block_on_overflow,
        sampled_cache: host_ts
            .decision_cache
            .sampled_cache_size
            .unwrap_or(DEFAULT_SAMPLED_CACHE),
        non_sampled_cache: host_ts
            .decision_cache
            .non_sampled_cache_size
            .unwrap_or(DEFAULT_NON_SAMPLED_CACHE),
        drop_pending_on_shutdown: host_ts.drop_pending_traces_on_shutdown,
        faults: FaultPolicy::from_section(&config.guest),
    })
}

/// Runs the sidecar until SIGINT or SIGTERM, then drains. SIGHUP only logs a warning (no file
/// to re-read); see [`run_with_reload`].
pub async fn run(config: Config, guest: Option<&Path>) -> anyhow::Result<()> {
    run_with_reload(config, None, guest).await
}

/// Runs the sidecar until SIGINT or SIGTERM, then drains; on SIGHUP re-reads `config_path` and
/// switches the workers to the new guest configuration (see `reload`).
pub async fn run_with_reload(
    config: Config,
    config_path: Option<&Path>,
    guest: Option<&Path>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    health.set_export_unhealthy_after(
        config
            .extensions
            .health_check
            .as_ref()
            .and_then(|h| h.exporter_unhealthy_after)
            .unwrap_or(DEFAULT_EXPORTER_UNHEALTHY_AFTER),
    );

    let (telemetry_stop, telemetry_shutdown) = shutdown::pair();
    let health_addr = resolve(
        &config.health_endpoint(),
        "extensions.health_check.endpoint",
    )?;
    let metrics_addr = resolve(
        &config.service.telemetry.metrics.address,
        "service.telemetry.metrics.address",
    )?;
    // malloc's free memory back to the system every second or few, until the very end.
    tokio::spawn(crate::trim::run(
        telemetry_shutdown.clone(),
        Arc::clone(&metrics),
    ));
    let telemetry_task = tokio::spawn(telemetry::serve(
        health_addr,
        metrics_addr,
        Arc::clone(&health),
        Arc::clone(&metrics),
        telemetry_shutdown,
    ));

    let module = load_guest(&config, guest)?;
    let exporter = Exporter::from_config(&config)?;
    tracing::info!(
        guest = module.name(),
        exporter = exporter.name(),
        "starting"
    );
    let (export_tx, export_task) =
        export::spawn(exporter, Arc::clone(&metrics), Arc::clone(&health));
    let settings = worker_settings(&config)?;
    let count = worker_count(&config, &module)?;
    let shared = share_settings(&settings, count);
    let states = Arc::new(ShardStates::new(count));
    let interest = Arc::new(std::sync::RwLock::new(Arc::new(Interest::default())));
    let (clock_stop, clock_shutdown) = shutdown::pair();
    let mut queues = Vec::new();
    let mut controls = Vec::new();
    let mut worker_threads = Vec::new();
    let mut clock_tasks = Vec::new();
    let mut worker_stack = 0;
    for index in 0..count {
        let worker = Worker::new(
            module.clone(),
            shared.clone(),
            Shard { index, count },
            Arc::clone(&states),
            Arc::clone(&interest),
            export_tx.clone(),
            Arc::clone(&metrics),
            Arc::clone(&health),
        )
        .context("configuring the guest")?;
        let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_QUEUE_LEN);
        let clock = worker.clock();
        queues.push(WorkerQueue {
            tx: ingest_tx.clone(),
            pressure: worker.pressure(),
        });
        worker_stack = worker.thread_stack_size();
        let worker_health = Arc::clone(&health);
        let thread = std::thread::Builder::new()
            .name(format!("tracekeeper-worker-{index}"))
            .stack_size(worker_stack)
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| worker.run(ingest_rx));
                if std::panic::catch_unwind(run).is_err() {
                    // A bug in the host, not in the guest (guest faults are handled in the
                    // worker). Say so loudly and exit, so an orchestrator restarts the sidecar.
                    worker_health.set_ready(false);
                    tracing::error!("the worker thread panicked; exiting");
                    std::process::exit(70);
                }
            })
            .context("starting a worker thread")?;
        worker_threads.push(thread);
        clock_tasks.push(tokio::spawn(crate::clock::run(
            clock,
            ingest_tx.clone(),
            clock_shutdown.clone(),
        )));
        controls.push(ingest_tx);
    }
    drop(export_tx);
    drop(clock_shutdown);
    tracing::info!(workers = count, "workers started");
    let ingest = Ingest::new(queues, interest, Arc::clone(&metrics), states);

    let (receivers_stop, receivers_shutdown) = shutdown::pair();
    let mut servers = Vec::new();
    let protocols = &config.receivers.otlp.protocols;
    if let Some(g) = &protocols.grpc {
        let addr = resolve(&g.endpoint, "receivers.otlp.protocols.grpc.endpoint")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("receivers.otlp.protocols.grpc.endpoint: binding {addr}"))?;
        servers.push(tokio::spawn(receiver::grpc::serve(
            listener,
            ingest.clone(),
            receiver::grpc::GrpcSettings::from_config(g, &config.extensions)?,
            receivers_shutdown.clone(),
        )));
    }
    if let Some(h) = &protocols.http {
        let addr = resolve(&h.endpoint, "receivers.otlp.protocols.http.endpoint")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("receivers.otlp.protocols.http.endpoint: binding {addr}"))?;
        servers.push(tokio::spawn(receiver::http::serve(
            listener,
            ingest.clone(),
            receiver::http::HttpSettings::from_config(h, &config.extensions)?,
            receivers_shutdown.clone(),
        )));
    }
    drop(ingest);
    drop(receivers_shutdown);
    health.set_ready(true);
    tracing::info!(%health_addr, %metrics_addr, "tracekeeper ready");

    while let Signal::Reload = wait_for_signal().await {
        match config_path {
            Some(path) => reload(path, guest, worker_stack, &controls).await,
            None => tracing::warn!("SIGHUP: no --config file to re-read (embedded default config)"),
        }
    }
    tracing::info!("shutting down: no new spans accepted, deciding what is pending");
    health.set_ready(false);
    receivers_stop.trigger();
    let timeout = config
        .service
        .shutdown_timeout
        .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    let drained = tokio::time::timeout(timeout, async {
        for s in servers {
            match s.await {
                Ok(Err(e)) => tracing::error!("receiver stopped with an error: {e:#}"),
                Err(e) => tracing::error!("receiver task failed: {e}"),
                Ok(Ok(())) => {}
            }
        }
        clock_stop.trigger();
        for task in clock_tasks {
            let _ = task.await;
        }
        // Queued batches come first; then each worker decides what is pending, flushes and ends.
        for control in &controls {
            let _ = control.send(WorkerMsg::Shutdown).await;
        }
        drop(controls);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in worker_threads {
                let _ = thread.join();
            }
        })
        .await;
        let _ = export_task.await;
    })
    .await;
    if drained.is_err() {
        tracing::error!(
            ?timeout,
            "shutdown_timeout reached before everything was exported"
        );
    }
    telemetry_stop.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(1), telemetry_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the configuration file and hands the worker the new guest and settings. Reloaded:
/// the processors (`tail_sampling`, `completeness`), the host keys of `tail_sampling` (except
/// `decision_cache`) and the `guest` section; receivers, exporters, extensions and service need a
/// restart. A file that does not read, parse or check, a guest that does not load, or (in the
/// worker) a configuration the guest refuses is logged as an error and the running configuration
/// stays.
async fn reload(
    path: &Path,
    guest: Option<&Path>,
    worker_stack: usize,
    controls: &[mpsc::Sender<WorkerMsg>],
) {
    tracing::info!(config = %path.display(), "SIGHUP: re-reading the configuration");
    // Reading and compiling the guest is blocking work: off the runtime's threads.
    let (file, guest_path) = (path.to_path_buf(), guest.map(Path::to_path_buf));
    let prepared = tokio::task::spawn_blocking(move || {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let config = Config::parse(&text)?;
        let settings = worker_settings(&config)?;
        let module = load_guest(&config, guest_path.as_deref())?;
        anyhow::Ok((config.guest.workers, module, settings))
    })
    .await
    .map_err(|e| anyhow::anyhow!("loading the new configuration failed: {e}"))
    .and_then(|r| r);
    let (workers, module, settings) = match prepared {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(
                config = %path.display(),
                "reload rejected: {e:#}; keeping the running configuration"
            );
            return;
        }
    };
    let needs = module
        .limits()
        .max_wasm_stack_bytes
        .saturating_add(WORKER_STACK_MARGIN);
    if needs > worker_stack {
        tracing::error!(
            "reload rejected: guest.max_wasm_stack needs a worker stack of {needs} bytes, the \
             running worker has {worker_stack}; restart to raise it"
        );
        return;
    }
    let count = u32::try_from(controls.len()).unwrap_or(u32::MAX);
    if count > 1 && !module.shardable() {
        tracing::error!(
            "reload rejected: {count} workers are running and guest {} does not export `{}`; \
             restart with guest.workers: 1 to use it",
            module.name(),
            SHARD_EXPORT_NAME
        );
        return;
    }
    if workers.is_some_and(|w| w != count) {
        tracing::warn!("guest.workers is not reloaded ({count} running); restart to change it");
    }
    tracing::info!("reload: receivers, exporters, extensions and service are not reloaded");
    let settings = share_settings(&settings, count);
    for control in controls {
        let reload = Reload {
            module: module.clone(),
            settings: settings.clone(),
        };
        if control
            .send(WorkerMsg::Reload(Box::new(reload)))
            .await
            .is_err()
        {
            tracing::error!("reload: a worker has stopped");
        }
    }
}

/// What a signal asks for.
enum Signal {
    /// SIGTERM or SIGINT: drain and stop.
    Stop,
    /// SIGHUP: re-read the configuration.
    Reload,
}

async fn wait_for_signal() -> Signal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(mut term), Ok(mut int), Ok(mut hup)) => {
                tokio::select! {
                    _ = term.recv() => Signal::Stop,
                    _ = int.recv() => Signal::Stop,
                    _ = hup.recv() => Signal::Reload,
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                Signal::Stop
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop
    }
}
