//! Tests of the sampler through its public calls, with batches built by the host-side writer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tracekeeper_abi::{
    BatchWriter, Completeness, Decision, DecisionReader, SpanFixed, SpanId, ThresholdOp, TraceId,
};

use super::*;
use crate::threshold;
use crate::trace::{STATUS_ERROR, STATUS_OK, STATUS_UNSET};

const SEC: u64 = 1_000_000_000;
/// An arbitrary host clock origin, far from 0.
const T0: u64 = 1_700_000_000 * SEC;

/// A trace id whose low 56 bits (its randomness) are `n`'s.
fn tid(n: u64) -> TraceId {
    let mut b = [0xa5; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    TraceId(b)
}

fn sid(n: u64) -> SpanId {
    SpanId(n.to_be_bytes())
}

#[derive(Clone, Copy)]
struct S {
    trace: TraceId,
    id: u64,
    parent: u64,
    status: u8,
    trace_state: &'static str,
}

fn s(trace: TraceId, id: u64, parent: u64) -> S {
    S {
        trace,
        id,
        parent,
        status: STATUS_UNSET,
        trace_state: "",
    }
}

fn batch(spans: &[S]) -> Vec<u8> {
    let mut w = BatchWriter::new();
    let (res, mut attrs) = w.begin_resource();
    w.attr_indexed(&mut attrs, 0).str(b"checkout");
    w.end_section(attrs);
    for sp in spans {
        let fixed = SpanFixed {
            trace_id: sp.trace,
            span_id: sid(sp.id),
            parent_span_id: sid(sp.parent),
            start_unix_nano: 1,
            end_unix_nano: 2,
            encoded_len: 300,
            resource: res,
            kind: 2,
            status_code: sp.status,
            flags: 1,
        };
        w.begin_span(&fixed, b"op", sp.trace_state.as_bytes());
        for _ in 0..3 {
            let section = w.begin_section();
            w.end_section(section);
        }
    }
    w.finish()
}

#[derive(Debug, Clone, PartialEq)]
struct D {
    trace_id: TraceId,
    decision: Decision,
    completeness: Completeness,
    threshold: ThresholdOp,
    policy: String,
    missing: Vec<String>,
}

fn read(buf: &[u8]) -> (u64, Vec<D>) {
    let r = DecisionReader::new(buf).unwrap();
    let next_due = r.next_due();
    let ds = r
        .map(|d| {
            let d = d.unwrap();
            D {
                trace_id: d.trace_id,
                decision: d.decision,
                completeness: d.completeness,
                threshold: d.threshold,
                policy: d.policy.to_owned(),
                missing: d.missing().map(str::to_owned).collect(),
            }
        })
        .collect();
    (next_due, ds)
}

/// The DESIGN default policies with a configurable baseline percentage, decision_wait 10s.
fn config(pct: f64) -> String {
    format!(
        r#"{{"tail_sampling": {{"decision_wait": "10s", "policies": [
            {{"name": "errors", "type": "status_code", "status_code": {{"status_codes": ["ERROR"]}}}},
            {{"name": "incomplete", "type": "completeness", "completeness": {{"incomplete": true}}}},
            {{"name": "baseline", "type": "probabilistic",
              "probabilistic": {{"sampling_percentage": {pct}}}}}
        ]}}}}"#
    )
}

fn sampler(pct: f64) -> Sampler {
    Sampler::configure(&config(pct)).unwrap().0
}

/// Ingests one batch at T0 and flushes at T0 + 1s, returning the decisions.
fn decide(s: &mut Sampler, spans: &[S]) -> Vec<D> {
    let (_, early) = read(&s.ingest(&batch(spans), T0).unwrap());
    assert!(early.is_empty(), "decided before decision_wait: {early:?}");
    read(&s.flush(T0 + SEC)).1
}

// ---- configuration ----

