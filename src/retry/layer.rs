//! The layer, its builder and its service.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tower_layer::Layer;
use tower_service::Service;

use super::backoff::{Backoff, Jitter};
use super::budget::RetryBudget;
use super::config::RetryConfig;
use super::future::ResponseFuture;
use super::pushback::{PushbackSource, RejectionPushback};
use super::replay::{CloneReplay, Replay};
use crate::classify::{Classifier, TransientErrors};
use crate::clock::Clock;
use crate::error::{BoxError, ConfigError};
use crate::observe::{Event, Observer, SharedObserver};

/// Where `Retry-After` dates are compared with the current time.
#[derive(Clone)]
pub(crate) struct WallClock(Option<Arc<dyn Fn() -> SystemTime + Send + Sync>>);

impl WallClock {
    pub(crate) fn now(&self) -> SystemTime {
        match &self.0 {
            Some(f) => f(),
            None => SystemTime::now(),
        }
    }
}

impl fmt::Debug for WallClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "WallClock(custom)"
        } else {
            "WallClock(system)"
        })
    }
}

/// What every service of a retry layer shares.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) name: Arc<str>,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) jitter: Jitter,
    pub(crate) min_time_left: Duration,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) observer: SharedObserver,
    pub(crate) wall_clock: WallClock,
    rng: AtomicU64,
}

impl Settings {
    /// A seed for one call's jitter: the shared sequence advanced by one step (so with a
    /// fixed seed, calls made one after another get the same waits on every run).
    pub(crate) fn next_seed(&self) -> u64 {
        self.rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .rotate_left(17)
    }

    pub(crate) fn completed(&self, attempts: u32, succeeded: bool) {
        self.observer.emit(&Event::RetryCompleted {
            name: &self.name,
            attempts,
            succeeded,
        });
    }
}

/// Builds a [`RetryLayer`]; start with [`RetryLayer::builder`] (any `Clone` request) or
/// [`RetryLayer::http`].
#[derive(Debug, Clone)]
pub struct RetryBuilder<R = CloneReplay, C = TransientErrors, P = RejectionPushback> {
    config: RetryConfig,
    replay: R,
    classifier: C,
    pushback: P,
    budget: Option<RetryBudget>,
    observer: SharedObserver,
    clock: Clock,
    wall_clock: WallClock,
}

impl RetryBuilder {
    pub(super) fn from_config(config: RetryConfig) -> RetryBuilder {
        RetryBuilder {
            config,
            replay: CloneReplay,
            classifier: TransientErrors,
            pushback: RejectionPushback,
            budget: None,
            observer: SharedObserver::default(),
            clock: Clock::tokio(),
            wall_clock: WallClock(None),
        }
    }
}

impl<R, C, P> RetryBuilder<R, C, P> {
    /// The name in events (default `"retry"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Attempts per call, **the first call included** (default 3: the call and up to two
    /// retries; 1 never retries).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The wait before each retry (default exponential: 100 ms, doubling, capped at 10 s).
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The jitter applied to the capped wait (default [`Jitter::Full`]).
    #[must_use]
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// Share `budget` (e.g. with other retry layers towards the same dependency) instead
    /// of the one built from the config (default: 20 % of requests plus 10 per second,
    /// over 10 s).
    #[must_use]
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: only [`max_attempts`](Self::max_attempts) bounds retries.
    #[must_use]
    pub fn no_budget(mut self) -> Self {
        self.config.budget = None;
        self.budget = None;
        self
    }

    /// Start another attempt only if at least this much of the request's deadline is left
    /// once the backoff is over (default zero: only if some is left).
    #[must_use]
    pub fn min_time_left(mut self, min: Duration) -> Self {
        self.config.min_time_left = min;
        self
    }

