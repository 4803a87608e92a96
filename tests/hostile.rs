//! The hostile-request corpus: well over a hundred crafted requests against the real
//! `tracekeeper` binary — truncated and wrong-wire-type protobuf, 10 000-level nesting, huge
//! attribute counts, strings that are not UTF-8, ids of the wrong length or all zero, gzip bombs,
//! bodies over the limit, wrong and missing content types, invalid and duplicate JSON keys,
//! methods and paths that do not exist, slowloris-style partial requests. Each must get the
//! answer the OTLP spec names (400/404/405/413/415, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, partial
//! success with `rejected_spans`), the process must stay up with bounded memory, and a
//! well-behaved client sending at the same time must lose nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;

/// OTLP/HTTP body limit of the host under attack (bytes, after decompression).
const BODY_LIMIT: usize = 1 << 20;
/// OTLP/gRPC message limit (MiB).
const GRPC_LIMIT_MIB: usize = 1;
/// The host's `read_header_timeout` and `read_timeout`.
const HEADER_TIMEOUT: &str = "1s";
const BODY_TIMEOUT: &str = "2s";
/// Generous bound on how long the host may take to drop a stalled client (its timeouts are 1 s
/// and 2 s): a hang, not a slow machine, fails.
const STALL_BOUND: Duration = Duration::from_secs(30);
/// Generous bound on the host's memory growth over the whole corpus (its limits allow a few MiB
/// per request in flight).
const RSS_GROWTH_BOUND_KIB: u64 = 300 * 1024;
/// Nesting depth of the deep-value cases.
const DEEP: usize = 10_000;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

fn start() -> (Receiver, Host) {
    let receiver = Receiver::start();
    let ports = Ports::new();
    let yaml = format!(
        r#"receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}", max_recv_msg_size_mib: {GRPC_LIMIT_MIB}, read_header_timeout: {HEADER_TIMEOUT}, read_timeout: {BODY_TIMEOUT}}}
      http: {{endpoint: "127.0.0.1:{http}", max_request_body_size: {BODY_LIMIT}, read_header_timeout: {HEADER_TIMEOUT}, read_timeout: {BODY_TIMEOUT}}}
processors:
  tail_sampling:
    decision_wait: 1s
    policies:
      - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}
exporters:
  otlp: {{endpoint: "127.0.0.1:{rx}", tls: {{insecure: true}}}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
"#,
        grpc = ports.grpc,
        http = ports.http,
        rx = receiver.port,
        health = ports.health,
        metrics = ports.metrics,
    );
    let host = Host::start_yaml(ports, &yaml);
    (receiver, host)
}

// ---------------------------------------------------------------------------------------------
// Hand-made protobuf

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, field << 3 | wire);
}

