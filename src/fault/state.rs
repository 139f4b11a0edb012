//! The tunable settings, the seeded random sequence and the decision of which fault a
//! call gets: pure logic, tested without a runtime.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::circuit_breaker::state::next_random;
use crate::error::ConfigError;

/// The splitmix64 increment: one step of [`Rng`].
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// How many kinds of fault there are.
pub(crate) const KINDS: usize = 5;

/// A kind of fault the layer injects.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FaultKind {
    /// Answer with the configured error (or HTTP status) without calling the service.
    Error,
    /// Wait before the call goes on (combines with the other kinds).
    Latency,
    /// Never answer: the call stays pending until the caller drops it.
    Hang,
    /// Fail like a broken connection: [`FaultError::Aborted`](super::FaultError::Aborted).
    Abort,
    /// Call the service and mangle its response with the configured
    /// [`Corruption`](super::Corruption) (a truncated or garbled body, a dropped header).
    Corrupt,
}

impl FaultKind {
    /// Every kind, in declaration order.
    pub const ALL: [FaultKind; KINDS] = [
        FaultKind::Error,
        FaultKind::Latency,
        FaultKind::Hang,
        FaultKind::Abort,
        FaultKind::Corrupt,
    ];

    /// `"error"`, `"latency"`, `"hang"`, `"abort"` or `"corrupt"`: a stable name for
    /// events and labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            FaultKind::Error => "error",
            FaultKind::Latency => "latency",
            FaultKind::Hang => "hang",
            FaultKind::Abort => "abort",
            FaultKind::Corrupt => "corrupt",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    pub(crate) const fn field(self) -> &'static str {
        match self {
            FaultKind::Error => "error_rate",
            FaultKind::Latency => "latency_rate",
            FaultKind::Hang => "hang_rate",
            FaultKind::Abort => "abort_rate",
            FaultKind::Corrupt => "corrupt_rate",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the handle tunes at runtime; read once per call through an `ArcSwap` snapshot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// Injection rate per kind in percent (0–100), indexed by [`FaultKind::index`].
    pub(crate) rates: [f64; KINDS],
    /// Which kinds are switched on; a kind switched off injects nothing whatever its rate.
    pub(crate) enabled: [bool; KINDS],
    /// The delay of a latency fault: uniform in `[min, max]` (fixed when equal).
    pub(crate) latency: (Duration, Duration),
    /// Whether a corruption is configured: without one the corrupt rate must stay 0.
    pub(crate) can_corrupt: bool,
}

/// How a call ends after the optional delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The inner service answers.
    Inner,
    Error,
    Abort,
    Hang,
    /// The inner service answers, and its response is corrupted.
    Corrupt,
}

/// The fault a call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) delay: Option<Duration>,
    pub(crate) end: End,
}

impl Settings {
    pub(crate) fn rate(&self, kind: FaultKind) -> f64 {
        if self.enabled[kind.index()] {
            self.rates[kind.index()]
        } else {
            0.0
        }
    }

    /// Check a rate for `kind` (and that error, abort, hang and corrupt together stay
    /// within 100 %, and that corruption has a corruption to apply).
    pub(crate) fn check_rate(&self, kind: FaultKind, percent: f64) -> Result<(), ConfigError> {
        check_range(kind, percent)?;
        if kind == FaultKind::Corrupt && percent > 0.0 && !self.can_corrupt {
            return Err(ConfigError::new(
                kind.field(),
                "needs a corruption to apply (FaultBuilder::corrupt or ::corruption)",
            ));
        }
        if kind != FaultKind::Latency {
            let mut rates = self.rates;
            rates[kind.index()] = percent;
            let exclusive = rates[FaultKind::Error.index()]
                + rates[FaultKind::Abort.index()]
                + rates[FaultKind::Hang.index()]
                + rates[FaultKind::Corrupt.index()];
            if exclusive > 100.0 {
                return Err(ConfigError::new(
                    kind.field(),
                    "error_rate + abort_rate + hang_rate + corrupt_rate must not exceed 100",
                ));
            }
        }
        Ok(())
    }

