//! HTTP answers (contract 4): rejections become responses at the edge of the stack.
//!
//! Put [`RejectionResponseLayer`] outermost and the whole parapet stack goes into
//! `axum::Router::layer` (which needs `Error = Infallible`) with no `HandleErrorLayer`:
//!
//! | rejection | HTTP | gRPC (trailers-only, HTTP 200) |
//! |---|---|---|
//! | timeout | 504 | `DEADLINE_EXCEEDED` |
//! | circuit open | 503 + `Retry-After` | `UNAVAILABLE` + `grpc-retry-pushback-ms` |
//! | rate limited | 429 + `Retry-After` + `RateLimit` + `RateLimit-Policy` | `RESOURCE_EXHAUSTED` |
//! | overloaded | 503 (+ `Retry-After`) | `UNAVAILABLE` |
//! | feature disabled | 404 | `UNIMPLEMENTED` |
//! | idempotency key missing / invalid | 400 | `INVALID_ARGUMENT` |
//! | idempotency key in flight | 409 | `ABORTED` |
//! | idempotency key reused with another payload | 422 | `FAILED_PRECONDITION` |
//! | any other error | 500, no detail in the body | `INTERNAL` |
//!
//! HTTP answers carry an RFC 9457 `application/problem+json` body:
//! `{"type":"about:blank","title":"Gateway Timeout","status":504,"detail":"...","kind":"timeout"}`
//! (plus `retry_after` in seconds when there is a hint). `Retry-After` is in whole seconds,
//! rounded up and never 0. Statuses are configurable per kind
//! ([`RejectionResponseLayer::status`]).
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower::ServiceBuilder;
//! use tower_parapet::http::RejectionResponseLayer;
//! use tower_parapet::timeout::TimeoutLayer;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(RejectionResponseLayer::new())
//!             .layer(TimeoutLayer::new(Duration::from_secs(2))),
//!     );
//! # }
//! ```

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod admin;
mod body;
pub(crate) mod buffered;
mod layer;
mod response;
mod verdict;

pub use body::ResponseBody;
pub use buffered::BufferedBody;
pub use layer::{RejectionResponse, RejectionResponseLayer, ResponseFuture};
pub use response::StatusMap;
pub(crate) use response::grpc_answer;
pub(crate) use response::http_answer as answer_with_status;
pub(crate) use response::rate_limit_fields;
pub use verdict::Verdict;
