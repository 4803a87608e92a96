//! When pending traces are due: entries of (due time, trace id) with lazy deletion, earliest
//! first. An entry is current only while the trace is pending with that due time; the sampler
//! skips the others when they reach the front, and [`DueQueue::compact`] drops them when they
//! pile up.
//!
//! Each entry is pushed at `now` plus a fixed delay of its [`Lane`] (the decision wait, the
//! shorter wait once the root arrives, a hold for consumers, a release), so within a lane due
//! times arrive in order while the clock moves forward: a lane is a FIFO, which pops in
//! constant time from memory it reads in order. An entry due before the last one of its lane
//! (the clock stepped back) goes to a min-heap instead, as every entry did before, and the
//! earliest of the fronts comes out first; entries due at the same time come out in the order
//! they were pushed within a lane. With one heap for everything, popping the entries of 50 000
//! pending traces was the guest's third-largest cost in a profile at 50 000 spans/s: each pop
//! sifted through a 1.2 MB heap at random.

use core::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use tracekeeper_abi::TraceId;

/// Stale entries tolerated per live trace before [`DueQueue::compact`] rebuilds the queue.
pub const STALE_FACTOR: usize = 2;
/// Stale entries always tolerated (no rebuild for small queues).
pub const STALE_SLACK: usize = 1024;

/// Why an entry is due when it is: entries of one lane are due in the order they are pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A new trace, due `decision_wait` after its first span.
    Wait = 0,
    /// A trace whose root arrived, due `decision_wait_after_root_received` after it.
    AfterRoot = 1,
    /// A trace held for the consumers of its producers, `consumer_wait` past its due time.
    Hold = 2,
    /// A held trace whose producers were all consumed, due now.
    Release = 3,
}

const LANES: usize = 4;

/// The due times of pending traces, earliest first.
#[derive(Debug, Default)]
pub struct DueQueue {
    /// Per [`Lane`], entries pushed in due order (each due no earlier than the one before).
    lanes: [VecDeque<(u64, TraceId)>; LANES],
    /// Entries due before the last one of their lane when they were pushed.
    out_of_order: BinaryHeap<Reverse<(u64, TraceId)>>,
}

/// Where the earliest entry is.
#[derive(Clone, Copy)]
enum Front {
    Lane(usize),
    Heap,
}

impl DueQueue {
    /// An empty queue.
    pub fn new() -> Self {
        DueQueue::default()
    }

    /// Schedules `trace` at `due`. An earlier entry for the same trace becomes stale.
    pub fn push(&mut self, lane: Lane, due: u64, trace: TraceId) {
        let fifo = &mut self.lanes[lane as usize];
        match fifo.back() {
            Some(&(last, _)) if due < last => self.out_of_order.push(Reverse((due, trace))),
            _ => fifo.push_back((due, trace)),
        }
    }

    /// The earliest entry and where it is (ties go to the smaller id, then to a lane).
    fn front(&self) -> Option<((u64, TraceId), Front)> {
        let mut best = self.out_of_order.peek().map(|Reverse(e)| (*e, Front::Heap));
        for (i, fifo) in self.lanes.iter().enumerate() {
            if let Some(&e) = fifo.front()
                && best.is_none_or(|(b, _)| e <= b)
            {
                best = Some((e, Front::Lane(i)));
            }
        }
        best
    }

    /// The earliest entry, current or stale.
    pub fn peek(&self) -> Option<(u64, TraceId)> {
        self.front().map(|(e, _)| e)
    }

    /// Removes the earliest entry.
    pub fn pop(&mut self) -> Option<(u64, TraceId)> {
        match self.front()?.1 {
            Front::Lane(i) => self.lanes[i].pop_front(),
            Front::Heap => self.out_of_order.pop().map(|Reverse(e)| e),
        }
    }

    /// Entries, current and stale.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum::<usize>() + self.out_of_order.len()
    }

    /// True when no entry is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops stale entries when they outnumber `live` traces by more than the tolerance.
    pub fn compact(&mut self, live: usize, is_current: impl Fn(u64, &TraceId) -> bool) {
        let limit = live
            .saturating_mul(STALE_FACTOR)
            .saturating_add(STALE_SLACK);
        if self.len() > limit {
            for fifo in &mut self.lanes {
                fifo.retain(|(due, id)| is_current(*due, id));
            }
            self.out_of_order
                .retain(|Reverse((due, id))| is_current(*due, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_compaction() {
        let mut q = DueQueue::new();
        q.push(Lane::Wait, 30, TraceId([3; 16]));
        q.push(Lane::Wait, 10, TraceId([1; 16]));
        q.push(Lane::AfterRoot, 20, TraceId([2; 16]));
        assert_eq!(q.peek(), Some((10, TraceId([1; 16]))));
        assert_eq!(q.pop(), Some((10, TraceId([1; 16]))));
        assert_eq!(q.pop(), Some((20, TraceId([2; 16]))));
        for i in 0..(STALE_SLACK as u64 + 10) {
            q.push(Lane::Hold, 100 + i, TraceId([9; 16]));
        }
        q.compact(1, |due, _| due == 30);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(), Some((30, TraceId([3; 16]))));
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }

    /// Pushes in any order, to any lane, come out sorted by due time, whichever part holds
    /// each entry; and the usual pattern (each lane in order) keeps the heap empty.
    #[test]
    fn mixed_pushes_pop_in_due_order() {
        let mut q = DueQueue::new();
        let mut pushed = Vec::new();
        let mut x: u64 = 7;
        let mut now = 1_000u64;
        for i in 0..4_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // The clock moves forward, now and then a step back.
            now = if x >> 60 == 0 { now - 10 } else { now + 1 };
            let (lane, due) = match (x >> 40) % 4 {
                0 => (Lane::Wait, now + 1_000),
                1 => (Lane::AfterRoot, now + 200),
                2 => (Lane::Hold, now + 5_000),
                _ => (Lane::Release, now),
            };
            let id = TraceId(u128::from(i).to_be_bytes());
            q.push(lane, due, id);
            pushed.push((due, id));
            if i % 3 == 0 {
                // Pops interleaved with pushes: always the earliest left.
                let popped = q.pop();
                let earliest = pushed.iter().min().copied();
                assert_eq!(popped, earliest);
                pushed.retain(|e| Some(*e) != popped);
            }
        }
        assert!(!q.out_of_order.is_empty());
        assert_eq!(q.len(), pushed.len());
        pushed.sort();
        let mut out = Vec::new();
        while let Some(e) = q.pop() {
            out.push(e);
        }
        assert_eq!(out, pushed);

        // Without clock steps nothing goes to the heap.
        let mut q = DueQueue::new();
        for now in 0..1_000u64 {
            let id = TraceId(u128::from(now).to_be_bytes());
            q.push(Lane::Wait, now + 1_000, id);
            q.push(Lane::AfterRoot, now + 200, id);
            q.push(Lane::Release, now, id);
        }
        assert!(q.out_of_order.is_empty());
        assert_eq!(q.pop(), Some((0, TraceId(0u128.to_be_bytes()))));
    }

    /// Entries due at the same time come out in the order they were pushed within a lane.
    #[test]
    fn ties_within_a_lane_keep_their_order() {
        let mut q = DueQueue::new();
        for b in [5u8, 1, 9] {
            q.push(Lane::Wait, 10, TraceId([b; 16]));
        }
        let order: Vec<u8> = std::iter::from_fn(|| q.pop())
            .map(|(_, id)| id.0[0])
            .collect();
        assert_eq!(order, [5, 1, 9]);
    }
}