#[test]
fn configure_returns_the_interest() {
    let (s, interest) = Sampler::configure(&config(10.0)).unwrap();
    assert_eq!(interest.resource_attributes, ["service.name"]);
    // Completeness reads the messaging attributes and the links of consumer spans.
    assert_eq!(interest.span_attributes, crate::completeness::SPAN_KEYS);
    assert!(interest.links && !interest.events);
    assert!(!interest.all_span_attributes && !interest.all_resource_attributes);
    assert_eq!(s.config().tail_sampling.policies.len(), 3);
    assert_eq!(s.pending_traces(), 0);
}

fn configure_err(policies: &str) -> String {
    Sampler::configure(&format!(
        r#"{{"tail_sampling": {{"policies": [{policies}]}}}}"#
    ))
    .unwrap_err()
}

#[test]
fn every_collector_policy_type_is_known() {
    // A type's own errors (here: its section is missing or empty) name the policy; none of
    // them is "unknown policy type".
    for t in crate::policy::SUPPORTED {
        if let Err(err) = Sampler::configure(&format!(
            r#"{{"tail_sampling": {{"policies": [{{"name": "x", "type": "{t}"}}]}}}}"#
        )) {
            assert!(
                err.starts_with("processors.tail_sampling.policies[0] (name: x): ")
                    && !err.contains("unknown policy type"),
                "{t}: {err}"
            );
        }
    }
    let (s, _) = Sampler::configure(
        r#"{"tail_sampling": {"policies": [
            {"name": "slow", "type": "latency", "latency": {"threshold_ms": 5000}}]}}"#,
    )
    .unwrap();
    assert_eq!(s.config().tail_sampling.policies[0].name, "slow");
}

#[test]
fn unknown_policy_type_is_named() {
    let err = configure_err(r#"{"name": "x", "type": "always_sampel"}"#);
    assert!(
        err.starts_with(
            "processors.tail_sampling.policies[0] (name: x): unknown policy type \
             \"always_sampel\""
        ),
        "{err}"
    );
}

#[test]
fn bad_percentage_is_refused() {
    for pct in ["150", "-1", "100.5"] {
        let err = configure_err(&format!(
            r#"{{"name": "base", "type": "probabilistic",
                "probabilistic": {{"sampling_percentage": {pct}}}}}"#
        ));
        assert!(
            err.starts_with(
                "processors.tail_sampling.policies[0] (name: base): \
                 probabilistic.sampling_percentage: must be between 0 and 100"
            ),
            "{err}"
        );
    }
    let err = configure_err(
        r#"{"name": "base", "type": "probabilistic",
            "probabilistic": {"sampling_percentage": "ten"}}"#,
    );
    assert!(
        err.starts_with(
            "processors.tail_sampling.policies[0] (name: base): \
             probabilistic.sampling_percentage: expected a number, got string"
        ),
        "{err}"
    );
}

#[test]
fn policy_names_and_sections_are_checked() {
    let err = configure_err(
        r#"{"name": "a", "type": "always_sample"}, {"name": "a", "type": "always_sample"}"#,
    );
    assert!(
        err.starts_with("processors.tail_sampling.policies[1] (name: a): duplicate policy name"),
        "{err}"
    );
    let err = configure_err(r#"{"name": "", "type": "always_sample"}"#);
    assert!(
        err.starts_with("processors.tail_sampling.policies[0].name: "),
        "{err}"
    );
    let err = configure_err(r#"{"name": "a"}"#);
    assert!(
        err.starts_with("processors.tail_sampling.policies[0] (name: a): missing field `type`"),
        "{err}"
    );
    let err = configure_err(r#"{"name": "e", "type": "status_code"}"#);
    assert!(
        err.starts_with("processors.tail_sampling.policies[0] (name: e): status_code.status_codes"),
        "{err}"
    );
    let err = configure_err(
        r#"{"name": "e", "type": "status_code", "status_code": {"status_codes": ["FAILED"]}}"#,
    );
    assert!(
        err.starts_with(
            "processors.tail_sampling.policies[0] (name: e): status_code.status_codes[0]: \
             unknown variant"
        ),
        "{err}"
    );
    // hash_salt is accepted, without effect: decisions come from the trace's randomness alone.
    let salted = |salt: &str| {
        let cfg = format!(
            r#"{{"tail_sampling": {{"policies": [{{"name": "p", "type": "probabilistic",
                "probabilistic": {{"hash_salt": "{salt}", "sampling_percentage": 50}}}}]}}}}"#
        );
        let mut s0 = Sampler::configure(&cfg).unwrap().0;
        let spans: Vec<S> = (0..64).map(|i| s(tid(i << 50), 1, 0)).collect();
        decide(&mut s0, &spans)
    };
    let a = salted("abc");
    assert_eq!(a, salted("xyz"));
    assert_eq!(
        a.iter().filter(|d| d.decision == Decision::Sampled).count(),
        32
    );
}

