//! `ottl_condition`: keeps a trace when one of its spans matches one of the `span` conditions,
//! or one of its span events matches one of the `spanevent` conditions (the language subset is
//! documented in `ottl.rs`). Conditions of a list are or-ed, as in the collector.
//!
//! The conditions run per span at ingest; the trace keeps two bits, "matched" and "failed",
//! and the first of the two to be set wins, as the collector's walk over the trace's spans in
//! arrival order stops at the first match or (with `error_mode: propagate`) the first error. A
//! failed trace gives the policy's `Error` outcome, which the final decision ignores.

use serde::Deserialize;
use tracekeeper_abi::{EventIter, LayoutError, ThresholdOp, Value};

use super::ottl::{Condition, Context, EvalCtx, EvalError};
use super::predicate::{Bit, MatchBits, Registry, fill_slots};
use super::{Outcome, Policy, TraceFacts};

/// The `type` of this policy.
pub const TYPE: &str = "ottl_condition";

/// What an evaluation error does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorMode {
    /// The policy's result for the trace is an error (the collector's default).
    #[default]
    Propagate,
    /// The erroring condition counts as false.
    Ignore,
    /// As `ignore` (the collector also skips the log line; the guest has no log).
    Silent,
}

/// The `ottl_condition` section of a policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OttlConditionConfig {
    /// What an evaluation error does.
    pub error_mode: ErrorMode,
    /// Conditions on spans (context `span`).
    pub span: Vec<String>,
    /// Conditions on span events (context `spanevent`).
    pub spanevent: Vec<String>,
}

/// The parsed conditions and the trace bits they set.
#[derive(Debug)]
pub struct OttlPredicate {
    span: Vec<Condition>,
    events: Vec<Condition>,
    mode: ErrorMode,
    matched: Bit,
    failed: Bit,
    reads_resource: bool,
    reads_span_attributes: bool,
}

/// Tells the registry which kinds of keys the conditions read.
struct Tracking<'r, 'i> {
    registry: &'r mut Registry<'i>,
    resource: bool,
    span: bool,
}

impl super::ottl::KeyResolver for Tracking<'_, '_> {
    fn span_key(&mut self, key: &str) -> Result<u16, String> {
        self.span = true;
        self.registry.span_key(key)
    }
    fn resource_key(&mut self, key: &str) -> Result<u16, String> {
        self.resource = true;
        self.registry.resource_key(key)
    }
}

impl OttlPredicate {
    /// True when a condition reads resource attributes.
    pub fn reads_resource(&self) -> bool {
        self.reads_resource
    }

    /// True when a condition reads span (or event) attributes.
    pub fn reads_span_attributes(&self) -> bool {
        self.reads_span_attributes
    }

    fn eval_list(&self, conds: &[Condition], ctx: &EvalCtx<'_, '_>) -> Result<bool, EvalError> {
        for c in conds {
            match c.eval(ctx) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) if self.mode == ErrorMode::Propagate => return Err(e),
                Err(_) => {}
            }
        }
        Ok(false)
    }

    /// Evaluates the conditions on one span (`ctx`) and its events, unless the trace already
    /// matched or failed.
    pub fn observe<'a>(
        &self,
        ctx: &EvalCtx<'_, 'a>,
        events: EventIter<'a>,
        span_keys: &[String],
        event_slots: &mut Vec<Option<Value<'a>>>,
        bits: &mut MatchBits,
    ) -> Result<(), LayoutError> {
        if bits.get(self.matched) || bits.get(self.failed) {
            return Ok(());
        }
        let record = |r: Result<bool, EvalError>, bits: &mut MatchBits| match r {
            Ok(true) => {
                bits.set(self.matched);
                true
            }
            Ok(false) => false,
            Err(_) => {
                bits.set(self.failed);
                true
            }
        };
        if !self.span.is_empty() && record(self.eval_list(&self.span, ctx), bits) {
            return Ok(());
        }
        if self.events.is_empty() {
            return Ok(());
        }
        for event in events {
            let event = event?;
            fill_slots(event.attributes.clone(), span_keys, event_slots)?;
            let ectx = EvalCtx {
                event: Some((event.name, event_slots.as_slice())),
                ..*ctx
            };
            if record(self.eval_list(&self.events, &ectx), bits) {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The policy: reads the two bits.
#[derive(Debug, Clone, Copy)]
pub struct OttlCondition {
    matched: Bit,
    failed: Bit,
}

impl OttlCondition {
    /// Parses the conditions and registers the predicate. The error names the field and the
    /// index of the condition (`ottl_condition.span[1]: ...`).
    pub fn new(cfg: Option<&OttlConditionConfig>, reg: &mut Registry<'_>) -> Result<Self, String> {
        let cfg = cfg.cloned().unwrap_or_default();
        if cfg.span.is_empty() && cfg.spanevent.is_empty() {
            return Err(
                "ottl_condition: expected at least one condition in `span` or `spanevent`"
                    .to_owned(),
            );
        }
        let signature = format!(
            "ottl:{:?}:{:?}:{:?}",
            cfg.error_mode, cfg.span, cfg.spanevent
        );
        let events = !cfg.spanevent.is_empty();
        let (matched, failed) = reg.ottl(signature, events, |reg, matched, failed| {
            let mut keys = Tracking {
                registry: reg,
                resource: false,
                span: false,
            };
            let parse =
                |list: &[String], ctx: Context, field: &str, keys: &mut Tracking<'_, '_>| {
                    list.iter()
                        .enumerate()
                        .map(|(i, src)| {
                            Condition::parse(src, ctx, keys)
                                .map_err(|e| format!("ottl_condition.{field}[{i}]: {e}"))
                        })
                        .collect::<Result<Vec<_>, String>>()
                };
            let span = parse(&cfg.span, Context::Span, "span", &mut keys)?;
            let events = parse(&cfg.spanevent, Context::SpanEvent, "spanevent", &mut keys)?;
            Ok(OttlPredicate {
                span,
                events,
                mode: cfg.error_mode,
                matched,
                failed,
                reads_resource: keys.resource,
                reads_span_attributes: keys.span,
            })
        })?;
        Ok(OttlCondition { matched, failed })
    }
}

impl Policy for OttlCondition {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        let bits = &trace.trace.matches;
        if bits.get(self.failed) {
            Outcome::Error
        } else if bits.get(self.matched) {
            Outcome::Sampled(ThresholdOp::Keep)
        } else {
            Outcome::NotSampled
        }
    }
}
