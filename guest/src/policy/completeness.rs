//! `completeness` (tracekeeper's own type): keeps incomplete traces (`incomplete: true`, the
//! default) or complete ones (`incomplete: false`), at probability 1.

use serde::Deserialize;
use tracekeeper_abi::{Completeness, ThresholdOp};

use super::{Outcome, Policy, TraceFacts};

/// The `type` of this policy.
pub const TYPE: &str = "completeness";

/// The `completeness` section of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletenessPolicyConfig {
    /// Keep incomplete traces (`true`, the default) or complete ones (`false`).
    #[serde(default = "default_incomplete")]
    pub incomplete: bool,
}

fn default_incomplete() -> bool {
    true
}

/// Keeps traces by their completeness.
#[derive(Debug, Clone, Copy)]
pub struct CompletenessPolicy {
    keep: Completeness,
}

impl CompletenessPolicy {
    /// Builds the policy; without a section it keeps incomplete traces.
    pub fn new(cfg: Option<&CompletenessPolicyConfig>) -> Self {
        let incomplete = cfg.is_none_or(|c| c.incomplete);
        let keep = if incomplete {
            Completeness::Incomplete
        } else {
            Completeness::Complete
        };
        CompletenessPolicy { keep }
    }
}

impl Policy for CompletenessPolicy {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        if trace.completeness == self.keep {
            Outcome::Sampled(ThresholdOp::Keep)
        } else {
            Outcome::NotSampled
        }
    }
}
