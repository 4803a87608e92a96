//! The trace buffer (span bytes held until their trace is decided) and the decision cache
//! (what was decided, so late spans follow their trace).

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashMap;
use tracekeeper_abi::TraceId;

use crate::otlp::request::Group;
use crate::tags::TraceTags;

/// One buffered span: where its bytes are in the trace's arena and which group it came under.
#[derive(Debug, Clone, Copy)]
pub struct StoredSpan {
    start: u32,
    len: u32,
    group: u16,
}

/// The spans of one trace, copied out of their requests so a request's memory is freed as soon
/// as it is processed.
#[derive(Debug, Default)]
pub struct TraceEntry {
    data: Vec<u8>,
    spans: Vec<StoredSpan>,
    groups: Vec<Arc<Group>>,
}

/// Most groups one trace may reference; further groups share the last slot's index space by
/// being appended (u16 is plenty: a trace with 65 535 distinct resource/scope pairs is absurd).
const MAX_GROUPS_PER_TRACE: usize = u16::MAX as usize;

impl TraceEntry {
    /// Adds one span's bytes.
    pub fn push(&mut self, group: &Arc<Group>, bytes: &[u8]) {
        let g = match self.groups.iter().rposition(|g| Arc::ptr_eq(g, group)) {
            Some(i) => i,
            None if self.groups.len() < MAX_GROUPS_PER_TRACE => {
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
        let start = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        self.spans.push(StoredSpan {
            start,
            len: bytes.len() as u32,
            group: g as u16,
        });
    }

    /// Number of spans.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when no span is held.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes held (span bytes plus bookkeeping).
    pub fn memory(&self) -> usize {
        self.data.capacity() + self.spans.capacity() * std::mem::size_of::<StoredSpan>()
    }

    /// Each span's bytes with its group.
    pub fn spans(&self) -> impl Iterator<Item = (&Arc<Group>, &[u8])> {
        self.spans.iter().filter_map(|s| {
            let bytes = self
                .data
                .get(s.start as usize..(s.start as usize + s.len as usize))?;
            Some((self.groups.get(usize::from(s.group))?, bytes))
        })
    }
}

/// Buffered traces by id, with their arrival order for early decisions when full.
#[derive(Debug, Default)]
pub struct TraceBuffer {
    traces: HashMap<TraceId, TraceEntry>,
    order: VecDeque<TraceId>,
    bytes: usize,
}

impl TraceBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a span to its trace; returns true when the trace is new.
    pub fn push(&mut self, trace_id: TraceId, group: &Arc<Group>, bytes: &[u8]) -> bool {
        let mut new = false;
        let entry = self.traces.entry(trace_id).or_insert_with(|| {
            new = true;
            TraceEntry::default()
        });
        if new {
            self.order.push_back(trace_id);
        }
        let before = entry.memory();
        entry.push(group, bytes);
        self.bytes += entry.memory() - before;
        new
    }

    /// Removes a decided trace.
    pub fn remove(&mut self, trace_id: &TraceId) -> Option<TraceEntry> {
        let e = self.traces.remove(trace_id)?;
        self.bytes = self.bytes.saturating_sub(e.memory());
        Some(e)
    }

    /// Number of traces held.
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Is this trace buffered?
    pub fn contains(&self, trace_id: &TraceId) -> bool {
        self.traces.contains_key(trace_id)
    }

    /// A buffered trace, left in place (to replay it into a new guest instance).
    pub fn get(&self, trace_id: &TraceId) -> Option<&TraceEntry> {
        self.traces.get(trace_id)
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
    /// `max_bytes` bytes (for early decisions when the buffer is full); empty when within.
    pub fn oldest_over(&mut self, max_traces: usize, max_bytes: usize) -> Vec<TraceId> {
        let mut traces = self.traces.len();
        let mut bytes = self.bytes;
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
        self.bytes = 0;
        self.traces.drain().collect()
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

/// Bounded FIFO memory of decisions, one capacity for kept and one for not-kept traces (the
/// collector's `decision_cache`).
#[derive(Debug)]
pub struct DecisionCache {
    map: HashMap<TraceId, Cached>,
    kept: VecDeque<TraceId>,
    not_kept: VecDeque<TraceId>,
    kept_cap: usize,
    not_kept_cap: usize,
}

impl DecisionCache {
    /// A cache remembering at most `kept_cap` kept and `not_kept_cap` not-kept traces.
    pub fn new(kept_cap: usize, not_kept_cap: usize) -> Self {
        DecisionCache {
            map: HashMap::new(),
            kept: VecDeque::new(),
            not_kept: VecDeque::new(),
            kept_cap,
            not_kept_cap,
        }
    }

    /// Remembers a decision.
    pub fn insert(&mut self, id: TraceId, c: Cached) {
        let (queue, cap) = match c {
            Cached::Kept(_) => (&mut self.kept, self.kept_cap),
            Cached::NotKept => (&mut self.not_kept, self.not_kept_cap),
        };
        if cap == 0 {
            return;
        }
        while queue.len() >= cap {
            if let Some(old) = queue.pop_front() {
                self.map.remove(&old);
            }
        }
        queue.push_back(id);
        self.map.insert(id, c);
    }

    /// The decision for a trace, if remembered.
    pub fn get(&self, id: &TraceId) -> Option<&Cached> {
        self.map.get(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        for i in 1..=4u8 {
            b.push(TraceId([i; 16]), &g, &[0u8; 100]);
        }
        assert!(b.oldest_over(4, usize::MAX).is_empty());
        assert_eq!(
            b.oldest_over(2, usize::MAX),
            vec![TraceId([1; 16]), TraceId([2; 16])]
        );
        let per_trace = b.get(&TraceId([1; 16])).unwrap().memory();
        // Bytes for a bit more than one trace: the three oldest go.
        assert_eq!(b.oldest_over(10, per_trace + 1).len(), 3);
        // Nothing was removed by asking.
        assert_eq!(b.len(), 4);
        assert_eq!(b.oldest(1), vec![TraceId([1; 16])]);
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
}
