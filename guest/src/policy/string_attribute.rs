//! `string_attribute`: keeps a trace when a resource or span attribute `key` is a string equal
//! to one of `values`, or with `enabled_regex_matching` one in which one of the `values`
//! patterns finds a match (unanchored, as Go's `MatchString`; `regex-lite` syntax, see
//! `ottl.rs`). `invert_match` gives the collector's legacy inverted decisions.
//!
//! As in the collector: empty strings in `values` are ignored for exact matching; a span
//! attribute must be a non-empty string to match; a non-string resource attribute is matched
//! as the empty string. `cache_max_size` bounds the memo of regex results (default 128 when
//! not set or not positive; the memo is cleared when full).

use hashbrown::HashSet;
use serde::Deserialize;

use super::predicate::{
    AttrMatcher, DEFAULT_REGEX_CACHE_SIZE, MAX_REGEX_CACHE_SIZE, MatchPolicy, RegexMatcher,
    Registry,
};

/// The `type` of this policy.
pub const TYPE: &str = "string_attribute";

/// The `string_attribute` section of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StringAttributeConfig {
    /// Attribute key, looked up on resources and spans.
    pub key: String,
    /// Exact values, or patterns with `enabled_regex_matching`.
    pub values: Vec<String>,
    /// Treat `values` as regular expressions.
    pub enabled_regex_matching: bool,
    /// Most memoized regex results.
    pub cache_max_size: i64,
    /// Legacy inverted decisions.
    pub invert_match: bool,
}

/// Builds the policy and registers its predicate.
pub fn build(
    cfg: Option<&StringAttributeConfig>,
    reg: &mut Registry<'_>,
) -> Result<MatchPolicy, String> {
    let cfg = cfg.cloned().unwrap_or_default();
    if cfg.key.is_empty() {
        return Err(format!("{TYPE}.key: must not be empty"));
    }
    let (matcher, signature) = if cfg.enabled_regex_matching {
        let cap = match usize::try_from(cfg.cache_max_size) {
            Ok(0) | Err(_) => DEFAULT_REGEX_CACHE_SIZE,
            Ok(n) if n > MAX_REGEX_CACHE_SIZE => {
                return Err(format!(
                    "{TYPE}.cache_max_size: at most {MAX_REGEX_CACHE_SIZE}, got {n}"
                ));
            }
            Ok(n) => n,
        };
        let m = RegexMatcher::new(&cfg.values, cap).map_err(|(i, e)| {
            let v = cfg.values.get(i).map_or("", String::as_str);
            format!("{TYPE}.values[{i}]: invalid regular expression {v:?}: {e}")
        })?;
        let signature = format!("regex:{:?}:{:?}", cfg.key, cfg.values);
        (AttrMatcher::Regex(m), signature)
    } else {
        let values: HashSet<String> = cfg
            .values
            .iter()
            .filter(|v| !v.is_empty())
            .cloned()
            .collect();
        let mut sorted: Vec<&String> = values.iter().collect();
        sorted.sort();
        let signature = format!("exact:{:?}:{sorted:?}", cfg.key);
        (AttrMatcher::Exact(values), signature)
    };
    let bit = reg.attribute(&cfg.key, matcher, signature)?;
    Ok(MatchPolicy::new(bit, cfg.invert_match))
}
