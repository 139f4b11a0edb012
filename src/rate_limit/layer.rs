//! The rate limit layer, its service and its handle.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::quota::Quota;
use super::state::{Decision, KeyedStore, Quotas, Slot, reset_slot};
use crate::clock::Clock;
use crate::error::{BoxError, RateLimitInfo, Rejection};
use crate::key::{Global, KeyExtractor};
use crate::mode::{Mode, ModeHandle};
use crate::observe::{Event, Observer, SharedObserver};

/// The default bound on keys a keyed limiter tracks.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// How much of the quota a request costs: a constant [`One`], or a closure
/// `Fn(&Req) -> u32` (see [`RateLimitLayer::weight`]).
///
/// A weight of 0 is admitted without asking the quotas. A weight larger than a quota's
/// burst is counted as the whole burst: such a request is admitted only when that quota is
/// full, and empties it (it would otherwise never be admitted).
pub trait Weight<Req>: Clone + Send + Sync + 'static {
    /// The cost of `req`, in requests' worth of quota.
    fn weight(&self, req: &Req) -> u32;
}

/// Every request costs 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct One;

impl<Req> Weight<Req> for One {
    #[inline]
    fn weight(&self, _: &Req) -> u32 {
        1
    }
}

impl<Req, F> Weight<Req> for F
where
    F: Fn(&Req) -> u32 + Clone + Send + Sync + 'static,
{
    fn weight(&self, req: &Req) -> u32 {
        self(req)
    }
}

/// What happens to an admitted response: nothing ([`NoHeaders`]), or the `RateLimit`
/// fields are added ([`RateLimitHeaders`](super::RateLimitHeaders), feature `http`).
pub trait OnAdmitted<Res>: Clone + Send + Sync + 'static {
    /// Whether [`OnAdmitted::apply`] does anything: the limiter gathers the quota's state
    /// only when it does.
    fn enabled(&self) -> bool;

    /// Decorate an admitted response with the state of its tightest quota.
    fn apply(&self, res: &mut Res, info: &RateLimitInfo);
}

/// Admitted responses are passed on untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl<Res> OnAdmitted<Res> for NoHeaders {
    #[inline]
    fn enabled(&self) -> bool {
        false
    }

    #[inline]
    fn apply(&self, _: &mut Res, _: &RateLimitInfo) {}
}

/// What a keyed limiter does with a request whose key cannot be read (e.g. no API key
/// header, no peer address in the extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissingKey {
    /// Every such request shares one quota of its own (default): anonymous traffic is
    /// limited as a whole.
    #[default]
    Shared,
    /// Such requests are not limited.
    Allow,
}

/// The layer's settings; the state is rebuilt from them when a setter changes them.
#[derive(Clone)]
pub(super) struct Spec {
    pub(super) name: Arc<str>,
    pub(super) observer: SharedObserver,
    pub(super) mode: ModeHandle,
    pub(super) quotas: Vec<Quota>,
    pub(super) keyed: bool,
    max_keys: usize,
    max_wait: Duration,
    pub(super) missing_key: MissingKey,
    pub(super) class: Option<&'static str>,
    clock: Clock,
}

/// Everything the services of one layer share.
pub(super) struct Shared {
    pub(super) spec: Spec,
    pub(super) quotas: Quotas,
    /// The slot of an unkeyed limiter, and of keyed requests without a key.
    global: Slot,
    /// Typed on first use, when the key type is known: an `Arc<KeyedStore<Key>>`.
    keyed: OnceLock<Erased>,
}

struct Erased {
    store: Box<dyn Any + Send + Sync>,
    len: Box<dyn Fn() -> usize + Send + Sync>,
    evicted: Box<dyn Fn() -> u64 + Send + Sync>,
    capacity: Box<dyn Fn() -> usize + Send + Sync>,
    clear: Box<dyn Fn() + Send + Sync>,
}

