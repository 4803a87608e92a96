//! Span-level predicates, evaluated once per span at ingest so that a pending trace keeps one
//! bit per predicate instead of its spans: attribute matches (`numeric_attribute`,
//! `string_attribute`, `boolean_attribute`, on resource or span attributes), `trace_state`,
//! `trace_flags` and `ottl_condition`. The policies read the bits at decision time.
//!
//! At configure time the policies register their predicates in a [`Registry`], which interns
//! the attribute keys into the sampler's [`Interest`] (so the host sends exactly those keys) and
//! gives identical predicates one shared bit. At ingest, [`Predicates`] reads each resource
//! record once (its attribute values and the resource-side matches), then each span: a
//! predicate whose bit is already set for the trace is not evaluated again.

use hashbrown::{HashMap, HashSet};
use regex_lite::Regex;
use tracekeeper_abi::{AttrIter, AttrKey, LayoutError, ResourceView, SpanView, ThresholdOp, Value};

use super::ottl::{EvalCtx, KeyResolver};
use super::ottl_condition::OttlPredicate;
use super::{Outcome, Policy, TraceFacts};
use crate::interest::Interest;

/// Most predicate bits one configuration may use (bounds the per-trace bit set).
pub const MAX_BITS: u32 = 4096;
/// Bits kept inline in [`MatchBits`]; more spill into a heap block.
const INLINE_BITS: u32 = u64::BITS;
/// `cache_max_size` of a regex `string_attribute` when not set or not positive (the
/// collector's default).
pub const DEFAULT_REGEX_CACHE_SIZE: usize = 128;
/// Largest `cache_max_size` accepted.
pub const MAX_REGEX_CACHE_SIZE: usize = 1 << 16;
/// Largest compiled size of one `string_attribute` pattern, bytes.
pub const MAX_REGEX_SIZE: usize = 1 << 20;
/// Bit of the W3C trace flags that means "sampled".
pub const FLAG_SAMPLED: u8 = 0x01;

/// One predicate's bit in a trace's [`MatchBits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bit(u32);

/// The predicate bits of one pending trace (or one resource): 64 inline, more on the heap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchBits {
    low: u64,
    high: Option<Box<[u64]>>,
}

impl MatchBits {
    /// True when `bit` is set.
    pub fn get(&self, bit: Bit) -> bool {
        let i = bit.0;
        if i < INLINE_BITS {
            return self.low & (1 << i) != 0;
        }
        let word = (i / INLINE_BITS - 1) as usize;
        self.high
            .as_deref()
            .and_then(|h| h.get(word))
            .is_some_and(|w| w & (1 << (i % INLINE_BITS)) != 0)
    }

    /// Sets `bit`.
    pub fn set(&mut self, bit: Bit) {
        let i = bit.0;
        if i < INLINE_BITS {
            self.low |= 1 << i;
            return;
        }
        let word = (i / INLINE_BITS - 1) as usize;
        self.grow(word + 1);
        if let Some(w) = self.high.as_deref_mut().and_then(|h| h.get_mut(word)) {
            *w |= 1 << (i % INLINE_BITS);
        }
    }

    /// Sets every bit set in `other`.
    pub fn union(&mut self, other: &MatchBits) {
        self.low |= other.low;
        if let Some(theirs) = other.high.as_deref() {
            self.grow(theirs.len());
            if let Some(mine) = self.high.as_deref_mut() {
                for (m, t) in mine.iter_mut().zip(theirs) {
                    *m |= t;
                }
            }
        }
    }

    fn grow(&mut self, words: usize) {
        let have = self.high.as_deref().map_or(0, <[u64]>::len);
        if have < words {
            let mut new = vec![0u64; words];
            if let Some(old) = self.high.as_deref() {
                new[..old.len()].copy_from_slice(old);
            }
            self.high = Some(new.into_boxed_slice());
        }
    }
}

