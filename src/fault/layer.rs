//! The layer, its builder, its service, its handle, targeting and the injected answers.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tower_layer::Layer;
use tower_service::Service;

use super::config::FaultConfig;
use super::future::ResponseFuture;
use super::state::{self, Decision, End, FaultKind, Rng, Settings};
use crate::error::{BoxError, ConfigError};
use crate::key::KeyExtractor;
use crate::mode::{Mode, ModeHandle};
use crate::observe::{Event, Observer, SharedObserver};

/// The errors the layer injects when no error of your own is configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FaultError {
    /// An error fault with no configured error.
    #[error("fault `{name}` injected an error")]
    #[non_exhaustive]
    Injected {
        /// The layer's name.
        name: Arc<str>,
    },
    /// An abort fault: the call failed as if the connection broke. Its `source()` is an
    /// [`std::io::Error`] of kind `ConnectionReset`, so transport-error handling applies.
    #[error("fault `{name}` aborted the call")]
    #[non_exhaustive]
    Aborted {
        /// The layer's name.
        name: Arc<str>,
        /// The transport error it stands for.
        #[source]
        source: std::io::Error,
    },
}

impl FaultError {
    /// The fault error in `err`, if it is one.
    pub fn from_box(err: &BoxError) -> Option<&FaultError> {
        err.downcast_ref()
    }

    pub(crate) fn aborted(name: &Arc<str>) -> FaultError {
        FaultError::Aborted {
            name: name.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by fault injection",
            ),
        }
    }
}

/// What an error fault answers, for a service whose response is `Res`.
pub trait FaultAnswer<Res>: Send + Sync + 'static {
    /// The answer of one error fault: an error, or a response (an HTTP status).
    fn answer(&self, name: &Arc<str>) -> Result<Res, BoxError>;
}

/// The default answer of an error fault: an error from the configured factory
/// ([`FaultBuilder::error_with`]), or [`FaultError::Injected`].
#[derive(Clone, Default)]
pub struct ErrorAnswer(Option<Arc<dyn Fn() -> BoxError + Send + Sync>>);

impl fmt::Debug for ErrorAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ErrorAnswer(custom)"
        } else {
            "ErrorAnswer(FaultError::Injected)"
        })
    }
}

impl<Res> FaultAnswer<Res> for ErrorAnswer {
    fn answer(&self, name: &Arc<str>) -> Result<Res, BoxError> {
        Err(match &self.0 {
            Some(make) => make(),
            None => Box::new(FaultError::Injected { name: name.clone() }),
        })
    }
}

/// An error fault that answers an HTTP response with this status, an empty body and a
/// `parapet-fault: error` header ([`FaultBuilder::http_status`]).
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy)]
pub struct HttpStatus(pub http::StatusCode);

#[cfg(feature = "http")]
impl<B: Default> FaultAnswer<http::Response<B>> for HttpStatus {
    fn answer(&self, _: &Arc<str>) -> Result<http::Response<B>, BoxError> {
        let mut res = http::Response::new(B::default());
        *res.status_mut() = self.0;
        res.headers_mut().insert(
            http::HeaderName::from_static("parapet-fault"),
            http::HeaderValue::from_static("error"),
        );
        Ok(res)
    }
}

/// Which requests may get a fault. Requests it does not target pass through untouched
/// and draw no random numbers.
pub trait Target<Req>: Send + Sync + 'static {
    /// Whether `req` may get a fault.
    fn targets(&self, req: &Req) -> bool;
}

/// Every request (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllRequests;

impl<Req> Target<Req> for AllRequests {
    #[inline]
    fn targets(&self, _: &Req) -> bool {
        true
    }
}

/// Requests a closure selects ([`FaultBuilder::when`]).
pub struct When<F>(F);

impl<F> fmt::Debug for When<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("When(..)")
    }
}

impl<Req, F> Target<Req> for When<F>
where
    F: Fn(&Req) -> bool + Send + Sync + 'static,
{
    fn targets(&self, req: &Req) -> bool {
        (self.0)(req)
    }
}

/// A sticky share of keys ([`FaultBuilder::keys`]): a key is targeted when its hash
/// bucket falls under the percentage, so a key is in or out for every request. A request
/// without a key is not targeted.
#[derive(Debug, Clone)]
pub struct KeyShare<E> {
    extractor: E,
    basis_points: u32,
    salt: u64,
}

impl<Req, E> Target<Req> for KeyShare<E>
where
    E: KeyExtractor<Req>,
{
    fn targets(&self, req: &Req) -> bool {
        match self.extractor.extract(req) {
            Ok(key) => state::bucket(self.salt, &key) < self.basis_points,
            Err(_) => false,
        }
    }
}

