//! The layer, its service, its future, request coalescing and the handle.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{AGE, AUTHORIZATION};
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::config::CacheConfig;
use super::key::KeyBuilder;
use super::policy::{Decision, Defaults, decide};
use super::store::{CacheStore, CachedEntry, Freshness, Lookup, MemoryCacheStore, Selector};
use crate::clock::Clock;
use crate::error::{BoxError, ConfigError, Rejection};
use crate::http::BufferedBody;
use crate::http::buffered::{Read, read_capped};
use crate::idempotency::StoredResponse;
use crate::key::Header;
use crate::observe::{Event, Observer, SharedObserver};

/// The header of RFC 9211 cache status.
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// `Age` values of the first ten minutes, made once, so that a hit does not format one.
static AGES: LazyLock<Vec<HeaderValue>> =
    LazyLock::new(|| (0..=600u64).map(HeaderValue::from).collect());

fn age_value(age: Duration) -> HeaderValue {
    let secs = age.as_secs();
    usize::try_from(secs)
        .ok()
        .and_then(|i| AGES.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

/// The error a coalesced request gets when the call it waited for failed with an error
/// that is not a [`Rejection`] (a rejection is given to every waiter as it is, so the edge
/// adapter answers each the same way). It carries the original error's text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the call this request waited for failed: {0}")]
pub struct CoalescedError(Arc<str>);

/// The end of a call that others wait for.
#[derive(Clone)]
enum Outcome {
    /// A copy the waiters answer with (stored or not).
    Response(Arc<StoredResponse>),
    /// The call failed: a rejection to clone, or the error's text.
    Failed(Result<Rejection, Arc<str>>),
    /// The response is for its own caller only: waiters call the inner service themselves.
    Alone,
    /// The call was dropped before it ended: one waiter takes over.
    Abandoned,
}

impl Outcome {
    fn failed(err: &BoxError) -> Outcome {
        Outcome::Failed(match Rejection::from_box(err) {
            Some(r) => Ok(r.clone()),
            None => Err(crate::observe::Chain(&**err).to_string().into()),
        })
    }
}

type Flights = Mutex<HashMap<Arc<str>, (u64, watch::Receiver<Option<Outcome>>)>>;

/// Everything the layer, its services, the handle and the fallback source share.
pub(super) struct Shared {
    pub(super) name: Arc<str>,
    pub(super) keys: KeyBuilder,
    pub(super) defaults: Defaults,
    pub(super) tti: Option<Duration>,
    pub(super) max_body_bytes: u64,
    pub(super) allow_authorized: bool,
    /// The cache name in `Cache-Status`, and its ready-made hit value.
    pub(super) status: Option<(Arc<str>, HeaderValue)>,
    pub(super) store: Arc<dyn CacheStore>,
    flights: Flights,
    next_flight: AtomicU64,
    /// Bumped by every invalidation: a call that started before one does not store.
    epoch: AtomicU64,
    pub(super) observer: SharedObserver,
    pub(super) clock: Clock,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.name)
            .field("ttl", &self.defaults.ttl)
            .field(
                "stale_while_revalidate",
                &self.defaults.stale_while_revalidate,
            )
            .field("stale_if_error", &self.defaults.stale_if_error)
            .finish_non_exhaustive()
    }
}

enum Join {
    Lead(Leader),
    Wait(watch::Receiver<Option<Outcome>>),
}

/// The one call in flight for a key. Dropped without an outcome (the caller's future was
/// dropped, or it panicked), it tells its waiters, and one of them takes over.
struct Leader {
    shared: Arc<Shared>,
    key: Arc<str>,
    id: u64,
    epoch: u64,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl Leader {
    fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        let Some(tx) = self.tx.take() else { return };
        {
            let mut flights = self
                .shared
                .flights
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
                flights.remove(&self.key);
            }
        }
        tx.send_replace(Some(outcome));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.end(Outcome::Abandoned);
    }
}

