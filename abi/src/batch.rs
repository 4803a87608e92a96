//! The span-view batch: what the host tells the guest about each span.

use alloc::vec::Vec;

use crate::{
    BATCH_MAGIC, Cursor, KEY_INLINE, LAYOUT_VERSION, LayoutError, SpanId, TraceId, put_bytes,
    put_u16, put_u32, put_u64,
};

const TAG_RESOURCE: u8 = 1;
const TAG_SPAN: u8 = 2;

/// Header flag: byte 60 of a span record that starts a run holds the run's length
/// ([`SpanView::run_len`]).
const FLAG_RUNS: u16 = 1;
/// The run length that means "this many or more" (a `u8` saturated).
const RUN_SATURATED: u8 = u8::MAX;
/// Offset of the run-length byte in a span record, from its tag: the fixed part's last byte
/// (byte 60).
const RUN_BYTE_AT: usize = SPAN_FIXED_LEN;

const V_EMPTY: u8 = 0;
const V_STR: u8 = 1;
const V_BOOL: u8 = 2;
const V_INT: u8 = 3;
const V_DOUBLE: u8 = 4;
const V_BYTES: u8 = 5;
const V_ARRAY: u8 = 6;
const V_KVLIST: u8 = 7;

/// The fixed-size part of a span record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanFixed {
    /// Trace id.
    pub trace_id: TraceId,
    /// Span id.
    pub span_id: SpanId,
    /// Parent span id, all zero for a root span.
    pub parent_span_id: SpanId,
    /// Start time, Unix ns.
    pub start_unix_nano: u64,
    /// End time, Unix ns.
    pub end_unix_nano: u64,
    /// Size of the span's protobuf encoding, for byte-based limits.
    pub encoded_len: u32,
    /// Index of the resource record (in order of appearance in this batch).
    pub resource: u32,
    /// OTLP `SpanKind` (0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: u8,
    /// OTLP `Status.code` (0 unset, 1 ok, 2 error).
    pub status_code: u8,
    /// The low byte of the OTLP span `flags` (W3C trace flags; bit 0 = sampled).
    pub flags: u8,
}

/// Length of one link on the wire: trace id and span id.
const LINK_LEN: u64 = 16 + 8;

/// Length of [`SpanFixed`] on the wire.
const SPAN_FIXED_LEN: usize = 16 + 8 + 8 + 8 + 8 + 4 + 4 + 4;

/// Builds a span-view batch (host side). Records are appended in order; sections (attributes,
/// links, events, nested values) are opened with `begin_*` and closed with `end_*`, which patch
/// the count and byte length written as placeholders.
#[derive(Debug)]
pub struct BatchWriter {
    buf: Vec<u8>,
    resources: u32,
    spans: u32,
    /// Where the run-length byte of the current run's first span record is (0: no span yet;
    /// the header takes offsets 0..8), and the run's trace id.
    run_at: usize,
    run_trace: TraceId,
}

/// A section opened by a `begin_*` call: where its header is and how many items it holds.
#[derive(Debug)]
#[must_use = "a section must be closed with end_section"]
pub struct Section {
    at: usize,
    count: u32,
}

impl Default for BatchWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchWriter {
    /// An empty batch.
    pub fn new() -> Self {
        let mut w = BatchWriter {
            buf: Vec::new(),
            resources: 0,
            spans: 0,
            run_at: 0,
            run_trace: TraceId::default(),
        };
        w.clear();
        w
    }