// ---- decisions ----

#[test]
fn error_trace_is_kept_by_status_code() {
    let t = tid(0); // randomness 0: never kept by the baseline
    let mut root = s(t, 1, 0);
    root.status = STATUS_OK;
    let mut child = s(t, 2, 1);
    child.status = STATUS_ERROR;
    let ds = decide(&mut sampler(10.0), &[root, child]);
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].trace_id, t);
    assert_eq!(ds[0].decision, Decision::Sampled);
    assert_eq!(ds[0].policy, "errors");
    assert_eq!(ds[0].threshold, ThresholdOp::Keep);
    assert_eq!(ds[0].completeness, Completeness::Complete);
    assert!(ds[0].missing.is_empty());
}

#[test]
fn orphan_is_incomplete_and_kept() {
    let t = tid(0);
    let ds = decide(
        &mut sampler(10.0),
        &[s(t, 1, 0), s(t, 2, 1), s(t, 3, 0xdead_beef_0000_0042)],
    );
    assert_eq!(ds[0].decision, Decision::Sampled);
    assert_eq!(ds[0].policy, "incomplete");
    assert_eq!(ds[0].completeness, Completeness::Incomplete);
    assert_eq!(ds[0].missing, ["parent:deadbeef00000042"]);
    assert_eq!(ds[0].threshold, ThresholdOp::Keep);
}

#[test]
fn missing_root_is_reported() {
    let t = tid(0);
    let ds = decide(&mut sampler(10.0), &[s(t, 2, 1), s(t, 1, 7), s(t, 3, 1)]);
    assert_eq!(ds[0].completeness, Completeness::Incomplete);
    assert_eq!(ds[0].missing, ["root", "parent:0000000000000007"]);
    assert_eq!(ds[0].policy, "incomplete");
}

#[test]
fn children_before_parents_across_batches_are_complete() {
    let t = tid(0);
    let mut s0 = sampler(0.0);
    let (_, ds) = read(&s0.ingest(&batch(&[s(t, 3, 2), s(t, 4, 2)]), T0).unwrap());
    assert!(ds.is_empty());
    let (_, ds) = read(&s0.ingest(&batch(&[s(t, 2, 1)]), T0 + SEC).unwrap());
    assert!(ds.is_empty());
    let (_, ds) = read(&s0.ingest(&batch(&[s(t, 1, 0)]), T0 + 2 * SEC).unwrap());
    assert!(ds.is_empty());
    let (next, ds) = read(&s0.tick(T0 + 10 * SEC));
    assert_eq!(next, 0);
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].completeness, Completeness::Complete);
    assert!(ds[0].missing.is_empty());
    assert_eq!(ds[0].decision, Decision::NotSampled);
    assert_eq!(ds[0].policy, "");
}

