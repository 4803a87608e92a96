//! Late spans end to end: a span that arrives after its trace was decided follows the trace's
//! decision while the host's decision cache (`decision_cache`) remembers it — forwarded with
//! `tracekeeper.late=true` and the trace's tags when the trace was kept, dropped when it was
//! not — and, with both caches of size 0, becomes a new trace of its own: an orphan whose parent
//! is missing, kept as incomplete after `decision_wait`, without the late tag.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// A host exporting to `receiver`, `decision_wait: 1s`, errors + incomplete + a 0% baseline,
/// with the given decision cache sizes.
fn start(receiver: &Receiver, sampled: u64, non_sampled: u64) -> Host {
    let ports = Ports::new();
    let yaml = HostConfig::new(Exporter::Otlp(receiver.port))
        .decision_wait("1s")
        .yaml(&ports)
        .replacen(
            "    policies:\n",
            &format!(
                "    decision_cache: {{sampled_cache_size: {sampled}, non_sampled_cache_size: \
                 {non_sampled}}}\n    policies:\n"
            ),
            1,
        );
    assert!(yaml.contains("decision_cache"), "{yaml}");
    Host::start_yaml(ports, &yaml)
}

/// Sends `request` over OTLP/gRPC and panics on failure.
fn send(rt: &tokio::runtime::Runtime, host: &Host, request: ExportTraceServiceRequest) {
    rt.block_on(grpc_export(host.ports.grpc, request))
        .unwrap_or_else(|e| panic!("export failed: {e}\n--- stderr ---\n{}", host.stderr()));
}

/// A kept (error) trace of two spans, sent and exported; returns it and its root span id.
fn kept_trace(
    rt: &tokio::runtime::Runtime,
    host: &Host,
    receiver: &Receiver,
) -> (SentTrace, [u8; 8]) {
    let (request, sent) = error_trace("checkout", "shop", 2);
    send(rt, host, request);
    receiver.wait_for(&sent.keys(), "the error trace", host);
    let root = sent.spans[0].span_id;
    (sent, root)
}

/// A not-kept (complete, OK, one span) trace, sent and decided; returns its id and root id.
fn dropped_trace(rt: &tokio::runtime::Runtime, host: &Host) -> ([u8; 16], [u8; 8]) {
    let before = metric_sum(
        &scrape(host),
        "tracekeeper_traces_decided_total",
        &[("decision", "not_sampled")],
    );
    let trace_id = new_trace_id();
    let root = new_span_id();
    send(
        rt,
        host,
        request(
            "checkout",
            "shop",
            vec![span(&trace_id, &root, None, "browse", false)],
        ),
    );
    wait_metric_at_least(
        host,
        "tracekeeper_traces_decided_total",
        &[("decision", "not_sampled")],
        before + 1.0,
    );
    (trace_id, root)
}

fn late_tag(r: &Received) -> Option<bool> {
    match attr(&r.span.attributes, "tracekeeper.late") {
        Some(Value::BoolValue(b)) => Some(*b),
        _ => None,
    }
}