/// How an attribute value is matched.
#[derive(Debug)]
pub enum AttrMatcher {
    /// An integer value within `min..=max` (`numeric_attribute`).
    IntRange {
        /// Lower bound, inclusive.
        min: i64,
        /// Upper bound, inclusive.
        max: i64,
    },
    /// A string value equal to one of these (`string_attribute`).
    Exact(HashSet<String>),
    /// A string value in which one of the patterns finds a match (`string_attribute` with
    /// `enabled_regex_matching`).
    Regex(RegexMatcher),
    /// A boolean value equal to this one (`boolean_attribute`).
    Bool(bool),
}

impl AttrMatcher {
    /// Matches a resource attribute. As in the collector, a string matcher sees a non-string
    /// resource value as the empty string.
    fn matches_resource(&mut self, v: &Value<'_>) -> bool {
        match self {
            AttrMatcher::Exact(_) | AttrMatcher::Regex(_) => {
                let s = if let Value::Str(s) = v { s } else { "" };
                self.matches_str(s)
            }
            _ => self.matches_typed(v),
        }
    }

    /// Matches a span attribute. As in the collector, a string matcher needs a non-empty
    /// string value.
    fn matches_span(&mut self, v: &Value<'_>) -> bool {
        match (self, v) {
            (m @ (AttrMatcher::Exact(_) | AttrMatcher::Regex(_)), Value::Str(s)) => {
                !s.is_empty() && m.matches_str(s)
            }
            (AttrMatcher::Exact(_) | AttrMatcher::Regex(_), _) => false,
            (m, v) => m.matches_typed(v),
        }
    }

    fn matches_str(&mut self, s: &str) -> bool {
        match self {
            AttrMatcher::Exact(values) => values.contains(s),
            AttrMatcher::Regex(r) => r.is_match(s),
            _ => false,
        }
    }

    /// Integer and boolean matchers match values of their own type only (the collector reads
    /// any other type as 0 or false; see the policies' documentation).
    fn matches_typed(&self, v: &Value<'_>) -> bool {
        match (self, v) {
            (AttrMatcher::IntRange { min, max }, Value::Int(i)) => (*min..=*max).contains(i),
            (AttrMatcher::Bool(want), Value::Bool(b)) => want == b,
            _ => false,
        }
    }
}

/// Patterns with a bounded memo of recent results (the collector's `cache_max_size`): attribute
/// values repeat (routes, hosts), and a hash lookup is cheaper than running the patterns.
#[derive(Debug)]
pub struct RegexMatcher {
    patterns: Vec<Regex>,
    memo: HashMap<String, bool>,
    memo_cap: usize,
}

impl RegexMatcher {
    /// Compiles `patterns` (unanchored search, as Go's `MatchString`); the error names the
    /// index of the bad pattern. `memo_cap` 0 disables the memo.
    pub fn new(patterns: &[String], memo_cap: usize) -> Result<Self, (usize, String)> {
        let compiled = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                regex_lite::RegexBuilder::new(p)
                    .size_limit(MAX_REGEX_SIZE)
                    .build()
                    .map_err(|e| (i, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RegexMatcher {
            patterns: compiled,
            memo: HashMap::new(),
            memo_cap,
        })
    }

    fn is_match(&mut self, s: &str) -> bool {
        if let Some(&m) = self.memo.get(s) {
            return m;
        }
        let m = self.patterns.iter().any(|r| r.is_match(s));
        if self.memo_cap > 0 {
            if self.memo.len() >= self.memo_cap {
                // Bounded by clearing: cheaper than LRU bookkeeping on every hit, and the
                // frequent values come straight back.
                self.memo.clear();
            }
            self.memo.insert(s.to_owned(), m);
        }
        m
    }
}

#[derive(Debug)]
enum Pred {
    Attr {
        span_key: u16,
        resource_key: u16,
        matcher: AttrMatcher,
        bit: Bit,
    },
    TraceState {
        key: String,
        values: HashSet<String>,
        bit: Bit,
    },
    TraceFlags {
        bit: Bit,
    },
    Ottl(Box<OttlPredicate>),
}

/// Collects the predicates of the configured policies (configure time).
#[derive(Debug)]
pub struct Registry<'i> {
    interest: &'i mut Interest,
    preds: Vec<Pred>,
    /// Signature of each registered predicate and its bits, to share identical ones.
    known: Vec<(String, Bit, Option<Bit>)>,
    next_bit: u32,
    events: bool,
}