fn len_field(out: &mut Vec<u8>, field: u64, payload: &[u8]) {
    tag(out, field, 2);
    varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn lf(field: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    len_field(&mut out, field, payload);
    out
}

fn vf(field: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    tag(&mut out, field, 0);
    varint(&mut out, v);
    out
}

fn f64f(field: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    tag(&mut out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
    out
}

fn f32f(field: u64, v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    tag(&mut out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
    out
}

/// A valid span's fields (ids, name, kind, times), to which a case appends or replaces fields.
fn span_fields(name: &[u8]) -> Vec<u8> {
    let mut s = lf(1, &new_trace_id());
    s.extend(lf(2, &new_span_id()));
    s.extend(lf(5, name));
    s.extend(vf(6, 1));
    s.extend(f64f(7, now_nanos()));
    s.extend(f64f(8, now_nanos() + 1_000));
    s
}

/// A request holding one span with `span` as its encoded fields, under a resource with
/// `resource` as its encoded fields and a scope with `scope` as its fields.
fn wrap(span: &[u8], resource: &[u8], scope: &[u8]) -> Vec<u8> {
    let mut ss = lf(1, scope);
    ss.extend(lf(2, span));
    let mut rs = lf(1, resource);
    rs.extend(lf(2, &ss));
    lf(1, &rs)
}

fn with_span(span: &[u8]) -> Vec<u8> {
    wrap(
        span,
        &lf(1, &kv_str(b"service.name", b"hostile")),
        &lf(1, b"lib"),
    )
}

fn kv_str(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut kv = lf(1, key);
    kv.extend(lf(2, &lf(1, value)));
    kv
}

/// An `AnyValue` nested `depth` arrays (or kvlists) deep, built iteratively.
fn deep_value(depth: usize, kvlist: bool) -> Vec<u8> {
    let mut v = vf(3, 7); // int_value
    for _ in 0..depth {
        v = if kvlist {
            let mut kv = lf(1, b"k");
            kv.extend(lf(2, &v));
            lf(6, &lf(1, &kv))
        } else {
            lf(5, &lf(1, &v))
        };
    }
    v
}

/// A well-formed, valid request (an error trace of three spans).
fn valid_request() -> Vec<u8> {
    error_trace("hostile-valid", "scope", 3).0.encode_to_vec()
}

// ---------------------------------------------------------------------------------------------
// The cases

/// How a case is sent.
enum Via {
    /// An HTTP request through reqwest: method, path, headers, body.
    Http(&'static str, String, Vec<(String, String)>, Vec<u8>),
    /// Raw bytes on a fresh TCP connection to the HTTP port.
    Raw(Vec<u8>),
    /// A gRPC `Export` with this raw message, gzip-compressed by the client when `true`.
    Grpc(Vec<u8>, bool),
    /// A gRPC call to another method path.
    GrpcPath(&'static str),
}

/// What a case must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// This HTTP status.
    Status(u16),
    /// HTTP 200 with `partial_success.rejected_spans` = n.
    Partial(i64),
    /// This gRPC code.
    Code(tonic::Code),
    /// gRPC OK with `partial_success.rejected_spans` = n.
    GrpcPartial(i64),
}

struct Case {
    name: String,
    via: Via,
    want: Want,
}

fn post(name: &str, content_type: &str, body: Vec<u8>, want: Want) -> Case {
    Case {
        name: name.to_string(),
        via: Via::Http(
            "POST",
            "/v1/traces".into(),
            vec![("content-type".into(), content_type.into())],
            body,
        ),
        want,
    }
}

fn post_headers(name: &str, headers: &[(&str, &str)], body: Vec<u8>, want: Want) -> Case {
    Case {
        name: name.to_string(),
        via: Via::Http(
            "POST",
            "/v1/traces".into(),
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        ),
        want,
    }
}

fn grpc(name: &str, message: Vec<u8>, want: Want) -> Case {
    Case {
        name: name.to_string(),
        via: Via::Grpc(message, false),
        want,
    }
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    gzip(data)
}

/// A gzip stream of `n` zero bytes, compressed as it is produced (no `n`-byte buffer).
fn gzip_zeros(n: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; 1 << 16];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        enc.write_all(&chunk[..k]).unwrap();
        left -= k;
    }
    enc.finish().unwrap()
}

/// A request with one span whose ids are `trace` / `span` / `parent`, next to one good span.
fn ids_request(trace: &[u8], span: &[u8], parent: Option<&[u8]>) -> Vec<u8> {
    let good = common::span(&new_trace_id(), &new_span_id(), None, "good", false);
    let mut bad = common::span(&new_trace_id(), &new_span_id(), None, "bad ids", false);
    bad.trace_id = trace.to_vec();
    bad.span_id = span.to_vec();
    if let Some(p) = parent {
        bad.parent_span_id = p.to_vec();
    }
    request("hostile-ids", "scope", vec![bad, good]).encode_to_vec()
}

fn json_span(trace_id: &str, span_id: &str) -> String {
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{trace_id}","spanId":"{span_id}","name":"j"}},{{"traceId":"{}","spanId":"{}","name":"good"}}]}}]}}]}}"#,
        hex(&new_trace_id()),
        hex(&new_span_id())
    )
}

/// A span-ids case: what it is, trace id, span id, parent span id.
type IdCase = (&'static str, Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// Every case of the corpus.
fn corpus() -> Vec<Case> {
    use Want::*;
    let mut cases = Vec::new();
    let valid = valid_request();

    // Truncated protobuf: every cut of a one-ResourceSpans request is malformed.
    let step = (valid.len() / 24).max(1);
    for cut in (1..valid.len()).step_by(step) {
        cases.push(post(
            &format!("truncated at {cut}/{}", valid.len()),
            PROTOBUF,
            valid[..cut].to_vec(),
            Status(400),
        ));
    }
    for cut in [1, valid.len() / 3, valid.len() / 2, valid.len() - 1] {
        cases.push(grpc(
            &format!("gRPC truncated at {cut}"),
            valid[..cut].to_vec(),
            Code(tonic::Code::InvalidArgument),
        ));
    }

    // Wrong wire types, bad tags and lengths, field by field.
    let base = span_fields(b"wire");
    let mut wrong: Vec<(&str, Vec<u8>)> = vec![
        ("trace_id as varint", vf(1, 5)),
        ("span_id as fixed64", f64f(2, 5)),
        ("trace_state as varint", vf(3, 1)),
        ("name as varint", vf(5, 1)),
        ("kind as bytes", lf(6, b"x")),
        ("start as bytes", lf(7, b"12345678")),
        ("end as varint", vf(8, 1)),
        ("attributes as varint", vf(9, 1)),
        ("dropped_attributes_count as bytes", lf(10, b"x")),
        ("events as fixed32", f32f(11, 1)),
        ("links as varint", vf(13, 1)),
        ("status as varint", vf(15, 2)),
        ("flags as varint", vf(16, 1)),
        ("key as varint", lf(9, &vf(1, 1))),
        (
            "string value as fixed64",
            lf(9, &{
                let mut kv = lf(1, b"k");
                kv.extend(lf(2, &f64f(1, 1)));
                kv
            }),
        ),
        (
            "int value as bytes",
            lf(9, &{
                let mut kv = lf(1, b"k");
                kv.extend(lf(2, &lf(3, b"1")));
                kv
            }),
        ),
        (
            "double value as varint",
            lf(9, &{
                let mut kv = lf(1, b"k");
                kv.extend(lf(2, &vf(4, 1)));
                kv
            }),
        ),
        (
            "key_strindex as bytes",
            lf(9, &{
                let mut kv = lf(1, b"k");
                kv.extend(lf(3, b"x"));
                kv
            }),
        ),
        ("event time as bytes", lf(11, &lf(1, b"x"))),
        ("link flags as varint", lf(13, &vf(6, 1))),
        ("status code as bytes", lf(15, &lf(3, b"x"))),
    ];
    let mut raw_bad: Vec<(&str, Vec<u8>)> = vec![
        ("wire type 6", vec![0x0e, 0x01]),
        ("wire type 7", vec![0x0f, 0x01]),
        ("group start", vec![0x0b]),
        ("group end", vec![0x0c]),
        ("field number 0", vec![0x00, 0x01]),
        ("varint of 11 bytes", {
            let mut v = vec![0x30];
            v.extend([0xff; 10]);
            v.push(0x01);
            v
        }),
        ("varint over 64 bits", {
            let mut v = vec![0x30];
            v.extend([0xff; 9]);
            v.push(0x7f);
            v
        }),
        ("field key over 32 bits", {
            let mut v = Vec::new();
            varint(&mut v, 1 << 35);
            v.push(1);
            v
        }),
        ("length past the end", {
            let mut v = Vec::new();
            tag(&mut v, 20, 2);
            varint(&mut v, 1 << 31);
            v.extend(b"short");
            v
        }),
    ];
    wrong.append(&mut raw_bad);
    for (what, extra) in &wrong {
        let mut span = base.clone();
        span.extend_from_slice(extra);
        let body = with_span(&span);
        cases.push(post(
            &format!("span field {what}"),
            PROTOBUF,
            body.clone(),
            Status(400),
        ));
        cases.push(grpc(
            &format!("gRPC span field {what}"),
            body,
            Code(tonic::Code::InvalidArgument),
        ));
    }
    cases.push(post(
        "resource_spans as varint",
        PROTOBUF,
        vf(1, 1),
        Status(400),
    ));
    cases.push(post(
        "resource as fixed32",
        PROTOBUF,
        lf(1, &f32f(1, 1)),
        Status(400),
    ));
    cases.push(post(
        "scope as varint",
        PROTOBUF,
        lf(1, &lf(2, &vf(1, 1))),
        Status(400),
    ));
    cases.push(post(
        "random bytes",
        PROTOBUF,
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        Status(400),
    ));
    cases.push(grpc(
        "gRPC random bytes",
        b"\xff\xff\xff\xff garbage".to_vec(),
        Code(tonic::Code::InvalidArgument),
    ));

    // Strings that are not UTF-8, wherever a string is.
    let bad_utf8: &[u8] = b"bad \xff\xfe utf-8";
    let not_utf8: Vec<(&str, Vec<u8>)> = vec![
        ("span name", {
            let mut s = span_fields(b"x");
            s.extend(lf(5, bad_utf8));
            with_span(&s)
        }),
        ("trace_state", {
            let mut s = span_fields(b"x");
            s.extend(lf(3, bad_utf8));
            with_span(&s)
        }),
        ("attribute key", {
            let mut s = span_fields(b"x");
            s.extend(lf(9, &kv_str(bad_utf8, b"v")));
            with_span(&s)
        }),
        ("attribute value", {
            let mut s = span_fields(b"x");
            s.extend(lf(9, &kv_str(b"k", bad_utf8)));
            with_span(&s)
        }),
        ("event name", {
            let mut s = span_fields(b"x");
            s.extend(lf(11, &lf(2, bad_utf8)));
            with_span(&s)
        }),
        ("status message", {
            let mut s = span_fields(b"x");
            s.extend(lf(15, &lf(2, bad_utf8)));
            with_span(&s)
        }),
        ("link trace_state", {
            let mut s = span_fields(b"x");
            s.extend(lf(13, &lf(3, bad_utf8)));
            with_span(&s)
        }),
        (
            "resource attribute",
            wrap(&span_fields(b"x"), &lf(1, &kv_str(b"k", bad_utf8)), &[]),
        ),
        (
            "scope name",
            wrap(&span_fields(b"x"), &[], &lf(1, bad_utf8)),
        ),
        ("schema_url", {
            let mut ss = lf(2, &span_fields(b"x"));
            ss.extend(lf(3, bad_utf8));
            lf(1, &lf(2, &ss))
        }),
    ];
    for (what, body) in not_utf8 {
        cases.push(post(
            &format!("non-UTF-8 {what}"),
            PROTOBUF,
            body.clone(),
            Status(400),
        ));
        cases.push(grpc(
            &format!("gRPC non-UTF-8 {what}"),
            body,
            Code(tonic::Code::InvalidArgument),
        ));
    }

    // Nesting 10 000 levels deep.
    for kvlist in [false, true] {
        let what = if kvlist { "kvlistValue" } else { "arrayValue" };
        let mut kv = lf(1, b"deep");
        kv.extend(lf(2, &deep_value(DEEP, kvlist)));
        let mut s = span_fields(b"deep");
        s.extend(lf(9, &kv));
        let body = with_span(&s);
        assert!(body.len() < BODY_LIMIT, "the deep case fits the body limit");
        cases.push(post(
            &format!("{what} nested {DEEP} deep"),
            PROTOBUF,
            body.clone(),
            Status(400),
        ));
        cases.push(grpc(
            &format!("gRPC {what} nested {DEEP} deep"),
            body,
            Code(tonic::Code::InvalidArgument),
        ));
        let resource = lf(1, &kv);
        cases.push(post(
            &format!("resource {what} nested {DEEP} deep"),
            PROTOBUF,
            wrap(&span_fields(b"x"), &resource, &[]),
            Status(400),
        ));
    }
    let deep_json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{}","spanId":"{}","attributes":[{{"key":"d","value":{}1{}}}]}}]}}]}}]}}"#,
        hex(&new_trace_id()),
        hex(&new_span_id()),
        r#"{"arrayValue":{"values":["#.repeat(DEEP),
        "]}}".repeat(DEEP)
    );
    cases.push(post(
        "JSON arrayValue nested 10000 deep",
        JSON,
        deep_json.into_bytes(),
        Status(400),
    ));
    cases.push(post(
        "JSON brackets nested 10000 deep",
        JSON,
        format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP)).into_bytes(),
        Status(400),
    ));

    // Ids of the wrong length or all zero: only that span is rejected (partial success).
    let t = new_trace_id();
    let s = new_span_id();
    let id_cases: Vec<IdCase> = vec![
        ("missing trace_id", vec![], s.to_vec(), None),
        ("1-byte trace_id", vec![1], s.to_vec(), None),
        ("8-byte trace_id", t[..8].to_vec(), s.to_vec(), None),
        ("15-byte trace_id", t[..15].to_vec(), s.to_vec(), None),
        (
            "17-byte trace_id",
            [&t[..], &[1]].concat(),
            s.to_vec(),
            None,
        ),
        ("32-byte trace_id", [t, t].concat(), s.to_vec(), None),
        ("all-zero trace_id", vec![0; 16], s.to_vec(), None),
        ("missing span_id", t.to_vec(), vec![], None),
        ("4-byte span_id", t.to_vec(), s[..4].to_vec(), None),
        ("7-byte span_id", t.to_vec(), s[..7].to_vec(), None),
        ("9-byte span_id", t.to_vec(), [&s[..], &[1]].concat(), None),
        ("16-byte span_id", t.to_vec(), [s, s].concat(), None),
        ("all-zero span_id", t.to_vec(), vec![0; 8], None),
        (
            "4-byte parent_span_id",
            t.to_vec(),
            s.to_vec(),
            Some(s[..4].to_vec()),
        ),
        (
            "9-byte parent_span_id",
            t.to_vec(),
            s.to_vec(),
            Some([&s[..], &[1]].concat()),
        ),
    ];
    for (what, trace, span, parent) in &id_cases {
        let body = ids_request(trace, span, parent.as_deref());
        cases.push(post(what, PROTOBUF, body, Partial(1)));
    }
    for (what, trace, span, parent) in id_cases.iter().take(4) {
        let body = ids_request(trace, span, parent.as_deref());
        cases.push(grpc(&format!("gRPC {what}"), body, GrpcPartial(1)));
    }
    let all_bad = request(
        "hostile-ids",
        "scope",
        (0..3)
            .map(|i| common::span(&[0; 16], &new_span_id(), None, &format!("zero {i}"), false))
            .collect(),
    )
    .encode_to_vec();
    cases.push(post(
        "every span with a zero trace_id",
        PROTOBUF,
        all_bad,
        Partial(3),
    ));
    cases.push(post(
        "JSON all-zero traceId",
        JSON,
        json_span(&"0".repeat(32), &hex(&new_span_id())).into_bytes(),
        Partial(1),
    ));
    cases.push(post(
        "JSON 2-byte traceId",
        JSON,
        json_span("abcd", &hex(&new_span_id())).into_bytes(),
        Partial(1),
    ));
    cases.push(post(
        "JSON traceId not hex",
        JSON,
        json_span(&"zz".repeat(16), &hex(&new_span_id())).into_bytes(),
        Status(400),
    ));

    // Huge attribute and span counts within the body limit: accepted, and memory stays bounded.
    let mut many_attrs = span_fields(b"many attributes");
    for i in 0..60_000u32 {
        many_attrs.extend(lf(9, &kv_str(format!("k{i}").as_bytes(), b"v")));
    }
    let body = with_span(&many_attrs);
    assert!(body.len() < BODY_LIMIT);
    cases.push(post(
        "60 000 attributes on one span",
        PROTOBUF,
        body,
        Status(200),
    ));
    let mut empty_attrs = span_fields(b"empty attributes");
    for _ in 0..150_000 {
        empty_attrs.extend(lf(9, b""));
    }
    cases.push(post(
        "150 000 empty attributes",
        PROTOBUF,
        with_span(&empty_attrs),
        Status(200),
    ));
    let mut resource = Vec::new();
    for i in 0..50_000u32 {
        resource.extend(lf(1, &kv_str(format!("r{i}").as_bytes(), b"v")));
    }
    cases.push(post(
        "50 000 resource attributes",
        PROTOBUF,
        wrap(&span_fields(b"x"), &resource, &[]),
        Status(200),
    ));
    let mut ss = lf(1, &lf(1, b"lib"));
    for _ in 0..12_000 {
        ss.extend(lf(2, &span_fields(b"s")));
    }
    let body = lf(1, &lf(2, &ss));
    assert!(body.len() < BODY_LIMIT, "{} bytes", body.len());
    cases.push(post(
        "12 000 spans in one request",
        PROTOBUF,
        body,
        Status(200),
    ));

    // gzip bombs and broken gzip.
    let gz = |what: &str, body: Vec<u8>, want: Want| {
        post_headers(
            what,
            &[("content-type", PROTOBUF), ("content-encoding", "gzip")],
            body,
            want,
        )
    };
    cases.push(gz(
        "gzip bomb: 64 MiB of zeros",
        gzip_zeros(64 << 20),
        Status(413),
    ));
    cases.push(gz(
        "gzip bomb just over the limit",
        gzip_zeros(BODY_LIMIT + 1),
        Status(413),
    ));
    let mut members = gzip_zeros(BODY_LIMIT / 2 + 10);
    members.extend(gzip_zeros(BODY_LIMIT / 2 + 10));
    cases.push(gz(
        "two gzip members over the limit together",
        members,
        Status(413),
    ));
    let good_gz = gzip_bytes(&valid);
    cases.push(gz("gzip of a valid request", good_gz.clone(), Status(200)));
    cases.push(gz(
        "gzip of truncated protobuf",
        gzip_bytes(&valid[..valid.len() / 2]),
        Status(400),
    ));
    cases.push(gz("not gzip at all", b"plain bytes".to_vec(), Status(400)));
    cases.push(gz(
        "truncated gzip",
        good_gz[..good_gz.len() / 2].to_vec(),
        Status(400),
    ));
    let mut bad_crc = good_gz.clone();
    let n = bad_crc.len();
    bad_crc[n - 6] ^= 0xff;
    cases.push(gz("gzip with a wrong CRC", bad_crc, Status(400)));
    for encoding in ["deflate", "br", "zstd", "gzip, gzip", "compress"] {
        cases.push(post_headers(
            &format!("content-encoding {encoding}"),
            &[("content-type", PROTOBUF), ("content-encoding", encoding)],
            valid.clone(),
            Status(415),
        ));
    }
    cases.push(Case {
        name: "gRPC gzip bomb over the message limit".into(),
        via: Via::Grpc(
            {
                let mut s = span_fields(b"bomb");
                s.extend(lf(9, &kv_str(b"zeros", &vec![b'0'; 8 << 20])));
                with_span(&s)
            },
            true,
        ),
        want: Code(tonic::Code::ResourceExhausted),
    });

    // Bodies over the limit.
    cases.push(post(
        "protobuf body over the limit",
        PROTOBUF,
        vec![0x0a; 2 * BODY_LIMIT],
        Status(413),
    ));
    cases.push(post(
        "JSON body over the limit",
        JSON,
        format!("{{\"resourceSpans\":[{}]}}", "{},".repeat(BODY_LIMIT)).into_bytes(),
        Status(413),
    ));
    cases.push(grpc(
        "gRPC message over the limit",
        {
            let mut s = span_fields(b"big");
            s.extend(lf(
                9,
                &kv_str(b"blob", &vec![b'a'; 2 * (GRPC_LIMIT_MIB << 20)]),
            ));
            with_span(&s)
        },
        Code(tonic::Code::ResourceExhausted),
    ));

    // Content types.
    for (ct, want) in [
        ("text/plain", Status(415)),
        ("application/xml", Status(415)),
        ("multipart/form-data; boundary=x", Status(415)),
        ("application/grpc", Status(415)),
        ("", Status(415)),
        ("application/x-protobuf; charset=utf-8", Status(200)),
        ("Application/X-Protobuf", Status(200)),
        ("application/protobuf", Status(200)),
    ] {
        cases.push(post(
            &format!("content type {ct:?}"),
            ct,
            valid.clone(),
            want,
        ));
    }
    cases.push(post_headers(
        "no content type",
        &[],
        valid.clone(),
        Status(415),
    ));
    cases.push(post(
        "JSON with a charset",
        "application/json; charset=utf-8",
        json_span(&hex(&new_trace_id()), &hex(&new_span_id())).into_bytes(),
        Status(200),
    ));

    // Invalid JSON and duplicate keys.
    let span_json = format!(
        r#""traceId":"{}","spanId":"{}""#,
        hex(&new_trace_id()),
        hex(&new_span_id())
    );
    for (what, body) in [
        ("not JSON", b"this is not json".to_vec()),
        ("truncated JSON", br#"{"resourceSpans":[{"scopeSpans":"#.to_vec()),
        ("JSON array", b"[1,2]".to_vec()),
        ("resourceSpans a number", br#"{"resourceSpans":5}"#.to_vec()),
        (
            "duplicate resourceSpans",
            br#"{"resourceSpans":[],"resourceSpans":[]}"#.to_vec(),
        ),
        (
            "duplicate span name",
            format!(
                r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{{span_json},"name":"a","name":"b"}}]}}]}}]}}"#
            )
            .into_bytes(),
        ),
        ("JSON that is not UTF-8", b"{\"resourceSpans\":[\xff]}".to_vec()),
        (
            "lone surrogate escape",
            format!(
                r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{{span_json},"name":"\ud800"}}]}}]}}]}}"#
            )
            .into_bytes(),
        ),
        (
            "time overflowing 64 bits",
            format!(
                r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{{span_json},"startTimeUnixNano":"99999999999999999999999"}}]}}]}}]}}"#
            )
            .into_bytes(),
        ),
        ("empty JSON body", Vec::new()),
        ("JSON null", b"null".to_vec()),
    ] {
        cases.push(post(what, JSON, body, Status(400)));
    }
    cases.push(post(
        "unknown JSON key (ignored, as the spec says)",
        JSON,
        br#"{"resourceSpans":[],"somethingElse":{"a":1}}"#.to_vec(),
        Status(200),
    ));

    // Methods and paths that do not exist.
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] {
        cases.push(Case {
            name: format!("{method} /v1/traces"),
            via: Via::Http(method, "/v1/traces".into(), vec![], Vec::new()),
            want: Status(405),
        });
    }
    for path in [
        "/v1/metrics",
        "/v1/logs",
        "/",
        "/v1/traces/",
        "/V1/TRACES",
        "/v1/traces/x",
    ] {
        cases.push(Case {
            name: format!("POST {path}"),
            via: Via::Http(
                "POST",
                path.into(),
                vec![("content-type".into(), PROTOBUF.into())],
                valid.clone(),
            ),
            want: Status(404),
        });
    }
    cases.push(Case {
        name: "unknown method BREW".into(),
        via: Via::Raw(b"BREW /v1/traces HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        want: Status(405),
    });
    cases.push(Case {
        name: "garbage request line".into(),
        via: Via::Raw(b"GARBAGE\r\n\r\n".to_vec()),
        want: Status(400),
    });
    cases.push(Case {
        name: "header of 1 MiB".into(),
        via: Via::Raw(
            format!(
                "POST /v1/traces HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
                "a".repeat(1 << 20)
            )
            .into_bytes(),
        ),
        want: Status(431),
    });
    cases.push(Case {
        name: "HTTP/1.0 POST".into(),
        via: Via::Raw({
            let mut r = format!(
                "POST /v1/traces HTTP/1.0\r\nContent-Type: {PROTOBUF}\r\nContent-Length: {}\r\n\r\n",
                valid.len()
            )
            .into_bytes();
            r.extend(&valid);
            r
        }),
        want: Status(200),
    });
    cases.push(Case {
        name: "Content-Length larger than the limit".into(),
        via: Via::Raw({
            let mut r = format!(
                "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                BODY_LIMIT + 100
            )
            .into_bytes();
            r.extend(vec![0x0a; BODY_LIMIT + 100]);
            r
        }),
        want: Status(413),
    });
    cases.push(Case {
        name: "gRPC unknown method".into(),
        via: Via::GrpcPath("/opentelemetry.proto.collector.trace.v1.TraceService/Nope"),
        want: Code(tonic::Code::Unimplemented),
    });
    cases.push(Case {
        name: "gRPC unknown service".into(),
        via: Via::GrpcPath("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"),
        want: Code(tonic::Code::Unimplemented),
    });
    cases
}

