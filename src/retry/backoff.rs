//! Backoff between attempts, and jitter applied after the cap.

use std::time::Duration;

/// How the wait before each retry grows. The first retry waits the `initial` (or
/// `delay`) value; every wait is capped at `max` *before* jitter is applied, so jitter
/// keeps spreading retries even once the cap is reached.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Backoff {
    /// The same wait before every retry.
    Constant {
        /// The wait.
        #[serde(with = "crate::config::duration")]
        delay: Duration,
    },
    /// `initial + step × (n - 1)` before retry `n`, capped at `max`.
    Linear {
        /// The first wait.
        #[serde(with = "crate::config::duration")]
        initial: Duration,
        /// Added per retry.
        #[serde(with = "crate::config::duration")]
        step: Duration,
        /// The cap.
        #[serde(with = "crate::config::duration")]
        max: Duration,
    },
    /// `initial × multiplier^(n - 1)` before retry `n`, capped at `max`.
    Exponential {
        /// The first wait.
        #[serde(with = "crate::config::duration")]
        initial: Duration,
        /// The growth per retry (at least 1; default 2).
        #[serde(default = "two")]
        multiplier: f64,
        /// The cap.
        #[serde(with = "crate::config::duration")]
        max: Duration,
    },
}

fn two() -> f64 {
    2.0
}

/// Randomness spread over the capped wait, so that clients that failed together do not
/// retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Jitter {
    /// The capped wait as is.
    None,
    /// Uniform in `[0, capped wait]` ("full jitter").
    #[default]
    Full,
    /// Uniform in `[first wait, min(max, 3 × previous wait)]` ("decorrelated jitter"):
    /// each wait depends on the one before rather than on the retry's number, so the
    /// [`Backoff`]'s growth only sets the first wait and the cap.
    Decorrelated,
}

impl Backoff {
    /// A constant wait.
    pub const fn constant(delay: Duration) -> Backoff {
        Backoff::Constant { delay }
    }

    /// A linear backoff.
    pub const fn linear(initial: Duration, step: Duration, max: Duration) -> Backoff {
        Backoff::Linear { initial, step, max }
    }

    /// An exponential backoff.
    pub const fn exponential(initial: Duration, multiplier: f64, max: Duration) -> Backoff {
        Backoff::Exponential {
            initial,
            multiplier,
            max,
        }
    }

    /// The first wait.
    pub const fn initial(&self) -> Duration {
        match *self {
            Backoff::Constant { delay } => delay,
            Backoff::Linear { initial, .. } | Backoff::Exponential { initial, .. } => initial,
        }
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        match *self {
            Backoff::Constant { delay } => delay,
            Backoff::Linear { max, .. } | Backoff::Exponential { max, .. } => max,
        }
    }

    /// The wait before retry `n` (1 for the first retry), capped, before jitter.
    pub fn capped(&self, n: u32) -> Duration {
        let steps = n.saturating_sub(1);
        let d = match *self {
            Backoff::Constant { delay } => delay,
            Backoff::Linear { initial, step, .. } => {
                initial.saturating_add(step.saturating_mul(steps))
            }
            Backoff::Exponential {
                initial,
                multiplier,
                max,
            } => {
                let secs =
                    initial.as_secs_f64() * multiplier.powi(steps.min(i32::MAX as u32) as i32);
                if secs.is_finite() && secs < max.as_secs_f64() {
                    Duration::from_secs_f64(secs)
                } else {
                    max
                }
            }
        };
        d.min(self.max())
    }

    /// The wait before retry `n`, after the cap and `jitter`. `previous` is the wait
    /// before the previous retry (the first wait for the first retry); `random` is
    /// uniform in `[0, 1)`.
    pub fn delay(&self, jitter: Jitter, n: u32, previous: Duration, random: f64) -> Duration {
        let random = random.clamp(0.0, 1.0);
        match jitter {
            Jitter::None => self.capped(n),
            Jitter::Full => self.capped(n).mul_f64(random),
            Jitter::Decorrelated => {
                let low = self.initial().min(self.max());
                let high = previous.saturating_mul(3).min(self.max()).max(low);
                low + (high - low).mul_f64(random)
            }
        }
    }
}

impl Default for Backoff {
    /// Exponential: 100 ms, doubling, capped at 10 s.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn growth_and_cap() {
        let e = Backoff::exponential(100 * MS, 2.0, 1_000 * MS);
        let got: Vec<_> = (1..=6).map(|n| e.capped(n)).collect();
        assert_eq!(
            got,
            [
                100 * MS,
                200 * MS,
                400 * MS,
                800 * MS,
                1_000 * MS,
                1_000 * MS
            ]
        );
        assert_eq!(e.capped(u32::MAX), 1_000 * MS);
        let l = Backoff::linear(100 * MS, 50 * MS, 220 * MS);
        let got: Vec<_> = (1..=4).map(|n| l.capped(n)).collect();
        assert_eq!(got, [100 * MS, 150 * MS, 200 * MS, 220 * MS]);
        assert_eq!(Backoff::constant(7 * MS).capped(9), 7 * MS);
    }

    #[test]
    fn jitter_bounds() {
        let e = Backoff::exponential(100 * MS, 2.0, 1_000 * MS);
        assert_eq!(
            e.delay(Jitter::Full, 9, Duration::ZERO, 0.0),
            Duration::ZERO
        );
        assert!(e.delay(Jitter::Full, 9, Duration::ZERO, 0.999_999) <= 1_000 * MS);
        assert_eq!(e.delay(Jitter::Decorrelated, 1, 100 * MS, 0.0), 100 * MS);
        assert_eq!(e.delay(Jitter::Decorrelated, 1, 100 * MS, 1.0), 300 * MS);
        assert_eq!(e.delay(Jitter::Decorrelated, 5, 900 * MS, 1.0), 1_000 * MS);
    }
}
