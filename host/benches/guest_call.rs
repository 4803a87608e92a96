//! What the sandbox costs: re-creating a guest instance (what the host does after every guest
//! fault, before replaying the pending traces) and the overhead of the limits on each call.
//!
//! All with the embedded default guest and the embedded default configuration (errors,
//! incomplete, 10% baseline), each measured with the sandbox limits on (deadline by epoch
//! interruption, memory cap through the store limiter; the defaults of `guest:`) and off
//! (`GuestLimits::unlimited`: no epoch checks compiled in, no memory cap; the store keeps its
//! limiter, which wasmtime consults only when memory grows):
//! * `recreate/<limits>`: instantiate the precompiled, pre-linked component and `configure` it;
//! * `tick/<limits>`: a `tick` with nothing due (the fixed cost of one call);
//! * `ingest/<limits>`: one batch of 100 spans (10 traces of 10 spans) per call, the clock moved
//!   past `decision_wait` each time so every call also decides the previous batch's traces;
//!   reported per span.
//! * `ingest_at_scale/<limits>`: the same batch with new trace ids each call, into a sampler
//!   holding [`PENDING`] pending traces (the runner's steady state at 50 000 spans/s: ten new
//!   traces per 100-span request, `decision_wait` 10 s), the clock moved by [`AT_SCALE_STEP`]
//!   per call so that each call also decides the ten traces that fall due. The batches are
//!   built outside the measured time. Per span.
//!
//! `tick/native` and `ingest/native` run the same calls on the same guest logic compiled
//! natively (the `tracekeeper-guest` crate as a library, no component, no copy across the
//! boundary): the ratio of `limits_on` to `native` is what running the sampler as a wasm
//! component costs.
//!
//! Run: `cargo bench -p tracekeeper --bench guest_call`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tracekeeper::config::{Config, DEFAULT_CONFIG};
use tracekeeper::guest::{GuestLimits, GuestModule};
use tracekeeper_abi::{BatchWriter, SpanFixed, SpanId, TraceId};
use tracekeeper_guest::Sampler;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SEC;
/// Spans per trace in the ingest batch.
const SPANS: u64 = 10;
/// Traces per ingest batch (100 spans, as the DESIGN's reference requests).
const TRACES: u64 = 10;
/// How far the clock moves per ingest call: past the default config's `decision_wait` (10s).
const STEP: u64 = 11 * SEC;
/// Pending traces held in `ingest_at_scale`: the runner's reference load (50 000 spans/s in
/// 100-span requests of 10 traces) over the default `decision_wait` of 10 s.
const PENDING: u64 = 50_000;
/// How far the clock moves per `ingest_at_scale` call: `decision_wait` over the calls it
/// takes to hold `PENDING` traces (10 s / 5 000 calls), so that a call's traces fall due
/// `PENDING / TRACES` calls later.
const AT_SCALE_STEP: u64 = 10 * SEC / (PENDING / TRACES);

fn guest_config() -> String {
    Config::parse(DEFAULT_CONFIG).unwrap().guest_json()
}

fn limits() -> [(&'static str, GuestLimits); 2] {
    [
        ("limits_on", GuestLimits::default()),
        ("limits_off", GuestLimits::unlimited()),
    ]
}

/// A span-view batch as the host writes it for the default guest's interest
/// (`service.name` only): one resource, `TRACES` traces of `SPANS` spans, one error span.
fn batch() -> Vec<u8> {
    batch_of(0)
}

/// [`batch`] with trace ids of their own for each `generation` (generation 0 is `batch()`).
fn batch_of(generation: u64) -> Vec<u8> {
    let mut w = BatchWriter::new();
    let (resource, mut s) = w.begin_resource();
    w.attr_indexed(&mut s, 0).str(b"checkout");
    w.end_section(s);
    for t in 0..TRACES {
        let k = generation * TRACES + t;
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&(k + 1).to_be_bytes());
        trace_id[8..].copy_from_slice(&(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes());
        for n in 0..SPANS {
            let parent = if n == 0 { 0 } else { 1 };
            let fixed = SpanFixed {
                trace_id: TraceId(trace_id),
                span_id: SpanId((n + 1).to_be_bytes()),
                parent_span_id: SpanId(u64::to_be_bytes(parent)),
                start_unix_nano: T0 + n,
                end_unix_nano: T0 + n + 1_000_000,
                encoded_len: 366,
                resource,
                kind: if n == 0 { 2 } else { 1 },
                status_code: if t == 0 && n == SPANS - 1 { 2 } else { 0 },
                flags: 1,
            };
            w.begin_span(&fixed, format!("span {n}").as_bytes(), b"");
            for _ in 0..3 {
                let s = w.begin_section();
                w.end_section(s);
            }
        }
    }
    w.finish()
}

fn recreate(c: &mut Criterion) {
    let config = guest_config();
    let mut g = c.benchmark_group("recreate");
    for (name, limits) in limits() {
        let module = GuestModule::load(None, limits).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| module.instantiate(&config).unwrap());
        });
    }
    g.finish();
}

