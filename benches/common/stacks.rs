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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::routing::get;
use bytes::Bytes;
use tower::{Service, ServiceBuilder};
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

/// The floor of the recommended stack's admitted path: the work its layers must do for a
/// request they all admit, written as one service with one future and no options: a
/// request id (taken from `x-request-id` or made from a counter; set on the request, in
/// its extensions and on the response), one clock read, a rate-limit check (GCRA on one
/// atomic, 10⁹/s), a flag check (one atomic load), a closed-circuit check (one atomic
/// load; one atomic add when the response is ready), the caller's `grpc-timeout` read and
/// a deadline extension, a timer made only if the handler waits. No events, no modes, no
/// configuration, no refusal answers worth the name: not a stack anyone should use, only
/// what a stack doing the same work in one piece could cost at the least.
pub(crate) fn floor_stack() -> Router {
    floor(true)
}

/// [`floor_stack`] without the request id: what the rest of its work costs.
pub(crate) fn floor_without_id() -> Router {
    floor(false)
}

fn floor(with_id: bool) -> Router {
    let shared = Arc::new(FloorShared {
        with_id,
        ids: AtomicU64::new(0),
        origin: tokio::time::Instant::now(),
        tat: AtomicU64::new(0),
        flag: AtomicBool::new(true),
        circuit: AtomicU64::new(0),
        calls: AtomicU64::new(0),
    });
    routes().layer(tower::layer::layer_fn(move |inner| Floor {
        inner,
        shared: shared.clone(),
    }))
}

struct FloorShared {
    with_id: bool,
    ids: AtomicU64,
    origin: tokio::time::Instant,
    tat: AtomicU64,
    flag: AtomicBool,
    circuit: AtomicU64,
    calls: AtomicU64,
}

#[derive(Clone)]
struct Floor<S> {
    inner: S,
    shared: Arc<FloorShared>,
}

#[derive(Clone)]
struct FloorRequestId(#[allow(dead_code)] HeaderValue);

#[derive(Clone, Copy)]
struct FloorDeadline(#[allow(dead_code)] tokio::time::Instant);

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

fn floor_id(n: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let word = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut digits = [b'0'; 32];
    for (i, digit) in digits[16..].iter_mut().enumerate() {
        *digit = HEX[((word >> ((15 - i) * 4)) & 0xf) as usize];
    }
    HeaderValue::from_maybe_shared(Bytes::from_owner(digits)).unwrap()
}

fn refused(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    res
}

impl<S> Service<Request<Body>> for Floor<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let shared = &self.shared;
        let id = shared.with_id.then(|| {
            let id = match req.headers().get(X_REQUEST_ID) {
                Some(id) => id.clone(),
                None => {
                    let id = floor_id(shared.ids.fetch_add(1, Ordering::Relaxed));
                    req.headers_mut().insert(X_REQUEST_ID, id.clone());
                    id
                }
            };
            req.extensions_mut().insert(FloorRequestId(id.clone()));
            id
        });
        let now = tokio::time::Instant::now();
        let t = u64::try_from(now.duration_since(shared.origin).as_nanos()).unwrap_or(u64::MAX);
        let mut tat = shared.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(t) + 1;
            if next - t > 1_000_000_000 {
                return FloorFuture::Refused {
                    answer: Some(refused(StatusCode::TOO_MANY_REQUESTS)),
                };
            }
            match shared
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(seen) => tat = seen,
            }
        }
        if !shared.flag.load(Ordering::Acquire) {
            return FloorFuture::Refused {
                answer: Some(refused(StatusCode::NOT_FOUND)),
            };
        }
        if shared.circuit.load(Ordering::Acquire) != 0 {
            return FloorFuture::Refused {
                answer: Some(refused(StatusCode::SERVICE_UNAVAILABLE)),
            };
        }
        let budget = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok()?.strip_suffix('m')?.parse().ok())
            .map_or(Duration::from_secs(2), Duration::from_millis);
        let at = now + budget.min(Duration::from_secs(2));
        req.extensions_mut().insert(FloorDeadline(at));
        FloorFuture::Running {
            inner: self.inner.call(req),
            sleep: None,
            at,
            id,
            shared: shared.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    #[project = FloorProj]
    enum FloorFuture<F> {
        Running {
            #[pin]
            inner: F,
            #[pin]
            sleep: Option<tokio::time::Sleep>,
            at: tokio::time::Instant,
            id: Option<HeaderValue>,
            shared: Arc<FloorShared>,
        },
        Refused { answer: Option<Response<Body>> },
    }
}

impl<F> Future for FloorFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FloorProj::Running {
                inner,
                mut sleep,
                at,
                id,
                shared,
            } => {
                if let Poll::Ready(Ok(mut res)) = inner.poll(cx) {
                    shared.calls.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = id.take() {
                        res.headers_mut().insert(X_REQUEST_ID, id);
                    }
                    return Poll::Ready(Ok(res));
                }
                if sleep.is_none() {
                    sleep.set(Some(tokio::time::sleep_until(*at)));
                }
                match sleep.as_pin_mut().map(|s| s.poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Ok(refused(StatusCode::GATEWAY_TIMEOUT))),
                    _ => Poll::Pending,
                }
            }
            FloorProj::Refused { answer } => Poll::Ready(Ok(answer
                .take()
                .unwrap_or_else(|| refused(StatusCode::SERVICE_UNAVAILABLE)))),
        }
    }
}
