//! Table-driven tests of every policy type through the sampler's calls: each case configures one
//! policy (or a few), feeds a trace as the host writes it (attribute keys indexed by the
//! interest the sampler returned, so a key the policies do not ask for never reaches them), and
//! reads the decision back with the host-side reader.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tracekeeper_abi::{
    BatchWriter, Decision, DecisionReader, Section, SpanFixed, SpanId, ThresholdOp, TraceId,
};

use crate::threshold;
use crate::trace::{STATUS_ERROR, STATUS_OK, STATUS_UNSET};
use crate::{Interest, Sampler};

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000 * SEC;

/// An attribute value as the tests write it.
#[derive(Clone, Copy, Debug)]
enum V {
    S(&'static str),
    I(i64),
    D(f64),
    B(bool),
    /// An array `["x"]`.
    A,
}

type Attrs = Vec<(&'static str, V)>;

/// One span of a test trace.
#[derive(Clone, Debug)]
struct Sp {
    id: u64,
    parent: u64,
    name: &'static str,
    kind: u8,
    status: u8,
    flags: u8,
    start: u64,
    end: u64,
    len: u32,
    trace_state: &'static str,
    attrs: Attrs,
    resource: Attrs,
    events: Vec<(&'static str, Attrs)>,
}

/// A root span of 1 ms, kind SERVER, status UNSET, 100 encoded bytes.
fn root() -> Sp {
    Sp {
        id: 1,
        parent: 0,
        name: "GET /cart",
        kind: 2,
        status: STATUS_UNSET,
        flags: 0,
        start: T0,
        end: T0 + MS,
        len: 100,
        trace_state: "",
        attrs: Vec::new(),
        resource: vec![("service.name", V::S("checkout"))],
        events: Vec::new(),
    }
}

impl Sp {
    fn child(id: u64) -> Sp {
        Sp {
            id,
            parent: 1,
            ..root()
        }
    }
    fn attr(mut self, k: &'static str, v: V) -> Sp {
        self.attrs.push((k, v));
        self
    }
    fn res(mut self, k: &'static str, v: V) -> Sp {
        self.resource.push((k, v));
        self
    }
    fn event(mut self, name: &'static str, attrs: Attrs) -> Sp {
        self.events.push((name, attrs));
        self
    }
}

fn tid(n: u64) -> TraceId {
    let mut b = [0x3c; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    TraceId(b)
}

fn write_value(w: &mut BatchWriter, s: &mut Section, key: u16, v: V) {
    let vw = w.attr_indexed(s, key);
    match v {
        V::S(x) => vw.str(x.as_bytes()),
        V::I(x) => vw.int(x),
        V::D(x) => vw.double(x),
        V::B(x) => vw.bool(x),
        V::A => {
            let mut arr = vw.begin_array();
            w.array_item(&mut arr).str(b"x");
            w.end_section(arr);
        }
    }
}

/// Writes the attributes whose keys are in `keys` (the interest), as the host does.
fn write_attrs(w: &mut BatchWriter, keys: &[String], attrs: &Attrs) -> Section {
    let mut s = w.begin_section();
    for (k, v) in attrs {
        if let Some(i) = keys.iter().position(|x| x == k) {
            write_value(w, &mut s, u16::try_from(i).unwrap(), *v);
        }
    }
    s
}

/// A batch as the host writes it: one resource record per span, keys indexed by `interest`.
fn batch(interest: &Interest, traces: &[(TraceId, Vec<Sp>)]) -> Vec<u8> {
    let mut w = BatchWriter::new();
    for (trace, spans) in traces {
        for sp in spans {
            let (r, mut rs) = w.begin_resource();
            for (k, v) in &sp.resource {
                if let Some(i) = interest.resource_attributes.iter().position(|x| x == k) {
                    write_value(&mut w, &mut rs, u16::try_from(i).unwrap(), *v);
                }
            }
            w.end_section(rs);
            let fixed = SpanFixed {
                trace_id: *trace,
                span_id: SpanId(sp.id.to_be_bytes()),
                parent_span_id: SpanId(sp.parent.to_be_bytes()),
                start_unix_nano: sp.start,
                end_unix_nano: sp.end,
                encoded_len: sp.len,
                resource: r,
                kind: sp.kind,
                status_code: sp.status,
                flags: sp.flags,
            };
            w.begin_span(&fixed, sp.name.as_bytes(), sp.trace_state.as_bytes());
            let a = write_attrs(&mut w, &interest.span_attributes, &sp.attrs);
            w.end_section(a);
            let links = w.begin_section();
            w.end_section(links);
            let mut events = w.begin_section();
            if interest.events {
                for (name, attrs) in &sp.events {
                    w.event(&mut events, name.as_bytes(), sp.start);
                    let a = write_attrs(&mut w, &interest.span_attributes, attrs);
                    w.end_section(a);
                }
            }
            w.end_section(events);
        }
    }
    w.finish()
}

/// A decision read back.
#[derive(Debug, Clone, PartialEq)]
struct D {
    trace_id: TraceId,
    decision: Decision,
    threshold: ThresholdOp,
    policy: String,
}

fn read(buf: &[u8]) -> Vec<D> {
    DecisionReader::new(buf)
        .unwrap()
        .map(|d| {
            let d = d.unwrap();
            D {
                trace_id: d.trace_id,
                decision: d.decision,
                threshold: d.threshold,
                policy: d.policy.to_owned(),
            }
        })
        .collect()
}

/// A sampler with `policies` (a JSON list body) and `decision_wait: 10s`.
fn sampler(policies: &str) -> (Sampler, Interest) {
    Sampler::configure(&format!(
        r#"{{"tail_sampling": {{"decision_wait": "10s", "policies": [{policies}]}}}}"#
    ))
    .unwrap_or_else(|e| panic!("{policies}: {e}"))
}

fn configure_err(policies: &str) -> String {
    Sampler::configure(&format!(
        r#"{{"tail_sampling": {{"policies": [{policies}]}}}}"#
    ))
    .unwrap_err()
}

/// Ingests the traces at T0 and flushes at `at`; returns the decisions in trace order.
fn decide_at(
    s: &mut Sampler,
    interest: &Interest,
    traces: &[(TraceId, Vec<Sp>)],
    at: u64,
) -> Vec<D> {
    let early = read(&s.ingest(&batch(interest, traces), T0).unwrap());
    let mut all = early;
    all.extend(read(&s.flush(at)));
    traces
        .iter()
        .map(|(t, _)| {
            all.iter()
                .find(|d| d.trace_id == *t)
                .unwrap_or_else(|| panic!("no decision for {t}"))
                .clone()
        })
        .collect()
}

/// Runs each case (spans of one trace, expected decision) against a fresh sampler with
/// `policies`; the failure message names the case.
fn table(policies: &str, cases: &[(&str, Vec<Sp>, Decision)]) {
    for (i, (what, spans, want)) in cases.iter().enumerate() {
        let (mut s, interest) = sampler(policies);
        let t = tid(i as u64);
        let d = decide_at(&mut s, &interest, &[(t, spans.clone())], T0 + SEC);
        assert_eq!(d[0].decision, *want, "{what} with {policies}");
    }
}

use Decision::{Dropped, NotSampled, Sampled};

const NUMERIC: &str = r#"{"name": "n", "type": "numeric_attribute",
    "numeric_attribute": {"key": "key1", "min_value": 50, "max_value": 100}}"#;

#[test]
fn numeric_attribute_table() {
    table(
        NUMERIC,
        &[
            ("in range", vec![root().attr("key1", V::I(75))], Sampled),
            ("lower edge", vec![root().attr("key1", V::I(50))], Sampled),
            ("upper edge", vec![root().attr("key1", V::I(100))], Sampled),
            ("below", vec![root().attr("key1", V::I(49))], NotSampled),
            ("above", vec![root().attr("key1", V::I(101))], NotSampled),
            ("missing", vec![root()], NotSampled),
            ("double", vec![root().attr("key1", V::D(75.0))], NotSampled),
            ("string", vec![root().attr("key1", V::S("75"))], NotSampled),
            (
                "on the resource",
                vec![root().res("key1", V::I(60))],
                Sampled,
            ),
            (
                "on a second span",
                vec![root(), Sp::child(2).attr("key1", V::I(99))],
                Sampled,
            ),
            ("other key", vec![root().attr("key2", V::I(75))], NotSampled),
        ],
    );
    let invert = NUMERIC.replace(
        "\"max_value\": 100",
        "\"max_value\": 100, \"invert_match\": true",
    );
    table(
        &invert,
        &[
            ("in range", vec![root().attr("key1", V::I(75))], NotSampled),
            ("out of range", vec![root().attr("key1", V::I(10))], Sampled),
            ("missing", vec![root()], Sampled),
            (
                "one span in range",
                vec![
                    root().attr("key1", V::I(10)),
                    Sp::child(2).attr("key1", V::I(70)),
                ],
                NotSampled,
            ),
            (
                "resource in range",
                vec![root().res("key1", V::I(70))],
                NotSampled,
            ),
        ],
    );
    // A bound of 0 is "not set", as in the collector.
    let min_only = NUMERIC.replace("\"max_value\": 100", "\"max_value\": 0");
    table(
        &min_only,
        &[
            ("huge", vec![root().attr("key1", V::I(i64::MAX))], Sampled),
            ("below", vec![root().attr("key1", V::I(49))], NotSampled),
        ],
    );
    let max_only = NUMERIC.replace("\"min_value\": 50", "\"min_value\": 0");
    table(
        &max_only,
        &[
            ("negative", vec![root().attr("key1", V::I(-5))], Sampled),
            ("above", vec![root().attr("key1", V::I(101))], NotSampled),
        ],
    );
}

#[test]
fn numeric_attribute_needs_a_bound_and_an_order() {
    let err = configure_err(
        r#"{"name": "test-policy-3", "type": "numeric_attribute",
            "numeric_attribute": {"key": "key1"}}"#,
    );
    assert_eq!(
        err,
        "processors.tail_sampling.policies[0] (name: test-policy-3): numeric_attribute: set \
         min_value, max_value or both (0 means not set, as in the collector)"
    );
    let err = configure_err(
        r#"{"name": "test-policy-3", "type": "numeric_attribute",
            "numeric_attribute": {"key": "key1", "min_value": 500, "max_value": 100}}"#,
    );
    assert_eq!(
        err,
        "processors.tail_sampling.policies[0] (name: test-policy-3): \
         numeric_attribute.min_value: must not be greater than max_value (500 > 100)"
    );
    let err = configure_err(
        r#"{"name": "n", "type": "numeric_attribute", "numeric_attribute": {"min_value": 1}}"#,
    );
    assert!(
        err.ends_with("numeric_attribute.key: must not be empty"),
        "{err}"
    );
    let err = configure_err(
        r#"{"name": "n", "type": "numeric_attribute",
            "numeric_attribute": {"key": "k", "min_value": 1.5}}"#,
    );
    assert_eq!(
        err,
        "processors.tail_sampling.policies[0] (name: n): numeric_attribute.min_value: expected \
         an integer, got floating point `1.5`"
    );
}

