//! `status_code`: keeps a trace (at probability 1) when any of its spans has one of the
//! configured status codes (`OK`, `ERROR`, `UNSET`).

use serde::Deserialize;
use tracekeeper_abi::ThresholdOp;

use super::{Outcome, Policy, TraceFacts};
use crate::trace::{STATUS_ERROR, STATUS_OK, STATUS_UNSET, StatusSet};

/// The `type` of this policy.
pub const TYPE: &str = "status_code";

/// A status code as written in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum StatusCodeName {
    /// `STATUS_CODE_OK`.
    #[serde(rename = "OK")]
    Ok,
    /// `STATUS_CODE_ERROR`.
    #[serde(rename = "ERROR")]
    Error,
    /// `STATUS_CODE_UNSET`.
    #[serde(rename = "UNSET")]
    Unset,
}

impl StatusCodeName {
    /// The OTLP `Status.code` value.
    pub fn code(self) -> u8 {
        match self {
            StatusCodeName::Ok => STATUS_OK,
            StatusCodeName::Error => STATUS_ERROR,
            StatusCodeName::Unset => STATUS_UNSET,
        }
    }
}

/// The `status_code` section of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodeConfig {
    /// The codes that keep a trace.
    pub status_codes: Vec<StatusCodeName>,
}

/// Keeps traces with a span whose status is one of a set.
#[derive(Debug, Clone, Copy)]
pub struct StatusCode {
    wanted: StatusSet,
}

impl StatusCode {
    /// Builds the policy; at least one status code is required, as in the collector.
    pub fn new(cfg: Option<&StatusCodeConfig>) -> Result<Self, String> {
        let codes = cfg.map(|c| c.status_codes.as_slice()).unwrap_or_default();
        if codes.is_empty() {
            return Err("status_code.status_codes: list at least one status code".to_owned());
        }
        let mut wanted = StatusSet::EMPTY;
        for c in codes {
            wanted.insert(c.code());
        }
        Ok(StatusCode { wanted })
    }
}

impl Policy for StatusCode {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        if trace.trace.statuses.intersects(self.wanted) {
            Outcome::Sampled(ThresholdOp::Keep)
        } else {
            Outcome::NotSampled
        }
    }
}
