//! Health and readiness: one registry of the layers' handles, a serializable snapshot,
//! and (with the `axum` feature) liveness and readiness endpoints.
//!
//! Register the handles once at startup; the registry is cheap to clone and every clone
//! sees the same registrations. [`HealthRegistry::snapshot`] reads every breaker's state
//! and rates, every limiter's live keys and mode, every flag, every registered mode and
//! check, and
//! says whether the service is ready: it is not while a breaker registered as
//! **critical** is open (or forced open; half-open too if so configured) or a custom
//! check fails.
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use tower_parapet::circuit_breaker::CircuitBreakerLayer;
//! use tower_parapet::health::HealthRegistry;
//!
//! let db = CircuitBreakerLayer::builder().name("db").build().unwrap();
//! let registry = HealthRegistry::new();
//! registry.critical_breaker(db.handle());
//! assert!(registry.snapshot().ready);
//! db.handle().force_open();
//! let snapshot = registry.snapshot();
//! assert!(!snapshot.ready);
//! assert_eq!(snapshot.failing, ["breaker:db"]);
//! // GET /livez → 200, GET /readyz → 200 or 503 with the failing names.
//! let probes: axum::Router = registry.routes();
//! # let _ = probes;
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use crate::circuit_breaker::{CircuitBreakerHandle, State};
use crate::flags::{FlagDef, FlagStore};
use crate::mode::{Mode, ModeHandle};
use crate::rate_limit::RateLimitHandle;

type Check = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Default)]
struct Inner {
    breakers: BTreeMap<String, (CircuitBreakerHandle, bool)>,
    limiters: BTreeMap<String, RateLimitHandle>,
    modes: BTreeMap<String, ModeHandle>,
    checks: BTreeMap<String, Check>,
    flags: Option<FlagStore>,
    #[cfg(feature = "redis")]
    backends: BTreeMap<String, (crate::redis::RedisBackend, bool)>,
    half_open_fails: bool,
}

/// The handles of a service's layers, for health and readiness; see the
/// [module docs](self).
#[derive(Clone, Default)]
pub struct HealthRegistry {
    inner: Arc<RwLock<Inner>>,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.read();
        f.debug_struct("HealthRegistry")
            .field("breakers", &inner.breakers.keys().collect::<Vec<_>>())
            .field("rate_limiters", &inner.limiters.keys().collect::<Vec<_>>())
            .field("modes", &inner.modes.keys().collect::<Vec<_>>())
            .field("checks", &inner.checks.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One breaker in a [`HealthSnapshot`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct BreakerHealth {
    /// Its name.
    pub name: String,
    /// Whether it decides readiness.
    pub critical: bool,
    /// Its state.
    pub state: State,
    /// Failure rate in percent, once the window holds enough calls.
    pub failure_rate: Option<f32>,
    /// Slow-call rate in percent, when measured.
    pub slow_call_rate: Option<f32>,
    /// Calls in the window.
    pub buffered_calls: u64,
    /// Calls refused since it was built or reset.
    pub not_permitted_calls: u64,
    /// Milliseconds until probes, when open.
    pub retry_after_ms: Option<u64>,
}

/// One rate limiter in a [`HealthSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LimiterHealth {
    /// The name it was registered under.
    pub name: String,
    /// Its mode.
    pub mode: Mode,
    /// Keys it tracks now.
    pub live_keys: usize,
    /// The most keys it tracks.
    pub key_capacity: usize,
}

/// Everything the registry knows, at one moment.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct HealthSnapshot {
    /// Whether the service should receive traffic.
    pub ready: bool,
    /// What makes it not ready: `breaker:<name>`, `check:<name>` and `backend:<name>`.
    pub failing: Vec<String>,
    /// Every breaker.
    pub breakers: Vec<BreakerHealth>,
    /// Every rate limiter.
    pub rate_limiters: Vec<LimiterHealth>,
    /// Every registered mode, by name.
    pub modes: BTreeMap<String, Mode>,
    /// Every custom check, by name, and whether it passes.
    pub checks: BTreeMap<String, bool>,
    /// The registered flag store's flags, by name.
    pub flags: BTreeMap<String, FlagDef>,
    /// Every registered shared backend (Redis, feature `redis`): whether it answers.
    pub backends: Vec<BackendHealth>,
}

/// One shared backend (Redis) in a [`HealthSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BackendHealth {
    /// The name it was registered under.
    pub name: String,
    /// Whether it decides readiness.
    pub critical: bool,
    /// Whether its last call succeeded.
    pub up: bool,
    /// Calls failed in a row.
    pub consecutive_failures: u64,
    /// Calls failed since it was built.
    pub failures_total: u64,
    /// The last error, as text.
    pub last_error: Option<String>,
}

