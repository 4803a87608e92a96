//! Span bytes in fixed-size chunks shared by all buffered traces, each trace holding reference-
//! counted pieces of them, so that a buffered span costs about its encoded size.
//!
//! # Why this layout
//!
//! A growing `Vec<u8>` per trace doubled its capacity span by span (361 → 722 → … → 5 776 bytes of
//! capacity for the 3 610 bytes of a 10-span trace), copying at each step: a buffered span cost
//! 2.14× its encoded size end to end, and the buffer's push was about 10% of the process CPU
//! (BENCHMARKS.md, "Profile"). Here every span is appended to the current 64 KiB chunk, which is
//! shared by all traces; a trace holds [`Segment`]s, each a [`BytesMut`] over a run of its own
//! records in one chunk. Consecutive spans of one trace (the usual case: a request carries a
//! trace's spans together) extend the trace's last segment in O(1) ([`BytesMut::try_unsplit`]), so
//! a trace of one request holds one segment.
//!
//! # Why `bytes` and not an arena crate
//!
//! A trace leaves the buffer when it is decided, long before or after its neighbours in a chunk,
//! and the worker keeps the removed trace's bytes while it exports them. Bump arenas (`bumpalo`)
//! free only all at once, and index-based slabs (`slab`) hand out slots that the buffer would have
//! to keep alive after removal. `bytes` (already a dependency) has exactly the reference-counted
//! sub-slices of one allocation this needs, without `unsafe` here: a chunk's memory goes back to
//! the allocator when the last segment pointing into it is dropped (and the arena has moved on to
//! a newer chunk).
//!
//! # Memory bound
//!
//! A chunk is freed only when every span in it is gone, so one long-lived span can hold a whole
//! chunk. The arena therefore counts, per chunk, the segments still buffered in it, and
//! [`ChunkArena::held_bytes`] counts a chunk in full while any of them is: the trace buffer's
//! `bytes()`, which the worker holds under `memory_limit_mib` by deciding the oldest traces early,
//! includes that fragmentation. The memory the buffered spans hold is therefore at most
//! `held_bytes()` plus one chunk (the current one, while no buffered span is in it), plus the
//! chunks of removed traces the caller still holds. In time: every span of a chunk was written
//! while the chunk was current, to a trace first seen by then, so when the guest decides every
//! trace within its decision wait the chunk is freed at most one decision wait after the arena
//! moved on from it. A chunk wastes at most its tail when the next span does not fit, which is
//! less than [`MAX_CHUNKED_SPAN`] + [`RECORD_HEADER`] bytes (about 1/16 of a chunk), since larger
//! spans get an allocation of their own.

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};
use smallvec::SmallVec;

/// Bytes per chunk. About 180 spans of the reference size (361 bytes) fit in one, so a chunk's
/// unused tail and allocation overhead are well under 1% of it; and it is under glibc's default
/// mmap threshold (128 KiB), so chunks come from the heap and a freed chunk is reused by the next
/// one instead of being unmapped and faulted in again.
pub const CHUNK_BYTES: usize = 64 << 10;

/// Largest span stored in a chunk; a larger span gets an allocation of its own. Bounds the tail a
/// chunk can leave unused to 1/16 of it, and lets a record's length fit in a `u16`.
pub const MAX_CHUNKED_SPAN: usize = 4 << 10;

/// Bytes of a record's header in a chunk: the span's length and its group index, `u16` LE each.
pub const RECORD_HEADER: usize = 4;

/// Bytes of the header of a span in an allocation of its own: its group index, `u16` LE.
const OWN_HEADER: usize = 2;

/// The `chunk` of a segment that is an allocation of its own (one span).
const OWN: u64 = u64::MAX;

/// A trace's segments: the first inline (a trace whose spans came in one request has one), the
/// rest in an allocation of their own.
pub type Segments = SmallVec<[Segment; 1]>;

/// A trace's run of records in one chunk, or one large span in an allocation of its own.
///
/// In a chunk, records are `[len: u16 LE][group: u16 LE][len bytes of span]`, back to back; in an
/// allocation of its own, `[group: u16 LE][span]`.
#[derive(Debug)]
pub struct Segment {
    bytes: BytesMut,
    /// Serial of the chunk the records are in, or [`OWN`].
    chunk: u64,
}

impl Segment {
    /// Bytes of the records (span bytes plus their headers).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when the segment holds no byte (never for a segment an arena made).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// True when this is one span in an allocation of its own.
    pub fn is_own(&self) -> bool {
        self.chunk == OWN
    }
}

/// The spans of a list of segments, in the order they were appended: `(group index, span bytes)`.
#[derive(Debug, Clone)]
pub struct SegmentSpans<'a> {
    segments: std::slice::Iter<'a, Segment>,
    /// The records not yet read of the current chunk segment.
    rest: &'a [u8],
}