impl<E> KeyShare<E> {
    /// Whether `key` is in the targeted share.
    pub fn contains<K: Hash + ?Sized>(&self, key: &K) -> bool {
        state::bucket(self.salt, key) < self.basis_points
    }
}

/// Both targets must select the request (builder methods add to each other).
#[derive(Debug, Clone, Copy)]
pub struct Both<A, B>(A, B);

impl<Req, A: Target<Req>, B: Target<Req>> Target<Req> for Both<A, B> {
    #[inline]
    fn targets(&self, req: &Req) -> bool {
        self.0.targets(req) && self.1.targets(req)
    }
}

/// Builds a [`FaultLayer`]; start with [`FaultLayer::builder`].
pub struct FaultBuilder<T = AllRequests, A = ErrorAnswer> {
    config: FaultConfig,
    observer: SharedObserver,
    mode: Option<ModeHandle>,
    target: T,
    answer: A,
    percent_error: Option<(&'static str, f64)>,
}

impl<T: fmt::Debug, A: fmt::Debug> fmt::Debug for FaultBuilder<T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultBuilder")
            .field("config", &self.config)
            .field("target", &self.target)
            .field("answer", &self.answer)
            .finish_non_exhaustive()
    }
}

impl FaultBuilder {
    pub(super) fn from_config(config: FaultConfig) -> FaultBuilder {
        FaultBuilder {
            config,
            observer: SharedObserver::default(),
            mode: None,
            target: AllRequests,
            answer: ErrorAnswer::default(),
            percent_error: None,
        }
    }
}

impl<T, A> FaultBuilder<T, A> {
    /// The name in events (default `"fault"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Fix the random sequence: the same seed and the same sequence of calls give the
    /// same faults (default: a different seed per layer).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// Answer `percent` of calls with the error fault (see [`error_with`](Self::error_with)
    /// and [`http_status`](Self::http_status); default [`FaultError::Injected`]).
    #[must_use]
    pub fn error_rate(mut self, percent: f64) -> Self {
        self.config.error_rate = percent;
        self
    }

    /// Fail `percent` of calls with [`FaultError::Aborted`], as a broken connection would.
    #[must_use]
    pub fn abort_rate(mut self, percent: f64) -> Self {
        self.config.abort_rate = percent;
        self
    }

    /// Let `percent` of calls hang: they never answer, until the caller (a timeout) drops
    /// them.
    #[must_use]
    pub fn hang_rate(mut self, percent: f64) -> Self {
        self.config.hang_rate = percent;
        self
    }

    /// Delay `percent` of calls by `delay`.
    #[must_use]
    pub fn latency(mut self, percent: f64, delay: Duration) -> Self {
        self.config.latency_rate = percent;
        self.config.latency = delay;
        self.config.latency_max = None;
        self
    }

    /// Delay `percent` of calls by a time drawn uniformly from `[min, max]`.
    #[must_use]
    pub fn latency_between(mut self, percent: f64, min: Duration, max: Duration) -> Self {
        self.config.latency_rate = percent;
        self.config.latency = min;
        self.config.latency_max = Some(max);
        self
    }

    /// Start in `mode`, or share a [`ModeHandle`] (default [`Mode::Off`]): enforce
    /// injects, [`Mode::Shadow`] only reports what it would inject.
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

    /// Error faults answer with an error from `make` (any [`BoxError`]).
    #[must_use]
    pub fn error_with<F>(self, make: F) -> FaultBuilder<T, ErrorAnswer>
    where
        F: Fn() -> BoxError + Send + Sync + 'static,
    {
        self.answer_with(ErrorAnswer(Some(Arc::new(make))))
    }

    /// Error faults answer with an HTTP response of this status (for HTTP services).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[must_use]
    pub fn http_status(self, status: http::StatusCode) -> FaultBuilder<T, HttpStatus> {
        self.answer_with(HttpStatus(status))
    }

    /// Error faults answer with your own [`FaultAnswer`] (a gRPC status, a canned body).
    #[must_use]
    pub fn answer_with<A2>(self, answer: A2) -> FaultBuilder<T, A2> {
        FaultBuilder {
            config: self.config,
            observer: self.observer,
            mode: self.mode,
            target: self.target,
            answer,
            percent_error: self.percent_error,
        }
    }

    /// Only requests `predicate` selects may get a fault (a route, a header, a method).
    /// Adds to earlier targeting: both must select the request.
    #[must_use]
    pub fn when<F>(self, predicate: F) -> FaultBuilder<Both<T, When<F>>, A> {
        self.target_also(When(predicate))
    }

