//! [`RateLimitConfig`]: the rate limit layer as data.

use std::time::Duration;

use super::layer::{DEFAULT_MAX_KEYS, MissingKey, RateLimitLayer};
use super::quota::Quota;
use crate::error::ConfigError;
use crate::mode::Mode;

/// The rate limit layer's configuration, for config files.
///
/// ```
/// # #[cfg(feature = "http")] {
/// use tower_parapet::rate_limit::RateLimitConfig;
///
/// let config: RateLimitConfig = serde_json::from_str(r#"{
///     "quotas": [
///         { "count": 10, "per": "1s", "burst": 20 },
///         { "count": 10000, "per": "24h", "name": "daily" }
///     ],
///     "key": { "by": "client_ip", "trusted_proxies": ["10.0.0.0/8"], "ipv6_prefix": 64 },
///     "max_keys": 50000,
///     "headers_on_admitted": true
/// }"#).unwrap();
/// let layer = config.build().unwrap();
/// assert_eq!(layer.quotas()[1].name(), "daily");
///
/// let bad: RateLimitConfig = serde_json::from_str(
///     r#"{ "quotas": [{ "count": 0, "per": "1s" }] }"#,
/// ).unwrap();
/// assert_eq!(bad.build().unwrap_err().field(), "quotas.count");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The quotas; a request is admitted only when all of them admit it. At least one.
    pub quotas: Vec<QuotaConfig>,
    /// What a request is counted against (default: one global quota).
    #[serde(default)]
    pub key: KeyConfig,
    /// The name in events (default `"rate_limit"`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Enforce, shadow or off (default enforce).
    #[serde(default)]
    pub mode: Mode,
    /// The most keys tracked (default 100 000, at least 1).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Hold a refused request up to this long when the quota admits it by then (default
    /// `"0s"`: refuse at once).
    #[serde(default, with = "crate::config::duration")]
    pub max_wait: Duration,
    /// What to do with requests whose key cannot be read (default `"shared"`).
    #[serde(default)]
    pub missing_key: MissingKey,
    /// Add the `RateLimit` fields to admitted responses too (default false).
    #[cfg(feature = "http")]
    #[serde(default)]
    pub headers_on_admitted: bool,
}

/// One quota: `count` requests `per` period.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Requests per period (at least 1).
    pub count: u32,
    /// The period (`"1s"`, `"1m"`, `"24h"`).
    #[serde(with = "crate::config::duration")]
    pub per: Duration,
    /// The most requests at once (default `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// The policy's name in response fields and events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum KeyConfig {
    /// One quota for every request.
    #[default]
    Global,
    /// The connection's peer address ([`PeerIp`](crate::key::PeerIp)).
    #[cfg(feature = "http")]
    PeerIp {
        /// Group IPv6 addresses by this many leading bits (e.g. 64).
        #[serde(default)]
        ipv6_prefix: Option<u8>,
    },
    /// The client's address behind trusted proxies ([`ClientIp`](crate::key::ClientIp)).
    #[cfg(feature = "http")]
    ClientIp {
        /// The proxies' CIDR blocks (`"10.0.0.0/8"`, `"::1"`).
        trusted_proxies: Vec<String>,
        /// `"x-forwarded-for"` (default), `"forwarded"` (RFC 7239), or another header in
        /// `X-Forwarded-For` syntax.
        #[serde(default)]
        header: Option<String>,
        /// Group IPv6 addresses by this many leading bits (e.g. 64).
        #[serde(default)]
        ipv6_prefix: Option<u8>,
    },
    /// A header's value, e.g. an API key ([`Header`](crate::key::Header)).
    #[cfg(feature = "http")]
    Header {
        /// The header's name.
        name: String,
        /// The longest value accepted (default 256 bytes).
        #[serde(default)]
        max_len: Option<usize>,
    },
    /// Method, path and query ([`Target`](crate::key::Target)).
    #[cfg(feature = "http")]
    Route,
}

fn default_name() -> String {
    "rate_limit".into()
}

fn default_max_keys() -> usize {
    DEFAULT_MAX_KEYS
}

impl RateLimitConfig {
    /// A config with `quotas` and every other field at its default.
    pub fn new(quotas: Vec<QuotaConfig>) -> RateLimitConfig {
        RateLimitConfig {
            quotas,
            key: KeyConfig::default(),
            name: default_name(),
            mode: Mode::default(),
            max_keys: DEFAULT_MAX_KEYS,
            max_wait: Duration::ZERO,
            missing_key: MissingKey::default(),
            #[cfg(feature = "http")]
            headers_on_admitted: false,
        }
    }