impl<'a> SegmentSpans<'a> {
    /// The spans of `segments`.
    pub fn new(segments: &'a [Segment]) -> Self {
        SegmentSpans {
            segments: segments.iter(),
            rest: &[],
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

impl<'a> Iterator for SegmentSpans<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if !self.rest.is_empty() {
                // The arena wrote these records; a short or cut record (never expected) ends the
                // segment rather than reading past it.
                let parsed = (|| {
                    let len = usize::from(u16_at(self.rest, 0)?);
                    let group = u16_at(self.rest, 2)?;
                    let body = self.rest.get(RECORD_HEADER..)?;
                    let (span, rest) = body.split_at_checked(len)?;
                    Some((group, span, rest))
                })();
                match parsed {
                    Some((group, span, rest)) => {
                        self.rest = rest;
                        return Some((group, span));
                    }
                    None => self.rest = &[],
                }
                continue;
            }
            let seg = self.segments.next()?;
            if seg.is_own() {
                if let (Some(group), Some(span)) =
                    (u16_at(&seg.bytes, 0), seg.bytes.get(OWN_HEADER..))
                {
                    return Some((group, span));
                }
            } else {
                self.rest = &seg.bytes;
            }
        }
    }
}

/// Appends spans to 64 KiB chunks shared by all traces, and counts the segments still buffered
/// in each chunk (see the module documentation for the memory bound).
#[derive(Debug)]
pub struct ChunkArena {
    /// The unwritten tail of the current chunk (empty before the first span).
    cur: BytesMut,
    /// Serial of the current chunk (0 before the first).
    serial: u64,
    /// Buffered segments per chunk, for chunks `base..=serial`; the front is trimmed while zero.
    live: VecDeque<u32>,
    /// Serial of `live[0]`.
    base: u64,
    /// Chunks with at least one buffered segment.
    live_chunks: usize,
    /// Bytes of the buffered allocations of their own (large spans).
    own_bytes: usize,
}

impl Default for ChunkArena {
    fn default() -> Self {
        ChunkArena {
            cur: BytesMut::new(),
            serial: 0,
            live: VecDeque::from([0]),
            base: 0,
            live_chunks: 0,
            own_bytes: 0,
        }
    }
}

/// Pushes onto a trace's segment list, growing it by half (not doubling) when full: the lists
/// are short, and their spare capacity is memory per buffered trace.
fn push_compact(v: &mut Segments, x: Segment) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 2).max(1));
    }
    v.push(x);
}

impl ChunkArena {
    /// An arena with no chunk yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one span (under group index `group` of its trace) to a trace's `segments` (the
    /// worker appends runs: [`ChunkArena::append_run`]).
    #[cfg(test)]
    pub fn append(&mut self, segments: &mut Segments, group: u16, span: &[u8]) {
        self.append_run(segments, group, [span]);
    }

