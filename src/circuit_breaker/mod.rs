//! Circuit breaker: stop hammering a dead dependency, recover by itself, and say so.
//!
//! The breaker watches the outcomes of calls in a sliding window. When the failure rate
//! (or the slow-call rate) reaches its threshold it **opens**: calls are refused at once
//! with [`Rejection::CircuitOpen`](crate::Rejection::CircuitOpen), whose `retry_after` is
//! the time left open (HTTP 503 + `Retry-After`, gRPC `UNAVAILABLE` through the edge
//! adapter). After the wait it goes **half-open**: exactly N probe calls go through at
//! once, the rest are refused; their outcomes close it again or reopen it.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow, State};
//! use tower_parapet::{Rejection, RejectionKind};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("inventory")
//!     .sliding_window(SlidingWindow::count(10))
//!     .minimum_calls(5)
//!     .failure_rate_threshold(50)
//!     .wait_in_open(Duration::from_secs(30))
//!     .build()
//!     .expect("valid config");
//! let handle = breaker.handle();
//! let mut svc = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service(service_fn(|_: ()| async { Err::<(), _>("connection refused") }));
//!
//! for _ in 0..5 {
//!     let _ = svc.ready().await.unwrap().call(()).await;
//! }
//! assert_eq!(handle.state(), State::Open);
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! let rejection = Rejection::from_box(&err).unwrap();
//! assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
//! assert_eq!(rejection.retry_after(), Some(Duration::from_secs(30)));
//! # }
//! ```
//!
//! # States
//! | state | calls | recorded | leaves by |
//! |---|---|---|---|
//! | [`Closed`](State::Closed) | go through | yes | a threshold reached → open |
//! | [`Open`](State::Open) | refused, `retry_after` = time left | no | the wait → half-open (checked by the next call or [`state`](CircuitBreakerHandle::state)) |
//! | [`HalfOpen`](State::HalfOpen) | N probes at once, the rest refused | probes only | the probes' rates → closed or open; optional max time → open |
//! | [`Disabled`](State::Disabled) | go through | no | a manual transition |
//! | [`ForcedOpen`](State::ForcedOpen) | refused | no | a manual transition |
//! | [`MetricsOnly`](State::MetricsOnly) | go through | yes; a crossing is reported, never trips | a manual transition |
//!
//! Manual transitions go through the [`CircuitBreakerHandle`] ([`force_open`](CircuitBreakerHandle::force_open),
//! [`close`](CircuitBreakerHandle::close), [`disable`](CircuitBreakerHandle::disable),
//! [`metrics_only`](CircuitBreakerHandle::metrics_only), [`reset`](CircuitBreakerHandle::reset), ...).
//! [`Mode::Shadow`](crate::Mode::Shadow) is different from metrics-only: the whole state
//! machine runs (it opens, probes, closes) and every refusal is reported as "would have
//! rejected", but the call goes through. [`Mode::Off`](crate::Mode::Off) is a
//! pass-through.
//!
//! # Semantics
//! - **Windows.** [`SlidingWindow::count`] keeps the last N calls; [`SlidingWindow::time`]
//!   the calls of the last N seconds in buckets. Recording and reading the rates are O(1)
//!   whatever the size (for the time window amortised: a bucket that leaves the window is
//!   cleared once, by the first call that notices), and the window really slides: after
//!   1 000 successes, a count window of 100 at 50 % opens after exactly 50 failures.
//! - **Thresholds** are checked after every recorded call, successes included, in exact
//!   integer arithmetic with `>=`. Below the minimum number of calls (in a count window at
//!   most its size, in half-open at most the permitted probes) nothing trips and the rates
//!   read `None`. A call is slow when it takes strictly longer than the slow-call
//!   duration.
//! - **What counts** is the [classifier](crate::classify)'s call (with
//!   [`builder`](CircuitBreakerLayer::builder) every inner error, timeouts included;
//!   with [`http`](CircuitBreakerLayer::http) also 5xx responses, never 4xx; with
//!   [`grpc`](CircuitBreakerLayer::grpc) server-fault gRPC statuses): failures and successes
//!   are recorded; [`Ignored`](crate::classify::Outcome::Ignored) outcomes and cancelled
//!   calls (the future dropped before it finished) record nothing and give a half-open
//!   probe slot back. A panic in the inner service, in `call` or while polling, is a
//!   failure and releases its slot.
//! - **Episodes.** Every transition starts a new episode; a call admitted in an earlier
//!   one (say, closed) that finishes later (say, in half-open) decides nothing.
//! - **Fresh metrics** on entering half-open and closed and on every manual transition;
//!   an automatic trip keeps the window that tripped it, for inspection.
//! - **Open wait** starts when the breaker trips; with
//!   [`wait_growth`](CircuitBreakerBuilder::wait_growth) it grows over consecutive trips,
//!   capped, and jitter is applied after the cap. Durations saturate.
//!
//! # Keys
//! [`keyed`](CircuitBreakerBuilder::keyed) gives one breaker per key of any
//! [`KeyExtractor`](crate::key::KeyExtractor) (e.g. the downstream host), kept in a
//! `moka` cache bounded by [`max_keys`](CircuitBreakerBuilder::max_keys) and evicting
//! breakers idle for [`idle_key_timeout`](CircuitBreakerBuilder::idle_key_timeout).
//! An evicted breaker's key starts again closed.
//!
//! # Speed
//! The closed-state path takes no lock and allocates nothing: admission is one atomic
//! load of the state word, recording a call in a count window is one `fetch_add` and one
//! `swap` (plus one `fetch_add` when the outcome differs from the one it replaces). With
//! [`slow_call_duration`](CircuitBreakerBuilder::slow_call_duration) set, or a time
//! window, the clock is read as well. Transitions take a lock that the closed path never
//! touches. Figures are in `BENCHMARKS.md`.
//!
//! # Events
//! [`Event::CircuitStateChanged`](crate::observe::Event::CircuitStateChanged) for every
//! transition (with the rates that caused a trip),
//! [`Event::CircuitRejected`](crate::observe::Event::CircuitRejected) for every refusal
//! (or would-be refusal in shadow mode), and
//! [`Event::CircuitThresholdExceeded`](crate::observe::Event::CircuitThresholdExceeded)
//! when a metrics-only breaker crosses a threshold.

mod config;
mod future;
mod layer;
pub(crate) mod state;
mod window;

pub use config::{CircuitBreakerConfig, SlidingWindow, WaitGrowth};
pub use future::ResponseFuture;
pub use layer::{
    CircuitBreaker, CircuitBreakerBuilder, CircuitBreakerHandle, CircuitBreakerLayer, Keyed,
    KeyedBy, KeyedHandles, Single, Unkeyed,
};
pub(crate) use state::next_random;
pub use state::{Metrics, State};
