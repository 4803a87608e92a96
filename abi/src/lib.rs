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
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// The low 56 bits, the W3C randomness value when no `rv` is given.
    pub fn randomness(&self) -> u64 {
        let mut low = [0u8; 8];
        low[1..].copy_from_slice(&self.0[9..16]);
        u64::from_be_bytes(low)
    }
    /// True for the all-zero (invalid) id.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl SpanId {
    /// True for the all-zero id, which means "no parent" in a parent field.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
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