    /// Empties the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&BATCH_MAGIC);
        put_u16(&mut self.buf, LAYOUT_VERSION);
        put_u16(&mut self.buf, FLAG_RUNS);
        self.resources = 0;
        self.spans = 0;
        self.run_at = 0;
    }

    /// Number of span records written.
    pub fn span_count(&self) -> usize {
        self.spans as usize
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Starts a resource record; returns its index and the open attribute section.
    pub fn begin_resource(&mut self) -> (u32, Section) {
        self.buf.push(TAG_RESOURCE);
        let idx = self.resources;
        self.resources += 1;
        (idx, self.begin_section())
    }

    /// Starts a span record: its fixed part, name and `tracestate`. The caller then writes, in
    /// this order, the attribute section, the link section and the event section.
    ///
    /// Counts runs: span records of one trace id in a row (resource records between them do
    /// not break a run) are counted in the first one's byte 60 (saturating at 255), the others
    /// hold 0 there.
    pub fn begin_span(&mut self, fixed: &SpanFixed, name: &[u8], trace_state: &[u8]) {
        let run_byte = if self.run_at != 0 && self.run_trace == fixed.trace_id {
            if let Some(n) = self.buf.get_mut(self.run_at) {
                *n = n.saturating_add(1);
            }
            0
        } else {
            self.run_at = self.buf.len() + RUN_BYTE_AT;
            self.run_trace = fixed.trace_id;
            1
        };
        let b = &mut self.buf;
        b.push(TAG_SPAN);
        b.extend_from_slice(&fixed.trace_id.0);
        b.extend_from_slice(&fixed.span_id.0);
        b.extend_from_slice(&fixed.parent_span_id.0);
        put_u64(b, fixed.start_unix_nano);
        put_u64(b, fixed.end_unix_nano);
        put_u32(b, fixed.encoded_len);
        put_u32(b, fixed.resource);
        b.push(fixed.kind);
        b.push(fixed.status_code);
        b.push(fixed.flags);
        b.push(run_byte);
        put_bytes(b, name);
        put_bytes(b, trace_state);
        self.spans += 1;
    }

    /// Opens a section (attributes, links, events, or the items of an array / kvlist value).
    pub fn begin_section(&mut self) -> Section {
        let at = self.buf.len();
        put_u32(&mut self.buf, 0);
        put_u32(&mut self.buf, 0);
        Section { at, count: 0 }
    }

    /// Closes a section, writing its item count and byte length.
    pub fn end_section(&mut self, s: Section) {
        let len = (self.buf.len() - s.at - 8) as u32;
        self.buf[s.at..s.at + 4].copy_from_slice(&s.count.to_le_bytes());
        self.buf[s.at + 4..s.at + 8].copy_from_slice(&len.to_le_bytes());
    }

    /// Writes an attribute key given by its index in the interest list, and returns the writer
    /// for its value. Counts the item in `s`.
    pub fn attr_indexed(&mut self, s: &mut Section, key: u16) -> ValueWriter<'_> {
        s.count += 1;
        put_u16(&mut self.buf, key);
        ValueWriter { w: self }
    }

    /// Writes an inline attribute key and returns the writer for its value.
    pub fn attr_inline(&mut self, s: &mut Section, key: &[u8]) -> ValueWriter<'_> {
        s.count += 1;
        put_u16(&mut self.buf, KEY_INLINE);
        put_bytes(&mut self.buf, key);
        ValueWriter { w: self }
    }

    /// Writes one link (to another span, possibly in another trace).
    pub fn link(&mut self, s: &mut Section, trace_id: &TraceId, span_id: &SpanId) {
        s.count += 1;
        self.buf.extend_from_slice(&trace_id.0);
        self.buf.extend_from_slice(&span_id.0);
    }

    /// Writes an event's name and time; the caller then writes its attribute section.
    pub fn event(&mut self, s: &mut Section, name: &[u8], time_unix_nano: u64) {
        s.count += 1;
        put_bytes(&mut self.buf, name);
        put_u64(&mut self.buf, time_unix_nano);
    }

    /// Finishes the batch.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Writes one attribute value; obtained from [`BatchWriter::attr_indexed`] and friends.
#[derive(Debug)]
pub struct ValueWriter<'w> {
    w: &'w mut BatchWriter,
}

