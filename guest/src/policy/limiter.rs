//! A token bucket on the host's clock, as `golang.org/x/time/rate` (which the collector's
//! `rate_limiting` and `bytes_limiting` use): it starts full, refills continuously at `rate`
//! tokens per second up to `burst`, and admits a request of `n` tokens only if `n` are there
//! (a refused request takes nothing). Time comes from the `now` of each call; a clock that
//! steps back refills nothing. Tokens are counted in nano-tokens so refills are exact.

/// Nano-tokens per token (one per nanosecond of refill at one token per second).
const NANOS: u128 = 1_000_000_000;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u128,
    cap: u128,
    nano_tokens: u128,
    last: Option<u64>,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` tokens per second, holding at most `burst`.
    pub fn new(rate: u64, burst: u64) -> Self {
        let cap = u128::from(burst) * NANOS;
        TokenBucket {
            rate: u128::from(rate),
            cap,
            nano_tokens: cap,
            last: None,
        }
    }

    /// Takes `n` tokens at host time `now` (Unix ns) if available.
    pub fn allow(&mut self, now: u64, n: u64) -> bool {
        if let Some(last) = self.last {
            let elapsed = u128::from(now.saturating_sub(last));
            self.nano_tokens = self
                .nano_tokens
                .saturating_add(elapsed.saturating_mul(self.rate))
                .min(self.cap);
        }
        self.last = Some(now);
        let need = u128::from(n) * NANOS;
        if need <= self.nano_tokens {
            self.nano_tokens -= need;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    #[test]
    fn starts_full_refills_and_caps() {
        let mut b = TokenBucket::new(10, 20);
        assert!(b.allow(T0, 15));
        assert!(!b.allow(T0, 6), "5 left");
        assert!(b.allow(T0, 5));
        assert!(!b.allow(T0, 1));
        // 100 ms at 10/s refills exactly one token.
        assert!(!b.allow(T0 + SEC / 10 - 1, 1));
        assert!(b.allow(T0 + SEC / 10, 1));
        // An hour later the bucket holds its burst, not more.
        assert!(!b.allow(T0 + 3600 * SEC, 21));
        assert!(b.allow(T0 + 3600 * SEC, 20));
    }

    #[test]
    fn more_than_the_burst_never_passes_and_costs_nothing() {
        let mut b = TokenBucket::new(1, 3);
        assert!(!b.allow(T0, 4));
        assert!(b.allow(T0, 3));
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let mut b = TokenBucket::new(1000, 1);
        assert!(b.allow(T0, 1));
        assert!(!b.allow(T0 - 5 * SEC, 1));
        assert!(!b.allow(T0 - 5 * SEC + SEC / 2000, 1));
        assert!(b.allow(T0 - 5 * SEC + SEC / 1000, 1));
    }
}