    /// Only requests whose key falls in a sticky `percent` share of keys may get a fault
    /// (a user, a tenant, a client IP): a key is in or out for every request, so some
    /// users see the faults and the rest none. A request without a key gets none. Adds to
    /// earlier targeting.
    #[must_use]
    pub fn keys<E>(mut self, extractor: E, percent: f64) -> FaultBuilder<Both<T, KeyShare<E>>, A> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            self.percent_error = Some(("keys", percent));
        }
        let salt = self.config.seed.unwrap_or(0);
        self.target_also(KeyShare {
            extractor,
            basis_points: (percent.clamp(0.0, 100.0) * 100.0).round() as u32,
            salt,
        })
    }

    fn target_also<U>(self, more: U) -> FaultBuilder<Both<T, U>, A> {
        FaultBuilder {
            config: self.config,
            observer: self.observer,
            mode: self.mode,
            target: Both(self.target, more),
            answer: self.answer,
            percent_error: self.percent_error,
        }
    }

    /// The layer, after checking every setting.
    pub fn build(self) -> Result<FaultLayer<T, A>, ConfigError> {
        let c = &self.config;
        if c.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.percent_error.is_some() {
            return Err(ConfigError::new(
                "keys",
                "must be a percentage from 0 to 100",
            ));
        }
        let settings = Settings {
            rates: [c.error_rate, c.latency_rate, c.hang_rate, c.abort_rate],
            enabled: [true; 4],
            latency: (c.latency, c.latency_max.unwrap_or(c.latency)),
        };
        settings.check()?;
        let seed = c.seed.unwrap_or_else(state::random_seed);
        Ok(FaultLayer {
            core: Arc::new(Core {
                name: c.name.as_str().into(),
                rng: Rng::new(seed),
                settings: ArcSwap::from_pointee(settings),
                mode: self.mode.unwrap_or_else(|| ModeHandle::new(c.mode)),
                observer: self.observer,
            }),
            policy: Arc::new(Policy {
                target: self.target,
                answer: self.answer,
            }),
        })
    }
}

/// The state every clone shares and the handle controls.
pub(crate) struct Core {
    pub(crate) name: Arc<str>,
    rng: Rng,
    settings: ArcSwap<Settings>,
    mode: ModeHandle,
    observer: SharedObserver,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("settings", &**self.settings.load())
            .finish_non_exhaustive()
    }
}

impl Core {
    fn decide(&self) -> Decision {
        self.settings.load().decide(|| self.rng.next())
    }

    fn changed(&self, change: &'static str) {
        self.observer.emit(&Event::FaultChanged {
            name: &self.name,
            change,
        });
    }

    fn update(
        &self,
        mut f: impl FnMut(&mut Settings) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let mut result = Ok(());
        self.settings.rcu(|current| {
            let mut next = Settings::clone(current);
            result = f(&mut next);
            if result.is_err() {
                next = Settings::clone(current);
            }
            next
        });
        result
    }
}

#[derive(Debug)]
struct Policy<T, A> {
    target: T,
    answer: A,
}

/// Injects faults into the services it builds; see the [module docs](super).
pub struct FaultLayer<T = AllRequests, A = ErrorAnswer> {
    core: Arc<Core>,
    policy: Arc<Policy<T, A>>,
}

impl<T, A> Clone for FaultLayer<T, A> {
    fn clone(&self) -> Self {
        FaultLayer {
            core: self.core.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<T: fmt::Debug, A: fmt::Debug> fmt::Debug for FaultLayer<T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultLayer")
            .field("core", &self.core)
            .field("policy", &self.policy)
            .finish()
    }
}

impl FaultLayer {
    /// A builder with the defaults of [`FaultConfig`]: off, every rate 0.
    pub fn builder() -> FaultBuilder {
        FaultBuilder::from_config(FaultConfig::default())
    }
}

impl<T, A> FaultLayer<T, A> {
    /// The handle that switches the faults on and off and tunes them at runtime.
    pub fn handle(&self) -> FaultHandle {
        FaultHandle(self.core.clone())
    }