// ---------------------------------------------------------------------------------------------
// Sending

/// Raw bytes to the HTTP port; returns the status of the answer (`None` if the connection
/// closed without one).
fn raw_http(port: u16, bytes: &[u8]) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(STALL_BOUND)).ok()?;
    stream.set_write_timeout(Some(STALL_BOUND)).ok()?;
    // The server may answer (413, 431) and close before everything is written.
    let _ = stream.write_all(bytes);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn grpc_call(
    port: u16,
    path: &'static str,
    message: Vec<u8>,
    gzip: bool,
) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(64 << 20);
    if gzip {
        grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    grpc.unary(
        tonic::Request::new(message),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Sends one case; returns what came back, in the terms of [`Want`].
fn send(
    case: &Case,
    host: &Host,
    client: &reqwest::blocking::Client,
    rt: &tokio::runtime::Runtime,
) -> Result<Want, String> {
    match &case.via {
        Via::Http(method, path, headers, body) => {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut req = client
                .request(method, host.http_url(path))
                .body(body.clone());
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let resp = req.send().map_err(|e| format!("{e}"))?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().map_err(|e| format!("{e}"))?;
            if status == 200 {
                let rejected = if bytes.starts_with(b"{") {
                    serde_json::from_slice::<ExportTraceServiceResponse>(&bytes)
                        .ok()
                        .and_then(|r| r.partial_success)
                        .map(|p| p.rejected_spans)
                } else {
                    ExportTraceServiceResponse::decode(bytes.as_ref())
                        .map_err(|e| format!("200 with an undecodable body: {e}"))?
                        .partial_success
                        .map(|p| p.rejected_spans)
                };
                if let Some(n) = rejected.filter(|n| *n > 0) {
                    return Ok(Want::Partial(n));
                }
            }
            Ok(Want::Status(status))
        }
        Via::Raw(bytes) => raw_http(host.ports.http, bytes)
            .map(Want::Status)
            .ok_or_else(|| "the connection closed without an answer".to_string()),
        Via::Grpc(message, gzip) => {
            match rt.block_on(grpc_call(
                host.ports.grpc,
                EXPORT_PATH,
                message.clone(),
                *gzip,
            )) {
                Ok(bytes) => {
                    let r = ExportTraceServiceResponse::decode(bytes.as_slice())
                        .map_err(|e| format!("OK with an undecodable body: {e}"))?;
                    Ok(Want::GrpcPartial(
                        r.partial_success.map(|p| p.rejected_spans).unwrap_or(0),
                    ))
                }
                Err(status) => Ok(Want::Code(status.code())),
            }
        }
        Via::GrpcPath(path) => {
            match rt.block_on(grpc_call(host.ports.grpc, path, valid_request(), false)) {
                Ok(_) => Ok(Want::Code(tonic::Code::Ok)),
                Err(status) => Ok(Want::Code(status.code())),
            }
        }
    }
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A well-behaved client on its own thread (see [`good_client`]) and the flag that stops it.
struct GoodClient {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<SentTrace>, Vec<String>)>,
}

impl GoodClient {
    /// Tells the client to stop after its request in progress.
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts a well-behaved client on its own thread, sending error traces over gRPC and HTTP
/// until told to stop (bounded); its thread returns what it sent and any request that failed.
fn good_client(host: &Host) -> GoodClient {
    /// Upper bound on the good client's requests, whatever happens.
    const MAX_GOOD: usize = 400;
    let grpc_port = host.ports.grpc;
    let url = host.http_url("/v1/traces");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let rt = runtime();
        let client = http_client();
        let mut sent = Vec::new();
        let mut failures = Vec::new();
        let mut i = 0;
        while !flag.load(Ordering::Relaxed) && i < MAX_GOOD {
            let (request, trace) = error_trace("good-client", "good-scope", 3);
            let ok = if i % 2 == 0 {
                rt.block_on(grpc_export(grpc_port, request))
                    .map(|r| r.partial_success.is_none_or(|p| p.rejected_spans == 0))
                    .map_err(|e| format!("{e:?}"))
            } else {
                http_post(
                    &client,
                    &url,
                    &[("content-type", PROTOBUF)],
                    request.encode_to_vec(),
                )
                .map(|a| a.status == 200)
                .map_err(|e| e.to_string())
            };
            match ok {
                Ok(true) => sent.push(trace),
                Ok(false) => failures.push(format!("good request {i} not accepted")),
                Err(e) => failures.push(format!("good request {i}: {e}")),
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (sent, failures)
    });
    GoodClient { stop, thread }
}

/// Stops the good client and checks that it lost nothing: every request it made was accepted,
/// and each of its spans reached the receiver exactly once (by span id). Ends the host.
fn good_client_lost_nothing(host: &mut Host, receiver: &Receiver, good: GoodClient) {
    good.stop();
    let (good_sent, good_failures) = good.thread.join().unwrap();
    assert!(
        good_failures.is_empty(),
        "the good client failed: {good_failures:?}"
    );
    assert!(!good_sent.is_empty(), "the good client sent nothing");
    let keys: Vec<_> = good_sent.iter().flat_map(SentTrace::keys).collect();
    receiver.wait_for(&keys, "the good client's spans", host);
    host.terminate_cleanly();
    let counts = count_by_key(&receiver.spans());
    for key in &keys {
        assert_eq!(
            counts.get(key).copied().unwrap_or(0),
            1,
            "good span {}/{} should come out exactly once",
            hex(&key.0),
            hex(&key.1)
        );
    }
}

#[test]
fn hostile_corpus_gets_the_spec_answers_and_harms_no_one() {
    let (receiver, mut host) = start();
    let rt = runtime();
    let client = http_client();
    // Warm up (first requests allocate the pools), then take the baseline.
    for _ in 0..5 {
        let (request, _) = error_trace("warm-up", "scope", 3);
        rt.block_on(grpc_export(host.ports.grpc, request)).unwrap();
    }
    let rss_before = rss_kib(host.pid());

    let good = good_client(&host);

    let cases = corpus();
    assert!(cases.len() >= 100, "the corpus has {} cases", cases.len());
    let mut wrong = Vec::new();
    let mut rss_peak = rss_before;
    for case in &cases {
        match send(case, &host, &client, &rt) {
            Ok(got) if got == case.want => {}
            Ok(got) => wrong.push(format!("{}: got {got:?}, want {:?}", case.name, case.want)),
            Err(e) => wrong.push(format!("{}: {e}, want {:?}", case.name, case.want)),
        }
        rss_peak = rss_peak.max(rss_kib(host.pid()));
        host.assert_healthy();
    }
    // The client stops before the last RSS reading (the helper below joins it).
    good.stop();
    let rss_after = rss_kib(host.pid());
    eprintln!(
        "{} hostile cases; VmRSS before {rss_before} KiB, peak {rss_peak} KiB, after {rss_after} KiB",
        cases.len(),
    );
    assert!(
        wrong.is_empty(),
        "{} of {} cases got the wrong answer:\n{}\n--- host stderr ---\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n"),
        host.stderr()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_BOUND_KIB,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB over the corpus"
    );
    good_client_lost_nothing(&mut host, &receiver, good);
}

/// One read from a connection whose read timeout is [`STALL_BOUND`]: the bytes read, 0 when the
/// server closed or reset it. Fails when the server kept it open past the bound (`what` says
/// what was stalled).
fn read_before_stall_bound(stream: &mut TcpStream, buf: &mut [u8], what: &str) -> usize {
    match stream.read(buf) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("the server kept {what} open for {STALL_BOUND:?}")
        }
        Err(_) => 0, // reset
    }
}