impl Shared {
    fn emit(&self, event: &Event<'_>) {
        self.observer.emit(event)
    }

    fn status_value(&self, detail: fmt::Arguments<'_>) -> Option<HeaderValue> {
        let (name, _) = self.status.as_ref()?;
        HeaderValue::from_str(&format!("{name}; {detail}")).ok()
    }

    /// Lead the call for `key`, or wait for the one in flight.
    fn join(self: &Arc<Self>, key: &Arc<str>) -> Join {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, rx)) = flights.get(key) {
            return Join::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        flights.insert(key.clone(), (id, rx));
        Join::Lead(Leader {
            shared: self.clone(),
            key: key.clone(),
            id,
            epoch: self.epoch.load(Ordering::Acquire),
            tx: Some(tx),
        })
    }

    pub(super) fn invalidate(&self, scope: &'static str, target: &str, f: impl FnOnce()) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        f();
        self.emit(&Event::CacheInvalidated {
            name: &self.name,
            scope,
            target,
        });
    }

    /// A response rebuilt from a copy.
    fn respond<RB>(
        stored: &StoredResponse,
        age: Duration,
        status: Option<HeaderValue>,
        verdict: Option<&'static str>,
    ) -> Response<BufferedBody<RB>> {
        let mut res = Response::new(BufferedBody::buffered(
            stored.body.clone(),
            stored.trailers.clone(),
        ));
        *res.status_mut() = stored.status;
        *res.version_mut() = stored.version;
        *res.headers_mut() = stored.headers.clone();
        // Stored copies hold placeholders for these two, so no insert grows the map.
        res.headers_mut().insert(AGE, age_value(age));
        if let Some(status) = status {
            res.headers_mut().insert(CACHE_STATUS.clone(), status);
        }
        if let Some(verdict) = verdict {
            res.extensions_mut()
                .insert(crate::http::Verdict::Cached(verdict));
        }
        res
    }

    fn hit<RB>(&self, key: &str, entry: &CachedEntry, now: Instant) -> Response<BufferedBody<RB>> {
        entry.touch(now);
        self.emit(&Event::CacheHit {
            name: &self.name,
            key,
        });
        let status = self.status.as_ref().map(|(_, hit)| hit.clone());
        // No verdict on a fresh hit: an extension would allocate, and a hit must cost no
        // more than the response's copy. The logging layer sees it as admitted (with its
        // `Age`); the cache's own events and metrics count it.
        Self::respond(&entry.response, entry.age(now), status, None)
    }

    fn stale<RB>(
        &self,
        key: &str,
        entry: &CachedEntry,
        now: Instant,
        reason: &'static str,
        fwd_status: Option<u16>,
    ) -> Response<BufferedBody<RB>> {
        let stale_for = entry.age(now).saturating_sub(entry.fresh_for);
        self.emit(&Event::CacheStaleServed {
            name: &self.name,
            key,
            reason,
            stale_for,
        });
        let ttl = stale_for.as_secs();
        let status = if reason == "stale_while_revalidate" {
            self.status_value(format_args!("hit; ttl=-{ttl}"))
        } else {
            match fwd_status {
                Some(s) => self.status_value(format_args!("fwd=stale; fwd-status={s}; ttl=-{ttl}")),
                None => self.status_value(format_args!("fwd=stale; detail=error; ttl=-{ttl}")),
            }
        };
        Self::respond(&entry.response, entry.age(now), status, Some(reason))
    }
}

/// Caches HTTP responses of safe methods; see the [module docs](super).
///
/// Build it with [`CacheLayer::builder`] (or [`CacheConfig::build`]). Every service it
/// makes, and every clone, shares one store, one set of calls in flight and one
/// [`CacheHandle`].
#[derive(Clone)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CacheLayer").field(&self.shared).finish()
    }
}

