//! Structural completeness at decision time: did a root span arrive, and is every referenced
//! parent among the trace's spans? Produces the `tracekeeper.completeness.missing` entries
//! (`root`, `parent:<16 hex>`). Expectations and consumers of producer spans (DESIGN §7) are a
//! later issue.

use tracekeeper_abi::Completeness;

use crate::trace::PendingTrace;

/// Missing entry for a trace without a root span.
pub const MISSING_ROOT: &str = "root";
/// Prefix of the missing entry for a parent span that never arrived.
pub const MISSING_PARENT_PREFIX: &str = "parent:";
/// Most missing entries reported for one trace; the attribute is written on every exported span,
/// so a trace with thousands of orphans must not multiply its size. The trace is incomplete all
/// the same.
pub const MAX_MISSING_ENTRIES: usize = 64;

/// The outcome of the completeness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Complete or incomplete.
    pub completeness: Completeness,
    /// What is missing: `root` first, then `parent:<id>` sorted by id, at most
    /// [`MAX_MISSING_ENTRIES`].
    pub missing: Vec<String>,
}

/// Checks a trace that is being decided. Sorts and deduplicates its id lists in place.
pub fn check(trace: &mut PendingTrace) -> Report {
    let mut missing = Vec::new();
    if !trace.has_root() {
        missing.push(MISSING_ROOT.to_owned());
    }
    if !trace.parent_ids.is_empty() {
        trace.span_ids.sort_unstable();
        trace.span_ids.dedup();
        trace.parent_ids.sort_unstable();
        trace.parent_ids.dedup();
        // Both lists are sorted: one merge walk finds the parents that are not spans.
        let mut spans = trace.span_ids.iter().peekable();
        for parent in &trace.parent_ids {
            while spans.next_if(|s| *s < parent).is_some() {}
            if spans.peek() != Some(&parent) {
                if missing.len() >= MAX_MISSING_ENTRIES {
                    break;
                }
                missing.push(format!("{MISSING_PARENT_PREFIX}{parent}"));
            }
        }
    }
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
