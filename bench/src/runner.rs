//! The benchmark runner: one run measures, on loopback and with the same load,
//!
//! 1. the **floor** (prost decode + encode of the workload's requests, one thread);
//! 2. tracekeeper with a **keep-all** configuration (`always_sample`): throughput, spans lost
//!    (must be 0), decision lateness, CPU per span;
//! 3. tracekeeper with the **default policies** (errors, incomplete, 10%): CPU per span (the
//!    headline), peak RSS and RSS per buffered span against its encoded size, lateness of the
//!    kept traces, and whether every error trace was kept;
//! 4. **Rotel** as a plain OTLP→OTLP pass-through: CPU per span, spans lost;
//!
//! and prints the table with the ratios: tracekeeper ÷ floor and tracekeeper ÷ Rotel.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::floor::{self, Floor};
use crate::load::{self, LoadResult, LoadSpec, Protocol};
use crate::procs::{self, Proc, free_port, http_get, prometheus_value};
use crate::procstat::{self, Memory};
use crate::sink::Sink;
use crate::workload::{Workload, WorkloadSpec};

/// Extra time after the last decision is due for the last spans to reach the sink.
pub const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// How often memory and the buffer size are sampled during a run.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// Pause between phases, so that one phase's tail does not run into the next one's CPU.
pub const SETTLE: Duration = Duration::from_millis(500);
/// `num_traces` is set to at least this many times the traces the load buffers at once, so
/// that no trace is decided early for lack of room.
pub const NUM_TRACES_HEADROOM: f64 = 2.0;
/// The collector's default `num_traces` in the embedded configuration.
pub const DEFAULT_NUM_TRACES: u64 = 100_000;

/// Everything a run is configured with.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The workload.
    pub workload: WorkloadSpec,
    /// Target spans per second (0 = as fast as accepted).
    pub rate: f64,
    /// Load duration of each phase.
    pub duration: Duration,
    /// Generator connections.
    pub connections: usize,
    /// Transport from the generator to the process under test.
    pub protocol: Protocol,
    /// `decision_wait` of the default-policies phase.
    pub decision_wait: Duration,
    /// `decision_wait` of the keep-all phase.
    pub keep_all_decision_wait: Duration,
    /// Exporter compression of both tracekeeper and Rotel.
    pub gzip: bool,
    /// Wall time of each floor measurement.
    pub floor_time: Duration,
    /// The tracekeeper binary.
    pub tracekeeper: PathBuf,
    /// Another tracekeeper binary (an earlier build) whose default-policies phase runs in the
    /// same run, for before/after ratios of an optimisation.
    pub baseline: Option<PathBuf>,
    /// The Rotel binary (None: find or install it).
    pub rotel: Option<PathBuf>,
    /// Skip the Rotel phase.
    pub skip_rotel: bool,
    /// `guest.workers` of this build's phases (None: the host's default, one per three CPUs); the
    /// baseline binary always runs on its own default.
    pub workers: Option<u32>,
    /// Where configurations and logs go.
    pub work_dir: PathBuf,
    /// Rounds of the compared phases (this build's default policies, the baseline's, Rotel's),
    /// run in turn; the ratios are reported per round and as their median. At least 1.
    pub rounds: u32,
}

/// What a phase runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PhaseKind {
    /// This build with a keep-all policy (the loss check).
    KeepAll,
    /// This build with the default policies (the headline).
    #[default]
    Default,
    /// The baseline binary with the default policies.
    Baseline,
    /// Rotel's pass-through.
    Rotel,
}

/// What one phase measured.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Row label.
    pub name: String,
    /// What the phase ran.
    pub kind: PhaseKind,
    /// The round (1-based) of a compared phase; 1 for the keep-all phase.
    pub round: u32,
    /// Spans the process accepted.
    pub spans_accepted: u64,
    /// Accepted spans per second of load.
    pub spans_per_second: f64,
    /// Requests that failed.
    pub failed_requests: u64,
    /// First failure.
    pub first_error: Option<String>,
    /// Accepted spans that never reached the sink (None when not checked).
    pub lost: Option<u64>,
    /// Spans received more than once.
    pub duplicates: u64,
    /// CPU of the process, µs per accepted span.
    pub cpu_us_per_span: f64,
    /// Lateness (or latency for the pass-through) percentiles in ms: p50, p99, max.
    pub lateness_ms: Option<(f64, f64, f64)>,
    /// Peak RSS.
    pub peak_rss: u64,
    /// Buffer memory at the sample with the most traces in memory.
    pub rss_per_buffered_span: Option<BufferMemory>,
    /// Error traces kept / error traces sent.
    pub errors_kept: Option<(u64, u64)>,
    /// Spans that reached the sink.
    pub spans_exported: u64,
}

