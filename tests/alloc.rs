//! Contract 9: the admission paths make no allocation in their common case.
//!
//! A counting global allocator (this test binary only) counts the allocations made on
//! this thread while calling a wrapped service whose response is ready at once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt;
use tower::{Layer, Service};
use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
use tower_parapet::rate_limit::Quota;
use tower_parapet::{FallbackLayer, RateLimitLayer, TimeoutLayer};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

fn allocations_during(mut f: impl FnMut()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

/// Admitted calls through `svc` (answering `Echo`'s way) after a warm-up: how many
/// allocations 1 000 of them made.
fn allocations_per_1000_calls<S>(svc: &mut S) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut one_call = |i| {
        assert!(svc.poll_ready(&mut cx).is_ready());
        assert_eq!(svc.call(i).now_or_never().unwrap().unwrap(), i);
    };
    // Warm up (lazily initialised runtime, tracing and moka state).
    for i in 0..16 {
        one_call(i);
    }
    allocations_during(|| {
        for i in 0..1_000 {
            one_call(i);
        }
    })
}

#[test]
fn timeout_admission_allocates_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut svc = TimeoutLayer::new(Duration::from_secs(1)).layer(Echo);
    let mut cx = Context::from_waker(Waker::noop());
    let mut one_call = |i| {
        assert!(svc.poll_ready(&mut cx).is_ready());
        assert_eq!(svc.call(i).now_or_never().unwrap().unwrap(), i);
    };
    // Warm up (lazily initialised runtime and tracing state).
    for i in 0..16 {
        one_call(i);
    }
    let n = allocations_during(|| {
        for i in 0..1_000 {
            one_call(i);
        }
    });
    assert_eq!(n, 0, "allocations in 1000 admitted calls");
}

#[test]
fn fallback_success_path_allocates_nothing() {
    let mut svc = FallbackLayer::value(0u64).layer(Echo);
    let n = allocations_per_1000_calls(&mut svc);
    assert_eq!(n, 0, "allocations in 1000 successful calls");
}

#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("down")
    }
}

impl std::error::Error for Down {}

/// Closed state, count and time windows, slow calls measured: admission and recording
/// allocate nothing, failures included (they change the window's totals).
#[test]
fn circuit_breaker_closed_path_allocates_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    for window in [
        SlidingWindow::count(100),
        SlidingWindow::time(Duration::from_secs(60)),
    ] {
        let layer = CircuitBreakerLayer::builder()
            .sliding_window(window)
            .slow_call_duration(Duration::from_secs(1))
            .failure_rate_threshold(100)
            .observer(())
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut ok = layer.layer(Echo);
        // A zero-sized error boxes without allocating, so only the layer is counted.
        let mut failing = layer.layer(tower::service_fn(|_: u64| ready(Err::<u64, _>(Down))));
        let mut cx = Context::from_waker(Waker::noop());
        let mut one_round = |i| {
            assert!(ok.poll_ready(&mut cx).is_ready());
            assert_eq!(ok.call(i).now_or_never().unwrap().unwrap(), i);
            assert!(failing.poll_ready(&mut cx).is_ready());
            assert!(failing.call(i).now_or_never().unwrap().is_err());
        };
        for i in 0..16 {
            one_round(i);
        }
        let n = allocations_during(|| {
            for i in 0..1_000 {
                one_round(i);
            }
        });
        assert_eq!(n, 0, "allocations in 2000 calls ({window:?})");
        assert_eq!(handle.metrics().failure_rate, Some(50.0));
    }
}

#[test]
fn unkeyed_rate_limit_admission_allocates_nothing() {
    // Two quotas, so the path that asks several of them is counted too.
    let mut svc = RateLimitLayer::new(Quota::per_second(1_000_000_000))
        .quota(Quota::per_hour(1_000_000_000))
        .layer(Echo);
    let n = allocations_per_1000_calls(&mut svc);
    assert_eq!(n, 0, "allocations in 1000 admitted calls");
}

