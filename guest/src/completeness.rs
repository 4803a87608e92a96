//! Completeness at decision time (DESIGN §7): what never happened in a trace.
//!
//! * **Structure**: no root span arrived (`root`), or a span's parent is not among the trace's
//!   spans (`parent:<16 hex>`).
//! * **Expectations** (`processors.completeness.expectations`, [`expect`]): a trace whose root
//!   matches must contain the expected descendants (`expected:<name>`).
//! * **Messaging** ([`messaging`]): every producer span must be consumed by a consumer that is its
//!   child or links to it, from any trace, within `consumer_wait` past the trace's normal
//!   decision time (`consumer:<producer span name>`). A trace with an open producer is held that
//!   long at most, and decided as soon as its producers are consumed; other traces are not held.
//!
//! The [`Tracker`] also counts, for the host's metrics, traces per root type and completeness
//! over a sliding window ([`window`]) and messages per queue, and writes them as the metrics
//! section of decision batches, at most once per [`METRICS_INTERVAL_NS`] of host time.

pub mod expect;
pub mod labels;
pub mod messaging;
pub mod window;

use hashbrown::HashMap;
use tracekeeper_abi::{
    AttrIter, AttrKey, Completeness, DecisionWriter, MetricsWriter, SpanId, SpanView, TraceId,
    Value,
};

use crate::config::CompletenessConfig;
use crate::interest::{Interest, SERVICE_NAME};
use crate::schedule::{DueQueue, Lane};
use crate::trace::PendingTrace;
use expect::{Expectations, MISSING_EXPECTED_PREFIX};
use messaging::{Consumed, Index, Role};
use window::RootCounts;

/// Missing entry for a trace without a root span.
pub const MISSING_ROOT: &str = "root";
/// Prefix of the missing entry for a parent span that never arrived.
pub const MISSING_PARENT_PREFIX: &str = "parent:";
/// Prefix of the missing entry for a producer span nobody consumed.
pub const MISSING_CONSUMER_PREFIX: &str = "consumer:";
/// Most missing entries reported for one trace; the attribute is written on every exported span,
/// so a trace with thousands of orphans must not multiply its size. The trace is incomplete all
/// the same.
pub const MAX_MISSING_ENTRIES: usize = 64;
/// Most producer spans followed per trace; further producers of the same trace are not checked.
pub const MAX_PRODUCERS_PER_TRACE: usize = 1_024;
/// Most consumer spans per trace whose parents are remembered (to satisfy producers of the same
/// trace that arrive after their consumer).
pub const MAX_CONSUMERS_PER_TRACE: usize = 4_096;
/// Longest producer span name kept; longer ones are cut at a character boundary.
pub const MAX_NAME_LEN: usize = 256;
/// Most distinct producer span names stored once for every trace; further names are stored with
/// each producer.
pub const MAX_PRODUCER_NAMES: usize = 1_000;
/// Shortest host time between two metrics sections while counts change. Counts that changed
/// since the last section are sent with the next answer after this interval; the guest asks for
/// a tick then if no trace is due earlier.
pub const METRICS_INTERVAL_NS: u64 = 1_000_000_000;
/// Longest host time between two metrics sections while anything is tracked, so that windowed
/// ratios and message ages are refreshed even when no count changes.
pub const METRICS_REFRESH_NS: u64 = 10_000_000_000;

/// The span attribute keys the completeness rules read.
pub const SPAN_KEYS: [&str; 3] = [
    messaging::OPERATION_TYPE,
    messaging::SYSTEM,
    messaging::DESTINATION,
];

/// Adds what completeness needs to the interest: the messaging span attributes, the service
/// name, and span links (consumers link to their producers).
pub fn add_interest(interest: &mut Interest) {
    for key in SPAN_KEYS {
        if !interest.span_attributes.iter().any(|k| k == key) {
            interest.span_attributes.push(key.to_owned());
        }
    }
    if !interest
        .resource_attributes
        .iter()
        .any(|k| k == SERVICE_NAME)
    {
        interest.resource_attributes.push(SERVICE_NAME.to_owned());
    }
    interest.links = true;
}

/// The name of a producer span: an index into [`Tracker`]'s table of names, or the name itself
/// once the table is full.
#[derive(Debug, Clone)]
enum ProducerName {
    Shared(usize),
    Own(Box<str>),
}

