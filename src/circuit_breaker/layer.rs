//! The layer, its builder, its services and the handles.

use std::any::Any;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::config::{CircuitBreakerConfig, SlidingWindow};
use super::future::{Guard, ResponseFuture};
use super::state::{Breaker, Growth, Metrics, Settings, State, WindowShape};
use crate::classify::{Classifier, ErrorsAsFailures};
use crate::clock::Clock;
use crate::error::{BoxError, ConfigError, Rejection};
use crate::key::KeyExtractor;
use crate::mode::{Mode, ModeHandle};
use crate::observe::{Event, Observer, SharedObserver};

/// Builds a [`CircuitBreakerLayer`]; start with [`CircuitBreakerLayer::builder`].
///
/// Every knob of [`CircuitBreakerConfig`] has a method here, plus what is not data: the
/// classifier, the key extractor, the observer and the clock.
#[derive(Debug, Clone)]
pub struct CircuitBreakerBuilder<C = ErrorsAsFailures, K = Unkeyed> {
    config: CircuitBreakerConfig,
    classifier: C,
    key: K,
    observer: SharedObserver,
    clock: Clock,
    mode: Option<ModeHandle>,
}

/// The builder's marker for one breaker shared by every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unkeyed;

/// The builder's marker for one breaker per key of `E`.
#[derive(Debug, Clone)]
pub struct KeyedBy<E>(E);

impl CircuitBreakerBuilder {
    pub(super) fn from_config(config: CircuitBreakerConfig) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            mode: Some(ModeHandle::new(config.mode)),
            config,
            classifier: ErrorsAsFailures,
            key: Unkeyed,
            observer: SharedObserver::default(),
            clock: Clock::tokio(),
        }
    }
}

impl<C, K> CircuitBreakerBuilder<C, K> {
    /// The name in events and rejections (default `"circuit_breaker"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Trip when at least this percentage of the window's calls failed (1–100, default 50).
    #[must_use]
    pub fn failure_rate_threshold(mut self, percent: u8) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Trip when at least this percentage of the window's calls were slow (1–100,
    /// default 100). Only counts once [`slow_call_duration`](Self::slow_call_duration)
    /// is set.
    #[must_use]
    pub fn slow_call_rate_threshold(mut self, percent: u8) -> Self {
        self.config.slow_call_rate_threshold = percent;
        self
    }

