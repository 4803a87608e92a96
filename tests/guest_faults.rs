//! Fault handling with a real misbehaving guest (`tests/guests/noisy`, built here for
//! wasm32-wasip2): a guest that writes to stdout/stderr must not disturb the host, a guest that
//! traps loses no span (its traces come out with `tracekeeper.fail_open=true`), and the
//! replacement instance keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// Builds the noisy guest once per test binary and returns its path.
fn noisy_guest() -> &'static PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = root.join("target").join("guest-wasm");
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "-p",
                "tracekeeper-test-guest-noisy",
                "--target",
                "wasm32-wasip2",
                "--release",
                "--target-dir",
            ])
            .arg(&target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "true")
            .status()
            .expect("run cargo to build the noisy test guest");
        assert!(status.success(), "building the noisy test guest failed");
        target.join("wasm32-wasip2/release/tracekeeper_test_guest_noisy.wasm")
    })
}

fn config(ports: &Ports, receiver_port: u16) -> String {
    format!(
        r#"receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
      http: {{endpoint: "127.0.0.1:{http}"}}
processors:
  noisy: {{}}
exporters:
  otlp: {{endpoint: "127.0.0.1:{receiver_port}", tls: {{insecure: true}}}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
guest:
  path: "{guest}"
"#,
        grpc = ports.grpc,
        http = ports.http,
        health = ports.health,
        metrics = ports.metrics,
        guest = noisy_guest().display(),
    )
}

/// One single-span trace whose span is named `name`.
fn named_trace(
    name: &str,
) -> (
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    SentTrace,
) {
    let trace_id = new_trace_id();
    let span_id = new_span_id();
    let mut sent = SentTrace::new(trace_id);
    sent.add(span_id, "noisy-test", "scope");
    (
        request(
            "noisy-test",
            "scope",
            vec![span(&trace_id, &span_id, None, name, false)],
        ),
        sent,
    )
}

#[test]
fn printing_and_trapping_guests_lose_no_span() {
    let receiver = Receiver::start();
    let ports = Ports::new();
    let yaml = config(&ports, receiver.port);
    let mut host = Host::start_yaml(ports, &yaml);
    let rt = runtime();

    // 1. A guest that prints: the trace is decided normally, by the guest.
    let (req, printed) = named_trace("print");
    rt.block_on(grpc_export(host.ports.grpc, req))
        .expect("export print trace");
    let got = receiver.wait_for(&printed.keys(), "the trace whose guest call printed", &host);
    let spans = spans_of(&got, &printed.trace_id);
    assert_eq!(
        spans[0].attr_str("tracekeeper.policy").as_deref(),
        Some("noisy")
    );
    host.assert_healthy();

    // 2. A guest that traps: the trace is kept anyway, tagged fail_open.
    let (req, trapped) = named_trace("trap");
    rt.block_on(grpc_export(host.ports.grpc, req))
        .expect("export trap trace");
    let got = receiver.wait_for(&trapped.keys(), "the trace whose guest call trapped", &host);
    let spans = spans_of(&got, &trapped.trace_id);
    let fail_open = spans[0]
        .span
        .attributes
        .iter()
        .find(|a| a.key == "tracekeeper.fail_open");
    assert!(
        fail_open.is_some(),
        "trapped trace is not tagged fail_open: {:?}",
        spans[0].span.attributes
    );
    host.assert_healthy();

    // 3. The replacement instance decides the next trace normally.
    let (req, after) = named_trace("fine");
    rt.block_on(grpc_export(host.ports.grpc, req))
        .expect("export trace after the trap");
    let got = receiver.wait_for(&after.keys(), "the trace after the trap", &host);
    let spans = spans_of(&got, &after.trace_id);
    assert_eq!(
        spans[0].attr_str("tracekeeper.policy").as_deref(),
        Some("noisy")
    );

    let metrics =
        reqwest::blocking::get(format!("http://127.0.0.1:{}/metrics", host.ports.metrics))
            .and_then(|r| r.text())
            .expect("GET /metrics");
    assert!(
        metrics.contains("tracekeeper_guest_faults_total{kind=\"trap\"} 1"),
        "trap not counted:\n{metrics}"
    );
    host.terminate_cleanly();
}
