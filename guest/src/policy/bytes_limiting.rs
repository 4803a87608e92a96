//! `bytes_limiting`: keeps traces while a token bucket of bytes allows them, as the collector:
//! `bytes_per_second` refill, `burst_capacity` (default twice the rate) holding; a trace takes
//! as many tokens as its size. The size is the sum of its spans' encoded OTLP sizes (the
//! collector measures the whole encoded trace, resource and scope included, so its sizes are
//! somewhat larger). A kept trace has no known sampling probability, so the decision erases
//! `th`.

use serde::Deserialize;
use tracekeeper_abi::ThresholdOp;

use super::limiter::TokenBucket;
use super::rate_limiting::bucket;
use super::{Outcome, Policy, TraceFacts};

/// The `type` of this policy.
pub const TYPE: &str = "bytes_limiting";

/// The `bytes_limiting` section of a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BytesLimitingConfig {
    /// Sustained bytes per second.
    pub bytes_per_second: i64,
    /// Bucket size in bytes; 0 means twice `bytes_per_second`.
    pub burst_capacity: i64,
}

/// Keeps traces within a byte rate.
#[derive(Debug, Clone)]
pub struct BytesLimiting {
    bucket: TokenBucket,
}

impl BytesLimiting {
    /// Builds the policy; `bytes_per_second` must be positive.
    pub fn new(cfg: Option<&BytesLimitingConfig>) -> Result<Self, String> {
        let cfg = cfg.copied().unwrap_or_default();
        Ok(BytesLimiting {
            bucket: bucket(TYPE, "bytes", cfg.bytes_per_second, cfg.burst_capacity)?,
        })
    }
}

impl Policy for BytesLimiting {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        if self.bucket.allow(trace.now, trace.trace.bytes) {
            Outcome::Sampled(ThresholdOp::Erase)
        } else {
            Outcome::NotSampled
        }
    }

    fn deterministic(&self) -> bool {
        false
    }
}
