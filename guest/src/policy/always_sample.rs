//! `always_sample`: keeps every trace, at probability 1.

use tracekeeper_abi::ThresholdOp;

use super::{Outcome, Policy, TraceFacts};

/// The `type` of this policy.
pub const TYPE: &str = "always_sample";

/// Keeps every trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysSample;

impl Policy for AlwaysSample {
    fn evaluate(&mut self, _trace: &TraceFacts<'_>) -> Outcome {
        Outcome::Sampled(ThresholdOp::Keep)
    }
}