/// Opens a connection and writes `bytes`, then stalls; returns how the server ended it: the
/// status it answered, or `None` when it closed without one. Fails when it did not end the
/// connection within [`STALL_BOUND`].
fn stall(port: u16, bytes: &[u8]) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(STALL_BOUND)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match read_before_stall_bound(&mut stream, &mut buf, "a stalled connection") {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&got);
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

#[test]
fn slowloris_clients_are_cut_off_and_harm_no_one() {
    let (receiver, mut host) = start();
    let port = host.ports.http;
    let good = good_client(&host);

    // Headers that never finish: the connection is closed (hyper answers 408 or just closes).
    let partial_headers = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-pro";
    let answer = stall(port, partial_headers);
    assert!(
        matches!(answer, None | Some(408)),
        "partial headers: {answer:?}"
    );

    // Complete headers, a body that stops half-way: 408.
    let valid = valid_request();
    let mut partial_body = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\nContent-Length: {}\r\n\r\n",
        valid.len()
    )
    .into_bytes();
    partial_body.extend(&valid[..valid.len() / 2]);
    assert_eq!(
        stall(port, &partial_body),
        Some(408),
        "a body that stops half-way"
    );

    // Headers dripped one byte at a time, slower than the header timeout allows in total.
    let drip = std::thread::spawn(move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        for b in
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
        {
            if stream.write_all(&[*b]).is_err() {
                return true; // cut off
            }
            std::thread::sleep(Duration::from_millis(200));
            if started.elapsed() > STALL_BOUND {
                return false;
            }
        }
        // Everything written: the server must have closed the connection by now.
        let mut buf = [0u8; 64];
        stream.set_read_timeout(Some(STALL_BOUND)).unwrap();
        matches!(stream.read(&mut buf), Ok(0) | Err(_))
            || String::from_utf8_lossy(&buf).contains(" 408 ")
    });

    // Many stalled connections at once.
    let stalled: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || stall(port, b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"))
        })
        .collect();
    for s in stalled {
        let answer = s.join().unwrap();
        assert!(
            matches!(answer, None | Some(408)),
            "stalled connection: {answer:?}"
        );
    }
    assert!(
        drip.join().unwrap(),
        "a client dripping its headers was not cut off"
    );

    host.assert_healthy();
    good_client_lost_nothing(&mut host, &receiver, good);
}

