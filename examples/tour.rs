//! The tour: simulated dependencies that hang, fail in bursts and slow down, and a client
//! that floods, behind parapet stacks; for each request, what the client got and what each
//! layer decided.
//!
//! Runs in-process on tokio's paused clock, so minutes of simulated time pass in
//! milliseconds and every run prints the same table. No network, no setup:
//!
//! ```sh
//! cargo run --example tour
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_parapet::BulkheadLayer;
use tower_parapet::cache::CacheLayer;
use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use tower_parapet::classify::ServerErrorsAsFailures;
use tower_parapet::fallback::{self, Failure, FallbackLayer, HeaderMark, LastKnownGood};
use tower_parapet::fault::FaultLayer;
use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::idempotency::{Conflict, IdempotencyLayer};
use tower_parapet::key::{ClientIp, PeerAddr, Target};
use tower_parapet::observe::Event;
use tower_parapet::rate_limit::{Quota, RateLimitLayer};
use tower_parapet::retry::{Backoff, RetryLayer};
use tower_parapet::timeout::{Deadline, HttpDeadline, TimeoutLayer};
use tower_parapet::{Mode, ModeHandle};

type Body = Full<Bytes>;
type Stack =
    BoxCloneService<Request<Body>, Response<tower_parapet::http::ResponseBody<Body>>, Infallible>;

/// Collects every parapet event, in the words of the layer that made the decision.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    fn observer(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = self.0.clone();
        move |e: &Event<'_>| {
            let detail = match *e {
                Event::TimedOut { after, .. } => format!(" after {}", ms(after)),
                Event::DeadlineShortened { caller, .. } => format!(" to {}", ms(caller)),
                Event::DeadlineMalformed { header, .. } => format!(" ({header})"),
                Event::FallbackServed {
                    source, trigger, ..
                } => {
                    format!(" from {source} (on {trigger})")
                }
                Event::FallbackUnavailable {
                    source, trigger, ..
                } => {
                    format!(": {source} had nothing (on {trigger})")
                }
                Event::InternalError { error, .. } => format!(" \"{error}\" (logged, not sent)"),
                Event::IdempotencyReplayed { key, waited, .. } => {
                    format!(" {key}{}", if waited { " after waiting" } else { "" })
                }
                Event::IdempotencyStored { key, .. } => format!(" {key}"),
                Event::IdempotencyRejected { kind, .. } => format!(" ({kind})"),
                Event::IdempotencyReleased { reason, .. } => format!(" ({reason})"),
                Event::CircuitStateChanged {
                    from,
                    failure_rate,
                    retry_after,
                    ..
                } => {
                    let rate = failure_rate
                        .map(|r| format!(", failure rate {r:.0}%"))
                        .unwrap_or_default();
                    let wait = retry_after
                        .map(|w| format!(", probes in {}", ms(w)))
                        .unwrap_or_default();
                    format!(" (from {from}{rate}{wait})")
                }
                Event::CircuitRejected {
                    state, retry_after, ..
                } => match retry_after {
                    Some(after) => format!(" ({state}, {} left)", ms(after)),
                    None => format!(" ({state})"),
                },
                Event::RateLimited {
                    class,
                    key,
                    policy,
                    retry_after,
                    ..
                } => {
                    let key = key.map(|k| format!(" key={k:?}")).unwrap_or_default();
                    format!(" [{class}]{key} by {policy}, retry in {}", ms(retry_after))
                }
                Event::FlagChanged {
                    flag, change, by, ..
                } => format!(" `{flag}` {change} by {by}"),
                Event::FeatureGated { flag, reason, .. } => format!(" `{flag}` ({reason})"),
                Event::RetryScheduled {
                    attempt,
                    delay,
                    pushback,
                    ..
                } => {
                    let pushed = pushback
                        .map(|p| format!(", server said {}", ms(p)))
                        .unwrap_or_default();
                    format!(" (attempt {attempt} in {}{pushed})", ms(delay))
                }
                Event::RetryStopped { reason, .. } => format!(" ({})", reason.as_str()),
                Event::FaultInjected { fault, .. } => format!(" ({fault})"),
                Event::BulkheadRejected { limit, waited, .. } => {
                    format!(" (limit {limit}, waited {})", ms(waited))
                }
                _ => String::new(),
            };
            log.lock()
                .unwrap()
                .push(format!("{}:{}{detail}", e.layer(), e.outcome()));
        }
    }

    fn take(&self) -> String {
        let events = std::mem::take(&mut *self.0.lock().unwrap());
        // Successful snapshots are routine: keep the table readable.
        let shown: Vec<_> = events
            .into_iter()
            .filter(|e| !e.contains("last_known_good_stored"))
            .collect();
        if shown.is_empty() {
            "-".into()
        } else {
            shown.join("; ")
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// One scenario's table.
struct Table {
    start: Instant,
    rows: Vec<[String; 5]>,
}

impl Table {
    fn new() -> Table {
        Table {
            start: Instant::now(),
            rows: Vec::new(),
        }
    }

    async fn send<S, B>(&mut self, svc: &mut S, journal: &Journal, what: &str, req: Request<Body>)
    where
        S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
        B: http_body::Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let (sent, answer, body) = exchange(svc, req).await;
        self.push(sent, what, answer, body, journal.take());
    }

    fn push(&mut self, sent: Instant, what: &str, answer: String, body: String, decided: String) {
        self.rows.push([
            format!("{:>8.3}s", (sent - self.start).as_secs_f64()),
            what.to_owned(),
            answer,
            body,
            decided,
        ]);
    }

    fn print(&self, title: &str, lesson: &str) {
        println!("\n## {title}\n");
        let headers = ["at", "request", "answer", "body", "what parapet decided"];
        let mut widths = headers.map(str::len);
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 5]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("| {} |", padded.join(" | "));
        };
        line(headers);
        println!("|{}|", widths.map(|w| "-".repeat(w + 2)).join("|"));
        for row in &self.rows {
            line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
        }
        println!("\n{lesson}");
    }
}

