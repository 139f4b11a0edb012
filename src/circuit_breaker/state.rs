//! The breaker itself: one state word read on every call, transitions under a lock that
//! the closed-state path never takes.
//!
//! The state word packs the state (3 bits), the episode (29 bits, bumped by every
//! transition) and, in half-open, the probe permits left (32 bits). Admission in the
//! closed state is one load of it; a half-open probe slot is one compare-and-swap that
//! checks the episode too, so a permit can never be taken from one episode and given
//! back to another.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::window::{Call, CountWindow, Tally, TimeWindow, Totals, Window};
use crate::clock::Clock;
use crate::observe::{Event, SharedObserver};

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Calls go through and their outcomes are recorded.
    Closed,
    /// Calls are refused until the wait is over.
    Open,
    /// A limited number of probe calls decide between closed and open.
    HalfOpen,
    /// Forced by hand: every call goes through and nothing is recorded.
    Disabled,
    /// Forced by hand: every call is refused.
    ForcedOpen,
    /// Forced by hand: every call goes through, outcomes are recorded and the rates
    /// reported, and a threshold crossing is reported but never trips the breaker.
    MetricsOnly,
}

impl State {
    /// A stable `snake_case` name, for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Disabled => "disabled",
            State::ForcedOpen => "forced_open",
            State::MetricsOnly => "metrics_only",
        }
    }

    const fn from_bits(bits: u64) -> State {
        match bits & 7 {
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::Disabled,
            4 => State::ForcedOpen,
            5 => State::MetricsOnly,
            _ => State::Closed,
        }
    }

    const fn bits(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::Disabled => 3,
            State::ForcedOpen => 4,
            State::MetricsOnly => 5,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const EPISODE_MASK: u64 = (1 << 29) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    state: State,
    episode: u32,
    permits: u32,
}

impl Word {
    const fn decode(v: u64) -> Word {
        Word {
            state: State::from_bits(v),
            episode: ((v >> 3) & EPISODE_MASK) as u32,
            permits: (v >> 32) as u32,
        }
    }

    const fn encode(self) -> u64 {
        self.state.bits()
            | (((self.episode as u64) & EPISODE_MASK) << 3)
            | ((self.permits as u64) << 32)
    }

    const fn next(self, state: State, permits: u32) -> Word {
        Word {
            state,
            episode: (self.episode + 1) & (EPISODE_MASK as u32),
            permits,
        }
    }
}

/// The growth of the open wait over consecutive trips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Growth {
    pub(crate) multiplier: f64,
    pub(crate) max: Duration,
    pub(crate) jitter: f64,
}

/// The sliding window's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowShape {
    Count(u32),
    Time { length: Duration, buckets: u32 },
}

/// Everything a breaker needs to know, shared by every breaker of one layer.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) name: Arc<str>,
    pub(crate) failure_pct: u8,
    pub(crate) slow_pct: u8,
    pub(crate) slow_after: Option<Duration>,
    pub(crate) minimum_calls: u32,
    pub(crate) window: WindowShape,
    pub(crate) wait: Duration,
    pub(crate) growth: Option<Growth>,
    pub(crate) permits: u32,
    pub(crate) max_half_open: Option<Duration>,
    pub(crate) observer: SharedObserver,
    pub(crate) clock: Clock,
}

impl Settings {
    /// The open wait after the `trips`-th consecutive trip (1-based): grown, capped, then
    /// jittered. `random` is uniform in [0, 1).
    pub(crate) fn open_wait(&self, trips: u32, random: f64) -> Duration {
        let Some(g) = self.growth else {
            return self.wait;
        };
        let exp = i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = self.wait.as_secs_f64() * g.multiplier.powi(exp);
        let capped = if grown.is_finite() {
            grown.min(g.max.as_secs_f64())
        } else {
            g.max.as_secs_f64()
        };
        let jittered = capped * (1.0 + g.jitter * (2.0 * random - 1.0));
        Duration::try_from_secs_f64(jittered.max(0.0)).unwrap_or(Duration::MAX)
    }

