//! When pending traces are due: a min-heap of (due time, trace id) with lazy deletion. An entry
//! is current only while the trace is pending with that due time; the sampler skips the others
//! when they reach the top, and [`DueQueue::compact`] drops them when they pile up.

use core::cmp::Reverse;
use std::collections::BinaryHeap;

use tracekeeper_abi::TraceId;

/// Stale entries tolerated per live trace before [`DueQueue::compact`] rebuilds the heap.
pub const STALE_FACTOR: usize = 2;
/// Stale entries always tolerated (no rebuild for small heaps).
pub const STALE_SLACK: usize = 1024;

/// The due times of pending traces, earliest first.
#[derive(Debug, Default)]
pub struct DueQueue {
    heap: BinaryHeap<Reverse<(u64, TraceId)>>,
}

impl DueQueue {
    /// An empty queue.
    pub fn new() -> Self {
        DueQueue::default()
    }

    /// Schedules `trace` at `due`. An earlier entry for the same trace becomes stale.
    pub fn push(&mut self, due: u64, trace: TraceId) {
        self.heap.push(Reverse((due, trace)));
    }

    /// The earliest entry, current or stale.
    pub fn peek(&self) -> Option<(u64, TraceId)> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    /// Removes the earliest entry.
    pub fn pop(&mut self) -> Option<(u64, TraceId)> {
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// Entries, current and stale.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no entry is left.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Drops stale entries when they outnumber `live` traces by more than the tolerance.
    pub fn compact(&mut self, live: usize, is_current: impl Fn(u64, &TraceId) -> bool) {
        let limit = live
            .saturating_mul(STALE_FACTOR)
            .saturating_add(STALE_SLACK);
        if self.heap.len() > limit {
            self.heap.retain(|Reverse((due, id))| is_current(*due, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_compaction() {
        let mut q = DueQueue::new();
        q.push(30, TraceId([3; 16]));
        q.push(10, TraceId([1; 16]));
        q.push(20, TraceId([2; 16]));
        assert_eq!(q.peek(), Some((10, TraceId([1; 16]))));
        assert_eq!(q.pop(), Some((10, TraceId([1; 16]))));
        assert_eq!(q.pop(), Some((20, TraceId([2; 16]))));
        for i in 0..(STALE_SLACK as u64 + 10) {
            q.push(100 + i, TraceId([9; 16]));
        }
        q.compact(1, |due, _| due == 30);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(), Some((30, TraceId([3; 16]))));
        assert!(q.is_empty());
    }
}
