//! End-to-end tests of completeness (DESIGN §7) through the real `tracekeeper` binary: the
//! incident it is built for, replayed over OTLP/gRPC. Checkout traces go through the checkout,
//! order, payment, inventory and notification services; the order service publishes
//! `order_confirmed` to RabbitMQ and the notification service consumes it, as a child of the
//! producer span or in its own trace with a span link. With a healthy consumer no trace is
//! incomplete; with the consumer dead every checkout trace is kept and tagged
//! `consumer:publish order_confirmed`, and the metrics show it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::{Link, SpanKind};
use tracekeeper::shard::shard_of;

const SCOPE: &str = "checkout-demo";
const PRODUCER_NAME: &str = "publish order_confirmed";
const MISSING_CONSUMER: &str = "consumer:publish order_confirmed";

/// A host keeping errors, incomplete traces and every other trace (baseline 100%, so that complete
/// traces come out too and their tags can be checked).
fn config(ports: &Ports, receiver: u16, decision_wait: &str, consumer_wait: &str) -> String {
    format!(
        r#"receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
      http: {{endpoint: "127.0.0.1:{http}"}}
processors:
  tail_sampling:
    decision_wait: {decision_wait}
    policies:
      - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}
      - {{name: incomplete, type: completeness, completeness: {{incomplete: true}}}}
      - {{name: baseline, type: probabilistic, probabilistic: {{sampling_percentage: 100}}}}
  completeness:
    consumer_wait: {consumer_wait}
exporters:
  otlp: {{endpoint: "127.0.0.1:{receiver}", tls: {{insecure: true}}}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
"#,
        grpc = ports.grpc,
        http = ports.http,
        health = ports.health,
        metrics = ports.metrics,
    )
}

fn start(decision_wait: &str, consumer_wait: &str) -> (Receiver, Host) {
    let receiver = Receiver::start();
    let ports = Ports::new();
    let yaml = config(&ports, receiver.port, decision_wait, consumer_wait);
    let host = Host::start_yaml(ports, &yaml);
    (receiver, host)
}

/// [`start`] with `workers` guest instances (`guest.workers`).
fn start_workers(decision_wait: &str, consumer_wait: &str, workers: u32) -> (Receiver, Host) {
    let receiver = Receiver::start();
    let ports = Ports::new();
    let mut yaml = config(&ports, receiver.port, decision_wait, consumer_wait);
    yaml.push_str(&format!("guest: {{workers: {workers}}}\n"));
    let host = Host::start_yaml(ports, &yaml);
    (receiver, host)
}

/// A span of `kind` with the RabbitMQ `order_confirmed` messaging attributes when `messaging`.
fn mspan(
    trace: &[u8; 16],
    id: &[u8; 8],
    parent: Option<&[u8; 8]>,
    name: &str,
    kind: SpanKind,
    messaging: bool,
) -> Span {
    let mut s = span(trace, id, parent.map(|p| p.as_slice()), name, false);
    s.kind = kind as i32;
    if messaging {
        s.attributes.push(kv("messaging.system", "rabbitmq"));
        s.attributes
            .push(kv("messaging.destination.name", "order_confirmed"));
    }
    s
}

/// The spans of one trace, grouped by service, and what was sent.
struct Built {
    by_service: Vec<(&'static str, Vec<Span>)>,
    sent: SentTrace,
}

impl Built {
    fn new(trace: [u8; 16]) -> Self {
        Built {
            by_service: Vec::new(),
            sent: SentTrace::new(trace),
        }
    }

    fn add(&mut self, service: &'static str, span: Span) {
        let id: [u8; 8] = span.span_id.clone().try_into().unwrap();
        self.sent.add(id, service, SCOPE);
        match self.by_service.iter_mut().find(|(s, _)| *s == service) {
            Some((_, spans)) => spans.push(span),
            None => self.by_service.push((service, vec![span])),
        }
    }

    /// One request with a `ResourceSpans` per service.
    fn request(&self) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: self
                .by_service
                .iter()
                .map(|(service, spans)| resource_spans(service, SCOPE, spans.clone()))
                .collect(),
        }
    }
}

