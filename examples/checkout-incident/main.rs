//! The incident demo: plays the five-service checkout flow against a running tracekeeper over
//! OTLP/HTTP — healthy for a while, then the notification service stops consuming
//! `order_confirmed` — and prints what tracekeeper reports: the messages produced vs consumed on
//! the queue and the age of the oldest one nobody consumed (from `/metrics`), the completeness
//! ratio of `checkout POST /checkout` traces, and the kept traces whose missing entries name the
//! consumer (from the sidecar's debug output, when `--sidecar-log` points at it).
//!
//! ```sh
//! cargo run --release -p tracekeeper -- run | tee sidecar.log          # terminal 1
//! cargo run --release --example checkout-incident -- --sidecar-log sidecar.log   # terminal 2
//! ```

#[path = "../common/checkout.rs"]
mod checkout;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use checkout::{Faults, PUBLISH, QUEUE, ROOT, ServiceSpan, SplitMix};
use clap::Parser;
use prost::Message;

/// How long to wait for tracekeeper's health endpoint to answer 200 at start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one HTTP request to tracekeeper.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Kept traces printed in full; the rest are counted.
const MAX_PRINTED_TRACES: usize = 5;
/// Longest sleep of the main loop (it also wakes up for every checkout and consumer).
const LOOP_STEP: Duration = Duration::from_millis(100);
/// How often `/metrics` is read to notice the first signs of the stuck consumer.
const METRICS_POLL: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(about = "Play the stuck-queue checkout incident against a running tracekeeper")]
struct Args {
    /// tracekeeper's OTLP/HTTP endpoint (spans are posted to <endpoint>/v1/traces).
    #[arg(long, default_value = "http://127.0.0.1:4318")]
    otlp: String,
    /// tracekeeper's Prometheus endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8888/metrics")]
    metrics: String,
    /// tracekeeper's health endpoint.
    #[arg(long, default_value = "http://127.0.0.1:13133/")]
    health: String,
    /// tracekeeper's stdout with the debug exporter (`tracekeeper run | tee FILE`): kept traces
    /// are read from it.
    #[arg(long)]
    sidecar_log: Option<PathBuf>,
    /// Checkouts per second.
    #[arg(long, default_value_t = 5)]
    rate: u32,
    /// How long everything works (Go duration).
    #[arg(long, default_value = "20s", value_parser = duration)]
    healthy: Duration,
    /// How long the checkouts go on after the notification consumer stopped.
    #[arg(long, default_value = "60s", value_parser = duration)]
    stopped: Duration,
    /// How often to print what tracekeeper reports.
    #[arg(long, default_value = "5s", value_parser = duration)]
    report_every: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    tracekeeper_guest::config::duration::parse(s)
}

/// One sample of the metrics the demo follows (None: not exported by this tracekeeper).
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    produced: Option<f64>,
    consumed: Option<f64>,
    oldest_unconsumed: Option<f64>,
    completeness_ratio: Option<f64>,
}

/// Reads one sample from Prometheus text: the queue's series and the checkout root's ratio.
fn sample(text: &str) -> Sample {
    let queue = [("messaging_system", QUEUE.0), ("destination", QUEUE.1)];
    let root = [("root_service", ROOT.0), ("root_name", ROOT.1)];
    let mut s = Sample::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, labels, value)) = parse_sample_line(line) else {
            continue;
        };
        let has = |want: &[(&str, &str)]| {
            want.iter()
                .all(|(k, v)| labels.get(*k).is_some_and(|x| x == v))
        };
        match name {
            "tracekeeper_messages_produced_total" if has(&queue) => s.produced = Some(value),
            "tracekeeper_messages_consumed_total" if has(&queue) => s.consumed = Some(value),
            "tracekeeper_oldest_unconsumed_message_age_seconds" if has(&queue) => {
                s.oldest_unconsumed = Some(value)
            }
            "tracekeeper_trace_completeness_ratio" if has(&root) => {
                s.completeness_ratio = Some(value)
            }
            _ => {}
        }
    }
    s
}

