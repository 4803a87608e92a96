//! Sampling policies: the [`Policy`] trait, what a policy sees of a trace ([`TraceFacts`]), and
//! the table that builds each configured policy from its `type`. Each policy type lives in its
//! own file with its configuration section; adding a type is one file, one `PolicyConfig`
//! field and one arm in [`build`].
//!
//! Policies that look at individual spans (attributes, `trace_state`, `trace_flags`, OTTL)
//! register span predicates at build time (`predicate.rs`); those are evaluated per span at
//! ingest and the policies read one bit per predicate at decision time. Trace-level policies
//! (latency, span count, probabilistic, limits, completeness, combinators) read the few facts
//! the guest keeps per trace ([`PendingTrace`]) when the trace is decided.

pub mod always_sample;
pub mod and;
pub mod boolean_attribute;
pub mod bytes_limiting;
pub mod completeness;
pub mod composite;
pub mod drop;
pub mod engine;
pub mod latency;
pub mod limiter;
pub mod not;
pub mod numeric_attribute;
pub mod ottl;
pub mod ottl_condition;
pub mod predicate;
pub mod probabilistic;
pub mod rate_limiting;
pub mod span_count;
pub mod status_code;
pub mod string_attribute;
pub mod trace_flags;
pub mod trace_state;

use core::fmt;

use tracekeeper_abi::{Completeness, ThresholdOp, TraceId};

use crate::config::PolicyConfig;
use crate::trace::PendingTrace;
use predicate::Registry;

pub use engine::Engine;

/// Policy types this guest implements.
pub const SUPPORTED: [&str; 18] = [
    always_sample::TYPE,
    latency::TYPE,
    numeric_attribute::TYPE,
    probabilistic::TYPE,
    status_code::TYPE,
    string_attribute::TYPE,
    boolean_attribute::TYPE,
    trace_state::TYPE,
    trace_flags::TYPE,
    rate_limiting::TYPE,
    bytes_limiting::TYPE,
    span_count::TYPE,
    and::TYPE,
    not::TYPE,
    drop::TYPE,
    composite::TYPE,
    ottl_condition::TYPE,
    completeness::TYPE,
];

/// Deepest nesting of sub-policies (`and` in `composite` in `not` ...).
pub const MAX_NESTING: usize = 8;

/// What one policy says about one trace (the collector's decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The policy does not keep the trace.
    NotSampled,
    /// The policy keeps the trace; the threshold operation says with which probability
    /// ([`ThresholdOp::Keep`] for probability 1, [`ThresholdOp::Raise`] for a probabilistic
    /// keep, [`ThresholdOp::Erase`] for a keep of unknown probability such as a rate limit's).
    Sampled(ThresholdOp),
    /// The trace is dropped whatever the other policies say (`drop`).
    Dropped,
    /// Legacy `invert_match` result: keep, unless another policy says `NotSampled`.
    InvertSampled,
    /// Legacy `invert_match` result: do not keep, whatever the others say (except `Dropped`).
    InvertNotSampled,
    /// The policy could not judge the trace (an OTTL error with `error_mode: propagate`); the
    /// final decision ignores it.
    Error,
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

    /// True when the outcome depends only on the trace's content (not on its randomness or a
    /// rate): then the inverse of the policy (`not`) is a certain keep too.
    fn deterministic(&self) -> bool {
        true
    }
}

/// A configured policy and its name.
#[derive(Debug)]
pub struct NamedPolicy {
    /// The `name` from the configuration.
    pub name: String,
    /// The policy.
    pub policy: Box<dyn Policy>,
}

/// Builds every policy of `policies`, checking names are non-empty and unique, and registers
/// their span predicates in `reg`. `at` is the path of the list
/// (`processors.tail_sampling.policies`). As in the collector, `drop` policies come first in
/// the returned list (they are evaluated before the others).
pub fn build_all(
    policies: &[PolicyConfig],
    at: &str,
    reg: &mut Registry<'_>,
) -> Result<Vec<NamedPolicy>, String> {
    let mut built: Vec<(usize, NamedPolicy)> = Vec::with_capacity(policies.len());
    for (i, cfg) in policies.iter().enumerate() {
        if cfg.name.is_empty() {
            return Err(format!("{at}[{i}].name: must not be empty"));
        }
        if let Some(j) = policies[..i].iter().position(|p| p.name == cfg.name) {
            return Err(format!(
                "{at}[{i}] (name: {}): duplicate policy name, also used by {at}[{j}]",
                cfg.name
            ));
        }
        let policy =
            build(cfg, reg, 0).map_err(|e| format!("{at}[{i}] (name: {}): {e}", cfg.name))?;
        built.push((
            i,
            NamedPolicy {
                name: cfg.name.clone(),
                policy,
            },
        ));
    }
    // Stable: drops first, each group in configuration order.
    built.sort_by_key(|(i, _)| policies.get(*i).is_none_or(|p| p.policy_type != drop::TYPE));
    Ok(built.into_iter().map(|(_, p)| p).collect())
}

