//! The configuration the guest receives: the JSON form of the `processors` section of the host's
//! YAML file, parsed strictly so that every unknown key is an error naming its full path
//! (`processors.tail_sampling.policies[2].probabilistic.sampling_precentage: unknown field ...`).

pub mod completeness;
pub mod duration;
pub mod tail_sampling;

use serde::Deserialize;

pub use completeness::{CompletenessConfig, Expectation, ExpectedSpan, RootMatch, SpanKind};
pub use tail_sampling::{DecisionCacheConfig, PolicyConfig, TailSamplingConfig};

/// The root of every key path in error messages.
pub const ROOT_PATH: &str = "processors";

/// The `processors` section: every processor the guest knows.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorsConfig {
    /// The OpenTelemetry Collector's `tail_sampling` section, unchanged.
    pub tail_sampling: TailSamplingConfig,
    /// tracekeeper's own `completeness` section.
    pub completeness: CompletenessConfig,
}

impl ProcessorsConfig {
    /// Parses and validates the JSON form of the `processors` section. The error names the
    /// offending key by its full path, starting with `processors`, and each policy on the way
    /// by its name: `processors.tail_sampling.policies[3] (name: slow): latency.threshold_ms:
    /// expected an integer, got string "5s"`.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| format!("{ROOT_PATH}: the configuration is not valid JSON: {e}"))?;
        if !value.is_object() {
            // serde would read a list positionally into the struct; a config section is a map.
            return Err(format!("{ROOT_PATH}: expected a map of processor sections"));
        }
        // Deserializing from a `Value` keeps JSON line/column numbers (meaningless to someone
        // who wrote YAML) out of the messages.
        let config: ProcessorsConfig = serde_path_to_error::deserialize(&value).map_err(|e| {
            let at = describe_path(&value, e.path());
            let inner = humanize(&e.into_inner().to_string());
            if at.ends_with(": ") {
                format!("{at}{inner}")
            } else {
                format!("{at}: {inner}")
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot (ranges, required lists, policy types).
    pub fn validate(&self) -> Result<(), String> {
        self.tail_sampling
            .validate(&format!("{ROOT_PATH}.tail_sampling"))?;
        self.completeness
            .validate(&format!("{ROOT_PATH}.completeness"))?;
        Ok(())
    }
}

/// Keys of lists (or, for `not_sub_policy`, a map) whose entries are policies, named in paths.
const POLICY_KEYS: [&str; 5] = [
    "policies",
    "and_sub_policy",
    "drop_sub_policy",
    "composite_sub_policy",
    "not_sub_policy",
];

/// Writes `path` (relative to `processors`) as `processors.a.b[2]`, inserting the name of each
/// policy it passes through: `processors.tail_sampling.policies[2] (name: slow): latency`.
fn describe_path(root: &serde_json::Value, path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = ROOT_PATH.to_owned();
    let mut node = Some(root);
    let mut parent_key = "";
    for seg in path.iter() {
        let entered = match seg {
            Segment::Map { key } => {
                if !out.ends_with(": ") {
                    out.push('.');
                }
                out.push_str(key);
                node = node.and_then(|n| n.get(key.as_str()));
                parent_key = key.as_str();
                parent_key == "not_sub_policy"
            }
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                node = node.and_then(|n| n.get(*index));
                POLICY_KEYS.contains(&parent_key)
            }
            Segment::Enum { variant } => {
                out.push('.');
                out.push_str(variant);
                false
            }
            Segment::Unknown => {
                out.push_str(".?");
                false
            }
        };
        if entered
            && let Some(name) = node
                .and_then(|n| n.get("name"))
                .and_then(serde_json::Value::as_str)
                .filter(|n| !n.is_empty())
        {
            out.push_str(&format!(" (name: {name}): "));
        }
    }
    out
}

/// Rewrites serde's type errors in a config writer's words: `invalid type: string "5s",
/// expected i64` becomes `expected an integer, got string "5s"`.
fn humanize(msg: &str) -> String {
    let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    else {
        return msg.to_owned();
    };
    let Some((got, expected)) = rest.rsplit_once(", expected ") else {
        return msg.to_owned();
    };
    let expected = match expected {
        "i64" | "i32" | "i16" | "i8" | "isize" => "an integer",
        "u64" | "u32" | "u16" | "u8" | "usize" => "a non-negative integer",
        "f64" | "f32" => "a number",
        "a sequence" => "a list",
        e if e.starts_with("struct ") => "a map",
        e => e,
    };
    format!("expected {expected}, got {got}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use core::time::Duration;

    use super::*;

    #[test]
    fn empty_sections_take_the_collector_defaults() {
        let c = ProcessorsConfig::from_json("{}").unwrap();
        assert_eq!(c.tail_sampling.decision_wait, Duration::from_secs(30));
        assert_eq!(c.tail_sampling.num_traces, 50_000);
        assert_eq!(c.tail_sampling.decision_wait_after_root_received, None);
        assert!(!c.tail_sampling.sample_on_first_match);
        assert!(c.tail_sampling.policies.is_empty());
        assert_eq!(c.completeness.consumer_wait, Duration::from_secs(30));
        assert_eq!(c.completeness.window, Duration::from_secs(300));
        let c = ProcessorsConfig::from_json(r#"{"tail_sampling": {}}"#).unwrap();
        assert_eq!(c.tail_sampling.decision_wait, Duration::from_secs(30));
    }

    #[test]
    fn every_collector_key_is_accepted() {
        let c = ProcessorsConfig::from_json(
            r#"{"tail_sampling": {
                "decision_wait": "1m30s",
                "decision_wait_after_root_received": "1.5s",
                "num_traces": 100000,
                "expected_new_traces_per_sec": 500,
                "sample_on_first_match": true,
                "block_on_overflow": true,
                "maximum_trace_size_bytes": 1048576,
                "drop_pending_traces_on_shutdown": true,
                "decision_cache": {"sampled_cache_size": 1000, "non_sampled_cache_size": 2000},
                "policies": [{"name": "all", "type": "always_sample"}]
            }}"#,
        )
        .unwrap();
        let t = &c.tail_sampling;
        assert_eq!(t.decision_wait, Duration::from_secs(90));
        assert_eq!(
            t.decision_wait_after_root_received,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(t.num_traces, 100_000);
        assert_eq!(t.expected_new_traces_per_sec, 500);
        assert!(t.sample_on_first_match && t.block_on_overflow);
        assert!(t.drop_pending_traces_on_shutdown);
        assert_eq!(t.maximum_trace_size_bytes, 1 << 20);
        assert_eq!(t.decision_cache.sampled_cache_size, 1000);
        assert_eq!(t.decision_cache.non_sampled_cache_size, 2000);
        assert_eq!(t.policies[0].name, "all");
    }

    #[test]
    fn unknown_keys_are_named_by_full_path() {
        let err = ProcessorsConfig::from_json(
            r#"{"tail_sampling": {"policies": [
                {"name": "a", "type": "always_sample"},
                {"name": "b", "type": "always_sample"},
                {"name": "c", "type": "probabilistic",
                 "probabilistic": {"sampling_precentage": 10}}
            ]}}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with(
                "processors.tail_sampling.policies[2] (name: c): \
                 probabilistic.sampling_precentage: unknown field `sampling_precentage`"
            ),
            "{err}"
        );
        let err = ProcessorsConfig::from_json(r#"{"tail_sampling": {"decision_wiat": "1s"}}"#)
            .unwrap_err();
        assert!(
            err.starts_with("processors.tail_sampling.decision_wiat: unknown field"),
            "{err}"
        );
        let err = ProcessorsConfig::from_json(r#"{"batch": {}}"#).unwrap_err();
        assert!(err.starts_with("processors.batch: unknown field"), "{err}");
        let err = ProcessorsConfig::from_json(
            r#"{"completeness": {"expectations": [{"root": {"name": "x", "service_name": "y"},
                "expect": [{"name": "z"}]}]}}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("processors.completeness.expectations[0].root.service_name: unknown"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_named_by_path() {
        let err = ProcessorsConfig::from_json(r#"{"tail_sampling": {"decision_wait": "10"}}"#)
            .unwrap_err();
        assert!(
            err.starts_with("processors.tail_sampling.decision_wait: invalid duration \"10\""),
            "{err}"
        );
        let err =
            ProcessorsConfig::from_json(r#"{"tail_sampling": {"decision_wait": 10}}"#).unwrap_err();
        assert!(
            err.starts_with("processors.tail_sampling.decision_wait: expected a duration string"),
            "{err}"
        );
        let err =
            ProcessorsConfig::from_json(r#"{"tail_sampling": {"num_traces": -1}}"#).unwrap_err();
        assert!(
            err.starts_with("processors.tail_sampling.num_traces: "),
            "{err}"
        );
        let err =
            ProcessorsConfig::from_json(r#"{"tail_sampling": {"num_traces": 0}}"#).unwrap_err();
        assert!(
            err.starts_with("processors.tail_sampling.num_traces: "),
            "{err}"
        );
        let err = ProcessorsConfig::from_json("[]").unwrap_err();
        assert!(err.starts_with("processors: expected a map"), "{err}");
        let err = ProcessorsConfig::from_json("{").unwrap_err();
        assert!(
            err.starts_with("processors: the configuration is not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn completeness_section_is_parsed_and_validated() {
        let c = ProcessorsConfig::from_json(
            r#"{"completeness": {"consumer_wait": "45s", "window": "10m", "expectations": [
                {"root": {"service": "checkout", "name": "POST /checkout"},
                 "expect": [{"name": "send_email"},
                            {"name": "process order_confirmed", "kind": "CONSUMER",
                             "min_count": 2}]},
                {"root": {"name_regex": "^GET /"}, "expect": [{"name": "db", "service": "pg"}]}
            ]}}"#,
        )
        .unwrap();
        let k = &c.completeness;
        assert_eq!(k.consumer_wait, Duration::from_secs(45));
        assert_eq!(k.window, Duration::from_secs(600));
        assert_eq!(k.expectations.len(), 2);
        assert_eq!(k.expectations[0].root.service.as_deref(), Some("checkout"));
        assert_eq!(k.expectations[0].expect[0].min_count, 1);
        assert_eq!(k.expectations[0].expect[1].kind, Some(SpanKind::Consumer));
        assert_eq!(k.expectations[0].expect[1].min_count, 2);
        assert_eq!(k.expectations[1].root.name_regex.as_deref(), Some("^GET /"));

        let err = ProcessorsConfig::from_json(
            r#"{"completeness": {"expectations": [{"root": {"name": "x"},
                "expect": [{"name": "y", "kind": "QUEUE"}]}]}}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("processors.completeness.expectations[0].expect[0].kind: unknown"),
            "{err}"
        );
        let err = ProcessorsConfig::from_json(
            r#"{"completeness": {"expectations": [{"root": {"service": "x"},
                "expect": [{"name": "y"}]}]}}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("processors.completeness.expectations[0].root: set `name`"),
            "{err}"
        );
        let err = ProcessorsConfig::from_json(
            r#"{"completeness": {"expectations": [{"root": {"name": "x"}, "expect": []}]}}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("processors.completeness.expectations[0].expect: "),
            "{err}"
        );
        let err =
            ProcessorsConfig::from_json(r#"{"completeness": {"window": "-5m"}}"#).unwrap_err();
        assert!(err.starts_with("processors.completeness.window: "), "{err}");
    }
}
