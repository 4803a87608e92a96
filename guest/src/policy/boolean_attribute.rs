//! `boolean_attribute`: keeps a trace when a resource or span attribute `key` is the boolean
//! `value`; `invert_match` gives the collector's legacy inverted decisions. Difference: the
//! collector reads a non-boolean value as `false` (so `value: false` matches any non-boolean
//! value of the key); here only boolean values match.

use serde::Deserialize;

use super::predicate::{AttrMatcher, MatchPolicy, Registry};

/// The `type` of this policy.
pub const TYPE: &str = "boolean_attribute";

/// The `boolean_attribute` section of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BooleanAttributeConfig {
    /// Attribute key, looked up on resources and spans.
    pub key: String,
    /// The value that matches.
    pub value: bool,
    /// Legacy inverted decisions.
    pub invert_match: bool,
}

/// Builds the policy and registers its predicate.
pub fn build(
    cfg: Option<&BooleanAttributeConfig>,
    reg: &mut Registry<'_>,
) -> Result<MatchPolicy, String> {
    let cfg = cfg.cloned().unwrap_or_default();
    if cfg.key.is_empty() {
        return Err(format!("{TYPE}.key: must not be empty"));
    }
    let signature = format!("bool:{:?}:{}", cfg.key, cfg.value);
    let bit = reg.attribute(&cfg.key, AttrMatcher::Bool(cfg.value), signature)?;
    Ok(MatchPolicy::new(bit, cfg.invert_match))
}
