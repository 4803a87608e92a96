//! The byte layouts that cross the tracekeeper host/guest boundary.
//!
//! Two buffers cross the component boundary, each as one `list<u8>` (see `wit/README.md` for the
//! normative description, which this crate implements):
//!
//! * a **span-view batch** (host → guest): a header, then a stream of resource and span records
//!   holding only what the guest's `interest` asked for;
//! * a **decision batch** (guest → host): a header with the next due time, then one record per
//!   decided trace (decision, policy, completeness, missing entries, sampling threshold).
//!
//! Writers append to a `Vec<u8>`; readers borrow the buffer and never copy or allocate. Readers
//! never panic: every malformed buffer gives a [`LayoutError`].
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

mod batch;
mod decision;

pub use batch::{
    AttrIter, AttrKey, BatchReader, BatchWriter, EventIter, EventView, KvIter, LinkIter, Record,
    ResourceView, Section, SpanFixed, SpanView, TraceIdsAhead, Value, ValueIter, ValueWriter,
};
pub use decision::{
    Completeness, Decision, DecisionReader, DecisionRecord, DecisionWriter, FLAG_METRICS,
    MetricsView, MetricsWriter, QueueMetrics, RootMetrics, ThresholdOp,
};

/// First four bytes of a span-view batch.
pub const BATCH_MAGIC: [u8; 4] = *b"TKB1";
/// First four bytes of a decision batch.
pub const DECISION_MAGIC: [u8; 4] = *b"TKD1";
/// Version of both layouts described in `wit/README.md`.
pub const LAYOUT_VERSION: u16 = 1;
/// The WIT package version of the contract this crate implements.
pub const CONTRACT_VERSION: &str = "1.0.0";
/// An attribute key reference meaning "the key follows inline as a string".
pub const KEY_INLINE: u16 = 0xFFFF;
/// Deepest nesting of array / kvlist values a writer emits; deeper values become empty.
pub const MAX_VALUE_DEPTH: usize = 8;

/// A 16-byte trace id.
///
/// Compared and hashed as one integer rather than as a byte array (see [`SpanId`]); ordered
/// byte by byte.
#[derive(Clone, Copy, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
///
/// Compared and hashed as one integer rather than as a byte array: a derived `Hash` feeds the
/// hasher the array's length and then its bytes, and a derived `==` may call `memcmp`; in the
/// wasm guest, which looks a trace up for every span, both cost several times what they cost
/// natively (BENCHMARKS.md, "The guest: wasm component vs native"). Ordered byte by byte.
#[derive(Clone, Copy, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

impl PartialEq for TraceId {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        u128::from_ne_bytes(self.0) == u128::from_ne_bytes(other.0)
    }
}
impl Eq for TraceId {}
impl core::hash::Hash for TraceId {
    #[inline]
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.0));
    }
}

impl PartialEq for SpanId {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        u64::from_ne_bytes(self.0) == u64::from_ne_bytes(other.0)
    }
}
impl Eq for SpanId {}
impl core::hash::Hash for SpanId {
    #[inline]
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_ne_bytes(self.0));
    }
}

impl TraceId {
    /// The low 56 bits, the W3C randomness value when no `rv` is given.
    pub fn randomness(&self) -> u64 {
        let mut low = [0u8; 8];
        low[1..].copy_from_slice(&self.0[9..16]);
        u64::from_be_bytes(low)
    }
    /// True for the all-zero (invalid) id.
    pub fn is_zero(&self) -> bool {
        u128::from_ne_bytes(self.0) == 0
    }
}

