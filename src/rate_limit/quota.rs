//! [`Quota`]: how many requests per period, and how many at once.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ConfigError;

/// The longest period a quota may have: 366 days.
const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// The largest `interval × burst` the limiter accepts, in nanoseconds (about 146 years), so
/// its arithmetic on nanosecond timestamps can never overflow.
const MAX_SPAN_NANOS: u128 = 1 << 62;

/// A rate: `count` requests per `period`, with at most `burst` of them at once.
///
/// Quotas read as they mean: [`Quota::per_second(100)`](Quota::per_second) admits 100
/// requests per second, one every 10 ms on average, and up to 100 at once after a quiet
/// second. Requests are admitted by the generic cell rate algorithm (GCRA, from `governor`):
/// the quota is replenished continuously, one request's worth every
/// [`interval`](Quota::interval) (`period / count`, rounded up to the nanosecond), never
/// all at once at the end of a fixed window. So in any span of time of one `period`, at
/// most `count + burst` requests are admitted (`count` replenished, `burst` saved up).
///
/// [`burst`](Quota::burst) defaults to `count`; lower it to smooth traffic
/// (`Quota::per_second(100).burst(10)`: at most 10 at once, then one every 10 ms), raise it
/// to allow spikes. The [`name`](Quota::named) is the policy's name in the
/// `RateLimit-Policy` and `RateLimit` response fields and in events.
///
/// ```
/// use std::time::Duration;
/// use tower_parapet::rate_limit::Quota;
///
/// let q = Quota::per_second(100);
/// assert_eq!(q.count(), 100);
/// assert_eq!(q.period(), Duration::from_secs(1));
/// assert_eq!(q.interval(), Duration::from_millis(10));
/// assert_eq!(q.burst_size(), 100);
///
/// let daily = Quota::new(10_000, Duration::from_secs(24 * 3600)).burst(50).named("daily");
/// assert_eq!(daily.name(), "daily");
/// assert_eq!(daily.burst_size(), 50);
/// assert_eq!(Quota::per_minute(30).name(), "30_per_1m");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Quota {
    name: Arc<str>,
    count: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota")
            .field("name", &self.name)
            .field("count", &self.count)
            .field("period", &self.period)
            .field("burst", &self.burst)
            .finish()
    }
}