impl HealthRegistry {
    /// An empty registry.
    pub fn new() -> HealthRegistry {
        HealthRegistry::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // Registration cannot panic half-way; a poisoned lock holds consistent data.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Show a breaker (under its name); it does not decide readiness.
    pub fn breaker(&self, handle: CircuitBreakerHandle) -> &Self {
        self.write()
            .breakers
            .insert(handle.name().to_owned(), (handle, false));
        self
    }

    /// Show a breaker that decides readiness: while it is open the service is not ready.
    pub fn critical_breaker(&self, handle: CircuitBreakerHandle) -> &Self {
        self.write()
            .breakers
            .insert(handle.name().to_owned(), (handle, true));
        self
    }

    /// Also count a half-open critical breaker as not ready (default: half-open is
    /// ready, so that the probes that may close it can arrive).
    pub fn half_open_is_not_ready(&self, yes: bool) -> &Self {
        self.write().half_open_fails = yes;
        self
    }

    /// Show a rate limiter under `name`.
    pub fn rate_limiter(&self, name: impl Into<String>, handle: RateLimitHandle) -> &Self {
        self.write().limiters.insert(name.into(), handle);
        self
    }

    /// Show the flags of `store`.
    pub fn flags(&self, store: &FlagStore) -> &Self {
        self.write().flags = Some(store.clone());
        self
    }

    /// Show a layer's mode under `name`.
    pub fn mode(&self, name: impl Into<String>, handle: ModeHandle) -> &Self {
        self.write().modes.insert(name.into(), handle);
        self
    }

    /// A shared Redis backend, shown in snapshots. `critical`: while it is down the
    /// service is not ready (`backend:<name>` in `failing`). Most deployments leave it
    /// non-critical: the layers' failure policies keep the service answering while Redis
    /// is away, and a replica marked unready for it would take no traffic to do so.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(&self, backend: &crate::redis::RedisBackend, critical: bool) -> &Self {
        self.write()
            .backends
            .insert(backend.name().to_owned(), (backend.clone(), critical));
        self
    }

    /// A check of your own (a connection pool that has connections, a cache that is
    /// warm): while it returns `false`, the service is not ready. It runs on every
    /// snapshot: keep it quick and never block.
    pub fn check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> bool + Send + Sync + 'static,
    ) -> &Self {
        self.write().checks.insert(name.into(), Arc::new(check));
        self
    }

    /// The breakers registered, by name.
    pub fn breakers(&self) -> BTreeMap<String, CircuitBreakerHandle> {
        self.read()
            .breakers
            .iter()
            .map(|(k, (h, _))| (k.clone(), h.clone()))
            .collect()
    }

    /// Read everything now.
    pub fn snapshot(&self) -> HealthSnapshot {
        // Clone what is registered, then read it without holding the lock: a check or a
        // breaker's transition may take its time.
        #[cfg(feature = "redis")]
        let backends = self.read().backends.clone();
        let (breakers, limiters, modes, checks, flags, half_open_fails) = {
            let inner = self.read();
            (
                inner.breakers.clone(),
                inner.limiters.clone(),
                inner.modes.clone(),
                inner.checks.clone(),
                inner.flags.clone(),
                inner.half_open_fails,
            )
        };
        let mut failing = Vec::new();
        let breakers: Vec<BreakerHealth> = breakers
            .into_iter()
            .map(|(name, (handle, critical))| {
                let m = handle.metrics();
                let down = matches!(m.state, State::Open | State::ForcedOpen)
                    || (half_open_fails && m.state == State::HalfOpen);
                if critical && down {
                    failing.push(format!("breaker:{name}"));
                }
                BreakerHealth {
                    name,
                    critical,
                    state: m.state,
                    failure_rate: m.failure_rate,
                    slow_call_rate: m.slow_call_rate,
                    buffered_calls: m.buffered_calls,
                    not_permitted_calls: m.not_permitted_calls,
                    retry_after_ms: m
                        .retry_after
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                }
            })
            .collect();
        let checks: BTreeMap<String, bool> = checks
            .into_iter()
            .map(|(name, check)| {
                let ok = check();
                if !ok {
                    failing.push(format!("check:{name}"));
                }
                (name, ok)
            })
            .collect();
        #[cfg(not(feature = "redis"))]
        let backends = Vec::new();
        #[cfg(feature = "redis")]
        let backends: Vec<BackendHealth> = backends
            .into_iter()
            .map(|(name, (backend, critical))| {
                let status = backend.status();
                if critical && !status.up {
                    failing.push(format!("backend:{name}"));
                }
                BackendHealth {
                    name,
                    critical,
                    up: status.up,
                    consecutive_failures: status.consecutive_failures,
                    failures_total: status.failures_total,
                    last_error: status.last_error,
                }
            })
            .collect();
        HealthSnapshot {
            backends,
            ready: failing.is_empty(),
            failing,
            breakers,
            rate_limiters: limiters
                .into_iter()
                .map(|(name, h)| LimiterHealth {
                    name,
                    mode: h.mode().get(),
                    live_keys: h.live_keys(),
                    key_capacity: h.key_capacity(),
                })
                .collect(),
            modes: modes.into_iter().map(|(k, m)| (k, m.get())).collect(),
            checks,
            flags: flags.map(|f| f.flags()).unwrap_or_default(),
        }
    }
}

#[cfg(feature = "axum")]
mod routes {
    use super::HealthRegistry;
    use axum::Router;
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    impl HealthRegistry {
        /// `GET /livez` (200 while the process serves at all) and `GET /readyz` (200 when
        /// ready, 503 otherwise, with `{"ready":…,"failing":[…]}`). Neither needs
        /// credentials nor reveals more than the failing names; the full
        /// [`snapshot`](HealthRegistry::snapshot) belongs behind authorization (e.g. the
        /// [admin router](crate::http::admin)).
        pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
            Router::new()
                .route("/livez", get(|| async { (StatusCode::OK, "ok") }))
                .route("/readyz", get(readyz))
                .with_state(self.clone())
        }
    }

    async fn readyz(State(registry): State<HealthRegistry>) -> Response {
        let snapshot = registry.snapshot();
        let status = if snapshot.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = serde_json::json!({ "ready": snapshot.ready, "failing": snapshot.failing });
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}
