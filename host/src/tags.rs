//! Tags written on exported spans, appended to the encoded span without re-encoding it.
//!
//! Protobuf concatenates repeated fields and lets the last occurrence of a singular field win,
//! so `tracekeeper.*` attributes are appended as extra `attributes` (field 9) entries and a new
//! `trace_state` (field 3) is appended after the original one.

use std::sync::Arc;

use tracekeeper_abi::{Completeness, DecisionRecord, ThresholdOp};

use crate::otlp::request::span_field as sf;
use crate::otlp::wire::{Fields, put_len_field, put_len_header, varint_len};

/// Attribute: name of the policy that kept the trace.
pub const ATTR_POLICY: &str = "tracekeeper.policy";
/// Attribute: `complete` or `incomplete`.
pub const ATTR_COMPLETENESS: &str = "tracekeeper.completeness";
/// Attribute: what is missing (string array).
pub const ATTR_MISSING: &str = "tracekeeper.completeness.missing";
/// Attribute: the span arrived after its trace was decided.
pub const ATTR_LATE: &str = "tracekeeper.late";
/// Attribute: kept because the guest failed.
pub const ATTR_FAIL_OPEN: &str = "tracekeeper.fail_open";

/// Everything the host writes on the spans of one kept trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceTags {
    /// The deciding policy (empty when kept by fail-open).
    pub policy: String,
    /// Completeness, when the guest judged it.
    pub completeness: Option<Completeness>,
    /// Missing entries.
    pub missing: Vec<String>,
    /// What to do to the `th` of each span's tracestate.
    pub threshold: ThresholdOp,
    /// Kept because the guest failed.
    pub fail_open: bool,
    /// Further string attributes the guest asked for.
    pub extra: Vec<(String, String)>,
    /// The encoded attribute fields (precomputed once per trace).
    encoded: Vec<u8>,
    /// The same plus `tracekeeper.late=true`.
    encoded_late: Vec<u8>,
    /// The `tracestate` of a span that had none (the usual case), after [`Self::threshold`];
    /// `None` when that leaves it empty.
    state_for_empty: Option<String>,
}

/// How many distinct tags [`TagsInterner`] remembers.
const INTERNED: usize = 8;

/// The last few distinct tags handed out, so that kept traces with equal tags share one
/// allocation: most keeps have the same policy, completeness and threshold and nothing
/// missing, and the decision cache holds a pointer to the tags of each of its kept traces
/// (100 000 by default), each about 400 bytes with its encodings when not shared.
#[derive(Debug, Default)]
pub struct TagsInterner {
    recent: [Option<Arc<TraceTags>>; INTERNED],
    next: usize,
}

impl TagsInterner {
    /// `tags`, or an equal one handed out recently.
    pub fn intern(&mut self, tags: TraceTags) -> Arc<TraceTags> {
        if let Some(same) = self.recent.iter().flatten().find(|t| ***t == tags) {
            return Arc::clone(same);
        }
        self.remember(tags)
    }

