//! The limiter's state: `governor`'s GCRA, one per quota, over cells kept per key.
//!
//! `governor` decides (its `RateLimiter::check_key`/`check_key_n`, one compare-and-swap
//! per quota); this module only keeps its state. A key's state is a [`Slot`]: one atomic
//! "theoretical arrival time" per quota, in nanoseconds since the limiter's start (what
//! `governor`'s own `InMemoryState` keeps), and the time the key was last seen. Unkeyed
//! limiters have one slot; keyed ones keep slots in a [`KeyedStore`], bounded and swept of
//! idle keys from the call path.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;

use super::quota::Quota;
use crate::clock::Clock;
use crate::error::RateLimitInfo;

/// `governor`'s clock over the crate's [`Clock`]: nanoseconds since `base`, so tokio's
/// paused clock (and a `ManualClock`) drives the limiter.
#[derive(Debug, Clone)]
pub(super) struct GovClock {
    base: tokio::time::Instant,
    clock: Clock,
}

impl GovClock {
    pub(super) fn new(clock: Clock) -> GovClock {
        GovClock {
            base: clock.now(),
            clock,
        }
    }

    /// Nanoseconds since the base (saturating after ~584 years).
    #[inline]
    pub(super) fn nanos(&self) -> u64 {
        let d = self.clock.now().saturating_duration_since(self.base);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }
}

impl governor::clock::Clock for GovClock {
    type Instant = Nanos;

    #[inline]
    fn now(&self) -> Nanos {
        Nanos::from(self.nanos())
    }
}

/// How far a slot's last-seen time may lag behind the truth, in nanoseconds (1 ms).
const TOUCH_GRAIN: u64 = 1_000_000;

/// One key's state: `[last_seen, cell_0, cell_1, ...]`, one allocation per key. A cell is
/// one quota's theoretical arrival time (0: never used).
///
/// Equality and hashing are by identity: `governor`'s keyed API asks for a hashable key,
/// and here the "key" handed to it is the state itself.
#[derive(Clone)]
pub(super) struct Slot(Arc<[AtomicU64]>);

impl Slot {
    pub(super) fn new(quotas: usize, now: u64) -> Slot {
        Slot(
            std::iter::once(now)
                .chain(std::iter::repeat_n(0, quotas))
                .map(AtomicU64::new)
                .collect(),
        )
    }

    fn cell(&self, quota: usize) -> &AtomicU64 {
        &self.0[quota + 1]
    }

    /// Note that the key was seen at `now` (a store only when it moved by a millisecond or
    /// more, to keep shared cache lines quiet).
    #[inline]
    fn touch(&self, now: u64) {
        let seen = &self.0[0];
        if now.saturating_sub(seen.load(Ordering::Relaxed)) >= TOUCH_GRAIN {
            seen.store(now, Ordering::Relaxed);
        }
    }

    fn last_seen(&self) -> u64 {
        self.0[0].load(Ordering::Relaxed)
    }

    /// Back to a fresh state.
    fn reset(&self) {
        for cell in &self.0[1..] {
            cell.store(0, Ordering::Release);
        }
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Slot {}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0).cast::<AtomicU64>(), state)
    }
}

/// The state store of quota `index`: the cell of that quota in the slot it is given.
#[derive(Debug)]
struct CellStore {
    index: usize,
}

impl StateStore for CellStore {
    type Key = Slot;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, slot: &Slot, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // The compare-and-swap loop of governor's `InMemoryState`, on this quota's cell.
        let cell = slot.cell(self.index);
        let read = |v: u64| (v != 0).then_some(Nanos::from(v));
        let mut prev = cell.load(Ordering::Acquire);
        loop {
            let (result, next) = f(read(prev))?;
            match cell.compare_exchange_weak(
                prev,
                next.as_u64(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(result),
                Err(actual) => prev = actual,
            }
        }
    }
}

type GovLimiter = governor::RateLimiter<Slot, CellStore, GovClock, StateInformationMiddleware>;

struct QuotaLimiter {
    quota: Quota,
    limiter: GovLimiter,
    interval_nanos: u64,
    burst: u32,
}

/// What the quotas decided for one request.
#[derive(Debug)]
pub(super) enum Decision {
    /// Every quota admitted it. `info` (when asked for) describes the quota with the least
    /// left.
    Admitted { info: Option<Box<RateLimitInfo>> },
    /// Quota `quota` refused it; a request of the same weight may pass after `wait`.
    /// (The infos are boxed: the decision stays small on the admitted path.)
    Refused {
        quota: usize,
        wait: Duration,
        info: Box<RateLimitInfo>,
    },
}

