//! Sharding: traces are mapped to workers by trace id, each worker with its own buffer and guest
//! instance; the per-worker figures that the process-wide gauges and health add up.
//!
//! Every span of a trace reaches the worker its trace id maps to ([`shard_of`]), so each trace
//! is buffered and decided by one guest instance. What crosses traces, a consumer span that
//! links to a producer in another trace, is routed by the receivers: the consumer's view goes
//! to its own trace's worker with only the links into that worker's traces, and to each other
//! worker its links point into, with only those links (the guest's `links` call). So every link
//! is matched by the instance that holds (or will hold) the span it points to.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use tracekeeper_abi::TraceId;

use crate::telemetry::{Health, Metrics, QueueLabel};

/// Most workers (`guest.workers`); also the widest link-target mask of a span.
pub const MAX_WORKERS: u32 = 64;
/// Most workers chosen by default.
pub const MAX_DEFAULT_WORKERS: u32 = 8;
/// CPUs per default worker. The worker thread does about a third of the host's work per span
/// (buffer, guest, decisions, tags, export encoding; 34% of the samples in the profile of
/// BENCHMARKS.md), the receivers' tokio threads the rest, so one worker keeps up with about
/// three CPUs of receivers. More workers than that cost CPU without adding throughput: on 2
/// CPUs, as fast as accepted, 2 workers took 1.10-1.12x the CPU per span of 1 and accepted
/// 10-11% fewer spans/s (two runs); at 50 000 spans/s the two were within noise (0.98x). See
/// BENCHMARKS.md, "Workers" (`tracekeeper-bench run --workers 2 --baseline ...`).
pub const CPUS_PER_DEFAULT_WORKER: u32 = 3;

/// The worker (0-based, below `count`) that owns trace `id`. Trace ids are usually random, but
/// not always (sequential test ids, ids from a counter): both halves are mixed and multiplied
/// (Fibonacci hashing) so that such ids spread evenly too.
#[inline]
pub fn shard_of(id: &TraceId, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&id.0[..8]);
    lo.copy_from_slice(&id.0[8..]);
    let x = u64::from_le_bytes(hi).rotate_left(29) ^ u64::from_le_bytes(lo);
    let h = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // The high 32 bits, scaled to [0, count) without a division's bias toward low indices.
    (((h >> 32) * u64::from(count)) >> 32) as u32
}

/// The default number of workers on this machine: see [`default_workers_for`].
pub fn default_workers() -> u32 {
    default_workers_for(
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(1))
            .unwrap_or(1),
    )
}

/// The default number of workers for `cpus` CPUs: one per [`CPUS_PER_DEFAULT_WORKER`] CPUs
/// (rounded up), at least 1 and at most [`MAX_DEFAULT_WORKERS`].
pub fn default_workers_for(cpus: u32) -> u32 {
    cpus.div_ceil(CPUS_PER_DEFAULT_WORKER)
        .clamp(1, MAX_DEFAULT_WORKERS)
}

#[derive(Debug, Default)]
struct Slot {
    traces: AtomicI64,
    bytes: AtomicI64,
    ingest_queue: AtomicI64,
    guest_memory: AtomicI64,
}

/// Each worker's figures, added up into the process-wide gauges
/// (`tracekeeper_traces_in_memory`, `tracekeeper_buffered_span_bytes`,
/// `tracekeeper_queue_length{queue="ingest"}`, `tracekeeper_guest_memory_bytes`,
/// `tracekeeper_guest_degraded`) and health.
#[derive(Debug)]
pub struct ShardStates {
    slots: Vec<Slot>,
    /// Why each worker's guest is degraded, while it is.
    degraded: Mutex<Vec<Option<String>>>,
}

impl ShardStates {
    /// State for `count` workers.
    pub fn new(count: u32) -> Self {
        let n = count.max(1) as usize;
        ShardStates {
            slots: (0..n).map(|_| Slot::default()).collect(),
            degraded: Mutex::new(vec![None; n]),
        }
    }

    /// Number of workers.
    pub fn count(&self) -> u32 {
        self.slots.len() as u32
    }

    fn slot(&self, shard: u32) -> Option<&Slot> {
        self.slots.get(shard as usize)
    }

