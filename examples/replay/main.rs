//! Rule testing: replays recorded OTLP traces through the sampler guest on a virtual clock and
//! prints the decision on every trace (DESIGN.md §5). It is also the smallest example of
//! embedding the guest in your own Rust program with the `tracekeeper` host library:
//!
//! 1. parse the sidecar's YAML ([`Config`]) and load the guest ([`app::load_guest`]);
//! 2. split each OTLP request into spans ([`parse_request`]) and build the guest's span views
//!    ([`ViewBuilder`]), with only the attributes the guest's `interest` asked for;
//! 3. call `ingest`, `tick`, `decide-now` and `flush` with a time you choose, and read the
//!    answers with [`DecisionReader`].
//!
//! ```sh
//! cargo run --release --example replay -- --config examples/traces/checkout.yaml \
//!     examples/traces/checkout.otlp.jsonl [--format table] [--expect FILE]
//! ```
//!
//! Input files are OTLP JSON lines (one `ExportTraceServiceRequest` per line: the collector's
//! and tracekeeper's file exporter format), a stream of protobuf requests each preceded by its
//! length as 4 big-endian bytes (the collector's file exporter with `format: proto`), or one
//! protobuf request. Requests are replayed in file order.
//!
//! The clock is virtual: each request "arrives" at the latest end time of its spans (never
//! earlier than the previous one), and the guest's `tick` is called at every due time the clock
//! passes, so a 30 s `decision_wait` costs no real time. When the recording ends the clock keeps
//! running until every trace is decided, then `flush` decides whatever is left. As in the
//! sidecar, spans of a trace that was already decided are late: they are not shown to the guest
//! (it would see a new trace without a root) but counted. `num_traces` is honoured like the
//! sidecar does it: beyond it, the oldest traces are decided early with `decide-now`.
//!
//! Output: one JSON line per trace, sorted by trace id, its `missing` entries sorted:
//! `{"trace_id":"<32 hex>","decision":"sampled|not_sampled|dropped","policy":"<name or empty>",
//! "completeness":"complete|incomplete","missing":[...]}`. With `--expect FILE` (the same lines,
//! in any order) nothing is printed on a match; on a mismatch a diff is printed and the exit
//! status is 1. Errors (unreadable input, a guest fault) exit with 2. A summary goes to stderr.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use tracekeeper::app;
use tracekeeper::config::{Config, DEFAULT_CONFIG};
use tracekeeper::guest::GuestInstance;
use tracekeeper::otlp::json::json_to_protobuf;
use tracekeeper::otlp::request::parse_request;
use tracekeeper::otlp::view::{Interest, ViewBuilder};
use tracekeeper::worker::DEFAULT_NUM_TRACES;
use tracekeeper_abi::{DecisionReader, TraceId};

/// Bytes of one trace id in a `decide-now` list.
const TRACE_ID_LEN: usize = 16;
/// Length of the big-endian size prefix before each message of a protobuf stream.
const FRAME_PREFIX_LEN: usize = 4;
/// Exit status when the decisions differ from `--expect`.
const EXIT_MISMATCH: u8 = 1;
/// Exit status on any error.
const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(about = "Replay recorded OTLP traces through the tracekeeper guest on a virtual clock")]
struct Args {
    /// The sidecar's configuration file (its `processors` go to the guest); default: the
    /// embedded default configuration.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A guest component instead of the one the configuration names (or the embedded one).
    #[arg(long)]
    guest: Option<PathBuf>,
    /// `json`: one JSON line per trace; `table`: aligned columns for people.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Compare with these expected lines instead of printing; exit 1 with a diff on a mismatch.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Recorded traces: OTLP JSON lines, or OTLP protobuf.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Table,
}

/// The decision on one trace, as printed (field order is the output order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    trace_id: String,
    decision: String,
    policy: String,
    completeness: String,
    missing: Vec<String>,
}

impl Line {
    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The replay state: one guest instance and the virtual clock.
struct Replay {
    guest: GuestInstance,
    interest: Interest,
    /// Virtual now (Unix ns).
    now: u64,
    /// When the guest said the next trace is due (0: nothing pending).
    next_due: u64,
    /// Traces shown to the guest and not decided yet, and their order of arrival.
    pending: HashSet<TraceId>,
    arrival: VecDeque<TraceId>,
    num_traces: usize,
    /// Every decision so far, by trace id (so the output is sorted).
    decided: BTreeMap<TraceId, Line>,
    spans: u64,
    rejected_spans: u64,
    late_spans: u64,
    decided_early: u64,
    first_time: Option<u64>,
}

impl Replay {
    /// Replays one encoded `ExportTraceServiceRequest`.
    fn request(&mut self, body: &[u8]) -> anyhow::Result<()> {
        let request = parse_request(body)?;
        self.rejected_spans += request.rejected; // invalid ids, refused as the sidecar does
        let Some(arrival) = request.spans.iter().map(|s| s.info.end_unix_nano).max() else {
            return Ok(());
        };
        // The request arrives when its last span ended; the clock never runs backwards.
        let arrival = arrival.max(self.now);
        self.first_time.get_or_insert(arrival);
        self.advance_to(arrival)?;

        // One span-view batch per request, as the sidecar's receivers build them.
        let mut view = ViewBuilder::new();
        for span in &request.spans {
            let id = span.info.trace_id;
            self.spans += 1;
            if self.decided.contains_key(&id) {
                self.late_spans += 1;
                continue;
            }
            if self.pending.insert(id) {
                self.arrival.push_back(id);
            }
            let group = request
                .groups
                .get(span.group)
                .ok_or_else(|| anyhow!("span refers to a missing resource group"))?;
            view.add(&self.interest, group, span.bytes, &span.info);
        }
        if view.span_count() > 0 {
            let answer = self.guest.ingest(view.as_bytes(), arrival)?;
            self.apply(&answer)?;
        }
        self.enforce_num_traces()
    }

