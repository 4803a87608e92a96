//! Heap held by the sampler's own bookkeeping (pending traces, due queue, completeness) at a
//! steady state, measured natively with a counting allocator: the default policies, 5 000 new
//! traces of 10 spans per second (1 in 20 with a producer and its consumer, 1 in 100 with an
//! error), `decision_wait` 10 s, so 50 000 traces pending once warm; simulated time, one batch
//! of 10 traces every 2 ms. Pointers are 8 bytes here and 4 in the wasm32 guest, so the
//! figures are an upper bound of the component's.
//!
//! Run: `cargo run --release -p tracekeeper-guest --example pending_memory`.

// A global allocator is an unsafe trait; it only forwards to the system allocator and counts.
#![allow(unsafe_code, clippy::unwrap_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tracekeeper_abi::{BatchWriter, SpanFixed, SpanId, TraceId};
use tracekeeper_guest::{Interest, Sampler};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

fn add(n: usize) {
    LIVE.fetch_add(n as isize, Ordering::Relaxed);
}

fn sub(n: usize) {
    LIVE.fetch_sub(n as isize, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size);
        sub(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SEC;
const SPANS: u64 = 10;
const BATCH_TRACES: u64 = 10;
/// Simulated time between batches: 5 000 traces per second.
const STEP_NS: u64 = 2_000_000;
const SECONDS: u64 = 60;

const DEFAULT: &str = r#"{"tail_sampling": {"decision_wait": "10s", "policies": [
    {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    {"name": "incomplete", "type": "completeness", "completeness": {"incomplete": true}},
    {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}}
]}}"#;

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

/// Traces `first..first + traces` as the host writes them: a root, children of the root, and
/// in one trace of 20 a producer (span 9) with its consumer child (span 10).
fn batch(interest: &Interest, first: u64, traces: u64, now: u64) -> Vec<u8> {
    let mut w = BatchWriter::new();
    let (res, mut rs) = w.begin_resource();
    for (i, k) in interest.resource_attributes.iter().enumerate() {
        if k == "service.name" {
            w.attr_indexed(&mut rs, i as u16).str(b"checkout");
        }
    }
    w.end_section(rs);
    for t in first..first + traces {
        let messaging = t % 20 == 0;
        for s in 1..=SPANS {
            let (kind, parent) = match s {
                1 => (2, 0u64),
                9 if messaging => (4, 1),
                10 if messaging => (5, 9),
                _ => (2, 1),
            };
            let fixed = SpanFixed {
                trace_id: trace_id(t),
                span_id: SpanId(s.to_be_bytes()),
                parent_span_id: SpanId(parent.to_be_bytes()),
                start_unix_nano: now,
                end_unix_nano: now + 1000,
                encoded_len: 361,
                resource: res,
                kind,
                status_code: if t % 100 == 0 { 2 } else { 0 },
                flags: 1,
            };
            w.begin_span(&fixed, b"GET /api/cart", b"");
            let mut attrs = w.begin_section();
            if kind >= 4 {
                for (i, k) in interest.span_attributes.iter().enumerate() {
                    let value: &[u8] = match k.as_str() {
                        "messaging.system" => b"kafka",
                        "messaging.destination.name" => b"orders",
                        "messaging.operation.type" if kind == 4 => b"send",
                        "messaging.operation.type" => b"process",
                        _ => continue,
                    };
                    w.attr_indexed(&mut attrs, i as u16).str(value);
                }
            }
            w.end_section(attrs);
            let links = w.begin_section();
            w.end_section(links);
            let events = w.begin_section();
            w.end_section(events);
        }
    }
    w.finish()
}

fn main() {
    let (mut sampler, interest) = Sampler::configure(DEFAULT).unwrap();
    println!(
        "PendingTrace {} B inline; after configure {} B live",
        std::mem::size_of::<tracekeeper_guest::trace::PendingTrace>(),
        LIVE.load(Ordering::Relaxed)
    );
    let steps_per_sec = SEC / STEP_NS;
    let mut now = T0;
    for step in 0..SECONDS * steps_per_sec {
        let spans = batch(&interest, step * BATCH_TRACES, BATCH_TRACES, now);
        sampler.ingest(&spans, now).unwrap();
        now += STEP_NS;
        sampler.tick(now);
        if step % (5 * steps_per_sec) == 0 {
            let live = LIVE.load(Ordering::Relaxed);
            let pending = sampler.pending_traces();
            println!(
                "t = {:>2} s: {pending:>6} traces pending, {live:>9} B live, {:.0} B per pending trace",
                step / steps_per_sec,
                live as f64 / pending.max(1) as f64
            );
        }
    }
}
