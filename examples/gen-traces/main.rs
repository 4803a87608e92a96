//! Writes the rule-testing fixtures under `examples/traces/`: recorded checkout traffic as OTLP
//! JSON lines (and protobuf), the sidecar configuration to replay it with, and the decisions
//! expected from that configuration.
//!
//! ```sh
//! cargo run --example gen-traces [-- OUTPUT_DIR]    # default: examples/traces
//! ```
//!
//! The output is deterministic (fixed seeds), so the fixtures in the repository can be checked
//! against a fresh run. The expected decisions are not recorded from the replay: they come from
//! this generator's own model of the fixtures' policies (`errors`, `incomplete`, `baseline`
//! probabilistic by the OpenTelemetry threshold) and completeness rules (root, parents,
//! consumers of producers, the checkout expectations), applied to the spans it knows it sent, so
//! a replay that disagrees points at the guest or at the replay, not at a stale snapshot.

#[path = "../common/checkout.rs"]
mod checkout;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use checkout::{Faults, MS, SECOND, ServiceSpan, SplitMix, checkout_trace, request};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use prost::Message;
use serde::Serialize;

/// Start of every recording: 2025-11-28T00:00:00Z, in Unix ns.
const BASE_TIME: u64 = 1_764_288_000 * SECOND;
/// Each service exports the spans that ended in the last interval (an SDK batch processor).
const EXPORT_INTERVAL: u64 = SECOND;
/// How long after its trace's decision a late span ends.
const LATE_MARGIN: u64 = 5 * SECOND;
/// Sampling percentage of the `baseline` policy in every fixture configuration.
const BASELINE_PERCENT: u64 = 10;
/// 2^56: the OpenTelemetry threshold and randomness range.
const RANDOMNESS_RANGE: u128 = 1 << 56;
/// `consumer_wait` of the fixtures with completeness rules.
const CONSUMER_WAIT_S: u64 = 30;
/// How long a slow consumer leaves a message in the queue: past `decision_wait`, within
/// `consumer_wait`, so its trace is held and then decided complete.
const SLOW_CONSUMER_DELAY: u64 = 15 * SECOND;
/// The spans the checkout expectation requires (name, kind), as in DESIGN.md's example.
const EXPECTED_SPANS: [(&str, Option<SpanKind>); 2] = [
    ("send_email", None),
    (checkout::PROCESS, Some(SpanKind::Consumer)),
];

/// How often (percent of checkouts) each fault happens.
#[derive(Clone, Copy)]
struct FaultRates {
    error: u64,
    lost_root: u64,
    lost_inventory: u64,
    late_audit: u64,
    slow_consumer: u64,
}

/// One recorded fixture.
struct Fixture {
    name: &'static str,
    about: &'static str,
    decision_wait_s: u64,
    seconds: u64,
    checkouts_per_second: u64,
    seed: u64,
    rates: FaultRates,
    /// Also write the recording as length-prefixed protobuf (`NAME.otlp.binpb`).
    protobuf: bool,
    /// Configure the completeness section (consumer_wait, the checkout expectation).
    completeness: bool,
    /// The notification service stops consuming this many seconds into the recording.
    consumer_stops_at_s: Option<u64>,
}

const RATES: FaultRates = FaultRates {
    error: 5,
    lost_root: 3,
    lost_inventory: 3,
    late_audit: 3,
    slow_consumer: 0,
};

const FIXTURES: [Fixture; 3] = [
    Fixture {
        name: "checkout",
        about: "20 s of checkouts at 10/s: errors, lost root spans, lost `reserve stock` spans \
                (orphaned `SELECT stock`), late `audit log` spans, and the rest sampled at 10%.",
        decision_wait_s: 10,
        seconds: 20,
        checkouts_per_second: 10,
        seed: 7,
        rates: RATES,
        protobuf: true,
        completeness: false,
        consumer_stops_at_s: None,
    },
    Fixture {
        name: "sixty-seconds",
        about: "60 s of checkouts at 5/s replayed with a 30 s decision_wait: the virtual clock \
                makes the waits cost no real time.",
        decision_wait_s: 30,
        seconds: 60,
        checkouts_per_second: 5,
        seed: 60,
        rates: RATES,
        protobuf: false,
        completeness: false,
        consumer_stops_at_s: None,
    },
    Fixture {
        name: "stuck-queue",
        about: "The incident: 60 s of checkouts at 5/s; some messages wait 15 s in the queue; \
                after 30 s the notification service stops consuming order_confirmed.",
        decision_wait_s: 10,
        seconds: 60,
        checkouts_per_second: 5,
        seed: 45,
        rates: FaultRates {
            error: 5,
            lost_root: 0,
            lost_inventory: 0,
            late_audit: 0,
            slow_consumer: 10,
        },
        protobuf: false,
        completeness: true,
        consumer_stops_at_s: Some(30),
    },
];