#[test]
fn baseline_zero_drops_a_complete_ok_trace() {
    // Randomness at its maximum: only p = 0 rejects it.
    let t = tid(u64::MAX);
    let mut root = s(t, 1, 0);
    root.status = STATUS_OK;
    let ds = decide(&mut sampler(0.0), &[root, s(t, 2, 1)]);
    assert_eq!(ds[0].decision, Decision::NotSampled);
    assert_eq!(ds[0].policy, "");
    assert_eq!(ds[0].completeness, Completeness::Complete);
    assert_eq!(ds[0].threshold, ThresholdOp::Keep);
}

#[test]
fn baseline_hundred_keeps_with_probability_one() {
    let t = tid(0); // randomness 0: kept only at p = 1
    let ds = decide(&mut sampler(100.0), &[s(t, 1, 0), s(t, 2, 1)]);
    assert_eq!(ds[0].decision, Decision::Sampled);
    assert_eq!(ds[0].policy, "baseline");
    assert_eq!(ds[0].threshold, ThresholdOp::Keep);
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
fn ten_percent_keeps_about_ten_percent_with_its_threshold() {
    const TRACES: u64 = 100_000;
    let mut s0 = sampler(10.0);
    let mut state = 42;
    let mut spans = Vec::new();
    for _ in 0..TRACES {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&splitmix(&mut state).to_le_bytes());
        b[8..].copy_from_slice(&splitmix(&mut state).to_le_bytes());
        spans.push(s(TraceId(b), 1, 0));
    }
    for chunk in spans.chunks(1000) {
        s0.ingest(&batch(chunk), T0).unwrap();
    }
    assert_eq!(s0.pending_traces(), TRACES as usize);
    let (next, ds) = read(&s0.tick(T0 + 10 * SEC));
    assert_eq!(next, 0);
    assert_eq!(ds.len(), TRACES as usize);
    let kept: Vec<&D> = ds
        .iter()
        .filter(|d| d.decision == Decision::Sampled)
        .collect();
    let ratio = kept.len() as f64 / TRACES as f64;
    assert!((0.095..=0.105).contains(&ratio), "kept {ratio}");
    let ten_percent = 0xe6666666666666;
    assert_eq!(threshold::for_probability(0.1), ten_percent);
    for d in &kept {
        assert_eq!(d.threshold, ThresholdOp::Raise(ten_percent));
        assert_eq!(d.policy, "baseline");
        assert!(d.trace_id.randomness() >= ten_percent);
    }
    for d in ds.iter().filter(|d| d.decision == Decision::NotSampled) {
        assert!(d.trace_id.randomness() < ten_percent);
    }
}

#[test]
fn decisions_depend_only_on_the_trace() {
    let mut a = sampler(10.0);
    let mut b = sampler(10.0);
    let mut state = 7;
    for _ in 0..200 {
        let t = tid(splitmix(&mut state));
        let da = decide(&mut a, &[s(t, 1, 0)]);
        let db = decide(&mut b, &[s(t, 1, 0)]);
        assert_eq!(da, db);
    }
}

#[test]
fn rv_in_tracestate_overrides_trace_id_randomness() {
    let low = tid(0); // trace id randomness 0: rejected at 10%
    let mut root = s(low, 1, 0);
    root.trace_state = "vendor=1,ot=th:0;rv:ffffffffffffff";
    let ds = decide(&mut sampler(10.0), &[root]);
    assert_eq!(ds[0].decision, Decision::Sampled);
    assert_eq!(ds[0].threshold, ThresholdOp::Raise(0xe6666666666666));

    let high = tid(u64::MAX); // trace id randomness maximal: kept at 10%
    let mut root = s(high, 1, 0);
    root.trace_state = "ot=rv:00000000000000";
    let ds = decide(&mut sampler(10.0), &[root]);
    assert_eq!(ds[0].decision, Decision::NotSampled);
    // Without rv the same trace is kept.
    let ds = decide(&mut sampler(10.0), &[s(high, 1, 0)]);
    assert_eq!(ds[0].decision, Decision::Sampled);
}

