//! Heap held by the decision cache (`decision_cache`: remembered decisions, so that late spans
//! follow their trace) when full, measured with a counting allocator: the sizes of DESIGN.md's
//! configuration (100 000 kept, 1 000 000 not kept), filled the way the worker fills it at the
//! benchmark's load (1 trace in 10 kept by the probabilistic policy, 1 in 100 by the errors
//! policy), tags built for each kept trace and shared between equal ones as the worker does
//! ([`TagsInterner`]).
//!
//! Run: `cargo bench -p tracekeeper --bench cache_memory`.

// A global allocator is an unsafe trait; it only forwards to the system allocator and counts.
#![allow(unsafe_code, clippy::unwrap_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tracekeeper::buffer::{Cached, DecisionCache};
use tracekeeper::tags::{TagsInterner, TraceTags};
use tracekeeper_abi::{Completeness, ThresholdOp, TraceId};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEPT_CAP: usize = 100_000;
const NOT_KEPT_CAP: usize = 1_000_000;
/// Decisions inserted: twice what fills the not-kept side, so both sides have churned.
const DECISIONS: u64 = 2 * NOT_KEPT_CAP as u64 * 10 / 9;

/// A distinct, well-spread id per `n` (an odd multiplier is a bijection on u128).
fn trace_id(n: u64) -> TraceId {
    TraceId(
        u128::from(n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            .to_be_bytes(),
    )
}

/// The tags of a kept trace, as the worker builds them from a decision record.
fn tags(policy: &str) -> TraceTags {
    let threshold = if policy == "baseline" {
        // 10%: reject the lowest 90% of the 56-bit randomness.
        ThresholdOp::Raise((1u64 << 56) / 10 * 9)
    } else {
        ThresholdOp::Keep
    };
    TraceTags::new(
        policy.to_string(),
        Some(Completeness::Complete),
        Vec::new(),
        threshold,
        false,
        Vec::new(),
    )
}

fn main() {
    let before = LIVE.load(Ordering::Relaxed);
    let mut cache = DecisionCache::new(KEPT_CAP, NOT_KEPT_CAP);
    let mut interner = TagsInterner::default();
    let (mut kept, mut not_kept) = (0u64, 0u64);
    for n in 0..DECISIONS {
        let id = trace_id(n);
        let c = match n % 100 {
            0 => Cached::Kept(interner.intern(tags("errors"))),
            x if x % 10 == 5 => Cached::Kept(interner.intern(tags("baseline"))),
            _ => Cached::NotKept,
        };
        match c {
            Cached::Kept(_) => kept += 1,
            Cached::NotKept => not_kept += 1,
        }
        cache.insert(id, c);
    }
    let live = (LIVE.load(Ordering::Relaxed) - before) as f64;
    let remembered = (kept.min(KEPT_CAP as u64) + not_kept.min(NOT_KEPT_CAP as u64)) as f64;
    // Every remembered decision is still found.
    let last = DECISIONS - 1;
    assert!(cache.get(&trace_id(last)).is_some());
    println!(
        "decision cache ({KEPT_CAP} kept, {NOT_KEPT_CAP} not kept) after {DECISIONS} decisions \
         ({kept} kept): {:.1} MB live, {:.1} B per remembered decision",
        live / 1e6,
        live / remembered
    );
}
