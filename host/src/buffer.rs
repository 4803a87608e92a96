//! The trace buffer (span bytes held until their trace is decided) and the decision cache
//! (what was decided, so late spans follow their trace).

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use tracekeeper_abi::TraceId;

use smallvec::SmallVec;

use crate::arena::{ChunkArena, Segment, SegmentSpans, Segments};
use crate::otlp::request::Group;
use crate::tags::TraceTags;

/// The spans of one trace, copied out of their requests so a request's memory is freed as soon
/// as it is processed. The bytes are in chunks shared with other traces ([`crate::arena`]); a
/// removed entry keeps its pieces of them alive until it is dropped.
#[derive(Debug, Default)]
pub struct TraceEntry {
    segments: Segments,
    /// Most traces reference one group: it is held inline, like the first segment, so a trace
    /// from one request costs one allocation (its boxed entry) besides its span bytes.
    groups: SmallVec<[Arc<Group>; 1]>,
    spans: usize,
}

/// Most groups one trace may reference; further groups share the last slot's index space by
/// being appended (u16 is plenty: a trace with 65 535 distinct resource/scope pairs is absurd).
const MAX_GROUPS_PER_TRACE: usize = u16::MAX as usize;

impl TraceEntry {
    /// The index of `group` in this trace's groups, adding it if new.
    fn group_index(&mut self, group: &Arc<Group>) -> u16 {
        let g = match self.groups.iter().rposition(|g| Arc::ptr_eq(g, group)) {
            Some(i) => i,
            None if self.groups.len() < MAX_GROUPS_PER_TRACE => {
                // Past the inline one: one more slot, then double.
                if self.groups.len() == self.groups.capacity() {
                    self.groups.reserve_exact(self.groups.len().max(1));
                }
                self.groups.push(Arc::clone(group));
                self.groups.len() - 1
            }
            // Fall back to an equal group already held, else the last one (never reached with
            // real traffic; keeps the span rather than dropping it).
            None => self
                .groups
                .iter()
                .position(|g| **g == **group)
                .unwrap_or(self.groups.len() - 1),
        };
        u16::try_from(g).unwrap_or(u16::MAX - 1)
    }

    /// Number of spans.
    pub fn len(&self) -> usize {
        self.spans
    }

    /// True when no span is held.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Bytes of the entry's lists (segments and groups) outside the entry itself.
    fn bookkeeping(&self) -> usize {
        spilled_bytes(&self.segments) + spilled_bytes(&self.groups)
    }

    /// This trace's share of the memory held: its span bytes with their record headers, plus
    /// the entry and its lists. The buffer's [`TraceBuffer::bytes`] can be more than the sum of
    /// its traces' shares: it counts a chunk in full while any trace still has a span in it.
    pub fn memory(&self) -> usize {
        ENTRY_BYTES + self.bookkeeping() + self.segments.iter().map(Segment::len).sum::<usize>()
    }

    /// Each span's bytes with its group, in the order they were pushed.
    pub fn spans(&self) -> impl Iterator<Item = (&Arc<Group>, &[u8])> {
        SegmentSpans::new(&self.segments)
            .filter_map(|(g, bytes)| Some((self.groups.get(usize::from(g))?, bytes)))
    }

    /// Number of segments (runs of spans contiguous in one chunk, or large spans).
    #[cfg(test)]
    fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Bytes of a list's own allocation (0 while its items fit inline).
fn spilled_bytes<A: smallvec::Array>(v: &SmallVec<A>) -> usize {
    if v.spilled() {
        v.capacity() * std::mem::size_of::<A::Item>()
    } else {
        0
    }
}

/// Bytes of one buffered trace's entry (boxed in the map), counted in [`TraceBuffer::bytes`].
const ENTRY_BYTES: usize = std::mem::size_of::<TraceEntry>();

/// Buffered traces by id, with their arrival order for early decisions when full.
#[derive(Debug, Default)]
pub struct TraceBuffer {
    /// Boxed: hashbrown grows its table when deletions use up its free slots while it is more
    /// than half full, which a steady churn of traces does; the table then holds twice the
    /// slots it needs, and a slot of 16 + 8 bytes costs less than one of 16 + 80.
    traces: HashMap<TraceId, Box<TraceEntry>>,
    order: VecDeque<TraceId>,
    /// The span bytes of every buffered trace.
    arena: ChunkArena,
    /// Bytes of the buffered entries and their lists ([`TraceEntry::bookkeeping`]).
    bookkeeping: usize,
}

impl TraceBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a span to its trace; returns true when the trace is new.
    pub fn push(&mut self, trace_id: TraceId, group: &Arc<Group>, bytes: &[u8]) -> bool {
        self.push_run(trace_id, group, [bytes])
    }

