//! The OpenTelemetry Collector's own `tail_sampling` test configurations (copied from the
//! collector's repository into `../shared/peer-data/tailsampling/`) through `tracekeeper
//! validate`: each `tail_sampling:` section is pasted unchanged under `processors:` of a minimal
//! tracekeeper configuration. The valid ones load; the two the collector rejects
//! (`numeric_attribute` without bounds, and with `min_value` > `max_value`) are rejected with a
//! message naming the policy and the field. A file in the folder that this test does not know
//! fails it, so new peer data gets an explicit expectation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

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
