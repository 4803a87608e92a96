//! Splits an encoded `ExportTraceServiceRequest` into its spans without decoding them.
//!
//! Each span stays a slice of the request body; its resource and scope become a shared
//! [`Group`] holding the encoded fields of the enclosing `ResourceSpans` and `ScopeSpans` (minus
//! their children), so the exporter can put kept spans back under them unchanged. The whole
//! request is checked for well-formed protobuf (wire types, lengths, UTF-8, nesting), as a
//! decoder would; spans with invalid ids are rejected one by one (partial success).

use std::sync::Arc;

use tracekeeper_abi::{SpanId, TraceId};

use super::view::{Interest, Pick};
use super::wire::{
    FIXED64, Field, Fields, LEN, MAX_NESTING, VARINT, WireError, short_key_value,
    short_string_value,
};

// Field numbers of the OTLP trace protos (opentelemetry-proto, trace/v1 and common/v1).
const REQ_RESOURCE_SPANS: u32 = 1;
const RS_SCOPE_SPANS: u32 = 2;
const SS_SPANS: u32 = 2;
const RESOURCE_ATTRIBUTES: u32 = 1;
const RS_RESOURCE: u32 = 1;
const SCOPE_ATTRIBUTES: u32 = 3;
const SS_SCOPE: u32 = 1;
/// Span fields.
pub mod span_field {
    /// `bytes trace_id`
    pub const TRACE_ID: u32 = 1;
    /// `bytes span_id`
    pub const SPAN_ID: u32 = 2;
    /// `string trace_state`
    pub const TRACE_STATE: u32 = 3;
    /// `bytes parent_span_id`
    pub const PARENT_SPAN_ID: u32 = 4;
    /// `string name`
    pub const NAME: u32 = 5;
    /// `SpanKind kind`
    pub const KIND: u32 = 6;
    /// `fixed64 start_time_unix_nano`
    pub const START: u32 = 7;
    /// `fixed64 end_time_unix_nano`
    pub const END: u32 = 8;
    /// `repeated KeyValue attributes`
    pub const ATTRIBUTES: u32 = 9;
    /// `uint32 dropped_attributes_count`
    pub const DROPPED_ATTRIBUTES: u32 = 10;
    /// `repeated Event events`
    pub const EVENTS: u32 = 11;
    /// `uint32 dropped_events_count`
    pub const DROPPED_EVENTS: u32 = 12;
    /// `repeated Link links`
    pub const LINKS: u32 = 13;
    /// `uint32 dropped_links_count`
    pub const DROPPED_LINKS: u32 = 14;
    /// `Status status`
    pub const STATUS: u32 = 15;
    /// `fixed32 flags`
    pub const FLAGS: u32 = 16;
}
use span_field as sf;

/// The resource and scope a span came under, as encoded fields.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Group {
    /// The fields of the `ResourceSpans` message except `scope_spans` (resource, schema URL).
    pub resource_fields: Vec<u8>,
    /// The fields of the `ScopeSpans` message except `spans` (scope, schema URL).
    pub scope_fields: Vec<u8>,
}

impl Group {
    /// The payload of the `Resource` message, if present.
    pub fn resource(&self) -> Option<&[u8]> {
        Fields::new(&self.resource_fields)
            .filter_map(Result::ok)
            .filter(|f| f.number == RS_RESOURCE)
            .last()
            .and_then(|f| f.bytes().ok())
    }
}

/// What the host reads of every span.
#[derive(Debug, Clone, Copy)]
pub struct SpanInfo<'a> {
    /// Trace id.
    pub trace_id: TraceId,
    /// Span id.
    pub span_id: SpanId,
    /// Parent span id (zero for a root).
    pub parent_span_id: SpanId,
    /// Span name.
    pub name: &'a str,
    /// W3C tracestate.
    pub trace_state: &'a str,
    /// OTLP SpanKind.
    pub kind: u8,
    /// Start time, Unix ns.
    pub start_unix_nano: u64,
    /// End time, Unix ns.
    pub end_unix_nano: u64,
    /// OTLP status code.
    pub status_code: u8,
    /// Low byte of the span flags (W3C trace flags).
    pub flags: u8,
    /// Where the span's attributes, events and links lie in its bytes: from the start of the
    /// first such field to the end of the last (0..0 when it has none), so that the view
    /// builder walks only that part (other fields in between are skipped as usual).
    pub details: (u32, u32),
    /// The span has links or events.
    pub links_or_events: bool,
    /// Where its attributes picked for an interest are in [`ParsedRequest::picks`] (start,
    /// end; empty when parsed without an interest).
    pub picks: (u32, u32),
}

/// One span of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestSpan<'a> {
    /// Index into [`ParsedRequest::groups`].
    pub group: usize,
    /// The encoded `Span` message (its content, without the field header).
    pub bytes: &'a [u8],
    /// The fields the host reads.
    pub info: SpanInfo<'a>,
}

/// A request split into spans.
#[derive(Debug, Default)]
pub struct ParsedRequest<'a> {
    /// Resource/scope groups, in order of appearance.
    pub groups: Vec<Arc<Group>>,
    /// Accepted spans.
    pub spans: Vec<RequestSpan<'a>>,
    /// Number of spans rejected for invalid ids.
    pub rejected: u64,
    /// Why the first rejected span was rejected.
    pub reject_reason: Option<String>,
    /// The span attributes the interest given to [`parse_request_with`] selects, of every
    /// accepted span, in order.
    pub picks: Vec<Pick<'a>>,
}

