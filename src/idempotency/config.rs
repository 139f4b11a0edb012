//! [`IdempotencyConfig`]: the idempotency layer as data.

use std::time::Duration;

use http::{HeaderName, Method};

use super::key::IdempotencyKeyHeader;
use super::layer::{Conflict, IdempotencyLayer};
use super::store::MemoryStore;
use crate::config::FailurePolicy;
use crate::error::ConfigError;
use crate::mode::Mode;

/// The idempotency layer's configuration, for config files, with an in-process store.
///
/// ```
/// use tower_parapet::idempotency::IdempotencyConfig;
///
/// let config: IdempotencyConfig = serde_json::from_str(r#"{
///     "required": true,
///     "conflict": { "wait": "10s" },
///     "retention": "24h",
///     "fingerprint_headers": ["content-type"]
/// }"#).unwrap();
/// let layer = config.build().unwrap();
/// # let _ = layer;
/// let bad: IdempotencyConfig = serde_json::from_str(r#"{ "methods": ["P OST"] }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "methods");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// The name in events (default `"idempotency"`).
    pub name: String,
    /// The header carrying the key (default `idempotency-key`).
    pub header: String,
    /// The longest key in bytes (default 255).
    pub max_key_len: usize,
    /// Refuse requests without a key with 400 (default false).
    pub required: bool,
    /// The methods guarded (default `["POST", "PATCH"]`).
    pub methods: Vec<String>,
    /// `"reject"` (409 at once, the default) or `{ "wait": "10s" }`.
    pub conflict: Conflict,
    /// How long a claim holds a key at most (default 60 s).
    #[serde(with = "crate::config::duration")]
    pub lease: Duration,
    /// How long stored responses are replayed (default 24 h).
    #[serde(with = "crate::config::duration")]
    pub retention: Duration,
    /// The largest request body fingerprinted (default 1 MiB); larger ones get 413.
    pub max_request_bytes: u64,
    /// The largest response body stored (default 1 MiB).
    pub max_response_bytes: u64,
    /// Request headers that are part of the fingerprint (default none).
    pub fingerprint_headers: Vec<String>,
    /// Stored records at most (default 100 000).
    pub max_records: u64,
    /// Stored bytes at most (default 256 MiB).
    pub max_bytes: u64,
    /// Claims in flight at most; more are refused with 503 (default 10 000).
    pub max_in_flight: usize,
    /// What to do when the store fails: `fail_closed` (default, 503) or `fail_open`.
    pub on_store_error: FailurePolicy,
    /// Enforce, shadow or off (default enforce).
    pub mode: Mode,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            name: "idempotency".into(),
            header: "idempotency-key".into(),
            max_key_len: super::key::DEFAULT_MAX_KEY_LEN,
            required: false,
            methods: vec!["POST".into(), "PATCH".into()],
            conflict: Conflict::Reject,
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3600),
            max_request_bytes: 1 << 20,
            max_response_bytes: 1 << 20,
            fingerprint_headers: Vec::new(),
            max_records: 100_000,
            max_bytes: 256 << 20,
            max_in_flight: 10_000,
            on_store_error: FailurePolicy::FailClosed,
            mode: Mode::Enforce,
        }
    }
}

fn header(field: &'static str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::try_from(name)
        .map_err(|_| ConfigError::new(field, format!("{name:?} is not a header name")))
}

fn positive(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(field, "must be greater than zero"))
    } else {
        Ok(())
    }
}

impl IdempotencyConfig {
    /// The layer and its in-process store, after checking every field.
    pub fn build(&self) -> Result<IdempotencyLayer, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        let key_header = header("header", &self.header)?;
        if self.max_key_len == 0 {
            return Err(ConfigError::new("max_key_len", "must be at least 1"));
        }
        let methods = self
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| ConfigError::new("methods", format!("{m:?} is not a method")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Conflict::Wait(d) = self.conflict {
            positive("conflict", d)?;
        }
        positive("lease", self.lease)?;
        positive("retention", self.retention)?;
        let fingerprint_headers = self
            .fingerprint_headers
            .iter()
            .map(|h| header("fingerprint_headers", h))
            .collect::<Result<Vec<_>, _>>()?;
        for (field, v) in [
            ("max_request_bytes", self.max_request_bytes),
            ("max_records", self.max_records),
            ("max_bytes", self.max_bytes),
        ] {
            if v == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::new("max_in_flight", "must be at least 1"));
        }
        let store =
            MemoryStore::new(self.max_records, self.max_bytes).max_in_flight(self.max_in_flight);
        Ok(IdempotencyLayer::new()
            .key(IdempotencyKeyHeader::new(key_header).max_len(self.max_key_len))
            .name(self.name.as_str())
            .methods(methods)
            .required(self.required)
            .conflict(self.conflict)
            .lease(self.lease)
            .retention(self.retention)
            .max_request_bytes(self.max_request_bytes)
            .max_response_bytes(self.max_response_bytes)
            .fingerprint_headers(fingerprint_headers)
            .store(store)
            .on_store_error(self.on_store_error)
            .mode(self.mode))
    }
}
