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
//!   tower-resilience (tower's own `RateLimit` is per service, not shared by clones, so it
//!   needs a `Buffer` to compare, which measures the buffer: left out)
//! - concurrency limit: parapet `BulkheadLayer` / tower `ConcurrencyLimit` /
//!   tower-resilience bulkhead
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
use tower_parapet::{RateLimitLayer, TimeoutLayer};

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
    ($group:expr, $rt:expr, $name:expr, $svc:expr) => {{
        let svc = $svc;
        $group.bench_function($name, |b| {
            b.to_async(&$rt).iter(|| {
                let svc = svc.clone();
                async move { black_box(svc.oneshot(black_box(1u64)).await.is_ok()) }
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
    g.finish();
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

criterion_group!(benches, per_layer, contention);
criterion_main!(benches);