const STRING: &str = r#"{"name": "s", "type": "string_attribute",
    "string_attribute": {"key": "key2", "values": ["value1", "value2"]}}"#;

#[test]
fn string_attribute_table() {
    table(
        STRING,
        &[
            (
                "first value",
                vec![root().attr("key2", V::S("value1"))],
                Sampled,
            ),
            (
                "second value",
                vec![root().attr("key2", V::S("value2"))],
                Sampled,
            ),
            (
                "other value",
                vec![root().attr("key2", V::S("value3"))],
                NotSampled,
            ),
            (
                "prefix only",
                vec![root().attr("key2", V::S("value"))],
                NotSampled,
            ),
            (
                "case differs",
                vec![root().attr("key2", V::S("VALUE1"))],
                NotSampled,
            ),
            (
                "not a string",
                vec![root().attr("key2", V::I(1))],
                NotSampled,
            ),
            ("missing", vec![root()], NotSampled),
            (
                "on the resource",
                vec![root().res("key2", V::S("value2"))],
                Sampled,
            ),
        ],
    );
    let invert = STRING.replace("\"values\"", "\"invert_match\": true, \"values\"");
    table(
        &invert,
        &[
            (
                "matching",
                vec![root().attr("key2", V::S("value1"))],
                NotSampled,
            ),
            ("other", vec![root().attr("key2", V::S("value9"))], Sampled),
            ("missing", vec![root()], Sampled),
            (
                "resource matching",
                vec![root().res("key2", V::S("value1"))],
                NotSampled,
            ),
        ],
    );
    let regex = r#"{"name": "r", "type": "string_attribute",
        "string_attribute": {"key": "url.path", "values": ["^/health", "metrics$"],
                             "enabled_regex_matching": true, "cache_max_size": 2}}"#;
    table(
        regex,
        &[
            (
                "anchored start",
                vec![root().attr("url.path", V::S("/healthz"))],
                Sampled,
            ),
            (
                "end",
                vec![root().attr("url.path", V::S("/api/metrics"))],
                Sampled,
            ),
            (
                "unanchored miss",
                vec![root().attr("url.path", V::S("/x/health"))],
                NotSampled,
            ),
            ("empty", vec![root().attr("url.path", V::S(""))], NotSampled),
            (
                "resource",
                vec![root().res("url.path", V::S("/health"))],
                Sampled,
            ),
        ],
    );
    // The memo of regex results does not change answers when values repeat past its size.
    let (mut s, interest) = sampler(regex);
    let paths = [
        "/health",
        "/a",
        "/metrics",
        "/b",
        "/health",
        "/a",
        "/c/metrics",
    ];
    let traces: Vec<(TraceId, Vec<Sp>)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (tid(i as u64), vec![root().attr("url.path", V::S(p))]))
        .collect();
    let got: Vec<Decision> = decide_at(&mut s, &interest, &traces, T0 + SEC)
        .iter()
        .map(|d| d.decision)
        .collect();
    assert_eq!(
        got,
        [
            Sampled, NotSampled, Sampled, NotSampled, Sampled, NotSampled, Sampled
        ]
    );
    let err = configure_err(
        r#"{"name": "r", "type": "string_attribute",
            "string_attribute": {"key": "k", "values": ["ok", "(("], "enabled_regex_matching": true}}"#,
    );
    assert!(
        err.starts_with(
            "processors.tail_sampling.policies[0] (name: r): string_attribute.values[1]: invalid \
             regular expression \"((\""
        ),
        "{err}"
    );
}