    fn quotas(&self) -> Result<Vec<Quota>, ConfigError> {
        if self.quotas.is_empty() {
            return Err(ConfigError::new("quotas", "at least one quota is needed"));
        }
        self.quotas
            .iter()
            .map(|q| {
                let prefixed = |e: ConfigError| {
                    let field = match e.field() {
                        "count" => "quotas.count",
                        "period" => "quotas.per",
                        _ => "quotas.burst",
                    };
                    ConfigError::new(field, e.reason().to_owned())
                };
                let mut quota = Quota::try_new(q.count, q.per).map_err(prefixed)?;
                if let Some(burst) = q.burst {
                    quota = quota.try_burst(burst).map_err(prefixed)?;
                }
                if let Some(name) = &q.name {
                    if name.is_empty() {
                        return Err(ConfigError::new("quotas.name", "must not be empty"));
                    }
                    quota = quota.named(name.as_str());
                }
                Ok(quota)
            })
            .collect()
    }

    fn finish<K, W, H>(
        &self,
        mut layer: RateLimitLayer<K, W, H>,
        quotas: Vec<Quota>,
    ) -> Result<RateLimitLayer<K, W, H>, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        for q in quotas.into_iter().skip(1) {
            layer = layer.quota(q);
        }
        Ok(layer
            .name(self.name.as_str())
            .mode(self.mode)
            .max_keys(self.max_keys)
            .max_wait(self.max_wait)
            .missing_key(self.missing_key))
    }

    /// The layer, after checking every field.
    #[cfg(feature = "http")]
    pub fn build(
        &self,
    ) -> Result<RateLimitLayer<ConfiguredKey, super::One, super::RateLimitHeaders>, ConfigError>
    {
        let quotas = self.quotas()?;
        let first = quotas[0].clone();
        let key = self.key_extractor()?;
        let layer = match key {
            ConfiguredKey::Global => RateLimitLayer::new(first).key(ConfiguredKey::Global),
            key => RateLimitLayer::keyed(key, first),
        };
        let layer = layer.on_admitted(super::RateLimitHeaders::enabled(self.headers_on_admitted));
        self.finish(layer, quotas)
    }

    /// The layer, after checking every field.
    #[cfg(not(feature = "http"))]
    pub fn build(&self) -> Result<RateLimitLayer, ConfigError> {
        let quotas = self.quotas()?;
        let layer = RateLimitLayer::new(quotas[0].clone());
        self.finish(layer, quotas)
    }

    #[cfg(feature = "http")]
    fn key_extractor(&self) -> Result<ConfiguredKey, ConfigError> {
        use crate::key::{ClientIp, Header, PeerIp, Target};
        let prefix = |bits: Option<u8>| match bits {
            Some(b) if b > 128 => Err(ConfigError::new("key.ipv6_prefix", "at most 128")),
            _ => Ok(bits),
        };
        let header_name = |field: &'static str, name: &str| {
            http::HeaderName::try_from(name)
                .map_err(|_| ConfigError::new(field, format!("{name:?} is not a header name")))
        };
        Ok(match &self.key {
            KeyConfig::Global => ConfiguredKey::Global,
            KeyConfig::PeerIp { ipv6_prefix } => {
                let mut key = PeerIp::new();
                if let Some(bits) = prefix(*ipv6_prefix)? {
                    key = key.ipv6_prefix(bits);
                }
                ConfiguredKey::PeerIp(key)
            }
            KeyConfig::ClientIp {
                trusted_proxies,
                header,
                ipv6_prefix,
            } => {
                let mut key = ClientIp::trusting(trusted_proxies)
                    .map_err(|e| ConfigError::new("key.trusted_proxies", e.to_string()))?;
                match header.as_deref() {
                    None => {}
                    Some(h) if h.eq_ignore_ascii_case("forwarded") => key = key.forwarded(),
                    Some(h) => key = key.x_forwarded_for(header_name("key.header", h)?),
                }
                if let Some(bits) = prefix(*ipv6_prefix)? {
                    key = key.ipv6_prefix(bits);
                }
                ConfiguredKey::ClientIp(key)
            }
            KeyConfig::Header { name, max_len } => {
                let mut key = Header::new(header_name("key.name", name)?);
                if let Some(max) = max_len {
                    key = key.max_len(*max);
                }
                ConfiguredKey::Header(key)
            }
            KeyConfig::Route => ConfiguredKey::Route(Target::new()),
        })
    }
}

#[cfg(feature = "http")]
pub use self::configured::{ConfiguredKey, KeyValue};

#[cfg(feature = "http")]
mod configured {
    use std::net::IpAddr;

    use http::{Method, Request};

    use crate::key::{ClientIp, Header, KeyError, KeyExtractor, PeerIp, Target};

    /// The key extractor a [`RateLimitConfig`](super::RateLimitConfig) chose.
    #[derive(Debug, Clone)]
    #[non_exhaustive]
    pub enum ConfiguredKey {
        /// One quota for everything.
        Global,
        /// [`PeerIp`].
        PeerIp(PeerIp),
        /// [`ClientIp`].
        ClientIp(ClientIp),
        /// [`Header`].
        Header(Header),
        /// [`Target`].
        Route(Target),
    }

