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
use super::corrupt::{Corruption, NoCorruption};
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

/// An error fault that answers a gRPC status the way a gRPC server does: a trailers-only
/// response, HTTP 200 with `content-type: application/grpc`, `grpc-status` (the code's
/// number), `grpc-message` (percent-encoded), an empty body and a `parapet-fault: error`
/// header ([`FaultBuilder::grpc_status`]). A gRPC client reads it as that status.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone)]
pub struct GrpcStatus {
    /// The status code.
    pub code: crate::grpc::Code,
    /// The message (sent percent-encoded; may be empty).
    pub message: String,
}

#[cfg(feature = "http")]
impl<B: Default> FaultAnswer<http::Response<B>> for GrpcStatus {
    fn answer(&self, _: &Arc<str>) -> Result<http::Response<B>, BoxError> {
        let (mut parts, _) = crate::http::grpc_answer(self.code, &self.message, None).into_parts();
        parts.headers.insert(
            http::HeaderName::from_static("parapet-fault"),
            http::HeaderValue::from_static("error"),
        );
        Ok(http::Response::from_parts(parts, B::default()))
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
pub struct FaultBuilder<T = AllRequests, A = ErrorAnswer, C = NoCorruption> {
    config: FaultConfig,
    observer: SharedObserver,
    mode: Option<ModeHandle>,
    target: T,
    answer: A,
    corruption: C,
    can_corrupt: bool,
    percent_error: Option<(&'static str, f64)>,
}

impl<T: fmt::Debug, A: fmt::Debug, C: fmt::Debug> fmt::Debug for FaultBuilder<T, A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultBuilder")
            .field("config", &self.config)
            .field("target", &self.target)
            .field("answer", &self.answer)
            .field("corruption", &self.corruption)
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
            corruption: NoCorruption,
            can_corrupt: false,
            percent_error: None,
        }
    }
}

impl<T, A, C> FaultBuilder<T, A, C> {
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

    /// Corrupt the responses of `percent` of calls with `corruption` (for HTTP,
    /// [`HttpCorruption`](super::HttpCorruption)): the service is called and what it
    /// answers is mangled. Corrupt excludes error, abort and hang (one roll decides among
    /// them).
    #[must_use]
    pub fn corrupt<C2>(mut self, percent: f64, corruption: C2) -> FaultBuilder<T, A, C2> {
        self.config.corrupt_rate = percent;
        self.corruption(corruption)
    }

