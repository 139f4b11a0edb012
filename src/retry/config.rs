//! [`RetryConfig`]: the retry layer as data.

use std::time::Duration;

use super::backoff::{Backoff, Jitter};
use super::layer::{RetryBuilder, RetryLayer};
use crate::error::ConfigError;

/// The retry budget's configuration; see [`RetryBudget`](super::RetryBudget).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Retries allowed per request over the window (default 0.2, from 0 to 1 000).
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic (default 10).
    pub min_per_second: u32,
    /// The sliding window (default 10 s).
    #[serde(with = "crate::config::duration")]
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// The retry layer's configuration, for config files.
///
/// ```
/// # #[cfg(feature = "http")] {
/// use tower_parapet::retry::RetryConfig;
///
/// let config: RetryConfig = serde_json::from_str(r#"{
///     "name": "inventory",
///     "max_attempts": 4,
///     "backoff": { "type": "exponential", "initial": "50ms", "multiplier": 2.0, "max": "2s" },
///     "jitter": "decorrelated",
///     "budget": { "ratio": 0.1, "min_per_second": 5, "window": "10s" },
///     "max_body_bytes": 16384
/// }"#).unwrap();
/// let layer = config.build_http().unwrap();
/// # let _ = layer;
///
/// let bad: RetryConfig = serde_json::from_str(r#"{ "max_attempts": 0 }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "max_attempts");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// The name in events (default `"retry"`).
    pub name: String,
    /// Attempts per call, **the first call included**: 1 never retries (default 3, at
    /// most 100).
    pub max_attempts: u32,
    /// The wait before each retry (default exponential, 100 ms doubling, capped at 10 s).
    pub backoff: Backoff,
    /// Jitter applied after the cap (default `full`).
    pub jitter: Jitter,
    /// The retry budget shared by every clone (default 20 % + 10/s over 10 s); `null`
    /// for none.
    pub budget: Option<BudgetConfig>,
    /// Start an attempt only if at least this much of the deadline is left after the
    /// backoff (default `"0s"`).
    #[serde(with = "crate::config::duration")]
    pub min_time_left: Duration,
    /// HTTP only: request bodies up to this size are buffered for replay (default 65 536).
    pub max_body_bytes: u64,
    /// A fixed seed for the jitter (default: random per layer).
    pub seed: Option<u64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            name: "retry".into(),
            max_attempts: 3,
            backoff: Backoff::default(),
            jitter: Jitter::Full,
            budget: Some(BudgetConfig::default()),
            min_time_left: Duration::ZERO,
            max_body_bytes: 64 * 1024,
            seed: None,
        }
    }
}

impl RetryConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ConfigError::new(
                "max_attempts",
                "must be from 1 to 100 (it counts the first call)",
            ));
        }
        match self.backoff {
            Backoff::Constant { .. } => {}
            Backoff::Linear { initial, max, .. } => {
                if max < initial {
                    return Err(ConfigError::new("backoff.max", "must be at least initial"));
                }
            }
            Backoff::Exponential {
                initial,
                multiplier,
                max,
            } => {
                if !(multiplier.is_finite() && multiplier >= 1.0) {
                    return Err(ConfigError::new(
                        "backoff.multiplier",
                        "must be a finite number of at least 1",
                    ));
                }
                if max < initial {
                    return Err(ConfigError::new("backoff.max", "must be at least initial"));
                }
            }
        }
        if let Some(b) = self.budget {
            if !(b.ratio.is_finite() && (0.0..=1_000.0).contains(&b.ratio)) {
                return Err(ConfigError::new("budget.ratio", "must be from 0 to 1000"));
            }
            if b.window.is_zero() {
                return Err(ConfigError::new(
                    "budget.window",
                    "must be greater than zero",
                ));
            }
        }
        Ok(())
    }

    /// A builder starting from this config (any `Clone` request), to add an observer, a
    /// shared budget or another classifier.
    pub fn builder(&self) -> RetryBuilder {
        RetryBuilder::from_config(self.clone())
    }

    /// The layer for any `Clone` request, after checking every field.
    pub fn build(&self) -> Result<RetryLayer, ConfigError> {
        self.builder().build()
    }

    /// The layer for `http::Request`s (see [`RetryLayer::http`]), after checking every
    /// field.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn build_http(
        &self,
    ) -> Result<
        RetryLayer<super::HttpReplay, crate::classify::TransientHttpFailures, super::HttpPushback>,
        ConfigError,
    > {
        self.builder()
            .replay(super::HttpReplay::new().max_body_bytes(self.max_body_bytes))
            .classifier(crate::classify::TransientHttpFailures)
            .pushback(super::HttpPushback)
            .build()
    }
}
