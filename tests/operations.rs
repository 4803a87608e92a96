//! Sidecar operations through the real binary and real sockets: bounded memory with and without
//! `block_on_overflow`, an exporter outage that loses nothing, and the metrics an SRE reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

/// Most requests a test sends while waiting for the host to say "full".
const MAX_FILL_REQUESTS: usize = 200;
/// How long the exporter's target is down in the outage test.
const OUTAGE: Duration = Duration::from_secs(20);
/// Each client's pause between requests in the outage test (their steady rate).
const SEND_INTERVAL: Duration = Duration::from_millis(2);
/// Concurrent clients in the outage test, each with one request in flight.
const CLIENTS: usize = 4;

/// A config with an `always_sample` policy (every accepted span must come out), the given
/// `tail_sampling` extras, and an OTLP/gRPC exporter to `sink`.
fn yaml(ports: &Ports, sink: u16, decision_wait: &str, extra: &str) -> String {
    format!(
        r#"receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
      http: {{endpoint: "127.0.0.1:{http}"}}
processors:
  tail_sampling:
    decision_wait: {decision_wait}
{extra}    policies:
      - {{name: all, type: always_sample}}
exporters:
  otlp: {{endpoint: "127.0.0.1:{sink}", tls: {{insecure: true}}, timeout: 2s}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}", exporter_unhealthy_after: 2s}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
"#,
        grpc = ports.grpc,
        http = ports.http,
        health = ports.health,
        metrics = ports.metrics,
    )
}

/// The `guest` section of a host with two workers (the default on a machine of 4 to 6 CPUs).
const TWO_WORKERS: &str = "guest: {workers: 2}\n";

/// A span's (trace id, span id).
type Key = (Vec<u8>, Vec<u8>);

/// One trace of `n` spans: the request and its span keys.
fn trace(n: usize) -> (ExportTraceServiceRequest, Vec<Key>) {
    let (req, sent) = error_trace("svc", "scope", n);
    (req, sent.keys())
}

/// The span keys of a set of requests a sink received.
#[derive(Default)]
struct SinkStore {
    keys: Mutex<HashSet<Key>>,
    /// The `grpc-encoding` of each request received ("" when uncompressed).
    encodings: Mutex<HashSet<String>>,
    /// Answer every request with a partial success rejecting this many spans.
    reject: std::sync::atomic::AtomicI64,
}

struct SinkService(Arc<SinkStore>);

#[tonic::async_trait]
impl TraceService for SinkService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let encoding = request
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.0.encodings.lock().unwrap().insert(encoding);
        let mut keys = self.0.keys.lock().unwrap();
        for rs in &request.get_ref().resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    keys.insert((s.trace_id.clone(), s.span_id.clone()));
                }
            }
        }
        let rejected_spans = self.0.reject.load(std::sync::atomic::Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: (rejected_spans > 0).then(|| ExportTracePartialSuccess {
                rejected_spans,
                error_message: "test sink rejects spans".into(),
            }),
        }))
    }
}