    fn is_slow(&self, elapsed: Option<Duration>) -> bool {
        matches!((self.slow_after, elapsed), (Some(limit), Some(e)) if e > limit)
    }
}

/// Which bookkeeping a call admitted by [`Breaker::acquire`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TicketKind {
    /// Recorded in the sliding window; may trip the breaker.
    Closed,
    /// Recorded in the sliding window; reports threshold crossings only.
    MetricsOnly,
    /// A half-open probe holding one permit.
    Probe,
    /// Let through without bookkeeping (disabled, or shadow mode's would-be rejections).
    Untracked,
}

/// What admission gave a call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    pub(crate) kind: TicketKind,
    episode: u32,
    pub(crate) start: Option<Instant>,
}

impl Ticket {
    pub(crate) const UNTRACKED: Ticket = Ticket {
        kind: TicketKind::Untracked,
        episode: 0,
        start: None,
    };
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) state: State,
    pub(crate) retry_after: Option<Duration>,
}

/// How a tracked call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Success,
    Failure,
    /// Classified as neither.
    Ignored,
    /// The future was dropped before it finished.
    Cancelled,
}

/// What changed in one transition, reported after the lock is released.
#[derive(Debug, Clone, Copy)]
struct Change {
    from: State,
    to: State,
    totals: Option<Totals>,
}

#[derive(Debug)]
struct Cold {
    consecutive_trips: u32,
    rng: u64,
}

