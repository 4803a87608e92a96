//! Expectations (`processors.completeness.expectations`), compiled: which root span types they
//! apply to (service + exact name, or a name regex) and the descendants such a trace must
//! contain (name, optional service and kind, minimum count). Missing descendants become
//! `expected:<name>` entries.
//!
//! Spans are counted as they arrive, against every expected span of every expectation (the root
//! is not known until it arrives), so a trace only keeps one counter per expected span.

use regex_lite::Regex;

use crate::config::{CompletenessConfig, Expectation};

/// Prefix of the missing entry of an expected span that is absent (or too rare).
pub const MISSING_EXPECTED_PREFIX: &str = "expected:";
/// Longest `name_regex` accepted, in bytes (the compiled program grows with the pattern).
pub const MAX_REGEX_LEN: usize = 1_024;

/// Compiles a root `name_regex`. Matching is unanchored, as the collector's regex options
/// (Go's `MatchString`): write `^...$` to match the whole name.
pub fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!(
            "longer than {MAX_REGEX_LEN} bytes ({} bytes)",
            pattern.len()
        ));
    }
    Regex::new(pattern).map_err(|e| format!("invalid regular expression: {e}"))
}

#[derive(Debug, Clone)]
enum RootName {
    Exact(String),
    Pattern(Regex),
}

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    service: Option<String>,
    kind: Option<u8>,
    min_count: u32,
}

impl Spec {
    fn matches(&self, name: &str, service: &str, kind: u8) -> bool {
        self.name == name
            && self.service.as_deref().is_none_or(|sv| sv == service)
            && self.kind.is_none_or(|k| k == kind)
    }
}

#[derive(Debug, Clone)]
struct Compiled {
    service: Option<String>,
    root: RootName,
    /// Indices into [`Expectations::specs`].
    specs: Vec<usize>,
}

/// Every configured expectation, ready to match.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    compiled: Vec<Compiled>,
    specs: Vec<Spec>,
}

impl Expectations {
    /// Compiles the expectations of a validated configuration. `at` is the section's path, for
    /// regex errors.
    pub fn new(config: &CompletenessConfig, at: &str) -> Result<Self, String> {
        let mut out = Expectations::default();
        for (i, e) in config.expectations.iter().enumerate() {
            out.push(e, &format!("{at}.expectations[{i}]"))?;
        }
        Ok(out)
    }

    fn push(&mut self, e: &Expectation, at: &str) -> Result<(), String> {
        let root = match (&e.root.name, &e.root.name_regex) {
            (Some(name), _) => RootName::Exact(name.clone()),
            (None, Some(pattern)) => RootName::Pattern(
                compile_regex(pattern).map_err(|err| format!("{at}.root.name_regex: {err}"))?,
            ),
            (None, None) => return Err(format!("{at}.root: set `name` or `name_regex`")),
        };
        let mut specs = Vec::with_capacity(e.expect.len());
        for s in &e.expect {
            specs.push(self.specs.len());
            self.specs.push(Spec {
                name: s.name.clone(),
                service: s.service.clone(),
                kind: s.kind.map(|k| k.code()),
                min_count: s.min_count,
            });
        }
        self.compiled.push(Compiled {
            service: e.root.service.clone(),
            root,
            specs,
        });
        Ok(())
    }