/// A producer span of a pending trace.
#[derive(Debug, Clone)]
struct Producer {
    span_id: SpanId,
    name: ProducerName,
}

/// What completeness remembers about a pending trace with producers, consumers or expectations.
#[derive(Debug, Clone, Default)]
struct More {
    /// The expectations whose root selector the root span matches.
    expectations: Vec<usize>,
    producers: Vec<Producer>,
    /// Parents of the trace's consumer spans.
    consumer_parents: Vec<SpanId>,
    /// Per expected span of the configuration, how many spans matched.
    expected: Vec<u32>,
}

/// What completeness remembers about one pending trace. Small for the common trace (no
/// messaging, no expectation): the rest is allocated when needed.
#[derive(Debug, Clone, Default)]
pub struct TraceState {
    /// Root type (service + name) of the first root span, in the metrics.
    root_type: Option<usize>,
    /// The trace is held past its normal decision time for consumers.
    held: bool,
    more: Option<Box<More>>,
}

impl TraceState {
    /// True while the trace is held past its normal decision time for a consumer.
    pub fn is_held(&self) -> bool {
        self.held
    }

    fn more(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    /// The producers of trace `id` that no consumer consumed yet: no consumer of the trace is
    /// their child and the index does not know them consumed. Sorts the consumer parents.
    fn open_producers<'s>(
        &'s mut self,
        id: TraceId,
        index: &'s Index,
    ) -> impl Iterator<Item = &'s Producer> + 's {
        let (producers, parents): (&'s [Producer], &'s [SpanId]) = match self.more.as_deref_mut() {
            Some(m) => {
                m.consumer_parents.sort_unstable();
                m.consumer_parents.dedup();
                let m: &'s More = m;
                (&m.producers, &m.consumer_parents)
            }
            None => (&[], &[]),
        };
        producers.iter().filter(move |p| {
            parents.binary_search(&p.span_id).is_err() && !index.is_consumed(&(id, p.span_id))
        })
    }
}

/// The outcome of the completeness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Complete or incomplete.
    pub completeness: Completeness,
    /// What is missing: `root`, then `expected:<name>` (configuration order), `consumer:<name>`
    /// (sorted), `parent:<id>` (sorted), at most [`MAX_MISSING_ENTRIES`].
    pub missing: Vec<String>,
}

/// Most (parent ids × span ids) pairs for which the missing parents are found by looking each
/// parent up in the span ids: below it, a scan of the unsorted lists costs less than sorting
/// the span ids, above it both lists are sorted and merged. Traces of the reference load (ten
/// spans, a few parents) are well below it; sorting their span ids was about 4% of the
/// samples in a profile of the guest's `ingest` (BENCHMARKS.md, "The guest: wasm component vs
/// native").
const SCAN_MAX_PAIRS: usize = 1024;

/// The structural entries (`root`, `parent:<id>`) of a trace, appended to `missing`. Leaves
/// the trace's parent ids sorted, deduplicated and, with few of them, reduced to the missing
/// ones; may sort and deduplicate its span ids.
fn structural(trace: &mut PendingTrace, missing: &mut Vec<String>) {
    let PendingTrace {
        span_ids,
        parent_ids,
        ..
    } = trace;
    if parent_ids.is_empty() {
        return;
    }
    if parent_ids.len().saturating_mul(span_ids.len()) <= SCAN_MAX_PAIRS {
        missing_parents_by_scan(span_ids, parent_ids);
        push_missing_parents(parent_ids.iter(), missing);
    } else {
        push_missing_parents(missing_parents_by_merge(span_ids, parent_ids), missing);
    }
}

/// Reduces `parents` to those not in `spans`, sorted and deduplicated; `spans` is left as it
/// is.
fn missing_parents_by_scan(spans: &[SpanId], parents: &mut Vec<SpanId>) {
    parents.retain(|p| !spans.contains(p));
    parents.sort_unstable();
    parents.dedup();
}

/// The ids in `parents` that are not in `spans`, in order and once each; sorts and
/// deduplicates both lists in place.
fn missing_parents_by_merge<'a>(
    spans: &'a mut Vec<SpanId>,
    parents: &'a mut Vec<SpanId>,
) -> impl Iterator<Item = &'a SpanId> {
    spans.sort_unstable();
    spans.dedup();
    parents.sort_unstable();
    parents.dedup();
    // Both lists are sorted: one merge walk finds the parents that are not spans.
    let mut spans = spans.iter().peekable();
    parents.iter().filter(move |parent| {
        while spans.next_if(|s| s < parent).is_some() {}
        spans.peek() != Some(parent)
    })
}

