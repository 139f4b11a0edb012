//! tower-parapet's layers next to their nearest peers, on the same trivial service, in
//! the same run.
//!
//! Every case uses the same harness: criterion's `to_async` on a current-thread runtime;
//! each iteration clones the service, awaits `ready`, calls it once and awaits the answer
//! (so the bare row includes that harness cost, and each layer's overhead is its row minus
//! the bare row). failsafe has no tower layer: its row is its synchronous `call` around
//! the same work.
//!
//! - timeout: parapet `TimeoutLayer` / tower `Timeout`
//! - breaker (closed): parapet `CircuitBreakerLayer` / tower-resilience / failsafe
//! - rate limit (never exhausted): parapet `RateLimitLayer` / governor `check()` /
//!   tower-resilience; tower's own `RateLimit` keeps its budget in the service value (a
//!   clone starts afresh), so it is compared in `peers_long_lived`: one instance kept and
//!   called again, next to parapet's limiter and the bare service in the same harness
//! - concurrency limit: parapet `BulkheadLayer` / tower `ConcurrencyLimit` /
//!   tower-resilience bulkhead
//! - retry (first attempt succeeds): parapet `RetryLayer` (default: retry budget; and
//!   without budget) / tower-resilience retry (default: no budget)
//! - fallback (inner succeeds): parapet `FallbackLayer::value` / tower-resilience
//!   `FallbackLayer::value`
//! - time limiter: tower-resilience `TimeLimiterLayer`, next to the timeout rows
//! - cache hit (needs the `http` feature, on by default): an HTTP handler answering 200
//!   with a 64-byte body, a prepared `GET` cloned per iteration (its cost is in
//!   `cache/bare`); parapet `CacheLayer` (keyed by method and URI) / tower-resilience
//!   `CacheLayer` keyed by the request's `Uri` (a clone of it per call), LRU, 10 000
//!   entries, 60 s TTL. The entry is stored before measuring, so every iteration hits.
//! - `two_threads/*`: breaker and limiter shared by two std threads, 10 000 calls each
//!   per sample, time per call each thread sees.
//!
//! Run: `cargo bench --bench peers`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use tower::{Layer, Service, ServiceExt};
use tower_parapet::bulkhead::BulkheadLayer;
use tower_parapet::circuit_breaker::CircuitBreakerLayer;
use tower_parapet::rate_limit::Quota;
use tower_parapet::{FallbackLayer, RateLimitLayer, RetryLayer, TimeoutLayer};

#[derive(Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

/// A service whose error is a real error type (tower-resilience wants one).
fn echo_io()
-> impl Service<u64, Response = u64, Error = std::io::Error, Future: Send> + Clone + Send {
    tower::service_fn(|req: u64| ready(Ok::<_, std::io::Error>(req)))
}

macro_rules! bench_async {
    ($group:expr, $rt:expr, $name:expr, $svc:expr) => {
        bench_async!($group, $rt, $name, $svc, 1u64)
    };
    ($group:expr, $rt:expr, $name:expr, $svc:expr, $req:expr) => {{
        let svc = $svc;
        $group.bench_function($name, |b| {
            b.to_async(&$rt).iter(|| {
                let svc = svc.clone();
                let req = $req;
                async move { black_box(svc.oneshot(black_box(req)).await.is_ok()) }
            })
        });
    }};
}

