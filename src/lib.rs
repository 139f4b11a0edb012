//! Composable [Tower](https://docs.rs/tower) layers that keep an async service working
//! when things go wrong.
//!
//! A dependency hangs and every request hangs with it; a dependency fails and users see
//! raw 500s; nobody can tell at 2 AM which layer refused what. `tower-parapet` wraps any
//! `tower::Service` — an axum `Router`, a tonic server or client, a `service_fn` — with
//! layers that answer those failures, and answers them natively: HTTP statuses with
//! `Retry-After` and `application/problem+json`, or gRPC status codes.
//!
//! | layer | question it answers | module |
//! |---|---|---|
//! | timeout | what if the dependency hangs? (and honouring the caller's deadline) | [`timeout`] |
//! | fallback | what do we answer when it fails? (value, function, last known good) | [`fallback`] |
//! | circuit breaker | how do we stop hammering a dead dependency? | [`circuit_breaker`] |
//! | rate limit | what if someone sends 10 000 requests? (global or per client IP, API key, route) | [`rate_limit`] |
//! | retry | how do we recover from a blip without causing a storm? (backoff with jitter, shared budget, pushback, deadlines, safe methods only) | [`retry`] ([`RetryLayer`]) |
//! | bulkhead | how do we keep one slow dependency from taking every worker? (shared concurrency limit, bounded wait, runtime limit) | [`bulkhead`] ([`BulkheadLayer`]) |
//! | cache | how do we survive read load and outages? (coalesced misses, TTL and idle bounds, `Cache-Control`, stale-while-revalidate, stale-if-error, invalidation, a fallback source) | [`cache`] ([`CacheLayer`], feature `http`) |
//! | idempotency | what if the user double-clicks Pay? (replay, in-flight claims, conflicts) | [`idempotency`] (feature `http`) |
//! | feature gate | can I switch it off now, without a deploy? (kill switches, sticky percentage rollouts, targeting, flags from files, bound modes) | [`flags`] ([`FeatureGateLayer`]) |
//! | edge adapter | how does a refusal reach the client? | [`http`] (feature `http`) |
//! | logging | what happened to each request, and why? (span, request id, outcome) | [`logging`] (feature `http`) |
//! | fan-out | one page from five calls, degraded instead of down (per-branch deadlines, partial results) | [`fanout`] |
//! | health | should this instance get traffic? (registry, snapshot, `/livez`, `/readyz`) | [`health`] |
//! | fault injection | what happens if this dependency fails? (errors, HTTP and gRPC statuses, latency, hangs, aborts, corrupted responses at seeded rates; off by default, switched at runtime; targeted by predicate or share of keys) | [`fault`] ([`FaultLayer`]) |
//! | admin router | who flips the switch, and who did? (flags, breakers, modes, behind a token) | [`http::admin`] (feature `axum`) |
//! | shared state | what about several replicas? (rate limits, idempotency records and flags shared through Redis; fail open, fail closed or local when Redis is away) | [`redis`] (feature `redis`) |
//!
//! Hedging builds on the same shared core and arrives as its own module.
//!
//! # The shared core
//! - [`Rejection`]: one typed error for every refusal (timeout, circuit open, rate limited,
//!   overloaded, feature disabled, idempotency conflicts). Every parapet service has
//!   `Error = BoxError`; inner errors pass through untouched, so a stack of any depth and
//!   order is matched with one [`Rejection::from_box`], never `Error<Error<E>>`.
//! - [`clock::Clock`]: tokio's clock by default (so `tokio::time::pause` drives every
//!   layer), a [`clock::ManualClock`] under `test-util`.
//! - [`observe`]: every decision is one [`observe::Event`] to an [`observe::Observer`];
//!   the default writes `tracing` events with stable fields (`layer`, `name`, `outcome`,
//!   `key`, `state`, `retry_after_ms`).
//! - [`Mode`]: enforce, shadow (decide, report, let through) or off, switchable at runtime
//!   through a [`ModeHandle`].
//! - [`key`] (which bucket a request belongs to) and [`classify`] (what counts as a
//!   failure), shared by every layer.
//! - [`config`]: config structs derive `serde`, take durations as `"250ms"`-style
//!   strings and validate themselves into layers (`build() -> Result<_, ConfigError>`).
//!
//! # Metrics
//! With the `metrics` feature, the default observer of every layer also records through
//! the [`metrics`](https://docs.rs/metrics) facade (install any recorder, e.g.
//! `metrics-exporter-prometheus`), and the [`logging`] layer counts requests. Labels are
//! bounded: layer names you chose, kinds, outcomes, route templates — never a raw path,
//! IP, key or user.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `parapet_events_total` | counter | `layer`, `name`, `outcome` (every [`observe::Event`]) |
//! | `parapet_rejections_total` | counter | `layer`, `name`, `kind` (enforced refusals) |
//! | `parapet_circuit_breaker_state` | gauge | `name` (0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics-only) |
//! | `parapet_fallbacks_total` | counter | `name`, `source`, `trigger` |
//! | `parapet_flag_gated_total` | counter | `name`, `flag`, `reason` (OpenFeature reason) |
//! | `parapet_flag_evaluations_total` | counter | `name`, `flag`, `reason` (every gate evaluation; handles registered at a gate's first evaluation, so install the recorder at startup) |
//! | `parapet_retries_total` | counter | `name` (retry attempts started, the first call not included) |
//! | `parapet_retry_calls_total` | counter | `name`, `result` (`succeeded_without_retry`, `succeeded_with_retry`, `failed_without_retry`, `failed_with_retry`) |
//! | `parapet_cache_requests_total` | counter | `name`, `result` (`hit`, `miss`, `stale_served`, `coalesced`) |
//! | `parapet_cache_not_stored_total` | counter | `name`, `reason` |
//! | `parapet_bulkhead_limit` | gauge | `name` (after each change through the handle) |
//! | `parapet_backend_up` | gauge | `name` (a shared Redis backend: 0 when it goes down, 1 when it recovers) |
//! | `parapet_requests_total` | counter | `method`, `route`, `status`, `outcome` |
//! | `parapet_request_duration_seconds` | histogram | `method`, `route`, `outcome` |
//!
//! # Ordering
//! The first layer added to a `ServiceBuilder` sees the request first. The recommended
//! server stack, outermost first:
//!
//! 1. [`logging::LoggingLayer`] — sees every answer, refusals included,
//! 2. [`http::RejectionResponseLayer`] — everything below may refuse; this turns refusals
//!    into responses, so the stack needs no `HandleErrorLayer`,
//! 3. [`RateLimitLayer`], [`FeatureGateLayer`], idempotency (refuse cheaply, before any
//!    work), and a [`BulkheadLayer`] around the expensive part,
//! 4. [`fallback::FallbackLayer`] — outside the breaker and the timeout, so it answers for
//!    an open circuit and a timeout alike; then a [`CacheLayer`] (feature `http`) inside
//!    it, so a fallback answer is never cached and the cache can be its last known good,
//!    and outside the rest, so a hit costs no retry, breaker or timeout work,
//! 5. [`RetryLayer`] (inside an overall [`TimeoutLayer`] when the call needs a deadline:
//!    retries never start an attempt past it), then
//!    [`circuit_breaker::CircuitBreakerLayer`] (one breaker per dependency: an open
//!    circuit ends retrying through its `retry_after`),
//! 6. [`timeout::TimeoutLayer`] — inside the breaker, so the breaker counts a timeout as a
//!    failure (a future dropped from outside counts as cancelled, not failed),
//! 7. the service.
//!
//! ```
//! # #[cfg(feature = "http")] {
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_parapet::{fallback::FallbackLayer, http::RejectionResponseLayer, timeout::TimeoutLayer};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let handler = tower::service_fn(|_req: http::Request<String>| async {
//!     std::future::pending::<Result<http::Response<String>, std::convert::Infallible>>().await
//! });
//! let mut svc = ServiceBuilder::new()
//!     .layer(RejectionResponseLayer::new())
//!     .layer(TimeoutLayer::new(Duration::from_millis(10)))
//!     .service(handler);
//! let res = svc.ready().await?.call(http::Request::new(String::new())).await?;
//! assert_eq!(res.status(), 504);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! # }
//! ```
//!
//! # Features
//! | feature | default | what it adds |
//! |---|---|---|
//! | `http` | yes | [`http`]: rejections as HTTP/gRPC responses; deadline headers; HTTP classifiers, keys (header, route, client IP behind proxies) and last-known-good snapshots; `RateLimit` fields on admitted responses |
//! | `flag-files` | yes | [`flags::FileSource`]: flags from JSON or TOML files, watched for changes (adds `toml` and tokio's `rt`) |
//! | `axum` | | `IntoResponse` for [`Rejection`]; [`http::admin`], the flags admin router |
//! | `tonic` | | `From<Rejection> for tonic::Status`, [`grpc::status_from_error`] |
//! | `test-util` | | [`clock::ManualClock`] to test configurations |
//! | `metrics` | | metrics through the `metrics` facade (see [Metrics](#metrics)) |
//! | `redis` | | [`redis`]: distributed rate limits, a Redis idempotency store, flags propagated by pub/sub (adds the `redis` client; implies `http`) |
//! | `full` | | all of the above |
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bulkhead;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod cache;
pub mod circuit_breaker;
pub mod classify;
pub mod clock;
pub mod config;
pub mod error;
pub mod fallback;
pub mod fanout;
pub mod fault;
pub mod flags;
pub mod grpc;
pub mod health;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod idempotency;
pub mod key;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod logging;
#[cfg(feature = "metrics")]
mod metrics_observer;
pub mod mode;
pub mod observe;
mod parse;
pub mod rate_limit;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod retry;
pub mod timeout;

pub use bulkhead::BulkheadLayer;
#[cfg(feature = "http")]
pub use cache::CacheLayer;
pub use circuit_breaker::CircuitBreakerLayer;
pub use error::{BoxError, ConfigError, RateLimitInfo, Rejection, RejectionKind, RejectionKinds};
pub use fallback::FallbackLayer;
pub use fault::FaultLayer;
pub use flags::FeatureGateLayer;
#[cfg(feature = "http")]
pub use http::RejectionResponseLayer;
#[cfg(feature = "http")]
pub use idempotency::IdempotencyLayer;
pub use mode::{Mode, ModeHandle};
pub use rate_limit::RateLimitLayer;
pub use retry::RetryLayer;
pub use timeout::{Deadline, TimeoutLayer};

#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
