//! Retry: recover from blips without turning them into storms.
//!
//! A failed call is tried again, after a backoff, while all of these hold:
//! - the failure is retryable (the [classifier](crate::classify); by default
//!   [`TransientErrors`](crate::classify::TransientErrors), for HTTP
//!   [`TransientHttpFailures`](crate::classify::TransientHttpFailures): connection errors,
//!   timeouts, 502/503/504, 429 with pushback);
//! - the request is safe to repeat and was kept ([`Replay`]: for HTTP, idempotent methods
//!   or an `Idempotency-Key`, bodies up to a cap);
//! - attempts are left: [`max_attempts`](RetryBuilder::max_attempts) counts **every call,
//!   the first included** (3 = the call and up to two retries);
//! - the server did not say "do not retry", and its pushback fits the deadline;
//! - the next attempt can start before the request's [`Deadline`](crate::Deadline) (the
//!   one a [`TimeoutLayer`](crate::TimeoutLayer) outside put in the extensions): after the
//!   wait, at least [`min_time_left`](RetryBuilder::min_time_left) must remain;
//! - the [`RetryBudget`], shared by every clone, allows one more retry.
//!
//! Otherwise the last attempt's result is returned as it is: an inner error passes through
//! untouched, a failed response is returned as the response.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_parapet::retry::{Backoff, Jitter, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let flaky = service_fn(move |n: u32| {
//!     let attempt = seen.fetch_add(1, Ordering::SeqCst) + 1;
//!     async move {
//!         if attempt < 3 { Err("connection reset") } else { Ok(n * 2) }
//!     }
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::builder()
//!             .max_attempts(3)
//!             .backoff(Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_secs(1)))
//!             .jitter(Jitter::None)
//!             .build()
//!             .expect("valid config"),
//!     )
//!     .service(flaky);
//! assert_eq!(svc.oneshot(21).await.unwrap(), 42);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```
//!
//! # Errors
//! `Error = BoxError`. The retry layer refuses nothing itself: the last attempt's error
//! (an inner error, untouched, or an inner layer's [`Rejection`](crate::Rejection)) or
//! failed response is what the caller gets. Only preparing the request can fail on its
//! own: an HTTP body that errors while being buffered, or that turns out longer than its
//! size hint ([`Rejection::PayloadTooLarge`](crate::Rejection::PayloadTooLarge)).
//!
//! # Shared state
//! The settings, the jitter's seed sequence and the [`RetryBudget`] live in `Arc`s
//! created by [`build`](RetryBuilder::build): every service the layer builds, and every
//! clone, shares them. Each call's own state (attempt count, previous wait, the copy of
//! the request) lives in its response future.
//!
//! # Panics
//! Nothing is held across attempts but the budget's counters, so a panicking inner
//! service (or a dropped response future) leaves nothing to release; a retry already
//! counted in the budget stays counted.
//!
//! # Backoff and jitter
//! [`Backoff::Constant`], [`Backoff::Linear`] or [`Backoff::Exponential`] give the wait
//! before retry *n*, capped at `max`; [`Jitter`] is applied **after** the cap (full:
//! uniform in `[0, wait]`; decorrelated: uniform in `[first wait, min(max, 3 × previous)]`),
//! so retries stay spread once the cap is reached. The random numbers come from a
//! splitmix64 sequence seeded per layer; [`seed`](RetryBuilder::seed) fixes it for tests.
//! Waits run on tokio's timer, so `tokio::time::pause` drives them.
//!
//! # Server pushback
//! With [`HttpPushback`] (the HTTP default) a failed answer's `Retry-After` (seconds, or an
//! HTTP-date compared with [`wall_clock`](RetryBuilder::wall_clock)), the `t` of an
//! exhausted `RateLimit` policy, or `grpc-retry-pushback-ms` (a negative or malformed value
//! means "do not retry") sets the *least* wait: the next attempt waits the longer of the
//! pushback and the backoff. A pushback that does not fit in the remaining deadline ends
//! the retries. With any request type, an inner parapet rejection's `retry_after` (an open
//! circuit, an overloaded bulkhead) is pushback too ([`RejectionPushback`]).
//!
//! # Retry budget
//! Retries multiply load exactly when a dependency is least able to take it. The
//! [`RetryBudget`] (default: 20 % of requests plus 10 per second, over 10 s) is shared by
//! every service the layer builds and every clone, and can be shared between layers
//! ([`budget`](RetryBuilder::budget)). Under a sustained failure, a dependency sees at
//! most `(1 + ratio) × requests + min_per_second × window` attempts per window, however
//! high `max_attempts` is.
//!
//! # Requests
//! The inner service must be `Clone`: each call takes the service the caller made ready
//! for its first attempt (leaving a clone, as `tower::filter::AsyncFilter` does), and
//! waits for readiness before each retry. The request is kept by a [`Replay`]:
//! [`CloneReplay`] for any `Clone` request; [`HttpReplay`] for `http::Request<B>` with
//! `B: From<Bytes>` (axum's `Body`, `Full<Bytes>`); your own for other types.
//!
//! # Events and metrics
//! [`Event::RetryScheduled`](crate::observe::Event::RetryScheduled) before every retry
//! (its number, wait and pushback), [`Event::RetryStopped`](crate::observe::Event::RetryStopped)
//! when a retryable failure is returned ([`StopReason`]), and
//! [`Event::RetryCompleted`](crate::observe::Event::RetryCompleted) once per call; the
//! metrics observer counts `parapet_retry_calls_total` by `result`:
//! `succeeded_without_retry`, `succeeded_with_retry`, `failed_without_retry`,
//! `failed_with_retry`.
//!
//! # Ordering
//! Put the retry layer outside the circuit breaker and the per-attempt timeout, and inside
//! an overall timeout: `TimeoutLayer` (whole call, sets the `Deadline`) → retry → circuit
//! breaker → `TimeoutLayer` (per attempt) → service. An open circuit then ends retrying
//! through its pushback instead of being hammered.
//!
//! # Differences from `tower::retry`
//! Tower's `Retry` takes a `Policy` the user writes (what to retry, how to clone, when to
//! stop) and its `TpsBudget`. This layer ships those decisions: attempt counting, backoff
//! with jitter, a lock-free budget shared by clones, pushback and deadlines, safe-method
//! rules and body buffering for HTTP, and events.