/// Appends a `parent:<id>` entry for each of `absent`, while `missing` has room.
fn push_missing_parents<'a>(absent: impl Iterator<Item = &'a SpanId>, missing: &mut Vec<String>) {
    for parent in absent {
        if missing.len() >= MAX_MISSING_ENTRIES {
            break;
        }
        missing.push(format!("{MISSING_PARENT_PREFIX}{parent}"));
    }
}

fn report(missing: Vec<String>) -> Report {
    let completeness = if missing.is_empty() {
        Completeness::Complete
    } else {
        Completeness::Incomplete
    };
    Report {
        completeness,
        missing,
    }
}

/// Structural completeness alone (`root`, `parent:<id>`), for a trace checked without a
/// [`Tracker`]. Sorts and deduplicates its id lists in place.
pub fn check(trace: &mut PendingTrace) -> Report {
    let mut missing = Vec::new();
    if !trace.has_root() {
        missing.push(MISSING_ROOT.to_owned());
    }
    structural(trace, &mut missing);
    report(missing)
}

/// The messaging attributes of one span.
#[derive(Debug, Default)]
struct MessagingAttrs<'a> {
    operation: Option<&'a str>,
    system: &'a str,
    destination: &'a str,
}

/// The completeness rules and their cross-trace state, for one sampler.
#[derive(Debug)]
pub struct Tracker {
    consumer_wait: u64,
    expectations: Expectations,
    /// Indices of [`SPAN_KEYS`] in the interest's span attribute list.
    span_keys: [Option<u16>; 3],
    /// Index of `service.name` in the interest's resource attribute list.
    service_key: Option<u16>,
    index: Index,
    roots: RootCounts,
    /// Traces whose producers were consumed since the last [`Tracker::release`].
    touched: Vec<TraceId>,
    /// Producer span names, by [`ProducerName::Shared`] index.
    names: Vec<String>,
    name_ids: HashMap<String, usize>,
    /// Host time of the last metrics section.
    last_metrics: Option<u64>,
}

