//! Latency percentiles (nearest rank) over a set of durations.

use std::time::Duration;

/// Percentiles of one latency sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// `None` when the sample is empty.
    pub fn of(mut sample: Vec<Duration>) -> Option<Self> {
        if sample.is_empty() {
            return None;
        }
        sample.sort_unstable();
        let at = |q: f64| ms(sample[nearest_rank(sample.len(), q)]);
        Some(Self {
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: ms(sample[sample.len() - 1]),
        })
    }
}

/// The index of the q-quantile in a sorted sample of `n` (nearest-rank definition).
fn nearest_rank(n: usize, q: f64) -> usize {
    let rank = (q * n as f64).ceil() as usize;
    rank.clamp(1, n) - 1
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Events per second, `None` when nothing was measured.
pub fn rate(count: u64, over: Duration) -> Option<f64> {
    (count > 0 && !over.is_zero()).then(|| count as f64 / over.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sample: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(sample).unwrap();
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p90_ms, 90.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        let one = Latency::of(vec![Duration::from_millis(7)]).unwrap();
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert!(Latency::of(Vec::new()).is_none());
    }

    #[test]
    fn rates() {
        assert_eq!(rate(10, Duration::from_secs(2)), Some(5.0));
        assert_eq!(rate(0, Duration::from_secs(2)), None);
        assert_eq!(rate(3, Duration::ZERO), None);
    }
}