/// One circuit breaker's state; shared by `Arc` between every service, clone and handle.
pub(crate) struct Breaker {
    word: AtomicU64,
    window: Window,
    tally: Tally,
    base: Instant,
    open_until: AtomicU64,
    half_open_until: AtomicU64,
    not_permitted: AtomicU64,
    exceeded: AtomicBool,
    cold: Mutex<Cold>,
    pub(crate) settings: Arc<Settings>,
    key: Option<Box<dyn fmt::Debug + Send + Sync>>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.settings.name)
            .field("key", &self.key)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Breaker {
    pub(crate) fn new(
        settings: Arc<Settings>,
        key: Option<Box<dyn fmt::Debug + Send + Sync>>,
    ) -> Breaker {
        let base = settings.clock.now();
        let window = match settings.window {
            WindowShape::Count(size) => Window::Count(CountWindow::new(size)),
            WindowShape::Time { length, buckets } => {
                Window::Time(TimeWindow::new(base, length, buckets))
            }
        };
        // A different jitter sequence per breaker and per process, so instances that
        // tripped together do not probe together.
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        Breaker {
            word: AtomicU64::new(
                Word {
                    state: State::Closed,
                    episode: 0,
                    permits: 0,
                }
                .encode(),
            ),
            window,
            tally: Tally::default(),
            base,
            open_until: AtomicU64::new(0),
            half_open_until: AtomicU64::new(u64::MAX),
            not_permitted: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
            cold: Mutex::new(Cold {
                consecutive_trips: 0,
                rng: seed,
            }),
            settings,
            key,
        }
    }

    fn since_base(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.base))
    }

    fn cold(&self) -> std::sync::MutexGuard<'_, Cold> {
        // Nothing under this lock can panic half-way through a change; a poisoned lock
        // still holds consistent data.
        self.cold.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state, moving an expired open state to half-open first.
    pub(crate) fn state(&self) -> State {
        let word = Word::decode(self.word.load(Acquire));
        if word.state == State::Open {
            let now = self.settings.clock.now();
            if self.since_base(now) >= self.open_until.load(Acquire) {
                self.report(self.to_half_open(word, now));
                return Word::decode(self.word.load(Acquire)).state;
            }
        }
        word.state
    }

    /// Admission: the closed-state path is one atomic load.
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Ticket, Refusal> {
        let word = Word::decode(self.word.load(Acquire));
        match word.state {
            State::Closed => Ok(self.ticket(TicketKind::Closed, word.episode)),
            State::Disabled => Ok(Ticket::UNTRACKED),
            State::MetricsOnly => Ok(self.ticket(TicketKind::MetricsOnly, word.episode)),
            _ => self.acquire_slow(),
        }
    }

    #[inline]
    fn ticket(&self, kind: TicketKind, episode: u32) -> Ticket {
        Ticket {
            kind,
            episode,
            start: self.settings.slow_after.map(|_| self.settings.clock.now()),
        }
    }

    #[cold]
    fn acquire_slow(&self) -> Result<Ticket, Refusal> {
        // Each pass either decides or makes a transition; a few passes always suffice,
        // and the bound keeps a pathological race from spinning.
        for _ in 0..8 {
            let raw = self.word.load(Acquire);
            let word = Word::decode(raw);
            match word.state {
                State::Closed => return Ok(self.ticket(TicketKind::Closed, word.episode)),
                State::Disabled => return Ok(Ticket::UNTRACKED),
                State::MetricsOnly => {
                    return Ok(self.ticket(TicketKind::MetricsOnly, word.episode));
                }
                State::ForcedOpen => return Err(self.refuse(State::ForcedOpen, None)),
                State::Open => {
                    let now = self.settings.clock.now();
                    let until = self.open_until.load(Acquire);
                    let at = self.since_base(now);
                    if at < until {
                        let left = Duration::from_nanos(until - at);
                        return Err(self.refuse(State::Open, Some(left)));
                    }
                    self.report(self.to_half_open(word, now));
                }
                State::HalfOpen => {
                    if self.settings.max_half_open.is_some() {
                        let now = self.settings.clock.now();
                        if self.since_base(now) >= self.half_open_until.load(Acquire) {
                            self.report(self.trip(word, now, State::HalfOpen, None));
                            continue;
                        }
                    }
                    if word.permits == 0 {
                        return Err(self.refuse(State::HalfOpen, None));
                    }
                    let taken = Word {
                        permits: word.permits - 1,
                        ..word
                    }
                    .encode();
                    if self
                        .word
                        .compare_exchange(raw, taken, AcqRel, Acquire)
                        .is_ok()
                    {
                        return Ok(self.ticket(TicketKind::Probe, word.episode));
                    }
                }
            }
        }
        Err(self.refuse(State::HalfOpen, None))
    }

    fn refuse(&self, state: State, retry_after: Option<Duration>) -> Refusal {
        self.not_permitted.fetch_add(1, Relaxed);
        Refusal { state, retry_after }
    }

    /// Record how a tracked call ended.
    #[inline]
    pub(crate) fn finish(&self, ticket: Ticket, ending: Ending) {
        match ticket.kind {
            TicketKind::Untracked => {}
            TicketKind::Closed | TicketKind::MetricsOnly => {
                let failed = match ending {
                    Ending::Success => false,
                    Ending::Failure => true,
                    Ending::Ignored | Ending::Cancelled => return,
                };
                let word = Word::decode(self.word.load(Acquire));
                if word.episode != ticket.episode {
                    return; // admitted before a state change: it decides nothing now
                }
                self.record_closed(word, ticket, failed);
            }
            TicketKind::Probe => self.finish_probe(ticket, ending),
        }
    }

    #[inline]
    fn record_closed(&self, word: Word, ticket: Ticket, failed: bool) {
        let end = ticket.start.map(|_| self.settings.clock.now());
        let elapsed = ticket
            .start
            .zip(end)
            .map(|(s, e)| e.saturating_duration_since(s));
        let call = Call {
            failed,
            slow: self.settings.is_slow(elapsed),
        };
        let totals = match &self.window {
            Window::Count(w) => {
                if !w.record(call) {
                    return; // same outcome replaced: the rates did not move
                }
                let minimum = u64::from(self.settings.minimum_calls).min(w.capacity());
                (w.totals(), minimum)
            }
            Window::Time(w) => {
                let now = end.unwrap_or_else(|| self.settings.clock.now());
                w.record(call, now);
                (w.totals(now), u64::from(self.settings.minimum_calls))
            }
        };
        self.evaluate(word, totals.0, totals.1);
    }

    fn evaluate(&self, word: Word, totals: Totals, minimum: u64) {
        let over = self.over_threshold(totals, minimum);
        match word.state {
            State::Closed if over => {
                let now = self.settings.clock.now();
                self.report(self.trip(word, now, State::Closed, Some(totals)));
            }
            // Reported once per crossing, not on every call above the threshold.
            State::MetricsOnly if over != self.exceeded.swap(over, AcqRel) && over => {
                self.settings
                    .observer
                    .emit(&Event::CircuitThresholdExceeded {
                        name: &self.settings.name,
                        key: self.key(),
                        failure_rate: rate(totals.failures, totals.calls),
                        slow_call_rate: rate(totals.slow, totals.calls),
                    });
            }
            _ => {}
        }
    }

    /// Whether the totals trip the breaker: exact integer comparisons, `>=`.
    fn over_threshold(&self, t: Totals, minimum: u64) -> bool {
        if t.calls == 0 || t.calls < minimum {
            return false;
        }
        let s = &self.settings;
        let failing = t.failures * 100 >= u64::from(s.failure_pct) * t.calls;
        let slow = s.slow_after.is_some() && t.slow * 100 >= u64::from(s.slow_pct) * t.calls;
        failing || slow
    }

    fn finish_probe(&self, ticket: Ticket, ending: Ending) {
        let failed = match ending {
            Ending::Success => false,
            Ending::Failure => true,
            Ending::Ignored | Ending::Cancelled => {
                self.give_back(ticket);
                return;
            }
        };
        let word = Word::decode(self.word.load(Acquire));
        if word.state != State::HalfOpen || word.episode != ticket.episode {
            return;
        }
        let elapsed = ticket
            .start
            .map(|s| self.settings.clock.now().saturating_duration_since(s));
        let totals = self.tally.add(Call {
            failed,
            slow: self.settings.is_slow(elapsed),
        });
        let needed = u64::from(self.settings.minimum_calls.min(self.settings.permits));
        if totals.calls < needed {
            return;
        }
        let now = self.settings.clock.now();
        let change = if self.over_threshold(totals, needed) {
            self.trip(word, now, State::HalfOpen, Some(totals))
        } else {
            self.close_from(word, State::HalfOpen)
        };
        self.report(change);
    }

    /// Return a probe's permit to its episode (and to no other).
    fn give_back(&self, ticket: Ticket) {
        let _ = self.word.fetch_update(AcqRel, Acquire, |raw| {
            let w = Word::decode(raw);
            (w.state == State::HalfOpen && w.episode == ticket.episode).then(|| {
                Word {
                    permits: w.permits.saturating_add(1).min(self.settings.permits),
                    ..w
                }
                .encode()
            })
        });
    }

    /// Replace the state word if it is still `from`; returns the new word.
    fn swap_word(&self, from: Word, to: State, permits: u32) -> Option<Word> {
        let next = from.next(to, permits);
        self.word
            .fetch_update(AcqRel, Acquire, |raw| {
                let w = Word::decode(raw);
                (w.state == from.state && w.episode == from.episode).then_some(next.encode())
            })
            .ok()
            .map(|_| next)
    }

    /// Closed or half-open → open.
    fn trip(
        &self,
        word: Word,
        now: Instant,
        from: State,
        totals: Option<Totals>,
    ) -> Option<Change> {
        let mut cold = self.cold();
        let current = Word::decode(self.word.load(Acquire));
        if current.state != from || current.episode != word.episode {
            return None;
        }
        cold.consecutive_trips = cold.consecutive_trips.saturating_add(1);
        let random = next_random(&mut cold.rng);
        let wait = self.settings.open_wait(cold.consecutive_trips, random);
        self.open_until
            .store(self.since_base(now).saturating_add(nanos(wait)), Release);
        self.swap_word(current, State::Open, 0)?;
        Some(Change {
            from,
            to: State::Open,
            totals,
        })
    }

    /// Open (wait over) → half-open.
    fn to_half_open(&self, word: Word, now: Instant) -> Option<Change> {
        let _cold = self.cold();
        let current = Word::decode(self.word.load(Acquire));
        if current.state != State::Open || current.episode != word.episode {
            return None;
        }
        if self.since_base(now) < self.open_until.load(Acquire) {
            return None;
        }
        self.tally.reset();
        self.window.reset();
        let until = match self.settings.max_half_open {
            Some(max) => self.since_base(now).saturating_add(nanos(max)),
            None => u64::MAX,
        };
        self.half_open_until.store(until, Release);
        self.swap_word(current, State::HalfOpen, self.settings.permits)?;
        Some(Change {
            from: State::Open,
            to: State::HalfOpen,
            totals: None,
        })
    }

    /// Half-open → closed, with a fresh window.
    fn close_from(&self, word: Word, from: State) -> Option<Change> {
        let mut cold = self.cold();
        let current = Word::decode(self.word.load(Acquire));
        if current.state != from || current.episode != word.episode {
            return None;
        }
        cold.consecutive_trips = 0;
        self.window.reset();
        self.swap_word(current, State::Closed, 0)?;
        Some(Change {
            from,
            to: State::Closed,
            totals: None,
        })
    }

    /// A transition by hand (handle): to any state, fresh metrics.
    pub(crate) fn force(&self, to: State, reset_counters: bool) {
        let change = {
            let mut cold = self.cold();
            let current = Word::decode(self.word.load(Acquire));
            if reset_counters {
                cold.consecutive_trips = 0;
                self.not_permitted.store(0, Relaxed);
            }
            if to == State::Closed {
                cold.consecutive_trips = 0;
            }
            self.window.reset();
            self.tally.reset();
            self.exceeded.store(false, Relaxed);
            let permits = if to == State::HalfOpen {
                self.settings.permits
            } else {
                0
            };
            if to == State::HalfOpen {
                let now = self.settings.clock.now();
                let until = match self.settings.max_half_open {
                    Some(max) => self.since_base(now).saturating_add(nanos(max)),
                    None => u64::MAX,
                };
                self.half_open_until.store(until, Release);
            }
            if to == State::Open {
                let now = self.settings.clock.now();
                cold.consecutive_trips = cold.consecutive_trips.saturating_add(1);
                let random = next_random(&mut cold.rng);
                let wait = self.settings.open_wait(cold.consecutive_trips, random);
                self.open_until
                    .store(self.since_base(now).saturating_add(nanos(wait)), Release);
            }
            // Under the lock only probe permits move concurrently; retry until the
            // episode is bumped.
            loop {
                let raw = self.word.load(Acquire);
                let w = Word::decode(raw);
                let next = w.next(to, permits).encode();
                if self
                    .word
                    .compare_exchange(raw, next, AcqRel, Acquire)
                    .is_ok()
                {
                    break (w.state != to).then_some(Change {
                        from: current.state,
                        to,
                        totals: None,
                    });
                }
            }
        };
        self.report(change);
    }

    fn report(&self, change: Option<Change>) {
        let Some(change) = change else { return };
        let totals = change.totals;
        self.settings.observer.emit(&Event::CircuitStateChanged {
            name: &self.settings.name,
            key: self.key(),
            from: change.from,
            to: change.to,
            failure_rate: totals.and_then(|t| rate(t.failures, t.calls)),
            slow_call_rate: totals.and_then(|t| rate(t.slow, t.calls)),
            retry_after: (change.to == State::Open).then(|| self.open_remaining()),
        });
    }

    fn open_remaining(&self) -> Duration {
        let at = self.since_base(self.settings.clock.now());
        Duration::from_nanos(self.open_until.load(Acquire).saturating_sub(at))
    }

    pub(crate) fn key(&self) -> Option<&dyn fmt::Debug> {
        self.key.as_deref().map(|k| k as &dyn fmt::Debug)
    }

    /// A consistent-enough reading for the handle.
    pub(crate) fn snapshot(&self) -> Metrics {
        let state = self.state();
        let clock = &self.settings.clock;
        let (totals, minimum) = match state {
            State::HalfOpen => (
                self.tally.get(),
                u64::from(self.settings.minimum_calls.min(self.settings.permits)),
            ),
            _ => match &self.window {
                Window::Count(w) => (
                    w.totals(),
                    u64::from(self.settings.minimum_calls).min(w.capacity()),
                ),
                Window::Time(_) => (
                    self.window.totals(|| clock.now()),
                    u64::from(self.settings.minimum_calls),
                ),
            },
        };
        let ready = totals.calls > 0 && totals.calls >= minimum;
        let word = Word::decode(self.word.load(Acquire));
        Metrics {
            state,
            failure_rate: if ready {
                rate(totals.failures, totals.calls)
            } else {
                None
            },
            slow_call_rate: if ready && self.settings.slow_after.is_some() {
                rate(totals.slow, totals.calls)
            } else {
                None
            },
            buffered_calls: totals.calls,
            failed_calls: totals.failures,
            slow_calls: totals.slow,
            not_permitted_calls: self.not_permitted.load(Relaxed),
            half_open_permits_left: (word.state == State::HalfOpen).then_some(word.permits),
            retry_after: (state == State::Open).then(|| self.open_remaining()),
        }
    }
}