    /// Corrupt responses with `corruption`, at the rate already configured
    /// ([`FaultConfig::corrupt_rate`]) or set later through the handle.
    #[must_use]
    pub fn corruption<C2>(self, corruption: C2) -> FaultBuilder<T, A, C2> {
        FaultBuilder {
            config: self.config,
            observer: self.observer,
            mode: self.mode,
            target: self.target,
            answer: self.answer,
            corruption,
            can_corrupt: true,
            percent_error: self.percent_error,
        }
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
    pub fn error_with<F>(self, make: F) -> FaultBuilder<T, ErrorAnswer, C>
    where
        F: Fn() -> BoxError + Send + Sync + 'static,
    {
        self.answer_with(ErrorAnswer(Some(Arc::new(make))))
    }

    /// Error faults answer with an HTTP response of this status (for HTTP services).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[must_use]
    pub fn http_status(self, status: http::StatusCode) -> FaultBuilder<T, HttpStatus, C> {
        self.answer_with(HttpStatus(status))
    }

    /// Error faults answer with this gRPC status, as a gRPC server would: HTTP 200 with
    /// `grpc-status` and `grpc-message` (for gRPC services over HTTP, tonic's included).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[must_use]
    pub fn grpc_status(
        self,
        code: crate::grpc::Code,
        message: impl Into<String>,
    ) -> FaultBuilder<T, GrpcStatus, C> {
        self.answer_with(GrpcStatus {
            code,
            message: message.into(),
        })
    }

    /// Error faults answer with your own [`FaultAnswer`] (a canned body, a typed error).
    #[must_use]
    pub fn answer_with<A2>(self, answer: A2) -> FaultBuilder<T, A2, C> {
        FaultBuilder {
            config: self.config,
            observer: self.observer,
            mode: self.mode,
            target: self.target,
            answer,
            corruption: self.corruption,
            can_corrupt: self.can_corrupt,
            percent_error: self.percent_error,
        }
    }

    /// Only requests `predicate` selects may get a fault (a route, a header, a method).
    /// Adds to earlier targeting: both must select the request.
    #[must_use]
    pub fn when<F>(self, predicate: F) -> FaultBuilder<Both<T, When<F>>, A, C> {
        self.target_also(When(predicate))
    }

    /// Only requests whose key falls in a sticky `percent` share of keys may get a fault
    /// (a user, a tenant, a client IP): a key is in or out for every request, so some
    /// users see the faults and the rest none. A request without a key gets none. Adds to
    /// earlier targeting.
    #[must_use]
    pub fn keys<E>(
        mut self,
        extractor: E,
        percent: f64,
    ) -> FaultBuilder<Both<T, KeyShare<E>>, A, C> {
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

    fn target_also<U>(self, more: U) -> FaultBuilder<Both<T, U>, A, C> {
        FaultBuilder {
            config: self.config,
            observer: self.observer,
            mode: self.mode,
            target: Both(self.target, more),
            answer: self.answer,
            corruption: self.corruption,
            can_corrupt: self.can_corrupt,
            percent_error: self.percent_error,
        }
    }

    /// The layer, after checking every setting.
    pub fn build(self) -> Result<FaultLayer<T, A, C>, ConfigError> {
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
            rates: [
                c.error_rate,
                c.latency_rate,
                c.hang_rate,
                c.abort_rate,
                c.corrupt_rate,
            ],
            enabled: [true; state::KINDS],
            latency: (c.latency, c.latency_max.unwrap_or(c.latency)),
            can_corrupt: self.can_corrupt,
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
                corruption: Arc::new(self.corruption),
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

    fn random_u64(&self) -> u64 {
        self.rng.next_u64()
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
struct Policy<T, A, C> {
    target: T,
    answer: A,
    // Its own `Arc`, so a corrupted call hands it to its future as a trait object.
    corruption: Arc<C>,
}

/// Injects faults into the services it builds; see the [module docs](super).
pub struct FaultLayer<T = AllRequests, A = ErrorAnswer, C = NoCorruption> {
    core: Arc<Core>,
    policy: Arc<Policy<T, A, C>>,
}

impl<T, A, C> Clone for FaultLayer<T, A, C> {
    fn clone(&self) -> Self {
        FaultLayer {
            core: self.core.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<T: fmt::Debug, A: fmt::Debug, C: fmt::Debug> fmt::Debug for FaultLayer<T, A, C> {
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

impl<T, A, C> FaultLayer<T, A, C> {
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

impl<S, T, A, C> Layer<S> for FaultLayer<T, A, C> {
    type Service = Fault<S, T, A, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Fault {
            inner,
            core: self.core.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// The service of [`FaultLayer`]. Clones share the settings and the random sequence.
pub struct Fault<S, T = AllRequests, A = ErrorAnswer, C = NoCorruption> {
    inner: S,
    core: Arc<Core>,
    policy: Arc<Policy<T, A, C>>,
}

impl<S: Clone, T, A, C> Clone for Fault<S, T, A, C> {
    fn clone(&self) -> Self {
        Fault {
            inner: self.inner.clone(),
            core: self.core.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug, T, A, C> fmt::Debug for Fault<S, T, A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fault")
            .field("inner", &self.inner)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl<S, T, A, C> Fault<S, T, A, C> {
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

impl<S, T, A, C, Req> Service<Req> for Fault<S, T, A, C>
where
    S: Service<Req>,
    S::Response: 'static,
    S::Error: Into<BoxError>,
    T: Target<Req>,
    A: FaultAnswer<S::Response>,
    C: Corruption<S::Response>,
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
            End::Corrupt => Some(FaultKind::Corrupt),
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
            End::Corrupt => ResponseFuture::corrupt(
                decision.delay,
                self.inner.call(req),
                self.policy.corruption.clone(),
                core.random_u64(),
            ),
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
    /// changes) outside 0–100, when error, abort, hang and corrupt would exceed 100
    /// together, or for a corrupt rate above 0 on a layer built without a corruption.
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
        let mut enabled = [false; state::KINDS];
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
