//! Chaos scenarios: the recommended stack around a dependency driven by the fault layer,
//! in paused time, each asserting numbers. Print the summary tables with
//!
//! ```text
//! cargo test --all-features --test chaos -- --nocapture
//! ```
//!
//! Stack of (a)–(c), outermost first: edge adapter (`RejectionResponseLayer`) → fallback →
//! (overall timeout → retry) → circuit breaker → per-attempt timeout → `FaultLayer` → an
//! axum handler. (d) puts a keyed rate limit in front of the fault layer, (e) a timeout
//! and an idempotency layer. (f) (feature `redis`) shares limit, flags and idempotency
//! records through a `redis-server` it kills and restarts.
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

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

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

/// One answer of the flood scenario: who sent it, and whether it was admitted.
async fn send_as(app: &Router, client: &'static str) -> (StatusCode, bool) {
    let req = Request::get("/")
        .header("x-client", client)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let retry_after = res.headers().contains_key("retry-after");
    (res.status(), retry_after)
}

/// (d) One client floods (200 requests a second) while four others send 5 a second, all
/// behind a keyed limit of 10 a second (burst 10) and a dependency with injected latency:
/// the flooder gets its quota and 429s, the others every request.
#[tokio::test(start_paused = true)]
async fn a_flood_from_one_client_leaves_the_others_their_rate() {
    const SECONDS: u64 = 10;
    const FLOODER: &str = "flooder";
    const OTHERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
    let events = Events::default();
    let handled: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let faults = FaultLayer::builder()
        .name("dependency")
        .seed(7)
        .latency(30.0, Duration::from_millis(50))
        .observer(events.observer())
        .build()
        .unwrap();
    faults.handle().enable();
    let limit = tower_parapet::RateLimitLayer::keyed(
        tower_parapet::key::Header::new(axum::http::HeaderName::from_static("x-client")),
        tower_parapet::rate_limit::Quota::per_second(10),
    )
    .observer(events.observer());
    let h = handled.clone();
    let app = Router::new()
        .route(
            "/",
            get(move |headers: axum::http::HeaderMap| {
                let client = headers["x-client"].to_str().unwrap().to_owned();
                *h.lock().unwrap().entry(client).or_default() += 1;
                async { "real" }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(limit)
                .layer(faults),
        );

    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let schedule = std::iter::once((FLOODER, Duration::from_millis(5)))
        .chain(OTHERS.iter().map(|c| (*c, Duration::from_millis(200))));
    for (client, every) in schedule {
        let n = Duration::from_secs(SECONDS).as_millis() / every.as_millis();
        for i in 0..n as u32 {
            let app = app.clone();
            tasks.spawn(async move {
                tokio::time::sleep_until(start + every * i).await;
                (client, send_as(&app, client).await)
            });
        }
    }
    let mut sent: HashMap<&str, u32> = HashMap::new();
    let mut admitted: HashMap<&str, u32> = HashMap::new();
    let mut limited: HashMap<&str, u32> = HashMap::new();
    let mut limited_without_retry_after = 0;
    let mut other_statuses = 0;
    for (client, (status, retry_after)) in tasks.join_all().await {
        *sent.entry(client).or_default() += 1;
        match status {
            StatusCode::OK => *admitted.entry(client).or_default() += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                *limited.entry(client).or_default() += 1;
                limited_without_retry_after += u32::from(!retry_after);
            }
            _ => other_statuses += 1,
        }
    }
    let handled = handled.lock().unwrap().clone();
    let count = |m: &HashMap<&str, u32>, c: &str| m.get(c).copied().unwrap_or(0);

    let mut rows = Vec::new();
    for c in std::iter::once(FLOODER).chain(OTHERS) {
        rows.push((
            format!("{c}: admitted / sent"),
            format!("{} / {}", count(&admitted, c), count(&sent, c)),
        ));
        rows.push((format!("{c}: 429"), count(&limited, c).to_string()));
    }
    rows.push((
        "rate limit events (rejections)".into(),
        events.get("rate_limit/rate_limited").to_string(),
    ));
    rows.push((
        "latency faults injected".into(),
        events.get("fault/fault_injected").to_string(),
    ));
    rows.push((
        "429 without Retry-After".into(),
        limited_without_retry_after.to_string(),
    ));
    rows.push((
        "answers other than 200 or 429".into(),
        other_statuses.to_string(),
    ));
    let rows: Vec<(&str, String)> = rows.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    table(
        "chaos (d): one client floods at 200/s, four send 5/s (keyed limit 10/s, burst 10, 10 s)",
        &rows,
    );

    // The others: every request admitted and handled, none refused.
    for c in OTHERS {
        assert_eq!(count(&sent, c), 50, "{c}");
        assert_eq!(count(&admitted, c), 50, "{c}");
        assert_eq!(count(&limited, c), 0, "{c}");
        assert_eq!(handled.get(c).copied(), Some(50), "{c}");
    }
    // The flooder: its burst plus its rate over the run, the rest refused with 429.
    let flood_ok = count(&admitted, FLOODER);
    assert_eq!(count(&sent, FLOODER), 2_000);
    assert!(
        (10 + 10 * SECONDS as u32 - 1..=10 + 10 * SECONDS as u32).contains(&flood_ok),
        "{flood_ok}"
    );
    assert_eq!(count(&limited, FLOODER), 2_000 - flood_ok);
    assert_eq!(handled.get(FLOODER).copied(), Some(flood_ok));
    assert_eq!(
        events.get("rate_limit/rate_limited"),
        count(&limited, FLOODER)
    );
    assert_eq!(limited_without_retry_after, 0);
    assert_eq!(other_statuses, 0);
    assert!(events.get("fault/fault_injected") > 0);
}

/// (e) Duplicate submissions of 40 payments, six per key from different clients, some
/// while the first still runs, through a handler whose calls fail (503) or hang
/// (cut at 1 s) at injected rates, behind an idempotency layer that waits 300 ms for a
/// key in flight: no key runs twice, every client gets an answer — the stored response,
/// a conflict, or a retryable error.
#[tokio::test(start_paused = true)]
async fn duplicate_submissions_under_faults_run_each_key_at_most_once() {
    use tower_parapet::idempotency::{Conflict, IdempotencyLayer};

    const KEYS: u32 = 40;
    const DEADLINE: Duration = Duration::from_secs(1);
    /// When each of a key's six submissions is sent, after the key's first.
    const OFFSETS_MS: [u64; 6] = [0, 5, 50, 400, 1_500, 3_000];
    let events = Events::default();
    let executions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let faults = FaultLayer::builder()
        .name("payments")
        .seed(11)
        .error_rate(25.0)
        .hang_rate(15.0)
        .http_status(StatusCode::SERVICE_UNAVAILABLE)
        .observer(events.observer())
        .build()
        .unwrap();
    faults.handle().enable();
    let idempotency = IdempotencyLayer::new()
        .conflict(Conflict::Wait(Duration::from_millis(300)))
        // A 503 the fault layer answered before the handler ran is not a result to keep.
        .store_if(|s| s != StatusCode::SERVICE_UNAVAILABLE)
        .observer(events.observer());
    let ex = executions.clone();
    let app = Router::new()
        .route(
            "/pay",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let key = headers["idempotency-key"].to_str().unwrap().to_owned();
                let n = {
                    let mut ex = ex.lock().unwrap();
                    let n = ex.entry(key.clone()).or_default();
                    *n += 1;
                    *n
                };
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    format!("charged {key} (execution {n})")
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(TimeoutLayer::new(DEADLINE).observer(events.observer()))
                .layer(idempotency)
                .layer(faults),
        );

    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..KEYS {
        for offset in OFFSETS_MS {
            let app = app.clone();
            tasks.spawn(async move {
                let at = start + Duration::from_millis(100 * u64::from(k) + offset);
                tokio::time::sleep_until(at).await;
                let key = format!("pay-{k}");
                let req = Request::post("/pay")
                    .header("idempotency-key", &key)
                    .body(Body::empty())
                    .unwrap();
                let sent = Instant::now();
                let res = app.clone().oneshot(req).await.unwrap();
                let status = res.status();
                let replayed = res.headers().contains_key("idempotent-replayed");
                let body = axum::body::to_bytes(res.into_body(), usize::MAX)
                    .await
                    .unwrap();
                (key, status, replayed, body, sent.elapsed())
            });
        }
    }
    let answers = tasks.join_all().await;
    let executions = executions.lock().unwrap().clone();

    let by = |s: StatusCode| answers.iter().filter(|a| a.1 == s).count();
    let ok = by(StatusCode::OK);
    let replayed = answers
        .iter()
        .filter(|a| a.1 == StatusCode::OK && a.2)
        .count();
    let (conflicts, unavailable, timed_out) = (
        by(StatusCode::CONFLICT),
        by(StatusCode::SERVICE_UNAVAILABLE),
        by(StatusCode::GATEWAY_TIMEOUT),
    );
    let others = answers.len() - ok - conflicts - unavailable - timed_out;
    let most_runs = executions.values().copied().max().unwrap_or(0);
    let executed = executions.len();
    let slowest = answers.iter().map(|a| a.4).max().unwrap();
    // Every 200 of a key carries the body of its one execution.
    let mut bodies: HashMap<&str, std::collections::HashSet<&[u8]>> = HashMap::new();
    for a in answers.iter().filter(|a| a.1 == StatusCode::OK) {
        bodies.entry(a.0.as_str()).or_default().insert(&a.3[..]);
    }
    let keys_with_two_bodies = bodies.values().filter(|b| b.len() > 1).count();
    let injected = events.get("fault/fault_injected");
    let released = events.get("idempotency/released");

    table(
        "chaos (e): 40 keys x 6 submissions, handler faults 25 % 503 + 15 % hang, wait 300 ms, deadline 1 s",
        &[
            ("submissions", answers.len().to_string()),
            (
                "handler executions",
                executions.values().sum::<u32>().to_string(),
            ),
            ("keys executed", executed.to_string()),
            ("most executions of one key", most_runs.to_string()),
            (
                "keys answered with two different bodies",
                keys_with_two_bodies.to_string(),
            ),
            ("200 (stored response)", ok.to_string()),
            ("  of them replayed", replayed.to_string()),
            ("409 (conflict: key still in flight)", conflicts.to_string()),
            ("503 (injected error, retryable)", unavailable.to_string()),
            ("504 (hung call cut at the deadline)", timed_out.to_string()),
            ("any other answer", others.to_string()),
            ("faults injected", injected.to_string()),
            ("keys released for a retry", released.to_string()),
            ("slowest answer", format!("{slowest:?}")),
        ],
    );

    assert_eq!(answers.len(), (KEYS as usize) * OFFSETS_MS.len());
    assert_eq!(most_runs, 1, "a key executed more than once");
    assert_eq!(keys_with_two_bodies, 0);
    // Every client got an answer of the three kinds, within the deadline.
    assert_eq!(others, 0);
    assert!(slowest <= DEADLINE, "{slowest:?}");
    // Each execution answered one client fresh; every other 200 is a replay.
    assert_eq!(ok - replayed, executed);
    // Faults happened and were all answered as retryable errors (a waiter whose holder
    // failed may run the request itself, so a fault reaches exactly one client).
    assert!(unavailable > 0 && timed_out > 0 && conflicts > 0);
    assert_eq!(unavailable + timed_out, injected as usize);
    // Nearly every key ends up executed: six tries against a 40 % fault rate.
    assert!(executed >= KEYS as usize - 2, "{executed}");
}

/// (f) Redis restarted mid-run. The stack shares its state through Redis: a keyed rate
/// limit (`local` when Redis is away), the feature gate following a `RedisFlagSource`, and
/// an idempotency layer on a `RedisIdempotencyStore` (fail closed). Redis is killed with
/// SIGKILL mid-traffic and started again on the same port: every answer arrives within
/// the backend timeout's bound, each layer's policy is counted, the last flags stay, and
/// the stack goes back to Redis without being rebuilt.
///
/// Real time, not paused: Redis answers over a socket on its own clock. Skipped with a
/// message without `redis-server` (mandatory under `.ci/run`).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_run_policies_then_recovery() {
    use std::time::Instant;
    use tower_parapet::flags::{EvalContext, FeatureGateLayer, FlagDef, FlagStore};
    use tower_parapet::idempotency::IdempotencyLayer;
    use tower_parapet::key;
    use tower_parapet::rate_limit::{Quota, RateLimitLayer};
    use tower_parapet::redis::{
        FailurePolicy, RedisBackend, RedisFlagSource, RedisIdempotencyStore,
    };

    const PER_PHASE: u32 = 40;
    let Some(mut server) = redis_server::RedisServer::start() else {
        return;
    };
    let timeout = Duration::from_millis(150);
    let events = Events::default();
    let backend = RedisBackend::builder(server.url())
        .timeout(timeout)
        .observer(events.observer())
        .build()
        .unwrap();
    let flags = FlagStore::new();
    let source = RedisFlagSource::new(backend.clone()).resync(Duration::from_millis(100));
    source.put("payments", &FlagDef::default()).await.unwrap();
    let watcher = source.clone().watch(flags.clone());
    let ctx = EvalContext::new();
    while flags.get("payments").is_none() {
        tokio::task::yield_now().await;
    }
    let client = || key::Header::new(axum::http::HeaderName::from_static("x-client"));
    let charges = Arc::new(AtomicU32::new(0));
    let counted = charges.clone();
    let app = Router::new()
        .route(
            "/pay",
            axum::routing::post(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::CREATED }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(
                    RateLimitLayer::keyed(client(), Quota::per_minute(1_000))
                        .observer(events.observer())
                        .shared(backend.clone())
                        .on_redis_error(FailurePolicy::Local),
                )
                .layer(FeatureGateLayer::new(&flags, "payments"))
                .layer(
                    IdempotencyLayer::new()
                        .observer(events.observer())
                        .store(RedisIdempotencyStore::new(backend.clone()))
                        .on_store_error(FailurePolicy::FailClosed),
                ),
        );
    let pay = |phase: &str, i: u32| {
        Request::post("/pay")
            .header("x-client", format!("c{}", i % 4))
            .header("idempotency-key", format!("{phase}-{i}"))
            .body(Body::empty())
            .unwrap()
    };
    // Status counts and the slowest answer of one phase.
    let run = |phase: &'static str| {
        let app = app.clone();
        async move {
            let mut statuses: HashMap<u16, u32> = HashMap::new();
            let mut slowest = Duration::ZERO;
            for i in 0..PER_PHASE {
                let started = Instant::now();
                let res = app.clone().oneshot(pay(phase, i)).await.unwrap();
                slowest = slowest.max(started.elapsed());
                *statuses.entry(res.status().as_u16()).or_default() += 1;
            }
            (statuses, slowest)
        }
    };

    let (before, slow_before) = run("before").await;
    server.stop();
    let (during, slow_during) = run("during").await;
    let flag_kept = flags.is_enabled("payments", &ctx);
    server.restart();
    // Back by itself: each probe is bounded by the timeout.
    let started = Instant::now();
    let mut probes = 0;
    let mut probes_admitted = 0;
    while !backend.is_up() {
        probes += 1;
        assert!(probes < 500, "no recovery");
        let res = app.clone().oneshot(pay("probe", probes)).await.unwrap();
        if res.status() == StatusCode::CREATED {
            probes_admitted += 1;
        }
        if !backend.is_up() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let recovered_after = started.elapsed();
    let (after, slow_after) = run("after").await;
    // The restarted Redis is empty: the flags stayed (an emptied Redis is not taken for
    // "no flags"). Flags follow Redis again once written anew.
    let flag_after_restart = flags.get("payments").is_some_and(|d| d.enabled);
    source
        .put(
            "payments",
            &FlagDef {
                enabled: false,
                ..FlagDef::default()
            },
        )
        .await
        .unwrap();
    let mut waited = 0;
    while flags.get("payments").is_none_or(|d| d.enabled) {
        waited += 1;
        assert!(waited < 500, "the watcher did not resubscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = app
        .clone()
        .oneshot(pay("killed", 0))
        .await
        .unwrap()
        .status();
    watcher.abort();

    let count = |m: &HashMap<u16, u32>, s: u16| m.get(&s).copied().unwrap_or(0);
    table(
        "(f) Redis killed and restarted mid-run (40 payments per phase)",
        &[
            ("before: 201", count(&before, 201).to_string()),
            (
                "during outage: 503 (idempotency fails closed)",
                count(&during, 503).to_string(),
            ),
            (
                "during outage: rate limit decided locally",
                events.get("rate_limit/local").to_string(),
            ),
            (
                "during outage: idempotency policy applied",
                events.get("idempotency/fail_closed").to_string(),
            ),
            (
                "during outage: slowest answer (ms)",
                slow_during.as_millis().to_string(),
            ),
            (
                "backend_down / backend_recovered events",
                format!(
                    "{} / {}",
                    events.get("backend/backend_down"),
                    events.get("backend/backend_recovered")
                ),
            ),
            (
                "recovery after restart (ms)",
                recovered_after.as_millis().to_string(),
            ),
            ("after: 201", count(&after, 201).to_string()),
            ("flag kept while Redis was away", flag_kept.to_string()),
            (
                "flag kept after an empty restart",
                flag_after_restart.to_string(),
            ),
            ("kill switch after recovery", killed.as_u16().to_string()),
        ],
    );
    assert_eq!(count(&before, 201), PER_PHASE);
    assert_eq!(count(&during, 503), PER_PHASE, "{during:?}");
    let local = events.get("rate_limit/local");
    assert!((PER_PHASE..=PER_PHASE + probes).contains(&local), "{local}");
    assert!(events.get("idempotency/fail_closed") >= PER_PHASE);
    // Each request makes at most two bounded Redis calls (limit, claim).
    for slow in [slow_before, slow_during, slow_after] {
        assert!(slow < timeout * 2 + Duration::from_millis(100), "{slow:?}");
    }
    assert_eq!(events.get("backend/backend_down"), 1);
    assert_eq!(events.get("backend/backend_recovered"), 1);
    assert_eq!(count(&after, 201), PER_PHASE);
    assert!(flag_kept, "the last flags stay while Redis is away");
    assert!(
        flag_after_restart,
        "an emptied Redis does not switch flags off"
    );
    assert_eq!(killed, StatusCode::NOT_FOUND);
    assert_eq!(
        charges.load(Ordering::SeqCst),
        2 * PER_PHASE + probes_admitted,
        "nothing ran during the outage"
    );
}