    /// Adds consecutive spans of one trace, all of `group`, with one look-up of the trace
    /// and one piece of a chunk per run ([`ChunkArena::append_run`]); returns true when the
    /// trace is new.
    pub fn push_run<'a>(
        &mut self,
        trace_id: TraceId,
        group: &Arc<Group>,
        spans: impl IntoIterator<Item = &'a [u8]>,
    ) -> bool {
        let mut new = false;
        let entry = self.traces.entry(trace_id).or_insert_with(|| {
            new = true;
            Box::default()
        });
        if new {
            self.order.push_back(trace_id);
            self.bookkeeping += ENTRY_BYTES;
        }
        let before = entry.bookkeeping();
        let g = entry.group_index(group);
        let mut count = 0;
        self.arena.append_run(
            &mut entry.segments,
            g,
            spans.into_iter().inspect(|_| count += 1),
        );
        entry.spans += count;
        self.bookkeeping += entry.bookkeeping().saturating_sub(before);
        new
    }

    /// Removes a decided trace. Its bytes stay valid in the returned entry; their memory is
    /// freed when it is dropped (a chunk once no buffered or returned span is in it).
    pub fn remove(&mut self, trace_id: &TraceId) -> Option<TraceEntry> {
        let e = self.traces.remove(trace_id)?;
        self.forget(&e);
        Some(*e)
    }

    /// Stops counting a removed entry's memory.
    fn forget(&mut self, e: &TraceEntry) {
        self.arena.release(&e.segments);
        self.bookkeeping = self
            .bookkeeping
            .saturating_sub(e.bookkeeping() + ENTRY_BYTES);
    }

    /// Number of traces held.
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Bytes held: every chunk with a buffered span in it in full (so fragmentation is counted
    /// against `memory_limit_mib`), the allocations of large spans, and the traces' entries
    /// and lists.
    pub fn bytes(&self) -> usize {
        self.arena.held_bytes() + self.bookkeeping
    }

    /// Is this trace buffered?
    pub fn contains(&self, trace_id: &TraceId) -> bool {
        self.traces.contains_key(trace_id)
    }

    /// A buffered trace, left in place (to replay it into a new guest instance).
    pub fn get(&self, trace_id: &TraceId) -> Option<&TraceEntry> {
        self.traces.get(trace_id).map(|e| &**e)
    }

    /// The oldest `n` traces still buffered (for early decisions when the buffer is full).
    pub fn oldest(&mut self, n: usize) -> Vec<TraceId> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            if self.traces.contains_key(&id) {
                out.push(id);
            }
        }
        // Put them back: they stay in order until actually removed.
        for id in out.iter().rev() {
            self.order.push_front(*id);
        }
        out
    }

    /// The oldest traces whose removal brings the buffer within `max_traces` traces and
    /// `max_bytes` bytes (for early decisions when the buffer is full); empty when within. The
    /// bytes are estimated from the traces' shares ([`TraceEntry::memory`]); when removing them
    /// frees less (a chunk still held by a younger trace), the next call picks more.
    pub fn oldest_over(&mut self, max_traces: usize, max_bytes: usize) -> Vec<TraceId> {
        let mut traces = self.traces.len();
        let mut bytes = self.bytes();
        let mut out = Vec::new();
        if traces <= max_traces && bytes <= max_bytes {
            return out;
        }
        let mut popped = Vec::new();
        while traces > max_traces || bytes > max_bytes {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            popped.push(id);
            if let Some(e) = self.traces.get(&id) {
                traces -= 1;
                bytes = bytes.saturating_sub(e.memory());
                out.push(id);
            }
        }
        // Put them back: they stay in order until actually removed.
        for id in popped.into_iter().rev() {
            self.order.push_front(id);
        }
        out
    }

    /// Drops order entries of traces already removed, when they pile up.
    pub fn compact(&mut self) {
        if self.order.len() > 2 * self.traces.len() + 1024 {
            let traces = &self.traces;
            self.order.retain(|id| traces.contains_key(id));
        }
    }

    /// Removes and returns every trace (fail-open, shutdown).
    pub fn drain(&mut self) -> Vec<(TraceId, TraceEntry)> {
        self.order.clear();
        let all: Vec<(TraceId, TraceEntry)> = self.traces.drain().map(|(id, e)| (id, *e)).collect();
        for (_, e) in &all {
            self.forget(e);
        }
        all
    }
}