/// A checkout trace, producer side: checkout → order (→ payment, inventory, publish).
/// Returns it and the producer span id.
fn checkout() -> (Built, [u8; 8]) {
    let t = new_trace_id();
    let (root, order, pay, inv, publish) = (
        new_span_id(),
        new_span_id(),
        new_span_id(),
        new_span_id(),
        new_span_id(),
    );
    let mut b = Built::new(t);
    b.add(
        "checkout",
        mspan(&t, &root, None, "POST /checkout", SpanKind::Server, false),
    );
    b.add(
        "order",
        mspan(
            &t,
            &order,
            Some(&root),
            "create order",
            SpanKind::Server,
            false,
        ),
    );
    b.add(
        "payment",
        mspan(
            &t,
            &pay,
            Some(&order),
            "charge card",
            SpanKind::Server,
            false,
        ),
    );
    b.add(
        "inventory",
        mspan(
            &t,
            &inv,
            Some(&order),
            "reserve stock",
            SpanKind::Server,
            false,
        ),
    );
    b.add(
        "order",
        mspan(
            &t,
            &publish,
            Some(&order),
            PRODUCER_NAME,
            SpanKind::Producer,
            true,
        ),
    );
    (b, publish)
}

/// The consumer as a child of the producer, in the producer's trace.
fn add_child_consumer(b: &mut Built, producer: &[u8; 8]) {
    let t = b.sent.trace_id;
    let (process, email) = (new_span_id(), new_span_id());
    b.add(
        "notification",
        mspan(
            &t,
            &process,
            Some(producer),
            "process order_confirmed",
            SpanKind::Consumer,
            true,
        ),
    );
    b.add(
        "notification",
        mspan(
            &t,
            &email,
            Some(&process),
            "send_email",
            SpanKind::Internal,
            false,
        ),
    );
}

/// The consumer in its own trace, linking to the producer span of `producer_trace`.
fn linked_consumer(producer_trace: &[u8; 16], producer: &[u8; 8]) -> Built {
    let t = new_trace_id();
    let (process, email) = (new_span_id(), new_span_id());
    let mut consumer = mspan(
        &t,
        &process,
        None,
        "process order_confirmed",
        SpanKind::Consumer,
        true,
    );
    consumer.links.push(Link {
        trace_id: producer_trace.to_vec(),
        span_id: producer.to_vec(),
        ..Default::default()
    });
    let mut b = Built::new(t);
    b.add("notification", consumer);
    b.add(
        "notification",
        mspan(
            &t,
            &email,
            Some(&process),
            "send_email",
            SpanKind::Internal,
            false,
        ),
    );
    b
}

fn send(rt: &tokio::runtime::Runtime, host: &Host, request: ExportTraceServiceRequest) {
    rt.block_on(grpc_export(host.ports.grpc, request))
        .unwrap_or_else(|e| panic!("export to the host failed: {e}\n{}", host.stderr()));
}

/// The boolean `tracekeeper.late` attribute of an exported span, if present.
fn late_tag(r: &Received) -> Option<bool> {
    match attr(&r.span.attributes, "tracekeeper.late")? {
        Value::BoolValue(b) => Some(*b),
        other => panic!("tracekeeper.late is not a boolean: {other:?}"),
    }
}

fn keys(traces: &[&SentTrace]) -> Vec<(Vec<u8>, Vec<u8>)> {
    traces.iter().flat_map(|t| t.keys()).collect()
}

const QUEUE: [(&str, &str); 2] = [
    ("messaging_system", "rabbitmq"),
    ("destination", "order_confirmed"),
];
const CHECKOUT_ROOT: [(&str, &str); 2] = [
    ("root_service", "checkout"),
    ("root_name", "POST /checkout"),
];

