//! A payments API where a double-clicked "Pay" charges once: a template to copy.
//!
//! `POST /pay` charges a (simulated) card. The stack, outermost first:
//! - `RejectionResponseLayer`: refusals become 400/409/413/422 problem+json answers;
//! - `IdempotencyLayer`: an `Idempotency-Key` is required; a retry while the first request
//!   runs waits for its answer; records are per user (`x-user-id`, which a real app takes
//!   from its authentication), kept 24 h;
//! - `TimeoutLayer`: the card network gets 10 s, well within the claim's 60 s lease.
//!
//! Run it: it serves nothing, it plays a user who double-clicks and prints what happened.
//!
//! ```sh
//! cargo run --example payments
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::post;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::idempotency::{Conflict, IdempotencyLayer};
use tower_parapet::key;
use tower_parapet::timeout::TimeoutLayer;

/// The card processor: every call is a real charge.
#[derive(Clone, Default)]
struct Card {
    charges: Arc<AtomicU32>,
}

async fn pay(State(card): State<Card>, amount: String) -> (StatusCode, String) {
    // The card network takes its time: long enough for an impatient second click.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let n = card.charges.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("charge #{n}: {amount}"))
}

/// The app, ready for `axum::serve`.
fn app(card: Card) -> Router {
    Router::new()
        .route("/pay", post(pay))
        .with_state(card)
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(
                    IdempotencyLayer::new()
                        .required(true)
                        .conflict(Conflict::Wait(Duration::from_secs(15)))
                        .principal(key::Header::new(HeaderName::from_static("x-user-id")))
                        .retention(Duration::from_secs(24 * 3600)),
                )
                .layer(TimeoutLayer::new(Duration::from_secs(10))),
        )
}

fn click(key: Option<&str>, amount: &str) -> Request<Body> {
    let mut req = Request::post("/pay").header("x-user-id", "alice");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(Body::from(amount.to_owned())).unwrap()
}

/// Status, `Idempotent-Replayed`, body.
async fn send(app: &Router, req: Request<Body>) -> (u16, bool, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let replayed = res.headers().contains_key("idempotent-replayed");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        replayed,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let card = Card::default();
    let app = app(card.clone());
    let key = "\"3f1c9a1e-pay-order-1042\"";

    // Two clicks 300 ms apart: the second arrives while the first is charging.
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, click(Some(key), "49.90 EUR")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = send(&app, click(Some(key), "49.90 EUR")).await;
    let first = first.await.unwrap();
    println!("first click : {} replayed={} {}", first.0, first.1, first.2);
    println!(
        "second click: {} replayed={} {}",
        second.0, second.1, second.2
    );

    // The page is reloaded an hour later and the form resubmitted.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let again = send(&app, click(Some(key), "49.90 EUR")).await;
    println!(
        "an hour later: {} replayed={} {}",
        again.0, again.1, again.2
    );

    // A bug reuses the key for another amount; a client forgets the key.
    let reused = send(&app, click(Some(key), "4990.00 EUR")).await;
    println!("key reused for another amount: {} {}", reused.0, reused.2);
    let missing = send(&app, click(None, "49.90 EUR")).await;
    println!("no key: {} {}", missing.0, missing.2);

    println!(
        "card charged {} time(s)",
        card.charges.load(Ordering::SeqCst)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_double_submit_charges_once() {
        let card = Card::default();
        let app = app(card.clone());
        let clicks: Vec<_> = (0..2)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move { send(&app, click(Some("order-7"), "10 EUR")).await })
            })
            .collect();
        let mut answers = Vec::new();
        for c in clicks {
            answers.push(c.await.unwrap());
        }
        assert_eq!(card.charges.load(Ordering::SeqCst), 1, "one charge");
        assert!(
            answers
                .iter()
                .all(|(s, _, b)| *s == 201 && b == "charge #1: 10 EUR")
        );
        assert_eq!(
            answers.iter().filter(|(_, replayed, _)| *replayed).count(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn misuse_gets_problem_answers() {
        let card = Card::default();
        let app = app(card.clone());
        send(&app, click(Some("order-8"), "10 EUR")).await;
        assert_eq!(send(&app, click(Some("order-8"), "99 EUR")).await.0, 422);
        assert_eq!(send(&app, click(None, "10 EUR")).await.0, 400);
        assert_eq!(send(&app, click(Some("bad key"), "10 EUR")).await.0, 400);
        assert_eq!(card.charges.load(Ordering::SeqCst), 1);
    }
}