    /// True when no expectation is configured.
    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }

    /// True when a span (`name`, `service`, `kind`) is one of the expected spans, so that
    /// [`Expectations::count`] counts it.
    pub fn counts(&self, name: &str, service: &str, kind: u8) -> bool {
        self.specs.iter().any(|s| s.matches(name, service, kind))
    }

    /// Counts a non-root span into `counts` (one counter per expected span, grown on first
    /// match).
    pub fn count(&self, counts: &mut Vec<u32>, name: &str, service: &str, kind: u8) {
        for (i, s) in self.specs.iter().enumerate() {
            if s.matches(name, service, kind) {
                if counts.len() < self.specs.len() {
                    counts.resize(self.specs.len(), 0);
                }
                counts[i] = counts[i].saturating_add(1);
            }
        }
    }

    /// The expectations (indices) whose root selector matches a root span (`service`, `name`).
    pub fn matching(&self, service: &str, name: &str) -> Vec<usize> {
        self.compiled
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.service.as_deref().is_none_or(|sv| sv == service)
                    && match &c.root {
                        RootName::Exact(n) => n == name,
                        RootName::Pattern(re) => re.is_match(name),
                    }
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The names of the expected spans of the expectations `matched` (from
    /// [`Expectations::matching`]) missing from a trace whose spans were counted into `counts`,
    /// in configuration order, without repeats.
    pub fn missing_for(&self, matched: &[usize], counts: &[u32]) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for c in matched.iter().filter_map(|&i| self.compiled.get(i)) {
            for &i in &c.specs {
                let Some(spec) = self.specs.get(i) else {
                    continue;
                };
                let seen = counts.get(i).copied().unwrap_or(0);
                if seen < spec.min_count && !out.contains(&spec.name.as_str()) {
                    out.push(&spec.name);
                }
            }
        }
        out
    }

    /// [`Expectations::missing_for`] the expectations matching root (`service`, `name`).
    pub fn missing(&self, service: &str, name: &str, counts: &[u32]) -> Vec<&str> {
        self.missing_for(&self.matching(service, name), counts)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::ProcessorsConfig;

    fn expectations(json: &str) -> Expectations {
        let c = ProcessorsConfig::from_json(&format!(r#"{{"completeness": {json}}}"#)).unwrap();
        Expectations::new(&c.completeness, "processors.completeness").unwrap()
    }

    #[test]
    fn exact_root_with_service_kind_and_min_count() {
        let e = expectations(
            r#"{"expectations": [{"root": {"service": "checkout", "name": "POST /checkout"},
                "expect": [{"name": "send_email"},
                           {"name": "process order_confirmed", "kind": "CONSUMER"},
                           {"name": "reserve", "service": "inventory", "min_count": 2}]}]}"#,
        );
        let mut counts = Vec::new();
        // Nothing counted: everything is missing, in configuration order.
        assert_eq!(
            e.missing("checkout", "POST /checkout", &counts),
            ["send_email", "process order_confirmed", "reserve"]
        );
        // Another root type, or the right name in another service: not concerned.
        assert!(e.missing("checkout", "GET /cart", &counts).is_empty());
        assert!(e.missing("web", "POST /checkout", &counts).is_empty());
        e.count(&mut counts, "send_email", "notification", 1);
        e.count(&mut counts, "process order_confirmed", "notification", 1); // wrong kind
        e.count(&mut counts, "reserve", "inventory", 3);
        e.count(&mut counts, "reserve", "payment", 3); // wrong service
        assert_eq!(
            e.missing("checkout", "POST /checkout", &counts),
            ["process order_confirmed", "reserve"]
        );
        e.count(&mut counts, "process order_confirmed", "notification", 5);
        e.count(&mut counts, "reserve", "inventory", 3);
        assert!(e.missing("checkout", "POST /checkout", &counts).is_empty());
    }

    #[test]
    fn regex_roots_are_unanchored_and_entries_not_repeated() {
        let e = expectations(
            r#"{"expectations": [
                {"root": {"name_regex": "^POST /orders/[0-9]+$"}, "expect": [{"name": "audit"}]},
                {"root": {"name_regex": "orders"}, "expect": [{"name": "audit"}, {"name": "bill"}]}
            ]}"#,
        );
        assert_eq!(e.missing("api", "POST /orders/42", &[]), ["audit", "bill"]);
        assert_eq!(e.missing("api", "GET /orders", &[]), ["audit", "bill"]);
        assert!(e.missing("api", "POST /users/42", &[]).is_empty());
        assert!(!e.is_empty());
        assert!(expectations("{}").is_empty());
    }

    #[test]
    fn bad_regexes_name_their_path() {
        let err = ProcessorsConfig::from_json(
            r#"{"completeness": {"expectations": [
                {"root": {"name": "a"}, "expect": [{"name": "b"}]},
                {"root": {"name_regex": "(unclosed"}, "expect": [{"name": "b"}]}]}}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("processors.completeness.expectations[1].root.name_regex: invalid"),
            "{err}"
        );
        let long = "a".repeat(MAX_REGEX_LEN + 1);
        assert!(compile_regex(&long).unwrap_err().contains("longer than"));
    }
}
