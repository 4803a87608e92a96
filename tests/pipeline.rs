//! End-to-end tests of the span pipeline: the real `tracekeeper` binary on loopback ports, fed by
//! the OpenTelemetry Rust SDK (OTLP gRPC and HTTP/protobuf), by hand-written OTLP JSON and by raw
//! protobuf requests, read back through a real OTLP/gRPC receiver and through the file exporter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prost::Message as _;

/// How the SDK sends its spans to the host.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Grpc,
    HttpProtobuf,
}

/// A host deciding after 1 s with the default policies, the baseline at `percent`, exporting
/// over OTLP/gRPC to a receiver of the test's own.
fn host_at_baseline(percent: f64) -> (Receiver, Host) {
    let receiver = Receiver::start();
    let host = Host::start(
        &HostConfig::new(Exporter::Otlp(receiver.port))
            .decision_wait("1s")
            .baseline(percent),
    );
    (receiver, host)
}

/// A root span (status OK) of trace `trace_id` with a new span id, and the record of it that
/// the checks compare the export with.
fn root_span(
    trace_id: [u8; 16],
    service: &str,
    scope: &str,
    name: &str,
) -> (opentelemetry_proto::tonic::trace::v1::Span, SentTrace) {
    let span_id = new_span_id();
    let mut sent = SentTrace::new(trace_id);
    sent.add(span_id, service, scope);
    (span(&trace_id, &span_id, None, name, false), sent)
}

/// Sends `spans` to the host in one OTLP/gRPC request under `service` and `scope`.
fn export_spans(
    runtime: &tokio::runtime::Runtime,
    host: &Host,
    service: &str,
    scope: &str,
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
) {
    runtime
        .block_on(grpc_export(host.ports.grpc, request(service, scope, spans)))
        .expect("gRPC export");
}

/// What one SDK session sent: an error trace, an orphan trace (whose parent never arrives, with
/// the id of that parent) and a complete OK trace.
struct SdkTraces {
    error: SentTrace,
    orphan: SentTrace,
    orphan_parent: [u8; 8],
    ok: SentTrace,
}

