//! `probabilistic`: keeps `sampling_percentage` percent of traces by comparing the trace's
//! randomness with an OpenTelemetry rejection threshold, so the keep carries an honest weight
//! (`th` in `tracestate`) and depends only on the trace id (or `rv`): every instance agrees.
//!
//! `hash_salt` is accepted for compatibility with collector configurations and ignored: the
//! collector hashes the trace id with the salt, but a threshold is only meaningful against the
//! trace's own randomness, which downstream samplers also use. (A later issue may revisit this.)

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
    /// Accepted and ignored (see the module documentation).
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
}