/// One expected decision line (field order is the replay's output order).
#[derive(Serialize)]
struct Line {
    trace_id: String,
    decision: &'static str,
    policy: &'static str,
    completeness: &'static str,
    missing: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OpenTelemetry rejection threshold of a keep at `percent`: round((1 - p) * 2^56).
fn threshold(percent: u64) -> u64 {
    let t = ((100 - u128::from(percent)) * RANDOMNESS_RANGE + 50) / 100;
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// What the fixture policies decide for a trace whose spans seen before its decision are
/// `spans`: `errors` (a span with status ERROR), then `incomplete` (something missing), then
/// `baseline` (randomness = low 56 bits of the trace id, at least the threshold). With
/// `expectations`, a `checkout POST /checkout` root needs the [`EXPECTED_SPANS`].
fn expected(trace_id: [u8; 16], spans: &[&Span], expectations: bool) -> Line {
    let ids: BTreeSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
    let mut missing = BTreeSet::new();
    if !spans.iter().any(|s| s.parent_span_id.is_empty()) {
        missing.insert("root".to_string());
    }
    for s in spans {
        if !s.parent_span_id.is_empty() && !ids.contains(s.parent_span_id.as_slice()) {
            missing.insert(format!("parent:{}", hex(&s.parent_span_id)));
        }
        let consumes =
            |c: &&Span| c.kind == SpanKind::Consumer as i32 && c.parent_span_id == s.span_id;
        if s.kind == SpanKind::Producer as i32 && !spans.iter().any(consumes) {
            missing.insert(format!("consumer:{}", s.name));
        }
    }
    // Every generated span but the orphans descends from the root, so "descendant" is "present".
    let checkout_root = spans
        .iter()
        .any(|s| s.parent_span_id.is_empty() && s.name == checkout::ROOT.1);
    if expectations && checkout_root {
        for (name, kind) in EXPECTED_SPANS {
            let found = spans
                .iter()
                .any(|s| s.name == name && kind.is_none_or(|k| s.kind == k as i32));
            if !found {
                missing.insert(format!("expected:{name}"));
            }
        }
    }
    let error = spans
        .iter()
        .any(|s| s.status.as_ref().map(Status::code) == Some(StatusCode::Error));
    let mut low = [0; 8];
    low[1..].copy_from_slice(&trace_id[9..]);
    let sampled = u64::from_be_bytes(low) >= threshold(BASELINE_PERCENT);
    let (decision, policy) = if error {
        ("sampled", "errors")
    } else if !missing.is_empty() {
        ("sampled", "incomplete")
    } else if sampled {
        ("sampled", "baseline")
    } else {
        ("not_sampled", "")
    };
    Line {
        trace_id: hex(&trace_id),
        decision,
        policy,
        completeness: if missing.is_empty() {
            "complete"
        } else {
            "incomplete"
        },
        missing: missing.into_iter().collect(),
    }
}

/// The sidecar configuration a fixture is replayed with.
fn config(about: &str, decision_wait_s: u64, completeness: bool) -> String {
    let completeness = if completeness {
        format!(
            "  completeness:\n    consumer_wait: {CONSUMER_WAIT_S}s\n    expectations:\n\
             \x20     - root: {{service: {}, name: \"{}\"}}\n\
             \x20       expect: [{{name: {}}}, {{name: {}, kind: CONSUMER}}]\n",
            checkout::ROOT.0,
            checkout::ROOT.1,
            EXPECTED_SPANS[0].0,
            EXPECTED_SPANS[1].0,
        )
    } else {
        String::new()
    };
    format!(
        "# Generated by examples/gen-traces (cargo run --example gen-traces); do not edit.\n\
         # {about}\n\
         # A complete sidecar configuration: the replay passes `processors` to the guest.\n\
         receivers:\n  otlp:\n    protocols:\n      grpc: {{endpoint: 127.0.0.1:4317}}\n\
         processors:\n  tail_sampling:\n    decision_wait: {decision_wait_s}s\n    policies:\n\
         \x20     - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}\n\
         \x20     - {{name: incomplete, type: completeness, completeness: {{incomplete: true}}}}\n\
         \x20     - {{name: baseline, type: probabilistic, probabilistic: {{sampling_percentage: {BASELINE_PERCENT}}}}}\n\
         {completeness}\
         exporters:\n  debug: {{}}\n"
    )
}

/// Groups spans into the requests the services would export: per export interval (by end time),
/// one request per service, in time order.
fn export_requests(spans: Vec<ServiceSpan>) -> Vec<ExportTraceServiceRequest> {
    let mut batches: BTreeMap<(u64, &str), Vec<ServiceSpan>> = BTreeMap::new();
    for s in spans {
        let window = s.span.end_time_unix_nano / EXPORT_INTERVAL;
        batches.entry((window, s.service)).or_default().push(s);
    }
    batches.values().map(|spans| request(spans)).collect()
}

fn write_expected(path: &Path, mut lines: Vec<Line>) -> anyhow::Result<()> {
    lines.sort_by(|a, b| a.trace_id.cmp(&b.trace_id));
    let mut text = String::new();
    for l in &lines {
        text += &serde_json::to_string(l)?;
        text.push('\n');
    }
    write(path, text.as_bytes())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// OTLP JSON lines, one request per line, without the fields that hold their default value (the
/// OTLP JSON encoding lets writers omit them, as the collector's file exporter does).
fn json_lines(requests: &[ExportTraceServiceRequest]) -> anyhow::Result<Vec<u8>> {
    fn omit_defaults(v: &mut serde_json::Value) {
        use serde_json::Value;
        let is_default = |x: &Value| {
            x.is_null() || *x == "" || *x == 0 || x.as_array().is_some_and(Vec::is_empty)
        };
        match v {
            // `stringValue` and its siblings are attribute values: an empty one means something.
            Value::Object(map) => {
                map.retain(|k, x| k.ends_with("Value") || !is_default(x));
                map.values_mut().for_each(omit_defaults);
            }
            Value::Array(items) => items.iter_mut().for_each(omit_defaults),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for r in requests {
        let mut v = serde_json::to_value(r)?;
        omit_defaults(&mut v);
        serde_json::to_writer(&mut out, &v)?;
        out.push(b'\n');
    }
    Ok(out)
}

fn generate(dir: &Path, f: &Fixture) -> anyhow::Result<()> {
    let mut rng = SplitMix(f.seed);
    let mut spans = Vec::new();
    let mut lines = Vec::new();
    let wait = f.decision_wait_s * SECOND;
    let gap = SECOND / f.checkouts_per_second;
    for i in 0..f.seconds * f.checkouts_per_second {
        let t0 = BASE_TIME + i * gap + rng.next_u64() % gap;
        let trace_id = rng.trace_id();
        let late = rng.percent(f.rates.late_audit);
        let slow = rng.percent(f.rates.slow_consumer);
        let stopped = f
            .consumer_stops_at_s
            .is_some_and(|s| t0 >= BASE_TIME + s * SECOND);
        let faults = Faults {
            error: rng.percent(f.rates.error),
            lost_root: rng.percent(f.rates.lost_root),
            lost_inventory: rng.percent(f.rates.lost_inventory),
            consumer_stopped: stopped,
            slow_consumer: slow.then_some(SLOW_CONSUMER_DELAY),
            late_audit: late.then_some(wait + LATE_MARGIN + EXPORT_INTERVAL),
        };
        let trace = checkout_trace(trace_id, &mut rng, t0, &faults);
        // The audit span ends after the trace was decided: the guest never sees it.
        let on_time: Vec<&Span> = trace
            .iter()
            .map(|s| &s.span)
            .filter(|s| s.name != "audit log")
            .collect();
        lines.push(expected(trace_id, &on_time, f.completeness));
        spans.extend(trace);
    }
    let requests = export_requests(spans);
    write(
        &dir.join(format!("{}.yaml", f.name)),
        config(f.about, f.decision_wait_s, f.completeness).as_bytes(),
    )?;
    write(
        &dir.join(format!("{}.otlp.jsonl", f.name)),
        &json_lines(&requests)?,
    )?;
    if f.protobuf {
        let mut out = Vec::new();
        for r in &requests {
            let len = u32::try_from(r.encoded_len()).context("request too large")?;
            out.extend_from_slice(&len.to_be_bytes());
            r.encode(&mut out)?;
        }
        write(&dir.join(format!("{}.otlp.binpb", f.name)), &out)?;
    }
    write_expected(&dir.join(format!("{}.expected.jsonl", f.name)), lines)
}

/// The README's first trace: one span whose parent never arrives, as a single protobuf request.
fn first_trace(dir: &Path) -> anyhow::Result<()> {
    let trace_id = [
        0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6,
        0x0c,
    ];
    let span = Span {
        trace_id: trace_id.to_vec(),
        span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74],
        parent_span_id: vec![0xaa; 8],
        name: "charge card".to_string(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: BASE_TIME,
        end_time_unix_nano: BASE_TIME + 100 * MS,
        ..Default::default()
    };
    let line = expected(trace_id, &[&span], false);
    let req = request(&[ServiceSpan {
        service: "checkout",
        span,
    }]);
    let about = "The README's first trace: one `charge card` span whose parent never arrives.";
    write(
        &dir.join("first-trace.yaml"),
        config(about, 10, false).as_bytes(),
    )?;
    write(&dir.join("first-trace.otlp.binpb"), &req.encode_to_vec())?;
    write_expected(&dir.join("first-trace.expected.jsonl"), vec![line])
}

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("examples/traces"), PathBuf::from);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in &FIXTURES {
        generate(&dir, f).with_context(|| format!("fixture {}", f.name))?;
    }
    first_trace(&dir)?;
    eprintln!("wrote the fixtures to {}", dir.display());
    Ok(())
}