impl<'a> ParsedRequest<'a> {
    /// The attributes picked of `span` (one of [`ParsedRequest::spans`]).
    pub fn picks_of(&self, span: &RequestSpan<'a>) -> &[Pick<'a>] {
        let (start, end) = span.info.picks;
        self.picks.get(start as usize..end as usize).unwrap_or(&[])
    }
}

/// Why a whole request is refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed protobuf somewhere in the request.
    #[error("malformed ExportTraceServiceRequest: {0}")]
    Wire(#[from] WireError),
}

/// Why one span is rejected while the others of its request are accepted.
#[derive(Debug)]
enum SpanReject {
    Wire(WireError),
    Invalid(String),
}

impl From<WireError> for SpanReject {
    fn from(e: WireError) -> Self {
        SpanReject::Wire(e)
    }
}

/// Encoded bytes of a usual span, for sizing a request's span list: a span with a handful of
/// attributes is 200-500 bytes; smaller spans make the list grow once or twice.
const TYPICAL_SPAN_BYTES: usize = 256;

/// Splits and checks a request.
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest<'_>, RequestError> {
    parse(body, None)
}

/// [`parse_request`], also picking each span's attributes that `interest` selects as the
/// walk checks them ([`ParsedRequest::picks`]; see [`crate::otlp::view::ViewBuilder::add_picked`]).
pub fn parse_request_with<'a>(
    body: &'a [u8],
    interest: &Interest,
) -> Result<ParsedRequest<'a>, RequestError> {
    parse(body, Some(interest))
}

fn parse<'a>(
    body: &'a [u8],
    interest: Option<&Interest>,
) -> Result<ParsedRequest<'a>, RequestError> {
    let mut out = ParsedRequest {
        // Sized for spans of [`TYPICAL_SPAN_BYTES`], so a usual request fills its list without
        // growing it (each growth copies what it holds).
        spans: Vec::with_capacity(body.len() / TYPICAL_SPAN_BYTES),
        ..ParsedRequest::default()
    };
    for f in Fields::new(body) {
        let f = f?;
        if f.number != REQ_RESOURCE_SPANS {
            continue; // unknown fields were checked for well-formedness by `Fields`
        }
        parse_resource_spans(f.bytes()?, interest, &mut out)?;
    }
    Ok(out)
}

fn parse_resource_spans<'a>(
    rs: &'a [u8],
    interest: Option<&Interest>,
    out: &mut ParsedRequest<'a>,
) -> Result<(), WireError> {
    let mut resource_fields = Vec::new();
    let mut scopes = Vec::new();
    for f in Fields::new(rs) {
        let f = f?;
        match f.number {
            RS_SCOPE_SPANS => scopes.push(f.bytes()?),
            RS_RESOURCE => {
                check_resource(f.bytes()?)?;
                resource_fields.extend_from_slice(f.raw);
            }
            3 => {
                f.str()?;
                resource_fields.extend_from_slice(f.raw);
            }
            _ => resource_fields.extend_from_slice(f.raw),
        }
    }
    for ss in scopes {
        let mut scope_fields = Vec::new();
        // Spans are checked where they stand and listed under the index their group will
        // have; the group is added after its fields are read (they may follow the spans).
        let group = out.groups.len();
        let mut span_fields = 0usize;
        for f in Fields::new(ss) {
            let f = f?;
            match f.number {
                SS_SPANS => {
                    span_fields += 1;
                    let bytes = f.bytes()?;
                    let picker = interest.map(|interest| Picker {
                        interest,
                        picks: &mut out.picks,
                    });
                    match parse_span(bytes, picker) {
                        Ok(info) => out.spans.push(RequestSpan { group, bytes, info }),
                        Err(SpanReject::Wire(e)) => return Err(e),
                        Err(SpanReject::Invalid(why)) => {
                            out.rejected += 1;
                            if out.reject_reason.is_none() {
                                out.reject_reason = Some(why);
                            }
                        }
                    }
                }
                SS_SCOPE => {
                    check_scope(f.bytes()?)?;
                    scope_fields.extend_from_slice(f.raw);
                }
                3 => {
                    f.str()?;
                    scope_fields.extend_from_slice(f.raw);
                }
                _ => scope_fields.extend_from_slice(f.raw),
            }
        }
        if span_fields == 0 {
            continue;
        }
        out.groups.push(Arc::new(Group {
            resource_fields: resource_fields.clone(),
            scope_fields,
        }));
    }
    Ok(())
}

fn id<const N: usize>(f: &Field<'_>, what: &str) -> Result<[u8; N], SpanReject> {
    let b = f.bytes()?;
    <[u8; N]>::try_from(b)
        .map_err(|_| SpanReject::Invalid(format!("{what} has {} bytes, want {N}", b.len())))
}

/// The fields the host reads of a span already accepted once (its bytes are known good).
pub fn span_info(bytes: &[u8]) -> Option<SpanInfo<'_>> {
    parse_span(bytes, None).ok()
}

