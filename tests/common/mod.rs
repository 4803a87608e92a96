//! Shared helpers for the end-to-end tests: free loopback ports, config files, the real
//! `tracekeeper` process, an in-test OTLP/gRPC receiver, the file exporter's reader, OTLP
//! request builders and raw clients.
//!
//! Every wait here is bounded and fails with a message that says what was awaited and, where a
//! host is involved, what the host wrote on stderr.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tempfile::TempDir;

/// How long a host may take to answer 200 on its health endpoint after it was spawned. Generous:
/// the first start of a fresh build compiles the guest.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for spans to reach an exporter's destination once they are due.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a host may take to exit after SIGTERM (it must decide and export what is pending).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits for a metric to reach what it expects (the guest reports its counts
/// about once a second).
pub const METRIC_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval of the bounded waits.
const POLL: Duration = Duration::from_millis(50);

/// The gRPC method of the OTLP trace service.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

// ---------------------------------------------------------------------------------------------
// Ports and ids

/// A free loopback port. The listener is closed before returning, so another process can bind
/// it; ports already handed out by this process are never handed out twice.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind an ephemeral loopback port")
            .local_addr()
            .unwrap()
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// A random 64-bit number (no `rand` needed: std's randomly keyed hasher over a counter).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// A random, valid (non-zero) trace id.
pub fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64().to_be_bytes());
    id[8..].copy_from_slice(&random_u64().to_be_bytes());
    id[15] |= 1;
    id
}

/// A random, valid (non-zero) span id.
pub fn new_span_id() -> [u8; 8] {
    let mut id = random_u64().to_be_bytes();
    id[7] |= 1;
    id
}

/// Lower-case hex, as OTLP JSON and the `parent:<hex>` tag write ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Now, in Unix nanoseconds.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// The host's listening ports.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub grpc: u16,
    pub http: u16,
    pub health: u16,
    pub metrics: u16,
}

impl Ports {
    pub fn new() -> Self {
        Ports {
            grpc: free_port(),
            http: free_port(),
            health: free_port(),
            metrics: free_port(),
        }
    }
}

impl Default for Ports {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a host sends the spans of kept traces.
#[derive(Clone, Debug)]
pub enum Exporter {
    /// OTLP/gRPC to a loopback port.
    Otlp(u16),
    /// OTLP/HTTP protobuf to a loopback port.
    OtlpHttp(u16),
    /// OTLP JSON lines into a file.
    File(PathBuf),
    /// Summary lines on stdout.
    Debug,
}

/// The parts of a host configuration the tests vary.
#[derive(Clone, Debug)]
pub struct HostConfig {
    pub decision_wait: String,
    pub baseline_percent: f64,
    pub exporter: Exporter,
    pub max_request_body_size: Option<u64>,
    pub max_recv_msg_size_mib: Option<u64>,
}

impl HostConfig {
    /// Errors + incomplete + a 0% baseline, `decision_wait: 1s`.
    pub fn new(exporter: Exporter) -> Self {
        HostConfig {
            decision_wait: "1s".to_owned(),
            baseline_percent: 0.0,
            exporter,
            max_request_body_size: None,
            max_recv_msg_size_mib: None,
        }
    }

    pub fn decision_wait(mut self, wait: &str) -> Self {
        self.decision_wait = wait.to_owned();
        self
    }

    pub fn baseline(mut self, percent: f64) -> Self {
        self.baseline_percent = percent;
        self
    }

    pub fn max_request_body_size(mut self, bytes: u64) -> Self {
        self.max_request_body_size = Some(bytes);
        self
    }

    pub fn max_recv_msg_size_mib(mut self, mib: u64) -> Self {
        self.max_recv_msg_size_mib = Some(mib);
        self
    }