    /// Stores worker `shard`'s figure in `field` of its slot; returns the sum over workers.
    fn store_and_sum(&self, shard: u32, field: fn(&Slot) -> &AtomicI64, value: usize) -> i64 {
        if let Some(s) = self.slot(shard) {
            field(s).store(value as i64, Ordering::Relaxed);
        }
        self.slots
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0i64, i64::saturating_add)
    }

    /// Worker `shard` holds `traces` traces of `bytes` bytes; updates the totals.
    pub fn set_buffer(&self, metrics: &Metrics, shard: u32, traces: usize, bytes: usize) {
        let t = self.store_and_sum(shard, |s| &s.traces, traces);
        let b = self.store_and_sum(shard, |s| &s.bytes, bytes);
        metrics.traces_in_memory.set(t);
        metrics.buffered_bytes.set(b);
    }

    /// Worker `shard`'s guest instance holds `bytes` of linear memory (0 while it has none);
    /// updates the total.
    pub fn set_guest_memory(&self, metrics: &Metrics, shard: u32, bytes: usize) {
        let total = self.store_and_sum(shard, |s| &s.guest_memory, bytes);
        metrics.guest_memory.set(total);
    }

    /// Worker `shard`'s ingest queue holds `len` batches; updates the total.
    pub fn set_ingest_queue(&self, metrics: &Metrics, shard: u32, len: usize) {
        let total = self.store_and_sum(shard, |s| &s.ingest_queue, len);
        metrics
            .queue_length
            .get_or_create(&QueueLabel { queue: "ingest" })
            .set(total);
    }

    /// Worker `shard`'s guest is degraded (`Some(reason)`) or not; updates
    /// `tracekeeper_guest_degraded` (1 while any worker is) and the reason health reports.
    pub fn set_degraded(
        &self,
        metrics: &Metrics,
        health: &Health,
        shard: u32,
        reason: Option<String>,
    ) {
        let mut all = self
            .degraded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = all.get_mut(shard as usize) {
            *slot = reason;
        }
        let several = all.len() > 1;
        let reasons: Vec<String> = all
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.as_ref().map(|r| {
                    if several {
                        format!("worker {i}: {r}")
                    } else {
                        r.clone()
                    }
                })
            })
            .collect();
        metrics.guest_degraded.set(i64::from(!reasons.is_empty()));
        health.set_degraded(if reasons.is_empty() {
            None
        } else {
            Some(reasons.join("; "))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_workers_take_one_per_three_cpus_within_bounds() {
        let got: Vec<u32> = [0, 1, 2, 3, 4, 6, 7, 16, 24, 25, 128]
            .iter()
            .map(|&c| default_workers_for(c))
            .collect();
        assert_eq!(got, vec![1, 1, 1, 1, 2, 2, 3, 6, 8, 8, 8]);
    }

    #[test]
    fn every_id_maps_below_the_count_and_the_sole_worker_takes_all() {
        for n in 0..1000u64 {
            let mut b = [0u8; 16];
            b[8..].copy_from_slice(&n.to_be_bytes());
            let id = TraceId(b);
            assert_eq!(shard_of(&id, 1), 0);
            assert_eq!(shard_of(&id, 0), 0);
            assert!(shard_of(&id, 3) < 3);
            assert!(shard_of(&id, MAX_WORKERS) < MAX_WORKERS);
        }
    }

    #[test]
    fn sequential_and_random_looking_ids_spread_evenly() {
        let count = 4u32;
        for make in [
            // A counter in the low bytes.
            (|n: u64| {
                let mut b = [0u8; 16];
                b[8..].copy_from_slice(&n.to_be_bytes());
                TraceId(b)
            }) as fn(u64) -> TraceId,
            // A counter in the high bytes.
            |n: u64| {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&n.to_le_bytes());
                TraceId(b)
            },
            // Pseudo-random (splitmix64).
            |n: u64| {
                let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&z.to_le_bytes());
                b[8..].copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
                TraceId(b)
            },
        ] {
            let mut per = [0u32; 4];
            for n in 0..40_000u64 {
                per[shard_of(&make(n), count) as usize] += 1;
            }
            for c in per {
                assert!((9_000..=11_000).contains(&c), "{per:?}");
            }
        }
    }

    #[test]
    fn totals_add_up_and_degraded_names_the_worker() {
        let metrics = Metrics::new();
        let health = Health::default();
        let s = ShardStates::new(2);
        s.set_buffer(&metrics, 0, 3, 300);
        s.set_buffer(&metrics, 1, 4, 400);
        assert_eq!(metrics.traces_in_memory.get(), 7);
        assert_eq!(metrics.buffered_bytes.get(), 700);
        s.set_guest_memory(&metrics, 0, 1 << 20);
        s.set_guest_memory(&metrics, 1, 2 << 20);
        s.set_guest_memory(&metrics, 0, 0);
        assert_eq!(metrics.guest_memory.get(), 2 << 20);
        s.set_degraded(&metrics, &health, 1, Some("trap".into()));
        assert_eq!(metrics.guest_degraded.get(), 1);
        assert_eq!(health.degraded().as_deref(), Some("worker 1: trap"));
        s.set_degraded(&metrics, &health, 0, None);
        assert_eq!(
            metrics.guest_degraded.get(),
            1,
            "worker 1 is still degraded"
        );
        s.set_degraded(&metrics, &health, 1, None);
        assert_eq!(metrics.guest_degraded.get(), 0);
        assert_eq!(health.degraded(), None);
    }
}
