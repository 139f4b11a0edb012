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
                ConfigError::new(
                    "deadline_header",
                    format!("{header:?} is not a header name"),
                )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json(json: &str) -> TimeoutConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_fill_everything_but_the_timeout() {
        let c = from_json(r#"{ "timeout": "250ms" }"#);
        assert_eq!(c, TimeoutConfig::new(Duration::from_millis(250)));
        assert_eq!(c.name, "timeout");
        assert_eq!(c.mode, Mode::Enforce);
        assert!(
            serde_json::from_str::<TimeoutConfig>("{}").is_err(),
            "timeout is required"
        );
        assert!(
            serde_json::from_str::<TimeoutConfig>(r#"{ "timeout": 2 }"#).is_err(),
            "a bare number has no unit"
        );
        assert!(
            serde_json::from_str::<TimeoutConfig>(r#"{ "timeout": "2s", "timout": "1s" }"#)
                .is_err(),
            "typos are caught"
        );
    }

    #[test]
    fn round_trips_through_json() {
        let mut c = TimeoutConfig::new(Duration::from_secs(90));
        c.name = "db".into();
        c.mode = Mode::Shadow;
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""timeout":"90s""#), "{json}");
        assert!(json.contains(r#""mode":"shadow""#), "{json}");
        assert_eq!(from_json(&json), c);
    }

    #[test]
    fn build_names_the_bad_field() {
        let err = TimeoutConfig::new(Duration::ZERO).build().unwrap_err();
        assert_eq!(err.field(), "timeout");
        assert!(err.to_string().starts_with("invalid `timeout`"), "{err}");

        let mut c = TimeoutConfig::new(Duration::from_secs(1));
        c.name.clear();
        assert_eq!(c.build().unwrap_err().field(), "name");

        c.name = "api".into();
        let layer = c.build().unwrap();
        assert!(format!("{layer:?}").contains("api"));
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_options() {
        let c = from_json(
            r#"{ "timeout": "2s", "grpc_timeout": false, "deadline_header": "X-Budget",
                 "deadline_header_unit": "seconds", "propagate_grpc_timeout": true }"#,
        );
        assert!(!c.grpc_timeout);
        assert_eq!(c.deadline_header_unit, super::super::DeadlineUnit::Seconds);
        assert!(c.propagate_grpc_timeout);
        assert!(c.build().is_ok(), "header names are case-insensitive");

        for bad in ["", "bad header", "x:y", "é"] {
            let mut c = TimeoutConfig::new(Duration::from_secs(1));
            c.deadline_header = Some(bad.into());
            let err = c.build().unwrap_err();
            assert_eq!(err.field(), "deadline_header", "{bad:?}");
        }
        assert!(
            serde_json::from_str::<TimeoutConfig>(
                r#"{ "timeout": "2s", "deadline_header_unit": "minutes" }"#
            )
            .is_err()
        );
    }
}