/// What a late span of a decided trace does.
#[derive(Debug, Clone)]
pub enum Cached {
    /// The trace was kept: forward with these tags and `tracekeeper.late=true`.
    Kept(Arc<TraceTags>),
    /// The trace was not kept (or dropped): drop the span.
    NotKept,
}

/// A 64-bit fingerprint of a trace id: both halves through a bijective mixer (MurmurHash3's
/// finalizer), so ids that differ in either half differ here unless by chance (two ids in
/// 2^64), including structured ids (a zero or repeated half).
fn fingerprint(id: &TraceId) -> u64 {
    fn mix(mut x: u64) -> u64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
    let v = u128::from_be_bytes(id.0);
    mix((v as u64) ^ mix((v >> 64) as u64))
}

/// Appends a newly remembered `fp` to `order`, then forgets the oldest (`forget`) until at most
/// `cap` remain.
fn remember(order: &mut VecDeque<u64>, cap: usize, fp: u64, mut forget: impl FnMut(u64)) {
    order.push_back(fp);
    while order.len() > cap {
        match order.pop_front() {
            Some(old) => forget(old),
            None => break,
        }
    }
}

/// Bounded FIFO memory of decisions, one capacity for kept and one for not-kept traces (the
/// collector's `decision_cache`).
///
/// With DESIGN.md's sizes (100 000 kept, 1 000 000 not kept) this is the largest structure
/// after the trace buffer, so it holds little per decision: a trace id's 64-bit
/// [`fingerprint`] (twice: in the table and in the eviction order) instead of its 16 bytes,
/// not-kept traces in a set with nothing beside the key, and kept traces with a shared pointer
/// to their tags (which the worker shares between traces with equal tags,
/// [`crate::tags::TagsInterner`]). Full at those sizes it holds 32.8 MB, against 111.6 MB when
/// it kept whole ids and each kept trace's own tags (`cargo bench -p tracekeeper --bench
/// cache_memory`). Two remembered traces whose ids have the same fingerprint would share a
/// decision, a chance of about 1 in 2^64 ÷ 1 000 000 per late span.
#[derive(Debug)]
pub struct DecisionCache {
    kept: HashMap<u64, Arc<TraceTags>>,
    kept_order: VecDeque<u64>,
    not_kept: HashSet<u64>,
    not_kept_order: VecDeque<u64>,
    kept_cap: usize,
    not_kept_cap: usize,
}

impl DecisionCache {
    /// A cache remembering at most `kept_cap` kept and `not_kept_cap` not-kept traces.
    pub fn new(kept_cap: usize, not_kept_cap: usize) -> Self {
        DecisionCache {
            kept: HashMap::new(),
            kept_order: VecDeque::new(),
            not_kept: HashSet::new(),
            not_kept_order: VecDeque::new(),
            kept_cap,
            not_kept_cap,
        }
    }

