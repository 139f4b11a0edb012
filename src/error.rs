//! The rejection type every layer returns, and configuration errors.
//!
//! Every parapet service has `Error = BoxError`. When a layer refuses a request it returns a
//! boxed [`Rejection`]; errors of the inner service pass through untouched (boxed, never
//! wrapped). So however many layers are stacked, and in whatever order, telling a timeout
//! from an open circuit is one downcast:
//!
//! ```
//! use tower_parapet::{BoxError, Rejection, RejectionKind};
//!
//! fn describe(err: &BoxError) -> &'static str {
//!     match Rejection::from_box(err) {
//!         Some(Rejection::Timeout { .. }) => "too slow",
//!         Some(r) if r.kind() == RejectionKind::RateLimited => "slow down",
//!         Some(_) => "refused",
//!         None => "the inner service failed",
//!     }
//! }
//! # let err: BoxError = "boom".into();
//! # assert_eq!(describe(&err), "the inner service failed");
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The error type of every parapet service: the inner service's error or a [`Rejection`],
/// boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A request refused by a parapet layer.
///
/// Variants are `#[non_exhaustive]`: match them with `..` and build them (in a layer of
/// your own) with the constructor functions such as [`Rejection::timeout`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The request did not complete within its deadline.
    #[error("request timed out after {after:?}")]
    #[non_exhaustive]
    Timeout {
        /// The deadline that expired, measured from when the call started.
        after: Duration,
    },
    /// A circuit breaker is open and refuses calls to a failing dependency.
    #[error("circuit breaker `{name}` is open")]
    #[non_exhaustive]
    CircuitOpen {
        /// The breaker's name.
        name: Arc<str>,
        /// How long until the breaker lets a probe call through, if known.
        retry_after: Option<Duration>,
    },
    /// A rate limit refused the request.
    #[error("rate limit exceeded")]
    #[non_exhaustive]
    RateLimited {
        /// How long until a request with the same key would be admitted.
        retry_after: Duration,
        /// The quota that refused it, for the `RateLimit` response fields.
        policy: Option<RateLimitInfo>,
    },
    /// The service is at its concurrency limit (bulkhead, load shedding).
    #[error("service overloaded")]
    #[non_exhaustive]
    Overloaded {
        /// A hint of when to retry, if the layer has one.
        retry_after: Option<Duration>,
    },
    /// A feature flag guarding the route is off.
    #[error("feature `{flag}` is disabled")]
    #[non_exhaustive]
    FeatureDisabled {
        /// The flag's name.
        flag: Arc<str>,
    },
    /// The request needs an `Idempotency-Key` and has none.
    #[error("idempotency key is missing")]
    #[non_exhaustive]
    IdempotencyKeyMissing {},
    /// The `Idempotency-Key` is malformed or too long.
    #[error("idempotency key is invalid: {reason}")]
    #[non_exhaustive]
    IdempotencyKeyInvalid {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A request with the same idempotency key is still being processed.
    #[error("a request with this idempotency key is still in flight")]
    #[non_exhaustive]
    IdempotencyInFlight {
        /// A hint of when the first request is expected to finish.
        retry_after: Option<Duration>,
    },
    /// The idempotency key was already used with a different request payload.
    #[error("idempotency key was reused with a different request")]
    #[non_exhaustive]
    IdempotencyMismatch {},
    /// The request body is larger than a layer that must read it (e.g. to fingerprint it)
    /// accepts.
    #[error("request body is larger than {limit} bytes")]
    #[non_exhaustive]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
}

/// The quota behind a [`Rejection::RateLimited`], in the terms of the IETF RateLimit header
/// fields (`RateLimit-Policy: "name";q=100;w=60`, `RateLimit: "name";r=0;t=45`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// The policy's name (the field's key).
    pub policy: Arc<str>,
    /// Requests allowed per window (`q`).
    pub quota: u64,
    /// The window (`w`).
    pub window: Duration,
    /// Requests left in the current window (`r`).
    pub remaining: u64,
    /// Time until the quota is restored (`t`).
    pub reset: Duration,
}

