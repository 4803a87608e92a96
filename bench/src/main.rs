//! `tracekeeper-bench`: the benchmark runner (`run`), the soak (`soak`: a steady load for 30
//! minutes, RSS, fds and spans lost over time; run by hand), and the load generator (`gen`)
//! and counting sink (`sink`) on their own, for profiling a process by hand.
//!
//! ```sh
//! cargo build --release -p tracekeeper -p tracekeeper-bench
//! target/release/tracekeeper-bench run            # the full run (BENCHMARKS.md)
//! target/release/tracekeeper-bench run --quick    # a short smoke run
//! target/release/tracekeeper-bench soak           # 30 minutes at 20 000 spans/s (BENCHMARKS.md)
//! target/release/tracekeeper-bench soak --quick   # 3 minutes, a smoke run of the soak
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracekeeper_bench::idle;
use tracekeeper_bench::load::{self, LoadSpec, Protocol};
use tracekeeper_bench::runner::{self, RunConfig};
use tracekeeper_bench::sink::Sink;
use tracekeeper_bench::soak::{self, SoakConfig, parse_duration};
use tracekeeper_bench::workload::{Workload, WorkloadSpec};

/// Load duration of each phase of the full run.
const FULL_DURATION: Duration = Duration::from_secs(30);
/// Load duration of each phase with `--quick`.
const QUICK_DURATION: Duration = Duration::from_secs(5);
/// Target rate of the full run, spans per second.
const FULL_RATE: f64 = 50_000.0;
/// Target rate with `--quick`.
const QUICK_RATE: f64 = 20_000.0;
/// `decision_wait` of the default-policies phase (the embedded default's) in the full run.
const FULL_DECISION_WAIT: Duration = Duration::from_secs(10);
/// `decision_wait` of the default-policies phase with `--quick`.
const QUICK_DECISION_WAIT: Duration = Duration::from_secs(2);
/// `decision_wait` of the keep-all phase.
const KEEP_ALL_DECISION_WAIT: Duration = Duration::from_secs(1);
/// Wall time of each floor measurement in the full run.
const FULL_FLOOR_TIME: Duration = Duration::from_secs(3);
/// Wall time of each floor measurement with `--quick`.
const QUICK_FLOOR_TIME: Duration = Duration::from_millis(500);
/// Load duration of the soak.
const SOAK_DURATION: &str = "30m";
/// Load duration of the soak with `--quick`.
const SOAK_QUICK_DURATION: Duration = Duration::from_secs(180);
/// Sampling period of the soak with `--quick`.
const SOAK_QUICK_INTERVAL: Duration = Duration::from_secs(5);
/// How often the standalone sink prints its count.
const SINK_REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(
    name = "tracekeeper-bench",
    about = "Benchmark tracekeeper against the prost floor and Rotel"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start tracekeeper (keep-all, then default policies) and Rotel on loopback, drive each
    /// with the same load into a counting sink, and print the table.
    Run(RunArgs),
    /// Hold a steady load on tracekeeper (keep-all) for a long time; sample RSS, open fds and
    /// span counts every interval, then count spans lost and judge RSS growth.
    Soak(SoakArgs),
    /// Start tracekeeper on its embedded default configuration (on free ports) with no traffic
    /// and measure its CPU time and thread wake-ups over a window.
    Idle(IdleArgs),
    /// Send the workload to an OTLP endpoint.
    Gen(GenArgs),
    /// Receive OTLP/gRPC and print spans per second.
    Sink(SinkArgs),
}

#[derive(Args, Clone)]
struct WorkloadArgs {
    /// Spans per trace.
    #[arg(long, default_value_t = 10)]
    spans_per_trace: usize,
    /// Spans per request.
    #[arg(long, default_value_t = 100)]
    spans_per_request: usize,
    /// String attributes per span.
    #[arg(long, default_value_t = 10)]
    attributes: usize,
    /// Share of traces with an ERROR span (0..1).
    #[arg(long, default_value_t = 0.01)]
    error_share: f64,
    /// Share of traces with a producer span and its consumer (0..1).
    #[arg(long, default_value_t = 0.05)]
    producer_share: f64,
}