impl SpanId {
    /// True for the all-zero id, which means "no parent" in a parent field.
    pub fn is_zero(&self) -> bool {
        u64::from_ne_bytes(self.0) == 0
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// Why a buffer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// The buffer ended inside a record.
    Truncated,
    /// The magic bytes are not the expected ones.
    BadMagic,
    /// The layout version is not [`LAYOUT_VERSION`].
    UnsupportedVersion(u16),
    /// An unknown record, value or enum tag.
    BadTag(u8),
    /// A string is not UTF-8.
    BadUtf8,
    /// A reference (resource index, key index) points outside its table.
    BadReference,
    /// Bytes remain after the last record a header announced.
    TrailingBytes,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Truncated => f.write_str("buffer ends inside a record"),
            LayoutError::BadMagic => f.write_str("bad magic bytes"),
            LayoutError::UnsupportedVersion(v) => write!(f, "unsupported layout version {v}"),
            LayoutError::BadTag(t) => write!(f, "unknown tag {t}"),
            LayoutError::BadUtf8 => f.write_str("string is not UTF-8"),
            LayoutError::BadReference => f.write_str("reference out of range"),
            LayoutError::TrailingBytes => f.write_str("bytes after the last record"),
        }
    }
}

impl core::error::Error for LayoutError {}

/// A bounds-checked little-endian cursor over a borrowed buffer.
#[derive(Clone, Copy)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], LayoutError> {
        if self.buf.len() < n {
            return Err(LayoutError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], LayoutError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, LayoutError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, LayoutError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, LayoutError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, LayoutError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], LayoutError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// Always inlined, like `read_section` in the batch reader: in the wasm guest the call
    /// (prologue, epoch check, the result returned through memory) cost about as much as the
    /// body; inlined, the guest's `ingest` runs 6% fewer instructions in wasm, 3% natively.
    #[inline(always)]
    pub(crate) fn str(&mut self) -> Result<&'a str, LayoutError> {
        let bytes = self.bytes()?;
        if bytes.is_empty() {
            // Most `tracestate`s: no call into `from_utf8`, which costs more in wasm.
            return Ok("");
        }
        core::str::from_utf8(bytes).map_err(|_| LayoutError::BadUtf8)
    }
}

pub(crate) fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}
/// Writes a length-prefixed byte string; lengths above `u32::MAX` are cut (never happens for
/// request bodies bounded far below 4 GiB).
pub(crate) fn put_bytes(buf: &mut Vec<u8>, v: &[u8]) {
    let n = v.len().min(u32::MAX as usize);
    put_u32(buf, n as u32);
    buf.extend_from_slice(&v[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::{Hash, Hasher};

    /// Records what an id feeds its hasher.
    #[derive(Default)]
    struct Recorder(Vec<u8>);

    impl Hasher for Recorder {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    fn fed<T: Hash>(v: &T) -> Vec<u8> {
        let mut r = Recorder::default();
        v.hash(&mut r);
        r.0
    }

    /// Ids that differ in one byte, anywhere, are unequal and feed the hasher different input;
    /// equal ids are equal and feed it the same; the order stays byte by byte.
    #[test]
    fn ids_compare_and_hash_by_every_byte() {
        let base: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(37));
        let t = TraceId(base);
        assert_eq!(t, TraceId(base));
        assert_eq!(fed(&t), fed(&TraceId(base)));
        for i in 0..16 {
            for delta in [1u8, 0x80] {
                let mut other = base;
                other[i] = other[i].wrapping_add(delta);
                let o = TraceId(other);
                assert_ne!(t, o, "byte {i}");
                assert_ne!(fed(&t), fed(&o), "byte {i}");
                assert_eq!(t.cmp(&o), base.cmp(&other), "byte {i}");
            }
        }
        let s = SpanId([9, 8, 7, 6, 5, 4, 3, 2]);
        assert_eq!(s, SpanId([9, 8, 7, 6, 5, 4, 3, 2]));
        for i in 0..8 {
            let mut other = s.0;
            other[i] ^= 0x40;
            assert_ne!(s, SpanId(other), "byte {i}");
            assert_ne!(fed(&s), fed(&SpanId(other)), "byte {i}");
            assert_eq!(s.cmp(&SpanId(other)), s.0.cmp(&other), "byte {i}");
        }
        assert!(TraceId([0; 16]).is_zero() && !t.is_zero());
        assert!(SpanId([0; 8]).is_zero() && !s.is_zero());
        let mut one = [0u8; 16];
        one[15] = 1;
        assert!(!TraceId(one).is_zero());
    }
}