impl KeyResolver for Registry<'_> {
    fn span_key(&mut self, key: &str) -> Result<u16, String> {
        self.interest
            .span_attribute(key)
            .ok_or_else(|| "too many distinct span attribute keys".to_owned())
    }

    fn resource_key(&mut self, key: &str) -> Result<u16, String> {
        self.interest
            .resource_attribute(key)
            .ok_or_else(|| "too many distinct resource attribute keys".to_owned())
    }
}

impl<'i> Registry<'i> {
    /// A registry adding the keys its predicates read to `interest`.
    pub fn new(interest: &'i mut Interest) -> Self {
        Registry {
            interest,
            preds: Vec::new(),
            known: Vec::new(),
            next_bit: 0,
            events: false,
        }
    }

    fn bit(&mut self) -> Result<Bit, String> {
        if self.next_bit >= MAX_BITS {
            return Err(format!(
                "the policies need more than {MAX_BITS} span predicates"
            ));
        }
        self.next_bit += 1;
        Ok(Bit(self.next_bit - 1))
    }

    fn known(&self, signature: &str) -> Option<(Bit, Option<Bit>)> {
        self.known
            .iter()
            .find(|(s, _, _)| s == signature)
            .map(|(_, a, b)| (*a, *b))
    }

    /// A predicate on resource or span attribute `key`. `signature` identifies the predicate
    /// (same signature, same bit).
    pub fn attribute(
        &mut self,
        key: &str,
        matcher: AttrMatcher,
        signature: String,
    ) -> Result<Bit, String> {
        if let Some((bit, _)) = self.known(&signature) {
            return Ok(bit);
        }
        let span_key = self.span_key(key)?;
        let resource_key = self.resource_key(key)?;
        let bit = self.bit()?;
        self.preds.push(Pred::Attr {
            span_key,
            resource_key,
            matcher,
            bit,
        });
        self.known.push((signature, bit, None));
        Ok(bit)
    }

    /// A predicate on the value of `key` in a span's W3C `tracestate`.
    pub fn trace_state(&mut self, key: &str, values: HashSet<String>) -> Result<Bit, String> {
        let mut sorted: Vec<&String> = values.iter().collect();
        sorted.sort();
        let signature = format!("trace_state:{key:?}:{sorted:?}");
        if let Some((bit, _)) = self.known(&signature) {
            return Ok(bit);
        }
        let bit = self.bit()?;
        self.preds.push(Pred::TraceState {
            key: key.to_owned(),
            values,
            bit,
        });
        self.known.push((signature, bit, None));
        Ok(bit)
    }

    /// A predicate on the sampled flag of a span's trace flags.
    pub fn trace_flags(&mut self) -> Result<Bit, String> {
        let signature = "trace_flags".to_owned();
        if let Some((bit, _)) = self.known(&signature) {
            return Ok(bit);
        }
        let bit = self.bit()?;
        self.preds.push(Pred::TraceFlags { bit });
        self.known.push((signature, bit, None));
        Ok(bit)
    }

    /// An OTTL predicate with a "matched" and a "failed" bit; `make` builds it (parsing its
    /// conditions with this registry as key resolver) given the two bits.
    pub fn ottl(
        &mut self,
        signature: String,
        events: bool,
        make: impl FnOnce(&mut Self, Bit, Bit) -> Result<OttlPredicate, String>,
    ) -> Result<(Bit, Bit), String> {
        if let Some((matched, Some(failed))) = self.known(&signature) {
            return Ok((matched, failed));
        }
        let matched = self.bit()?;
        let failed = self.bit()?;
        let pred = make(self, matched, failed)?;
        self.events |= events;
        self.preds.push(Pred::Ottl(Box::new(pred)));
        self.known.push((signature, matched, Some(failed)));
        Ok((matched, failed))
    }