#[test]
fn sample_on_first_match_stops_at_the_first_keep() {
    let cfg = r#"{"tail_sampling": {"sample_on_first_match": true, "policies": [
        {"name": "half", "type": "probabilistic", "probabilistic": {"sampling_percentage": 50}},
        {"name": "all", "type": "always_sample"}]}}"#;
    let t = tid(u64::MAX);
    let ds = decide(&mut Sampler::configure(cfg).unwrap().0, &[s(t, 1, 0)]);
    assert_eq!(ds[0].policy, "half");
    assert_eq!(ds[0].threshold, ThresholdOp::Raise(1 << 55));
    // Without it, the certain keep of `all` wins the threshold; the name stays the first's.
    let cfg = cfg.replace(
        "\"sample_on_first_match\": true",
        "\"sample_on_first_match\": false",
    );
    let ds = decide(&mut Sampler::configure(&cfg).unwrap().0, &[s(t, 1, 0)]);
    assert_eq!(ds[0].policy, "half");
    assert_eq!(ds[0].threshold, ThresholdOp::Keep);
}

#[test]
fn complete_policy_with_incomplete_false() {
    let cfg = r#"{"tail_sampling": {"policies": [
        {"name": "whole", "type": "completeness", "completeness": {"incomplete": false}}]}}"#;
    let mut s0 = Sampler::configure(cfg).unwrap().0;
    let ds = decide(&mut s0, &[s(tid(1), 1, 0)]);
    assert_eq!(ds[0].decision, Decision::Sampled);
    assert_eq!(ds[0].policy, "whole");
    let ds = decide(&mut s0, &[s(tid(2), 2, 1)]);
    assert_eq!(ds[0].decision, Decision::NotSampled);
    assert_eq!(ds[0].completeness, Completeness::Incomplete);
}

// ---- timing ----

#[test]
fn traces_are_due_after_decision_wait() {
    let mut s0 = sampler(100.0);
    let a = tid(1);
    let b = tid(2);
    let (next, ds) = read(&s0.ingest(&batch(&[s(a, 1, 0)]), T0).unwrap());
    assert!(ds.is_empty());
    assert_eq!(next, T0 + 10 * SEC);
    let (next, ds) = read(
        &s0.ingest(&batch(&[s(b, 1, 0), s(a, 2, 1)]), T0 + 3 * SEC)
            .unwrap(),
    );
    assert!(ds.is_empty());
    assert_eq!(
        next,
        T0 + 10 * SEC,
        "a later span does not postpone a trace"
    );
    let (next, ds) = read(&s0.tick(T0 + 10 * SEC - 1));
    assert!(ds.is_empty());
    assert_eq!(next, T0 + 10 * SEC);
    let (next, ds) = read(&s0.tick(T0 + 10 * SEC));
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].trace_id, a);
    assert_eq!(next, T0 + 13 * SEC);
    assert_eq!(s0.pending_traces(), 1);
    let (next, ds) = read(&s0.tick(T0 + 20 * SEC));
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].trace_id, b);
    assert_eq!(next, 0);
    assert_eq!(s0.pending_traces(), 0);
}

#[test]
fn ingest_returns_traces_that_became_due() {
    let mut s0 = sampler(100.0);
    s0.ingest(&batch(&[s(tid(1), 1, 0)]), T0).unwrap();
    let (next, ds) = read(
        &s0.ingest(&batch(&[s(tid(2), 1, 0)]), T0 + 11 * SEC)
            .unwrap(),
    );
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].trace_id, tid(1));
    assert_eq!(next, T0 + 21 * SEC);
}

