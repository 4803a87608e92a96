//! The `processors.tail_sampling` section, key for key the OpenTelemetry Collector's
//! `tail_sampling` processor configuration, so an existing collector section works unchanged.

use core::time::Duration;

use serde::Deserialize;

use super::duration;
use crate::interest::Interest;
use crate::policy::Engine;
use crate::policy::and::AndConfig;
use crate::policy::boolean_attribute::BooleanAttributeConfig;
use crate::policy::bytes_limiting::BytesLimitingConfig;
use crate::policy::completeness::CompletenessPolicyConfig;
use crate::policy::composite::CompositeConfig;
use crate::policy::drop::DropConfig;
use crate::policy::latency::LatencyConfig;
use crate::policy::not::NotConfig;
use crate::policy::numeric_attribute::NumericAttributeConfig;
use crate::policy::ottl_condition::OttlConditionConfig;
use crate::policy::probabilistic::ProbabilisticConfig;
use crate::policy::rate_limiting::RateLimitingConfig;
use crate::policy::span_count::SpanCountConfig;
use crate::policy::status_code::StatusCodeConfig;
use crate::policy::string_attribute::StringAttributeConfig;
use crate::policy::trace_flags::TraceFlagsConfig;
use crate::policy::trace_state::TraceStateConfig;

/// `decision_wait` when not set (the collector's default).
pub const DEFAULT_DECISION_WAIT: Duration = Duration::from_secs(30);
/// `num_traces` when not set (the collector's default).
pub const DEFAULT_NUM_TRACES: u64 = 50_000;

/// The `processors.tail_sampling` section.
///
/// The guest uses `decision_wait`, `decision_wait_after_root_received`, `sample_on_first_match`,
/// `maximum_trace_size_bytes` (a trace growing past it is decided `not_sampled` at once, as in
/// the collector), `expected_new_traces_per_sec` (to size its trace table) and `policies`; the
/// other keys are the host's (trace buffer size, overflow behaviour, decision cache, shutdown)
/// and are parsed here so that there is one definition of the section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TailSamplingConfig {
    /// Wait from the first span of a trace until its decision.
    #[serde(deserialize_with = "duration::deserialize")]
    pub decision_wait: Duration,
    /// When set, a trace whose root span arrived is decided at the latest this long after the
    /// root's arrival (if that is earlier than `decision_wait` after its first span).
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub decision_wait_after_root_received: Option<Duration>,
    /// Most traces held in memory at once (host).
    pub num_traces: u64,
    /// Expected new traces per second, a sizing hint (guest trace table, host buffer).
    pub expected_new_traces_per_sec: u64,
    /// Stop evaluating policies at the first one that samples.
    pub sample_on_first_match: bool,
    /// Apply back-pressure instead of deciding early when `num_traces` is reached (host).
    pub block_on_overflow: bool,
    /// Largest trace (sum of its spans' encoded sizes) before it is decided `not_sampled` at
    /// once; 0 means no limit.
    pub maximum_trace_size_bytes: u64,
    /// Drop instead of deciding the pending traces on shutdown (host).
    pub drop_pending_traces_on_shutdown: bool,
    /// Sizes of the caches of decided trace ids that tag late spans (host).
    pub decision_cache: DecisionCacheConfig,
    /// The sampling policies, evaluated in this order.
    pub policies: Vec<PolicyConfig>,
}

impl Default for TailSamplingConfig {
    fn default() -> Self {
        TailSamplingConfig {
            decision_wait: DEFAULT_DECISION_WAIT,
            decision_wait_after_root_received: None,
            num_traces: DEFAULT_NUM_TRACES,
            expected_new_traces_per_sec: 0,
            sample_on_first_match: false,
            block_on_overflow: false,
            maximum_trace_size_bytes: 0,
            drop_pending_traces_on_shutdown: false,
            decision_cache: DecisionCacheConfig::default(),
            policies: Vec::new(),
        }
    }
}

