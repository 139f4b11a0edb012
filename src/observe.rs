//! Every decision is observable (contract 5): the [`Event`] enum and the [`Observer`] trait.
//!
//! Each layer reports its decisions (a timeout fired, a caller's deadline applied, a
//! fallback served) as one [`Event`] to its observer. The default observer,
//! [`TracingObserver`], writes a `tracing` event with stable field names:
//!
//! | field | meaning |
//! |---|---|
//! | `layer` | `"timeout"`, `"fallback"`, `"circuit_breaker"`, `"idempotency"`, `"feature_gate"`, `"flags"`, `"admin"`, `"http"`, `"retry"`, `"bulkhead"`, `"cache"`, ... ([`Event::layer`]) |
//! | `name` | the layer instance's configured name ([`Event::name`]) |
//! | `outcome` | what was decided, e.g. `"timed_out"` ([`Event::outcome`]) |
//! | `key` | the request's key, where the layer has one |
//! | `state` | the layer's state, where it has one (`"shadow"` for shadow decisions) |
//! | `retry_after_ms` | the retry hint given to the client, where there is one |
//!
//! plus fields particular to the event (`after_ms`, `source`, `trigger`, `header`). With
//! no `tracing` subscriber installed this costs a relaxed atomic load per event; `()` is an
//! observer that does nothing at all. With the `metrics` feature the default observer is
//! the pair `(TracingObserver, MetricsObserver)`: it also counts every event (see the crate
//! docs' metrics table). Closures `Fn(&Event<'_>)` are observers, and a pair
//! `(A, B)` reports to both.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use tower_parapet::observe::{Event, Observer, TracingObserver};
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let sink = seen.clone();
//! let observer = (TracingObserver::default(), move |e: &Event<'_>| {
//!     sink.lock().unwrap().push(e.outcome());
//! });
//! observer.on_event(&Event::TimedOut {
//!     name: "db",
//!     after: std::time::Duration::from_secs(1),
//!     shadow: false,
//! });
//! assert_eq!(*seen.lock().unwrap(), ["timed_out"]);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::RejectionKind;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use crate::metrics_observer::MetricsObserver;