    /// The tags of a trace the guest kept with `rec`: an equal one handed out recently, else new
    /// ones. They are built (strings copied, attributes encoded) only in the second case, so
    /// the usual keep allocates nothing.
    pub fn for_decision(&mut self, rec: &DecisionRecord<'_>) -> Arc<TraceTags> {
        let same = |t: &TraceTags| {
            t.policy == rec.policy
                && t.completeness == Some(rec.completeness)
                && t.threshold == rec.threshold
                && !t.fail_open
                && t.missing.iter().map(String::as_str).eq(rec.missing())
                && t.extra
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .eq(rec.extra_attributes())
        };
        if let Some(found) = self.recent.iter().flatten().find(|t| same(t)) {
            return Arc::clone(found);
        }
        self.remember(TraceTags::new(
            rec.policy.to_string(),
            Some(rec.completeness),
            rec.missing().map(str::to_string).collect(),
            rec.threshold,
            false,
            rec.extra_attributes()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
    }

    /// Hands out `tags`, remembered in place of the oldest.
    fn remember(&mut self, tags: TraceTags) -> Arc<TraceTags> {
        let tags = Arc::new(tags);
        if let Some(slot) = self.recent.get_mut(self.next) {
            *slot = Some(Arc::clone(&tags));
        }
        self.next = (self.next + 1) % INTERNED;
        tags
    }
}

impl TraceTags {
    /// Builds the tags and their encoding.
    pub fn new(
        policy: String,
        completeness: Option<Completeness>,
        missing: Vec<String>,
        threshold: ThresholdOp,
        fail_open: bool,
        extra: Vec<(String, String)>,
    ) -> Self {
        let mut t = TraceTags {
            policy,
            completeness,
            missing,
            threshold,
            fail_open,
            extra,
            encoded: Vec::new(),
            encoded_late: Vec::new(),
            state_for_empty: Some(rewrite_threshold("", threshold)).filter(|s| !s.is_empty()),
        };
        let mut enc = Vec::new();
        if !t.policy.is_empty() {
            put_string_attr(&mut enc, ATTR_POLICY, &t.policy);
        }
        if let Some(c) = t.completeness {
            put_string_attr(&mut enc, ATTR_COMPLETENESS, c.as_str());
        }
        if !t.missing.is_empty() {
            put_string_array_attr(&mut enc, ATTR_MISSING, &t.missing);
        }
        if t.fail_open {
            put_bool_attr(&mut enc, ATTR_FAIL_OPEN, true);
        }
        for (k, v) in &t.extra {
            put_string_attr(&mut enc, k, v);
        }
        let mut late = enc.clone();
        put_bool_attr(&mut late, ATTR_LATE, true);
        t.encoded = enc;
        t.encoded_late = late;
        t
    }

    /// Tags for a trace kept because the guest failed.
    pub fn fail_open() -> Self {
        TraceTags::new(
            String::new(),
            None,
            Vec::new(),
            ThresholdOp::Keep,
            true,
            Vec::new(),
        )
    }

    /// Appends `span` (an encoded `Span`) as a `spans` field (number 2 of `ScopeSpans`), with
    /// the tags added.
    pub fn write_span(&self, out: &mut Vec<u8>, span: &[u8], late: bool) {
        let attrs = if late {
            &self.encoded_late
        } else {
            &self.encoded
        };
        let rewritten: String;
        let new_state = match self.threshold {
            ThresholdOp::Keep => None,
            op => match current_trace_state(span) {
                // Computed once per trace's tags, not once per span.
                "" => self.state_for_empty.as_deref(),
                old => {
                    rewritten = rewrite_threshold(old, op);
                    (rewritten != old).then_some(rewritten.as_str())
                }
            },
        };
        let state_len = new_state
            .map(|s| 1 + varint_len(s.len() as u64) + s.len())
            .unwrap_or(0);
        put_len_header(out, 2, span.len() + attrs.len() + state_len);
        out.extend_from_slice(span);
        out.extend_from_slice(attrs);
        if let Some(s) = new_state {
            put_len_field(out, sf::TRACE_STATE, s.as_bytes());
        }
    }
}

/// The last `trace_state` of an encoded span (the one a decoder keeps).
fn current_trace_state(span: &[u8]) -> &str {
    Fields::new(span)
        .filter_map(Result::ok)
        .filter(|f| f.number == sf::TRACE_STATE)
        .last()
        .and_then(|f| f.str().ok())
        .unwrap_or("")
}

fn put_key_value(out: &mut Vec<u8>, key: &str, any_value: &[u8]) {
    let kv_len = 1
        + varint_len(key.len() as u64)
        + key.len()
        + 1
        + varint_len(any_value.len() as u64)
        + any_value.len();
    put_len_header(out, sf::ATTRIBUTES, kv_len);
    put_len_field(out, 1, key.as_bytes());
    put_len_field(out, 2, any_value);
}

fn any_string(v: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(v.len() + 2);
    put_len_field(&mut a, 1, v.as_bytes());
    a
}

fn put_string_attr(out: &mut Vec<u8>, key: &str, v: &str) {
    put_key_value(out, key, &any_string(v));
}

fn put_bool_attr(out: &mut Vec<u8>, key: &str, v: bool) {
    // AnyValue { bool_value = 2 }
    let any = [0x10, u8::from(v)];
    put_key_value(out, key, &any);
}

fn put_string_array_attr(out: &mut Vec<u8>, key: &str, values: &[String]) {
    // AnyValue { array_value = 5: ArrayValue { repeated AnyValue values = 1 } }
    let mut array = Vec::new();
    for v in values {
        put_len_field(&mut array, 1, &any_string(v));
    }
    let mut any = Vec::new();
    put_len_field(&mut any, 5, &array);
    put_key_value(out, key, &any);
}

/// Number of hex digits of a full-precision threshold.
const TH_DIGITS: usize = 14;
/// 2^56, one more than the largest threshold.
const TH_MAX: u64 = 1 << 56;

/// Formats a 56-bit rejection threshold as the OpenTelemetry `th` value: 14 hex digits with
/// trailing zeros removed (`0` for "keep everything").
pub fn format_threshold(th: u64) -> String {
    let mut s = String::with_capacity(TH_DIGITS);
    push_threshold(&mut s, th);
    s
}

/// [`format_threshold`], appended to `out`.
fn push_threshold(out: &mut String, th: u64) {
    let th = th.min(TH_MAX - 1);
    if th == 0 {
        out.push('0');
        return;
    }
    let digits = TH_DIGITS - (th.trailing_zeros() / 4) as usize;
    for i in 0..digits {
        let nibble = (th >> (4 * (TH_DIGITS - 1 - i))) & 0xf;
        out.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
    }
}

/// Parses a `th` value (1 to 14 hex digits, right-padded with zeros).
pub fn parse_threshold(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > TH_DIGITS || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u64::from_str_radix(s, 16).ok()?;
    Some(v << (4 * (TH_DIGITS - s.len())))
}

/// Applies a threshold operation to a W3C `tracestate`, touching only `th` in the `ot` entry.
/// `Raise(t)` never lowers an incoming threshold (equalizing); the modified `ot` entry moves to
/// the front as W3C requires of updated entries.
pub fn rewrite_threshold(trace_state: &str, op: ThresholdOp) -> String {
    let th = match op {
        ThresholdOp::Keep => return trace_state.to_string(),
        ThresholdOp::Erase => None,
        ThresholdOp::Raise(t) => {
            // The last `th` wins, as for a reader of the whole entry.
            let incoming = ot_values(trace_state)
                .filter_map(|v| v.strip_prefix("th:"))
                .last()
                .and_then(parse_threshold);
            Some(incoming.map_or(t, |i| i.max(t)))
        }
    };
    let mut out = String::with_capacity(trace_state.len() + 20);
    let mut ot_rest = ot_values(trace_state)
        .filter(|v| !v.starts_with("th:"))
        .peekable();
    if th.is_some() || ot_rest.peek().is_some() {
        out.push_str("ot=");
        if let Some(th) = th {
            out.push_str("th:");
            push_threshold(&mut out, th);
        }
        for (i, v) in ot_rest.enumerate() {
            if i > 0 || th.is_some() {
                out.push(';');
            }
            out.push_str(v);
        }
    }
    for m in members(trace_state).filter(|m| !m.starts_with("ot=")) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(m);
    }
    out
}

/// The list members of a `tracestate` (`key=value`), trimmed, empty ones skipped.
fn members(trace_state: &str) -> impl Iterator<Item = &str> {
    trace_state
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
}

/// The sub-keys of the `ot` entries (`th:...`, `rv:...`, ...), in order.
fn ot_values(trace_state: &str) -> impl Iterator<Item = &str> {
    members(trace_state)
        .filter_map(|m| m.strip_prefix("ot="))
        .flat_map(|v| v.split(';'))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    #[test]
    fn equal_tags_share_one_allocation_and_different_ones_do_not() {
        let make = |policy: &str, missing: Vec<String>| {
            TraceTags::new(
                policy.to_string(),
                Some(Completeness::Complete),
                missing,
                ThresholdOp::Raise(1 << 55),
                false,
                Vec::new(),
            )
        };
        let mut interner = TagsInterner::default();
        let a = interner.intern(make("baseline", Vec::new()));
        let b = interner.intern(make("errors", Vec::new()));
        let c = interner.intern(make("baseline", Vec::new()));
        assert!(Arc::ptr_eq(&a, &c));
        assert!(!Arc::ptr_eq(&a, &b));
        let d = interner.intern(make("baseline", vec!["root".into()]));
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(d.missing, ["root"]);
        // Past INTERNED other tags, the first is forgotten: a new allocation, equal in value.
        for n in 0..INTERNED {
            interner.intern(make(&format!("p{n}"), Vec::new()));
        }
        let e = interner.intern(make("baseline", Vec::new()));
        assert!(!Arc::ptr_eq(&a, &e));
        assert_eq!(*a, *e);
    }

    #[test]
    fn tags_for_a_decision_are_built_once_and_equal_those_built_from_its_fields() {
        use tracekeeper_abi::{Decision, DecisionReader, DecisionWriter, TraceId};
        let raise = ThresholdOp::Raise(1 << 55);
        let (c, i) = (Completeness::Complete, Completeness::Incomplete);
        // Completeness, threshold, policy, missing, extra attributes.
        type Case = (
            Completeness,
            ThresholdOp,
            &'static str,
            &'static [&'static str],
            &'static [(&'static str, &'static str)],
        );
        let cases: [Case; 5] = [
            (c, raise, "baseline", &[], &[]),
            (c, raise, "baseline", &[], &[]),
            (i, raise, "baseline", &["root"], &[]),
            (i, raise, "baseline", &["root"], &[("k", "v")]),
            (i, ThresholdOp::Keep, "errors", &["root"], &[]),
        ];
        let mut w = DecisionWriter::new();
        for (n, (completeness, threshold, policy, missing, extra)) in cases.into_iter().enumerate()
        {
            let id = TraceId([n as u8; 16]);
            let missing = missing.iter().copied();
            w.push(
                id,
                Decision::Sampled,
                completeness,
                threshold,
                policy,
                missing,
                extra,
            );
        }
        let bytes = w.finish(0);
        let recs: Vec<_> = DecisionReader::new(&bytes)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut interner = TagsInterner::default();
        let tags: Vec<_> = recs.iter().map(|r| interner.for_decision(r)).collect();
        assert!(
            Arc::ptr_eq(&tags[0], &tags[1]),
            "equal decisions share their tags"
        );
        for (k, t) in tags.iter().enumerate().skip(1) {
            for u in &tags[k + 1..] {
                assert!(!Arc::ptr_eq(t, u), "{t:?} and {u:?} differ");
            }
        }
        // Each is what the case's own fields build.
        for ((completeness, threshold, policy, missing, extra), t) in cases.into_iter().zip(&tags) {
            let owned = |s: &&str| s.to_string();
            let pairs = extra.iter().map(|(k, v)| (owned(k), owned(v))).collect();
            let expected = TraceTags::new(
                policy.into(),
                Some(completeness),
                missing.iter().map(owned).collect(),
                threshold,
                false,
                pairs,
            );
            assert_eq!(**t, expected);
        }
        // What `intern` handed out is found for an equal decision, and the reverse.
        let mut interner = TagsInterner::default();
        let a = interner.intern(TraceTags::new(
            "baseline".into(),
            Some(c),
            Vec::new(),
            raise,
            false,
            Vec::new(),
        ));
        assert!(Arc::ptr_eq(&a, &interner.for_decision(&recs[0])));
        // A fail-open keep is never an equal of a guest's decision.
        let f = interner.intern(TraceTags::fail_open());
        assert!(!Arc::ptr_eq(&f, &interner.for_decision(&recs[0])));
    }