/// An OTLP/gRPC sink on a fixed port that can be stopped and started again (an outage).
struct Sink {
    port: u16,
    store: Arc<SinkStore>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Sink {
    fn new(port: u16) -> Sink {
        Sink {
            port,
            store: Arc::default(),
            runtime: None,
        }
    }

    fn start(&mut self) {
        let runtime = runtime();
        let addr = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match runtime.block_on(tokio::net::TcpListener::bind(&addr)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("binding the sink on {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("binding the sink on {addr}: {e}"),
            }
        };
        let svc = TraceServiceServer::new(SinkService(Arc::clone(&self.store)))
            .max_decoding_message_size(256 << 20)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd);
        runtime.spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        self.runtime = Some(runtime);
    }

    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }

    fn has(&self, key: &Key) -> bool {
        self.store.keys.lock().unwrap().contains(key)
    }

    fn wait_for(&self, keys: &[Key], host: &Host) {
        let deadline = Instant::now() + EXPORT_TIMEOUT;
        loop {
            let missing = keys.iter().filter(|k| !self.has(k)).count();
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} accepted spans never reached the exporter's target\n--- stderr ---\n{}",
                keys.len(),
                host.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one send came to.
enum Outcome {
    Accepted,
    Retryable { retry_info: bool },
}

fn send_grpc(rt: &tokio::runtime::Runtime, port: u16, req: ExportTraceServiceRequest) -> Outcome {
    match rt.block_on(grpc_export(port, req)) {
        Ok(_) => Outcome::Accepted,
        Err(s) if s.code() == tonic::Code::Unavailable => Outcome::Retryable {
            retry_info: !s.details().is_empty(),
        },
        Err(s) => panic!("the host answered a non-retryable error: {s:?}"),
    }
}

/// With `block_on_overflow`, a full buffer refuses new spans with gRPC UNAVAILABLE (with
/// RetryInfo) and HTTP 503 with Retry-After; once the buffered traces are decided the same
/// requests succeed, and every accepted span is exported.
#[test]
fn block_on_overflow_refuses_then_accepts() {
    let rt = runtime();
    let ports = Ports::new();
    let mut sink = Sink::new(free_port());
    sink.start();
    let extra = "    num_traces: 5\n    block_on_overflow: true\n";
    // One worker: with several, each holds its share of num_traces (see README).
    let config = yaml(&ports, sink.port, "2s", extra) + "guest: {workers: 1}\n";
    let mut host = Host::start_yaml(ports, &config);

    let mut accepted = Vec::new();
    let mut refused = None;
    for _ in 0..MAX_FILL_REQUESTS {
        let (req, keys) = trace(2);
        match send_grpc(&rt, ports.grpc, req.clone()) {
            Outcome::Accepted => accepted.extend(keys),
            Outcome::Retryable { retry_info } => {
                assert!(retry_info, "UNAVAILABLE without RetryInfo");
                refused = Some((req, keys));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (refused_req, refused_keys) = refused.unwrap_or_else(|| {
        panic!(
            "the host never refused with num_traces 5 and block_on_overflow\n--- stderr ---\n{}",
            host.stderr()
        )
    });
    assert!(
        accepted.len() >= 2 * 5,
        "refused before num_traces was reached"
    );

    // HTTP says the same, with Retry-After.
    let (http_req, http_keys) = trace(1);
    let resp = http_client()
        .post(host.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(http_req.encode_to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        retry_after.is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)),
        "503 without a Retry-After in seconds"
    );

    // Once the buffered traces are due and decided, the refused requests go through.
    let deadline = Instant::now() + EXPORT_TIMEOUT;
    loop {
        match send_grpc(&rt, ports.grpc, refused_req.clone()) {
            Outcome::Accepted => break,
            Outcome::Retryable { .. } => {
                assert!(
                    Instant::now() < deadline,
                    "still refused\n{}",
                    host.stderr()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    accepted.extend(refused_keys);
    let status = http_post(
        &http_client(),
        &host.http_url("/v1/traces"),
        &[("content-type", "application/x-protobuf")],
        http_req.encode_to_vec(),
    )
    .unwrap()
    .status;
    assert_eq!(status, 200);
    accepted.extend(http_keys);

    host.terminate_cleanly();
    sink.wait_for(&accepted, &host);
}

/// Without `block_on_overflow`, a full buffer decides its oldest traces early: counted in
/// /metrics, and no span is lost.
#[test]
fn full_buffer_decides_oldest_early_and_loses_nothing() {
    let rt = runtime();
    let ports = Ports::new();
    let mut sink = Sink::new(free_port());
    sink.start();
    // One worker, so that exactly the 15 oldest traces are over num_traces (with several, each
    // worker holds its share of num_traces and decides its own oldest early).
    let config = yaml(&ports, sink.port, "60s", "    num_traces: 5\n") + "guest: {workers: 1}\n";
    let mut host = Host::start_yaml(ports, &config);
    let mut accepted = Vec::new();
    let mut early_ids = Vec::new();
    for i in 0..20 {
        let (req, keys) = trace(3);
        match send_grpc(&rt, ports.grpc, req) {
            Outcome::Accepted => {}
            Outcome::Retryable { .. } => panic!("refused without block_on_overflow"),
        }
        if i < 15 {
            early_ids.extend(keys.iter().cloned());
        }
        accepted.extend(keys);
    }
    // The 15 oldest traces are decided early (decision_wait is a minute away) and exported.
    sink.wait_for(&early_ids, &host);
    let samples = scrape(&host);
    let early = metric_sum(&samples, "tracekeeper_traces_decided_early_total", &[]);
    assert_eq!(early, 15.0, "early decisions counted");
    let in_memory = metric_sum(&samples, "tracekeeper_traces_in_memory", &[]);
    assert!(
        in_memory <= 5.0,
        "{in_memory} traces buffered over num_traces 5"
    );
    host.terminate_cleanly();
    sink.wait_for(&accepted, &host);
}

/// The exporter's target down for a while under steady clients: they see retryable errors once
/// the queues are full, health turns 503, and once the target is back every span the host
/// accepted is exported.
#[test]
fn exporter_outage_loses_nothing() {
    let rt = runtime();
    let ports = Ports::new();
    let mut sink = Sink::new(free_port());
    sink.start();
    // Two workers: a request's spans are queued to both, all or none, while the queues fill.
    let config = yaml(&ports, sink.port, "100ms", "") + TWO_WORKERS;
    let mut host = Host::start_yaml(ports, &config);

    let accepted = Arc::new(Mutex::new(Vec::new()));
    let retryable = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (accepted, retryable, stop) = (
            Arc::clone(&accepted),
            Arc::clone(&retryable),
            Arc::clone(&stop),
        );
        let port = ports.grpc;
        clients.push(rt.spawn(async move {
            use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
            let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
                .await
                .expect("connect");
            let (mut req, mut keys) = trace(20);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.export(req.clone()).await {
                    Ok(_) => {
                        accepted.lock().unwrap().extend(keys);
                        (req, keys) = trace(20);
                        tokio::time::sleep(SEND_INTERVAL).await;
                    }
                    // Retry the same request, as an OTLP exporter does.
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        retryable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(s) => panic!("the host answered a non-retryable error: {s:?}"),
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    sink.stop();
    std::thread::sleep(OUTAGE);
    let health_during_outage = host.health_status();
    let refused_during_outage = retryable.load(std::sync::atomic::Ordering::Relaxed);
    sink.start();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        rt.block_on(c).expect("client task");
    }
    let accepted = accepted.lock().unwrap().clone();
    eprintln!(
        "outage: accepted {} spans, {refused_during_outage} retryable answers during the outage",
        accepted.len()
    );
    assert!(
        refused_during_outage > 0,
        "the clients never saw a retryable error while the exporter's target was down\n{}",
        host.stderr()
    );
    assert_eq!(
        health_during_outage,
        Some(503),
        "health while the exporter failed for longer than exporter_unhealthy_after"
    );
    sink.wait_for(&accepted, &host);
    let samples = scrape(&host);
    assert!(metric_sum(&samples, "tracekeeper_export_retries_total", &[]) > 0.0);
    assert!(
        metric_sum(
            &samples,
            "tracekeeper_requests_refused_total",
            &[("reason", "queue_full")]
        ) > 0.0
    );
    assert_eq!(
        metric_sum(&samples, "tracekeeper_spans_dropped_total", &[]),
        0.0
    );
    // Health recovers with the exporter.
    let deadline = Instant::now() + EXPORT_TIMEOUT;
    while host.health_status() != Some(200) {
        assert!(Instant::now() < deadline, "health did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
    host.terminate_cleanly();
}

/// `/metrics` parses as Prometheus text and has every name DESIGN.md section 5 lists, plus the
/// operations metrics.
#[test]
fn metrics_have_every_documented_name() {
    let rt = runtime();
    let ports = Ports::new();
    let mut sink = Sink::new(free_port());
    sink.start();
    let mut host = Host::start_yaml(ports, &yaml(&ports, sink.port, "100ms", ""));
    // Before any traffic, the guest's memory is already reported (the worker thread publishes
    // its gauges as it starts).
    wait_metric_at_least(&host, "tracekeeper_guest_memory_bytes", &[], 65_536.0);
    // A trace whose message is consumed (decided at once) and one whose message is not yet
    // (held for its consumer), so that the messaging families have series.
    let messaging = |s: &mut opentelemetry_proto::tonic::trace::v1::Span, kind: i32| {
        s.kind = kind;
        s.attributes.push(kv("messaging.system", "rabbitmq"));
        s.attributes
            .push(kv("messaging.destination.name", "order_confirmed"));
    };
    let (consumed, open) = (new_trace_id(), new_trace_id());
    let (root, producer, consumer) = (new_span_id(), new_span_id(), new_span_id());
    let mut spans = vec![
        span(&consumed, &root, None, "POST /checkout", false),
        span(&consumed, &producer, Some(&root), "publish", false),
        span(&consumed, &consumer, Some(&producer), "process", false),
        span(&open, &root, None, "POST /checkout", false),
        span(&open, &producer, Some(&root), "publish", false),
    ];
    messaging(&mut spans[1], 4);
    messaging(&mut spans[2], 5);
    messaging(&mut spans[4], 4);
    let keys: Vec<_> = [root, producer, consumer]
        .iter()
        .map(|id| (consumed.to_vec(), id.to_vec()))
        .collect();
    assert!(matches!(
        send_grpc(&rt, ports.grpc, request("checkout", "scope", spans)),
        Outcome::Accepted
    ));
    sink.wait_for(&keys, &host);
    let url = format!("http://127.0.0.1:{}/metrics", ports.metrics);
    let families = [
        "tracekeeper_spans_dropped",
        "tracekeeper_traces",
        "tracekeeper_trace_completeness_ratio",
        "tracekeeper_messages_produced",
        "tracekeeper_messages_consumed",
        "tracekeeper_oldest_unconsumed_message_age_seconds",
    ];
    // The completeness families are reported with the guest's next decision batches.
    let deadline = Instant::now() + EXPORT_TIMEOUT;
    let text = loop {
        let text = http_client().get(&url).send().unwrap().text().unwrap();
        let declared = families
            .iter()
            .all(|f| text.contains(&format!("# TYPE {f} ")));
        if declared || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let samples = parse_metrics(&text);
    let names: HashSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    // Families that have series from the start (labels known up front) or after one trace.
    for name in [
        "tracekeeper_spans_received_total",
        "tracekeeper_spans_exported_total",
        "tracekeeper_traces_decided_total",
        "tracekeeper_traces_in_memory",
        "tracekeeper_guest_faults_total",
        "tracekeeper_requests_refused_total",
        "tracekeeper_queue_length",
        "tracekeeper_buffered_span_bytes",
        "tracekeeper_export_requests_total",
        "tracekeeper_export_retries_total",
        "tracekeeper_decision_latency_seconds_bucket",
        "tracekeeper_decision_latency_seconds_count",
    ] {
        assert!(
            names.contains(name),
            "{name} missing from /metrics:\n{text}"
        );
    }
    // Families whose series need labels from traffic (drops, completeness by root type,
    // queues) are declared all the same.
    for family in families {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} not declared in /metrics:\n{text}"
        );
    }
    assert!(metric_sum(&samples, "tracekeeper_decision_latency_seconds_count", &[]) >= 1.0);
    // The guest instance holds at least its initial memory (the default guest needs more than
    // one 64 KiB page) and no more than its cap (`guest.memory_limit_mib`, 512 MiB by default).
    let guest_memory = metric_sum(&samples, "tracekeeper_guest_memory_bytes", &[]);
    assert!(
        (65_536.0..=512.0 * 1048576.0).contains(&guest_memory),
        "tracekeeper_guest_memory_bytes = {guest_memory}:\n{text}"
    );
    host.terminate_cleanly();
}

/// Sends SIGHUP to `pid` through the shell's `kill` builtin.
fn send_sighup(pid: u32) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -HUP {pid}"))
        .status()
        .expect("run sh -c kill");
    assert!(status.success(), "kill -HUP {pid} failed: {status}");
}

/// Waits until the host's stderr contains `text` at least `times` times.
fn wait_for_log(host: &Host, text: &str, times: usize) {
    let deadline = Instant::now() + EXPORT_TIMEOUT;
    while host.stderr().matches(text).count() < times {
        assert!(
            Instant::now() < deadline,
            "the host never logged {text:?}\n--- stderr ---\n{}",
            host.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGHUP with a changed policy decides the traces still buffered by the new rules; a broken
/// config is rejected with a logged error and the running one stays.
#[test]
fn sighup_reloads_rules_for_buffered_traces_and_rejects_broken_configs() {
    let rt = runtime();
    let ports = Ports::new();
    let mut sink = Sink::new(free_port());
    sink.start();
    // Two workers: the reload reaches both, each replays its own traces.
    let errors_only = (yaml(&ports, sink.port, "3s", "") + TWO_WORKERS).replace(
        "{name: all, type: always_sample}",
        "{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}",
    );
    let mut host = Host::start_yaml(ports, &errors_only);
    let config = host.dir().join("config.yaml");

    // Traces without errors: not kept under the running rules, and buffered for 3 s.
    let mut buffered = Vec::new();
    for _ in 0..3 {
        let t = new_trace_id();
        let id = new_span_id();
        let req = request("svc", "scope", vec![span(&t, &id, None, "ok", false)]);
        assert!(matches!(send_grpc(&rt, ports.grpc, req), Outcome::Accepted));
        buffered.push((t.to_vec(), id.to_vec()));
    }
    std::fs::write(&config, yaml(&ports, sink.port, "3s", "") + TWO_WORKERS).unwrap();
    send_hup_and_wait(&host, 1);
    sink.wait_for(&buffered, &host);
    let samples = scrape(&host);
    assert_eq!(
        metric_sum(
            &samples,
            "tracekeeper_traces_decided_total",
            &[("decision", "sampled"), ("policy", "all")]
        ),
        3.0,
        "the buffered traces were decided by the new policy"
    );

    // A broken config: rejected, logged, and the process keeps running the previous rules.
    std::fs::write(
        &config,
        (yaml(&ports, sink.port, "3s", "") + TWO_WORKERS)
            .replace("always_sample", "no_such_policy"),
    )
    .unwrap();
    send_sighup(host.pid());
    wait_for_log(&host, "reload rejected", 1);
    host.assert_healthy();
    let t = new_trace_id();
    let id = new_span_id();
    let req = request("svc", "scope", vec![span(&t, &id, None, "ok", false)]);
    assert!(matches!(send_grpc(&rt, ports.grpc, req), Outcome::Accepted));
    sink.wait_for(&[(t.to_vec(), id.to_vec())], &host);
    host.terminate_cleanly();
}

/// Sends SIGHUP and waits for the `n`-th "configuration reloaded" line.
fn send_hup_and_wait(host: &Host, n: usize) {
    send_sighup(host.pid());
    wait_for_log(host, "configuration reloaded", n);
}

/// SIGTERM while the exporter's target is down: the retries do not hold the process past
/// `service.shutdown_timeout`; it exits and says what it could not export.
#[test]
fn sigterm_with_the_exporter_down_exits_within_shutdown_timeout() {
    let rt = runtime();
    let ports = Ports::new();
    // Nothing listens on the sink's port.
    let sink_port = free_port();
    let config = yaml(&ports, sink_port, "100ms", "")
        .replace("service:\n", "service:\n  shutdown_timeout: 2s\n");
    let mut host = Host::start_yaml(ports, &config);
    let (req, _) = trace(2);
    assert!(matches!(send_grpc(&rt, ports.grpc, req), Outcome::Accepted));
    // Wait until the exporter is retrying.
    let deadline = Instant::now() + EXPORT_TIMEOUT;
    while metric_sum(&scrape(&host), "tracekeeper_export_retries_total", &[]) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no export retry\n{}",
            host.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = host.terminate();
    assert!(status.success(), "exit status {status}\n{}", host.stderr());
    assert!(
        host.stderr().contains("shutdown_timeout reached"),
        "{}",
        host.stderr()
    );
}

/// `compression: zstd` on the OTLP/gRPC exporter: the target receives zstd-compressed requests
/// (the sink accepts gzip and zstd; tonic refuses an encoding it was not told to accept).
#[test]
fn zstd_exporter_compression() {
    let rt = runtime();
    let ports = Ports::new();
    let mut sink = Sink::new(free_port());
    sink.start();
    let config = yaml(&ports, sink.port, "100ms", "")
        .replace("timeout: 2s", "timeout: 2s, compression: zstd");
    let mut host = Host::start_yaml(ports, &config);
    let (req, keys) = trace(3);
    assert!(matches!(send_grpc(&rt, ports.grpc, req), Outcome::Accepted));
    sink.wait_for(&keys, &host);
    let encodings = sink.store.encodings.lock().unwrap().clone();
    assert_eq!(encodings, HashSet::from(["zstd".to_owned()]));
    host.terminate_cleanly();
}

/// A partial success from the exporter's target counts the rejected spans as dropped
/// (`export_rejected`), not as exported.
#[test]
fn rejected_spans_of_a_partial_success_are_counted() {
    let rt = runtime();
    let ports = Ports::new();
    let mut sink = Sink::new(free_port());
    sink.store
        .reject
        .store(2, std::sync::atomic::Ordering::Relaxed);
    sink.start();
    let mut host = Host::start_yaml(ports, &yaml(&ports, sink.port, "100ms", ""));
    let (req, keys) = trace(5);
    assert!(matches!(send_grpc(&rt, ports.grpc, req), Outcome::Accepted));
    sink.wait_for(&keys, &host);
    let deadline = Instant::now() + EXPORT_TIMEOUT;
    loop {
        let samples = scrape(&host);
        let rejected = metric_sum(
            &samples,
            "tracekeeper_spans_dropped_total",
            &[("reason", "export_rejected")],
        );
        let exported = metric_sum(&samples, "tracekeeper_spans_exported_total", &[]);
        if rejected == 2.0 {
            assert_eq!(exported, 3.0, "rejected spans are not counted as exported");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "export_rejected = {rejected}, exported = {exported}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    host.terminate_cleanly();
}