#[test]
fn boolean_attribute_table() {
    let p = r#"{"name": "b", "type": "boolean_attribute",
        "boolean_attribute": {"key": "key4", "value": true}}"#;
    table(
        p,
        &[
            ("true", vec![root().attr("key4", V::B(true))], Sampled),
            ("false", vec![root().attr("key4", V::B(false))], NotSampled),
            (
                "string true",
                vec![root().attr("key4", V::S("true"))],
                NotSampled,
            ),
            ("missing", vec![root()], NotSampled),
            ("resource", vec![root().res("key4", V::B(true))], Sampled),
        ],
    );
    let p = r#"{"name": "b", "type": "boolean_attribute",
        "boolean_attribute": {"key": "key4", "value": false, "invert_match": true}}"#;
    table(
        p,
        &[
            ("false", vec![root().attr("key4", V::B(false))], NotSampled),
            ("true", vec![root().attr("key4", V::B(true))], Sampled),
            ("missing", vec![root()], Sampled),
        ],
    );
}

#[test]
fn trace_state_table() {
    let p = r#"{"name": "ts", "type": "trace_state",
        "trace_state": {"key": "key3", "values": ["value1", "value2"]}}"#;
    let with = |ts: &'static str| Sp {
        trace_state: ts,
        ..root()
    };
    table(
        p,
        &[
            ("only member", vec![with("key3=value1")], Sampled),
            ("later member", vec![with("ot=th:8,key3=value2")], Sampled),
            ("spaces", vec![with("a=b , key3=value2")], Sampled),
            ("other value", vec![with("key3=value3")], NotSampled),
            ("other key", vec![with("key3x=value1")], NotSampled),
            ("none", vec![root()], NotSampled),
            (
                "on a second span",
                vec![
                    root(),
                    Sp {
                        trace_state: "key3=value1",
                        ..Sp::child(2)
                    },
                ],
                Sampled,
            ),
        ],
    );
}

#[test]
fn trace_flags_table() {
    let p = r#"{"name": "f", "type": "trace_flags", "trace_flags": {}}"#;
    let flags = |f: u8| Sp { flags: f, ..root() };
    table(
        p,
        &[
            ("sampled", vec![flags(1)], Sampled),
            ("sampled and more bits", vec![flags(3)], Sampled),
            ("not sampled", vec![flags(0)], NotSampled),
            ("other bit", vec![flags(2)], NotSampled),
            (
                "one of two",
                vec![
                    flags(0),
                    Sp {
                        flags: 1,
                        ..Sp::child(2)
                    },
                ],
                Sampled,
            ),
        ],
    );
    let err = configure_err(r#"{"name": "f", "type": "trace_flags", "trace_flags": {"x": 1}}"#);
    assert!(err.contains("trace_flags.x: unknown field"), "{err}");
}

#[test]
fn latency_table() {
    let span = |id, parent, start_ms: u64, end_ms: u64| Sp {
        id,
        parent,
        start: T0 + start_ms * MS,
        end: T0 + end_ms * MS,
        ..root()
    };
    let p = r#"{"name": "slow", "type": "latency", "latency": {"threshold_ms": 5000}}"#;
    table(
        p,
        &[
            ("exactly the threshold", vec![span(1, 0, 0, 5000)], Sampled),
            ("just under", vec![span(1, 0, 0, 4999)], NotSampled),
            (
                "earliest start to latest end",
                vec![
                    span(1, 0, 1000, 2000),
                    span(2, 1, 0, 10),
                    span(3, 1, 4000, 5000),
                ],
                Sampled,
            ),
            (
                "sub-millisecond truncated",
                vec![Sp {
                    end: T0 + 5000 * MS - 1,
                    ..root()
                }],
                NotSampled,
            ),
        ],
    );
    let p = r#"{"name": "band", "type": "latency",
        "latency": {"threshold_ms": 1000, "upper_threshold_ms": 2000}}"#;
    table(
        p,
        &[
            (
                "lower bound excluded",
                vec![span(1, 0, 0, 1000)],
                NotSampled,
            ),
            ("just above lower", vec![span(1, 0, 0, 1001)], Sampled),
            ("upper bound included", vec![span(1, 0, 0, 2000)], Sampled),
            ("above upper", vec![span(1, 0, 0, 2001)], NotSampled),
            // The whole trace counts, not the duration seen so far.
            (
                "trace longer than upper",
                vec![span(1, 0, 0, 1500), span(2, 1, 100, 2500)],
                NotSampled,
            ),
        ],
    );
    let err = configure_err(
        r#"{"name": "a", "type": "always_sample"}, {"name": "b", "type": "always_sample"},
           {"name": "c", "type": "always_sample"},
           {"name": "slow", "type": "latency", "latency": {"threshold_ms": "5s"}}"#,
    );
    assert_eq!(
        err,
        "processors.tail_sampling.policies[3] (name: slow): latency.threshold_ms: expected an \
         integer, got string \"5s\""
    );
    let err = configure_err(
        r#"{"name": "l", "type": "latency", "latency": {"threshold_ms": 10, "upper_threshold_ms": 10}}"#,
    );
    assert!(
        err.ends_with("latency.upper_threshold_ms: must be greater than threshold_ms (10 <= 10)"),
        "{err}"
    );
}

