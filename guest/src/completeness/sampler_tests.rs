//! The completeness rules through the sampler's calls: batches built as the host builds them
//! (indexed keys from the interest the sampler returned), decisions and metrics sections read
//! back with the host-side readers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tracekeeper_abi::{
    BatchWriter, Completeness, Decision, DecisionReader, SpanFixed, SpanId, TraceId,
};

use super::messaging::{KIND_CLIENT, KIND_CONSUMER, KIND_PRODUCER};
use super::*;
use crate::{Interest, Sampler};

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SEC;
const KIND_SERVER: u8 = 2;
const KIND_INTERNAL: u8 = 1;

/// One span to put in a batch.
#[derive(Clone, Debug)]
struct Sp {
    service: &'static str,
    trace: TraceId,
    id: SpanId,
    parent: SpanId,
    name: String,
    kind: u8,
    attrs: Vec<(&'static str, &'static str)>,
    links: Vec<(TraceId, SpanId)>,
}

fn sp(service: &'static str, trace: TraceId, id: u64, parent: u64, name: &str, kind: u8) -> Sp {
    Sp {
        service,
        trace,
        id: SpanId(id.to_be_bytes()),
        parent: SpanId(parent.to_be_bytes()),
        name: name.to_owned(),
        kind,
        attrs: Vec::new(),
        links: Vec::new(),
    }
}

impl Sp {
    fn attr(mut self, k: &'static str, v: &'static str) -> Sp {
        self.attrs.push((k, v));
        self
    }
    fn link(mut self, trace: TraceId, span: u64) -> Sp {
        self.links.push((trace, SpanId(span.to_be_bytes())));
        self
    }
    fn rabbit(self) -> Sp {
        self.attr(messaging::SYSTEM, "rabbitmq")
            .attr(messaging::DESTINATION, "order_confirmed")
    }
}

fn tid(n: u64) -> TraceId {
    let mut b = [0x5a; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    TraceId(b)
}

/// A batch as the host writes it: one resource record per service, keys indexed by `interest`.
fn batch(interest: &Interest, spans: &[Sp]) -> Vec<u8> {
    let mut w = BatchWriter::new();
    let mut resources: Vec<(&str, u32)> = Vec::new();
    for s in spans {
        let res = match resources.iter().find(|(svc, _)| *svc == s.service) {
            Some(&(_, r)) => r,
            None => {
                let (r, mut attrs) = w.begin_resource();
                let key = interest
                    .resource_attributes
                    .iter()
                    .position(|k| k == "service.name")
                    .unwrap();
                w.attr_indexed(&mut attrs, key as u16)
                    .str(s.service.as_bytes());
                w.end_section(attrs);
                resources.push((s.service, r));
                r
            }
        };
        let fixed = SpanFixed {
            trace_id: s.trace,
            span_id: s.id,
            parent_span_id: s.parent,
            start_unix_nano: 1,
            end_unix_nano: 2,
            encoded_len: 200,
            resource: res,
            kind: s.kind,
            status_code: 0,
            flags: 1,
        };
        w.begin_span(&fixed, s.name.as_bytes(), b"");
        let mut attrs = w.begin_section();
        for (k, v) in &s.attrs {
            match interest.span_attributes.iter().position(|x| x == k) {
                Some(i) => w.attr_indexed(&mut attrs, i as u16).str(v.as_bytes()),
                None => w.attr_inline(&mut attrs, k.as_bytes()).str(v.as_bytes()),
            }
        }
        w.end_section(attrs);
        let mut links = w.begin_section();
        for (t, l) in &s.links {
            w.link(&mut links, t, l);
        }
        w.end_section(links);
        let events = w.begin_section();
        w.end_section(events);
    }
    w.finish()
}

#[derive(Debug, Clone, PartialEq)]
struct D {
    trace_id: TraceId,
    decision: Decision,
    completeness: Completeness,
    policy: String,
    missing: Vec<String>,
}

/// A queue record: (system, destination, produced, consumed, late, oldest unconsumed).
type Q = (String, String, u64, u64, u64, u64);
/// A root record: (service, name, complete, incomplete, window complete, window incomplete).
type R = (String, String, u64, u64, u64, u64);

#[derive(Debug, Default)]
struct Answer {
    next_due: u64,
    decisions: Vec<D>,
    metrics: Option<(Vec<Q>, Vec<R>)>,
}

fn read(buf: &[u8]) -> Answer {
    let r = DecisionReader::new(buf).unwrap();
    let next_due = r.next_due();
    let decisions = r
        .clone()
        .map(|d| {
            let d = d.unwrap();
            D {
                trace_id: d.trace_id,
                decision: d.decision,
                completeness: d.completeness,
                policy: d.policy.to_owned(),
                missing: d.missing().map(str::to_owned).collect(),
            }
        })
        .collect();
    let metrics = r.into_metrics().unwrap().map(|m| {
        let q = m
            .queues()
            .map(|q| {
                (
                    q.system.to_owned(),
                    q.destination.to_owned(),
                    q.produced,
                    q.consumed,
                    q.consumed_late,
                    q.oldest_unconsumed,
                )
            })
            .collect();
        let r = m
            .roots()
            .map(|r| {
                (
                    r.service.to_owned(),
                    r.name.to_owned(),
                    r.complete,
                    r.incomplete,
                    r.window_complete,
                    r.window_incomplete,
                )
            })
            .collect();
        (q, r)
    });
    Answer {
        next_due,
        decisions,
        metrics,
    }
}

/// Errors, incomplete and a 0% baseline; decision_wait 1s, consumer_wait as given, plus an
/// optional `expectations` JSON list.
fn config(consumer_wait: &str, expectations: &str) -> String {
    format!(
        r#"{{"tail_sampling": {{"decision_wait": "1s", "policies": [
            {{"name": "errors", "type": "status_code", "status_code": {{"status_codes": ["ERROR"]}}}},
            {{"name": "incomplete", "type": "completeness", "completeness": {{"incomplete": true}}}},
            {{"name": "baseline", "type": "probabilistic",
              "probabilistic": {{"sampling_percentage": 0}}}}]}},
          "completeness": {{"consumer_wait": "{consumer_wait}", "expectations": {expectations}}}}}"#
    )
}

