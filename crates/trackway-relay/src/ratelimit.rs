//! Per-write-key rate limits: a token bucket per key, refilled at the key's events per second
//! with a burst of one second's worth; a request takes one token per event it carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The buckets of every limited key.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimits {
    /// Takes `events` tokens from `key`'s bucket (limited to `per_second`, burst the same) at
    /// `now`: `Ok` if there were enough, else how long until there will be.
    pub fn take(&self, key: &str, per_second: f64, events: usize, now: Instant) -> Result<(), Duration> {
        let mut buckets = crate::lock(&self.buckets);
        let b = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: per_second, at: now });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_second).min(per_second);
        b.at = now;
        let need = events as f64;
        if need <= b.tokens {
            b.tokens -= need;
            return Ok(());
        }
        // A request larger than the burst can never pass: it is told to wait one full second
        // (and will be refused again); the sender must send smaller batches or the limit raised.
        let missing = (need - b.tokens).min(per_second);
        Err(Duration::from_secs_f64(missing / per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let limits = RateLimits::default();
        let t = Instant::now();
        assert!(limits.take("k", 10.0, 10, t).is_ok());
        let wait = limits.take("k", 10.0, 5, t).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(limits.take("k", 10.0, 5, t + Duration::from_millis(500)).is_ok());
        // Other keys have their own bucket.
        assert!(limits.take("other", 10.0, 10, t).is_ok());
    }
}
