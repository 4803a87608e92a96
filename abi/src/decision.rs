//! The decision batch: what the guest answers for each trace it decided, optionally followed by
//! a metrics section (header flag [`FLAG_METRICS`]): per-queue message counts and per-root-type
//! completeness counts that the host turns into Prometheus metrics.

use alloc::vec::Vec;

use crate::{
    Cursor, DECISION_MAGIC, LAYOUT_VERSION, LayoutError, TraceId, put_bytes, put_u16, put_u32,
    put_u64,
};

/// Size of the decision-batch header: magic, version, flags, count, next due time.
const HEADER_LEN: usize = 4 + 2 + 2 + 4 + 8;
/// Offset of the flags in the header.
const FLAGS_AT: usize = 6;

/// Header flag bit 0: a metrics section follows the decision records.
pub const FLAG_METRICS: u16 = 1;

/// What happens to a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not kept; its spans are released.
    NotSampled = 0,
    /// Kept; its spans are exported with tags.
    Sampled = 1,
    /// Dropped by a drop policy; wins over any keep.
    Dropped = 2,
}

impl Decision {
    fn from_u8(v: u8) -> Result<Self, LayoutError> {
        match v {
            0 => Ok(Decision::NotSampled),
            1 => Ok(Decision::Sampled),
            2 => Ok(Decision::Dropped),
            t => Err(LayoutError::BadTag(t)),
        }
    }
    /// The name used in logs, metrics and replay output.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::NotSampled => "not_sampled",
            Decision::Sampled => "sampled",
            Decision::Dropped => "dropped",
        }
    }
}

/// Whether the trace was complete at decision time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    /// Nothing known to be missing.
    Complete = 0,
    /// Something is missing (see the missing entries).
    Incomplete = 1,
}

impl Completeness {
    fn from_u8(v: u8) -> Result<Self, LayoutError> {
        match v {
            0 => Ok(Completeness::Complete),
            1 => Ok(Completeness::Incomplete),
            t => Err(LayoutError::BadTag(t)),
        }
    }
    /// The value of the `tracekeeper.completeness` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Completeness::Complete => "complete",
            Completeness::Incomplete => "incomplete",
        }
    }
}

/// What the host does to the OpenTelemetry `th` sub-key of each kept span's `tracestate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdOp {
    /// Leave `tracestate` as it came (keeps at probability 1, and non-sampled traces).
    Keep,
    /// Raise `th` to this 56-bit rejection threshold; an incoming higher `th` is kept
    /// (equalizing: never lower an incoming threshold).
    Raise(u64),
    /// Remove `th` (the keep has no known probability, e.g. rate limited).
    Erase,
}

/// One decided trace, as read from a decision batch.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRecord<'a> {
    /// The trace.
    pub trace_id: TraceId,
    /// Kept, not kept, or dropped.
    pub decision: Decision,
    /// Complete or incomplete.
    pub completeness: Completeness,
    /// What to do to `th` in `tracestate`.
    pub threshold: ThresholdOp,
    /// Name of the policy that decided (empty when none matched).
    pub policy: &'a str,
    missing: Cursor<'a>,
    missing_count: u16,
    extra: Cursor<'a>,
    extra_count: u16,
}

impl<'a> DecisionRecord<'a> {
    /// The `tracekeeper.completeness.missing` entries.
    pub fn missing(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut cur = self.missing;
        (0..self.missing_count).map_while(move |_| cur.str().ok())
    }
    /// Number of missing entries.
    pub fn missing_count(&self) -> usize {
        self.missing_count as usize
    }
    /// Extra string attributes the guest wants on every span of the trace.
    pub fn extra_attributes(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut cur = self.extra;
        (0..self.extra_count).map_while(move |_| Some((cur.str().ok()?, cur.str().ok()?)))
    }
}

/// Builds a decision batch (guest side).
#[derive(Debug)]
pub struct DecisionWriter {
    buf: Vec<u8>,
    count: u32,
}

