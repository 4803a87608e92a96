//! Tests of the `tracekeeper` command line: `validate` accepts a good config and rejects bad
//! ones with a message naming the offending key path; `run` refuses to start on such a config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

/// A `validate` or a failing `run` must finish well within this.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A valid config (the collector layout) with `edit` applied to its text.
fn config_with(edit: impl FnOnce(String) -> String) -> String {
    edit(HostConfig::new(Exporter::Debug).yaml(&Ports::new()))
}

/// Runs `tracekeeper validate --config <yaml written to a file>`.
fn validate(yaml: &str, env: &[(&str, &str)]) -> (std::process::ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "config.yaml", yaml);
    run_binary(
        &["validate", "--config", path.to_str().unwrap()],
        env,
        CLI_TIMEOUT,
    )
}

/// Asserts `validate` rejects `yaml` with a stderr message that contains `needle`.
fn assert_rejected(yaml: &str, needle: &str) {
    let (status, stdout, stderr) = validate(yaml, &[]);
    assert!(
        !status.success(),
        "validate accepted a bad config (stdout {stdout:?})\n--- config ---\n{yaml}"
    );
    assert!(
        stderr.contains(needle),
        "validate's stderr should name {needle:?}, got:\n{stderr}\n--- config ---\n{yaml}"
    );
}

#[test]
fn validate_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    for exporter in [
        Exporter::Debug,
        Exporter::Otlp(4317),
        Exporter::OtlpHttp(4318),
        Exporter::File(dir.path().join("kept.jsonl")),
    ] {
        let yaml = HostConfig::new(exporter).baseline(10.0).yaml(&Ports::new());
        let (status, stdout, stderr) = validate(&yaml, &[]);
        assert!(
            status.success(),
            "validate rejected a good config: {status}\n--- stderr ---\n{stderr}\n--- config ---\n{yaml}"
        );
        assert!(
            stdout.contains("config OK"),
            "validate's stdout: {stdout:?}"
        );
    }
}

#[test]
fn validate_expands_environment_variables() {
    let yaml = config_with(|y| {
        let start = y.find("      grpc: ").unwrap();
        let end = start + y[start..].find('\n').unwrap();
        let mut out = y.clone();
        out.replace_range(
            start..end,
            "      grpc: {endpoint: \"${TK_TEST_GRPC_ENDPOINT}\"}",
        );
        out.replace(
            "decision_wait: 1s",
            "decision_wait: ${env:TK_TEST_DECISION_WAIT}",
        )
    });
    let (status, _, stderr) = validate(
        &yaml,
        &[
            ("TK_TEST_GRPC_ENDPOINT", "127.0.0.1:4317"),
            ("TK_TEST_DECISION_WAIT", "2s"),
        ],
    );
    assert!(
        status.success(),
        "validate with ${{VAR}} and ${{env:VAR}}: {stderr}\n{yaml}"
    );
}

#[test]
fn validate_rejects_an_unknown_key_under_receivers_with_its_path() {
    let yaml = config_with(|y| y.replace("grpc: {endpoint:", "grpc: {endpiont:"));
    assert_rejected(&yaml, "receivers.otlp.protocols.grpc.endpiont");
}

#[test]
fn validate_rejects_an_unknown_key_under_tail_sampling_with_its_path() {
    let yaml =
        config_with(|y| y.replace("status_code: {status_codes:", "status_code: {status_codez:"));
    assert_rejected(
        &yaml,
        "processors.tail_sampling.policies[0] (name: errors): status_code.status_codez",
    );
}

#[test]
fn validate_rejects_two_exporters() {
    let yaml = config_with(|y| y.replace("  debug: {}", "  debug: {}\n  file: {path: kept.jsonl}"));
    let (status, stdout, stderr) = validate(&yaml, &[]);
    assert!(
        !status.success(),
        "validate accepted two exporters (stdout {stdout:?})\n{yaml}"
    );
    assert!(
        stderr.to_lowercase().contains("exporter"),
        "the message should be about the exporters, got:\n{stderr}"
    );
}

#[test]
fn validate_rejects_a_missing_file() {
    let (status, _, stderr) = run_binary(
        &["validate", "--config", "/nonexistent/tracekeeper.yaml"],
        &[],
        CLI_TIMEOUT,
    );
    assert!(!status.success(), "validate accepted a missing file");
    assert!(
        stderr.contains("/nonexistent/tracekeeper.yaml"),
        "the message should name the file, got:\n{stderr}"
    );
}

#[test]
fn run_refuses_a_config_that_fails_validation() {
    let yaml = config_with(|y| y.replace("grpc: {endpoint:", "grpc: {endpiont:"));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "config.yaml", &yaml);
    let (status, _, stderr) = run_binary(
        &["run", "--config", path.to_str().unwrap()],
        &[],
        CLI_TIMEOUT,
    );
    assert!(!status.success(), "run started on a bad config: {status}");
    assert!(
        stderr.contains("receivers.otlp.protocols.grpc.endpiont"),
        "run's stderr should name the bad key, got:\n{stderr}"
    );
}