/// Sends the three traces with the OpenTelemetry SDK (resource `service.name` = `service`, tracer
/// scope = `scope`) over `transport`, and flushes; panics if the SDK reports an export failure.
fn send_with_sdk(
    runtime: &tokio::runtime::Runtime,
    host: &Host,
    transport: Transport,
    service: &str,
    scope: &str,
) -> SdkTraces {
    let exporter = match transport {
        Transport::Grpc => {
            // The tonic channel spawns its worker on the runtime it is built in.
            let _guard = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(host.grpc_url())
                .build()
                .expect("build the OTLP gRPC span exporter")
        }
        Transport::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(host.http_url("/v1/traces"))
            .build()
            .expect("build the OTLP HTTP span exporter"),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer(scope.to_owned());
    let ids = |cx: &Context| {
        let sc = cx.span().span_context().clone();
        (sc.trace_id().to_bytes(), sc.span_id().to_bytes())
    };

    // An error trace: root "checkout" with a child "charge" whose status is Error.
    let root = Context::new().with_span(tracer.start_with_context("checkout", &Context::new()));
    let mut child = tracer.start_with_context("charge", &root);
    child.set_attribute(KeyValue::new("payment.provider", "acme"));
    child.set_status(Status::error("card declined"));
    let child_ids = (
        child.span_context().trace_id().to_bytes(),
        child.span_context().span_id().to_bytes(),
    );
    child.end();
    let (trace_id, root_id) = ids(&root);
    root.span().end();
    let mut error = SentTrace::new(trace_id);
    error.add(root_id, service, scope);
    error.add(child_ids.1, service, scope);

    // An orphan trace: a child (and its own child) of a remote parent that is never sent.
    let orphan_trace = TraceId::from_bytes(new_trace_id());
    let orphan_parent = new_span_id();
    let remote = SpanContext::new(
        orphan_trace,
        SpanId::from_bytes(orphan_parent),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let parent_cx = Context::new().with_remote_span_context(remote);
    let orphan_child = parent_cx.with_span(tracer.start_with_context("consume", &parent_cx));
    let grandchild = tracer.start_with_context("store", &orphan_child);
    let grandchild_id = grandchild.span_context().span_id().to_bytes();
    drop(grandchild); // dropping an SDK span ends it
    let (trace_id, child_id) = ids(&orphan_child);
    assert_eq!(
        trace_id,
        orphan_trace.to_bytes(),
        "the SDK kept the remote trace id"
    );
    orphan_child.span().end();
    let mut orphan = SentTrace::new(trace_id);
    orphan.add(child_id, service, scope);
    orphan.add(grandchild_id, service, scope);

    // A complete OK trace.
    let root = Context::new().with_span(tracer.start_with_context("browse", &Context::new()));
    let mut child = tracer.start_with_context("render", &root);
    child.set_status(Status::Ok);
    let child_id = child.span_context().span_id().to_bytes();
    child.end();
    let (trace_id, root_id) = ids(&root);
    root.span().end();
    let mut ok = SentTrace::new(trace_id);
    ok.add(root_id, service, scope);
    ok.add(child_id, service, scope);

    provider.force_flush().unwrap_or_else(|e| {
        panic!(
            "SDK export over {transport:?} failed: {e}\n--- host stderr ---\n{}",
            host.stderr()
        )
    });
    provider.shutdown().expect("SDK shutdown");
    SdkTraces {
        error,
        orphan,
        orphan_parent,
        ok,
    }
}

/// With the baseline at 0%, the SDK's error and orphan traces come out whole and tagged through
/// the OTLP gRPC exporter, over both receiving protocols; the complete OK traces never do.
#[test]
fn sdk_traces_errors_and_orphans_kept_ok_dropped_at_zero_percent() {
    let receiver = Receiver::start();
    let mut host = Host::start(&HostConfig::new(Exporter::Otlp(receiver.port)).decision_wait("1s"));
    let runtime = runtime();

    let grpc = send_with_sdk(&runtime, &host, Transport::Grpc, "sdk-grpc", "scope-grpc");
    let http = send_with_sdk(
        &runtime,
        &host,
        Transport::HttpProtobuf,
        "sdk-http",
        "scope-http",
    );

    // The kept traces come out once they are due, while the host runs.
    let mut keys = Vec::new();
    for sent in [&grpc, &http] {
        keys.extend(sent.error.keys());
        keys.extend(sent.orphan.keys());
    }
    receiver.wait_for(&keys, "the error and orphan traces", &host);

    // A clean shutdown decides and exports whatever is still pending, so after it the OK
    // traces' absence is final, not a matter of timing.
    host.terminate_cleanly();
    let received = receiver.spans();
    for sent in [&grpc, &http] {
        assert_kept(&received, &sent.error, "errors", "complete");
        let orphan = assert_kept(&received, &sent.orphan, "incomplete", "incomplete");
        assert_missing_parent(&orphan, &sent.orphan_parent);
        assert_absent(
            &received,
            &sent.ok.trace_id,
            "a complete OK trace at a 0% baseline",
        );
    }
    // The untouched attributes survive tagging.
    let charge = received
        .iter()
        .find(|r| r.span.name == "charge" && r.service() == "sdk-grpc")
        .expect("the charge span");
    assert_eq!(charge.attr_str("payment.provider").as_deref(), Some("acme"));
}

/// With the baseline at 100%, the SDK's complete OK traces come out, tagged `baseline`.
#[test]
fn sdk_ok_traces_kept_at_hundred_percent() {
    let (receiver, mut host) = host_at_baseline(100.0);
    let runtime = runtime();

    let grpc = send_with_sdk(&runtime, &host, Transport::Grpc, "sdk-grpc", "scope-grpc");
    let http = send_with_sdk(
        &runtime,
        &host,
        Transport::HttpProtobuf,
        "sdk-http",
        "scope-http",
    );
    let mut keys = grpc.ok.keys();
    keys.extend(http.ok.keys());
    keys.extend(grpc.error.keys());
    keys.extend(http.orphan.keys());
    let received = receiver.wait_for(&keys, "the OK traces at a 100% baseline", &host);
    for sent in [&grpc, &http] {
        assert_kept(&received, &sent.ok, "baseline", "complete");
    }
    // Errors and orphans are still attributed to their own policies, not to the baseline.
    assert_kept(&received, &grpc.error, "errors", "complete");
    let orphan = assert_kept(&received, &http.orphan, "incomplete", "incomplete");
    assert_missing_parent(&orphan, &http.orphan_parent);
    host.terminate_cleanly();
}

/// Kept spans share export requests up to the collector's batch size (8192 spans): 10 000
/// single-span traces decided at once go out as one request of 8192 spans and one of the 1808
/// left, which follows within the export linger although nothing else arrives. One worker, so
/// that all the traces are decided and exported by one (the default depends on the CPUs).
#[test]
fn kept_spans_are_exported_in_requests_of_at_most_8192_spans() {
    let receiver = Receiver::start();
    let ports = Ports::new();
    let config = HostConfig::new(Exporter::Otlp(receiver.port))
        .decision_wait("1s")
        .baseline(100.0)
        .yaml(&ports)
        + "guest: {workers: 1}\n";
    let mut host = Host::start_yaml(ports, &config);
    let runtime = runtime();
    let mut sent = Vec::new();
    let mut spans = Vec::new();
    for _ in 0..10_000 {
        let (span, trace) = root_span(new_trace_id(), "batching", "batch-scope", "batch-member");
        spans.push(span);
        sent.push(trace);
    }
    export_spans(&runtime, &host, "batching", "batch-scope", spans);
    let keys: Vec<_> = sent.iter().flat_map(SentTrace::keys).collect();
    let received = receiver.wait_for(&keys, "10 000 kept single-span traces", &host);
    assert_eq!(received.len(), 10_000, "each span exactly once");
    let sizes: Vec<usize> = receiver
        .requests()
        .iter()
        .map(|r| {
            r.resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum()
        })
        .collect();
    assert_eq!(sizes, vec![8192, 1808], "spans per export request");
    host.terminate_cleanly();
}

/// The gRPC exporter frames its requests itself (gzip at level 1, zstd, or none) and reads the
/// target's answers: a retryable status is retried until the target takes the request, a
/// partial success counts the spans it names as dropped (`export_rejected`), a permanent status
/// drops the request (`export_failed`). The target answers gzip-compressed where allowed.
#[test]
fn grpc_exporter_compresses_retries_and_reads_partial_success_and_permanent_errors() {
    for compression in ["gzip", "zstd", "none"] {
        let receiver = Receiver::start_scripted(vec![
            Err(tonic::Status::unavailable("busy, try again")),
            Ok(3),
            Err(tonic::Status::invalid_argument("not this one")),
        ]);
        let ports = Ports::new();
        let config = HostConfig::new(Exporter::Otlp(receiver.port))
            .decision_wait("1s")
            .baseline(100.0)
            .yaml(&ports)
            .replace(
                "tls: {insecure: true}}",
                &format!("tls: {{insecure: true}}, compression: {compression}}}"),
            );
        assert!(config.contains(&format!("compression: {compression}")));
        let mut host = Host::start_yaml(ports, &config);
        let runtime = runtime();
        // A trace of 5 spans: refused once (and retried), then taken with 3 spans rejected.
        let tid = new_trace_id();
        let root = new_span_id();
        let mut sent = SentTrace::new(tid);
        sent.add(root, "answers", "answers-scope");
        let mut spans = vec![span(&tid, &root, None, "root", false)];
        for _ in 0..4 {
            let child = new_span_id();
            sent.add(child, "answers", "answers-scope");
            spans.push(span(&tid, &child, Some(&root), "child", false));
        }
        export_spans(&runtime, &host, "answers", "answers-scope", spans);
        receiver.wait_for(&sent.keys(), "the trace taken at the second attempt", &host);
        // Then a trace the target refuses for good.
        let (refused, _) = root_span(new_trace_id(), "answers", "answers-scope", "refused");
        export_spans(&runtime, &host, "answers", "answers-scope", vec![refused]);
        let dropped = |samples: &[Sample], reason| {
            metric_sum(
                samples,
                "tracekeeper_spans_dropped_total",
                &[("reason", reason)],
            )
        };
        let deadline = std::time::Instant::now() + EXPORT_TIMEOUT;
        let samples = loop {
            let samples = scrape(&host);
            if dropped(&samples, "export_failed") >= 1.0 {
                break samples;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{compression}: the refused trace was never counted: {samples:#?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        assert_eq!(dropped(&samples, "export_failed"), 1.0, "{compression}");
        assert_eq!(dropped(&samples, "export_rejected"), 3.0, "{compression}");
        assert_eq!(
            metric_sum(&samples, "tracekeeper_export_retries_total", &[]),
            1.0,
            "{compression}"
        );
        assert_eq!(
            metric_sum(&samples, "tracekeeper_spans_exported_total", &[]),
            2.0,
            "{compression}: 5 spans taken, 3 of them rejected"
        );
        assert_eq!(receiver.requests().len(), 1, "{compression}");
        host.terminate_cleanly();
    }
}

/// An endpoint that answers HTTP/2 200 without a gRPC status (not a gRPC server) does not count
/// as a delivery: the request is dropped as a failed export, not reported exported.
#[test]
fn grpc_exporter_counts_an_answer_without_grpc_status_as_failed() {
    let runtime = runtime();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async { "not a gRPC endpoint" });
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut host = Host::start(
        &HostConfig::new(Exporter::Otlp(port))
            .decision_wait("1s")
            .baseline(100.0),
    );
    let (span, _) = root_span(new_trace_id(), "answers", "answers-scope", "lost?");
    export_spans(&runtime, &host, "answers", "answers-scope", vec![span]);
    let deadline = std::time::Instant::now() + EXPORT_TIMEOUT;
    let samples = loop {
        let samples = scrape(&host);
        let failed = metric_sum(
            &samples,
            "tracekeeper_spans_dropped_total",
            &[("reason", "export_failed")],
        );
        if failed >= 1.0 {
            break samples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the export was never counted as failed: {samples:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        metric_sum(&samples, "tracekeeper_spans_exported_total", &[]),
        0.0
    );
    assert!(
        host.stderr().contains("no grpc-status"),
        "the log names why: {}",
        host.stderr()
    );
    host.terminate_cleanly();
}

/// At a 50% baseline the decision follows the trace id's randomness (its low 56 bits): a trace
/// whose randomness is far above the threshold is kept with `ot=th:8` (threshold 2^55) in its
/// tracestate, one far below it is not.
#[test]
fn baseline_samples_by_trace_id_randomness_and_writes_threshold() {
    let (receiver, mut host) = host_at_baseline(50.0);
    let runtime = runtime();
    let mut high = Vec::new();
    let mut low = Vec::new();
    let mut spans = Vec::new();
    for i in 0..8u8 {
        // Randomness bytes 9..16: 0xff.. (kept at any percentage above 0) or 0x00..0x01 (dropped
        // at any percentage below 100).
        let mut keep_id = new_trace_id();
        keep_id[9..].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, i]);
        let mut drop_id = new_trace_id();
        drop_id[9..].copy_from_slice(&[0, 0, 0, 0, 0, 0, i + 1]);
        for (id, list) in [(keep_id, &mut high), (drop_id, &mut low)] {
            let (mut s, sent) = root_span(id, "sampled-svc", "sampled-scope", "probe");
            s.trace_state = "vendor=x".to_owned();
            spans.push(s);
            list.push(sent);
        }
    }
    export_spans(&runtime, &host, "sampled-svc", "sampled-scope", spans);
    let keys: Vec<_> = high.iter().flat_map(SentTrace::keys).collect();
    receiver.wait_for(&keys, "the high-randomness traces at 50%", &host);
    host.terminate_cleanly();
    let received = receiver.spans();
    for sent in &high {
        let got = assert_kept(&received, sent, "baseline", "complete");
        let state = &got[0].span.trace_state;
        let th = state
            .split(',')
            .filter_map(|member| member.trim().strip_prefix("ot="))
            .flat_map(|ot| ot.split(';'))
            .find_map(|field| field.strip_prefix("th:"))
            .unwrap_or_else(|| panic!("no ot=th in the tracestate {state:?} of a 50% keep"));
        assert!(
            !th.is_empty() && th.len() <= 14 && th.chars().all(|c| c.is_ascii_hexdigit()),
            "ot=th:{th} is not 1 to 14 hex digits"
        );
        let threshold = u64::from_str_radix(&format!("{th:0<14}"), 16).unwrap();
        assert_eq!(
            threshold,
            1 << 55,
            "threshold of a 50% keep, from ot=th:{th}"
        );
        assert!(
            state.contains("vendor=x"),
            "the incoming tracestate member was kept: {state:?}"
        );
    }
    for sent in &low {
        assert_absent(&received, &sent.trace_id, "a low-randomness trace at 50%");
    }
}

/// A hand-written OTLP JSON request (and a gzip-compressed one) posted over HTTP reaches the file
/// exporter, whose lines parse as OTLP JSON and carry the tags.
#[test]
fn otlp_json_request_reaches_file_exporter() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("kept.jsonl");
    let mut host = Host::start(&HostConfig::new(Exporter::File(path.clone())).decision_wait("1s"));
    let client = http_client();
    let now = now_nanos();
    let (error_tid, error_root, error_child) = (
        hex(&new_trace_id()),
        hex(&new_span_id()),
        hex(&new_span_id()),
    );
    let (orphan_tid, orphan_span, orphan_parent) =
        (hex(&new_trace_id()), hex(&new_span_id()), new_span_id());
    let (ok_tid, ok_span) = (hex(&new_trace_id()), hex(&new_span_id()));
    let orphan_parent_hex = hex(&orphan_parent);
    let (start, end) = (now, now + 5_000_000);
    // Official OTLP JSON: camelCase keys, hex ids, integer enums, 64-bit integers as strings.
    let body = format!(
        r#"{{"resourceSpans":[{{
  "resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"json-svc"}}}},
                             {{"key":"host.cores","value":{{"intValue":"2"}}}}]}},
  "scopeSpans":[{{
    "scope":{{"name":"json-scope","version":"0.1"}},
    "spans":[
      {{"traceId":"{error_tid}","spanId":"{error_root}","name":"GET /cart","kind":2,
        "startTimeUnixNano":"{start}","endTimeUnixNano":"{end}","status":{{}}}},
      {{"traceId":"{error_tid}","spanId":"{error_child}","parentSpanId":"{error_root}","name":"SELECT cart","kind":3,
        "startTimeUnixNano":"{start}","endTimeUnixNano":"{end}",
        "attributes":[{{"key":"db.system","value":{{"stringValue":"postgresql"}}}}],
        "status":{{"code":2,"message":"timeout"}}}},
      {{"traceId":"{orphan_tid}","spanId":"{orphan_span}","parentSpanId":"{orphan_parent_hex}","name":"process order","kind":5,
        "startTimeUnixNano":"{start}","endTimeUnixNano":"{end}"}},
      {{"traceId":"{ok_tid}","spanId":"{ok_span}","name":"GET /health","kind":2,
        "startTimeUnixNano":"{start}","endTimeUnixNano":"{end}","status":{{"code":1}}}}
    ]}}]}}]}}"#
    );
    let answer = http_post(
        &client,
        &host.http_url("/v1/traces"),
        &[("content-type", "application/json")],
        body.into_bytes(),
    )
    .expect("POST OTLP JSON");
    assert_eq!(
        answer.status,
        200,
        "OTLP JSON answer: {answer:?}\n{}",
        host.stderr()
    );
    assert!(
        answer.content_type.starts_with("application/json"),
        "a JSON request gets a JSON answer, got content-type {:?}",
        answer.content_type
    );
    let response: ExportTraceServiceResponse = serde_json::from_slice(&answer.body)
        .expect("the answer is an OTLP JSON ExportTraceServiceResponse");
    assert!(
        response
            .partial_success
            .is_none_or(|p| p.rejected_spans == 0),
        "nothing was rejected"
    );

    // The same encoding, gzip-compressed.
    let (gz_tid, gz_span) = (new_trace_id(), new_span_id());
    let gz_body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"json-gz"}}}}]}},
  "scopeSpans":[{{"scope":{{"name":"gz-scope"}},"spans":[
    {{"traceId":"{}","spanId":"{}","name":"compressed","kind":1,"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}",
      "status":{{"code":2}}}}]}}]}}]}}"#,
        hex(&gz_tid),
        hex(&gz_span)
    );
    let answer = http_post(
        &client,
        &host.http_url("/v1/traces"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gzip(gz_body.as_bytes()),
    )
    .expect("POST gzip OTLP JSON");
    assert_eq!(
        answer.status,
        200,
        "gzip OTLP JSON answer: {answer:?}\n{}",
        host.stderr()
    );

    let id = |h: &str| {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
    };
    let mut error = SentTrace::new(id(&error_tid).try_into().unwrap());
    error.add(
        id(&error_root).try_into().unwrap(),
        "json-svc",
        "json-scope",
    );
    error.add(
        id(&error_child).try_into().unwrap(),
        "json-svc",
        "json-scope",
    );
    let mut orphan = SentTrace::new(id(&orphan_tid).try_into().unwrap());
    orphan.add(
        id(&orphan_span).try_into().unwrap(),
        "json-svc",
        "json-scope",
    );
    let mut compressed = SentTrace::new(gz_tid);
    compressed.add(gz_span, "json-gz", "gz-scope");
    let mut keys = error.keys();
    keys.extend(orphan.keys());
    keys.extend(compressed.keys());
    wait_for_file(
        &path,
        &keys,
        "the JSON-posted traces in the file exporter output",
        &host,
    );

    host.terminate_cleanly();
    let requests = read_jsonl(&path);
    assert!(!requests.is_empty());
    let received = flatten(&requests);
    let got = assert_kept(&received, &error, "errors", "complete");
    let select = got.iter().find(|r| r.span.name == "SELECT cart").unwrap();
    assert_eq!(select.span.kind, 3, "span kind survives");
    assert_eq!(select.attr_str("db.system").as_deref(), Some("postgresql"));
    assert_eq!(select.span.status.as_ref().map(|s| s.code), Some(2));
    let got = assert_kept(&received, &orphan, "incomplete", "incomplete");
    assert_missing_parent(&got, &orphan_parent);
    assert_kept(&received, &compressed, "errors", "complete");
    assert_absent(
        &received,
        &id(&ok_tid),
        "a complete OK trace at a 0% baseline",
    );

    // Each line is one ExportTraceServiceRequest in the official encoding: hex ids on the wire.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(&format!("\"traceId\":\"{error_tid}\"")),
        "hex trace ids in the file:\n{text}"
    );
    assert!(
        text.contains("\"resourceSpans\""),
        "camelCase keys in the file"
    );
}