/// Memory at the sample with the most traces in memory, per buffered span.
#[derive(Debug, Clone, Copy)]
pub struct BufferMemory {
    /// (RSS − idle RSS) ÷ buffered spans.
    pub rss_per_span: f64,
    /// Buffered spans (traces in memory × spans per trace).
    pub spans: u64,
    /// `tracekeeper_buffered_span_bytes` ÷ buffered spans: the trace buffer's own count.
    pub buffer_per_span: Option<f64>,
    /// `tracekeeper_guest_memory_bytes` (absent in builds without the gauge).
    pub guest_memory: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    /// Encoded bytes per span of the workload.
    pub span_bytes: f64,
    /// Request body bytes.
    pub request_bytes: f64,
    /// The floor.
    pub floor: Floor,
    /// keep-all, default, Rotel.
    pub phases: Vec<Phase>,
}

/// Runs every phase.
pub async fn run(cfg: &RunConfig) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&cfg.work_dir)
        .with_context(|| format!("creating {}", cfg.work_dir.display()))?;
    let workload = Arc::new(Workload::new(cfg.workload.clone())?);
    eprintln!(
        "workload: {} spans/trace, {} spans/request, {} attributes/span, {:.0} encoded bytes/span, \
         {:.0} bytes/request",
        cfg.workload.spans_per_trace,
        cfg.workload.spans_per_request,
        cfg.workload.attributes_per_span,
        workload.encoded_bytes_per_span(),
        workload.request_bytes()
    );
    let requests: Vec<Vec<u8>> = (0..workload.requests_per_cycle())
        .map(|k| workload.request_bytes_of(k))
        .collect();
    let spr = workload.spans_per_request();
    let floor_time = cfg.floor_time;
    let floor =
        tokio::task::spawn_blocking(move || floor::measure(&requests, spr, floor_time)).await??;
    eprintln!(
        "floor: prost decode {:.2} µs/span, decode + encode {:.2} µs/span",
        floor.decode_ns / 1000.0,
        floor.decode_encode_ns / 1000.0
    );
    let epoch = Instant::now();
    let sink = Sink::start("127.0.0.1:0".parse()?, epoch).await?;
    let mut phases = Vec::new();
    let ctx = PhaseCtx {
        cfg,
        workload: &workload,
        sink: &sink,
        epoch,
    };
    phases.push(tracekeeper_phase(&ctx, PhaseKind::KeepAll, 1).await?);
    let rounds = cfg.rounds.max(1);
    for round in 1..=rounds {
        tokio::time::sleep(SETTLE).await;
        phases.push(tracekeeper_phase(&ctx, PhaseKind::Default, round).await?);
        if cfg.baseline.is_some() {
            tokio::time::sleep(SETTLE).await;
            phases.push(tracekeeper_phase(&ctx, PhaseKind::Baseline, round).await?);
        }
        if !cfg.skip_rotel {
            tokio::time::sleep(SETTLE).await;
            phases.push(rotel_phase(&ctx, round).await?);
        }
    }
    sink.stop().await?;
    Ok(Report {
        span_bytes: workload.encoded_bytes_per_span(),
        request_bytes: workload.request_bytes(),
        floor,
        phases,
    })
}

/// A duration as the configuration file writes it (Go syntax).
pub(crate) fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The tracekeeper configuration of a phase.
fn tracekeeper_config(
    cfg: &RunConfig,
    keep_all: bool,
    ports: &Ports,
    sink: SocketAddr,
    buffered_traces: f64,
    workers: Option<u32>,
) -> String {
    let wait = if keep_all {
        cfg.keep_all_decision_wait
    } else {
        cfg.decision_wait
    };
    let num_traces = DEFAULT_NUM_TRACES.max((buffered_traces * NUM_TRACES_HEADROOM).ceil() as u64);
    let policies = if keep_all {
        "      - {name: all, type: always_sample}\n".to_string()
    } else {
        "      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n\
         \x20     - {name: incomplete, type: completeness, completeness: {incomplete: true}}\n\
         \x20     - {name: baseline, type: probabilistic, probabilistic: {sampling_percentage: 10}}\n"
            .to_string()
    };
    let phase = if keep_all {
        "keep-all"
    } else {
        "default policies"
    };
    let text = config_text(phase, &policies, wait, num_traces, ports, sink, cfg.gzip);
    match workers {
        Some(n) => format!("{text}guest:\n  workers: {n}\n"),
        None => text,
    }
}