impl TailSamplingConfig {
    /// Checks ranges and builds every policy once, so that an unknown type or a bad value is
    /// reported at configure time. `at` is the section's path.
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if self.num_traces == 0 {
            return Err(format!("{at}.num_traces: must be greater than 0"));
        }
        Engine::build(self, &mut Interest::default(), at).map(drop)
    }
}

/// `decision_cache`: how many decided trace ids the host remembers, per outcome. Not set: 0,
/// as in the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionCacheConfig {
    /// Trace ids decided `sampled`.
    pub sampled_cache_size: u64,
    /// Trace ids decided `not_sampled`.
    pub non_sampled_cache_size: u64,
}

/// One entry of `policies` (or of a combinator's sub-policies): a name, a type, and the
/// section of that type. Sections of other types are refused when the policy is built.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique name (at the top level), reported as `tracekeeper.policy` on the traces this
    /// policy keeps. Sub-policies may omit it.
    #[serde(default)]
    pub name: String,
    /// The policy type (`always_sample`, `status_code`, `probabilistic`, `completeness`, ...).
    #[serde(rename = "type")]
    pub policy_type: String,
    /// Section of the `latency` type.
    pub latency: Option<LatencyConfig>,
    /// Section of the `numeric_attribute` type.
    pub numeric_attribute: Option<NumericAttributeConfig>,
    /// Section of the `probabilistic` type.
    pub probabilistic: Option<ProbabilisticConfig>,
    /// Section of the `status_code` type.
    pub status_code: Option<StatusCodeConfig>,
    /// Section of the `string_attribute` type.
    pub string_attribute: Option<StringAttributeConfig>,
    /// Section of the `boolean_attribute` type.
    pub boolean_attribute: Option<BooleanAttributeConfig>,
    /// Section of the `trace_state` type.
    pub trace_state: Option<TraceStateConfig>,
    /// Section of the `trace_flags` type (empty).
    pub trace_flags: Option<TraceFlagsConfig>,
    /// Section of the `rate_limiting` type.
    pub rate_limiting: Option<RateLimitingConfig>,
    /// Section of the `bytes_limiting` type.
    pub bytes_limiting: Option<BytesLimitingConfig>,
    /// Section of the `span_count` type.
    pub span_count: Option<SpanCountConfig>,
    /// Section of the `and` type.
    pub and: Option<AndConfig>,
    /// Section of the `not` type.
    pub not: Option<NotConfig>,
    /// Section of the `drop` type.
    pub drop: Option<DropConfig>,
    /// Section of the `composite` type.
    pub composite: Option<CompositeConfig>,
    /// Section of the `ottl_condition` type.
    pub ottl_condition: Option<OttlConditionConfig>,
    /// Section of the `completeness` type.
    pub completeness: Option<CompletenessPolicyConfig>,
}

impl PolicyConfig {
    /// Each type-specific section's key and whether it is present.
    pub fn sections(&self) -> [(&'static str, bool); 17] {
        [
            ("latency", self.latency.is_some()),
            ("numeric_attribute", self.numeric_attribute.is_some()),
            ("probabilistic", self.probabilistic.is_some()),
            ("status_code", self.status_code.is_some()),
            ("string_attribute", self.string_attribute.is_some()),
            ("boolean_attribute", self.boolean_attribute.is_some()),
            ("trace_state", self.trace_state.is_some()),
            ("trace_flags", self.trace_flags.is_some()),
            ("rate_limiting", self.rate_limiting.is_some()),
            ("bytes_limiting", self.bytes_limiting.is_some()),
            ("span_count", self.span_count.is_some()),
            ("and", self.and.is_some()),
            ("not", self.not.is_some()),
            ("drop", self.drop.is_some()),
            ("composite", self.composite.is_some()),
            ("ottl_condition", self.ottl_condition.is_some()),
            ("completeness", self.completeness.is_some()),
        ]
    }
}