/// A boolean flag that is on, and a rollout whose targeting key the request carries as a
/// `&'static str`: evaluation reads the store's snapshot without a lock or an allocation.
#[test]
fn feature_gate_evaluation_allocates_nothing() {
    let flags = FlagStore::with_observer("flags", ());
    flags.set("boolean", FlagDef::boolean(true)).unwrap();
    flags.set("rollout", FlagDef::rollout(99)).unwrap();
    let mut boolean = FeatureGateLayer::new(&flags, "boolean")
        .observer(())
        .layer(Echo);
    const USERS: [&str; 2] = ["user-3", "user-7"];
    let mut rollout = FeatureGateLayer::new(&flags, "rollout")
        .observer(())
        .targeting_key(tower_parapet::key::from_fn(|i: &u64| {
            Ok::<_, tower_parapet::key::KeyError>(USERS[(*i % 2) as usize])
        }))
        .layer(Echo);
    let mut cx = Context::from_waker(Waker::noop());
    let mut one_round = |i| {
        assert!(boolean.poll_ready(&mut cx).is_ready());
        assert_eq!(boolean.call(i).now_or_never().unwrap().unwrap(), i);
        assert!(rollout.poll_ready(&mut cx).is_ready());
        assert_eq!(rollout.call(i).now_or_never().unwrap().unwrap(), i);
    };
    for i in 0..16 {
        one_round(i);
    }
    let n = allocations_during(|| {
        for i in 0..1_000 {
            one_round(i);
        }
    });
    assert_eq!(n, 0, "allocations in 2000 gated calls");
}

#[test]
fn the_counter_counts() {
    let n = allocations_during(|| drop(std::hint::black_box(Box::new(1u64))));
    assert_eq!(n, 1);
}

/// The bulkhead's admission (one compare-and-swap) and release, below the limit.
#[test]
fn bulkhead_admission_allocates_nothing() {
    let layer = tower_parapet::BulkheadLayer::builder()
        .max_concurrent(4)
        .observer(())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Echo);
    let n = allocations_per_1000_calls(&mut svc);
    assert_eq!(n, 0, "allocations in 1000 admitted calls");
    assert_eq!(handle.in_flight(), 0);
}

/// The retry layer's success path for a `Clone` request: the budget's deposit (one clock
/// read, one compare-and-swap), the first attempt, the classification and the completion
/// event allocate nothing.
#[test]
fn retry_success_path_allocates_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let layer = tower_parapet::RetryLayer::builder()
        .observer(())
        .build()
        .unwrap();
    let budget = layer.budget().unwrap();
    let mut svc = layer.layer(Echo);
    let n = allocations_per_1000_calls(&mut svc);
    assert_eq!(n, 0, "allocations in 1000 successful calls");
    assert_eq!(budget.retries(), 0);
}

/// A cache hit allocates only the response it returns: its header map (cloned from the
/// stored copy). The key is built in a per-thread buffer, the body is a shared `Bytes`,
/// `Age` comes from a table, no extension is set, and the future is not boxed.
#[cfg(feature = "http")]
#[test]
fn cache_hit_allocates_only_the_response() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tower_parapet::CacheLayer;

    #[derive(Clone, Copy)]
    struct Products;

    impl Service<Request<Full<Bytes>>> for Products {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            let mut res = Response::new(Full::new(Bytes::from_static(b"[\"tea\"]")));
            res.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            ready(Ok(res))
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut svc = CacheLayer::builder()
        .observer(())
        .build()
        .unwrap()
        .layer(Products);
    let mut cx = Context::from_waker(Waker::noop());
    let get = || Request::get("/products").body(Full::default()).unwrap();
    let mut call = |req| {
        let _ = svc.poll_ready(&mut cx);
        svc.call(req).now_or_never().expect("ready").expect("ok")
    };
    let first = rt.block_on(async { call(get()) });
    let headers = first.headers().clone();
    drop(first);
    // Warm up: the key buffer, the table of ages.
    drop(call(get()));

    let req = get();
    // The first hits may let moka run its housekeeping.
    for _ in 0..5 {
        drop(call(req.clone()));
    }
    let mut hit = None;
    let during_hit = allocations_during(|| hit = Some(call(req.clone())));
    let hit = hit.unwrap();
    assert_eq!(hit.headers()["age"], "0");
    let header_clone = allocations_during(|| drop(std::hint::black_box(headers.clone())));
    let req_clone = allocations_during(|| drop(std::hint::black_box(req.clone())));
    assert!(
        during_hit <= header_clone + req_clone,
        "hit: {during_hit}, header map clone: {header_clone}, request clone: {req_clone}"
    );
}