#[test]
fn incident_healthy_consumer_then_dead_consumer() {
    const N: usize = 6;
    let rt = runtime();
    let (receiver, mut host) = start("500ms", "2s");

    // Healthy, consumer as a child of the producer.
    let mut healthy: Vec<SentTrace> = Vec::new();
    for _ in 0..N {
        let (mut b, producer) = checkout();
        add_child_consumer(&mut b, &producer);
        send(&rt, &host, b.request());
        healthy.push(b.sent);
    }
    // Healthy, consumer in its own trace with a link; sometimes the consumer arrives first.
    for i in 0..N {
        let (b, producer) = checkout();
        let c = linked_consumer(&b.sent.trace_id, &producer);
        if i % 2 == 0 {
            send(&rt, &host, b.request());
            send(&rt, &host, c.request());
        } else {
            send(&rt, &host, c.request());
            send(&rt, &host, b.request());
        }
        healthy.push(b.sent);
        healthy.push(c.sent);
    }
    let got = receiver.wait_for(
        &keys(&healthy.iter().collect::<Vec<_>>()),
        "the healthy traces",
        &host,
    );
    for t in &healthy {
        assert_kept(&got, t, "baseline", "complete");
    }
    let produced = wait_metric(
        &host,
        "tracekeeper_messages_produced_total",
        &QUEUE,
        "every healthy message counted as produced",
        |v| v == (2 * N) as f64,
    );
    let consumed = wait_metric(
        &host,
        "tracekeeper_messages_consumed_total",
        &QUEUE,
        "every healthy message counted as consumed",
        |v| v == (2 * N) as f64,
    );
    assert_eq!(produced - consumed, 0.0);
    wait_metric(
        &host,
        "tracekeeper_trace_completeness_ratio",
        &CHECKOUT_ROOT,
        "a completeness ratio of 1 while the consumer is healthy",
        |v| v == 1.0,
    );

    // The notification service dies: producers keep publishing, nothing consumes.
    let mut dead: Vec<SentTrace> = Vec::new();
    for _ in 0..N {
        let (b, _) = checkout();
        send(&rt, &host, b.request());
        dead.push(b.sent);
    }
    let got = receiver.wait_for(
        &keys(&dead.iter().collect::<Vec<_>>()),
        "the checkout traces whose message nobody consumed",
        &host,
    );
    for t in &dead {
        for r in assert_kept(&got, t, "incomplete", "incomplete") {
            assert_eq!(
                r.attr_str_array("tracekeeper.completeness.missing"),
                Some(vec![MISSING_CONSUMER.to_owned()]),
                "span {} ({})",
                hex(&r.span.span_id),
                r.span.name
            );
        }
    }
    // 2N complete checkout traces, then N incomplete ones: the ratio falls to 2/3.
    let ratio = wait_metric(
        &host,
        "tracekeeper_trace_completeness_ratio",
        &CHECKOUT_ROOT,
        "the checkout completeness ratio at 2/3",
        |v| (v - 2.0 / 3.0).abs() < 1e-9,
    );
    assert!(ratio < 0.95, "ratio {ratio}");
    let produced = wait_metric(
        &host,
        "tracekeeper_messages_produced_total",
        &QUEUE,
        "the dead-consumer messages counted as produced",
        |v| v == (3 * N) as f64,
    );
    let consumed = metric_sum(
        &scrape(&host),
        "tracekeeper_messages_consumed_total",
        &QUEUE,
    );
    assert_eq!(produced - consumed, N as f64, "produced − consumed grows");
    let samples = scrape(&host);
    let by = |completeness: &str| {
        let mut labels = CHECKOUT_ROOT.to_vec();
        labels.push(("completeness", completeness));
        metric_sum(&samples, "tracekeeper_traces_total", &labels)
    };
    assert_eq!(by("complete"), (2 * N) as f64);
    assert_eq!(by("incomplete"), N as f64);
    // The consumer traces are their own root type, complete.
    assert_eq!(
        metric_sum(
            &samples,
            "tracekeeper_traces_total",
            &[
                ("root_name", "process order_confirmed"),
                ("completeness", "complete")
            ]
        ),
        N as f64
    );
    let age = metric_sum(
        &samples,
        "tracekeeper_oldest_unconsumed_message_age_seconds",
        &QUEUE,
    );
    assert!(age > 0.0, "oldest unconsumed message age {age}");
    host.terminate_cleanly();
}

