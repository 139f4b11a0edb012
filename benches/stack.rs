//! Whole stacks around one axum handler, called in-process with `oneshot`, next to the
//! bare router: what a request pays for every layer at once, with parapet and with the
//! closest stack assembled from its peers.
//!
//! The handler and both stacks are in `benches/common/stacks.rs` (shared with
//! `examples/loopback_server.rs`). Every layer admits: the common path. Each router is
//! made ready with `with_state(())` first, as `axum::serve` does per connection: a
//! `Router<()>` called as a service without it applies every layer to the handler again on
//! each request, which earlier runs of this bench measured.
//!
//! - `bare_router`: axum routing + the handler.
//! - `full_stack` (parapet, DESIGN.md's order, outermost first): logging (request id
//!   generated, set on the request and the response; route template) → rejection-to-
//!   response → rate limit (unkeyed) → feature gate (boolean flag) → idempotency (a GET:
//!   not guarded) → fallback → circuit breaker (HTTP classifier) → timeout with
//!   `HttpDeadline` → handler.
//! - `peer_stack` (tower-http 0.6, tower_governor 0.8, tower-resilience 0.10, axum):
//!   `SetRequestId` (UUID v4) → `TraceLayer` → `PropagateRequestId` → `GovernorLayer`
//!   (one global key, like parapet's unkeyed limiter, so no peer address is needed) →
//!   `HandleErrorLayer` → tower-resilience circuit breaker (5xx responses fail) →
//!   tower-http `TimeoutLayer` (504) → handler.
//!
//! Where the two differ (what one stack does that the other cannot):
//! - No peer has a feature gate or an idempotency layer: `peer_stack` has neither, so it
//!   does less work per request than `full_stack` (the feature gate is ≈ 7 ns; the
//!   idempotency layer on a GET is a method check).
//! - Fallback: tower-resilience's fallback needs a `Clone` response, which axum's
//!   `Response<Body>` is not; `HandleErrorLayer` answering `[]` for the breaker's errors
//!   stands in for it, but it cannot answer for a 5xx response or a timeout (those are
//!   responses, not errors), which parapet's fallback does.
//! - Timeout: tower-http's is fixed; parapet's is shortened by an incoming deadline header
//!   and passes the remaining budget on (`HttpDeadline`).
//! - Rejections: parapet's refusals become status codes with `Retry-After` and a
//!   problem+json body in one place; in the peer stack each layer answers on its own
//!   (governor's 429, the timeout's 504, `HandleErrorLayer` for the breaker).
//! - Logging: parapet's logging layer generates a short id (SipHash) and emits spans and
//!   events only when a subscriber listens; tower-http's `SetRequestId` formats a UUID v4
//!   and `TraceLayer` builds its span per request (cheap with no subscriber).
//! - Rate limit clock: governor through tower_governor reads quanta's TSC clock; parapet
//!   reads tokio's (so paused-time tests drive it), ≈ 20 ns more per read on this VM.
//!
//! - Neither stack has a bulkhead (DESIGN.md's recommended stack has none); the bulkheads
//!   are compared layer by layer in `benches/peers.rs`.
//!
//! Build note: tower_governor's `axum` feature turns on axum's default features in every
//! dev build of this crate (features unify), `original-uri` among them, so the router
//! inserts an `OriginalUri` extension into every request. All three rows pay it.
//!
//! - `floor_stack`: the work the recommended stack must do for a request every layer
//!   admits, written as one service with one future and nothing else (no events, modes
//!   or configuration; see `floor_stack` in `benches/common/stacks.rs`): what the same work
//!   could cost at the least, for reading the other rows. `floor_without_id`: the same
//!   without the request id.
//!
//! A second group, `stack_single_layer`, measures each layer of the parapet stack alone
//! around the same router.
//!
//! Run: `cargo bench --bench stack --features axum`.

#[path = "common/stacks.rs"]
mod stacks;

use axum::body::Body;
use axum::http::Request;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

/// One router measured: made ready as `axum::serve` does once per connection (handlers
/// become routes with their layers applied now, not on every call: a `Router<()>` called
/// directly applies every layer to the handler again per request), checked to answer 200,
/// then called with `oneshot` on a clone per request, as hyper's adapter does.
fn bench_router(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    router: axum::Router,
) {
    let get = || Request::get("/products").body(Body::empty()).unwrap();
    let router: axum::Router = router.with_state(());
    let res = rt.block_on(router.clone().oneshot(get()));
    assert_eq!(res.unwrap().status(), 200, "{name}");
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| router.clone().oneshot(get()))
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn stack(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("stack");
    for (name, router) in [
        ("bare_router", stacks::routes()),
        ("full_stack", stacks::parapet_stack()),
        ("peer_stack", stacks::peer_stack()),
        ("floor_stack", stacks::floor_stack()),
        ("floor_without_id", stacks::floor_without_id()),
    ] {
        bench_router(&mut group, &rt, name, router);
    }
    group.finish();
}

/// Each layer of the parapet stack alone around the same router (see `single_layer` in
/// `benches/common/stacks.rs`): `noop` is what axum's `Router::layer` itself costs; every
/// layer after `rejection` sits inside the rejection-to-response layer, so its own share
/// is its figure minus `rejection`'s.
fn single_layers(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("stack_single_layer");
    for name in [
        "noop",
        "logging",
        "rejection",
        "rate_limit",
        "gate",
        "idempotency",
        "fallback",
        "breaker",
        "timeout",
    ] {
        bench_router(&mut group, &rt, name, stacks::single_layer(name).unwrap());
    }
    group.finish();
}

criterion_group!(benches, stack, single_layers);
criterion_main!(benches);
