//! The circuit breaker's closed-state path: admission plus recording the outcome.
//!
//! One iteration = `poll_ready` + `call` + one poll of the response future (ready at
//! once) on a trivial inner service that always succeeds, so the breaker stays closed.
//! - `bare`: the inner service alone;
//! - `count_window`: default breaker (count window of 100, slow calls not measured);
//! - `time_window`: time window of 60 s in 60 buckets (reads the clock once per call);
//! - `count_window_slow_calls`: count window with a slow-call duration (reads the clock
//!   twice per call);
//! - `two_threads/*`: two threads each making `iters` calls through clones of one
//!   service sharing one breaker; the time reported is wall time / `iters`, i.e. the
//!   time per call seen by each thread while both run.
//!
//! Run: `cargo bench --bench circuit_breaker`.

mod common;
use common::{Echo, one_call, two_threads};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};

fn layer(window: SlidingWindow, slow: bool) -> CircuitBreakerLayer {
    let builder = CircuitBreakerLayer::builder()
        .sliding_window(window)
        .observer(());
    let builder = if slow {
        builder.slow_call_duration(Duration::from_secs(1))
    } else {
        builder
    };
    builder.build().unwrap()
}

fn closed_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("circuit_breaker");
    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| one_call(&mut bare, 1)));

    let mut count = layer(SlidingWindow::count(100), false).layer(Echo);
    group.bench_function("count_window", |b| b.iter(|| one_call(&mut count, 1)));

    let mut time = layer(SlidingWindow::time(Duration::from_secs(60)), false).layer(Echo);
    group.bench_function("time_window", |b| b.iter(|| one_call(&mut time, 1)));

    let mut slow = layer(SlidingWindow::count(100), true).layer(Echo);
    group.bench_function("count_window_slow_calls", |b| {
        b.iter(|| one_call(&mut slow, 1))
    });

    group.bench_function("two_threads/bare", |b| {
        b.iter_custom(|iters| two_threads(&Echo, iters))
    });
    let shared = layer(SlidingWindow::count(100), false).layer(Echo);
    group.bench_function("two_threads/count_window", |b| {
        b.iter_custom(|iters| two_threads(&shared, iters))
    });
    let shared = layer(SlidingWindow::time(Duration::from_secs(60)), false).layer(Echo);
    group.bench_function("two_threads/time_window", |b| {
        b.iter_custom(|iters| two_threads(&shared, iters))
    });
    group.finish();
}

criterion_group!(benches, closed_path);
criterion_main!(benches);
