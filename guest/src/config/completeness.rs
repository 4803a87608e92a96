//! The `completeness` processor section: how long to wait for consumers, the ratio window, and the
//! expectations ("a `POST /checkout` root must have a `send_email` descendant").
//!
//! The section is parsed and validated here (regexes included); `crate::completeness` applies
//! it.

use core::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::duration;

/// `consumer_wait` when not set.
pub const DEFAULT_CONSUMER_WAIT: Duration = Duration::from_secs(30);
/// `window` when not set.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// Shortest `window` accepted (the window moves in 30 steps).
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// `min_count` of an expected span when not set.
pub const DEFAULT_MIN_COUNT: u32 = 1;

/// The `processors.completeness` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompletenessConfig {
    /// Extra wait, past the normal decision time, for the consumer of an open producer span.
    #[serde(deserialize_with = "duration::deserialize")]
    pub consumer_wait: Duration,
    /// Sliding window of the completeness-ratio metric.
    #[serde(deserialize_with = "duration::deserialize")]
    pub window: Duration,
    /// Expected descendants per root span type.
    pub expectations: Vec<Expectation>,
}

impl Default for CompletenessConfig {
    fn default() -> Self {
        CompletenessConfig {
            consumer_wait: DEFAULT_CONSUMER_WAIT,
            window: DEFAULT_WINDOW,
            expectations: Vec::new(),
        }
    }
}

/// One expectation: traces whose root matches `root` must contain every span in `expect`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Which roots the expectation applies to.
    pub root: RootMatch,
    /// The spans such a trace must contain.
    pub expect: Vec<ExpectedSpan>,
}

/// Selects root spans by service and name (exact) or name regex.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootMatch {
    /// `service.name` of the root span's resource; any service when not set.
    pub service: Option<String>,
    /// Exact root span name.
    pub name: Option<String>,
    /// Regular expression over the root span name, unanchored (write `^...$` to match the whole
    /// name); the syntax of the `regex-lite` crate (Rust `regex` syntax without Unicode classes).
    pub name_regex: Option<String>,
}

/// A span an expectation requires.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedSpan {
    /// Span name.
    pub name: String,
    /// `service.name` of the span's resource; any service when not set.
    pub service: Option<String>,
    /// Span kind; any kind when not set.
    pub kind: Option<SpanKind>,
    /// How many such spans at least (default 1).
    #[serde(default = "default_min_count")]
    pub min_count: u32,
}

fn default_min_count() -> u32 {
    DEFAULT_MIN_COUNT
}

/// An OTLP span kind, written by its OTLP name: `SERVER` or `SPAN_KIND_SERVER` (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// `SPAN_KIND_UNSPECIFIED` (0).
    Unspecified = 0,
    /// `SPAN_KIND_INTERNAL` (1).
    Internal = 1,
    /// `SPAN_KIND_SERVER` (2).
    Server = 2,
    /// `SPAN_KIND_CLIENT` (3).
    Client = 3,
    /// `SPAN_KIND_PRODUCER` (4).
    Producer = 4,
    /// `SPAN_KIND_CONSUMER` (5).
    Consumer = 5,
}

impl SpanKind {
    const NAMES: [(&'static str, SpanKind); 6] = [
        ("UNSPECIFIED", SpanKind::Unspecified),
        ("INTERNAL", SpanKind::Internal),
        ("SERVER", SpanKind::Server),
        ("CLIENT", SpanKind::Client),
        ("PRODUCER", SpanKind::Producer),
        ("CONSUMER", SpanKind::Consumer),
    ];

    /// Parses an OTLP kind name, with or without the `SPAN_KIND_` prefix, in any case.
    pub fn from_name(name: &str) -> Option<SpanKind> {
        let upper = name.to_ascii_uppercase();
        let short = upper.strip_prefix("SPAN_KIND_").unwrap_or(&upper);
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == short)
            .map(|(_, k)| *k)
    }

    /// The kind's value in the span-view batch (the OTLP enum value).
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl<'de> Deserialize<'de> for SpanKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        SpanKind::from_name(&name).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown span kind \"{name}\", expected one of UNSPECIFIED, INTERNAL, SERVER, \
                 CLIENT, PRODUCER, CONSUMER"
            ))
        })
    }
}

impl CompletenessConfig {
    /// Checks what the types cannot: each root selects by name or regex, each expectation
    /// expects something. `at` is the section's path (`processors.completeness`).
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if self.window < MIN_WINDOW {
            return Err(format!(
                "{at}.window: must be at least {}s",
                MIN_WINDOW.as_secs()
            ));
        }
        for (i, e) in self.expectations.iter().enumerate() {
            let here = format!("{at}.expectations[{i}]");
            match (&e.root.name, &e.root.name_regex) {
                (None, None) => {
                    return Err(format!("{here}.root: set `name` or `name_regex`"));
                }
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{here}.root: set either `name` or `name_regex`, not both"
                    ));
                }
                (Some(n), None) if n.is_empty() => {
                    return Err(format!("{here}.root.name: must not be empty"));
                }
                (None, Some(r)) if r.is_empty() => {
                    return Err(format!("{here}.root.name_regex: must not be empty"));
                }
                (None, Some(r)) => {
                    crate::completeness::expect::compile_regex(r)
                        .map_err(|e| format!("{here}.root.name_regex: {e}"))?;
                }
                _ => {}
            }
            if e.expect.is_empty() {
                return Err(format!("{here}.expect: list at least one expected span"));
            }
            for (j, s) in e.expect.iter().enumerate() {
                if s.name.is_empty() {
                    return Err(format!("{here}.expect[{j}].name: must not be empty"));
                }
                if s.min_count == 0 {
                    return Err(format!("{here}.expect[{j}].min_count: must be at least 1"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_path() {
        let check = |json: &str| {
            let c: CompletenessConfig = serde_json::from_str(json).unwrap();
            c.validate("processors.completeness").unwrap_err()
        };
        assert_eq!(
            check(r#"{"window": "10ms"}"#),
            "processors.completeness.window: must be at least 1s"
        );
        let err = check(
            r#"{"expectations": [{"root": {"name_regex": "a("}, "expect": [{"name": "b"}]}]}"#,
        );
        assert!(
            err.starts_with("processors.completeness.expectations[0].root.name_regex: invalid"),
            "{err}"
        );
        let err = check(r#"{"expectations": [{"root": {"name": "a"}, "expect": []}]}"#);
        assert!(
            err.ends_with("expect: list at least one expected span"),
            "{err}"
        );
        let err = check(
            r#"{"expectations": [{"root": {"name": "a"}, "expect": [{"name": "b", "min_count": 0}]}]}"#,
        );
        assert!(
            err.ends_with("expect[0].min_count: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn kind_names() {
        assert_eq!(SpanKind::from_name("CONSUMER"), Some(SpanKind::Consumer));
        assert_eq!(
            SpanKind::from_name("SPAN_KIND_SERVER"),
            Some(SpanKind::Server)
        );
        assert_eq!(SpanKind::from_name("producer"), Some(SpanKind::Producer));
        assert_eq!(SpanKind::from_name("QUEUE"), None);
        assert_eq!(SpanKind::Consumer.code(), 5);
    }
}