    /// The YAML text of this configuration for a host listening on `ports`.
    pub fn yaml(&self, ports: &Ports) -> String {
        let grpc_limit = self
            .max_recv_msg_size_mib
            .map(|mib| format!(", max_recv_msg_size_mib: {mib}"))
            .unwrap_or_default();
        let http_limit = self
            .max_request_body_size
            .map(|bytes| format!(", max_request_body_size: {bytes}"))
            .unwrap_or_default();
        let exporter = match &self.exporter {
            Exporter::Otlp(port) => {
                format!("otlp: {{endpoint: \"127.0.0.1:{port}\", tls: {{insecure: true}}}}")
            }
            Exporter::OtlpHttp(port) => {
                format!("otlphttp: {{endpoint: \"http://127.0.0.1:{port}\"}}")
            }
            Exporter::File(path) => format!("file: {{path: \"{}\"}}", path.display()),
            Exporter::Debug => "debug: {}".to_owned(),
        };
        format!(
            r#"receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"{grpc_limit}}}
      http: {{endpoint: "127.0.0.1:{http}"{http_limit}}}
processors:
  tail_sampling:
    decision_wait: {wait}
    policies:
      - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}
      - {{name: incomplete, type: completeness, completeness: {{incomplete: true}}}}
      - {{name: baseline, type: probabilistic, probabilistic: {{sampling_percentage: {pct}}}}}
exporters:
  {exporter}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
"#,
            grpc = ports.grpc,
            http = ports.http,
            wait = self.decision_wait,
            pct = self.baseline_percent,
            health = ports.health,
            metrics = ports.metrics,
        )
    }
}

/// Writes `yaml` into `dir/name` and returns its path.
pub fn write_config(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write config file");
    path
}

/// The `tracekeeper` binary built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tracekeeper")
}

// ---------------------------------------------------------------------------------------------
// The host process

/// A running `tracekeeper run` process. Killed on drop if still running.
pub struct Host {
    child: Option<Child>,
    pub ports: Ports,
    dir: TempDir,
    exit: Option<ExitStatus>,
}

impl Host {
    /// Starts a host with `config` on fresh ports and waits until it is ready.
    pub fn start(config: &HostConfig) -> Host {
        let ports = Ports::new();
        let yaml = config.yaml(&ports);
        Host::start_yaml(ports, &yaml)
    }

    /// Starts a host with a hand-written config (which must use `ports`) and waits until ready.
    pub fn start_yaml(ports: Ports, yaml: &str) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path(), "config.yaml", yaml);
        let stdout = File::create(dir.path().join("stdout.log")).unwrap();
        let stderr = File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(binary())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn tracekeeper");
        let mut host = Host {
            child: Some(child),
            ports,
            dir,
            exit: None,
        };
        host.wait_ready(yaml);
        host
    }

    fn wait_ready(&mut self, yaml: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "tracekeeper exited with {status} before it was ready\n--- config ---\n{yaml}\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            if self.health_status() == Some(200) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "tracekeeper did not answer 200 on its health endpoint 127.0.0.1:{} within {READY_TIMEOUT:?}\n--- config ---\n{yaml}\n--- stderr ---\n{}",
                    self.ports.health,
                    self.stderr()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("host process").id()
    }

    /// The temporary directory holding the config and the logs (and usable for exporter files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:<grpc port>`, the OTLP/gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.grpc)
    }

    /// `http://127.0.0.1:<http port><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.http)
    }

    /// What the host has written on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// What the host has written on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// The HTTP status of `GET /` on the health endpoint, or `None` if it does not answer.
    pub fn health_status(&self) -> Option<u16> {
        http_get_status(self.ports.health, "/")
    }

    /// Panics (with stderr) unless the process is running and its health endpoint answers 200.
    pub fn assert_healthy(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "tracekeeper died with {status}\n--- stderr ---\n{}",
                self.stderr()
            );
        }
        let health = self.health_status();
        assert_eq!(
            health,
            Some(200),
            "tracekeeper's health endpoint answered {health:?}, not 200\n--- stderr ---\n{}",
            self.stderr()
        );
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        send_sigterm(self.pid());
        let status = self.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "tracekeeper did not exit within {EXIT_TIMEOUT:?} after SIGTERM\n--- stderr ---\n{}",
                self.stderr()
            )
        });
        self.exit = Some(status);
        status
    }

    /// Sends SIGTERM, waits for the exit and asserts it was a clean one (exit code 0).
    pub fn terminate_cleanly(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "tracekeeper exited with {status} after SIGTERM, expected 0\n--- stderr ---\n{}",
            self.stderr()
        );
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none() && child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Sends SIGTERM to `pid` through the shell's `kill` builtin (no libc or extra crate needed).
pub fn send_sigterm(pid: u32) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {pid}"))
        .status()
        .expect("run sh -c kill");
    assert!(status.success(), "kill -TERM {pid} failed: {status}");
}