impl Shared {
    fn new(spec: Spec) -> Shared {
        let quotas = Quotas::new(&spec.quotas, spec.clock.clone());
        let global = Slot::new(quotas.len(), quotas.now());
        Shared {
            spec,
            quotas,
            global,
            keyed: OnceLock::new(),
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.spec.name
    }

    pub(super) fn observer(&self) -> &SharedObserver {
        &self.spec.observer
    }

    fn store<Key>(&self) -> Option<&KeyedStore<Key>>
    where
        Key: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    {
        let erased = self.keyed.get_or_init(|| {
            let store = Arc::new(KeyedStore::<Key>::new(self.spec.max_keys, &self.quotas));
            let (a, b, c, d) = (store.clone(), store.clone(), store.clone(), store.clone());
            Erased {
                store: Box::new(store),
                len: Box::new(move || a.len()),
                evicted: Box::new(move || b.evicted()),
                capacity: Box::new(move || c.capacity()),
                clear: Box::new(move || d.clear()),
            }
        });
        // Fails only if one layer serves two request types with different key types.
        erased
            .store
            .downcast_ref::<Arc<KeyedStore<Key>>>()
            .map(|s| &**s)
    }

    /// The in-process decision for one request, without waiting: the distributed
    /// limiter's `local` policy.
    #[cfg(feature = "redis")]
    pub(super) fn decide_local<Key>(
        &self,
        key: Option<&Key>,
        weight: u32,
        want_info: bool,
    ) -> Decision
    where
        Key: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    {
        match key.and_then(|k| self.store::<Key>().map(|s| (k, s))) {
            Some((key, store)) => {
                let now = self.quotas.now();
                store.maybe_sweep(now);
                store
                    .with_slot(key, now, |slot| self.quotas.decide(slot, weight, want_info))
                    .0
            }
            None => self.quotas.decide(&self.global, weight, want_info),
        }
    }

    /// Emit the refusal event of quota `quota` (or, in shadow mode, the would-have one).
    pub(super) fn report_refusal<Key: fmt::Debug>(
        &self,
        class: &'static str,
        key: Option<&Key>,
        quota: usize,
        wait: Duration,
        shadow: bool,
    ) {
        self.spec.observer.emit(&Event::RateLimited {
            name: &self.spec.name,
            class,
            key: key.map(|k| k as &dyn fmt::Debug),
            policy: self.quotas.quota(quota).name(),
            retry_after: wait,
            shadow,
        });
    }

    /// Whether a refused request may wait `wait` (waiting is on and `wait` is within it).
    pub(super) fn may_wait(&self, wait: Duration) -> bool {
        wait <= self.spec.max_wait && !self.spec.max_wait.is_zero()
    }

    pub(super) fn max_wait(&self) -> Duration {
        self.spec.max_wait
    }
}

/// Limits the rate of requests, globally or per key; see the [module docs](super).
pub struct RateLimitLayer<K = Global, W = One, H = NoHeaders> {
    key: K,
    weight: W,
    headers: H,
    shared: Arc<Shared>,
}

impl<K: Clone, W: Clone, H: Clone> Clone for RateLimitLayer<K, W, H> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            key: self.key.clone(),
            weight: self.weight.clone(),
            headers: self.headers.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<K: fmt::Debug, W, H: fmt::Debug> fmt::Debug for RateLimitLayer<K, W, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = &self.shared.spec;
        f.debug_struct("RateLimitLayer")
            .field("name", &spec.name)
            .field("quotas", &spec.quotas)
            .field("key", &self.key)
            .field("keyed", &spec.keyed)
            .field("weight", &std::any::type_name::<W>())
            .field("headers", &self.headers)
            .field("max_keys", &spec.max_keys)
            .field("max_wait", &spec.max_wait)
            .field("mode", &spec.mode)
            .finish()
    }
}

impl RateLimitLayer {
    /// One `quota` shared by every request (a global limit). Add more quotas with
    /// [`RateLimitLayer::quota`].
    pub fn new(quota: Quota) -> RateLimitLayer {
        RateLimitLayer::build(Global, quota, false)
    }
}

impl<K> RateLimitLayer<K> {
    /// One `quota` per key, read from each request by `key` (e.g.
    /// [`ClientIp`](crate::key::ClientIp), [`Header`](crate::key::Header)).
    pub fn keyed(key: K, quota: Quota) -> RateLimitLayer<K> {
        RateLimitLayer::build(key, quota, true)
    }