#[test]
fn root_arrival_shortens_the_wait_when_configured() {
    let cfg = r#"{"tail_sampling": {"decision_wait": "30s",
        "decision_wait_after_root_received": "2s",
        "policies": [{"name": "all", "type": "always_sample"}]}}"#;
    let mut s0 = Sampler::configure(cfg).unwrap().0;
    let t = tid(1);
    let (next, _) = read(&s0.ingest(&batch(&[s(t, 2, 1)]), T0).unwrap());
    assert_eq!(next, T0 + 30 * SEC);
    let (next, _) = read(&s0.ingest(&batch(&[s(t, 1, 0)]), T0 + 5 * SEC).unwrap());
    assert_eq!(next, T0 + 7 * SEC);
    let (_, ds) = read(&s0.tick(T0 + 7 * SEC - 1));
    assert!(ds.is_empty());
    let (next, ds) = read(&s0.tick(T0 + 7 * SEC));
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].completeness, Completeness::Complete);
    assert_eq!(next, 0, "the stale 30s entry does not count as pending");
    // A root late in the wait never postpones the decision.
    let u = tid(2);
    s0.ingest(&batch(&[s(u, 2, 1)]), T0).unwrap();
    let (next, _) = read(&s0.ingest(&batch(&[s(u, 1, 0)]), T0 + 29 * SEC).unwrap());
    assert_eq!(next, T0 + 30 * SEC);
}

#[test]
fn decide_now_decides_only_the_given_traces() {
    let mut s0 = sampler(100.0);
    s0.ingest(
        &batch(&[s(tid(1), 1, 0), s(tid(2), 1, 0), s(tid(3), 1, 0)]),
        T0,
    )
    .unwrap();
    let mut ids = Vec::new();
    ids.extend_from_slice(&tid(3).0);
    ids.extend_from_slice(&tid(99).0); // unknown: ignored
    ids.extend_from_slice(&tid(1).0);
    let (next, ds) = read(&s0.decide_now(&ids, T0 + SEC).unwrap());
    let decided: Vec<TraceId> = ds.iter().map(|d| d.trace_id).collect();
    assert_eq!(decided, [tid(3), tid(1)]);
    assert_eq!(next, T0 + 10 * SEC);
    assert_eq!(s0.pending_traces(), 1);
    // Already decided: forgotten, so deciding again gives nothing.
    let (_, ds) = read(&s0.decide_now(&ids, T0 + SEC).unwrap());
    assert!(ds.is_empty());
    assert!(s0.decide_now(&ids[..17], T0).is_err());
    // The stale queue entries of decided traces do not resurface.
    let (next, ds) = read(&s0.tick(T0 + 10 * SEC));
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].trace_id, tid(2));
    assert_eq!(next, 0);
}

#[test]
fn flush_decides_everything_pending() {
    let mut s0 = sampler(0.0);
    s0.ingest(&batch(&[s(tid(1), 1, 0)]), T0).unwrap();
    s0.ingest(&batch(&[s(tid(2), 5, 4)]), T0 + SEC).unwrap();
    let (next, ds) = read(&s0.flush(T0 + 2 * SEC));
    assert_eq!(next, 0);
    assert_eq!(ds.len(), 2);
    assert_eq!(ds[0].trace_id, tid(1));
    assert_eq!(ds[0].decision, Decision::NotSampled);
    assert_eq!(ds[1].trace_id, tid(2));
    assert_eq!(ds[1].decision, Decision::Sampled);
    assert_eq!(ds[1].missing, ["root", "parent:0000000000000004"]);
    assert_eq!(s0.pending_traces(), 0);
    let (next, ds) = read(&s0.flush(T0 + 3 * SEC));
    assert!(ds.is_empty());
    assert_eq!(next, 0);
}

#[test]
fn decided_traces_are_forgotten() {
    let mut s0 = sampler(0.0);
    let t = tid(5);
    s0.ingest(&batch(&[s(t, 1, 0)]), T0).unwrap();
    let (_, ds) = read(&s0.tick(T0 + 10 * SEC));
    assert_eq!(ds[0].missing, Vec::<String>::new());
    // A late child after the decision starts afresh: its parent is not known any more.
    s0.ingest(&batch(&[s(t, 2, 1)]), T0 + 11 * SEC).unwrap();
    let (_, ds) = read(&s0.tick(T0 + 21 * SEC));
    assert_eq!(ds[0].missing, ["root", "parent:0000000000000001"]);
}

