//! `probabilistic`: keeps `sampling_percentage` percent of traces by comparing the trace's
//! randomness with an OpenTelemetry rejection threshold, so the keep carries an honest weight
//! (`th` in `tracestate`) and depends only on the trace id (or `rv`): every instance agrees.
//!
//! Difference from the collector: the collector hashes the trace id with `hash_salt` and keeps
//! the traces whose hash falls under the percentage. Here `hash_salt` is accepted (so collector
//! configurations load unchanged) and has no effect: a threshold is only an honest weight when
//! it is compared with the trace's own randomness (W3C trace context level 2, OTEP 235), which
//! downstream samplers also use, and only then do two instances (or two tiers) that see the
//! same trace id agree. The kept fraction is the same; which traces are kept differs from a
//! collector's. To sample independently in two tiers, give them different percentages: the
//! equalizing threshold keeps the tiers consistent.

use serde::Deserialize;
use tracekeeper_abi::ThresholdOp;

use super::{Outcome, Policy, TraceFacts};
use crate::threshold;

/// The `type` of this policy.
pub const TYPE: &str = "probabilistic";

/// Largest `sampling_percentage`.
pub const MAX_PERCENTAGE: f64 = 100.0;

/// The `probabilistic` section of a policy.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbabilisticConfig {
    /// Accepted, without effect (see the module documentation).
    pub hash_salt: Option<String>,
    /// Percentage of traces to keep, 0 to 100 (0, the collector's default, keeps none).
    pub sampling_percentage: f64,
}

/// Keeps traces whose randomness reaches a threshold.
#[derive(Debug, Clone, Copy)]
pub struct Probabilistic {
    threshold: u64,
}

impl Probabilistic {
    /// Builds the policy; the percentage must be within 0..=100.
    pub fn new(cfg: Option<&ProbabilisticConfig>) -> Result<Self, String> {
        let pct = cfg.map_or(0.0, |c| c.sampling_percentage);
        if !(0.0..=MAX_PERCENTAGE).contains(&pct) {
            return Err(format!(
                "probabilistic.sampling_percentage: must be between 0 and 100, got {pct}"
            ));
        }
        Ok(Probabilistic {
            threshold: threshold::for_probability(pct / MAX_PERCENTAGE),
        })
    }

    /// The rejection threshold T: traces with randomness >= T are kept.
    pub fn threshold(&self) -> u64 {
        self.threshold
    }
}

impl Policy for Probabilistic {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        if trace.randomness() < self.threshold {
            Outcome::NotSampled
        } else if self.threshold == 0 {
            Outcome::Sampled(ThresholdOp::Keep)
        } else {
            Outcome::Sampled(ThresholdOp::Raise(self.threshold))
        }
    }

    fn deterministic(&self) -> bool {
        // Only the two certain cases (keep all, keep none) do not depend on randomness.
        self.threshold == 0 || self.threshold >= threshold::MAX_THRESHOLD
    }
}
