//! Splits an encoded `ExportTraceServiceRequest` into its spans without decoding them.
//!
//! Each span stays a slice of the request body; its resource and scope become a shared
//! [`Group`] holding the encoded fields of the enclosing `ResourceSpans` and `ScopeSpans` (minus
//! their children), so the exporter can put kept spans back under them unchanged. The whole
//! request is checked for well-formed protobuf (wire types, lengths, UTF-8, nesting), as a
//! decoder would; spans with invalid ids are rejected one by one (partial success).

use std::sync::Arc;

use tracekeeper_abi::{SpanId, TraceId};

use super::wire::{Field, Fields, MAX_NESTING, WireError};

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

/// Splits and checks a request.
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest<'_>, RequestError> {
    let mut out = ParsedRequest::default();
    for f in Fields::new(body) {
        let f = f?;
        if f.number != REQ_RESOURCE_SPANS {
            continue; // unknown fields were checked for well-formedness by `Fields`
        }
        parse_resource_spans(f.bytes()?, &mut out)?;
    }
    Ok(out)
}

fn parse_resource_spans<'a>(rs: &'a [u8], out: &mut ParsedRequest<'a>) -> Result<(), WireError> {
    let mut resource_fields = Vec::new();
    let mut scopes = Vec::new();
    for f in Fields::new(rs) {
        let f = f?;
        match f.number {
            RS_SCOPE_SPANS => scopes.push(f.bytes()?),
            RS_RESOURCE => {
                check_attribute_holder(f.bytes()?, RESOURCE_ATTRIBUTES)?;
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
        let mut spans = Vec::new();
        for f in Fields::new(ss) {
            let f = f?;
            match f.number {
                SS_SPANS => spans.push(f.bytes()?),
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
        if spans.is_empty() {
            continue;
        }
        let group = out.groups.len();
        out.groups.push(Arc::new(Group {
            resource_fields: resource_fields.clone(),
            scope_fields,
        }));
        for bytes in spans {
            match parse_span(bytes) {
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
    parse_span(bytes).ok()
}

/// Reads and checks one encoded span.
fn parse_span(bytes: &[u8]) -> Result<SpanInfo<'_>, SpanReject> {
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
    };
    let mut bad_parent = None;
    for f in Fields::new(bytes) {
        let f = f?;
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
            sf::ATTRIBUTES => check_key_value(f.bytes()?, 0)?,
            sf::DROPPED_ATTRIBUTES | sf::DROPPED_EVENTS | sf::DROPPED_LINKS => {
                f.varint()?;
            }
            sf::EVENTS => check_event(f.bytes()?)?,
            sf::LINKS => check_link(f.bytes()?)?,
            sf::STATUS => info.status_code = parse_status(f.bytes()?)?,
            sf::FLAGS => info.flags = (f.fixed32()? & 0xff) as u8,
            _ => {} // unknown fields were checked for well-formedness by `Fields`
        }
    }
    if info.trace_id.is_zero() {
        return Err(SpanReject::Invalid(
            "trace_id is missing or all zero".to_string(),
        ));
    }
    if info.span_id.is_zero() {
        return Err(SpanReject::Invalid(
            "span_id is missing or all zero".to_string(),
        ));
    }
    if let Some(n) = bad_parent {
        return Err(SpanReject::Invalid(format!(
            "parent_span_id has {n} bytes, want 0 or 8"
        )));
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

fn check_attribute_holder(b: &[u8], attributes_field: u32) -> Result<(), WireError> {
    for f in Fields::new(b) {
        let f = f?;
        if f.number == attributes_field {
            check_key_value(f.bytes()?, 0)?;
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
            SCOPE_ATTRIBUTES => check_key_value(f.bytes()?, 0)?,
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
            3 => check_key_value(f.bytes()?, 0)?,
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
            4 => check_key_value(f.bytes()?, 0)?,
            6 => {
                f.fixed32()?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a `KeyValue` message.
pub(crate) fn check_key_value(b: &[u8], depth: usize) -> Result<(), WireError> {
    if depth > MAX_NESTING {
        return Err(WireError::TooDeep);
    }
    for f in Fields::new(b) {
        let f = f?;
        match f.number {
            1 => {
                f.str()?;
            }
            2 => check_any_value(f.bytes()?, depth + 1)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks an `AnyValue` message.
fn check_any_value(b: &[u8], depth: usize) -> Result<(), WireError> {
    if depth > MAX_NESTING {
        return Err(WireError::TooDeep);
    }
    for f in Fields::new(b) {
        let f = f?;
        match f.number {
            1 => {
                f.str()?;
            }
            2 | 3 => {
                f.varint()?;
            }
            4 => {
                f.fixed64()?;
            }
            5 => {
                // ArrayValue { repeated AnyValue values = 1 }
                for v in Fields::new(f.bytes()?) {
                    let v = v?;
                    if v.number == 1 {
                        check_any_value(v.bytes()?, depth + 2)?;
                    }
                }
            }
            6 => {
                // KeyValueList { repeated KeyValue values = 1 }
                for v in Fields::new(f.bytes()?) {
                    let v = v?;
                    if v.number == 1 {
                        check_key_value(v.bytes()?, depth + 2)?;
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
}
