//! Deadlines: what if the dependency hangs?
//!
//! [`TimeoutLayer`] gives every call a deadline. When it passes, the inner future is
//! dropped and the caller gets [`Rejection::Timeout`](crate::Rejection::Timeout) — HTTP 504
//! (configurable) or gRPC `DEADLINE_EXCEEDED` through
//! [`RejectionResponseLayer`](crate::http::RejectionResponseLayer).
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_parapet::{Rejection, timeout::TimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_parapet::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(1)))
//!     .service(service_fn(|slow: bool| async move {
//!         if slow {
//!             tokio::time::sleep(Duration::from_secs(5)).await;
//!         }
//!         Ok::<_, std::convert::Infallible>("done")
//!     }));
//!
//! assert_eq!(svc.ready().await?.call(false).await?, "done");
//! let err = svc.ready().await?.call(true).await.unwrap_err();
//! assert!(matches!(Rejection::from_box(&err), Some(Rejection::Timeout { .. })));
//! # Ok(())
//! # }
//! ```
//!
//! # Deadline propagation
//! A caller that gives up after 300 ms gains nothing from 2 s of work. With
//! [`TimeoutLayer::deadline`] and [`HttpDeadline`] (feature `http`) the layer reads the
//! caller's budget — `grpc-timeout` (all units, at most 8 digits), a configured header in
//! milliseconds or seconds, or a [`Deadline`] an outer timeout layer left in the request —
//! and uses the shortest of it and its own timeout ([`Event::DeadlineShortened`]). It
//! records the deadline in force as a [`Deadline`] in the request's extensions, so inner
//! layers and outgoing calls can read [`Deadline::remaining`]; with
//! [`HttpDeadline::propagate_grpc_timeout`] it also rewrites `grpc-timeout` for the next
//! hop. A malformed deadline header (`+5S`, `10`, `1.5S`) is ignored with
//! [`Event::DeadlineMalformed`], never a panic; a budget of zero answers the timeout at
//! once without calling the inner service. Other request types use a
//! [`DeadlineSource`] of their own, or none ([`NoDeadline`], the default).
//!
//! # Shadow mode
//! In [`Mode::Shadow`](crate::Mode::Shadow) the deadline is only reported
//! ([`Event::TimedOut`] with `shadow: true`, once per call) and the call goes on: watch
//! what a tighter timeout would cut before it cuts it. [`Mode::Off`](crate::Mode::Off)
//! is a pure pass-through (no timer). Switch at runtime with
//! [`TimeoutLayer::mode_handle`].
//!
//! # Errors
//! `Error = BoxError`: the inner service's errors pass through untouched (boxed, never
//! wrapped); the layer's own error is [`Rejection::Timeout`](crate::Rejection::Timeout)
//! with the deadline that expired.
//!
//! # Shared state
//! Name, observer and mode live in an `Arc` made with the layer: every service it builds
//! and every clone share them. The layer keeps no per-request state outside the response
//! future.
//!
//! # Backpressure
//! `poll_ready` forwards the inner service's readiness only; the timer starts in `call`.
//! Time spent waiting for readiness is not part of the deadline (put a timeout outside a
//! buffer or a concurrency limit to bound that too).
//!
//! # Panics
//! The layer does not panic. A panic of the inner future propagates unchanged through
//! the response future; dropping the response future (cancellation, or the deadline)
//! drops the inner future and the timer with it.
//!
//! # Differences from `tower::timeout`
//! - A typed [`Rejection::Timeout`](crate::Rejection::Timeout) in a flat `BoxError`
//!   instead of `Elapsed`, so it maps to 504 / `DEADLINE_EXCEEDED` wherever it is stacked.
//! - The caller's deadline shortens the timeout and travels on in the request.
//! - Shadow and off modes, switchable at runtime; every expiry is an [`Event`].
//! - At the deadline the inner future is dropped at once, even if the caller keeps the
//!   completed response future around.
//!
//! [`Event`]: crate::observe::Event
//! [`Event::TimedOut`]: crate::observe::Event::TimedOut
//! [`Event::DeadlineShortened`]: crate::observe::Event::DeadlineShortened
//! [`Event::DeadlineMalformed`]: crate::observe::Event::DeadlineMalformed

mod config;
mod deadline;
mod future;
mod layer;

pub use config::TimeoutConfig;
pub use deadline::{CallerDeadline, Deadline, DeadlineSource, NoDeadline};
#[cfg(feature = "http")]
pub use deadline::{DeadlineUnit, HttpDeadline};
pub use future::ResponseFuture;
pub use layer::{RequestTimeout, Timeout, TimeoutLayer};