impl CacheLayer {
    /// A builder with the defaults of [`CacheConfig`].
    pub fn builder() -> CacheBuilder {
        CacheBuilder {
            config: CacheConfig::default(),
            key_headers: Vec::new(),
            observer: SharedObserver::default(),
            store: None,
            clock: Clock::tokio(),
        }
    }

    /// The handle: invalidation, size, and the cache as a fallback source.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`CacheLayer`]; every setter has a [`CacheConfig`] field of the same name
/// (except those taking values that are not data: observer, store, clock).
#[derive(Debug)]
pub struct CacheBuilder {
    config: CacheConfig,
    key_headers: Vec<HeaderName>,
    observer: SharedObserver,
    store: Option<Arc<dyn CacheStore>>,
    clock: Clock,
}

impl fmt::Debug for dyn CacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheStore")
    }
}

impl CacheBuilder {
    pub(super) fn from_config(config: CacheConfig) -> CacheBuilder {
        CacheBuilder {
            config,
            ..CacheLayer::builder()
        }
    }

    /// The name in events (default `"cache"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// How long a response is fresh when its `Cache-Control` does not say (default 60 s).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// Drop an entry not hit for this long (default: never).
    #[must_use]
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.config.time_to_idle = Some(tti);
        self
    }

    /// Keep at most `n` entries (default 10 000).
    #[must_use]
    pub fn max_entries(mut self, n: u64) -> Self {
        self.config.max_entries = n;
        self
    }

    /// Keep at most `bytes` of responses in all (default 64 MiB), by body, headers and
    /// key.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.config.max_bytes = bytes;
        self
    }

    /// Buffer and cache bodies of at most `bytes` (default 1 MiB); larger responses pass
    /// through uncached.
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.config.max_body_bytes = bytes;
        self
    }

    /// After freshness, serve a stale response for this long while one refresh runs in
    /// the background (default 0; a response's `stale-while-revalidate` wins).
    #[must_use]
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.config.stale_while_revalidate = window;
        self
    }

    /// After freshness, serve a stale response for this long when the inner call fails
    /// with an error or a 5xx (default 0; a response's `stale-if-error` wins).
    #[must_use]
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.config.stale_if_error = window;
        self
    }

    /// Ignore `Cache-Control` on responses (every 2xx without `Set-Cookie` is cached for
    /// the TTL). Default: honour it.
    #[must_use]
    pub fn ignore_cache_control(mut self, ignore: bool) -> Self {
        self.config.ignore_cache_control = ignore;
        self
    }

    /// Add a request header to the key (e.g. `accept-language`, a tenant header).
    #[must_use]
    pub fn key_header(mut self, name: HeaderName) -> Self {
        self.key_headers.push(name);
        self
    }

    /// Mark answers with an RFC 9211 `Cache-Status` header naming this cache (default:
    /// no header).
    #[must_use]
    pub fn cache_status(mut self, name: impl Into<String>) -> Self {
        self.config.cache_status = Some(name.into());
        self
    }

    /// Cache requests that carry `Authorization` (default: they pass through uncached, as
    /// RFC 9111 asks of shared caches). Put the principal in the key if you allow them.
    #[must_use]
    pub fn allow_authorized(mut self, allow: bool) -> Self {
        self.config.allow_authorized = allow;
        self
    }

    /// Where events go (default [`TracingObserver`](crate::observe::TracingObserver)).
    #[must_use]
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = SharedObserver::new(observer);
        self
    }

    /// Keep entries in `store` instead of an in-process [`MemoryCacheStore`] (the bounds
    /// then are the store's).
    #[must_use]
    pub fn store(mut self, store: impl CacheStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Read time from `clock` (default tokio's).
    #[must_use]
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// The layer, after checking every field.
    pub fn build(self) -> Result<CacheLayer, ConfigError> {
        let c = &self.config;
        if c.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if c.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be greater than zero"));
        }
        if c.time_to_idle.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "time_to_idle",
                "must be greater than zero",
            ));
        }
        for (field, v) in [("max_entries", c.max_entries), ("max_bytes", c.max_bytes)] {
            if v == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        let mut headers = Vec::new();
        for name in &c.key_headers {
            let h = HeaderName::try_from(name.as_str()).map_err(|_| {
                ConfigError::new("key_headers", format!("{name:?} is not a header name"))
            })?;
            headers.push(Header::new(h));
        }
        headers.extend(self.key_headers.iter().cloned().map(Header::new));
        let status = match &c.cache_status {
            None => None,
            Some(name) => {
                let token = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._:/!#$%&'*+^`|~".contains(&b));
                if !token {
                    return Err(ConfigError::new(
                        "cache_status",
                        format!("{name:?} is not a structured-field token"),
                    ));
                }
                let hit = HeaderValue::from_str(&format!("{name}; hit"))
                    .map_err(|_| ConfigError::new("cache_status", "not a header value"))?;
                Some((Arc::from(name.as_str()), hit))
            }
        };
        let store = self.store.unwrap_or_else(|| {
            Arc::new(MemoryCacheStore::new(
                c.max_entries,
                c.max_bytes,
                c.time_to_idle,
            ))
        });
        Ok(CacheLayer {
            shared: Arc::new(Shared {
                name: c.name.as_str().into(),
                keys: KeyBuilder {
                    target: crate::key::Target::new(),
                    headers,
                },
                defaults: Defaults {
                    ttl: c.ttl,
                    stale_while_revalidate: c.stale_while_revalidate,
                    stale_if_error: c.stale_if_error,
                    ignore_cache_control: c.ignore_cache_control,
                },
                tti: c.time_to_idle,
                max_body_bytes: c.max_body_bytes,
                allow_authorized: c.allow_authorized,
                status,
                store,
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
                observer: self.observer,
                clock: self.clock,
            }),
        })
    }
}

