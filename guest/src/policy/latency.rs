//! `latency`: keeps a trace by its duration, from its earliest span start to its latest span
//! end, in whole milliseconds (truncated). Without `upper_threshold_ms` (or with 0) a trace
//! lasting at least `threshold_ms` is kept; with it, a duration in
//! `(threshold_ms, upper_threshold_ms]` is kept, as in the collector.
//!
//! Difference: the collector tests the bounds while it walks the spans, on the duration seen
//! so far, so with an upper bound it can keep a trace whose full duration exceeds it; here the
//! full duration is used.

use serde::Deserialize;
use tracekeeper_abi::ThresholdOp;

use super::{Outcome, Policy, TraceFacts};

/// The `type` of this policy.
pub const TYPE: &str = "latency";
/// Nanoseconds per millisecond.
const NANOS_PER_MS: u64 = 1_000_000;

/// The `latency` section of a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyConfig {
    /// Lower bound, milliseconds.
    pub threshold_ms: i64,
    /// Upper bound, milliseconds; 0 means none.
    pub upper_threshold_ms: i64,
}

/// Keeps traces by duration.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    lower: i64,
    upper: i64,
}

impl Latency {
    /// Builds the policy; bounds must not be negative and an upper bound must exceed the lower.
    pub fn new(cfg: Option<&LatencyConfig>) -> Result<Self, String> {
        let cfg = cfg.copied().unwrap_or_default();
        if cfg.threshold_ms < 0 {
            return Err(format!(
                "{TYPE}.threshold_ms: must not be negative, got {}",
                cfg.threshold_ms
            ));
        }
        if cfg.upper_threshold_ms < 0 {
            return Err(format!(
                "{TYPE}.upper_threshold_ms: must not be negative, got {}",
                cfg.upper_threshold_ms
            ));
        }
        if cfg.upper_threshold_ms != 0 && cfg.upper_threshold_ms <= cfg.threshold_ms {
            return Err(format!(
                "{TYPE}.upper_threshold_ms: must be greater than threshold_ms ({} <= {})",
                cfg.upper_threshold_ms, cfg.threshold_ms
            ));
        }
        Ok(Latency {
            lower: cfg.threshold_ms,
            upper: cfg.upper_threshold_ms,
        })
    }
}

/// The duration of a trace in whole milliseconds (0 without span times).
pub fn duration_ms(min_start: u64, max_end: u64) -> i64 {
    if min_start == 0 {
        return 0;
    }
    i64::try_from(max_end.saturating_sub(min_start) / NANOS_PER_MS).unwrap_or(i64::MAX)
}

impl Policy for Latency {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        let d = duration_ms(trace.trace.min_start, trace.trace.max_end);
        let keep = if self.upper == 0 {
            d >= self.lower
        } else {
            self.lower < d && d <= self.upper
        };
        if keep {
            Outcome::Sampled(ThresholdOp::Keep)
        } else {
            Outcome::NotSampled
        }
    }
}
