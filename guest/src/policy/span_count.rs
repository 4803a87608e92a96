//! `span_count`: keeps a trace whose number of spans is within `min_spans..=max_spans`
//! (inclusive; `max_spans` 0 means no upper bound), as in the collector. Every span received
//! counts, duplicates included.

use serde::Deserialize;
use tracekeeper_abi::ThresholdOp;

use super::{Outcome, Policy, TraceFacts};

/// The `type` of this policy.
pub const TYPE: &str = "span_count";

/// The `span_count` section of a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpanCountConfig {
    /// Fewest spans.
    pub min_spans: i32,
    /// Most spans; 0 means no limit.
    pub max_spans: i32,
}

/// Keeps traces by span count.
#[derive(Debug, Clone, Copy)]
pub struct SpanCount {
    min: u32,
    max: Option<u32>,
}

impl SpanCount {
    /// Builds the policy; bounds must not be negative and `max_spans` (when set) must not be
    /// below `min_spans`.
    pub fn new(cfg: Option<&SpanCountConfig>) -> Result<Self, String> {
        let cfg = cfg.copied().unwrap_or_default();
        let min = u32::try_from(cfg.min_spans).map_err(|_| {
            format!(
                "{TYPE}.min_spans: must not be negative, got {}",
                cfg.min_spans
            )
        })?;
        let max = u32::try_from(cfg.max_spans).map_err(|_| {
            format!(
                "{TYPE}.max_spans: must not be negative, got {}",
                cfg.max_spans
            )
        })?;
        if max != 0 && max < min {
            return Err(format!(
                "{TYPE}.max_spans: must not be below min_spans ({max} < {min})"
            ));
        }
        Ok(SpanCount {
            min,
            max: (max != 0).then_some(max),
        })
    }
}

impl Policy for SpanCount {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        let n = trace.trace.span_count;
        if n >= self.min && self.max.is_none_or(|max| n <= max) {
            Outcome::Sampled(ThresholdOp::Keep)
        } else {
            Outcome::NotSampled
        }
    }
}