/// A trace whose spans arrive in three requests, children before parents and under two
/// resources, is exported once, whole, tagged `complete`; a complete OK trace split the same way
/// is not mistaken for an orphan trace (which the `incomplete` policy would keep).
#[test]
fn trace_split_across_requests_children_first_is_judged_once_whole() {
    let receiver = Receiver::start();
    let mut host = Host::start(&HostConfig::new(Exporter::Otlp(receiver.port)).decision_wait("3s"));
    let runtime = runtime();

    let send_split = |error: bool| {
        let trace_id = new_trace_id();
        let (root, child, grandchild) = (new_span_id(), new_span_id(), new_span_id());
        let mut sent = SentTrace::new(trace_id);
        let parts = [
            ("db", "db-scope", grandchild, Some(child), "query", error),
            ("api", "api-scope", child, Some(root), "handle", false),
            ("api", "api-scope", root, None, "GET /orders", false),
        ];
        for (service, scope, id, parent, name, err) in parts {
            let s = span(
                &trace_id,
                &id,
                parent.as_ref().map(|p| p.as_slice()),
                name,
                err,
            );
            let response = runtime
                .block_on(grpc_export(
                    host.ports.grpc,
                    request(service, scope, vec![s]),
                ))
                .expect("gRPC export of one part");
            assert!(
                response
                    .partial_success
                    .is_none_or(|p| p.rejected_spans == 0),
                "no span rejected"
            );
            sent.add(id, service, scope);
        }
        sent
    };
    let error = send_split(true);
    let ok = send_split(false);

    receiver.wait_for(&error.keys(), "the split error trace", &host);
    host.terminate_cleanly();
    let received = receiver.spans();
    assert_kept(&received, &error, "errors", "complete");
    assert_absent(
        &received,
        &ok.trace_id,
        "a complete split OK trace at a 0% baseline",
    );
}