// ---- malformed input ----

#[test]
fn malformed_batches_are_errors() {
    let mut s0 = sampler(10.0);
    assert!(s0.ingest(b"", T0).is_err());
    assert!(s0.ingest(b"XXXX\x01\x00\x00\x00", T0).is_err());
    let good = batch(&[s(tid(1), 1, 0), s(tid(2), 1, 0)]);
    assert!(s0.ingest(&good[..good.len() - 1], T0).is_err());
    let mut bad_tag = good.clone();
    bad_tag.push(0x7f);
    let err = s0.ingest(&bad_tag, T0).unwrap_err();
    assert!(err.contains("record 3"), "{err}");
    // A span whose resource index was never declared.
    let mut w = BatchWriter::new();
    w.begin_span(&SpanFixed::default(), b"x", b"");
    for _ in 0..3 {
        let section = w.begin_section();
        w.end_section(section);
    }
    assert!(s0.ingest(&w.finish(), T0).is_err());
    // Every truncation and corruption is an error or a valid batch, never a panic.
    for cut in 0..good.len() {
        let _ = s0.ingest(&good[..cut], T0);
    }
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0xff;
        let _ = s0.ingest(&b, T0);
    }
    // An empty but well-formed batch is fine.
    assert!(s0.ingest(&BatchWriter::new().finish(), T0).is_ok());
}

#[test]
fn a_new_trace_is_sized_for_the_run_of_its_spans_in_the_batch() {
    let (a, b) = (tid(1), tid(2));
    // A's three spans together, then B's two, then a late one of A (not in A's run).
    let spans = [
        s(a, 1, 0),
        s(a, 2, 1),
        s(a, 3, 1),
        s(b, 1, 0),
        s(b, 2, 1),
        s(a, 4, 1),
    ];
    let counted = batch(&spans);
    // The same batch with header flag bit 0 clear, as a writer that does not count runs sends
    // it: the reader ignores byte 60 and the sampler reads ahead instead.
    let mut uncounted = counted.clone();
    uncounted[6] &= !1;
    let mut reader = BatchReader::new(&uncounted).unwrap();
    reader.next(); // the resource
    for _ in &spans {
        let Some(Ok(Record::Span(span))) = reader.next() else {
            panic!("a span record")
        };
        assert_eq!(span.run_len(), None);
    }
    for bytes in [&counted, &uncounted] {
        let (mut sampler, _) = Sampler::configure(
            r#"{"tail_sampling": {"decision_wait": "10s", "policies": [
                {"name": "all", "type": "always_sample"}]}}"#,
        )
        .unwrap();
        sampler.ingest(bytes, T0).unwrap();
        let cap = |t: TraceId| sampler.traces.get(&t).map(|p| p.span_ids.capacity());
        assert_eq!(cap(b), Some(2));
        assert!(
            cap(a).unwrap() >= 4,
            "A still takes its span out of the run"
        );
        assert_eq!(sampler.traces.get(&a).unwrap().span_ids.len(), 4);
    }
    // The look-ahead counts spans of the trace up to another trace's span, across resources,
    // and stops at a malformed record.
    let bytes = batch(&spans[3..]);
    let mut rest = BatchReader::new(&bytes).unwrap();
    rest.next(); // the resource
    rest.next(); // B's first span
    assert_eq!(run_of(b, &rest), 2);
    assert_eq!(run_of(a, &rest), 1);
    let only_b = batch(&spans[3..5]);
    let truncated = &only_b[..only_b.len() - 3];
    let mut rest = BatchReader::new(truncated).unwrap();
    rest.next();
    rest.next();
    assert_eq!(
        run_of(b, &rest),
        1,
        "the malformed last record is not counted"
    );
}
