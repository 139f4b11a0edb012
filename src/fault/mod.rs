//! Fault injection: make a dependency fail on purpose — in staging, in tests, in a game
//! day — and watch the rest of the stack keep its promises.
//!
//! [`FaultLayer`] sits where the dependency is (innermost, around the service or the
//! client) and injects, each at its own rate in percent:
//! - **error**: the configured error ([`error_with`](FaultBuilder::error_with), any
//!   [`BoxError`](crate::BoxError); default [`FaultError::Injected`]) or, for HTTP, a
//!   response with a status ([`http_status`](FaultBuilder::http_status));
//! - **latency**: a fixed delay or one drawn uniformly from a range, on tokio's timer
//!   (so `tokio::time::pause` drives it); it combines with the other kinds;
//! - **hang**: the call never answers, until the caller drops it (a timeout does);
//! - **abort**: [`FaultError::Aborted`], a transport-like error whose `source()` is an
//!   `io::Error` of kind `ConnectionReset`.
//!
//! Error, abort and hang exclude one another (one roll decides among them); latency is
//! rolled on its own. The layer is **off by default** ([`Mode::Off`](crate::Mode::Off)):
//! switch it on and tune it at runtime through its [`FaultHandle`] or the shared
//! [`ModeHandle`](crate::ModeHandle) (so the admin router's `PUT /modes/{name}` and a
//! flag-bound mode switch it too).
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_parapet::fault::{FaultError, FaultKind, FaultLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let faults = FaultLayer::builder()
//!     .name("inventory-chaos")
//!     .seed(7)
//!     .abort_rate(100.0)
//!     .build()
//!     .expect("valid config");
//! let chaos = faults.handle();
//! let mut svc = ServiceBuilder::new()
//!     .layer(faults)
//!     .service(service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n + 1) }));
//!
//! // Off by default: a pass-through.
//! assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 2);
//!
//! chaos.enable();
//! let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
//! assert!(matches!(FaultError::from_box(&err), Some(FaultError::Aborted { .. })));
//!
//! // Retune at runtime: no aborts, every call 50 ms late.
//! chaos.set_rate(FaultKind::Abort, 0.0).unwrap();
//! chaos.set_rate(FaultKind::Latency, 100.0).unwrap();
//! chaos.set_latency(Duration::from_millis(50), Duration::from_millis(50)).unwrap();
//! let started = tokio::time::Instant::now();
//! assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 2);
//! assert_eq!(started.elapsed(), Duration::from_millis(50));
//! # }
//! ```
//!
//! # Targeting
//! [`when`](FaultBuilder::when) takes a predicate on the request (a route, a header, a
//! method); [`keys`](FaultBuilder::keys) takes a [`KeyExtractor`](crate::key::KeyExtractor)
//! and a percentage, and targets a sticky share of keys: each key hashes to a bucket, so
//! a user is in or out for every request (the seed set before `keys`, if any, salts the
//! buckets; they are stable within a build of the program, not across Rust versions). Both
//! add up: a request must pass every target. Untargeted requests pass through and draw no
//! random numbers.
//!
//! # Determinism
//! The random numbers come from one splitmix64 sequence per layer, shared by every clone
//! and taken with one atomic add. With a [`seed`](FaultBuilder::seed), the same sequence
//! of targeted calls gets the same faults; concurrent calls take numbers in the order
//! they reach `call`. Each targeted call takes two numbers (three when a latency is drawn
//! from a range).
//!
//! # Modes
//! [`Mode::Enforce`](crate::Mode::Enforce) injects; [`Mode::Shadow`](crate::Mode::Shadow)
//! decides and reports each fault it would inject, and lets the call through untouched;
//! [`Mode::Off`](crate::Mode::Off) (the default) is a pass-through that draws nothing.
//!
//! # Errors
//! `Error = BoxError`: an injected error is exactly what the factory made (or a boxed
//! [`FaultError`]); inner errors pass through untouched. The layer never returns a
//! [`Rejection`](crate::Rejection): to the layers outside, an injected fault looks like
//! the dependency failing, which is the point. Behind the edge adapter an error becomes a
//! 500 (an [`HttpStatus`] answer is a response with its own status instead).
//!
//! # Drops and panics
//! Error, abort and hang faults do not call the inner service. A hung future holds
//! nothing: dropping it (a timeout, a client gone) releases nothing because nothing was
//! taken. A delayed call has already been handed to the inner service in `call`, but its
//! future is not polled until the delay is over (for a lazy future, as most are, the
//! dependency sees it then).
//!
//! # Shared state
//! The settings (rates, kinds switched on, latency range, in an `arc-swap` snapshot), the
//! random sequence and the mode live in one `Arc` created by
//! [`build`](FaultBuilder::build): every service and clone shares them, and the handle
//! changes them for all.
//!
//! # Events
//! [`Event::FaultInjected`](crate::observe::Event::FaultInjected) for every injected (or,
//! in shadow mode, would-be) fault — a delayed call that then errors emits two;
//! [`Event::FaultChanged`](crate::observe::Event::FaultChanged) for every change through
//! the handle.
//!
//! # Not here
//! Response corruption (mangled bodies, truncated streams) is not injected: a status or
//! an error covers what the layers of this crate react to.

mod config;
mod future;
mod layer;
mod state;

pub use config::FaultConfig;
pub use future::ResponseFuture;
#[cfg(feature = "http")]
pub use layer::HttpStatus;
pub use layer::{
    AllRequests, Both, ErrorAnswer, Fault, FaultAnswer, FaultBuilder, FaultError, FaultHandle,
    FaultLayer, KeyShare, Target, When,
};
pub use state::FaultKind;