struct Run {
    s: Sampler,
    interest: Interest,
    decided: Vec<D>,
    metrics: Vec<(Vec<Q>, Vec<R>)>,
}

impl Run {
    fn new(consumer_wait: &str, expectations: &str) -> Run {
        let (s, interest) = Sampler::configure(&config(consumer_wait, expectations)).unwrap();
        Run {
            s,
            interest,
            decided: Vec::new(),
            metrics: Vec::new(),
        }
    }
    fn keep(&mut self, a: Answer) -> Answer {
        self.decided.extend(a.decisions.iter().cloned());
        if let Some(m) = &a.metrics {
            self.metrics.push(m.clone());
        }
        a
    }
    fn ingest(&mut self, spans: &[Sp], now: u64) -> Answer {
        let b = batch(&self.interest, spans);
        let a = read(&self.s.ingest(&b, now).unwrap());
        self.keep(a)
    }
    fn tick(&mut self, now: u64) -> Answer {
        let a = read(&self.s.tick(now));
        self.keep(a)
    }
    fn flush(&mut self, now: u64) -> Answer {
        let a = read(&self.s.flush(now));
        self.keep(a)
    }
    fn decision(&self, t: TraceId) -> &D {
        self.decided
            .iter()
            .find(|d| d.trace_id == t)
            .unwrap_or_else(|| panic!("trace {t} not decided; decided: {:?}", self.decided))
    }
    /// Sums of the queue counters over every metrics section so far.
    fn queue_totals(&self, destination: &str) -> (u64, u64, u64) {
        self.metrics
            .iter()
            .flat_map(|(q, _)| q.iter())
            .filter(|q| q.1 == destination)
            .fold((0, 0, 0), |a, q| (a.0 + q.2, a.1 + q.3, a.2 + q.4))
    }
    /// The last queue record of `destination`.
    fn last_queue(&self, destination: &str) -> Q {
        self.metrics
            .iter()
            .rev()
            .find_map(|(q, _)| q.iter().find(|q| q.1 == destination).cloned())
            .unwrap()
    }
}

/// The checkout trace of the incident, producer side: checkout → order → publish.
fn checkout(t: TraceId) -> Vec<Sp> {
    vec![
        sp("checkout", t, 1, 0, "POST /checkout", KIND_SERVER),
        sp("order", t, 2, 1, "create order", KIND_SERVER),
        sp("payment", t, 3, 2, "charge card", KIND_SERVER),
        sp("inventory", t, 4, 2, "reserve stock", KIND_SERVER),
        sp("order", t, 5, 2, "publish order_confirmed", KIND_PRODUCER).rabbit(),
    ]
}

