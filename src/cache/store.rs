//! Where cached responses live: the [`CacheStore`] trait and the in-process
//! [`MemoryCacheStore`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::idempotency::StoredResponse;

/// One cached response and its freshness, all measured from `stored_at` on the layer's
/// clock.
#[derive(Debug)]
pub struct CachedEntry {
    /// The response, body buffered.
    pub response: StoredResponse,
    /// When it was stored.
    pub stored_at: Instant,
    /// How long it is fresh (a hit).
    pub fresh_for: Duration,
    /// After that, how long it is served while one refresh runs in the background.
    pub stale_while_revalidate: Duration,
    /// After freshness, how long it is served when the inner call fails.
    pub stale_if_error: Duration,
    /// Nanoseconds after `stored_at` of the last hit, for time-to-idle.
    last_access: AtomicU64,
}

/// What an entry may be used for at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Freshness {
    /// Fresh: serve it.
    Fresh,
    /// Stale, within its stale-while-revalidate window: serve it and refresh.
    StaleRevalidate(Duration),
    /// Stale, usable only if the inner call fails: `stale_for` past freshness.
    StaleIfError(Duration),
    /// Unusable.
    Expired,
}

impl CachedEntry {
    /// A new entry stored at `stored_at`.
    pub fn new(
        response: StoredResponse,
        stored_at: Instant,
        fresh_for: Duration,
        stale_while_revalidate: Duration,
        stale_if_error: Duration,
    ) -> CachedEntry {
        CachedEntry {
            response,
            stored_at,
            fresh_for,
            stale_while_revalidate,
            stale_if_error,
            last_access: AtomicU64::new(0),
        }
    }

    /// How long the entry is worth keeping: freshness plus the longer stale window.
    pub fn retention(&self) -> Duration {
        self.fresh_for
            .saturating_add(self.stale_while_revalidate.max(self.stale_if_error))
    }

    /// The entry's age at `now` (zero if the clock is behind).
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// What the entry may be used for at `now`, given a time-to-idle.
    pub(super) fn freshness(&self, now: Instant, tti: Option<Duration>) -> Freshness {
        let age = self.age(now);
        if let Some(tti) = tti {
            let last = Duration::from_nanos(self.last_access.load(Ordering::Relaxed));
            if age.saturating_sub(last) >= tti {
                return Freshness::Expired;
            }
        }
        if age < self.fresh_for {
            return Freshness::Fresh;
        }
        let stale_for = age - self.fresh_for;
        if stale_for < self.stale_while_revalidate {
            Freshness::StaleRevalidate(stale_for)
        } else if stale_for < self.stale_if_error {
            Freshness::StaleIfError(stale_for)
        } else {
            Freshness::Expired
        }
    }

    /// Record a hit at `now` (for time-to-idle).
    pub(super) fn touch(&self, now: Instant) {
        let nanos = u64::try_from(self.age(now).as_nanos()).unwrap_or(u64::MAX);
        self.last_access.fetch_max(nanos, Ordering::Relaxed);
    }
}

/// The answer of [`CacheStore::get`]: at once (an in-process store), or later (a remote
/// one).
pub enum Lookup {
    /// The entry, or `None`.
    Ready(Option<Arc<CachedEntry>>),
    /// The entry, once the store answers; an error counts as a miss.
    Pending(BoxFuture<'static, Option<Arc<CachedEntry>>>),
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::Ready(e) => f.debug_tuple("Ready").field(&e.is_some()).finish(),
            Lookup::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Which keys an invalidation removes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Selector {
    /// Every key whose request target (path and query) equals this, for any method and
    /// key header values.
    Target(Arc<str>),
    /// Every key whose request target starts with this.
    Prefix(Arc<str>),
}

impl Selector {
    /// Whether the cache key `key` (`"METHOD target"`, then key header values) is selected.
    pub fn matches(&self, key: &str) -> bool {
        let target = super::key::target_of_key(key);
        match self {
            Selector::Target(t) => target == &**t,
            Selector::Prefix(p) => target.starts_with(&**p),
        }
    }
}

/// Where cached responses live. [`MemoryCacheStore`] (in process, `moka`) is the default.
///
/// The shape leaves room for a remote store (Redis): a lookup may answer later
/// ([`Lookup::Pending`]), writes and removals are fire-and-forget (a remote store spawns
/// them), and keys are strings. Request coalescing is not the store's job: the layer
/// coalesces the calls of one process whatever the store.
pub trait CacheStore: Send + Sync + 'static {
    /// The entry for `key`, if any (fresh or not: the layer decides).
    fn get(&self, key: &str) -> Lookup;

    /// Store `entry` under `key`, replacing any other.
    fn put(&self, key: Arc<str>, entry: Arc<CachedEntry>);

    /// Remove `key`.
    fn remove(&self, key: &str);

    /// Remove every key `selector` matches.
    fn remove_matching(&self, selector: Selector);

    /// Remove everything.
    fn clear(&self);

    /// The number of entries kept (approximate; a remote store may say `None`).
    fn entry_count(&self) -> Option<u64> {
        None
    }
}

/// The in-process store: a `moka` cache bounded by entry count and by bytes (a weigher:
/// body, headers and key), each entry expiring after its freshness and stale windows on
/// moka's own clock as a memory backstop (whether an entry is fresh is decided by the
/// layer on its [`Clock`](crate::clock::Clock), so paused-time tests are exact), and after
/// a time-to-idle if one is set.
pub struct MemoryCacheStore {
    cache: moka::sync::Cache<Arc<str>, Arc<CachedEntry>>,
}

impl fmt::Debug for MemoryCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCacheStore")
            .field("entries", &self.cache.entry_count())
            .field("weighted_size", &self.cache.weighted_size())
            .finish()
    }
}