    /// Check every rate and the latency range.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        for kind in FaultKind::ALL {
            check_range(kind, self.rates[kind.index()])?;
        }
        // Ranges first, so a rate over 100 is blamed on its own field.
        self.check_rate(FaultKind::Corrupt, self.rates[FaultKind::Corrupt.index()])?;
        self.check_rate(FaultKind::Hang, self.rates[FaultKind::Hang.index()])?;
        check_latency(self.latency.0, self.latency.1)
    }

    /// The fault for one call. Always draws two numbers (three when the delay is drawn
    /// from a range), so a seed fixes the whole sequence of decisions.
    pub(crate) fn decide(&self, mut draw: impl FnMut() -> f64) -> Decision {
        let delay = if draw() * 100.0 < self.rate(FaultKind::Latency) {
            let (min, max) = self.latency;
            Some(if max > min {
                min + (max - min).mul_f64(draw())
            } else {
                min
            })
        } else {
            None
        };
        let roll = draw() * 100.0;
        let error = self.rate(FaultKind::Error);
        let abort = error + self.rate(FaultKind::Abort);
        let hang = abort + self.rate(FaultKind::Hang);
        let corrupt = hang + self.rate(FaultKind::Corrupt);
        let end = if roll < error {
            End::Error
        } else if roll < abort {
            End::Abort
        } else if roll < hang {
            End::Hang
        } else if roll < corrupt {
            End::Corrupt
        } else {
            End::Inner
        };
        Decision { delay, end }
    }
}

fn check_range(kind: FaultKind, percent: f64) -> Result<(), ConfigError> {
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return Err(ConfigError::new(
            kind.field(),
            "must be a percentage from 0 to 100",
        ));
    }
    Ok(())
}

pub(crate) fn check_latency(min: Duration, max: Duration) -> Result<(), ConfigError> {
    if max < min {
        return Err(ConfigError::new(
            "latency_max",
            "must not be shorter than latency",
        ));
    }
    Ok(())
}

/// A splitmix64 sequence shared by every clone: one atomic add per number, no lock, and
/// the same seed gives the same numbers in call order.
#[derive(Debug)]
pub(crate) struct Rng(AtomicU64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub(crate) fn next(&self) -> f64 {
        // `next_random` steps its state by the same increment before mixing, so this is
        // exactly the sequential sequence, whichever thread takes each number.
        let mut state = self.0.fetch_add(GOLDEN, Ordering::Relaxed);
        next_random(&mut state)
    }

    /// 64 random bits (for a corruption to draw from).
    pub(crate) fn next_u64(&self) -> u64 {
        mix64(
            self.0
                .fetch_add(GOLDEN, Ordering::Relaxed)
                .wrapping_add(GOLDEN),
        )
    }
}

/// The splitmix64 output function.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small splitmix64 generator of its own, for a corruption's choices: seeded by one
/// number of the layer's sequence, so a seeded layer corrupts the same way every run.
#[cfg(any(test, feature = "http"))]
#[derive(Debug)]
pub(crate) struct SplitMix(pub(crate) u64);