    /// Seed the jitter's random numbers, for reproducible waits (default: a random seed
    /// per layer).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// Where events go (default [`TracingObserver`](crate::observe::TracingObserver)).
    #[must_use]
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = SharedObserver::new(observer);
        self
    }

    /// The time source of the budget built from the config (default tokio's clock).
    #[must_use]
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// The wall clock `Retry-After` dates are compared with (default
    /// `SystemTime::now`).
    #[must_use]
    pub fn wall_clock(mut self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.wall_clock = WallClock(Some(Arc::new(now)));
        self
    }

    /// How requests are kept for another attempt (default [`CloneReplay`]).
    #[must_use]
    pub fn replay<R2>(self, replay: R2) -> RetryBuilder<R2, C, P> {
        RetryBuilder {
            config: self.config,
            replay,
            classifier: self.classifier,
            pushback: self.pushback,
            budget: self.budget,
            observer: self.observer,
            clock: self.clock,
            wall_clock: self.wall_clock,
        }
    }

    /// What is retried: a [`Failure`](crate::classify::Outcome::Failure) is, successes and
    /// [`Ignored`](crate::classify::Outcome::Ignored) results are returned (default
    /// [`TransientErrors`]).
    #[must_use]
    pub fn classifier<C2>(self, classifier: C2) -> RetryBuilder<R, C2, P> {
        RetryBuilder {
            config: self.config,
            replay: self.replay,
            classifier,
            pushback: self.pushback,
            budget: self.budget,
            observer: self.observer,
            clock: self.clock,
            wall_clock: self.wall_clock,
        }
    }

    /// Where the server's pushback is read (default [`RejectionPushback`]).
    #[must_use]
    pub fn pushback<P2>(self, pushback: P2) -> RetryBuilder<R, C, P2> {
        RetryBuilder {
            config: self.config,
            replay: self.replay,
            classifier: self.classifier,
            pushback,
            budget: self.budget,
            observer: self.observer,
            clock: self.clock,
            wall_clock: self.wall_clock,
        }
    }

    /// The layer, after checking every setting.
    pub fn build(self) -> Result<RetryLayer<R, C, P>, ConfigError> {
        let c = &self.config;
        c.check()?;
        let budget = match (self.budget, &c.budget) {
            (Some(shared), _) => Some(shared),
            (None, Some(b)) => Some(RetryBudget::with_clock(
                b.ratio,
                b.min_per_second,
                b.window,
                self.clock,
            )),
            (None, None) => None,
        };
        let seed = c.seed.unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        Ok(RetryLayer {
            settings: Arc::new(Settings {
                name: c.name.as_str().into(),
                max_attempts: c.max_attempts,
                backoff: c.backoff,
                jitter: c.jitter,
                min_time_left: c.min_time_left,
                budget,
                observer: self.observer,
                wall_clock: self.wall_clock,
                rng: AtomicU64::new(seed),
            }),
            replay: self.replay,
            classifier: self.classifier,
            pushback: self.pushback,
        })
    }
}

/// Retries failed calls; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct RetryLayer<R = CloneReplay, C = TransientErrors, P = RejectionPushback> {
    settings: Arc<Settings>,
    replay: R,
    classifier: C,
    pushback: P,
}

impl RetryLayer {
    /// A builder for any `Clone` request ([`CloneReplay`]), retrying
    /// [`TransientErrors`] with the pushback of inner rejections, and the defaults of
    /// [`RetryConfig`].
    pub fn builder() -> RetryBuilder {
        RetryBuilder::from_config(RetryConfig::default())
    }
}

#[cfg(feature = "http")]
impl RetryLayer {
    /// A builder for `http::Request`s: idempotent methods or an `Idempotency-Key` only,
    /// bodies buffered up to 64 KiB ([`HttpReplay`](super::HttpReplay)); 502/503/504,
    /// 429 with pushback and transient errors retried
    /// ([`TransientHttpFailures`](crate::classify::TransientHttpFailures)); `Retry-After`,
    /// `RateLimit` and `grpc-retry-pushback-ms` honoured
    /// ([`HttpPushback`](super::HttpPushback)).
    pub fn http()
    -> RetryBuilder<super::HttpReplay, crate::classify::TransientHttpFailures, super::HttpPushback>
    {
        RetryLayer::builder()
            .replay(super::HttpReplay::new())
            .classifier(crate::classify::TransientHttpFailures)
            .pushback(super::HttpPushback)
    }
}

impl<R, C, P> RetryLayer<R, C, P> {
    /// The retry budget, if the layer has one: shared by every service it builds.
    pub fn budget(&self) -> Option<RetryBudget> {
        self.settings.budget.clone()
    }
}

impl<S, R: Clone, C: Clone, P: Clone> Layer<S> for RetryLayer<R, C, P> {
    type Service = Retry<S, R, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            settings: self.settings.clone(),
            replay: self.replay.clone(),
            classifier: self.classifier.clone(),
            pushback: self.pushback.clone(),
        }
    }
}

/// The service of [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S, R = CloneReplay, C = TransientErrors, P = RejectionPushback> {
    inner: S,
    settings: Arc<Settings>,
    replay: R,
    classifier: C,
    pushback: P,
}

impl<S, R, C, P> Retry<S, R, C, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the retry layer.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, R, C, P> Service<Req> for Retry<S, R, C, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    R: Replay<Req>,
    C: Classifier<S::Response>,
    P: PushbackSource<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, R, C, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(budget) = &self.settings.budget {
            budget.deposit();
        }
        let deadline = self.replay.deadline(&req);
        let prepare = self.replay.prepare(req);
        // The first attempt goes to the service the caller made ready; a clone stays.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(
            service,
            prepare,
            self.replay.clone(),
            self.classifier.clone(),
            self.pushback.clone(),
            self.settings.clone(),
            deadline,
        )
    }
}