/// Inspect and invalidate a cache; use it as a fallback source. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CacheHandle {
    pub(super) shared: Arc<Shared>,
}

impl CacheHandle {
    /// Remove the entry of one cache key, as events report it (see
    /// [`cache_key`](super::cache_key)).
    pub fn invalidate_key(&self, key: &str) {
        let s = &self.shared;
        s.invalidate("key", key, || s.store.remove(key));
    }

    /// Remove every entry for this request target (path and query, e.g.
    /// `"/products?page=2"`), whatever the method and key headers.
    pub fn invalidate(&self, target: &str) {
        let s = &self.shared;
        s.invalidate("target", target, || {
            s.store.remove_matching(Selector::Target(target.into()))
        });
    }

    /// Remove every entry whose request target starts with `prefix` (e.g. `"/products"`).
    pub fn invalidate_prefix(&self, prefix: &str) {
        let s = &self.shared;
        s.invalidate("prefix", prefix, || {
            s.store.remove_matching(Selector::Prefix(prefix.into()))
        });
    }

    /// Remove everything.
    pub fn clear(&self) {
        let s = &self.shared;
        s.invalidate("all", "", || s.store.clear());
    }

    /// The number of entries (after pending evictions), if the store can tell.
    pub fn entry_count(&self) -> Option<u64> {
        self.shared.store.entry_count()
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The cache as a [`Source`](crate::fallback::Source) for a
    /// [`FallbackLayer`](crate::fallback::FallbackLayer); see
    /// [`CacheSource`](super::CacheSource).
    pub fn fallback_source(&self) -> super::CacheSource {
        super::CacheSource {
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`CacheLayer`].
#[derive(Clone)]
pub struct Cache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S> Cache<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the cache service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The handle of the layer that built this service.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle {
            shared: self.shared.clone(),
        }
    }
}

type Answer<RB> = Result<Response<BufferedBody<RB>>, BoxError>;

pin_project! {
    /// The response future of [`Cache`].
    pub struct ResponseFuture<F, RB> {
        #[pin]
        kind: Kind<F, RB>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, RB> {
        Ready { answer: Option<Answer<RB>> },
        Passthrough { #[pin] fut: F },
        Boxed { fut: BoxFuture<'static, Answer<RB>> },
    }
}

impl<F, RB> fmt::Debug for ResponseFuture<F, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Ready { .. } => "ResponseFuture::Ready",
            Kind::Passthrough { .. } => "ResponseFuture::Passthrough",
            Kind::Boxed { .. } => "ResponseFuture::Boxed",
        })
    }
}

