//! Every layer in one axum stack, in the recommended order, added with `Router::layer` and
//! no `HandleErrorLayer`: the stack composes (one flat error type), and each layer's
//! refusal reaches the client as its own HTTP answer.
#![cfg(feature = "axum")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_parapet::RateLimitLayer;
use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use tower_parapet::fallback::{self, Failure, FallbackLayer, HeaderMark};
use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::idempotency::IdempotencyLayer;
use tower_parapet::logging::LoggingLayer;
use tower_parapet::rate_limit::Quota;
use tower_parapet::timeout::{HttpDeadline, TimeoutLayer};

type Response = axum::http::Response<Body>;

struct App {
    router: Router,
    flags: FlagStore,
    breaker: tower_parapet::circuit_breaker::CircuitBreakerHandle,
    calls: Arc<AtomicU32>,
}

fn app() -> App {
    let calls = Arc::new(AtomicU32::new(0));
    let flags = FlagStore::new();
    flags.set("checkout", FlagDef::boolean(true)).unwrap();
    let breaker = CircuitBreakerLayer::http()
        .name("checkout-db")
        .sliding_window(SlidingWindow::count(10))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let c = calls.clone();
    let router = Router::new()
        .route(
            "/checkout",
            post(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { (StatusCode::CREATED, "ordered") }
            }),
        )
        .route("/slow", get(std::future::pending::<&'static str>))
        .layer(
            ServiceBuilder::new()
                .layer(LoggingLayer::new())
                .layer(RejectionResponseLayer::new())
                .layer(RateLimitLayer::new(Quota::per_minute(5)))
                .layer(FeatureGateLayer::new(&flags, "checkout"))
                .layer(IdempotencyLayer::new().required(true))
                .layer(
                    FallbackLayer::new(fallback::from_fn(|f: Failure<Response>| match f {
                        // Only a hung dependency gets the apology; refusals go on.
                        Failure::Error(e)
                            if tower_parapet::Rejection::from_box(&e).is_some_and(|r| {
                                r.kind() == tower_parapet::RejectionKind::Timeout
                            }) =>
                        {
                            Ok(Response::new(Body::from("try again soon")))
                        }
                        Failure::Error(e) => Err(e),
                        Failure::Response(r) => Ok(r),
                    }))
                    .mark(HeaderMark::default()),
                )
                .layer(breaker)
                .layer(TimeoutLayer::new(Duration::from_secs(2)).deadline(HttpDeadline::new())),
        );
    App {
        router,
        flags,
        breaker: handle,
        calls,
    }
}

fn checkout(key: Option<&str>) -> Request<Body> {
    let mut req = Request::post("/checkout");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(Body::from("cart-7")).unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String, Response) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let (parts, body) = res.into_parts();
    let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (status, text, Response::from_parts(parts, Body::empty()))
}

#[tokio::test(start_paused = true)]
async fn every_layer_answers_in_its_own_words() {
    let a = app();
    // Admitted, then replayed.
    let (status, body, _) = send(&a.router, checkout(Some("k1"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "ordered"));
    let (status, _, res) = send(&a.router, checkout(Some("k1"))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert!(res.headers().contains_key("x-request-id"));
    // Idempotency: no key.
    assert_eq!(
        send(&a.router, checkout(None)).await.0,
        StatusCode::BAD_REQUEST
    );
    // Timeout, answered by the fallback.
    let (status, body, res) = send(
        &a.router,
        Request::get("/slow").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "try again soon"));
    assert_eq!(res.headers()["parapet-fallback"], "function");
    // Rate limit: 5 a minute, 4 used so far.
    assert_eq!(
        send(&a.router, checkout(Some("k2"))).await.0,
        StatusCode::CREATED
    );
    let (status, _, res) = send(&a.router, checkout(Some("k3"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    tokio::time::advance(Duration::from_secs(60)).await;
    // Feature gate: checkout switched off.
    a.flags.kill("checkout").unwrap();
    assert_eq!(
        send(&a.router, checkout(Some("k4"))).await.0,
        StatusCode::NOT_FOUND
    );
    a.flags.enable("checkout").unwrap();
    // Circuit breaker, forced open by an operator.
    a.breaker.force_open();
    let (status, _, _) = send(&a.router, checkout(Some("k5"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    a.breaker.close();
    assert_eq!(
        send(&a.router, checkout(Some("k6"))).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        3,
        "k1, k2 and k6 reached the handler"
    );
}