/// The kind of a [`Rejection`], for metrics labels and configuration tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectionKind {
    /// [`Rejection::Timeout`].
    Timeout,
    /// [`Rejection::CircuitOpen`].
    CircuitOpen,
    /// [`Rejection::RateLimited`].
    RateLimited,
    /// [`Rejection::Overloaded`].
    Overloaded,
    /// [`Rejection::FeatureDisabled`].
    FeatureDisabled,
    /// [`Rejection::IdempotencyKeyMissing`].
    IdempotencyKeyMissing,
    /// [`Rejection::IdempotencyKeyInvalid`].
    IdempotencyKeyInvalid,
    /// [`Rejection::IdempotencyInFlight`].
    IdempotencyInFlight,
    /// [`Rejection::IdempotencyMismatch`].
    IdempotencyMismatch,
    /// [`Rejection::PayloadTooLarge`].
    PayloadTooLarge,
}

impl RejectionKind {
    /// Every kind, in declaration order.
    pub const ALL: [RejectionKind; 10] = [
        RejectionKind::Timeout,
        RejectionKind::CircuitOpen,
        RejectionKind::RateLimited,
        RejectionKind::Overloaded,
        RejectionKind::FeatureDisabled,
        RejectionKind::IdempotencyKeyMissing,
        RejectionKind::IdempotencyKeyInvalid,
        RejectionKind::IdempotencyInFlight,
        RejectionKind::IdempotencyMismatch,
        RejectionKind::PayloadTooLarge,
    ];

    /// A stable `snake_case` name, used as a metrics label and in log fields.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectionKind::Timeout => "timeout",
            RejectionKind::CircuitOpen => "circuit_open",
            RejectionKind::RateLimited => "rate_limited",
            RejectionKind::Overloaded => "overloaded",
            RejectionKind::FeatureDisabled => "feature_disabled",
            RejectionKind::IdempotencyKeyMissing => "idempotency_key_missing",
            RejectionKind::IdempotencyKeyInvalid => "idempotency_key_invalid",
            RejectionKind::IdempotencyInFlight => "idempotency_in_flight",
            RejectionKind::IdempotencyMismatch => "idempotency_mismatch",
            RejectionKind::PayloadTooLarge => "payload_too_large",
        }
    }

    pub(crate) const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`RejectionKind`]s, e.g. the rejections a fallback answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RejectionKinds(u16);

impl RejectionKinds {
    /// No kind.
    pub const NONE: RejectionKinds = RejectionKinds(0);
    /// Every kind.
    pub const ALL: RejectionKinds = RejectionKinds((1 << RejectionKind::ALL.len()) - 1);

    /// A set of the given kinds.
    pub const fn of(kinds: &[RejectionKind]) -> RejectionKinds {
        let mut bits = 0;
        let mut i = 0;
        while i < kinds.len() {
            bits |= kinds[i].bit();
            i += 1;
        }
        RejectionKinds(bits)
    }

    /// This set plus `kind`.
    #[must_use]
    pub const fn with(self, kind: RejectionKind) -> RejectionKinds {
        RejectionKinds(self.0 | kind.bit())
    }

    /// This set without `kind`.
    #[must_use]
    pub const fn without(self, kind: RejectionKind) -> RejectionKinds {
        RejectionKinds(self.0 & !kind.bit())
    }

