//! The final decision from the policies' outcomes, exactly as the collector's processor makes
//! it (drop policies are evaluated first, and evaluation stops at the first `Dropped`, or with
//! `sample_on_first_match` at the first `Sampled`):
//!
//! 1. any `Dropped` → dropped (named after the drop policy);
//! 2. else any legacy `InvertNotSampled` → not sampled;
//! 3. else any `Sampled` → sampled, named after the first sampling policy in evaluation order;
//! 4. else a legacy `InvertSampled` and no `NotSampled` → sampled, named after the first
//!    inverted policy;
//! 5. else not sampled. `Error` outcomes count for nothing.
//!
//! The threshold of a keep is the most certain among the policies that keep the trace: a
//! trace two policies keep is kept with the larger of their probabilities.

use tracekeeper_abi::{Decision, ThresholdOp};

use crate::policy::{NamedPolicy, Outcome, TraceFacts};

/// The final decision on one trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Sampled, not sampled or dropped.
    pub decision: Decision,
    /// Index of the deciding policy (the first that sampled, or the one that dropped); `None`
    /// when no policy matched.
    pub policy: Option<usize>,
    /// What the host does to `th` in `tracestate`.
    pub threshold: ThresholdOp,
}

impl Verdict {
    fn not_sampled() -> Self {
        Verdict {
            decision: Decision::NotSampled,
            policy: None,
            threshold: ThresholdOp::Keep,
        }
    }
}

/// Evaluates `policies` in order. With `first_match`, evaluation stops at the first policy that
/// samples (the collector's `sample_on_first_match`).
pub fn evaluate(
    policies: &mut [NamedPolicy],
    facts: &TraceFacts<'_>,
    first_match: bool,
) -> Verdict {
    let mut sampled: Option<(usize, ThresholdOp)> = None;
    let mut invert_sampled: Option<usize> = None;
    let mut not_sampled = false;
    let mut invert_not_sampled = false;
    for (i, p) in policies.iter_mut().enumerate() {
        match p.policy.evaluate(facts) {
            Outcome::Dropped => {
                return Verdict {
                    decision: Decision::Dropped,
                    policy: Some(i),
                    threshold: ThresholdOp::Keep,
                };
            }
            Outcome::Sampled(op) => {
                sampled = Some(match sampled {
                    None => (i, op),
                    Some((first, prev)) => (first, most_certain(prev, op)),
                });
                if first_match {
                    break;
                }
            }
            Outcome::NotSampled => not_sampled = true,
            Outcome::InvertSampled => {
                invert_sampled.get_or_insert(i);
            }
            Outcome::InvertNotSampled => invert_not_sampled = true,
            Outcome::Error => {}
        }
    }
    if invert_not_sampled {
        return Verdict::not_sampled();
    }
    // An inverted keep stands only when no policy said NotSampled; then it is certain.
    let invert_keeps = invert_sampled.filter(|_| !not_sampled);
    match (sampled, invert_keeps) {
        (Some((i, op)), inv) => Verdict {
            decision: Decision::Sampled,
            policy: Some(i),
            threshold: if inv.is_some() { ThresholdOp::Keep } else { op },
        },
        (None, Some(i)) => Verdict {
            decision: Decision::Sampled,
            policy: Some(i),
            threshold: ThresholdOp::Keep,
        },
        (None, None) => Verdict::not_sampled(),
    }
}

/// Merges the threshold operations of two policies that both kept a trace (either would have):
/// a keep at probability 1 (`Keep`) wins; between two probabilistic keeps the smaller threshold
/// (higher probability) wins; a keep of unknown probability (`Erase`) only stands when nothing
/// better is known.
pub fn most_certain(a: ThresholdOp, b: ThresholdOp) -> ThresholdOp {
    match (a, b) {
        (ThresholdOp::Keep, _) | (_, ThresholdOp::Keep) => ThresholdOp::Keep,
        (ThresholdOp::Raise(x), ThresholdOp::Raise(y)) => ThresholdOp::Raise(x.min(y)),
        (ThresholdOp::Raise(x), ThresholdOp::Erase)
        | (ThresholdOp::Erase, ThresholdOp::Raise(x)) => ThresholdOp::Raise(x),
        (ThresholdOp::Erase, ThresholdOp::Erase) => ThresholdOp::Erase,
    }
}