/// Runs the binary with `args` to completion (bounded) and returns (exit status, stdout, stderr).
pub fn run_binary(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout.log");
    let err_path = dir.path().join("stderr.log");
    let mut command = Command::new(binary());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn tracekeeper");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`tracekeeper {}` did not exit within {timeout:?}\n--- stderr ---\n{}",
                args.join(" "),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    };
    (
        status,
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// A minimal HTTP/1.1 GET on loopback; returns the status code or `None` on any failure.
pub fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream.read(&mut head[len..]).ok()?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = std::str::from_utf8(&head[..len]).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// What came out

/// One exported span with the resource and scope it was exported under.
#[derive(Clone, Debug)]
pub struct Received {
    pub resource: Resource,
    pub scope: InstrumentationScope,
    pub span: Span,
}

impl Received {
    /// The resource's `service.name`, or "" if absent.
    pub fn service(&self) -> String {
        str_attr(&self.resource.attributes, "service.name").unwrap_or_default()
    }

    /// The value of a string span attribute.
    pub fn attr_str(&self, key: &str) -> Option<String> {
        str_attr(&self.span.attributes, key)
    }

    /// The value of a string-array span attribute.
    pub fn attr_str_array(&self, key: &str) -> Option<Vec<String>> {
        str_array_attr(&self.span.attributes, key)
    }
}

/// Flattens requests into one entry per span.
pub fn flatten(requests: &[ExportTraceServiceRequest]) -> Vec<Received> {
    let mut out = Vec::new();
    for request in requests {
        for resource_spans in &request.resource_spans {
            let resource = resource_spans.resource.clone().unwrap_or_default();
            for scope_spans in &resource_spans.scope_spans {
                let scope = scope_spans.scope.clone().unwrap_or_default();
                for span in &scope_spans.spans {
                    out.push(Received {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        span: span.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The value of attribute `key`, if present.
pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| value.value.as_ref())
}

/// The value of string attribute `key`, if present and a string.
pub fn str_attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attr(attributes, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// The value of string-array attribute `key`, if present and an array of strings.
pub fn str_array_attr(attributes: &[KeyValue], key: &str) -> Option<Vec<String>> {
    match attr(attributes, key)? {
        Value::ArrayValue(array) => array
            .values
            .iter()
            .map(|v| match &v.value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The spans of trace `trace_id`.
pub fn spans_of<'a>(received: &'a [Received], trace_id: &[u8]) -> Vec<&'a Received> {
    received
        .iter()
        .filter(|r| r.span.trace_id == trace_id)
        .collect()
}

/// A span the test sent and expects to come out unchanged in identity.
#[derive(Clone, Debug)]
pub struct SentSpan {
    pub span_id: [u8; 8],
    pub service: String,
    pub scope: String,
}

/// A trace the test sent: its id and all its span ids (with resource and scope).
#[derive(Clone, Debug)]
pub struct SentTrace {
    pub trace_id: [u8; 16],
    pub spans: Vec<SentSpan>,
}

impl SentTrace {
    pub fn new(trace_id: [u8; 16]) -> Self {
        SentTrace {
            trace_id,
            spans: Vec::new(),
        }
    }

    pub fn add(&mut self, span_id: [u8; 8], service: &str, scope: &str) {
        self.spans.push(SentSpan {
            span_id,
            service: service.to_owned(),
            scope: scope.to_owned(),
        });
    }

    /// (trace id, span id) keys of all spans.
    pub fn keys(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.spans
            .iter()
            .map(|s| (self.trace_id.to_vec(), s.span_id.to_vec()))
            .collect()
    }
}

/// Asserts that `trace` came out whole and exactly once: every sent span once, under its
/// resource's `service.name` and its scope name, no other span of the trace, each span tagged
/// with `policy` and `completeness`. Returns the exported spans of the trace.
pub fn assert_kept<'a>(
    received: &'a [Received],
    trace: &SentTrace,
    policy: &str,
    completeness: &str,
) -> Vec<&'a Received> {
    let got = spans_of(received, &trace.trace_id);
    let tid = hex(&trace.trace_id);
    assert!(!got.is_empty(), "trace {tid} was not exported at all");
    for sent in &trace.spans {
        let copies: Vec<_> = got
            .iter()
            .filter(|r| r.span.span_id == sent.span_id)
            .collect();
        let sid = hex(&sent.span_id);
        assert_eq!(
            copies.len(),
            1,
            "span {sid} of trace {tid} was exported {} times, expected once",
            copies.len()
        );
        let r = copies[0];
        assert_eq!(
            r.service(),
            sent.service,
            "service.name of span {sid} of trace {tid}"
        );
        assert_eq!(
            r.scope.name, sent.scope,
            "scope name of span {sid} of trace {tid}"
        );
        assert_eq!(
            r.attr_str("tracekeeper.policy").as_deref(),
            Some(policy),
            "tracekeeper.policy of span {sid} ({}) of trace {tid}; attributes: {:?}",
            r.span.name,
            r.span.attributes
        );
        assert_eq!(
            r.attr_str("tracekeeper.completeness").as_deref(),
            Some(completeness),
            "tracekeeper.completeness of span {sid} ({}) of trace {tid}; attributes: {:?}",
            r.span.name,
            r.span.attributes
        );
        if completeness == "complete" {
            assert_eq!(
                r.attr_str_array("tracekeeper.completeness.missing"),
                None,
                "a complete trace's span {sid} carries tracekeeper.completeness.missing"
            );
        }
    }
    let sent_ids: HashSet<Vec<u8>> = trace.spans.iter().map(|s| s.span_id.to_vec()).collect();
    let extra: Vec<String> = got
        .iter()
        .filter(|r| !sent_ids.contains(&r.span.span_id))
        .map(|r| hex(&r.span.span_id))
        .collect();
    assert!(
        extra.is_empty(),
        "trace {tid} came out with spans never sent: {extra:?}"
    );
    got
}

/// Asserts that no span of trace `trace_id` was exported.
pub fn assert_absent(received: &[Received], trace_id: &[u8], what: &str) {
    let got = spans_of(received, trace_id);
    assert!(
        got.is_empty(),
        "{what} (trace {}) should not have been exported, but {} of its spans were, tagged {:?}",
        hex(trace_id),
        got.len(),
        got.first().map(|r| r.attr_str("tracekeeper.policy"))
    );
}

/// Asserts that every exported span of a trace lists `parent:<hex(parent)>` among its missing
/// entries and nothing but `parent:` or `root` entries.
pub fn assert_missing_parent(spans: &[&Received], parent: &[u8; 8]) {
    let want = format!("parent:{}", hex(parent));
    for r in spans {
        let missing = r
            .attr_str_array("tracekeeper.completeness.missing")
            .unwrap_or_else(|| {
                panic!(
                    "span {} ({}) of an incomplete trace has no string-array tracekeeper.completeness.missing; attributes: {:?}",
                    hex(&r.span.span_id),
                    r.span.name,
                    r.span.attributes
                )
            });
        assert!(
            missing.contains(&want),
            "tracekeeper.completeness.missing of span {} is {missing:?}, expected it to contain {want}",
            hex(&r.span.span_id)
        );
        assert!(
            missing.iter().all(|m| m == &want || m == "root"),
            "tracekeeper.completeness.missing of span {} is {missing:?}: only {want} and root are expected",
            hex(&r.span.span_id)
        );
    }
}

/// Waits (bounded) until `fetch()` returns spans containing every key in `keys`; returns the
/// last snapshot. Panics with `what` and the return of `context()` on timeout.
pub fn wait_for_keys(
    keys: &[(Vec<u8>, Vec<u8>)],
    timeout: Duration,
    what: &str,
    mut fetch: impl FnMut() -> Vec<Received>,
    context: impl Fn() -> String,
) -> Vec<Received> {
    let deadline = Instant::now() + timeout;
    loop {
        let snapshot = fetch();
        let have: HashSet<(&[u8], &[u8])> = snapshot
            .iter()
            .map(|r| (r.span.trace_id.as_slice(), r.span.span_id.as_slice()))
            .collect();
        let missing: Vec<String> = keys
            .iter()
            .filter(|(t, s)| !have.contains(&(t.as_slice(), s.as_slice())))
            .map(|(t, s)| format!("{}/{}", hex(t), hex(s)))
            .collect();
        if missing.is_empty() {
            return snapshot;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}: {} of {} spans missing (e.g. {:?}); {} spans received\n{}",
                missing.len(),
                keys.len(),
                &missing[..missing.len().min(5)],
                snapshot.len(),
                context()
            );
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// In-test OTLP/gRPC receiver (the downstream collector)

#[derive(Default)]
struct Store {
    requests: Mutex<Vec<ExportTraceServiceRequest>>,
    /// Answers of a scripted gRPC receiver, one per request in order (then plain successes):
    /// `Ok(n)` takes the request with `partial_success.rejected_spans` = n (0: none), `Err`
    /// refuses it with that status (the request is not recorded).
    answers: Mutex<std::collections::VecDeque<Result<i64, tonic::Status>>>,
    /// For OTLP/HTTP: the `Content-Type` of each request.
    content_types: Mutex<Vec<String>>,
}

struct Collector {
    store: Arc<Store>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let answer = self.store.answers.lock().unwrap().pop_front();
        let rejected = match answer {
            Some(Err(status)) => return Err(status),
            Some(Ok(n)) => n,
            None => 0,
        };
        self.store
            .requests
            .lock()
            .unwrap()
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: (rejected > 0).then(|| {
                opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: format!("{rejected} spans refused by the test"),
                }
            }),
        }))
    }
}

/// A real OTLP trace receiver (gRPC, or HTTP `POST /v1/traces` with protobuf bodies) on a
/// loopback port, on its own runtime. Records every request.
pub struct Receiver {
    runtime: Option<tokio::runtime::Runtime>,
    pub port: u16,
    store: Arc<Store>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::start_scripted(Vec::new())
    }

    /// A gRPC receiver that answers its first requests as `answers` says (see `Store`), accepts
    /// gzip and zstd, and compresses its answers with gzip when the client allows it.
    pub fn start_scripted(answers: Vec<Result<i64, tonic::Status>>) -> Receiver {
        let runtime = runtime();
        let store = Arc::new(Store {
            answers: Mutex::new(answers.into()),
            ..Store::default()
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind receiver");
        let port = listener.local_addr().unwrap().port();
        let service = TraceServiceServer::new(Collector {
            store: store.clone(),
        })
        .max_decoding_message_size(256 * 1024 * 1024)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("receiver server");
        });
        Receiver {
            runtime: Some(runtime),
            port,
            store,
        }
    }

    /// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body (gzip accepted), answered
    /// with a protobuf `ExportTraceServiceResponse`.
    pub fn start_http() -> Receiver {
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::IntoResponse;

        async fn traces(
            axum::extract::State(store): axum::extract::State<Arc<Store>>,
            headers: HeaderMap,
            body: bytes::Bytes,
        ) -> axum::response::Response {
            let header_value = |name| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let body = if header_value(header::CONTENT_ENCODING) == "gzip" {
                let mut inflated = Vec::new();
                if flate2::read::GzDecoder::new(body.as_ref())
                    .read_to_end(&mut inflated)
                    .is_err()
                {
                    return (StatusCode::BAD_REQUEST, "bad gzip").into_response();
                }
                inflated
            } else {
                body.to_vec()
            };
            let request =
                match <ExportTraceServiceRequest as prost::Message>::decode(body.as_slice()) {
                    Ok(request) => request,
                    Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                };
            store
                .content_types
                .lock()
                .unwrap()
                .push(header_value(header::CONTENT_TYPE));
            store.requests.lock().unwrap().push(request);
            let response = prost::Message::encode_to_vec(&ExportTraceServiceResponse::default());
            ([(header::CONTENT_TYPE, "application/x-protobuf")], response).into_response()
        }

        let runtime = runtime();
        let store = Arc::new(Store::default());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind HTTP receiver");
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(traces))
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(store.clone());
        runtime.spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("HTTP receiver server");
        });
        Receiver {
            runtime: Some(runtime),
            port,
            store,
        }
    }

    /// The `Content-Type` of each OTLP/HTTP request received so far.
    pub fn content_types(&self) -> Vec<String> {
        self.store.content_types.lock().unwrap().clone()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.store.requests.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        flatten(&self.requests())
    }

    /// Waits until all `keys` (trace id, span id) arrived; returns all spans received by then.
    pub fn wait_for(&self, keys: &[(Vec<u8>, Vec<u8>)], what: &str, host: &Host) -> Vec<Received> {
        wait_for_keys(
            keys,
            EXPORT_TIMEOUT,
            what,
            || self.spans(),
            || format!("--- host stderr ---\n{}", host.stderr()),
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// File exporter output

/// Parses the complete lines (ending in `\n`) of an OTLP JSON lines file. A missing file is
/// empty; a line that does not parse fails the test.
pub fn read_jsonl(path: &Path) -> Vec<ExportTraceServiceRequest> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str::<ExportTraceServiceRequest>(line).unwrap_or_else(|e| {
                panic!(
                    "line {} of the file exporter output is not an OTLP JSON ExportTraceServiceRequest: {e}\n{line}",
                    i + 1
                )
            })
        })
        .collect()
}