#[test]
fn late_spans_follow_the_cached_decision() {
    let rt = runtime();
    let receiver = Receiver::start();
    let host = start(&receiver, 1000, 1000);

    // Kept trace: the late spans (two together in one request, which the worker looks up as
    // one run) are forwarded at once with the trace's tags and late=true.
    let (kept, kept_root) = kept_trace(&rt, &host, &receiver);
    let late_ids = [new_span_id(), new_span_id()];
    send(
        &rt,
        &host,
        request(
            "checkout",
            "shop",
            late_ids
                .iter()
                .map(|id| span(&kept.trace_id, id, Some(&kept_root), "late", false))
                .collect(),
        ),
    );
    let wanted: Vec<_> = late_ids
        .iter()
        .map(|id| (kept.trace_id.to_vec(), id.to_vec()))
        .collect();
    let got = receiver.wait_for(&wanted, "the late spans of the kept trace", &host);
    for late_id in &late_ids {
        let late: Vec<&Received> = spans_of(&got, &kept.trace_id)
            .into_iter()
            .filter(|r| r.span.span_id == *late_id)
            .collect();
        assert_eq!(
            late.len(),
            1,
            "the late span was exported {} times",
            late.len()
        );
        assert_eq!(
            late_tag(late[0]),
            Some(true),
            "attributes: {:?}",
            late[0].span.attributes
        );
        assert_eq!(
            late[0].attr_str("tracekeeper.policy").as_deref(),
            Some("errors")
        );
        assert_eq!(
            late[0].attr_str("tracekeeper.completeness").as_deref(),
            Some("complete")
        );
    }
    // The trace's own spans were not tagged late.
    for r in spans_of(&got, &kept.trace_id)
        .iter()
        .filter(|r| !late_ids.iter().any(|id| r.span.span_id == id[..]))
    {
        assert_eq!(
            late_tag(r),
            None,
            "span {} of the decided trace",
            hex(&r.span.span_id)
        );
    }

    // Not-kept trace: the late spans (again two together) are counted and dropped.
    let (dropped, dropped_root) = dropped_trace(&rt, &host);
    let late_dropped = [new_span_id(), new_span_id()];
    send(
        &rt,
        &host,
        request(
            "checkout",
            "shop",
            late_dropped
                .iter()
                .map(|id| span(&dropped, id, Some(&dropped_root), "late", false))
                .collect(),
        ),
    );
    wait_metric_at_least(&host, "tracekeeper_spans_late_total", &[], 4.0);
    wait_metric_at_least(
        &host,
        "tracekeeper_spans_dropped_total",
        &[("reason", "late_not_sampled")],
        2.0,
    );
    // Had it been buffered as a new (orphan, hence incomplete) trace, it would be exported
    // before a marker trace sent after it; the marker arrives and the late spans do not.
    let (marker, marker_sent) = error_trace("checkout", "shop", 1);
    send(&rt, &host, marker);
    let got = receiver.wait_for(&marker_sent.keys(), "the marker trace", &host);
    assert_absent(
        &got,
        &dropped,
        "the late spans of a trace that was not kept",
    );
    host_ok(host);
}

#[test]
fn without_a_decision_cache_a_late_span_is_a_new_incomplete_trace() {
    let rt = runtime();
    let receiver = Receiver::start();
    let host = start(&receiver, 0, 0);

    let (kept, kept_root) = kept_trace(&rt, &host, &receiver);
    let (dropped, dropped_root) = dropped_trace(&rt, &host);
    let late_kept = new_span_id();
    let late_dropped = new_span_id();
    send(
        &rt,
        &host,
        request(
            "checkout",
            "shop",
            vec![
                span(&kept.trace_id, &late_kept, Some(&kept_root), "late", false),
                span(&dropped, &late_dropped, Some(&dropped_root), "late", false),
            ],
        ),
    );
    // Nothing remembers the decisions: each late span starts a trace whose parent is missing,
    // and the `incomplete` policy keeps it after decision_wait — without the late tag, and for
    // the trace that was not kept too.
    let keys = [
        (kept.trace_id.to_vec(), late_kept.to_vec()),
        (dropped.to_vec(), late_dropped.to_vec()),
    ];
    let got = receiver.wait_for(&keys, "both late spans, as new traces", &host);
    for (trace, span_id, parent) in [
        (&kept.trace_id, late_kept, kept_root),
        (&dropped, late_dropped, dropped_root),
    ] {
        let r: Vec<&Received> = spans_of(&got, trace)
            .into_iter()
            .filter(|r| r.span.span_id == span_id)
            .collect();
        assert_eq!(r.len(), 1);
        assert_eq!(
            late_tag(r[0]),
            None,
            "attributes: {:?}",
            r[0].span.attributes
        );
        assert_eq!(
            r[0].attr_str("tracekeeper.policy").as_deref(),
            Some("incomplete")
        );
        assert_eq!(
            r[0].attr_str("tracekeeper.completeness").as_deref(),
            Some("incomplete")
        );
        assert_missing_parent(&r, &parent);
    }
    assert_eq!(
        metric_sum(&scrape(&host), "tracekeeper_spans_late_total", &[]),
        0.0,
        "no span can be recognised as late without a cache"
    );
    host_ok(host);
}

/// Shuts the host down and checks it exits cleanly.
fn host_ok(mut host: Host) {
    host.assert_healthy();
    host.terminate_cleanly();
}
