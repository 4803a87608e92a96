//! Sampling policies: the [`Policy`] trait, what a policy sees of a trace ([`TraceFacts`]), and
//! the table that builds each configured policy from its `type`. Each policy type lives in its own
//! file with its configuration section; adding a type is one file, one `PolicyConfig` field and
//! one arm in [`build`].

pub mod always_sample;
pub mod completeness;
pub mod probabilistic;
pub mod status_code;

use core::fmt;

use tracekeeper_abi::{Completeness, ThresholdOp, TraceId};

use crate::config::PolicyConfig;
use crate::trace::PendingTrace;

/// Policy types of the collector's `tail_sampling` processor that this guest does not
/// implement yet; configuring one is an error that says so.
pub const NOT_YET_SUPPORTED: [&str; 14] = [
    "latency",
    "numeric_attribute",
    "string_attribute",
    "boolean_attribute",
    "trace_state",
    "trace_flags",
    "rate_limiting",
    "bytes_limiting",
    "span_count",
    "and",
    "not",
    "drop",
    "composite",
    "ottl_condition",
];

/// Policy types this guest implements.
pub const SUPPORTED: [&str; 4] = [
    always_sample::TYPE,
    status_code::TYPE,
    probabilistic::TYPE,
    completeness::TYPE,
];

/// What one policy says about one trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The policy does not keep the trace.
    NotSampled,
    /// The policy keeps the trace; the threshold operation says with which probability
    /// ([`ThresholdOp::Keep`] for probability 1, [`ThresholdOp::Raise`] for a probabilistic keep).
    Sampled(ThresholdOp),
    /// The policy drops the trace, whatever the others say (drop policies, a later issue).
    Dropped,
}

/// What a policy may look at when it judges a trace.
#[derive(Debug, Clone, Copy)]
pub struct TraceFacts<'a> {
    /// The trace id.
    pub trace_id: TraceId,
    /// What the guest remembered about the trace.
    pub trace: &'a PendingTrace,
    /// The completeness found at decision time.
    pub completeness: Completeness,
    /// Host time of the decision (Unix ns).
    pub now: u64,
}

impl TraceFacts<'_> {
    /// The trace's 56-bit randomness: `rv` from `tracestate` if a span carried it, else the low
    /// 56 bits of the trace id.
    pub fn randomness(&self) -> u64 {
        self.trace.rv.unwrap_or_else(|| self.trace_id.randomness())
    }
}

/// A sampling policy.
pub trait Policy: fmt::Debug {
    /// Judges one trace. Takes `&mut self` so that stateful policies (rate limits) fit.
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome;
}

/// A configured policy and its name.
#[derive(Debug)]
pub struct NamedPolicy {
    /// The `name` from the configuration.
    pub name: String,
    /// The policy.
    pub policy: Box<dyn Policy>,
}

/// Builds every policy of `policies`, checking names are non-empty and unique. `at` is the
/// path of the list (`processors.tail_sampling.policies`).
pub fn build_all(policies: &[PolicyConfig], at: &str) -> Result<Vec<NamedPolicy>, String> {
    let mut built: Vec<NamedPolicy> = Vec::with_capacity(policies.len());
    for (i, cfg) in policies.iter().enumerate() {
        if cfg.name.is_empty() {
            return Err(format!("{at}[{i}].name: must not be empty"));
        }
        if let Some(j) = built.iter().position(|p| p.name == cfg.name) {
            return Err(format!(
                "{at}[{i}] (name: {}): duplicate policy name, also used by {at}[{j}]",
                cfg.name
            ));
        }
        built.push(build(cfg).map_err(|e| format!("{at}[{i}] (name: {}): {e}", cfg.name))?);
    }
    Ok(built)
}

/// Builds one policy from its configuration. The error is relative to the policy.
pub fn build(cfg: &PolicyConfig) -> Result<NamedPolicy, String> {
    let policy: Box<dyn Policy> = match cfg.policy_type.as_str() {
        always_sample::TYPE => Box::new(always_sample::AlwaysSample),
        status_code::TYPE => Box::new(status_code::StatusCode::new(cfg.status_code.as_ref())?),
        probabilistic::TYPE => Box::new(probabilistic::Probabilistic::new(
            cfg.probabilistic.as_ref(),
        )?),
        completeness::TYPE => Box::new(completeness::CompletenessPolicy::new(
            cfg.completeness.as_ref(),
        )),
        t if NOT_YET_SUPPORTED.contains(&t) => {
            return Err(format!("policy type \"{t}\" is not supported yet"));
        }
        t => {
            return Err(format!(
                "unknown policy type \"{t}\" (supported: {})",
                SUPPORTED.join(", ")
            ));
        }
    };
    Ok(NamedPolicy {
        name: cfg.name.clone(),
        policy,
    })
}
