//! A kill switch for a new checkout flow: a template to copy.
//!
//! `GET /checkout` runs the new checkout flow while the flag `new-checkout` is on for the
//! user (read from `x-user-id`: allow list, then a percentage rollout), and the classic
//! flow otherwise — the request is routed to the old code path, not refused. An operator
//! flips the flag through the admin router (`/admin`, bearer token), and the very next
//! request follows it. The stack, outermost first:
//! - `RejectionResponseLayer`: refusals become problem+json answers;
//! - `FeatureGateLayer`: new flow or classic flow, per request.
//!
//! Run it: it serves nothing, it plays users and an operator, prints what happened, and
//! exits.
//!
//! ```sh
//! cargo run --example kill_switch --features axum
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::http::admin::AdminRouter;
use tower_parapet::key;
use tower_parapet::observe::Event;

const TOKEN: &str = "example-token-change-me";

/// The app: checkout behind the flag, and the admin router.
fn app(flags: &FlagStore, new_flow_errors: Arc<AtomicU32>) -> Router {
    // The new flow has a bug: it fails for every basket.
    let new_flow = get(move || {
        let errors = new_flow_errors.clone();
        async move {
            errors.fetch_add(1, Ordering::SeqCst);
            (StatusCode::INTERNAL_SERVER_ERROR, "new checkout: crashed")
        }
    });
    let classic: Router =
        Router::new().route("/checkout", get(|| async { "classic checkout: ok" }));
    let gate = FeatureGateLayer::new(flags, "new-checkout")
        .targeting_key(key::Header::new(HeaderName::from_static("x-user-id")))
        .route_to(classic);
    let admin = AdminRouter::new()
        .flags(flags.clone())
        .bearer_token("ops-oncall", TOKEN)
        .build()
        .expect("the admin router has a token");
    Router::new()
        .route("/checkout", new_flow)
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(gate),
        )
        .nest("/admin", admin)
}

async fn send(app: &Router, req: Request<Body>) -> (u16, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn checkout(user: &str) -> Request<Body> {
    Request::get("/checkout")
        .header("x-user-id", user)
        .body(Body::empty())
        .unwrap()
}

fn admin(method: &str, path: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    req.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Every change is an event with who made it; here printed, by default a tracing event.
    let flags = FlagStore::with_observer("flags", |e: &Event<'_>| {
        if let Event::FlagChanged {
            flag, change, by, ..
        } = *e
        {
            println!("  [event] flag `{flag}` {change} by {by}");
        }
    });
    // Launched to the QA team and 50 % of users.
    let mut def = FlagDef::rollout(50);
    def.description = "the new one-page checkout".into();
    def.allow = vec!["qa-1".into()];
    flags.set("new-checkout", def).expect("a valid flag");
    let errors = Arc::new(AtomicU32::new(0));
    let app = app(&flags, errors.clone());

    let users = ["qa-1", "alice", "bob", "carol", "dave"];
    println!("# 50 % rollout of the new checkout");
    for user in users {
        let (status, body) = send(&app, checkout(user)).await;
        println!("{user:>6}: {status} {body}");
    }

    println!("\n# The operator, without the token");
    let (status, _) = send(
        &app,
        admin("POST", "/admin/flags/new-checkout/kill", None, ""),
    )
    .await;
    println!("POST /admin/flags/new-checkout/kill -> {status}");

    println!("\n# The operator kills the flag");
    let (status, body) = send(
        &app,
        admin("POST", "/admin/flags/new-checkout/kill", Some(TOKEN), ""),
    )
    .await;
    println!("POST /admin/flags/new-checkout/kill -> {status} {body}");
    for user in users {
        let (status, body) = send(&app, checkout(user)).await;
        println!("{user:>6}: {status} {body}");
    }

    println!("\n# Fixed and deployed: back on, for 5 % of users only");
    send(
        &app,
        admin(
            "PUT",
            "/admin/flags/new-checkout/percentage",
            Some(TOKEN),
            r#"{"percentage": 5}"#,
        ),
    )
    .await;
    let (status, _) = send(
        &app,
        admin("POST", "/admin/flags/new-checkout/enable", Some(TOKEN), ""),
    )
    .await;
    println!("POST /admin/flags/new-checkout/enable -> {status}");
    let on = (0..1_000)
        .filter(|i| {
            flags.is_enabled(
                "new-checkout",
                &tower_parapet::flags::EvalContext::new().targeting_key(format!("user-{i}")),
            )
        })
        .count();
    println!("{on} of 1000 users now get the new checkout (qa-1 always does)");
    println!(
        "\nThe new flow failed {} time(s), all before the kill.",
        errors.load(Ordering::SeqCst)
    );
}