    /// Remembers a decision.
    pub fn insert(&mut self, id: TraceId, c: Cached) {
        let fp = fingerprint(&id);
        match c {
            Cached::Kept(tags) => {
                // A decision remembered again keeps its place in the order.
                if self.kept_cap > 0 && self.kept.insert(fp, tags).is_none() {
                    let kept = &mut self.kept;
                    remember(&mut self.kept_order, self.kept_cap, fp, |old| {
                        kept.remove(&old);
                    });
                }
            }
            Cached::NotKept => {
                if self.not_kept_cap > 0 && self.not_kept.insert(fp) {
                    let not_kept = &mut self.not_kept;
                    remember(&mut self.not_kept_order, self.not_kept_cap, fp, |old| {
                        not_kept.remove(&old);
                    });
                }
            }
        }
    }

    /// The decision for a trace, if remembered.
    pub fn get(&self, id: &TraceId) -> Option<Cached> {
        let fp = fingerprint(id);
        if let Some(tags) = self.kept.get(&fp) {
            return Some(Cached::Kept(Arc::clone(tags)));
        }
        self.not_kept.contains(&fp).then_some(Cached::NotKept)
    }

    /// Decisions remembered (kept, not kept).
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.kept.len(), self.not_kept.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::arena::{CHUNK_BYTES, MAX_CHUNKED_SPAN};

    fn group() -> Arc<Group> {
        Arc::new(Group {
            resource_fields: vec![1],
            scope_fields: vec![2],
        })
    }

    #[test]
    fn buffer_keeps_span_bytes_by_trace() {
        let g = group();
        let mut b = TraceBuffer::new();
        assert!(b.push(TraceId([1; 16]), &g, b"aa"));
        assert!(!b.push(TraceId([1; 16]), &g, b"bbb"));
        assert!(b.push(TraceId([2; 16]), &g, b"c"));
        assert_eq!(b.len(), 2);
        assert!(b.bytes() >= 6);
        assert_eq!(b.oldest(1), vec![TraceId([1; 16])]);
        let e = b.remove(&TraceId([1; 16])).unwrap();
        let spans: Vec<_> = e.spans().map(|(_, s)| s.to_vec()).collect();
        assert_eq!(spans, vec![b"aa".to_vec(), b"bbb".to_vec()]);
        assert_eq!(b.oldest(5), vec![TraceId([2; 16])]);
    }

    #[test]
    fn oldest_over_meets_both_limits() {
        let g = group();
        let mut b = TraceBuffer::new();
        // Spans over `MAX_CHUNKED_SPAN` have allocations of their own, so each trace's share is
        // exactly what its removal frees.
        let span = [0u8; MAX_CHUNKED_SPAN + 100];
        for i in 1..=4u8 {
            b.push(TraceId([i; 16]), &g, &span);
        }
        assert!(b.oldest_over(4, usize::MAX).is_empty());
        assert_eq!(
            b.oldest_over(2, usize::MAX),
            vec![TraceId([1; 16]), TraceId([2; 16])]
        );
        let per_trace = b.get(&TraceId([1; 16])).unwrap().memory();
        assert_eq!(b.bytes(), 4 * per_trace);
        // Bytes for a bit more than one trace: the three oldest go.
        assert_eq!(b.oldest_over(10, per_trace + 1).len(), 3);
        // Nothing was removed by asking.
        assert_eq!(b.len(), 4);
        assert_eq!(b.oldest(1), vec![TraceId([1; 16])]);
    }

    fn id(n: u32) -> TraceId {
        let mut t = [0u8; 16];
        t[..4].copy_from_slice(&n.to_be_bytes());
        TraceId(t)
    }

    /// A span whose bytes name its trace and position, of a size that varies with both.
    fn span_bytes(trace: u32, pos: u32) -> Vec<u8> {
        let len = 8 + ((trace * 131 + pos * 977) % 700) as usize;
        let mut v = vec![(trace ^ pos) as u8; len];
        v[..4].copy_from_slice(&trace.to_be_bytes());
        v[4..8].copy_from_slice(&pos.to_be_bytes());
        v
    }

