//! The last response that worked, per key: stale-if-error.

use std::any::Any;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use moka::ops::compute::Op;
use tokio::time::Instant;

use super::source::{Failure, Kept, Recovered, Reporter, Source};
use crate::clock::Clock;
use crate::error::{BoxError, ConfigError};
use crate::key::{Global, KeyError, KeyExtractor};
use crate::observe::Event;

/// How a response is copied for later replay, and rebuilt from the copy.
pub trait Snapshot<Res>: Clone + Send + Sync + 'static {
    /// The stored copy.
    type Stored: Send + Sync + 'static;

    /// Copy `res`. [`Taken::Ready`] with `None` means "not kept" (with the reason).
    fn take(&self, res: Res) -> Taken<Res, Self::Stored>;

    /// A response rebuilt from the copy.
    fn restore(&self, stored: &Self::Stored) -> Res;

    /// The copy's size in bytes, for the cache's byte bound.
    fn weight(&self, stored: &Self::Stored) -> u32 {
        let _ = stored;
        1
    }
}

/// The result of [`Snapshot::take`].
pub enum Taken<Res, Stored> {
    /// The response, and its copy or why there is none.
    Ready(Res, Result<Stored, &'static str>),
    /// Both, once the response has been read (an HTTP body being buffered).
    Future(futures_util::future::BoxFuture<'static, Result<(Res, Stored), BoxError>>),
}

impl<Res, Stored> fmt::Debug for Taken<Res, Stored> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Taken::Ready(..) => "Ready",
            Taken::Future(_) => "Future",
        })
    }
}

/// Copies a `Clone` response.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneSnapshot;

impl<Res: Clone + Send + Sync + 'static> Snapshot<Res> for CloneSnapshot {
    type Stored = Res;

    fn take(&self, res: Res) -> Taken<Res, Res> {
        let copy = res.clone();
        Taken::Ready(res, Ok(copy))
    }

    fn restore(&self, stored: &Res) -> Res {
        stored.clone()
    }
}

/// The bounds of a [`LastKnownGood`] store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastKnownGoodConfig {
    /// How long a stored answer may be served (`"5m"`). Must be greater than zero.
    #[serde(with = "crate::config::duration")]
    pub ttl: Duration,
    /// At most this many keys are kept; the least useful are evicted first.
    #[serde(default = "default_max_entries")]
    pub max_entries: NonZeroU64,
    /// At most this many bytes of stored copies in all, if set, as measured by
    /// [`Snapshot::weight`] (HTTP snapshots: body and headers). `max_entries` still holds:
    /// each copy counts as at least `max_bytes / max_entries` bytes. Copies of `Clone`
    /// responses have no known size, so for them only `max_entries` matters.
    #[serde(default)]
    pub max_bytes: Option<NonZeroU64>,
    /// Larger HTTP bodies, or bodies of unknown size, are not kept.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_max_entries() -> NonZeroU64 {
    NonZeroU64::new(10_000).expect("non-zero")
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

impl LastKnownGoodConfig {
    /// Keep answers for `ttl`, 10 000 keys at most, bodies of at most 1 MiB.
    pub fn new(ttl: Duration) -> LastKnownGoodConfig {
        LastKnownGoodConfig {
            ttl,
            max_entries: default_max_entries(),
            max_bytes: None,
            max_body_bytes: default_max_body_bytes(),
        }
    }

    /// Check the fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be greater than zero"));
        }
        Ok(())
    }

    /// A last-known-good source of `Clone` responses keyed by `key`, after checking the
    /// fields.
    pub fn build<K>(&self, key: K) -> Result<LastKnownGood<K>, ConfigError> {
        self.validate()?;
        Ok(LastKnownGood::with_config(key, CloneSnapshot, self.clone()))
    }

    /// The same for HTTP responses.
    #[cfg(feature = "http")]
    pub fn build_http<K>(
        &self,
        key: K,
    ) -> Result<LastKnownGood<K, super::HttpSnapshot>, ConfigError> {
        self.validate()?;
        let snapshot = super::HttpSnapshot::new(self.max_body_bytes);
        Ok(LastKnownGood::with_config(key, snapshot, self.clone()))
    }
}

