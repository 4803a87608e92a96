//! The decision batch: what the guest answers for each trace it decided.

use alloc::vec::Vec;

use crate::{
    Cursor, DECISION_MAGIC, LAYOUT_VERSION, LayoutError, TraceId, put_bytes, put_u16, put_u32,
    put_u64,
};

/// Size of the decision-batch header: magic, version, flags, count, next due time.
const HEADER_LEN: usize = 4 + 2 + 2 + 4 + 8;

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
}

/// Reads a decision batch (host side) without copying.
#[derive(Clone)]
pub struct DecisionReader<'a> {
    cur: Cursor<'a>,
    remaining: u32,
    next_due: u64,
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
        let _flags = cur.u16()?;
        let remaining = cur.u32()?;
        let next_due = cur.u64()?;
        Ok(DecisionReader {
            cur,
            remaining,
            next_due,
        })
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
            if self.cur.is_empty() {
                return None;
            }
            self.cur = Cursor::new(&[]);
            return Some(Err(LayoutError::TrailingBytes));
        }
        self.remaining -= 1;
        let rec = self.read_one();
        if rec.is_err() {
            // Stop after the first error: the rest of the buffer cannot be trusted.
            self.remaining = 0;
            self.cur = Cursor::new(&[]);
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
}