    /// A span as (its group's resource fields, its bytes).
    type Seen = (Vec<u8>, Vec<u8>);

    /// Each span of an entry.
    fn collect(e: &TraceEntry) -> Vec<Seen> {
        e.spans()
            .map(|(g, s)| (g.resource_fields.clone(), s.to_vec()))
            .collect()
    }

    #[test]
    fn interleaved_traces_come_back_in_order_with_their_groups() {
        let groups: Vec<_> = (0..3u8)
            .map(|i| {
                Arc::new(Group {
                    resource_fields: vec![i],
                    scope_fields: vec![i, i],
                })
            })
            .collect();
        let mut b = TraceBuffer::new();
        let mut expected: HashMap<TraceId, Vec<Seen>> = HashMap::new();
        // 300 traces of 12 spans, three traces' spans interleaved at a time (non-contiguous
        // runs), spilling over many chunks.
        for round in 0..100u32 {
            for pos in 0..12u32 {
                for k in 0..3u32 {
                    let t = round * 3 + k;
                    let g = &groups[((t + pos) % 3) as usize];
                    let bytes = span_bytes(t, pos);
                    b.push(id(t), g, &bytes);
                    expected
                        .entry(id(t))
                        .or_default()
                        .push((g.resource_fields.clone(), bytes));
                }
            }
        }
        assert_eq!(b.len(), 300);
        assert!(b.arena.live_chunks() > 10, "{}", b.arena.live_chunks());
        for t in (0..300).step_by(7) {
            let e = b.get(&id(t)).unwrap();
            assert_eq!(e.len(), 12);
            assert_eq!(collect(e), expected[&id(t)]);
        }
        let e = b.remove(&id(0)).unwrap();
        assert_eq!(collect(&e), expected[&id(0)]);
    }

    #[test]
    fn a_trace_of_one_request_is_one_segment() {
        let g = group();
        let mut b = TraceBuffer::new();
        // A request: 10 traces, each with its 10 spans together.
        for t in 0..10 {
            for pos in 0..10 {
                b.push(id(t), &g, &[pos as u8; 361]);
            }
        }
        let segments: usize = (0..10)
            .map(|t| b.get(&id(t)).unwrap().segment_count())
            .sum();
        // One per trace, plus one where a trace straddles two chunks.
        assert!(segments <= 11, "{segments}");
        // About 3 650 bytes per trace plus about a hundred of bookkeeping (the entry, one
        // segment, one group).
        let e = b.get(&id(3)).unwrap();
        assert!(e.memory() < 10 * (361 + 4) + 150, "{}", e.memory());
        assert!(b.bytes() >= 10 * e.memory());
    }

    #[test]
    fn a_run_holds_what_its_spans_pushed_one_by_one_hold() {
        let g = group();
        let (mut runs, mut singles) = (TraceBuffer::new(), TraceBuffer::new());
        for t in 0..50u32 {
            let spans: Vec<Vec<u8>> = (0..10).map(|pos| span_bytes(t, pos)).collect();
            let (first, rest) = spans.split_at(4);
            assert!(runs.push_run(id(t), &g, first.iter().map(Vec::as_slice)));
            assert!(!runs.push_run(id(t), &g, rest.iter().map(Vec::as_slice)));
            assert!(!runs.push_run(id(t), &g, []));
            for (pos, s) in spans.iter().enumerate() {
                assert_eq!(singles.push(id(t), &g, s), pos == 0);
            }
        }
        assert_eq!((runs.len(), runs.bytes()), (singles.len(), singles.bytes()));
        for t in 0..50 {
            let (r, s) = (runs.get(&id(t)).unwrap(), singles.get(&id(t)).unwrap());
            assert_eq!((r.len(), r.memory()), (10, s.memory()));
            assert_eq!(collect(r), collect(s));
        }
    }

