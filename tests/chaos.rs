//! Chaos scenarios: the recommended stack around a dependency driven by the fault layer,
//! in paused time, each asserting numbers. Print the summary tables with
//!
//! ```text
//! cargo test --all-features --test chaos -- --nocapture
//! ```
//!
//! Stack, outermost first: edge adapter (`RejectionResponseLayer`) → fallback → (overall
//! timeout → retry) → circuit breaker → per-attempt timeout → `FaultLayer` → an axum
//! handler.
#![cfg(feature = "axum")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow, State};
use tower_parapet::classify::ErrorsAsFailures;
use tower_parapet::fallback::{self, Failure, FallbackLayer, HeaderMark};
use tower_parapet::fault::{FaultKind, FaultLayer};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::observe::Event;
use tower_parapet::retry::{Backoff, Jitter, RetryBudget, RetryLayer};
use tower_parapet::{RejectionKind, TimeoutLayer};

type Response = axum::http::Response<Body>;

/// Counts every event of the stack by `layer/outcome`.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<HashMap<String, u32>>>);

impl Events {
    fn observer(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let counts = self.0.clone();
        move |e: &Event<'_>| {
            *counts
                .lock()
                .unwrap()
                .entry(format!("{}/{}", e.layer(), e.outcome()))
                .or_default() += 1;
        }
    }

    fn get(&self, key: &str) -> u32 {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

type Apology = fn(Failure<Response>) -> Result<Response, tower_parapet::BoxError>;

/// Serves a canned answer for a timeout or an open circuit; other failures go on.
fn apologize(f: Failure<Response>) -> Result<Response, tower_parapet::BoxError> {
    match f {
        Failure::Error(e)
            if tower_parapet::Rejection::from_box(&e).is_some_and(|r| {
                matches!(
                    r.kind(),
                    RejectionKind::Timeout | RejectionKind::CircuitOpen
                )
            }) =>
        {
            Ok(Response::new(Body::from("fallback")))
        }
        Failure::Error(e) => Err(e),
        Failure::Response(r) => Ok(r),
    }
}

fn apology() -> FallbackLayer<fallback::FromFn<Apology>, ErrorsAsFailures, HeaderMark> {
    FallbackLayer::new(fallback::from_fn(apologize as Apology)).mark(HeaderMark::default())
}

fn table(title: &str, rows: &[(&str, String)]) {
    println!("\n{title}");
    println!("| {:<44} | {:>10} |", "measure", "value");
    println!("|{:-<46}|{:->12}|", "", "");
    for (k, v) in rows {
        println!("| {k:<44} | {v:>10} |");
    }
}

/// One answer as the client saw it.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    fallback: bool,
    elapsed: Duration,
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let started = Instant::now();
    let res = app.clone().oneshot(req).await.unwrap();
    Answer {
        status: res.status(),
        fallback: res.headers().contains_key("parapet-fallback"),
        elapsed: started.elapsed(),
    }
}

