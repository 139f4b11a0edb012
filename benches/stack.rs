//! The whole recommended HTTP stack around an axum handler, called in-process with
//! `oneshot`, next to the bare router: what a request pays for every layer at once.
//!
//! Stack, outermost first (DESIGN.md's order): logging → edge adapter → rate limit →
//! feature gate → idempotency (a GET: not guarded) → fallback → circuit breaker →
//! timeout → handler. Every layer admits: the common path.
//!
//! Run: `cargo bench --bench stack --features axum`.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{ServiceBuilder, ServiceExt};
use tower_parapet::RateLimitLayer;
use tower_parapet::circuit_breaker::CircuitBreakerLayer;
use tower_parapet::fallback::{self, FallbackLayer};
use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::idempotency::IdempotencyLayer;
use tower_parapet::logging::LoggingLayer;
use tower_parapet::rate_limit::Quota;
use tower_parapet::timeout::{HttpDeadline, TimeoutLayer};

fn routes() -> Router {
    Router::new().route("/products", get(|| async { "[\"lamp\",\"chair\"]" }))
}

fn full_stack() -> Router {
    let flags = FlagStore::with_observer("flags", ());
    flags.set("catalogue", FlagDef::boolean(true)).unwrap();
    routes().layer(
        ServiceBuilder::new()
            .layer(LoggingLayer::new())
            .layer(RejectionResponseLayer::new().observer(()))
            .layer(RateLimitLayer::new(Quota::per_second(1_000_000_000)).observer(()))
            .layer(FeatureGateLayer::new(&flags, "catalogue").observer(()))
            .layer(IdempotencyLayer::new().observer(()))
            .layer(FallbackLayer::new(fallback::from_fn(
                |_: fallback::Failure<axum::http::Response<Body>>| {
                    Ok::<_, tower_parapet::BoxError>(axum::http::Response::new(Body::from("[]")))
                },
            )))
            .layer(CircuitBreakerLayer::http().observer(()).build().unwrap())
            .layer(
                TimeoutLayer::new(Duration::from_secs(2))
                    .deadline(HttpDeadline::new())
                    .observer(()),
            ),
    )
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("stack");
    let bare = routes();
    group.bench_function("bare_router", |b| {
        b.to_async(&rt).iter(|| {
            bare.clone()
                .oneshot(Request::get("/products").body(Body::empty()).unwrap())
        })
    });
    let full = full_stack();
    group.bench_function("full_stack", |b| {
        b.to_async(&rt).iter(|| {
            full.clone()
                .oneshot(Request::get("/products").body(Body::empty()).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
