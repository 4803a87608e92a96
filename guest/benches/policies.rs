//! Policy evaluation per trace, for the embedded default configuration (errors, incomplete,
//! 10% baseline) and for the OpenTelemetry Collector's own test configuration
//! (`../shared/peer-data/tailsampling/tail_sampling_config.yaml`: 13 policies of every kind,
//! attribute and OTTL predicates, `and` and `composite`).
//!
//! On the native build of the guest's logic, the policy engine alone:
//! * `engine_observe/<config>`: the span predicates (attributes, trace state and flags, OTTL)
//!   over one batch of 100 spans (10 traces of 10 spans, written as the host writes them, with
//!   the attributes the policies read); reported per span;
//! * `engine_decide/<config>`: every policy and the final decision on 1000 observed traces;
//!   reported per trace;
//!
//! and, for context, the whole sampler (completeness bookkeeping included):
//! * `sampler_ingest/<config>`: `ingest` of the same batch, per span;
//! * `sampler_decide/<config>`: `flush` of 1000 pending traces (completeness check, policies,
//!   decision records), per trace.
//!
//! Run: `cargo bench -p tracekeeper-guest --bench policies`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tracekeeper_abi::{BatchReader, BatchWriter, Completeness, Record, SpanFixed, SpanId, TraceId};
use tracekeeper_guest::policy::{Engine, TraceFacts};
use tracekeeper_guest::trace::PendingTrace;
use tracekeeper_guest::{Interest, ProcessorsConfig, Sampler};

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SEC;
/// Spans per trace.
const SPANS: u64 = 10;
/// Traces per ingested batch (100 spans, as the DESIGN's reference requests).
const BATCH_TRACES: u64 = 10;
/// Traces decided per `decide` iteration.
const DECIDE_TRACES: u64 = 1000;

const DEFAULT: &str = r#"{"tail_sampling": {"decision_wait": "10s", "policies": [
    {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    {"name": "incomplete", "type": "completeness", "completeness": {"incomplete": true}},
    {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}}
]}}"#;

/// The peer test configuration as the guest receives it (JSON of `processors`).
fn peer_config() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/peer-data/tailsampling/tail_sampling_config.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the peer test configuration {} is needed for this benchmark: {e}",
            path.display()
        )
    });
    let value: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    value.to_string()
}

fn trace_id(n: u64) -> TraceId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    b[8..].copy_from_slice(
        &(n ^ 0x5bd1_e995)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9)
            .to_be_bytes(),
    );
    TraceId(b)
}

/// Writes `traces` complete traces of [`SPANS`] spans as the host would for `interest`: every
/// span carries ten unrelated string attributes (not sent, as the host filters by interest)
/// and, when asked for, the peer configuration's keys (`key1` = 75, `key2` = "value3",
/// `key4` = false, `test_attr_key_1`, and one event).
fn batch(interest: &Interest, first: u64, traces: u64) -> Vec<u8> {
    let mut w = BatchWriter::new();
    let (res, mut rs) = w.begin_resource();
    for (i, k) in interest.resource_attributes.iter().enumerate() {
        if k == "service.name" {
            w.attr_indexed(&mut rs, i as u16).str(b"checkout");
        }
    }
    w.end_section(rs);
    for t in first..first + traces {
        for s in 1..=SPANS {
            let fixed = SpanFixed {
                trace_id: trace_id(t),
                span_id: SpanId(s.to_be_bytes()),
                parent_span_id: SpanId(if s == 1 { 0u64 } else { 1 }.to_be_bytes()),
                start_unix_nano: T0 + s * 1_000_000,
                end_unix_nano: T0 + s * 2_000_000,
                encoded_len: 366,
                resource: res,
                kind: 2,
                status_code: 1,
                flags: 1,
            };
            w.begin_span(&fixed, b"GET /api/cart", b"");
            let mut attrs = w.begin_section();
            for (i, k) in interest.span_attributes.iter().enumerate() {
                let i = i as u16;
                match k.as_str() {
                    "key1" => w.attr_indexed(&mut attrs, i).int(75),
                    "key2" => w.attr_indexed(&mut attrs, i).str(b"value3"),
                    "key4" => w.attr_indexed(&mut attrs, i).bool(false),
                    "test_attr_key_1" => w.attr_indexed(&mut attrs, i).str(b"other"),
                    _ => {}
                }
            }
            w.end_section(attrs);
            let links = w.begin_section();
            w.end_section(links);
            let mut events = w.begin_section();
            if interest.events {
                w.event(&mut events, b"test_span_event_name", T0);
                let mut ea = w.begin_section();
                if let Some(i) = interest
                    .span_attributes
                    .iter()
                    .position(|k| k == "test_event_attr_key_2")
                {
                    w.attr_indexed(&mut ea, i as u16)
                        .str(b"test_event_attr_val_1");
                }
                w.end_section(ea);
            }
            w.end_section(events);
        }
    }
    w.finish()
}