mod backoff;
mod budget;
mod config;
mod future;
mod layer;
mod pushback;
mod replay;

pub use backoff::{Backoff, Jitter};
pub use budget::RetryBudget;
pub use config::{BudgetConfig, RetryConfig};
pub use future::ResponseFuture;
pub use layer::{Retry, RetryBuilder, RetryLayer};
#[cfg(feature = "http")]
pub use pushback::HttpPushback;
pub use pushback::{
    Pushback, PushbackSource, RejectionPushback, parse_grpc_pushback, parse_http_date,
    parse_ratelimit_reset, parse_retry_after,
};
pub use replay::{CloneReplay, Prepared, Replay};
#[cfg(feature = "http")]
pub use replay::{HttpCopy, HttpReplay};

/// Why a failed attempt was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The attempts allowed are used up.
    MaxAttempts,
    /// The retry budget is spent.
    BudgetExhausted,
    /// The next attempt could not start (with `min_time_left` to spare) before the
    /// request's deadline, after the backoff or the server's pushback.
    Deadline,
    /// The server said not to retry (`grpc-retry-pushback-ms` negative or malformed).
    Pushback,
    /// The request may not be repeated (not idempotent, or its body was too large to
    /// keep).
    NotReplayable,
}

impl StopReason {
    /// A stable `snake_case` name.
    pub const fn as_str(self) -> &'static str {
        match self {
            StopReason::MaxAttempts => "max_attempts",
            StopReason::BudgetExhausted => "budget_exhausted",
            StopReason::Deadline => "deadline",
            StopReason::Pushback => "pushback",
            StopReason::NotReplayable => "not_replayable",
        }
    }
}
