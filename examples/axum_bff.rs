//! A backend-for-frontend that stays up when its downstreams do not: a template to copy.
//!
//! `GET /dashboard` fans out to five downstream services at once (user, posts,
//! followers, notifications, messages), each through its own client stack, outermost
//! first: fallback (the last good answer for the user; "no notifications" for
//! notifications) → retry → circuit breaker → timeout. The page answers within its
//! deadline with whatever arrived, and names what did not in `degraded`. Without the
//! user (the critical part) there is no page: 503 with `Retry-After`.
//!
//! The router's edge stack: logging, refusals as HTTP answers, a rate limit per client
//! (`x-client-id`), and a feature flag for the new messages panel (`/panels/messages`).
//!
//! It plays a few requests with injected failures and prints the answers, then exits.
//!
//! ```sh
//! cargo run --example axum_bff --features axum
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};
use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use tower_parapet::fallback::{self, FallbackLayer, LastKnownGood};
use tower_parapet::fanout::FanOut;
use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::key;
use tower_parapet::logging::LoggingLayer;
use tower_parapet::rate_limit::Quota;
use tower_parapet::retry::RetryLayer;
use tower_parapet::timeout::TimeoutLayer;
use tower_parapet::{BoxError, RateLimitLayer, Rejection};

/// What a simulated downstream does with each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Behaviour {
    /// Answers in 20 ms.
    Healthy = 0,
    /// Answers with an error.
    Failing = 1,
    /// Never answers.
    Hanging = 2,
}

/// The five downstreams, each switchable at runtime (the test's fault injection).
#[derive(Debug, Clone, Default)]
pub struct Downstreams {
    behaviours: Arc<[AtomicU8; 5]>,
}

/// The downstreams, in fan-out order.
pub const PARTS: [&str; 5] = ["user", "posts", "followers", "notifications", "messages"];

impl Downstreams {
    /// Make `part` behave as `how`.
    pub fn set(&self, part: &str, how: Behaviour) {
        let i = PARTS.iter().position(|p| *p == part).expect("a known part");
        self.behaviours[i].store(how as u8, Ordering::SeqCst);
    }

    fn get(&self, i: usize) -> Behaviour {
        match self.behaviours[i].load(Ordering::SeqCst) {
            1 => Behaviour::Failing,
            2 => Behaviour::Hanging,
            _ => Behaviour::Healthy,
        }
    }

    /// The client of part `i` with its own stack: fallback → retry → breaker → timeout.
    fn client(&self, i: usize) -> BoxCloneSyncService<u64, String, BoxError> {
        let this = self.clone();
        let downstream = service_fn(move |user: u64| {
            let how = this.get(i);
            async move {
                match how {
                    Behaviour::Healthy => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(format!("{} of user {user}", PARTS[i]))
                    }
                    Behaviour::Failing => {
                        Err::<String, BoxError>(format!("{} is down", PARTS[i]).into())
                    }
                    Behaviour::Hanging => std::future::pending().await,
                }
            }
        });
        let breaker = CircuitBreakerLayer::builder()
            .name(PARTS[i])
            .sliding_window(SlidingWindow::count(20))
            .minimum_calls(10)
            .wait_in_open(Duration::from_secs(10))
            .build()
            .expect("a valid breaker");
        let retry = RetryLayer::builder()
            .name(PARTS[i])
            .max_attempts(2)
            .build()
            .expect("a valid retry");
        let stack = ServiceBuilder::new()
            .layer(retry)
            .layer(breaker)
            .layer(TimeoutLayer::new(Duration::from_millis(150)))
            .service(downstream);
        // Notifications have something to say when down: nothing new. The others answer
        // with the last good answer for the same user, when there is one.
        if PARTS[i] == "notifications" {
            BoxCloneSyncService::new(
                FallbackLayer::new(fallback::value("no notifications".to_owned())).layer(stack),
            )
        } else {
            let by_user = key::from_fn(|user: &u64| Ok::<_, key::KeyError>(*user));
            BoxCloneSyncService::new(FallbackLayer::new(LastKnownGood::new(by_user)).layer(stack))
        }
    }
}

#[derive(Clone)]
struct Clients(Arc<Vec<BoxCloneSyncService<u64, String, BoxError>>>);

/// The page deadline.
pub const PAGE_DEADLINE: Duration = Duration::from_millis(400);

async fn dashboard(State(clients): State<Clients>) -> Result<Response, Rejection> {
    let user = 7;
    let mut fan = FanOut::new().deadline(PAGE_DEADLINE);
    for (i, part) in PARTS.iter().enumerate() {
        let client = clients.0[i].clone();
        fan = fan.branch(*part, Duration::from_millis(350), client.oneshot(user));
    }
    let page = fan.run().await;
    if page.get(&"user").is_none() {
        // No page without the user: come back when its breaker may let probes through.
        return Err(Rejection::overloaded(Some(Duration::from_secs(10))));
    }
    let mut doc = serde_json::Map::new();
    for part in PARTS {
        doc.insert(part.into(), page.get(&part).cloned().into());
    }
    doc.insert(
        "degraded".into(),
        page.degraded()
            .into_iter()
            .copied()
            .collect::<Vec<_>>()
            .into(),
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Object(doc).to_string(),
    )
        .into_response())
}