fn per_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let huge = 1_000_000_000;

    let mut g = c.benchmark_group("peers");
    bench_async!(g, rt, "bare", Echo);

    // Timeout.
    bench_async!(
        g,
        rt,
        "timeout/parapet",
        TimeoutLayer::new(Duration::from_secs(1))
            .observer(())
            .layer(Echo)
    );
    bench_async!(
        g,
        rt,
        "timeout/tower",
        tower::timeout::TimeoutLayer::new(Duration::from_secs(1)).layer(Echo)
    );
    bench_async!(
        g,
        rt,
        "timeout/tower_resilience_time_limiter",
        tower_resilience::timelimiter::TimeLimiterLayer::builder()
            .timeout_duration(Duration::from_secs(1))
            .build()
            .layer(echo_io())
    );

    // Retry: the first attempt succeeds.
    bench_async!(
        g,
        rt,
        "retry/parapet",
        RetryLayer::builder()
            .observer(())
            .build()
            .unwrap()
            .layer(Echo)
    );
    bench_async!(
        g,
        rt,
        "retry/parapet_no_budget",
        RetryLayer::builder()
            .no_budget()
            .observer(())
            .build()
            .unwrap()
            .layer(Echo)
    );
    bench_async!(
        g,
        rt,
        "retry/tower_resilience",
        tower_resilience::retry::RetryLayer::<u64, u64, std::io::Error>::builder()
            .build()
            .layer(echo_io())
    );

    // Fallback: the inner service succeeds, the fallback is not used.
    bench_async!(
        g,
        rt,
        "fallback/parapet",
        FallbackLayer::value(0u64).observer(()).layer(Echo)
    );
    bench_async!(
        g,
        rt,
        "fallback/tower_resilience",
        tower_resilience::fallback::FallbackLayer::<u64, u64, std::io::Error>::value(0)
            .layer(echo_io())
    );

    // Circuit breaker, closed.
    bench_async!(
        g,
        rt,
        "breaker/parapet",
        CircuitBreakerLayer::builder()
            .observer(())
            .build()
            .unwrap()
            .layer(echo_io())
    );
    bench_async!(
        g,
        rt,
        "breaker/tower_resilience",
        tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
            .build()
            .layer(echo_io())
    );
    let failsafe = failsafe::Config::new().build();
    g.bench_function("breaker/failsafe_sync", |b| {
        b.iter(|| black_box(failsafe.call(|| Ok::<_, ()>(black_box(1u64))).is_ok()))
    });

    // Rate limit, never exhausted.
    bench_async!(
        g,
        rt,
        "rate_limit/parapet",
        RateLimitLayer::new(Quota::per_second(huge))
            .observer(())
            .layer(Echo)
    );
    let governor =
        governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::new(huge).unwrap()));
    g.bench_function("rate_limit/governor_check_sync", |b| {
        b.iter(|| black_box(governor.check().is_ok()))
    });
    bench_async!(
        g,
        rt,
        "rate_limit/tower_resilience",
        tower_resilience::ratelimiter::RateLimiterLayer::per_second(huge as usize)
            .build()
            .layer(echo_io())
    );

    // Concurrency limit.
    bench_async!(
        g,
        rt,
        "bulkhead/parapet",
        BulkheadLayer::builder()
            .max_concurrent(64)
            .observer(())
            .build()
            .unwrap()
            .layer(Echo)
    );
    bench_async!(
        g,
        rt,
        "bulkhead/tower_concurrency_limit",
        tower::limit::ConcurrencyLimitLayer::new(64).layer(Echo)
    );
    bench_async!(
        g,
        rt,
        "bulkhead/tower_resilience",
        tower_resilience::bulkhead::BulkheadLayer::builder()
            .max_concurrent_calls(64)
            .build()
            .layer(echo_io())
    );
    #[cfg(feature = "http")]
    cache::hits(&mut g, &rt);
    g.finish();
}

/// Cache hits on an HTTP handler: both caches hold the one entry asked for.
#[cfg(feature = "http")]
mod cache {
    use super::*;
    use bytes::Bytes;
    use criterion::BenchmarkGroup;
    use criterion::measurement::WallTime;
    use http::{Request, Response};
    use http_body_util::Full;
    use tokio::runtime::Runtime;
    use tower_parapet::CacheLayer;

    #[derive(Clone, Copy)]
    struct Handler;