/// SIGTERM with traces pending (decision_wait far away) decides and exports them before the
/// process exits with 0.
#[test]
fn sigterm_exports_pending_traces() {
    let receiver = Receiver::start();
    let mut host =
        Host::start(&HostConfig::new(Exporter::Otlp(receiver.port)).decision_wait("60s"));
    let runtime = runtime();

    let (grpc_request, grpc_trace) = error_trace("pending-grpc", "pending-scope", 3);
    runtime
        .block_on(grpc_export(host.ports.grpc, grpc_request))
        .expect("gRPC export");
    let (http_request, http_trace) = error_trace("pending-http", "pending-scope", 2);
    let answer = http_post(
        &http_client(),
        &host.http_url("/v1/traces"),
        &[("content-type", "application/x-protobuf")],
        http_request.encode_to_vec(),
    )
    .expect("POST protobuf");
    assert_eq!(answer.status, 200, "protobuf answer: {answer:?}");
    assert!(
        answer.content_type.starts_with("application/x-protobuf"),
        "a protobuf request gets a protobuf answer, got {:?}",
        answer.content_type
    );
    ExportTraceServiceResponse::decode(answer.body.as_slice())
        .expect("protobuf ExportTraceServiceResponse");

    assert!(
        receiver.spans().is_empty(),
        "nothing is due before decision_wait (60s), yet spans were exported"
    );
    host.terminate_cleanly();
    let received = receiver.spans();
    assert_kept(&received, &grpc_trace, "errors", "complete");
    assert_kept(&received, &http_trace, "errors", "complete");
}