impl Default for DecisionWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl DecisionWriter {
    /// An empty batch.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN);
        buf.extend_from_slice(&DECISION_MAGIC);
        put_u16(&mut buf, LAYOUT_VERSION);
        put_u16(&mut buf, 0);
        put_u32(&mut buf, 0);
        put_u64(&mut buf, 0);
        DecisionWriter { buf, count: 0 }
    }

    /// Appends one decision.
    #[allow(clippy::too_many_arguments)]
    pub fn push<'m>(
        &mut self,
        trace_id: TraceId,
        decision: Decision,
        completeness: Completeness,
        threshold: ThresholdOp,
        policy: &str,
        missing: impl IntoIterator<Item = &'m str>,
        extra: &[(&str, &str)],
    ) {
        let b = &mut self.buf;
        b.extend_from_slice(&trace_id.0);
        b.push(decision as u8);
        b.push(completeness as u8);
        let (op, th) = match threshold {
            ThresholdOp::Keep => (0, 0),
            ThresholdOp::Raise(th) => (1, th),
            ThresholdOp::Erase => (2, 0),
        };
        b.push(op);
        b.push(0);
        put_u64(b, th);
        put_bytes(b, policy.as_bytes());
        let count_at = b.len();
        put_u16(b, 0);
        let mut n: u16 = 0;
        for m in missing.into_iter().take(u16::MAX as usize) {
            put_bytes(b, m.as_bytes());
            n += 1;
        }
        b[count_at..count_at + 2].copy_from_slice(&n.to_le_bytes());
        let extra = &extra[..extra.len().min(u16::MAX as usize)];
        put_u16(b, extra.len() as u16);
        for (k, v) in extra {
            put_bytes(b, k.as_bytes());
            put_bytes(b, v.as_bytes());
        }
        self.count += 1;
    }

    /// Number of decisions written so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when no decision was written.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Finishes the batch. `next_due` is the host time (Unix ns) at which the guest next has a
    /// trace due, or 0 when nothing is pending.
    pub fn finish(mut self, next_due: u64) -> Vec<u8> {
        self.buf[8..12].copy_from_slice(&self.count.to_le_bytes());
        self.buf[12..20].copy_from_slice(&next_due.to_le_bytes());
        self.buf
    }

    /// Finishes the batch with a metrics section after the records (sets [`FLAG_METRICS`]).
    pub fn finish_with_metrics(mut self, next_due: u64, metrics: &MetricsWriter) -> Vec<u8> {
        self.buf[FLAGS_AT..FLAGS_AT + 2].copy_from_slice(&FLAG_METRICS.to_le_bytes());
        put_section(&mut self.buf, metrics.queue_count, &metrics.queues);
        put_section(&mut self.buf, metrics.root_count, &metrics.roots);
        self.finish(next_due)
    }
}

/// Appends a section: item count, payload length, payload. Payloads are built by
/// [`MetricsWriter`], whose records are bounded far below 4 GiB.
fn put_section(buf: &mut Vec<u8>, count: u32, payload: &[u8]) {
    put_u32(buf, count);
    put_bytes(buf, payload);
}

/// Counts of one message queue (messaging system + destination), as the guest reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueMetrics<'a> {
    /// `messaging.system` of the producer spans (`rabbitmq`, `kafka`, ...; empty if absent).
    pub system: &'a str,
    /// `messaging.destination.name` of the producer spans (empty if absent).
    pub destination: &'a str,
    /// Messages produced since the previous metrics section.
    pub produced: u64,
    /// Messages consumed (first consumer of each message) since the previous metrics section.
    pub consumed: u64,
    /// Of `consumed`: messages whose producer's trace had already been decided (late
    /// completions).
    pub consumed_late: u64,
    /// Host time (Unix ns) at which the oldest message not yet consumed was produced; 0 = none.
    pub oldest_unconsumed: u64,
}

