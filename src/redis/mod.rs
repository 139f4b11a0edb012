//! State shared by several instances through Redis (feature `redis`).
//!
//! Several replicas behind a load balancer each keep their own in-process state: a limit
//! of 100/s becomes N × 100/s, a double click landing on two replicas runs twice, a kill
//! switch flipped on one replica leaves the others serving. Through one Redis:
//!
//! | part | what it shares | built with |
//! |---|---|---|
//! | distributed rate limit | GCRA quotas, evaluated atomically by one Lua script per check (sent by hash) | [`RateLimitLayer::shared`](crate::rate_limit::RateLimitLayer::shared) → [`RedisRateLimitLayer`] |
//! | idempotency records | claims (`SET NX` with a lease, renewed while the handler runs), fingerprints, stored responses | [`RedisIdempotencyStore`] with [`IdempotencyLayer::store`](crate::idempotency::IdempotencyLayer::store) |
//! | flags | the flag document, with changes pushed to every replica by pub/sub | [`RedisFlagSource`] |
//!
//! All of them use one [`RedisBackend`]: a connection that reconnects by itself, a bounded
//! time per call, and an up/down state shown in [health](crate::health::HealthRegistry::redis).
//!
//! # When Redis is unreachable or slow
//!
//! A call that fails or runs past the backend's timeout never hangs the request and never
//! panics. The backend emits [`Event::BackendDown`](crate::observe::Event::BackendDown)
//! once, each affected request emits
//! [`Event::BackendPolicyApplied`](crate::observe::Event::BackendPolicyApplied), and the
//! layer follows its [`FailurePolicy`]:
//!
//! | layer | policies | default |
//! |---|---|---|
//! | rate limit | `fail_open` (admit), `fail_closed` (503), `local` (the same quotas in process, per instance) | `local` |
//! | idempotency | `fail_open` (run without deduplication), `fail_closed` (503 + `Retry-After`, safe to retry) | `fail_closed` |
//! | flags | always keep the last flags loaded (also when Redis comes back empty); resubscribe and reload when Redis returns | — |
//!
//! Nothing needs a restart when Redis returns: the next call reconnects (and while it is
//! down the backend itself probes it every 500 ms, so health recovers without traffic),
//! the backend emits [`Event::BackendRecovered`](crate::observe::Event::BackendRecovered),
//! and layers use Redis again. Every error counts as down: a Redis that answers
//! `READONLY`, `LOADING` or `OOM` cannot serve the layers either.
//!
//! # Testing
//!
//! The crate's Redis tests start their own `redis-server` on a free loopback port (the
//! binary from `PATH`; `apt-get install redis-server`). Without the binary a plain
//! `cargo test` skips them with a message; the CI script installs it and makes them
//! mandatory (`PARAPET_REQUIRE_REDIS=1`).

mod backend;
mod flags;
mod idempotency;

pub use crate::rate_limit::RedisRateLimit;
pub use crate::rate_limit::RedisRateLimitLayer;
pub use backend::{BackendError, BackendStatus, RedisBackend, RedisBackendBuilder, SetupError};
pub use flags::{RedisFlagError, RedisFlagSource};
pub use idempotency::RedisIdempotencyStore;

pub use crate::config::FailurePolicy;
pub(crate) use backend::Arg;