/// Splits `name{k="v",...} value` (the Prometheus text format; label values may hold `\"`).
fn parse_sample_line(line: &str) -> Option<(&str, HashMap<String, String>, f64)> {
    let i = line.find(['{', ' '])?;
    let (name, mut rest) = line.split_at(i);
    let mut labels = HashMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut r = body;
        loop {
            r = r.trim_start_matches([',', ' ']);
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = r.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()? {
                        (_, 'n') => value.push('\n'),
                        (_, c) => value.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.trim().to_string(), value);
            r = &after[close + 1..];
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Talks to the running tracekeeper.
struct Tracekeeper {
    http: reqwest::blocking::Client,
    traces_url: String,
    metrics_url: String,
    health_url: String,
}

impl Tracekeeper {
    /// Waits until the health endpoint answers 200.
    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.http.get(&self.health_url).send() {
                Ok(r) if r.status().is_success() => return Ok(()),
                _ if Instant::now() > deadline => bail!(
                    "tracekeeper is not ready at {} after {READY_TIMEOUT:?}; start it first \
                     (cargo run --release -p tracekeeper -- run | tee sidecar.log)",
                    self.health_url
                ),
                _ => std::thread::sleep(LOOP_STEP),
            }
        }
    }

    /// Posts spans as one OTLP/HTTP protobuf request.
    fn send(&self, spans: &[ServiceSpan]) -> anyhow::Result<()> {
        let body = checkout::request(spans).encode_to_vec();
        let response = self
            .http
            .post(&self.traces_url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .with_context(|| format!("POST {}", self.traces_url))?;
        if !response.status().is_success() {
            bail!("POST {}: {}", self.traces_url, response.status());
        }
        Ok(())
    }

    /// The metrics the demo follows (all unknown when /metrics cannot be read).
    fn sample(&self) -> Sample {
        self.http
            .get(&self.metrics_url)
            .send()
            .and_then(|r| r.text())
            .map(|text| sample(&text))
            .unwrap_or_default()
    }
}

/// Follows the sidecar's debug output (`kept trace_id=... missing=[...]`) for this run's traces.
struct KeptTraces {
    reader: Option<BufReader<std::fs::File>>,
    partial: String,
    ours: HashSet<String>,
    printed: usize,
    missing_consumer: usize,
    first: Option<Instant>,
}

impl KeptTraces {
    fn open(path: Option<&PathBuf>) -> anyhow::Result<Self> {
        let reader = match path {
            Some(p) => {
                let mut f = std::fs::File::open(p)
                    .with_context(|| format!("opening the sidecar log {}", p.display()))?;
                // Only what the sidecar prints from now on.
                f.seek(SeekFrom::End(0))?;
                Some(BufReader::new(f))
            }
            None => None,
        };
        Ok(KeptTraces {
            reader,
            partial: String::new(),
            ours: HashSet::new(),
            printed: 0,
            missing_consumer: 0,
            first: None,
        })
    }

    /// Reads the new lines; prints the first kept traces of ours whose consumer is missing.
    fn poll(&mut self, t: impl Fn() -> String) {
        let Some(reader) = self.reader.as_mut() else {
            return;
        };
        while let Ok(n) = reader.read_line(&mut self.partial) {
            if n == 0 || !self.partial.ends_with('\n') {
                break; // wait for the rest of the line
            }
            let line = std::mem::take(&mut self.partial);
            let ours = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("trace_id="))
                .is_some_and(|id| self.ours.contains(id));
            if !ours || !line.contains("\"consumer:") {
                continue;
            }
            self.missing_consumer += 1;
            self.first.get_or_insert_with(Instant::now);
            if self.printed < MAX_PRINTED_TRACES {
                self.printed += 1;
                println!("{}  tracekeeper: {}", t(), line.trim_end());
            }
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn show(v: Option<f64>, decimals: usize, unit: &str) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}{unit}"))
}

/// When each of tracekeeper's signals first showed the stuck consumer: a value beyond anything
/// seen while the consumer worked, first seen after it stopped.
#[derive(Default)]
struct Signals {
    healthy_backlog: f64,
    healthy_age: f64,
    backlog_grew: Option<Instant>,
    age_grew: Option<Instant>,
    ratio_dropped: Option<Instant>,
}

impl Signals {
    /// Takes one sample; `backlog` is produced minus consumed since the demo started.
    fn observe(&mut self, now: Instant, stopped: bool, backlog: Option<f64>, s: &Sample) {
        let (backlog, age) = (backlog.unwrap_or(0.0), s.oldest_unconsumed.unwrap_or(0.0));
        if !stopped {
            self.healthy_backlog = self.healthy_backlog.max(backlog);
            self.healthy_age = self.healthy_age.max(age);
            return;
        }
        if backlog > self.healthy_backlog {
            self.backlog_grew.get_or_insert(now);
        }
        if age > self.healthy_age {
            self.age_grew.get_or_insert(now);
        }
        if s.completeness_ratio.is_some_and(|r| r < 1.0) {
            self.ratio_dropped.get_or_insert(now);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rate == 0 {
        bail!("--rate must be at least 1 checkout per second");
    }
    let tk = Tracekeeper {
        http: reqwest::blocking::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()?,
        traces_url: format!("{}/v1/traces", args.otlp.trim_end_matches('/')),
        metrics_url: args.metrics.clone(),
        health_url: args.health.clone(),
    };
    tk.wait_ready()?;
    let mut kept = KeptTraces::open(args.sidecar_log.as_ref())?;
    let mut rng = SplitMix(unix_nanos() ^ u64::from(std::process::id()));
    // Counters may not start at zero (a sidecar that ran before): show what this run added.
    let base = tk.sample();
    let since_start = |now: Option<f64>, then: Option<f64>| now.map(|n| n - then.unwrap_or(0.0));

    let start = Instant::now();
    let stop_at = start + args.healthy;
    let end_at = stop_at + args.stopped;
    let gap = Duration::from_secs(1) / args.rate;
    let t = || format!("t={:>5.1}s", start.elapsed().as_secs_f64());
    println!(
        "{}  checkout traffic at {}/s; the notification service consumes {} (stops at t={:.0}s)",
        t(),
        args.rate,
        QUEUE.1,
        args.healthy.as_secs_f64()
    );
    let mut next_checkout = start;
    let mut next_poll = start + METRICS_POLL;
    let mut next_report = start + args.report_every;
    let mut consumers: VecDeque<(Instant, Vec<ServiceSpan>)> = VecDeque::new();
    let mut checkouts = 0u64;
    let mut signals = Signals::default();
    let mut announced = false;
    while Instant::now() < end_at {
        let now = Instant::now();
        let stopped = now >= stop_at;
        if now >= next_checkout {
            if stopped && !announced {
                announced = true;
                println!(
                    "{}  the notification service stops consuming {} (its consumer is stuck)",
                    t(),
                    QUEUE.1
                );
            }
            let trace_id = rng.trace_id();
            kept.ours
                .insert(trace_id.iter().map(|b| format!("{b:02x}")).collect());
            let faults = Faults {
                consumer_stopped: stopped,
                ..Faults::default()
            };
            let t0 = unix_nanos();
            let (notification, rest): (Vec<_>, Vec<_>) =
                checkout::checkout_trace(trace_id, &mut rng, t0, &faults)
                    .into_iter()
                    .partition(|s| s.service == "notification");
            tk.send(&rest)?;
            if let Some(last_end) = notification.iter().map(|s| s.span.end_time_unix_nano).max() {
                // The consumer's spans are exported when they end, by another process.
                consumers.push_back((now + Duration::from_nanos(last_end - t0), notification));
            }
            checkouts += 1;
            next_checkout += gap;
        }
        while consumers.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, spans)) = consumers.pop_front() {
                tk.send(&spans)?;
            }
        }
        kept.poll(t);
        if now >= next_poll {
            next_poll += METRICS_POLL;
            let s = tk.sample();
            let produced = since_start(s.produced, base.produced);
            let consumed = since_start(s.consumed, base.consumed);
            let backlog = produced.zip(consumed).map(|(p, c)| p - c);
            signals.observe(now, stopped, backlog, &s);
            if now >= next_report {
                next_report += args.report_every;
                println!(
                    "{}  checkouts {checkouts:>4} | {}/{} produced {} consumed {} oldest \
                     unconsumed {} | completeness {} {} {} | kept with consumer missing {}",
                    t(),
                    QUEUE.0,
                    QUEUE.1,
                    show(produced, 0, ""),
                    show(consumed, 0, ""),
                    show(s.oldest_unconsumed, 1, "s"),
                    ROOT.0,
                    ROOT.1,
                    show(s.completeness_ratio, 2, ""),
                    kept.missing_consumer,
                );
            }
        }
        let wake = [
            Some(next_checkout),
            consumers.front().map(|c| c.0),
            Some(next_poll),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now)
        .min(now + LOOP_STEP);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }

    let after_stop = |i: Option<Instant>| {
        i.map_or_else(
            || "not seen".to_string(),
            |i| {
                format!(
                    "{:>4.1}s after the consumer stopped",
                    (i - stop_at).as_secs_f64()
                )
            },
        )
    };
    println!(
        "\n{checkouts} checkouts sent; the notification consumer stopped at t={:.0}s. First signs:",
        args.healthy.as_secs_f64()
    );
    let mut signs = vec![
        (
            format!(
                "more messages produced than consumed (healthy: at most {:.0})",
                signals.healthy_backlog
            ),
            signals.backlog_grew,
        ),
        (
            format!(
                "oldest unconsumed message older than while healthy ({:.1}s)",
                signals.healthy_age
            ),
            signals.age_grew,
        ),
        (
            format!("completeness ratio of {} {} below 1", ROOT.0, ROOT.1),
            signals.ratio_dropped,
        ),
    ];
    if args.sidecar_log.is_some() {
        signs.push((
            format!(
                "kept traces with `consumer:{PUBLISH}` missing ({})",
                kept.missing_consumer
            ),
            kept.first,
        ));
    }
    let width = signs
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0);
    for (label, at) in signs {
        println!("  {label:<width$}  {}", after_stop(at));
    }
    Ok(())
}