/// The consumer as a child of the producer, in the same trace.
fn child_consumer(t: TraceId) -> Vec<Sp> {
    vec![
        sp(
            "notification",
            t,
            6,
            5,
            "process order_confirmed",
            KIND_CONSUMER,
        )
        .rabbit(),
        sp("notification", t, 7, 6, "send_email", KIND_INTERNAL),
    ]
}

/// The consumer in its own trace `c`, linking to producer span 5 of trace `t`.
fn linked_consumer(c: TraceId, t: TraceId) -> Vec<Sp> {
    vec![
        sp(
            "notification",
            c,
            1,
            0,
            "process order_confirmed",
            KIND_CONSUMER,
        )
        .rabbit()
        .link(t, 5),
        sp("notification", c, 2, 1, "send_email", KIND_INTERNAL),
    ]
}

#[test]
fn a_child_consumer_completes_the_trace_without_holding_it() {
    let mut r = Run::new("10s", "[]");
    let t = tid(1);
    let mut spans = checkout(t);
    spans.extend(child_consumer(t));
    r.ingest(&spans, T0);
    // Due at decision_wait: not held, since the producer is consumed.
    let a = r.tick(T0 + SEC);
    assert_eq!(a.decisions.len(), 1);
    let d = r.decision(t);
    assert_eq!(d.completeness, Completeness::Complete, "{d:?}");
    assert_eq!(d.decision, Decision::NotSampled);
    assert_eq!(r.queue_totals("order_confirmed"), (1, 1, 0));
    assert_eq!(r.last_queue("order_confirmed").5, 0, "nothing unconsumed");
}

#[test]
fn a_consumer_before_its_producer_across_batches_completes_the_trace() {
    let mut r = Run::new("10s", "[]");
    let t = tid(1);
    // Children first (the consumer, then send_email), then the producer side.
    r.ingest(&child_consumer(t), T0);
    r.ingest(&checkout(t), T0 + SEC / 2);
    r.tick(T0 + SEC);
    assert_eq!(r.decision(t).completeness, Completeness::Complete);
    // A linked consumer seen before its producer, in another trace.
    let (c, p) = (tid(2), tid(3));
    r.ingest(&linked_consumer(c, p), T0 + 2 * SEC);
    r.ingest(&checkout(p), T0 + 2 * SEC);
    r.tick(T0 + 3 * SEC);
    assert_eq!(r.decision(p).completeness, Completeness::Complete);
    assert_eq!(r.decision(c).completeness, Completeness::Complete);
    r.flush(T0 + 4 * SEC);
    assert_eq!(r.queue_totals("order_confirmed"), (2, 2, 0));
}

#[test]
fn a_consumer_two_seconds_later_completes_a_held_trace_at_once() {
    let mut r = Run::new("10s", "[]");
    let (t, c) = (tid(1), tid(2));
    let a = r.ingest(&checkout(t), T0);
    assert_eq!(a.next_due, T0 + SEC);
    // Normal due time: the producer is open, so the trace is held for consumer_wait.
    let a = r.tick(T0 + SEC);
    assert!(a.decisions.is_empty());
    assert_eq!(a.next_due, T0 + 11 * SEC);
    // The consumer arrives 2 s after the producer, in another trace: the held trace is decided
    // in the same answer, complete.
    let a = r.ingest(&linked_consumer(c, t), T0 + 2 * SEC);
    assert_eq!(
        a.decisions.iter().map(|d| d.trace_id).collect::<Vec<_>>(),
        [t]
    );
    assert_eq!(r.decision(t).completeness, Completeness::Complete);
    assert!(r.decision(t).missing.is_empty());
    r.tick(T0 + 3 * SEC);
    assert_eq!(r.decision(c).completeness, Completeness::Complete);
}

