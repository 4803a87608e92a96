//! The soak: tracekeeper under a steady load for a long time (30 minutes by default, run by
//! hand, not in CI), sampled every interval for RSS, open file descriptors, traces in memory
//! and span counts, then checked for memory growth and for spans lost.
//!
//! The configuration keeps every trace (`always_sample`), so every span the host accepted must
//! reach the sink; loss and duplicates are counted by span id at the end, after the load
//! stopped and every accepted span had time to be exported. Memory is judged over the *judged
//! window*: the last 20 minutes of the load (the last two thirds when the run is shorter), so
//! that the warm-up (buffers and bounded caches filling) is excluded. Growth there is
//! reported two ways:
//!
//! * **end growth** = (RSS at the window's last sample − RSS at its first) ÷ RSS at its first;
//! * **range** = (max RSS − min RSS over the window) ÷ RSS at its first sample.
//!
//! The verdict uses the range (the stricter one: it bounds the end growth and also catches a
//! rise that came back down): PASS when the range is under 5% and no span was lost.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::load::{self, LoadSpec, Progress, Protocol};
use crate::procs::{self, Proc, http_get, prometheus_value};
use crate::procstat;
use crate::runner::{self, DEFAULT_NUM_TRACES, DRAIN_GRACE, NUM_TRACES_HEADROOM, Ports};
use crate::sink::{MAX_TRACKED_SPANS, Sink};
use crate::workload::{Workload, WorkloadSpec};

/// The longest judged window (the "last 20 minutes").
pub const MAX_WINDOW: Duration = Duration::from_secs(20 * 60);
/// Most RSS growth over the judged window that passes, percent.
pub const MAX_GROWTH_PERCENT: f64 = 5.0;
/// Spacing of the rows of the RSS-over-time table (shorter runs: a sixth of the run).
pub const TABLE_STEP: Duration = Duration::from_secs(5 * 60);

/// Everything a soak is configured with.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The workload.
    pub workload: WorkloadSpec,
    /// Target spans per second (must be > 0: a steady load).
    pub rate: f64,
    /// How long the load runs.
    pub duration: Duration,
    /// Sampling period.
    pub interval: Duration,
    /// Judged window at the end of the load (None: [`default_window`]).
    pub window: Option<Duration>,
    /// Generator connections.
    pub connections: usize,
    /// Transport from the generator to tracekeeper.
    pub protocol: Protocol,
    /// `decision_wait` of the keep-all configuration.
    pub decision_wait: Duration,
    /// Exporter compression.
    pub gzip: bool,
    /// The tracekeeper binary.
    pub tracekeeper: PathBuf,
    /// Where the configuration and the log go.
    pub work_dir: PathBuf,
    /// Where every sample is written as CSV.
    pub csv: PathBuf,
}

/// When a sample was taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stage {
    /// Ready, before the load.
    #[default]
    Idle,
    /// Under load.
    Load,
    /// After the load, once every accepted span was at the sink (or the drain timed out).
    Drain,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Idle => "idle",
            Stage::Load => "load",
            Stage::Drain => "drain",
        }
    }
}

/// One sample of the process and the counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the load started.
    pub elapsed_s: f64,
    /// When it was taken.
    pub stage: Stage,
    /// VmRSS, bytes.
    pub rss: u64,
    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub fds: u64,
    /// Threads of the process.
    pub threads: u64,
    /// User + system CPU of the process so far, seconds.
    pub cpu_s: f64,
    /// `tracekeeper_traces_in_memory` (None when /metrics did not answer).
    pub traces_in_memory: Option<u64>,
    /// `tracekeeper_buffered_span_bytes`.
    pub buffered_span_bytes: Option<u64>,
    /// Spans of the requests the generator got an answer for.
    pub spans_sent: u64,
    /// Spans of the requests tracekeeper accepted.
    pub spans_accepted: u64,
    /// `tracekeeper_spans_received_total`.
    pub host_received: Option<u64>,
    /// `tracekeeper_spans_exported_total`.
    pub host_exported: Option<u64>,
    /// Spans at the sink.
    pub sink_spans: u64,
}

