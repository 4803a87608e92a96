//! `not`: inverts its sub-policy, as the collector: `Sampled` becomes `NotSampled` and
//! `NotSampled` becomes `Sampled`; other outcomes (legacy inverted decisions, errors) pass
//! through unchanged. The keep is certain (`th` kept) when the sub-policy depends only on the
//! trace's content; when it depends on randomness or a rate, the kept traces are not a
//! threshold sample and `th` is erased.

use serde::Deserialize;
use tracekeeper_abi::ThresholdOp;

use super::predicate::Registry;
use super::{Outcome, Policy, TraceFacts, build_subs};
use crate::config::PolicyConfig;

/// The `type` of this policy.
pub const TYPE: &str = "not";

/// The `not` section of a policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotConfig {
    /// The policy to invert.
    pub not_sub_policy: Box<PolicyConfig>,
}

/// Inverts a policy.
#[derive(Debug)]
pub struct Not {
    sub: Box<dyn Policy>,
    keep: ThresholdOp,
}

impl Not {
    /// Builds the sub-policy.
    pub fn new(
        cfg: Option<&NotConfig>,
        reg: &mut Registry<'_>,
        depth: usize,
    ) -> Result<Self, String> {
        let cfg = cfg.ok_or_else(|| format!("{TYPE}.not_sub_policy: required"))?;
        let sub = build_subs(
            core::slice::from_ref(cfg.not_sub_policy.as_ref()),
            "not.not_sub_policy",
            reg,
            depth,
        )?
        .pop()
        .ok_or_else(|| format!("{TYPE}.not_sub_policy: required"))?;
        let keep = if sub.deterministic() {
            ThresholdOp::Keep
        } else {
            ThresholdOp::Erase
        };
        Ok(Not { sub, keep })
    }
}

impl Policy for Not {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        match self.sub.evaluate(trace) {
            Outcome::Sampled(_) => Outcome::NotSampled,
            Outcome::NotSampled => Outcome::Sampled(self.keep),
            other => other,
        }
    }

    fn deterministic(&self) -> bool {
        self.sub.deterministic()
    }
}
