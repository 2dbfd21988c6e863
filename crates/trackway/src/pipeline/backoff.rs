//! Exponential backoff with full jitter (never zero: at least 1 ms).

use std::time::Duration;

use rand::Rng;

/// A delay drawn uniformly from `[1 ms, min(max, base × 2^(failures−1))]` ("full jitter": clients
/// that failed together do not retry together). Never zero (unless the ceiling is): a draw of
/// 0 sent a failed request again in the same instant, a hot retry against a server that had
/// just refused it (and a third request where `tests/health.rs` counts one per clock step).
pub(crate) fn full_jitter(base: Duration, max: Duration, failures: u32) -> Duration {
    let ceiling = backoff_ceiling(base, max, failures);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(millis.min(1)..=millis))
}

/// The ceiling before jitter: `min(max, base × 2^(failures−1))`.
pub(crate) fn backoff_ceiling(base: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    base.saturating_mul(1 << exp).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        assert_eq!(backoff_ceiling(base, max, 1), Duration::from_millis(100));
        assert_eq!(backoff_ceiling(base, max, 2), Duration::from_millis(200));
        assert_eq!(backoff_ceiling(base, max, 4), Duration::from_millis(800));
        assert_eq!(backoff_ceiling(base, max, 5), max);
        assert_eq!(backoff_ceiling(base, max, 100), max);
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_varies() {
        let base = Duration::from_millis(1000);
        let draws: Vec<_> = (0..200).map(|_| full_jitter(base, base, 1)).collect();
        assert!(draws.iter().all(|d| *d <= base));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 50, "full jitter should spread retries");
    }

    #[test]
    fn jitter_is_never_zero_below_a_small_ceiling() {
        let base = Duration::from_millis(2);
        assert!((0..500).map(|_| full_jitter(base, base, 1)).all(|d| d >= Duration::from_millis(1)));
        assert_eq!(full_jitter(Duration::ZERO, Duration::ZERO, 1), Duration::ZERO);
    }
}