/// One request: when it was sent, the answer line (status, time, notable headers), and
/// the body (a problem document's detail only).
async fn exchange<S, B>(svc: &mut S, req: Request<Body>) -> (Instant, String, String)
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let sent = Instant::now();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let took = sent.elapsed();
    let status = res.status();
    let header = |name: &str, label: &str| {
        res.headers()
            .get(name)
            .map(|v| format!(" {label}{}", v.to_str().unwrap_or("?")))
            .unwrap_or_default()
    };
    let notes = [
        header("retry-after", "Retry-After: "),
        header("ratelimit", "RateLimit: "),
        header("idempotent-replayed", "Idempotent-Replayed: "),
        header("cache-status", "Cache-Status: "),
        res.headers()
            .get("parapet-fallback")
            .map(|v| format!(" [fallback: {}]", v.to_str().unwrap_or("?")))
            .unwrap_or_default(),
    ]
    .concat();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let mut body = String::from_utf8_lossy(&body).into_owned();
    if body.starts_with('{') {
        // A problem+json document: show its detail only.
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        body = format!("problem: {}", doc["detail"].as_str().unwrap_or(""));
    }
    (
        sent,
        format!("{} in {}{notes}", status.as_u16(), ms(took)),
        body,
    )
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::default()).unwrap()
}

fn ok(text: impl Into<Bytes>) -> Response<Body> {
    Response::new(Full::new(text.into()))
}