    /// Appends consecutive spans of one trace (under group index `group`) to its `segments`.
    /// The records that fit in the current chunk are written back to back and split off it as
    /// one piece: per run rather than per span, since each split and each merge with the
    /// trace's last piece is an atomic update of the chunk's reference count.
    pub fn append_run<'a>(
        &mut self,
        segments: &mut Segments,
        group: u16,
        spans: impl IntoIterator<Item = &'a [u8]>,
    ) {
        for span in spans {
            let len = match u16::try_from(span.len()) {
                Ok(len) if span.len() <= MAX_CHUNKED_SPAN => len,
                _ => {
                    self.close_run(segments);
                    let mut bytes = BytesMut::with_capacity(OWN_HEADER + span.len());
                    bytes.put_u16_le(group);
                    bytes.extend_from_slice(span);
                    self.own_bytes += bytes.capacity();
                    push_compact(segments, Segment { bytes, chunk: OWN });
                    continue;
                }
            };
            let need = RECORD_HEADER + span.len();
            if self.cur.capacity() - self.cur.len() < need {
                self.close_run(segments);
                self.cur = BytesMut::with_capacity(CHUNK_BYTES);
                self.serial += 1;
                self.live.push_back(0);
                self.trim();
            }
            // Room was checked: these writes never reallocate.
            self.cur.put_u16_le(len);
            self.cur.put_u16_le(group);
            self.cur.extend_from_slice(span);
        }
        self.close_run(segments);
    }

    /// Splits the records written since the last split off the current chunk and adds them to
    /// `segments` (nothing when none were written).
    fn close_run(&mut self, segments: &mut Segments) {
        if self.cur.is_empty() {
            return;
        }
        let mut piece = self.cur.split();
        if let Some(last) = segments.last_mut()
            && last.chunk == self.serial
        {
            // Contiguous with the trace's last run (no other trace wrote in between): one
            // segment, O(1).
            match last.bytes.try_unsplit(piece) {
                Ok(()) => return,
                Err(p) => piece = p,
            }
        }
        if let Some(n) = self.live.back_mut() {
            *n += 1;
            if *n == 1 {
                self.live_chunks += 1;
            }
        }
        push_compact(
            segments,
            Segment {
                bytes: piece,
                chunk: self.serial,
            },
        );
    }

    /// Stops counting `segments` as buffered (their trace left the buffer). Their memory goes
    /// back to the allocator when they are dropped, chunk by chunk once no other segment is in it.
    pub fn release(&mut self, segments: &[Segment]) {
        for seg in segments {
            if seg.is_own() {
                self.own_bytes = self.own_bytes.saturating_sub(seg.bytes.capacity());
                continue;
            }
            let Some(n) = seg
                .chunk
                .checked_sub(self.base)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| self.live.get_mut(i))
            else {
                continue;
            };
            if *n > 0 {
                *n -= 1;
                if *n == 0 {
                    self.live_chunks = self.live_chunks.saturating_sub(1);
                }
            }
        }
        self.trim();
    }

    /// Drops the counts of the oldest chunks once no segment is buffered in them (the current
    /// chunk's count stays).
    fn trim(&mut self) {
        while self.live.len() > 1 && self.live.front() == Some(&0) {
            self.live.pop_front();
            self.base += 1;
        }
    }

    /// Memory held for buffered segments: every chunk with a buffered segment in full (whatever
    /// of it the other segments no longer use), plus the allocations of their own.
    pub fn held_bytes(&self) -> usize {
        self.live_chunks * CHUNK_BYTES + self.own_bytes
    }

    /// Chunks with at least one buffered segment.
    pub fn live_chunks(&self) -> usize {
        self.live_chunks
    }

    /// Chunks whose counts are kept (from the oldest with a buffered segment to the current one).
    pub fn tracked_chunks(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spans(segs: &[Segment]) -> Vec<(u16, Vec<u8>)> {
        SegmentSpans::new(segs)
            .map(|(g, s)| (g, s.to_vec()))
            .collect()
    }

    #[test]
    fn consecutive_spans_of_a_trace_share_one_segment() {
        let mut a = ChunkArena::new();
        let mut t = Segments::new();
        a.append(&mut t, 0, b"one");
        a.append(&mut t, 1, b"");
        a.append(&mut t, 0, b"three");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].len(), 3 * RECORD_HEADER + 8);
        assert_eq!(
            spans(&t),
            vec![
                (0, b"one".to_vec()),
                (1, Vec::new()),
                (0, b"three".to_vec())
            ]
        );
        assert_eq!(a.live_chunks(), 1);
        assert_eq!(a.held_bytes(), CHUNK_BYTES);
    }

    #[test]
    fn interleaved_traces_get_a_segment_per_run() {
        let mut a = ChunkArena::new();
        let (mut x, mut y) = (Segments::new(), Segments::new());
        a.append(&mut x, 0, b"x1");
        a.append(&mut x, 0, b"x2");
        a.append(&mut y, 0, b"y1");
        a.append(&mut x, 0, b"x3");
        assert_eq!((x.len(), y.len()), (2, 1));
        let xs: Vec<_> = spans(&x).into_iter().map(|(_, s)| s).collect();
        assert_eq!(xs, vec![b"x1".to_vec(), b"x2".to_vec(), b"x3".to_vec()]);
        // Three segments in one chunk: the chunk stays held until all three are released.
        a.release(&x);
        assert_eq!(a.live_chunks(), 1);
        a.release(&y);
        assert_eq!((a.live_chunks(), a.held_bytes()), (0, 0));
    }

    #[test]
    fn large_spans_get_their_own_allocation() {
        let mut a = ChunkArena::new();
        let mut t = Segments::new();
        let big = vec![7u8; MAX_CHUNKED_SPAN + 1];
        let huge = vec![9u8; 3 * CHUNK_BYTES];
        a.append(&mut t, 0, b"small");
        a.append(&mut t, 2, &big);
        a.append(&mut t, 3, &huge);
        a.append(&mut t, 0, &[1u8; MAX_CHUNKED_SPAN]);
        assert_eq!(t.len(), 4);
        assert!(t[1].is_own() && t[2].is_own() && !t[3].is_own());
        let got = spans(&t);
        assert_eq!(got.len(), 4);
        assert_eq!(got[1], (2, big.clone()));
        assert_eq!(got[2], (3, huge.clone()));
        assert_eq!(got[3].1.len(), MAX_CHUNKED_SPAN);
        let own = 2 * OWN_HEADER + big.len() + huge.len();
        assert_eq!(a.held_bytes(), CHUNK_BYTES + own);
        a.release(&t);
        assert_eq!(a.held_bytes(), 0);
    }

    #[test]
    fn a_span_that_does_not_fit_starts_a_new_chunk() {
        let mut a = ChunkArena::new();
        let mut t = Segments::new();
        let span = [5u8; 1000];
        let per_chunk = CHUNK_BYTES / (RECORD_HEADER + span.len());
        for _ in 0..per_chunk + 1 {
            a.append(&mut t, 0, &span);
        }
        assert_eq!(t.len(), 2);
        assert_eq!(a.live_chunks(), 2);
        assert_eq!(spans(&t).len(), per_chunk + 1);
        assert!(spans(&t).iter().all(|(g, s)| *g == 0 && s[..] == span[..]));
    }

    #[test]
    fn counts_of_freed_chunks_are_dropped() {
        let mut a = ChunkArena::new();
        let mut traces: VecDeque<Segments> = VecDeque::new();
        // FIFO steady state: 200 traces of 10 spans held, 20 000 written (about 1 100 chunks).
        for i in 0..20_000u32 {
            let mut t = Segments::new();
            for _ in 0..10 {
                a.append(&mut t, 0, &[i as u8; 361]);
            }
            traces.push_back(t);
            if traces.len() > 200 {
                let old = traces.pop_front().unwrap();
                a.release(&old);
            }
        }
        // 200 × 10 × 365 bytes span 12 chunks (13 when not aligned).
        assert!(a.live_chunks() <= 13, "{}", a.live_chunks());
        assert!(a.tracked_chunks() <= 14, "{}", a.tracked_chunks());
        for t in traces.drain(..) {
            a.release(&t);
        }
        assert_eq!(
            (a.live_chunks(), a.held_bytes(), a.tracked_chunks()),
            (0, 0, 1)
        );
    }

    #[test]
    fn a_run_is_one_piece_and_reads_as_its_spans() {
        let mut a = ChunkArena::new();
        let (mut x, mut y) = (Segments::new(), Segments::new());
        let big = vec![7u8; MAX_CHUNKED_SPAN + 1];
        let filler = [3u8; 1000];
        // Most of a chunk, so the run below crosses into the next one.
        let per_chunk = CHUNK_BYTES / (RECORD_HEADER + filler.len());
        a.append_run(&mut y, 0, std::iter::repeat_n(&filler[..], per_chunk - 2));
        assert_eq!((y.len(), a.live_chunks()), (1, 1));
        let run: Vec<&[u8]> = vec![b"a", b"bb", &big, b"ccc", &filler, &filler, &filler, b"d"];
        a.append_run(&mut x, 4, run.iter().copied());
        // "a" and "bb" in the first chunk; the large span on its own; "ccc" and two fillers in
        // the first chunk again, a piece of their own (the large span came between); the last
        // filler and "d" in a new chunk.
        assert_eq!(x.len(), 4);
        assert!(x[1].is_own() && !x[0].is_own() && !x[2].is_own() && !x[3].is_own());
        assert_eq!(a.live_chunks(), 2);
        let got: Vec<(u16, Vec<u8>)> = spans(&x);
        let want: Vec<(u16, Vec<u8>)> = run.iter().map(|s| (4, s.to_vec())).collect();
        assert_eq!(got, want);
        // The same spans one by one give the same bytes and as many pieces.
        let mut b = ChunkArena::new();
        let (mut x1, mut y1) = (Segments::new(), Segments::new());
        for _ in 0..per_chunk - 2 {
            b.append(&mut y1, 0, &filler);
        }
        for s in &run {
            b.append(&mut x1, 4, s);
        }
        assert_eq!(spans(&x1), want);
        let lens = |t: &Segments| t.iter().map(Segment::len).collect::<Vec<_>>();
        assert_eq!(lens(&x1), lens(&x));
        assert_eq!((a.held_bytes(), a.tracked_chunks()), (b.held_bytes(), 2));
        // An empty run adds nothing.
        a.append_run(&mut x, 4, []);
        assert_eq!(spans(&x).len(), run.len());
        a.release(&x);
        a.release(&y);
        assert_eq!(a.held_bytes(), 0);
    }

    #[test]
    fn released_segments_still_read_after_the_arena_moves_on() {
        let mut a = ChunkArena::new();
        let mut t = Segments::new();
        a.append(&mut t, 0, b"kept bytes");
        a.release(&t);
        for _ in 0..1000 {
            let mut other = Segments::new();
            a.append(&mut other, 0, &[0u8; 1000]);
            a.release(&other);
        }
        assert_eq!(spans(&t), vec![(0, b"kept bytes".to_vec())]);
        assert_eq!(a.held_bytes(), 0);
    }
}