/// RSS over the judged window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Growth {
    /// Start of the window, seconds since the load started.
    pub from_s: f64,
    /// Samples in the window.
    pub samples: usize,
    /// RSS at the window's first sample.
    pub first: u64,
    /// RSS at the window's last sample.
    pub last: u64,
    /// Least RSS in the window.
    pub min: u64,
    /// Most RSS in the window.
    pub max: u64,
    /// (last − first) ÷ first, percent (negative when it shrank).
    pub end_percent: f64,
    /// (max − min) ÷ first, percent.
    pub range_percent: f64,
    /// Least-squares slope of RSS over the window, bytes per hour.
    pub slope_per_hour: f64,
}

/// The soak's result.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// Encoded bytes per span of the workload.
    pub span_bytes: f64,
    /// Spans tracekeeper accepted.
    pub spans_accepted: u64,
    /// Accepted spans per second of load.
    pub spans_per_second: f64,
    /// Requests refused or failed.
    pub failed_requests: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Accepted spans that never reached the sink.
    pub lost: u64,
    /// Spans the sink received more than once.
    pub duplicates: u64,
    /// Spans at the sink whose ids the workload did not generate.
    pub foreign: u64,
    /// Whether the drain ended before every accepted span was at the sink.
    pub drain_timed_out: bool,
    /// RSS growth over the judged window (None: no sample in it).
    pub growth: Option<Growth>,
    /// Judged window length.
    pub window: Duration,
}

impl SoakReport {
    /// PASS: RSS range under [`MAX_GROWTH_PERCENT`] over the window, nothing lost.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self
                .growth
                .is_some_and(|g| g.range_percent < MAX_GROWTH_PERCENT)
    }
}

/// The judged window for a load of `duration`: the last 20 minutes, or the last two thirds of
/// a shorter run.
pub fn default_window(duration: Duration) -> Duration {
    MAX_WINDOW.min(duration.mul_f64(2.0 / 3.0))
}

/// RSS growth over the samples taken under load in the last `window` of a load of `duration`.
pub fn growth(samples: &[Sample], duration: Duration, window: Duration) -> Option<Growth> {
    let end = duration.as_secs_f64();
    let from_s = (end - window.as_secs_f64()).max(0.0);
    let w: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.stage == Stage::Load && s.elapsed_s >= from_s)
        .collect();
    let first = w.first()?.rss;
    let last = w.last()?.rss;
    let min = w.iter().map(|s| s.rss).min()?;
    let max = w.iter().map(|s| s.rss).max()?;
    let pct = |d: f64| {
        if first == 0 {
            0.0
        } else {
            d * 100.0 / first as f64
        }
    };
    let n = w.len() as f64;
    let mean_t = w.iter().map(|s| s.elapsed_s).sum::<f64>() / n;
    let mean_r = w.iter().map(|s| s.rss as f64).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for s in &w {
        cov += (s.elapsed_s - mean_t) * (s.rss as f64 - mean_r);
        var += (s.elapsed_s - mean_t).powi(2);
    }
    Some(Growth {
        from_s,
        samples: w.len(),
        first,
        last,
        min,
        max,
        end_percent: pct(last as f64 - first as f64),
        range_percent: pct((max - min) as f64),
        slope_per_hour: if var > 0.0 { cov / var * 3600.0 } else { 0.0 },
    })
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))?;
    Ok(entries.count() as u64)
}

/// Threads of a process, from `/proc/PID/status`.
pub fn threads(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .with_context(|| format!("{path}: no Threads"))?
        .trim()
        .parse()
        .with_context(|| format!("{path}: Threads is not a number"))
}

/// Parses `30m`, `90s`, `1h`, `1h30m`, `500ms` or plain seconds (`45`, `2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s}: {e}"));
    }
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s}: a number without a unit (h, m, s, ms)"))?;
        let value: f64 = rest[..n]
            .parse()
            .map_err(|_| format!("{s}: not a duration"))?;
        rest = &rest[n..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return Err(format!("{s}: unknown unit (h, m, s, ms)"));
        };
        total += value * unit;
        rest = &rest[len..];
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{s}: {e}"))
}

/// What a sample reads from.
struct Probe<'a> {
    pid: u32,
    ticks: u64,
    metrics_url: String,
    progress: &'a Progress,
    spans_per_request: u64,
    sink: &'a Sink,
    start: Instant,
}