    fn build(key: K, quota: Quota, keyed: bool) -> RateLimitLayer<K> {
        let spec = Spec {
            name: "rate_limit".into(),
            observer: SharedObserver::default(),
            mode: ModeHandle::default(),
            quotas: vec![quota],
            keyed,
            max_keys: DEFAULT_MAX_KEYS,
            max_wait: Duration::ZERO,
            missing_key: MissingKey::default(),
            class: None,
            clock: Clock::default(),
        };
        RateLimitLayer {
            key,
            weight: One,
            headers: NoHeaders,
            shared: Arc::new(Shared::new(spec)),
        }
    }
}

impl<K, W, H> RateLimitLayer<K, W, H> {
    /// This limiter's quotas, key, weight and headers, shared by every instance through
    /// Redis; see [`RedisRateLimitLayer`](super::RedisRateLimitLayer) (feature `redis`).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn shared(
        self,
        backend: crate::redis::RedisBackend,
    ) -> super::RedisRateLimitLayer<K, W, H> {
        super::RedisRateLimitLayer::new(self, backend)
    }

    #[cfg(feature = "redis")]
    pub(super) fn parts(&self) -> (&K, &W, &H, &Arc<Shared>) {
        (&self.key, &self.weight, &self.headers, &self.shared)
    }

    fn edit(mut self, f: impl FnOnce(&mut Spec)) -> Self {
        let mut spec = self.shared.spec.clone();
        f(&mut spec);
        self.shared = Arc::new(Shared::new(spec));
        self
    }

    /// Also require `quota`: a request is admitted only when every quota admits it. When
    /// one refuses, what the others took for the request is given back, so a refused
    /// request costs nothing.
    #[must_use]
    pub fn quota(self, quota: Quota) -> Self {
        self.edit(|s| s.quotas.push(quota))
    }

    /// The same layer with another key extractor, keeping the scope (crate-internal: a
    /// configured global limit carries an extractor it never calls).
    #[cfg(feature = "http")]
    pub(super) fn key<K2>(self, key: K2) -> RateLimitLayer<K2, W, H> {
        RateLimitLayer {
            key,
            weight: self.weight,
            headers: self.headers,
            shared: self.shared,
        }
    }

    /// Charge each request `weight(req)` requests' worth of quota (see [`Weight`]).
    #[must_use]
    pub fn weight<W2>(self, weight: W2) -> RateLimitLayer<K, W2, H> {
        RateLimitLayer {
            key: self.key,
            weight,
            headers: self.headers,
            shared: self.shared,
        }
    }

    /// Add the `RateLimit-Policy` and `RateLimit` fields to admitted responses too (with
    /// [`RateLimitHeaders`](super::RateLimitHeaders), feature `http`), or decorate them
    /// with an [`OnAdmitted`] of your own.
    #[must_use]
    pub fn on_admitted<H2>(self, headers: H2) -> RateLimitLayer<K, W, H2> {
        RateLimitLayer {
            key: self.key,
            weight: self.weight,
            headers,
            shared: self.shared,
        }
    }

    /// Instead of refusing at once, hold a request up to `max_wait` when the quota will
    /// admit it by then (a tokio timer; the inner service is called after the wait).
    /// A request whose wait would be longer is refused at once. Default zero: refuse.
    #[must_use]
    pub fn max_wait(self, max_wait: Duration) -> Self {
        self.edit(|s| s.max_wait = max_wait)
    }

    /// Track at most `max_keys` keys (default [`DEFAULT_MAX_KEYS`], at least 1); see
    /// [the module docs](super#bounded-memory) for what happens when it is reached.
    #[must_use]
    pub fn max_keys(self, max_keys: usize) -> Self {
        self.edit(|s| s.max_keys = max_keys.max(1))
    }

    /// What to do with requests whose key cannot be read (default: they share one quota).
    #[must_use]
    pub fn missing_key(self, missing_key: MissingKey) -> Self {
        self.edit(|s| s.missing_key = missing_key)
    }

    /// The key's class in events (default: the extractor's
    /// [`KeyExtractor::class`], e.g. `"ip"`). Never the key itself: a class is a safe
    /// metrics label.
    #[must_use]
    pub fn key_class(self, class: &'static str) -> Self {
        self.edit(|s| s.class = Some(class))
    }

    /// The name in this layer's events (default `"rate_limit"`).
    #[must_use]
    pub fn name(self, name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        self.edit(|s| s.name = name)
    }

    /// Where this layer's events go (default: [`TracingObserver`](crate::observe::TracingObserver)).
    #[must_use]
    pub fn observer(self, observer: impl Observer) -> Self {
        let observer = SharedObserver::new(observer);
        self.edit(|s| s.observer = observer)
    }

    /// Start in `mode`, or share a [`ModeHandle`] to switch it at runtime.
    #[must_use]
    pub fn mode(self, mode: impl Into<ModeHandle>) -> Self {
        let mode = mode.into();
        self.edit(|s| s.mode = mode)
    }

    /// Read time from `clock` (default: tokio's clock).
    #[must_use]
    pub fn clock(self, clock: Clock) -> Self {
        self.edit(|s| s.clock = clock)
    }

    /// The handle that switches this layer's mode at runtime, for every service it built.
    pub fn mode_handle(&self) -> ModeHandle {
        self.shared.spec.mode.clone()
    }

    /// The handle to inspect and reset this layer's state, shared by every service it built.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }

    /// The quotas, in the order they are asked.
    pub fn quotas(&self) -> &[Quota] {
        &self.shared.spec.quotas
    }
}

