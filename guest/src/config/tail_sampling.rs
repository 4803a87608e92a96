//! The `processors.tail_sampling` section, key for key the OpenTelemetry Collector's
//! `tail_sampling` processor configuration, so an existing collector section works unchanged.

use core::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::duration;
use crate::policy::completeness::CompletenessPolicyConfig;
use crate::policy::probabilistic::ProbabilisticConfig;
use crate::policy::status_code::StatusCodeConfig;

/// `decision_wait` when not set (the collector's default).
pub const DEFAULT_DECISION_WAIT: Duration = Duration::from_secs(30);
/// `num_traces` when not set (the collector's default).
pub const DEFAULT_NUM_TRACES: u64 = 50_000;

/// The `processors.tail_sampling` section.
///
/// The guest uses `decision_wait`, `decision_wait_after_root_received`, `sample_on_first_match`
/// and `policies`; the other keys are the host's (trace buffer size, overflow behaviour, decision
/// cache, shutdown) and are parsed here so that there is one definition of the section.
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
    /// Expected new traces per second, a sizing hint (host).
    pub expected_new_traces_per_sec: u64,
    /// Stop evaluating policies at the first one that samples.
    pub sample_on_first_match: bool,
    /// Apply back-pressure instead of deciding early when `num_traces` is reached (host).
    pub block_on_overflow: bool,
    /// Largest trace in bytes before it is decided early; 0 means no limit (host).
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
    /// Checks ranges and builds every policy once, so that an unsupported type or a bad value is
    /// reported at configure time. `at` is the section's path.
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if self.num_traces == 0 {
            return Err(format!("{at}.num_traces: must be greater than 0"));
        }
        crate::policy::build_all(&self.policies, &format!("{at}.policies")).map(drop)
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

/// One entry of `policies`: a name, a type, and the section of that type.
///
/// Sections of policy types this guest does not implement yet are accepted without looking
/// inside (the policy is refused by its type anyway); a later issue gives each its typed section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique name, reported as `tracekeeper.policy` on the traces this policy keeps.
    pub name: String,
    /// The policy type (`always_sample`, `status_code`, `probabilistic`, `completeness`, ...).
    #[serde(rename = "type")]
    pub policy_type: String,
    /// Section of the `status_code` type.
    pub status_code: Option<StatusCodeConfig>,
    /// Section of the `probabilistic` type.
    pub probabilistic: Option<ProbabilisticConfig>,
    /// Section of the `completeness` type.
    pub completeness: Option<CompletenessPolicyConfig>,
    /// Section of the `latency` type (not supported yet).
    pub latency: Option<IgnoredAny>,
    /// Section of the `numeric_attribute` type (not supported yet).
    pub numeric_attribute: Option<IgnoredAny>,
    /// Section of the `string_attribute` type (not supported yet).
    pub string_attribute: Option<IgnoredAny>,
    /// Section of the `boolean_attribute` type (not supported yet).
    pub boolean_attribute: Option<IgnoredAny>,
    /// Section of the `trace_state` type (not supported yet).
    pub trace_state: Option<IgnoredAny>,
    /// Section of the `trace_flags` type (not supported yet).
    pub trace_flags: Option<IgnoredAny>,
    /// Section of the `rate_limiting` type (not supported yet).
    pub rate_limiting: Option<IgnoredAny>,
    /// Section of the `bytes_limiting` type (not supported yet).
    pub bytes_limiting: Option<IgnoredAny>,
    /// Section of the `span_count` type (not supported yet).
    pub span_count: Option<IgnoredAny>,
    /// Section of the `and` type (not supported yet).
    pub and: Option<IgnoredAny>,
    /// Section of the `not` type (not supported yet).
    pub not: Option<IgnoredAny>,
    /// Section of the `drop` type (not supported yet).
    pub drop: Option<IgnoredAny>,
    /// Section of the `composite` type (not supported yet).
    pub composite: Option<IgnoredAny>,
    /// Section of the `ottl_condition` type (not supported yet).
    pub ottl_condition: Option<IgnoredAny>,
}