/// The handle's reading of a breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The current state.
    pub state: State,
    /// Failed calls over buffered calls, in percent; `None` below the minimum number of
    /// calls.
    pub failure_rate: Option<f32>,
    /// Slow calls over buffered calls, in percent; `None` below the minimum number of
    /// calls or when slow calls are not measured.
    pub slow_call_rate: Option<f32>,
    /// Calls in the sliding window (in half-open: probes finished in this episode).
    pub buffered_calls: u64,
    /// Of which failed.
    pub failed_calls: u64,
    /// Of which were slow.
    pub slow_calls: u64,
    /// Calls refused since the breaker was built or last reset (shadow mode's would-be
    /// refusals included).
    pub not_permitted_calls: u64,
    /// In half-open, the probe slots still free.
    pub half_open_permits_left: Option<u32>,
    /// In the open state, the time until probes are let through.
    pub retry_after: Option<Duration>,
}

fn rate(part: u64, whole: u64) -> Option<f32> {
    (whole > 0).then(|| (part as f64 * 100.0 / whole as f64) as f32)
}

/// splitmix64, uniform in [0, 1).
pub(crate) fn next_random(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_round_trips() {
        for w in [
            Word {
                state: State::HalfOpen,
                episode: 5,
                permits: 10,
            },
            Word {
                state: State::MetricsOnly,
                episode: EPISODE_MASK as u32,
                permits: u32::MAX,
            },
            Word {
                state: State::Closed,
                episode: 0,
                permits: 0,
            },
        ] {
            assert_eq!(Word::decode(w.encode()), w);
        }
        let last = Word {
            state: State::Open,
            episode: EPISODE_MASK as u32,
            permits: 0,
        };
        assert_eq!(last.next(State::HalfOpen, 3).episode, 0, "episodes wrap");
    }

    fn settings(growth: Option<Growth>) -> Settings {
        Settings {
            name: "t".into(),
            failure_pct: 50,
            slow_pct: 100,
            slow_after: None,
            minimum_calls: 10,
            window: WindowShape::Count(10),
            wait: Duration::from_secs(10),
            growth,
            permits: 3,
            max_half_open: None,
            observer: SharedObserver::new(()),
            clock: Clock::tokio(),
        }
    }

    #[test]
    fn open_wait_grows_caps_then_jitters() {
        let s = settings(Some(Growth {
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.0,
        }));
        let waits: Vec<u64> = (1..=5).map(|n| s.open_wait(n, 0.5).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 60, 60]);
        assert_eq!(s.open_wait(u32::MAX, 0.5), Duration::from_secs(60));
        let s = settings(Some(Growth {
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.5,
        }));
        // Jitter after the cap: ±50 % of 60 s.
        assert_eq!(s.open_wait(9, 0.0), Duration::from_secs(30));
        assert_eq!(s.open_wait(9, 0.999_999_999).as_secs(), 89);
        assert_eq!(settings(None).open_wait(7, 0.3), Duration::from_secs(10));
    }

    #[test]
    fn random_is_in_range() {
        let mut s = 1;
        for _ in 0..10_000 {
            let r = next_random(&mut s);
            assert!((0.0..1.0).contains(&r));
        }
    }
}