impl Quota {
    /// `count` requests per second.
    ///
    /// # Panics
    /// If `count` is zero (use [`Quota::try_new`] for values from outside the program).
    pub fn per_second(count: u32) -> Quota {
        Quota::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    ///
    /// # Panics
    /// If `count` is zero.
    pub fn per_minute(count: u32) -> Quota {
        Quota::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    ///
    /// # Panics
    /// If `count` is zero.
    pub fn per_hour(count: u32) -> Quota {
        Quota::new(count, Duration::from_secs(3600))
    }

    /// `count` requests per day (24 hours).
    ///
    /// # Panics
    /// If `count` is zero.
    pub fn per_day(count: u32) -> Quota {
        Quota::new(count, Duration::from_secs(24 * 3600))
    }

    /// `count` requests per `period`, burst `count`.
    ///
    /// # Panics
    /// If [`Quota::try_new`] would refuse the values.
    pub fn new(count: u32, period: Duration) -> Quota {
        match Quota::try_new(count, period) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        }
    }

    /// `count` requests per `period`, burst `count`; an error names the offending value
    /// (`count` zero, `period` zero or longer than 366 days).
    pub fn try_new(count: u32, period: Duration) -> Result<Quota, ConfigError> {
        let count = NonZeroU32::new(count)
            .ok_or_else(|| ConfigError::new("count", "must be at least 1"))?;
        if period.is_zero() {
            return Err(ConfigError::new("period", "must be greater than zero"));
        }
        if period > MAX_PERIOD {
            return Err(ConfigError::new("period", "must be at most 366 days"));
        }
        let q = Quota {
            name: default_name(count, period).into(),
            count,
            period,
            burst: count,
        };
        q.check_span("count")?;
        Ok(q)
    }

    /// At most `burst` requests at once (default: `count`).
    ///
    /// # Panics
    /// If [`Quota::try_burst`] would refuse it.
    #[must_use]
    pub fn burst(self, burst: u32) -> Quota {
        match self.try_burst(burst) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Quota::burst`], with an error (field `burst`) for zero or a burst so large that
    /// `interval × burst` exceeds about 146 years.
    pub fn try_burst(mut self, burst: u32) -> Result<Quota, ConfigError> {
        self.burst = NonZeroU32::new(burst)
            .ok_or_else(|| ConfigError::new("burst", "must be at least 1"))?;
        self.check_span("burst")?;
        Ok(self)
    }

    /// The policy's name in response fields and events (default `"<count>_per_<period>"`,
    /// e.g. `"100_per_1s"`).
    #[must_use]
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Quota {
        self.name = name.into();
        self
    }

    fn check_span(&self, field: &'static str) -> Result<(), ConfigError> {
        let span = self.interval().as_nanos() * u128::from(self.burst.get());
        if span > MAX_SPAN_NANOS {
            return Err(ConfigError::new(
                field,
                "interval × burst is too long (more than about 146 years)",
            ));
        }
        Ok(())
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The most requests admitted at once.
    pub fn burst_size(&self) -> u32 {
        self.burst.get()
    }

    /// The time in which one request's worth of quota is replenished: `period / count`,
    /// rounded up to the nanosecond (so the quota never admits more than it says).
    pub fn interval(&self) -> Duration {
        let nanos = self
            .period
            .as_nanos()
            .div_ceil(u128::from(self.count.get()));
        // `period` is at most 366 days, so this fits in a u64.
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The time an empty quota takes to refill completely: `interval × burst`. A key idle
    /// for that long is back to a fresh state, so forgetting it loses nothing.
    pub fn refill_time(&self) -> Duration {
        self.interval().saturating_mul(self.burst.get())
    }

    /// The same quota in `governor`'s terms.
    pub(crate) fn to_governor(&self) -> governor::Quota {
        governor::Quota::with_period(self.interval())
            .expect("the interval is at least one nanosecond")
            .allow_burst(self.burst)
    }

    /// `q` and `w` for the `RateLimit-Policy` field, whose window is in whole seconds: a
    /// period of a whole number of seconds is written as is; any other is widened to the
    /// next whole second and the count scaled down to match (never overstating the quota).
    pub(crate) fn header_window(&self) -> (u64, Duration) {
        let period = self.period;
        if period.subsec_nanos() == 0 {
            return (u64::from(self.count.get()), period);
        }
        let secs = period.as_secs() + 1;
        let scaled =
            u128::from(self.count.get()) * u128::from(secs) * 1_000_000_000 / period.as_nanos();
        (
            u64::try_from(scaled).unwrap_or(u64::MAX),
            Duration::from_secs(secs),
        )
    }
}

fn default_name(count: NonZeroU32, period: Duration) -> String {
    format!("{count}_per_{}", crate::config::duration::format(period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_read_as_they_mean() {
        assert_eq!(Quota::per_second(100).interval(), Duration::from_millis(10));
        assert_eq!(Quota::per_minute(60).interval(), Duration::from_secs(1));
        assert_eq!(Quota::per_hour(1).interval(), Duration::from_secs(3600));
        assert_eq!(Quota::per_day(24).interval(), Duration::from_secs(3600));
        assert_eq!(Quota::per_hour(10).name(), "10_per_1h");
        assert_eq!(
            Quota::per_second(3).interval(),
            Duration::from_nanos(333_333_334)
        );
        let q = Quota::per_second(10).burst(2);
        assert_eq!(q.burst_size(), 2);
        assert_eq!(q.refill_time(), Duration::from_millis(200));
        let g = q.to_governor();
        assert_eq!(g.burst_size().get(), 2);
        assert_eq!(g.replenish_interval(), Duration::from_millis(100));
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            Quota::try_new(0, Duration::from_secs(1))
                .unwrap_err()
                .field(),
            "count"
        );
        assert_eq!(
            Quota::try_new(1, Duration::ZERO).unwrap_err().field(),
            "period"
        );
        assert_eq!(
            Quota::try_new(1, Duration::from_secs(400 * 86_400))
                .unwrap_err()
                .field(),
            "period"
        );
        let q = Quota::per_day(1);
        assert_eq!(q.clone().try_burst(0).unwrap_err().field(), "burst");
        assert_eq!(q.try_burst(u32::MAX).unwrap_err().field(), "burst");
        assert!(std::panic::catch_unwind(|| Quota::per_second(0)).is_err());
    }

    #[test]
    fn header_windows_are_whole_seconds() {
        assert_eq!(
            Quota::per_minute(100).header_window(),
            (100, Duration::from_secs(60))
        );
        // 5 per 100 ms is 50 per second.
        assert_eq!(
            Quota::new(5, Duration::from_millis(100)).header_window(),
            (50, Duration::from_secs(1))
        );
        // 3 per 1.5 s is 4 per 2 s.
        assert_eq!(
            Quota::new(3, Duration::from_millis(1500)).header_window(),
            (4, Duration::from_secs(2))
        );
    }
}
