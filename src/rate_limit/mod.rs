//! Rate limits: what if someone sends 10 000 requests?
//!
//! [`RateLimitLayer`] admits requests at the rate of its [`Quota`]s — globally, or per key
//! (client IP behind trusted proxies, API key, route, anything a
//! [`KeyExtractor`](crate::key::KeyExtractor) reads) — and refuses the rest with
//! [`Rejection::RateLimited`](crate::Rejection::RateLimited): through
//! [`RejectionResponseLayer`](crate::http::RejectionResponseLayer), HTTP 429 with
//! `Retry-After` (whole seconds, rounded up, never 0), the IETF `RateLimit-Policy` and
//! `RateLimit` fields and a problem+json body; on gRPC routes `RESOURCE_EXHAUSTED`.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_parapet::{Rejection, rate_limit::{Quota, RateLimitLayer}};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_parapet::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(Quota::per_second(2)))
//!     .service(service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) }));
//!
//! assert_eq!(svc.ready().await?.call(1).await?, 1);
//! assert_eq!(svc.ready().await?.call(2).await?, 2);
//! let err = svc.ready().await?.call(3).await.unwrap_err();
//! let Some(Rejection::RateLimited { retry_after, .. }) = Rejection::from_box(&err) else {
//!     panic!("a rate limit");
//! };
//! assert_eq!(*retry_after, Duration::from_millis(500));
//! tokio::time::advance(Duration::from_millis(500)).await;
//! assert_eq!(svc.ready().await?.call(4).await?, 4);
//! # Ok(())
//! # }
//! ```
//!
//! # Quotas
//! [`Quota::per_second(100)`](Quota::per_second) is 100 requests per second; also
//! [`per_minute`](Quota::per_minute), [`per_hour`](Quota::per_hour),
//! [`per_day`](Quota::per_day) and [`Quota::new(n, period)`](Quota::new), with an explicit
//! [`burst`](Quota::burst) and a [`name`](Quota::named). Admission is `governor`'s generic
//! cell rate algorithm: the quota refills continuously (one request's worth every
//! `period / count`), so there is no window edge where twice the quota gets through; in
//! any span of one period at most `count + burst` requests pass.
//!
//! Several quotas (e.g. 10 per second *and* 10 000 per day, with
//! [`RateLimitLayer::quota`]) are asked in order; a request is admitted only when all
//! admit it. When one refuses, what the quotas before it took for the request is given
//! back (their state is moved back by the request's weight), so a refused request costs
//! nothing — a client hammering the per-second limit does not burn its daily quota. The
//! `Retry-After` is the wait of the quota that refused; a later quota may then refuse
//! too, with its own wait (quotas after the refusing one are not asked).
//!
//! # Keys
//! [`RateLimitLayer::keyed`] keeps one state per key:
//! [`ClientIp`](crate::key::ClientIp) (the client behind trusted proxies:
//! `X-Forwarded-For` or `Forwarded` read from the right, skipping only trusted CIDRs,
//! ignored when the peer is not trusted; optional IPv6 /64 grouping),
//! [`PeerIp`](crate::key::PeerIp), [`Header`](crate::key::Header) (an API key),
//! [`Target`](crate::key::Target) (a route), [`key::from_fn`](crate::key::from_fn), or a
//! pair of them. A request whose key cannot be read shares one quota with the others
//! like it ([`MissingKey::Shared`]), or is not limited ([`MissingKey::Allow`]). The key
//! store is typed on first use; a layer used with two request types whose keys have
//! different types treats the second type's requests as having no key.
//!
//! # Bounded memory
//! A keyed limiter holds at most [`max_keys`](RateLimitLayer::max_keys) keys (default
//! 100 000; about 100 bytes each plus the key), in up to 64 shards:
//! - A key unseen for its quotas' refill time (`interval × burst`, the longest of them)
//!   is in the same state as a new key, so it is forgotten. Shards are swept of such keys
//!   one at a time from the call path (a full pass per refill time), and shrunk, without
//!   any task or call of yours; memory returns when traffic calms down.
//! - When a new key finds its shard full, idle keys go first; if none is idle, the least
//!   recently seen of 8 sampled keys is forgotten
//!   ([`Event::RateLimitKeyEvicted`](crate::observe::Event::RateLimitKeyEvicted)) and its
//!   quota starts afresh if it returns. So a full limiter never refuses a newcomer for
//!   lack of room; it becomes lenient towards its least active keys. A client hammering
//!   one key is seen constantly and is practically never the one evicted. Size
//!   `max_keys` above your real number of active clients; long quotas (per day) keep keys
//!   for that long.
//!
//! An attacker cycling through a million source addresses therefore holds the limiter at
//! `max_keys` entries, and they are gone one refill time after the flood stops.
//! [`RateLimitHandle`] tells the live key count and the evictions.
//!
//! # Weight and waiting
//! [`RateLimitLayer::weight`] charges a request `weight(req)` requests' worth (a bulk
//! call, a large upload); see [`Weight`] for 0 and for weights above the burst.
//! [`RateLimitLayer::max_wait`] holds a request (a tokio timer, so paused time drives it)
//! when the quota will admit it within that time, and refuses at once otherwise. Waiting
//! reserves nothing: after the wait the request asks again, and may wait again within
//! the same maximum ([`Event::RateLimitDelayed`](crate::observe::Event::RateLimitDelayed)
//! when it passes).
//!
//! # Shadow mode
//! In [`Mode::Shadow`](crate::Mode::Shadow) the layer decides and counts as usual, reports
//! each refusal as [`Event::RateLimited`](crate::observe::Event::RateLimited) with
//! `shadow: true` ("would have rate limited"), and lets the request through without
//! waiting. [`Mode::Off`](crate::Mode::Off) is a pass-through that counts nothing. The
//! mode is read once per call.
//!
//! # Events
//! Each refusal is one [`Event::RateLimited`](crate::observe::Event::RateLimited) with the
//! key's class (`"ip"`, `"header"`, `"route"`, `"global"`, `"composite"`, `"custom"`, or
//! [`RateLimitLayer::key_class`]) — never the key itself as a label. The tracing observer
//! writes the key as the `key` field (Debug) and adds `class`, `policy` and
//! `retry_after_ms`.
//!
//! # Errors
//! `Error = BoxError`: inner errors pass through untouched; the layer's own error is
//! [`Rejection::RateLimited`](crate::Rejection::RateLimited) with the wait and a
//! [`RateLimitInfo`](crate::RateLimitInfo) (quota name, `q`, `w`, `r = 0`, `t` = the wait:
//! GCRA never resets all at once, so "reset" is when the next request is admitted).
//! A period that is not a whole number of seconds is written in the `RateLimit-Policy`
//! field as the next whole second, with the count scaled down to match.
//!
//! # Shared state
//! Quota states live in an `Arc` made with the layer: every service it builds and every
//! clone (axum clones services per request; `Router::layer` shares the layer across
//! routes) count against the same quotas. Setters rebuild that state, so configure the
//! layer before making services. The unkeyed path takes no lock and makes no allocation:
//! an atomic load for the mode, then per quota one clock read and one compare-and-swap
//! (`tests/alloc.rs` counts). A keyed call hashes its key and takes a shard's read lock;
//! a new key takes the write lock and allocates its state.
//!
//! # Backpressure
//! `poll_ready` forwards the inner service's readiness only; the decision is made in
//! `call`, and a refusal is a future that is ready at once (never `Pending`). The service
//! needs `S: Clone`: a request that waits takes the ready inner service with it (leaving a
//! clone in its place) and calls it after the wait.
//!
//! # Panics
//! A waiting request needs a Tokio runtime with the time driver; nothing else does. The
//! layer does not panic whatever the request carries (malformed forwarding headers fall
//! back to the peer address). Dropping a response future — waiting or not — releases
//! everything: an admitted request has already been counted, a waiting one holds nothing.
//!
//! # Differences from `tower::limit::RateLimit`
//! - Shared state: tower's limiter counts per service instance and is not `Clone`, so
//!   under axum each clone had its own limit; here every clone shares the quotas.
//! - Refuses at once with a typed rejection (429 + `Retry-After`) instead of making
//!   `poll_ready` pending; waiting is opt-in and bounded.
//! - GCRA with bursts instead of a fixed window; several quotas; per-key limits with
//!   bounded memory; weights; shadow mode; an event per refusal.

mod config;
mod future;
#[cfg(feature = "http")]
mod http;
mod layer;
mod quota;
#[cfg(feature = "redis")]
mod redis;
mod state;

#[cfg(feature = "http")]
pub use self::config::{ConfiguredKey, KeyValue};
pub use self::config::{KeyConfig, QuotaConfig, RateLimitConfig};
pub use self::future::ResponseFuture;
#[cfg(feature = "http")]
pub use self::http::RateLimitHeaders;
pub use self::layer::{
    DEFAULT_MAX_KEYS, MissingKey, NoHeaders, OnAdmitted, One, RateLimit, RateLimitHandle,
    RateLimitLayer, Weight,
};
pub use self::quota::Quota;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisRateLimit, RedisRateLimitLayer};
