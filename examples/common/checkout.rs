//! The five-service checkout flow of the stuck-queue story, shared by the trace generator and
//! the incident demo: `checkout` → `order` → `payment` and `inventory`; `order` publishes
//! `order_confirmed` to RabbitMQ; `notification` consumes it and sends the email.
//!
//! [`checkout_trace`] builds one trace's spans (OTLP protobuf structs) with the faults asked
//! for; [`request`] groups spans under one resource per service, as an SDK would export them;
//! [`SplitMix`] makes the ids.

// Each example that includes this file uses a different part of it.
#![allow(dead_code)]

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

/// Nanoseconds per millisecond.
pub const MS: u64 = 1_000_000;
/// Nanoseconds per second.
pub const SECOND: u64 = 1_000 * MS;

/// The root span: service and name.
pub const ROOT: (&str, &str) = ("checkout", "POST /checkout");
/// The producer span's name (OpenTelemetry messaging convention: `{operation} {destination}`).
pub const PUBLISH: &str = "publish order_confirmed";
/// The consumer span's name.
pub const PROCESS: &str = "process order_confirmed";
/// The messaging system and destination of the queue.
pub const QUEUE: (&str, &str) = ("rabbitmq", "order_confirmed");
/// How long after the publish the notification service consumes the message.
pub const QUEUE_DELAY: u64 = 400 * MS;
/// The instrumentation scope of every span.
const SCOPE: &str = "tracekeeper-examples";

/// What goes wrong in one checkout.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The payment fails: `charge card` and the root end with status ERROR.
    pub error: bool,
    /// The checkout service never exports its root span.
    pub lost_root: bool,
    /// The inventory service never exports `reserve stock` (its child `SELECT stock` is
    /// exported, so its parent is missing).
    pub lost_inventory: bool,
    /// The notification service is not consuming: no `process order_confirmed`, no email.
    pub consumer_stopped: bool,
    /// The message waits this much longer in the queue before it is consumed.
    pub slow_consumer: Option<u64>,
    /// An `audit log` span that ends this long after the checkout started (a slow asynchronous
    /// write), so it arrives after the trace was decided.
    pub late_audit: Option<u64>,
}

/// One span and the service that emits it.
#[derive(Debug, Clone)]
pub struct ServiceSpan {
    /// `service.name` of the emitting service.
    pub service: &'static str,
    /// The span.
    pub span: Span,
}

/// splitmix64: a small pseudo-random sequence, fixed for a given seed (recorded fixtures must
/// not change when a dependency does).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// True with probability `p` percent.
    pub fn percent(&mut self, p: u64) -> bool {
        self.next_u64() % 100 < p
    }
    /// A new non-zero trace id.
    pub fn trace_id(&mut self) -> [u8; 16] {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&(self.next_u64() | 1).to_be_bytes());
        id
    }
    /// A new non-zero span id.
    pub fn span_id(&mut self) -> [u8; 8] {
        (self.next_u64() | 1).to_be_bytes()
    }
}

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn messaging(operation: &str) -> Vec<KeyValue> {
    vec![
        attr("messaging.system", QUEUE.0),
        attr("messaging.destination.name", QUEUE.1),
        attr("messaging.operation.type", operation),
    ]
}

/// Builds the spans of one checkout that starts at `t0` (Unix ns), minus the lost ones.
pub fn checkout_trace(
    trace_id: [u8; 16],
    ids: &mut SplitMix,
    t0: u64,
    faults: &Faults,
) -> Vec<ServiceSpan> {
    let mut out = Vec::new();
    // (service, name, kind, parent, start ms, end ms, error, attributes) → span id.
    let mut add = |service: &'static str,
                   name: &str,
                   kind: SpanKind,
                   parent: Option<[u8; 8]>,
                   (start, end): (u64, u64),
                   error: bool,
                   attributes: Vec<KeyValue>|
     -> [u8; 8] {
        let span_id = ids.span_id();
        let status = error.then(|| Status {
            message: "card declined".to_string(),
            code: StatusCode::Error as i32,
        });
        out.push(ServiceSpan {
            service,
            span: Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                name: name.to_string(),
                kind: kind as i32,
                start_time_unix_nano: t0 + start,
                end_time_unix_nano: t0 + end,
                attributes,
                status,
                ..Default::default()
            },
        });
        span_id
    };
    let root = add(
        ROOT.0,
        ROOT.1,
        SpanKind::Server,
        None,
        (0, 600 * MS),
        faults.error,
        vec![attr("http.route", "/checkout")],
    );
    let order = add(
        "order",
        "POST /orders",
        SpanKind::Server,
        Some(root),
        (20 * MS, 500 * MS),
        false,
        vec![],
    );
    add(
        "payment",
        "charge card",
        SpanKind::Server,
        Some(order),
        (40 * MS, 240 * MS),
        faults.error,
        vec![],
    );
    let reserve = add(
        "inventory",
        "reserve stock",
        SpanKind::Server,
        Some(order),
        (250 * MS, 400 * MS),
        false,
        vec![],
    );
    add(
        "inventory",
        "SELECT stock",
        SpanKind::Client,
        Some(reserve),
        (260 * MS, 390 * MS),
        false,
        vec![attr("db.system.name", "postgresql")],
    );
    let publish = add(
        "order",
        PUBLISH,
        SpanKind::Producer,
        Some(order),
        (410 * MS, 420 * MS),
        false,
        messaging("publish"),
    );
    if !faults.consumer_stopped {
        let consumed = 420 * MS + QUEUE_DELAY + faults.slow_consumer.unwrap_or(0);
        let process = add(
            "notification",
            PROCESS,
            SpanKind::Consumer,
            Some(publish),
            (consumed, consumed + 150 * MS),
            false,
            messaging("process"),
        );
        add(
            "notification",
            "send_email",
            SpanKind::Client,
            Some(process),
            (consumed + 10 * MS, consumed + 140 * MS),
            false,
            vec![],
        );
    }
    if let Some(delay) = faults.late_audit {
        add(
            ROOT.0,
            "audit log",
            SpanKind::Internal,
            Some(root),
            (590 * MS, delay),
            false,
            vec![],
        );
    }
    let lost = |s: &ServiceSpan| {
        (faults.lost_root && s.span.parent_span_id.is_empty())
            || (faults.lost_inventory && s.span.name == "reserve stock")
    };
    out.retain(|s| !lost(s));
    out
}

/// One OTLP request with `spans`, one `ResourceSpans` per service (in order of appearance).
pub fn request(spans: &[ServiceSpan]) -> ExportTraceServiceRequest {
    let mut resource_spans: Vec<ResourceSpans> = Vec::new();
    for s in spans {
        let service = s.service;
        let service_attr = attr("service.name", service);
        let at = resource_spans.iter().position(|rs| {
            rs.resource
                .as_ref()
                .is_some_and(|r| r.attributes.contains(&service_attr))
        });
        let rs = match at {
            Some(i) => &mut resource_spans[i],
            None => {
                resource_spans.push(ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![service_attr],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: SCOPE.to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                let last = resource_spans.len() - 1;
                &mut resource_spans[last]
            }
        };
        rs.scope_spans[0].spans.push(s.span.clone());
    }
    ExportTraceServiceRequest { resource_spans }
}