/// Feeds `batch` (traces of [`SPANS`] consecutive spans) to the engine, recording into
/// `traces` (one per trace of the batch).
fn observe(engine: &mut Engine, batch: &[u8], traces: &mut [PendingTrace]) {
    let mut scope = engine.begin_batch();
    let mut n = 0usize;
    for record in BatchReader::new(batch).unwrap() {
        match record.unwrap() {
            Record::Resource(r) => engine.observe_resource(&mut scope, &r).unwrap(),
            Record::Span(span) => {
                let t = &mut traces[n / SPANS as usize];
                t.add_span(&span.fixed, span.trace_state, T0);
                engine
                    .observe_span(&mut scope, &span, &mut t.matches)
                    .unwrap();
                n += 1;
            }
        }
    }
}

fn bench_engine(c: &mut Criterion, label: &str, config: &str) {
    let (_, interest) = Sampler::configure(config).unwrap();
    let ts = ProcessorsConfig::from_json(config).unwrap().tail_sampling;
    // The sampler's interest already holds the engine's keys: the indices agree.
    let mut engine = Engine::build(&ts, &mut interest.clone(), "processors.tail_sampling").unwrap();
    let one_batch = batch(&interest, 0, BATCH_TRACES);
    let mut g = c.benchmark_group("engine_observe");
    g.throughput(Throughput::Elements(BATCH_TRACES * SPANS));
    g.bench_function(label, |b| {
        b.iter_batched_ref(
            || {
                (0..BATCH_TRACES)
                    .map(|_| PendingTrace::new(T0, T0))
                    .collect::<Vec<_>>()
            },
            |traces| observe(&mut engine, &one_batch, traces),
            BatchSize::SmallInput,
        );
    });
    g.finish();

    let mut traces: Vec<PendingTrace> = Vec::new();
    for i in 0..DECIDE_TRACES / BATCH_TRACES {
        let mut chunk: Vec<PendingTrace> = (0..BATCH_TRACES)
            .map(|_| PendingTrace::new(T0, T0))
            .collect();
        observe(
            &mut engine,
            &batch(&interest, i * BATCH_TRACES, BATCH_TRACES),
            &mut chunk,
        );
        traces.extend(chunk);
    }
    let mut g = c.benchmark_group("engine_decide");
    g.throughput(Throughput::Elements(DECIDE_TRACES));
    let mut now = T0;
    g.bench_function(label, |b| {
        b.iter(|| {
            now += SEC;
            let mut kept = 0u32;
            for (i, t) in traces.iter().enumerate() {
                let facts = TraceFacts {
                    trace_id: trace_id(i as u64),
                    trace: t,
                    completeness: Completeness::Complete,
                    now,
                };
                kept += u32::from(
                    engine.decide(&facts).0.decision == tracekeeper_abi::Decision::Sampled,
                );
            }
            black_box(kept)
        });
    });
    g.finish();
}

fn bench_config(c: &mut Criterion, label: &str, config: &str) {
    bench_engine(c, label, config);
    let (_, interest) = Sampler::configure(config).unwrap();
    let one_batch = batch(&interest, 0, BATCH_TRACES);
    let mut g = c.benchmark_group("sampler_ingest");
    g.throughput(Throughput::Elements(BATCH_TRACES * SPANS));
    g.bench_function(label, |b| {
        b.iter_batched_ref(
            || Sampler::configure(config).unwrap().0,
            |s| s.ingest(&one_batch, T0).unwrap(),
            BatchSize::SmallInput,
        );
    });
    g.finish();

    let batches: Vec<Vec<u8>> = (0..DECIDE_TRACES / BATCH_TRACES)
        .map(|i| batch(&interest, i * BATCH_TRACES, BATCH_TRACES))
        .collect();
    let mut g = c.benchmark_group("sampler_decide");
    g.throughput(Throughput::Elements(DECIDE_TRACES));
    g.bench_function(label, |b| {
        b.iter_batched_ref(
            || {
                let mut s = Sampler::configure(config).unwrap().0;
                for b in &batches {
                    s.ingest(b, T0).unwrap();
                }
                s
            },
            |s| {
                let out = s.flush(T0 + SEC);
                assert_eq!(s.pending_traces(), 0);
                out
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

fn policies(c: &mut Criterion) {
    bench_config(c, "default", DEFAULT);
    let peer = format!(r#"{{"tail_sampling": {}}}"#, {
        let v: serde_json::Value = serde_json::from_str(&peer_config()).unwrap();
        v["tail_sampling"].to_string()
    });
    bench_config(c, "peer", &peer);
}

criterion_group!(benches, policies);
criterion_main!(benches);
