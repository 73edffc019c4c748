//! Per-account rate limiting of creates: a token bucket per account (all its keys together, so
//! more keys do not mean more rate), answered with 429 `RATE_LIMITED` and `Retry-After`.
//!
//! Off by default: credits already bound what an account can spend, the front door bounds
//! what any client can have in flight, and one integrator's batch job may legitimately
//! create thousands of tasks a second. Operators who resell capacity turn it on.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use reelay_core::AccountId;

use crate::ApiError;

/// Buckets kept before idle ones (full again) are dropped.
const PRUNE_ABOVE: usize = 100_000;

pub struct CreateLimiter {
    buckets: DefaultKeyedRateLimiter<AccountId>,
    clock: DefaultClock,
    per_second: u32,
}

impl CreateLimiter {
    /// `None` when `per_second` is 0 (off). `burst` 0 means twice the rate.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = match NonZeroU32::new(burst) {
            Some(burst) => burst,
            None => rate.saturating_mul(NonZeroU32::new(2).expect("2 is not 0")),
        };
        Some(Self {
            buckets: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            per_second,
        })
    }

    /// Takes one create from the account's bucket, or says when the next one is allowed.
    pub fn check(&self, account: AccountId) -> Result<(), ApiError> {
        if self.buckets.len() > PRUNE_ABOVE {
            self.buckets.retain_recent();
        }
        self.buckets.check_key(&account).map_err(|not_until| {
            ApiError::rate_limited(
                not_until.wait_time_from(self.clock.now()),
                format!(
                    "this account may create {} generations per second; wait for Retry-After \
                     seconds and retry",
                    self.per_second
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_account_waits_and_others_do_not() {
        let limiter = CreateLimiter::new(1, 3).unwrap();
        let (a, b) = (AccountId::random(), AccountId::random());
        for _ in 0..3 {
            limiter.check(a).unwrap();
        }
        assert!(limiter.check(a).is_err());
        limiter.check(b).unwrap();
        assert!(CreateLimiter::new(0, 10).is_none());
    }
}