/// Waits until the file exporter's output holds all `keys`; returns all spans in it by then.
pub fn wait_for_file(
    path: &Path,
    keys: &[(Vec<u8>, Vec<u8>)],
    what: &str,
    host: &Host,
) -> Vec<Received> {
    wait_for_keys(
        keys,
        EXPORT_TIMEOUT,
        what,
        || flatten(&read_jsonl(path)),
        || format!("--- host stderr ---\n{}", host.stderr()),
    )
}

// ---------------------------------------------------------------------------------------------
// Building OTLP requests by hand

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// A span of `trace_id` with the given ids; `error` sets status ERROR.
pub fn span(
    trace_id: &[u8],
    span_id: &[u8],
    parent: Option<&[u8]>,
    name: &str,
    error: bool,
) -> Span {
    let start = now_nanos();
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: parent.map(<[u8]>::to_vec).unwrap_or_default(),
        name: name.to_owned(),
        kind: 1, // INTERNAL
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        attributes: vec![kv("test.span", name)],
        status: Some(Status {
            message: if error {
                "boom".to_owned()
            } else {
                String::new()
            },
            code: if error {
                StatusCode::Error as i32
            } else {
                StatusCode::Ok as i32
            },
        }),
        ..Default::default()
    }
}

/// One request with the spans under one resource (`service.name`) and one scope.
pub fn request(service: &str, scope: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(service, scope, spans)],
    }
}