    /// A call taking strictly longer than `duration` is slow. Unset by default: then no
    /// time is read on the closed-state path.
    #[must_use]
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.config.slow_call_duration = Some(duration);
        self
    }

    /// The rates count only once the window holds this many calls (default 100; in a count
    /// window at most its size, in half-open at most the permitted probes).
    #[must_use]
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// The sliding window (default: the last 100 calls).
    #[must_use]
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.config.sliding_window = window;
        self
    }

    /// How long the breaker stays open before letting probes through (default 60 s).
    #[must_use]
    pub fn wait_in_open(mut self, wait: Duration) -> Self {
        self.config.wait_in_open = wait;
        self
    }

    /// Grow the open wait over consecutive trips: `wait × multiplier^(trips-1)`, capped at
    /// `max`, then spread by ± `jitter` (a fraction, 0–1) so that many instances do not
    /// probe in step. The count restarts when the breaker closes.
    #[must_use]
    pub fn wait_growth(mut self, multiplier: f64, max: Duration, jitter: f64) -> Self {
        self.config.wait_growth = Some(super::config::WaitGrowth {
            multiplier,
            max,
            jitter,
        });
        self
    }

    /// Probe calls let through at once in half-open (default 10).
    #[must_use]
    pub fn permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.config.permitted_calls_in_half_open = calls;
        self
    }

    /// Go back to open when half-open has not decided within `max` (default: no limit;
    /// probes always report, dropped or panicking ones included).
    #[must_use]
    pub fn max_wait_in_half_open(mut self, max: Duration) -> Self {
        self.config.max_wait_in_half_open = Some(max);
        self
    }

    /// For keyed breakers: the most breakers kept (default 10 000). Past it the least
    /// useful ones are evicted, and their keys start afresh, closed.
    #[must_use]
    pub fn max_keys(mut self, max: u64) -> Self {
        self.config.max_keys = max;
        self
    }

    /// For keyed breakers: a breaker unused for this long is dropped (default 10 min).
    #[must_use]
    pub fn idle_key_timeout(mut self, idle: Duration) -> Self {
        self.config.idle_key_timeout = idle;
        self
    }

    /// Start in `mode`, or share a [`ModeHandle`]: [`Mode::Shadow`] runs the state machine
    /// and reports "would have rejected" but lets every call through; [`Mode::Off`] is a
    /// pass-through.
    #[must_use]
    pub fn mode(mut self, mode: impl Into<ModeHandle>) -> Self {
        self.mode = Some(mode.into());
        self
    }

    /// Where events go (default [`TracingObserver`](crate::observe::TracingObserver)).
    #[must_use]
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = SharedObserver::new(observer);
        self
    }

    /// The time source (default tokio's clock; a
    /// [`ManualClock`](crate::clock::ManualClock) in tests).
    #[must_use]
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// What counts as a failure (default [`ErrorsAsFailures`]; for HTTP services
    /// [`ServerErrorsAsFailures`](crate::classify::ServerErrorsAsFailures) also counts 5xx
    /// responses, and [`Outcome::Ignored`](crate::classify::Outcome::Ignored) results
    /// count as nothing).
    #[must_use]
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2, K> {
        CircuitBreakerBuilder {
            config: self.config,
            classifier,
            key: self.key,
            observer: self.observer,
            clock: self.clock,
            mode: self.mode,
        }
    }

    /// One breaker per key (e.g. per downstream host), bounded by
    /// [`max_keys`](Self::max_keys) and [`idle_key_timeout`](Self::idle_key_timeout). A
    /// request whose key cannot be read goes through unguarded and unrecorded.
    #[must_use]
    pub fn keyed<E>(self, extractor: E) -> CircuitBreakerBuilder<C, KeyedBy<E>> {
        CircuitBreakerBuilder {
            config: self.config,
            classifier: self.classifier,
            key: KeyedBy(extractor),
            observer: self.observer,
            clock: self.clock,
            mode: self.mode,
        }
    }

    fn settings(&self) -> Result<Arc<Settings>, ConfigError> {
        let c = &self.config;
        c.check()?;
        Ok(Arc::new(Settings {
            name: c.name.as_str().into(),
            failure_pct: c.failure_rate_threshold,
            slow_pct: c.slow_call_rate_threshold,
            slow_after: c.slow_call_duration,
            minimum_calls: c.minimum_calls,
            window: match c.sliding_window {
                SlidingWindow::Count { size } => WindowShape::Count(size),
                SlidingWindow::Time { length, buckets } => WindowShape::Time { length, buckets },
            },
            wait: c.wait_in_open,
            growth: c.wait_growth.map(|g| Growth {
                multiplier: g.multiplier,
                max: g.max,
                jitter: g.jitter,
            }),
            permits: c.permitted_calls_in_half_open,
            max_half_open: c.max_wait_in_half_open,
            observer: self.observer.clone(),
            clock: self.clock.clone(),
        }))
    }

    fn mode_handle(&self) -> ModeHandle {
        self.mode
            .clone()
            .unwrap_or_else(|| ModeHandle::new(self.config.mode))
    }
}

impl<C> CircuitBreakerBuilder<C, Unkeyed> {
    /// The layer, after checking every setting.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let settings = self.settings()?;
        let mode = self.mode_handle();
        Ok(CircuitBreakerLayer {
            breakers: Single(Arc::new(Breaker::new(settings, None))),
            classifier: self.classifier,
            mode,
        })
    }
}

impl<C, E> CircuitBreakerBuilder<C, KeyedBy<E>> {
    /// The layer, after checking every setting.
    pub fn build(self) -> Result<CircuitBreakerLayer<C, Keyed<E>>, ConfigError> {
        let settings = self.settings()?;
        let mode = self.mode_handle();
        if self.config.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        if self.config.idle_key_timeout.is_zero() {
            return Err(ConfigError::new(
                "idle_key_timeout",
                "must be greater than zero",
            ));
        }
        Ok(CircuitBreakerLayer {
            breakers: Keyed {
                extractor: self.key.0,
                store: Arc::new(KeyedStore {
                    settings,
                    max_keys: self.config.max_keys,
                    idle: self.config.idle_key_timeout,
                    cache: OnceLock::new(),
                }),
            },
            classifier: self.classifier,
            mode,
        })
    }
}

/// One breaker for every request; see [`CircuitBreakerLayer::handle`].
#[derive(Debug, Clone)]
pub struct Single(Arc<Breaker>);

/// One breaker per key; see [`CircuitBreakerLayer::handles`].
#[derive(Debug, Clone)]
pub struct Keyed<E> {
    extractor: E,
    store: Arc<KeyedStore>,
}

