//! The synthetic workload: realistic OTLP trace requests, encoded once, whose ids are patched
//! in place for every send.
//!
//! A *cycle* of requests is built and encoded with prost at start-up; request `k` of the run is
//! request `k % cycle_len` of the cycle with its trace and span ids overwritten (same lengths,
//! so no re-encoding). Ids carry their global index, so the sink can tell every span apart
//! (loss and duplicate checks) and find each trace's first send time (decision lateness):
//!
//! * trace id: bytes 0..8 = trace index (big-endian), bytes 8..16 = a mix of it, so that the low
//!   56 bits (the OpenTelemetry sampling randomness) are uniformly distributed;
//! * span id: span index + 1 (big-endian; never zero).
//!
//! Spans of one trace are consecutive in the stream, root first; a trace may straddle two
//! requests. Every span has the configured number of string attributes; a share of the traces
//! has one span with status ERROR, another share a PRODUCER span with its CONSUMER child.

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span};
use prost::Message;
use tracekeeper::otlp::wire::{Fields, put_len_field, put_len_header};

/// Fewest traces in a cycle (so that error and producer shares of 1% are represented).
pub const MIN_CYCLE_TRACES: u64 = 1000;
/// Most spans in a cycle (bounds the memory of the encoded cycle).
pub const MAX_CYCLE_SPANS: u64 = 1 << 20;
/// Number of distinct services (one resource per request, rotating).
pub const SERVICES: usize = 8;
/// Spans a trace needs for a producer/consumer pair (root, producer, consumer).
const MIN_SPANS_FOR_MESSAGING: usize = 3;
/// Salt of the hash that picks error traces.
const ERROR_SALT: u64 = 0xe770;
/// Salt of the hash that picks traces with a producer and a consumer.
const PRODUCER_SALT: u64 = 0x70d0;
/// Start time written in the spans (2025-11-28T00:00:00Z); the host decides on its own clock.
const BASE_TIME_NANOS: u64 = 1_764_288_000_000_000_000;
/// Duration of a generated span.
const SPAN_DURATION_NANOS: u64 = 25_000_000;

/// What the generated traces look like.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Spans per trace (at least 1).
    pub spans_per_trace: usize,
    /// Spans per request (at least 1).
    pub spans_per_request: usize,
    /// String attributes per span.
    pub attributes_per_span: usize,
    /// Share of traces (0..=1) with one span whose status is ERROR.
    pub error_share: f64,
    /// Share of traces (0..=1) with a PRODUCER span and its CONSUMER child.
    pub producer_share: f64,
}

/// Why a workload cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// A count is zero or a share is outside 0..=1.
    #[error("invalid workload: {0}")]
    Invalid(String),
}

/// Where a patched id goes in a request.
#[derive(Debug, Clone, Copy)]
enum Patch {
    /// 16 bytes of the trace with this index in the cycle.
    Trace { at: usize, local: u64 },
    /// 8 bytes of the span with this index in the cycle.
    Span { at: usize, local: u64 },
}

/// One request of the cycle.
#[derive(Debug, Clone)]
struct RequestTemplate {
    bytes: Vec<u8>,
    patches: Vec<Patch>,
}

/// The encoded cycle and how request numbers map to trace and span indexes.
#[derive(Debug, Clone)]
pub struct Workload {
    spec: WorkloadSpec,
    requests: Vec<RequestTemplate>,
    traces_per_cycle: u64,
    spans_per_cycle: u64,
    span_bytes_total: u64,
}

/// The mixing function of splitmix64 (a bijection on u64).
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The trace id of trace `index`.
pub fn trace_id(index: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&index.to_be_bytes());
    id[8..].copy_from_slice(&mix(index).to_be_bytes());
    id
}

/// The trace index of a generated trace id (None for a foreign id).
pub fn trace_index(id: &[u8; 16]) -> Option<u64> {
    let mut hi = [0u8; 8];
    hi.copy_from_slice(&id[..8]);
    let index = u64::from_be_bytes(hi);
    (trace_id(index) == *id).then_some(index)
}

/// The span id of span `index`.
pub fn span_id(index: u64) -> [u8; 8] {
    (index + 1).to_be_bytes()
}