/// Merges the threshold operations of two conditions that must both hold for a keep (`and`):
/// the keep is as uncertain as its least certain part: a keep of unknown probability
/// (`Erase`) makes it unknown; between two probabilistic keeps the larger threshold (lower
/// probability; both compare the same randomness) wins; `Keep` adds nothing.
pub fn least_certain(a: ThresholdOp, b: ThresholdOp) -> ThresholdOp {
    match (a, b) {
        (ThresholdOp::Erase, _) | (_, ThresholdOp::Erase) => ThresholdOp::Erase,
        (ThresholdOp::Raise(x), ThresholdOp::Raise(y)) => ThresholdOp::Raise(x.max(y)),
        (ThresholdOp::Raise(x), ThresholdOp::Keep) | (ThresholdOp::Keep, ThresholdOp::Raise(x)) => {
            ThresholdOp::Raise(x)
        }
        (ThresholdOp::Keep, ThresholdOp::Keep) => ThresholdOp::Keep,
    }
}

#[cfg(test)]
mod tests {
    use tracekeeper_abi::{Completeness, TraceId};

    use super::*;
    use crate::policy::Policy;
    use crate::trace::PendingTrace;

    #[derive(Debug)]
    struct Fixed(Outcome);
    impl Policy for Fixed {
        fn evaluate(&mut self, _: &TraceFacts<'_>) -> Outcome {
            self.0
        }
    }