/// A simulated dependency: `behaviour(n)` decides what the n-th call does.
fn dependency<F, Fut>(
    behaviour: F,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future = impl Send>
+ Clone
+ Send
+ 'static
where
    F: Fn(u32, Request<Body>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
{
    let calls = Arc::new(AtomicU32::new(0));
    service_fn(move |req: Request<Body>| {
        let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
        behaviour(n, req)
    })
}

async fn hangs(journal: &Journal) {
    // Every third call hangs forever; the others answer in 40 ms.
    let dep = dependency(|n, _| async move {
        if n % 3 == 0 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        Ok(ok(format!("report #{n}")))
    });
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(TimeoutLayer::new(Duration::from_secs(1)).observer(journal.observer()))
            .service(dep),
    );
    let mut t = Table::new();
    for _ in 0..5 {
        t.send(&mut svc, journal, "GET /report", get("/report"))
            .await;
    }
    t.print(
        "1. A dependency that hangs",
        "Without a deadline the hanging calls would hold their connections forever. With a 1 s \
         timeout they answer 504 + problem+json exactly at the deadline, and the next request \
         is served normally.",
    );
}

async fn caller_deadline(journal: &Journal) {
    // Takes 500 ms and tells how much of the caller's deadline it was given.
    let dep = dependency(|_, req: Request<Body>| async move {
        let budget = req
            .extensions()
            .get::<Deadline>()
            .map(|d| ms(d.remaining()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(ok(format!(
            "done (budget seen inside: {})",
            budget.unwrap_or_default()
        )))
    });
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(
                TimeoutLayer::new(Duration::from_secs(2))
                    .deadline(HttpDeadline::new())
                    .observer(journal.observer()),
            )
            .service(dep),
    );
    let with = |name: &str, value: &str| {
        Request::get("/quote")
            .header(name, value)
            .body(Body::default())
            .unwrap()
    };
    let mut t = Table::new();
    t.send(&mut svc, journal, "no deadline header", get("/quote"))
        .await;
    t.send(
        &mut svc,
        journal,
        "grpc-timeout: 5S",
        with("grpc-timeout", "5S"),
    )
    .await;
    t.send(
        &mut svc,
        journal,
        "grpc-timeout: 300m",
        with("grpc-timeout", "300m"),
    )
    .await;
    t.send(
        &mut svc,
        journal,
        "grpc-timeout: +5S (malformed)",
        with("grpc-timeout", "+5S"),
    )
    .await;
    t.print(
        "2. The caller's deadline",
        "The configured 2 s is a ceiling: a caller that will give up after 300 ms gets its answer \
         at 300 ms instead of work nobody waits for. The remaining deadline travels in the \
         request's extensions to inner layers and outgoing calls. A malformed header is \
         ignored with a warning, never a panic.",
    );
}

async fn last_known_good(journal: &Journal) {
    // Prices: fine for 3 calls, then a burst of failures (a 503, an error, a hang), then fine.
    let dep = dependency(|n, _| async move {
        match n {
            4 => Ok(Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Body::from("upstream sick"))
                .unwrap()),
            5 => Err("connection reset by peer".into()),
            6 => std::future::pending().await,
            7 => Err("connection refused".into()),
            9 => Err("connection refused".into()),
            _ => Ok(ok(format!("prices v{n}"))),
        }
    });
    let lkg = LastKnownGood::http(Target::new())
        .ttl(Duration::from_secs(300))
        .max_entries(10_000);
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(
                FallbackLayer::new(lkg)
                    .classifier(ServerErrorsAsFailures)
                    .mark(HeaderMark::default())
                    .observer(journal.observer()),
            )
            .layer(TimeoutLayer::new(Duration::from_secs(1)).observer(journal.observer()))
            .service(dep),
    );
    let mut t = Table::new();
    for _ in 0..6 {
        t.send(&mut svc, journal, "GET /prices", get("/prices"))
            .await;
    }
    tokio::time::advance(Duration::from_secs(301)).await;
    t.send(
        &mut svc,
        journal,
        "GET /prices (5 min later)",
        get("/prices"),
    )
    .await;
    t.send(&mut svc, journal, "GET /prices", get("/prices"))
        .await;
    t.send(&mut svc, journal, "GET /prices", get("/prices"))
        .await;
    t.print(
        "3. Failures in bursts, answered from the last known good",
        "During the burst (a 503, a reset, a hang) clients get the last good prices, marked \
         `parapet-fallback` so nobody mistakes them for fresh data. Once the stored answer is \
         older than its 5 min TTL it is not served any more: the failure shows through (a 500 \
         that leaks nothing), and the next success refills the store for the next failure.",
    );
}

async fn static_value(journal: &Journal) {
    let dep = dependency(|n, _| async move {
        if n % 2 == 0 {
            Err("recommendation engine down".into())
        } else {
            Ok(ok(format!("[\"item-{n}\"]")))
        }
    });
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(
                FallbackLayer::new(fallback::value(ok("[]")))
                    .mark(HeaderMark::default())
                    .observer(journal.observer()),
            )
            .service(dep),
    );
    let mut t = Table::new();
    for _ in 0..4 {
        t.send(
            &mut svc,
            journal,
            "GET /recommendations",
            get("/recommendations"),
        )
        .await;
    }
    t.print(
        "4. An empty list beats an error page",
        "For a non-essential panel, a fixed answer (`[]`) keeps the page whole while the \
         recommendation engine is down.",
    );
}

async fn shadow(journal: &Journal) {
    let dep = dependency(|n, _| async move {
        tokio::time::sleep(Duration::from_millis(if n % 2 == 0 { 300 } else { 80 })).await;
        Ok(ok(format!("search results #{n}")))
    });
    let mode = ModeHandle::new(Mode::Shadow);
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(
                TimeoutLayer::new(Duration::from_millis(200))
                    .mode(mode.clone())
                    .observer(journal.observer()),
            )
            .service(dep),
    );
    let mut t = Table::new();
    t.send(&mut svc, journal, "GET /search (shadow)", get("/search"))
        .await;
    t.send(&mut svc, journal, "GET /search (shadow)", get("/search"))
        .await;
    mode.set(Mode::Enforce);
    t.send(&mut svc, journal, "GET /search (enforce)", get("/search"))
        .await;
    t.send(&mut svc, journal, "GET /search (enforce)", get("/search"))
        .await;
    t.print(
        "5. Shadow mode: watch a tighter timeout before it bites",
        "In shadow mode the 200 ms timeout only reports the calls it would have cut; switched \
         to enforce at runtime through its handle (no redeploy), it cuts them.",
    );
}