struct KeyedStore {
    settings: Arc<Settings>,
    max_keys: u64,
    idle: Duration,
    /// A `moka::sync::Cache<K, Arc<Breaker>>`, typed when the key type is first known.
    cache: OnceLock<Erased>,
}

impl fmt::Debug for KeyedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedStore")
            .field("name", &self.settings.name)
            .field("max_keys", &self.max_keys)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

type Cache<K> = moka::sync::Cache<K, Arc<Breaker>>;

struct Erased {
    cache: Box<dyn Any + Send + Sync>,
    len: fn(&(dyn Any + Send + Sync)) -> u64,
}

impl KeyedStore {
    fn cache<K>(&self) -> Option<&Cache<K>>
    where
        K: Hash + Eq + Send + Sync + 'static,
    {
        self.cache
            .get_or_init(|| Erased {
                cache: Box::new(
                    Cache::<K>::builder()
                        .max_capacity(self.max_keys)
                        .time_to_idle(self.idle)
                        .build(),
                ),
                len: len_of::<K>,
            })
            .cache
            .downcast_ref()
    }

    fn existing<K>(&self) -> Option<&Cache<K>>
    where
        K: Hash + Eq + Send + Sync + 'static,
    {
        self.cache.get()?.cache.downcast_ref()
    }

    fn breaker<K>(&self, key: K) -> Option<Arc<Breaker>>
    where
        K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
    {
        let cache = self.cache::<K>()?;
        if let Some(b) = cache.get(&key) {
            return Some(b);
        }
        let settings = self.settings.clone();
        let boxed: Box<dyn fmt::Debug + Send + Sync> = Box::new(key.clone());
        Some(cache.get_with(key, move || Arc::new(Breaker::new(settings, Some(boxed)))))
    }
}

/// Guards the inner service with a circuit breaker; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures, B = Single> {
    breakers: B,
    classifier: C,
    mode: ModeHandle,
}

impl CircuitBreakerLayer {
    /// A builder with resilience4j's defaults: count window of 100 calls, minimum 100
    /// calls, 50 % failure threshold, 60 s open, 10 probes in half-open. Every error of
    /// the inner service is a failure and every response a success: for HTTP services,
    /// where a 5xx response is a failure too, start from [`http`](Self::http).
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::from_config(CircuitBreakerConfig::default())
    }
}

#[cfg(feature = "http")]
impl CircuitBreakerLayer {
    /// [`builder`](Self::builder) for HTTP services: errors (timeouts included) and 5xx
    /// responses are failures, 4xx responses are successes
    /// ([`ServerErrorsAsFailures`](crate::classify::ServerErrorsAsFailures)).
    pub fn http() -> CircuitBreakerBuilder<crate::classify::ServerErrorsAsFailures> {
        CircuitBreakerLayer::builder().classifier(crate::classify::ServerErrorsAsFailures)
    }

    /// [`builder`](Self::builder) for gRPC services: errors and server-fault statuses
    /// (`UNAVAILABLE`, `INTERNAL`, `DEADLINE_EXCEEDED`, ...) are failures
    /// ([`GrpcErrorsAsFailures`](crate::classify::GrpcErrorsAsFailures)).
    pub fn grpc() -> CircuitBreakerBuilder<crate::classify::GrpcErrorsAsFailures> {
        CircuitBreakerLayer::builder().classifier(crate::classify::GrpcErrorsAsFailures::new())
    }
}

impl<C, B> CircuitBreakerLayer<C, B> {
    /// The handle that switches this layer's mode at runtime.
    pub fn mode_handle(&self) -> ModeHandle {
        self.mode.clone()
    }
}

impl<C> CircuitBreakerLayer<C, Single> {
    /// The breaker's handle: state, rates, and manual control.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle(self.breakers.0.clone())
    }
}

impl<C, E> CircuitBreakerLayer<C, Keyed<E>> {
    /// The handles of the per-key breakers.
    pub fn handles(&self) -> KeyedHandles {
        KeyedHandles(self.breakers.store.clone())
    }
}

impl<S, C: Clone, B: Clone> Layer<S> for CircuitBreakerLayer<C, B> {
    type Service = CircuitBreaker<S, C, B>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            breakers: self.breakers.clone(),
            classifier: self.classifier.clone(),
            mode: self.mode.clone(),
        }
    }
}

/// The service of [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S, C = ErrorsAsFailures, B = Single> {
    inner: S,
    breakers: B,
    classifier: C,
    mode: ModeHandle,
}

