//! [`CircuitBreakerConfig`]: the circuit breaker as data.

use std::time::Duration;

use super::layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
use super::window::MAX_COUNT_WINDOW;
use crate::error::ConfigError;
use crate::mode::Mode;

/// The shape of the sliding window the rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `size` calls (1 to 524 288).
    Count {
        /// How many calls.
        size: u32,
    },
    /// The calls of the last `length`, kept in `buckets` buckets of `length / buckets`
    /// each: the window covers between `length - length / buckets` and `length`.
    Time {
        /// How far back.
        #[serde(with = "crate::config::duration")]
        length: Duration,
        /// How many buckets (default one per second of `length`, at least 1).
        buckets: u32,
    },
}

impl SlidingWindow {
    /// The last `size` calls.
    pub const fn count(size: u32) -> SlidingWindow {
        SlidingWindow::Count { size }
    }

    /// The calls of the last `length`, in one bucket per second (at least one; at most
    /// 3 600 — set [`buckets`](SlidingWindow::Time::buckets) by hand for other shapes).
    pub fn time(length: Duration) -> SlidingWindow {
        let buckets = u32::try_from(length.as_secs().clamp(1, 3_600)).unwrap_or(1);
        SlidingWindow::Time { length, buckets }
    }

    /// The calls of the last `length`, in `buckets` buckets.
    pub const fn time_in_buckets(length: Duration, buckets: u32) -> SlidingWindow {
        SlidingWindow::Time { length, buckets }
    }
}

impl Default for SlidingWindow {
    fn default() -> Self {
        SlidingWindow::count(100)
    }
}

/// Growth of the open wait over consecutive trips; see
/// [`CircuitBreakerBuilder::wait_growth`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitGrowth {
    /// The factor per consecutive trip (at least 1).
    pub multiplier: f64,
    /// The cap, before jitter.
    #[serde(with = "crate::config::duration")]
    pub max: Duration,
    /// ± this fraction of the capped wait, at random (0 to 1; default 0).
    #[serde(default)]
    pub jitter: f64,
}

/// The circuit breaker's configuration, for config files. Defaults are resilience4j's,
/// except that slow calls are not measured until
/// [`slow_call_duration`](Self::slow_call_duration) is set.
///
/// ```
/// # #[cfg(feature = "http")] {
/// use tower_parapet::circuit_breaker::CircuitBreakerConfig;
///
/// let config: CircuitBreakerConfig = serde_json::from_str(r#"{
///     "name": "payments",
///     "failure_rate_threshold": 50,
///     "minimum_calls": 20,
///     "sliding_window": { "type": "time", "length": "30s", "buckets": 30 },
///     "wait_in_open": "10s",
///     "wait_growth": { "multiplier": 2.0, "max": "5m", "jitter": 0.2 }
/// }"#).unwrap();
/// let layer = config.build().unwrap();
/// # let _ = layer;
/// let bad: CircuitBreakerConfig =
///     serde_json::from_str(r#"{ "failure_rate_threshold": 0 }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "failure_rate_threshold");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// The name in events and rejections (default `"circuit_breaker"`).
    pub name: String,
    /// Trip at or above this failure percentage, 1–100 (default 50).
    pub failure_rate_threshold: u8,
    /// Trip at or above this slow-call percentage, 1–100 (default 100).
    pub slow_call_rate_threshold: u8,
    /// Calls longer than this are slow (default: not measured).
    #[serde(with = "crate::config::duration::option")]
    pub slow_call_duration: Option<Duration>,
    /// Calls needed before any rate counts (default 100).
    pub minimum_calls: u32,
    /// The sliding window (default the last 100 calls).
    pub sliding_window: SlidingWindow,
    /// Time open before probing (default 60 s).
    #[serde(with = "crate::config::duration")]
    pub wait_in_open: Duration,
    /// Growth of the open wait over consecutive trips (default none).
    pub wait_growth: Option<WaitGrowth>,
    /// Probes at once in half-open (default 10).
    pub permitted_calls_in_half_open: u32,
    /// Longest time in half-open before opening again (default none).
    #[serde(with = "crate::config::duration::option")]
    pub max_wait_in_half_open: Option<Duration>,
    /// Enforce, shadow or off (default enforce).
    pub mode: Mode,
    /// Keyed breakers: the most kept (default 10 000).
    pub max_keys: u64,
    /// Keyed breakers: dropped after this long unused (default 10 min).
    #[serde(with = "crate::config::duration")]
    pub idle_key_timeout: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            name: "circuit_breaker".into(),
            failure_rate_threshold: 50,
            slow_call_rate_threshold: 100,
            slow_call_duration: None,
            minimum_calls: 100,
            sliding_window: SlidingWindow::default(),
            wait_in_open: Duration::from_secs(60),
            wait_growth: None,
            permitted_calls_in_half_open: 10,
            max_wait_in_half_open: None,
            mode: Mode::Enforce,
            max_keys: 10_000,
            idle_key_timeout: Duration::from_secs(600),
        }
    }
}

fn percent(field: &'static str, v: u8) -> Result<(), ConfigError> {
    if (1..=100).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{v} is not a percentage from 1 to 100"),
        ))
    }
}

impl CircuitBreakerConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        percent("failure_rate_threshold", self.failure_rate_threshold)?;
        percent("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        if self.slow_call_duration.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "slow_call_duration",
                "must be greater than zero",
            ));
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        match self.sliding_window {
            SlidingWindow::Count { size } => {
                if size == 0 || size > MAX_COUNT_WINDOW {
                    return Err(ConfigError::new(
                        "sliding_window.size",
                        format!("must be from 1 to {MAX_COUNT_WINDOW}"),
                    ));
                }
            }
            SlidingWindow::Time { length, buckets } => {
                if buckets == 0 || buckets > 1_000_000 {
                    return Err(ConfigError::new(
                        "sliding_window.buckets",
                        "must be from 1 to 1 000 000",
                    ));
                }
                if length.as_nanos() < u128::from(buckets) * 1_000 {
                    return Err(ConfigError::new(
                        "sliding_window.length",
                        "must give each bucket at least 1 µs",
                    ));
                }
            }
        }
        if self.wait_in_open.is_zero() {
            return Err(ConfigError::new(
                "wait_in_open",
                "must be greater than zero",
            ));
        }
        if let Some(g) = self.wait_growth {
            if !(g.multiplier.is_finite() && g.multiplier >= 1.0) {
                return Err(ConfigError::new(
                    "wait_growth.multiplier",
                    "must be a finite number of at least 1",
                ));
            }
            if !(0.0..=1.0).contains(&g.jitter) {
                return Err(ConfigError::new(
                    "wait_growth.jitter",
                    "must be from 0 to 1",
                ));
            }
            if g.max < self.wait_in_open {
                return Err(ConfigError::new(
                    "wait_growth.max",
                    "must be at least wait_in_open",
                ));
            }
        }
        if self.permitted_calls_in_half_open == 0 {
            return Err(ConfigError::new(
                "permitted_calls_in_half_open",
                "must be at least 1",
            ));
        }
        if self.max_wait_in_half_open.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "max_wait_in_half_open",
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    /// A builder starting from this config, to add a classifier, keys, an observer or a
    /// clock.
    pub fn builder(&self) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::from_config(self.clone())
    }

    /// The layer (one breaker, inner errors as failures), after checking every field.
    pub fn build(&self) -> Result<CircuitBreakerLayer, ConfigError> {
        self.builder().build()
    }
}