#[test]
fn an_unconsumed_producer_waits_consumer_wait_then_is_kept_incomplete() {
    let mut r = Run::new("10s", "[]");
    let (t, other) = (tid(1), tid(2));
    r.ingest(&checkout(t), T0);
    r.ingest(&[sp("checkout", other, 1, 0, "GET /cart", KIND_SERVER)], T0);
    // The trace without a producer is not held.
    let a = r.tick(T0 + SEC);
    assert_eq!(
        a.decisions.iter().map(|d| d.trace_id).collect::<Vec<_>>(),
        [other]
    );
    assert!(r.tick(T0 + 11 * SEC - 1).decisions.is_empty());
    let a = r.tick(T0 + 11 * SEC);
    assert_eq!(a.decisions.len(), 1);
    let d = r.decision(t);
    assert_eq!(d.decision, Decision::Sampled);
    assert_eq!(d.policy, "incomplete");
    assert_eq!(d.completeness, Completeness::Incomplete);
    assert_eq!(d.missing, ["consumer:publish order_confirmed"]);
    r.flush(T0 + 12 * SEC);
    let q = r.last_queue("order_confirmed");
    assert_eq!(r.queue_totals("order_confirmed"), (1, 0, 0));
    assert_eq!(q.5, T0, "the unconsumed message was produced at T0");
}

#[test]
fn consumer_wait_zero_decides_at_decision_wait() {
    let mut r = Run::new("0s", "[]");
    let t = tid(1);
    r.ingest(&checkout(t), T0);
    let a = r.tick(T0 + SEC);
    assert_eq!(a.decisions.len(), 1);
    assert_eq!(r.decision(t).missing, ["consumer:publish order_confirmed"]);
}

#[test]
fn a_root_arriving_late_does_not_cut_the_wait_for_a_consumer() {
    let cfg = r#"{"tail_sampling": {"decision_wait": "1s",
        "decision_wait_after_root_received": "500ms",
        "policies": [{"name": "incomplete", "type": "completeness"}]},
        "completeness": {"consumer_wait": "10s"}}"#;
    let (s, interest) = Sampler::configure(cfg).unwrap();
    let mut r = Run {
        s,
        interest,
        decided: Vec::new(),
        metrics: Vec::new(),
    };
    let (t, c) = (tid(1), tid(2));
    let mut spans = checkout(t);
    let root = spans.remove(0);
    r.ingest(&spans, T0);
    // Held at its normal due time for the consumer.
    assert_eq!(r.tick(T0 + SEC).next_due, T0 + 11 * SEC);
    // The root arrives: the trace keeps waiting for its consumer.
    let a = r.ingest(&[root], T0 + 2 * SEC);
    assert_eq!(a.next_due, T0 + 11 * SEC);
    assert!(r.tick(T0 + 3 * SEC).decisions.is_empty());
    r.ingest(&linked_consumer(c, t), T0 + 4 * SEC);
    assert_eq!(r.decision(t).completeness, Completeness::Complete);
}

#[test]
fn fan_out_and_batch_receive() {
    let mut r = Run::new("10s", "[]");
    // Fan-out: two consumer groups consume one message; it is counted consumed once.
    let (p, g1, g2) = (tid(1), tid(2), tid(3));
    r.ingest(&checkout(p), T0);
    r.ingest(&linked_consumer(g1, p), T0);
    r.ingest(&linked_consumer(g2, p), T0);
    // Batch receive: one consumer span links the messages of three traces.
    let (b1, b2, b3, rx) = (tid(11), tid(12), tid(13), tid(14));
    for b in [b1, b2, b3] {
        r.ingest(&checkout(b), T0);
    }
    let receive = sp(
        "notification",
        rx,
        1,
        0,
        "receive order_confirmed",
        KIND_CLIENT,
    )
    .attr(messaging::OPERATION_TYPE, "receive")
    .link(b1, 5)
    .link(b2, 5)
    .link(b3, 5);
    r.ingest(&[receive], T0 + SEC / 2);
    r.tick(T0 + 2 * SEC);
    for t in [p, g1, g2, b1, b2, b3, rx] {
        assert_eq!(r.decision(t).completeness, Completeness::Complete, "{t}");
    }
    r.flush(T0 + 2 * SEC);
    assert_eq!(r.queue_totals("order_confirmed"), (4, 4, 0));
}