#[test]
fn span_count_table() {
    let spans = |n: u64| -> Vec<Sp> {
        (1..=n)
            .map(|i| if i == 1 { root() } else { Sp::child(i) })
            .collect()
    };
    let p =
        r#"{"name": "c", "type": "span_count", "span_count": {"min_spans": 2, "max_spans": 3}}"#;
    table(
        p,
        &[
            ("one", spans(1), NotSampled),
            ("min", spans(2), Sampled),
            ("max", spans(3), Sampled),
            ("over", spans(4), NotSampled),
        ],
    );
    let p = r#"{"name": "c", "type": "span_count", "span_count": {"min_spans": 2}}"#;
    table(
        p,
        &[("many", spans(50), Sampled), ("one", spans(1), NotSampled)],
    );
    let err = configure_err(
        r#"{"name": "c", "type": "span_count", "span_count": {"min_spans": 5, "max_spans": 3}}"#,
    );
    assert!(
        err.ends_with("span_count.max_spans: must not be below min_spans (3 < 5)"),
        "{err}"
    );
}

#[test]
fn status_code_table() {
    let p = r#"{"name": "e", "type": "status_code", "status_code": {"status_codes": ["ERROR", "UNSET"]}}"#;
    let st = |s: u8| Sp {
        status: s,
        ..root()
    };
    table(
        p,
        &[
            ("error", vec![st(STATUS_ERROR)], Sampled),
            ("unset", vec![st(STATUS_UNSET)], Sampled),
            ("ok", vec![st(STATUS_OK)], NotSampled),
            (
                "ok and error",
                vec![
                    st(STATUS_OK),
                    Sp {
                        status: STATUS_ERROR,
                        ..Sp::child(2)
                    },
                ],
                Sampled,
            ),
        ],
    );
}

/// Traces of `spans` spans each, decided together at `at`.
fn limited(policy: &str, n: u64, spans: u64, len: u32, at: u64) -> Vec<D> {
    let (mut s, interest) = sampler(policy);
    let traces: Vec<(TraceId, Vec<Sp>)> = (0..n)
        .map(|t| {
            let sps = (1..=spans)
                .map(|i| Sp {
                    len,
                    ..if i == 1 { root() } else { Sp::child(i) }
                })
                .collect();
            (tid(t), sps)
        })
        .collect();
    decide_at(&mut s, &interest, &traces, at)
}

#[test]
fn rate_limiting_is_a_token_bucket_of_spans() {
    // 3 spans/s, burst 6 by default: three 2-span traces pass, the fourth does not.
    let p = r#"{"name": "rl", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 3}}"#;
    let d = limited(p, 4, 2, 100, T0 + SEC);
    let kept: Vec<Decision> = d.iter().map(|d| d.decision).collect();
    assert_eq!(kept, [Sampled, Sampled, Sampled, NotSampled]);
    assert_eq!(
        d[0].threshold,
        ThresholdOp::Erase,
        "a rate-limited keep erases th"
    );
    // A burst of 1: even a 2-span trace never passes.
    let p = r#"{"name": "rl", "type": "rate_limiting",
        "rate_limiting": {"spans_per_second": 3, "burst_capacity": 1}}"#;
    assert_eq!(limited(p, 1, 2, 100, T0 + SEC)[0].decision, NotSampled);
    // Refill on the host clock: decisions a second apart get 3 new tokens.
    let p = r#"{"name": "rl", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 3}}"#;
    let (mut s, interest) = sampler(p);
    let spans = || vec![root(), Sp::child(2), Sp::child(3)];
    let first: Vec<(TraceId, Vec<Sp>)> = (0..3).map(|t| (tid(t), spans())).collect();
    let d = decide_at(&mut s, &interest, &first, T0 + SEC);
    assert_eq!(d.iter().filter(|d| d.decision == Sampled).count(), 2);
    let second: Vec<(TraceId, Vec<Sp>)> = (3..6).map(|t| (tid(t), spans())).collect();
    let d = decide_at(&mut s, &interest, &second, T0 + 2 * SEC);
    assert_eq!(d.iter().filter(|d| d.decision == Sampled).count(), 1);
    let err = configure_err(r#"{"name": "rl", "type": "rate_limiting", "rate_limiting": {}}"#);
    assert!(
        err.ends_with("rate_limiting.spans_per_second: must be greater than 0, got 0"),
        "{err}"
    );
}