/// An error, an orphan and an OK trace sent as raw protobuf over gRPC; returns them in that
/// order, with the orphan's missing parent.
fn send_three_raw(
    runtime: &tokio::runtime::Runtime,
    host: &Host,
    service: &str,
) -> (SentTrace, SentTrace, [u8; 8], SentTrace) {
    let (error_request, error) = error_trace(service, "raw-scope", 2);
    let orphan_tid = new_trace_id();
    let (orphan_sid, orphan_parent) = (new_span_id(), new_span_id());
    let mut orphan = SentTrace::new(orphan_tid);
    orphan.add(orphan_sid, service, "raw-scope");
    let ok_tid = new_trace_id();
    let ok_sid = new_span_id();
    let mut ok = SentTrace::new(ok_tid);
    ok.add(ok_sid, service, "raw-scope");
    let mut spans = error_request.resource_spans[0].scope_spans[0].spans.clone();
    spans.push(span(
        &orphan_tid,
        &orphan_sid,
        Some(&orphan_parent),
        "orphan",
        false,
    ));
    spans.push(span(&ok_tid, &ok_sid, None, "fine", false));
    runtime
        .block_on(grpc_export(
            host.ports.grpc,
            request(service, "raw-scope", spans),
        ))
        .expect("gRPC export");
    (error, orphan, orphan_parent, ok)
}