/// Every quota of one layer, with `governor` limiters sharing one clock base.
pub(super) struct Quotas {
    limiters: Box<[QuotaLimiter]>,
    clock: GovClock,
    forget_after: u64,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.limiters.iter().map(|l| &l.quota))
            .finish()
    }
}

impl Quotas {
    pub(super) fn new(quotas: &[Quota], clock: Clock) -> Quotas {
        let clock = GovClock::new(clock);
        let limiters = quotas
            .iter()
            .enumerate()
            .map(|(index, quota)| QuotaLimiter {
                quota: quota.clone(),
                limiter: GovLimiter::new(quota.to_governor(), CellStore { index }, clock.clone()),
                interval_nanos: nanos(quota.interval()),
                burst: quota.burst_size(),
            })
            .collect();
        let forget_after = quotas.iter().map(|q| nanos(q.refill_time())).max();
        Quotas {
            limiters,
            clock,
            forget_after: forget_after.unwrap_or(0),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.limiters.len()
    }

    pub(super) fn quota(&self, index: usize) -> &Quota {
        &self.limiters[index].quota
    }

    /// Nanoseconds since the limiter's base.
    #[inline]
    pub(super) fn now(&self) -> u64 {
        self.clock.nanos()
    }

    /// How long a key must go unseen before forgetting it loses nothing: the longest
    /// refill time of the quotas.
    pub(super) fn forget_after(&self) -> u64 {
        self.forget_after
    }

    /// `true` when there is one quota and it admits one cell for `slot` (taking it);
    /// `false` when there are several, or it refuses (nothing taken): ask
    /// [`decide`](Self::decide) then.
    #[inline]
    pub(super) fn check_single(&self, slot: &Slot) -> bool {
        match &*self.limiters {
            [only] => only.limiter.check_key(slot).is_ok(),
            _ => false,
        }
    }

    /// Ask every quota, in order, to admit `weight` (clamped to each quota's burst; 0 is
    /// admitted without asking). When one refuses, what the earlier ones took is given back.
    #[inline]
    pub(super) fn decide(&self, slot: &Slot, weight: u32, want_info: bool) -> Decision {
        let Some(weight) = NonZeroU32::new(weight) else {
            return Decision::Admitted { info: None };
        };
        let mut tightest: Option<(usize, u32)> = None;
        for (i, q) in self.limiters.iter().enumerate() {
            let n = weight.min(NonZeroU32::new(q.burst).expect("bursts are non-zero"));
            let outcome = if n.get() == 1 {
                q.limiter.check_key(slot)
            } else {
                q.limiter
                    .check_key_n(slot, n)
                    .expect("the weight is clamped to the burst")
            };
            match outcome {
                Ok(snapshot) => {
                    if want_info {
                        let left = snapshot.remaining_burst_capacity();
                        if tightest.is_none_or(|(_, l)| left < l) {
                            tightest = Some((i, left));
                        }
                    }
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    self.give_back(slot, weight, i);
                    return Decision::Refused {
                        quota: i,
                        wait,
                        info: Box::new(self.info(i, 0, wait)),
                    };
                }
            }
        }
        let info = tightest.map(|(i, left)| {
            let q = &self.limiters[i];
            let used = u64::from(q.burst.saturating_sub(left));
            let reset = Duration::from_nanos(used.saturating_mul(q.interval_nanos));
            Box::new(self.info(i, u64::from(left), reset))
        });
        Decision::Admitted { info }
    }

    /// Undo what quotas `..upto` took for `weight`: each admission moved its cell forward
    /// by `weight × interval` from at least the time of the check, so moving it back by as
    /// much never restores more than the request took.
    fn give_back(&self, slot: &Slot, weight: NonZeroU32, upto: usize) {
        for (i, q) in self.limiters[..upto].iter().enumerate() {
            let took = u64::from(weight.get().min(q.burst)).saturating_mul(q.interval_nanos);
            let _ = slot
                .cell(i)
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                    Some(tat.saturating_sub(took))
                });
        }
    }

    pub(super) fn info(&self, quota: usize, remaining: u64, reset: Duration) -> RateLimitInfo {
        let q = &self.limiters[quota].quota;
        let (count, window) = q.header_window();
        RateLimitInfo {
            policy: q.name_arc().clone(),
            quota: count,
            window,
            remaining,
            reset,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Slots per key: at most `max_keys`, in shards of `RwLock<HashMap>` (std's SipHash with
/// random keys, so keys chosen by an attacker do not collide on purpose).
///
/// - A known key takes a shard's read lock and no allocation.
/// - A new key takes the shard's write lock and one allocation (its slot). If the shard is
///   full, keys idle for [`Quotas::forget_after`] are dropped first (their state equals a
///   fresh one); if none is idle, the least recently seen of a sample of 8 is evicted
///   (its quota starts afresh when it comes back).
/// - Every `sweep_step` (measured on the layer's clock, checked on each call) one shard is
///   swept of idle keys and shrunk, in turn, so memory returns without anyone calling
///   anything: a full pass takes `forget_after`. When calls are rarer than that, one call
///   sweeps up to 8 overdue shards.
pub(super) struct KeyedStore<K> {
    shards: Box<[RwLock<Shard<K>>]>,
    hasher: RandomState,
    per_shard: usize,
    quotas: usize,
    forget_after: u64,
    sweep_step: u64,
    next_sweep: AtomicU64,
    cursor: AtomicUsize,
    evicted: AtomicU64,
}

/// One shard's keys, and the earliest time one of them can be idle (so a full shard under
/// a flood of new keys is not scanned for idle keys on every insertion).
struct Shard<K> {
    map: HashMap<K, Slot>,
    idle_at: u64,
}

impl<K> Default for Shard<K> {
    fn default() -> Self {
        Shard {
            map: HashMap::new(),
            idle_at: 0,
        }
    }
}

/// The most shards one call sweeps when sweeps are overdue.
const SWEEP_CATCH_UP: u64 = 8;

/// Candidates examined when a full shard must evict a key that is not idle.
const EVICTION_SAMPLE: usize = 8;

impl<K: Hash + Eq + Clone> KeyedStore<K> {
    pub(super) fn new(max_keys: usize, quotas: &Quotas) -> KeyedStore<K> {
        let max_keys = max_keys.max(1);
        // At least 16 keys per shard, at most 64 shards, a power of two.
        let wanted = (max_keys / 16).clamp(1, 64);
        let shards = 1usize << (usize::BITS - 1 - wanted.leading_zeros());
        let forget_after = quotas.forget_after();
        let sweep_step = (forget_after / shards as u64).max(10_000_000);
        KeyedStore {
            shards: (0..shards).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            per_shard: max_keys / shards,
            quotas: quotas.len(),
            forget_after,
            sweep_step,
            next_sweep: AtomicU64::new(sweep_step),
            cursor: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &K) -> &RwLock<Shard<K>> {
        let i = self.hasher.hash_one(key) as usize & (self.shards.len() - 1);
        &self.shards[i]
    }

    /// Whether `slot` has been unseen for its refill time, plus the millisecond by which
    /// its last-seen time may lag (see [`Slot::touch`]).
    fn is_idle(&self, slot: &Slot, now: u64) -> bool {
        now.saturating_sub(slot.last_seen()) >= self.forget_after.saturating_add(TOUCH_GRAIN)
    }

    /// Drop the shard's idle keys and note when the next one can be idle.
    fn drop_idle(&self, shard: &mut Shard<K>, now: u64) {
        shard.map.retain(|_, slot| !self.is_idle(slot, now));
        let oldest = shard.map.values().map(Slot::last_seen).min();
        shard.idle_at = oldest.map_or(0, |t| {
            t.saturating_add(self.forget_after)
                .saturating_add(TOUCH_GRAIN)
        });
    }

    /// Run `f` on `key`'s slot, creating it if needed. Returns whether a key that was not
    /// idle had to be evicted to make room.
    pub(super) fn with_slot<R>(&self, key: &K, now: u64, f: impl FnOnce(&Slot) -> R) -> (R, bool) {
        let shard = self.shard(key);
        {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = shard.map.get(key) {
                slot.touch(now);
                return (f(slot), false);
            }
        }
        let mut evicted = false;
        let slot = {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            match shard.map.get(key) {
                // Created by another call meanwhile.
                Some(slot) => slot.clone(),
                None => {
                    if shard.map.len() >= self.per_shard && now >= shard.idle_at {
                        self.drop_idle(&mut shard, now);
                    }
                    if shard.map.len() >= self.per_shard {
                        evicted = self.evict_one(&mut shard.map);
                    }
                    let slot = Slot::new(self.quotas, now);
                    shard.map.insert(key.clone(), slot.clone());
                    slot
                }
            }
        };
        (f(&slot), evicted)
    }

    fn evict_one(&self, map: &mut HashMap<K, Slot>) -> bool {
        let victim = map
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, slot)| slot.last_seen())
            .map(|(k, _)| k.clone());
        match victim {
            Some(k) => {
                map.remove(&k);
                self.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Sweep one shard of idle keys if its turn has come. Cheap when it has not: one
    /// atomic load.
    #[inline]
    pub(super) fn maybe_sweep(&self, now: u64) {
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now < due
            || self
                .next_sweep
                .compare_exchange(
                    due,
                    now.saturating_add(self.sweep_step),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        // Behind schedule (calls were rare): catch up a few shards at a time.
        let turns = (1 + (now - due) / self.sweep_step).min(SWEEP_CATCH_UP) as usize;
        for _ in 0..turns.min(self.shards.len()) {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed) % self.shards.len();
            let mut shard = self.shards[i]
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            self.drop_idle(&mut shard, now);
            if shard.map.capacity() > 64 && shard.map.len() < shard.map.capacity() / 4 {
                shard.map.shrink_to_fit();
            }
        }
    }

    /// Keys held now.
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }

    /// Keys that were evicted while not idle, because the store was full.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// The most keys the store holds.
    pub(super) fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Forget every key.
    pub(super) fn clear(&self) {
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.map.clear();
            shard.map.shrink_to_fit();
            shard.idle_at = 0;
        }
    }

    /// Forget one key.
    pub(super) fn remove(&self, key: &K) -> bool {
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        shard.map.remove(key).is_some()
    }
}

/// The slot of an unkeyed limiter.
pub(super) fn reset_slot(slot: &Slot) {
    slot.reset();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(qs: &[Quota]) -> Quotas {
        Quotas::new(qs, Clock::tokio())
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_one_per_interval() {
        let q = quotas(&[Quota::per_second(10).burst(3)]);
        let slot = Slot::new(1, 0);
        for _ in 0..3 {
            assert!(matches!(
                q.decide(&slot, 1, false),
                Decision::Admitted { .. }
            ));
        }
        let Decision::Refused { wait, info, .. } = q.decide(&slot, 1, false) else {
            panic!("the burst is spent");
        };
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(info.remaining, 0);
        assert_eq!(info.reset, wait);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(matches!(
            q.decide(&slot, 1, false),
            Decision::Admitted { .. }
        ));
        assert!(matches!(
            q.decide(&slot, 1, false),
            Decision::Refused { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_gives_back_what_earlier_quotas_took() {
        // The second quota refuses first: the first must not be charged for it.
        let q = quotas(&[Quota::per_second(10), Quota::per_second(2)]);
        let slot = Slot::new(2, 0);
        for _ in 0..2 {
            assert!(matches!(
                q.decide(&slot, 1, false),
                Decision::Admitted { .. }
            ));
        }
        for _ in 0..20 {
            let d = q.decide(&slot, 1, false);
            assert!(matches!(d, Decision::Refused { quota: 1, .. }), "{d:?}");
        }
        // Only the 2 admitted requests were charged to the first quota.
        let used = slot.cell(0).load(Ordering::Acquire);
        assert_eq!(used, 2 * 100_000_000, "two requests' worth, no more");
    }

    #[tokio::test(start_paused = true)]
    async fn weights_are_clamped_to_the_burst_and_zero_is_free() {
        let q = quotas(&[Quota::per_second(10).burst(4)]);
        let slot = Slot::new(1, 0);
        assert!(matches!(
            q.decide(&slot, 0, false),
            Decision::Admitted { info: None }
        ));
        let Decision::Admitted { info: Some(info) } = q.decide(&slot, 100, true) else {
            panic!("a heavy request is admitted when the quota is full");
        };
        assert_eq!(info.remaining, 0);
        assert_eq!(info.reset, Duration::from_millis(400));
        let Decision::Refused { wait, .. } = q.decide(&slot, 2, false) else {
            panic!()
        };
        assert_eq!(
            wait,
            Duration::from_millis(200),
            "until 2 of 4 cells are free"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn admitted_info_reports_the_tightest_quota() {
        let q = quotas(&[
            Quota::per_second(10).named("fast"),
            Quota::per_minute(3).named("slow"),
        ]);
        let slot = Slot::new(2, 0);
        let Decision::Admitted { info: Some(info) } = q.decide(&slot, 1, true) else {
            panic!()
        };
        assert_eq!(&*info.policy, "slow");
        assert_eq!(info.remaining, 2);
        assert_eq!(info.quota, 3);
        assert_eq!(info.window, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_store_is_bounded_and_forgets_idle_keys() {
        let q = quotas(&[Quota::per_second(1)]);
        let store = KeyedStore::<u32>::new(64, &q);
        assert_eq!(store.capacity(), 64);
        for k in 0..1_000u32 {
            let (_, _) = store.with_slot(&k, q.now(), |s| q.decide(s, 1, false));
            assert!(store.len() <= 64);
        }
        assert!(store.evicted() > 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        // Idle keys are swept, one shard per step, as calls come in.
        for _ in 0..8 {
            tokio::time::advance(Duration::from_millis(500)).await;
            store.maybe_sweep(q.now());
        }
        assert_eq!(store.len(), 0);
        store.with_slot(&1, q.now(), |_| ());
        assert!(store.remove(&1));
        store.with_slot(&1, q.now(), |_| ());
        store.clear();
        assert_eq!(store.len(), 0);
    }
}