/// Builds the sub-policies of a combinator; `field` is the path of the list relative to the
/// parent policy (`and.and_sub_policy`), `depth` the parent's nesting depth.
pub fn build_subs(
    list: &[PolicyConfig],
    field: &str,
    reg: &mut Registry<'_>,
    depth: usize,
) -> Result<Vec<Box<dyn Policy>>, String> {
    let single = field.ends_with("not_sub_policy");
    list.iter()
        .enumerate()
        .map(|(i, cfg)| {
            let at = match (single, cfg.name.is_empty()) {
                (true, true) => field.to_owned(),
                (true, false) => format!("{field} (name: {})", cfg.name),
                (false, true) => format!("{field}[{i}]"),
                (false, false) => format!("{field}[{i}] (name: {})", cfg.name),
            };
            if depth + 1 > MAX_NESTING {
                return Err(format!(
                    "{at}: sub-policies nested deeper than {MAX_NESTING} levels"
                ));
            }
            if cfg.policy_type == drop::TYPE {
                return Err(format!(
                    "{at}: a drop policy is only allowed at the top level of policies"
                ));
            }
            build(cfg, reg, depth + 1).map_err(|e| format!("{at}: {e}"))
        })
        .collect()
}

/// Builds one policy from its configuration at nesting `depth` (0 = top level). The error is
/// relative to the policy (`latency.threshold_ms: ...`).
pub fn build(
    cfg: &PolicyConfig,
    reg: &mut Registry<'_>,
    depth: usize,
) -> Result<Box<dyn Policy>, String> {
    let t = cfg.policy_type.as_str();
    if let Some(stray) = cfg
        .sections()
        .into_iter()
        .find(|(name, present)| *present && *name != t)
    {
        return Err(format!(
            "{}: this section belongs to policy type `{}`, but the policy's type is `{t}`",
            stray.0, stray.0
        ));
    }
    let policy: Box<dyn Policy> = match t {
        always_sample::TYPE => Box::new(always_sample::AlwaysSample),
        latency::TYPE => Box::new(latency::Latency::new(cfg.latency.as_ref())?),
        numeric_attribute::TYPE => Box::new(numeric_attribute::build(
            cfg.numeric_attribute.as_ref(),
            reg,
        )?),
        probabilistic::TYPE => Box::new(probabilistic::Probabilistic::new(
            cfg.probabilistic.as_ref(),
        )?),
        status_code::TYPE => Box::new(status_code::StatusCode::new(cfg.status_code.as_ref())?),
        string_attribute::TYPE => {
            Box::new(string_attribute::build(cfg.string_attribute.as_ref(), reg)?)
        }
        boolean_attribute::TYPE => Box::new(boolean_attribute::build(
            cfg.boolean_attribute.as_ref(),
            reg,
        )?),
        trace_state::TYPE => Box::new(trace_state::build(cfg.trace_state.as_ref(), reg)?),
        trace_flags::TYPE => Box::new(trace_flags::build(reg)?),
        rate_limiting::TYPE => Box::new(rate_limiting::RateLimiting::new(
            cfg.rate_limiting.as_ref(),
        )?),
        bytes_limiting::TYPE => Box::new(bytes_limiting::BytesLimiting::new(
            cfg.bytes_limiting.as_ref(),
        )?),
        span_count::TYPE => Box::new(span_count::SpanCount::new(cfg.span_count.as_ref())?),
        and::TYPE => Box::new(and::And::new(cfg.and.as_ref(), reg, depth)?),
        not::TYPE => Box::new(not::Not::new(cfg.not.as_ref(), reg, depth)?),
        drop::TYPE => Box::new(drop::Drop::new(cfg.drop.as_ref(), reg, depth)?),
        composite::TYPE => Box::new(composite::Composite::new(
            cfg.composite.as_ref(),
            reg,
            depth,
        )?),
        ottl_condition::TYPE => Box::new(ottl_condition::OttlCondition::new(
            cfg.ottl_condition.as_ref(),
            reg,
        )?),
        completeness::TYPE => Box::new(completeness::CompletenessPolicy::new(
            cfg.completeness.as_ref(),
        )),
        t => {
            return Err(format!(
                "unknown policy type \"{t}\" (supported: {})",
                SUPPORTED.join(", ")
            ));
        }
    };
    Ok(policy)
}

#[cfg(test)]
mod tests;