/// One decision of one layer.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The timeout layer's deadline expired. With `shadow` set the layer is in shadow mode
    /// and let the call go on.
    TimedOut {
        /// The layer's name.
        name: &'a str,
        /// The deadline that expired.
        after: Duration,
        /// Whether this was only reported (shadow mode).
        shadow: bool,
    },
    /// The caller's deadline (e.g. `grpc-timeout`) was shorter than the configured timeout
    /// and replaced it.
    DeadlineShortened {
        /// The layer's name.
        name: &'a str,
        /// The configured timeout.
        configured: Duration,
        /// The caller's remaining budget, now in force.
        caller: Duration,
    },
    /// A deadline header could not be parsed and was ignored.
    DeadlineMalformed {
        /// The layer's name.
        name: &'a str,
        /// The header's name.
        header: &'a str,
    },
    /// A fallback answered in place of a failed call.
    FallbackServed {
        /// The layer's name.
        name: &'a str,
        /// Where the answer came from: `"value"`, `"function"`, `"last_known_good"`, ...
        source: &'static str,
        /// What failed ([`Trigger`]).
        trigger: Trigger,
        /// The request's key, for keyed sources.
        key: Option<&'a dyn fmt::Debug>,
    },
    /// A fallback was due but its source had nothing to give (e.g. no last known good
    /// response for the key) or failed itself; the original failure is returned.
    FallbackUnavailable {
        /// The layer's name.
        name: &'a str,
        /// The source that had nothing.
        source: &'static str,
        /// What failed.
        trigger: Trigger,
        /// The request's key, for keyed sources.
        key: Option<&'a dyn fmt::Debug>,
    },
    /// A successful response was kept as the last known good answer for its key.
    LastKnownGoodStored {
        /// The layer's name.
        name: &'a str,
        /// The request's key.
        key: &'a dyn fmt::Debug,
    },
    /// A successful response could not be kept as last known good (e.g. its body is larger
    /// than the configured limit, or of unknown size). It was passed on untouched.
    LastKnownGoodSkipped {
        /// The layer's name.
        name: &'a str,
        /// Why.
        reason: &'static str,
    },
    /// A circuit breaker changed state.
    CircuitStateChanged {
        /// The breaker's name.
        name: &'a str,
        /// The breaker's key, for keyed breakers.
        key: Option<&'a dyn fmt::Debug>,
        /// The state it left.
        from: crate::circuit_breaker::State,
        /// The state it entered.
        to: crate::circuit_breaker::State,
        /// For a trip: the failure rate (percent) that caused it.
        failure_rate: Option<f32>,
        /// For a trip: the slow-call rate (percent) at the time.
        slow_call_rate: Option<f32>,
        /// On opening: how long until probes go through.
        retry_after: Option<Duration>,
    },
    /// A circuit breaker refused a call (or, in shadow mode, would have).
    CircuitRejected {
        /// The breaker's name.
        name: &'a str,
        /// The breaker's key, for keyed breakers.
        key: Option<&'a dyn fmt::Debug>,
        /// The state that refused it: open, half-open (no probe slot free) or forced open.
        state: crate::circuit_breaker::State,
        /// The retry hint given to the client.
        retry_after: Option<Duration>,
        /// Whether the call went through anyway (shadow mode).
        shadow: bool,
    },
    /// A metrics-only circuit breaker crossed a threshold that would have tripped it.
    CircuitThresholdExceeded {
        /// The breaker's name.
        name: &'a str,
        /// The breaker's key, for keyed breakers.
        key: Option<&'a dyn fmt::Debug>,
        /// The failure rate (percent).
        failure_rate: Option<f32>,
        /// The slow-call rate (percent).
        slow_call_rate: Option<f32>,
    },
    /// A finished request's stored response answered a retry with the same idempotency key.
    IdempotencyReplayed {
        /// The layer's name.
        name: &'a str,
        /// The client's idempotency key.
        key: &'a str,
        /// Whether the retry arrived while the first request ran and waited for it.
        waited: bool,
    },
    /// The idempotency layer refused a request (missing or malformed key, key in flight,
    /// key reused with another payload, body too large), or in shadow mode would have
    /// refused or replayed it.
    IdempotencyRejected {
        /// The layer's name.
        name: &'a str,
        /// The client's idempotency key, when it could be read.
        key: Option<&'a str>,
        /// Why.
        kind: RejectionKind,
        /// Whether the request went on anyway (shadow mode).
        shadow: bool,
    },
    /// A response was stored for replay under its idempotency key.
    IdempotencyStored {
        /// The layer's name.
        name: &'a str,
        /// The client's idempotency key.
        key: &'a str,
        /// The stored size in bytes.
        bytes: usize,
    },
    /// A claimed idempotency key was freed without a stored response, so the client may
    /// retry: the handler failed, was dropped or panicked, or its response was not to be
    /// stored (status, size).
    IdempotencyReleased {
        /// The layer's name.
        name: &'a str,
        /// The client's idempotency key.
        key: &'a str,
        /// Why.
        reason: &'static str,
    },
    /// The rate limiter refused a request (one event per refusal). With `shadow` set the
    /// layer is in shadow mode and let it through ("would have rejected").
    RateLimited {
        /// The layer's name.
        name: &'a str,
        /// The key's class (`"ip"`, `"header"`, `"global"`...): a safe metrics label.
        class: &'static str,
        /// The request's key, for logs only (never a metrics label); `None` for unkeyed
        /// limits and for refusals after a wait.
        key: Option<&'a dyn fmt::Debug>,
        /// The name of the quota that refused.
        policy: &'a str,
        /// How long until the quota admits a request like it.
        retry_after: Duration,
        /// Whether this was only reported (shadow mode).
        shadow: bool,
    },
    /// The rate limiter held a request until its quota admitted it (`max_wait`).
    RateLimitDelayed {
        /// The layer's name.
        name: &'a str,
        /// The key's class.
        class: &'static str,
        /// How long it was held.
        waited: Duration,
    },
    /// A keyed rate limiter was full and forgot a key whose quota was still in use, to make
    /// room for a new one (that key's quota starts afresh).
    RateLimitKeyEvicted {
        /// The layer's name.
        name: &'a str,
        /// The key's class.
        class: &'static str,
    },
    /// The edge adapter turned an error of the inner service (not a rejection) into an
    /// internal-error answer. The error text is logged here and never sent to the client.
    InternalError {
        /// The adapter's name.
        name: &'a str,
        /// The error, with its `source()` chain.
        error: &'a (dyn std::error::Error + 'static),
    },
    /// A feature gate found its flag off and answered for the feature (rejected it,
    /// answered with its configured response, or routed the request to the alternate
    /// service); with `shadow` set the request reached the feature anyway.
    FeatureGated {
        /// The gate's name.
        name: &'a str,
        /// The flag.
        flag: &'a str,
        /// The variant served (`None` when the evaluation failed).
        variant: Option<&'a str>,
        /// Why the flag had that value.
        reason: crate::flags::Reason,
        /// What the gate did, or in shadow mode would have done.
        action: crate::flags::GateAction,
        /// Whether this was only reported (shadow mode).
        shadow: bool,
    },
    /// A flag could not be evaluated (missing flag, bad context, wrong type): the caller's
    /// default was used.
    FlagEvaluationFailed {
        /// The gate's or the flag store's name.
        name: &'a str,
        /// The flag.
        flag: &'a str,
        /// What went wrong.
        error: crate::flags::ErrorCode,
    },
    /// A flag was created, changed, switched off or on, or removed.
    FlagChanged {
        /// The flag store's name.
        name: &'a str,
        /// The flag.
        flag: &'a str,
        /// `"created"`, `"updated"`, `"killed"`, `"enabled"` or `"removed"`.
        change: &'static str,
        /// Who made the change (an admin's principal, a file's path, `"api"`).
        by: &'a str,
    },
    /// A flag source (a file) was read and its flags applied.
    FlagSourceReloaded {
        /// The flag store's name.
        name: &'a str,
        /// The source (the file's path).
        source: &'a str,
        /// How many flags it defines.
        flags: usize,
    },
    /// A flag source could not be read or holds invalid flags: the last good flags stay.
    FlagSourceFailed {
        /// The flag store's name.
        name: &'a str,
        /// The source (the file's path).
        source: &'a str,
        /// What is wrong.
        error: &'a (dyn std::error::Error + 'static),
    },
    /// A layer's mode bound to a flag followed the flag's change.
    ModeChanged {
        /// The flag store's name.
        name: &'a str,
        /// The flag the mode is bound to.
        flag: &'a str,
        /// The previous mode.
        from: crate::Mode,
        /// The new mode.
        to: crate::Mode,
    },
    /// An operator changed something through the admin router (a breaker forced, a mode
    /// switched). Flag changes are [`Event::FlagChanged`] with the operator as `by`.
    AdminChanged {
        /// The admin router's name.
        name: &'a str,
        /// What was changed, e.g. `"breaker/inventory"`, `"mode/limiter"`.
        target: &'a str,
        /// What was done, e.g. `"force_open"`, `"shadow"`.
        action: &'a str,
        /// Who did it.
        by: &'a str,
    },
    /// The admin router refused a request without valid credentials.
    AdminDenied {
        /// The admin router's name.
        name: &'a str,
        /// The request's method and path.
        path: &'a str,
    },
    /// The bulkhead refused a call: its limit of concurrent calls was reached and no
    /// permit came free (at once, or within its maximum wait). With `shadow` set the call
    /// went through anyway.
    BulkheadRejected {
        /// The bulkhead's name.
        name: &'a str,
        /// The limit in force.
        limit: u32,
        /// How long the call waited for a permit (zero when the bulkhead does not wait).
        waited: Duration,
        /// Whether this was only reported (shadow mode).
        shadow: bool,
    },
    /// The bulkhead's limit was changed at runtime through its handle.
    BulkheadLimitChanged {
        /// The bulkhead's name.
        name: &'a str,
        /// The previous limit.
        from: u32,
        /// The new limit.
        to: u32,
    },
    /// An attempt failed in a way the retry layer retries, and another attempt will start
    /// after `delay`.
    RetryScheduled {
        /// The retry layer's name.
        name: &'a str,
        /// The number of the attempt about to start (2 for the first retry).
        attempt: u32,
        /// The wait before it: the backoff, or the server's pushback if longer.
        delay: Duration,
        /// The server's pushback, when the failed answer carried one.
        pushback: Option<Duration>,
    },
    /// An attempt failed in a way the retry layer retries, but no further attempt is made;
    /// its result is returned.
    RetryStopped {
        /// The retry layer's name.
        name: &'a str,
        /// The attempts made, the first call included.
        attempts: u32,
        /// Why no further attempt is made.
        reason: crate::retry::StopReason,
    },
    /// A call through the retry layer finished (one event per call, not per attempt).
    RetryCompleted {
        /// The retry layer's name.
        name: &'a str,
        /// The attempts made, the first call included.
        attempts: u32,
        /// Whether the last attempt succeeded (by the layer's classifier).
        succeeded: bool,
    },
    /// A fresh cached response answered the request; the inner service was not called.
    CacheHit {
        /// The cache's name.
        name: &'a str,
        /// The cache key (method, target, key headers).
        key: &'a str,
    },
    /// No fresh cached response: the request goes to the inner service, or waits for a
    /// call already in flight for its key.
    CacheMiss {
        /// The cache's name.
        name: &'a str,
        /// The cache key.
        key: &'a str,
    },
    /// A stale cached response answered the request (RFC 5861): `"stale_while_revalidate"`
    /// (it is being refreshed in the background) or `"stale_if_error"` (the inner call
    /// failed).
    CacheStaleServed {
        /// The cache's name.
        name: &'a str,
        /// The cache key.
        key: &'a str,
        /// Which stale window allowed it.
        reason: &'static str,
        /// How long past its freshness the response is.
        stale_for: Duration,
    },
    /// The request waited for another request's inner call for the same key (request
    /// coalescing) and got its answer, or its failure.
    CacheCoalesced {
        /// The cache's name.
        name: &'a str,
        /// The cache key.
        key: &'a str,
        /// Whether the call it waited for failed.
        failed: bool,
    },
    /// A response was stored in the cache.
    CacheStored {
        /// The cache's name.
        name: &'a str,
        /// The cache key.
        key: &'a str,
        /// The stored size in bytes (body and headers).
        bytes: usize,
        /// How long it is fresh.
        fresh_for: Duration,
    },
    /// A response was not stored (e.g. `Cache-Control: no-store`, a body over the cap, a
    /// status that is not 2xx), or a request bypassed the cache (no usable key).
    CacheNotStored {
        /// The cache's name.
        name: &'a str,
        /// The cache key, when there is one.
        key: Option<&'a str>,
        /// Why.
        reason: &'static str,
    },
    /// Cached responses were removed through the cache's handle.
    CacheInvalidated {
        /// The cache's name.
        name: &'a str,
        /// `"key"`, `"target"`, `"prefix"` or `"all"`.
        scope: &'static str,
        /// The key, target or prefix given (empty for `"all"`).
        target: &'a str,
    },
    /// The fault-injection layer injected a fault into a call (with `shadow` set, it only
    /// reports the fault it would have injected).
    FaultInjected {
        /// The fault layer's name.
        name: &'a str,
        /// Which fault.
        fault: crate::fault::FaultKind,
        /// The delay of a latency fault.
        delay: Option<Duration>,
        /// Whether this was only reported (shadow mode).
        shadow: bool,
    },
    /// A shared backend (Redis) stopped answering: a call failed or ran past its timeout.
    /// Emitted once per outage, by the backend's observer; the layers using it follow
    /// their policies until [`Event::BackendRecovered`].
    BackendDown {
        /// The backend's name.
        name: &'a str,
        /// Which kind of backend (`"redis"`).
        backend: &'static str,
        /// The error that began the outage, as text.
        error: &'a str,
    },
    /// A shared backend answers again after an outage.
    BackendRecovered {
        /// The backend's name.
        name: &'a str,
        /// Which kind of backend (`"redis"`).
        backend: &'static str,
        /// How long it was down.
        down_for: Duration,
    },
    /// A layer could not reach its shared backend for one request and followed its
    /// configured policy (`"fail_open"`, `"fail_closed"` or `"local"`).
    BackendPolicyApplied {
        /// The layer that applied it (`"rate_limit"`, `"idempotency"`).
        layer: &'static str,
        /// The layer's name.
        name: &'a str,
        /// Which kind of backend (`"redis"`).
        backend: &'static str,
        /// The policy followed.
        policy: &'static str,
    },
    /// The fault-injection layer was switched or retuned through its handle:
    /// `"enabled"`, `"disabled"`, `"shadowed"`, `"rate"`, `"kinds"` or `"latency"`.
    FaultChanged {
        /// The fault layer's name.
        name: &'a str,
        /// What changed.
        change: &'static str,
    },
}