    #[test]
    fn thresholds_format_and_parse() {
        assert_eq!(format_threshold(0), "0");
        // 10% kept: reject 90% → 0.9 * 2^56
        let th = (0.9 * TH_MAX as f64).round() as u64;
        assert_eq!(format_threshold(th), "e6666666666668");
        assert_eq!(format_threshold(1 << 55), "8");
        assert_eq!(parse_threshold("8"), Some(1 << 55));
        assert_eq!(parse_threshold("e6666666666668"), Some(th));
        assert_eq!(parse_threshold("xyz"), None);
        assert_eq!(parse_threshold("123456789012345"), None);
    }

    #[test]
    fn equalizing_never_lowers_incoming_threshold() {
        let ours = 1u64 << 55; // 50%
        assert_eq!(rewrite_threshold("", ThresholdOp::Raise(ours)), "ot=th:8");
        // Incoming 25% (th:c) is stricter than ours: kept.
        assert_eq!(
            rewrite_threshold("vendor=x,ot=th:c;rv:0123", ThresholdOp::Raise(ours)),
            "ot=th:c;rv:0123,vendor=x"
        );
        // Incoming 75% (th:4) is laxer: raised to ours.
        assert_eq!(
            rewrite_threshold("ot=th:4", ThresholdOp::Raise(ours)),
            "ot=th:8"
        );
        assert_eq!(rewrite_threshold("ot=th:4,a=b", ThresholdOp::Erase), "a=b");
        assert_eq!(
            rewrite_threshold("ot=th:4;rv:ab", ThresholdOp::Erase),
            "ot=rv:ab"
        );
        assert_eq!(rewrite_threshold("ot=th:4", ThresholdOp::Keep), "ot=th:4");
        // Several `ot` entries merge, the last `th` counts, other members keep their order.
        assert_eq!(
            rewrite_threshold(
                " a=1 , ot=th:c;rv:01 ,b=2, ot=th:4;x:y ",
                ThresholdOp::Raise(ours)
            ),
            "ot=th:8;rv:01;x:y,a=1,b=2"
        );
        // An unreadable incoming `th` is replaced by ours.
        assert_eq!(
            rewrite_threshold("ot=th:zz;rv:01", ThresholdOp::Raise(ours)),
            "ot=th:8;rv:01"
        );
        assert_eq!(rewrite_threshold("a=b", ThresholdOp::Erase), "a=b");
        assert_eq!(rewrite_threshold("", ThresholdOp::Erase), "");
    }