    /// Moves the clock to `t`, calling `tick` at every due time on the way.
    fn advance_to(&mut self, t: u64) -> anyhow::Result<()> {
        while self.next_due != 0 && self.next_due <= t {
            let due = self.next_due.max(self.now);
            self.now = due;
            let answer = self.guest.tick(due)?;
            self.apply(&answer)?;
            if self.next_due != 0 && self.next_due <= due {
                bail!(
                    "after tick({due}) the guest still asks for a tick at {}",
                    self.next_due
                );
            }
        }
        self.now = t;
        Ok(())
    }

    /// Decides the oldest traces early when more than `num_traces` are pending (as the sidecar).
    fn enforce_num_traces(&mut self) -> anyhow::Result<()> {
        let over = self.pending.len().saturating_sub(self.num_traces);
        if over == 0 {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(over * TRACE_ID_LEN);
        while ids.len() < over * TRACE_ID_LEN {
            match self.arrival.pop_front() {
                Some(id) if self.pending.contains(&id) => ids.extend_from_slice(&id.0),
                Some(_) => {}
                None => break,
            }
        }
        self.decided_early += (ids.len() / TRACE_ID_LEN) as u64;
        let answer = self.guest.decide_now(&ids, self.now)?;
        self.apply(&answer)
    }

    /// Lets the clock run on after the last request until every trace is decided (the guest may
    /// also ask for ticks to refresh its metrics: those stop mattering here), then flushes.
    fn finish(&mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() && self.next_due != 0 {
            self.advance_to(self.next_due.max(self.now))?;
        }
        let answer = self.guest.flush(self.now)?;
        self.apply(&answer)?;
        if !self.pending.is_empty() {
            bail!(
                "the guest left {} traces undecided after flush",
                self.pending.len()
            );
        }
        Ok(())
    }

    /// Reads a decision batch: records every decision and the next due time.
    fn apply(&mut self, answer: &[u8]) -> anyhow::Result<()> {
        let reader = DecisionReader::new(answer).context("malformed decision batch")?;
        self.next_due = reader.next_due();
        for record in reader {
            let r = record.context("malformed decision batch")?;
            if !self.pending.remove(&r.trace_id) {
                bail!(
                    "the guest decided trace {} which is not pending",
                    r.trace_id
                );
            }
            let mut missing: Vec<String> = r.missing().map(str::to_string).collect();
            missing.sort();
            let line = Line {
                trace_id: r.trace_id.to_string(),
                decision: r.decision.as_str().to_string(),
                policy: r.policy.to_string(),
                completeness: r.completeness.as_str().to_string(),
                missing,
            };
            self.decided.insert(r.trace_id, line);
        }
        Ok(())
    }
}

/// The encoded requests of one input file.
fn read_requests(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        // OTLP JSON lines.
        let lines = data.split(|&b| b == b'\n').enumerate();
        return lines
            .filter(|(_, line)| !line.trim_ascii().is_empty())
            .map(|(i, line)| {
                json_to_protobuf(line).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))
            })
            .collect();
    }
    // A length-prefixed stream when the prefixes add up to the file exactly, else one request
    // (a request starts with a field tag, which read as a length is larger than any such file).
    let mut frames = Vec::new();
    let mut rest = data.as_slice();
    while let Some((prefix, tail)) = rest.split_first_chunk::<FRAME_PREFIX_LEN>() {
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > tail.len() {
            break;
        }
        let (frame, tail) = tail.split_at(len);
        frames.push(frame.to_vec());
        rest = tail;
    }
    if rest.is_empty() && !frames.is_empty() {
        Ok(frames)
    } else {
        Ok(vec![data])
    }
}

