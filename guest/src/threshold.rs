//! OpenTelemetry consistent probability sampling (W3C trace context level 2, OTEP 235): 56-bit
//! randomness from the trace id or the `ot=rv` sub-key of `tracestate`, and rejection thresholds
//! (`th`). A trace is kept at probability p iff its randomness R >= T = round((1 - p) * 2^56), so
//! every instance that sees the trace id agrees, and the keep can be extrapolated by 1/p.

/// Bits of randomness in a trace id (its low 56 bits) and in `rv`.
pub const RANDOMNESS_BITS: u32 = 56;
/// 2^56: the threshold that rejects everything (probability 0).
pub const MAX_THRESHOLD: u64 = 1 << RANDOMNESS_BITS;
/// Hex digits of an `rv` value.
pub const RV_HEX_DIGITS: usize = 14;

/// The rejection threshold for a keep probability `p` (clamped to 0..=1; NaN counts as 0).
pub fn for_probability(p: f64) -> u64 {
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    // p * 2^56 is an exact scaling, so rounding happens once; subtracting from 2^56 keeps the
    // precision of small probabilities (0.1 gives exactly 0xe6666666666666).
    let keep = (p * MAX_THRESHOLD as f64).round() as u64;
    MAX_THRESHOLD - keep.min(MAX_THRESHOLD)
}

/// The keep probability a threshold stands for.
pub fn probability(threshold: u64) -> f64 {
    (MAX_THRESHOLD - threshold.min(MAX_THRESHOLD)) as f64 / MAX_THRESHOLD as f64
}

/// The `rv` value of the `ot` entry of a W3C `tracestate` (`...,ot=rv:<14 hex>;th:...,...`),
/// or `None` when absent or malformed.
pub fn rv_from_tracestate(trace_state: &str) -> Option<u64> {
    let ot = trace_state
        .split(',')
        .map(|member| member.trim_matches([' ', '\t']))
        .find_map(|member| member.strip_prefix("ot="))?;
    let rv = ot.split(';').find_map(|field| field.strip_prefix("rv:"))?;
    if rv.len() != RV_HEX_DIGITS || !rv.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(rv, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(for_probability(0.1), 0xe6666666666666);
        assert_eq!(for_probability(0.5), 0x80000000000000);
        assert_eq!(for_probability(1.0), 0);
        assert_eq!(for_probability(0.0), MAX_THRESHOLD);
        assert_eq!(for_probability(-3.0), MAX_THRESHOLD);
        assert_eq!(for_probability(7.0), 0);
        assert_eq!(for_probability(f64::NAN), MAX_THRESHOLD);
        assert!((probability(for_probability(0.1)) - 0.1).abs() < 1e-15);
        assert_eq!(probability(MAX_THRESHOLD), 0.0);
    }

    #[test]
    fn rv_parsing() {
        assert_eq!(
            rv_from_tracestate("ot=rv:0123456789abcd"),
            Some(0x0123456789abcd)
        );
        assert_eq!(
            rv_from_tracestate("vendor=x, ot=th:8;rv:ffffffffffffff,other=y"),
            Some(0x00ffffffffffffff)
        );
        assert_eq!(rv_from_tracestate("ot=th:8"), None);
        assert_eq!(rv_from_tracestate("ot=rv:0123"), None);
        assert_eq!(rv_from_tracestate("ot=rv:+123456789abcd"), None);
        assert_eq!(rv_from_tracestate("ot=rv:0123456789abcg"), None);
        assert_eq!(rv_from_tracestate("xot=rv:0123456789abcd"), None);
        assert_eq!(rv_from_tracestate(""), None);
    }
}