impl<S, K: Clone, W: Clone, H: Clone> Layer<S> for RateLimitLayer<K, W, H> {
    type Service = RateLimit<S, K, W, H>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            key: self.key.clone(),
            weight: self.weight.clone(),
            headers: self.headers.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Inspection and manual control of one layer's state (every service and clone it built).
#[derive(Clone)]
pub struct RateLimitHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("name", &self.shared.spec.name)
            .field("live_keys", &self.live_keys())
            .finish()
    }
}

impl RateLimitHandle {
    /// Keys tracked now (0 for an unkeyed limiter).
    pub fn live_keys(&self) -> usize {
        self.shared.keyed.get().map_or(0, |e| (e.len)())
    }

    /// The most keys the limiter tracks: [`RateLimitLayer::max_keys`] rounded down to a
    /// multiple of its shard count.
    pub fn key_capacity(&self) -> usize {
        self.shared.keyed.get().map_or(0, |e| (e.capacity)())
    }

    /// Keys evicted while their quota was still in use, because the limiter was full.
    pub fn evicted_keys(&self) -> u64 {
        self.shared.keyed.get().map_or(0, |e| (e.evicted)())
    }

    /// Give every key (and the global quota) its full quota back.
    pub fn reset(&self) {
        reset_slot(&self.shared.global);
        if let Some(e) = self.shared.keyed.get() {
            (e.clear)();
        }
    }

    /// Give `key` its full quota back (e.g. a client an operator unblocks); whether it was
    /// tracked. `Key` is the extractor's key type (`IpAddr` for
    /// [`ClientIp`](crate::key::ClientIp), `String` for [`Header`](crate::key::Header)).
    pub fn forget<Key>(&self, key: &Key) -> bool
    where
        Key: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    {
        self.shared
            .keyed
            .get()
            .and_then(|e| e.store.downcast_ref::<Arc<KeyedStore<Key>>>())
            .is_some_and(|store| store.remove(key))
    }

    /// The mode handle.
    pub fn mode(&self) -> ModeHandle {
        self.shared.spec.mode.clone()
    }
}

/// The service of [`RateLimitLayer`].
pub struct RateLimit<S, K = Global, W = One, H = NoHeaders> {
    inner: S,
    key: K,
    weight: W,
    headers: H,
    shared: Arc<Shared>,
}

impl<S: Clone, K: Clone, W: Clone, H: Clone> Clone for RateLimit<S, K, W, H> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            key: self.key.clone(),
            weight: self.weight.clone(),
            headers: self.headers.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug, W, H> fmt::Debug for RateLimit<S, K, W, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("key", &self.key)
            .field("name", &self.shared.spec.name)
            .finish()
    }
}

impl<S, K, W, H> RateLimit<S, K, W, H> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the limiter.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The handle to inspect and reset the shared state.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