/// What made a fallback fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// A rejection of this kind from an inner layer.
    Rejection(RejectionKind),
    /// An error of the inner service.
    Error,
    /// A response the classifier called a failure (e.g. HTTP 5xx).
    Response,
}

impl Trigger {
    /// `"error"`, `"response"` or the rejection kind's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Rejection(kind) => kind.as_str(),
            Trigger::Error => "error",
            Trigger::Response => "response",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event<'_> {
    /// The layer that emitted the event.
    pub const fn layer(&self) -> &'static str {
        match self {
            Event::TimedOut { .. }
            | Event::DeadlineShortened { .. }
            | Event::DeadlineMalformed { .. } => "timeout",
            Event::FallbackServed { .. }
            | Event::FallbackUnavailable { .. }
            | Event::LastKnownGoodStored { .. }
            | Event::LastKnownGoodSkipped { .. } => "fallback",
            Event::InternalError { .. } => "http",
            Event::CircuitStateChanged { .. }
            | Event::CircuitRejected { .. }
            | Event::CircuitThresholdExceeded { .. } => "circuit_breaker",
            Event::IdempotencyReplayed { .. }
            | Event::IdempotencyRejected { .. }
            | Event::IdempotencyStored { .. }
            | Event::IdempotencyReleased { .. } => "idempotency",
            Event::RateLimited { .. }
            | Event::RateLimitDelayed { .. }
            | Event::RateLimitKeyEvicted { .. } => "rate_limit",
            Event::FeatureGated { .. } => "feature_gate",
            Event::FlagEvaluationFailed { .. }
            | Event::FlagChanged { .. }
            | Event::FlagSourceReloaded { .. }
            | Event::FlagSourceFailed { .. }
            | Event::ModeChanged { .. } => "flags",
            Event::AdminChanged { .. } | Event::AdminDenied { .. } => "admin",
            Event::BulkheadRejected { .. } | Event::BulkheadLimitChanged { .. } => "bulkhead",
            Event::RetryScheduled { .. }
            | Event::RetryStopped { .. }
            | Event::RetryCompleted { .. } => "retry",
            Event::CacheHit { .. }
            | Event::CacheMiss { .. }
            | Event::CacheStaleServed { .. }
            | Event::CacheCoalesced { .. }
            | Event::CacheStored { .. }
            | Event::CacheNotStored { .. }
            | Event::CacheInvalidated { .. } => "cache",
            Event::FaultInjected { .. } | Event::FaultChanged { .. } => "fault",
            Event::BackendDown { .. } | Event::BackendRecovered { .. } => "backend",
            Event::BackendPolicyApplied { layer, .. } => layer,
        }
    }

    /// The configured name of the layer instance.
    pub fn name(&self) -> &str {
        match self {
            Event::TimedOut { name, .. }
            | Event::DeadlineShortened { name, .. }
            | Event::DeadlineMalformed { name, .. }
            | Event::FallbackServed { name, .. }
            | Event::FallbackUnavailable { name, .. }
            | Event::LastKnownGoodStored { name, .. }
            | Event::LastKnownGoodSkipped { name, .. }
            | Event::InternalError { name, .. }
            | Event::CircuitStateChanged { name, .. }
            | Event::CircuitRejected { name, .. }
            | Event::CircuitThresholdExceeded { name, .. }
            | Event::IdempotencyReplayed { name, .. }
            | Event::IdempotencyRejected { name, .. }
            | Event::IdempotencyStored { name, .. }
            | Event::IdempotencyReleased { name, .. }
            | Event::RateLimited { name, .. }
            | Event::RateLimitDelayed { name, .. }
            | Event::RateLimitKeyEvicted { name, .. }
            | Event::FeatureGated { name, .. }
            | Event::FlagEvaluationFailed { name, .. }
            | Event::FlagChanged { name, .. }
            | Event::FlagSourceReloaded { name, .. }
            | Event::FlagSourceFailed { name, .. }
            | Event::ModeChanged { name, .. }
            | Event::AdminChanged { name, .. }
            | Event::AdminDenied { name, .. }
            | Event::BulkheadRejected { name, .. }
            | Event::BulkheadLimitChanged { name, .. }
            | Event::RetryScheduled { name, .. }
            | Event::RetryStopped { name, .. }
            | Event::RetryCompleted { name, .. }
            | Event::CacheHit { name, .. }
            | Event::CacheMiss { name, .. }
            | Event::CacheStaleServed { name, .. }
            | Event::CacheCoalesced { name, .. }
            | Event::CacheStored { name, .. }
            | Event::CacheNotStored { name, .. }
            | Event::CacheInvalidated { name, .. }
            | Event::FaultInjected { name, .. }
            | Event::FaultChanged { name, .. }
            | Event::BackendDown { name, .. }
            | Event::BackendRecovered { name, .. }
            | Event::BackendPolicyApplied { name, .. } => name,
        }
    }

    /// What was decided, as a stable `snake_case` word.
    pub const fn outcome(&self) -> &'static str {
        match self {
            Event::TimedOut { shadow: false, .. } => "timed_out",
            Event::TimedOut { shadow: true, .. } => "would_have_timed_out",
            Event::DeadlineShortened { .. } => "deadline_shortened",
            Event::DeadlineMalformed { .. } => "deadline_malformed",
            Event::FallbackServed { .. } => "fallback_served",
            Event::FallbackUnavailable { .. } => "fallback_unavailable",
            Event::LastKnownGoodStored { .. } => "last_known_good_stored",
            Event::LastKnownGoodSkipped { .. } => "last_known_good_skipped",
            Event::InternalError { .. } => "internal_error",
            Event::CircuitStateChanged { to, .. } => match to {
                crate::circuit_breaker::State::Closed => "closed",
                crate::circuit_breaker::State::Open => "opened",
                crate::circuit_breaker::State::HalfOpen => "half_opened",
                crate::circuit_breaker::State::Disabled => "disabled",
                crate::circuit_breaker::State::ForcedOpen => "forced_open",
                crate::circuit_breaker::State::MetricsOnly => "metrics_only",
            },
            Event::CircuitRejected { shadow: false, .. } => "rejected",
            Event::CircuitRejected { shadow: true, .. } => "would_have_rejected",
            Event::CircuitThresholdExceeded { .. } => "threshold_exceeded",
            Event::IdempotencyReplayed { .. } => "replayed",
            Event::IdempotencyRejected { shadow: false, .. } => "rejected",
            Event::IdempotencyRejected { shadow: true, .. } => "would_have_rejected",
            Event::IdempotencyStored { .. } => "stored",
            Event::IdempotencyReleased { .. } => "released",
            Event::RateLimited { shadow: false, .. } => "rate_limited",
            Event::RateLimited { shadow: true, .. } => "would_have_rate_limited",
            Event::RateLimitDelayed { .. } => "rate_limit_delayed",
            Event::RateLimitKeyEvicted { .. } => "rate_limit_key_evicted",
            Event::FeatureGated { shadow: true, .. } => "would_have_disabled",
            Event::FeatureGated {
                action: crate::flags::GateAction::Routed,
                ..
            } => "routed_to_alternate",
            Event::FeatureGated { .. } => "feature_disabled",
            Event::FlagEvaluationFailed { .. } => "flag_error",
            Event::FlagChanged { .. } => "flag_changed",
            Event::FlagSourceReloaded { .. } => "flags_reloaded",
            Event::FlagSourceFailed { .. } => "flag_source_failed",
            Event::ModeChanged { .. } => "mode_changed",
            Event::AdminChanged { .. } => "admin_changed",
            Event::AdminDenied { .. } => "admin_denied",
            Event::BulkheadRejected { shadow: false, .. } => "rejected",
            Event::BulkheadRejected { shadow: true, .. } => "would_have_rejected",
            Event::BulkheadLimitChanged { .. } => "limit_changed",
            Event::RetryScheduled { .. } => "retry_scheduled",
            Event::RetryStopped { .. } => "retry_stopped",
            Event::RetryCompleted {
                attempts: 1,
                succeeded: true,
                ..
            } => "succeeded_without_retry",
            Event::RetryCompleted {
                succeeded: true, ..
            } => "succeeded_with_retry",
            Event::RetryCompleted {
                attempts: 1,
                succeeded: false,
                ..
            } => "failed_without_retry",
            Event::RetryCompleted {
                succeeded: false, ..
            } => "failed_with_retry",
            Event::CacheHit { .. } => "hit",
            Event::CacheMiss { .. } => "miss",
            Event::CacheStaleServed { .. } => "stale_served",
            Event::CacheCoalesced { .. } => "coalesced",
            Event::CacheStored { .. } => "stored",
            Event::CacheNotStored { .. } => "not_stored",
            Event::CacheInvalidated { .. } => "invalidated",
            Event::FaultInjected { shadow: false, .. } => "fault_injected",
            Event::FaultInjected { shadow: true, .. } => "would_have_injected_fault",
            Event::FaultChanged { .. } => "fault_changed",
            Event::BackendDown { .. } => "backend_down",
            Event::BackendRecovered { .. } => "backend_recovered",
            Event::BackendPolicyApplied { policy, .. } => policy,
        }
    }

    /// The severity the default observer logs the event at.
    pub const fn level(&self) -> tracing::Level {
        match self {
            Event::TimedOut { shadow: false, .. }
            | Event::DeadlineMalformed { .. }
            | Event::FallbackServed { .. }
            | Event::FallbackUnavailable { .. } => tracing::Level::WARN,
            Event::TimedOut { shadow: true, .. } => tracing::Level::INFO,
            Event::DeadlineShortened { .. } | Event::LastKnownGoodSkipped { .. } => {
                tracing::Level::DEBUG
            }
            Event::LastKnownGoodStored { .. } => tracing::Level::TRACE,
            Event::InternalError { .. } => tracing::Level::ERROR,
            Event::CircuitStateChanged { .. } | Event::CircuitThresholdExceeded { .. } => {
                tracing::Level::WARN
            }
            Event::CircuitRejected { shadow: true, .. } => tracing::Level::INFO,
            Event::CircuitRejected { shadow: false, .. } => tracing::Level::DEBUG,
            Event::IdempotencyReplayed { .. } | Event::IdempotencyRejected { .. } => {
                tracing::Level::INFO
            }
            Event::IdempotencyStored { .. } => tracing::Level::TRACE,
            Event::IdempotencyReleased { .. } => tracing::Level::DEBUG,
            Event::RateLimited { shadow: false, .. } => tracing::Level::WARN,
            Event::RateLimited { shadow: true, .. } => tracing::Level::INFO,
            Event::RateLimitDelayed { .. } | Event::RateLimitKeyEvicted { .. } => {
                tracing::Level::DEBUG
            }
            Event::FeatureGated { shadow: true, .. } => tracing::Level::INFO,
            Event::FeatureGated { shadow: false, .. } | Event::FlagSourceReloaded { .. } => {
                tracing::Level::DEBUG
            }
            Event::FlagEvaluationFailed { .. }
            | Event::FlagChanged { .. }
            | Event::ModeChanged { .. }
            | Event::AdminChanged { .. }
            | Event::AdminDenied { .. } => tracing::Level::WARN,
            Event::FlagSourceFailed { .. } => tracing::Level::ERROR,
            Event::BulkheadRejected { shadow: false, .. } | Event::BulkheadLimitChanged { .. } => {
                tracing::Level::WARN
            }
            Event::BulkheadRejected { shadow: true, .. } | Event::RetryStopped { .. } => {
                tracing::Level::INFO
            }
            Event::RetryScheduled { .. } => tracing::Level::DEBUG,
            Event::RetryCompleted { .. } => tracing::Level::TRACE,
            Event::CacheHit { .. } | Event::CacheStored { .. } => tracing::Level::TRACE,
            Event::CacheMiss { .. }
            | Event::CacheCoalesced { .. }
            | Event::CacheNotStored { .. } => tracing::Level::DEBUG,
            Event::CacheStaleServed { .. } | Event::CacheInvalidated { .. } => tracing::Level::INFO,
            Event::FaultInjected { .. } => tracing::Level::DEBUG,
            Event::FaultChanged { .. } => tracing::Level::WARN,
            Event::BackendDown { .. } => tracing::Level::ERROR,
            Event::BackendRecovered { .. } => tracing::Level::WARN,
            Event::BackendPolicyApplied { .. } => tracing::Level::DEBUG,
        }
    }
}