fn tick(c: &mut Criterion) {
    let config = guest_config();
    let mut g = c.benchmark_group("tick");
    for (name, limits) in limits() {
        let module = GuestModule::load(None, limits).unwrap();
        let (mut instance, _) = module.instantiate(&config).unwrap();
        let mut now = T0;
        g.bench_function(name, |b| {
            b.iter(|| {
                now += 1;
                instance.tick(now).unwrap()
            });
        });
    }
    let (mut sampler, _) = Sampler::configure(&config).unwrap();
    let mut now = T0;
    g.bench_function("native", |b| {
        b.iter(|| {
            now += 1;
            sampler.tick(now)
        });
    });
    g.finish();
}

fn ingest(c: &mut Criterion) {
    let config = guest_config();
    let batch = batch();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(SPANS * TRACES));
    for (name, limits) in limits() {
        let module = GuestModule::load(None, limits).unwrap();
        let (mut instance, _) = module.instantiate(&config).unwrap();
        let mut now = T0;
        g.bench_function(name, |b| {
            b.iter(|| {
                now += STEP;
                instance.ingest(&batch, now).unwrap()
            });
        });
    }
    let (mut sampler, _) = Sampler::configure(&config).unwrap();
    let mut now = T0;
    g.bench_function("native", |b| {
        b.iter(|| {
            now += STEP;
            sampler.ingest(&batch, now).unwrap()
        });
    });
    g.finish();
}

/// Decision records in a decision batch.
fn decisions(bytes: &[u8]) -> usize {
    tracekeeper_abi::DecisionReader::new(bytes).unwrap().count()
}

/// Feeds `call` the batches of generations `1..`, a clock step apart, until the first ones have
/// fallen due; returns the last generation fed. Checks that the last call decided about a
/// batch's worth of traces, so that the bench measures the steady state it claims.
fn fill(mut call: impl FnMut(&[u8], u64) -> Vec<u8>) -> u64 {
    let generations = PENDING / TRACES + 2;
    let mut last = Vec::new();
    for g in 1..=generations {
        last = call(&batch_of(g), T0 + g * AT_SCALE_STEP);
    }
    let decided = decisions(&last);
    assert!(
        (1..=2 * TRACES as usize).contains(&decided),
        "a call at scale decided {decided} traces"
    );
    generations
}

/// Measures `call` on the batches of the generations after `generation`, each built outside
/// the measured time, the clock a step further each time.
fn bench_steady(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut generation: u64,
    mut call: impl FnMut(&[u8], u64) -> Vec<u8>,
) {
    g.bench_function(name, |b| {
        b.iter_batched(
            || {
                generation += 1;
                (batch_of(generation), T0 + generation * AT_SCALE_STEP)
            },
            |(batch, now)| call(&batch, now),
            criterion::BatchSize::SmallInput,
        );
    });
}

fn ingest_at_scale(c: &mut Criterion) {
    let config = guest_config();
    let mut g = c.benchmark_group("ingest_at_scale");
    g.throughput(Throughput::Elements(SPANS * TRACES));
    g.sample_size(30);
    for (name, limits) in limits() {
        let module = GuestModule::load(None, limits).unwrap();
        let (mut instance, _) = module.instantiate(&config).unwrap();
        let generation = fill(|b, now| instance.ingest(b, now).unwrap());
        bench_steady(&mut g, name, generation, |b, now| {
            instance.ingest(b, now).unwrap()
        });
    }
    let (mut sampler, _) = Sampler::configure(&config).unwrap();
    let generation = fill(|b, now| sampler.ingest(b, now).unwrap());
    let pending = sampler.pending_traces() as u64;
    assert!(
        (PENDING..=PENDING + TRACES).contains(&pending),
        "{pending} traces pending"
    );
    bench_steady(&mut g, "native", generation, |b, now| {
        sampler.ingest(b, now).unwrap()
    });
    g.finish();
}

criterion_group!(benches, recreate, tick, ingest, ingest_at_scale);
criterion_main!(benches);
