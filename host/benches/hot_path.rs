//! The host's per-span work outside the guest, against the prost floor, on the DESIGN's
//! reference request (100 spans, 10 string attributes each, about 366 encoded bytes per span):
//!
//! * `floor/prost_decode_encode`: `ExportTraceServiceRequest` decode + encode (the floor the
//!   end-to-end benchmark divides by);
//! * `ingest/split`: the wire walk that checks the request and splits it into spans;
//! * `ingest/split_and_view`: the same plus the span-view batch for the default guest's interest
//!   (what a receiver does per request);
//! * `ingest/buffer`: copying the spans into the trace buffer and removing their traces again
//!   (what the worker does per span before and after the decision);
//! * `export/tag_and_encode`: appending the tags of a probabilistic keep (policy, completeness,
//!   a raised `th` in tracestate) to every span and encoding the export request.
//!
//! All reported per span. Run: `cargo bench -p tracekeeper --bench hot_path`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tracekeeper::buffer::TraceBuffer;
use tracekeeper::config::{Config, DEFAULT_CONFIG};
use tracekeeper::export::builder::ExportBuilder;
use tracekeeper::otlp::request::parse_request;
use tracekeeper::otlp::view::{Interest, ViewBuilder};
use tracekeeper::tags::TraceTags;
use tracekeeper_abi::{Completeness, ThresholdOp};

/// Spans per request.
const SPANS: usize = 100;
/// Spans per trace.
const SPANS_PER_TRACE: usize = 10;
/// String attributes per span.
const ATTRIBUTES: usize = 10;

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        key_strindex: 0,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
    }
}

/// The reference request (the same shape as `tracekeeper-bench`'s workload).
fn request() -> Vec<u8> {
    const POOL: [(&str, &str); ATTRIBUTES] = [
        ("http.request.method", "GET"),
        ("http.route", "/orders/{id}"),
        ("url.scheme", "https"),
        ("server.address", "orders"),
        ("server.port", "8080"),
        ("client.address", "10.1.2.3"),
        ("peer.service", "db"),
        ("http.response.status_code", "200"),
        ("thread.name", "worker-3"),
        ("code.function", "handle"),
    ];
    let spans = (0..SPANS)
        .map(|i| {
            let trace = (i / SPANS_PER_TRACE) as u64;
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&(trace + 1).to_be_bytes());
            trace_id[8..].copy_from_slice(&trace.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            let pos = i % SPANS_PER_TRACE;
            Span {
                trace_id: trace_id.to_vec(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                parent_span_id: if pos == 0 {
                    Vec::new()
                } else {
                    (i as u64).to_be_bytes().to_vec()
                },
                flags: 0x101,
                name: format!("SELECT orders {pos}"),
                kind: 3,
                start_time_unix_nano: 1_764_288_000_000_000_000 + i as u64,
                end_time_unix_nano: 1_764_288_000_025_000_000 + i as u64,
                attributes: POOL.iter().map(|(k, v)| kv(k, (*v).to_string())).collect(),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "orders-1".into()),
                    kv("service.version", "1.14.2".into()),
                    kv("telemetry.sdk.language", "rust".into()),
                    kv("host.name", "node-1".into()),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "orders-api".into(),
                    version: "0.3.0".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
}

/// The interest the embedded default guest declares for the embedded default configuration.
fn default_interest() -> Interest {
    let json = Config::parse(DEFAULT_CONFIG).unwrap().guest_json();
    let (_, i) = tracekeeper_guest::Sampler::configure(&json).unwrap();
    Interest::new(
        &i.span_attributes,
        &i.resource_attributes,
        i.all_span_attributes,
        i.all_resource_attributes,
        i.links,
        i.events,
    )
}

fn benches(c: &mut Criterion) {
    let body = request();
    let interest = default_interest();
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(SPANS as u64));

    g.bench_function("floor/prost_decode_encode", |b| {
        let mut out = Vec::with_capacity(body.len());
        b.iter(|| {
            let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
            out.clear();
            req.encode(&mut out).unwrap();
            std::hint::black_box(&out);
        })
    });

    g.bench_function("ingest/split", |b| {
        b.iter(|| std::hint::black_box(parse_request(&body).unwrap().spans.len()))
    });

    g.bench_function("ingest/split_and_view", |b| {
        b.iter(|| {
            let parsed = parse_request(&body).unwrap();
            let mut view = ViewBuilder::new();
            for s in &parsed.spans {
                view.add(&interest, &parsed.groups[s.group], s.bytes, &s.info);
            }
            std::hint::black_box(view.into_bytes())
        })
    });

    let parsed = parse_request(&body).unwrap();
    g.bench_function("ingest/buffer", |b| {
        let mut buffer = TraceBuffer::new();
        b.iter(|| {
            for s in &parsed.spans {
                buffer.push(s.info.trace_id, &parsed.groups[s.group], s.bytes);
            }
            for s in parsed.spans.iter().step_by(SPANS_PER_TRACE) {
                std::hint::black_box(buffer.remove(&s.info.trace_id));
            }
            buffer.compact();
        })
    });

    let tags = TraceTags::new(
        "baseline".into(),
        Some(Completeness::Complete),
        Vec::new(),
        ThresholdOp::Raise(0xe6_6666_6666_6668),
        false,
        Vec::new(),
    );
    let groups: Vec<Arc<_>> = parsed.groups.clone();
    g.bench_function("export/tag_and_encode", |b| {
        let mut builder = ExportBuilder::new();
        b.iter(|| {
            for s in &parsed.spans {
                builder.add(&groups[s.group], s.bytes, &tags, false);
            }
            std::hint::black_box(builder.finish())
        })
    });
    g.finish();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