#[test]
fn bytes_limiting_is_a_token_bucket_of_bytes() {
    let p = r#"{"name": "bl", "type": "bytes_limiting",
        "bytes_limiting": {"bytes_per_second": 1000, "burst_capacity": 1500}}"#;
    let d = limited(p, 3, 2, 300, T0 + SEC);
    let kept: Vec<Decision> = d.iter().map(|d| d.decision).collect();
    assert_eq!(
        kept,
        [Sampled, Sampled, NotSampled],
        "600 bytes each, 1500 in the bucket"
    );
    assert_eq!(d[0].threshold, ThresholdOp::Erase);
    // Default burst: twice the rate.
    let p =
        r#"{"name": "bl", "type": "bytes_limiting", "bytes_limiting": {"bytes_per_second": 1000}}"#;
    let d = limited(p, 4, 1, 600, T0 + SEC);
    assert_eq!(d.iter().filter(|d| d.decision == Sampled).count(), 3);
}

#[test]
fn probabilistic_accepts_hash_salt_and_keeps_by_randomness() {
    let p = r#"{"name": "p", "type": "probabilistic",
        "probabilistic": {"hash_salt": "custom-salt", "sampling_percentage": 50}}"#;
    let (mut s, interest) = sampler(p);
    let low = TraceId([0; 16]);
    let mut high = [0xff; 16];
    high[0] = 1;
    let d = decide_at(
        &mut s,
        &interest,
        &[(low, vec![root()]), (TraceId(high), vec![root()])],
        T0 + SEC,
    );
    assert_eq!(d[0].decision, NotSampled);
    assert_eq!(d[1].decision, Sampled);
    assert_eq!(d[1].threshold, ThresholdOp::Raise(1 << 55));
}

/// Writes a threshold as the host does in `ot=th:<hex>` (14 digits, trailing zeros removed).
fn th_hex(t: u64) -> String {
    let s = format!("{t:014x}");
    let trimmed = s.trim_end_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Reads `th` back as a consumer of the span would: the adjusted count 1 / p.
fn adjusted_count(th: &str) -> f64 {
    let padded = format!("{th:0<14}");
    let t = u64::from_str_radix(&padded, 16).unwrap();
    threshold::MAX_THRESHOLD as f64 / (threshold::MAX_THRESHOLD - t) as f64
}

/// splitmix64: a deterministic stream of well-mixed 64-bit values.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn ten_percent_of_random_traces_with_an_adjusted_count_of_ten() {
    const TRACES: u64 = 100_000;
    // The embedded default policies: complete OK traces only meet the baseline.
    let (mut s, interest) = sampler(
        r#"{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
           {"name": "incomplete", "type": "completeness", "completeness": {"incomplete": true}},
           {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}}"#,
    );
    let mut state = 2026;
    let mut kept = Vec::new();
    let mut ids = Vec::with_capacity(1000);
    for _ in 0..TRACES / 1000 {
        ids.clear();
        for _ in 0..1000 {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&splitmix(&mut state).to_le_bytes());
            b[8..].copy_from_slice(&splitmix(&mut state).to_le_bytes());
            ids.push((
                TraceId(b),
                vec![Sp {
                    status: STATUS_OK,
                    ..root()
                }],
            ));
        }
        for d in decide_at(&mut s, &interest, &ids, T0 + SEC) {
            if d.decision == Sampled {
                kept.push(d);
            }
        }
    }
    let ratio = kept.len() as f64 / TRACES as f64;
    assert!((0.095..=0.105).contains(&ratio), "kept {ratio}");
    for d in &kept {
        assert_eq!(d.policy, "baseline");
        let ThresholdOp::Raise(t) = d.threshold else {
            panic!("a probabilistic keep without a threshold: {d:?}");
        };
        let th = th_hex(t);
        assert_eq!(th, "e6666666666666");
        assert!((adjusted_count(&th) - 10.0).abs() < 1e-9, "{th}");
    }
}

const FLAGGED: &str = r#"{"name": "f", "type": "string_attribute",
    "string_attribute": {"key": "key2", "values": ["a"]}}"#;

#[test]
fn and_table() {
    let p = format!(
        r#"{{"name": "and-policy-1", "type": "and", "and": {{"and_sub_policy": [{NUMERIC}, {FLAGGED}]}}}}"#
    );
    table(
        &p,
        &[
            (
                "both",
                vec![root().attr("key1", V::I(60)).attr("key2", V::S("a"))],
                Sampled,
            ),
            (
                "on different spans",
                vec![
                    root().attr("key1", V::I(60)),
                    Sp::child(2).res("key2", V::S("a")),
                ],
                Sampled,
            ),
            (
                "only numeric",
                vec![root().attr("key1", V::I(60))],
                NotSampled,
            ),
            (
                "only string",
                vec![root().attr("key2", V::S("a"))],
                NotSampled,
            ),
            ("neither", vec![root()], NotSampled),
        ],
    );
    // An inverted sub-policy's keep counts; a probabilistic sub-policy makes the keep
    // probabilistic.
    let inv = FLAGGED.replace("\"values\"", "\"invert_match\": true, \"values\"");
    let p = format!(
        r#"{{"name": "x", "type": "and", "and": {{"and_sub_policy": [{inv},
            {{"name": "half", "type": "probabilistic", "probabilistic": {{"sampling_percentage": 50}}}}]}}}}"#
    );
    let (mut s, interest) = sampler(&p);
    let mut high = [0xff; 16];
    high[0] = 2;
    let d = decide_at(
        &mut s,
        &interest,
        &[
            (TraceId(high), vec![root()]),
            (TraceId([0xee; 16]), vec![root().attr("key2", V::S("a"))]),
        ],
        T0 + SEC,
    );
    assert_eq!(d[0].decision, Sampled);
    assert_eq!(d[0].policy, "x");
    assert_eq!(d[0].threshold, ThresholdOp::Raise(1 << 55));
    assert_eq!(d[1].decision, NotSampled);
}