/// A tracekeeper configuration on `ports`, exporting to `sink`; `policies` are the lines of
/// the `policies:` list.
pub(crate) fn config_text(
    phase: &str,
    policies: &str,
    wait: Duration,
    num_traces: u64,
    ports: &Ports,
    sink: SocketAddr,
    gzip: bool,
) -> String {
    format!(
        "# Written by tracekeeper-bench ({phase}).\n\
         receivers:\n  otlp:\n    protocols:\n      grpc: {{endpoint: \"{grpc}\"}}\n      \
         http: {{endpoint: \"{http}\"}}\n\
         processors:\n  tail_sampling:\n    decision_wait: {wait}\n    num_traces: {num_traces}\n    \
         decision_cache: {{sampled_cache_size: 100000, non_sampled_cache_size: 1000000}}\n    \
         policies:\n{policies}\
         exporters:\n  otlp: {{endpoint: \"{sink}\", tls: {{insecure: true}}, compression: {compression}}}\n\
         extensions:\n  health_check: {{endpoint: \"{health}\"}}\n\
         service:\n  telemetry:\n    metrics: {{address: \"{metrics}\"}}\n    logs: {{level: warn}}\n",
        grpc = ports.grpc,
        http = ports.http,
        wait = go_duration(wait),
        compression = if gzip { "gzip" } else { "none" },
        health = ports.health,
        metrics = ports.metrics,
    )
}

/// The loopback ports of one tracekeeper process.
#[derive(Debug)]
pub(crate) struct Ports {
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) health: SocketAddr,
    pub(crate) metrics: SocketAddr,
}

impl Ports {
    pub(crate) fn new() -> anyhow::Result<Ports> {
        Ok(Ports {
            grpc: free_port()?,
            http: free_port()?,
            health: free_port()?,
            metrics: free_port()?,
        })
    }
    pub(crate) fn receiver(&self, protocol: Protocol) -> SocketAddr {
        match protocol {
            Protocol::Grpc => self.grpc,
            Protocol::Http => self.http,
        }
    }
}

/// One sample of the process while it runs.
#[derive(Debug, Clone, Copy)]
struct Point {
    /// Time since the process was ready.
    at: Duration,
    rss: u64,
    /// `tracekeeper_traces_in_memory`.
    traces: u64,
    /// `tracekeeper_buffered_span_bytes`.
    buffered_bytes: Option<u64>,
    /// `tracekeeper_guest_memory_bytes`.
    guest_memory: Option<u64>,
}

/// Samples of the process while it runs.
#[derive(Debug)]
struct Samples {
    /// When the process was ready (the idle sample).
    start: Instant,
    points: Vec<Point>,
}

impl Samples {
    /// The samples as CSV (the first row is the idle sample, taken when the process was ready),
    /// written to the work directory so a figure computed from them can be checked.
    fn to_csv(&self, idle: Memory) -> String {
        let mut s =
            String::from("ms,rss_bytes,traces_in_memory,buffered_span_bytes,guest_memory_bytes\n");
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let _ = writeln!(s, "0,{},0,,", idle.rss);
        for p in &self.points {
            let _ = writeln!(
                s,
                "{},{},{},{},{}",
                p.at.as_millis(),
                p.rss,
                p.traces,
                opt(p.buffered_bytes),
                opt(p.guest_memory)
            );
        }
        s
    }
}

async fn sample_tracekeeper(pid: u32, metrics_url: &str, samples: &mut Samples) {
    let Ok((_, text)) = http_get(metrics_url).await else {
        return;
    };
    let value = |name: &str| prometheus_value(&text, name).map(|v| v as u64);
    if let Ok(m) = procstat::process_memory(pid) {
        samples.points.push(Point {
            at: samples.start.elapsed(),
            rss: m.rss,
            traces: value("tracekeeper_traces_in_memory").unwrap_or(0),
            buffered_bytes: value("tracekeeper_buffered_span_bytes"),
            guest_memory: value("tracekeeper_guest_memory_bytes"),
        });
    }
}

/// What every phase of a run shares.
struct PhaseCtx<'a> {
    cfg: &'a RunConfig,
    workload: &'a Arc<Workload>,
    sink: &'a Sink,
    epoch: Instant,
}

