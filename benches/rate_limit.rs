//! The rate limiter's admission path, against `governor` itself.
//!
//! One iteration of a service case = `poll_ready` + `call` + one poll of the response
//! future (ready at once), every request admitted (the quota is far above the rate the
//! bench can reach). Cases:
//! - `bare`: the inner service alone;
//! - `governor_check`: `governor`'s raw `check()` on a direct limiter with its default
//!   (quanta) clock — the figure to stay within 1.5× of;
//! - `governor_check_tokio_clock`: the same check reading tokio's clock, as parapet does
//!   (so `tokio::time::pause` drives it);
//! - `layer_unkeyed`: `RateLimitLayer::new` around the bare service;
//! - `layer_keyed_10k`: keyed by a `u32`, cycling through 10 000 live keys;
//! - `layer_unkeyed_2_threads` / `governor_check_2_threads`: two threads sharing one
//!   limiter, time per call per thread;
//! - `rate_limit_outside_runtime/*`: the tokio-clock cases with no runtime entered (see
//!   [`outside_runtime`]), and `layer_off`, the layer in `Mode::Off` (its fixed cost).
//!
//! Run: `cargo bench --bench rate_limit -- --warm-up-time 1 --measurement-time 3`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use governor::nanos::Nanos;
use tower::{Layer, Service};
use tower_parapet::key::{self, KeyError};
use tower_parapet::rate_limit::{Quota, RateLimitLayer};

/// The cheapest possible inner service: answers at once.
#[derive(Clone, Copy)]
struct Echo;

impl Service<u32> for Echo {
    type Response = u32;
    type Error = Infallible;
    type Future = Ready<Result<u32, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        ready(Ok(req))
    }
}

fn one_call<S: Service<u32>>(svc: &mut S, i: u32) -> bool
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    matches!(svc.call(black_box(i)).now_or_never(), Some(Ok(_)))
}

/// A quota no bench can exhaust.
fn huge() -> Quota {
    Quota::per_second(1_000_000_000)
}

fn governor_quota() -> governor::Quota {
    governor::Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
}

/// governor's clock trait over tokio's clock, as parapet reads time.
#[derive(Clone)]
struct TokioClock(tokio::time::Instant);

impl governor::clock::Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let d = tokio::time::Instant::now().saturating_duration_since(self.0);
        Nanos::from(d.as_nanos() as u64)
    }
}

fn single_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("rate_limit");

    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| one_call(&mut bare, 1)));

    let raw = governor::RateLimiter::direct(governor_quota());
    group.bench_function("governor_check", |b| b.iter(|| raw.check().is_ok()));

    let tokio_clock = TokioClock(tokio::time::Instant::now());
    let raw_tokio = governor::RateLimiter::direct_with_clock(governor_quota(), tokio_clock);
    group.bench_function("governor_check_tokio_clock", |b| {
        b.iter(|| raw_tokio.check().is_ok())
    });

    let mut unkeyed = RateLimitLayer::new(huge()).observer(()).layer(Echo);
    group.bench_function("layer_unkeyed", |b| b.iter(|| one_call(&mut unkeyed, 1)));

    let by_value = key::from_fn(|n: &u32| Ok::<_, KeyError>(*n));
    let mut keyed = RateLimitLayer::keyed(by_value, huge())
        .observer(())
        .layer(Echo);
    for k in 0..10_000 {
        one_call(&mut keyed, k);
    }
    let mut k = 0u32;
    group.bench_function("layer_keyed_10k", |b| {
        b.iter(|| {
            k = (k + 7919) % 10_000;
            one_call(&mut keyed, k)
        })
    });
    group.finish();
}

/// The same cases outside a tokio runtime: the benches are built with tokio's
/// `test-util` (a dev-dependency feature), under which reading the clock inside a runtime
/// takes the runtime clock's mutex; outside one, and in builds without `test-util`, it is
/// the system's monotonic clock.
fn outside_runtime(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit_outside_runtime");
    let tokio_clock = TokioClock(tokio::time::Instant::now());
    let raw_tokio = governor::RateLimiter::direct_with_clock(governor_quota(), tokio_clock);
    group.bench_function("governor_check_tokio_clock", |b| {
        b.iter(|| raw_tokio.check().is_ok())
    });
    let mut unkeyed = RateLimitLayer::new(huge()).observer(()).layer(Echo);
    group.bench_function("layer_unkeyed", |b| b.iter(|| one_call(&mut unkeyed, 1)));
    // The layer's fixed cost: mode off, no quota asked.
    let mut off = RateLimitLayer::new(huge())
        .observer(())
        .mode(tower_parapet::Mode::Off)
        .layer(Echo);
    group.bench_function("layer_off", |b| b.iter(|| one_call(&mut off, 1)));
    group.finish();
}

/// Time per call per thread, with two threads each running `make()`'s closure `iters`
/// times against one shared limiter.
fn two_threads<M, F>(iters: u64, make: M) -> Duration
where
    M: Fn() -> F + Sync,
    F: FnMut() -> bool,
{
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut f = make();
                for _ in 0..iters {
                    black_box(f());
                }
            });
        }
    });
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit_2_threads");

    let raw = governor::RateLimiter::direct(governor_quota());
    group.bench_function("governor_check_2_threads", |b| {
        b.iter_custom(|iters| two_threads(iters, || || raw.check().is_ok()))
    });

    // No runtime is needed to admit: the clock falls back to the system's outside one.
    let layer = RateLimitLayer::new(huge()).observer(());
    group.bench_function("layer_unkeyed_2_threads", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let mut svc = layer.layer(Echo);
                move || one_call(&mut svc, 1)
            })
        })
    });
    group.finish();
}

criterion_group!(benches, single_thread, outside_runtime, contention);
criterion_main!(benches);