    /// The key read by a [`ConfiguredKey`].
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum KeyValue {
        /// The global key.
        Global,
        /// An IP address (or IPv6 prefix).
        Ip(IpAddr),
        /// A header's value.
        Text(String),
        /// Method and target.
        Route(Method, String),
    }

    impl<B> KeyExtractor<Request<B>> for ConfiguredKey {
        type Key = KeyValue;

        fn extract(&self, req: &Request<B>) -> Result<KeyValue, KeyError> {
            Ok(match self {
                ConfiguredKey::Global => KeyValue::Global,
                ConfiguredKey::PeerIp(k) => KeyValue::Ip(k.extract(req)?),
                ConfiguredKey::ClientIp(k) => KeyValue::Ip(k.extract(req)?),
                ConfiguredKey::Header(k) => KeyValue::Text(k.extract(req)?),
                ConfiguredKey::Route(k) => {
                    let (m, t) = k.extract(req)?;
                    KeyValue::Route(m, t)
                }
            })
        }

        fn class(&self) -> &'static str {
            match self {
                ConfiguredKey::Global => "global",
                ConfiguredKey::PeerIp(_) | ConfiguredKey::ClientIp(_) => "ip",
                ConfiguredKey::Header(_) => "header",
                ConfiguredKey::Route(_) => "route",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json(json: &str) -> RateLimitConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_and_round_trip() {
        let c = from_json(r#"{ "quotas": [{ "count": 5, "per": "1s" }] }"#);
        assert_eq!(c.name, "rate_limit");
        assert_eq!(c.key, KeyConfig::Global);
        assert_eq!(c.max_keys, 100_000);
        assert_eq!(c.max_wait, Duration::ZERO);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""per":"1s""#), "{json}");
        assert!(json.contains(r#""max_wait":"0s""#), "{json}");
        assert_eq!(from_json(&json), c);
        assert!(c.build().is_ok());
        assert!(
            serde_json::from_str::<RateLimitConfig>(r#"{ "quotas": [{ "count": 5, "per": 1 }] }"#)
                .is_err(),
            "a bare number has no unit"
        );
        assert!(
            serde_json::from_str::<RateLimitConfig>(
                r#"{ "quotas": [{ "count": 5, "per": "1s" }], "max_key": 3 }"#
            )
            .is_err(),
            "typos are caught"
        );
    }

    #[test]
    fn build_names_the_bad_field() {
        let field = |json: &str| from_json(json).build().unwrap_err().field();
        assert_eq!(field(r#"{ "quotas": [] }"#), "quotas");
        assert_eq!(
            field(r#"{ "quotas": [{ "count": 0, "per": "1s" }] }"#),
            "quotas.count"
        );
        assert_eq!(
            field(r#"{ "quotas": [{ "count": 1, "per": "0s" }] }"#),
            "quotas.per"
        );
        assert_eq!(
            field(r#"{ "quotas": [{ "count": 1, "per": "1s", "burst": 0 }] }"#),
            "quotas.burst"
        );
        assert_eq!(
            field(r#"{ "quotas": [{ "count": 1, "per": "1s", "name": "" }] }"#),
            "quotas.name"
        );
        assert_eq!(
            field(r#"{ "quotas": [{ "count": 1, "per": "1s" }], "name": "" }"#),
            "name"
        );
        assert_eq!(
            field(r#"{ "quotas": [{ "count": 1, "per": "1s" }], "max_keys": 0 }"#),
            "max_keys"
        );
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_keys() {
        let field = |json: &str| from_json(json).build().unwrap_err().field();
        let q = r#""quotas": [{ "count": 1, "per": "1s" }]"#;
        assert_eq!(
            field(&format!(
                r#"{{ {q}, "key": {{ "by": "client_ip", "trusted_proxies": ["10.0.0.1/8"] }} }}"#
            )),
            "key.trusted_proxies"
        );
        assert_eq!(
            field(&format!(
                r#"{{ {q}, "key": {{ "by": "client_ip", "trusted_proxies": [], "header": "a b" }} }}"#
            )),
            "key.header"
        );
        assert_eq!(
            field(&format!(
                r#"{{ {q}, "key": {{ "by": "peer_ip", "ipv6_prefix": 129 }} }}"#
            )),
            "key.ipv6_prefix"
        );
        assert_eq!(
            field(&format!(
                r#"{{ {q}, "key": {{ "by": "header", "name": "" }} }}"#
            )),
            "key.name"
        );
        for key in [
            r#"{ "by": "global" }"#,
            r#"{ "by": "peer_ip" }"#,
            r#"{ "by": "client_ip", "trusted_proxies": ["::1"], "header": "Forwarded" }"#,
            r#"{ "by": "header", "name": "x-api-key", "max_len": 64 }"#,
            r#"{ "by": "route" }"#,
        ] {
            let c = from_json(&format!(r#"{{ {q}, "key": {key} }}"#));
            assert!(c.build().is_ok(), "{key}");
            assert_eq!(from_json(&serde_json::to_string(&c).unwrap()), c);
        }
    }
}
