//! Gives the memory that malloc holds free back to the system every few seconds (glibc).
//!
//! glibc gives each busy thread a heap of its own (an arena) and returns free memory from the
//! middle of one only when asked to (`malloc_trim`). The receivers' threads churn request bodies
//! and their buffers; now and then one of their arenas is left holding tens of MB that nothing
//! uses, and RSS keeps them. Measured at 50 000 spans/s (BENCHMARKS.md, "Memory: the high
//! readings"): one receiver arena held 1.6–29.5 MB free, and RSS over idle read 218–247 MiB over
//! eleven runs; after one `malloc_trim(0)`, 223–227 MiB. Elsewhere than on glibc this does
//! nothing.

use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;

/// How often malloc's free memory is given back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Trims every [`TRIM_INTERVAL`] until `shutdown`; each trim runs on the blocking pool (it
/// takes each arena's lock in turn while it walks that arena's free lists).
pub async fn run(shutdown: Shutdown) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + TRIM_INTERVAL, TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            released,
            "malloc_trim"
        );
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
