//! The logging layer: one `tracing` span per request, a request id, and one structured
//! event when the request ends, saying what parapet did with it.
//!
//! Put it outermost. For each request it:
//! - takes the request id from `x-request-id` (visible ASCII, at most 128 bytes) or makes
//!   one (32 hex digits), puts it in the request's headers and extensions
//!   ([`RequestId`]) for inner layers and outgoing calls, and sets it on the response;
//! - opens a span `request` (target `tower_parapet::request`) with `method`, `route` (the
//!   route template: axum's `MatchedPath` with the `axum` feature, or your own
//!   [`route`](LoggingLayer::route) function; never the raw path, which goes in `path`),
//!   `request_id`, and, filled in at the end, `status`, `latency_ms` and `outcome`;
//! - when the response is ready, writes one event with those fields at the level of its
//!   outcome ([`Levels`]): `admitted` (the service answered), or the
//!   [`Verdict`](crate::http::Verdict) that inner layers left on the response: `rejected`
//!   (with `kind`), `fallback` (with `source`), `replayed`, `internal_error`; an error
//!   that reaches this layer is `failed`, logged with the error's text and debug form
//!   (the service's error type is passed on untouched, so its `source()` chain cannot be
//!   walked here; with [`RejectionResponseLayer`](crate::http::RejectionResponseLayer)
//!   inside, as recommended, errors are answered there and logged with their whole
//!   chain as [`InternalError`](crate::observe::Event::InternalError) events).
//!
//! Request headers are logged only when asked ([`log_headers`](LoggingLayer::log_headers)),
//! and never `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie` or the
//! headers you add with [`sensitive`](LoggingLayer::sensitive): their values are
//! replaced by `[redacted]`.
//!
//! With the `metrics` feature it also records, through the `metrics` facade:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `parapet_requests_total` | counter | `method`, `route`, `status`, `outcome` |
//! | `parapet_request_duration_seconds` | histogram | `method`, `route`, `outcome` |
//!
//! Labels are bounded: the route template (or `unmatched`), never a raw path, IP or key.
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower::ServiceBuilder;
//! use tower_parapet::http::RejectionResponseLayer;
//! use tower_parapet::logging::LoggingLayer;
//! use tower_parapet::timeout::TimeoutLayer;
//!
//! let app: Router = Router::new().route("/orders/{id}", get(|| async { "order" })).layer(
//!     ServiceBuilder::new()
//!         .layer(LoggingLayer::new())
//!         .layer(RejectionResponseLayer::new())
//!         .layer(TimeoutLayer::new(Duration::from_secs(2))),
//! );
//! # }
//! ```

mod layer;

pub use layer::{Levels, Logging, LoggingLayer, RequestId, ResponseFuture};