async fn tracekeeper_phase(
    ctx: &PhaseCtx<'_>,
    kind: PhaseKind,
    round: u32,
) -> anyhow::Result<Phase> {
    let PhaseCtx {
        cfg,
        workload,
        sink,
        epoch,
    } = *ctx;
    anyhow::ensure!(
        kind != PhaseKind::Rotel,
        "the Rotel phase is not a tracekeeper phase"
    );
    let keep_all = kind == PhaseKind::KeepAll;
    let baseline = kind == PhaseKind::Baseline;
    let binary: &Path = if baseline {
        cfg.baseline
            .as_deref()
            .context("a baseline phase needs a baseline binary (--baseline)")?
    } else {
        &cfg.tracekeeper
    };
    let label = if baseline { " (baseline binary)" } else { "" };
    let name = if keep_all {
        format!("tracekeeper{label}, keep-all (always_sample)")
    } else {
        format!(
            "tracekeeper{label}, default policies{}",
            of_round(cfg, round)
        )
    };
    eprintln!("phase: {name}");
    let ports = Ports::new()?;
    let wait = if keep_all {
        cfg.keep_all_decision_wait
    } else {
        cfg.decision_wait
    };
    let buffered_traces = if cfg.rate > 0.0 {
        cfg.rate * wait.as_secs_f64() / cfg.workload.spans_per_trace as f64
    } else {
        0.0
    };
    // Files of later rounds get the round's number: `tracekeeper-default-2.yaml`.
    let suffix = if cfg.rounds > 1 && round > 1 {
        format!("-{round}")
    } else {
        String::new()
    };
    let tag = match kind {
        PhaseKind::KeepAll => "keep-all".to_string(),
        PhaseKind::Baseline => format!("baseline{suffix}"),
        PhaseKind::Default | PhaseKind::Rotel => format!("default{suffix}"),
    };
    let config_path = cfg.work_dir.join(format!("tracekeeper-{tag}.yaml"));
    std::fs::write(
        &config_path,
        tracekeeper_config(
            cfg,
            keep_all,
            &ports,
            sink.addr(),
            buffered_traces,
            if baseline { None } else { cfg.workers },
        ),
    )?;
    let mut cmd = Command::new(binary);
    cmd.arg("run").arg("--config").arg(&config_path);
    let log = cfg.work_dir.join(format!("tracekeeper-{tag}.log"));
    let mut proc = Proc::spawn("tracekeeper", cmd, &log)?;
    let health_url = format!("http://{}/", ports.health);
    let metrics_url = format!("http://{}/metrics", ports.metrics);
    procs::wait_ready(&mut proc, || async {
        matches!(http_get(&health_url).await, Ok((s, _)) if s.is_success())
    })
    .await
    .with_context(|| format!("starting tracekeeper (log: {})", log.display()))?;
    sink.reset();
    let pid = proc.pid();
    let ticks = procstat::clock_ticks_per_second();
    let idle = procstat::process_memory(pid)?;
    let cpu0 = procstat::process_cpu(pid, ticks)?;
    let spec = LoadSpec {
        addr: ports.receiver(cfg.protocol),
        protocol: cfg.protocol,
        connections: cfg.connections,
        rate: cfg.rate,
        duration: cfg.duration,
    };
    let mut samples = Samples {
        start: Instant::now(),
        points: Vec::new(),
    };
    let load = {
        let load = load::run(Arc::clone(workload), &spec, epoch);
        tokio::pin!(load);
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                r = &mut load => break r?,
                _ = tick.tick() => sample_tracekeeper(pid, &metrics_url, &mut samples).await,
            }
        }
    };
    // Drain: every trace decided and every kept span at the sink.
    let deadline = Instant::now() + wait + DRAIN_GRACE;
    let expected = load.accepted() * workload.spans_per_request();
    loop {
        proc.check_alive()?;
        sample_tracekeeper(pid, &metrics_url, &mut samples).await;
        let (_, text) = http_get(&metrics_url).await?;
        let in_memory = prometheus_value(&text, "tracekeeper_traces_in_memory").unwrap_or(0.0);
        let exported = prometheus_value(&text, "tracekeeper_spans_exported_total").unwrap_or(0.0);
        let done = if keep_all {
            sink.spans() >= expected
        } else {
            in_memory == 0.0 && sink.spans() as f64 >= exported
        };
        if done {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "  drain timed out: {in_memory} traces in memory, {exported} spans exported, \
                 {} at the sink",
                sink.spans()
            );
            break;
        }
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    let cpu = procstat::process_cpu(pid, ticks)? - cpu0;
    let mem = procstat::process_memory(pid)?;
    proc.stop()?;
    let csv = cfg.work_dir.join(format!("tracekeeper-{tag}-samples.csv"));
    if let Err(e) = std::fs::write(&csv, samples.to_csv(idle)) {
        eprintln!("  could not write {}: {e}", csv.display());
    }
    let mut phase = summarize(&name, workload, &load, sink, cpu, mem);
    phase.kind = kind;
    phase.round = round;
    phase.lateness_ms = lateness(workload, &load, sink, wait);
    if keep_all {
        phase.lost = Some(lost(workload, &load, sink));
    } else {
        // Only this phase holds enough spans (rate × decision_wait) for a per-span figure.
        phase.rss_per_buffered_span = buffer_memory(workload, &samples, idle);
        phase.errors_kept = Some(errors_kept(workload, &load, sink));
    }
    report_phase(&phase);
    Ok(phase)
}