/// One `ResourceSpans` with one scope.
pub fn resource_spans(service: &str, scope: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: scope.to_owned(),
                version: "1.0.0".to_owned(),
                ..Default::default()
            }),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// An error trace of `n` spans (a root and a chain of children; the last one has status ERROR)
/// under one resource and scope. Returns the request and what was sent.
pub fn error_trace(service: &str, scope: &str, n: usize) -> (ExportTraceServiceRequest, SentTrace) {
    let trace_id = new_trace_id();
    let mut sent = SentTrace::new(trace_id);
    let mut spans = Vec::new();
    let mut parent: Option<[u8; 8]> = None;
    for i in 0..n {
        let id = new_span_id();
        spans.push(span(
            &trace_id,
            &id,
            parent.as_ref().map(|p| p.as_slice()),
            &format!("op-{i}"),
            i + 1 == n,
        ));
        sent.add(id, service, scope);
        parent = Some(id);
    }
    (request(service, scope, spans), sent)
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A tokio runtime for the test's own client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Sends `request` over OTLP/gRPC with the generated client.
pub async fn grpc_export(
    port: u16,
    request: ExportTraceServiceRequest,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect to 127.0.0.1:{port}: {e}")))?;
    client
        .export(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Sends `request` over OTLP/gRPC with gzip message compression.
pub async fn grpc_export_gzip(
    port: u16,
    request: ExportTraceServiceRequest,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let client = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect to 127.0.0.1:{port}: {e}")))?;
    client
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .export(request)
        .await
        .map(tonic::Response::into_inner)
}

/// A codec that sends and receives raw message bytes, to put undecodable messages on the wire.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

/// Encoder half of [`RawCodec`].
#[derive(Debug)]
pub struct RawEncoder;

/// Decoder half of [`RawCodec`].
#[derive(Debug)]
pub struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len).to_vec()))
    }
}