impl Probe<'_> {
    /// Reads one sample of the process and the counts.
    async fn sample(&self, stage: Stage) -> anyhow::Result<Sample> {
        let (pid, spr, progress) = (self.pid, self.spans_per_request, self.progress);
        let metrics = http_get(&self.metrics_url).await.ok().map(|(_, text)| text);
        let metric = |name: &str| {
            metrics
                .as_deref()
                .and_then(|t| prometheus_value(t, name))
                .map(|v| v as u64)
        };
        Ok(Sample {
            elapsed_s: match stage {
                Stage::Idle => 0.0,
                _ => self.start.elapsed().as_secs_f64(),
            },
            stage,
            rss: procstat::process_memory(pid)?.rss,
            fds: open_fds(pid)?,
            threads: threads(pid)?,
            cpu_s: procstat::process_cpu(pid, self.ticks)?.as_secs_f64(),
            traces_in_memory: metric("tracekeeper_traces_in_memory"),
            buffered_span_bytes: metric("tracekeeper_buffered_span_bytes"),
            spans_sent: progress.sent.load(Ordering::Relaxed) * spr,
            spans_accepted: progress.accepted.load(Ordering::Relaxed) * spr,
            host_received: metric("tracekeeper_spans_received_total"),
            host_exported: metric("tracekeeper_spans_exported_total"),
            sink_spans: self.sink.spans(),
        })
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// The CSV header.
pub const CSV_HEADER: &str = "elapsed_s,phase,rss_bytes,rss_mib,fds,threads,cpu_s,\
traces_in_memory,buffered_span_bytes,spans_sent,spans_accepted,host_spans_received,\
host_spans_exported,sink_spans";

/// One CSV line (no newline).
pub fn csv_line(s: &Sample) -> String {
    format!(
        "{:.1},{},{},{:.1},{},{},{:.2},{},{},{},{},{},{},{}",
        s.elapsed_s,
        s.stage.name(),
        s.rss,
        mib(s.rss),
        s.fds,
        s.threads,
        s.cpu_s,
        opt(s.traces_in_memory),
        opt(s.buffered_span_bytes),
        s.spans_sent,
        s.spans_accepted,
        opt(s.host_received),
        opt(s.host_exported),
        s.sink_spans
    )
}

fn progress_line(s: &Sample) -> String {
    format!(
        "  {} t={:>6.0}s rss={:.1} MiB fds={} threads={} traces={} sent={} accepted={} host_received={} sink={}",
        s.stage.name(),
        s.elapsed_s,
        mib(s.rss),
        s.fds,
        s.threads,
        opt(s.traces_in_memory),
        s.spans_sent,
        s.spans_accepted,
        opt(s.host_received),
        s.sink_spans
    )
}

/// Runs the soak and writes every sample to `cfg.csv` as it is taken.
pub async fn run(cfg: &SoakConfig) -> anyhow::Result<SoakReport> {
    if cfg.rate <= 0.0 || !cfg.rate.is_finite() {
        bail!("the soak needs a steady target rate (--rate > 0)");
    }
    let total_spans = cfg.rate * cfg.duration.as_secs_f64();
    if total_spans >= MAX_TRACKED_SPANS as f64 {
        bail!(
            "{total_spans:.0} spans exceed the {MAX_TRACKED_SPANS} the sink tracks by id: \
             lower --rate or --duration"
        );
    }
    let window = cfg.window.unwrap_or_else(|| default_window(cfg.duration));
    std::fs::create_dir_all(&cfg.work_dir)
        .with_context(|| format!("creating {}", cfg.work_dir.display()))?;
    let mut csv = std::fs::File::create(&cfg.csv)
        .with_context(|| format!("creating {}", cfg.csv.display()))?;
    writeln!(csv, "{CSV_HEADER}")?;
    let workload = Arc::new(Workload::new(cfg.workload.clone())?);
    let spr = workload.spans_per_request();
    let epoch = Instant::now();
    let sink = Sink::start("127.0.0.1:0".parse()?, epoch).await?;
    let ports = Ports::new()?;
    let buffered_traces =
        cfg.rate * cfg.decision_wait.as_secs_f64() / cfg.workload.spans_per_trace as f64;
    let num_traces = DEFAULT_NUM_TRACES.max((buffered_traces * NUM_TRACES_HEADROOM).ceil() as u64);
    let config_path = cfg.work_dir.join("tracekeeper-soak.yaml");
    std::fs::write(
        &config_path,
        runner::config_text(
            "soak, keep-all",
            "      - {name: all, type: always_sample}\n",
            cfg.decision_wait,
            num_traces,
            &ports,
            sink.addr(),
            cfg.gzip,
        ),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;
    let mut cmd = Command::new(&cfg.tracekeeper);
    cmd.arg("run").arg("--config").arg(&config_path);
    let log = cfg.work_dir.join("tracekeeper-soak.log");
    let mut proc = Proc::spawn("tracekeeper", cmd, &log)?;
    let health_url = format!("http://{}/", ports.health);
    let metrics_url = format!("http://{}/metrics", ports.metrics);
    procs::wait_ready(&mut proc, || async {
        matches!(http_get(&health_url).await, Ok((s, _)) if s.is_success())
    })
    .await
    .with_context(|| format!("starting tracekeeper (log: {})", log.display()))?;
    let pid = proc.pid();
    let ticks = procstat::clock_ticks_per_second();
    eprintln!(
        "soak: tracekeeper pid {pid}, {:.0} spans/s for {:?}, sample every {:?}, judged window \
         the last {:?}; samples in {}",
        cfg.rate,
        cfg.duration,
        cfg.interval,
        window,
        cfg.csv.display()
    );
    let progress = Arc::new(Progress::default());
    let mut samples = Vec::new();
    let mut record = |s: Sample, samples: &mut Vec<Sample>| -> anyhow::Result<()> {
        writeln!(csv, "{}", csv_line(&s))?;
        csv.flush()?;
        eprintln!("{}", progress_line(&s));
        samples.push(s);
        Ok(())
    };
    let mut probe = Probe {
        pid,
        ticks,
        metrics_url,
        progress: &progress,
        spans_per_request: spr,
        sink: &sink,
        start: Instant::now(),
    };
    record(probe.sample(Stage::Idle).await?, &mut samples)?;
    let spec = LoadSpec {
        addr: ports.receiver(cfg.protocol),
        protocol: cfg.protocol,
        connections: cfg.connections,
        rate: cfg.rate,
        duration: cfg.duration,
    };
    let start = Instant::now();
    probe.start = start;
    let load = {
        let load =
            load::run_with_progress(Arc::clone(&workload), &spec, epoch, Arc::clone(&progress));
        tokio::pin!(load);
        let mut tick = tokio::time::interval_at((start + cfg.interval).into(), cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut load => break r?,
                _ = tick.tick() => {
                    proc.check_alive()?;
                    record(probe.sample(Stage::Load).await?, &mut samples)?;
                }
            }
        }
    };
    // Drain: every accepted span at the sink (all are kept), or the grace time is over.
    let expected = load.accepted() * spr;
    let deadline = Instant::now() + cfg.decision_wait + DRAIN_GRACE;
    let mut drain_timed_out = false;
    while sink.spans() < expected {
        proc.check_alive()?;
        if Instant::now() > deadline {
            drain_timed_out = true;
            eprintln!(
                "  drain timed out: {} of {expected} accepted spans at the sink",
                sink.spans()
            );
            break;
        }
        tokio::time::sleep(procs::POLL_INTERVAL).await;
    }
    // Give late duplicates, if any, a moment to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    record(probe.sample(Stage::Drain).await?, &mut samples)?;
    proc.stop()?;
    let tally = sink.tally();
    let lost = runner::lost(&workload, &load, &sink);
    sink.stop().await?;
    let spans_accepted = load.accepted() * spr;
    Ok(SoakReport {
        growth: growth(&samples, cfg.duration, window),
        span_bytes: workload.encoded_bytes_per_span(),
        spans_accepted,
        spans_per_second: spans_accepted as f64 / load.elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
        failed_requests: load.failed(),
        first_error: load.first_error.clone(),
        lost,
        duplicates: tally.duplicates,
        foreign: tally.foreign,
        drain_timed_out,
        samples,
        window,
    })
}

/// The samples closest to every [`TABLE_STEP`] (a sixth of shorter runs) of the load, and
/// the last one under load.
fn table_rows(samples: &[Sample], duration: Duration) -> Vec<Sample> {
    let loaded: Vec<&Sample> = samples.iter().filter(|s| s.stage == Stage::Load).collect();
    let step = TABLE_STEP.min(duration / 6).as_secs_f64().max(1.0);
    let mut rows: Vec<Sample> = Vec::new();
    let mut t = step;
    while t <= duration.as_secs_f64() + step / 2.0 {
        let best = loaded
            .iter()
            .min_by(|a, b| (a.elapsed_s - t).abs().total_cmp(&(b.elapsed_s - t).abs()));
        if let Some(&&s) = best
            && rows.last().is_none_or(|r| r.elapsed_s != s.elapsed_s)
        {
            rows.push(s);
        }
        t += step;
    }
    if let Some(first) = samples.first().filter(|s| s.stage == Stage::Idle) {
        rows.insert(0, *first);
    }
    rows
}

fn when(s: &Sample) -> String {
    match s.stage {
        Stage::Idle => "idle, before the load".into(),
        _ => format!("{:.1} min", s.elapsed_s / 60.0),
    }
}

/// The report as Markdown.
pub fn render(cfg: &SoakConfig, r: &SoakReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "machine: {}", runner::machine());
    let _ = writeln!(
        s,
        "load: {} spans/trace, {} spans/request, {} string attributes/span ({:.0} encoded \
         bytes/span), {:.0}% error traces, {:.0}% producer/consumer traces; OTLP/{} from {} \
         connections, target {:.0} spans/s for {:?}; keep-all (always_sample), decision_wait \
         {:?}, exporter {}; sampled every {:?}",
        cfg.workload.spans_per_trace,
        cfg.workload.spans_per_request,
        cfg.workload.attributes_per_span,
        r.span_bytes,
        cfg.workload.error_share * 100.0,
        cfg.workload.producer_share * 100.0,
        match cfg.protocol {
            Protocol::Grpc => "gRPC",
            Protocol::Http => "HTTP",
        },
        cfg.connections,
        cfg.rate,
        cfg.duration,
        cfg.decision_wait,
        if cfg.gzip { "gzip" } else { "uncompressed" },
        cfg.interval,
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| time | RSS | open fds | threads | traces in memory | spans accepted | spans at the sink |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for row in table_rows(&r.samples, cfg.duration) {
        let _ = writeln!(
            s,
            "| {} | {:.1} MiB | {} | {} | {} | {} | {} |",
            when(&row),
            mib(row.rss),
            row.fds,
            row.threads,
            opt(row.traces_in_memory),
            row.spans_accepted,
            row.sink_spans
        );
    }
    let _ = writeln!(s);
    let loaded = r.samples.iter().filter(|x| x.stage == Stage::Load);
    let rss_min = loaded.clone().map(|x| x.rss).min().unwrap_or(0);
    let rss_max = loaded.clone().map(|x| x.rss).max().unwrap_or(0);
    let fd_min = loaded.clone().map(|x| x.fds).min().unwrap_or(0);
    let fd_max = loaded.map(|x| x.fds).max().unwrap_or(0);
    let _ = writeln!(s, "| measure | value |");
    let _ = writeln!(s, "|---|---:|");
    let _ = writeln!(
        s,
        "| spans accepted (achieved rate) | {} ({:.0} spans/s) |",
        r.spans_accepted, r.spans_per_second
    );
    let _ = writeln!(
        s,
        "| requests refused or failed | {}{} |",
        r.failed_requests,
        r.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "| spans lost (accepted, never at the sink, by span id) | {}{} |",
        r.lost,
        if r.drain_timed_out {
            " (drain timed out)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "| duplicate spans at the sink | {} |", r.duplicates);
    let _ = writeln!(
        s,
        "| RSS min / max under load, whole run | {:.1} / {:.1} MiB |",
        mib(rss_min),
        mib(rss_max)
    );
    match r.growth {
        Some(g) => {
            let _ = writeln!(
                s,
                "| judged window | last {:.1} min of the load (from {:.1} min, {} samples) |",
                r.window.as_secs_f64() / 60.0,
                g.from_s / 60.0,
                g.samples
            );
            let _ = writeln!(
                s,
                "| RSS first / last / min / max in the window | {:.1} / {:.1} / {:.1} / {:.1} MiB |",
                mib(g.first),
                mib(g.last),
                mib(g.min),
                mib(g.max)
            );
            let _ = writeln!(
                s,
                "| end growth: (last − first) ÷ first | {:+.2}% |",
                g.end_percent
            );
            let _ = writeln!(
                s,
                "| range: (max − min) ÷ first (the verdict's measure) | {:.2}% |",
                g.range_percent
            );
            let _ = writeln!(
                s,
                "| least-squares RSS slope in the window | {:+.1} MiB/hour |",
                g.slope_per_hour / (1024.0 * 1024.0)
            );
        }
        None => {
            let _ = writeln!(s, "| judged window | no sample under load in it |");
        }
    }
    let _ = writeln!(s, "| open fds min / max under load | {fd_min} / {fd_max} |");
    let _ = writeln!(
        s,
        "| **verdict** (range < {MAX_GROWTH_PERCENT}% and 0 lost) | **{}** |",
        if r.passed() { "PASS" } else { "FAIL" }
    );
    s
}

/// Where the soak's CSV goes by default.
pub fn default_csv() -> PathBuf {
    Path::new("soak.csv").to_path_buf()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(t: f64, rss: u64) -> Sample {
        Sample {
            elapsed_s: t,
            stage: Stage::Load,
            rss,
            ..Sample::default()
        }
    }

    #[test]
    fn window_is_the_last_20_minutes_or_two_thirds() {
        assert_eq!(
            default_window(Duration::from_secs(1800)),
            Duration::from_secs(1200)
        );
        assert_eq!(
            default_window(Duration::from_secs(3600)),
            Duration::from_secs(1200)
        );
        assert_eq!(
            default_window(Duration::from_secs(180)),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn growth_is_measured_over_the_window_only() {
        // Warm-up from 100 to 200 in the first third, then 200 → 210 with a dip to 190.
        let mut s = vec![Sample {
            elapsed_s: 0.0,
            stage: Stage::Idle,
            rss: 50,
            ..Sample::default()
        }];
        s.extend([at(10.0, 100), at(20.0, 150), at(30.0, 200), at(40.0, 190)]);
        s.extend([at(60.0, 205), at(90.0, 210)]);
        s.push(Sample {
            elapsed_s: 95.0,
            stage: Stage::Drain,
            rss: 400,
            ..Sample::default()
        });
        let g = growth(&s, Duration::from_secs(90), Duration::from_secs(60)).unwrap();
        assert_eq!(g.from_s, 30.0);
        assert_eq!(
            (g.samples, g.first, g.last, g.min, g.max),
            (4, 200, 210, 190, 210)
        );
        assert!((g.end_percent - 5.0).abs() < 1e-9);
        assert!((g.range_percent - 10.0).abs() < 1e-9);
        assert!(g.slope_per_hour > 0.0);
    }

    #[test]
    fn flat_rss_has_zero_growth_and_shrinking_is_negative() {
        let flat: Vec<Sample> = (0..10).map(|i| at(f64::from(i) * 10.0, 1000)).collect();
        let g = growth(&flat, Duration::from_secs(90), Duration::from_secs(60)).unwrap();
        assert_eq!(
            (g.end_percent, g.range_percent, g.slope_per_hour),
            (0.0, 0.0, 0.0)
        );
        let down = [at(0.0, 1000), at(10.0, 900)];
        let g = growth(&down, Duration::from_secs(10), Duration::from_secs(10)).unwrap();
        assert!((g.end_percent + 10.0).abs() < 1e-9);
        assert!(growth(&[], Duration::from_secs(10), Duration::from_secs(10)).is_none());
    }

    #[test]
    fn verdict_needs_small_range_and_no_loss() {
        let g = |range_percent| Growth {
            from_s: 0.0,
            samples: 2,
            first: 100,
            last: 100,
            min: 100,
            max: 100,
            end_percent: 0.0,
            range_percent,
            slope_per_hour: 0.0,
        };
        let mut r = SoakReport {
            samples: Vec::new(),
            span_bytes: 0.0,
            spans_accepted: 0,
            spans_per_second: 0.0,
            failed_requests: 0,
            first_error: None,
            lost: 0,
            duplicates: 0,
            foreign: 0,
            drain_timed_out: false,
            growth: Some(g(4.9)),
            window: Duration::from_secs(60),
        };
        assert!(r.passed());
        r.growth = Some(g(5.0));
        assert!(!r.passed());
        r.growth = Some(g(1.0));
        r.lost = 1;
        assert!(!r.passed());
        r.lost = 0;
        r.growth = None;
        assert!(!r.passed());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn csv_lines_have_a_field_per_header_column() {
        let s = at(12.0, 1 << 20);
        assert_eq!(
            csv_line(&s).split(',').count(),
            CSV_HEADER.split(',').count()
        );
        assert!(csv_line(&s).starts_with("12.0,load,1048576,1.0,"));
    }
}