/// (a) The dependency hangs for a while: every answer within its deadline, the breaker
/// opens, fallbacks answer, and it closes again once the faults are switched off.
#[tokio::test(start_paused = true)]
async fn a_hanging_dependency_is_answered_within_the_deadline() {
    const DEADLINE: Duration = Duration::from_secs(1);
    let events = Events::default();
    let handler_calls = Arc::new(AtomicU32::new(0));
    let faults = FaultLayer::builder()
        .name("dependency")
        .seed(1)
        .hang_rate(100.0)
        .observer(events.observer())
        .build()
        .unwrap();
    let chaos = faults.handle();
    let breaker = CircuitBreakerLayer::http()
        .name("dependency")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(5)
        .failure_rate_threshold(50)
        .wait_in_open(Duration::from_secs(2))
        .permitted_calls_in_half_open(2)
        .observer(events.observer())
        .build()
        .unwrap();
    let state = breaker.handle();
    let c = handler_calls.clone();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { "real" }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(apology().observer(events.observer()))
                .layer(breaker)
                .layer(TimeoutLayer::new(DEADLINE).observer(events.observer()))
                .layer(faults),
        );

    // 100 requests, one every 100 ms, overlapping: healthy for 1 s, hanging for 3 s,
    // healthy again for 6 s.
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100u64 {
        let app = app.clone();
        tasks.spawn(async move {
            tokio::time::sleep_until(start + Duration::from_millis(100 * i)).await;
            let req = Request::get("/").body(Body::empty()).unwrap();
            (i, send(&app, req).await)
        });
    }
    let control = async {
        tokio::time::sleep_until(start + Duration::from_millis(950)).await;
        chaos.enable();
        let calls_before = handler_calls.load(Ordering::SeqCst);
        tokio::time::sleep_until(start + Duration::from_millis(3_950)).await;
        chaos.disable();
        let state_during = state.state();
        (calls_before, state_during)
    };
    let ((calls_before, state_during), answers) = tokio::join!(control, async {
        let mut answers = tasks.join_all().await;
        answers.sort_by_key(|(i, _)| *i);
        answers
    });

    let late = answers.iter().filter(|(_, a)| a.elapsed > DEADLINE).count();
    let not_ok = answers
        .iter()
        .filter(|(_, a)| a.status != StatusCode::OK)
        .count();
    let fallbacks = answers.iter().filter(|(_, a)| a.fallback).count();
    let instant_fallbacks = answers
        .iter()
        .filter(|(_, a)| a.fallback && a.elapsed.is_zero())
        .count();
    let slowest = answers.iter().map(|(_, a)| a.elapsed).max().unwrap();
    let hung = events.get("fault/fault_injected");
    let timed_out = events.get("timeout/timed_out");
    let rejected = events.get("circuit_breaker/rejected");
    let opened = events.get("circuit_breaker/opened");
    let closed = events.get("circuit_breaker/closed");
    // The last 30 requests (from 7 s on) are all answered by the dependency itself.
    let tail_real = answers[70..].iter().filter(|(_, a)| !a.fallback).count();

    table(
        "chaos (a): dependency hangs for 3 s (100 requests, 1 every 100 ms, deadline 1 s)",
        &[
            ("requests", answers.len().to_string()),
            ("answers later than the deadline", late.to_string()),
            ("slowest answer", format!("{slowest:?}")),
            ("answers other than 200", not_ok.to_string()),
            ("calls hung by the fault layer", hung.to_string()),
            ("timeouts (each a breaker failure)", timed_out.to_string()),
            ("breaker openings", opened.to_string()),
            ("refused by the open breaker", rejected.to_string()),
            ("fallbacks served", fallbacks.to_string()),
            (
                "  of them at once (open circuit)",
                instant_fallbacks.to_string(),
            ),
            ("breaker closings after recovery", closed.to_string()),
            ("breaker state at the end", format!("{:?}", state.state())),
            (
                "handler calls (healthy phases)",
                handler_calls.load(Ordering::SeqCst).to_string(),
            ),
        ],
    );

    assert_eq!(late, 0, "every answer within its deadline");
    assert_eq!(slowest, DEADLINE);
    assert_eq!(not_ok, 0, "every client got a 200: real or fallback");
    assert_eq!(calls_before, 10);
    assert_eq!(state_during, State::Open);
    assert_eq!(opened, 1);
    assert!(closed >= 1);
    assert_eq!(state.state(), State::Closed);
    // Every hung call timed out and was served a fallback; every refusal too.
    assert_eq!(hung, timed_out);
    assert_eq!(fallbacks as u32, timed_out + rejected);
    assert_eq!(instant_fallbacks as u32, rejected);
    // The breaker stopped the hammering: only a handful of calls hung before it opened
    // (5 failures trip a window of 10 that held 10 successes; the calls already in flight
    // when it opened hang too), far fewer than the 30 sent while hanging.
    assert!(hung <= 15, "{hung}");
    assert!(rejected >= 15, "{rejected}");
    assert_eq!(tail_real, 30);
    assert_eq!(
        handler_calls.load(Ordering::SeqCst) as usize,
        answers.len() - fallbacks
    );
}

/// Attempt log below the breaker: `true` for a failed attempt.
#[derive(Clone, Default)]
struct Attempts {
    outcomes: Arc<Mutex<Vec<bool>>>,
    /// Attempts per request id, and which requests were POSTs.
    per_request: Arc<Mutex<HashMap<u64, (u32, bool)>>>,
    /// The number of attempts logged when the breaker first opened.
    opened_at: Arc<Mutex<Option<usize>>>,
}

