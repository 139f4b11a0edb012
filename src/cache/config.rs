//! [`CacheConfig`]: the cache layer as data.

use std::time::Duration;

use super::layer::{CacheBuilder, CacheLayer};
use crate::error::ConfigError;

/// The cache layer's configuration, for config files, with an in-process store.
///
/// ```
/// use tower_parapet::cache::CacheConfig;
///
/// let config: CacheConfig = serde_json::from_str(r#"{
///     "ttl": "30s",
///     "stale_while_revalidate": "10s",
///     "stale_if_error": "10m",
///     "max_bytes": 16777216,
///     "key_headers": ["accept-language"],
///     "cache_status": "parapet"
/// }"#).unwrap();
/// let layer = config.build().unwrap();
/// # let _ = layer;
/// let bad: CacheConfig = serde_json::from_str(r#"{ "ttl": "0s" }"#).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "ttl");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// The name in events (default `"cache"`).
    pub name: String,
    /// How long a response is fresh when its `Cache-Control` does not say (default 60 s).
    #[serde(with = "crate::config::duration")]
    pub ttl: Duration,
    /// Drop entries not hit for this long (default: never).
    #[serde(with = "crate::config::duration::option")]
    pub time_to_idle: Option<Duration>,
    /// Entries at most (default 10 000).
    pub max_entries: u64,
    /// Bytes of responses at most: bodies, headers and keys (default 64 MiB).
    pub max_bytes: u64,
    /// Larger bodies are passed through uncached (default 1 MiB).
    pub max_body_bytes: u64,
    /// Serve stale for this long while one refresh runs in the background (default 0).
    #[serde(with = "crate::config::duration")]
    pub stale_while_revalidate: Duration,
    /// Serve stale for this long when the inner call fails (default 0).
    #[serde(with = "crate::config::duration")]
    pub stale_if_error: Duration,
    /// Ignore `Cache-Control` on responses (default false).
    pub ignore_cache_control: bool,
    /// Request headers that are part of the key, besides method, path and query.
    pub key_headers: Vec<String>,
    /// The cache's name in an RFC 9211 `Cache-Status` header (default: no header).
    pub cache_status: Option<String>,
    /// Cache requests carrying `Authorization` (default false: they pass through).
    pub allow_authorized: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            name: "cache".into(),
            ttl: Duration::from_secs(60),
            time_to_idle: None,
            max_entries: 10_000,
            max_bytes: 64 << 20,
            max_body_bytes: 1 << 20,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            ignore_cache_control: false,
            key_headers: Vec::new(),
            cache_status: None,
            allow_authorized: false,
        }
    }
}

impl CacheConfig {
    /// The layer and its in-process store, after checking every field.
    pub fn build(&self) -> Result<CacheLayer, ConfigError> {
        self.builder().build()
    }

    /// A builder starting from this configuration (to add an observer, a store, a clock).
    pub fn builder(&self) -> CacheBuilder {
        CacheBuilder::from_config(self.clone())
    }
}