#[test]
fn a_consumer_two_seconds_after_its_producer_completes_the_trace() {
    let rt = runtime();
    let (receiver, mut host) = start("500ms", "10s");
    // Consumer as a child, in a later request 2 s after the producer.
    let (child, producer) = checkout();
    send(&rt, &host, child.request());
    // Consumer in its own trace with a link, 2 s after its producer.
    let (linked, linked_producer) = checkout();
    send(&rt, &host, linked.request());
    std::thread::sleep(Duration::from_secs(2));
    let mut rest = Built::new(child.sent.trace_id);
    add_child_consumer(&mut rest, &producer);
    send(&rt, &host, rest.request());
    let mut whole = child.sent.clone();
    whole.spans.extend(rest.sent.spans.iter().cloned());
    let consumer = linked_consumer(&linked.sent.trace_id, &linked_producer);
    send(&rt, &host, consumer.request());
    let got = receiver.wait_for(
        &keys(&[&whole, &linked.sent, &consumer.sent]),
        "the traces completed by a consumer 2 s later",
        &host,
    );
    assert_kept(&got, &whole, "baseline", "complete");
    assert_kept(&got, &linked.sent, "baseline", "complete");
    assert_kept(&got, &consumer.sent, "baseline", "complete");
    for r in &got {
        assert_eq!(late_tag(r), None, "{}", r.span.name);
    }
    host.terminate_cleanly();
}

#[test]
fn a_consumer_after_the_decision_is_late() {
    let rt = runtime();
    let (receiver, mut host) = start("500ms", "500ms");
    let (b, producer) = checkout();
    send(&rt, &host, b.request());
    let (linked, linked_producer) = checkout();
    send(&rt, &host, linked.request());
    let got = receiver.wait_for(
        &keys(&[&b.sent, &linked.sent]),
        "the traces whose consumer is late",
        &host,
    );
    assert_kept(&got, &b.sent, "incomplete", "incomplete");
    assert_kept(&got, &linked.sent, "incomplete", "incomplete");

    // The consumer (a child of the producer) arrives after its trace was decided and kept.
    let mut late = Built::new(b.sent.trace_id);
    add_child_consumer(&mut late, &producer);
    send(&rt, &host, late.request());
    let got = receiver.wait_for(&late.sent.keys(), "the late consumer spans", &host);
    for sent in &late.sent.spans {
        let r = got.iter().find(|r| r.span.span_id == sent.span_id).unwrap();
        assert_eq!(late_tag(r), Some(true), "{}", r.span.name);
        assert_eq!(
            r.attr_str("tracekeeper.policy").as_deref(),
            Some("incomplete")
        );
    }

    // The late child still counts: its message is consumed, late.
    wait_metric(
        &host,
        "tracekeeper_late_completions_total",
        &QUEUE,
        "the late child consumer counted as a late completion",
        |v| v == 1.0,
    );

    // A consumer in another trace linking to the producer of the decided trace: a late
    // completion, and the message counts as consumed.
    let consumer = linked_consumer(&linked.sent.trace_id, &linked_producer);
    send(&rt, &host, consumer.request());
    receiver.wait_for(&consumer.sent.keys(), "the linked late consumer", &host);
    wait_metric(
        &host,
        "tracekeeper_late_completions_total",
        &QUEUE,
        "two late completions",
        |v| v == 2.0,
    );
    let samples = scrape(&host);
    assert_eq!(
        metric_sum(&samples, "tracekeeper_messages_consumed_total", &QUEUE),
        2.0
    );
    assert_eq!(
        metric_sum(&samples, "tracekeeper_messages_produced_total", &QUEUE),
        2.0
    );
    // Nothing is left unconsumed: no stuck-queue alarm for a consumer that was only slow.
    assert_eq!(
        metric_sum(
            &samples,
            "tracekeeper_oldest_unconsumed_message_age_seconds",
            &QUEUE
        ),
        0.0
    );
    host.terminate_cleanly();
}