fn nanos(d: core::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn position(keys: &[String], key: &str) -> Option<u16> {
    keys.iter()
        .position(|k| k == key)
        .and_then(|i| u16::try_from(i).ok())
}

impl Tracker {
    /// Builds the rules from a validated configuration and the interest the host was given
    /// (which must include [`add_interest`]'s keys).
    pub fn new(config: &CompletenessConfig, interest: &Interest) -> Result<Self, String> {
        Ok(Tracker {
            consumer_wait: nanos(config.consumer_wait),
            expectations: Expectations::new(config, "processors.completeness")?,
            span_keys: SPAN_KEYS.map(|k| position(&interest.span_attributes, k)),
            service_key: position(&interest.resource_attributes, SERVICE_NAME),
            index: Index::new(),
            roots: RootCounts::new(nanos(config.window)),
            touched: Vec::new(),
            names: Vec::new(),
            name_ids: HashMap::new(),
            last_metrics: None,
        })
    }

    /// The `service.name` among a resource's attributes ("" when absent).
    pub fn service<'a>(&self, attributes: AttrIter<'a>) -> &'a str {
        for attr in attributes {
            let Ok((key, value)) = attr else { break };
            let is_service = match key {
                AttrKey::Index(i) => Some(i) == self.service_key,
                AttrKey::Inline(k) => k == SERVICE_NAME,
            };
            if is_service && let Value::Str(s) = value {
                return s;
            }
        }
        ""
    }

    /// Always inlined (one call site per span), as is [`messaging::classify`]: inlined, the
    /// guest's `ingest` runs 6–7% fewer instructions, in wasm and natively.
    #[inline(always)]
    fn messaging_attrs<'a>(&self, attributes: AttrIter<'a>) -> MessagingAttrs<'a> {
        let mut out = MessagingAttrs::default();
        // Most spans carry none of the attributes the guest asked for: their sections are
        // empty, and not calling the iterator spares a call per span in wasm (an empty
        // section's only possible item, a trailing-bytes error, is skipped below anyway).
        if attributes.is_empty() {
            return out;
        }
        for attr in attributes {
            let Ok((key, Value::Str(v))) = attr else {
                continue;
            };
            let which = match key {
                AttrKey::Index(i) => self.span_keys.iter().position(|k| *k == Some(i)),
                AttrKey::Inline(k) => SPAN_KEYS.iter().position(|s| *s == k),
            };
            match which {
                Some(0) => out.operation = Some(v),
                Some(1) => out.system = v,
                Some(2) => out.destination = v,
                _ => {}
            }
        }
        out
    }

    /// Records one span of trace `id` (already added to `trace`), whose resource has `service`,
    /// received at `now`. Always inlined into the sampler's one call per span (see
    /// `PendingTrace::add_span`).
    #[inline(always)]
    pub fn add_span(
        &mut self,
        id: TraceId,
        trace: &mut PendingTrace,
        span: &SpanView<'_>,
        service: &str,
        now: u64,
    ) {
        let state = &mut trace.completeness;
        let f = &span.fixed;
        if f.parent_span_id.is_zero() {
            if state.root_type.is_none() {
                state.root_type = Some(self.roots.id(service, span.name));
                if !self.expectations.is_empty() {
                    let matched = self.expectations.matching(service, span.name);
                    if !matched.is_empty() {
                        state.more().expectations = matched;
                    }
                }
            }
        } else if self.expectations.counts(span.name, service, f.kind) {
            self.expectations
                .count(&mut state.more().expected, span.name, service, f.kind);
        }
        let attrs = self.messaging_attrs(span.attributes.clone());
        match messaging::classify(f.kind, attrs.operation) {
            Role::Other => {}
            Role::Producer => {
                let more = state.more();
                if more.producers.len() >= MAX_PRODUCERS_PER_TRACE
                    || more.producers.iter().any(|p| p.span_id == f.span_id)
                {
                    return;
                }
                let name = labels::cut(span.name, MAX_NAME_LEN);
                let name = match self.name_ids.get(name) {
                    Some(&i) => ProducerName::Shared(i),
                    None if self.names.len() < MAX_PRODUCER_NAMES => {
                        self.names.push(name.to_owned());
                        self.name_ids.insert(name.to_owned(), self.names.len() - 1);
                        ProducerName::Shared(self.names.len() - 1)
                    }
                    None => ProducerName::Own(name.into()),
                };
                more.producers.push(Producer {
                    span_id: f.span_id,
                    name,
                });
                let key = (id, f.span_id);
                self.index
                    .produce(key, attrs.system, attrs.destination, now);
                if more.consumer_parents.contains(&f.span_id) {
                    // Its consumer (a child) arrived first.
                    self.index.consume_child(key);
                }
            }
            Role::Consumer => {
                if !f.parent_span_id.is_zero() {
                    let more = state.more();
                    if more.consumer_parents.len() < MAX_CONSUMERS_PER_TRACE {
                        more.consumer_parents.push(f.parent_span_id);
                    }
                    if self.index.consume_child((id, f.parent_span_id)) == Consumed::First {
                        self.touched.push(id);
                    }
                }
                self.consume_links(span, now);
            }
        }
    }

    /// Records a span that belongs to no pending trace here (the WIT `shard` interface's
    /// `links`): a span of a trace another instance owns, with its links into this instance's
    /// traces, or a late span of a trace already decided. If it is a consumer, its parent and
    /// its links consume their messages (a late completion when the producer's trace is
    /// decided).
    pub fn add_foreign_span(&mut self, span: &SpanView<'_>, now: u64) {
        let attrs = self.messaging_attrs(span.attributes.clone());
        if messaging::classify(span.fixed.kind, attrs.operation) != Role::Consumer {
            return;
        }
        let f = &span.fixed;
        if !f.parent_span_id.is_zero()
            && self.index.consume_child((f.trace_id, f.parent_span_id)) == Consumed::First
        {
            self.touched.push(f.trace_id);
        }
        self.consume_links(span, now);
    }

    /// A consumer's links consume the messages they point to.
    fn consume_links(&mut self, span: &SpanView<'_>, now: u64) {
        for link in span.links.clone() {
            let Ok((t, s)) = link else { break };
            if self.index.consume_link((t, s), now) == Consumed::First {
                self.touched.push(t);
            }
        }
    }

    /// Called when trace `id` reaches its normal due time `due`: the later due time until which
    /// it is held for the consumers of its open producers, or `None` to decide it now. A trace is
    /// held once, for at most `consumer_wait`.
    pub fn hold(&self, id: TraceId, trace: &mut PendingTrace, due: u64) -> Option<u64> {
        if self.consumer_wait == 0
            || trace.completeness.held
            || trace
                .completeness
                .open_producers(id, &self.index)
                .next()
                .is_none()
        {
            return None;
        }
        trace.completeness.held = true;
        Some(due.saturating_add(self.consumer_wait))
    }

    /// Makes every held trace whose producers are all consumed now due at `now`.
    pub fn release(
        &mut self,
        traces: &mut HashMap<TraceId, Box<PendingTrace>>,
        queue: &mut DueQueue,
        now: u64,
    ) {
        let mut touched = core::mem::take(&mut self.touched);
        for id in touched.drain(..) {
            if let Some(t) = traces.get_mut(&id)
                && t.completeness.held
                && t.due > now
                && t.completeness
                    .open_producers(id, &self.index)
                    .next()
                    .is_none()
            {
                t.due = now;
                queue.push(Lane::Release, now, id);
            }
        }
        // Keep the list's memory for the next batch.
        self.touched = touched;
    }

    /// Checks trace `id`, being decided at `now`, and counts it for the metrics. Sorts and
    /// deduplicates its id lists in place.
    pub fn check(&mut self, id: TraceId, trace: &mut PendingTrace, now: u64) -> Report {
        let mut missing = Vec::new();
        let state = &trace.completeness;
        if let Some(more) = &state.more {
            for e in self
                .expectations
                .missing_for(&more.expectations, &more.expected)
            {
                missing.push(format!("{MISSING_EXPECTED_PREFIX}{e}"));
            }
        }
        let type_id = match state.root_type {
            Some(id) => id,
            None => {
                missing.insert(0, MISSING_ROOT.to_owned());
                self.roots.id("", "")
            }
        };
        let names = &self.names;
        let mut open: Vec<&str> = trace
            .completeness
            .open_producers(id, &self.index)
            .map(|p| match &p.name {
                ProducerName::Shared(i) => names.get(*i).map_or("", String::as_str),
                ProducerName::Own(name) => name,
            })
            .collect();
        open.sort_unstable();
        open.dedup();
        for name in open {
            missing.push(format!("{MISSING_CONSUMER_PREFIX}{name}"));
        }
        if let Some(more) = &trace.completeness.more {
            for p in &more.producers {
                self.index.decided(&(id, p.span_id));
            }
        }
        missing.truncate(MAX_MISSING_ENTRIES);
        structural(trace, &mut missing);
        self.roots.record(type_id, missing.is_empty(), now);
        report(missing)
    }

    /// Finishes a decision batch: adds the metrics section when counts changed and
    /// [`METRICS_INTERVAL_NS`] passed since the last one (always with `force`, and at least every
    /// [`METRICS_REFRESH_NS`]), and otherwise asks for a tick when the pending counts are due.
    pub fn finish(&mut self, out: DecisionWriter, next_due: u64, now: u64, force: bool) -> Vec<u8> {
        let dirty = self.index.is_dirty() || self.roots.is_dirty();
        let since = self.last_metrics.map(|t| now.saturating_sub(t));
        let send = match since {
            None => dirty,
            Some(_) if force => true,
            Some(elapsed) => {
                (dirty && elapsed >= METRICS_INTERVAL_NS) || elapsed >= METRICS_REFRESH_NS
            }
        };
        if send {
            let mut m = MetricsWriter::new();
            self.index.write_metrics(now, &mut m);
            self.roots.write_metrics(now, &mut m);
            self.last_metrics = Some(now);
            return out.finish_with_metrics(next_due, &m);
        }
        let next_due = match self.last_metrics {
            Some(t) if dirty => {
                let at = t.saturating_add(METRICS_INTERVAL_NS).max(1);
                if next_due == 0 { at } else { next_due.min(at) }
            }
            _ => next_due,
        };
        out.finish(next_due)
    }
}