/// An HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK "literal header field without indexing — new name", no Huffman (short strings).
fn hpack(name: &str, value: &str) -> Vec<u8> {
    let mut v = vec![0x00, name.len() as u8];
    v.extend(name.bytes());
    v.push(value.len() as u8);
    v.extend(value.bytes());
    v
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the next HTTP/2 frame from the server: (type, flags, stream id, payload), or `None`
/// once it closed or reset the connection. `got` keeps what was read past the frame. Fails after
/// [`STALL_BOUND`] without a frame (`what` says what was waited for).
fn next_h2_frame(
    stream: &mut TcpStream,
    got: &mut Vec<u8>,
    what: &str,
) -> Option<(u8, u8, u32, Vec<u8>)> {
    stream.set_read_timeout(Some(STALL_BOUND)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        if got.len() >= 9 {
            let len = u32::from_be_bytes([0, got[0], got[1], got[2]]) as usize;
            if got.len() >= 9 + len {
                let (kind, flags) = (got[3], got[4]);
                let id = u32::from_be_bytes([got[5], got[6], got[7], got[8]]) & 0x7fff_ffff;
                let payload = got[9..9 + len].to_vec();
                got.drain(..9 + len);
                return Some((kind, flags, id, payload));
            }
        }
        match read_before_stall_bound(stream, &mut buf, what) {
            0 => return None,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads HTTP/2 frames until the server ends stream 1 (HEADERS with END_STREAM, or RST_STREAM),
/// sends GOAWAY or closes the connection; says which, and whether a DATA frame (a response
/// message) came on stream 1 before. `got` holds what was read and not yet parsed. Fails after
/// [`STALL_BOUND`] (a hang).
fn h2_end_of_stream_1(stream: &mut TcpStream, got: &mut Vec<u8>) -> (&'static str, bool) {
    let mut data = false;
    while let Some((kind, flags, id, _)) = next_h2_frame(stream, got, "a gRPC request") {
        match (kind, id) {
            (0, 1) => data = true,
            (1, 1) if flags & 0x1 != 0 => return ("trailers", data),
            (3, 1) => return ("reset", data),
            (7, _) => return ("goaway", data),
            _ => {}
        }
    }
    ("closed", data)
}

/// The HEADERS block of a gRPC `Export` call (HPACK literals).
fn grpc_export_headers() -> Vec<u8> {
    let mut headers = Vec::new();
    for (k, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (
            ":path",
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        ),
        (":authority", "x"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        headers.extend(hpack(k, v));
    }
    headers
}

/// `message` framed as an uncompressed gRPC message.
fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut data = vec![0u8];
    data.extend_from_slice(&(message.len() as u32).to_be_bytes());
    data.extend_from_slice(message);
    data
}

#[test]
fn grpc_slowloris_clients_are_cut_off_and_harm_no_one() {
    let (receiver, mut host) = start();
    let port = host.ports.grpc;
    let good = good_client(&host);

    // A connection that sends nothing, and one that stops inside the HTTP/2 preface: closed.
    assert_eq!(stall(port, b""), None, "a silent connection");
    assert_eq!(stall(port, &H2_PREFACE[..16]), None, "half a preface");

    // A whole request's headers, then a message that stops half-way: the request is ended.
    let message = valid_request();
    let mut data = grpc_message(&message);
    data.truncate(5 + message.len() / 2);
    let mut bytes = H2_PREFACE.to_vec();
    bytes.extend(h2_frame(4, 0, 0, &[])); // SETTINGS
    bytes.extend(h2_frame(1, 0x4, 1, &grpc_export_headers())); // HEADERS, END_HEADERS
    bytes.extend(h2_frame(0, 0, 1, &data)); // DATA, stream left open
    let stalled: Vec<_> = (0..10)
        .map(|_| {
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
                stream.write_all(&bytes).unwrap();
                h2_end_of_stream_1(&mut stream, &mut Vec::new())
            })
        })
        .collect();
    for s in stalled {
        let (end, _) = s.join().unwrap();
        assert!(
            matches!(end, "trailers" | "reset" | "goaway" | "closed"),
            "{end}"
        );
    }

    host.assert_healthy();
    good_client_lost_nothing(&mut host, &receiver, good);
}

/// The server's first SETTINGS frame on a new gRPC connection to `port`, after sending the
/// preface and empty SETTINGS; returns the connection (the server's SETTINGS not yet
/// acknowledged), what was read past the frame, and the advertised SETTINGS_MAX_FRAME_SIZE.
fn h2_connect(port: u16) -> (TcpStream, Vec<u8>, Option<u32>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    let mut bytes = H2_PREFACE.to_vec();
    bytes.extend(h2_frame(4, 0, 0, &[]));
    stream.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    let (kind, flags, id, payload) = next_h2_frame(&mut stream, &mut got, "the server's SETTINGS")
        .expect("the server's SETTINGS");
    assert_eq!(
        (kind, flags, id),
        (4, 0, 0),
        "the server's first frame is its SETTINGS"
    );
    let max_frame = payload
        .as_chunks::<6>()
        .0
        .iter()
        .find(|e| e[..2] == [0, 5])
        .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
    (stream, got, max_frame)
}

/// The gRPC receiver lets clients send frames of up to `GRPC_MAX_FRAME_BYTES` (HTTP/2's default
/// is 16 KiB), so a request of that size is read in one frame: such a request is answered with
/// a response message and its spans are exported. A frame over the limit ends its connection
/// with FRAME_SIZE_ERROR, and a client sending at the same time loses nothing.
#[test]
fn grpc_frames_up_to_the_advertised_size_are_read_and_larger_ones_refused() {
    use tracekeeper::receiver::grpc::GRPC_MAX_FRAME_BYTES;
    /// HTTP/2's default SETTINGS_MAX_FRAME_SIZE and initial flow-control window.
    const H2_DEFAULT_FRAME: usize = 16 << 10;
    const H2_DEFAULT_WINDOW: usize = 65_535;
    let (receiver, mut host) = start();
    let port = host.ports.grpc;
    let good = good_client(&host);

    // A request larger than HTTP/2's default frame, smaller than the connection's first window.
    let mut n = 100;
    let (data, sent) = loop {
        let (request, sent) = error_trace("one-frame", "scope", n);
        let data = grpc_message(&request.encode_to_vec());
        if data.len() > 2 * H2_DEFAULT_FRAME {
            break (data, sent);
        }
        n += 100;
    };
    assert!(data.len() < H2_DEFAULT_WINDOW, "{} bytes", data.len());

    let (mut stream, mut got, max_frame) = h2_connect(port);
    assert_eq!(max_frame, Some(GRPC_MAX_FRAME_BYTES));
    let mut bytes = h2_frame(4, 0x1, 0, &[]); // SETTINGS ACK: the larger frames now apply
    bytes.extend(h2_frame(1, 0x4, 1, &grpc_export_headers())); // HEADERS, END_HEADERS
    bytes.extend(h2_frame(0, 0x1, 1, &data)); // the whole message in one DATA, END_STREAM
    stream.write_all(&bytes).unwrap();
    assert_eq!(
        h2_end_of_stream_1(&mut stream, &mut got),
        ("trailers", true),
        "a {}-byte frame gets a response message",
        data.len()
    );
    receiver.wait_for(&sent.keys(), "the one-frame request's spans", &host);

    // One byte over the limit: GOAWAY with FRAME_SIZE_ERROR (0x6). Only the DATA frame's
    // header is sent, which is what the server refuses on, so that nothing is left unread to
    // make it reset the connection rather than close it.
    let (mut stream, mut got, _) = h2_connect(port);
    let mut bytes = h2_frame(4, 0x1, 0, &[]);
    bytes.extend(h2_frame(1, 0x4, 1, &grpc_export_headers()));
    let oversized = h2_frame(0, 0x1, 1, &vec![0u8; GRPC_MAX_FRAME_BYTES as usize + 1]);
    bytes.extend_from_slice(&oversized[..9]);
    stream.write_all(&bytes).unwrap();
    let mut goaway = None;
    while let Some((kind, _, _, payload)) =
        next_h2_frame(&mut stream, &mut got, "an oversized frame")
    {
        if kind == 7 && payload.len() >= 8 {
            goaway = Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
            break;
        }
    }
    assert_eq!(goaway, Some(0x6), "GOAWAY with FRAME_SIZE_ERROR");

    host.assert_healthy();
    good_client_lost_nothing(&mut host, &receiver, good);
}

/// A message split over several DATA frames, its 5-byte prefix cut as well, is read whole:
/// answered with a response message, its spans exported. A message followed by a stray byte
/// is refused (an answer without a message). A client sending meanwhile loses nothing.
#[test]
fn grpc_messages_split_over_data_frames_are_read_whole() {
    let (receiver, mut host) = start();
    let port = host.ports.grpc;
    let good = good_client(&host);
    let send = |data: &[u8], cuts: &[usize]| {
        let (mut stream, mut got, _) = h2_connect(port);
        let mut bytes = h2_frame(4, 0x1, 0, &[]);
        bytes.extend(h2_frame(1, 0x4, 1, &grpc_export_headers()));
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(data.len());
        for w in bounds.windows(2) {
            let last = w[1] == data.len();
            bytes.extend(h2_frame(0, u8::from(last), 1, &data[w[0]..w[1]]));
        }
        stream.write_all(&bytes).unwrap();
        h2_end_of_stream_1(&mut stream, &mut got)
    };

    let (request, sent) = error_trace("split-frames", "scope", 20);
    let data = grpc_message(&request.encode_to_vec());
    assert_eq!(
        send(&data, &[2, data.len() / 2]),
        ("trailers", true),
        "a message in three frames gets a response message"
    );
    receiver.wait_for(&sent.keys(), "the split message's spans", &host);

    let (request, _) = error_trace("stray-byte", "scope", 5);
    let mut data = grpc_message(&request.encode_to_vec());
    data.push(0);
    assert_eq!(
        send(&data, &[data.len() - 1]),
        ("trailers", false),
        "a stray byte after the message is refused"
    );

    host.assert_healthy();
    good_client_lost_nothing(&mut host, &receiver, good);
}

/// Sends `head` and then `body` on a new connection, as a client that writes its whole request
/// before reading; returns the write's outcome and the answer's head (status line and headers).
fn post_whole(port: u16, head: &str, body: &[u8]) -> (std::io::Result<()>, String) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(STALL_BOUND)).unwrap();
    stream.set_write_timeout(Some(STALL_BOUND)).unwrap();
    let wrote = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match read_before_stall_bound(&mut stream, &mut buf, "a refused request") {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    (wrote, String::from_utf8_lossy(&got).into_owned())
}

/// A body over the limit, or of a content type not served, is answered (413, 415) only after the
/// client could send all of it: a server that closes with the body unread makes the kernel reset
/// the connection, and a client still sending then sees the reset, not the answer (an OTLP
/// exporter retries a reset and drops on a 413). A client that asks `Expect: 100-continue` is
/// refused before it sends the body.
#[test]
fn refused_bodies_are_answered_after_the_client_sent_them() {
    let (_receiver, mut host) = start();
    let port = host.ports.http;
    let big = vec![0x0au8; 8 * BODY_LIMIT];
    let head = |content_type: &str, extra: &str| {
        format!(
            "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n{extra}\r\n",
            big.len()
        )
    };
    for (what, content_type, want) in [
        ("a body 8 times the limit", PROTOBUF, "413"),
        ("a body of another content type", "text/plain", "415"),
    ] {
        let (wrote, answer) = post_whole(port, &head(content_type, ""), &big);
        assert!(
            wrote.is_ok(),
            "{what}: the server reset the connection before the body was sent: {wrote:?}"
        );
        assert_eq!(
            answer.split_whitespace().nth(1),
            Some(want),
            "{what}: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{what}: {answer}"
        );
        host.assert_healthy();
    }
    // Expect: 100-continue: the answer comes without the body.
    let (wrote, answer) = post_whole(port, &head(PROTOBUF, "Expect: 100-continue\r\n"), &[]);
    assert!(wrote.is_ok());
    assert_eq!(answer.split_whitespace().nth(1), Some("413"), "{answer}");
    host.assert_healthy();
}
