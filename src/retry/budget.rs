//! The retry budget: retries allowed in proportion to requests, shared by every clone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Clock;

const BUCKETS: usize = 10;

/// A retry budget in the manner of Finagle's and Envoy's: over a sliding window, retries
/// are allowed while `retries + 1 <= ratio × requests + min_per_second × window`.
///
/// Why: retries multiply load exactly when a dependency is least able to take it. A
/// per-call attempt limit of 3 triples the load on a dependency that is down; a budget of
/// 20 % bounds the extra load at 20 % (plus the small floor that lets a quiet service
/// still retry), whatever the attempt limit.
///
/// The budget is an `Arc`: every service of a layer, and every clone, shares it, and one
/// budget can be given to several layers ([`RetryBuilder::budget`](super::RetryBuilder::budget))
/// to bound the retries towards one dependency from several call sites. Counting is
/// lock-free: each of 10 buckets of `window / 10` holds two packed atomic words (bucket
/// number and count). Under contention the check and the withdrawal are two steps, so
/// concurrent retries may overdraw the budget by at most the number of callers retrying
/// at that instant.
///
/// ```
/// use std::time::Duration;
/// use tower_parapet::retry::RetryBudget;
///
/// let budget = RetryBudget::new(0.1, 0, Duration::from_secs(10));
/// for _ in 0..20 {
///     budget.deposit();
/// }
/// assert!(budget.try_withdraw());
/// assert!(budget.try_withdraw());
/// assert!(!budget.try_withdraw(), "10 % of 20 requests is 2 retries");
/// ```
#[derive(Debug, Clone)]
pub struct RetryBudget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    ratio: f64,
    reserve: u64,
    bucket_nanos: u64,
    base: tokio::time::Instant,
    clock: Clock,
    requests: [AtomicU64; BUCKETS],
    retries: [AtomicU64; BUCKETS],
}

fn pack(bucket: u32, count: u32) -> u64 {
    (u64::from(bucket) << 32) | u64::from(count)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request (e.g. `0.2`), plus `min_per_second`
    /// retries per second of `window` whatever the traffic, over a sliding `window`.
    /// A negative or non-finite ratio counts as 0; a zero window as one millisecond.
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> RetryBudget {
        RetryBudget::with_clock(ratio, min_per_second, window, Clock::tokio())
    }

    /// The same, reading time from `clock`.
    pub fn with_clock(
        ratio: f64,
        min_per_second: u32,
        window: Duration,
        clock: impl Into<Clock>,
    ) -> RetryBudget {
        let clock = clock.into();
        let window = window.max(Duration::from_millis(1));
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio
        } else {
            0.0
        };
        let reserve = (f64::from(min_per_second) * window.as_secs_f64()) as u64;
        let bucket_nanos = u64::try_from(window.as_nanos() / BUCKETS as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        RetryBudget(Arc::new(Inner {
            ratio,
            reserve,
            bucket_nanos,
            base: clock.now(),
            clock,
            requests: Default::default(),
            retries: Default::default(),
        }))
    }

    fn bucket(&self) -> u32 {
        let elapsed = self.0.clock.now().saturating_duration_since(self.0.base);
        // Bucket numbers wrap after 2^32 buckets; counts compare them with wrapping
        // arithmetic.
        (elapsed.as_nanos() / u128::from(self.0.bucket_nanos)) as u32
    }

    fn bump(words: &[AtomicU64; BUCKETS], bucket: u32) {
        let slot = &words[bucket as usize % BUCKETS];
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            let (b, count) = unpack(w);
            Some(if b == bucket {
                pack(b, count.saturating_add(1))
            } else if (bucket.wrapping_sub(b) as i32) > 0 {
                pack(bucket, 1)
            } else {
                // A caller with an older reading of the clock: count it in the newer
                // bucket rather than erase that bucket.
                pack(b, count.saturating_add(1))
            })
        });
    }

    fn sum(words: &[AtomicU64; BUCKETS], bucket: u32) -> u64 {
        words
            .iter()
            .map(|w| unpack(w.load(Ordering::Acquire)))
            .filter(|(b, _)| (bucket.wrapping_sub(*b) as usize) < BUCKETS)
            .map(|(_, count)| u64::from(count))
            .sum()
    }

    /// Count one request (every call through a retry layer deposits once).
    pub fn deposit(&self) {
        Self::bump(&self.0.requests, self.bucket());
    }

    /// Take one retry from the budget, if it allows one.
    pub fn try_withdraw(&self) -> bool {
        let bucket = self.bucket();
        let requests = Self::sum(&self.0.requests, bucket);
        let retries = Self::sum(&self.0.retries, bucket);
        let allowed = (self.0.ratio * requests as f64) as u64 + self.0.reserve;
        if retries < allowed {
            Self::bump(&self.0.retries, bucket);
            true
        } else {
            false
        }
    }

    /// Requests counted in the current window.
    pub fn requests(&self) -> u64 {
        Self::sum(&self.0.requests, self.bucket())
    }

    /// Retries taken in the current window.
    pub fn retries(&self) -> u64 {
        Self::sum(&self.0.retries, self.bucket())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn window_slides_and_reserve_applies() {
        let b = RetryBudget::new(0.5, 1, Duration::from_secs(10));
        // The reserve: 1 per second over 10 s.
        for _ in 0..10 {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        for _ in 0..4 {
            b.deposit();
        }
        assert!(b.try_withdraw() && b.try_withdraw());
        assert!(!b.try_withdraw());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!((b.requests(), b.retries()), (0, 0));
        assert!(b.try_withdraw());
    }
}