/// A compared phase's row label suffix: ` (round N)` when the run has several rounds.
fn of_round(cfg: &RunConfig, round: u32) -> String {
    if cfg.rounds > 1 {
        format!(" (round {round})")
    } else {
        String::new()
    }
}

async fn rotel_phase(ctx: &PhaseCtx<'_>, round: u32) -> anyhow::Result<Phase> {
    let PhaseCtx {
        cfg,
        workload,
        sink,
        epoch,
    } = *ctx;
    let name = format!("Rotel, OTLP pass-through{}", of_round(cfg, round));
    eprintln!("phase: {name}");
    let rotel = procs::find_rotel(cfg.rotel.as_deref())?;
    let ports = Ports::new()?;
    let mut cmd = Command::new(&rotel);
    cmd.arg("start")
        .arg("--otlp-grpc-endpoint")
        .arg(ports.grpc.to_string())
        .arg("--otlp-http-endpoint")
        .arg(ports.http.to_string())
        .arg("--exporter")
        .arg("otlp")
        .arg("--otlp-exporter-endpoint")
        .arg(format!("http://{}", sink.addr()))
        .arg("--otlp-exporter-compression")
        .arg(if cfg.gzip { "gzip" } else { "none" })
        .arg("--pid-file")
        .arg(cfg.work_dir.join("rotel.pid"))
        .arg("--log-file")
        .arg(cfg.work_dir.join("rotel-agent.log"));
    let log = cfg.work_dir.join("rotel.log");
    let mut proc = Proc::spawn("rotel", cmd, &log)?;
    let addr = ports.receiver(cfg.protocol);
    procs::wait_ready(&mut proc, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await
    .with_context(|| format!("starting rotel (log: {})", log.display()))?;
    sink.reset();
    let pid = proc.pid();
    let ticks = procstat::clock_ticks_per_second();
    let cpu0 = procstat::process_cpu(pid, ticks)?;
    let spec = LoadSpec {
        addr,
        protocol: cfg.protocol,
        connections: cfg.connections,
        rate: cfg.rate,
        duration: cfg.duration,
    };
    let load = load::run(Arc::clone(workload), &spec, epoch).await?;
    let expected = load.accepted() * workload.spans_per_request();
    let deadline = Instant::now() + DRAIN_GRACE;
    while sink.spans() < expected && Instant::now() < deadline {
        proc.check_alive()?;
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
    let cpu = procstat::process_cpu(pid, ticks)? - cpu0;
    let mem = procstat::process_memory(pid)?;
    proc.stop()?;
    let mut phase = summarize(&name, workload, &load, sink, cpu, mem);
    phase.kind = PhaseKind::Rotel;
    phase.round = round;
    phase.lost = Some(lost(workload, &load, sink));
    phase.lateness_ms = lateness(workload, &load, sink, Duration::ZERO);
    report_phase(&phase);
    Ok(phase)
}

fn summarize(
    name: &str,
    workload: &Workload,
    load: &LoadResult,
    sink: &Sink,
    cpu: Duration,
    mem: Memory,
) -> Phase {
    let spans = load.accepted() * workload.spans_per_request();
    let tally = sink.tally();
    Phase {
        name: name.to_string(),
        spans_accepted: spans,
        spans_per_second: spans as f64 / load.elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
        failed_requests: load.failed(),
        first_error: load.first_error.clone(),
        duplicates: tally.duplicates,
        cpu_us_per_span: cpu.as_secs_f64() * 1e6 / spans.max(1) as f64,
        peak_rss: mem.peak_rss,
        spans_exported: sink.spans(),
        ..Phase::default()
    }
}

fn report_phase(p: &Phase) {
    eprintln!(
        "  {:.0} spans/s, {:.2} µs CPU/span, {} spans at the sink{}{}",
        p.spans_per_second,
        p.cpu_us_per_span,
        p.spans_exported,
        p.lost.map(|l| format!(", {l} lost")).unwrap_or_default(),
        p.first_error
            .as_ref()
            .map(|e| format!(", {} failed requests (first: {e})", p.failed_requests))
            .unwrap_or_default()
    );
}

/// Spans of accepted requests that never reached the sink.
pub(crate) fn lost(workload: &Workload, load: &LoadResult, sink: &Sink) -> u64 {
    let tally = sink.tally();
    let spr = workload.spans_per_request();
    load.sent
        .iter()
        .filter(|s| s.ok)
        .flat_map(|s| s.request * spr..(s.request + 1) * spr)
        .filter(|&i| !tally.has_span(i))
        .count() as u64
}

/// Error traces (wholly in accepted requests) kept, of those sent.
fn errors_kept(workload: &Workload, load: &LoadResult, sink: &Sink) -> (u64, u64) {
    let tally = sink.tally();
    let spr = workload.spans_per_request();
    let spt = workload.spec().spans_per_trace as u64;
    let (mut kept, mut sent) = (0, 0);
    let mut last = None;
    for s in load.sent.iter().filter(|s| s.ok) {
        for t in (s.request * spr / spt)..((s.request + 1) * spr).div_ceil(spt) {
            if last.is_some_and(|l| t <= l) {
                continue;
            }
            last = Some(t);
            let first_req = t * spt / spr;
            let last_req = ((t + 1) * spt - 1) / spr;
            let whole = (first_req..=last_req).all(|k| {
                load.sent
                    .binary_search_by_key(&k, |x| x.request)
                    .is_ok_and(|i| load.sent[i].ok)
            });
            if whole && workload.is_error_trace(t) {
                sent += 1;
                kept += u64::from(tally.trace_arrival(t).is_some());
            }
        }
    }
    (kept, sent)
}

/// Percentiles of (arrival of a trace's last span at the sink − due time), in ms; due = send
/// time of the trace's first span + `wait`.
fn lateness(
    workload: &Workload,
    load: &LoadResult,
    sink: &Sink,
    wait: Duration,
) -> Option<(f64, f64, f64)> {
    let tally = sink.tally();
    let wait = wait.as_nanos() as i128;
    let mut late: Vec<i128> = tally
        .traces()
        .filter_map(|(t, arrival)| {
            let sent = load.send_time(workload.request_of_trace(t))?;
            Some(i128::from(arrival) - i128::from(sent) - wait)
        })
        .collect();
    if late.is_empty() {
        return None;
    }
    late.sort_unstable();
    let pct = |p: f64| {
        let i = ((late.len() - 1) as f64 * p).round() as usize;
        late[i] as f64 / 1e6
    };
    Some((pct(0.5), pct(0.99), pct(1.0)))
}

/// RSS growth over idle per buffered span, at the sample with the most traces in memory (the
/// last of equals: the plateau's end, so what grows along it, such as the decision cache, counts).
fn buffer_memory(workload: &Workload, samples: &Samples, idle: Memory) -> Option<BufferMemory> {
    let p = samples.points.iter().max_by_key(|p| p.traces)?;
    let spans = p.traces * workload.spec().spans_per_trace as u64;
    (spans > 0).then(|| BufferMemory {
        rss_per_span: p.rss.saturating_sub(idle.rss) as f64 / spans as f64,
        spans,
        buffer_per_span: p.buffered_bytes.map(|b| b as f64 / spans as f64),
        guest_memory: p.guest_memory,
    })
}

impl Report {
    /// CPU per span of each round's `kind` phase over that round's `over` phase (over the floor
    /// when `None`), in round order; rounds missing either phase are left out.
    pub fn ratios(&self, kind: PhaseKind, over: Option<PhaseKind>) -> Vec<f64> {
        let floor_us = self.floor.decode_encode_ns / 1000.0;
        self.phases
            .iter()
            .filter(|p| p.kind == kind)
            .filter_map(|p| {
                let denominator = match over {
                    None => floor_us,
                    Some(o) => {
                        self.phases
                            .iter()
                            .find(|q| q.kind == o && q.round == p.round)?
                            .cpu_us_per_span
                    }
                };
                (denominator > 0.0).then(|| p.cpu_us_per_span / denominator)
            })
            .collect()
    }
}

/// The median of `v` (the mean of the two middle values for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
    }
}

