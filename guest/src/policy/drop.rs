//! `drop`: drops a trace when every sub-policy keeps it, whatever the other policies say, as
//! the collector: sub-policies are evaluated in order, the first `NotSampled` (or legacy
//! `InvertNotSampled`) makes it `NotSampled`, an error makes it an error. Drop policies are
//! evaluated before all others and are only allowed at the top level of `policies`.

use serde::Deserialize;

use super::predicate::Registry;
use super::{Outcome, Policy, TraceFacts, build_subs};
use crate::config::PolicyConfig;

/// The `type` of this policy.
pub const TYPE: &str = "drop";

/// The `drop` section of a policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropConfig {
    /// The policies that must all keep the trace for it to be dropped.
    pub drop_sub_policy: Vec<PolicyConfig>,
}

/// Drops traces every sub-policy keeps.
#[derive(Debug)]
pub struct Drop {
    subs: Vec<Box<dyn Policy>>,
}

impl Drop {
    /// Builds the sub-policies (at least one).
    pub fn new(
        cfg: Option<&DropConfig>,
        reg: &mut Registry<'_>,
        depth: usize,
    ) -> Result<Self, String> {
        let list = cfg
            .map(|c| c.drop_sub_policy.as_slice())
            .unwrap_or_default();
        if list.is_empty() {
            return Err(format!("{TYPE}.drop_sub_policy: list at least one policy"));
        }
        Ok(Drop {
            subs: build_subs(list, "drop.drop_sub_policy", reg, depth)?,
        })
    }
}

impl Policy for Drop {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        for sub in &mut self.subs {
            match sub.evaluate(trace) {
                Outcome::NotSampled | Outcome::InvertNotSampled => return Outcome::NotSampled,
                Outcome::Error => return Outcome::Error,
                Outcome::Sampled(_) | Outcome::InvertSampled | Outcome::Dropped => {}
            }
        }
        Outcome::Dropped
    }
}
