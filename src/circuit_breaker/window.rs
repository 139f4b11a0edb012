//! Sliding windows whose record and read are O(1) whatever their size, with no lock.
//!
//! Both windows keep running totals next to the per-slot (or per-bucket) outcomes, so the
//! rates are one atomic load away. Totals are packed into a single `u64` so that one
//! `fetch_add` updates every count at once; fields are signed so that a moment where one
//! thread has overwritten a slot and not yet corrected the totals reads as a small
//! negative number (clamped to zero) instead of corrupting its neighbour field.
//!
//! - [`CountWindow`]: the last `size` recorded calls. Slot `seq % size` holds each call's
//!   outcome; recording swaps the new outcome in and adds `new - old` to the totals. When
//!   the outcome is the same as the one it replaces (the steady state of a healthy
//!   dependency) the totals are not touched at all.
//! - [`TimeWindow`]: the calls of the last `buckets` bucket periods. A call is added to its
//!   bucket and the totals; when time enters a new period, the thread that notices claims
//!   the move with one compare-and-swap and subtracts the buckets that fell out of the
//!   window (amortised O(1): each bucket is cleared once per pass of the window).

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::*};
use std::time::Duration;

use tokio::time::Instant;

/// The totals of a window, as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Calls recorded in the window.
    pub(crate) calls: u64,
    /// Of which failed.
    pub(crate) failures: u64,
    /// Of which were slow.
    pub(crate) slow: u64,
}

/// One finished call, as the window sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

/// The largest count window: its fields must stay inside 21 signed bits.
pub(crate) const MAX_COUNT_WINDOW: u32 = 1 << 19;

const PRESENT: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;
const FIELD: u32 = 21;

impl Call {
    fn code(self) -> u8 {
        PRESENT | if self.failed { FAILED } else { 0 } | if self.slow { SLOW } else { 0 }
    }
}

/// A slot code as a packed (calls, failures, slow) triple of 21-bit fields.
#[inline]
fn pack3(code: u8) -> u64 {
    u64::from(code & PRESENT)
        | (u64::from((code & FAILED) >> 1) << FIELD)
        | (u64::from((code & SLOW) >> 2) << (2 * FIELD))
}

/// Three signed 21-bit fields (the last one takes the remaining 22 bits).
fn unpack3(v: u64) -> [i64; 3] {
    let v = v as i64;
    let shift = 64 - FIELD;
    let a = (v << shift) >> shift;
    let v = v.wrapping_sub(a) >> FIELD;
    let b = (v << shift) >> shift;
    let c = v.wrapping_sub(b) >> FIELD;
    [a, b, c]
}

fn clamp(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The last `size` calls.
#[derive(Debug)]
pub(crate) struct CountWindow {
    next: AtomicU64,
    totals: AtomicU64,
    slots: Box<[AtomicU8]>,
}

impl CountWindow {
    /// A window of `size` calls, `1..=MAX_COUNT_WINDOW` (checked by the config).
    pub(crate) fn new(size: u32) -> CountWindow {
        let size = size.clamp(1, MAX_COUNT_WINDOW);
        CountWindow {
            next: AtomicU64::new(0),
            totals: AtomicU64::new(0),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Record a call. Returns whether the totals changed.
    #[inline]
    pub(crate) fn record(&self, call: Call) -> bool {
        let code = call.code();
        let seq = self.next.fetch_add(1, Relaxed);
        let slot = &self.slots[(seq % self.slots.len() as u64) as usize];
        // Writing the value a slot already holds changes nothing, so a plain load stands
        // in for the swap in the steady state (saving a locked instruction per call).
        if slot.load(Relaxed) == code {
            return false;
        }
        let old = slot.swap(code, Relaxed);
        if old == code {
            return false;
        }
        self.totals
            .fetch_add(pack3(code).wrapping_sub(pack3(old)), Relaxed);
        true
    }

    /// Forget every call. Consistent with concurrent records: each slot is emptied by
    /// the same swap-and-correct step a record uses.
    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Relaxed);
            if old != 0 {
                self.totals.fetch_sub(pack3(old), Relaxed);
            }
        }
    }

    pub(crate) fn totals(&self) -> Totals {
        let [calls, failures, slow] = unpack3(self.totals.load(Relaxed));
        let cap = self.slots.len() as u64;
        Totals {
            calls: clamp(calls).min(cap),
            failures: clamp(failures).min(cap),
            slow: clamp(slow).min(cap),
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }
}

/// Failures in the high 32 bits, slow calls in the low 32, both signed.
#[inline]
fn pack2(call: Call) -> u64 {
    (u64::from(call.failed) << 32) | u64::from(call.slow)
}

fn unpack2(v: u64) -> (i64, i64) {
    let v = v as i64;
    let slow = (v << 32) >> 32;
    let failed = v.wrapping_sub(slow) >> 32;
    (failed, slow)
}

#[derive(Debug, Default)]
struct Bucket {
    calls: AtomicU64,
    outcomes: AtomicU64,
}

/// The calls of the last `buckets` periods of `length / buckets` each.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    base: Instant,
    bucket_nanos: u64,
    /// The newest period whose bucket is in use; every older bucket outside the window
    /// has been cleared.
    head: AtomicU64,
    calls: AtomicU64,
    outcomes: AtomicU64,
    buckets: Box<[Bucket]>,
}