impl WorkloadArgs {
    fn spec(&self) -> WorkloadSpec {
        WorkloadSpec {
            spans_per_trace: self.spans_per_trace,
            spans_per_request: self.spans_per_request,
            attributes_per_span: self.attributes,
            error_share: self.error_share,
            producer_share: self.producer_share,
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// Short phases at a lower rate (a smoke run, not the published numbers).
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Target spans per second (0 = as fast as accepted) [default: 50000, quick 20000].
    #[arg(long)]
    rate: Option<f64>,
    /// Load duration of each phase, seconds [default: 30, quick 5].
    #[arg(long)]
    duration: Option<f64>,
    /// Generator connections (one request in flight each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Transport from the generator to the process under test.
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    protocol: Protocol,
    /// decision_wait of the default-policies phase, seconds [default: 10, quick 2].
    #[arg(long)]
    decision_wait: Option<f64>,
    /// Exporter compression of tracekeeper and Rotel (both default to gzip).
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "none"])]
    compression: String,
    /// The tracekeeper binary [default: next to this one].
    #[arg(long)]
    tracekeeper: Option<PathBuf>,
    /// An earlier tracekeeper build whose default-policies phase also runs, for before/after
    /// ratios from one run.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The Rotel binary [default: `rotel` on PATH, else the `rotel` PyPI package, installed
    /// when missing].
    #[arg(long)]
    rotel: Option<PathBuf>,
    /// Skip the Rotel phase.
    #[arg(long)]
    no_rotel: bool,
    /// `guest.workers` of this build's tracekeeper phases [default: the host's, one per three CPUs].
    #[arg(long)]
    workers: Option<u32>,
    /// Run the compared phases (default policies, the baseline's, Rotel's) this many times in
    /// turn and report each round's ratios and their median (one phase's CPU per span moves by
    /// 10-20% from run to run on a shared machine).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Keep the configurations and logs of the processes under test in this directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(Args)]
