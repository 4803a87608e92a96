//! `and`: keeps a trace when every sub-policy keeps it, as the collector: sub-policies are
//! evaluated in order and the first `NotSampled` (or legacy `InvertNotSampled`) ends it; a
//! legacy `InvertSampled` counts as a keep; an error makes the result an error. The keep's
//! threshold is the least certain of the sub-policies' (a probabilistic sub-policy makes the
//! whole keep probabilistic).

use serde::Deserialize;
use tracekeeper_abi::ThresholdOp;

use super::predicate::Registry;
use super::{Outcome, Policy, TraceFacts, build_subs};
use crate::config::PolicyConfig;
use crate::verdict::least_certain;

/// The `type` of this policy.
pub const TYPE: &str = "and";

/// The `and` section of a policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AndConfig {
    /// The policies that must all keep the trace.
    pub and_sub_policy: Vec<PolicyConfig>,
}

/// Keeps traces every sub-policy keeps.
#[derive(Debug)]
pub struct And {
    subs: Vec<Box<dyn Policy>>,
}

impl And {
    /// Builds the sub-policies (at least one).
    pub fn new(
        cfg: Option<&AndConfig>,
        reg: &mut Registry<'_>,
        depth: usize,
    ) -> Result<Self, String> {
        let list = cfg.map(|c| c.and_sub_policy.as_slice()).unwrap_or_default();
        if list.is_empty() {
            return Err(format!("{TYPE}.and_sub_policy: list at least one policy"));
        }
        Ok(And {
            subs: build_subs(list, "and.and_sub_policy", reg, depth)?,
        })
    }
}

impl Policy for And {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        let mut op = ThresholdOp::Keep;
        for sub in &mut self.subs {
            match sub.evaluate(trace) {
                Outcome::NotSampled | Outcome::InvertNotSampled => return Outcome::NotSampled,
                Outcome::Error => return Outcome::Error,
                Outcome::Sampled(o) => op = least_certain(op, o),
                Outcome::InvertSampled | Outcome::Dropped => {}
            }
        }
        Outcome::Sampled(op)
    }

    fn deterministic(&self) -> bool {
        self.subs.iter().all(|s| s.deterministic())
    }
}