/// The BFF's router, with the edge stack.
pub fn app(downstreams: &Downstreams, flags: &FlagStore) -> Router {
    let clients = Clients(Arc::new(
        (0..PARTS.len()).map(|i| downstreams.client(i)).collect(),
    ));
    let messages_panel = Router::new()
        .route(
            "/panels/messages",
            get(|| async { "the new messages panel" }),
        )
        // A route's own layers must answer their refusals: its own edge adapter.
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(FeatureGateLayer::new(flags, "messages-panel")),
        );
    Router::new()
        .route("/dashboard", get(dashboard))
        .with_state(clients)
        .merge(messages_panel)
        .layer(
            ServiceBuilder::new()
                .layer(LoggingLayer::new())
                .layer(RejectionResponseLayer::new())
                .layer(RateLimitLayer::keyed(
                    key::Header::new(HeaderName::from_static("x-client-id")),
                    Quota::per_second(20),
                )),
        )
}

/// One GET as client `alice`: status, `Retry-After`, body.
pub async fn get_page(app: &Router, path: &str) -> (u16, Option<String>, String) {
    let req = Request::get(path)
        .header("x-client-id", "alice")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, retry, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let downstreams = Downstreams::default();
    let flags = FlagStore::new();
    flags
        .set("messages-panel", FlagDef::boolean(false))
        .expect("a valid flag");
    let app = app(&downstreams, &flags);

    println!("all healthy:\n  {:?}", get_page(&app, "/dashboard").await);
    downstreams.set("posts", Behaviour::Hanging);
    downstreams.set("followers", Behaviour::Failing);
    downstreams.set("notifications", Behaviour::Failing);
    println!(
        "posts hang, followers and notifications fail:\n  {:?}",
        get_page(&app, "/dashboard").await
    );
    downstreams.set("user", Behaviour::Failing);
    println!(
        "the user service is down:\n  {:?}",
        get_page(&app, "/dashboard").await
    );
    println!(
        "messages panel, flag off:\n  {:?}",
        get_page(&app, "/panels/messages").await
    );
    flags.enable("messages-panel").ok();
    flags
        .set("messages-panel", FlagDef::boolean(true))
        .expect("a valid flag");
    println!(
        "messages panel, flag on:\n  {:?}",
        get_page(&app, "/panels/messages").await
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_page_has_every_part_and_nothing_degraded() {
        let app = app(&Downstreams::default(), &FlagStore::new());
        let (status, _, body) = get_page(&app, "/dashboard").await;
        assert_eq!(status, 200);
        let doc = json(&body);
        assert_eq!(doc["posts"], "posts of user 7");
        assert_eq!(doc["degraded"], serde_json::json!([]));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_and_hanging_parts_are_degraded_and_the_deadline_holds() {
        let downstreams = Downstreams::default();
        let app = app(&downstreams, &FlagStore::new());
        downstreams.set("posts", Behaviour::Hanging);
        downstreams.set("followers", Behaviour::Failing);
        downstreams.set("notifications", Behaviour::Failing);
        let started = tokio::time::Instant::now();
        let (status, _, body) = get_page(&app, "/dashboard").await;
        assert!(
            started.elapsed() <= PAGE_DEADLINE,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(status, 200);
        let doc = json(&body);
        assert_eq!(doc["user"], "user of user 7");
        assert_eq!(doc["messages"], "messages of user 7");
        assert_eq!(
            doc["notifications"], "no notifications",
            "its fallback answered"
        );
        assert_eq!(doc["posts"], serde_json::Value::Null);
        assert_eq!(doc["degraded"], serde_json::json!(["posts", "followers"]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_that_answered_before_is_served_from_its_last_good_answer() {
        let downstreams = Downstreams::default();
        let app = app(&downstreams, &FlagStore::new());
        assert_eq!(get_page(&app, "/dashboard").await.0, 200);
        downstreams.set("followers", Behaviour::Failing);
        let (status, _, body) = get_page(&app, "/dashboard").await;
        assert_eq!(status, 200);
        let doc = json(&body);
        assert_eq!(doc["followers"], "followers of user 7");
        assert_eq!(doc["degraded"], serde_json::json!([]));
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_user_the_page_is_503_with_retry_after() {
        let downstreams = Downstreams::default();
        let app = app(&downstreams, &FlagStore::new());
        downstreams.set("user", Behaviour::Hanging);
        let started = tokio::time::Instant::now();
        let (status, retry, _) = get_page(&app, "/dashboard").await;
        assert!(started.elapsed() <= PAGE_DEADLINE);
        assert_eq!((status, retry.as_deref()), (503, Some("10")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_new_panel_follows_its_flag() {
        let flags = FlagStore::new();
        flags
            .set("messages-panel", FlagDef::boolean(false))
            .unwrap();
        let app = app(&Downstreams::default(), &flags);
        assert_eq!(get_page(&app, "/panels/messages").await.0, 404);
        flags.set("messages-panel", FlagDef::boolean(true)).unwrap();
        assert_eq!(get_page(&app, "/panels/messages").await.0, 200);
    }
}