async fn inner_error(journal: &Journal) {
    #[derive(Debug, thiserror::Error)]
    #[error("query failed")]
    struct QueryFailed(#[source] std::io::Error);
    let dep = dependency(|_, _| async move {
        Err(Box::new(QueryFailed(std::io::Error::other(
            "password authentication failed for user \"app\"",
        ))) as BoxError)
    });
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .service(dep),
    );
    let mut t = Table::new();
    t.send(&mut svc, journal, "GET /account", get("/account"))
        .await;
    t.print(
        "6. An inner error never leaks",
        "The client sees a plain 500 problem document; the error and its whole source chain go \
         to the log (here: the journal) for whoever is on call.",
    );
}

async fn circuit_breaker(journal: &Journal) {
    // Inventory answers in 30 ms while up; while down, every call hangs.
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let state = up.clone();
    let dep = dependency(move |n, _| {
        let up = state.load(Ordering::SeqCst);
        async move {
            if !up {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok(ok(format!("stock #{n}")))
        }
    });
    let breaker = CircuitBreakerLayer::builder()
        .name("inventory")
        .sliding_window(SlidingWindow::count(20))
        .minimum_calls(5)
        .failure_rate_threshold(50)
        .wait_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(2)
        .classifier(ServerErrorsAsFailures)
        .observer(journal.observer())
        .build()
        .expect("a valid breaker");
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(breaker)
            .layer(TimeoutLayer::new(Duration::from_secs(1)).observer(journal.observer()))
            .service(dep),
    );
    let mut t = Table::new();
    for _ in 0..3 {
        t.send(&mut svc, journal, "GET /stock", get("/stock")).await;
    }
    up.store(false, Ordering::SeqCst);
    for i in 0..5 {
        let down = "GET /stock (inventory down)";
        t.send(&mut svc, journal, down, get("/stock")).await;
        if i >= 3 {
            // The breaker is open by now: clients come back a little later.
            tokio::time::advance(Duration::from_secs(2)).await;
        }
    }
    up.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(6)).await;
    for _ in 0..4 {
        t.send(
            &mut svc,
            journal,
            "GET /stock (inventory back)",
            get("/stock"),
        )
        .await;
    }
    t.print(
        "7. A dependency dies: the circuit breaker stops the hammering",
        "Each hanging call costs a client a full second until half the recent calls have \
         failed; then the breaker opens and answers 503 at once, with Retry-After saying when \
         to come back, without touching the dead dependency. After the 10 s wait two probe \
         calls go through (half-open); they succeed, so the breaker closes and traffic flows \
         again.",
    );
}

async fn flood(journal: &Journal) {
    let dep = dependency(|_, _| async { Ok(ok("catalogue page")) });
    // Clients reach the service through a load balancer at 10.0.0.2, which appends the
    // address it saw to X-Forwarded-For. Each client IP may send 5 requests per second.
    let limit = RateLimitLayer::keyed(
        ClientIp::trusting(["10.0.0.0/8"]).expect("a CIDR block"),
        Quota::per_second(5),
    )
    .observer(journal.observer());
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(limit)
            .service(dep),
    );
    let via_proxy = |client: &str| {
        let mut req = Request::get("/catalogue")
            .header("x-forwarded-for", client)
            .body(Body::default())
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr(std::net::SocketAddr::from(([10, 0, 0, 2], 443))));
        req
    };
    let mut t = Table::new();
    for i in 1..=7 {
        t.send(
            &mut svc,
            journal,
            &format!("flooder 203.0.113.66 #{i}"),
            via_proxy("203.0.113.66"),
        )
        .await;
    }
    t.send(
        &mut svc,
        journal,
        "alice 198.51.100.7",
        via_proxy("198.51.100.7"),
    )
    .await;
    t.send(
        &mut svc,
        journal,
        "bob 198.51.100.8",
        via_proxy("198.51.100.8"),
    )
    .await;
    // The flooder connects directly and claims to be alice: its own peer address counts.
    let mut spoofed = Request::get("/catalogue")
        .header("x-forwarded-for", "198.51.100.7")
        .body(Body::default())
        .unwrap();
    spoofed
        .extensions_mut()
        .insert(PeerAddr(std::net::SocketAddr::from((
            [203, 0, 113, 66],
            50_000,
        ))));
    t.send(
        &mut svc,
        journal,
        "flooder, direct, \"X-Forwarded-For: alice\"",
        spoofed,
    )
    .await;
    tokio::time::advance(Duration::from_millis(200)).await;
    t.send(
        &mut svc,
        journal,
        "flooder 203.0.113.66, 200 ms later",
        via_proxy("203.0.113.66"),
    )
    .await;
    t.send(
        &mut svc,
        journal,
        "alice 198.51.100.7",
        via_proxy("198.51.100.7"),
    )
    .await;
    t.print(
        "8. One client floods; the others are unaffected",
        "Each client IP has its own quota of 5 per second, refilled one every 200 ms. The \
         flooder's burst is spent after 5 requests and it gets 429 with Retry-After and the \
         RateLimit fields, while alice and bob are served as usual. The client IP is read \
         from X-Forwarded-For only because the peer is the trusted load balancer: connecting \
         directly and claiming to be alice changes nothing. Every refusal is an event with \
         the key's class (ip) as its label; the address itself only goes in the log line.",
    );
}