/// Completeness counts of one root span type (root service + root span name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RootMetrics<'a> {
    /// `service.name` of the root span (empty when unknown or when the trace had no root).
    pub service: &'a str,
    /// Name of the root span (empty when the trace had no root).
    pub name: &'a str,
    /// Traces decided complete since the previous metrics section.
    pub complete: u64,
    /// Traces decided incomplete since the previous metrics section.
    pub incomplete: u64,
    /// Traces decided complete within the guest's sliding window.
    pub window_complete: u64,
    /// Traces decided incomplete within the guest's sliding window.
    pub window_incomplete: u64,
}

/// Builds the metrics section of a decision batch (guest side). The section is a full snapshot:
/// every queue and root type the guest tracks, with counter deltas since the previous section
/// and current gauge values.
#[derive(Debug, Default, Clone)]
pub struct MetricsWriter {
    queues: Vec<u8>,
    queue_count: u32,
    roots: Vec<u8>,
    root_count: u32,
}

impl MetricsWriter {
    /// An empty section.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one queue record.
    pub fn queue(&mut self, q: &QueueMetrics<'_>) {
        let b = &mut self.queues;
        put_bytes(b, q.system.as_bytes());
        put_bytes(b, q.destination.as_bytes());
        put_u64(b, q.produced);
        put_u64(b, q.consumed);
        put_u64(b, q.consumed_late);
        put_u64(b, q.oldest_unconsumed);
        self.queue_count = self.queue_count.saturating_add(1);
    }

    /// Adds one root-type record.
    pub fn root(&mut self, r: &RootMetrics<'_>) {
        let b = &mut self.roots;
        put_bytes(b, r.service.as_bytes());
        put_bytes(b, r.name.as_bytes());
        put_u64(b, r.complete);
        put_u64(b, r.incomplete);
        put_u64(b, r.window_complete);
        put_u64(b, r.window_incomplete);
        self.root_count = self.root_count.saturating_add(1);
    }

    /// Number of queue records.
    pub fn queue_count(&self) -> usize {
        self.queue_count as usize
    }

    /// Number of root-type records.
    pub fn root_count(&self) -> usize {
        self.root_count as usize
    }
}

/// The metrics section of a decision batch, checked whole when read.
#[derive(Debug, Clone, Copy)]
pub struct MetricsView<'a> {
    queues: Cursor<'a>,
    queue_count: u32,
    roots: Cursor<'a>,
    root_count: u32,
}

fn read_queue<'a>(c: &mut Cursor<'a>) -> Result<QueueMetrics<'a>, LayoutError> {
    Ok(QueueMetrics {
        system: c.str()?,
        destination: c.str()?,
        produced: c.u64()?,
        consumed: c.u64()?,
        consumed_late: c.u64()?,
        oldest_unconsumed: c.u64()?,
    })
}

fn read_root<'a>(c: &mut Cursor<'a>) -> Result<RootMetrics<'a>, LayoutError> {
    Ok(RootMetrics {
        service: c.str()?,
        name: c.str()?,
        complete: c.u64()?,
        incomplete: c.u64()?,
        window_complete: c.u64()?,
        window_incomplete: c.u64()?,
    })
}

/// Reads one section header and checks that its payload holds exactly `count` items of `read`.
fn checked_section<'a, T>(
    c: &mut Cursor<'a>,
    read: fn(&mut Cursor<'a>) -> Result<T, LayoutError>,
) -> Result<(u32, Cursor<'a>), LayoutError> {
    let count = c.u32()?;
    let payload = Cursor::new(c.bytes()?);
    let mut walk = payload;
    for _ in 0..count {
        read(&mut walk)?;
    }
    if !walk.is_empty() {
        return Err(LayoutError::TrailingBytes);
    }
    Ok((count, payload))
}

impl<'a> MetricsView<'a> {
    fn read(mut c: Cursor<'a>) -> Result<Self, LayoutError> {
        let (queue_count, queues) = checked_section(&mut c, read_queue)?;
        let (root_count, roots) = checked_section(&mut c, read_root)?;
        if !c.is_empty() {
            return Err(LayoutError::TrailingBytes);
        }
        Ok(MetricsView {
            queues,
            queue_count,
            roots,
            root_count,
        })
    }

