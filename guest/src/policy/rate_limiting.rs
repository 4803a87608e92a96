//! `rate_limiting`: keeps traces while a token bucket of spans allows them, as the collector:
//! `spans_per_second` refill, `burst_capacity` (default twice the rate) holding; a trace takes
//! as many tokens as it has spans and is not kept if they are not there. A kept trace has no
//! known sampling probability, so the decision erases `th`.

use serde::Deserialize;
use tracekeeper_abi::ThresholdOp;

use super::limiter::TokenBucket;
use super::{Outcome, Policy, TraceFacts};

/// The `type` of this policy.
pub const TYPE: &str = "rate_limiting";
/// `burst_capacity` when not set: this many seconds of the rate.
pub const DEFAULT_BURST_SECONDS: u64 = 2;

/// The `rate_limiting` section of a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitingConfig {
    /// Sustained spans per second.
    pub spans_per_second: i64,
    /// Bucket size in spans; 0 means twice `spans_per_second`.
    pub burst_capacity: i64,
}

/// Checks a rate and burst pair; `unit` names the fields' prefix (`spans`, `bytes`).
pub fn bucket(ty: &str, unit: &str, rate: i64, burst: i64) -> Result<TokenBucket, String> {
    let rate = u64::try_from(rate)
        .ok()
        .filter(|r| *r > 0)
        .ok_or_else(|| format!("{ty}.{unit}_per_second: must be greater than 0, got {rate}"))?;
    let burst = u64::try_from(burst)
        .map_err(|_| format!("{ty}.burst_capacity: must not be negative, got {burst}"))?;
    let burst = if burst == 0 {
        rate.saturating_mul(DEFAULT_BURST_SECONDS)
    } else {
        burst
    };
    Ok(TokenBucket::new(rate, burst))
}

/// Keeps traces within a span rate.
#[derive(Debug, Clone)]
pub struct RateLimiting {
    bucket: TokenBucket,
}

impl RateLimiting {
    /// Builds the policy; `spans_per_second` must be positive.
    pub fn new(cfg: Option<&RateLimitingConfig>) -> Result<Self, String> {
        let cfg = cfg.copied().unwrap_or_default();
        Ok(RateLimiting {
            bucket: bucket(TYPE, "spans", cfg.spans_per_second, cfg.burst_capacity)?,
        })
    }
}

impl Policy for RateLimiting {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        if self
            .bucket
            .allow(trace.now, u64::from(trace.trace.span_count))
        {
            Outcome::Sampled(ThresholdOp::Erase)
        } else {
            Outcome::NotSampled
        }
    }

    fn deterministic(&self) -> bool {
        false
    }
}