/// A decision, and the slot to ask again after a wait (only when waiting is possible).
struct Decided {
    decision: Decision,
    retry: Option<Slot>,
}

impl<S, K, W, H, Req> Service<Req> for RateLimit<S, K, W, H>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    K: KeyExtractor<Req>,
    W: Weight<Req>,
    H: OnAdmitted<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req, H>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        let spec = &shared.spec;
        let mode = spec.mode.get();
        if mode == Mode::Off {
            return ResponseFuture::called(self.inner.call(req), None, self.headers.clone());
        }
        let weight = self.weight.weight(&req);
        let want_info = self.headers.enabled();
        // The common case in one step: one global quota, weight 1, no fields to add.
        if !spec.keyed && weight == 1 && !want_info && shared.quotas.check_single(&shared.global) {
            return ResponseFuture::called(self.inner.call(req), None, self.headers.clone());
        }
        let can_wait = mode == Mode::Enforce && !spec.max_wait.is_zero();
        let class = spec.class.unwrap_or_else(|| self.key.class());
        let decide = |slot: &Slot| {
            let decision = shared.quotas.decide(slot, weight, want_info);
            let retry =
                (can_wait && matches!(decision, Decision::Refused { .. })).then(|| slot.clone());
            Decided { decision, retry }
        };

        let key;
        let decided = if spec.keyed {
            key = self.key.extract(&req).ok();
            let store = key.as_ref().and_then(|_| shared.store::<K::Key>());
            match (&key, store) {
                (Some(k), Some(store)) => {
                    let now = shared.quotas.now();
                    store.maybe_sweep(now);
                    let (decided, evicted) = store.with_slot(k, now, decide);
                    if evicted {
                        spec.observer.emit(&Event::RateLimitKeyEvicted {
                            name: &spec.name,
                            class,
                        });
                    }
                    decided
                }
                _ if spec.missing_key == MissingKey::Allow => {
                    return ResponseFuture::called(
                        self.inner.call(req),
                        None,
                        self.headers.clone(),
                    );
                }
                _ => decide(&shared.global),
            }
        } else {
            key = None;
            decide(&shared.global)
        };

        match decided.decision {
            Decision::Admitted { info } => {
                ResponseFuture::called(self.inner.call(req), info, self.headers.clone())
            }
            Decision::Refused { quota, wait, info } => {
                if let Some(slot) = decided.retry
                    && shared.may_wait(wait)
                {
                    // Keep the ready service for after the wait; this one gets a clone.
                    let clone = self.inner.clone();
                    let svc = std::mem::replace(&mut self.inner, clone);
                    return ResponseFuture::waiting(
                        svc,
                        req,
                        slot,
                        weight,
                        wait,
                        class,
                        self.headers.clone(),
                        self.shared.clone(),
                    );
                }
                let shadow = mode == Mode::Shadow;
                shared.report_refusal(class, key.as_ref(), quota, wait, shadow);
                if shadow {
                    return ResponseFuture::called(
                        self.inner.call(req),
                        None,
                        self.headers.clone(),
                    );
                }
                ResponseFuture::rejected(Rejection::rate_limited(wait, Some(*info)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters_rebuild_the_state_but_keep_the_mode_shared() {
        let base = RateLimitLayer::new(Quota::per_second(5)).mode(Mode::Shadow);
        let more = base.clone().quota(Quota::per_minute(100)).name("api");
        assert_eq!(base.quotas().len(), 1);
        assert_eq!(more.quotas().len(), 2);
        more.mode_handle().set(Mode::Off);
        assert_eq!(base.mode_handle().get(), Mode::Off, "one mode for both");
        let debug = format!("{more:?}");
        assert!(
            debug.contains("\"api\"") && debug.contains("Off"),
            "{debug}"
        );
    }

    #[test]
    fn closures_are_weights() {
        fn weight_of<Req>(w: &impl Weight<Req>, req: &Req) -> u32 {
            w.weight(req)
        }
        assert_eq!(weight_of(&One, &"x"), 1);
        assert_eq!(weight_of(&|s: &&str| s.len() as u32, &"abc"), 3);
    }
}