    /// The queue records.
    pub fn queues(&self) -> impl Iterator<Item = QueueMetrics<'a>> + 'a {
        let mut cur = self.queues;
        (0..self.queue_count).map_while(move |_| read_queue(&mut cur).ok())
    }

    /// The root-type records.
    pub fn roots(&self) -> impl Iterator<Item = RootMetrics<'a>> + 'a {
        let mut cur = self.roots;
        (0..self.root_count).map_while(move |_| read_root(&mut cur).ok())
    }

    /// Number of queue records.
    pub fn queue_count(&self) -> usize {
        self.queue_count as usize
    }

    /// Number of root-type records.
    pub fn root_count(&self) -> usize {
        self.root_count as usize
    }
}

/// Reads a decision batch (host side) without copying.
#[derive(Clone)]
pub struct DecisionReader<'a> {
    cur: Cursor<'a>,
    remaining: u32,
    next_due: u64,
    flags: u16,
    /// Set once the bytes after the last record were checked (by the iterator).
    tail_checked: bool,
}

impl<'a> DecisionReader<'a> {
    /// Checks the header.
    pub fn new(buf: &'a [u8]) -> Result<Self, LayoutError> {
        let mut cur = Cursor::new(buf);
        if cur.array::<4>()? != DECISION_MAGIC {
            return Err(LayoutError::BadMagic);
        }
        let version = cur.u16()?;
        if version != LAYOUT_VERSION {
            return Err(LayoutError::UnsupportedVersion(version));
        }
        let flags = cur.u16()?;
        let remaining = cur.u32()?;
        let next_due = cur.u64()?;
        Ok(DecisionReader {
            cur,
            remaining,
            next_due,
            flags,
            tail_checked: false,
        })
    }

    /// True when the header announces a metrics section after the records.
    pub fn has_metrics(&self) -> bool {
        self.flags & FLAG_METRICS != 0
    }

    /// Skips (and checks) the remaining decision records, then reads the metrics section:
    /// `None` when the header announces none. Every malformed byte is an error.
    pub fn into_metrics(mut self) -> Result<Option<MetricsView<'a>>, LayoutError> {
        while self.remaining > 0 {
            self.remaining -= 1;
            self.read_one()?;
        }
        if !self.has_metrics() {
            return if self.cur.is_empty() {
                Ok(None)
            } else {
                Err(LayoutError::TrailingBytes)
            };
        }
        MetricsView::read(self.cur).map(Some)
    }

    /// Host time (Unix ns) of the next due trace, or 0 when none is pending.
    pub fn next_due(&self) -> u64 {
        self.next_due
    }

    /// Number of decisions announced by the header.
    pub fn len(&self) -> usize {
        self.remaining as usize
    }

    /// True when the header announces no decision.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    fn read_one(&mut self) -> Result<DecisionRecord<'a>, LayoutError> {
        let c = &mut self.cur;
        let trace_id = TraceId(c.array()?);
        let decision = Decision::from_u8(c.u8()?)?;
        let completeness = Completeness::from_u8(c.u8()?)?;
        let op = c.u8()?;
        let _reserved = c.u8()?;
        let th = c.u64()?;
        let threshold = match op {
            0 => ThresholdOp::Keep,
            1 => ThresholdOp::Raise(th),
            2 => ThresholdOp::Erase,
            t => return Err(LayoutError::BadTag(t)),
        };
        let policy = c.str()?;
        let missing_count = c.u16()?;
        let missing = *c;
        for _ in 0..missing_count {
            c.str()?;
        }
        let extra_count = c.u16()?;
        let extra = *c;
        for _ in 0..extra_count {
            c.str()?;
            c.str()?;
        }
        Ok(DecisionRecord {
            trace_id,
            decision,
            completeness,
            threshold,
            policy,
            missing,
            missing_count,
            extra,
            extra_count,
        })
    }
}