#[test]
fn producers_by_operation_type_and_the_batch_send_exception() {
    let mut r = Run::new("2s", "[]");
    let t = tid(1);
    r.ingest(
        &[
            sp("api", t, 1, 0, "POST /orders", KIND_SERVER),
            // An INTERNAL span that publishes: a producer by its operation type.
            sp("api", t, 2, 1, "orders publish", KIND_INTERNAL)
                .attr(messaging::OPERATION_TYPE, "publish")
                .attr(messaging::SYSTEM, "kafka")
                .attr(messaging::DESTINATION, "orders"),
            // A CLIENT batch send: not a producer (its messages are create spans).
            sp("api", t, 3, 1, "send orders", KIND_CLIENT)
                .attr(messaging::OPERATION_TYPE, "send")
                .attr(messaging::SYSTEM, "kafka")
                .attr(messaging::DESTINATION, "orders"),
        ],
        T0,
    );
    r.tick(T0 + 3 * SEC);
    assert_eq!(r.decision(t).missing, ["consumer:orders publish"]);
    assert_eq!(r.queue_totals("orders"), (1, 0, 0));
    assert_eq!(r.last_queue("orders").0, "kafka");
}

#[test]
fn a_late_consumer_is_a_late_completion() {
    let mut r = Run::new("1s", "[]");
    let (t, c) = (tid(1), tid(2));
    r.ingest(&checkout(t), T0);
    r.tick(T0 + 2 * SEC);
    assert_eq!(r.decision(t).completeness, Completeness::Incomplete);
    // The consumer arrives after the producer's trace was decided.
    r.ingest(&linked_consumer(c, t), T0 + 5 * SEC);
    r.flush(T0 + 6 * SEC);
    assert_eq!(r.decision(c).completeness, Completeness::Complete);
    assert_eq!(r.queue_totals("order_confirmed"), (1, 1, 1));
    assert_eq!(r.last_queue("order_confirmed").5, 0);
}

#[test]
fn expectations_report_missing_descendants() {
    let expectations = r#"[{"root": {"service": "checkout", "name": "POST /checkout"},
        "expect": [{"name": "send_email"},
                   {"name": "process order_confirmed", "kind": "CONSUMER"},
                   {"name": "charge card", "service": "payment", "min_count": 2}]}]"#;
    let mut r = Run::new("10s", expectations);
    let (full, partial, other) = (tid(1), tid(2), tid(3));
    let mut spans = checkout(full);
    spans.extend(child_consumer(full));
    spans.push(sp("payment", full, 8, 2, "charge card", KIND_SERVER));
    r.ingest(&spans, T0);
    let mut spans = checkout(partial);
    spans.extend(child_consumer(partial));
    spans.retain(|s| s.name != "send_email");
    r.ingest(&spans, T0);
    r.ingest(&[sp("checkout", other, 1, 0, "GET /cart", KIND_SERVER)], T0);
    r.tick(T0 + SEC);
    assert_eq!(r.decision(full).completeness, Completeness::Complete);
    assert_eq!(
        r.decision(partial).missing,
        ["expected:send_email", "expected:charge card"]
    );
    assert_eq!(r.decision(other).completeness, Completeness::Complete);
}

#[test]
fn missing_entries_keep_their_order() {
    let expectations =
        r#"[{"root": {"name_regex": "^POST /check"}, "expect": [{"name": "audit"}]}]"#;
    let mut r = Run::new("0s", expectations);
    let t = tid(1);
    let mut spans = checkout(t);
    spans.push(sp("order", t, 9, 0xdead, "orphan", KIND_INTERNAL));
    r.ingest(&spans, T0);
    r.tick(T0 + SEC);
    assert_eq!(
        r.decision(t).missing,
        [
            "expected:audit",
            "consumer:publish order_confirmed",
            "parent:000000000000dead"
        ]
    );
}