    #[test]
    fn bytes_follow_removals_and_drop_to_zero() {
        let g = group();
        let mut b = TraceBuffer::new();
        assert_eq!(b.bytes(), 0);
        for t in 0..2_000u32 {
            for pos in 0..10 {
                b.push(id(t), &g, &span_bytes(t, pos));
            }
        }
        let span_bytes_held: usize = (0..2_000u32)
            .flat_map(|t| (0..10).map(move |pos| span_bytes(t, pos).len()))
            .sum();
        let shares: usize = (0..2_000).map(|t| b.get(&id(t)).unwrap().memory()).sum();
        let full = b.bytes();
        // Everything is counted, and little more than the spans themselves.
        assert!(full >= shares && shares > span_bytes_held);
        assert!(
            full < span_bytes_held + span_bytes_held / 10 + CHUNK_BYTES,
            "{full} for {span_bytes_held}"
        );
        // Removing the older half (FIFO, as decisions go) frees about half.
        for t in 0..1_000 {
            assert!(b.remove(&id(t)).is_some());
        }
        let half = b.bytes();
        assert!(half < full / 2 + CHUNK_BYTES, "{half} of {full}");
        let shares: usize = (1_000..2_000)
            .map(|t| b.get(&id(t)).unwrap().memory())
            .sum();
        assert!(half >= shares);
        // Removing a trace twice changes nothing.
        assert!(b.remove(&id(0)).is_none());
        assert_eq!(b.bytes(), half);
        for t in 1_000..2_000 {
            b.remove(&id(t));
        }
        assert_eq!((b.len(), b.bytes(), b.arena.live_chunks()), (0, 0, 0));
    }

    #[test]
    fn a_chunk_is_counted_until_its_last_span_goes() {
        let g = group();
        let mut b = TraceBuffer::new();
        // One span of a long-lived trace, then enough of others to fill several chunks.
        b.push(id(0), &g, b"pinning span");
        for t in 1..=600 {
            b.push(id(t), &g, &[1u8; 1_000]);
        }
        for t in 1..=600 {
            b.remove(&id(t));
        }
        // The first chunk is still held for the 12-byte span, and counted in full.
        assert_eq!(b.arena.live_chunks(), 1);
        assert!(b.bytes() >= CHUNK_BYTES);
        b.remove(&id(0));
        assert_eq!((b.bytes(), b.arena.live_chunks()), (0, 0));
    }

    #[test]
    fn steady_state_memory_does_not_grow() {
        let g = group();
        let mut b = TraceBuffer::new();
        let mut peak = 0;
        // FIFO: 1 000 traces of 10 spans buffered, 50 000 traces through.
        for t in 0..50_000u32 {
            for pos in 0..10 {
                b.push(id(t), &g, &[pos as u8; 361]);
            }
            if t >= 1_000 {
                let e = b.remove(&id(t - 1_000)).unwrap();
                assert_eq!(e.len(), 10);
                assert!(e.spans().enumerate().all(|(i, (_, s))| s == [i as u8; 361]));
            }
            if t == 10_000 {
                peak = b.bytes();
            }
            b.compact();
        }
        assert!(b.bytes() <= peak + CHUNK_BYTES, "{} vs {peak}", b.bytes());
        // 1 000 × 3 650 bytes: 56 chunks, 57 when not aligned, plus the lists.
        assert!(b.arena.live_chunks() <= 57, "{}", b.arena.live_chunks());
        assert!(
            b.arena.tracked_chunks() <= 58,
            "{}",
            b.arena.tracked_chunks()
        );
    }