#[cfg(test)]
mod sampler_tests;

#[cfg(test)]
mod tests {
    use tracekeeper_abi::{SpanFixed, SpanId};

    use super::*;

    fn span(id: u8, parent: u8) -> SpanFixed {
        SpanFixed {
            span_id: SpanId([0, 0, 0, 0, 0, 0, 0, id]),
            parent_span_id: SpanId([0, 0, 0, 0, 0, 0, 0, parent]),
            ..SpanFixed::default()
        }
    }

    fn trace(spans: &[(u8, u8)]) -> PendingTrace {
        let mut t = PendingTrace::new(0, 0);
        for &(id, parent) in spans {
            t.add_span(&span(id, parent), "", 0);
        }
        t
    }

    #[test]
    fn complete_tree_in_any_order() {
        let r = check(&mut trace(&[(3, 2), (4, 2), (2, 1), (1, 0), (5, 1)]));
        assert_eq!(r.completeness, Completeness::Complete);
        assert!(r.missing.is_empty());
    }

    #[test]
    fn missing_parents_are_sorted_and_deduplicated() {
        let r = check(&mut trace(&[
            (1, 0),
            (9, 0xab),
            (3, 7),
            (4, 0xab),
            (5, 7),
            (6, 1),
        ]));
        assert_eq!(r.completeness, Completeness::Incomplete);
        assert_eq!(
            r.missing,
            ["parent:0000000000000007", "parent:00000000000000ab"]
        );
    }