#[test]
fn metrics_count_root_types_and_are_rate_limited() {
    let mut r = Run::new("10s", "[]");
    let (a, b, c) = (tid(1), tid(2), tid(3));
    let mut spans = checkout(a);
    spans.extend(child_consumer(a));
    r.ingest(&spans, T0);
    let first = r.tick(T0 + SEC);
    // The first section goes out at once.
    let (_, roots) = first.metrics.clone().unwrap();
    assert_eq!(
        roots,
        [("checkout".into(), "POST /checkout".into(), 1, 0, 1, 0)]
    );
    // A second decision within METRICS_INTERVAL_NS: no section, but a tick is asked for.
    r.ingest(
        &[sp("checkout", b, 1, 0, "GET /cart", KIND_SERVER)],
        T0 + SEC / 2,
    );
    let second = r.tick(T0 + 2 * SEC - 1);
    assert_eq!(second.decisions.len(), 1);
    assert!(second.metrics.is_none());
    assert_eq!(second.next_due, T0 + SEC + METRICS_INTERVAL_NS);
    let third = r.tick(T0 + 2 * SEC);
    let (_, roots) = third.metrics.unwrap();
    assert_eq!(roots.len(), 2);
    assert_eq!(
        roots[1],
        ("checkout".into(), "GET /cart".into(), 1, 0, 1, 0)
    );
    assert_eq!(third.next_due, 0);
    // An incomplete trace (no root) counts under the empty root type.
    r.ingest(
        &[sp("checkout", c, 2, 1, "orphan", KIND_SERVER)],
        T0 + 3 * SEC,
    );
    r.tick(T0 + 4 * SEC);
    let (_, roots) = r.metrics.last().cloned().unwrap();
    assert_eq!(roots[2], (String::new(), String::new(), 0, 1, 0, 1));
    // Nothing changes: a refresh still goes out every METRICS_REFRESH_NS.
    assert!(r.tick(T0 + 5 * SEC).metrics.is_none());
    let refresh = r.tick(T0 + 4 * SEC + METRICS_REFRESH_NS).metrics.unwrap();
    assert_eq!(
        refresh.1[0],
        ("checkout".into(), "POST /checkout".into(), 0, 0, 1, 0)
    );
}

/// A deterministic pseudo-random sequence (splitmix64).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49eb_311c_e133);
    z ^ (z >> 31)
}

#[test]
fn ten_thousand_healthy_traces_have_no_false_incompletes() {
    const TRACES: u64 = 10_000;
    const PER_BATCH: usize = 100;
    let expectations = r#"[{"root": {"service": "checkout", "name": "POST /checkout"},
        "expect": [{"name": "send_email"}]}]"#;
    let mut r = Run::new("5s", expectations);
    let mut rng = 42u64;
    // Every span of every trace (the consumer as a child in even traces, as a linked trace in odd
    // ones), shuffled so that children often arrive before parents and consumers before
    // producers, in batches of mixed traces.
    let mut spans: Vec<Sp> = Vec::new();
    for n in 0..TRACES {
        let t = tid(n);
        spans.extend(checkout(t));
        if n % 2 == 0 {
            spans.extend(child_consumer(t));
        } else {
            let mut c = linked_consumer(tid(TRACES + n), t);
            // The consumer trace has the expected send_email; the producer trace gets one too.
            spans.push(sp("notification", t, 7, 1, "send_email", KIND_INTERNAL));
            spans.append(&mut c);
        }
    }
    // Shuffle within windows of 2 000 spans: a trace's spans stay within about a second.
    for chunk in spans.chunks_mut(2_000) {
        for i in (1..chunk.len()).rev() {
            let j = (splitmix(&mut rng) % (i as u64 + 1)) as usize;
            chunk.swap(i, j);
        }
    }
    let mut now = T0;
    for b in spans.chunks(PER_BATCH) {
        r.ingest(b, now);
        now += SEC / 100;
    }
    r.flush(now + 20 * SEC);
    assert_eq!(r.decided.len(), 2 * TRACES as usize - (TRACES as usize / 2));
    let incomplete: Vec<&D> = r
        .decided
        .iter()
        .filter(|d| d.completeness == Completeness::Incomplete)
        .collect();
    assert!(
        incomplete.is_empty(),
        "{} false incompletes, e.g. {:?}",
        incomplete.len(),
        incomplete.first()
    );
    assert_eq!(
        r.queue_totals("order_confirmed"),
        (TRACES, TRACES, 0),
        "every message produced and consumed once"
    );
    let (_, roots) = r.metrics.last().unwrap();
    let checkout_root = roots.iter().find(|x| x.1 == "POST /checkout").unwrap();
    assert_eq!(checkout_root.5, 0);
}

impl Run {
    /// The host's `links` call: `spans` belong to traces of another instance.
    fn links(&mut self, spans: &[Sp], now: u64) -> Answer {
        let b = batch(&self.interest, spans);
        let a = read(&self.s.links(&b, now).unwrap());
        self.keep(a)
    }
}

