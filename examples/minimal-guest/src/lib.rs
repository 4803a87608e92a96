//! A minimal tracekeeper guest: keep the traces whose **root span** has attribute `key`
//! (optionally with a given `value`); drop the others. Configured through its own `processors`
//! section:
//!
//! ```yaml
//! processors:
//!   keep_root_attribute:
//!     key: vip              # required: the span attribute to look for on the root span
//!     value: "true"         # optional: keep only when the value (as text) is this
//!     decision_wait: 5s     # optional (default 5s): wait after a trace's first span
//! ```
//!
//! It uses nothing but the contract in `wit/tracekeeper.wit` and the byte layouts of
//! `wit/README.md` (read and written with the `tracekeeper-abi` crate). All time comes from the
//! host's `now`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;

use tracekeeper_abi::{
    AttrKey, BatchReader, Completeness, Decision, DecisionWriter, Record, ThresholdOp, TraceId,
    Value,
};

// The contract. Outside this repository, copy `wit/tracekeeper.wit` next to your Cargo.toml
// and point `path` at that copy.
wit_bindgen::generate!({ world: "sampler-guest", path: "../../wit" });

use exports::tracekeeper::sampler::sampler::{Guest, Interest};

/// This guest's section under `processors`.
const SECTION: &str = "keep_root_attribute";
/// The policy name written on kept traces (`tracekeeper.policy`).
const POLICY: &str = "root_attribute";
/// `decision_wait` when not configured.
const DEFAULT_WAIT_NS: u64 = 5_000_000_000;

/// What the configuration asks for.
#[derive(Default)]
struct Settings {
    value: Option<String>,
    wait_ns: u64,
}

/// One pending trace.
struct Pending {
    due: u64,
    /// Whether the root span arrived with the attribute (and value); `None`: no root yet.
    root_matches: Option<bool>,
}

#[derive(Default)]
struct State {
    settings: Settings,
    pending: HashMap<TraceId, Pending>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Parses a duration like `500ms`, `5s` or `1m`.
fn parse_duration(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let scale = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// The attribute value as text, for comparing with the configured `value`.
fn as_text(v: &Value<'_>) -> Option<String> {
    let mut s = String::new();
    match v {
        Value::Str(x) => s.push_str(x),
        Value::Bool(x) => write!(s, "{x}").ok()?,
        Value::Int(x) => write!(s, "{x}").ok()?,
        Value::Double(x) => write!(s, "{x}").ok()?,
        _ => return None,
    }
    Some(s)
}

/// Decides the traces `pick` selects; returns the decision batch.
fn decide(state: &mut State, pick: impl Fn(&TraceId, &Pending) -> bool) -> Vec<u8> {
    let mut out = DecisionWriter::new();
    state.pending.retain(|id, p| {
        if !pick(id, p) {
            return true;
        }
        if p.root_matches == Some(true) {
            out.push(
                *id,
                Decision::Sampled,
                Completeness::Complete,
                ThresholdOp::Keep,
                POLICY,
                [],
                &[],
            );
        } else {
            out.push(
                *id,
                Decision::NotSampled,
                Completeness::Complete,
                ThresholdOp::Keep,
                "",
                [],
                &[],
            );
        }
        false
    });
    let next_due = state.pending.values().map(|p| p.due).min().unwrap_or(0);
    out.finish(next_due)
}

struct KeepRootAttribute;

impl Guest for KeepRootAttribute {
    fn configure(config: String) -> Result<Interest, String> {
        let config: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| format!("processors: {e}"))?;
        let section = config
            .get(SECTION)
            .ok_or_else(|| format!("processors.{SECTION}: missing (this guest needs its key)"))?;
        let key = section.get("key").and_then(|k| k.as_str()).ok_or_else(|| {
            format!("processors.{SECTION}.key: missing (the attribute to look for)")
        })?;
        let value = match section.get("value") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            ),
        };
        let wait_ns = match section.get("decision_wait") {
            None => DEFAULT_WAIT_NS,
            Some(w) => w.as_str().and_then(parse_duration).ok_or_else(|| {
                format!(
                    "processors.{SECTION}.decision_wait: {w} is not a duration like 500ms, 5s or 1m"
                )
            })?,
        };
        if let Some(obj) = section.as_object()
            && let Some(unknown) = obj
                .keys()
                .find(|k| !["key", "value", "decision_wait"].contains(&k.as_str()))
        {
            return Err(format!(
                "processors.{SECTION}.{unknown}: unknown key, expected key, value or decision_wait"
            ));
        }
        STATE.with_borrow_mut(|s| s.settings = Settings { value, wait_ns });
        Ok(Interest {
            // Index 0 in the span views is this key.
            span_attributes: vec![key.to_string()],
            resource_attributes: vec![],
            all_span_attributes: false,
            all_resource_attributes: false,
            links: false,
            events: false,
        })
    }

    fn ingest(batch: Vec<u8>, now: u64) -> Result<Vec<u8>, String> {
        STATE.with_borrow_mut(|state| {
            let reader = BatchReader::new(&batch).map_err(|e| e.to_string())?;
            for record in reader {
                let Record::Span(span) = record.map_err(|e| e.to_string())? else {
                    continue;
                };
                let due = now.saturating_add(state.settings.wait_ns);
                let pending = state.pending.entry(span.fixed.trace_id).or_insert(Pending {
                    due,
                    root_matches: None,
                });
                if !span.fixed.parent_span_id.is_zero() {
                    continue;
                }
                let mut matches = false;
                for attr in span.attributes {
                    let (key, value) = attr.map_err(|e| e.to_string())?;
                    if key != AttrKey::Index(0) {
                        continue;
                    }
                    matches = match &state.settings.value {
                        None => true,
                        Some(want) => as_text(&value).as_deref() == Some(want.as_str()),
                    };
                }
                pending.root_matches = Some(matches);
            }
            Ok(decide(state, |_, p| p.due <= now))
        })
    }

    fn tick(now: u64) -> Result<Vec<u8>, String> {
        STATE.with_borrow_mut(|state| Ok(decide(state, |_, p| p.due <= now)))
    }

    fn decide_now(trace_ids: Vec<u8>, _now: u64) -> Result<Vec<u8>, String> {
        let ids: Vec<&[u8]> = trace_ids.chunks_exact(16).collect();
        STATE.with_borrow_mut(|state| Ok(decide(state, |id, _| ids.contains(&&id.0[..]))))
    }

    fn flush(_now: u64) -> Result<Vec<u8>, String> {
        STATE.with_borrow_mut(|state| Ok(decide(state, |_, _| true)))
    }
}

export!(KeepRootAttribute);
