//! `numeric_attribute`: keeps a trace when a resource or span attribute `key` holds an integer
//! within `min_value..=max_value` (inclusive), or with `invert_match` gives the collector's
//! legacy inverted decisions (see [`MatchPolicy`]).
//!
//! As in the collector, a bound of 0 means "not set" (`min_value: 0, max_value: 100` accepts
//! every integer up to 100, negative ones included), at least one bound must be set, and
//! `min_value` must not exceed `max_value`. Difference: the collector reads a non-integer value
//! (a double, a string) as 0, so it can match a range containing 0; here only integer values
//! match.

use serde::Deserialize;

use super::predicate::{AttrMatcher, MatchPolicy, Registry};

/// The `type` of this policy.
pub const TYPE: &str = "numeric_attribute";

/// The `numeric_attribute` section of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NumericAttributeConfig {
    /// Attribute key, looked up on resources and spans.
    pub key: String,
    /// Lower bound, inclusive; 0 means none.
    pub min_value: i64,
    /// Upper bound, inclusive; 0 means none.
    pub max_value: i64,
    /// Legacy inverted decisions.
    pub invert_match: bool,
}

/// Builds the policy and registers its predicate.
pub fn build(
    cfg: Option<&NumericAttributeConfig>,
    reg: &mut Registry<'_>,
) -> Result<MatchPolicy, String> {
    let cfg = cfg.cloned().unwrap_or_default();
    if cfg.key.is_empty() {
        return Err(format!("{TYPE}.key: must not be empty"));
    }
    let (min, max) = (cfg.min_value, cfg.max_value);
    if min == 0 && max == 0 {
        return Err(format!(
            "{TYPE}: set min_value, max_value or both (0 means not set, as in the collector)"
        ));
    }
    if min != 0 && max != 0 && min > max {
        return Err(format!(
            "{TYPE}.min_value: must not be greater than max_value ({min} > {max})"
        ));
    }
    let min = if min == 0 { i64::MIN } else { min };
    let max = if max == 0 { i64::MAX } else { max };
    let signature = format!("numeric:{:?}:{min}:{max}", cfg.key);
    let bit = reg.attribute(&cfg.key, AttrMatcher::IntRange { min, max }, signature)?;
    Ok(MatchPolicy::new(bit, cfg.invert_match))
}