/// Where a span's walk puts the attributes an interest selects.
struct Picker<'p, 'a> {
    interest: &'p Interest,
    picks: &'p mut Vec<Pick<'a>>,
}

/// Reads and checks one encoded span (and picks its attributes, with a `picker`).
fn parse_span<'a>(
    bytes: &'a [u8],
    picker: Option<Picker<'_, 'a>>,
) -> Result<SpanInfo<'a>, SpanReject> {
    parse_span_from(bytes, picker, true)
}

/// The one-byte tag of span field `number` (below 16) with wire type `wire_type`.
const fn tag(number: u32, wire_type: u8) -> u8 {
    (number as u8) << 3 | wire_type
}

/// The next field's payload if it is the short length-delimited field `tag` and `read`
/// accepts it; otherwise `None`, and nothing is consumed.
#[inline(always)]
fn take_short<'a, T>(
    fields: &mut Fields<'a>,
    tag: u8,
    read: impl FnOnce(&'a [u8]) -> Option<T>,
) -> Option<T> {
    let mut ahead = fields.clone();
    let value = ahead.next_short_len(tag).and_then(read)?;
    *fields = ahead;
    Some(value)
}

/// Reads a span's leading fields while they come in field-number order (as encoders write
/// them) and are valid, without the dispatch on each field's number: ids, `trace_state`, the
/// parent, name, kind and times. It stops at the first field that is not the next one expected
/// (or not valid), which the general walk then reads like any other, reporting its errors; the
/// fields taken here are the first ones of the span, in order, so the result is the same.
#[inline(always)]
fn read_usual_prefix<'a>(fields: &mut Fields<'a>, info: &mut SpanInfo<'a>) {
    if let Some(t) = take_short(fields, tag(sf::TRACE_ID, LEN), |p| p.try_into().ok()) {
        info.trace_id = TraceId(t);
    }
    if let Some(s) = take_short(fields, tag(sf::SPAN_ID, LEN), |p| p.try_into().ok()) {
        info.span_id = SpanId(s);
    }
    if let Some(ts) = take_short(fields, tag(sf::TRACE_STATE, LEN), |p| {
        std::str::from_utf8(p).ok()
    }) {
        info.trace_state = ts;
    }
    if let Some(p) = take_short(fields, tag(sf::PARENT_SPAN_ID, LEN), |p| match p.len() {
        0 => Some([0; 8]),
        _ => p.try_into().ok(),
    }) {
        info.parent_span_id = SpanId(p);
    }
    if let Some(name) = take_short(fields, tag(sf::NAME, LEN), |p| std::str::from_utf8(p).ok()) {
        info.name = name;
    }
    if let Some(kind) = fields.next_short_varint(tag(sf::KIND, VARINT)) {
        info.kind = kind;
    }
    if let Some(start) = fields.next_fixed64(tag(sf::START, FIXED64)) {
        info.start_unix_nano = start;
    }
    if let Some(end) = fields.next_fixed64(tag(sf::END, FIXED64)) {
        info.end_unix_nano = end;
    }
}

