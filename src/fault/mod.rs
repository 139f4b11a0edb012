//! Fault injection: make a dependency fail on purpose — in staging, in tests, in a game
//! day — and watch the rest of the stack keep its promises.
//!
//! [`FaultLayer`] sits where the dependency is (innermost, around the service or the
//! client) and injects, each at its own rate in percent:
//! - **error**: the configured error ([`error_with`](FaultBuilder::error_with), any
//!   [`BoxError`](crate::BoxError); default [`FaultError::Injected`]) or, for HTTP, a
//!   response with a status ([`http_status`](FaultBuilder::http_status)) or a gRPC status
//!   answered as a gRPC server does, HTTP 200 with `grpc-status` and `grpc-message`
//!   ([`grpc_status`](FaultBuilder::grpc_status));
//! - **latency**: a fixed delay or one drawn uniformly from a range, on tokio's timer
//!   (so `tokio::time::pause` drives it); it combines with the other kinds;
//! - **hang**: the call never answers, until the caller drops it (a timeout does);
//! - **abort**: [`FaultError::Aborted`], a transport-like error whose `source()` is an
//!   `io::Error` of kind `ConnectionReset`;
//! - **corrupt**: the service is called and its response mangled by the configured
//!   [`Corruption`] ([`corrupt`](FaultBuilder::corrupt)); for HTTP, [`HttpCorruption`]
//!   truncates the body, garbles a burst of its bytes, replaces it with random bytes, or
//!   drops a header. Without a corruption the corrupt rate stays 0.
//!
//! Error, abort, hang and corrupt exclude one another (one roll decides among them);
//! latency is rolled on its own. The layer is **off by default** ([`Mode::Off`](crate::Mode::Off)):
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
//! Corrupting HTTP responses, and answering gRPC statuses:
//!
//! ```
//! # #[cfg(feature = "http")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_parapet::Mode;
//! use tower_parapet::fault::{FaultLayer, HttpCorruption};
//! use tower_parapet::grpc::Code;
//!
//! let origin = service_fn(|_: http::Request<()>| async {
//!     let body = Full::new(Bytes::from_static(br#"{"ok":true}"#));
//!     Ok::<_, std::convert::Infallible>(http::Response::new(body))
//! });
//! let faults = FaultLayer::builder()
//!     .seed(1)
//!     .corrupt(100.0, HttpCorruption::truncate())
//!     .mode(Mode::Enforce)
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new().layer(faults).service(origin);
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.headers()["parapet-fault"], "corrupt");
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! assert!(body.len() < 11); // cut short
//!
//! let unavailable = FaultLayer::builder()
//!     .error_rate(100.0)
//!     .grpc_status(Code::Unavailable, "injected")
//!     .mode(Mode::Enforce)
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(unavailable)
//!     .service(service_fn(|_: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(()))
//!     }));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["grpc-status"], "14");
//! assert_eq!(res.headers()["grpc-message"], "injected");
//! # }
//! # #[cfg(not(feature = "http"))]
//! # fn main() {}
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
//! they reach `call`. Each targeted call takes two numbers, one more when a latency is
//! drawn from a range and one more when its response is corrupted (the corruption draws
//! where to cut and which bytes to change from it, so they repeat with the seed too).
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
//! 500 (an [`HttpStatus`] or [`GrpcStatus`] answer is a response of its own instead). A
//! body corruption reads the whole body first: an error reading it is the call's error.
//!
//! # Drops and panics
//! Error, abort and hang faults do not call the inner service. A hung future holds
//! nothing: dropping it (a timeout, a client gone) releases nothing because nothing was
//! taken. A delayed call has already been handed to the inner service in `call`, but its
//! future is not polled until the delay is over (for a lazy future, as most are, the
//! dependency sees it then). A corrupt fault calls the inner service as usual and changes
//! only what comes back.
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
//! Streams are not corrupted as they flow: a body corruption buffers the whole body (and
//! drops its trailers) before it mangles it, so it suits unary answers, not long streams.

mod config;
mod corrupt;
mod future;
mod layer;
mod state;

pub use config::FaultConfig;
#[cfg(feature = "http")]
pub use corrupt::HttpCorruption;
pub use corrupt::{CorruptFuture, Corrupted, Corruption, NoCorruption};
pub use future::ResponseFuture;
pub use layer::{
    AllRequests, Both, ErrorAnswer, Fault, FaultAnswer, FaultBuilder, FaultError, FaultHandle,
    FaultLayer, KeyShare, Target, When,
};
#[cfg(feature = "http")]
pub use layer::{GrpcStatus, HttpStatus};
pub use state::FaultKind;
