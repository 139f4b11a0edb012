//! The time source of every layer's state.
//!
//! Layers never read `std::time::Instant`: they ask a [`Clock`], which reads tokio's clock
//! by default, so `tokio::time::pause()` and `advance()` drive them in tests. With the
//! `test-util` feature, a [`ManualClock`] moves only when told to, for testing a
//! configuration without a runtime.
//!
//! Timers (the timeout layer's deadline) always run on tokio's clock: drive them with
//! `tokio::time::pause()`/`advance()`.

use tokio::time::Instant;

/// Where a layer reads the time. Cheap to clone; clones read the same time.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    #[cfg(feature = "test-util")]
    manual: Option<ManualClock>,
}

impl Clock {
    /// Tokio's clock (`tokio::time::Instant::now()`), which honours `pause`/`advance`.
    pub fn tokio() -> Clock {
        Clock::default()
    }

    /// The current time.
    #[inline]
    pub fn now(&self) -> Instant {
        #[cfg(feature = "test-util")]
        if let Some(manual) = &self.manual {
            return manual.now();
        }
        Instant::now()
    }
}

#[cfg(feature = "test-util")]
pub use manual::ManualClock;

#[cfg(feature = "test-util")]
mod manual {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    /// A clock that moves only when [`advance`](ManualClock::advance) is called. Clones share
    /// the same time. Convert it into a [`Clock`](super::Clock) with `.into()`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_parapet::clock::{Clock, ManualClock};
    ///
    /// let manual = ManualClock::new();
    /// let clock: Clock = manual.clone().into();
    /// let start = clock.now();
    /// manual.advance(Duration::from_secs(5));
    /// assert_eq!(clock.now() - start, Duration::from_secs(5));
    /// ```
    #[derive(Clone, Debug)]
    pub struct ManualClock {
        inner: Arc<Inner>,
    }

    #[derive(Debug)]
    struct Inner {
        base: Instant,
        nanos: AtomicU64,
    }

    impl Default for ManualClock {
        fn default() -> Self {
            ManualClock::new()
        }
    }

    impl ManualClock {
        /// A manual clock starting at the current tokio time.
        pub fn new() -> ManualClock {
            ManualClock {
                inner: Arc::new(Inner {
                    base: Instant::now(),
                    nanos: AtomicU64::new(0),
                }),
            }
        }

        /// The clock's current time.
        pub fn now(&self) -> Instant {
            let nanos = self.inner.nanos.load(Ordering::Acquire);
            self.inner.base + Duration::from_nanos(nanos)
        }

        /// Move the clock forward (saturating after ~584 years).
        pub fn advance(&self, by: Duration) {
            let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            let _ = self
                .inner
                .nanos
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_add(by))
                });
        }
    }

    impl From<ManualClock> for super::Clock {
        fn from(manual: ManualClock) -> Self {
            super::Clock {
                manual: Some(manual),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.now() - t0, Duration::from_millis(250));
    }

    #[cfg(feature = "test-util")]
    #[test]
    fn manual_clock_is_shared_by_clones_and_saturates() {
        let manual = ManualClock::new();
        let clock: Clock = manual.clone().into();
        let t0 = clock.now();
        manual.clone().advance(Duration::from_secs(2));
        assert_eq!(clock.now() - t0, Duration::from_secs(2));
        manual.advance(Duration::MAX);
        assert!(clock.now() > t0);
    }
}
