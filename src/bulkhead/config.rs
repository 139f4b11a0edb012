//! [`BulkheadConfig`]: the bulkhead as data.

use std::time::Duration;

use super::layer::{BulkheadBuilder, BulkheadLayer};
use crate::error::ConfigError;
use crate::mode::Mode;

/// The bulkhead's configuration, for config files.
///
/// ```
/// # #[cfg(feature = "http")] {
/// use tower_parapet::bulkhead::BulkheadConfig;
///
/// let config: BulkheadConfig = serde_json::from_str(r#"{
///     "name": "reports",
///     "max_concurrent": 8,
///     "max_wait": "250ms"
/// }"#).unwrap();
/// let layer = config.build().unwrap();
/// assert_eq!(layer.handle().limit(), 8);
///
/// let bad: BulkheadConfig = serde_json::from_str(r#"{ "max_concurrent": 0 }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "max_concurrent");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadConfig {
    /// The name in events (default `"bulkhead"`).
    pub name: String,
    /// Calls allowed in flight at once, shared by every clone (default 64, at least 1).
    pub max_concurrent: u32,
    /// How long a call over the limit waits for a slot before it is refused (default: not
    /// at all, it is refused at once).
    #[serde(with = "crate::config::duration::option")]
    pub max_wait: Option<Duration>,
    /// The `Retry-After` hint given with a refusal (default none).
    #[serde(with = "crate::config::duration::option")]
    pub retry_after: Option<Duration>,
    /// Enforce, shadow or off (default enforce).
    pub mode: Mode,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        BulkheadConfig {
            name: "bulkhead".into(),
            max_concurrent: 64,
            max_wait: None,
            retry_after: None,
            mode: Mode::Enforce,
        }
    }
}

impl BulkheadConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.max_concurrent == 0 {
            return Err(ConfigError::new("max_concurrent", "must be at least 1"));
        }
        if self.max_wait.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "max_wait",
                "must be greater than zero (leave it out to refuse at once)",
            ));
        }
        Ok(())
    }

    /// A builder starting from this config, to add an observer or share a mode handle.
    pub fn builder(&self) -> BulkheadBuilder {
        BulkheadBuilder::from_config(self.clone())
    }

    /// The layer, after checking every field.
    pub fn build(&self) -> Result<BulkheadLayer, ConfigError> {
        self.builder().build()
    }
}