/// Receives every [`Event`] of the layers it is given to.
///
/// Called synchronously on the request path: keep it quick and never block.
pub trait Observer: Send + Sync + 'static {
    /// Called once per decision.
    fn on_event(&self, event: &Event<'_>);
}

impl Observer for () {
    #[inline]
    fn on_event(&self, _: &Event<'_>) {}
}

impl<F> Observer for F
where
    F: Fn(&Event<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &Event<'_>) {
        self(event)
    }
}

impl<A: Observer, B: Observer> Observer for (A, B) {
    fn on_event(&self, event: &Event<'_>) {
        self.0.on_event(event);
        self.1.on_event(event);
    }
}

impl<O: Observer + ?Sized> Observer for Arc<O> {
    fn on_event(&self, event: &Event<'_>) {
        (**self).on_event(event)
    }
}

/// The default observer: one `tracing` event per [`Event`], at [`Event::level`], with target
/// `tower_parapet` and the field names listed in the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingObserver {
    _priv: (),
}

/// Emit a tracing event at a runtime level with the common fields.
macro_rules! emit {
    ($level:expr, $event:expr, $($field:tt)*) => {{
        let e = $event;
        match $level {
            tracing::Level::ERROR => tracing::event!(target: "tower_parapet", tracing::Level::ERROR, layer = e.layer(), name = e.name(), outcome = e.outcome(), $($field)*),
            tracing::Level::WARN => tracing::event!(target: "tower_parapet", tracing::Level::WARN, layer = e.layer(), name = e.name(), outcome = e.outcome(), $($field)*),
            tracing::Level::INFO => tracing::event!(target: "tower_parapet", tracing::Level::INFO, layer = e.layer(), name = e.name(), outcome = e.outcome(), $($field)*),
            tracing::Level::DEBUG => tracing::event!(target: "tower_parapet", tracing::Level::DEBUG, layer = e.layer(), name = e.name(), outcome = e.outcome(), $($field)*),
            _ => tracing::event!(target: "tower_parapet", tracing::Level::TRACE, layer = e.layer(), name = e.name(), outcome = e.outcome(), $($field)*),
        }
    }};
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `source()` chain of an error, outermost first, joined by `": "`.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl Observer for TracingObserver {
    fn on_event(&self, event: &Event<'_>) {
        let level = event.level();
        match *event {
            Event::TimedOut { after, shadow, .. } => emit!(
                level,
                event,
                after_ms = millis(after),
                state = if shadow { "shadow" } else { "enforce" },
                "deadline expired"
            ),
            Event::DeadlineShortened {
                configured, caller, ..
            } => emit!(
                level,
                event,
                configured_ms = millis(configured),
                after_ms = millis(caller),
                "caller's deadline is shorter than the configured timeout"
            ),
            Event::DeadlineMalformed { header, .. } => {
                emit!(level, event, header, "malformed deadline header ignored")
            }
            Event::FallbackServed {
                source,
                trigger,
                key,
                ..
            } => emit!(
                level,
                event,
                source,
                trigger = trigger.as_str(),
                key = key.map(tracing::field::debug),
                "fallback served"
            ),
            Event::FallbackUnavailable {
                source,
                trigger,
                key,
                ..
            } => emit!(
                level,
                event,
                source,
                trigger = trigger.as_str(),
                key = key.map(tracing::field::debug),
                "fallback had nothing to serve; the failure is returned"
            ),
            Event::LastKnownGoodStored { key, .. } => emit!(
                level,
                event,
                key = tracing::field::debug(key),
                "last known good response stored"
            ),
            Event::LastKnownGoodSkipped { reason, .. } => {
                emit!(level, event, reason, "response not kept as last known good")
            }
            Event::InternalError { error, .. } => emit!(
                level,
                event,
                error = %Chain(error),
                "inner service failed; answered with an internal error"
            ),
            Event::CircuitStateChanged {
                key,
                from,
                to,
                failure_rate,
                slow_call_rate,
                retry_after,
                ..
            } => emit!(
                level,
                event,
                key = key.map(tracing::field::debug),
                state = to.as_str(),
                from = from.as_str(),
                failure_rate,
                slow_call_rate,
                retry_after_ms = retry_after.map(millis),
                "circuit breaker state changed"
            ),
            Event::CircuitRejected {
                key,
                state,
                retry_after,
                shadow,
                ..
            } => emit!(
                level,
                event,
                key = key.map(tracing::field::debug),
                state = if shadow { "shadow" } else { state.as_str() },
                breaker_state = state.as_str(),
                retry_after_ms = retry_after.map(millis),
                "circuit breaker refused a call"
            ),
            Event::CircuitThresholdExceeded {
                key,
                failure_rate,
                slow_call_rate,
                ..
            } => emit!(
                level,
                event,
                key = key.map(tracing::field::debug),
                state = "metrics_only",
                failure_rate,
                slow_call_rate,
                "circuit breaker threshold exceeded (metrics only: not tripped)"
            ),
            Event::IdempotencyReplayed { key, waited, .. } => {
                emit!(level, event, key, waited, "stored response replayed")
            }
            Event::IdempotencyRejected {
                key, kind, shadow, ..
            } => emit!(
                level,
                event,
                key,
                kind = kind.as_str(),
                state = if shadow { "shadow" } else { "enforce" },
                "idempotency check refused the request"
            ),
            Event::IdempotencyStored { key, bytes, .. } => {
                emit!(level, event, key, bytes, "response stored for replay")
            }
            Event::IdempotencyReleased { key, reason, .. } => emit!(
                level,
                event,
                key,
                reason,
                "idempotency key freed without a stored response"
            ),
            Event::RateLimited {
                class,
                key,
                policy,
                retry_after,
                shadow,
                ..
            } => emit!(
                level,
                event,
                class,
                key = key.map(tracing::field::debug),
                policy,
                retry_after_ms = millis(retry_after),
                state = if shadow { "shadow" } else { "enforce" },
                "rate limit exceeded"
            ),
            Event::RateLimitDelayed { class, waited, .. } => emit!(
                level,
                event,
                class,
                after_ms = millis(waited),
                "request held until its quota admitted it"
            ),
            Event::RateLimitKeyEvicted { class, .. } => emit!(
                level,
                event,
                class,
                "rate limiter full: a key still in use was forgotten"
            ),
            Event::FeatureGated {
                flag,
                variant,
                reason,
                action,
                shadow,
                ..
            } => emit!(
                level,
                event,
                flag,
                variant,
                reason = reason.as_str(),
                action = action.as_str(),
                state = if shadow { "shadow" } else { "enforce" },
                "feature flag is off"
            ),
            Event::FlagEvaluationFailed { flag, error, .. } => emit!(
                level,
                event,
                flag,
                error = error.as_str(),
                "flag could not be evaluated; the default was used"
            ),
            Event::FlagChanged {
                flag, change, by, ..
            } => emit!(level, event, flag, change, by, "flag changed"),
            Event::FlagSourceReloaded { source, flags, .. } => {
                emit!(level, event, source, flags, "flags reloaded")
            }
            Event::FlagSourceFailed { source, error, .. } => emit!(
                level,
                event,
                source,
                error = %Chain(error),
                "flag source is unusable; the last good flags stay"
            ),
            Event::ModeChanged { flag, from, to, .. } => emit!(
                level,
                event,
                flag,
                from = from.as_str(),
                state = to.as_str(),
                "mode bound to a flag changed"
            ),
            Event::AdminChanged {
                target, action, by, ..
            } => emit!(level, event, target, action, by, "admin change"),
            Event::AdminDenied { path, .. } => {
                emit!(
                    level,
                    event,
                    path,
                    "admin request without valid credentials"
                )
            }
            Event::BulkheadRejected {
                limit,
                waited,
                shadow,
                ..
            } => emit!(
                level,
                event,
                limit,
                waited_ms = millis(waited),
                state = if shadow { "shadow" } else { "enforce" },
                "bulkhead full: call refused"
            ),
            Event::BulkheadLimitChanged { from, to, .. } => {
                emit!(level, event, from, to, "bulkhead limit changed")
            }
            Event::RetryScheduled {
                attempt,
                delay,
                pushback,
                ..
            } => emit!(
                level,
                event,
                attempt,
                after_ms = millis(delay),
                retry_after_ms = pushback.map(millis),
                "attempt failed; retrying"
            ),
            Event::RetryStopped {
                attempts, reason, ..
            } => emit!(
                level,
                event,
                attempts,
                reason = reason.as_str(),
                "attempt failed; not retrying"
            ),
            Event::RetryCompleted {
                attempts,
                succeeded,
                ..
            } => emit!(level, event, attempts, succeeded, "call finished"),
            Event::CacheHit { key, .. } => emit!(level, event, key, "cached response served"),
            Event::CacheMiss { key, .. } => emit!(level, event, key, "cache miss"),
            Event::CacheStaleServed {
                key,
                reason,
                stale_for,
                ..
            } => emit!(
                level,
                event,
                key,
                reason,
                after_ms = millis(stale_for),
                "stale cached response served"
            ),
            Event::CacheCoalesced { key, failed, .. } => emit!(
                level,
                event,
                key,
                failed,
                "answered by a call already in flight for the key"
            ),
            Event::CacheStored {
                key,
                bytes,
                fresh_for,
                ..
            } => emit!(
                level,
                event,
                key,
                bytes,
                after_ms = millis(fresh_for),
                "response cached"
            ),
            Event::CacheNotStored { key, reason, .. } => {
                emit!(level, event, key, reason, "response not cached")
            }
            Event::CacheInvalidated { scope, target, .. } => {
                emit!(level, event, scope, target, "cached responses invalidated")
            }
            Event::FaultInjected {
                fault,
                delay,
                shadow,
                ..
            } => emit!(
                level,
                event,
                fault = fault.as_str(),
                after_ms = delay.map(millis),
                state = if shadow { "shadow" } else { "enforce" },
                "fault injected"
            ),
            Event::FaultChanged { change, .. } => {
                emit!(level, event, change, "fault injection changed")
            }
            Event::BackendDown { backend, error, .. } => emit!(
                level,
                event,
                backend,
                error,
                "shared backend unreachable; layers follow their policies"
            ),
            Event::BackendRecovered {
                backend, down_for, ..
            } => emit!(
                level,
                event,
                backend,
                after_ms = millis(down_for),
                "shared backend answers again"
            ),
            Event::BackendPolicyApplied {
                backend, policy, ..
            } => emit!(
                level,
                event,
                backend,
                policy,
                "shared backend unreachable for this request; policy applied"
            ),
        }
    }
}

/// An observer shared by every service a layer builds.
#[derive(Clone)]
pub(crate) struct SharedObserver(Arc<dyn Observer>);

impl SharedObserver {
    pub(crate) fn new(observer: impl Observer) -> SharedObserver {
        SharedObserver(Arc::new(observer))
    }

    #[inline]
    pub(crate) fn emit(&self, event: &Event<'_>) {
        self.0.on_event(event)
    }
}

impl Default for SharedObserver {
    fn default() -> Self {
        #[cfg(feature = "metrics")]
        return SharedObserver::new((TracingObserver::default(), MetricsObserver::default()));
        #[cfg(not(feature = "metrics"))]
        SharedObserver::new(TracingObserver::default())
    }
}

impl fmt::Debug for SharedObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(Chain(&e).to_string(), "outer: inner");
    }

    #[test]
    fn every_event_has_a_layer_and_outcome() {
        let key: &dyn fmt::Debug = &"k";
        let io = std::io::Error::other("x");
        let events = [
            Event::TimedOut {
                name: "n",
                after: Duration::ZERO,
                shadow: true,
            },
            Event::DeadlineShortened {
                name: "n",
                configured: Duration::ZERO,
                caller: Duration::ZERO,
            },
            Event::DeadlineMalformed {
                name: "n",
                header: "grpc-timeout",
            },
            Event::FallbackServed {
                name: "n",
                source: "value",
                trigger: Trigger::Error,
                key: None,
            },
            Event::FallbackUnavailable {
                name: "n",
                source: "value",
                trigger: Trigger::Response,
                key: Some(key),
            },
            Event::LastKnownGoodStored { name: "n", key },
            Event::LastKnownGoodSkipped {
                name: "n",
                reason: "too large",
            },
            Event::InternalError {
                name: "n",
                error: &io,
            },
            Event::CircuitStateChanged {
                name: "n",
                key: Some(key),
                from: crate::circuit_breaker::State::Closed,
                to: crate::circuit_breaker::State::Open,
                failure_rate: Some(50.0),
                slow_call_rate: None,
                retry_after: Some(Duration::from_secs(1)),
            },
            Event::CircuitRejected {
                name: "n",
                key: None,
                state: crate::circuit_breaker::State::HalfOpen,
                retry_after: None,
                shadow: true,
            },
            Event::CircuitThresholdExceeded {
                name: "n",
                key: None,
                failure_rate: Some(100.0),
                slow_call_rate: None,
            },
            Event::IdempotencyReplayed {
                name: "n",
                key: "k",
                waited: true,
            },
            Event::IdempotencyRejected {
                name: "n",
                key: None,
                kind: RejectionKind::IdempotencyMismatch,
                shadow: false,
            },
            Event::IdempotencyStored {
                name: "n",
                key: "k",
                bytes: 10,
            },
            Event::IdempotencyReleased {
                name: "n",
                key: "k",
                reason: "dropped",
            },
            Event::RateLimited {
                name: "n",
                class: "ip",
                key: Some(key),
                policy: "10_per_1s",
                retry_after: Duration::from_millis(100),
                shadow: true,
            },
            Event::RateLimitDelayed {
                name: "n",
                class: "global",
                waited: Duration::ZERO,
            },
            Event::RateLimitKeyEvicted {
                name: "n",
                class: "header",
            },
            Event::FeatureGated {
                name: "n",
                flag: "f",
                variant: Some("off"),
                reason: crate::flags::Reason::Disabled,
                action: crate::flags::GateAction::Routed,
                shadow: false,
            },
            Event::FlagEvaluationFailed {
                name: "n",
                flag: "f",
                error: crate::flags::ErrorCode::FlagNotFound,
            },
            Event::FlagChanged {
                name: "n",
                flag: "f",
                change: "killed",
                by: "alice",
            },
            Event::FlagSourceReloaded {
                name: "n",
                source: "flags.json",
                flags: 3,
            },
            Event::FlagSourceFailed {
                name: "n",
                source: "flags.json",
                error: &io,
            },
            Event::ModeChanged {
                name: "n",
                flag: "f",
                from: crate::Mode::Enforce,
                to: crate::Mode::Shadow,
            },
            Event::AdminChanged {
                name: "n",
                target: "breaker/db",
                action: "force_open",
                by: "alice",
            },
            Event::AdminDenied {
                name: "n",
                path: "GET /flags",
            },
            Event::BulkheadRejected {
                name: "n",
                limit: 4,
                waited: Duration::ZERO,
                shadow: false,
            },
            Event::BulkheadLimitChanged {
                name: "n",
                from: 4,
                to: 8,
            },
            Event::RetryScheduled {
                name: "n",
                attempt: 2,
                delay: Duration::from_millis(100),
                pushback: None,
            },
            Event::RetryStopped {
                name: "n",
                attempts: 3,
                reason: crate::retry::StopReason::MaxAttempts,
            },
            Event::RetryCompleted {
                name: "n",
                attempts: 1,
                succeeded: true,
            },
            Event::CacheHit {
                name: "n",
                key: "GET /",
            },
            Event::CacheMiss {
                name: "n",
                key: "GET /",
            },
            Event::CacheStaleServed {
                name: "n",
                key: "GET /",
                reason: "stale_if_error",
                stale_for: Duration::from_secs(1),
            },
            Event::CacheCoalesced {
                name: "n",
                key: "GET /",
                failed: false,
            },
            Event::CacheStored {
                name: "n",
                key: "GET /",
                bytes: 10,
                fresh_for: Duration::from_secs(60),
            },
            Event::CacheNotStored {
                name: "n",
                key: None,
                reason: "no-store",
            },
            Event::CacheInvalidated {
                name: "n",
                scope: "prefix",
                target: "/products",
            },
            Event::FaultInjected {
                name: "n",
                fault: crate::fault::FaultKind::Latency,
                delay: Some(Duration::from_millis(5)),
                shadow: false,
            },
            Event::FaultChanged {
                name: "n",
                change: "enabled",
            },
            Event::BackendDown {
                name: "n",
                backend: "redis",
                error: "connection refused",
            },
            Event::BackendRecovered {
                name: "n",
                backend: "redis",
                down_for: Duration::from_secs(3),
            },
            Event::BackendPolicyApplied {
                layer: "rate_limit",
                name: "n",
                backend: "redis",
                policy: "fail_open",
            },
        ];
        for e in &events {
            assert_eq!(e.name(), "n");
            assert!(!e.layer().is_empty());
            assert!(!e.outcome().is_empty());
            TracingObserver::default().on_event(e);
        }
    }
}