    /// The predicates, ready for ingest. Sets `interest.events` when a predicate reads events.
    pub fn finish(self) -> Predicates {
        self.interest.events |= self.events;
        let needs_resource_slots = self.preds.iter().any(|p| match p {
            Pred::Attr { .. } => true,
            Pred::Ottl(o) => o.reads_resource(),
            _ => false,
        });
        let needs_span_slots = self.preds.iter().any(|p| match p {
            Pred::Attr { .. } => true,
            Pred::Ottl(o) => o.reads_span_attributes(),
            _ => false,
        });
        Predicates {
            preds: self.preds,
            span_keys: self.interest.span_attributes.clone(),
            resource_keys: self.interest.resource_attributes.clone(),
            needs_resource_slots,
            needs_span_slots,
        }
    }
}

/// The predicates of a configuration, evaluated at ingest.
#[derive(Debug)]
pub struct Predicates {
    preds: Vec<Pred>,
    span_keys: Vec<String>,
    resource_keys: Vec<String>,
    needs_resource_slots: bool,
    needs_span_slots: bool,
}

/// Attribute values by interest index (first occurrence of each key).
pub type Slots<'a> = Vec<Option<Value<'a>>>;

/// What one resource record of the current batch contributes to its spans.
#[derive(Debug, Default)]
struct ResourceCtx<'a> {
    slots: Slots<'a>,
    bits: MatchBits,
}

/// Per-batch state: the batch's resources, and scratch space reused for every span.
#[derive(Debug, Default)]
pub struct BatchScope<'a> {
    resources: Vec<ResourceCtx<'a>>,
    span_slots: Slots<'a>,
    event_slots: Slots<'a>,
}

/// Fills `slots` (sized to `keys`) with the first value of each key in `attrs`.
pub fn fill_slots<'a>(
    attrs: AttrIter<'a>,
    keys: &[String],
    slots: &mut Slots<'a>,
) -> Result<(), LayoutError> {
    slots.clear();
    slots.resize(keys.len(), None);
    for attr in attrs {
        let (key, value) = attr?;
        let index = match key {
            AttrKey::Index(i) => usize::from(i),
            AttrKey::Inline(k) => match keys.iter().position(|known| known == k) {
                Some(i) => i,
                None => continue,
            },
        };
        if let Some(slot @ None) = slots.get_mut(index) {
            *slot = Some(value);
        }
    }
    Ok(())
}

/// The value of `key` in a W3C `tracestate` (`k1=v1,k2=v2`, optional whitespace around
/// members), or `None`.
pub fn trace_state_value<'s>(trace_state: &'s str, key: &str) -> Option<&'s str> {
    trace_state.split(',').find_map(|member| {
        let (k, v) = member.trim_matches([' ', '\t']).split_once('=')?;
        (k == key).then_some(v)
    })
}

impl Predicates {
    /// True when there is nothing to evaluate per span.
    pub fn is_empty(&self) -> bool {
        self.preds.is_empty()
    }