impl<'w> ValueWriter<'w> {
    /// No value.
    pub fn empty(self) {
        self.w.buf.push(V_EMPTY);
    }
    /// A string value (must be UTF-8; the host only passes protobuf strings, which are).
    pub fn str(self, v: &[u8]) {
        self.w.buf.push(V_STR);
        put_bytes(&mut self.w.buf, v);
    }
    /// A boolean value.
    pub fn bool(self, v: bool) {
        self.w.buf.push(V_BOOL);
        self.w.buf.push(v as u8);
    }
    /// An integer value.
    pub fn int(self, v: i64) {
        self.w.buf.push(V_INT);
        self.w.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A floating-point value.
    pub fn double(self, v: f64) {
        self.w.buf.push(V_DOUBLE);
        self.w.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A bytes value.
    pub fn bytes(self, v: &[u8]) {
        self.w.buf.push(V_BYTES);
        put_bytes(&mut self.w.buf, v);
    }
    /// Opens an array value; write items with [`BatchWriter::array_item`], then close the
    /// section with [`BatchWriter::end_section`].
    pub fn begin_array(self) -> Section {
        self.w.buf.push(V_ARRAY);
        self.w.begin_section()
    }
    /// Opens a kvlist value; write entries with [`BatchWriter::attr_inline`], then close the
    /// section with [`BatchWriter::end_section`].
    pub fn begin_kvlist(self) -> Section {
        self.w.buf.push(V_KVLIST);
        self.w.begin_section()
    }
}

impl BatchWriter {
    /// The writer for the next item of an open array value.
    pub fn array_item(&mut self, s: &mut Section) -> ValueWriter<'_> {
        s.count += 1;
        ValueWriter { w: self }
    }
}

/// One record of a batch.
#[derive(Debug, Clone)]
pub enum Record<'a> {
    /// A resource; resources are numbered from 0 in order of appearance.
    Resource(ResourceView<'a>),
    /// A span.
    Span(SpanView<'a>),
}

/// The attributes of a resource.
#[derive(Debug, Clone)]
pub struct ResourceView<'a> {
    /// Its index, referenced by [`SpanFixed::resource`].
    pub index: u32,
    /// The attributes the guest asked for.
    pub attributes: AttrIter<'a>,
}

/// A span, borrowed from the batch.
#[derive(Debug, Clone)]
pub struct SpanView<'a> {
    /// Ids, times, kind, status, flags, resource index.
    pub fixed: SpanFixed,
    /// Span name.
    pub name: &'a str,
    /// W3C `tracestate`.
    pub trace_state: &'a str,
    /// The attributes the guest asked for.
    pub attributes: AttrIter<'a>,
    /// Links (empty unless the guest asked for them).
    pub links: LinkIter<'a>,
    /// Events (empty unless the guest asked for them).
    pub events: EventIter<'a>,
    /// The run length the host counted, 0 where it did not ([`SpanView::run_len`]).
    run: u8,
}

impl SpanView<'_> {
    /// How many span records of this span's trace follow one another from this one on, this
    /// one included (resource records between them do not count), as the host counted them
    /// when it wrote the batch: what a guest needs to size a new trace's lists without reading
    /// ahead ([`BatchReader::trace_ids_ahead`]). `None` for a span that does not start a run,
    /// for runs of 255 spans or more, and for batches whose writer did not count runs (header
    /// flag bit 0 clear).
    pub fn run_len(&self) -> Option<usize> {
        match self.run {
            0 | RUN_SATURATED => None,
            n => Some(usize::from(n)),
        }
    }
}

/// An attribute key as written by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKey<'a> {
    /// Index into the `span-attributes` (or `resource-attributes`) list of the interest.
    Index(u16),
    /// The key itself.
    Inline(&'a str),
}

/// An attribute value.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    /// No value.
    Empty,
    /// A string.
    Str(&'a str),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Double(f64),
    /// Bytes.
    Bytes(&'a [u8]),
    /// An array of values.
    Array(ValueIter<'a>),
    /// A list of key/value pairs.
    KvList(KvIter<'a>),
}

/// Reads a section header (item count, byte length) and takes the section's bytes. Always
/// inlined: in the wasm guest the call itself (prologue, stack and epoch checks, the cursor
/// written back through memory) cost more than this body, 9.5% of the guest's time
/// (BENCHMARKS.md, "The guest: wasm component vs native").
#[inline(always)]
fn read_section<'a>(c: &mut Cursor<'a>) -> Result<(u32, Cursor<'a>), LayoutError> {
    let count = c.u32()?;
    let len = c.u32()? as usize;
    Ok((count, Cursor::new(c.take(len)?)))
}

fn read_value<'a>(c: &mut Cursor<'a>) -> Result<Value<'a>, LayoutError> {
    Ok(match c.u8()? {
        V_EMPTY => Value::Empty,
        V_STR => Value::Str(c.str()?),
        V_BOOL => Value::Bool(c.u8()? != 0),
        V_INT => Value::Int(i64::from_le_bytes(c.array()?)),
        V_DOUBLE => Value::Double(f64::from_le_bytes(c.array()?)),
        V_BYTES => Value::Bytes(c.bytes()?),
        V_ARRAY => {
            let (remaining, cur) = read_section(c)?;
            Value::Array(ValueIter { cur, remaining })
        }
        V_KVLIST => {
            let (remaining, cur) = read_section(c)?;
            Value::KvList(KvIter { cur, remaining })
        }
        t => return Err(LayoutError::BadTag(t)),
    })
}

