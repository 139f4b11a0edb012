//! The idempotency layer: a request it lets pass (no key on a route where the key is
//! optional), and a replay (a retry answered from the store without calling the handler).
//!
//! One iteration builds an HTTP request (the same for every case, so its cost is in the
//! `bare` figure too), calls the service and polls its future once: every path measured
//! here is ready at once (the in-process store answers synchronously).
//! - `bare`: the handler alone;
//! - `no_key`: POST without `Idempotency-Key`, key optional (the default): a header
//!   lookup and a pass-through;
//! - `replay`: POST with a key whose response (a 200 of 64 bytes) is stored: read and
//!   fingerprint the body (SHA-256), look the record up, rebuild the response.
//!
//! Run: `cargo bench --bench idempotency`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_parapet::idempotency::IdempotencyLayer;

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
        ready(Ok(Response::new(Full::new(Bytes::from_static(
            &[b'x'; 64],
        )))))
    }
}

fn request(key: Option<&'static str>) -> Request<Full<Bytes>> {
    let mut req = Request::post("/pay").header("x-user-id", "alice");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(Full::new(Bytes::from_static(b"{\"amount\":4990}")))
        .unwrap()
}

fn one_call<S, B>(svc: &mut S, key: Option<&'static str>) -> bool
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    svc.call(black_box(request(key))).now_or_never().is_some()
}

fn idempotency(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("idempotency");

    let mut bare = Handler;
    group.bench_function("bare", |b| b.iter(|| one_call(&mut bare, None)));

    let mut layered = IdempotencyLayer::new().observer(()).layer(Handler);
    group.bench_function("no_key", |b| b.iter(|| one_call(&mut layered, None)));

    assert!(
        one_call(&mut layered, Some("order-1042")),
        "first call stores"
    );
    group.bench_function("replay", |b| {
        b.iter(|| one_call(&mut layered, Some("order-1042")))
    });
    group.finish();
}

criterion_group!(benches, idempotency);
criterion_main!(benches);
