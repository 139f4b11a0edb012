//! The distributed rate limiter and idempotency store against their in-process
//! counterparts, on a `redis-server` the bench starts on a loopback port (skipped with a
//! message when the binary is missing).
//!
//! Cases (one request each, awaited on a current-thread tokio runtime):
//! - `redis_ping`: one `PING` round trip on a multiplexed connection, the floor of any
//!   Redis-backed check;
//! - `rate_limit/in_process` and `rate_limit/redis`: `RateLimitLayer` unkeyed, and the
//!   same layer `.shared(backend)` (one GCRA script call per request, by hash);
//! - `rate_limit/redis_keyed_10k`: keyed by a `u64` cycling through 10 000 keys;
//! - `idempotency/in_process` and `idempotency/redis`: a `POST` with a fresh
//!   `Idempotency-Key` through the idempotency layer (claim, run, store the response),
//!   memory store and Redis store.
//!
//! Run: `cargo bench --bench redis --features redis -- --warm-up-time 1 --measurement-time 3`.

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::Echo;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, ServiceExt, service_fn};
use tower_parapet::idempotency::IdempotencyLayer;
use tower_parapet::key::{self, KeyError};
use tower_parapet::rate_limit::{Quota, RateLimitLayer};
use tower_parapet::redis::{RedisBackend, RedisIdempotencyStore};

fn benches(c: &mut Criterion) {
    let Some(server) = redis_server::RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = rt.block_on(async {
        RedisBackend::builder(server.url())
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap()
    });
    let mut g = c.benchmark_group("redis");

    let client = redis::Client::open(server.url()).unwrap();
    let conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    g.bench_function("redis_ping", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                pong
            }
        })
    });

    let huge = Quota::per_second(1_000_000);
    let local = RateLimitLayer::new(huge.clone()).observer(()).layer(Echo);
    g.bench_function("rate_limit/in_process", |b| {
        b.to_async(&rt).iter(|| local.clone().oneshot(1))
    });
    let shared = RateLimitLayer::new(huge.clone())
        .observer(())
        .shared(backend.clone())
        .layer(Echo);
    g.bench_function("rate_limit/redis", |b| {
        b.to_async(&rt).iter(|| shared.clone().oneshot(1))
    });
    let by_value = key::from_fn(|n: &u64| Ok::<_, KeyError>(*n));
    let keyed = RateLimitLayer::keyed(by_value, huge)
        .observer(())
        .name("keyed")
        .shared(backend.clone())
        .layer(Echo);
    let mut k = 0u64;
    g.bench_function("rate_limit/redis_keyed_10k", |b| {
        b.to_async(&rt).iter(|| {
            k = (k + 7919) % 10_000;
            keyed.clone().oneshot(k)
        })
    });

    let handler = service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let memory = IdempotencyLayer::new().observer(()).layer(handler);
    let redis_store = IdempotencyLayer::new()
        .observer(())
        .store(RedisIdempotencyStore::new(backend))
        .layer(handler);
    let mut n = 0u64;
    let mut pay = move || {
        n += 1;
        Request::post("/pay")
            .header("idempotency-key", format!("k{n}"))
            .body(Full::new(Bytes::from_static(b"amount=1")))
            .unwrap()
    };
    g.bench_function("idempotency/in_process", |b| {
        b.to_async(&rt).iter(|| memory.clone().oneshot(pay()))
    });
    g.bench_function("idempotency/redis", |b| {
        b.to_async(&rt).iter(|| redis_store.clone().oneshot(pay()))
    });
    g.finish();
    drop(server);
}

criterion_group!(redis_benches, benches);
criterion_main!(redis_benches);
