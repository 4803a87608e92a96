//! The host's per-span work outside the guest, against the prost floor, on the DESIGN's
//! reference request (100 spans, 10 string attributes each, about 366 encoded bytes per span):
//!
//! * `floor/prost_decode_encode`: `ExportTraceServiceRequest` decode + encode (the floor the
//!   end-to-end benchmark divides by);
//! * `ingest/split`: the wire walk that checks the request and splits it into spans;
//! * `ingest/split_and_view`: the same walk also picking the attributes of the default guest's
//!   interest, plus the span-view batch built from them (what a receiver does per request);
//! * `ingest/buffer`: copying the spans into the trace buffer, a trace's consecutive spans as
//!   one run as the worker does, and removing their traces again (what the worker does per span
//!   before and after the decision);
//! * `export/tag_and_encode`: appending the tags of a probabilistic keep (policy, completeness,
//!   a raised `th` in tracestate) to every span and encoding the export request;
//! * `export/gzip1`: gzip of that export request at level 1, what both exporters apply with
//!   `compression: gzip` (through flate2 and the backend this build selects); `export/gzip6` the
//!   same at level 6, tonic's fixed level, which the gRPC exporter used before it framed its
//!   messages itself.
//!
//! And the trace buffer in a steady state (`buffer/...`): [`STEADY_TRACES`] traces of 10 spans
//! buffered, each iteration pushes one 100-span request of new spans and removes the oldest
//! traces whose spans are all in (FIFO, as decisions go), for `TraceBuffer` (`chunks`) and, as
//! the baseline, the growing `Vec` per trace it replaced (`vec_per_trace`, kept below), in two
//! shapes: `request` (a request carries 10 traces with their 10 spans together, the reference
//! load) and `spread` (a request carries one span of each of 100 traces; a trace's spans come in
//! 10 requests in a row). Before measuring, each prints its memory per buffered span (bytes held,
//! by its own accounting, ÷ spans) against the encoded size.
//!
//! All reported per span. Run: `cargo bench -p tracekeeper --bench hot_path` (only the buffer:
//! `... -- buffer/`).

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
use tracekeeper::otlp::request::{Group, parse_request, parse_request_with};
use tracekeeper::otlp::view::{Interest, ViewBuilder};
use tracekeeper::tags::TraceTags;
use tracekeeper_abi::{Completeness, ThresholdOp, TraceId};

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
            // As the receivers do: the walk that checks the request picks the attributes.
            let parsed = parse_request_with(&body, &interest).unwrap();
            let mut view = ViewBuilder::new();
            for s in &parsed.spans {
                let picks = parsed.picks_of(s);
                view.add_picked(
                    &interest,
                    &parsed.groups[s.group],
                    s.bytes,
                    &s.info,
                    picks,
                    |_| true,
                );
            }
            std::hint::black_box(view.into_bytes())
        })
    });

    let parsed = parse_request(&body).unwrap();
    g.bench_function("ingest/buffer", |b| {
        let mut buffer = TraceBuffer::new();
        b.iter(|| {
            // As the worker does: a trace's consecutive spans of one group as one run.
            let runs = parsed
                .spans
                .chunk_by(|a, b| a.info.trace_id == b.info.trace_id && a.group == b.group);
            for run in runs {
                let (id, group) = (run[0].info.trace_id, &parsed.groups[run[0].group]);
                buffer.push_run(id, group, run.iter().map(|s| s.bytes));
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
    let mut builder = ExportBuilder::new();
    for s in &parsed.spans {
        builder.add(&groups[s.group], s.bytes, &tags, false);
    }
    let export = builder.finish();
    for level in [1, 6] {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        std::io::Write::write_all(&mut enc, &export).unwrap();
        let size = enc.finish().unwrap().len();
        println!(
            "export/gzip{level}: {} bytes -> {size} ({:.3} of the request)",
            export.len(),
            size as f64 / export.len() as f64
        );
        g.bench_function(format!("export/gzip{level}"), |b| {
            b.iter(|| {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(export.len() / 4),
                    flate2::Compression::new(level),
                );
                std::io::Write::write_all(&mut enc, &export).unwrap();
                std::hint::black_box(enc.finish().unwrap())
            })
        });
    }
    g.finish();
    buffer_benches(
        c,
        &parsed.groups[0],
        &parsed.spans.iter().map(|s| s.bytes).collect::<Vec<_>>(),
    );
}

/// Traces held in the steady-state buffer benches (200 000 spans, about 73 MB: well past the
/// caches, like the 500 000 spans of the end-to-end run).
const STEADY_TRACES: u64 = 20_000;

/// The trace buffer as it was before the shared chunks: one growing `Vec<u8>` per trace (the
/// baseline of `buffer/.../vec_per_trace`; same push, remove and accounting as `TraceBuffer`
/// had).
mod vec_per_trace {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use hashbrown::HashMap;
    use tracekeeper::otlp::request::Group;
    use tracekeeper_abi::TraceId;

    #[derive(Debug, Clone, Copy)]
    struct StoredSpan {
        start: u32,
        len: u32,
        group: u16,
    }

    #[derive(Default)]
    pub struct Entry {
        data: Vec<u8>,
        spans: Vec<StoredSpan>,
        groups: Vec<Arc<Group>>,
    }

    impl Entry {
        fn push(&mut self, group: &Arc<Group>, bytes: &[u8]) {
            let g = match self.groups.iter().rposition(|g| Arc::ptr_eq(g, group)) {
                Some(i) => i,
                None => {
                    self.groups.push(Arc::clone(group));
                    self.groups.len() - 1
                }
            };
            let start = self.data.len() as u32;
            self.data.extend_from_slice(bytes);
            self.spans.push(StoredSpan {
                start,
                len: bytes.len() as u32,
                group: g as u16,
            });
        }

        fn memory(&self) -> usize {
            self.data.capacity() + self.spans.capacity() * std::mem::size_of::<StoredSpan>()
        }

        pub fn spans(&self) -> impl Iterator<Item = (&Arc<Group>, &[u8])> {
            self.spans.iter().filter_map(|s| {
                let bytes = self
                    .data
                    .get(s.start as usize..(s.start as usize + s.len as usize))?;
                Some((self.groups.get(usize::from(s.group))?, bytes))
            })
        }
    }

    #[derive(Default)]
    pub struct Buffer {
        traces: HashMap<TraceId, Entry>,
        order: VecDeque<TraceId>,
        bytes: usize,
    }

    impl Buffer {
        pub fn push(&mut self, trace_id: TraceId, group: &Arc<Group>, bytes: &[u8]) -> bool {
            let mut new = false;
            let entry = self.traces.entry(trace_id).or_insert_with(|| {
                new = true;
                Entry::default()
            });
            if new {
                self.order.push_back(trace_id);
            }
            let before = entry.memory();
            entry.push(group, bytes);
            self.bytes += entry.memory() - before;
            new
        }

        pub fn remove(&mut self, trace_id: &TraceId) -> Option<Entry> {
            let e = self.traces.remove(trace_id)?;
            self.bytes = self.bytes.saturating_sub(e.memory());
            Some(e)
        }

        pub fn compact(&mut self) {
            if self.order.len() > 2 * self.traces.len() + 1024 {
                let traces = &self.traces;
                self.order.retain(|id| traces.contains_key(id));
            }
        }

        pub fn bytes(&self) -> usize {
            self.bytes
        }
    }
}

/// What the steady-state benches need of a buffer.
trait Buffer: Default {
    fn push(&mut self, id: TraceId, group: &Arc<Group>, bytes: &[u8]);
    /// Removes a trace and reads its spans (as the worker does for a kept trace).
    fn remove(&mut self, id: &TraceId) -> usize;
    fn compact(&mut self);
    fn bytes(&self) -> usize;
}

impl Buffer for TraceBuffer {
    fn push(&mut self, id: TraceId, group: &Arc<Group>, bytes: &[u8]) {
        TraceBuffer::push(self, id, group, bytes);
    }
    fn remove(&mut self, id: &TraceId) -> usize {
        TraceBuffer::remove(self, id).map_or(0, |e| e.spans().map(|(_, s)| s.len()).sum())
    }
    fn compact(&mut self) {
        TraceBuffer::compact(self)
    }
    fn bytes(&self) -> usize {
        TraceBuffer::bytes(self)
    }
}

impl Buffer for vec_per_trace::Buffer {
    fn push(&mut self, id: TraceId, group: &Arc<Group>, bytes: &[u8]) {
        vec_per_trace::Buffer::push(self, id, group, bytes);
    }
    fn remove(&mut self, id: &TraceId) -> usize {
        vec_per_trace::Buffer::remove(self, id).map_or(0, |e| e.spans().map(|(_, s)| s.len()).sum())
    }
    fn compact(&mut self) {
        vec_per_trace::Buffer::compact(self)
    }
    fn bytes(&self) -> usize {
        vec_per_trace::Buffer::bytes(self)
    }
}

fn trace_id(n: u64) -> TraceId {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&n.to_be_bytes());
    t[8..].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    TraceId(t)
}

/// A steady-state load: which spans each request carries, and which traces are complete after
/// it.
#[derive(Clone, Copy)]
enum Shape {
    /// 10 traces per request, each with its 10 spans together.
    Request,
    /// One span of each of 100 traces per request; a trace's 10 spans in 10 requests in a row.
    Spread,
}

/// A buffer fed request by request in one shape, holding [`STEADY_TRACES`] traces.
struct Steady<B> {
    buffer: B,
    shape: Shape,
    /// Requests pushed so far.
    request: u64,
    /// Spans buffered.
    held: usize,
}

impl<B: Buffer> Steady<B> {
    fn new(shape: Shape, group: &Arc<Group>, spans: &[&[u8]]) -> Self {
        let mut s = Steady {
            buffer: B::default(),
            shape,
            request: 0,
            held: 0,
        };
        // In both shapes, this many requests bring the first `STEADY_TRACES` traces in.
        while s.request < STEADY_TRACES / 10 {
            s.push_request(group, spans);
        }
        s
    }

    /// Pushes the next request, then removes the traces that fell out of the window.
    fn push_request(&mut self, group: &Arc<Group>, spans: &[&[u8]]) -> usize {
        let r = self.request;
        let mut read = 0;
        match self.shape {
            Shape::Request => {
                for (i, bytes) in spans.iter().enumerate() {
                    self.buffer
                        .push(trace_id(r * 10 + i as u64 / 10), group, bytes);
                }
                if r * 10 >= STEADY_TRACES {
                    for t in (r * 10 - STEADY_TRACES)..(r * 10 - STEADY_TRACES + 10) {
                        read += self.buffer.remove(&trace_id(t));
                        self.held -= 10;
                    }
                }
            }
            Shape::Spread => {
                let block = r / 10;
                for (i, bytes) in spans.iter().enumerate() {
                    self.buffer
                        .push(trace_id(block * 100 + i as u64), group, bytes);
                }
                let done = (block + 1) * 100;
                if r % 10 == 9 && done > STEADY_TRACES {
                    for t in (done - STEADY_TRACES - 100)..(done - STEADY_TRACES) {
                        read += self.buffer.remove(&trace_id(t));
                        self.held -= 10;
                    }
                }
            }
        }
        self.held += spans.len();
        self.buffer.compact();
        self.request += 1;
        read
    }
}

fn buffer_benches(c: &mut Criterion, group: &Arc<Group>, spans: &[&[u8]]) {
    let encoded: usize = spans.iter().map(|s| s.len()).sum::<usize>() / spans.len();
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(spans.len() as u64));
    for (shape, name) in [(Shape::Request, "request"), (Shape::Spread, "spread")] {
        fn run<B: Buffer>(
            g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
            label: String,
            shape: Shape,
            group: &Arc<Group>,
            spans: &[&[u8]],
            encoded: usize,
        ) {
            let mut steady = Steady::<B>::new(shape, group, spans);
            let per_span = steady.buffer.bytes() as f64 / steady.held as f64;
            eprintln!(
                "{label}: {per_span:.0} B per buffered span ({:.2}x the {encoded} encoded)",
                per_span / encoded as f64
            );
            g.bench_function(label, |b| {
                b.iter(|| std::hint::black_box(steady.push_request(group, spans)))
            });
        }
        run::<vec_per_trace::Buffer>(
            &mut g,
            format!("buffer/{name}/vec_per_trace"),
            shape,
            group,
            spans,
            encoded,
        );
        run::<TraceBuffer>(
            &mut g,
            format!("buffer/{name}/chunks"),
            shape,
            group,
            spans,
            encoded,
        );
    }
    g.finish();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