struct IdleArgs {
    /// The tracekeeper binary [default: next to this one].
    #[arg(long)]
    tracekeeper: Option<PathBuf>,
    /// Another tracekeeper binary measured the same way after the first.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Length of the measured window.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    window: Duration,
    /// Keep the configuration and the log of tracekeeper in this directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(Args)]
struct SoakArgs {
    /// A 3-minute soak sampled every 5 s (a smoke run, not the published result).
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    workload: WorkloadArgs,
    /// How long the load runs (30m, 90s, 1h, or seconds) [default: 30m, quick 3m].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Target spans per second (a steady load; must be > 0).
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Sampling period [default: 10s, quick 5s].
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    /// Judged window at the end of the load [default: the last 20 minutes, or the last two
    /// thirds of a shorter run].
    #[arg(long, value_parser = parse_duration)]
    window: Option<Duration>,
    /// Generator connections (one request in flight each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Transport from the generator to tracekeeper.
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    protocol: Protocol,
    /// decision_wait of the keep-all configuration.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    decision_wait: Duration,
    /// Exporter compression.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "none"])]
    compression: String,
    /// The tracekeeper binary [default: next to this one].
    #[arg(long)]
    tracekeeper: Option<PathBuf>,
    /// Where every sample is written as CSV.
    #[arg(long, default_value_os_t = soak::default_csv())]
    csv: PathBuf,
    /// Keep the configuration and the log of tracekeeper in this directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(Args)]
struct GenArgs {
    /// Receiver address (host:port).
    #[arg(long, default_value = "127.0.0.1:4317")]
    endpoint: SocketAddr,
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    protocol: Protocol,
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Target spans per second (0 = as fast as accepted).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds to send.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Connections (one request in flight each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:14317")]
    listen: SocketAddr,
    /// Seconds to run.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{what}: {s} is not a duration"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(a) => run(a).await,
        Cmd::Soak(a) => soak_run(a).await,
        Cmd::Idle(a) => idle_run(a).await,
        Cmd::Gen(a) => generate(a).await,
        Cmd::Sink(a) => sink(a).await,
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let q = a.quick;
    let keep_logs = a.work_dir.is_some();
    let cfg = RunConfig {
        workload: a.workload.spec(),
        rate: a.rate.unwrap_or(if q { QUICK_RATE } else { FULL_RATE }),
        duration: match a.duration {
            Some(d) => secs(d, "--duration")?,
            None if q => QUICK_DURATION,
            None => FULL_DURATION,
        },
        connections: a.connections,
        protocol: a.protocol,
        decision_wait: match a.decision_wait {
            Some(d) => secs(d, "--decision-wait")?,
            None if q => QUICK_DECISION_WAIT,
            None => FULL_DECISION_WAIT,
        },
        keep_all_decision_wait: KEEP_ALL_DECISION_WAIT,
        gzip: a.compression == "gzip",
        floor_time: if q { QUICK_FLOOR_TIME } else { FULL_FLOOR_TIME },
        tracekeeper: match a.tracekeeper {
            Some(p) => p,
            None => runner::default_tracekeeper()?,
        },
        baseline: a.baseline,
        rotel: a.rotel,
        skip_rotel: a.no_rotel,
        workers: a.workers,
        work_dir: a.work_dir.unwrap_or_else(runner::default_work_dir),
        rounds: a.rounds,
    };
    let result = runner::run(&cfg).await;
    match result {
        Ok(report) => {
            println!("{}", runner::render(&cfg, &report));
            if !keep_logs {
                runner::clean_work_dir(&cfg.work_dir);
            }
            let lost: u64 = report.phases.iter().filter_map(|p| p.lost).sum();
            anyhow::ensure!(lost == 0, "{lost} spans lost");
            Ok(())
        }
        Err(e) => {
            eprintln!("configurations and logs kept in {}", cfg.work_dir.display());
            Err(e)
        }
    }
}

async fn soak_run(a: SoakArgs) -> anyhow::Result<()> {
    let q = a.quick;
    let keep_logs = a.work_dir.is_some();
    let cfg = SoakConfig {
        workload: a.workload.spec(),
        rate: a.rate,
        duration: match a.duration {
            Some(d) => d,
            None if q => SOAK_QUICK_DURATION,
            None => parse_duration(SOAK_DURATION).map_err(anyhow::Error::msg)?,
        },
        interval: match a.interval {
            Some(d) => d,
            None if q => SOAK_QUICK_INTERVAL,
            None => Duration::from_secs(10),
        },
        window: a.window,
        connections: a.connections,
        protocol: a.protocol,
        decision_wait: a.decision_wait,
        gzip: a.compression == "gzip",
        tracekeeper: match a.tracekeeper {
            Some(p) => p,
            None => runner::default_tracekeeper()?,
        },
        work_dir: a.work_dir.unwrap_or_else(runner::default_work_dir),
        csv: a.csv,
    };
    anyhow::ensure!(!cfg.interval.is_zero(), "--interval must be more than 0");
    match soak::run(&cfg).await {
        Ok(report) => {
            println!("{}", soak::render(&cfg, &report));
            println!("samples: {}", cfg.csv.display());
            if !keep_logs {
                runner::clean_work_dir(&cfg.work_dir);
            }
            anyhow::ensure!(report.passed(), "soak FAILED");
            Ok(())
        }
        Err(e) => {
            eprintln!("configuration and log kept in {}", cfg.work_dir.display());
            Err(e)
        }
    }
}

async fn idle_run(a: IdleArgs) -> anyhow::Result<()> {
    let keep_logs = a.work_dir.is_some();
    let work_dir = a.work_dir.unwrap_or_else(runner::default_work_dir);
    let mut binaries = vec![match a.tracekeeper {
        Some(p) => p,
        None => runner::default_tracekeeper()?,
    }];
    binaries.extend(a.baseline);
    println!("machine: {}", runner::machine());
    println!(
        "tracekeeper on its embedded default configuration, no traffic, {:?} window",
        a.window
    );
    println!();
    println!("| binary | CPU (% of one CPU) | context switches/s | threads |");
    println!("|---|---:|---:|---:|");
    for b in &binaries {
        let cost = match idle::measure(b, a.window, &work_dir).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("configuration and log kept in {}", work_dir.display());
                return Err(e);
            }
        };
        println!(
            "| {} | {:.3}% ({} ms) | {:.1} | {} |",
            b.display(),
            cost.cpu_percent(),
            cost.cpu.as_millis(),
            cost.switches_per_second(),
            cost.threads
        );
    }
    if !keep_logs {
        runner::clean_work_dir(&work_dir);
    }
    Ok(())
}

async fn generate(a: GenArgs) -> anyhow::Result<()> {
    let workload = Arc::new(Workload::new(a.workload.spec())?);
    let spec = LoadSpec {
        addr: a.endpoint,
        protocol: a.protocol,
        connections: a.connections,
        rate: a.rate,
        duration: secs(a.duration, "--duration")?,
    };
    let r = load::run(Arc::clone(&workload), &spec, Instant::now()).await?;
    let spans = r.accepted() * workload.spans_per_request();
    println!(
        "{spans} spans accepted in {:.1} s ({:.0} spans/s), {} requests failed{}",
        r.elapsed.as_secs_f64(),
        spans as f64 / r.elapsed.as_secs_f64(),
        r.failed(),
        r.first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    Ok(())
}

async fn sink(a: SinkArgs) -> anyhow::Result<()> {
    let sink = Sink::start(a.listen, Instant::now()).await?;
    println!("listening on {}", sink.addr());
    let end = Instant::now() + secs(a.duration, "--duration")?;
    let mut last = 0;
    while Instant::now() < end {
        tokio::time::sleep(SINK_REPORT_INTERVAL).await;
        let n = sink.spans();
        println!("{n} spans ({} in the last second)", n - last);
        last = n;
    }
    let t = sink.tally();
    println!(
        "{} distinct generated spans, {} duplicates, {} foreign",
        t.distinct, t.duplicates, t.foreign
    );
    sink.stop().await
}
