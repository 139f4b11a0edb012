//! Whole stacks in an axum `Router`, added with `Router::layer` and no `HandleErrorLayer`.
#![cfg(feature = "http")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_parapet::classify::ServerErrorsAsFailures;
use tower_parapet::fallback::{self, Failure, FallbackLayer, HeaderMark, LastKnownGood};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::key::Target;
use tower_parapet::timeout::{HttpDeadline, TimeoutLayer};

type Response = axum::http::Response<Body>;

fn routes() -> Router {
    let prices_calls = Arc::new(AtomicU32::new(0));
    Router::new()
        .route("/hang", get(std::future::pending::<&'static str>))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "stack trace here") }),
        )
        .route(
            "/prices",
            get(move || {
                let n = prices_calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        (StatusCode::OK, "prices v1")
                    } else {
                        (StatusCode::BAD_GATEWAY, "upstream down")
                    }
                }
            }),
        )
        .route("/ok", get(|| async { "fine" }))
}

/// The recommended order: answers outermost, fallback outside the timeout.
fn app() -> Router {
    routes().layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(
                FallbackLayer::new(fallback::from_fn(
                    |failure: Failure<Response>| match failure {
                        // A handler's error page is replaced; errors (a timeout) go on to the
                        // edge, which answers them.
                        Failure::Response(_) => {
                            Ok(Response::new(Body::from("we'll be right back")))
                        }
                        Failure::Error(e) => Err(e),
                    },
                ))
                .classifier(ServerErrorsAsFailures)
                .mark(HeaderMark::default()),
            )
            .layer(TimeoutLayer::new(Duration::from_secs(2)).deadline(HttpDeadline::new())),
    )
}

/// The same with the last known good answer per method + path + query.
fn app_with_last_known_good() -> Router {
    routes().layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(
                FallbackLayer::new(LastKnownGood::http(Target::new()))
                    .classifier(ServerErrorsAsFailures)
                    .mark(HeaderMark::default()),
            )
            .layer(TimeoutLayer::new(Duration::from_secs(2))),
    )
}

async fn body(res: Response) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_hanging_handler_answers_504_problem_json_at_the_deadline() {
    let started = tokio::time::Instant::now();
    let res = app().oneshot(get_req("/hang")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let doc: serde_json::Value = serde_json::from_str(&body(res).await).unwrap();
    assert_eq!(doc["status"], 504);
    assert_eq!(doc["title"], "Gateway Timeout");
    assert_eq!(doc["kind"], "timeout");
}

#[tokio::test(start_paused = true)]
async fn the_callers_deadline_shortens_the_routes_timeout() {
    let started = tokio::time::Instant::now();
    let req = Request::get("/hang")
        .header("grpc-timeout", "100m")
        .body(Body::empty())
        .unwrap();
    let res = app().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

#[tokio::test]
async fn a_failing_handler_gets_the_fallbacks_answer() {
    let res = app().oneshot(get_req("/fail")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["parapet-fallback"], "function");
    assert_eq!(body(res).await, "we'll be right back");
}

#[tokio::test]
async fn a_failing_dependency_is_answered_from_the_last_known_good() {
    let app = app_with_last_known_good();
    let fresh = app.clone().oneshot(get_req("/prices")).await.unwrap();
    assert_eq!(body(fresh).await, "prices v1");
    let stale = app.oneshot(get_req("/prices")).await.unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.headers()["parapet-fallback"], "last_known_good");
    assert_eq!(body(stale).await, "prices v1");
    // Nothing good was ever seen on /fail: its 500 shows through, untouched.
    let res = app_with_last_known_good()
        .oneshot(get_req("/fail"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body(res).await, "stack trace here");
}

#[tokio::test]
async fn healthy_routes_are_untouched() {
    let res = app().oneshot(get_req("/ok")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("parapet-fallback").is_none());
    assert_eq!(body(res).await, "fine");
}

/// Breaker inside the edge adapter, timeout inside the breaker: 5xx answers trip it, then
/// the client gets 503 + `Retry-After` + problem+json without the handler being called,
/// and after the wait a successful probe closes it again.
#[tokio::test(start_paused = true)]
async fn an_open_breaker_answers_503_with_retry_after() {
    use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow, State};

    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let breaker = CircuitBreakerLayer::http()
        .name("orders-db")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(5)
        .wait_in_open(Duration::from_secs(30))
        .permitted_calls_in_half_open(1)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let (h, c) = (healthy.clone(), calls.clone());
    let app = Router::new()
        .route(
            "/orders",
            get(move || {
                c.fetch_add(1, Ordering::SeqCst);
                let up = h.load(Ordering::SeqCst);
                async move {
                    if up {
                        (StatusCode::OK, "orders")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "db down")
                    }
                }
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(breaker)
                .layer(TimeoutLayer::new(Duration::from_secs(2))),
        );

    // 4xx answers are successes of the server.
    for _ in 0..20 {
        let res = app.clone().oneshot(get_req("/missing")).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(handle.state(), State::Closed);
    for _ in 0..5 {
        let res = app.clone().oneshot(get_req("/orders")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(handle.state(), State::Open);
    let before = calls.load(Ordering::SeqCst);

    tokio::time::advance(Duration::from_millis(10_500)).await;
    let res = app.clone().oneshot(get_req("/orders")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.headers()["retry-after"],
        "20",
        "19.5 s left, rounded up"
    );
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(body(res).await.contains("orders-db"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "the handler was not called"
    );

    healthy.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(20)).await;
    let res = app.clone().oneshot(get_req("/orders")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(handle.state(), State::Closed);
}

/// Idempotency through `Router::layer`: replay, 409 while in flight, 422 on reuse, 400
/// without a key, all as problem+json from the edge adapter.
#[tokio::test(start_paused = true)]
async fn idempotency_answers_through_an_axum_router() {
    use axum::routing::post;
    use tower_parapet::idempotency::IdempotencyLayer;

    let charges = Arc::new(AtomicU32::new(0));
    let c = charges.clone();
    let app = Router::new()
        .route(
            "/pay",
            post(move |amount: String| {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    (StatusCode::CREATED, format!("charge {n}: {amount}"))
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(IdempotencyLayer::new().required(true)),
        );
    let pay = |key: Option<&str>, amount: &str| {
        let mut req = Request::post("/pay");
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        req.body(Body::from(amount.to_owned())).unwrap()
    };

    let first = tokio::spawn(app.clone().oneshot(pay(Some("k1"), "10")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = app.clone().oneshot(pay(Some("k1"), "10")).await.unwrap();
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    assert_eq!(busy.headers()["content-type"], "application/problem+json");
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(body(first).await, "charge 1: 10");

    let replay = app.clone().oneshot(pay(Some("k1"), "10")).await.unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(body(replay).await, "charge 1: 10");

    let reused = app.clone().oneshot(pay(Some("k1"), "99")).await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let missing = app.clone().oneshot(pay(None, "10")).await.unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    assert_eq!(charges.load(Ordering::SeqCst), 1);
}
