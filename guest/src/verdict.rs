//! The final decision from the policies' outcomes, as in the collector: any `Dropped` wins, else
//! any `Sampled` (named after the first sampling policy in configuration order), else
//! `NotSampled`. The threshold of a keep is the most certain one among the policies that kept it.

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

/// Evaluates `policies` in order. With `first_match`, evaluation stops at the first policy that
/// samples (the collector's `sample_on_first_match`).
pub fn evaluate(
    policies: &mut [NamedPolicy],
    facts: &TraceFacts<'_>,
    first_match: bool,
) -> Verdict {
    let mut kept: Option<(usize, ThresholdOp)> = None;
    for (i, p) in policies.iter_mut().enumerate() {
        match p.policy.evaluate(facts) {
            Outcome::NotSampled => {}
            Outcome::Dropped => {
                return Verdict {
                    decision: Decision::Dropped,
                    policy: Some(i),
                    threshold: ThresholdOp::Keep,
                };
            }
            Outcome::Sampled(op) => {
                kept = Some(match kept {
                    None => (i, op),
                    Some((first, prev)) => (first, most_certain(prev, op)),
                });
                if first_match {
                    break;
                }
            }
        }
    }
    match kept {
        Some((i, threshold)) => Verdict {
            decision: Decision::Sampled,
            policy: Some(i),
            threshold,
        },
        None => Verdict {
            decision: Decision::NotSampled,
            policy: None,
            threshold: ThresholdOp::Keep,
        },
    }
}

/// Merges the threshold operations of two policies that both kept a trace: a keep at
/// probability 1 (`Keep`) wins; between two probabilistic keeps the smaller threshold (higher
/// probability) wins, since the trace would have been kept at that probability; a keep of unknown
/// probability (`Erase`) only stands when nothing better is known.
pub fn most_certain(a: ThresholdOp, b: ThresholdOp) -> ThresholdOp {
    match (a, b) {
        (ThresholdOp::Keep, _) | (_, ThresholdOp::Keep) => ThresholdOp::Keep,
        (ThresholdOp::Raise(x), ThresholdOp::Raise(y)) => ThresholdOp::Raise(x.min(y)),
        (ThresholdOp::Raise(x), ThresholdOp::Erase)
        | (ThresholdOp::Erase, ThresholdOp::Raise(x)) => ThresholdOp::Raise(x),
        (ThresholdOp::Erase, ThresholdOp::Erase) => ThresholdOp::Erase,
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

    #[test]
    fn merging_thresholds() {
        use ThresholdOp::{Erase, Keep, Raise};
        assert_eq!(most_certain(Erase, Raise(3)), Raise(3));
        assert_eq!(most_certain(Erase, Keep), Keep);
        assert_eq!(most_certain(Erase, Erase), Erase);
        assert_eq!(most_certain(Raise(3), Raise(2)), Raise(2));
    }
}