/// The span index of a generated span id (None for zero).
pub fn span_index(id: &[u8; 8]) -> Option<u64> {
    u64::from_be_bytes(*id).checked_sub(1)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A uniform value in [0, 1) derived from `x` and a salt.
fn unit(x: u64, salt: u64) -> f64 {
    (mix(x ^ salt) >> 11) as f64 / (1u64 << 53) as f64
}

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        key_strindex: 0,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
    }
}

/// Typical semantic-convention attributes of a service span, cycled to the requested count.
fn attributes(n: usize, local_span: u64, service: usize) -> Vec<KeyValue> {
    const POOL: [(&str, &str); 10] = [
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
    (0..n)
        .map(|i| {
            let (k, v) = POOL[i % POOL.len()];
            let value = match i {
                5 => format!("10.1.{}.{}", service, local_span % 250),
                9 => format!("handle_{}", local_span % 97),
                _ => v.to_string(),
            };
            if i < POOL.len() {
                kv(k, value)
            } else {
                kv(&format!("{k}.{}", i / POOL.len()), value)
            }
        })
        .collect()
}

impl Workload {
    /// Builds and encodes the cycle.
    pub fn new(spec: WorkloadSpec) -> Result<Self, WorkloadError> {
        if spec.spans_per_trace == 0 || spec.spans_per_request == 0 {
            return Err(WorkloadError::Invalid(
                "spans per trace and per request must be at least 1".into(),
            ));
        }
        for (name, share) in [
            ("error share", spec.error_share),
            ("producer share", spec.producer_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(WorkloadError::Invalid(format!(
                    "{name} must be within 0..=1, got {share}"
                )));
            }
        }
        let spt = spec.spans_per_trace as u64;
        let spr = spec.spans_per_request as u64;
        let lcm = spt / gcd(spt, spr) * spr;
        let min_spans = MIN_CYCLE_TRACES.saturating_mul(spt);
        let spans_per_cycle = lcm.saturating_mul(min_spans.div_ceil(lcm).max(1));
        if spans_per_cycle > MAX_CYCLE_SPANS {
            return Err(WorkloadError::Invalid(format!(
                "a cycle of {spans_per_cycle} spans (lcm of spans per trace and per request, \
                 at least {MIN_CYCLE_TRACES} traces) exceeds {MAX_CYCLE_SPANS}"
            )));
        }
        let traces_per_cycle = spans_per_cycle / spt;
        let mut requests = Vec::new();
        let mut span_bytes_total = 0u64;
        for (r, first) in (0..spans_per_cycle)
            .step_by(spec.spans_per_request)
            .enumerate()
        {
            let service = r % SERVICES;
            let mut spans = Vec::with_capacity(spec.spans_per_request);
            for local in first..first + spr {
                spans.push(Self::span(&spec, local, service));
            }
            let t = Self::request(service, first, spt, &spans);
            span_bytes_total += spans.iter().map(|(s, _)| s.len() as u64).sum::<u64>();
            requests.push(t);
        }
        Ok(Workload {
            spec,
            requests,
            traces_per_cycle,
            spans_per_cycle,
            span_bytes_total,
        })
    }

    /// The encoded span `local` of the cycle (ids are placeholders, patched per send) and the
    /// cycle index of its parent.
    fn span(spec: &WorkloadSpec, local: u64, service: usize) -> (Vec<u8>, Option<u64>) {
        let spt = spec.spans_per_trace as u64;
        let trace = local / spt;
        let pos = local % spt;
        let messaging = spec.spans_per_trace >= MIN_SPANS_FOR_MESSAGING
            && unit(trace, PRODUCER_SALT) < spec.producer_share;
        let error = unit(trace, ERROR_SALT) < spec.error_share && pos == spt - 1;
        let parent = match pos {
            0 => None,
            2 if messaging => Some(1),
            p => Some((p - 1) / 2),
        };
        let mut attrs = attributes(spec.attributes_per_span, local, service);
        let (name, kind) = match pos {
            0 => ("GET /orders/{id}".to_string(), span::SpanKind::Server),
            1 if messaging => {
                attrs.extend([
                    kv("messaging.system", "rabbitmq".into()),
                    kv("messaging.operation.type", "publish".into()),
                    kv("messaging.destination.name", "order_confirmed".into()),
                ]);
                (
                    "publish order_confirmed".to_string(),
                    span::SpanKind::Producer,
                )
            }
            2 if messaging => {
                attrs.extend([
                    kv("messaging.system", "rabbitmq".into()),
                    kv("messaging.operation.type", "process".into()),
                    kv("messaging.destination.name", "order_confirmed".into()),
                ]);
                (
                    "process order_confirmed".to_string(),
                    span::SpanKind::Consumer,
                )
            }
            p if p % 2 == 1 => (format!("SELECT orders {p}"), span::SpanKind::Client),
            p => (format!("render step {p}"), span::SpanKind::Internal),
        };
        let start = BASE_TIME_NANOS + local * 1000;
        let bytes = Span {
            trace_id: vec![0xaa; 16],
            span_id: vec![0xbb; 8],
            trace_state: String::new(),
            parent_span_id: parent.map(|_| vec![0xcc; 8]).unwrap_or_default(),
            flags: 0x101,
            name,
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + SPAN_DURATION_NANOS,
            attributes: attrs,
            dropped_attributes_count: 0,
            events: Vec::new(),
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            status: error.then(|| Status {
                message: "upstream timed out".into(),
                code: 2,
            }),
        }
        .encode_to_vec();
        (bytes, parent.map(|p| trace * spt + p))
    }

    /// Wraps the spans of one request under a resource and a scope, and records where the ids
    /// are. `spans` (with their parents' cycle indexes) are the consecutive spans from `first`.
    fn request(
        service: usize,
        first: u64,
        spans_per_trace: u64,
        spans: &[(Vec<u8>, Option<u64>)],
    ) -> RequestTemplate {
        let resource = Resource {
            attributes: vec![
                kv("service.name", format!("orders-{service}")),
                kv("service.version", "1.14.2".into()),
                kv("telemetry.sdk.language", "rust".into()),
                kv("host.name", format!("node-{service}")),
            ],
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        }
        .encode_to_vec();
        let scope = InstrumentationScope {
            name: "orders-api".into(),
            version: "0.3.0".into(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
        }
        .encode_to_vec();
        let spans_len: usize = spans
            .iter()
            .map(|(s, _)| 1 + tracekeeper::otlp::wire::varint_len(s.len() as u64) + s.len())
            .sum();
        let mut scope_spans = Vec::with_capacity(scope.len() + spans_len + 8);
        put_len_field(&mut scope_spans, 1, &scope);
        let mut span_offsets = Vec::with_capacity(spans.len());
        for (s, _) in spans {
            put_len_header(&mut scope_spans, 2, s.len());
            span_offsets.push(scope_spans.len());
            scope_spans.extend_from_slice(s);
        }
        let mut resource_spans = Vec::with_capacity(scope_spans.len() + resource.len() + 16);
        put_len_field(&mut resource_spans, 1, &resource);
        put_len_header(&mut resource_spans, 2, scope_spans.len());
        let ss_at = resource_spans.len();
        resource_spans.extend_from_slice(&scope_spans);
        let mut bytes = Vec::with_capacity(resource_spans.len() + 8);
        put_len_header(&mut bytes, 1, resource_spans.len());
        let rs_at = bytes.len();
        bytes.extend_from_slice(&resource_spans);
        let base = rs_at + ss_at;
        let mut patches = Vec::with_capacity(spans.len() * 3);
        for (i, ((span, parent), offset)) in spans.iter().zip(&span_offsets).enumerate() {
            let local = first + i as u64;
            for f in Fields::new(span).flatten() {
                let Ok(payload) = f.bytes() else { continue };
                // Where the payload starts inside the request.
                let at = base + offset + (payload.as_ptr() as usize - span.as_ptr() as usize);
                match (f.number, payload.len(), parent) {
                    (1, 16, _) => patches.push(Patch::Trace {
                        at,
                        local: local / spans_per_trace,
                    }),
                    (2, 8, _) => patches.push(Patch::Span { at, local }),
                    (4, 8, Some(p)) => patches.push(Patch::Span { at, local: *p }),
                    _ => {}
                }
            }
        }
        RequestTemplate { bytes, patches }
    }

    /// Spans in a cycle.
    pub fn spans_per_cycle(&self) -> u64 {
        self.spans_per_cycle
    }

    /// Requests in a cycle.
    pub fn requests_per_cycle(&self) -> u64 {
        self.requests.len() as u64
    }

    /// The workload's shape.
    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// Spans per request.
    pub fn spans_per_request(&self) -> u64 {
        self.spec.spans_per_request as u64
    }

    /// Average encoded size of a span message (its content, without the field header).
    pub fn encoded_bytes_per_span(&self) -> f64 {
        self.span_bytes_total as f64 / self.spans_per_cycle as f64
    }

    /// Average size of a request body.
    pub fn request_bytes(&self) -> f64 {
        self.requests
            .iter()
            .map(|r| r.bytes.len() as f64)
            .sum::<f64>()
            / self.requests.len() as f64
    }

    /// The trace index of the first span of request `k` (the trace it starts or continues).
    pub fn first_trace_of_request(&self, k: u64) -> u64 {
        k * self.spans_per_request() / self.spec.spans_per_trace as u64
    }

    /// The request carrying the first span of trace `t`.
    pub fn request_of_trace(&self, t: u64) -> u64 {
        t * self.spec.spans_per_trace as u64 / self.spans_per_request()
    }

    /// Whether trace `t` of the run has a span with status ERROR.
    pub fn is_error_trace(&self, t: u64) -> bool {
        unit(t % self.traces_per_cycle, ERROR_SALT) < self.spec.error_share
    }

    /// Writes request `k` of the run into `out` (cleared first).
    pub fn encode_request(&self, k: u64, out: &mut Vec<u8>) {
        let n = self.requests.len() as u64;
        let cycle = k / n;
        let t = &self.requests[(k % n) as usize];
        out.clear();
        out.extend_from_slice(&t.bytes);
        let trace_base = cycle * self.traces_per_cycle;
        let span_base = cycle * self.spans_per_cycle;
        for p in &t.patches {
            match *p {
                Patch::Trace { at, local } => {
                    out[at..at + 16].copy_from_slice(&trace_id(trace_base + local));
                }
                Patch::Span { at, local } => {
                    out[at..at + 8].copy_from_slice(&span_id(span_base + local));
                }
            }
        }
    }

    /// Request `k` of the run as a new buffer.
    pub fn request_bytes_of(&self, k: u64) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_request(k, &mut out);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn spec(spans_per_trace: usize, spans_per_request: usize) -> WorkloadSpec {
        WorkloadSpec {
            spans_per_trace,
            spans_per_request,
            attributes_per_span: 10,
            error_share: 0.05,
            producer_share: 0.1,
        }
    }

    #[test]
    fn ids_are_patched_with_global_indexes() {
        let w = Workload::new(spec(7, 100)).unwrap();
        assert_eq!(w.spans_per_cycle() % 700, 0);
        let k = w.requests_per_cycle() + 3; // second cycle
        let req = ExportTraceServiceRequest::decode(&w.request_bytes_of(k)[..]).unwrap();
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 100);
        let first = k * 100;
        for (i, s) in spans.iter().enumerate() {
            let global = first + i as u64;
            assert_eq!(span_index(&s.span_id[..].try_into().unwrap()), Some(global));
            let t = trace_index(&s.trace_id[..].try_into().unwrap()).unwrap();
            assert_eq!(t, global / 7);
            if global.is_multiple_of(7) {
                assert!(s.parent_span_id.is_empty());
            } else {
                let p = span_index(&s.parent_span_id[..].try_into().unwrap()).unwrap();
                assert_eq!(p / 7, t, "parent in the same trace");
                assert!(p < global);
            }
        }
        assert_eq!(w.request_of_trace(w.first_trace_of_request(k)), k - 1);
    }

    #[test]
    fn default_shape_is_about_366_bytes_per_span() {
        let w = Workload::new(spec(10, 100)).unwrap();
        let b = w.encoded_bytes_per_span();
        assert!((350.0..380.0).contains(&b), "{b} bytes per span");
        let req = ExportTraceServiceRequest::decode(&w.request_bytes_of(0)[..]).unwrap();
        let spans: Vec<_> = req.resource_spans[0].scope_spans[0].spans.iter().collect();
        assert!(spans.iter().all(|s| s.attributes.len() >= 10));
    }

    #[test]
    fn trace_ids_round_trip_and_reject_foreign_ids() {
        for t in [0u64, 1, 12345, u64::MAX / 3] {
            assert_eq!(trace_index(&trace_id(t)), Some(t));
        }
        assert_eq!(trace_index(&[7; 16]), None);
        assert_eq!(span_index(&span_id(41)), Some(41));
        assert_eq!(span_index(&[0; 8]), None);
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(Workload::new(spec(0, 100)).is_err());
        let mut s = spec(10, 100);
        s.error_share = 1.5;
        assert!(Workload::new(s).is_err());
    }
}