macro_rules! section_iter {
    ($name:ident, $item:ty, $read:expr) => {
        impl<'a> Iterator for $name<'a> {
            type Item = Result<$item, LayoutError>;
            fn next(&mut self) -> Option<Self::Item> {
                if self.remaining == 0 {
                    return if self.cur.is_empty() {
                        None
                    } else {
                        self.cur = Cursor::new(&[]);
                        Some(Err(LayoutError::TrailingBytes))
                    };
                }
                self.remaining -= 1;
                let read: fn(&mut Cursor<'a>) -> Result<$item, LayoutError> = $read;
                let item = read(&mut self.cur);
                if item.is_err() {
                    self.remaining = 0;
                    self.cur = Cursor::new(&[]);
                }
                Some(item)
            }
        }
        impl<'a> $name<'a> {
            /// Number of items announced by the section header.
            pub fn len(&self) -> usize {
                self.remaining as usize
            }
            /// True when the section holds no item.
            pub fn is_empty(&self) -> bool {
                self.remaining == 0
            }
        }
    };
}

/// The items of an array value.
#[derive(Debug, Clone)]
pub struct ValueIter<'a> {
    cur: Cursor<'a>,
    remaining: u32,
}
section_iter!(ValueIter, Value<'a>, read_value);

/// The entries of a kvlist value.
#[derive(Debug, Clone)]
pub struct KvIter<'a> {
    cur: Cursor<'a>,
    remaining: u32,
}
section_iter!(KvIter, (AttrKey<'a>, Value<'a>), read_attr);

/// Attributes of a span, resource or event.
#[derive(Debug, Clone)]
pub struct AttrIter<'a> {
    cur: Cursor<'a>,
    remaining: u32,
}
section_iter!(AttrIter, (AttrKey<'a>, Value<'a>), read_attr);

fn read_attr<'a>(c: &mut Cursor<'a>) -> Result<(AttrKey<'a>, Value<'a>), LayoutError> {
    let key = match c.u16()? {
        KEY_INLINE => AttrKey::Inline(c.str()?),
        i => AttrKey::Index(i),
    };
    Ok((key, read_value(c)?))
}

/// Links of a span: (trace id, span id) of each linked span.
#[derive(Debug, Clone)]
pub struct LinkIter<'a> {
    cur: Cursor<'a>,
    remaining: u32,
}
section_iter!(LinkIter, (TraceId, SpanId), |c| Ok((
    TraceId(c.array()?),
    SpanId(c.array()?)
)));

/// One span event.
#[derive(Debug, Clone)]
pub struct EventView<'a> {
    /// Event name.
    pub name: &'a str,
    /// Event time, Unix ns.
    pub time_unix_nano: u64,
    /// The attributes the guest asked for.
    pub attributes: AttrIter<'a>,
}

/// Events of a span.
#[derive(Debug, Clone)]
pub struct EventIter<'a> {
    cur: Cursor<'a>,
    remaining: u32,
}
section_iter!(EventIter, EventView<'a>, |c| {
    let name = c.str()?;
    let time_unix_nano = c.u64()?;
    let (remaining, cur) = read_section(c)?;
    Ok(EventView {
        name,
        time_unix_nano,
        attributes: AttrIter { cur, remaining },
    })
});

/// Reads a span-view batch (guest side) without copying.
#[derive(Debug, Clone)]
pub struct BatchReader<'a> {
    cur: Cursor<'a>,
    resources: u32,
    /// Header flag bit 0: the writer counted runs.
    runs: bool,
}

impl core::fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Cursor({} bytes)", self.buf.len())
    }
}