    /// Reads one resource record of the current batch.
    pub fn observe_resource<'a>(
        &mut self,
        scope: &mut BatchScope<'a>,
        resource: &ResourceView<'a>,
    ) -> Result<(), LayoutError> {
        let mut ctx = ResourceCtx::default();
        if self.needs_resource_slots {
            fill_slots(
                resource.attributes.clone(),
                &self.resource_keys,
                &mut ctx.slots,
            )?;
            for pred in &mut self.preds {
                if let Pred::Attr {
                    resource_key,
                    matcher,
                    bit,
                    ..
                } = pred
                    && let Some(Some(v)) = ctx.slots.get(usize::from(*resource_key))
                    && matcher.matches_resource(v)
                {
                    ctx.bits.set(*bit);
                }
            }
        }
        // Resources are numbered in order of appearance; keep the numbering even if a record
        // announces another index.
        let index = resource.index as usize;
        while scope.resources.len() < index {
            scope.resources.push(ResourceCtx::default());
        }
        scope.resources.push(ctx);
        Ok(())
    }

    /// Evaluates the predicates on one span and records what matched in `bits` (the span's
    /// trace's bits). Predicates already set for the trace are skipped.
    pub fn observe_span<'a>(
        &mut self,
        scope: &mut BatchScope<'a>,
        span: &SpanView<'a>,
        bits: &mut MatchBits,
    ) -> Result<(), LayoutError> {
        let resource = scope.resources.get(span.fixed.resource as usize);
        if let Some(r) = resource {
            bits.union(&r.bits);
        }
        if self.needs_span_slots {
            fill_slots(
                span.attributes.clone(),
                &self.span_keys,
                &mut scope.span_slots,
            )?;
        }
        let no_slots: &[Option<Value<'a>>] = &[];
        let ctx = EvalCtx {
            span_name: span.name,
            kind: span.fixed.kind,
            status: span.fixed.status_code,
            span_attrs: &scope.span_slots,
            resource_attrs: resource.map_or(no_slots, |r| &r.slots),
            event: None,
        };
        for pred in &mut self.preds {
            match pred {
                Pred::Attr {
                    span_key,
                    matcher,
                    bit,
                    ..
                } => {
                    if !bits.get(*bit)
                        && let Some(Some(v)) = ctx.span_attrs.get(usize::from(*span_key))
                        && matcher.matches_span(v)
                    {
                        bits.set(*bit);
                    }
                }
                Pred::TraceState { key, values, bit } => {
                    if !bits.get(*bit)
                        && trace_state_value(span.trace_state, key)
                            .is_some_and(|v| values.contains(v))
                    {
                        bits.set(*bit);
                    }
                }
                Pred::TraceFlags { bit } => {
                    if span.fixed.flags & FLAG_SAMPLED != 0 {
                        bits.set(*bit);
                    }
                }
                Pred::Ottl(p) => p.observe(
                    &ctx,
                    span.events.clone(),
                    &self.span_keys,
                    &mut scope.event_slots,
                    bits,
                )?,
            }
        }
        Ok(())
    }
}

/// A policy that keeps traces with a predicate bit set (attribute, `trace_state`,
/// `trace_flags` policies). With `invert` it gives the collector's legacy inverted decisions:
/// `InvertNotSampled` when the predicate matched any resource or span, `InvertSampled` when it
/// matched none.
#[derive(Debug, Clone, Copy)]
pub struct MatchPolicy {
    bit: Bit,
    invert: bool,
}

impl MatchPolicy {
    /// A policy reading `bit`.
    pub fn new(bit: Bit, invert: bool) -> Self {
        MatchPolicy { bit, invert }
    }
}

