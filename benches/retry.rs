//! The retry layer's success path: one attempt that succeeds.
//!
//! One iteration = `poll_ready` + `call` + one poll of the response future (ready at
//! once) on a trivial inner service that always succeeds, with a `Clone` request
//! (`CloneReplay`).
//! - `bare`: the inner service alone;
//! - `retry`: the default layer (3 attempts, a retry budget: one deposit per call);
//! - `retry_no_budget`: the same without a budget;
//! - `two_threads/*`: two threads each making `iters` calls through clones of one
//!   service sharing one budget; the time reported is wall time / `iters`.
//!
//! Run: `cargo bench --bench retry`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use tower::{Layer, Service};
use tower_parapet::retry::RetryLayer;

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

fn one_call<S: Service<u64>>(svc: &mut S, i: u64) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    svc.call(black_box(i)).now_or_never().is_some()
}

/// Two threads, `iters` calls each, through clones of `svc`.
fn two_threads<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send,
{
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        black_box(one_call(&mut svc, i));
                    }
                    start.elapsed()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).max().unwrap()
    })
}

fn success_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry");
    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| one_call(&mut bare, 1)));

    let layer = RetryLayer::builder().observer(()).build().unwrap();
    let mut svc = layer.layer(Echo);
    group.bench_function("retry", |b| b.iter(|| one_call(&mut svc, 1)));

    let no_budget = RetryLayer::builder()
        .no_budget()
        .observer(())
        .build()
        .unwrap();
    let mut svc = no_budget.layer(Echo);
    group.bench_function("retry_no_budget", |b| b.iter(|| one_call(&mut svc, 1)));

    group.bench_function("two_threads/bare", |b| {
        b.iter_custom(|iters| two_threads(&Echo, iters))
    });
    let shared = layer.layer(Echo);
    group.bench_function("two_threads/retry", |b| {
        b.iter_custom(|iters| two_threads(&shared, iters))
    });
    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