#[test]
fn not_table() {
    let p = format!(r#"{{"name": "no-a", "type": "not", "not": {{"not_sub_policy": {FLAGGED}}}}}"#);
    table(
        &p,
        &[
            ("matching", vec![root().attr("key2", V::S("a"))], NotSampled),
            (
                "not matching",
                vec![root().attr("key2", V::S("b"))],
                Sampled,
            ),
            ("missing", vec![root()], Sampled),
        ],
    );
    let (mut s, interest) = sampler(&p);
    assert_eq!(
        decide_at(&mut s, &interest, &[(tid(1), vec![root()])], T0 + SEC)[0].threshold,
        ThresholdOp::Keep
    );
    // The inverse of a probabilistic keep is no threshold sample: th is erased.
    let p = r#"{"name": "rest", "type": "not", "not": {"not_sub_policy":
        {"type": "probabilistic", "probabilistic": {"sampling_percentage": 50}}}}"#;
    let (mut s, interest) = sampler(p);
    let d = decide_at(
        &mut s,
        &interest,
        &[(TraceId([0; 16]), vec![root()])],
        T0 + SEC,
    );
    assert_eq!(
        (d[0].decision, d[0].threshold),
        (Sampled, ThresholdOp::Erase)
    );
    // Legacy inverted decisions pass through `not` unchanged, as in the collector.
    let inv = FLAGGED.replace("\"values\"", "\"invert_match\": true, \"values\"");
    let p = format!(r#"{{"name": "n", "type": "not", "not": {{"not_sub_policy": {inv}}}}}"#);
    table(
        &p,
        &[
            (
                "matching: InvertNotSampled",
                vec![root().attr("key2", V::S("a"))],
                NotSampled,
            ),
            ("missing: InvertSampled", vec![root()], Sampled),
        ],
    );
}

#[test]
fn drop_wins_over_every_keep() {
    let p = r#"{"name": "keep-all", "type": "always_sample"},
        {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
        {"name": "drop-health", "type": "drop", "drop": {"drop_sub_policy": [
            {"name": "health", "type": "string_attribute",
             "string_attribute": {"key": "url.path", "values": ["^/health", "^/metrics"],
                                  "enabled_regex_matching": true}}]}}"#;
    let (mut s, interest) = sampler(p);
    let d = decide_at(
        &mut s,
        &interest,
        &[
            (tid(1), vec![root().attr("url.path", V::S("/healthz"))]),
            (
                tid(2),
                vec![
                    Sp {
                        status: STATUS_ERROR,
                        ..root()
                    }
                    .attr("url.path", V::S("/metrics")),
                ],
            ),
            (tid(3), vec![root().attr("url.path", V::S("/api"))]),
        ],
        T0 + SEC,
    );
    assert_eq!(
        (d[0].decision, d[0].policy.as_str()),
        (Dropped, "drop-health")
    );
    assert_eq!(
        (d[1].decision, d[1].policy.as_str()),
        (Dropped, "drop-health")
    );
    assert_eq!((d[2].decision, d[2].policy.as_str()), (Sampled, "keep-all"));
    // Only at the top level.
    let err = configure_err(
        r#"{"name": "a", "type": "and", "and": {"and_sub_policy": [
            {"name": "d", "type": "drop", "drop": {"drop_sub_policy": [{"type": "always_sample"}]}}]}}"#,
    );
    assert_eq!(
        err,
        "processors.tail_sampling.policies[0] (name: a): and.and_sub_policy[0] (name: d): a drop \
         policy is only allowed at the top level of policies"
    );
}

#[test]
fn composite_allocates_spans_per_second() {
    // 10 spans/s: `a` (key2 = "a") gets 50% = 5, `rest` 20% = 2, `never` no entry = 0.
    let p = r#"{"name": "composite-policy-1", "type": "composite", "composite": {
        "max_total_spans_per_second": 10,
        "policy_order": ["a", "rest", "never"],
        "composite_sub_policy": [
            {"name": "a", "type": "string_attribute", "string_attribute": {"key": "key2", "values": ["a"]}},
            {"name": "never", "type": "string_attribute", "string_attribute": {"key": "key2", "values": ["n"]}},
            {"name": "rest", "type": "always_sample"}],
        "rate_allocation": [{"policy": "a", "percent": 50}, {"policy": "rest", "percent": 20}]}}"#;
    let (mut s, interest) = sampler(p);
    let mut traces: Vec<(TraceId, Vec<Sp>)> = (0..7)
        .map(|i| (tid(i), vec![root().attr("key2", V::S("a"))]))
        .collect();
    traces.extend((10..13).map(|i| (tid(i), vec![root()])));
    traces.push((tid(20), vec![root().attr("key2", V::S("n"))]));
    let d = decide_at(&mut s, &interest, &traces, T0 + SEC);
    let got: Vec<Decision> = d.iter().map(|d| d.decision).collect();
    assert_eq!(
        got,
        [
            Sampled, Sampled, Sampled, Sampled, Sampled, // a's 5 spans
            NotSampled, NotSampled, // a matched, over its allocation: not handed to `rest`
            Sampled, Sampled, NotSampled, // rest's 2
            NotSampled, // `never` matched but has no allocation
        ]
    );
    assert!(
        d.iter()
            .filter(|d| d.decision == Sampled)
            .all(|d| d.threshold == ThresholdOp::Erase)
    );
    assert!(
        d.iter()
            .filter(|d| d.decision == Sampled)
            .all(|d| d.policy == "composite-policy-1")
    );
    // The next second starts new counts.
    let more: Vec<(TraceId, Vec<Sp>)> = (30..37)
        .map(|i| (tid(i), vec![root().attr("key2", V::S("a"))]))
        .collect();
    let d = decide_at(&mut s, &interest, &more, T0 + 2 * SEC);
    assert_eq!(d.iter().filter(|d| d.decision == Sampled).count(), 5);
    let err = configure_err(
        r#"{"name": "c", "type": "composite", "composite": {"max_total_spans_per_second": 5,
            "composite_sub_policy": [{"name": "x", "type": "always_sample"}],
            "rate_allocation": [{"policy": "y", "percent": 10}]}}"#,
    );
    assert!(
        err.ends_with(
            "composite.rate_allocation[0].policy: no composite_sub_policy is named \"y\""
        ),
        "{err}"
    );
}