/// [`parse_span`], with the fast path for the usual leading fields or (tests) without.
#[inline(always)]
fn parse_span_from<'a>(
    bytes: &'a [u8],
    mut picker: Option<Picker<'_, 'a>>,
    usual_prefix: bool,
) -> Result<SpanInfo<'a>, SpanReject> {
    let mut info = SpanInfo {
        trace_id: TraceId::default(),
        span_id: SpanId::default(),
        parent_span_id: SpanId::default(),
        name: "",
        trace_state: "",
        kind: 0,
        start_unix_nano: 0,
        end_unix_nano: 0,
        status_code: 0,
        flags: 0,
        details: (0, 0),
        links_or_events: false,
        picks: (0, 0),
    };
    let first_pick = picker.as_ref().map_or(0, |p| p.picks.len());
    let mut bad_parent = None;
    let (mut details_start, mut details_end) = (usize::MAX, 0);
    let mut fields = Fields::new(bytes);
    if usual_prefix {
        read_usual_prefix(&mut fields, &mut info);
    }
    while let Some(f) = fields.next() {
        let f = f?;
        if matches!(f.number, sf::ATTRIBUTES | sf::EVENTS | sf::LINKS) {
            // Offsets of the field in `bytes` (it is a sub-slice of it).
            let start = (f.raw.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
            details_start = details_start.min(start);
            details_end = details_end.max(start.saturating_add(f.raw.len()));
        }
        match f.number {
            sf::TRACE_ID => info.trace_id = TraceId(id(&f, "trace_id")?),
            sf::SPAN_ID => info.span_id = SpanId(id(&f, "span_id")?),
            sf::TRACE_STATE => info.trace_state = f.str()?,
            sf::PARENT_SPAN_ID => {
                let b = f.bytes()?;
                match <[u8; 8]>::try_from(b) {
                    Ok(p) => info.parent_span_id = SpanId(p),
                    Err(_) if b.is_empty() => info.parent_span_id = SpanId::default(),
                    Err(_) => bad_parent = Some(b.len()),
                }
            }
            sf::NAME => info.name = f.str()?,
            sf::KIND => info.kind = u8::try_from(f.varint()?).unwrap_or(u8::MAX),
            sf::START => info.start_unix_nano = f.fixed64()?,
            sf::END => info.end_unix_nano = f.fixed64()?,
            sf::ATTRIBUTES => {
                let mut kv = f.bytes()?;
                loop {
                    let split = check_key_value_split(kv, LEVEL_SPAN + 1)?;
                    if let Some(p) = picker.as_mut() {
                        p.interest.pick(kv, split, p.picks);
                    }
                    // The attributes that follow in a row (as encoders write them) are taken
                    // here, without the dispatch on each field's number.
                    match fields.next_short_len(ATTRIBUTES_TAG) {
                        Some(next) => kv = next,
                        None => break,
                    }
                }
                let end = (fields.rest().as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
                details_end = details_end.max(end);
            }
            sf::DROPPED_ATTRIBUTES | sf::DROPPED_EVENTS | sf::DROPPED_LINKS => {
                f.varint()?;
            }
            sf::EVENTS => {
                check_event(f.bytes()?)?;
                info.links_or_events = true;
            }
            sf::LINKS => {
                check_link(f.bytes()?)?;
                info.links_or_events = true;
            }
            sf::STATUS => info.status_code = parse_status(f.bytes()?)?,
            sf::FLAGS => info.flags = (f.fixed32()? & 0xff) as u8,
            _ => {} // unknown fields were checked for well-formedness by `Fields`
        }
    }
    let invalid = if info.trace_id.is_zero() {
        Some("trace_id is missing or all zero".to_string())
    } else if info.span_id.is_zero() {
        Some("span_id is missing or all zero".to_string())
    } else {
        bad_parent.map(|n| format!("parent_span_id has {n} bytes, want 0 or 8"))
    };
    if let Some(why) = invalid {
        // A rejected span leaves no picks behind.
        if let Some(p) = picker {
            p.picks.truncate(first_pick);
        }
        return Err(SpanReject::Invalid(why));
    }
    if let Some(p) = picker {
        // Picks are bounded by the request's size, which the receivers cap far below 4 GiB.
        info.picks = (
            u32::try_from(first_pick).unwrap_or(u32::MAX),
            u32::try_from(p.picks.len()).unwrap_or(u32::MAX),
        );
    }
    if details_start < details_end {
        // A span is at most the request's size, which the receivers cap far below 4 GiB.
        info.details = (
            u32::try_from(details_start).unwrap_or(0),
            u32::try_from(details_end).unwrap_or(u32::MAX),
        );
    }
    Ok(info)
}

fn parse_status(b: &[u8]) -> Result<u8, WireError> {
    let mut code = 0;
    for f in Fields::new(b) {
        let f = f?;
        match f.number {
            2 => {
                f.str()?;
            }
            3 => code = u8::try_from(f.varint()?).unwrap_or(u8::MAX),
            _ => {}
        }
    }
    Ok(code)
}

// Nesting levels of the messages that carry attributes, counted as prost counts them: the
// request is level 0, a `ResourceSpans` 1, a `Resource` or `ScopeSpans` 2, a scope or `Span` 3,
// an event or link 4. A message deeper than `MAX_NESTING` is refused, so everything accepted (and
// forwarded) also decodes in a downstream prost-based receiver.
const LEVEL_RESOURCE: usize = 2;
const LEVEL_SCOPE: usize = 3;
const LEVEL_SPAN: usize = 3;
const LEVEL_EVENT: usize = 4;

/// The one-byte tag of a span's `attributes` (field 9, length-delimited).
const ATTRIBUTES_TAG: u8 = tag(sf::ATTRIBUTES, LEN);

// Field numbers of the common and resource protos that the walker checks.
const RESOURCE_DROPPED_ATTRIBUTES: u32 = 2;
const RESOURCE_ENTITY_REFS: u32 = 3;
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
const KEY_VALUE_KEY_STRINDEX: u32 = 3;

/// Checks a field whose type is a varint (integers, enums, bools).
fn check_varint(f: &Field<'_>) -> Result<(), WireError> {
    f.varint().map(|_| ())
}

/// Checks a `Resource` message at `LEVEL_RESOURCE`.
fn check_resource(b: &[u8]) -> Result<(), WireError> {
    for f in Fields::new(b) {
        let f = f?;
        match f.number {
            RESOURCE_ATTRIBUTES => check_key_value(f.bytes()?, LEVEL_RESOURCE + 1)?,
            RESOURCE_DROPPED_ATTRIBUTES => check_varint(&f)?,
            RESOURCE_ENTITY_REFS => check_entity_ref(f.bytes()?)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks an `EntityRef` (schema_url, type, id_keys, description_keys: all strings).
fn check_entity_ref(b: &[u8]) -> Result<(), WireError> {
    for f in Fields::new(b) {
        let f = f?;
        if (1..=4).contains(&f.number) {
            f.str()?;
        }
    }
    Ok(())
}

fn check_scope(b: &[u8]) -> Result<(), WireError> {
    for f in Fields::new(b) {
        let f = f?;
        match f.number {
            1 | 2 => {
                f.str()?;
            }
            SCOPE_ATTRIBUTES => check_key_value(f.bytes()?, LEVEL_SCOPE + 1)?,
            4 => check_varint(&f)?, // dropped_attributes_count
            _ => {}
        }
    }
    Ok(())
}

fn check_event(b: &[u8]) -> Result<(), WireError> {
    for f in Fields::new(b) {
        let f = f?;
        match f.number {
            1 => {
                f.fixed64()?;
            }
            2 => {
                f.str()?;
            }
            3 => check_key_value(f.bytes()?, LEVEL_EVENT + 1)?,
            4 => check_varint(&f)?, // dropped_attributes_count
            _ => {}
        }
    }
    Ok(())
}

fn check_link(b: &[u8]) -> Result<(), WireError> {
    for f in Fields::new(b) {
        let f = f?;
        match f.number {
            1 | 2 => {
                f.bytes()?;
            }
            3 => {
                f.str()?;
            }
            4 => check_key_value(f.bytes()?, LEVEL_EVENT + 1)?,
            5 => check_varint(&f)?, // dropped_attributes_count
            6 => {
                f.fixed32()?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a `KeyValue` message at nesting `level`.
fn check_key_value(b: &[u8], level: usize) -> Result<(), WireError> {
    check_key_value_split(b, level).map(|_| ())
}

/// A `KeyValue`'s key and value payloads.
type KeyAndValue<'a> = (&'a [u8], &'a [u8]);

/// [`check_key_value`], giving the key and value payloads when the shortcut read them.
#[inline]
fn check_key_value_split(b: &[u8], level: usize) -> Result<Option<KeyAndValue<'_>>, WireError> {
    // The usual attribute, a short string key and a short string value, checked at once: its
    // tags and lengths are below 0x80, so if every byte is ASCII both strings are valid UTF-8.
    // Anything else (or a non-ASCII string, or a level too deep for the value) takes the
    // general walk, which also names the error.
    if level < MAX_NESTING
        && b.is_ascii()
        && let Some((key, value)) = short_key_value(b)
        && short_string_value(value).is_some()
    {
        return Ok(Some((key, value)));
    }
    check_key_value_walk(b, level).map(|()| None)
}

/// [`check_key_value`] for any encoding.
fn check_key_value_walk(b: &[u8], level: usize) -> Result<(), WireError> {
    if level > MAX_NESTING {
        return Err(WireError::TooDeep);
    }
    for f in Fields::new(b) {
        let f = f?;
        match f.number {
            KEY_VALUE_KEY => {
                f.str()?;
            }
            KEY_VALUE_VALUE => check_any_value(f.bytes()?, level + 1)?,
            KEY_VALUE_KEY_STRINDEX => check_varint(&f)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks an `AnyValue` message at nesting `level`.
fn check_any_value(b: &[u8], level: usize) -> Result<(), WireError> {
    if level > MAX_NESTING {
        return Err(WireError::TooDeep);
    }
    for f in Fields::new(b) {
        let f = f?;
        match f.number {
            1 => {
                f.str()?;
            }
            2 | 3 | 8 => check_varint(&f)?, // bool, int, string_value_strindex
            4 => {
                f.fixed64()?;
            }
            5 | 6 => {
                // ArrayValue { repeated AnyValue values = 1 } or
                // KeyValueList { repeated KeyValue values = 1 }, one level down.
                let list = f.bytes()?;
                if level + 1 > MAX_NESTING {
                    return Err(WireError::TooDeep);
                }
                for v in Fields::new(list) {
                    let v = v?;
                    if v.number == 1 {
                        if f.number == 5 {
                            check_any_value(v.bytes()?, level + 2)?;
                        } else {
                            check_key_value(v.bytes()?, level + 2)?;
                        }
                    }
                }
            }
            7 => {
                f.bytes()?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    fn span(trace: u8, id: u8, parent: Option<u8>) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: format!("span-{id}"),
            kind: 2,
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            status: Some(Status {
                message: String::new(),
                code: 2,
            }),
            attributes: vec![KeyValue {
                key: "k".into(),
                key_strindex: 0,
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("v".into())),
                }),
            }],
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        key_strindex: 0,
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("checkout".into())),
                        }),
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "lib".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: "s".into(),
                }],
                schema_url: "r".into(),
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn splits_spans_and_reads_their_fields() {
        let body = request(vec![span(1, 2, None), span(1, 3, Some(2))]);
        let p = parse_request(&body).unwrap();
        assert_eq!(p.groups.len(), 1);
        assert_eq!(p.spans.len(), 2);
        assert_eq!(p.rejected, 0);
        let s = &p.spans[1];
        assert_eq!(s.info.trace_id, TraceId([1; 16]));
        assert_eq!(s.info.parent_span_id, SpanId([2; 8]));
        assert_eq!(s.info.name, "span-3");
        assert_eq!(s.info.status_code, 2);
        assert_eq!(s.info.kind, 2);
        assert_eq!(Span::decode(s.bytes).unwrap(), span(1, 3, Some(2)));
        let g = &p.groups[0];
        let res = Resource::decode(g.resource().unwrap()).unwrap();
        assert_eq!(res.attributes[0].key, "service.name");
    }

    #[test]
    fn invalid_ids_reject_only_that_span() {
        let mut zero = span(0, 2, None);
        zero.trace_id = vec![0; 16];
        let mut short = span(1, 3, None);
        short.span_id = vec![1; 4];
        let body = request(vec![zero, short, span(1, 4, None)]);
        let p = parse_request(&body).unwrap();
        assert_eq!(p.rejected, 2);
        assert_eq!(p.spans.len(), 1);
        assert!(p.reject_reason.unwrap().contains("trace_id"));
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let body = request(vec![span(1, 2, None)]);
        for cut in 1..body.len() {
            assert!(parse_request(&body[..cut]).is_err(), "cut {cut} accepted");
        }
        // A string that is not UTF-8.
        let mut s = span(1, 2, None);
        s.name = "ok".into();
        let mut body = request(vec![s]);
        let at = body.windows(2).position(|w| w == b"ok").unwrap();
        body[at] = 0xff;
        assert!(parse_request(&body).is_err());
    }

    #[test]
    fn absurd_nesting_is_refused() {
        let mut v = AnyValue {
            value: Some(any_value::Value::StringValue("x".into())),
        };
        for _ in 0..200 {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(
                    opentelemetry_proto::tonic::common::v1::ArrayValue { values: vec![v] },
                )),
            };
        }
        let mut s = span(1, 2, None);
        s.attributes.push(KeyValue {
            key: "deep".into(),
            key_strindex: 0,
            value: Some(v),
        });
        let body = request(vec![s]);
        assert_eq!(
            parse_request(&body).unwrap_err(),
            RequestError::Wire(WireError::TooDeep)
        );
    }

    /// Builds a request whose only span carries `attr`, whose resource carries `resource_attr`
    /// and whose span's event carries `event_attr`.
    fn request_with(attr: KeyValue, resource_attr: KeyValue, event_attr: KeyValue) -> Vec<u8> {
        let mut s = span(1, 2, None);
        s.attributes.push(attr);
        s.events
            .push(opentelemetry_proto::tonic::trace::v1::span::Event {
                name: "e".into(),
                attributes: vec![event_attr],
                ..Default::default()
            });
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![resource_attr],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![s],
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        }
        .encode_to_vec()
    }

    fn nested_array(depth: usize) -> AnyValue {
        let mut v = AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        };
        for _ in 0..depth {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(
                    opentelemetry_proto::tonic::common::v1::ArrayValue { values: vec![v] },
                )),
            };
        }
        v
    }

    fn attr(key: &str, value: AnyValue) -> KeyValue {
        KeyValue {
            key: key.into(),
            key_strindex: 0,
            value: Some(value),
        }
    }

    /// Found by fuzzing: whatever the walker accepts is forwarded, so it must decode in a
    /// prost-based receiver downstream; the walker's nesting limit is prost's, counted from the
    /// request, for span, resource and event attributes alike.
    #[test]
    fn nesting_limit_is_prosts() {
        let plain = || attr("p", nested_array(0));
        for depth in 40..52 {
            let deep = || attr("deep", nested_array(depth));
            for (where_, body) in [
                ("span", request_with(deep(), plain(), plain())),
                ("resource", request_with(plain(), deep(), plain())),
                ("event", request_with(plain(), plain(), deep())),
            ] {
                let ours = parse_request(&body);
                let prost = ExportTraceServiceRequest::decode(body.as_slice());
                assert_eq!(
                    ours.is_ok(),
                    prost.is_ok(),
                    "{where_} attribute nested {depth} arrays deep: walker {:?}, prost {:?}",
                    ours.err(),
                    prost.err()
                );
                if let Err(e) = ours {
                    assert_eq!(e, RequestError::Wire(WireError::TooDeep));
                }
            }
        }
    }

    /// Found by fuzzing: known fields with the wrong wire type that the walker used to skip
    /// (prost refuses them, so a downstream receiver would refuse the whole export request).
    #[test]
    fn known_fields_with_the_wrong_wire_type_are_refused() {
        use crate::otlp::wire::{put_len_field, put_varint_field};
        let kv_with = |extra: &[u8]| {
            let mut kv = Vec::new();
            put_len_field(&mut kv, 1, b"k");
            kv.extend_from_slice(extra);
            kv
        };
        let mut len3 = Vec::new();
        put_len_field(&mut len3, 3, b"x");
        let mut len8 = Vec::new();
        put_len_field(&mut len8, 8, b"x");
        let mut value = Vec::new();
        put_len_field(&mut value, 2, &len8);
        let mut len4 = Vec::new();
        put_len_field(&mut len4, 4, b"x");
        let mut len5 = Vec::new();
        put_len_field(&mut len5, 5, b"x");
        let mut bad_entity = Vec::new();
        put_len_field(&mut bad_entity, 2, b"\xff");
        let mut entity_field = Vec::new();
        put_len_field(&mut entity_field, 3, &bad_entity);
        let mut varint_entity = Vec::new();
        put_varint_field(&mut varint_entity, 3, 1);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("KeyValue.key_strindex", span_with_field(9, &kv_with(&len3))),
            (
                "AnyValue.string_value_strindex",
                span_with_field(9, &kv_with(&value)),
            ),
            ("Event.dropped_attributes_count", span_with_field(11, &len4)),
            ("Link.dropped_attributes_count", span_with_field(13, &len5)),
            (
                "Resource.dropped_attributes_count",
                resource_with(&{
                    let mut r = Vec::new();
                    put_len_field(&mut r, 2, b"x");
                    r
                }),
            ),
            (
                "Resource.entity_refs (varint)",
                resource_with(&varint_entity),
            ),
            ("EntityRef.type (not UTF-8)", resource_with(&entity_field)),
            (
                "InstrumentationScope.dropped_attributes_count",
                scope_with(&len4),
            ),
        ];
        for (what, body) in cases {
            assert!(
                ExportTraceServiceRequest::decode(body.as_slice()).is_err(),
                "{what}: prost accepts the case, so it tests nothing"
            );
            assert!(parse_request(&body).is_err(), "{what} accepted");
        }
    }

    /// Attributes in runs (taken without the general dispatch) and alone, around other
    /// fields: every one is checked and picked, and the details range spans them all.
    #[test]
    fn attribute_runs_are_checked_and_picked_like_single_attributes() {
        use crate::otlp::wire::put_len_field;
        let kv = |key: &str, value: &[u8]| {
            let mut any = Vec::new();
            put_len_field(&mut any, 1, value);
            let mut out = Vec::new();
            put_len_field(&mut out, 1, key.as_bytes());
            put_len_field(&mut out, 2, &any);
            out
        };
        let attributes = |span: &mut Vec<u8>, keys: &[&str]| {
            for k in keys {
                put_len_field(span, sf::ATTRIBUTES, &kv(k, b"v"));
            }
        };
        let mut span = Vec::new();
        put_len_field(&mut span, sf::TRACE_ID, &[1; 16]);
        let first = span.len() as u32;
        attributes(&mut span, &["a", "b", "c"]);
        put_len_field(&mut span, sf::SPAN_ID, &[2; 8]);
        attributes(&mut span, &["d"]);
        put_len_field(&mut span, sf::ATTRIBUTES, &kv("long", &[b'x'; 200]));
        attributes(&mut span, &["e", "f"]);
        let end = span.len() as u32;
        put_len_field(&mut span, sf::NAME, b"n");
        let interest = Interest::new(&[], &[], true, false, false, false);
        let body = wrap(&span, &[], &[]);
        let parsed = parse_request_with(&body, &interest).unwrap();
        assert_eq!(parsed.spans.len(), 1);
        let info = parsed.spans[0].info;
        assert_eq!(info.details, (first, end));
        assert_eq!(info.span_id, SpanId([2; 8]));
        assert_eq!(info.name, "n");
        assert_eq!(parsed.picks_of(&parsed.spans[0]).len(), 7);

        // A malformed attribute inside a run refuses the request, as it does alone.
        for at in 0..3 {
            let mut span = Vec::new();
            put_len_field(&mut span, sf::TRACE_ID, &[1; 16]);
            put_len_field(&mut span, sf::SPAN_ID, &[2; 8]);
            for i in 0..3 {
                let value: &[u8] = if i == at { &[0xff] } else { b"v" };
                put_len_field(&mut span, sf::ATTRIBUTES, &kv("k", value));
            }
            let body = wrap(&span, &[], &[]);
            let refused = parse_request(&body);
            assert!(
                matches!(refused, Err(RequestError::Wire(WireError::BadUtf8(1)))),
                "bad attribute {at}: {refused:?}"
            );
        }
    }

    /// The fast path for the usual leading fields reads every span as the general walk alone
    /// does, valid or not: spans in the usual order, with fields absent, too long for the fast
    /// path, invalid, out of order or repeated, and every one of them mutated and cut.
    #[test]
    fn the_usual_prefix_reads_spans_as_the_general_walk_does() {
        use crate::otlp::wire::{put_len_field, put_varint_field};
        let mut cases = Vec::new();
        let mut with = |edit: &dyn Fn(&mut Span)| {
            let mut s = span(1, 2, Some(3));
            edit(&mut s);
            cases.push(s.encode_to_vec());
        };
        with(&|_| {});
        with(&|s| s.parent_span_id.clear());
        with(&|s| s.trace_state = "th=8".into());
        with(&|s| s.trace_state = "k=".repeat(100));
        with(&|s| s.name = "gr\u{f6}\u{df}e".into());
        with(&|s| s.name = "n".repeat(200));
        with(&|s| s.kind = 300);
        with(&|s| s.kind = -1);
        with(&|s| s.start_time_unix_nano = 0);
        with(&|s| s.trace_id = vec![1; 15]);
        with(&|s| s.span_id.clear());
        with(&|s| s.parent_span_id = vec![3; 7]);
        with(&|s| s.flags = 0x301);
        // Out of order, repeated, invalid UTF-8.
        let mut odd = Vec::new();
        put_len_field(&mut odd, sf::NAME, b"first");
        put_len_field(&mut odd, sf::TRACE_ID, &[1; 16]);
        put_len_field(&mut odd, sf::SPAN_ID, &[2; 8]);
        put_len_field(&mut odd, sf::NAME, b"second");
        put_varint_field(&mut odd, sf::KIND, 3);
        put_len_field(&mut odd, sf::TRACE_ID, &[4; 16]);
        cases.push(odd);
        let mut bad_name = Vec::new();
        put_len_field(&mut bad_name, sf::TRACE_ID, &[1; 16]);
        put_len_field(&mut bad_name, sf::SPAN_ID, &[2; 8]);
        put_len_field(&mut bad_name, sf::NAME, &[0xff, 0xfe]);
        cases.push(bad_name);
        let base = cases.clone();
        for case in &base {
            for cut in 0..case.len() {
                cases.push(case[..cut].to_vec());
            }
            for i in 0..case.len().min(64) {
                for b in [
                    0x00, 0x01, 0x08, 0x0a, 0x10, 0x12, 0x2a, 0x39, 0x7f, 0x80, 0xff,
                ] {
                    let mut m = case.clone();
                    m[i] = b;
                    cases.push(m);
                }
            }
        }
        let mut accepted = 0;
        for case in &cases {
            let fast = parse_span_from(case, None, true);
            let general = parse_span_from(case, None, false);
            assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{case:02x?}");
            accepted += usize::from(fast.is_ok());
        }
        assert!(accepted > 100, "{accepted} of {} accepted", cases.len());
    }

    /// A request whose one span has `payload` appended as field `field` (a length-delimited
    /// field: the cases put the wrong type inside it, or it is itself the wrong type).
    fn span_with_field(field: u32, payload: &[u8]) -> Vec<u8> {
        let mut s = span(1, 2, None).encode_to_vec();
        crate::otlp::wire::put_len_field(&mut s, field, payload);
        wrap(&s, &[], &[])
    }

    fn resource_with(resource: &[u8]) -> Vec<u8> {
        wrap(&span(1, 2, None).encode_to_vec(), resource, &[])
    }

    fn scope_with(scope: &[u8]) -> Vec<u8> {
        wrap(&span(1, 2, None).encode_to_vec(), &[], scope)
    }

    /// The shortcut for the usual attribute answers exactly what the general walk answers: on
    /// encodings of every kind (short and long strings, non-ASCII and invalid UTF-8, other value
    /// types, extra or repeated fields, truncations), every one-byte change of each, and at the
    /// nesting levels where the value no longer fits.
    #[test]
    fn key_value_shortcut_agrees_with_the_walk() {
        use crate::otlp::wire::put_len_field;
        let kv = |key: &[u8], value: &[u8]| {
            let mut out = Vec::new();
            put_len_field(&mut out, 1, key);
            put_len_field(&mut out, 2, value);
            out
        };
        let string = |s: &[u8]| {
            let mut out = Vec::new();
            put_len_field(&mut out, 1, s);
            out
        };
        let long = vec![b'x'; 200];
        let mut cases = vec![
            kv(b"http.route", &string(b"/checkout")),
            kv(b"k", &string(b"")),
            kv(b"", &string(b"v")),
            kv("caf\u{e9}".as_bytes(), &string(b"v")),
            kv(b"k", &string("na\u{ef}ve".as_bytes())),
            kv(b"k", &string(&[0xff, 0xfe])),
            kv(&[0xc3], &string(b"v")),
            kv(b"k", &string(&long)),
            kv(&long, &string(b"v")),
            kv(b"k", &[0x18, 0x2a]),                         // int_value
            kv(b"k", &[0x10, 0x01]),                         // bool_value
            kv(b"k", &[0x2a, 0x04, 0x0a, 0x02, 0x0a, 0x00]), // array of one empty string
            kv(b"k", &[0x0a, 0x01, b'a', 0x0a, 0x01, b'b']), // string_value twice
        ];
        let mut extra = kv(b"k", &string(b"v"));
        extra.extend_from_slice(&[0x18, 0x05]); // key_strindex after the value
        cases.push(extra);
        let mut reversed = Vec::new();
        put_len_field(&mut reversed, 2, &string(b"v"));
        put_len_field(&mut reversed, 1, b"k");
        cases.push(reversed);
        let base = cases.clone();
        for case in &base {
            for cut in 0..case.len() {
                cases.push(case[..cut].to_vec());
            }
            for i in 0..case.len() {
                for b in [0x00, 0x01, 0x0a, 0x12, 0x7f, 0x80, 0xc3, 0xff] {
                    let mut m = case.clone();
                    m[i] = b;
                    cases.push(m);
                }
            }
        }
        let mut shortcut_taken = 0;
        for case in &cases {
            for level in [
                LEVEL_SPAN + 1,
                MAX_NESTING - 1,
                MAX_NESTING,
                MAX_NESTING + 1,
            ] {
                assert_eq!(
                    check_key_value(case, level),
                    check_key_value_walk(case, level),
                    "{case:02x?} at level {level}"
                );
            }
            if short_key_value(case).is_some_and(|(_, v)| short_string_value(v).is_some())
                && case.is_ascii()
            {
                shortcut_taken += 1;
            }
        }
        assert!(
            shortcut_taken > 100,
            "the shortcut was tried {shortcut_taken} times"
        );
    }

    /// `ExportTraceServiceRequest { resource_spans: [{ resource, scope_spans: [{ scope, spans:
    /// [span] }] }] }` from encoded parts.
    fn wrap(span: &[u8], resource: &[u8], scope: &[u8]) -> Vec<u8> {
        use crate::otlp::wire::put_len_field;
        let mut ss = Vec::new();
        put_len_field(&mut ss, 1, scope);
        put_len_field(&mut ss, 2, span);
        let mut rs = Vec::new();
        put_len_field(&mut rs, 1, resource);
        put_len_field(&mut rs, 2, &ss);
        let mut req = Vec::new();
        put_len_field(&mut req, 1, &rs);
        req
    }
}