impl<F, RB, E> Future for ResponseFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Answer<RB>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { answer } => {
                Poll::Ready(answer.take().expect("polled after completion"))
            }
            KindProj::Passthrough { fut } => fut.poll(cx).map(|r| {
                r.map(|res| res.map(BufferedBody::inner))
                    .map_err(Into::into)
            }),
            KindProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// What the synchronous lookup found.
enum Found<RB> {
    Answer(Response<BufferedBody<RB>>),
    Revalidate(Response<BufferedBody<RB>>, Arc<str>),
    Miss(Arc<str>, Option<Arc<CachedEntry>>),
    Pending(Arc<str>, BoxFuture<'static, Option<Arc<CachedEntry>>>),
    NoKey,
}

fn is_safe(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The request a background refresh sends: the original's method, target, version and
/// headers, an empty body. Extensions are not copied.
fn refresh_request<B: From<Bytes>, T>(req: &Request<T>) -> Request<B> {
    let mut r = Request::new(B::from(Bytes::new()));
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

impl<S, B, RB> Service<Request<B>> for Cache<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: From<Bytes> + Send + 'static,
    RB: Body<Data = Bytes> + Send + Unpin + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<BufferedBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        if !is_safe(req.method())
            || (!shared.allow_authorized && req.headers().contains_key(AUTHORIZATION))
        {
            return ResponseFuture {
                kind: Kind::Passthrough {
                    fut: self.inner.call(req),
                },
            };
        }
        let now = shared.clock.now();
        let found = shared.keys.with_key(&req, |key| {
            let Ok(key) = key else {
                return Found::NoKey;
            };
            match shared.store.get(key) {
                Lookup::Ready(Some(entry)) => match entry.freshness(now, shared.tti) {
                    Freshness::Fresh => Found::Answer(shared.hit(key, &entry, now)),
                    Freshness::StaleRevalidate(_) => Found::Revalidate(
                        shared.stale(key, &entry, now, "stale_while_revalidate", None),
                        key.into(),
                    ),
                    Freshness::StaleIfError(_) => {
                        shared.emit(&Event::CacheMiss {
                            name: &shared.name,
                            key,
                        });
                        Found::Miss(key.into(), Some(entry))
                    }
                    Freshness::Expired => {
                        shared.emit(&Event::CacheMiss {
                            name: &shared.name,
                            key,
                        });
                        Found::Miss(key.into(), None)
                    }
                },
                Lookup::Ready(None) => {
                    shared.emit(&Event::CacheMiss {
                        name: &shared.name,
                        key,
                    });
                    Found::Miss(key.into(), None)
                }
                Lookup::Pending(fut) => Found::Pending(key.into(), fut),
            }
        });
        let answer = |answer| ResponseFuture {
            kind: Kind::Ready {
                answer: Some(Ok(answer)),
            },
        };
        match found {
            Found::Answer(res) => answer(res),
            Found::Revalidate(res, key) => {
                refresh(shared, self.inner.clone(), refresh_request(&req), key);
                answer(res)
            }
            Found::NoKey => {
                shared.emit(&Event::CacheNotStored {
                    name: &shared.name,
                    key: None,
                    reason: "request has no usable key",
                });
                ResponseFuture {
                    kind: Kind::Passthrough {
                        fut: self.inner.call(req),
                    },
                }
            }
            Found::Miss(key, stale) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let run = miss(shared.clone(), inner, req, key, stale);
                ResponseFuture {
                    kind: Kind::Boxed { fut: Box::pin(run) },
                }
            }
            Found::Pending(key, lookup) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let shared = shared.clone();
                let run = async move {
                    let now = shared.clock.now();
                    let stale = match lookup.await {
                        Some(entry) => match entry.freshness(now, shared.tti) {
                            Freshness::Fresh => return Ok(shared.hit(&key, &entry, now)),
                            Freshness::StaleRevalidate(_) => {
                                let res =
                                    shared.stale(&key, &entry, now, "stale_while_revalidate", None);
                                refresh(&shared, inner, refresh_request(&req), key);
                                return Ok(res);
                            }
                            Freshness::StaleIfError(_) => Some(entry),
                            Freshness::Expired => None,
                        },
                        None => None,
                    };
                    shared.emit(&Event::CacheMiss {
                        name: &shared.name,
                        key: &key,
                    });
                    miss(shared.clone(), inner, req, key, stale).await
                };
                ResponseFuture {
                    kind: Kind::Boxed { fut: Box::pin(run) },
                }
            }
        }
    }
}

