//! `trace_state`: keeps a trace when a span's W3C `tracestate` has `key` with one of `values`.
//! As in the collector, empty values and values whose `key=value` member would exceed the W3C
//! limit of 256 characters are ignored. Difference: the collector drops a span whose whole
//! `tracestate` is malformed; here members are read leniently (`k=v` separated by commas).

use hashbrown::HashSet;
use serde::Deserialize;

use super::predicate::{MatchPolicy, Registry};

/// The `type` of this policy.
pub const TYPE: &str = "trace_state";
/// Longest `key=value` member of a W3C `tracestate`, characters.
pub const MAX_MEMBER_LEN: usize = 256;

/// The `trace_state` section of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceStateConfig {
    /// The `tracestate` key.
    pub key: String,
    /// The values that match.
    pub values: Vec<String>,
}

/// Builds the policy and registers its predicate.
pub fn build(
    cfg: Option<&TraceStateConfig>,
    reg: &mut Registry<'_>,
) -> Result<MatchPolicy, String> {
    let cfg = cfg.cloned().unwrap_or_default();
    if cfg.key.is_empty() {
        return Err(format!("{TYPE}.key: must not be empty"));
    }
    let values: HashSet<String> = cfg
        .values
        .iter()
        // key + "=" + value must fit in a member.
        .filter(|v| !v.is_empty() && cfg.key.len() + v.len() < MAX_MEMBER_LEN)
        .cloned()
        .collect();
    let bit = reg.trace_state(&cfg.key, values)?;
    Ok(MatchPolicy::new(bit, false))
}
