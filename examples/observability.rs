//! Observability template: an axum service with the full parapet stack, JSON logs on
//! stdout, Prometheus metrics on `/metrics`, and `/livez` + `/readyz` probes.
//!
//! It plays a few requests against itself (no network), then prints what `/readyz` and
//! `/metrics` answer, and exits. To serve for real, hand `app` to `axum::serve`.
//!
//! ```sh
//! cargo run --example observability --features axum,metrics
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{ServiceBuilder, ServiceExt};
use tower_parapet::RateLimitLayer;
use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use tower_parapet::classify::ServerErrorsAsFailures;
use tower_parapet::health::HealthRegistry;
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::logging::LoggingLayer;
use tower_parapet::rate_limit::Quota;
use tower_parapet::timeout::TimeoutLayer;

/// The business routes behind the parapet stack, the probes and `/metrics` beside it.
fn app(
    registry: &HealthRegistry,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Router {
    // The inventory service fails from its 4th call on.
    let calls = Arc::new(AtomicU32::new(0));
    let inventory = move || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n >= 3 {
                (StatusCode::BAD_GATEWAY, "inventory unreachable")
            } else {
                (StatusCode::OK, "42 in stock")
            }
        }
    };
    let breaker = CircuitBreakerLayer::builder()
        .name("inventory")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(30))
        .classifier(ServerErrorsAsFailures)
        .build()
        .expect("a valid breaker");
    let limiter = RateLimitLayer::new(Quota::per_second(100)).name("api");
    registry
        .critical_breaker(breaker.handle())
        .rate_limiter("api", limiter.handle());

    let business = Router::new()
        .route("/orders/{id}", get(|| async { "order" }))
        .route("/inventory", get(inventory))
        .layer(
            ServiceBuilder::new()
                .layer(LoggingLayer::new())
                .layer(RejectionResponseLayer::new())
                .layer(limiter)
                .layer(breaker)
                .layer(TimeoutLayer::new(Duration::from_secs(2))),
        );
    business
        .route("/metrics", get(move || std::future::ready(render())))
        .merge(registry.routes())
}

async fn get_text(app: &Router, path: &str) -> (u16, String) {
    let req = Request::get(path).body(Body::empty()).unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // JSON logs, one object per line: the request span's fields ride on every event.
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_max_level(tracing::Level::INFO)
        .init();
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("no other metrics recorder installed");

    let registry = HealthRegistry::new();
    let app = app(&registry, move || prometheus.render());

    for path in [
        "/orders/1",
        "/orders/2",
        "/inventory",
        "/inventory",
        "/inventory",
    ] {
        get_text(&app, path).await;
    }
    // Inventory goes down: the breaker (shared by both routes) opens once half of the
    // last calls failed, and the next calls get 503 at once.
    for _ in 0..8 {
        get_text(&app, "/inventory").await;
    }

    let (status, body) = get_text(&app, "/readyz").await;
    println!("\nGET /readyz -> {status} {body}");
    let (_, metrics) = get_text(&app, "/metrics").await;
    println!("\nGET /metrics (parapet lines):");
    for line in metrics.lines().filter(|l| l.starts_with("parapet_")) {
        println!("  {line}");
    }
}
