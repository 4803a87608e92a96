//! Gives malloc's free memory back to the system, every second while busy (glibc).
//!
//! glibc gives each busy thread a heap of its own (an arena) and returns free memory from the
//! middle of one only when asked to (`malloc_trim`). The receivers' threads churn request bodies
//! and their buffers; now and then one of their arenas is left holding tens of MB that nothing
//! uses, and RSS keeps them. Measured at 50 000 spans/s (BENCHMARKS.md, "Memory: the high
//! readings"): one receiver arena held 1.6–29.5 MB free, and RSS over idle read 218–247 MiB over
//! eleven runs; after one `malloc_trim(0)`, 223–227 MiB. Elsewhere than on glibc this does
//! nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// How often malloc's free memory is given back while traces are buffered. Between two trims
/// the free memory that allocations touch again grows RSS by up to about 12 MiB a second at
/// 50 000 spans/s (a sawtooth that drops at each trim; BENCHMARKS.md, "Memory: the high
/// readings"), so the interval bounds that excess: every 5 s it reached 30–60 MiB, 0.2–0.3×
/// of the buffered spans' size.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// How often while nothing is buffered: an idle sidecar wakes less often. (`malloc_trim`'s
/// result cannot tell idleness: it reports memory given back whenever a free chunk spans a
/// page, given back before or not.)
pub const IDLE_TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// When to trim next, with `traces_in_memory` traces buffered.
pub fn next_interval(traces_in_memory: i64) -> Duration {
    if traces_in_memory > 0 {
        TRIM_INTERVAL
    } else {
        IDLE_TRIM_INTERVAL
    }
}

/// Trims until `shutdown`, [`TRIM_INTERVAL`] apart while traces are buffered and
/// [`IDLE_TRIM_INTERVAL`] apart while none are; each trim runs on the blocking pool (it takes
/// each arena's lock in turn while it walks that arena's free lists).
pub async fn run(shutdown: Shutdown, metrics: Arc<Metrics>) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut wait = next_interval(metrics.traces_in_memory.get());
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = Instant::now();
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            released,
            "malloc_trim"
        );
        wait = next_interval(metrics.traces_in_memory.get());
    }
}

/// Returns the free memory of every malloc arena to the system; `true` when some was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() -> bool {
    // SAFETY: `malloc_trim` has no preconditions: glibc takes each arena's lock itself, and it
    // only releases pages that lie wholly inside free chunks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Elsewhere than on glibc: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// 64 MiB freed between live allocations stays resident until a trim gives it back.
    #[test]
    fn a_trim_gives_back_free_memory_in_the_middle_of_a_heap() {
        const BLOCK: usize = 32 << 10; // under glibc's mmap threshold: from the arena
        const BLOCKS: usize = 2048; // 64 MiB freed, as many kept
        // On a thread of its own. Every other block stays allocated, so that the freed ones
        // are holes between live blocks wherever the arena put them (a thread may be handed an
        // arena that other tests' threads used before, with holes of its own): freeing them
        // cannot shrink the heap from its top, and only a trim gives their pages back.
        let (held, released) = std::thread::spawn(|| {
            let mut blocks: Vec<Option<Vec<u8>>> = (0..2 * BLOCKS)
                .map(|i| Some(vec![i as u8 | 1; BLOCK]))
                .collect();
            let before = rss_kib();
            for b in blocks.iter_mut().step_by(2) {
                drop(std::hint::black_box(b.take()));
            }
            let freed = rss_kib();
            trim();
            let trimmed = rss_kib();
            drop(std::hint::black_box(blocks));
            (
                freed.saturating_sub(before.saturating_sub(64 << 10)),
                freed.saturating_sub(trimmed),
            )
        })
        .join()
        .unwrap();
        // Freeing alone left most of the 64 MiB resident; the trim released at least half.
        assert!(
            held > 32 << 10,
            "freeing returned it already: {held} KiB left"
        );
        assert!(released > 32 << 10, "the trim released only {released} KiB");
    }
}

#[cfg(test)]
mod interval_tests {
    use super::*;

    #[test]
    fn trims_often_only_while_traces_are_buffered() {
        assert_eq!(next_interval(1), TRIM_INTERVAL);
        assert_eq!(next_interval(0), IDLE_TRIM_INTERVAL);
        assert!(TRIM_INTERVAL < IDLE_TRIM_INTERVAL);
    }
}
