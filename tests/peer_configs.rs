//! The OpenTelemetry Collector's own `tail_sampling` test configurations (copied from the
//! collector's repository into `../shared/peer-data/tailsampling/`) through `tracekeeper
//! validate`: each `tail_sampling:` section is pasted unchanged under `processors:` of a minimal
//! tracekeeper configuration. The valid ones load; the two the collector rejects
//! (`numeric_attribute` without bounds, and with `min_value` > `max_value`) are rejected with a
//! message naming the policy and the field. A file in the folder that this test does not know
//! fails it, so new peer data gets an explicit expectation. Last, attribute, resource and OTTL
//! event policies run through the real host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::Event;

/// A `validate` must finish well within this.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// What `validate` must do with a peer file: load it, or reject it with messages containing
/// all of these.
enum Expect {
    Valid,
    Invalid(&'static [&'static str]),
}

/// Every peer file and its expectation.
const PEER_FILES: [(&str, Expect); 5] = [
    ("tail_sampling_config.yaml", Expect::Valid),
    ("tail_sampling_config.older-01e977cf.yaml", Expect::Valid),
    ("tail_sampling_config_errormode.yaml", Expect::Valid),
    (
        "numeric_attribute_with_minvalue_greather_than_maxvalue.yaml",
        Expect::Invalid(&[
            "processors.tail_sampling.policies[0] (name: test-policy-3): \
             numeric_attribute.min_value: must not be greater than max_value (500 > 100)",
        ]),
    ),
    (
        "numeric_attribute_without_minvalue_or_maxvalue.yaml",
        Expect::Invalid(&[
            "processors.tail_sampling.policies[0] (name: test-policy-3): numeric_attribute: set \
             min_value, max_value or both",
        ]),
    ),
];

/// The peer data folder: `<repository>/../shared/peer-data/tailsampling`.
fn peer_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/peer-data/tailsampling");
    assert!(
        dir.is_dir(),
        "the peer data folder {} is missing: it holds the collector's tail_sampling test \
         configurations (see its PROVENANCE.md) that this test loads",
        dir.display()
    );
    dir
}

/// A minimal tracekeeper configuration with `section` (a top-level `tail_sampling:` YAML
/// document) under `processors:`.
fn wrap(section: &str) -> String {
    let indented: String = section
        .lines()
        .map(|l| {
            if l.trim().is_empty() {
                "\n".to_owned()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc: {{endpoint: \"127.0.0.1:4317\"}}\n\
         processors:\n{indented}exporters:\n  debug: {{}}\n"
    )
}

fn validate(yaml: &str) -> (std::process::ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "config.yaml", yaml);
    run_binary(
        &["validate", "--config", path.to_str().unwrap()],
        &[],
        CLI_TIMEOUT,
    )
}

#[test]
fn every_peer_file_is_handled_as_the_collector_does() {
    let dir = peer_dir();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let expect = PEER_FILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| e)
            .unwrap_or_else(|| panic!("peer file {name} has no expectation in this test: add one"));
        let section = std::fs::read_to_string(&path).unwrap();
        assert!(
            section.starts_with("tail_sampling:"),
            "{name} is not a tail_sampling section"
        );
        let yaml = wrap(&section);
        let (status, stdout, stderr) = validate(&yaml);
        match expect {
            Expect::Valid => assert!(
                status.success() && stdout.contains("config OK"),
                "{name} was rejected ({status})\n--- stderr ---\n{stderr}\n--- config ---\n{yaml}"
            ),
            Expect::Invalid(needles) => {
                assert!(
                    !status.success(),
                    "{name} was accepted\n--- config ---\n{yaml}"
                );
                for needle in *needles {
                    assert!(
                        stderr.contains(needle),
                        "{name}: stderr should contain {needle:?}, got:\n{stderr}"
                    );
                }
            }
        }
        seen.push(name);
    }
    for (name, _) in &PEER_FILES {
        assert!(
            seen.iter().any(|s| s == name),
            "peer file {name} is missing from {}",
            dir.display()
        );
    }
}

#[test]
fn a_peer_config_with_a_broken_field_names_policy_and_field() {
    let section = std::fs::read_to_string(peer_dir().join("tail_sampling_config.yaml")).unwrap();
    let broken = section.replace(
        "latency: {threshold_ms: 5000}",
        "latency: {threshold_ms: 5s}",
    );
    assert_ne!(
        broken, section,
        "the peer file changed: pick another field to break"
    );
    let (status, _, stderr) = validate(&wrap(&broken));
    assert!(!status.success());
    assert!(
        stderr.contains(
            "processors.tail_sampling.policies[1] (name: test-policy-2): latency.threshold_ms: \
             expected an integer, got string \"5s\""
        ),
        "{stderr}"
    );
}

/// An integer attribute.
fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// A boolean attribute.
fn kv_bool(key: &str, value: bool) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::BoolValue(value)),
        }),
        ..Default::default()
    }
}

