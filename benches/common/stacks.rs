//! The axum handler and the stacks around it, shared by `benches/stack.rs` and
//! `examples/loopback_server.rs` so both measure the same thing.
//!
//! - [`routes`]: the bare router, `GET /products` answering a static 15-byte body.
//! - [`parapet_stack`]: DESIGN.md's recommended HTTP stack, outermost first: logging
//!   (request id in and out) → rejection-to-response → rate limit (unkeyed, 10⁹/s) →
//!   feature gate (boolean flag, on) → idempotency (a GET: not guarded) → fallback
//!   (answers `[]` for a failure) → circuit breaker (HTTP classifier: 5xx and errors
//!   fail) → timeout (2 s, shortened by an incoming deadline header).
//! - [`peer_stack`]: the closest stack assembled from tower-http, tower_governor and
//!   tower-resilience, outermost first: `SetRequestId` (x-request-id, UUID v4) →
//!   `TraceLayer` (HTTP spans) → `PropagateRequestId` → tower_governor `GovernorLayer`
//!   (one global key, 10⁹/s, answers 429 itself) → axum `HandleErrorLayer` (turns the
//!   breaker's errors into `[]`, standing in for the fallback) → tower-resilience circuit
//!   breaker (5xx responses count as failures) → tower-http `TimeoutLayer` (2 s, answers
//!   504 so the breaker counts it).
#![allow(dead_code)]

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::http::{Response, StatusCode};
use axum::routing::get;
use tower::ServiceBuilder;
use tower_parapet::circuit_breaker::CircuitBreakerLayer;
use tower_parapet::classify::ServerErrorsAsFailures;
use tower_parapet::fallback::{self, FallbackLayer};
use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::idempotency::IdempotencyLayer;
use tower_parapet::logging::LoggingLayer;
use tower_parapet::rate_limit::Quota;
use tower_parapet::timeout::{HttpDeadline, TimeoutLayer};
use tower_parapet::{BoxError, RateLimitLayer};

/// The handler alone behind axum's router.
pub(crate) fn routes() -> Router {
    Router::new().route("/products", get(|| async { "[\"lamp\",\"chair\"]" }))
}

/// The flag store of the feature gate: `catalogue`, a boolean flag, on.
fn flags() -> FlagStore {
    let flags = FlagStore::with_observer("flags", ());
    flags.set("catalogue", FlagDef::boolean(true)).unwrap();
    flags
}

// Each layer of the recommended stack as configured here (no-op observers).
fn rejection() -> RejectionResponseLayer {
    RejectionResponseLayer::new().observer(())
}

fn rate_limit() -> RateLimitLayer {
    RateLimitLayer::new(Quota::per_second(1_000_000_000)).observer(())
}

fn gate(flags: &FlagStore) -> FeatureGateLayer {
    FeatureGateLayer::new(flags, "catalogue").observer(())
}

fn idempotency() -> IdempotencyLayer {
    IdempotencyLayer::new().observer(())
}

type AnswerEmpty = fn(fallback::Failure<Response<Body>>) -> Result<Response<Body>, BoxError>;

fn fallback() -> FallbackLayer<fallback::FromFn<AnswerEmpty>> {
    FallbackLayer::new(fallback::from_fn(
        (|_| Ok(Response::new(Body::from("[]")))) as AnswerEmpty,
    ))
}

fn breaker() -> CircuitBreakerLayer<ServerErrorsAsFailures> {
    CircuitBreakerLayer::http().observer(()).build().unwrap()
}

fn timeout() -> TimeoutLayer<Duration, HttpDeadline> {
    TimeoutLayer::new(Duration::from_secs(2))
        .deadline(HttpDeadline::new())
        .observer(())
}

/// The recommended parapet stack around [`routes`] (no-op observers).
pub(crate) fn parapet_stack() -> Router {
    let flags = flags();
    routes().layer(
        ServiceBuilder::new()
            .layer(LoggingLayer::new())
            .layer(rejection())
            .layer(rate_limit())
            .layer(gate(&flags))
            .layer(idempotency())
            .layer(fallback())
            .layer(breaker())
            .layer(timeout()),
    )
}

/// One layer of [`parapet_stack`], configured as there, alone around [`routes`]: for
/// measuring each layer's share (`loopback_server --stack only-<layer>`). `noop` is
/// `Router::layer` with a layer that does nothing (what axum's layering itself costs);
/// `logging` and `rejection` alone; every other layer sits inside the
/// rejection-to-response layer (its errors must become responses for axum), so its own
/// cost is its figure minus `rejection`'s.
pub(crate) fn single_layer(layer: &str) -> Option<Router> {
    let routes = routes();
    let with_answers = ServiceBuilder::new().layer(rejection());
    Some(match layer {
        "noop" => routes.layer(tower::layer::util::Identity::new()),
        "logging" => routes.layer(LoggingLayer::new()),
        "rejection" => routes.layer(rejection()),
        "rate_limit" => routes.layer(with_answers.layer(rate_limit())),
        "gate" => routes.layer(with_answers.layer(gate(&flags()))),
        "idempotency" => routes.layer(with_answers.layer(idempotency())),
        "fallback" => routes.layer(with_answers.layer(fallback())),
        "breaker" => routes.layer(with_answers.layer(breaker())),
        "timeout" => routes.layer(with_answers.layer(timeout())),
        _ => return None,
    })
}

/// tower-resilience's breaker classifier for HTTP: an error or a 5xx answer is a failure.
/// (`classify_response` takes a closure, which makes the layer not `Clone`, and axum's
/// `Router::layer` wants a `Clone` layer.)
#[derive(Clone, Copy)]
pub(crate) struct ServerErrors;

impl<B, E> tower_resilience::circuitbreaker::FailureClassifier<Response<B>, E> for ServerErrors {
    fn classify(&self, result: &Result<Response<B>, E>) -> bool {
        result
            .as_ref()
            .map_or(true, |res| res.status().is_server_error())
    }
}

/// The closest stack a user could assemble from tower-http, tower_governor and
/// tower-resilience around [`routes`].
pub(crate) fn peer_stack() -> Router {
    use tower_governor::GovernorLayer;
    use tower_governor::governor::GovernorConfigBuilder;
    use tower_governor::key_extractor::GlobalKeyExtractor;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::TraceLayer;
    use tower_resilience::circuitbreaker::{CircuitBreakerError, CircuitBreakerLayer};

    let governor = GovernorConfigBuilder::default()
        .key_extractor(GlobalKeyExtractor)
        .per_nanosecond(1)
        .burst_size(1_000_000_000)
        .finish()
        .unwrap();
    routes().layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(TraceLayer::new_for_http())
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(GovernorLayer::new(governor))
            .layer(HandleErrorLayer::new(
                |_: CircuitBreakerError<Infallible>| async { "[]" },
            ))
            .layer(
                CircuitBreakerLayer::builder()
                    .failure_classifier_type(ServerErrors)
                    .build(),
            )
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                Duration::from_secs(2),
            )),
    )
}