/// Sends raw bytes as the message of a `TraceService/Export` call.
pub async fn grpc_export_raw(port: u16, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect to 127.0.0.1:{port}: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
    grpc.unary(
        tonic::Request::new(message),
        http::uri::PathAndQuery::from_static(EXPORT_PATH),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// An HTTP answer: status, `Content-Type`, body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// POSTs `body` to the host's OTLP/HTTP port at `path` with the given headers.
pub fn http_post(
    client: &reqwest::blocking::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpAnswer, reqwest::Error> {
    let mut builder = client.post(url).body(body);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = builder.send()?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes()?.to_vec();
    Ok(HttpAnswer {
        status,
        content_type,
        body,
    })
}

/// A blocking HTTP client with a bounded timeout.
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Gzip-compresses `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Counts spans by (trace id, span id).
pub fn count_by_key(received: &[Received]) -> HashMap<(Vec<u8>, Vec<u8>), usize> {
    let mut counts = HashMap::new();
    for r in received {
        *counts
            .entry((r.span.trace_id.clone(), r.span.span_id.clone()))
            .or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// Prometheus metrics

/// One sample of the Prometheus text exposition: metric name, labels, value.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus / OpenMetrics text format (comments skipped; label values without
/// escaped quotes or commas, which is all the host writes).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.find('}') {
            Some(close) => (&line[..=close], line[close + 1..].trim()),
            None => line.split_once(' ').unwrap_or((line, "")),
        };
        let value = value.split_whitespace().next().unwrap_or_default();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("metrics line {line:?} has no numeric value"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label k=v");
                        (k.trim().to_owned(), v.trim().trim_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, HashMap::new()),
        };
        samples.push(Sample {
            name: name.trim().to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// GETs `/metrics` from `host` and parses it; panics on a non-200 answer.
pub fn scrape(host: &Host) -> Vec<Sample> {
    let url = format!("http://127.0.0.1:{}/metrics", host.ports.metrics);
    let response = http_client()
        .get(&url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    parse_metrics(&response.text().unwrap())
}

/// The sum of the samples named `name` whose labels include all of `labels`.
pub fn metric_sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Polls `/metrics` until `ok` holds for the sum of `name` with `labels` (and the family is
/// there); returns that sum. On timeout, panics naming `what`, with the host's `tracekeeper_`
/// series and stderr.
pub fn wait_metric(
    host: &Host,
    name: &str,
    labels: &[(&str, &str)],
    what: &str,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + METRIC_TIMEOUT;
    loop {
        let samples = scrape(host);
        let v = metric_sum(&samples, name, labels);
        if ok(v) && samples.iter().any(|s| s.name == name) {
            return v;
        }
        if Instant::now() > deadline {
            let related: Vec<String> = samples
                .iter()
                .filter(|s| s.name.starts_with("tracekeeper_"))
                .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
                .collect();
            panic!(
                "timed out waiting for {what}: {name}{labels:?} = {v}\n{}\n--- stderr ---\n{}",
                related.join("\n"),
                host.stderr()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_metric`] until the sum reaches `at_least`.
pub fn wait_metric_at_least(
    host: &Host,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> f64 {
    wait_metric(host, name, labels, &format!("at least {at_least}"), |v| {
        v >= at_least
    })
}
