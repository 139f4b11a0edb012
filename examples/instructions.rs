//! Drives N calls through one layer around a trivial service, for instruction counting
//! under `valgrind --tool=callgrind` (see `scripts/instructions.sh`): a noise-free figure
//! next to the criterion timings.
//!
//! ```sh
//! cargo run --release --example instructions -- breaker 100000
//! ```

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt;
use tower::{Layer, Service};
use tower_parapet::bulkhead::BulkheadLayer;
use tower_parapet::circuit_breaker::CircuitBreakerLayer;
use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
use tower_parapet::rate_limit::Quota;
use tower_parapet::{FallbackLayer, RateLimitLayer, TimeoutLayer};

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

fn drive<S: Service<u64>>(mut svc: S, n: u64) {
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..n {
        let _ = svc.poll_ready(&mut cx);
        black_box(svc.call(black_box(i)).now_or_never().is_some());
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let layer = args.next().unwrap_or_else(|| "bare".into());
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    match layer.as_str() {
        "bare" => drive(Echo, n),
        "timeout" => drive(
            TimeoutLayer::new(Duration::from_secs(1))
                .observer(())
                .layer(Echo),
            n,
        ),
        "breaker" => drive(
            CircuitBreakerLayer::builder()
                .observer(())
                .build()
                .expect("a breaker")
                .layer(Echo),
            n,
        ),
        "rate_limit" => drive(
            RateLimitLayer::new(Quota::per_second(1_000_000_000))
                .observer(())
                .layer(Echo),
            n,
        ),
        "bulkhead" => drive(
            BulkheadLayer::builder()
                .max_concurrent(64)
                .observer(())
                .build()
                .expect("a bulkhead")
                .layer(Echo),
            n,
        ),
        "flag" => {
            let flags = FlagStore::with_observer("flags", ());
            flags.set("on", FlagDef::boolean(true)).expect("a flag");
            drive(
                FeatureGateLayer::new(&flags, "on").observer(()).layer(Echo),
                n,
            );
        }
        "fallback" => drive(FallbackLayer::value(0u64).layer(Echo), n),
        other => {
            eprintln!(
                "unknown layer {other:?}: bare, timeout, breaker, rate_limit, bulkhead, flag, fallback"
            );
            std::process::exit(2);
        }
    }
}
