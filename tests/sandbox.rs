//! The guest is a sandbox: misbehaving guests (`tests/guests/unruly`, which misbehaves on
//! command by span name) driven with real OTLP traffic through the real host. For each fault the
//! tests check that the process stays up, that no accepted span is lost (every span arrives at
//! the downstream receiver exactly once, counted by span id), that exactly the affected traces
//! carry `tracekeeper.fail_open` while the others are decided by a fresh instance the pending
//! traces were replayed into, and that the fault is counted in `/metrics` by kind. Also: the
//! guest gets no files, sockets, environment or arguments; its output reaches the host log with
//! a rate limit; a guest that fails on every call makes the host degraded, not dead; a guest
//! built against another contract version is refused clearly; and a third-party guest
//! (`examples/minimal-guest`) builds with plain cargo and runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// Hold time of a trace in the unruly guest (and the host's `decision_wait`) in most tests.
const WAIT: &str = "500ms";
/// Deadline of a guest call in these tests (the `loop` command runs into it).
const CALL_TIMEOUT: &str = "200ms";
/// Time left of a trap window once the host is ready, for the degraded-state checks.
const MIN_TRAP_WINDOW_LEFT: Duration = Duration::from_secs(3);
/// Memory cap in these tests (the `alloc` command runs into it).
const MEMORY_LIMIT_MIB: u32 = 32;

