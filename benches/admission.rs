//! The admission path: what a layer adds to one call of a trivial inner service.
//!
//! Each iteration calls the service and polls the response future once (it is ready at
//! once), inside a tokio runtime so timers can be created. Compare:
//! - `bare`: the inner service alone;
//! - `parapet_timeout`: tower-parapet's `Timeout` (enforce mode, no deadline header);
//! - `tower_timeout`: `tower::timeout::Timeout`, the nearest peer.
//!
//! Run: `cargo bench --bench admission`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use tower::{Layer, Service};

/// The cheapest possible inner service: answers at once.
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

fn one_call<S: Service<u64>>(svc: &mut S, i: u64) -> bool
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    svc.call(black_box(i)).now_or_never().is_some()
}

fn admission(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("timeout");

    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| one_call(&mut bare, 1)));

    let mut parapet = tower_parapet::timeout::TimeoutLayer::new(Duration::from_secs(1))
        .observer(())
        .layer(Echo);
    group.bench_function("parapet_timeout", |b| b.iter(|| one_call(&mut parapet, 1)));

    let mut tower_timeout = tower::timeout::TimeoutLayer::new(Duration::from_secs(1)).layer(Echo);
    group.bench_function("tower_timeout", |b| {
        b.iter(|| one_call(&mut tower_timeout, 1))
    });
    group.finish();
}

criterion_group!(benches, admission);
criterion_main!(benches);