struct Entry<T> {
    stored_at: Instant,
    value: T,
}

/// The latest successful response per key, served when a later call fails
/// (stale-if-error). See the [module docs](super#last-known-good).
pub struct LastKnownGood<K = Global, P = CloneSnapshot> {
    key: K,
    snapshot: P,
    config: LastKnownGoodConfig,
    clock: Clock,
    // Typed on first use, when the key and stored types are known: a
    // `moka::sync::Cache<Key, Arc<Entry<Stored>>>`.
    store: Arc<OnceLock<Erased>>,
}

impl<K: Clone, P: Clone> Clone for LastKnownGood<K, P> {
    fn clone(&self) -> Self {
        LastKnownGood {
            key: self.key.clone(),
            snapshot: self.snapshot.clone(),
            config: self.config.clone(),
            clock: self.clock.clone(),
            store: self.store.clone(),
        }
    }
}

impl<K: fmt::Debug, P: fmt::Debug> fmt::Debug for LastKnownGood<K, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastKnownGood")
            .field("key", &self.key)
            .field("snapshot", &self.snapshot)
            .field("config", &self.config)
            .finish()
    }
}

impl<K> LastKnownGood<K> {
    /// Keep `Clone` responses keyed by `key`, for 5 minutes, 10 000 keys at most.
    pub fn new(key: K) -> LastKnownGood<K> {
        LastKnownGood::with_config(
            key,
            CloneSnapshot,
            LastKnownGoodConfig::new(Duration::from_secs(300)),
        )
    }
}

#[cfg(feature = "http")]
impl<K> LastKnownGood<K, super::HttpSnapshot> {
    /// Keep HTTP responses (bodies of a known size up to 1 MiB) keyed by `key`, for 5
    /// minutes, 10 000 keys at most.
    pub fn http(key: K) -> Self {
        let config = LastKnownGoodConfig::new(Duration::from_secs(300));
        let snapshot = super::HttpSnapshot::new(config.max_body_bytes);
        LastKnownGood::with_config(key, snapshot, config)
    }

    /// Keep bodies up to `bytes` long.
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.config.max_body_bytes = bytes;
        self.snapshot = super::HttpSnapshot::new(bytes);
        self
    }
}

impl<K, P> LastKnownGood<K, P> {
    /// Keyed by `key`, copied with `snapshot`, bounded by `config`.
    pub fn with_config(key: K, snapshot: P, config: LastKnownGoodConfig) -> Self {
        LastKnownGood {
            key,
            snapshot,
            config,
            clock: Clock::default(),
            store: Arc::new(OnceLock::new()),
        }
    }

    /// Serve stored answers for at most `ttl` after they were stored. A zero TTL keeps
    /// nothing servable.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// Keep at most `n` keys (at least 1).
    #[must_use]
    pub fn max_entries(mut self, n: u64) -> Self {
        self.config.max_entries = NonZeroU64::new(n.max(1)).expect("non-zero");
        self
    }

    /// Keep at most `bytes` of stored copies in all (by [`Snapshot::weight`]), besides at
    /// most `max_entries` keys; see [`LastKnownGoodConfig::max_bytes`].
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.config.max_bytes = NonZeroU64::new(bytes.max(1));
        self
    }

    /// Read time from `clock` (default: tokio's clock).
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Forget every stored answer (e.g. after a deploy that changes response shapes).
    pub fn clear(&self) {
        if let Some(store) = self.store.get() {
            (store.clear)();
        }
    }
}

type Cache<Key, T> = moka::sync::Cache<Key, Arc<Entry<T>>>;

/// Whether a copy stored at `stored_at` may still be served at `now`: strictly younger
/// than `ttl`.
fn is_fresh(stored_at: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(stored_at) < ttl
}

/// The least weight of one entry when the store is bounded by bytes, so that no more than
/// `max_entries` entries fit in `max_bytes` (saturating at moka's `u32` weights).
fn weight_floor(max_bytes: NonZeroU64, max_entries: NonZeroU64) -> u32 {
    u32::try_from(max_bytes.get().div_ceil(max_entries.get())).unwrap_or(u32::MAX)
}