impl<'a> BatchReader<'a> {
    /// Checks the header.
    pub fn new(buf: &'a [u8]) -> Result<Self, LayoutError> {
        let mut cur = Cursor::new(buf);
        if cur.array::<4>()? != BATCH_MAGIC {
            return Err(LayoutError::BadMagic);
        }
        let version = cur.u16()?;
        if version != LAYOUT_VERSION {
            return Err(LayoutError::UnsupportedVersion(version));
        }
        let flags = cur.u16()?;
        Ok(BatchReader {
            cur,
            resources: 0,
            runs: flags & FLAG_RUNS != 0,
        })
    }

    fn read_record(&mut self) -> Result<Record<'a>, LayoutError> {
        let c = &mut self.cur;
        match c.u8()? {
            TAG_RESOURCE => {
                let (remaining, cur) = read_section(c)?;
                let index = self.resources;
                self.resources += 1;
                Ok(Record::Resource(ResourceView {
                    index,
                    attributes: AttrIter { cur, remaining },
                }))
            }
            TAG_SPAN => {
                let f = Cursor::new(c.take(SPAN_FIXED_LEN)?);
                let mut f = f;
                let fixed = SpanFixed {
                    trace_id: TraceId(f.array()?),
                    span_id: SpanId(f.array()?),
                    parent_span_id: SpanId(f.array()?),
                    start_unix_nano: f.u64()?,
                    end_unix_nano: f.u64()?,
                    encoded_len: f.u32()?,
                    resource: f.u32()?,
                    kind: f.u8()?,
                    status_code: f.u8()?,
                    flags: f.u8()?,
                };
                let run = if self.runs { f.u8()? } else { 0 };
                if fixed.resource >= self.resources {
                    return Err(LayoutError::BadReference);
                }
                let name = c.str()?;
                let trace_state = c.str()?;
                let (remaining, cur) = read_section(c)?;
                let attributes = AttrIter { cur, remaining };
                let (remaining, cur) = read_section(c)?;
                // Compared in u64: on wasm32 `remaining * 24` can overflow usize (a panic in
                // debug builds, a wrap that could accept a bogus count in release builds).
                if cur.buf.len() as u64 != u64::from(remaining) * LINK_LEN {
                    return Err(LayoutError::Truncated);
                }
                let links = LinkIter { cur, remaining };
                let (remaining, cur) = read_section(c)?;
                let events = EventIter { cur, remaining };
                Ok(Record::Span(SpanView {
                    fixed,
                    name,
                    trace_state,
                    attributes,
                    links,
                    events,
                    run,
                }))
            }
            t => Err(LayoutError::BadTag(t)),
        }
    }
}

impl<'a> BatchReader<'a> {
    /// The trace ids of the span records that follow, read without checking their contents
    /// (names, attributes, links are skipped by their lengths, not parsed): a cheap look-ahead,
    /// for sizing. Resource records are skipped; it ends at the end of the batch or at a record
    /// too short to skip. The reader itself does not move.
    pub fn trace_ids_ahead(&self) -> TraceIdsAhead<'a> {
        TraceIdsAhead {
            cur: Cursor::new(self.cur.buf),
        }
    }
}

/// See [`BatchReader::trace_ids_ahead`].
#[derive(Debug, Clone)]
pub struct TraceIdsAhead<'a> {
    cur: Cursor<'a>,
}

impl TraceIdsAhead<'_> {
    fn skip_section(&mut self) -> Result<(), LayoutError> {
        let _count = self.cur.u32()?;
        let len = self.cur.u32()? as usize;
        self.cur.take(len).map(|_| ())
    }

    fn next_span(&mut self) -> Result<Option<TraceId>, LayoutError> {
        while !self.cur.is_empty() {
            match self.cur.u8()? {
                TAG_RESOURCE => self.skip_section()?,
                TAG_SPAN => {
                    let fixed = self.cur.take(SPAN_FIXED_LEN)?;
                    let mut id = [0u8; 16];
                    id.copy_from_slice(fixed.get(..16).ok_or(LayoutError::Truncated)?);
                    self.cur.bytes()?; // name
                    self.cur.bytes()?; // trace state
                    for _ in 0..3 {
                        self.skip_section()?; // attributes, links, events
                    }
                    return Ok(Some(TraceId(id)));
                }
                t => return Err(LayoutError::BadTag(t)),
            }
        }
        Ok(None)
    }
}

