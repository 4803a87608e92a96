//! Running as one of several instances of one host (the WIT `shard` interface): the host-wide
//! budgets of the configuration divided among the instances.
//!
//! The host maps every trace id to one instance, so each instance sees about `1 / count` of the
//! traces. Budgets that are rates (`rate_limiting.spans_per_second`, `bytes_limiting`'s
//! `bytes_per_second`, `composite.max_total_spans_per_second`, their burst capacities) and the
//! sizing hint `expected_new_traces_per_sec` are divided by `count`, rounded up so that a
//! positive value stays positive: together the instances keep at most the configured rate, plus
//! at most one unit per instance for the rounding. Fractions (`probabilistic`, `rate_allocation`
//! percentages) and per-trace thresholds are unchanged.

use crate::config::{PolicyConfig, TailSamplingConfig};

/// `value` divided by `count`, rounded up; values ≤ 0 (left for validation to report) and a
/// count of 0 or 1 leave it unchanged.
pub fn share(value: i64, count: u32) -> i64 {
    if value <= 0 || count <= 1 {
        return value;
    }
    let count = i64::from(count);
    value / count + i64::from(value % count != 0)
}

/// [`share`] for an unsigned sizing hint.
fn share_u64(value: u64, count: u32) -> u64 {
    if count <= 1 {
        return value;
    }
    value.div_ceil(u64::from(count))
}

/// Divides the budgets of `config` among `count` instances (see the module docs).
pub fn share_config(config: &mut TailSamplingConfig, count: u32) {
    if count <= 1 {
        return;
    }
    config.expected_new_traces_per_sec = share_u64(config.expected_new_traces_per_sec, count);
    share_policies(&mut config.policies, count);
}

/// Divides the rate budgets of `policies` and of their sub-policies, at any depth.
pub fn share_policies(policies: &mut [PolicyConfig], count: u32) {
    for p in policies {
        if let Some(r) = p.rate_limiting.as_mut() {
            r.spans_per_second = share(r.spans_per_second, count);
            r.burst_capacity = share(r.burst_capacity, count);
        }
        if let Some(b) = p.bytes_limiting.as_mut() {
            b.bytes_per_second = share(b.bytes_per_second, count);
            b.burst_capacity = share(b.burst_capacity, count);
        }
        if let Some(c) = p.composite.as_mut() {
            c.max_total_spans_per_second = share(c.max_total_spans_per_second, count);
            share_policies(&mut c.composite_sub_policy, count);
        }
        if let Some(a) = p.and.as_mut() {
            share_policies(&mut a.and_sub_policy, count);
        }
        if let Some(d) = p.drop.as_mut() {
            share_policies(&mut d.drop_sub_policy, count);
        }
        if let Some(n) = p.not.as_mut() {
            share_policies(std::slice::from_mut(&mut *n.not_sub_policy), count);
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::ProcessorsConfig;

    #[test]
    fn shares_round_up_and_keep_invalid_values() {
        assert_eq!(share(100, 2), 50);
        assert_eq!(share(101, 2), 51);
        assert_eq!(share(1, 8), 1);
        assert_eq!(share(7, 1), 7);
        assert_eq!(share(0, 4), 0);
        assert_eq!(share(-5, 4), -5);
    }

    #[test]
    fn every_rate_at_any_depth_is_divided() {
        let json = r#"{"tail_sampling": {
            "expected_new_traces_per_sec": 1001,
            "policies": [
              {"name": "r", "type": "rate_limiting",
               "rate_limiting": {"spans_per_second": 1000, "burst_capacity": 3000}},
              {"name": "b", "type": "bytes_limiting",
               "bytes_limiting": {"bytes_per_second": 10000}},
              {"name": "c", "type": "composite", "composite": {
                 "max_total_spans_per_second": 900,
                 "policy_order": ["x"],
                 "composite_sub_policy": [
                   {"name": "x", "type": "and", "and": {"and_sub_policy": [
                     {"type": "rate_limiting", "rate_limiting": {"spans_per_second": 10}}]}}],
                 "rate_allocation": [{"policy": "x", "percent": 50}]}},
              {"name": "n", "type": "not", "not": {"not_sub_policy":
                 {"type": "rate_limiting", "rate_limiting": {"spans_per_second": 3}}}},
              {"name": "p", "type": "probabilistic",
               "probabilistic": {"sampling_percentage": 10}}
            ]}}"#;
        let mut cfg = ProcessorsConfig::from_json(json).expect("config");
        share_config(&mut cfg.tail_sampling, 3);
        let ts = &cfg.tail_sampling;
        assert_eq!(ts.expected_new_traces_per_sec, 334);
        let p = &ts.policies;
        let r = p[0].rate_limiting.expect("rate");
        assert_eq!((r.spans_per_second, r.burst_capacity), (334, 1000));
        let b = p[1].bytes_limiting.expect("bytes");
        assert_eq!((b.bytes_per_second, b.burst_capacity), (3334, 0));
        let c = p[2].composite.as_ref().expect("composite");
        assert_eq!(c.max_total_spans_per_second, 300);
        assert_eq!(c.rate_allocation[0].percent, 50);
        let and = c.composite_sub_policy[0].and.as_ref().expect("and");
        let inner = and.and_sub_policy[0].rate_limiting.expect("inner rate");
        assert_eq!(inner.spans_per_second, 4);
        let not = p[3].not.as_ref().expect("not");
        let nr = not.not_sub_policy.rate_limiting.expect("not rate");
        assert_eq!(nr.spans_per_second, 1);
        let prob = p[4].probabilistic.as_ref().expect("probabilistic");
        assert!((prob.sampling_percentage - 10.0).abs() < f64::EPSILON);
        cfg.validate().expect("still valid after sharing");
    }
}
