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
//! ```
//! # #[cfg(feature = "http")] {
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_parapet::timeout::{Deadline, HttpDeadline, TimeoutLayer};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true)
//! #     .build().unwrap().block_on(async {
//! let mut svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(2)).deadline(HttpDeadline::new()))
//!     .service(service_fn(|req: http::Request<()>| async move {
//!         // What an outgoing call made from here may still spend.
//!         let left = req.extensions().get::<Deadline>().map(Deadline::remaining);
//!         Ok::<_, std::convert::Infallible>(left)
//!     }));
//!
//! let req = http::Request::builder().header("grpc-timeout", "300m").body(()).unwrap();
//! let left = svc.ready().await?.call(req).await?;
//! assert_eq!(left, Some(Duration::from_millis(300)));
//! # Ok::<_, tower_parapet::BoxError>(())
//! # }).unwrap();
//! # }
//! ```
//!
//! # Shadow mode
//! In [`Mode::Shadow`](crate::Mode::Shadow) the deadline is only reported
//! ([`Event::TimedOut`] with `shadow: true`, once per call, when it passes) and the call
//! goes on to its own end: watch what a tighter timeout would cut before it cuts it. A
//! shadow layer leaves the request untouched — it records no [`Deadline`] and rewrites no
//! header, so nothing further in leaves early because of it — but it still reports
//! [`Event::DeadlineShortened`] and [`Event::DeadlineMalformed`].
//! [`Mode::Off`](crate::Mode::Off) is a pure pass-through: no timer, no header read, no
//! event. The mode is read once per call, so switching it at runtime through
//! [`TimeoutLayer::mode_handle`] affects the next call of every service and clone the
//! layer built, and never a call in flight.
//!
//! # Errors
//! `Error = BoxError`: the inner service's errors pass through untouched (boxed with
//! `Into<BoxError>`, never wrapped, so they downcast to their own type); the layer's own
//! error is [`Rejection::Timeout`](crate::Rejection::Timeout) carrying the deadline that
//! expired (the configured timeout, or the caller's shorter budget). Match it with
//! [`Rejection::from_box`](crate::Rejection::from_box).
//!
//! # Shared state
//! Name, observer and mode live in an `Arc` made with the layer: every service it builds
//! and every clone share them, so one [`ModeHandle`](crate::ModeHandle) switches them all.
//! Nothing is counted across calls; each call's timer lives in its response future. The
//! call path takes no lock; with [`NoDeadline`] it makes no allocation either (an atomic
//! load for the mode, reference counts for the observer and the timer). Reading the
//! caller's deadline with [`HttpDeadline`] adds the allocation of inserting the
//! [`Deadline`] extension (and of the header text, when propagating `grpc-timeout`).
//!
//! # Backpressure
//! `poll_ready` forwards the inner service's readiness only; the timer starts in `call`.
//! Time spent waiting for readiness is not part of the deadline (put a timeout outside a
//! buffer or a concurrency limit to bound that too). A call whose deadline is already
//! gone is answered at once without calling the inner service.
//!
//! # Panics
//! `call` needs a Tokio runtime with the time driver enabled (as `tokio::time::sleep`
//! does) unless the mode is off; it panics outside one. Otherwise the layer does not
//! panic, whatever the request's headers say. A panic of the inner future propagates
//! unchanged through the response future; dropping the response future (cancellation, or
//! the deadline) drops the inner future and the timer with it.
//!
//! # Differences from `tower::timeout`
//! - A typed [`Rejection::Timeout`](crate::Rejection::Timeout) (with the deadline that
//!   expired) instead of `Elapsed`, so it maps to 504 / `DEADLINE_EXCEEDED` wherever it
//!   is stacked.
//! - A flat `BoxError`: inner errors are boxed, never wrapped, however many parapet
//!   layers sit between.
//! - Deadline propagation: the caller's deadline shortens the timeout and travels on in
//!   the request as a [`Deadline`].
//! - Per-request timeouts from a closure ([`TimeoutLayer::per_request`]).
//! - Shadow mode, switchable at runtime; every expiry is an [`Event`].
//! - Off is a pure pass-through: no timer is created at all.
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