    /// A span with this `tracestate`.
    fn span(trace_state: &str) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            trace_state: trace_state.into(),
            name: "x".into(),
            ..Default::default()
        }
    }

    /// Decodes the span `write_span` wrote (a `ScopeSpans.spans` field: tag byte, length, span).
    fn written(tags: &TraceTags, span: &Span, late: bool) -> Span {
        let mut out = Vec::new();
        tags.write_span(&mut out, &span.encode_to_vec(), late);
        let mut s = &out[1..];
        let len = crate::otlp::wire::read_varint(&mut s).unwrap() as usize;
        assert_eq!(len, s.len());
        Span::decode(s).unwrap()
    }

    #[test]
    fn a_span_without_tracestate_gets_the_rewrite_of_an_empty_one() {
        let tags = |op| TraceTags::new("p".into(), None, vec![], op, false, vec![]);
        let state = |op, old: &str| written(&tags(op), &span(old), false).trace_state;
        let raise = ThresholdOp::Raise(1u64 << 55);
        assert_eq!(state(raise, ""), "ot=th:8");
        assert_eq!(state(ThresholdOp::Erase, ""), "");
        assert_eq!(state(ThresholdOp::Keep, ""), "");
        // With one, it is rewritten per span.
        assert_eq!(state(raise, "ot=th:c"), "ot=th:c");
        assert_eq!(state(ThresholdOp::Erase, "ot=th:c"), "");
    }

    #[test]
    fn appended_tags_decode_as_attributes() {
        let tags = TraceTags::new(
            "baseline".into(),
            Some(Completeness::Incomplete),
            vec!["root".into(), "parent:0102030405060708".into()],
            ThresholdOp::Raise(1 << 55),
            false,
            vec![],
        );
        let decoded = written(&tags, &span("ot=th:4"), true);
        assert_eq!(decoded.trace_state, "ot=th:8");
        let get = |k: &str| {
            decoded
                .attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            get(ATTR_POLICY),
            Some(Value::StringValue("baseline".into()))
        );
        assert_eq!(
            get(ATTR_COMPLETENESS),
            Some(Value::StringValue("incomplete".into()))
        );
        assert_eq!(get(ATTR_LATE), Some(Value::BoolValue(true)));
        let Some(Value::ArrayValue(a)) = get(ATTR_MISSING) else {
            panic!("missing is an array")
        };
        assert_eq!(a.values.len(), 2);
        assert_eq!(get(ATTR_FAIL_OPEN), None);
    }
}