/// Start one background refresh of `key`, unless a call for it is already in flight. Needs
/// a tokio runtime: without one, nothing is refreshed and the stale answer stands until
/// its window ends (the next request then refreshes in line).
fn refresh<S, B, RB>(shared: &Arc<Shared>, mut inner: S, req: Request<B>, key: Arc<str>)
where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    RB: Body<Data = Bytes> + Send + Unpin + 'static,
    RB::Error: Into<BoxError>,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Join::Lead(leader) = shared.join(&key) else {
        return;
    };
    let shared = shared.clone();
    runtime.spawn(async move {
        let ready: Result<(), BoxError> =
            futures_util::future::poll_fn(|cx| inner.poll_ready(cx).map_err(Into::into)).await;
        if let Err(e) = ready {
            leader.finish(Outcome::failed(&e));
            return;
        }
        let _ = lead(&shared, &mut inner, req, &key, None, leader).await;
    });
}

/// A miss: lead the call for the key, or wait for the one in flight (taking over if it is
/// dropped).
async fn miss<S, B, RB>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<B>,
    key: Arc<str>,
    stale: Option<Arc<CachedEntry>>,
) -> Answer<RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    loop {
        let mut rx = match shared.join(&key) {
            Join::Lead(leader) => {
                return lead(&shared, &mut inner, req, &key, stale, leader).await;
            }
            Join::Wait(rx) => rx,
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(o) => o.clone().unwrap_or(Outcome::Abandoned),
            Err(_) => Outcome::Abandoned,
        };
        let now = shared.clock.now();
        match outcome {
            Outcome::Response(copy) => {
                let failed = copy.status.is_server_error();
                shared.emit(&Event::CacheCoalesced {
                    name: &shared.name,
                    key: &key,
                    failed,
                });
                if failed && let Some(entry) = &stale {
                    let code = Some(copy.status.as_u16());
                    return Ok(shared.stale(&key, entry, now, "stale_if_error", code));
                }
                let status = shared.status_value(format_args!("fwd=miss; collapsed"));
                return Ok(Shared::respond(&copy, Duration::ZERO, status, None));
            }
            Outcome::Failed(failure) => {
                shared.emit(&Event::CacheCoalesced {
                    name: &shared.name,
                    key: &key,
                    failed: true,
                });
                if let Some(entry) = &stale {
                    return Ok(shared.stale(&key, entry, now, "stale_if_error", None));
                }
                return Err(match failure {
                    Ok(rejection) => rejection.boxed(),
                    Err(text) => CoalescedError(text).into(),
                });
            }
            Outcome::Alone => {
                let res = inner.call(req).await.map_err(Into::into)?;
                return Ok(res.map(BufferedBody::inner));
            }
            Outcome::Abandoned => {
                // The leader is gone: a fresh copy may have been stored meanwhile;
                // otherwise one of the waiters leads now.
                if let Lookup::Ready(Some(entry)) = shared.store.get(&key)
                    && entry.freshness(now, shared.tti) == Freshness::Fresh
                {
                    return Ok(shared.hit(&key, &entry, now));
                }
            }
        }
    }
}