/// The reason reported when a request has no key.
fn no_key_reason(err: &KeyError) -> &'static str {
    match err {
        KeyError::Missing => "request has no key",
        KeyError::TooLong { .. } => "request key is too long",
        KeyError::Malformed(_) => "request key is malformed",
    }
}

/// The typed cache, erased until first use, when key and stored types are known.
struct Erased {
    cache: Box<dyn Any + Send + Sync>,
    clear: Box<dyn Fn() + Send + Sync>,
}

impl<K, P> LastKnownGood<K, P> {
    fn typed<Res, Key>(&self) -> Option<&Cache<Key, P::Stored>>
    where
        P: Snapshot<Res>,
        Key: std::hash::Hash + Eq + Send + Sync + 'static,
    {
        let store = self.store.get_or_init(|| {
            let mut builder = Cache::<Key, P::Stored>::builder()
                // moka's clock cannot be paused; its TTL is a memory backstop only. Whether
                // an answer is still servable is decided with `stored_at` and `self.clock`.
                .time_to_live(self.config.ttl.max(Duration::from_millis(1)));
            builder = match self.config.max_bytes {
                Some(bytes) => {
                    // moka bounds one total weight: every entry weighs at least
                    // `max_bytes / max_entries`, so both bounds hold.
                    let floor = weight_floor(bytes, self.config.max_entries);
                    let snapshot = self.snapshot.clone();
                    builder
                        .weigher(move |_, e: &Arc<Entry<P::Stored>>| {
                            snapshot.weight(&e.value).max(floor)
                        })
                        .max_capacity(bytes.get())
                }
                None => builder.max_capacity(self.config.max_entries.get()),
            };
            let cache = builder.build();
            let for_clear = cache.clone();
            Erased {
                cache: Box::new(cache),
                clear: Box::new(move || for_clear.invalidate_all()),
            }
        });
        // Fails only if one source is used with two request types of different key types.
        store.cache.downcast_ref::<Cache<Key, P::Stored>>()
    }

    fn put<Res, Key>(&self, key: Key, value: P::Stored, reporter: &Reporter)
    where
        P: Snapshot<Res>,
        Key: std::hash::Hash + Eq + fmt::Debug + Send + Sync + 'static,
    {
        if let Some(cache) = self.typed::<Res, Key>() {
            reporter.emit(&Event::LastKnownGoodStored {
                name: reporter.name(),
                key: &key,
            });
            let entry = Entry {
                stored_at: self.clock.now(),
                value,
            };
            cache.insert(key, Arc::new(entry));
        }
    }
}

/// The per-request context of [`LastKnownGood`]: the request's key, or why it has none.
#[derive(Debug)]
pub struct LkgContext<Key>(Result<Key, KeyError>);

