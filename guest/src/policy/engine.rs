//! The policy engine the sampler drives: the configured policies (drop policies first), their
//! span predicates, `maximum_trace_size_bytes`, and the final decision. The sampler feeds it
//! every resource and span of a batch at ingest ([`Engine::observe_resource`],
//! [`Engine::observe_span`]) and asks it for a verdict when a trace is due ([`Engine::decide`]).

use tracekeeper_abi::{Decision, LayoutError, ResourceView, SpanView, ThresholdOp};

use super::predicate::{BatchScope, MatchBits, Predicates, Registry};
use super::{NamedPolicy, TraceFacts, build_all};
use crate::config::TailSamplingConfig;
use crate::interest::Interest;
use crate::trace::PendingTrace;
use crate::verdict::{self, Verdict};

/// The `policy` reported for a trace decided `not_sampled` because it grew past
/// `maximum_trace_size_bytes` (shows in the host's decision metrics).
pub const OVERSIZED: &str = "maximum_trace_size_bytes";
/// Most pending-trace slots reserved up front from `expected_new_traces_per_sec`.
pub const MAX_PREALLOCATED_TRACES: u64 = 100_000;

/// The policies of a `tail_sampling` section, ready to judge traces.
#[derive(Debug)]
pub struct Engine {
    policies: Vec<NamedPolicy>,
    predicates: Predicates,
    first_match: bool,
    /// `maximum_trace_size_bytes`, 0 for no limit.
    max_trace_bytes: u64,
}

/// How many traces to reserve room for: `expected_new_traces_per_sec` times `decision_wait`
/// (the collector's use of the hint), at most `num_traces` and [`MAX_PREALLOCATED_TRACES`].
pub fn expected_pending(config: &TailSamplingConfig) -> usize {
    let wait_secs = config.decision_wait.as_secs().max(1);
    let n = config
        .expected_new_traces_per_sec
        .saturating_mul(wait_secs)
        .min(config.num_traces)
        .min(MAX_PREALLOCATED_TRACES);
    usize::try_from(n).unwrap_or(0)
}

impl Engine {
    /// Builds the policies of `config`, adding the attribute keys they read (and `events` when
    /// an OTTL condition reads span events) to `interest`. `at` is the section's path
    /// (`processors.tail_sampling`); errors name the policy and the field.
    pub fn build(
        config: &TailSamplingConfig,
        interest: &mut Interest,
        at: &str,
    ) -> Result<Engine, String> {
        let mut reg = Registry::new(interest);
        let policies = build_all(&config.policies, &format!("{at}.policies"), &mut reg)?;
        Ok(Engine {
            policies,
            predicates: reg.finish(),
            first_match: config.sample_on_first_match,
            max_trace_bytes: config.maximum_trace_size_bytes,
        })
    }

    /// True when spans must be shown to [`Engine::observe_span`] (some policy reads them).
    pub fn observes_spans(&self) -> bool {
        !self.predicates.is_empty()
    }

    /// True when the sampler must show each span to the engine and ask [`Engine::oversized`]
    /// after it (some policy reads spans, or a trace size limit is set).
    pub fn watches_spans(&self) -> bool {
        self.observes_spans() || self.max_trace_bytes > 0
    }

    /// True when a trace has grown past `maximum_trace_size_bytes`: as in the collector, it is
    /// decided `not_sampled` at once (and its later spans follow through the host's decision
    /// cache). The size is the sum of its spans' encoded sizes.
    pub fn oversized(&self, trace: &PendingTrace) -> bool {
        self.max_trace_bytes > 0 && trace.bytes > self.max_trace_bytes
    }

    /// Per-batch state; pass it to the observe calls for every record of one batch.
    pub fn begin_batch<'a>(&self) -> BatchScope<'a> {
        BatchScope::default()
    }

    /// Reads a resource record of the batch.
    pub fn observe_resource<'a>(
        &mut self,
        scope: &mut BatchScope<'a>,
        resource: &ResourceView<'a>,
    ) -> Result<(), LayoutError> {
        if self.predicates.is_empty() {
            return Ok(());
        }
        self.predicates.observe_resource(scope, resource)
    }

    /// Evaluates the span predicates on a span of the trace whose bits are `bits`.
    pub fn observe_span<'a>(
        &mut self,
        scope: &mut BatchScope<'a>,
        span: &SpanView<'a>,
        bits: &mut MatchBits,
    ) -> Result<(), LayoutError> {
        if self.predicates.is_empty() {
            return Ok(());
        }
        self.predicates.observe_span(scope, span, bits)
    }

    /// The final decision on a trace and the name of the deciding policy ("" for none).
    pub fn decide(&mut self, facts: &TraceFacts<'_>) -> (Verdict, &str) {
        if self.oversized(facts.trace) {
            let v = Verdict {
                decision: Decision::NotSampled,
                policy: None,
                threshold: ThresholdOp::Keep,
            };
            return (v, OVERSIZED);
        }
        let v = verdict::evaluate(&mut self.policies, facts, self.first_match);
        (v, self.policy_name(&v))
    }

    /// The name of the policy a verdict refers to ("" for none).
    pub fn policy_name(&self, v: &Verdict) -> &str {
        v.policy
            .and_then(|i| self.policies.get(i))
            .map_or("", |p| p.name.as_str())
    }

    /// The policies, in evaluation order.
    pub fn policies(&self) -> &[NamedPolicy] {
        &self.policies
    }
}