/// Attribute, resource and event policies through the real host: the guest's interest makes
/// the host extract exactly the keys (and the events) the policies read.
#[test]
fn attribute_and_ottl_policies_through_the_host() {
    let receiver = Receiver::start();
    let ports = Ports::new();
    let base = HostConfig::new(Exporter::Otlp(receiver.port))
        .decision_wait("1s")
        .yaml(&ports);
    let (head, rest) = base.split_once("    policies:\n").unwrap();
    let (_, tail) = rest.split_once("exporters:").unwrap();
    let yaml = format!(
        r#"{head}    policies:
      - name: drop-health
        type: drop
        drop: {{drop_sub_policy: [{{type: string_attribute, string_attribute: {{key: url.path, values: ["^/health"], enabled_regex_matching: true}}}}]}}
      - {{name: vip, type: string_attribute, string_attribute: {{key: tenant, values: [gold]}}}}
      - {{name: big, type: numeric_attribute, numeric_attribute: {{key: order.total, min_value: 1000}}}}
      - {{name: flagged, type: boolean_attribute, boolean_attribute: {{key: debug, value: true}}}}
      - name: io-errors
        type: ottl_condition
        ottl_condition:
          spanevent: ['name == "exception" and IsMatch(attributes["exception.type"], "IOError$")']
exporters:{tail}"#
    );
    let host = Host::start_yaml(ports, &yaml);
    let rt = runtime();

    // One single-span (complete, OK) trace per case: (what, expected policy or None).
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("health check, also flagged", None),
        ("gold tenant (resource)", Some("vip")),
        ("big order", Some("big")),
        ("debug flag", Some("flagged")),
        ("IOError event", Some("io-errors")),
        ("plain", None),
        ("silver tenant, small order, debug false", None),
    ];
    let mut groups = Vec::new();
    let mut traces = Vec::new();
    for (i, _) in cases.iter().enumerate() {
        let trace_id = new_trace_id();
        let span_id = new_span_id();
        let mut s = span(&trace_id, &span_id, None, "op", false);
        let mut tenant = None;
        match i {
            0 => {
                s.attributes.push(kv("url.path", "/healthz"));
                s.attributes.push(kv_bool("debug", true));
            }
            1 => tenant = Some("gold"),
            2 => s.attributes.push(kv_int("order.total", 1500)),
            3 => s.attributes.push(kv_bool("debug", true)),
            4 => s.events.push(Event {
                time_unix_nano: s.start_time_unix_nano,
                name: "exception".to_owned(),
                attributes: vec![kv("exception.type", "java.io.IOError")],
                ..Default::default()
            }),
            6 => {
                tenant = Some("silver");
                s.attributes.push(kv_int("order.total", 10));
                s.attributes.push(kv_bool("debug", false));
            }
            _ => {}
        }
        let mut rs = resource_spans("shop", "scope", vec![s]);
        if let Some(t) = tenant {
            rs.resource
                .as_mut()
                .unwrap()
                .attributes
                .push(kv("tenant", t));
        }
        groups.push(rs);
        traces.push((trace_id, span_id));
    }
    rt.block_on(grpc_export(
        host.ports.grpc,
        ExportTraceServiceRequest {
            resource_spans: groups,
        },
    ))
    .unwrap();

    let kept: Vec<(Vec<u8>, Vec<u8>)> = cases
        .iter()
        .zip(&traces)
        .filter(|((_, p), _)| p.is_some())
        .map(|(_, (t, s))| (t.to_vec(), s.to_vec()))
        .collect();
    let got = receiver.wait_for(&kept, "the traces the policies keep", &host);
    // All seven were decided in the same tick; wait until the host counted them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric_sum(&scrape(&host), "tracekeeper_traces_decided_total", &[]) < 7.0 {
        assert!(std::time::Instant::now() < deadline, "{}", host.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let samples = scrape(&host);
    assert_eq!(
        metric_sum(
            &samples,
            "tracekeeper_traces_decided_total",
            &[("decision", "dropped"), ("policy", "drop-health")]
        ),
        1.0
    );
    for ((what, policy), (trace_id, _)) in cases.iter().zip(&traces) {
        match policy {
            Some(p) => {
                let spans = spans_of(&got, trace_id);
                assert_eq!(spans.len(), 1, "{what}");
                assert_eq!(
                    spans[0].attr_str("tracekeeper.policy").as_deref(),
                    Some(*p),
                    "{what}"
                );
            }
            None => assert_absent(&got, trace_id, what),
        }
    }
}