/// One ratio as `1.23×`, or several (one per round) as their median followed by each round's.
fn ratio_summary(ratios: &[f64], bold: bool) -> String {
    let Some(m) = median(ratios) else {
        return "n/a".to_string();
    };
    let b = if bold { "**" } else { "" };
    if ratios.len() == 1 {
        return format!("{b}{m:.2}×{b}");
    }
    let each: Vec<String> = ratios.iter().map(|x| format!("{x:.2}×")).collect();
    format!(
        "{b}{m:.2}×{b} (median of {} rounds: {})",
        ratios.len(),
        each.join(", ")
    )
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0))
}

/// The report as Markdown: the machine, the workload, the table and the ratios.
pub fn render(cfg: &RunConfig, r: &Report) -> String {
    let mut s = String::new();
    let floor_us = r.floor.decode_encode_ns / 1000.0;
    let _ = writeln!(s, "machine: {}", machine());
    let _ = writeln!(
        s,
        "load: {} spans/trace, {} spans/request, {} string attributes/span ({:.0} encoded \
         bytes/span, {:.0} bytes/request), {:.0}% error traces, {:.0}% producer/consumer traces; \
         OTLP/{} from {} connections, one request in flight each, {} for {:?}; exporters {}; tracekeeper workers: {}",
        cfg.workload.spans_per_trace,
        cfg.workload.spans_per_request,
        cfg.workload.attributes_per_span,
        r.span_bytes,
        r.request_bytes,
        cfg.workload.error_share * 100.0,
        cfg.workload.producer_share * 100.0,
        match cfg.protocol {
            Protocol::Grpc => "gRPC",
            Protocol::Http => "HTTP",
        },
        cfg.connections,
        if cfg.rate > 0.0 {
            format!("target {:.0} spans/s", cfg.rate)
        } else {
            "as fast as accepted".to_string()
        },
        cfg.duration,
        if cfg.gzip { "gzip" } else { "uncompressed" },
        match cfg.workers {
            Some(n) => n.to_string(),
            None => "default (one per three CPUs)".to_string(),
        },
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| run | spans/s | spans lost | CPU µs/span | ÷ floor | lateness p50 / p99 / max | peak RSS | RSS per buffered span ÷ encoded |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| floor: prost decode + encode, 1 thread (decode alone {:.2}) | | | {:.2} | 1.00 | | | |",
        r.floor.decode_ns / 1000.0,
        floor_us
    );
    for p in &r.phases {
        let lost = match p.lost {
            Some(l) => l.to_string(),
            None => match p.errors_kept {
                Some((k, n)) => format!("n/a (errors kept {k}/{n})"),
                None => "n/a".into(),
            },
        };
        let late = p
            .lateness_ms
            .map(|(a, b, c)| format!("{a:.0} / {b:.0} / {c:.0} ms"))
            .unwrap_or_default();
        let mem = p
            .rss_per_buffered_span
            .map(|m| {
                format!(
                    "{:.0} B ({:.2}×, {} spans)",
                    m.rss_per_span,
                    m.rss_per_span / r.span_bytes,
                    m.spans
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.2} | {:.2} | {} | {} | {} |",
            p.name,
            p.spans_per_second,
            lost,
            p.cpu_us_per_span,
            p.cpu_us_per_span / floor_us,
            late,
            mib(p.peak_rss),
            mem
        );
    }
    let _ = writeln!(s);
    let floor = r.ratios(PhaseKind::Default, None);
    if !floor.is_empty() {
        let _ = writeln!(
            s,
            "tracekeeper (default policies) CPU/span ÷ floor: {} (target ≤ 1.0×, stretch 0.5×)",
            ratio_summary(&floor, true)
        );
        let rotel = r.ratios(PhaseKind::Default, Some(PhaseKind::Rotel));
        if !rotel.is_empty() {
            let _ = writeln!(
                s,
                "tracekeeper (default policies) CPU/span ÷ Rotel pass-through CPU/span: {} (target ≤ 0.5×)",
                ratio_summary(&rotel, true)
            );
        }
        let baseline = r.ratios(PhaseKind::Baseline, None);
        if !baseline.is_empty() {
            let _ = writeln!(
                s,
                "baseline binary (default policies) CPU/span ÷ floor: {}; this build ÷ baseline: {}",
                ratio_summary(&baseline, false),
                ratio_summary(
                    &r.ratios(PhaseKind::Default, Some(PhaseKind::Baseline)),
                    false
                )
            );
        }
    }
    for p in &r.phases {
        if let Some(m) = p.rss_per_buffered_span {
            let part = |b: Option<f64>| match b {
                Some(b) => format!("{b:.0} B ({:.2}×)", b / r.span_bytes),
                None => "n/a".to_string(),
            };
            let _ = writeln!(
                s,
                "\n{}: at the sample with the most traces in memory, RSS over idle per buffered span \
                 {}; the trace buffer's own count {}; the guest's linear memory {} per span ({}, \
                 its whole size, the part present when idle included)",
                p.name,
                part(Some(m.rss_per_span)),
                part(m.buffer_per_span),
                part(m.guest_memory.map(|g| g as f64 / m.spans as f64)),
                m.guest_memory.map(mib).unwrap_or_else(|| "n/a".into()),
            );
        }
    }
    let _ = writeln!(
        s,
        "\nlateness = arrival of a trace's last span at the sink − (send time of its first span + decision_wait: {:?} keep-all, {:?} default); for Rotel, send-to-sink latency",
        cfg.keep_all_decision_wait, cfg.decision_wait
    );
    s
}

/// `nproc` and the CPU model.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("nproc {nproc}, {model}")
}

