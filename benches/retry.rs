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

mod common;
use common::{Echo, one_call, two_threads};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower_parapet::retry::RetryLayer;

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