impl<'a> Iterator for DecisionReader<'a> {
    type Item = Result<DecisionRecord<'a>, LayoutError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            if self.tail_checked {
                return None;
            }
            self.tail_checked = true;
            let rest = self.cur;
            self.cur = Cursor::new(&[]);
            if self.has_metrics() {
                // The metrics section is checked whole here, so a reader that only iterates the
                // decisions still rejects a malformed batch.
                return MetricsView::read(rest).err().map(Err);
            }
            return (!rest.is_empty()).then_some(Err(LayoutError::TrailingBytes));
        }
        self.remaining -= 1;
        let rec = self.read_one();
        if rec.is_err() {
            // Stop after the first error: the rest of the buffer cannot be trusted.
            self.remaining = 0;
            self.cur = Cursor::new(&[]);
            self.tail_checked = true;
        }
        Some(rec)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn round_trip() {
        let mut w = DecisionWriter::new();
        let t1 = TraceId([1; 16]);
        let t2 = TraceId([2; 16]);
        w.push(
            t1,
            Decision::Sampled,
            Completeness::Incomplete,
            ThresholdOp::Raise(0xe6666666666666),
            "incomplete",
            ["root", "parent:0102030405060708"],
            &[("k", "v")],
        );
        w.push(
            t2,
            Decision::NotSampled,
            Completeness::Complete,
            ThresholdOp::Keep,
            "",
            [],
            &[],
        );
        let buf = w.finish(42);
        let r = DecisionReader::new(&buf).unwrap();
        assert_eq!(r.next_due(), 42);
        assert_eq!(r.len(), 2);
        let recs: Vec<_> = r.map(|x| x.unwrap()).collect();
        assert_eq!(recs[0].trace_id, t1);
        assert_eq!(recs[0].decision, Decision::Sampled);
        assert_eq!(recs[0].threshold, ThresholdOp::Raise(0xe6666666666666));
        assert_eq!(recs[0].policy, "incomplete");
        assert_eq!(
            recs[0].missing().collect::<Vec<_>>(),
            vec!["root", "parent:0102030405060708"]
        );
        assert_eq!(
            recs[0].extra_attributes().collect::<Vec<_>>(),
            vec![("k", "v")]
        );
        assert_eq!(recs[1].decision, Decision::NotSampled);
        assert_eq!(recs[1].missing_count(), 0);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut w = DecisionWriter::new();
        w.push(
            TraceId([7; 16]),
            Decision::Dropped,
            Completeness::Complete,
            ThresholdOp::Erase,
            "p",
            ["x"],
            &[("a", "b")],
        );
        let buf = w.finish(0);
        for cut in 0..buf.len() {
            let res: Result<Vec<_>, _> =
                DecisionReader::new(&buf[..cut]).and_then(|r| r.collect::<Result<Vec<_>, _>>());
            assert!(res.is_err(), "cut at {cut} was accepted");
        }
        let mut extra = buf.clone();
        extra.push(0);
        let res: Result<Vec<_>, _> = DecisionReader::new(&extra).unwrap().collect();
        assert_eq!(res.unwrap_err(), LayoutError::TrailingBytes);
    }

    #[test]
    fn bad_tags_are_rejected() {
        let mut w = DecisionWriter::new();
        w.push(
            TraceId([7; 16]),
            Decision::Sampled,
            Completeness::Complete,
            ThresholdOp::Keep,
            "p",
            [],
            &[],
        );
        let mut buf = w.finish(0);
        buf[HEADER_LEN + 16] = 9;
        let res: Result<Vec<_>, _> = DecisionReader::new(&buf).unwrap().collect();
        assert_eq!(res.unwrap_err(), LayoutError::BadTag(9));
        buf[0] = b'X';
        assert_eq!(DecisionReader::new(&buf).err(), Some(LayoutError::BadMagic));
    }

    fn with_metrics() -> Vec<u8> {
        let mut w = DecisionWriter::new();
        w.push(
            TraceId([3; 16]),
            Decision::Sampled,
            Completeness::Incomplete,
            ThresholdOp::Keep,
            "incomplete",
            ["consumer:publish order_confirmed"],
            &[],
        );
        let mut m = MetricsWriter::new();
        m.queue(&QueueMetrics {
            system: "rabbitmq",
            destination: "order_confirmed",
            produced: 5,
            consumed: 2,
            consumed_late: 1,
            oldest_unconsumed: 1_700_000_000_000_000_000,
        });
        m.root(&RootMetrics {
            service: "checkout",
            name: "POST /checkout",
            complete: 2,
            incomplete: 3,
            window_complete: 20,
            window_incomplete: 30,
        });
        m.root(&RootMetrics::default());
        assert_eq!((m.queue_count(), m.root_count()), (1, 2));
        w.finish_with_metrics(7, &m)
    }

    #[test]
    fn metrics_round_trip() {
        let buf = with_metrics();
        let r = DecisionReader::new(&buf).unwrap();
        assert!(r.has_metrics());
        assert_eq!(r.next_due(), 7);
        // Iterating the decisions alone accepts the batch.
        let recs: Vec<_> = r.clone().map(|x| x.unwrap()).collect();
        assert_eq!(recs.len(), 1);
        assert_eq!(
            recs[0].missing().collect::<Vec<_>>(),
            vec!["consumer:publish order_confirmed"]
        );
        let m = r.into_metrics().unwrap().unwrap();
        let queues: Vec<_> = m.queues().collect();
        assert_eq!(
            queues,
            vec![QueueMetrics {
                system: "rabbitmq",
                destination: "order_confirmed",
                produced: 5,
                consumed: 2,
                consumed_late: 1,
                oldest_unconsumed: 1_700_000_000_000_000_000,
            }]
        );
        let roots: Vec<_> = m.roots().collect();
        assert_eq!(roots.len(), 2);
        assert_eq!(roots[0].name, "POST /checkout");
        assert_eq!(roots[0].window_incomplete, 30);
        assert_eq!(roots[1], RootMetrics::default());
    }

    #[test]
    fn no_metrics_section_without_the_flag() {
        let mut w = DecisionWriter::new();
        w.push(
            TraceId([1; 16]),
            Decision::NotSampled,
            Completeness::Complete,
            ThresholdOp::Keep,
            "",
            [],
            &[],
        );
        let buf = w.finish(0);
        let r = DecisionReader::new(&buf).unwrap();
        assert!(!r.has_metrics());
        assert!(r.into_metrics().unwrap().is_none());
        // An empty metrics section is valid and distinct from none.
        let buf = DecisionWriter::new().finish_with_metrics(0, &MetricsWriter::new());
        let m = DecisionReader::new(&buf)
            .unwrap()
            .into_metrics()
            .unwrap()
            .unwrap();
        assert_eq!((m.queue_count(), m.root_count()), (0, 0));
    }

    #[test]
    fn every_truncation_of_the_metrics_section_is_an_error() {
        let buf = with_metrics();
        for cut in 0..buf.len() {
            let part = &buf[..cut];
            let iterated: Result<Vec<_>, _> =
                DecisionReader::new(part).and_then(|r| r.collect::<Result<Vec<_>, _>>());
            assert!(iterated.is_err(), "iterating a cut at {cut} was accepted");
            let metrics = DecisionReader::new(part).and_then(DecisionReader::into_metrics);
            assert!(metrics.is_err(), "metrics of a cut at {cut} were accepted");
        }
        let mut extra = buf.clone();
        extra.push(0);
        let res: Result<Vec<_>, _> = DecisionReader::new(&extra).unwrap().collect();
        assert_eq!(res.unwrap_err(), LayoutError::TrailingBytes);
        assert_eq!(
            DecisionReader::new(&extra)
                .unwrap()
                .into_metrics()
                .unwrap_err(),
            LayoutError::TrailingBytes
        );
    }

    #[test]
    fn corrupt_metrics_sections_are_errors() {
        let buf = with_metrics();
        let start = DecisionReader::new(&buf).unwrap();
        // Where the metrics start: the length of a batch with the same records and no metrics.
        let mut w = DecisionWriter::new();
        w.push(
            TraceId([3; 16]),
            Decision::Sampled,
            Completeness::Incomplete,
            ThresholdOp::Keep,
            "incomplete",
            ["consumer:publish order_confirmed"],
            &[],
        );
        let at = w.finish(7).len();
        assert!(start.has_metrics());
        let check = |bytes: &[u8]| {
            let iterated: Result<Vec<_>, _> = DecisionReader::new(bytes).unwrap().collect();
            let metrics = DecisionReader::new(bytes).unwrap().into_metrics();
            (iterated.err(), metrics.err())
        };
        // A queue count larger than the payload holds.
        let mut b = buf.clone();
        b[at] = 2;
        assert_eq!(
            check(&b),
            (Some(LayoutError::Truncated), Some(LayoutError::Truncated))
        );
        // A queue count smaller than the payload holds.
        let mut b = buf.clone();
        b[at] = 0;
        assert_eq!(
            check(&b),
            (
                Some(LayoutError::TrailingBytes),
                Some(LayoutError::TrailingBytes)
            )
        );
        // A payload length past the end of the buffer.
        let mut b = buf.clone();
        b[at + 7] = 0x7f;
        assert_eq!(
            check(&b),
            (Some(LayoutError::Truncated), Some(LayoutError::Truncated))
        );
        // A system name that is not UTF-8 (first byte of the first queue's system string).
        let mut b = buf.clone();
        b[at + 12] = 0xff;
        assert_eq!(
            check(&b),
            (Some(LayoutError::BadUtf8), Some(LayoutError::BadUtf8))
        );
        // The flag without any section.
        let mut b = DecisionWriter::new().finish(0);
        b[FLAGS_AT] = 1;
        assert!(DecisionReader::new(&b).unwrap().into_metrics().is_err());
    }

    /// The worked example of `wit/README.md` §9.6: the two decisions of §9.5 and a metrics
    /// section with one queue.
    #[test]
    fn documented_metrics_example() {
        let mut id = [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ];
        let mut w = DecisionWriter::new();
        w.push(
            TraceId(id),
            Decision::Sampled,
            Completeness::Complete,
            ThresholdOp::Raise(0xe6666666666666),
            "baseline",
            [],
            &[],
        );
        id[15] = 0x37;
        w.push(
            TraceId(id),
            Decision::Sampled,
            Completeness::Incomplete,
            ThresholdOp::Keep,
            "incomplete",
            ["root"],
            &[],
        );
        let mut m = MetricsWriter::new();
        m.queue(&QueueMetrics {
            system: "rabbitmq",
            destination: "order_confirmed",
            produced: 5,
            consumed: 2,
            consumed_late: 1,
            oldest_unconsumed: 1_700_000_000_000_000_000,
        });
        let buf = w.finish_with_metrics(1_700_000_010_000_000_000, &m);
        assert_eq!(buf.len(), 197);
        assert_eq!(&buf[..8], &[0x54, 0x4b, 0x44, 0x31, 1, 0, 1, 0]);
        let tail: [u8; 79] = [
            0x01, 0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x72, 0x61,
            0x62, 0x62, 0x69, 0x74, 0x6d, 0x71, 0x0f, 0x00, 0x00, 0x00, 0x6f, 0x72, 0x64, 0x65,
            0x72, 0x5f, 0x63, 0x6f, 0x6e, 0x66, 0x69, 0x72, 0x6d, 0x65, 0x64, 0x05, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x36, 0xfe, 0x9c, 0x97,
            0x17, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(&buf[0x76..], &tail[..]);
        let m = DecisionReader::new(&buf)
            .unwrap()
            .into_metrics()
            .unwrap()
            .unwrap();
        assert_eq!(
            m.queues().next().unwrap().oldest_unconsumed,
            1_700_000_000_000_000_000
        );
    }
}