#[test]
fn links_from_another_instance_consume_messages_here_and_release_held_traces() {
    // Two instances, as with two shards: the producer's trace is on `a`, the consumer's on `b`.
    let mut a = Run::new("10s", "[]");
    let mut b = Run::new("10s", "[]");
    let (p, c) = (tid(1), tid(2));
    a.ingest(&checkout(p), T0);
    // Due at 1s, held for its consumer (consumer_wait 10s).
    let held = a.tick(T0 + SEC);
    assert!(held.decisions.is_empty(), "{:?}", held.decisions);
    // The consumer arrives on `b`; the host sends its view to `a` for the link into `a`.
    let consumer = linked_consumer(c, p);
    b.ingest(&consumer, T0 + 2 * SEC);
    let released = a.links(&consumer, T0 + 2 * SEC);
    assert_eq!(released.decisions.len(), 1, "released at once");
    assert_eq!(a.decision(p).completeness, Completeness::Complete);
    assert_eq!(a.queue_totals("order_confirmed"), (1, 1, 0));
    // The consumer's spans are not buffered on `a`: nothing else is ever decided there.
    a.flush(T0 + 30 * SEC);
    assert_eq!(a.decided.len(), 1, "{:?}", a.decided);
    // `b` decides the consumer's own trace, complete.
    b.tick(T0 + 3 * SEC);
    assert_eq!(b.decision(c).completeness, Completeness::Complete);
}

#[test]
fn links_of_spans_that_are_not_consumers_consume_nothing() {
    let mut a = Run::new("10s", "[]");
    let (p, c) = (tid(1), tid(2));
    a.ingest(&checkout(p), T0);
    // An INTERNAL span linking to the producer is not a consumer.
    let linker = vec![sp("audit", c, 1, 0, "audit", KIND_INTERNAL).link(p, 5)];
    let answer = a.links(&linker, T0 + SEC / 2);
    assert!(answer.decisions.is_empty());
    a.tick(T0 + SEC);
    // Held for a consumer that never comes, then decided incomplete.
    a.tick(T0 + 11 * SEC);
    let d = a.decision(p);
    assert_eq!(d.completeness, Completeness::Incomplete, "{d:?}");
    assert!(
        d.missing.iter().any(|m| m.starts_with("consumer:")),
        "{d:?}"
    );
}

#[test]
fn a_sharded_instance_divides_its_rate_limits() {
    let json = r#"{"tail_sampling": {"decision_wait": "1s", "policies": [
        {"name": "rate", "type": "rate_limiting",
         "rate_limiting": {"spans_per_second": 10, "burst_capacity": 10}}]}}"#;
    let keep_count = |s: &mut Sampler, interest: &Interest| {
        // 20 one-span traces in one second: the bucket holds the burst.
        let spans: Vec<Sp> = (0..20)
            .map(|i| sp("svc", tid(100 + i), 1, 0, "op", KIND_SERVER))
            .collect();
        s.ingest(&batch(interest, &spans), T0).unwrap();
        read(&s.tick(T0 + SEC))
            .decisions
            .iter()
            .filter(|d| d.decision == Decision::Sampled)
            .count()
    };
    let (mut whole, i1) = Sampler::configure(json).unwrap();
    let (mut half, i2) = Sampler::configure_shard(json, 2).unwrap();
    assert_eq!(keep_count(&mut whole, &i1), 10);
    assert_eq!(keep_count(&mut half, &i2), 5);
}

#[test]
fn a_late_child_consumer_through_links_is_a_late_completion() {
    let mut r = Run::new("1s", "[]");
    let p = tid(1);
    r.ingest(&checkout(p), T0);
    r.tick(T0 + SEC);
    r.tick(T0 + 2 * SEC);
    assert_eq!(r.decision(p).completeness, Completeness::Incomplete);
    // The consumer, a child of the producer, arrives after the decision: the host shows it
    // through `links`, not as a new trace.
    let answer = r.links(&child_consumer(p), T0 + 3 * SEC);
    assert!(answer.decisions.is_empty());
    r.flush(T0 + 4 * SEC);
    assert_eq!(r.decided.len(), 1, "nothing buffered: {:?}", r.decided);
    assert_eq!(r.queue_totals("order_confirmed"), (1, 1, 1));
    assert_eq!(r.last_queue("order_confirmed").5, 0, "nothing unconsumed");
}