#[test]
fn ottl_condition_span_and_event_conditions() {
    // The peer test config's conditions: any condition of a list keeps.
    let p = r#"{"name": "test-policy-11", "type": "ottl_condition", "ottl_condition": {
        "error_mode": "ignore",
        "span": ["attributes[\"test_attr_key_1\"] == \"test_attr_val_1\"",
                 "attributes[\"test_attr_key_2\"] != \"test_attr_val_1\""],
        "spanevent": ["name != \"test_span_event_name\"",
                      "attributes[\"test_event_attr_key_2\"] != \"test_event_attr_val_1\""]}}"#;
    table(
        p,
        &[
            // `!=` on a missing attribute is true: any span matches the second condition.
            ("any span", vec![root()], Sampled),
            (
                "first condition",
                vec![root().attr("test_attr_key_1", V::S("test_attr_val_1"))],
                Sampled,
            ),
        ],
    );
    let p = r#"{"name": "o", "type": "ottl_condition", "ottl_condition": {
        "span": ["kind == SPAN_KIND_CLIENT and IsMatch(resource.attributes[\"service.name\"], \"^pay\")"],
        "spanevent": ["name == \"exception\" and attributes[\"exception.type\"] == \"IOError\""]}}"#;
    table(
        p,
        &[
            (
                "client of payments",
                vec![Sp {
                    kind: 3,
                    resource: vec![("service.name", V::S("payments"))],
                    ..root()
                }],
                Sampled,
            ),
            (
                "client of checkout",
                vec![Sp { kind: 3, ..root() }],
                NotSampled,
            ),
            (
                "IOError event",
                vec![root().event("exception", vec![("exception.type", V::S("IOError"))])],
                Sampled,
            ),
            (
                "other event",
                vec![root().event("exception", vec![("exception.type", V::S("Timeout"))])],
                NotSampled,
            ),
            ("no event", vec![root()], NotSampled),
        ],
    );
    let (_, interest) = sampler(p);
    assert!(interest.events, "span event conditions need events");
    assert!(
        interest
            .span_attributes
            .contains(&"exception.type".to_owned())
    );
}

#[test]
fn ottl_error_mode() {
    let cond = |mode: &str| {
        format!(
            r#"{{"name": "o", "type": "ottl_condition", "ottl_condition": {{{mode}
                "span": ["IsMatch(attributes[\"tags\"], \"x\")", "name == \"GET /cart\""]}}}},
               {{"name": "inv", "type": "string_attribute",
                 "string_attribute": {{"key": "k", "values": ["v"], "invert_match": true}}}}"#
        )
    };
    // An array attribute makes IsMatch fail. propagate (the default): the policy errs, the
    // error counts for nothing, so the inverted keep stands (no NotSampled).
    for mode in ["", r#""error_mode": "propagate","#] {
        let (mut s, interest) = sampler(&cond(mode));
        let d = decide_at(
            &mut s,
            &interest,
            &[(tid(1), vec![root().attr("tags", V::A)])],
            T0 + SEC,
        );
        assert_eq!(
            (d[0].decision, d[0].policy.as_str()),
            (Sampled, "inv"),
            "{mode}"
        );
    }
    // ignore / silent: the failing condition is false and the next one matches.
    for mode in [r#""error_mode": "ignore","#, r#""error_mode": "silent","#] {
        let (mut s, interest) = sampler(&cond(mode));
        let d = decide_at(
            &mut s,
            &interest,
            &[(tid(1), vec![root().attr("tags", V::A)])],
            T0 + SEC,
        );
        assert_eq!(
            (d[0].decision, d[0].policy.as_str()),
            (Sampled, "o"),
            "{mode}"
        );
    }
    // First of match and error in arrival order wins (propagate).
    let p = r#"{"name": "o", "type": "ottl_condition", "ottl_condition": {
        "span": ["IsMatch(attributes[\"tags\"], \"x\")"]}}"#;
    let (mut s, interest) = sampler(p);
    let d = decide_at(
        &mut s,
        &interest,
        &[
            (
                tid(1),
                vec![
                    root().attr("tags", V::S("x")),
                    Sp::child(2).attr("tags", V::A),
                ],
            ),
            (
                tid(2),
                vec![
                    root().attr("tags", V::A),
                    Sp::child(2).attr("tags", V::S("x")),
                ],
            ),
        ],
        T0 + SEC,
    );
    assert_eq!(d[0].decision, Sampled);
    assert_eq!(d[1].decision, NotSampled);
    let err = configure_err(
        r#"{"name": "o", "type": "ottl_condition", "ottl_condition": {"span": ["name == \"a\"", "name = 1"]}}"#,
    );
    assert!(
        err.starts_with("processors.tail_sampling.policies[0] (name: o): ottl_condition.span[1]: unexpected character '='"),
        "{err}"
    );
    let err = configure_err(
        r#"{"name": "o", "type": "ottl_condition", "ottl_condition": {"error_mode": "loud", "span": ["true"]}}"#,
    );
    assert!(err.starts_with("processors.tail_sampling.policies[0] (name: o): ottl_condition.error_mode: unknown variant"), "{err}");
    let err = configure_err(r#"{"name": "o", "type": "ottl_condition", "ottl_condition": {}}"#);
    assert!(
        err.ends_with("expected at least one condition in `span` or `spanevent`"),
        "{err}"
    );
}

