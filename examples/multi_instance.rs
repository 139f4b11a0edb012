//! Two instances of one app sharing rate limits, idempotency records and flags through
//! Redis: a template for services that run several replicas behind a load balancer.
//!
//! Each instance has its own `RedisBackend` (its own connection, as two processes would)
//! and the same stack, outermost first:
//! - `RejectionResponseLayer`: refusals become 429/409/503/404 problem+json answers;
//! - `RateLimitLayer::keyed(..).shared(backend)`: 5 payments per minute per user, counted
//!   in Redis for the whole fleet; if Redis is away, each instance counts alone (`local`);
//! - `FeatureGateLayer`: the `payments` kill switch, from a `RedisFlagSource` every
//!   instance watches;
//! - `IdempotencyLayer` with a `RedisIdempotencyStore`: a double click landing on two
//!   instances charges once; if Redis is away, payments are refused with 503 (retryable)
//!   rather than risk a double charge.
//!
//! It uses `REDIS_URL` if set, otherwise starts its own `redis-server` (from `PATH`) on a
//! free loopback port, plays a few clients, prints what each layer did, and exits.
//!
//! ```sh
//! cargo run --example multi_instance --features redis,axum
//! ```

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::post;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::idempotency::{Conflict, IdempotencyLayer};
use tower_parapet::key;
use tower_parapet::observe::Event;
use tower_parapet::rate_limit::{Quota, RateLimitHeaders, RateLimitLayer};
use tower_parapet::redis::{FailurePolicy, RedisBackend, RedisFlagSource, RedisIdempotencyStore};

/// The card processor both instances call: every call is a real charge.
#[derive(Clone, Default)]
struct Card {
    charges: Arc<AtomicU32>,
}

async fn pay(State(card): State<Card>, amount: String) -> (StatusCode, String) {
    // Long enough for a second click to land on the other instance meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = card.charges.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("charge #{n}: {amount}"))
}

/// One instance: its own connection to Redis, its own flag store kept in sync.
struct Instance {
    app: Router,
    backend: RedisBackend,
    flags: FlagStore,
}

fn instance(url: &str, card: Card, quiet: bool) -> Instance {
    let backend = RedisBackend::builder(url)
        .timeout(Duration::from_millis(100))
        .observer(move |e: &Event<'_>| {
            if !quiet {
                println!("    [redis] {} ({})", e.outcome(), e.name());
            }
        })
        .build()
        .expect("a tokio runtime");
    let flags = FlagStore::new();
    let user = || key::Header::new(HeaderName::from_static("x-user-id"));
    let limit = RateLimitLayer::keyed(user(), Quota::per_minute(5))
        .name("payments")
        .observer(())
        .on_admitted(RateLimitHeaders::new())
        .shared(backend.clone())
        .on_redis_error(FailurePolicy::Local);
    let idempotency = IdempotencyLayer::new()
        .required(true)
        .conflict(Conflict::Wait(Duration::from_secs(5)))
        .principal(user())
        .observer(())
        .store(RedisIdempotencyStore::new(backend.clone()))
        .on_store_error(FailurePolicy::FailClosed);
    let app = Router::new()
        .route("/pay", post(pay))
        .with_state(card)
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(limit)
                .layer(FeatureGateLayer::new(&flags, "payments"))
                .layer(idempotency),
        );
    Instance {
        app,
        backend,
        flags,
    }
}

fn click(user: &str, key: &str, amount: &str) -> Request<Body> {
    Request::post("/pay")
        .header("x-user-id", user)
        .header("idempotency-key", key)
        .body(Body::from(amount.to_owned()))
        .unwrap()
}

/// Status, whether replayed, body.
async fn send(app: &Router, req: Request<Body>) -> (u16, bool, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let replayed = res.headers().contains_key("idempotent-replayed");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    let short = body.lines().next().unwrap_or_default();
    (status, replayed, short.chars().take(70).collect())
}

#[tokio::main]
async fn main() {
    // A Redis: the one in REDIS_URL, or one of our own.
    let mut own = None;
    let url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            if !redis_server::available() {
                println!(
                    "redis-server is not on PATH and REDIS_URL is not set: install Redis \
                     (`apt-get install redis-server`) or point REDIS_URL at one."
                );
                return;
            }
            let server = redis_server::RedisServer::start_on(redis_server::free_port());
            let url = server.url();
            own = Some(server);
            url
        }
    };
    println!("Redis at {url}; two instances, one card processor.\n");
    let card = Card::default();
    let a = instance(&url, card.clone(), false);
    let b = instance(&url, card.clone(), true);

    // The flags live in Redis; both instances follow them.
    let flags = RedisFlagSource::new(a.backend.clone());
    flags.put("payments", &FlagDef::default()).await.unwrap();
    let watchers = [
        flags.clone().watch(a.flags.clone()),
        RedisFlagSource::new(b.backend.clone()).watch(b.flags.clone()),
    ];
    while !(a.flags.get("payments").is_some() && b.flags.get("payments").is_some()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    println!("1. A double click on \"Pay\" lands on both instances at once:");
    let first = tokio::spawn({
        let app = a.app.clone();
        async move { send(&app, click("alice", "order-1", "49.90 EUR")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = send(&b.app, click("alice", "order-1", "49.90 EUR")).await;
    let first = first.await.unwrap();
    println!(
        "   instance A: {} replayed={} {}",
        first.0, first.1, first.2
    );
    println!(
        "   instance B: {} replayed={} {}",
        second.0, second.1, second.2
    );
    println!(
        "   card charged {} time(s)\n",
        card.charges.load(Ordering::SeqCst)
    );

    println!("2. Bob pays 8 times, alternating instances (5 per minute for the fleet):");
    let mut answers = Vec::new();
    for i in 0..8 {
        let app = if i % 2 == 0 { &a.app } else { &b.app };
        let (status, _, _) = send(app, click("bob", &format!("bob-{i}"), "1 EUR")).await;
        answers.push(status);
    }
    println!("   statuses: {answers:?}");
    println!(
        "   admitted {} (a per-instance limit would have admitted 8)\n",
        answers.iter().filter(|s| **s == 201).count()
    );

    println!("3. The kill switch, flipped through instance A, reaches instance B:");
    let started = Instant::now();
    flags.kill("payments").await.unwrap();
    while b.flags.get("payments").is_some_and(|f| f.enabled) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("   seen by B after {:?}", started.elapsed());
    let (status, _, body) = send(&b.app, click("carol", "carol-1", "5 EUR")).await;
    println!("   carol on B: {status} {body}");
    flags.enable("payments").await.unwrap();
    while b.flags.get("payments").is_some_and(|f| !f.enabled) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("   switched back on\n");

    if let Some(server) = own.as_mut() {
        println!("4. Redis goes away (each call bounded by 100 ms):");
        server.stop();
        let started = Instant::now();
        let (status, _, body) = send(&a.app, click("dave", "dave-1", "7 EUR")).await;
        println!(
            "   dave on A: {status} {body} (after {:?})",
            started.elapsed()
        );
        println!(
            "   → the limiter counted locally, the payment was refused rather than risk a double charge"
        );
        server.restart();
        let mut status = 0;
        for attempt in 0..100 {
            status = send(&a.app, click("dave", "dave-1", "7 EUR")).await.0;
            if status == 201 {
                println!(
                    "   Redis is back: dave's retry on A → {status} (attempt {})",
                    attempt + 1
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, 201, "the app recovers without a restart");
    }
    for w in watchers {
        w.abort();
    }
    println!(
        "\ncard charged {} time(s) in all",
        card.charges.load(Ordering::SeqCst)
    );
}