    /// Whether `kind` is in the set.
    pub const fn contains(self, kind: RejectionKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

impl FromIterator<RejectionKind> for RejectionKinds {
    fn from_iter<I: IntoIterator<Item = RejectionKind>>(iter: I) -> Self {
        iter.into_iter()
            .fold(RejectionKinds::NONE, RejectionKinds::with)
    }
}

impl Rejection {
    /// A [`Rejection::Timeout`].
    pub const fn timeout(after: Duration) -> Rejection {
        Rejection::Timeout { after }
    }

    /// A [`Rejection::CircuitOpen`].
    pub fn circuit_open(name: impl Into<Arc<str>>, retry_after: Option<Duration>) -> Rejection {
        Rejection::CircuitOpen {
            name: name.into(),
            retry_after,
        }
    }

    /// A [`Rejection::RateLimited`].
    pub const fn rate_limited(retry_after: Duration, policy: Option<RateLimitInfo>) -> Rejection {
        Rejection::RateLimited {
            retry_after,
            policy,
        }
    }

    /// A [`Rejection::Overloaded`].
    pub const fn overloaded(retry_after: Option<Duration>) -> Rejection {
        Rejection::Overloaded { retry_after }
    }

    /// A [`Rejection::FeatureDisabled`].
    pub fn feature_disabled(flag: impl Into<Arc<str>>) -> Rejection {
        Rejection::FeatureDisabled { flag: flag.into() }
    }

    /// A [`Rejection::IdempotencyKeyMissing`].
    pub const fn idempotency_key_missing() -> Rejection {
        Rejection::IdempotencyKeyMissing {}
    }

    /// A [`Rejection::IdempotencyKeyInvalid`].
    pub const fn idempotency_key_invalid(reason: &'static str) -> Rejection {
        Rejection::IdempotencyKeyInvalid { reason }
    }

    /// A [`Rejection::IdempotencyInFlight`].
    pub const fn idempotency_in_flight(retry_after: Option<Duration>) -> Rejection {
        Rejection::IdempotencyInFlight { retry_after }
    }

    /// A [`Rejection::IdempotencyMismatch`].
    pub const fn idempotency_mismatch() -> Rejection {
        Rejection::IdempotencyMismatch {}
    }

    /// A [`Rejection::PayloadTooLarge`].
    pub const fn payload_too_large(limit: u64) -> Rejection {
        Rejection::PayloadTooLarge { limit }
    }

    /// The kind of this rejection.
    pub const fn kind(&self) -> RejectionKind {
        match self {
            Rejection::Timeout { .. } => RejectionKind::Timeout,
            Rejection::CircuitOpen { .. } => RejectionKind::CircuitOpen,
            Rejection::RateLimited { .. } => RejectionKind::RateLimited,
            Rejection::Overloaded { .. } => RejectionKind::Overloaded,
            Rejection::FeatureDisabled { .. } => RejectionKind::FeatureDisabled,
            Rejection::IdempotencyKeyMissing {} => RejectionKind::IdempotencyKeyMissing,
            Rejection::IdempotencyKeyInvalid { .. } => RejectionKind::IdempotencyKeyInvalid,
            Rejection::IdempotencyInFlight { .. } => RejectionKind::IdempotencyInFlight,
            Rejection::IdempotencyMismatch {} => RejectionKind::IdempotencyMismatch,
            Rejection::PayloadTooLarge { .. } => RejectionKind::PayloadTooLarge,
        }
    }

    /// When the client may try again, if the rejection says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejection::CircuitOpen { retry_after, .. }
            | Rejection::Overloaded { retry_after }
            | Rejection::IdempotencyInFlight { retry_after } => *retry_after,
            Rejection::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The rejection inside a boxed error, if it is one.
    pub fn from_box(err: &BoxError) -> Option<&Rejection> {
        err.downcast_ref::<Rejection>()
    }

    /// The rejection behind any error, if it is one.
    pub fn from_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Rejection> {
        err.downcast_ref::<Rejection>()
    }

    /// Box this rejection as a service error.
    pub fn boxed(self) -> BoxError {
        Box::new(self)
    }
}

/// A configuration value that does not make sense. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct ConfigError {
    field: &'static str,
    reason: Cow<'static, str>,
}

impl ConfigError {
    /// A configuration error for `field`.
    pub fn new(field: &'static str, reason: impl Into<Cow<'static, str>>) -> ConfigError {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }

    /// The offending field, as named in the config struct.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_sets() {
        let set = RejectionKinds::of(&[RejectionKind::Timeout, RejectionKind::CircuitOpen]);
        assert!(set.contains(RejectionKind::Timeout));
        assert!(set.contains(RejectionKind::CircuitOpen));
        assert!(!set.contains(RejectionKind::RateLimited));
        for kind in RejectionKind::ALL {
            assert!(RejectionKinds::ALL.contains(kind));
            assert!(!RejectionKinds::NONE.contains(kind));
            assert!(!RejectionKinds::ALL.without(kind).contains(kind));
        }
    }

    #[test]
    fn rejection_survives_boxing() {
        let err = Rejection::circuit_open("db", Some(Duration::from_secs(3))).boxed();
        let r = Rejection::from_box(&err).expect("a rejection");
        assert_eq!(r.kind(), RejectionKind::CircuitOpen);
        assert_eq!(r.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(err.to_string(), "circuit breaker `db` is open");
        let other: BoxError = "io".into();
        assert!(Rejection::from_box(&other).is_none());
    }

    #[test]
    fn config_error_names_the_field() {
        let e = ConfigError::new("timeout", "must be greater than zero");
        assert_eq!(
            e.to_string(),
            "invalid `timeout`: must be greater than zero"
        );
        assert_eq!(e.field(), "timeout");
    }
}