    /// The handle of this layer's mode (for the admin router, or a mode shared with
    /// other layers).
    pub fn mode_handle(&self) -> ModeHandle {
        self.core.mode.clone()
    }
}

impl<S, T, A> Layer<S> for FaultLayer<T, A> {
    type Service = Fault<S, T, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Fault {
            inner,
            core: self.core.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// The service of [`FaultLayer`]. Clones share the settings and the random sequence.
pub struct Fault<S, T = AllRequests, A = ErrorAnswer> {
    inner: S,
    core: Arc<Core>,
    policy: Arc<Policy<T, A>>,
}

impl<S: Clone, T, A> Clone for Fault<S, T, A> {
    fn clone(&self) -> Self {
        Fault {
            inner: self.inner.clone(),
            core: self.core.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug, T, A> fmt::Debug for Fault<S, T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fault")
            .field("inner", &self.inner)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl<S, T, A> Fault<S, T, A> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the layer's service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, T, A, Req> Service<Req> for Fault<S, T, A>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    T: Target<Req>,
    A: FaultAnswer<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let mode = self.core.mode.get();
        if mode == Mode::Off || !self.policy.target.targets(&req) {
            return ResponseFuture::inner(None, self.inner.call(req));
        }
        let core = &self.core;
        let decision = core.decide();
        let shadow = mode == Mode::Shadow;
        if let Some(delay) = decision.delay {
            core.observer.emit(&Event::FaultInjected {
                name: &core.name,
                fault: FaultKind::Latency,
                delay: Some(delay),
                shadow,
            });
        }
        let kind = match decision.end {
            End::Inner => None,
            End::Error => Some(FaultKind::Error),
            End::Abort => Some(FaultKind::Abort),
            End::Hang => Some(FaultKind::Hang),
        };
        if let Some(fault) = kind {
            core.observer.emit(&Event::FaultInjected {
                name: &core.name,
                fault,
                delay: None,
                shadow,
            });
        }
        if shadow {
            return ResponseFuture::inner(None, self.inner.call(req));
        }
        // The inner service is not called for a fault that answers by itself.
        match decision.end {
            End::Inner => ResponseFuture::inner(decision.delay, self.inner.call(req)),
            End::Error => {
                ResponseFuture::ready(decision.delay, self.policy.answer.answer(&core.name))
            }
            End::Abort => ResponseFuture::ready(
                decision.delay,
                Err(Box::new(FaultError::aborted(&core.name))),
            ),
            End::Hang => ResponseFuture::hang(),
        }
    }
}

/// Switches a fault layer on and off and tunes it at runtime. Clones control the same
/// layer; a change is seen by every call that starts after it returns.
#[derive(Debug, Clone)]
pub struct FaultHandle(Arc<Core>);

impl FaultHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Start injecting ([`Mode::Enforce`]).
    pub fn enable(&self) {
        self.set_mode(Mode::Enforce);
    }

    /// Stop injecting ([`Mode::Off`]): the layer is a pass-through again. Calls already
    /// hanging or delayed keep their fault.
    pub fn disable(&self) {
        self.set_mode(Mode::Off);
    }

    /// Switch the mode; returns the previous one.
    pub fn set_mode(&self, mode: Mode) -> Mode {
        let previous = self.0.mode.set(mode);
        if previous != mode {
            self.0.changed(match mode {
                Mode::Enforce => "enabled",
                Mode::Shadow => "shadowed",
                Mode::Off => "disabled",
            });
        }
        previous
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.0.mode.get()
    }

    /// Whether faults are injected (the mode is [`Mode::Enforce`]).
    pub fn is_enabled(&self) -> bool {
        self.mode() == Mode::Enforce
    }

    /// The shared mode handle (the one the admin router switches).
    pub fn mode_handle(&self) -> ModeHandle {
        self.0.mode.clone()
    }

    /// The configured rate of `kind` in percent (whether or not the kind is switched on).
    pub fn rate(&self, kind: FaultKind) -> f64 {
        self.0.settings.load().rates[kind.index()]
    }

    /// Set the rate of `kind` in percent; returns the previous one. Refused (nothing
    /// changes) outside 0–100, or when error, abort and hang would exceed 100 together.
    pub fn set_rate(&self, kind: FaultKind, percent: f64) -> Result<f64, ConfigError> {
        let mut previous = 0.0;
        self.0.update(|s| {
            s.check_rate(kind, percent)?;
            previous = s.rates[kind.index()];
            s.rates[kind.index()] = percent;
            Ok(())
        })?;
        self.0.changed("rate");
        Ok(previous)
    }

    /// Switch on exactly these kinds; the others inject nothing (their rates are kept).
    pub fn set_kinds(&self, kinds: impl IntoIterator<Item = FaultKind>) {
        let mut enabled = [false; 4];
        for kind in kinds {
            enabled[kind.index()] = true;
        }
        let _ = self.0.update(|s| {
            s.enabled = enabled;
            Ok(())
        });
        self.0.changed("kinds");
    }

    /// The kinds switched on.
    pub fn kinds(&self) -> Vec<FaultKind> {
        let s = self.0.settings.load();
        FaultKind::ALL
            .into_iter()
            .filter(|k| s.enabled[k.index()])
            .collect()
    }

    /// Set the delay of latency faults: uniform in `[min, max]`, fixed when equal.
    pub fn set_latency(&self, min: Duration, max: Duration) -> Result<(), ConfigError> {
        state::check_latency(min, max)?;
        let _ = self.0.update(|s| {
            s.latency = (min, max);
            Ok(())
        });
        self.0.changed("latency");
        Ok(())
    }
}