struct ByRetention;

impl moka::Expiry<Arc<str>, Arc<CachedEntry>> for ByRetention {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        entry: &Arc<CachedEntry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.retention().max(Duration::from_millis(1)))
    }

    fn expire_after_update(
        &self,
        key: &Arc<str>,
        entry: &Arc<CachedEntry>,
        now: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, entry, now)
    }
}

/// The weight of one entry in bytes: its response and its key.
pub(super) fn weight(key: &str, entry: &CachedEntry) -> usize {
    entry.response.weight() + key.len()
}

impl MemoryCacheStore {
    /// At most `max_entries` entries holding at most `max_bytes` (each entry counts as at
    /// least `max_bytes / max_entries`, so both bounds hold), idle entries dropped after
    /// `time_to_idle` if set.
    pub fn new(max_entries: u64, max_bytes: u64, time_to_idle: Option<Duration>) -> Self {
        let max_entries = max_entries.max(1);
        let max_bytes = max_bytes.max(max_entries);
        let floor = u32::try_from(max_bytes / max_entries).unwrap_or(u32::MAX);
        let mut builder = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |k: &Arc<str>, v: &Arc<CachedEntry>| {
                u32::try_from(weight(k, v)).unwrap_or(u32::MAX).max(floor)
            })
            .expire_after(ByRetention)
            .support_invalidation_closures();
        if let Some(tti) = time_to_idle {
            builder = builder.time_to_idle(tti.max(Duration::from_millis(1)));
        }
        MemoryCacheStore {
            cache: builder.build(),
        }
    }

    /// The bytes held now, by the weigher (after pending evictions).
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

impl CacheStore for MemoryCacheStore {
    #[inline]
    fn get(&self, key: &str) -> Lookup {
        Lookup::Ready(self.cache.get(key))
    }

    fn put(&self, key: Arc<str>, entry: Arc<CachedEntry>) {
        self.cache.insert(key, entry);
    }

    fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    fn remove_matching(&self, selector: Selector) {
        // Only fails when closures are not supported, which they are (see `new`).
        let _ = self
            .cache
            .invalidate_entries_if(move |k, _| selector.matches(k));
    }

    fn clear(&self) {
        self.cache.invalidate_all();
    }

    fn entry_count(&self) -> Option<u64> {
        self.cache.run_pending_tasks();
        Some(self.cache.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode, Version};

    fn entry(fresh: u64, swr: u64, sie: u64) -> CachedEntry {
        CachedEntry::new(
            StoredResponse {
                status: StatusCode::OK,
                version: Version::HTTP_11,
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"x"),
                trailers: None,
            },
            Instant::now(),
            Duration::from_secs(fresh),
            Duration::from_secs(swr),
            Duration::from_secs(sie),
        )
    }

    #[test]
    fn freshness_windows() {
        let e = entry(10, 5, 20);
        let t0 = e.stored_at;
        let at = |s: u64| e.freshness(t0 + Duration::from_secs(s), None);
        assert_eq!(at(0), Freshness::Fresh);
        assert_eq!(at(9), Freshness::Fresh);
        assert_eq!(at(10), Freshness::StaleRevalidate(Duration::ZERO));
        assert_eq!(at(14), Freshness::StaleRevalidate(Duration::from_secs(4)));
        assert_eq!(at(15), Freshness::StaleIfError(Duration::from_secs(5)));
        assert_eq!(at(29), Freshness::StaleIfError(Duration::from_secs(19)));
        assert_eq!(at(30), Freshness::Expired);
        assert_eq!(e.retention(), Duration::from_secs(30));
    }

    #[test]
    fn time_to_idle_counts_from_the_last_hit() {
        let e = entry(100, 0, 0);
        let t0 = e.stored_at;
        let tti = Some(Duration::from_secs(10));
        assert_eq!(
            e.freshness(t0 + Duration::from_secs(9), tti),
            Freshness::Fresh
        );
        e.touch(t0 + Duration::from_secs(9));
        assert_eq!(
            e.freshness(t0 + Duration::from_secs(18), tti),
            Freshness::Fresh
        );
        assert_eq!(
            e.freshness(t0 + Duration::from_secs(19), tti),
            Freshness::Expired
        );
    }
}