    fn run(outcomes: &[Outcome], first_match: bool) -> Verdict {
        let mut policies: Vec<NamedPolicy> = outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| NamedPolicy {
                name: format!("p{i}"),
                policy: Box::new(Fixed(*o)),
            })
            .collect();
        let trace = PendingTrace::new(0, 0);
        let facts = TraceFacts {
            trace_id: TraceId([1; 16]),
            trace: &trace,
            completeness: Completeness::Complete,
            now: 0,
        };
        evaluate(&mut policies, &facts, first_match)
    }

    const NO: Outcome = Outcome::NotSampled;
    const KEEP: Outcome = Outcome::Sampled(ThresholdOp::Keep);
    const DROP: Outcome = Outcome::Dropped;
    const INV_YES: Outcome = Outcome::InvertSampled;
    const INV_NO: Outcome = Outcome::InvertNotSampled;
    const ERR: Outcome = Outcome::Error;

    #[test]
    fn first_sampling_policy_names_the_decision() {
        let v = run(&[NO, Outcome::Sampled(ThresholdOp::Raise(9)), KEEP], false);
        assert_eq!(v.decision, Decision::Sampled);
        assert_eq!(v.policy, Some(1));
        assert_eq!(v.threshold, ThresholdOp::Keep);
        let v = run(&[NO, Outcome::Sampled(ThresholdOp::Raise(9)), KEEP], true);
        assert_eq!(v.policy, Some(1));
        assert_eq!(v.threshold, ThresholdOp::Raise(9));
    }

    #[test]
    fn smallest_threshold_among_probabilistic_keeps() {
        let v = run(
            &[
                Outcome::Sampled(ThresholdOp::Raise(9)),
                Outcome::Sampled(ThresholdOp::Raise(4)),
            ],
            false,
        );
        assert_eq!(v.threshold, ThresholdOp::Raise(4));
        assert_eq!(v.policy, Some(0));
    }

    #[test]
    fn nothing_matched_and_dropped() {
        let v = run(&[NO, NO], false);
        assert_eq!(v.decision, Decision::NotSampled);
        assert_eq!(v.policy, None);
        assert_eq!(v.threshold, ThresholdOp::Keep);
        let v = run(&[KEEP, Outcome::Dropped, KEEP], false);
        assert_eq!(v.decision, Decision::Dropped);
        assert_eq!(v.policy, Some(1));
    }

    /// The collector's precedence, case by case: (outcomes, decision, deciding policy).
    #[test]
    fn precedence_table() {
        use Decision::{Dropped, NotSampled, Sampled};
        let cases: &[(&[Outcome], Decision, Option<usize>)] = &[
            (&[], NotSampled, None),
            (&[ERR], NotSampled, None),
            (&[ERR, KEEP], Sampled, Some(1)),
            (&[DROP, KEEP], Dropped, Some(0)),
            (&[KEEP, INV_YES, DROP], Dropped, Some(2)),
            // InvertNotSampled beats Sampled.
            (&[KEEP, INV_NO], NotSampled, None),
            (&[INV_NO, KEEP, INV_YES], NotSampled, None),
            // Dropped beats InvertNotSampled.
            (&[INV_NO, DROP], Dropped, Some(1)),
            // InvertSampled keeps only without a NotSampled.
            (&[INV_YES], Sampled, Some(0)),
            (&[INV_YES, NO], NotSampled, None),
            (&[NO, INV_YES, INV_YES], NotSampled, None),
            (&[ERR, INV_YES], Sampled, Some(1)),
            // A Sampled wins over NotSampled and names the decision before an inverted keep.
            (&[NO, INV_YES, KEEP], Sampled, Some(2)),
            (&[INV_YES, KEEP], Sampled, Some(1)),
        ];
        for (outcomes, decision, policy) in cases {
            let v = run(outcomes, false);
            assert_eq!((v.decision, v.policy), (*decision, *policy), "{outcomes:?}");
        }
    }

    #[test]
    fn evaluation_stops_at_the_first_drop_and_with_first_match() {
        // After a drop, a later InvertNotSampled is never seen: still dropped.
        assert_eq!(run(&[DROP, INV_NO], false).decision, Decision::Dropped);
        // sample_on_first_match stops before a later InvertNotSampled.
        let v = run(&[KEEP, INV_NO], true);
        assert_eq!((v.decision, v.policy), (Decision::Sampled, Some(0)));
        // It does not stop at an InvertSampled.
        let v = run(&[INV_YES, INV_NO], true);
        assert_eq!(v.decision, Decision::NotSampled);
    }

    #[test]
    fn inverted_keep_makes_a_probabilistic_keep_certain() {
        let half = Outcome::Sampled(ThresholdOp::Raise(1 << 55));
        assert_eq!(run(&[half, INV_YES], false).threshold, ThresholdOp::Keep);
        assert_eq!(
            run(&[half, INV_YES, NO], false).threshold,
            ThresholdOp::Raise(1 << 55)
        );
        assert_eq!(
            run(&[Outcome::Sampled(ThresholdOp::Erase), NO], false).threshold,
            ThresholdOp::Erase
        );
    }

    #[test]
    fn merging_thresholds() {
        use ThresholdOp::{Erase, Keep, Raise};
        assert_eq!(most_certain(Erase, Raise(3)), Raise(3));
        assert_eq!(most_certain(Erase, Keep), Keep);
        assert_eq!(most_certain(Erase, Erase), Erase);
        assert_eq!(most_certain(Raise(3), Raise(2)), Raise(2));
        assert_eq!(least_certain(Keep, Raise(3)), Raise(3));
        assert_eq!(least_certain(Raise(3), Raise(2)), Raise(3));
        assert_eq!(least_certain(Raise(3), Erase), Erase);
        assert_eq!(least_certain(Keep, Keep), Keep);
        assert_eq!(least_certain(Keep, Erase), Erase);
    }
}
