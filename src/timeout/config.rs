//! [`TimeoutConfig`]: the timeout layer as data.

use std::time::Duration;

use super::layer::TimeoutLayer;
use crate::error::ConfigError;
use crate::mode::Mode;

/// The timeout layer's configuration, for config files.
///
/// ```
/// # #[cfg(feature = "http")] {
/// use tower_parapet::timeout::TimeoutConfig;
///
/// let config: TimeoutConfig = serde_json::from_str(
///     r#"{ "timeout": "2s", "deadline_header": "x-request-timeout-ms" }"#,
/// ).unwrap();
/// let layer = config.build().unwrap();
/// # let _ = layer;
/// let bad: TimeoutConfig = serde_json::from_str(r#"{ "timeout": "0s" }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "timeout");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    /// The longest a call may take (`"2s"`, `"250ms"`). Must be greater than zero.
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    /// The name in events (default `"timeout"`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Enforce, shadow or off (default enforce).
    #[serde(default)]
    pub mode: Mode,
    /// Honour the caller's `grpc-timeout` header (default true).
    #[cfg(feature = "http")]
    #[serde(default = "yes")]
    pub grpc_timeout: bool,
    /// Also honour this header as the caller's budget (ASCII digits).
    #[cfg(feature = "http")]
    #[serde(default)]
    pub deadline_header: Option<String>,
    /// The unit of `deadline_header` (default milliseconds).
    #[cfg(feature = "http")]
    #[serde(default)]
    pub deadline_header_unit: super::DeadlineUnit,
    /// Rewrite `grpc-timeout` on the request to the time left (client stacks).
    #[cfg(feature = "http")]
    #[serde(default)]
    pub propagate_grpc_timeout: bool,
}

fn default_name() -> String {
    "timeout".into()
}

#[cfg(feature = "http")]
fn yes() -> bool {
    true
}

impl TimeoutConfig {
    /// A config with `timeout` and every other field at its default.
    pub fn new(timeout: Duration) -> TimeoutConfig {
        TimeoutConfig {
            timeout,
            name: default_name(),
            mode: Mode::default(),
            #[cfg(feature = "http")]
            grpc_timeout: true,
            #[cfg(feature = "http")]
            deadline_header: None,
            #[cfg(feature = "http")]
            deadline_header_unit: super::DeadlineUnit::default(),
            #[cfg(feature = "http")]
            propagate_grpc_timeout: false,
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be greater than zero"));
        }
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        Ok(())
    }

    /// The layer, after checking every field.
    #[cfg(feature = "http")]
    pub fn build(&self) -> Result<TimeoutLayer<Duration, super::HttpDeadline>, ConfigError> {
        self.check()?;
        let mut deadline = super::HttpDeadline::new()
            .grpc_timeout(self.grpc_timeout)
            .propagate_grpc_timeout(self.propagate_grpc_timeout);
        if let Some(header) = &self.deadline_header {
            let name = http::HeaderName::try_from(header.as_str()).map_err(|_| {
                ConfigError::new("deadline_header", format!("{header:?} is not a header name"))
            })?;
            deadline = deadline.header(name, self.deadline_header_unit);
        }
        Ok(TimeoutLayer::new(self.timeout)
            .deadline(deadline)
            .name(self.name.as_str())
            .mode(self.mode))
    }

    /// The layer, after checking every field.
    #[cfg(not(feature = "http"))]
    pub fn build(&self) -> Result<TimeoutLayer, ConfigError> {
        self.check()?;
        Ok(TimeoutLayer::new(self.timeout)
            .name(self.name.as_str())
            .mode(self.mode))
    }
}