impl Policy for MatchPolicy {
    fn evaluate(&mut self, trace: &TraceFacts<'_>) -> Outcome {
        let matched = trace.trace.matches.get(self.bit);
        match (self.invert, matched) {
            (false, true) => Outcome::Sampled(ThresholdOp::Keep),
            (false, false) => Outcome::NotSampled,
            (true, true) => Outcome::InvertNotSampled,
            (true, false) => Outcome::InvertSampled,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn bits_inline_and_spilled() {
        let mut a = MatchBits::default();
        for i in [0, 5, 63, 64, 200, 4095] {
            assert!(!a.get(Bit(i)));
            a.set(Bit(i));
            assert!(a.get(Bit(i)), "{i}");
        }
        assert!(!a.get(Bit(1)) && !a.get(Bit(65)) && !a.get(Bit(199)));
        let mut b = MatchBits::default();
        b.set(Bit(1));
        b.union(&a);
        for i in [0, 1, 5, 63, 64, 200, 4095] {
            assert!(b.get(Bit(i)), "{i}");
        }
        let mut c = MatchBits::default();
        c.set(Bit(70));
        c.union(&MatchBits::default());
        assert!(c.get(Bit(70)));
        assert_eq!(core::mem::size_of::<MatchBits>(), 24);
    }

    #[test]
    fn identical_predicates_share_a_bit_and_keys_are_interned_once() {
        let mut interest = Interest::for_current_policies();
        let mut reg = Registry::new(&mut interest);
        let range = || AttrMatcher::IntRange { min: 50, max: 100 };
        let a = reg
            .attribute("key1", range(), "numeric:key1:50:100".to_owned())
            .unwrap();
        let b = reg
            .attribute("key1", range(), "numeric:key1:50:100".to_owned())
            .unwrap();
        let c = reg
            .attribute("key1", range(), "numeric:key1:50:101".to_owned())
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(reg.trace_flags().unwrap(), reg.trace_flags().unwrap());
        let preds = reg.finish();
        assert_eq!(preds.preds.len(), 3);
        assert_eq!(interest.span_attributes, ["key1"]);
        assert_eq!(interest.resource_attributes, ["service.name", "key1"]);
    }

    #[test]
    fn too_many_predicates_is_an_error() {
        let mut interest = Interest::default();
        let mut reg = Registry::new(&mut interest);
        for i in 0..MAX_BITS {
            reg.attribute("k", AttrMatcher::Bool(true), i.to_string())
                .unwrap();
        }
        let err = reg
            .attribute("k", AttrMatcher::Bool(true), "one more".to_owned())
            .unwrap_err();
        assert!(err.contains("more than 4096 span predicates"), "{err}");
    }

    #[test]
    fn trace_state_values() {
        assert_eq!(trace_state_value("a=1,b=2", "b"), Some("2"));
        assert_eq!(trace_state_value("a=1 , \tb=2", "b"), Some("2"));
        assert_eq!(trace_state_value("ab=1", "b"), None);
        assert_eq!(trace_state_value("", "b"), None);
        assert_eq!(trace_state_value("ot=th:8;rv:01", "ot"), Some("th:8;rv:01"));
    }

    #[test]
    fn typed_matchers_match_their_type_only() {
        let mut range = AttrMatcher::IntRange { min: 50, max: 100 };
        for (v, want) in [
            (Value::Int(50), true),
            (Value::Int(100), true),
            (Value::Int(49), false),
            (Value::Int(101), false),
            (Value::Double(75.0), false),
            (Value::Str("75"), false),
        ] {
            assert_eq!(range.matches_span(&v), want, "{v:?}");
            assert_eq!(range.matches_resource(&v), want, "{v:?}");
        }
        let mut b = AttrMatcher::Bool(false);
        assert!(b.matches_span(&Value::Bool(false)));
        assert!(!b.matches_span(&Value::Bool(true)));
        assert!(!b.matches_span(&Value::Str("false")));
    }

    #[test]
    fn string_matchers_follow_the_collector_on_empty_and_non_strings() {
        let mut re = AttrMatcher::Regex(RegexMatcher::new(&["^$|x".to_owned()], 4).unwrap());
        // A span needs a non-empty string; a resource's non-string reads as "".
        assert!(!re.matches_span(&Value::Str("")));
        assert!(!re.matches_span(&Value::Int(1)));
        assert!(re.matches_span(&Value::Str("axb")));
        assert!(re.matches_resource(&Value::Int(1)));
        assert!(re.matches_resource(&Value::Str("")));
        let mut exact = AttrMatcher::Exact(["a".to_owned()].into_iter().collect());
        assert!(exact.matches_span(&Value::Str("a")));
        assert!(!exact.matches_span(&Value::Str("ab")));
        assert!(!exact.matches_resource(&Value::Int(1)));
    }

    #[test]
    fn regex_memo_is_bounded_and_consistent() {
        let mut m = RegexMatcher::new(&["^/api/".to_owned(), "health".to_owned()], 2).unwrap();
        for _ in 0..3 {
            assert!(m.is_match("/api/x"));
            assert!(m.is_match("/healthz"));
            assert!(!m.is_match("/"));
            assert!(m.memo.len() <= 2);
        }
        let err = RegexMatcher::new(&["ok".to_owned(), "(".to_owned()], 2).unwrap_err();
        assert_eq!(err.0, 1);
    }
}