#[test]
fn children_before_parents_across_batches_never_look_orphaned() {
    let rt = runtime();
    let (receiver, mut host) = start("2s", "1s");
    let (mut b, producer) = checkout();
    add_child_consumer(&mut b, &producer);
    // Every span in its own request, leaves first, the root last.
    let mut spans: Vec<(&'static str, Span)> = b
        .by_service
        .iter()
        .flat_map(|(service, spans)| spans.iter().map(move |s| (*service, s.clone())))
        .collect();
    spans.reverse();
    for (service, span) in spans {
        send(&rt, &host, request(service, SCOPE, vec![span]));
    }
    let got = receiver.wait_for(&b.sent.keys(), "the trace sent leaves first", &host);
    assert_kept(&got, &b.sent, "baseline", "complete");
    host.terminate_cleanly();
}

#[test]
fn linked_consumers_on_other_workers_complete_their_producers() {
    const WORKERS: u32 = 4;
    const PAIRS: usize = 12;
    const DEAD: usize = 4;
    let rt = runtime();
    let (receiver, mut host) = start_workers("500ms", "5s", WORKERS);
    let worker = |t: &[u8; 16]| shard_of(&tracekeeper_abi::TraceId(*t), WORKERS);
    let mut healthy: Vec<SentTrace> = Vec::new();
    let mut crossed = std::collections::HashSet::new();
    for i in 0..PAIRS {
        let (b, producer) = checkout();
        // A consumer trace that another worker owns than the producer's trace.
        let c = loop {
            let c = linked_consumer(&b.sent.trace_id, &producer);
            if worker(&c.sent.trace_id) != worker(&b.sent.trace_id) {
                break c;
            }
        };
        crossed.insert((worker(&b.sent.trace_id), worker(&c.sent.trace_id)));
        // Half the consumers come first, some in the same request as their producer.
        match i % 3 {
            0 => {
                send(&rt, &host, b.request());
                send(&rt, &host, c.request());
            }
            1 => {
                send(&rt, &host, c.request());
                send(&rt, &host, b.request());
            }
            _ => {
                let mut both = c.request();
                both.resource_spans.extend(b.request().resource_spans);
                send(&rt, &host, both);
            }
        }
        healthy.push(b.sent);
        healthy.push(c.sent);
    }
    assert!(
        crossed.len() > 1,
        "pairs crossed between several workers: {crossed:?}"
    );
    let mut dead: Vec<SentTrace> = Vec::new();
    for _ in 0..DEAD {
        let (b, _) = checkout();
        send(&rt, &host, b.request());
        dead.push(b.sent);
    }
    let got = receiver.wait_for(
        &keys(&healthy.iter().chain(&dead).collect::<Vec<_>>()),
        "every trace, decided by its own worker",
        &host,
    );
    // No producer waited out consumer_wait for a consumer another worker had seen.
    for t in &healthy {
        assert_kept(&got, t, "baseline", "complete");
    }
    for t in &dead {
        for r in assert_kept(&got, t, "incomplete", "incomplete") {
            assert_eq!(
                r.attr_str_array("tracekeeper.completeness.missing"),
                Some(vec![MISSING_CONSUMER.to_owned()]),
            );
        }
    }
    // The metrics add up over the workers.
    wait_metric(
        &host,
        "tracekeeper_messages_produced_total",
        &QUEUE,
        "every message counted once as produced",
        |v| v == (PAIRS + DEAD) as f64,
    );
    wait_metric(
        &host,
        "tracekeeper_messages_consumed_total",
        &QUEUE,
        "every linked message counted once as consumed",
        |v| v == PAIRS as f64,
    );
    let want = PAIRS as f64 / (PAIRS + DEAD) as f64;
    wait_metric(
        &host,
        "tracekeeper_trace_completeness_ratio",
        &CHECKOUT_ROOT,
        "the checkout ratio over every worker's window",
        |v| (v - want).abs() < 1e-9,
    );
    host.terminate_cleanly();
}