impl<S, C, B> CircuitBreaker<S, C, B> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the breaker.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Admission against `breaker`, shared by the single and keyed services.
#[inline]
fn admit<S, C, Req>(
    inner: &mut S,
    classifier: &C,
    mode: Mode,
    breaker: Arc<Breaker>,
    req: Req,
) -> ResponseFuture<S::Future, C>
where
    S: Service<Req>,
    C: Clone,
{
    match breaker.acquire() {
        Ok(ticket) => {
            // The guard exists before the inner call, so a panic in `call` counts too.
            let guard = Guard::new(breaker, ticket);
            let future = inner.call(req);
            ResponseFuture::tracked(future, guard, classifier.clone())
        }
        Err(refusal) => {
            let settings = &breaker.settings;
            let shadow = mode == Mode::Shadow;
            settings.observer.emit(&Event::CircuitRejected {
                name: &settings.name,
                key: breaker.key(),
                state: refusal.state,
                retry_after: refusal.retry_after,
                shadow,
            });
            if shadow {
                ResponseFuture::untracked(inner.call(req))
            } else {
                ResponseFuture::rejected(Rejection::circuit_open(
                    settings.name.clone(),
                    refusal.retry_after,
                ))
            }
        }
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C, Single>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.mode.get() {
            Mode::Off => ResponseFuture::untracked(self.inner.call(req)),
            mode => {
                let breaker = self.breakers.0.clone();
                admit(&mut self.inner, &self.classifier, mode, breaker, req)
            }
        }
    }
}

impl<S, C, E, Req> Service<Req> for CircuitBreaker<S, C, Keyed<E>>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response>,
    E: KeyExtractor<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mode = self.mode.get();
        if mode == Mode::Off {
            return ResponseFuture::untracked(self.inner.call(req));
        }
        let breaker = self
            .breakers
            .extractor
            .extract(&req)
            .ok()
            .and_then(|key| self.breakers.store.breaker(key));
        match breaker {
            Some(breaker) => admit(&mut self.inner, &self.classifier, mode, breaker, req),
            None => ResponseFuture::untracked(self.inner.call(req)),
        }
    }
}

/// Reads and controls one breaker. Clones control the same breaker.
///
/// Manual transitions start the metrics afresh and are reported as state changes.
#[derive(Debug, Clone)]
pub struct CircuitBreakerHandle(Arc<Breaker>);

impl CircuitBreakerHandle {
    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.0.settings.name
    }

    /// The current state. An open breaker whose wait is over reads (and becomes)
    /// half-open.
    pub fn state(&self) -> State {
        self.0.state()
    }

    /// State, rates and counts.
    pub fn metrics(&self) -> Metrics {
        self.0.snapshot()
    }

    /// Refuse every call until another manual transition.
    pub fn force_open(&self) {
        self.0.force(State::ForcedOpen, false);
    }

    /// Open now, as if tripped: probes follow after the (grown) wait.
    pub fn trip(&self) {
        self.0.force(State::Open, false);
    }

    /// Close now, with a fresh window.
    pub fn close(&self) {
        self.0.force(State::Closed, false);
    }

    /// Let probes through now.
    pub fn half_open(&self) {
        self.0.force(State::HalfOpen, false);
    }

    /// Let every call through and record nothing.
    pub fn disable(&self) {
        self.0.force(State::Disabled, false);
    }

    /// Let every call through, record outcomes and report threshold crossings, never
    /// trip.
    pub fn metrics_only(&self) {
        self.0.force(State::MetricsOnly, false);
    }

    /// Back to closed as if new: fresh window, no consecutive trips, counters at zero.
    pub fn reset(&self) {
        self.0.force(State::Closed, true);
    }
}

/// The handles of a keyed layer's breakers.
#[derive(Debug, Clone)]
pub struct KeyedHandles(Arc<KeyedStore>);

impl KeyedHandles {
    /// The handle of `key`'s breaker, if it exists (it is created by the key's first
    /// request).
    pub fn get<K>(&self, key: &K) -> Option<CircuitBreakerHandle>
    where
        K: Hash + Eq + Send + Sync + 'static,
    {
        self.0.existing::<K>()?.get(key).map(CircuitBreakerHandle)
    }

    /// How many breakers are alive, after finishing pending evictions.
    pub fn len(&self) -> u64 {
        match self.0.cache.get() {
            Some(erased) => (erased.len)(&*erased.cache),
            None => 0,
        }
    }

    /// Whether no breaker is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn len_of<K>(any: &(dyn Any + Send + Sync)) -> u64
where
    K: Hash + Eq + Send + Sync + 'static,
{
    any.downcast_ref::<Cache<K>>().map_or(0, |cache| {
        cache.run_pending_tasks();
        cache.entry_count()
    })
}
