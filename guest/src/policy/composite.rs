//! `composite`: sub-policies with per-policy span-rate allocations, as the collector's:
//!
//! * sub-policies are evaluated in the order of `composite_sub_policy` (the collector does not
//!   use `policy_order`; it is accepted and, as there, has no effect);
//! * the first sub-policy that keeps the trace (or gives a legacy `InvertSampled`) decides: the
//!   trace is kept if that sub-policy's count of spans kept in the current second, plus the
//!   trace's spans, stays within both its allocation and `max_total_spans_per_second`; else it
//!   is not kept (and later sub-policies are not asked);
//! * a sub-policy's allocation is `percent` of `max_total_spans_per_second` from its
//!   `rate_allocation` entry (an entry with `percent` 0 or less gets an equal share); **a
//!   sub-policy without an entry gets 0 and never keeps**, as in the collector;
//! * counters restart at each second of the host clock (`now`), not a token bucket.
//!
//! Stricter than the collector: `max_total_spans_per_second` must be positive, the list of
//! sub-policies non-empty, and a `rate_allocation` entry must name a sub-policy (the collector
//! silently ignores a misspelt name, leaving the intended sub-policy at 0).
//!
//! A kept trace has no known sampling probability, so the decision erases `th`.

use serde::Deserialize;
use tracekeeper_abi::ThresholdOp;

use super::predicate::Registry;
use super::{Outcome, Policy, TraceFacts, build_subs};
use crate::config::PolicyConfig;

/// The `type` of this policy.
pub const TYPE: &str = "composite";
/// Nanoseconds per second (the counting window).
const NANOS_PER_SEC: u64 = 1_000_000_000;
/// `percent` of the whole of `max_total_spans_per_second`.
const WHOLE_PERCENT: f64 = 100.0;

/// One `rate_allocation` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateAllocation {
    /// Name of a sub-policy.
    pub policy: String,
    /// Its share of `max_total_spans_per_second`, percent.
    pub percent: i64,
}

/// The `composite` section of a policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompositeConfig {
    /// Spans per second kept by all sub-policies together.
    pub max_total_spans_per_second: i64,
    /// Accepted, unused (as in the collector).
    pub policy_order: Vec<String>,
    /// The sub-policies, evaluated in this order.
    pub composite_sub_policy: Vec<PolicyConfig>,
    /// Shares of `max_total_spans_per_second`.
    pub rate_allocation: Vec<RateAllocation>,
}

#[derive(Debug)]
struct Sub {
    policy: Box<dyn Policy>,
    allocated: u64,
    kept_this_second: u64,
}

/// Rate-allocated sub-policies.
#[derive(Debug)]
pub struct Composite {
    subs: Vec<Sub>,
    max_total: u64,
    second: u64,
}

impl Composite {
    /// Builds the sub-policies and their allocations.
    pub fn new(
        cfg: Option<&CompositeConfig>,
        reg: &mut Registry<'_>,
        depth: usize,
    ) -> Result<Self, String> {
        let cfg = cfg.cloned().unwrap_or_default();
        let max_total = u64::try_from(cfg.max_total_spans_per_second)
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| {
                format!(
                    "{TYPE}.max_total_spans_per_second: must be greater than 0, got {}",
                    cfg.max_total_spans_per_second
                )
            })?;
        if cfg.composite_sub_policy.is_empty() {
            return Err(format!(
                "{TYPE}.composite_sub_policy: list at least one policy"
            ));
        }
        for (i, a) in cfg.rate_allocation.iter().enumerate() {
            if !cfg.composite_sub_policy.iter().any(|p| p.name == a.policy) {
                return Err(format!(
                    "{TYPE}.rate_allocation[{i}].policy: no composite_sub_policy is named {:?}",
                    a.policy
                ));
            }
        }
        let policies = build_subs(
            &cfg.composite_sub_policy,
            "composite.composite_sub_policy",
            reg,
            depth,
        )?;
        let total = max_total as f64;
        let equal_share = total / cfg.composite_sub_policy.len() as f64;
        let subs = policies
            .into_iter()
            .zip(&cfg.composite_sub_policy)
            .map(|(policy, pc)| {
                // The collector keeps the last entry for a name.
                let share = cfg
                    .rate_allocation
                    .iter()
                    .rev()
                    .find(|a| a.policy == pc.name)
                    .map_or(0.0, |a| {
                        if a.percent > 0 {
                            a.percent as f64 / WHOLE_PERCENT * total
                        } else {
                            equal_share
                        }
                    });
                Sub {
                    policy,
                    // Truncated, as the collector's conversion to an integer.
                    allocated: share as u64,
                    kept_this_second: 0,
                }
            })
            .collect();
        Ok(Composite {
            subs,
            max_total,
            second: 0,
        })
    }
}

impl Policy for Composite {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        let second = trace.now / NANOS_PER_SEC;
        if second != self.second {
            self.second = second;
            for s in &mut self.subs {
                s.kept_this_second = 0;
            }
        }
        let spans = u64::from(trace.trace.span_count);
        for s in &mut self.subs {
            match s.policy.evaluate(trace) {
                Outcome::Error => return Outcome::Error,
                Outcome::Sampled(_) | Outcome::InvertSampled => {
                    let if_kept = s.kept_this_second.saturating_add(spans);
                    if if_kept <= s.allocated && if_kept <= self.max_total {
                        s.kept_this_second = if_kept;
                        return Outcome::Sampled(ThresholdOp::Erase);
                    }
                    return Outcome::NotSampled;
                }
                Outcome::NotSampled | Outcome::InvertNotSampled | Outcome::Dropped => {}
            }
        }
        Outcome::NotSampled
    }

    fn deterministic(&self) -> bool {
        false
    }
}
