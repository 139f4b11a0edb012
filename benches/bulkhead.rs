//! The bulkhead's admission path below the limit: take a slot, call, give it back.
//!
//! One iteration = `poll_ready` + `call` + one poll of the response future (ready at
//! once) on a trivial inner service.
//! - `bare`: the inner service alone;
//! - `bulkhead`: a bulkhead of 64 (one compare-and-swap to admit, one `fetch_sub` to
//!   release, plus the shared `Arc`'s count);
//! - `bulkhead_waiting_enabled`: the same with `max_wait` set (the wait is never taken
//!   below the limit; this shows it costs nothing until then);
//! - `two_threads/*`: two threads each making `iters` calls through clones of one
//!   service sharing one bulkhead; the time reported is wall time / `iters`.
//!
//! Run: `cargo bench --bench bulkhead`.

mod common;
use common::{Echo, one_call, two_threads};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower_parapet::bulkhead::BulkheadLayer;

fn admission(c: &mut Criterion) {
    let mut group = c.benchmark_group("bulkhead");
    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| one_call(&mut bare, 1)));

    let layer = BulkheadLayer::builder()
        .max_concurrent(64)
        .observer(())
        .build()
        .unwrap();
    let mut svc = layer.layer(Echo);
    group.bench_function("bulkhead", |b| b.iter(|| one_call(&mut svc, 1)));

    let waiting = BulkheadLayer::builder()
        .max_concurrent(64)
        .max_wait(Duration::from_millis(100))
        .observer(())
        .build()
        .unwrap();
    let mut svc = waiting.layer(Echo);
    group.bench_function("bulkhead_waiting_enabled", |b| {
        b.iter(|| one_call(&mut svc, 1))
    });

    group.bench_function("two_threads/bare", |b| {
        b.iter_custom(|iters| two_threads(&Echo, iters))
    });
    let shared = layer.layer(Echo);
    group.bench_function("two_threads/bulkhead", |b| {
        b.iter_custom(|iters| two_threads(&shared, iters))
    });
    group.finish();
}

criterion_group!(benches, admission);
criterion_main!(benches);