#[cfg(any(test, feature = "http"))]
impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform-enough in `[0, n)` for `n > 0` (the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A seed when none was configured: different per layer and per process.
pub(crate) fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

/// The sticky bucket of a key, in basis points `[0, 10 000)`: the same key and salt always
/// fall in the same bucket within a build of the program.
pub(crate) fn bucket<K: Hash + ?Sized>(salt: u64, key: &K) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    salt.hash(&mut h);
    key.hash(&mut h);
    (h.finish() % 10_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rates: [f64; KINDS]) -> Settings {
        Settings {
            rates,
            enabled: [true; KINDS],
            latency: (Duration::from_millis(10), Duration::from_millis(20)),
            can_corrupt: true,
        }
    }

    #[test]
    fn rng_matches_the_sequential_sequence() {
        let rng = Rng::new(7);
        let mut state = 7;
        for _ in 0..100 {
            assert_eq!(rng.next(), next_random(&mut state));
        }
    }

    #[test]
    fn exclusive_faults_split_one_roll_in_order() {
        let s = settings([10.0, 0.0, 30.0, 20.0, 15.0]);
        let mut rolls = [0.5, 0.05].into_iter();
        assert_eq!(s.decide(|| rolls.next().unwrap()).end, End::Error);
        let mut rolls = [0.5, 0.15].into_iter();
        assert_eq!(s.decide(|| rolls.next().unwrap()).end, End::Abort);
        let mut rolls = [0.5, 0.45].into_iter();
        assert_eq!(s.decide(|| rolls.next().unwrap()).end, End::Hang);
        let mut rolls = [0.5, 0.7].into_iter();
        assert_eq!(s.decide(|| rolls.next().unwrap()).end, End::Corrupt);
        let mut rolls = [0.5, 0.8].into_iter();
        assert_eq!(s.decide(|| rolls.next().unwrap()).end, End::Inner);
    }

    #[test]
    fn latency_is_drawn_in_its_range_and_disabled_kinds_inject_nothing() {
        let mut s = settings([0.0, 100.0, 0.0, 0.0, 0.0]);
        let mut rolls = [0.0, 0.5, 0.9].into_iter();
        let d = s.decide(|| rolls.next().unwrap());
        assert_eq!(d.delay, Some(Duration::from_millis(15)));
        assert_eq!(d.end, End::Inner);
        s.enabled[FaultKind::Latency.index()] = false;
        assert_eq!(s.decide(|| 0.0).delay, None);
    }

    #[test]
    fn rates_are_checked() {
        let mut s = settings([50.0, 0.0, 0.0, 40.0, 0.0]);
        assert!(s.check().is_ok());
        assert_eq!(
            s.check_rate(FaultKind::Corrupt, 20.0).unwrap_err().field(),
            "corrupt_rate"
        );
        s.can_corrupt = false;
        assert_eq!(
            s.check_rate(FaultKind::Corrupt, 1.0).unwrap_err().field(),
            "corrupt_rate"
        );
        assert!(s.check_rate(FaultKind::Corrupt, 0.0).is_ok());
        s.can_corrupt = true;
        assert_eq!(
            s.check_rate(FaultKind::Hang, 20.0).unwrap_err().field(),
            "hang_rate"
        );
        assert_eq!(
            s.check_rate(FaultKind::Latency, f64::NAN)
                .unwrap_err()
                .field(),
            "latency_rate"
        );
        assert!(s.check_rate(FaultKind::Latency, 100.0).is_ok());
        assert_eq!(
            check_latency(Duration::from_secs(2), Duration::from_secs(1))
                .unwrap_err()
                .field(),
            "latency_max"
        );
    }

    #[test]
    fn next_u64_follows_the_same_sequence() {
        let rng = Rng::new(3);
        let mut own = SplitMix(3);
        for _ in 0..10 {
            assert_eq!(rng.next_u64(), own.next());
        }
        // One number of either kind advances the sequence by one step.
        let rng = Rng::new(3);
        let _ = rng.next();
        assert_eq!(
            rng.next_u64(),
            mix64(3u64.wrapping_add(GOLDEN.wrapping_mul(2)))
        );
    }

    #[test]
    fn buckets_are_sticky_and_spread() {
        assert_eq!(bucket(1, "alice"), bucket(1, "alice"));
        let under_half = (0..10_000)
            .filter(|i| bucket(1, &format!("user-{i}")) < 5_000)
            .count();
        assert!((4_700..5_300).contains(&under_half), "{under_half}");
    }
}