/// The one call for a key: call, decide, buffer, store, and tell the waiters.
async fn lead<S, B, RB>(
    shared: &Arc<Shared>,
    inner: &mut S,
    req: Request<B>,
    key: &Arc<str>,
    stale: Option<Arc<CachedEntry>>,
    leader: Leader,
) -> Answer<RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    let not_stored = |reason| {
        shared.emit(&Event::CacheNotStored {
            name: &shared.name,
            key: Some(key),
            reason,
        })
    };
    let called: Result<Response<RB>, BoxError> = inner.call(req).await.map_err(Into::into);
    let res = match called {
        Ok(res) => res,
        Err(e) => {
            leader.finish(Outcome::failed(&e));
            if let Some(entry) = &stale {
                let now = shared.clock.now();
                return Ok(shared.stale(key, entry, now, "stale_if_error", None));
            }
            return Err(e);
        }
    };
    let decision = decide(&res, &shared.defaults, &shared.keys.headers);
    if let Decision::Private(reason) = decision {
        not_stored(reason);
        leader.finish(Outcome::Alone);
        return Ok(res.map(BufferedBody::inner));
    }
    let (parts, body) = res.into_parts();
    let (bytes, trailers) = match read_capped(body, shared.max_body_bytes).await {
        Ok(Read::Whole(bytes, trailers)) => (bytes, trailers),
        Ok(Read::TooLarge(body)) => {
            not_stored("body larger than max_body_bytes");
            leader.finish(Outcome::Alone);
            return Ok(Response::from_parts(parts, body));
        }
        Err(e) => {
            leader.finish(Outcome::failed(&e));
            return Err(e);
        }
    };
    let mut headers = parts.headers.clone();
    headers.insert(AGE, age_value(Duration::ZERO));
    if let Some((_, hit)) = &shared.status {
        headers.insert(CACHE_STATUS.clone(), hit.clone());
    }
    let copy = Arc::new(StoredResponse {
        status: parts.status,
        version: parts.version,
        headers,
        body: bytes.clone(),
        trailers: trailers.clone(),
    });
    let mut status_detail = "fwd=miss";
    match decision {
        Decision::Store {
            fresh_for,
            stale_while_revalidate,
            stale_if_error,
        } => {
            if shared.epoch.load(Ordering::Acquire) == leader.epoch {
                let now = shared.clock.now();
                let entry = CachedEntry::new(
                    (*copy).clone(),
                    now,
                    fresh_for,
                    stale_while_revalidate,
                    stale_if_error,
                );
                shared.emit(&Event::CacheStored {
                    name: &shared.name,
                    key,
                    bytes: super::store::weight(key, &entry),
                    fresh_for,
                });
                shared.store.put(key.clone(), Arc::new(entry));
                status_detail = "fwd=miss; stored";
            } else {
                not_stored("invalidated while the call was in flight");
            }
        }
        Decision::ShareOnly(reason) => not_stored(reason),
        Decision::Private(_) => unreachable!("answered above"),
    }
    let server_error = parts.status.is_server_error();
    leader.finish(Outcome::Response(copy));
    if server_error && let Some(entry) = &stale {
        let now = shared.clock.now();
        let code = Some(parts.status.as_u16());
        return Ok(shared.stale(key, entry, now, "stale_if_error", code));
    }
    let mut res = Response::from_parts(parts, BufferedBody::buffered(bytes, trailers));
    if let Some(status) = shared.status_value(format_args!("{status_detail}")) {
        res.headers_mut().insert(CACHE_STATUS.clone(), status);
    }
    Ok(res)
}
