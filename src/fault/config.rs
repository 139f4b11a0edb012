//! [`FaultConfig`]: the fault-injection layer as data.

use std::time::Duration;

use super::layer::{FaultBuilder, FaultLayer};
use crate::error::ConfigError;
use crate::mode::Mode;

/// The fault-injection layer's configuration, for config files.
///
/// Rates are percentages from 0 to 100. Error, abort, hang and corrupt exclude one another
/// (one roll decides among them, so together they may not exceed 100); latency is rolled on
/// its own and delays whatever comes next. The layer starts [`Mode::Off`] unless `mode`
/// says otherwise.
///
/// ```
/// # #[cfg(feature = "http")] {
/// use tower_parapet::fault::{FaultConfig, FaultKind};
/// use tower_parapet::Mode;
///
/// let config: FaultConfig = serde_json::from_str(r#"{
///     "name": "payments-chaos",
///     "seed": 42,
///     "error_rate": 5,
///     "latency_rate": 20,
///     "latency": "100ms",
///     "latency_max": "300ms"
/// }"#).unwrap();
/// let layer = config.build().unwrap();
/// let handle = layer.handle();
/// assert_eq!(handle.mode(), Mode::Off); // off until switched on
/// assert_eq!(handle.rate(FaultKind::Error), 5.0);
///
/// let bad: FaultConfig = serde_json::from_str(r#"{ "hang_rate": 120 }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "hang_rate");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// The name in events (default `"fault"`).
    pub name: String,
    /// Enforce (inject), shadow (report what would be injected) or off (default off).
    pub mode: Mode,
    /// The seed of the random sequence (default: a different one per layer). With a seed
    /// the same sequence of calls gets the same faults.
    pub seed: Option<u64>,
    /// Percent of calls answered with the configured error (default 0).
    pub error_rate: f64,
    /// Percent of calls that fail like a broken connection (default 0).
    pub abort_rate: f64,
    /// Percent of calls that never answer (default 0).
    pub hang_rate: f64,
    /// Percent of calls whose response is corrupted (default 0). Needs a corruption set
    /// in code ([`FaultBuilder::corruption`]); above 0 without one, `build` refuses it.
    pub corrupt_rate: f64,
    /// Percent of calls delayed by [`latency`](Self::latency) (default 0).
    pub latency_rate: f64,
    /// The delay of a latency fault, or the shortest one with `latency_max` (default 0).
    #[serde(with = "crate::config::duration")]
    pub latency: Duration,
    /// The longest delay: with it, delays are uniform in `[latency, latency_max]`.
    #[serde(with = "crate::config::duration::option")]
    pub latency_max: Option<Duration>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            name: "fault".into(),
            mode: Mode::Off,
            seed: None,
            error_rate: 0.0,
            abort_rate: 0.0,
            hang_rate: 0.0,
            corrupt_rate: 0.0,
            latency_rate: 0.0,
            latency: Duration::ZERO,
            latency_max: None,
        }
    }
}

impl FaultConfig {
    /// A builder starting from this config, to add targeting, an error, an observer or a
    /// shared mode handle.
    pub fn builder(&self) -> FaultBuilder {
        FaultBuilder::from_config(self.clone())
    }

    /// The layer, after checking every field.
    pub fn build(&self) -> Result<FaultLayer, ConfigError> {
        self.builder().build()
    }
}