/// Where a count window of `window` with `minimum` calls and `threshold` % must first
/// open, given the attempts in order.
fn predicted_opening(
    outcomes: &[bool],
    window: usize,
    minimum: usize,
    threshold: usize,
) -> Option<usize> {
    let minimum = minimum.min(window);
    (1..=outcomes.len()).find(|&n| {
        let recent = &outcomes[n.saturating_sub(window)..n];
        let failed = recent.iter().filter(|f| **f).count();
        recent.len() >= minimum && failed * 100 >= threshold * recent.len()
    })
}

struct Burst {
    rate: f64,
    requests: u64,
    attempts: usize,
    extra: usize,
    budget_limit: usize,
    opened_at: Option<usize>,
    predicted: Option<usize>,
    post_requests: usize,
    post_max_attempts: u32,
    fallbacks: usize,
    server_errors: usize,
}

async fn error_burst(rate: f64) -> Burst {
    const WINDOW: u32 = 20;
    const MINIMUM: u32 = 10;
    const THRESHOLD: u8 = 50;
    const REQUESTS: u64 = 200;
    const RATIO: f64 = 0.2;
    let events = Events::default();
    let log = Attempts::default();
    let faults = FaultLayer::builder()
        .name("dependency")
        .seed(2024)
        .error_rate(rate)
        .http_status(StatusCode::SERVICE_UNAVAILABLE)
        .build()
        .unwrap();
    faults.handle().enable();
    let opened_at = log.clone();
    let breaker = CircuitBreakerLayer::http()
        .name("dependency")
        .sliding_window(SlidingWindow::count(WINDOW))
        .minimum_calls(MINIMUM)
        .failure_rate_threshold(THRESHOLD)
        .wait_in_open(Duration::from_secs(2))
        .observer(move |e: &Event<'_>| {
            if let Event::CircuitStateChanged {
                to: State::Open, ..
            } = e
            {
                let mut at = opened_at.opened_at.lock().unwrap();
                if at.is_none() {
                    *at = Some(opened_at.outcomes.lock().unwrap().len());
                }
            }
        })
        .build()
        .unwrap();
    let budget = RetryBudget::new(RATIO, 0, Duration::from_secs(60));
    let retry = RetryLayer::http()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .jitter(Jitter::None)
        .budget(budget.clone())
        .observer(events.observer())
        .build()
        .unwrap();
    let (before, after) = (log.clone(), log.clone());
    let app = Router::new()
        .route("/", get(|| async { "real" }).post(|| async { "created" }))
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(apology())
                .layer(TimeoutLayer::new(Duration::from_secs(2)))
                .layer(retry)
                .layer(breaker)
                .layer(TimeoutLayer::new(Duration::from_millis(500)))
                .layer(tower::util::MapRequestLayer::new(
                    move |req: Request<Body>| {
                        let id: u64 = req.headers()["x-id"].to_str().unwrap().parse().unwrap();
                        let post = req.method() == "POST";
                        before
                            .per_request
                            .lock()
                            .unwrap()
                            .entry(id)
                            .or_insert((0, post))
                            .0 += 1;
                        req
                    },
                ))
                .layer(tower::util::MapResponseLayer::new(move |res: Response| {
                    after
                        .outcomes
                        .lock()
                        .unwrap()
                        .push(res.status().is_server_error());
                    res
                }))
                .layer(faults),
        );

    let mut answers = Vec::new();
    let mut post_requests = 0;
    for id in 0..REQUESTS {
        // Every fourth request is a POST without an idempotency key: never safe to retry.
        let post = id % 4 == 3;
        post_requests += usize::from(post);
        let req = Request::builder()
            .method(if post { "POST" } else { "GET" })
            .uri("/")
            .header("x-id", id.to_string())
            .body(Body::empty())
            .unwrap();
        answers.push(send(&app, req).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcomes = log.outcomes.lock().unwrap().clone();
    let per_request = log.per_request.lock().unwrap().clone();
    let attempts: u32 = per_request.values().map(|(n, _)| n).sum();
    let reached = per_request.len();
    Burst {
        rate,
        requests: REQUESTS,
        attempts: attempts as usize,
        extra: attempts as usize - reached,
        budget_limit: (RATIO * REQUESTS as f64) as usize,
        opened_at: *log.opened_at.lock().unwrap(),
        predicted: predicted_opening(
            &outcomes,
            WINDOW as usize,
            MINIMUM as usize,
            THRESHOLD as usize,
        ),
        post_requests,
        post_max_attempts: per_request
            .values()
            .filter(|(_, post)| *post)
            .map(|(n, _)| *n)
            .max()
            .unwrap_or(0),
        fallbacks: answers.iter().filter(|a| a.fallback).count(),
        server_errors: answers
            .iter()
            .filter(|a| a.status.is_server_error())
            .count(),
    }
}

/// (b) An error burst at 30 % and at 60 %: the breaker opens exactly where its window
/// says it must, retries stay within the budget, and no POST is ever retried.
#[tokio::test(start_paused = true)]
async fn an_error_burst_trips_the_breaker_and_retries_stay_in_budget() {
    let mut rows = Vec::new();
    for rate in [30.0, 60.0] {
        let b = error_burst(rate).await;
        let p = format!("{}%: ", b.rate);
        rows.push((format!("{p}requests"), b.requests.to_string()));
        rows.push((
            format!("{p}attempts reaching the dependency"),
            b.attempts.to_string(),
        ));
        rows.push((format!("{p}extra calls from retries"), b.extra.to_string()));
        rows.push((
            format!("{p}retry budget (20 % of requests)"),
            b.budget_limit.to_string(),
        ));
        rows.push((
            format!("{p}breaker opened after attempt"),
            b.opened_at.map_or("never".into(), |n| n.to_string()),
        ));
        rows.push((
            format!("{p}window rule predicts"),
            b.predicted.map_or("never".into(), |n| n.to_string()),
        ));
        rows.push((
            format!("{p}POSTs / most attempts of one"),
            format!("{} / {}", b.post_requests, b.post_max_attempts),
        ));
        rows.push((format!("{p}fallbacks served"), b.fallbacks.to_string()));
        rows.push((format!("{p}5xx answers"), b.server_errors.to_string()));

        assert!(
            b.extra <= b.budget_limit,
            "{}: {} extra > {}",
            b.rate,
            b.extra,
            b.budget_limit
        );
        assert!(b.post_max_attempts <= 1, "a POST was retried");
        assert_eq!(
            b.opened_at, b.predicted,
            "{}: opened where the window says",
            b.rate
        );
        if b.rate >= 60.0 {
            // Window of 20, minimum 10: at 60 % the breaker trips before 20 attempts.
            let at = b.opened_at.expect("the breaker opens at 60 %");
            assert!((10..=20).contains(&at), "{at}");
            assert!(b.fallbacks > 0);
        }
    }
    let rows: Vec<(&str, String)> = rows.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    table(
        "chaos (b): error burst (503s) behind retry (3 attempts, budget 20 %) and a breaker (window 20, minimum 10, 50 %)",
        &rows,
    );
}

/// The fault layer's rate through the whole stack: injected faults equal the 5xx the
/// breaker saw, switching kinds at runtime.
#[tokio::test(start_paused = true)]
async fn switching_kinds_mid_run_changes_what_the_stack_sees() {
    let events = Events::default();
    let faults = FaultLayer::builder()
        .seed(3)
        .error_rate(100.0)
        .latency(100.0, Duration::from_millis(300))
        .http_status(StatusCode::BAD_GATEWAY)
        .observer(events.observer())
        .build()
        .unwrap();
    let chaos = faults.handle();
    let app = Router::new().route("/", get(|| async { "real" })).layer(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new())
            .layer(apology())
            .layer(TimeoutLayer::new(Duration::from_millis(200)))
            .layer(faults),
    );
    let get = || Request::get("/").body(Body::empty()).unwrap();
    chaos.enable();
    chaos.set_kinds([FaultKind::Error]);
    let a = send(&app, get()).await;
    chaos.set_kinds([FaultKind::Latency]);
    let b = send(&app, get()).await;
    chaos.disable();
    let c = send(&app, get()).await;
    table(
        "chaos (c): switching fault kinds at runtime (timeout 200 ms, latency 300 ms)",
        &[
            ("error only: status", a.status.to_string()),
            ("latency only: fallback after", format!("{:?}", b.elapsed)),
            ("off: status", c.status.to_string()),
        ],
    );
    assert_eq!(
        (a.status, a.elapsed),
        (StatusCode::BAD_GATEWAY, Duration::ZERO)
    );
    assert!(b.fallback);
    assert_eq!(b.elapsed, Duration::from_millis(200));
    assert_eq!(
        (c.status, c.fallback, c.elapsed),
        (StatusCode::OK, false, Duration::ZERO)
    );
    assert_eq!(events.get("fault/fault_injected"), 2);
}
