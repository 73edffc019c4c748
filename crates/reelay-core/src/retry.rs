//! The webhook retry policy as arithmetic: after which failure to wait how long, and when to
//! stop. Defaults are the seed's: 5 attempts, linear backoff in 30-second steps.

use std::time::Duration;

crate::named_enum! {
    /// How the wait grows from one failed attempt to the next.
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Backoff {
        /// n × interval after the n-th failure (30, 60, 90, 120 s): the seed's policy.
        Linear => "linear",
        /// The same interval every time.
        Constant => "constant",
        /// interval × 2^(n-1): 30, 60, 120, 240 s.
        Exponential => "exponential",
    }
}

crate::named_enum! {
    /// What one delivery attempt came to, as the deliveries API reports it.
    pub enum AttemptOutcome {
        Delivered => "delivered",
        HttpError => "http_error",
        Timeout => "timeout",
        ConnectError => "connect_error",
        TlsError => "tls_error",
        DnsError => "dns_error",
        BlockedDestination => "blocked_destination",
        Redirect => "redirect",
    }
}

/// What happens after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Delivered,
    RetryAfter(Duration),
    /// No more attempts in this round; the reason is shown to the customer.
    GiveUp(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub interval: Duration,
    pub backoff: Backoff,
    /// The longest a receiver's `Retry-After` may push the next attempt back.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            interval: Duration::from_secs(30),
            backoff: Backoff::Linear,
            max_retry_after: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed attempt (1-based).
    pub fn delay_after(&self, failures: u32) -> Duration {
        let n = failures.max(1);
        match self.backoff {
            Backoff::Linear => self.interval.saturating_mul(n),
            Backoff::Constant => self.interval,
            Backoff::Exponential => self
                .interval
                .saturating_mul(2u32.saturating_pow((n - 1).min(31))),
        }
    }

    /// Decides after attempt number `attempt` (1-based, within the current round).
    /// `status` is the HTTP status when one came back; `retry_after` its `Retry-After`.
    pub fn next(
        &self,
        attempt: u32,
        outcome: AttemptOutcome,
        status: Option<u16>,
        retry_after: Option<Duration>,
    ) -> Next {
        if outcome == AttemptOutcome::Delivered {
            return Next::Delivered;
        }
        // The guard refused the destination: the same URL would be refused again on every
        // retry, so waiting only delays the customer's news. A redelivery starts a new round
        // (after the customer fixed DNS or the URL, or the operator the policy).
        if outcome == AttemptOutcome::BlockedDestination {
            return Next::GiveUp(
                "blocked_destination: the SSRF guard refused the callback URL (the attempt's \
                 error says why); not retried, a redelivery starts a new round"
                    .into(),
            );
        }
        if status == Some(410) {
            return Next::GiveUp(
                "the endpoint answered 410 Gone: it asked for no more attempts".into(),
            );
        }
        if attempt >= self.max_attempts {
            return Next::GiveUp(format!(
                "{attempt} attempts failed; the last was {}",
                match status {
                    Some(code) => format!("HTTP {code}"),
                    None => outcome.as_str().replace('_', " "),
                }
            ));
        }
        let mut wait = self.delay_after(attempt);
        if let (Some(429 | 503), Some(asked)) = (status, retry_after) {
            wait = wait.max(asked.min(self.max_retry_after));
        }
        Next::RetryAfter(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_seed_policy_waits_30_60_90_120_then_gives_up() {
        let p = RetryPolicy::default();
        let waits: Vec<_> = (1..=4)
            .map(|n| p.next(n, AttemptOutcome::HttpError, Some(500), None))
            .collect();
        assert_eq!(waits, [S(30), S(60), S(90), S(120)].map(Next::RetryAfter));
        assert!(matches!(
            p.next(5, AttemptOutcome::HttpError, Some(500), None),
            Next::GiveUp(reason) if reason.contains("5 attempts") && reason.contains("HTTP 500")
        ));
    }

    #[test]
    fn constant_and_exponential_backoff() {
        let mut p = RetryPolicy {
            backoff: Backoff::Constant,
            ..Default::default()
        };
        assert_eq!(p.delay_after(3), S(30));
        p.backoff = Backoff::Exponential;
        assert_eq!(
            (1..=4).map(|n| p.delay_after(n)).collect::<Vec<_>>(),
            [S(30), S(60), S(120), S(240)]
        );
        assert_eq!(p.delay_after(u32::MAX), S(30 << 31)); // no overflow
    }

    #[test]
    fn retry_after_delays_429_and_503_within_a_cap() {
        let p = RetryPolicy::default();
        let next = |status, after| p.next(1, AttemptOutcome::HttpError, Some(status), after);
        assert_eq!(next(429, Some(S(120))), Next::RetryAfter(S(120)));
        assert_eq!(next(503, Some(S(5))), Next::RetryAfter(S(30)));
        assert_eq!(next(429, Some(S(86_400))), Next::RetryAfter(S(900)));
        assert_eq!(next(500, Some(S(120))), Next::RetryAfter(S(30)));
    }

    #[test]
    fn a_blocked_destination_gives_up_at_once() {
        let p = RetryPolicy::default();
        for attempt in [1, 2, 5] {
            assert!(matches!(
                p.next(attempt, AttemptOutcome::BlockedDestination, None, None),
                Next::GiveUp(r) if r.contains("blocked_destination")
            ));
        }
        // Other failures without a status still retry.
        assert!(matches!(
            p.next(1, AttemptOutcome::ConnectError, None, None),
            Next::RetryAfter(_)
        ));
    }

    #[test]
    fn gone_stops_at_once_and_success_is_final() {
        let p = RetryPolicy::default();
        assert!(
            matches!(p.next(1, AttemptOutcome::HttpError, Some(410), None), Next::GiveUp(r) if r.contains("410"))
        );
        assert_eq!(
            p.next(1, AttemptOutcome::Delivered, Some(200), None),
            Next::Delivered
        );
        assert!(
            matches!(p.next(5, AttemptOutcome::Timeout, None, None), Next::GiveUp(r) if r.contains("timeout"))
        );
    }
}