/// The `otlphttp` exporter posts the kept traces as protobuf to `<endpoint>/v1/traces`.
#[test]
fn otlphttp_exporter_posts_kept_traces() {
    let receiver = Receiver::start_http();
    let mut host =
        Host::start(&HostConfig::new(Exporter::OtlpHttp(receiver.port)).decision_wait("1s"));
    let (error, orphan, orphan_parent, ok) = send_three_raw(&runtime(), &host, "via-http");
    let mut keys = error.keys();
    keys.extend(orphan.keys());
    receiver.wait_for(&keys, "the kept traces at the OTLP/HTTP receiver", &host);
    host.terminate_cleanly();
    let received = receiver.spans();
    assert_kept(&received, &error, "errors", "complete");
    let got = assert_kept(&received, &orphan, "incomplete", "incomplete");
    assert_missing_parent(&got, &orphan_parent);
    assert_absent(
        &received,
        &ok.trace_id,
        "a complete OK trace at a 0% baseline",
    );
    for content_type in receiver.content_types() {
        assert!(
            content_type.starts_with("application/x-protobuf"),
            "the otlphttp exporter posted Content-Type {content_type:?}"
        );
    }
}

/// The `debug` exporter prints one summary line per kept trace on stdout, and none for a trace
/// that was not kept.
#[test]
fn debug_exporter_prints_one_line_per_kept_trace() {
    let mut host = Host::start(&HostConfig::new(Exporter::Debug).decision_wait("1s"));
    let (error, orphan, _, ok) = send_three_raw(&runtime(), &host, "via-debug");
    host.terminate_cleanly();
    let stdout = host.stdout();
    for (trace, policy) in [(&error, "errors"), (&orphan, "incomplete")] {
        let id = hex(&trace.trace_id);
        let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(&id)).collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one debug line for trace {id}, stdout:\n{stdout}"
        );
        assert!(
            lines[0].contains(policy),
            "the debug line of trace {id} should name policy {policy}: {:?}",
            lines[0]
        );
    }
    assert!(
        !stdout.contains(&hex(&ok.trace_id)),
        "a trace that was not kept appears on stdout:\n{stdout}"
    );
}

