//! Bulkhead: cap the calls in flight, so one slow dependency cannot take every worker,
//! connection or byte of memory with it.
//!
//! The limit is shared by every service the layer builds and every clone of them (one
//! counter in an `Arc`). A call over the limit is refused at once with
//! [`Rejection::Overloaded`](crate::Rejection::Overloaded) — HTTP 503 (with `Retry-After`
//! when [`retry_after`](BulkheadBuilder::retry_after) is set) or gRPC `UNAVAILABLE`
//! through the edge adapter — or, with [`max_wait`](BulkheadBuilder::max_wait), waits up
//! to that long for a slot and is refused then.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_parapet::bulkhead::BulkheadLayer;
//! use tower_parapet::{Rejection, RejectionKind};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let bulkhead = BulkheadLayer::builder()
//!     .name("reports")
//!     .max_concurrent(2)
//!     .build()
//!     .expect("valid config");
//! let handle = bulkhead.handle();
//! let svc = ServiceBuilder::new().layer(bulkhead).service(service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//!     Ok::<_, std::convert::Infallible>("report")
//! }));
//!
//! let first = svc.clone().oneshot(());
//! let second = svc.clone().oneshot(());
//! let third = svc.clone().oneshot(());
//! let (a, b, c) = tokio::join!(first, second, third);
//! assert!(a.is_ok() && b.is_ok());
//! let err = c.unwrap_err();
//! assert_eq!(Rejection::from_box(&err).unwrap().kind(), RejectionKind::Overloaded);
//!
//! handle.set_limit(3); // at runtime, for every clone
//! assert_eq!(handle.limit(), 3);
//! # }
//! ```
//!
//! # Semantics
//! - **Admission** is decided in `call` (`poll_ready` forwards the inner service's
//!   readiness only): one compare-and-swap on the shared counter, no lock, no allocation.
//!   A refusal is an immediately ready future.
//! - **Release.** The slot is held by a permit inside the response future and given back
//!   when the inner future completes (with any result), when the response future is
//!   dropped (a cancelled call), or when the inner service panics in `call` or while
//!   being polled. For HTTP the slot is held until the response head is ready, not while
//!   its body streams.
//! - **Waiting** ([`max_wait`](BulkheadBuilder::max_wait)) runs on tokio's timer, so
//!   paused-time tests drive it. A waiting call keeps the service the caller made ready
//!   (a clone takes its place, as in `tower::filter::AsyncFilter`), which is why the
//!   inner service must be `Clone` (with or without `max_wait`). Waiters are woken one per freed slot, but a call arriving at that
//!   moment can take the slot first: there is no strict FIFO order. The wait allocates
//!   one boxed future; admission without waiting allocates nothing.
//! - **Runtime limit.** [`BulkheadHandle::set_limit`] raises (waking waiters) or lowers
//!   the limit. Lowering never cancels calls in flight and never loses a slot: the calls
//!   above the new limit finish, and admission resumes once the count is below it.
//! - **Modes.** [`Mode::Shadow`](crate::Mode::Shadow) counts calls and reports each call
//!   over the limit as "would have rejected", but lets it through at once (it holds no
//!   slot); [`Mode::Off`](crate::Mode::Off) is a pass-through.
//!
//! # Errors
//! `Error = BoxError`: a refusal is a boxed [`Rejection::Overloaded`](crate::Rejection::Overloaded)
//! (with the configured `retry_after`); inner errors pass through untouched.
//!
//! # Shared state
//! The counter, the limit and the waiters live in one `Arc` created by
//! [`build`](BulkheadBuilder::build): every service the layer builds (every route of an
//! axum `Router`, say) and every clone shares one limit. Build one layer per resource to
//! protect.
//!
//! # Panics
//! A panic in the inner service's `call` or while its future is polled unwinds through
//! the permit, which gives the slot back; the bulkhead never panics itself.
//!
//! # Events
//! [`Event::BulkheadRejected`](crate::observe::Event::BulkheadRejected) for every refusal
//! (or would-be refusal in shadow mode), with the wait it made;
//! [`Event::BulkheadLimitChanged`](crate::observe::Event::BulkheadLimitChanged) for every
//! change through the handle.
//!
//! # Differences from `tower::limit::ConcurrencyLimit`
//! Tower's limit is per service instance and waits in `poll_ready`, which axum and tonic
//! never see pending (they call clones of an always-ready service): the limit is not
//! enforced there. This one is shared by every clone, decided in `call`, refuses with a
//! typed rejection, can wait a bounded time, and changes at runtime.

mod config;
mod future;
mod layer;
mod state;

pub use config::BulkheadConfig;
pub use future::ResponseFuture;
pub use layer::{Bulkhead, BulkheadBuilder, BulkheadHandle, BulkheadLayer};