impl Iterator for TraceIdsAhead<'_> {
    type Item = TraceId;

    fn next(&mut self) -> Option<TraceId> {
        match self.next_span() {
            Ok(id) => id,
            Err(_) => {
                self.cur = Cursor::new(&[]);
                None
            }
        }
    }
}

impl<'a> Iterator for BatchReader<'a> {
    type Item = Result<Record<'a>, LayoutError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.cur.is_empty() {
            return None;
        }
        let rec = self.read_record();
        if rec.is_err() {
            self.cur = Cursor::new(&[]);
        }
        Some(rec)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;

    /// Writes a span record of trace `t` (one byte repeated) in resource `r`, with empty
    /// sections.
    fn bare_span(w: &mut BatchWriter, t: u8, r: u32) {
        let fixed = SpanFixed {
            trace_id: TraceId([t; 16]),
            resource: r,
            ..SpanFixed::default()
        };
        w.begin_span(&fixed, b"op", b"");
        for _ in 0..3 {
            let s = w.begin_section();
            w.end_section(s);
        }
    }

    /// Span records of the traces `traces` names, each preceded by a resource record where
    /// `resource_before` says so.
    fn runs_batch(traces: &[u8], resource_before: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut w = BatchWriter::new();
        let mut r = 0;
        for (i, &t) in traces.iter().enumerate() {
            if i == 0 || resource_before(i) {
                let (idx, s) = w.begin_resource();
                w.end_section(s);
                r = idx;
            }
            bare_span(&mut w, t, r);
        }
        w.finish()
    }

    fn run_lens(bytes: &[u8]) -> Vec<Option<usize>> {
        BatchReader::new(bytes)
            .unwrap()
            .filter_map(|r| match r.unwrap() {
                Record::Span(s) => Some(s.run_len()),
                Record::Resource(_) => None,
            })
            .collect()
    }

    #[test]
    fn the_writer_counts_runs_of_a_trace_s_spans() {
        // A A [resource] A B A: a resource record does not break A's run; B does.
        let bytes = runs_batch(&[1, 1, 1, 2, 1], |i| i == 2);
        assert_eq!(bytes[6] & 1, 1, "header flag bit 0: runs counted");
        assert_eq!(run_lens(&bytes), [Some(3), None, None, Some(1), Some(1)]);
        // The run is what the look-ahead reads, from the record that starts it.
        let mut reader = BatchReader::new(&bytes).unwrap();
        reader.next(); // the resource
        reader.next(); // A's first span
        assert_eq!(
            reader.trace_ids_ahead().take_while(|t| t.0[0] == 1).count(),
            2
        );
        // A run longer than a byte holds is not told; the next run is counted again.
        let mut long = vec![7u8; 300];
        long.push(8);
        let lens = run_lens(&runs_batch(&long, |_| false));
        assert_eq!(lens[0], None);
        assert_eq!(lens[300], Some(1));
        let mut at_limit = vec![7u8; 254];
        at_limit.push(8);
        assert_eq!(run_lens(&runs_batch(&at_limit, |_| false))[0], Some(254));
        // A writer that does not count runs: flag clear, byte 60 ignored.
        let mut uncounted = runs_batch(&[1, 1], |_| false);
        uncounted[6] &= !1;
        assert_eq!(run_lens(&uncounted), [None, None]);
        // Cleared and reused, the writer starts counting afresh.
        let mut w = BatchWriter::new();
        for _ in 0..2 {
            w.clear();
            let (r, s) = w.begin_resource();
            w.end_section(s);
            bare_span(&mut w, 5, r);
            assert_eq!(run_lens(w.as_bytes()), [Some(1)]);
        }
    }

    /// The worked example of `wit/README.md` §8.7, byte for byte.
    #[test]
    fn the_worked_example_of_the_layout_document() {
        let mut w = BatchWriter::new();
        let (r, mut s) = w.begin_resource();
        w.attr_indexed(&mut s, 0).str(b"checkout");
        w.end_section(s);
        let fixed = SpanFixed {
            trace_id: TraceId([
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36,
            ]),
            span_id: SpanId([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]),
            parent_span_id: SpanId::default(),
            start_unix_nano: 1_700_000_000_000_000_000,
            end_unix_nano: 1_700_000_000_250_000_000,
            encoded_len: 87,
            resource: r,
            kind: 2,
            status_code: 0,
            flags: 1,
        };
        w.begin_span(&fixed, b"GET /cart", b"");
        let mut a = w.begin_section();
        w.attr_inline(&mut a, b"http.response.status_code").int(200);
        w.end_section(a);
        for _ in 0..2 {
            let s = w.begin_section();
            w.end_section(s);
        }
        let doc = "
            54 4b 42 31 01 00 01 00 01 01 00 00 00 0f 00 00
            00 00 00 01 08 00 00 00 63 68 65 63 6b 6f 75 74
            02 4b f9 2f 35 77 b3 4d a6 a3 ce 92 9d 0e 0e 47
            36 00 f0 67 aa 0b a9 02 b7 00 00 00 00 00 00 00
            00 00 00 2a 36 fe 9c 97 17 80 b2 10 45 fe 9c 97
            17 57 00 00 00 00 00 00 00 02 00 01 01 09 00 00
            00 47 45 54 20 2f 63 61 72 74 00 00 00 00 01 00
            00 00 28 00 00 00 ff ff 19 00 00 00 68 74 74 70
            2e 72 65 73 70 6f 6e 73 65 2e 73 74 61 74 75 73
            5f 63 6f 64 65 03 c8 00 00 00 00 00 00 00 00 00
            00 00 00 00 00 00 00 00 00 00 00 00 00 00";
        let expected: Vec<u8> = doc
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(expected.len(), 174);
        assert_eq!(w.finish(), expected);
    }

    #[test]
    fn trace_ids_ahead_reads_the_span_records_that_follow() {
        let mut w = BatchWriter::new();
        let mut ids = vec![];
        for t in 1..=3u8 {
            let (r, s) = w.begin_resource();
            w.end_section(s);
            for _ in 0..t {
                let fixed = SpanFixed {
                    trace_id: TraceId([t; 16]),
                    resource: r,
                    ..SpanFixed::default()
                };
                w.begin_span(&fixed, "name".as_bytes(), b"");
                let mut attrs = w.begin_section();
                w.attr_inline(&mut attrs, b"k").str(b"v");
                w.end_section(attrs);
                for _ in 0..2 {
                    let s = w.begin_section();
                    w.end_section(s);
                }
                ids.push(TraceId([t; 16]));
            }
        }
        let bytes = w.finish();
        let mut reader = BatchReader::new(&bytes).unwrap();
        assert_eq!(reader.trace_ids_ahead().collect::<Vec<_>>(), ids);
        // From the reader's position on, and without moving it.
        reader.next().unwrap().unwrap(); // resource 0
        reader.next().unwrap().unwrap(); // the span of trace 1
        assert_eq!(reader.trace_ids_ahead().collect::<Vec<_>>(), ids[1..]);
        assert!(matches!(reader.next(), Some(Ok(Record::Resource(_)))));
        // A truncated last record ends the look-ahead before it.
        let cut = BatchReader::new(&bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(cut.trace_ids_ahead().count(), ids.len() - 1);
    }

    fn sample() -> Vec<u8> {
        let mut w = BatchWriter::new();
        let (r, mut s) = w.begin_resource();
        w.attr_indexed(&mut s, 0).str(b"checkout");
        w.end_section(s);
        let fixed = SpanFixed {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: SpanId([3; 8]),
            start_unix_nano: 10,
            end_unix_nano: 20,
            encoded_len: 99,
            resource: r,
            kind: 4,
            status_code: 2,
            flags: 1,
        };
        w.begin_span(&fixed, b"publish", b"ot=th:8");
        let mut a = w.begin_section();
        w.attr_inline(&mut a, b"n").int(-5);
        let mut arr = w.attr_indexed(&mut a, 1).begin_array();
        w.array_item(&mut arr).bool(true);
        w.array_item(&mut arr).double(1.5);
        w.end_section(arr);
        w.end_section(a);
        let mut l = w.begin_section();
        w.link(&mut l, &TraceId([9; 16]), &SpanId([8; 8]));
        w.end_section(l);
        let mut e = w.begin_section();
        w.event(&mut e, b"exception", 15);
        let mut ea = w.begin_section();
        w.attr_inline(&mut ea, b"exception.type").str(b"E");
        w.end_section(ea);
        w.end_section(e);
        assert_eq!(w.span_count(), 1);
        w.finish()
    }

    #[test]
    fn round_trip() {
        let buf = sample();
        let recs: Vec<_> = BatchReader::new(&buf)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(recs.len(), 2);
        let Record::Resource(res) = &recs[0] else {
            panic!("resource first")
        };
        let attrs: Vec<_> = res.attributes.clone().map(|a| a.unwrap()).collect();
        assert!(matches!(
            attrs[0],
            (AttrKey::Index(0), Value::Str("checkout"))
        ));
        let Record::Span(span) = &recs[1] else {
            panic!("span second")
        };
        assert_eq!(span.fixed.encoded_len, 99);
        assert_eq!(span.fixed.parent_span_id, SpanId([3; 8]));
        assert_eq!(span.name, "publish");
        assert_eq!(span.trace_state, "ot=th:8");
        let attrs: Vec<_> = span.attributes.clone().map(|a| a.unwrap()).collect();
        assert!(matches!(attrs[0], (AttrKey::Inline("n"), Value::Int(-5))));
        let Value::Array(items) = &attrs[1].1 else {
            panic!("array")
        };
        let items: Vec<_> = items.clone().map(|v| v.unwrap()).collect();
        assert!(matches!(items[..], [Value::Bool(true), Value::Double(x)] if x == 1.5));
        let links: Vec<_> = span.links.clone().map(|l| l.unwrap()).collect();
        assert_eq!(links, vec![(TraceId([9; 16]), SpanId([8; 8]))]);
        let events: Vec<_> = span.events.clone().map(|e| e.unwrap()).collect();
        assert_eq!(events[0].name, "exception");
        assert_eq!(events[0].time_unix_nano, 15);
        let mut names = String::new();
        for a in events[0].attributes.clone() {
            if let (AttrKey::Inline(k), _) = a.unwrap() {
                names.push_str(k);
            }
        }
        assert_eq!(names, "exception.type");
    }

    /// Walks every record and every nested item, returning the first error.
    fn walk(buf: &[u8]) -> Result<usize, LayoutError> {
        fn walk_value(v: Value<'_>) -> Result<(), LayoutError> {
            match v {
                Value::Array(mut items) => items.try_for_each(|i| walk_value(i?)),
                Value::KvList(mut kv) => kv.try_for_each(|i| walk_value(i?.1)),
                _ => Ok(()),
            }
        }
        let mut n = 0;
        for r in BatchReader::new(buf)? {
            n += 1;
            match r? {
                Record::Resource(res) => {
                    for a in res.attributes {
                        walk_value(a?.1)?;
                    }
                }
                Record::Span(s) => {
                    for a in s.attributes {
                        walk_value(a?.1)?;
                    }
                    for l in s.links {
                        l?;
                    }
                    for e in s.events {
                        for a in e?.attributes {
                            walk_value(a?.1)?;
                        }
                    }
                }
            }
        }
        Ok(n)
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let buf = sample();
        assert_eq!(walk(&buf), Ok(2));
        for cut in 0..buf.len() {
            // A cut exactly between records is a valid shorter batch; every other cut fails.
            if let Ok(n) = walk(&buf[..cut]) {
                assert!(cut == 8 && n == 0 || n == 1, "cut {cut} gave {n} records");
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let buf = sample();
        for i in 0..buf.len() {
            for v in [0u8, 1, 7, 0x80, 0xff] {
                let mut b = buf.clone();
                b[i] = v;
                let _ = walk(&b);
            }
        }
    }

    #[test]
    fn span_before_its_resource_is_rejected() {
        let mut w = BatchWriter::new();
        w.begin_span(&SpanFixed::default(), b"x", b"");
        for _ in 0..3 {
            let s = w.begin_section();
            w.end_section(s);
        }
        let buf = w.finish();
        assert_eq!(walk(&buf), Err(LayoutError::BadReference));
    }
}