async fn double_click(journal: &Journal) {
    // The card network takes 800 ms per charge.
    let charges = Arc::new(AtomicU32::new(0));
    let card = charges.clone();
    let dep = dependency(move |_, req: Request<Body>| {
        let card = card.clone();
        async move {
            let amount = req.into_body().collect().await?.to_bytes();
            tokio::time::sleep(Duration::from_millis(800)).await;
            let n = card.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Response::builder()
                .status(StatusCode::CREATED)
                .body(Body::from(format!(
                    "charge #{n}: {}",
                    String::from_utf8_lossy(&amount)
                )))
                .unwrap())
        }
    });
    let svc = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(
                IdempotencyLayer::new()
                    .required(true)
                    .conflict(Conflict::Wait(Duration::from_secs(15)))
                    .observer(journal.observer()),
            )
            .service(dep),
    );
    let pay = |key: Option<&str>, amount: &str| {
        let mut req = Request::post("/pay");
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        req.body(Body::from(amount.to_owned())).unwrap()
    };
    let mut t = Table::new();
    // Two clicks 300 ms apart: the second arrives while the first is charging the card.
    let (mut a, mut b) = (svc.clone(), svc.clone());
    let (first, second) = tokio::join!(
        exchange(&mut a, pay(Some("\"order-1042\""), "49.90 EUR")),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            exchange(&mut b, pay(Some("\"order-1042\""), "49.90 EUR")).await
        }
    );
    // The journal holds the first click's "stored", then the second's "replayed".
    let decided = journal.take();
    let (one, two) = decided.split_once("; ").unwrap_or(("-", &decided));
    t.push(first.0, "POST /pay (click 1)", first.1, first.2, one.into());
    t.push(
        second.0,
        "POST /pay (click 2, 300 ms later)",
        second.1,
        second.2,
        two.into(),
    );
    let mut svc = svc;
    tokio::time::advance(Duration::from_secs(600)).await;
    t.send(
        &mut svc,
        journal,
        "POST /pay (page reloaded)",
        pay(Some("order-1042"), "49.90 EUR"),
    )
    .await;
    t.send(
        &mut svc,
        journal,
        "POST /pay (same key, other amount)",
        pay(Some("order-1042"), "4990 EUR"),
    )
    .await;
    t.send(
        &mut svc,
        journal,
        "POST /pay (no key)",
        pay(None, "49.90 EUR"),
    )
    .await;
    t.print(
        "9. A double-clicked \"Pay\" charges once",
        &format!(
            "The first click claims the key `order-1042` and charges the card; the second \
             click waits for that answer and gets the same one, marked Idempotent-Replayed, \
             as does the reload. The same key with another amount is a bug: 422. Card \
             charged {} time(s).",
            charges.load(Ordering::SeqCst)
        ),
    );
}