impl<K, P, Req, Res> Source<Req, Res> for LastKnownGood<K, P>
where
    K: KeyExtractor<Req>,
    P: Snapshot<Res>,
    Res: Send + 'static,
{
    type Context = LkgContext<K::Key>;

    fn name(&self) -> &'static str {
        "last_known_good"
    }

    fn prepare(&self, req: &Req, _: &Reporter) -> Self::Context {
        LkgContext(self.key.extract(req))
    }

    fn recover(&self, cx: &Self::Context, failure: Failure<Res>, _: &Reporter) -> Recovered<Res> {
        let Ok(key) = &cx.0 else {
            return Recovered::Ready(Err(failure));
        };
        let Some(cache) = self.typed::<Res, K::Key>() else {
            return Recovered::Ready(Err(failure));
        };
        match cache.get(key) {
            Some(entry) if is_fresh(entry.stored_at, self.clock.now(), self.config.ttl) => {
                Recovered::Ready(Ok(self.snapshot.restore(&entry.value)))
            }
            Some(_) => {
                // Too old to serve: forget it now rather than at moka's own pace, unless a
                // fresh copy has replaced it meanwhile.
                let (now, ttl) = (self.clock.now(), self.config.ttl);
                cache
                    .entry_by_ref(key)
                    .and_compute_with(|current| match current {
                        Some(e) if !is_fresh(e.value().stored_at, now, ttl) => Op::Remove,
                        _ => Op::Nop,
                    });
                Recovered::Ready(Err(failure))
            }
            None => Recovered::Ready(Err(failure)),
        }
    }

    fn on_success(&self, cx: Self::Context, res: Res, reporter: &Reporter) -> Kept<Res> {
        let key = match cx.0 {
            Ok(key) => key,
            Err(err) => {
                reporter.emit(&Event::LastKnownGoodSkipped {
                    name: reporter.name(),
                    reason: no_key_reason(&err),
                });
                return Kept::Ready(res);
            }
        };
        let this = self.clone();
        match self.snapshot.take(res) {
            Taken::Ready(res, Ok(stored)) => {
                this.put::<Res, _>(key, stored, reporter);
                Kept::Ready(res)
            }
            Taken::Ready(res, Err(reason)) => {
                reporter.emit(&Event::LastKnownGoodSkipped {
                    name: reporter.name(),
                    reason,
                });
                Kept::Ready(res)
            }
            Taken::Future(fut) => {
                let reporter = reporter.clone();
                Kept::Future(Box::pin(async move {
                    let (res, stored) = fut.await?;
                    this.put::<Res, _>(key, stored, &reporter);
                    Ok(res)
                }))
            }
        }
    }

    fn key<'a>(&self, cx: &'a Self::Context) -> Option<&'a dyn fmt::Debug> {
        cx.0.as_ref().ok().map(|k| k as &dyn fmt::Debug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::SharedObserver;
    use std::sync::Mutex;

    fn recording() -> (Reporter, Arc<Mutex<Vec<&'static str>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let observer = move |e: &Event<'_>| sink.lock().unwrap().push(e.outcome());
        (
            Reporter::new("test".into(), SharedObserver::new(observer)),
            seen,
        )
    }

    fn recovered<Res>(r: Recovered<Res>) -> Option<Res> {
        match r {
            Recovered::Ready(Ok(res)) => Some(res),
            Recovered::Ready(Err(_)) => None,
            Recovered::Future(_) => panic!("last known good answers at once"),
        }
    }

    fn kept<Res>(k: Kept<Res>) -> Res {
        match k {
            Kept::Ready(res) => res,
            Kept::Future(_) => panic!("clone snapshots are taken at once"),
        }
    }

    #[test]
    fn freshness_is_strictly_younger_than_the_ttl() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        assert!(is_fresh(t0, t0, ttl));
        assert!(is_fresh(t0, t0 + Duration::from_millis(9_999), ttl));
        assert!(!is_fresh(t0, t0 + ttl, ttl));
        assert!(!is_fresh(t0, t0 + Duration::from_secs(3600), ttl));
        // A clock behind the stored time (it cannot go back, but saturate anyway).
        assert!(is_fresh(t0 + ttl, t0, ttl));
        assert!(!is_fresh(t0, t0, Duration::ZERO));
    }

    #[test]
    fn the_weight_floor_keeps_both_bounds() {
        let nz = |n| NonZeroU64::new(n).unwrap();
        assert_eq!(weight_floor(nz(1_000), nz(10)), 100);
        assert_eq!(weight_floor(nz(1_001), nz(10)), 101, "rounded up");
        assert_eq!(weight_floor(nz(5), nz(10)), 1);
        assert_eq!(weight_floor(nz(u64::MAX), nz(1)), u32::MAX, "saturates");
    }

    #[test]
    fn config_defaults_validation_and_setters() {
        let c = LastKnownGoodConfig::new(Duration::from_secs(60));
        assert_eq!(c.max_entries.get(), 10_000);
        assert_eq!(c.max_bytes, None);
        assert_eq!(c.max_body_bytes, 1024 * 1024);
        assert!(c.validate().is_ok());
        assert!(c.build(Global).is_ok());
        let err = LastKnownGoodConfig::new(Duration::ZERO)
            .build(Global)
            .unwrap_err();
        assert_eq!(err.field(), "ttl");

        let lkg = LastKnownGood::new(Global).max_entries(0).max_bytes(0);
        assert_eq!(lkg.config.max_entries.get(), 1, "clamped to one");
        assert_eq!(lkg.config.max_bytes.map(NonZeroU64::get), Some(1));

        let json = serde_json::to_string(&c).unwrap();
        let back: LastKnownGoodConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert!(
            serde_json::from_str::<LastKnownGoodConfig>(r#"{"ttl":"1m","typo":1}"#).is_err(),
            "unknown fields are refused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stores_replays_expires_and_clears() {
        let (reporter, seen) = recording();
        let lkg = LastKnownGood::new(Global).ttl(Duration::from_secs(30));
        let cx = || Source::<(), String>::prepare(&lkg, &(), &reporter);
        let store = |res: &str| {
            kept(Source::<(), String>::on_success(
                &lkg,
                cx(),
                res.to_owned(),
                &reporter,
            ))
        };
        let lookup = || {
            recovered(Source::<(), String>::recover(
                &lkg,
                &cx(),
                Failure::Error("down".into()),
                &reporter,
            ))
        };
        assert_eq!(lookup(), None);

        assert_eq!(store("good"), "good");
        assert_eq!(lookup().as_deref(), Some("good"));

        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(lookup(), None, "expired");
        let cache = lkg.typed::<String, ()>().unwrap();
        assert!(
            !cache.contains_key(&()),
            "an expired copy is dropped when read"
        );

        store("again");
        assert_eq!(lookup().as_deref(), Some("again"));
        lkg.clear();
        assert_eq!(lookup(), None, "cleared");
        assert_eq!(
            *seen.lock().unwrap(),
            ["last_known_good_stored", "last_known_good_stored"]
        );
    }

    #[test]
    fn the_store_is_bounded_by_entries_and_by_bytes() {
        let reporter = Reporter::new("test".into(), SharedObserver::new(()));
        let by_number = crate::key::from_fn(|req: &u32| Ok::<_, KeyError>(*req));
        for lkg in [
            LastKnownGood::new(by_number).max_entries(3),
            // Copies weigh at least 1000 / 3 bytes each: still 3 at most.
            LastKnownGood::new(by_number).max_entries(3).max_bytes(1000),
        ] {
            for n in 0..100u32 {
                let cx = Source::<u32, String>::prepare(&lkg, &n, &reporter);
                kept(lkg.on_success(cx, n.to_string(), &reporter));
            }
            let cache = lkg.typed::<String, u32>().unwrap();
            cache.run_pending_tasks();
            assert!(cache.entry_count() <= 3, "{} entries", cache.entry_count());
        }
    }

    #[tokio::test]
    async fn a_request_without_a_key_is_neither_stored_nor_looked_up() {
        let (reporter, seen) = recording();
        let key = crate::key::from_fn(|req: &Option<u8>| req.ok_or(KeyError::Missing));
        let lkg = LastKnownGood::new(key);
        let cx = |req: Option<u8>| Source::<Option<u8>, String>::prepare(&lkg, &req, &reporter);
        let store = |req: Option<u8>, res: &str| {
            kept(Source::<Option<u8>, String>::on_success(
                &lkg,
                cx(req),
                res.to_owned(),
                &reporter,
            ))
        };
        let lookup = |req: Option<u8>| {
            recovered(Source::<Option<u8>, String>::recover(
                &lkg,
                &cx(req),
                Failure::Error("down".into()),
                &reporter,
            ))
        };
        store(None, "good");
        assert_eq!(*seen.lock().unwrap(), ["last_known_good_skipped"]);
        assert_eq!(lookup(None), None);
        assert!(Source::<Option<u8>, String>::key(&lkg, &cx(None)).is_none());

        store(Some(1), "one");
        assert_eq!(lookup(Some(1)).as_deref(), Some("one"));
        assert_eq!(lookup(Some(2)), None, "another key");
        assert_eq!(
            no_key_reason(&KeyError::TooLong { len: 2, max: 1 }),
            "request key is too long"
        );
        assert_eq!(
            no_key_reason(&KeyError::Malformed("x")),
            "request key is malformed"
        );
    }
}