/// `/metrics` counts received spans by protocol, decisions by decision and policy, exported spans
/// and the traces still in memory.
#[test]
fn metrics_count_received_decided_and_exported() {
    let receiver = Receiver::start();
    let host = Host::start(&HostConfig::new(Exporter::Otlp(receiver.port)).decision_wait("1s"));
    let runtime = runtime();
    // gRPC: an error trace of 3 spans. HTTP: an OK trace of 2 spans.
    let (grpc_request, error) = error_trace("metered", "scope", 3);
    runtime
        .block_on(grpc_export(host.ports.grpc, grpc_request))
        .expect("gRPC export");
    let ok_tid = new_trace_id();
    let (root, child) = (new_span_id(), new_span_id());
    let ok_request = request(
        "metered",
        "scope",
        vec![
            span(&ok_tid, &root, None, "root", false),
            span(&ok_tid, &child, Some(&root), "child", false),
        ],
    );
    let answer = http_post(
        &http_client(),
        &host.http_url("/v1/traces"),
        &[("content-type", "application/x-protobuf")],
        ok_request.encode_to_vec(),
    )
    .expect("POST protobuf");
    assert_eq!(answer.status, 200);
    receiver.wait_for(&error.keys(), "the error trace", &host);

    // Both traces are decided within a bounded time; poll until the counters say so.
    let deadline = std::time::Instant::now() + EXPORT_TIMEOUT;
    let samples = loop {
        let samples = scrape(&host);
        if metric_sum(&samples, "tracekeeper_traces_decided_total", &[]) >= 2.0
            && metric_sum(&samples, "tracekeeper_spans_exported_total", &[]) >= 3.0
        {
            break samples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the metrics never showed 2 decided traces and 3 exported spans: {samples:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let received = |protocol: &str| {
        metric_sum(
            &samples,
            "tracekeeper_spans_received_total",
            &[("protocol", protocol)],
        )
    };
    assert_eq!(
        metric_sum(&samples, "tracekeeper_spans_received_total", &[]),
        5.0,
        "spans received, all protocols: {samples:#?}"
    );
    assert_eq!(received("grpc"), 3.0, "spans received over gRPC");
    assert_eq!(received("http"), 2.0, "spans received over HTTP");
    assert_eq!(
        metric_sum(
            &samples,
            "tracekeeper_traces_decided_total",
            &[("decision", "sampled"), ("policy", "errors")]
        ),
        1.0,
        "traces sampled by the errors policy"
    );
    assert_eq!(
        metric_sum(
            &samples,
            "tracekeeper_traces_decided_total",
            &[("decision", "not_sampled")]
        ),
        1.0,
        "traces not sampled"
    );
    assert_eq!(
        metric_sum(&samples, "tracekeeper_spans_exported_total", &[]),
        3.0
    );
    assert_eq!(
        metric_sum(&samples, "tracekeeper_traces_in_memory", &[]),
        0.0,
        "no trace left in memory once both are decided"
    );
}

/// A gzip-compressed OTLP/gRPC request (as collectors send with `compression: gzip`) is accepted.
#[test]
fn grpc_gzip_request_is_accepted() {
    let receiver = Receiver::start();
    let mut host = Host::start(&HostConfig::new(Exporter::Otlp(receiver.port)).decision_wait("1s"));
    let (request, sent) = error_trace("gzip-grpc", "scope", 3);
    runtime()
        .block_on(grpc_export_gzip(host.ports.grpc, request))
        .expect("gzip gRPC export");
    let received = receiver.wait_for(&sent.keys(), "the gzip-compressed gRPC trace", &host);
    assert_kept(&received, &sent, "errors", "complete");
    host.terminate_cleanly();
}