async fn kill_switch(journal: &Journal) {
    // The new recommendations engine has a bug: it fails for every request. The classic
    // one still works.
    let new_engine = dependency(|_, _| async {
        Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("recommendations v2: index out of range"))
            .unwrap())
    });
    let classic = dependency(|_, _| async { Ok(ok("recommendations v1: bestsellers")) });
    let flags = FlagStore::with_observer("flags", journal.observer());
    flags
        .set("recommendations-v2", FlagDef::boolean(true))
        .expect("a valid flag");
    journal.take();
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(
                FeatureGateLayer::new(&flags, "recommendations-v2")
                    .route_to(classic)
                    .observer(journal.observer()),
            )
            .service(new_engine),
    );
    let mut t = Table::new();
    for _ in 0..3 {
        t.send(
            &mut svc,
            journal,
            "GET /recommendations",
            get("/recommendations"),
        )
        .await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // The on-call engineer sees the 500s and flips the kill switch (here in code; in
    // production through the admin router or the flags file).
    let flipped = Instant::now();
    flags
        .by("oncall@example.com")
        .kill("recommendations-v2")
        .expect("the flag exists");
    t.push(
        flipped,
        "(operator kills `recommendations-v2`)",
        "-".into(),
        "-".into(),
        journal.take(),
    );
    for _ in 0..3 {
        t.send(
            &mut svc,
            journal,
            "GET /recommendations",
            get("/recommendations"),
        )
        .await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    t.print(
        "10. A buggy feature is switched off live",
        "The new recommendations engine fails for everyone. The on-call engineer kills its \
         flag: no deploy, no restart. The next request, and every one after it, is routed to \
         the classic engine by the feature gate, which reads the flag lock-free on every \
         request. The change is an event that says who made it.",
    );
}

async fn blip(journal: &Journal) {
    // Prices fail twice in a row now and then (a node restarting), and once answer 503 with
    // `Retry-After: 1` while they shed load.
    let dep = dependency(move |n, _| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut res = ok(format!("price #{n}"));
        match n {
            1 | 2 | 6 => *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
            4 => {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                res.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("1"));
            }
            _ => {}
        }
        Ok(res)
    });
    let retry = RetryLayer::http()
        .name("prices")
        .max_attempts(3)
        .backoff(Backoff::exponential(
            Duration::from_millis(50),
            2.0,
            Duration::from_secs(1),
        ))
        .seed(11)
        .observer(journal.observer())
        .build()
        .expect("a valid retry layer");
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(
                TimeoutLayer::new(Duration::from_secs(2))
                    .deadline(HttpDeadline::new())
                    .observer(journal.observer()),
            )
            .layer(retry)
            .service(dep),
    );
    let mut t = Table::new();
    t.send(&mut svc, journal, "GET /price (a blip)", get("/price"))
        .await;
    t.send(
        &mut svc,
        journal,
        "GET /price (shedding load)",
        get("/price"),
    )
    .await;
    let post = Request::post("/price").body(Body::default()).unwrap();
    t.send(&mut svc, journal, "POST /price (no Idempotency-Key)", post)
        .await;
    t.print(
        "11. A blip: retries absorb it, politely",
        "The first request fails twice and succeeds on its third attempt, after backoffs with \
         full jitter (seeded here, so the table does not change). When the server answers \
         503 with Retry-After: 1, the next attempt waits that second instead of the shorter \
         backoff. A POST without an Idempotency-Key is never repeated: its 503 goes back to \
         the client. A retry budget shared by every clone (20 % of requests + 10/s) would \
         stop the retries if the dependency stayed down, and no attempt starts that could \
         not finish before the 2 s deadline.",
    );
}

async fn bulkhead(journal: &Journal) {
    // Reports take a second each; the bulkhead lets two run at once and a third wait 300 ms.
    let dep = dependency(move |n, _| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(ok(format!("report #{n}")))
    });
    let bulkhead = BulkheadLayer::builder()
        .name("reports")
        .max_concurrent(2)
        .max_wait(Duration::from_millis(300))
        .retry_after(Duration::from_secs(1))
        .observer(journal.observer())
        .build()
        .expect("a valid bulkhead");
    let svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(bulkhead)
            .service(dep),
    );
    let mut t = Table::new();
    let (mut a, mut b, mut c) = (svc.clone(), svc.clone(), svc.clone());
    let (ra, rb, rc) = tokio::join!(
        exchange(&mut a, get("/report")),
        exchange(&mut b, get("/report")),
        exchange(&mut c, get("/report")),
    );
    for (i, (sent, answer, body)) in [ra, rb, rc].into_iter().enumerate() {
        let decided = if i == 2 { journal.take() } else { "-".into() };
        t.push(sent, "GET /report (3 at once)", answer, body, decided);
    }
    t.print(
        "12. Too many slow reports: the bulkhead keeps the rest of the service alive",
        "Two reports run; the third waits up to 300 ms for a slot, none frees up, and it gets \
         503 with Retry-After instead of tying up a worker for a second. The limit is shared \
         by every clone of the service and can be changed at runtime through its handle.",
    );
}

/// Counts the cache's decisions by outcome, for tables of thousands of reads.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<Vec<(String, u32)>>>);

impl Tally {
    fn observer(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let tally = self.0.clone();
        move |e: &Event<'_>| {
            let what = match *e {
                Event::CacheStaleServed { reason, .. } => format!("{}:{reason}", e.layer()),
                Event::CacheNotStored { reason, .. } => {
                    format!("{}:not_stored ({reason})", e.layer())
                }
                _ => format!("{}:{}", e.layer(), e.outcome()),
            };
            let mut tally = tally.lock().unwrap();
            match tally.iter_mut().find(|(w, _)| *w == what) {
                Some((_, n)) => *n += 1,
                None => tally.push((what, 1)),
            }
        }
    }

    fn take(&self) -> String {
        let tally = std::mem::take(&mut *self.0.lock().unwrap());
        let shown: Vec<String> = tally
            .into_iter()
            .filter(|(w, _)| !w.starts_with("circuit_breaker:rejected"))
            .map(|(w, n)| if n == 1 { w } else { format!("{w} ×{n}") })
            .collect();
        if shown.is_empty() {
            "-".into()
        } else {
            shown.join("; ")
        }
    }
}