/// Builds packages of this workspace for wasm32-wasip2 into the shared guest target directory.
fn build_wasm(manifest: Option<&Path>, packages: &[&str]) {
    let root = workspace_root();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--release",
            "--target-dir",
        ])
        .arg(root.join("target").join("guest-wasm"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    if let Some(m) = manifest {
        cmd.arg("--manifest-path").arg(m);
    }
    for p in packages {
        cmd.args(["-p", p]);
    }
    let status = cmd.status().expect("run cargo to build wasm guests");
    assert!(
        status.success(),
        "building {packages:?} {manifest:?} failed"
    );
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wasm(name: &str) -> PathBuf {
    workspace_root()
        .join("target/guest-wasm/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// Builds the test guests once per test binary.
fn test_guests() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        build_wasm(
            None,
            &[
                "tracekeeper-test-guest-unruly",
                "tracekeeper-test-guest-contract-v2",
            ],
        )
    });
}

fn unruly_guest() -> PathBuf {
    test_guests();
    wasm("tracekeeper_test_guest_unruly")
}

/// Host configuration for the unruly guest: `unruly` is the body of `processors.unruly`, `guest`
/// extra lines of the `guest:` section.
fn unruly_config(ports: &Ports, receiver: u16, wait: &str, unruly: &str, guest: &str) -> String {
    format!(
        r#"receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
processors:
  tail_sampling: {{decision_wait: {wait}}}
  unruly: {{{unruly}}}
exporters:
  otlp: {{endpoint: "127.0.0.1:{receiver}", tls: {{insecure: true}}}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
guest:
  path: "{path}"
  call_timeout: {CALL_TIMEOUT}
  memory_limit_mib: {MEMORY_LIMIT_MIB}
{guest}
"#,
        grpc = ports.grpc,
        health = ports.health,
        metrics = ports.metrics,
        path = unruly_guest().display(),
    )
}

/// Everything the test sent, to check that nothing accepted was lost.
#[derive(Default)]
struct Sent {
    traces: Vec<SentTrace>,
}

impl Sent {
    /// A trace of one root span named `name` (a command for the unruly guest) and `children`
    /// ordinary child spans, in one request.
    fn trace(&mut self, name: &str, children: usize) -> (ExportTraceServiceRequest, SentTrace) {
        let trace = self.build(name, children);
        let req = request("unruly-test", "scope", trace.1.clone());
        (req, trace.0)
    }

    fn build(
        &mut self,
        name: &str,
        children: usize,
    ) -> (SentTrace, Vec<opentelemetry_proto::tonic::trace::v1::Span>) {
        let trace_id = new_trace_id();
        let root = new_span_id();
        let mut sent = SentTrace::new(trace_id);
        sent.add(root, "unruly-test", "scope");
        let mut spans = vec![span(&trace_id, &root, None, name, false)];
        for i in 0..children {
            let id = new_span_id();
            sent.add(id, "unruly-test", "scope");
            spans.push(span(
                &trace_id,
                &id,
                Some(&root),
                &format!("child {i}"),
                false,
            ));
        }
        self.traces.push(sent.clone());
        (sent, spans)
    }

    /// Several traces in one request, one per name.
    fn batch(&mut self, names: &[&str]) -> (ExportTraceServiceRequest, Vec<SentTrace>) {
        let mut spans = Vec::new();
        let mut traces = Vec::new();
        for name in names {
            let (t, s) = self.build(name, 1);
            spans.extend(s);
            traces.push(t);
        }
        (request("unruly-test", "scope", spans), traces)
    }

    fn keys(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.traces.iter().flat_map(SentTrace::keys).collect()
    }
}

fn send(host: &Host, req: ExportTraceServiceRequest) {
    let rt = runtime();
    rt.block_on(grpc_export(host.ports.grpc, req))
        .unwrap_or_else(|e| panic!("export failed: {e}\n--- stderr ---\n{}", host.stderr()));
}

/// Waits until every span sent arrived, then checks each arrived exactly once.
fn all_spans_arrive_once(receiver: &Receiver, sent: &Sent, host: &Host) -> Vec<Received> {
    let got = receiver.wait_for(&sent.keys(), "every span sent", host);
    let counts = count_by_key(&got);
    for key in sent.keys() {
        assert_eq!(
            counts.get(&key),
            Some(&1),
            "span {}/{} arrived {:?} times, expected once",
            hex(&key.0),
            hex(&key.1),
            counts.get(&key)
        );
    }
    got
}

/// The host's log without terminal colour codes.
fn log(host: &Host) -> String {
    let raw = host.stderr();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_fail_open(r: &Received) -> bool {
    r.span.attributes.iter().any(|a| {
        a.key == "tracekeeper.fail_open"
            && matches!(
                a.value.as_ref().and_then(|v| v.value.as_ref()),
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::BoolValue(true))
            )
    })
}

/// Asserts that every span of `trace` was kept fail-open (no policy).
fn assert_fail_open(got: &[Received], trace: &SentTrace, what: &str) {
    let spans = spans_of(got, &trace.trace_id);
    assert_eq!(spans.len(), trace.spans.len(), "{what}: spans exported");
    for s in spans {
        assert!(
            is_fail_open(s),
            "{what}: span {} of trace {} is not tagged fail_open: {:?}",
            s.span.name,
            hex(&trace.trace_id),
            s.span.attributes
        );
        assert_eq!(s.attr_str("tracekeeper.policy"), None, "{what}: policy");
    }
}

/// Asserts that `trace` was decided by the guest (policy `unruly`), not kept fail-open.
fn assert_decided(got: &[Received], trace: &SentTrace, what: &str) {
    let spans = spans_of(got, &trace.trace_id);
    assert_eq!(spans.len(), trace.spans.len(), "{what}: spans exported");
    for s in spans {
        assert!(
            !is_fail_open(s),
            "{what}: trace {} was kept fail-open, expected a guest decision",
            hex(&trace.trace_id)
        );
        assert_eq!(
            s.attr_str("tracekeeper.policy").as_deref(),
            Some("unruly"),
            "{what}: policy of trace {}",
            hex(&trace.trace_id)
        );
    }
}

fn faults(host: &Host) -> HashMap<&'static str, f64> {
    let samples = scrape(host);
    ["trap", "timeout", "memory", "bad_answer"]
        .into_iter()
        .map(|k| {
            (
                k,
                metric_sum(&samples, "tracekeeper_guest_faults_total", &[("kind", k)]),
            )
        })
        .collect()
}

/// Waits (bounded) until `/metrics` shows `want` faults of `kind`; returns all fault counts.
fn wait_for_faults(host: &Host, kind: &str, want: f64) -> HashMap<&'static str, f64> {
    let deadline = Instant::now() + EXPORT_TIMEOUT;
    loop {
        let f = faults(host);
        if f[kind] >= want {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "tracekeeper_guest_faults_total{{kind={kind}}} stayed {} (want {want})\n--- stderr ---\n{}",
            f[kind],
            host.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_trap_in_the_first_batch_keeps_that_batch_and_replays_the_rest() {
    let receiver = Receiver::start();
    let ports = Ports::new();
    let yaml = unruly_config(&ports, receiver.port, "2s", "", "");
    let mut host = Host::start_yaml(ports, &yaml);
    let mut sent = Sent::default();

    // The very first batch traps: both of its traces are kept fail-open.
    let (req, first) = sent.batch(&["trap", "innocent bystander"]);
    send(&host, req);
    // Later traces go to a fresh instance and wait there...
    let (req, pending) = sent.batch(&["a", "b"]);
    send(&host, req);
    // ...and survive the next trap, which takes only its own batch down: they are replayed
    // into the next instance and decided by it.
    let (req, second) = sent.trace("trap", 2);
    send(&host, req);
    let (req, after) = sent.trace("c", 0);
    send(&host, req);

    let got = all_spans_arrive_once(&receiver, &sent, &host);
    assert_fail_open(&got, &first[0], "the trace that trapped in the first batch");
    assert_fail_open(&got, &first[1], "the other trace of the first batch");
    assert_fail_open(&got, &second, "the trace that trapped later");
    for t in &pending {
        assert_decided(&got, t, "a trace pending when the guest trapped");
    }
    assert_decided(&got, &after, "a trace sent after the traps");
    let f = faults(&host);
    assert_eq!(f["trap"], 2.0, "trap faults: {f:?}");
    assert_eq!(f["memory"] + f["timeout"] + f["bad_answer"], 0.0, "{f:?}");
    host.assert_healthy();
    host.terminate_cleanly();
}

#[test]
fn a_trap_on_one_trace_at_its_decision_keeps_only_the_traces_that_were_due() {
    let receiver = Receiver::start();
    let ports = Ports::new();
    // The host counts as due what is at least `decision_wait` old; the young trace is sent
    // well inside that window, so it is not due when the old one is decided.
    let yaml = unruly_config(&ports, receiver.port, "2s", "", "");
    let mut host = Host::start_yaml(ports, &yaml);
    let mut sent = Sent::default();

    let (req, poisoned) = sent.trace("trap-on-decide", 1);
    send(&host, req);
    std::thread::sleep(Duration::from_millis(1000));
    let (req, young) = sent.trace("young", 1);
    send(&host, req);

    let got = all_spans_arrive_once(&receiver, &sent, &host);
    assert_fail_open(&got, &poisoned, "the trace whose decision traps");
    assert_decided(
        &got,
        &young,
        "a younger trace, replayed into the new instance",
    );
    assert_eq!(faults(&host)["trap"], 1.0);
    host.assert_healthy();
    host.terminate_cleanly();
}

#[test]
fn each_fault_kind_is_kept_fail_open_and_counted() {
    let receiver = Receiver::start();
    let ports = Ports::new();
    let yaml = unruly_config(&ports, receiver.port, "2s", "", "  stack_limit_kib: 256");
    let mut host = Host::start_yaml(ports, &yaml);
    let mut sent = Sent::default();

    // A trace pending across all the faults: replayed each time, decided in the end.
    let (req, survivor) = sent.trace("survivor", 3);
    send(&host, req);
    let mut culprits = Vec::new();
    // Each fault is followed by a good batch, so faults are never consecutive.
    for (command, kind) in [
        ("loop", "timeout"),
        ("alloc", "memory"),
        ("stack", "trap"),
        ("err", "bad_answer"),
        ("garbage", "bad_answer"),
    ] {
        let (req, t) = sent.trace(command, 1);
        send(&host, req);
        let (req, ok) = sent.trace("fine", 0);
        send(&host, req);
        culprits.push((command, kind, t, ok));
    }

    let got = all_spans_arrive_once(&receiver, &sent, &host);
    for (command, _, t, ok) in &culprits {
        assert_fail_open(&got, t, command);
        assert_decided(&got, ok, &format!("the trace after {command}"));
    }
    assert_decided(&got, &survivor, "the trace pending across every fault");
    let f = faults(&host);
    assert_eq!(f["timeout"], 1.0, "{f:?}");
    assert_eq!(f["memory"], 1.0, "{f:?}");
    assert_eq!(f["trap"], 1.0, "{f:?}");
    assert_eq!(f["bad_answer"], 2.0, "{f:?}");
    let stderr = log(&host);
    for call in [
        "guest fault",
        "call=\"ingest\"",
        "kind=\"timeout\"",
        "kind=\"memory\"",
        // The `stack` command hits the wasm stack limit, not some other trap.
        "call stack exhausted",
    ] {
        assert!(stderr.contains(call), "log lacks {call:?}:\n{stderr}");
    }
    assert!(
        stderr.contains(&unruly_guest().display().to_string()),
        "fault logs do not name the guest:\n{stderr}"
    );
    host.assert_healthy();
    host.terminate_cleanly();
}

#[test]
fn answers_that_break_the_contract_keep_the_affected_traces() {
    let receiver = Receiver::start();
    let ports = Ports::new();
    let yaml = unruly_config(&ports, receiver.port, WAIT, "", "");
    let mut host = Host::start_yaml(ports, &yaml);
    let mut sent = Sent::default();

    // Decides a trace twice in one answer: that trace is kept fail-open.
    let (req, twice) = sent.trace("twice", 1);
    send(&host, req);
    wait_for_faults(&host, "bad_answer", 1.0);
    // Decides a trace that does not exist: the instance is replaced and the traces of the call
    // are kept (replaying them would repeat the error).
    let (req, unknown) = sent.trace("unknown-id", 1);
    send(&host, req);
    wait_for_faults(&host, "bad_answer", 2.0);
    // Malformed bytes: the batch's traces are kept.
    let (req, garbage) = sent.batch(&["garbage", "same batch as garbage"]);
    send(&host, req);
    let (req, after) = sent.trace("after", 0);
    send(&host, req);

    let got = all_spans_arrive_once(&receiver, &sent, &host);
    assert_fail_open(&got, &twice, "the trace decided twice");
    assert_fail_open(
        &got,
        &unknown,
        "the trace whose answer named an unknown trace",
    );
    assert_fail_open(&got, &garbage[0], "the trace whose answer was garbage");
    assert_fail_open(&got, &garbage[1], "the other trace of the garbage batch");
    assert_decided(&got, &after, "a trace after the bad answers");
    assert!(
        !got.iter().any(|r| r.span.trace_id == [0xEE; 16]),
        "a made-up trace id was exported"
    );
    let f = faults(&host);
    assert_eq!(f["bad_answer"], 3.0, "{f:?}");
    assert_eq!(f["trap"] + f["memory"] + f["timeout"], 0.0, "{f:?}");
    host.assert_healthy();
    host.terminate_cleanly();
}

#[test]
fn the_guest_gets_no_files_sockets_environment_or_arguments() {
    let receiver = Receiver::start();
    // Where the guest tries to connect: if anything arrives here, the sandbox leaked.
    let bait = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let bait_addr = bait.local_addr().unwrap();
    let ports = Ports::new();
    let yaml = unruly_config(
        &ports,
        receiver.port,
        WAIT,
        &format!("connect: \"{bait_addr}\""),
        "",
    );
    let mut host = Host::start_yaml(ports, &yaml);
    let mut sent = Sent::default();
    let (req, probe) = sent.trace("sandbox", 0);
    send(&host, req);

    let got = all_spans_arrive_once(&receiver, &sent, &host);
    assert_decided(&got, &probe, "the probing trace");
    let span = spans_of(&got, &probe.trace_id)[0];
    let report = |k: &str| {
        span.attr_str(&format!("unruly.{k}"))
            .unwrap_or_else(|| panic!("no unruly.{k} in {:?}", span.span.attributes))
    };
    let unruly: Vec<_> = span
        .span
        .attributes
        .iter()
        .filter(|a| a.key.starts_with("unruly."))
        .map(|a| format!("{}={:?}", a.key, a.value))
        .collect();
    eprintln!("what the guest got: {unruly:#?}");
    for denied in [
        "file_read",
        "file_create",
        "dir_list",
        "tcp_connect",
        "tcp_listen",
        "udp_bind",
        "dns",
        "env_path",
    ] {
        let got = report(denied);
        assert!(got.starts_with("err:"), "unruly.{denied} = {got:?}");
    }
    // The sockets were refused by the host (not merely unsupported by the guest's libc).
    for socket in ["tcp_connect", "tcp_listen", "udp_bind"] {
        let got = report(socket);
        assert!(
            got.contains("Permission denied"),
            "unruly.{socket} = {got:?}"
        );
    }
    assert_eq!(report("env_count"), "0");
    assert_eq!(report("args_count"), "0");
    assert!(
        matches!(bait.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the guest reached a socket on the host"
    );
    assert!(!host.dir().join("unruly-was-here").exists());
    assert!(!workspace_root().join("unruly-was-here").exists());
    host.assert_healthy();
    host.terminate_cleanly();
}

#[test]
fn guest_output_goes_to_the_host_log_with_a_rate_limit() {
    let receiver = Receiver::start();
    let ports = Ports::new();
    let yaml = unruly_config(&ports, receiver.port, WAIT, "print_on_configure: true", "");
    let mut host = Host::start_yaml(ports, &yaml);
    let mut sent = Sent::default();
    let (req, printed) = sent.trace("print", 0);
    send(&host, req);
    let (req, flooded) = sent.trace("flood", 0);
    send(&host, req);

    let got = all_spans_arrive_once(&receiver, &sent, &host);
    assert_decided(&got, &printed, "the trace whose ingest printed");
    assert_decided(&got, &flooded, "the trace whose ingest flooded the output");
    let stderr = log(&host);
    let guest = unruly_guest().display().to_string();
    let lines_with = |needle: &str| stderr.lines().filter(|l| l.contains(needle)).count();
    for (needle, stream) in [
        ("unruly guest: configured", "stdout"),
        ("unruly guest: hello on stdout", "stdout"),
        ("unruly guest: hello on stderr", "stderr"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in the host log:\n{stderr}"));
        assert!(line.contains(&guest), "no guest name in {line:?}");
        assert!(line.contains(&format!("stream=\"{stream}\"")), "{line:?}");
    }
    let flood = lines_with("unruly guest: flood line");
    assert!(flood > 0, "no flood line logged");
    assert!(
        flood < 1000,
        "all {flood} flood lines logged: no rate limit"
    );
    host.assert_healthy();
    // The count of dropped lines is reported with the next line let through.
    let (req, later) = sent.trace("print", 0);
    std::thread::sleep(Duration::from_millis(200));
    send(&host, req);
    receiver.wait_for(&later.keys(), "the trace printing after the flood", &host);
    let stderr = log(&host);
    assert!(
        stderr.contains("lines were dropped"),
        "no report of dropped lines:\n{stderr}"
    );
    host.terminate_cleanly();
}

/// `GET /` on the health endpoint: status and body.
fn health(host: &Host) -> (u16, String) {
    let r = http_client()
        .get(format!("http://127.0.0.1:{}/", host.ports.health))
        .send()
        .expect("GET health");
    (r.status().as_u16(), r.text().unwrap_or_default())
}

fn degraded_gauge(host: &Host) -> f64 {
    metric_sum(&scrape(host), "tracekeeper_guest_degraded", &[])
}

#[test]
fn a_guest_failing_every_call_makes_the_host_degraded_not_dead() {
    let receiver = Receiver::start();
    // Every ingest and tick traps until a host-clock time: long enough to watch the degraded
    // state, short enough to watch the recovery. The window must not be used up by the host's
    // start (slow on a busy machine): if it was, start again with a longer one.
    let mut attempt = 0;
    let (mut host, trap_window) = loop {
        attempt += 1;
        let trap_window = Duration::from_secs(5 * attempt);
        let until = now_nanos() + trap_window.as_nanos() as u64;
        let ports = Ports::new();
        let yaml = unruly_config(
            &ports,
            receiver.port,
            WAIT,
            &format!("trap_until_ns: {until}"),
            "  max_consecutive_faults: 2\n  retry_initial_interval: 200ms\n  retry_max_interval: 400ms",
        );
        let host = Host::start_yaml(ports, &yaml);
        if now_nanos() + MIN_TRAP_WINDOW_LEFT.as_nanos() as u64 <= until {
            break (host, trap_window);
        }
        assert!(
            attempt < 3,
            "the host took longer than its trap window to start, {attempt} times"
        );
    };
    let mut sent = Sent::default();
    let mut failed = Vec::new();
    for i in 0..2 {
        let (req, t) = sent.trace(&format!("fault {i}"), 1);
        send(&host, req);
        failed.push(t);
    }
    // Degraded: health says why, the gauge is 1, and spans are kept as they arrive.
    let deadline = Instant::now() + EXPORT_TIMEOUT;
    let (status, body) = loop {
        let (status, body) = health(&host);
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 503, "health while degraded: {body}");
    assert!(body.contains("degraded"), "{body}");
    assert!(body.contains("trap"), "{body}");
    assert_eq!(degraded_gauge(&host), 1.0);
    let (req, while_degraded) = sent.trace("while degraded", 2);
    send(&host, req);
    receiver.wait_for(&while_degraded.keys(), "a trace sent while degraded", &host);

    // Re-tries keep failing until the window ends, then one succeeds.
    let deadline = Instant::now() + trap_window + EXPORT_TIMEOUT;
    while health(&host).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the host never recovered\n--- stderr ---\n{}",
            host.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(degraded_gauge(&host), 0.0);
    let f = faults(&host);
    assert!(f["trap"] > 2.0, "no failed re-try was counted: {f:?}");
    let (req, after) = sent.trace("after recovery", 1);
    send(&host, req);

    let got = all_spans_arrive_once(&receiver, &sent, &host);
    for t in &failed {
        assert_fail_open(&got, t, "a trace whose ingest trapped");
    }
    assert_fail_open(&got, &while_degraded, "a trace sent while degraded");
    assert_decided(&got, &after, "a trace sent after the recovery");
    host.assert_healthy();
    host.terminate_cleanly();
}

#[test]
fn a_guest_built_against_another_contract_version_is_refused_clearly() {
    test_guests();
    let v2 = wasm("tracekeeper_test_guest_contract_v2");
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let config = write_config(
        dir.path(),
        "config.yaml",
        &format!(
            "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: \"127.0.0.1:{}\"}}}}}}}}\n\
             exporters: {{debug: {{}}}}\n\
             extensions: {{health_check: {{endpoint: \"127.0.0.1:{}\"}}}}\n\
             service: {{telemetry: {{metrics: {{address: \"127.0.0.1:{}\"}}}}}}\n",
            ports.grpc, ports.health, ports.metrics
        ),
    );
    for command in ["validate", "run"] {
        let (status, _, stderr) = run_binary(
            &[
                command,
                "--config",
                config.to_str().unwrap(),
                "--guest",
                v2.to_str().unwrap(),
            ],
            &[],
            EXIT_TIMEOUT,
        );
        assert!(!status.success(), "{command} accepted a 2.0.0 guest");
        for needle in [
            "version 2.0.0",
            "tracekeeper:sampler/sampler@2.0.0",
            "tracekeeper:sampler@1.0.0",
            "rebuild the guest",
        ] {
            assert!(
                stderr.contains(needle),
                "{command}: {needle:?} not in {stderr}"
            );
        }
    }
}

#[test]
fn several_workers_need_a_guest_with_the_shard_interface() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let yaml = unruly_config(&ports, 1, "1s", "", "  workers: 2");
    let config = write_config(dir.path(), "config.yaml", &yaml);
    let (status, _, stderr) = run_binary(
        &["validate", "--config", config.to_str().unwrap()],
        &[],
        EXIT_TIMEOUT,
    );
    assert!(
        !status.success(),
        "validate accepted 2 workers for a guest without `shard`"
    );
    for needle in ["guest.workers", "tracekeeper:sampler/shard@1.0.0"] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    // Without the key the same guest runs as a single worker.
    let yaml = unruly_config(&ports, 1, "1s", "", "");
    let config = write_config(dir.path(), "config.yaml", &yaml);
    let (status, _, stderr) = run_binary(
        &["validate", "--config", config.to_str().unwrap()],
        &[],
        EXIT_TIMEOUT,
    );
    assert!(status.success(), "{stderr}");
}

#[test]
fn sandbox_limits_are_checked_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    for (guest, needle) in [
        ("stack_limit_kib: 1", "guest.stack_limit_kib"),
        ("memory_limit_mib: 0", "guest.memory_limit_mib"),
        ("call_timeout: 1ms", "guest.call_timeout"),
        ("max_consecutive_faults: 0", "guest.max_consecutive_faults"),
        (
            "{retry_initial_interval: 2m, retry_max_interval: 1m}",
            "guest.retry_initial_interval",
        ),
        ("stack_limt_kib: 512", "guest.stack_limt_kib"),
        ("workers: 0", "guest.workers"),
        ("workers: 65", "guest.workers"),
    ] {
        let guest = if guest.starts_with('{') {
            guest.to_string()
        } else {
            format!("{{{guest}}}")
        };
        let yaml = format!(
            "receivers: {{otlp: {{protocols: {{grpc: {{}}}}}}}}\nexporters: {{debug: {{}}}}\nguest: {guest}\n"
        );
        let config = write_config(dir.path(), "config.yaml", &yaml);
        let (status, _, stderr) = run_binary(
            &["validate", "--config", config.to_str().unwrap()],
            &[],
            EXIT_TIMEOUT,
        );
        assert!(!status.success(), "accepted {guest}");
        assert!(
            stderr.contains(needle),
            "{guest}: {needle:?} not in {stderr}"
        );
    }
}

#[test]
fn the_minimal_third_party_guest_builds_with_plain_cargo_and_runs() {
    let manifest = workspace_root().join("examples/minimal-guest/Cargo.toml");
    build_wasm(Some(&manifest), &[]);
    let guest = wasm("keep_root_attribute");
    let receiver = Receiver::start();
    let ports = Ports::new();
    let yaml = format!(
        r#"receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
processors:
  keep_root_attribute: {{key: vip, value: "true", decision_wait: 300ms}}
exporters:
  otlp: {{endpoint: "127.0.0.1:{receiver}", tls: {{insecure: true}}}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
guest:
  path: "{path}"
"#,
        grpc = ports.grpc,
        receiver = receiver.port,
        health = ports.health,
        metrics = ports.metrics,
        path = guest.display(),
    );
    let mut host = Host::start_yaml(ports, &yaml);
    let rt = runtime();
    // Three traces in arrival order: no attribute, the attribute on a child only, the
    // attribute on the root. Only the last is kept.
    let make = |root_vip: bool, child_vip: bool| {
        let trace_id = new_trace_id();
        let (root, child) = (new_span_id(), new_span_id());
        let mut r = span(&trace_id, &root, None, "GET /", false);
        let mut c = span(&trace_id, &child, Some(&root), "SELECT", false);
        if root_vip {
            r.attributes.push(kv("vip", "true"));
        }
        if child_vip {
            c.attributes.push(kv("vip", "true"));
        }
        let mut sent = SentTrace::new(trace_id);
        sent.add(root, "shop", "scope");
        sent.add(child, "shop", "scope");
        (request("shop", "scope", vec![r, c]), sent)
    };
    let (req_plain, plain) = make(false, false);
    let (req_child, child_only) = make(false, true);
    let (req_vip, vip) = make(true, false);
    for req in [req_plain, req_child, req_vip] {
        rt.block_on(grpc_export(host.ports.grpc, req)).unwrap();
    }
    let got = receiver.wait_for(&vip.keys(), "the trace whose root has vip=true", &host);
    for s in spans_of(&got, &vip.trace_id) {
        assert_eq!(
            s.attr_str("tracekeeper.policy").as_deref(),
            Some("root_attribute")
        );
    }
    // Decided in arrival order, before the kept one.
    assert_absent(&got, &plain.trace_id, "a trace without the attribute");
    assert_absent(
        &got,
        &child_only.trace_id,
        "a trace with the attribute on a child only",
    );
    host.assert_healthy();
    host.terminate_cleanly();
}
