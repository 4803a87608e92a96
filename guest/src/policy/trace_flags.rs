//! `trace_flags`: keeps a trace when any of its spans has the W3C "sampled" trace flag set (the
//! low byte of the OTLP span `flags`). The section, if present, must be empty.

use serde::Deserialize;

use super::predicate::{MatchPolicy, Registry};

/// The `type` of this policy.
pub const TYPE: &str = "trace_flags";

/// The (empty) `trace_flags` section of a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceFlagsConfig {}

/// Builds the policy and registers its predicate.
pub fn build(reg: &mut Registry<'_>) -> Result<MatchPolicy, String> {
    Ok(MatchPolicy::new(reg.trace_flags()?, false))
}