    impl Service<Request<Full<Bytes>>> for Handler {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            let mut res = Response::new(Full::new(Bytes::from_static(&[b'x'; 64])));
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            ready(Ok(res))
        }
    }

    pub(super) fn hits(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime) {
        let req = Request::get("/products?page=1")
            .body(Full::<Bytes>::default())
            .unwrap();
        bench_async!(g, *rt, "cache/bare", Handler, req.clone());

        let parapet = CacheLayer::builder()
            .ttl(Duration::from_secs(60))
            .max_entries(10_000)
            .observer(())
            .build()
            .unwrap()
            .layer(Handler);
        let peer = tower_resilience::cache::CacheLayer::builder()
            .max_size(10_000)
            .ttl(Duration::from_secs(60))
            .key_extractor(|req: &Request<Full<Bytes>>| req.uri().clone())
            .build()
            .unwrap()
            .layer(Handler);
        // Store the entry in both before measuring.
        rt.block_on(async {
            assert!(parapet.clone().oneshot(req.clone()).await.is_ok());
            assert!(peer.clone().oneshot(req.clone()).await.is_ok());
        });
        bench_async!(g, *rt, "cache/parapet_hit", parapet, req.clone());
        bench_async!(g, *rt, "cache/tower_resilience_hit", peer, req.clone());
    }
}

/// Two threads, `iters` calls each, each on its own current-thread runtime, through
/// clones of `svc`.
fn two_threads<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send,
    S::Future: Send,
{
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let svc = svc.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    barrier.wait();
                    let start = Instant::now();
                    rt.block_on(async {
                        for i in 0..iters {
                            let _ = black_box(svc.clone().oneshot(i).await.is_ok());
                        }
                    });
                    start.elapsed()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).max().unwrap()
    })
}

fn contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("peers_two_threads");
    g.bench_function("bare", |b| b.iter_custom(|n| two_threads(&Echo, n)));
    let parapet = CircuitBreakerLayer::builder()
        .observer(())
        .build()
        .unwrap()
        .layer(echo_io());
    g.bench_function("breaker/parapet", |b| {
        b.iter_custom(|n| two_threads(&parapet, n))
    });
    let peer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .layer(echo_io());
    g.bench_function("breaker/tower_resilience", |b| {
        b.iter_custom(|n| two_threads(&peer, n))
    });
    let parapet = RateLimitLayer::new(Quota::per_second(1_000_000_000))
        .observer(())
        .layer(Echo);
    g.bench_function("rate_limit/parapet", |b| {
        b.iter_custom(|n| two_threads(&parapet, n))
    });
    let peer = tower_resilience::ratelimiter::RateLimiterLayer::per_second(1_000_000_000)
        .build()
        .layer(echo_io());
    g.bench_function("rate_limit/tower_resilience", |b| {
        b.iter_custom(|n| two_threads(&peer, n))
    });
    g.finish();
}

/// One long-lived instance called again and again (no clone per call): the harness tower's
/// `RateLimit` needs, since its budget lives in the service value itself (a clone starts
/// afresh, so it cannot be compared in the cloning harness above). Each iteration awaits
/// `ready`, calls once and awaits the answer; the same instance serves every iteration.
fn long_lived(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let huge = 1_000_000_000;
    let mut g = c.benchmark_group("peers_long_lived");
    macro_rules! bench_kept {
        ($name:expr, $make:expr) => {{
            g.bench_function($name, |b| {
                b.to_async(&rt).iter_custom(|iters| async move {
                    // Made in the runtime (tower's `RateLimit` makes its timer when built),
                    // before the clock starts; the same instance serves every iteration.
                    let mut svc = $make;
                    let start = Instant::now();
                    for _ in 0..iters {
                        let ready = svc.ready().await.unwrap();
                        black_box(ready.call(black_box(1u64)).await.is_ok());
                    }
                    start.elapsed()
                })
            });
        }};
    }
    bench_kept!("bare", Echo);
    bench_kept!(
        "rate_limit/parapet",
        RateLimitLayer::new(Quota::per_second(huge))
            .observer(())
            .layer(Echo)
    );
    bench_kept!(
        "rate_limit/tower",
        tower::limit::RateLimitLayer::new(u64::from(huge), Duration::from_secs(1)).layer(Echo)
    );
    g.finish();
}

criterion_group!(benches, per_layer, contention, long_lived);
criterion_main!(benches);