impl TimeWindow {
    /// A window of `buckets` periods covering `length`, starting at `base`.
    pub(crate) fn new(base: Instant, length: Duration, buckets: u32) -> TimeWindow {
        let buckets = buckets.max(1);
        let bucket_nanos = u64::try_from(length.as_nanos() / u128::from(buckets))
            .unwrap_or(u64::MAX)
            .max(1);
        TimeWindow {
            base,
            bucket_nanos,
            head: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            outcomes: AtomicU64::new(0),
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
        }
    }

    fn period(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.base).as_nanos();
        u64::try_from(since / u128::from(self.bucket_nanos)).unwrap_or(u64::MAX)
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Move the window to `period`, clearing the buckets that fell out of it.
    fn advance(&self, period: u64) {
        let mut head = self.head.load(Acquire);
        while period > head {
            match self
                .head
                .compare_exchange_weak(head, period, AcqRel, Acquire)
            {
                Ok(_) => {
                    // Periods head+1 ..= period take over their buckets; at most a full
                    // pass of the window needs clearing.
                    let first = head
                        .saturating_add(1)
                        .max(period.saturating_sub(self.len() - 1));
                    for p in first..=period {
                        self.clear(&self.buckets[(p % self.len()) as usize]);
                    }
                    return;
                }
                Err(current) => head = current,
            }
        }
    }

    fn clear(&self, bucket: &Bucket) {
        let calls = bucket.calls.swap(0, AcqRel);
        let outcomes = bucket.outcomes.swap(0, AcqRel);
        if calls != 0 {
            self.calls.fetch_sub(calls, AcqRel);
        }
        if outcomes != 0 {
            self.outcomes.fetch_sub(outcomes, AcqRel);
        }
    }

    /// Record a call that finished at `now`.
    #[inline]
    pub(crate) fn record(&self, call: Call, now: Instant) {
        let period = self.period(now);
        self.advance(period);
        if period.saturating_add(self.len()) <= self.head.load(Acquire) {
            return; // finished so long ago that its bucket belongs to a newer period
        }
        let bucket = &self.buckets[(period % self.len()) as usize];
        // Totals first, bucket second: a concurrent clear subtracts only what reached the
        // bucket, so the totals never drop below the sum of the buckets.
        self.calls.fetch_add(1, AcqRel);
        let outcomes = pack2(call);
        if outcomes != 0 {
            self.outcomes.fetch_add(outcomes, AcqRel);
        }
        bucket.calls.fetch_add(1, AcqRel);
        if outcomes != 0 {
            bucket.outcomes.fetch_add(outcomes, AcqRel);
        }
    }

    /// The totals of the window that ends at `now`.
    pub(crate) fn totals(&self, now: Instant) -> Totals {
        self.advance(self.period(now));
        let calls = self.calls.load(Acquire);
        let (failures, slow) = unpack2(self.outcomes.load(Acquire));
        Totals {
            calls,
            failures: clamp(failures).min(calls),
            slow: clamp(slow).min(calls),
        }
    }

    /// Forget every call.
    pub(crate) fn reset(&self) {
        for bucket in self.buckets.iter() {
            self.clear(bucket);
        }
    }
}

/// Either window.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }

    pub(crate) fn totals(&self, now: impl FnOnce() -> Instant) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(now()),
        }
    }
}

/// Counts of a half-open episode: packed like a count window's totals, only ever added to.
#[derive(Debug, Default)]
pub(crate) struct Tally(AtomicU64);

impl Tally {
    /// Add a call; returns the totals including it.
    pub(crate) fn add(&self, call: Call) -> Totals {
        let add = pack3(call.code());
        let before = self.0.fetch_add(add, AcqRel);
        to_totals(before.wrapping_add(add))
    }

    pub(crate) fn get(&self) -> Totals {
        to_totals(self.0.load(Acquire))
    }

    pub(crate) fn reset(&self) {
        self.0.store(0, Release);
    }
}