/// Prints the decisions as aligned columns, then how many traces each policy decided.
fn print_table(out: &mut impl Write, lines: &[&Line]) -> std::io::Result<()> {
    let width = |f: fn(&Line) -> usize, title: &str| {
        lines
            .iter()
            .map(|l| f(l))
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let dw = width(|l| l.decision.len(), "DECISION");
    let pw = width(|l| l.policy.len(), "POLICY");
    let cw = width(|l| l.completeness.len(), "COMPLETENESS");
    writeln!(
        out,
        "{:32}  {:dw$}  {:pw$}  {:cw$}  MISSING",
        "TRACE_ID", "DECISION", "POLICY", "COMPLETENESS"
    )?;
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for l in lines {
        let policy = if l.policy.is_empty() { "-" } else { &l.policy };
        *counts.entry((&l.decision, policy)).or_default() += 1;
        let row = format!(
            "{:32}  {:dw$}  {policy:pw$}  {:cw$}  {}",
            l.trace_id,
            l.decision,
            l.completeness,
            l.missing.join(", ")
        );
        writeln!(out, "{}", row.trim_end())?;
    }
    let counts: Vec<String> = counts
        .iter()
        .map(|((decision, policy), n)| format!("{n} {decision} ({policy})"))
        .collect();
    writeln!(out, "\n{} traces: {}", lines.len(), counts.join(", "))
}

/// Compares with the expected lines; prints a diff and returns false on a mismatch.
fn compare(path: &Path, got: &BTreeMap<TraceId, Line>) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut expected = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let mut line: Line = serde_json::from_str(raw)
            .with_context(|| format!("{}:{}: not a decision line", path.display(), i + 1))?;
        line.missing.sort();
        let id = line.trace_id.clone();
        if expected.insert(id.clone(), line).is_some() {
            bail!("{}:{}: trace {id} is listed twice", path.display(), i + 1);
        }
    }
    let got: BTreeMap<&str, &Line> = got.values().map(|l| (l.trace_id.as_str(), l)).collect();
    let ids: BTreeSet<&str> = expected
        .keys()
        .map(String::as_str)
        .chain(got.keys().copied())
        .collect();
    let (mut changed, mut absent, mut extra) = (0, 0, 0);
    let mut diff = String::new();
    for id in ids {
        match (expected.get(id), got.get(id)) {
            (Some(e), Some(g)) if e == *g => {}
            (Some(e), Some(g)) => {
                changed += 1;
                diff += &format!("- {}\n+ {}\n", e.json(), g.json());
            }
            (Some(e), None) => {
                absent += 1;
                diff += &format!("- {}\n", e.json());
            }
            (None, Some(g)) => {
                extra += 1;
                diff += &format!("+ {}\n", g.json());
            }
            (None, None) => {}
        }
    }
    if diff.is_empty() {
        eprintln!("ok: {} decisions match {}", got.len(), path.display());
        return Ok(true);
    }
    println!("--- expected {}\n+++ replayed\n{diff}", path.display());
    println!(
        "{changed} decided differently, {absent} expected but not seen, {extra} not expected \
         ({} traces replayed, {} expected)",
        got.len(),
        expected.len()
    );
    Ok(false)
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let text = match &args.config {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => DEFAULT_CONFIG.to_string(),
    };
    let config = Config::parse(&text).map_err(|e| anyhow!("configuration: {e}"))?;
    let module = app::load_guest(&config, args.guest.as_deref())?;
    let (guest, interest) = module.instantiate(&config.guest_json())?;
    let num_traces = config.host_tail_sampling()?.num_traces;
    let mut replay = Replay {
        guest,
        interest,
        now: 0,
        next_due: 0,
        pending: HashSet::new(),
        arrival: VecDeque::new(),
        num_traces: num_traces.map_or(DEFAULT_NUM_TRACES, |n| n as usize).max(1),
        decided: BTreeMap::new(),
        spans: 0,
        rejected_spans: 0,
        late_spans: 0,
        decided_early: 0,
        first_time: None,
    };
    let mut requests = 0;
    for file in &args.files {
        for (i, body) in read_requests(file)?.iter().enumerate() {
            requests += 1;
            replay
                .request(body)
                .with_context(|| format!("{}: request {}", file.display(), i + 1))?;
        }
    }
    let last_arrival = replay.now;
    replay.finish().context("at the end of the recording")?;

    let matched = match &args.expect {
        Some(path) => compare(path, &replay.decided)?,
        None => {
            let lines: Vec<&Line> = replay.decided.values().collect();
            let mut out = std::io::stdout().lock();
            match args.format {
                Format::Json => {
                    for l in &lines {
                        writeln!(out, "{}", l.json())?;
                    }
                }
                Format::Table => print_table(&mut out, &lines)?,
            }
            out.flush()?;
            true
        }
    };
    let recorded = last_arrival.saturating_sub(replay.first_time.unwrap_or(last_arrival));
    let kept = replay
        .decided
        .values()
        .filter(|l| l.decision == "sampled")
        .count();
    eprintln!(
        "replayed {} spans in {requests} requests, {:.1} s of recorded time: {} traces, {kept} \
         sampled, {} late spans, {} spans rejected, {} traces decided early (num_traces); {:.3} s",
        replay.spans,
        recorded as f64 / 1e9,
        replay.decided.len(),
        replay.late_spans,
        replay.rejected_spans,
        replay.decided_early,
        started.elapsed().as_secs_f64()
    );
    Ok(matched)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_MISMATCH),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