#[test]
fn completeness_composes_with_and_and_not() {
    let p = r#"{"name": "incomplete-checkout", "type": "and", "and": {"and_sub_policy": [
            {"type": "completeness", "completeness": {"incomplete": true}},
            {"type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["checkout"]}}]}},
        {"name": "complete", "type": "not", "not": {"not_sub_policy":
            {"type": "completeness", "completeness": {"incomplete": true}}}}"#;
    let (mut s, interest) = sampler(p);
    let orphan = Sp {
        parent: 99,
        ..root()
    };
    let d = decide_at(
        &mut s,
        &interest,
        &[
            (tid(1), vec![orphan.clone()]),
            (
                tid(2),
                vec![Sp {
                    resource: vec![("service.name", V::S("cart"))],
                    ..orphan
                }],
            ),
            (tid(3), vec![root()]),
        ],
        T0 + SEC,
    );
    assert_eq!(
        (d[0].decision, d[0].policy.as_str()),
        (Sampled, "incomplete-checkout")
    );
    assert_eq!(d[1].decision, NotSampled);
    assert_eq!(
        (d[2].decision, d[2].policy.as_str(), d[2].threshold),
        (Sampled, "complete", ThresholdOp::Keep)
    );
}

#[test]
fn invert_not_sampled_beats_a_keep_and_drop_beats_everything() {
    let p = r#"{"name": "all", "type": "always_sample"},
        {"name": "not-internal", "type": "string_attribute",
         "string_attribute": {"key": "net", "values": ["internal"], "invert_match": true}},
        {"name": "d", "type": "drop", "drop": {"drop_sub_policy": [
            {"type": "boolean_attribute", "boolean_attribute": {"key": "drop.me", "value": true}}]}}"#;
    let (mut s, interest) = sampler(p);
    let d = decide_at(
        &mut s,
        &interest,
        &[
            (tid(1), vec![root().attr("net", V::S("internal"))]),
            (tid(2), vec![root().attr("net", V::S("public"))]),
            (
                tid(3),
                vec![
                    root()
                        .attr("net", V::S("internal"))
                        .attr("drop.me", V::B(true)),
                ],
            ),
        ],
        T0 + SEC,
    );
    assert_eq!((d[0].decision, d[0].policy.as_str()), (NotSampled, ""));
    assert_eq!((d[1].decision, d[1].policy.as_str()), (Sampled, "all"));
    assert_eq!((d[2].decision, d[2].policy.as_str()), (Dropped, "d"));
}

#[test]
fn maximum_trace_size_bytes_decides_at_once() {
    let (mut s, interest) = Sampler::configure(
        r#"{"tail_sampling": {"decision_wait": "10s", "maximum_trace_size_bytes": 250,
            "policies": [{"name": "all", "type": "always_sample"}]}}"#,
    )
    .unwrap();
    let big = tid(1);
    let small = tid(2);
    let answer = read(
        &s.ingest(
            &batch(
                &interest,
                &[
                    (big, vec![root(), Sp::child(2), Sp::child(3)]),
                    (small, vec![root(), Sp::child(2)]),
                ],
            ),
            T0,
        )
        .unwrap(),
    );
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0].trace_id, big);
    assert_eq!(answer[0].decision, NotSampled);
    assert_eq!(answer[0].policy, "maximum_trace_size_bytes");
    assert_eq!(s.pending_traces(), 1);
    let rest = read(&s.flush(T0 + SEC));
    assert_eq!((rest[0].trace_id, rest[0].decision), (small, Sampled));
}

#[test]
fn interest_holds_exactly_the_keys_the_policies_read() {
    let (_, plain) = sampler(r#"{"name": "all", "type": "always_sample"}"#);
    let p = format!(
        r#"{NUMERIC}, {FLAGGED},
        {{"name": "o", "type": "ottl_condition", "ottl_condition": {{"span": [
            "resource.attributes[\"k8s.pod.name\"] == \"x\" or attributes[\"http.route\"] == \"/\""]}}}}"#
    );
    let (_, interest) = sampler(&p);
    let added = |all: &[String], base: &[String]| -> Vec<String> {
        all.iter().filter(|k| !base.contains(k)).cloned().collect()
    };
    assert_eq!(
        added(&interest.span_attributes, &plain.span_attributes),
        ["key1", "key2", "http.route"]
    );
    assert_eq!(
        added(&interest.resource_attributes, &plain.resource_attributes),
        ["key1", "key2", "k8s.pod.name"]
    );
    assert_eq!(interest.events, plain.events);
    assert!(!interest.all_span_attributes && !interest.all_resource_attributes);
}

#[test]
fn config_errors_name_the_policy_and_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"name": "x", "type": "latency", "numeric_attribute": {"key": "k", "min_value": 1}}"#,
            "processors.tail_sampling.policies[0] (name: x): numeric_attribute: this section \
             belongs to policy type `numeric_attribute`, but the policy's type is `latency`",
        ),
        (
            r#"{"name": "x", "type": "and", "and": {"and_sub_policy": [
                {"name": "inner", "type": "string_attribute", "string_attribute": {"key": "k", "valeus": []}}]}}"#,
            "processors.tail_sampling.policies[0] (name: x): and.and_sub_policy[0] (name: inner): \
             string_attribute.valeus: unknown field `valeus`",
        ),
        (
            r#"{"name": "x", "type": "not", "not": {"not_sub_policy":
                {"name": "inner", "type": "latency", "latency": {"threshold_ms": -1}}}}"#,
            "processors.tail_sampling.policies[0] (name: x): not.not_sub_policy (name: inner): \
             latency.threshold_ms: must not be negative, got -1",
        ),
        (
            r#"{"name": "x", "type": "composite", "composite": {"max_total_spans_per_second": 1,
                "composite_sub_policy": [{"name": "y", "type": "always_sampel"}]}}"#,
            "processors.tail_sampling.policies[0] (name: x): composite.composite_sub_policy[0] \
             (name: y): unknown policy type \"always_sampel\"",
        ),
        (
            r#"{"name": "x", "type": "and", "and": {"and_sub_policy": []}}"#,
            "processors.tail_sampling.policies[0] (name: x): and.and_sub_policy: list at least \
             one policy",
        ),
    ];
    for (policies, want) in cases {
        let err = configure_err(policies);
        assert!(err.starts_with(want), "got:  {err}\nwant: {want}");
    }
    // Nesting is bounded.
    let mut nested = r#"{"type": "always_sample"}"#.to_owned();
    for _ in 0..=super::MAX_NESTING {
        nested = format!(r#"{{"type": "not", "not": {{"not_sub_policy": {nested}}}}}"#);
    }
    let err = configure_err(&format!(
        r#"{{"name": "deep", "type": "not", "not": {{"not_sub_policy": {nested}}}}}"#
    ));
    assert!(err.contains("nested deeper than"), "{err}");
}