/// An answer grouped by status and cache mark, not by latency or stale age.
fn kind_of(answer: &str) -> String {
    answer
        .split_once(" Cache-Status: ")
        .map(|(status, mark)| {
            let status = status.split(' ').next().unwrap_or("");
            let mark = mark.split("; ttl=").next().unwrap_or(mark);
            format!("{status} {mark}")
        })
        .unwrap_or_else(|| answer.to_owned())
}

/// `n` reads of `path`, one every `every`: the first one's time, the answers counted by
/// kind, and the last body.
async fn reads<S, B>(svc: &S, n: u32, every: Duration, path: &str) -> (Instant, String, String)
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut first = None;
    let mut answers: Vec<(String, u32)> = Vec::new();
    let mut last = String::new();
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        let (sent, answer, body) = exchange(&mut svc.clone(), get(path)).await;
        first.get_or_insert(sent);
        let kind = kind_of(&answer);
        match answers.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, c)) => *c += 1,
            None => answers.push((kind, 1)),
        }
        last = body;
    }
    let summary = answers
        .into_iter()
        .map(|(k, c)| format!("{c}× {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    (first.expect("at least one read"), summary, last)
}

async fn product_list(journal: &Journal) {
    // The product list: a 50 ms query that says it may be cached for 30 s, served stale for
    // 10 s while it is refreshed, and for 10 min if the database fails.
    let queries = Arc::new(AtomicU32::new(0));
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (count, state) = (queries.clone(), up.clone());
    let database = service_fn(move |_req: Request<Body>| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let up = state.load(Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !up {
                return Err::<Response<Body>, BoxError>("database connection refused".into());
            }
            let mut res = ok(format!("tea, coffee, cake (query #{n})"));
            res.headers_mut().insert(
                "cache-control",
                "public, max-age=30, stale-while-revalidate=10, stale-if-error=600"
                    .parse()
                    .unwrap(),
            );
            Ok(res)
        }
    });
    let tally = Tally::default();
    let cache = CacheLayer::builder()
        .name("products")
        .cache_status("parapet")
        .max_entries(10_000)
        .max_bytes(64 << 20)
        .observer(tally.observer())
        .build()
        .expect("a valid cache");
    let handle = cache.handle();
    // Inside the cache, a breaker stops the misses of an outage from reaching the dead
    // database: stale-if-error answers its rejections at once.
    let breaker = CircuitBreakerLayer::builder()
        .name("database")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(3)
        .failure_rate_threshold(50)
        .wait_in_open(Duration::from_secs(20))
        .observer(tally.observer())
        .build()
        .expect("a valid breaker");
    let svc = ServiceBuilder::new()
        .layer(RejectionResponseLayer::new().observer(journal.observer()))
        .layer(cache)
        .layer(breaker)
        .service(database);
    let mut t = Table::new();
    let db = |before: u32| {
        let now = queries.load(Ordering::SeqCst);
        format!(" | database queries: {} (total {now})", now - before)
    };

    // A flash crowd at start-up: 1 000 readers at once, nothing cached yet.
    let mut clients: Vec<_> = (0..1000).map(|_| svc.clone()).collect();
    let before = queries.load(Ordering::SeqCst);
    let answers =
        futures_util::future::join_all(clients.iter_mut().map(|c| exchange(c, get("/products"))))
            .await;
    let mut kinds: Vec<(String, u32)> = Vec::new();
    for (_, answer, _) in &answers {
        let kind = kind_of(answer);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, c)) => *c += 1,
            None => kinds.push((kind, 1)),
        }
    }
    let summary = kinds
        .iter()
        .map(|(k, c)| format!("{c}× {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (sent, _, body) = answers.into_iter().next().expect("answers");
    t.push(
        sent,
        "GET /products ×1000 at once",
        format!("{summary}, all in 50ms"),
        body,
        tally.take() + &db(before),
    );

    // Steady traffic: 20 reads a second for a minute.
    let before = queries.load(Ordering::SeqCst);
    let (sent, answer, body) = reads(&svc, 1200, Duration::from_millis(50), "/products").await;
    t.push(
        sent,
        "GET /products ×1200 (20/s, 1 min)",
        answer,
        body,
        tally.take() + &db(before),
    );

    // The database goes down for 40 s; reads go on.
    up.store(false, Ordering::SeqCst);
    let before = queries.load(Ordering::SeqCst);
    let (sent, answer, body) = reads(&svc, 800, Duration::from_millis(50), "/products").await;
    t.push(
        sent,
        "GET /products ×800 (database down)",
        answer,
        body,
        tally.take() + &db(before),
    );

    // It is back; a price change is published and the list invalidated.
    up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = queries.load(Ordering::SeqCst);
    let (sent, answer, body) = reads(&svc, 400, Duration::from_millis(50), "/products").await;
    t.push(
        sent,
        "GET /products ×400 (database back)",
        answer,
        body,
        tally.take() + &db(before),
    );
    handle.invalidate_prefix("/products");
    let before = queries.load(Ordering::SeqCst);
    let (sent, answer, body) = reads(&svc, 400, Duration::from_millis(50), "/products").await;
    t.push(
        sent,
        "GET /products ×400 (after invalidate_prefix)",
        answer,
        body,
        tally.take() + &db(before),
    );
    let total = queries.load(Ordering::SeqCst);
    t.print(
        "13. The product list, read thousands of times, from a database queried a handful",
        &format!(
            "3 800 reads, {total} database queries. The 1 000 readers of the cold start make one \
             query (request coalescing: one leads, 999 wait for its answer). Then the list is \
             served from memory with Age; when its max-age=30 runs out, stale-while-revalidate \
             answers at once while one background query refreshes it. During the outage the \
             breaker inside the cache fails fast, and stale-if-error answers with the last \
             list, marked `fwd=stale`. After a price change, `invalidate_prefix(\"/products\")` \
             makes the next read fetch the new list."
        ),
    );
}

async fn chaos(journal: &Journal) {
    // A healthy dependency (30 ms) behind a fault layer that makes it hang, off until a
    // game day switches it on through its handle.
    let dep = dependency(|n, _| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok(ok(format!("stock #{n}")))
    });
    let faults = FaultLayer::builder()
        .name("inventory-chaos")
        .seed(14)
        .hang_rate(100.0)
        .observer(journal.observer())
        .build()
        .expect("a valid fault layer");
    let chaos = faults.handle();
    let breaker = CircuitBreakerLayer::builder()
        .name("inventory")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(4)
        .failure_rate_threshold(50)
        .wait_in_open(Duration::from_secs(5))
        .permitted_calls_in_half_open(1)
        .classifier(ServerErrorsAsFailures)
        .observer(journal.observer())
        .build()
        .expect("a valid breaker");
    let apology = fallback::from_fn(|f: Failure<Response<Body>>| match f {
        Failure::Error(e) if tower_parapet::Rejection::from_box(&e).is_some() => {
            Ok(ok("stock unknown, try again soon"))
        }
        Failure::Error(e) => Err(e),
        Failure::Response(r) => Ok(r),
    });
    let mut svc: Stack = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RejectionResponseLayer::new().observer(journal.observer()))
            .layer(
                FallbackLayer::new(apology)
                    .mark(HeaderMark::default())
                    .observer(journal.observer()),
            )
            .layer(breaker)
            .layer(TimeoutLayer::new(Duration::from_millis(500)).observer(journal.observer()))
            .layer(faults)
            .service(dep),
    );
    let mut t = Table::new();
    t.send(&mut svc, journal, "GET /stock (faults off)", get("/stock"))
        .await;
    chaos.enable();
    let (mut late, mut answered) = (0, 0);
    for _ in 0..6 {
        let sent = Instant::now();
        t.send(&mut svc, journal, "GET /stock (hang 100 %)", get("/stock"))
            .await;
        answered += 1;
        late += usize::from(sent.elapsed() > Duration::from_millis(500));
    }
    chaos.disable();
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..2 {
        t.send(&mut svc, journal, "GET /stock (faults off)", get("/stock"))
            .await;
    }
    t.print(
        "14. Chaos on purpose: a fault layer makes the dependency hang",
        &format!(
            "The fault layer is off until its handle switches it on; then every call hangs. \
             Of {answered} requests during the fault, {late} answered later than the 500 ms \
             deadline: the timeout turns each hung call into the fallback at 500 ms until the \
             breaker has seen enough failures to open, and then the fallback answers at once. Switched off, the next probe closes \
             the breaker. `cargo test --all-features --test chaos -- --nocapture` runs longer \
             scenarios (hangs, 30-60 % error bursts under retry) and prints their numbers."
        ),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        println!("# tower-parapet: a tour");
        println!("Simulated time (tokio's paused clock): every run prints the same numbers.");
        let journal = Journal::default();
        hangs(&journal).await;
        caller_deadline(&journal).await;
        last_known_good(&journal).await;
        static_value(&journal).await;
        shadow(&journal).await;
        inner_error(&journal).await;
        circuit_breaker(&journal).await;
        flood(&journal).await;
        double_click(&journal).await;
        kill_switch(&journal).await;
        blip(&journal).await;
        bulkhead(&journal).await;
        product_list(&journal).await;
        chaos(&journal).await;
        println!(
            "\nHere a journal observer collected the decisions for the tables. By default each one \
             is a `tracing` event with the fields layer, name, outcome (and key, state, \
             retry_after_ms where they apply)."
        );
    });
}