    /// The scan (few pairs) and the merge (many) find the same missing parents, in the same
    /// order, with and without duplicates and whatever the order of arrival.
    #[test]
    fn scan_and_merge_find_the_same_missing_parents() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let id = |v: u64| SpanId(v.to_be_bytes());
        for case in 0..500 {
            let n_spans = 1 + next(40);
            let n_parents = 1 + next(20);
            // Ids from a small range so that parents often are spans, and repeat.
            let range = 1 + next(60) + case % 3;
            let spans: Vec<SpanId> = (0..n_spans).map(|_| id(1 + next(range))).collect();
            let parents: Vec<SpanId> = (0..n_parents).map(|_| id(1 + next(range))).collect();
            let mut scanned = parents.clone();
            missing_parents_by_scan(&spans, &mut scanned);
            let (mut s, mut p) = (spans.clone(), parents.clone());
            let merged: Vec<SpanId> = missing_parents_by_merge(&mut s, &mut p).copied().collect();
            assert_eq!(scanned, merged, "spans {spans:?} parents {parents:?}");
            assert!(scanned.iter().all(|p| !spans.contains(p)));
            assert!(
                parents
                    .iter()
                    .all(|p| spans.contains(p) || scanned.contains(p))
            );
        }
    }

    #[test]
    fn a_long_trace_with_many_parents_is_checked_by_the_merge() {
        // 100 spans, ids 1..=100, each the child of the one before, and 20 more whose parents
        // are missing: 119 parents × 120 spans is past SCAN_MAX_PAIRS.
        let mut t = PendingTrace::new(0, 0);
        t.add_span(&span(1, 0), "", 0);
        for id in 2..=100u8 {
            t.add_span(&span(id, id - 1), "", 0);
        }
        for id in 0..20u8 {
            t.add_span(&span(101 + id, 200 + id), "", 0);
        }
        assert!(t.parent_ids.len() * t.span_ids.len() > SCAN_MAX_PAIRS);
        let r = check(&mut t);
        let expected: Vec<String> = (200..220).map(|p| format!("parent:{p:016x}")).collect();
        assert_eq!(r.missing, expected);
    }

    #[test]
    fn no_root() {
        let r = check(&mut trace(&[(2, 1), (1, 9)]));
        assert_eq!(r.missing, ["root", "parent:0000000000000009"]);
        let r = check(&mut trace(&[]));
        assert_eq!(r.missing, ["root"]);
    }

    #[test]
    fn missing_entries_are_bounded() {
        let mut t = PendingTrace::new(0, 0);
        for parent in 100..=200 {
            t.add_span(&span(1, parent), "", 0);
        }
        let r = check(&mut t);
        assert_eq!(r.completeness, Completeness::Incomplete);
        assert_eq!(r.missing.len(), MAX_MISSING_ENTRIES);
        assert_eq!(r.missing[0], "root");
        assert_eq!(r.missing[1], "parent:0000000000000064");
    }
}