/// The `tracekeeper` binary next to this one (both are built into the same target directory).
pub fn default_tracekeeper() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    let dir = me.parent().context("this executable has no directory")?;
    let p = dir.join("tracekeeper");
    if !p.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p tracekeeper`, or pass \
             --tracekeeper",
            p.display()
        );
    }
    Ok(p)
}

/// A fresh working directory for configurations and logs.
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("tracekeeper-bench-{}", std::process::id()))
}

/// Removes the working directory.
pub fn clean_work_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(kind: PhaseKind, round: u32, cpu_us_per_span: f64) -> Phase {
        Phase {
            kind,
            round,
            cpu_us_per_span,
            ..Phase::default()
        }
    }

    fn report(phases: Vec<Phase>) -> Report {
        Report {
            span_bytes: 361.0,
            request_bytes: 36_552.0,
            floor: Floor {
                decode_ns: 1_500.0,
                decode_encode_ns: 2_000.0,
                spans: 1,
            },
            phases,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn ratios_pair_phases_of_the_same_round() {
        let r = report(vec![
            phase(PhaseKind::KeepAll, 1, 9.0),
            phase(PhaseKind::Default, 1, 2.0),
            phase(PhaseKind::Baseline, 1, 4.0),
            phase(PhaseKind::Rotel, 1, 8.0),
            phase(PhaseKind::Default, 2, 3.0),
            phase(PhaseKind::Baseline, 2, 2.0),
            phase(PhaseKind::Rotel, 2, 6.0),
            // A round whose Rotel phase is missing gives no ratio to Rotel.
            phase(PhaseKind::Default, 3, 4.0),
        ]);
        assert_eq!(r.ratios(PhaseKind::Default, None), vec![1.0, 1.5, 2.0]);
        assert_eq!(
            r.ratios(PhaseKind::Default, Some(PhaseKind::Rotel)),
            vec![0.25, 0.5]
        );
        assert_eq!(
            r.ratios(PhaseKind::Default, Some(PhaseKind::Baseline)),
            vec![0.5, 1.5]
        );
        assert_eq!(r.ratios(PhaseKind::Baseline, None), vec![2.0, 1.0]);
    }

    #[test]
    fn one_round_prints_its_ratio_and_several_their_median_and_each() {
        assert_eq!(ratio_summary(&[1.234], true), "**1.23×**");
        assert_eq!(ratio_summary(&[1.234], false), "1.23×");
        assert_eq!(
            ratio_summary(&[1.3, 1.1, 1.2], true),
            "**1.20×** (median of 3 rounds: 1.30×, 1.10×, 1.20×)"
        );
        assert_eq!(ratio_summary(&[], true), "n/a");
    }

    #[test]
    fn samples_csv_starts_with_the_idle_row() {
        let samples = Samples {
            start: Instant::now(),
            points: vec![Point {
                at: Duration::from_millis(200),
                rss: 30,
                traces: 2,
                buffered_bytes: Some(10),
                guest_memory: None,
            }],
        };
        let csv = samples.to_csv(Memory {
            rss: 20,
            peak_rss: 20,
        });
        assert_eq!(
            csv,
            "ms,rss_bytes,traces_in_memory,buffered_span_bytes,guest_memory_bytes\n0,20,0,,\n200,30,2,10,\n"
        );
    }
}
