//! The response cache: a hit, a miss, and 100 concurrent misses on one key.
//!
//! - `bare`: the handler alone (a 200 with a 64-byte JSON body), called and polled once;
//! - `hit`: a fresh entry answers: key built, store looked up, response rebuilt from the
//!   copy with `Age`; the handler is not called; the future is ready at once;
//! - `miss`: a new key every iteration: the one call is led, its body buffered, the copy
//!   stored (the store stays at its 10 000-entry bound, so evictions are included);
//! - `coalesced_100`: 100 concurrent requests for one new key on a current-thread tokio
//!   runtime, the handler yielding once so the others arrive while it runs: one inner
//!   call, 99 waiters answered with copies. The figure is for all 100.
//!
//! Run: `cargo bench --bench cache`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_parapet::CacheLayer;

#[derive(Clone, Copy)]
struct Handler;

fn products() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(&[b'x'; 64])));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

impl Service<Request<Full<Bytes>>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        ready(Ok(products()))
    }
}

fn one_call<S, B>(svc: &mut S, req: Request<Full<Bytes>>) -> bool
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    svc.call(black_box(req)).now_or_never().is_some()
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("cache");
    let products_req = Request::get("/products?page=1")
        .body(Full::default())
        .unwrap();

    let mut bare = Handler;
    group.bench_function("bare", |b| {
        b.iter(|| one_call(&mut bare, products_req.clone()))
    });

    let mut cached = CacheLayer::builder()
        .observer(())
        .build()
        .unwrap()
        .layer(Handler);
    assert!(one_call(&mut cached, products_req.clone()), "stored");
    group.bench_function("hit", |b| {
        b.iter(|| one_call(&mut cached, products_req.clone()))
    });

    // Distinct keys, made before measuring.
    let paths: Vec<Request<Full<Bytes>>> = (0..100_000)
        .map(|i| {
            Request::get(format!("/products/{i}"))
                .body(Full::default())
                .unwrap()
        })
        .collect();
    let mut i = 0;
    group.bench_function("miss", |b| {
        b.iter(|| {
            i = (i + 1) % paths.len();
            one_call(&mut cached, paths[i].clone())
        })
    });

    static INNER_CALLS: AtomicU64 = AtomicU64::new(0);
    let slow = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        INNER_CALLS.fetch_add(1, Ordering::Relaxed);
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(products())
    });
    let coalescing = CacheLayer::builder()
        .observer(())
        .build()
        .unwrap()
        .layer(slow);
    let n = AtomicU64::new(0);
    group.bench_function("coalesced_100", |b| {
        b.iter(|| {
            let path = format!("/hot/{}", n.fetch_add(1, Ordering::Relaxed));
            rt.block_on(async {
                let calls = (0..100).map(|_| {
                    let req = Request::get(path.as_str()).body(Full::default()).unwrap();
                    coalescing.clone().oneshot(req)
                });
                let answers = futures_util::future::join_all(calls).await;
                black_box(answers.len())
            })
        })
    });
    group.finish();
    let rounds = n.load(Ordering::Relaxed);
    assert_eq!(
        INNER_CALLS.load(Ordering::Relaxed),
        rounds,
        "one inner call per 100 concurrent misses"
    );
}

criterion_group!(benches, cache);
criterion_main!(benches);