fn to_totals(v: u64) -> Totals {
    let [calls, failures, slow] = unpack3(v);
    Totals {
        calls: clamp(calls),
        failures: clamp(failures),
        slow: clamp(slow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(failed: bool, slow: bool) -> Call {
        Call { failed, slow }
    }

    #[test]
    fn packing_round_trips_signed_fields() {
        for (a, b, c) in [
            (0i64, 0i64, 0i64),
            (-1, 5, 7),
            (3, -2, -9),
            (1 << 19, -(1 << 19), 1 << 20),
        ] {
            let v = (a as u64)
                .wrapping_add((b as u64) << FIELD)
                .wrapping_add((c as u64) << (2 * FIELD));
            assert_eq!(unpack3(v), [a, b, c]);
        }
        for (f, s) in [(0i64, 0i64), (-1, 3), (7, -1), (-5, -5)] {
            let v = ((f as u64) << 32).wrapping_add(s as u64);
            assert_eq!(unpack2(v), (f, s));
        }
    }

    #[test]
    fn count_window_really_slides() {
        let w = CountWindow::new(100);
        for _ in 0..1_000 {
            w.record(call(false, false));
        }
        for i in 1..=50 {
            w.record(call(true, false));
            let t = w.totals();
            assert_eq!((t.calls, t.failures), (100, i));
        }
    }

    #[test]
    fn count_window_reset_empties_it() {
        let w = CountWindow::new(3);
        w.record(call(true, true));
        w.record(call(false, true));
        w.reset();
        assert_eq!(w.totals(), Totals::default());
        w.record(call(true, false));
        assert_eq!(
            w.totals(),
            Totals {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn count_window_stays_exact_under_two_threads() {
        let w = CountWindow::new(64);
        std::thread::scope(|s| {
            for t in 0..2 {
                let w = &w;
                s.spawn(move || {
                    for i in 0..100_000u32 {
                        w.record(call((i + t) % 3 == 0, i % 5 == 0));
                    }
                });
            }
        });
        // Once quiet, the totals equal the slots' contents.
        let mut naive = Totals::default();
        for slot in w.slots.iter() {
            let code = slot.load(Relaxed);
            naive.calls += u64::from(code & PRESENT);
            naive.failures += u64::from((code & FAILED) >> 1);
            naive.slow += u64::from((code & SLOW) >> 2);
        }
        assert_eq!(w.totals(), naive);
        assert_eq!(naive.calls, 64);
    }

    #[test]
    fn time_window_forgets_old_buckets_and_long_silences() {
        let base = Instant::now();
        let w = TimeWindow::new(base, Duration::from_secs(10), 10);
        let at = |ms: u64| base + Duration::from_millis(ms);
        w.record(call(true, false), at(0));
        w.record(call(false, true), at(4_500));
        assert_eq!(
            w.totals(at(9_999)),
            Totals {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        // The bucket of period 0 leaves the window when period 10 starts.
        assert_eq!(
            w.totals(at(10_000)),
            Totals {
                calls: 1,
                failures: 0,
                slow: 1
            }
        );
        // A silence longer than the window empties it.
        assert_eq!(w.totals(at(100_000)), Totals::default());
        w.record(call(true, true), at(100_001));
        assert_eq!(
            w.totals(at(100_002)),
            Totals {
                calls: 1,
                failures: 1,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.totals(at(100_003)), Totals::default());
    }

    #[test]
    fn tally_counts() {
        let t = Tally::default();
        t.add(call(true, false));
        let after = t.add(call(false, true));
        assert_eq!(
            after,
            Totals {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(t.get(), after);
        t.reset();
        assert_eq!(t.get(), Totals::default());
    }

    fn naive(calls: &[Call]) -> Totals {
        Totals {
            calls: calls.len() as u64,
            failures: calls.iter().filter(|c| c.failed).count() as u64,
            slow: calls.iter().filter(|c| c.slow).count() as u64,
        }
    }

    proptest! {
        /// The count window agrees with a recount of the last `size` calls after every
        /// record, resets included.
        #[test]
        fn count_window_agrees_with_a_recount(
            size in 1u32..40,
            ops in prop::collection::vec((any::<bool>(), any::<bool>(), 0u8..50), 0..400),
        ) {
            let w = CountWindow::new(size);
            let mut all: Vec<Call> = Vec::new();
            for (failed, slow, reset) in ops {
                if reset == 0 {
                    w.reset();
                    all.clear();
                } else {
                    all.push(call(failed, slow));
                    w.record(call(failed, slow));
                }
                let from = all.len().saturating_sub(size as usize);
                prop_assert_eq!(w.totals(), naive(&all[from..]));
            }
        }

        /// The time window agrees with a recount of the calls whose period is one of the
        /// last `buckets` periods, over random gaps between calls.
        #[test]
        fn time_window_agrees_with_a_recount(
            buckets in 1u32..12,
            bucket_ms in 1u64..500,
            ops in prop::collection::vec((any::<bool>(), any::<bool>(), 0u64..2_000), 0..300),
        ) {
            let base = Instant::now();
            let length = Duration::from_millis(bucket_ms * u64::from(buckets));
            let w = TimeWindow::new(base, length, buckets);
            let mut now = 0u64;
            let mut all: Vec<(u64, Call)> = Vec::new();
            for (failed, slow, gap) in ops {
                now += gap;
                let t = base + Duration::from_millis(now);
                w.record(call(failed, slow), t);
                all.push((now / bucket_ms, call(failed, slow)));
                let period = now / bucket_ms;
                let live: Vec<Call> = all
                    .iter()
                    .filter(|(p, _)| p + u64::from(buckets) > period)
                    .map(|(_, c)| *c)
                    .collect();
                prop_assert_eq!(w.totals(t), naive(&live));
            }
        }
    }
}
