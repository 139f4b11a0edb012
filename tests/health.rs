//! Health and readiness: the registry's snapshot and the `/livez` and `/readyz` routes.
#![cfg(feature = "axum")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow, State};
use tower_parapet::health::HealthRegistry;
use tower_parapet::rate_limit::Quota;
use tower_parapet::{Mode, RateLimitLayer};

async fn probe(app: &axum::Router, path: &str) -> (StatusCode, String) {
    let res = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// 200 while healthy, 503 once the critical breaker opens (through real failures), 200
/// again once it closes; a non-critical breaker never decides.
#[tokio::test(start_paused = true)]
async fn readiness_follows_the_critical_breaker() {
    let db = CircuitBreakerLayer::builder()
        .name("db")
        .sliding_window(SlidingWindow::count(4))
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(1)
        .build()
        .unwrap();
    let cache = CircuitBreakerLayer::builder()
        .name("cache")
        .build()
        .unwrap();
    let registry = HealthRegistry::new();
    registry
        .critical_breaker(db.handle())
        .breaker(cache.handle());
    let app = registry.routes();

    assert_eq!(probe(&app, "/livez").await.0, StatusCode::OK);
    assert_eq!(probe(&app, "/readyz").await.0, StatusCode::OK);

    cache.handle().force_open();
    assert_eq!(
        probe(&app, "/readyz").await.0,
        StatusCode::OK,
        "cache is not critical"
    );

    let healthy = Arc::new(AtomicBool::new(false));
    let up = healthy.clone();
    let svc = db.layer(service_fn(move |_: ()| {
        let up = up.load(Ordering::SeqCst);
        async move {
            if up {
                Ok::<_, BoxError>(())
            } else {
                Err("connection refused".into())
            }
        }
    }));
    for _ in 0..4 {
        let _ = svc.clone().oneshot(()).await;
    }
    assert_eq!(db.handle().state(), State::Open);
    let (status, body) = probe(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, r#"{"failing":["breaker:db"],"ready":false}"#);
    assert_eq!(
        probe(&app, "/livez").await.0,
        StatusCode::OK,
        "alive all along"
    );

    // After the wait it is half-open: ready by default, so probes can arrive.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(probe(&app, "/readyz").await.0, StatusCode::OK);
    registry.half_open_is_not_ready(true);
    assert_eq!(
        probe(&app, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    healthy.store(true, Ordering::SeqCst);
    svc.clone().oneshot(()).await.unwrap();
    assert_eq!(db.handle().state(), State::Closed);
    assert_eq!(probe(&app, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_shows_every_registered_part_and_serializes() {
    let registry = HealthRegistry::new();
    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .build()
        .unwrap();
    let limiter = RateLimitLayer::new(Quota::per_second(10));
    let warm = Arc::new(AtomicBool::new(false));
    let w = warm.clone();
    let flags = tower_parapet::flags::FlagStore::new();
    flags
        .set("beta", tower_parapet::flags::FlagDef::boolean(true))
        .unwrap();
    registry
        .critical_breaker(breaker.handle())
        .flags(&flags)
        .rate_limiter("api", limiter.handle())
        .mode("payments", breaker.mode_handle())
        .check("cache_warm", move || w.load(Ordering::SeqCst));
    let snapshot = registry.snapshot();
    assert!(!snapshot.ready);
    assert_eq!(snapshot.failing, ["check:cache_warm"]);
    assert_eq!(snapshot.breakers[0].name, "payments");
    assert_eq!(snapshot.breakers[0].state, State::Closed);
    assert_eq!(snapshot.rate_limiters[0].name, "api");
    assert_eq!(snapshot.modes["payments"], Mode::Enforce);
    let json = serde_json::to_value(&snapshot).unwrap();
    assert_eq!(json["breakers"][0]["state"], "closed");
    assert_eq!(json["rate_limiters"][0]["mode"], "enforce");
    assert_eq!(json["checks"]["cache_warm"], false);
    assert!(json["flags"]["beta"].is_object(), "{json}");

    warm.store(true, Ordering::SeqCst);
    breaker.mode_handle().set(Mode::Shadow);
    let snapshot = registry.snapshot();
    assert!(snapshot.ready);
    assert_eq!(snapshot.modes["payments"], Mode::Shadow);
}