    #[test]
    fn a_trace_larger_than_a_chunk() {
        let g = group();
        let mut b = TraceBuffer::new();
        let big = vec![0xabu8; 2 * CHUNK_BYTES];
        b.push(id(1), &g, b"first");
        for pos in 0..1_000u32 {
            b.push(id(1), &g, &span_bytes(1, pos));
        }
        b.push(id(1), &g, &big);
        b.push(id(1), &g, b"last");
        let e = b.get(&id(1)).unwrap();
        assert_eq!(e.len(), 1_003);
        assert!(e.memory() > 2 * CHUNK_BYTES + 300_000);
        let spans = collect(e);
        assert_eq!(spans[0].1, b"first");
        for pos in 0..1_000u32 {
            assert_eq!(spans[1 + pos as usize].1, span_bytes(1, pos));
        }
        assert_eq!(spans[1_001].1, big);
        assert_eq!(spans[1_002].1, b"last");
        // A segment per chunk the trace spans, and one for the large span.
        assert!(e.segment_count() <= 12, "{}", e.segment_count());
        b.remove(&id(1));
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn removed_and_drained_entries_keep_their_bytes() {
        let g = group();
        let mut b = TraceBuffer::new();
        for t in 0..100 {
            b.push(id(t), &g, &span_bytes(t, 0));
        }
        let kept = b.remove(&id(5)).unwrap();
        // The buffer goes on writing into new chunks while the removed entry is held.
        for t in 100..1_000 {
            b.push(id(t), &g, &span_bytes(t, 0));
            b.remove(&id(t));
        }
        assert_eq!(collect(&kept)[0].1, span_bytes(5, 0));
        let drained = b.drain();
        assert_eq!(drained.len(), 99);
        assert_eq!((b.len(), b.bytes()), (0, 0));
        for (t, e) in &drained {
            let n = u32::from_be_bytes([t.0[0], t.0[1], t.0[2], t.0[3]]);
            assert_eq!(collect(e)[0].1, span_bytes(n, 0));
        }
        assert!(b.oldest(1).is_empty());
    }

    #[test]
    fn decision_cache_is_bounded_per_kind() {
        let mut c = DecisionCache::new(1, 2);
        let tags = Arc::new(TraceTags::fail_open());
        c.insert(TraceId([1; 16]), Cached::Kept(tags.clone()));
        c.insert(TraceId([2; 16]), Cached::Kept(tags));
        c.insert(TraceId([3; 16]), Cached::NotKept);
        assert!(c.get(&TraceId([1; 16])).is_none());
        assert!(matches!(c.get(&TraceId([2; 16])), Some(Cached::Kept(_))));
        assert!(matches!(c.get(&TraceId([3; 16])), Some(Cached::NotKept)));
        let mut off = DecisionCache::new(0, 0);
        off.insert(TraceId([1; 16]), Cached::NotKept);
        assert!(off.get(&TraceId([1; 16])).is_none());
    }

    #[test]
    fn decision_cache_evicts_oldest_first_and_counts_a_trace_once() {
        let mut c = DecisionCache::new(2, 3);
        let id = |n: u8| TraceId([n; 16]);
        for n in 1..=4 {
            c.insert(id(n), Cached::NotKept);
            // Remembering a decision again does not take a second place in the order.
            c.insert(id(n), Cached::NotKept);
        }
        assert!(c.get(&id(1)).is_none(), "the oldest went first");
        for n in 2..=4 {
            assert!(matches!(c.get(&id(n)), Some(Cached::NotKept)), "{n}");
        }
        assert_eq!(c.len(), (0, 3));
        let tags = Arc::new(TraceTags::fail_open());
        c.insert(id(9), Cached::Kept(Arc::clone(&tags)));
        assert!(matches!(c.get(&id(9)), Some(Cached::Kept(t)) if Arc::ptr_eq(&t, &tags)));
        assert_eq!(c.len(), (1, 3));
    }

    #[test]
    fn fingerprints_tell_structured_ids_apart() {
        // Ids made of a counter in one half, the other, or both: all distinct.
        let mut seen = hashbrown::HashSet::new();
        for n in 0..20_000u64 {
            let b = n.to_be_bytes();
            let mut lo = [0u8; 16];
            lo[8..].copy_from_slice(&b);
            let mut hi = [0u8; 16];
            hi[..8].copy_from_slice(&b);
            let mut both = [0u8; 16];
            both[..8].copy_from_slice(&b);
            both[8..].copy_from_slice(&b);
            for id in [lo, hi, both] {
                seen.insert(fingerprint(&TraceId(id)));
            }
        }
        // n = 0 gives the all-zero id three times.
        assert_eq!(seen.len(), 3 * 20_000 - 2);
    }
}
