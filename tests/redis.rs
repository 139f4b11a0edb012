//! Redis-backed state against a real `redis-server` each test starts on a free loopback
//! port (see `tests/support/redis_server.rs`; skipped with a message when the binary is
//! missing, mandatory under `.ci/run`).
//!
//! ```text
//! cargo test --all-features --test redis
//! ```
//!
//! These tests run on real time: Redis reads its own clock and answers over a socket.
//! Quotas are chosen so that no refill can happen during a test (per hour), and waits
//! are bounded polls of a condition, never sleeps that a result depends on.
#![cfg(feature = "redis")]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_parapet::key;
use tower_parapet::observe::Event;
use tower_parapet::rate_limit::{Quota, RateLimitLayer};
use tower_parapet::redis::{FailurePolicy, RedisBackend};
use tower_parapet::{BoxError, Rejection, RejectionKind};

/// Events by outcome, as `layer/outcome` strings.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn observer(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let seen = self.0.clone();
        move |e: &Event<'_>| {
            seen.lock()
                .unwrap()
                .push(format!("{}/{}", e.layer(), e.outcome()));
        }
    }

    fn count(&self, what: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|e| *e == what).count()
    }
}

fn backend(url: &str, seen: &Seen) -> RedisBackend {
    RedisBackend::builder(url)
        .timeout(Duration::from_millis(500))
        .prefix(format!("t{}", redis_server::free_port()))
        .observer(seen.observer())
        .build()
        .unwrap()
}

/// A service that counts its calls.
fn counting(
    calls: Arc<AtomicUsize>,
) -> impl Service<u32, Response = u32, Error = Infallible, Future: Send> + Clone + Send + 'static {
    service_fn(move |n: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(n) }
    })
}

/// Probe until `backend` answers again after an outage: each probe is bounded by the
/// backend's timeout, with a 10 ms pause between failed ones (the server process needs
/// real time to come back). Returns how many probes it took.
async fn until_up<Fut: std::future::Future<Output = ()>>(
    backend: &RedisBackend,
    mut probe: impl FnMut(u32) -> Fut,
) -> u32 {
    let mut attempts = 0;
    while !backend.is_up() {
        attempts += 1;
        assert!(attempts < 500, "no recovery after {attempts} attempts");
        probe(attempts).await;
        if !backend.is_up() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    attempts
}

/// The kind of parapet rejection `err` is, if it is one.
fn kind(err: &BoxError) -> Option<RejectionKind> {
    Rejection::from_box(err).map(Rejection::kind)
}

/// Assert that `err` is a rejection of `expected` kind.
#[track_caller]
fn assert_kind(err: &BoxError, expected: RejectionKind) {
    assert_eq!(kind(err), Some(expected), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_quota_exactly() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let seen = Seen::default();
    let prefix = format!("shared{}", server.port());
    // Two instances: two backends (two connections), one prefix, one limiter name.
    let make = |calls: Arc<AtomicUsize>| {
        let backend = RedisBackend::builder(server.url())
            .prefix(prefix.clone())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        RateLimitLayer::new(Quota::per_hour(10))
            .name("api")
            .observer(seen.observer())
            .shared(backend)
            .on_redis_error(FailurePolicy::FailClosed)
            .layer(counting(calls))
    };
    let (calls_a, calls_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, b) = (make(calls_a.clone()), make(calls_b.clone()));
    // Instance B sees what instance A took.
    for i in 0..4 {
        a.clone().oneshot(i).await.unwrap();
    }
    for i in 0..2 {
        b.clone().oneshot(i).await.unwrap();
    }
    // Then both at once, from concurrent tasks.
    let mut tasks = Vec::new();
    for i in 0..60u32 {
        let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { svc.oneshot(i).await }));
    }
    let mut admitted = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(e) => {
                assert_kind(&e, RejectionKind::RateLimited);
                limited += 1;
            }
        }
    }
    assert_eq!(admitted, 4, "the combined count respects the single quota");
    assert_eq!(limited, 56);
    assert_eq!(
        calls_a.load(Ordering::SeqCst) + calls_b.load(Ordering::SeqCst),
        10
    );
    assert_eq!(seen.count("rate_limit/rate_limited"), 56);
    assert_eq!(
        seen.count("rate_limit/fail_closed"),
        0,
        "Redis answered every check"
    );
}

#[tokio::test]
async fn keys_are_separate_and_the_refusal_says_when_to_retry() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let seen = Seen::default();
    let by_value = key::from_fn(|n: &u32| Ok::<_, key::KeyError>(*n % 2));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = RateLimitLayer::keyed(by_value, Quota::per_minute(2))
        .name("keyed")
        .shared(backend(&server.url(), &seen))
        .layer(counting(calls.clone()));
    // Key 0: two admitted, the third refused; key 1 unaffected.
    for n in [0, 2] {
        svc.ready().await.unwrap().call(n).await.unwrap();
    }
    let err = svc.ready().await.unwrap().call(4).await.unwrap_err();
    let Some(Rejection::RateLimited {
        retry_after,
        policy: Some(info),
        ..
    }) = Rejection::from_box(&err)
    else {
        panic!("expected a rate limit, got {err}");
    };
    // One request every 30 s: the next slot is at most 30 s away (Redis's clock moved a
    // little since the second admission).
    assert!(
        *retry_after <= Duration::from_secs(30) && *retry_after > Duration::from_secs(29),
        "{retry_after:?}"
    );
    assert_eq!(info.quota, 2);
    assert_eq!(info.window, Duration::from_secs(60));
    assert_eq!(info.remaining, 0);
    svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn several_quotas_are_all_or_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let seen = Seen::default();
    let backend = backend(&server.url(), &seen);
    let calls = Arc::new(AtomicUsize::new(0));
    let hourly = Quota::per_hour(10).named("hourly");
    let mut both = RateLimitLayer::new(hourly.clone())
        .quota(Quota::per_hour(2).named("tight"))
        .name("multi")
        .shared(backend.clone())
        .layer(counting(calls.clone()));
    let mut admitted = 0;
    for n in 0..5 {
        if both.ready().await.unwrap().call(n).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 2, "the tight quota decides");
    // The refused three charged nothing to the hourly quota: a limiter with the same name
    // and only the hourly quota (the same Redis key) still has 8.
    let mut hourly_only = RateLimitLayer::new(hourly)
        .name("multi")
        .shared(backend)
        .layer(counting(calls.clone()));
    let mut more = 0;
    for n in 0..12 {
        if hourly_only.ready().await.unwrap().call(n).await.is_ok() {
            more += 1;
        }
    }
    assert_eq!(more, 8);
}

/// Limiters of the same (default) name but different quotas keep separate budgets; the
/// same name and the same quota share one.
#[tokio::test]
async fn budgets_are_shared_by_name_and_quota_only() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let seen = Seen::default();
    let backend = backend(&server.url(), &seen);
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = |quota| {
        RateLimitLayer::new(quota)
            .shared(backend.clone())
            .layer(counting(calls.clone()))
    };
    let (strict, loose, strict_again) = (
        layer(Quota::per_hour(1)),
        layer(Quota::per_hour(100)),
        layer(Quota::per_hour(1)),
    );
    strict.clone().oneshot(1).await.unwrap();
    assert!(strict.oneshot(2).await.is_err());
    for n in 0..10 {
        loose.clone().oneshot(n).await.unwrap();
    }
    assert!(
        strict_again.oneshot(3).await.is_err(),
        "the same name and quota is one budget"
    );
}

#[tokio::test]
async fn weights_take_several_units() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let seen = Seen::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = RateLimitLayer::new(Quota::per_hour(10))
        .weight(|n: &u32| *n)
        .shared(backend(&server.url(), &seen))
        .layer(counting(calls.clone()));
    assert!(svc.ready().await.unwrap().call(6).await.is_ok());
    assert!(
        svc.ready().await.unwrap().call(5).await.is_err(),
        "6 + 5 > 10"
    );
    assert!(
        svc.ready().await.unwrap().call(4).await.is_ok(),
        "6 + 4 = 10"
    );
    assert!(
        svc.ready().await.unwrap().call(0).await.is_ok(),
        "weight 0 is free"
    );
    assert!(svc.ready().await.unwrap().call(1).await.is_err());
}

/// A Redis that is not there: every policy answers within the backend's timeout.
#[tokio::test]
async fn unreachable_redis_follows_each_policy_without_hanging() {
    let seen = Seen::default();
    // Nothing listens on this port.
    let url = format!("redis://127.0.0.1:{}/", redis_server::free_port());
    let timeout = Duration::from_millis(200);
    let backend = RedisBackend::builder(url)
        .timeout(timeout)
        .observer(seen.observer())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = |policy| {
        RateLimitLayer::new(Quota::per_hour(3))
            .observer(seen.observer())
            .shared(backend.clone())
            .on_redis_error(policy)
            .layer(counting(calls.clone()))
    };
    let started = Instant::now();
    let mut open = layer(FailurePolicy::FailOpen);
    for n in 0..5 {
        open.ready().await.unwrap().call(n).await.unwrap();
    }
    let mut closed = layer(FailurePolicy::FailClosed);
    let err = closed.ready().await.unwrap().call(9).await.unwrap_err();
    assert_kind(&err, RejectionKind::Overloaded);
    assert!(
        Rejection::from_box(&err)
            .and_then(Rejection::retry_after)
            .is_some()
    );
    let mut local = layer(FailurePolicy::Local);
    let mut admitted = 0;
    for n in 0..5 {
        if local.ready().await.unwrap().call(n).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "the in-process quota decides");
    // 11 checks, each bounded by the timeout (connection refused is usually immediate).
    assert!(started.elapsed() < timeout * 11 + Duration::from_secs(1));
    assert_eq!(seen.count("rate_limit/fail_open"), 5);
    assert_eq!(seen.count("rate_limit/fail_closed"), 1);
    assert_eq!(seen.count("rate_limit/local"), 5);
    assert_eq!(
        seen.count("backend/backend_down"),
        1,
        "one event per outage"
    );
    assert!(!backend.is_up());
    assert!(backend.status().failures_total >= 11);
}

/// Kill Redis mid-traffic, then start it again on the same port: the policy covers the
/// outage, and the limiter uses Redis again without being rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_traffic() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let seen = Seen::default();
    let timeout = Duration::from_millis(300);
    let backend = RedisBackend::builder(server.url())
        .timeout(timeout)
        .observer(seen.observer())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = RateLimitLayer::new(Quota::per_hour(1000))
        .observer(seen.observer())
        .shared(backend.clone())
        .on_redis_error(FailurePolicy::FailOpen)
        .layer(counting(calls.clone()));
    let call = |n: u32| {
        let svc = svc.clone();
        async move {
            let started = Instant::now();
            let result = svc.oneshot(n).await;
            let took = started.elapsed();
            assert!(took < timeout * 2, "a request took {took:?}");
            result
        }
    };
    for n in 0..20 {
        call(n).await.unwrap();
    }
    assert_eq!(seen.count("rate_limit/fail_open"), 0);
    server.stop();
    for n in 0..20 {
        call(n).await.unwrap();
    }
    assert_eq!(
        seen.count("rate_limit/fail_open"),
        20,
        "each request during the outage"
    );
    assert_eq!(seen.count("backend/backend_down"), 1);
    assert!(!backend.is_up());
    server.restart();
    // The connection comes back by itself: poll (each attempt bounded) until a check is
    // answered by Redis again.
    let attempts = until_up(&backend, |n| {
        let call = call(n);
        async move {
            call.await.unwrap();
        }
    })
    .await;
    assert_eq!(seen.count("backend/backend_recovered"), 1);
    let during = seen.count("rate_limit/fail_open");
    for n in 0..20 {
        call(n).await.unwrap();
    }
    assert_eq!(
        seen.count("rate_limit/fail_open"),
        during,
        "Redis answers again"
    );
    assert_eq!(calls.load(Ordering::SeqCst) as u32, 60 + attempts);
}

// ---------------------------------------------------------------------------------------
// Idempotency records shared through Redis.

mod idempotency {
    use super::*;
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use tokio::sync::{Notify, watch};
    use tower_parapet::idempotency::{Conflict, IdempotencyLayer};
    use tower_parapet::redis::RedisIdempotencyStore;

    type Body = Full<Bytes>;

    /// A payment handler held at a gate: counts its calls, tells `entered` when one
    /// starts, and answers only once the gate is open.
    #[derive(Clone)]
    struct Gated {
        calls: Arc<AtomicUsize>,
        entered: Arc<Notify>,
        gate: watch::Receiver<bool>,
    }

    impl Gated {
        fn new() -> (Gated, watch::Sender<bool>) {
            let (open, gate) = watch::channel(false);
            let gated = Gated {
                calls: Arc::new(AtomicUsize::new(0)),
                entered: Arc::new(Notify::new()),
                gate,
            };
            (gated, open)
        }

        fn service(
            &self,
        ) -> impl Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static {
            let this = self.clone();
            service_fn(move |req: Request<Body>| {
                let this = this.clone();
                async move {
                    let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                    this.entered.notify_one();
                    let mut gate = this.gate.clone();
                    let _ = gate.wait_for(|open| *open).await;
                    let sent = req.into_body().collect().await.unwrap().to_bytes();
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(StatusCode::CREATED)
                            .header("x-charge-id", n.to_string())
                            .body(Body::from(format!(
                                "charge {n}: {}",
                                String::from_utf8_lossy(&sent)
                            )))
                            .unwrap(),
                    )
                }
            })
        }
    }

    fn pay(key: &str) -> Request<Body> {
        Request::post("/pay")
            .header("idempotency-key", key)
            .body(Body::from("amount=10"))
            .unwrap()
    }

    fn store(url: &str, prefix: &str) -> RedisIdempotencyStore {
        let backend = RedisBackend::builder(url)
            .prefix(prefix.to_owned())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        RedisIdempotencyStore::new(backend).poll_interval(Duration::from_millis(5))
    }

    async fn text(
        res: Response<impl http_body::Body<Data = Bytes, Error: std::fmt::Debug>>,
    ) -> String {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    /// Twenty concurrent duplicates spread over two instances: the handler runs once,
    /// the other nineteen are told it is in flight, and afterwards both instances replay
    /// the one stored answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_run_concurrent_duplicates_once() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let prefix = format!("idem{}", server.port());
        let (gated, open) = Gated::new();
        let a = IdempotencyLayer::new()
            .store(store(&server.url(), &prefix))
            .layer(gated.service());
        let b = IdempotencyLayer::new()
            .store(store(&server.url(), &prefix))
            .layer(gated.service());
        let (done, mut results) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..20 {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            let done = done.clone();
            tokio::spawn(async move {
                let _ = done.send(svc.oneshot(pay("order-1")).await);
            });
        }
        // One of them runs and waits at the gate; the other nineteen answer without it (a
        // second runner would wait at the gate too, and the deadline below would fail).
        let deadline = Duration::from_secs(10);
        for _ in 0..19 {
            let answer = tokio::time::timeout(deadline, results.recv())
                .await
                .expect("nineteen duplicates answer while the first runs")
                .unwrap();
            let err = answer.unwrap_err();
            assert_kind(&err, RejectionKind::IdempotencyInFlight);
        }
        assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
        assert!(
            results.try_recv().is_err(),
            "the runner is still at the gate"
        );
        open.send_replace(true);
        let res = results.recv().await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(text(res).await, "charge 1: amount=10");
        for svc in [a, b] {
            let res = svc.oneshot(pay("order-1")).await.unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
            assert_eq!(res.headers()["idempotent-replayed"], "true");
            assert_eq!(res.headers()["x-charge-id"], "1");
            assert_eq!(text(res).await, "charge 1: amount=10");
        }
        assert_eq!(
            gated.calls.load(Ordering::SeqCst),
            1,
            "the inner service ran once"
        );
    }

    /// A duplicate on the other instance waits for the first and replays its answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_duplicate_on_another_instance_replays() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let prefix = format!("idem{}", server.port());
        let (gated, open) = Gated::new();
        let layer = |store| {
            IdempotencyLayer::new()
                .store(store)
                .conflict(Conflict::Wait(Duration::from_secs(10)))
                .layer(gated.service())
        };
        let a = layer(store(&server.url(), &prefix));
        let b = layer(store(&server.url(), &prefix));
        let first = tokio::spawn(a.oneshot(pay("order-2")));
        gated.entered.notified().await;
        let second = tokio::spawn(b.oneshot(pay("order-2")));
        assert!(!second.is_finished());
        open.send_replace(true);
        let (first, second) = (
            first.await.unwrap().unwrap(),
            second.await.unwrap().unwrap(),
        );
        assert_eq!(first.headers()["x-charge-id"], "1");
        assert_eq!(second.headers()["x-charge-id"], "1");
        assert_eq!(second.headers()["idempotent-replayed"], "true");
        assert_eq!(text(second).await, "charge 1: amount=10");
        assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
    }

    /// A handler slower than the lease keeps its claim: the store renews it. (Real time
    /// passes here on purpose: the lease is a Redis expiry on Redis's clock.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lease_is_renewed_while_the_handler_runs() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let prefix = format!("idem{}", server.port());
        let (gated, open) = Gated::new();
        let lease = Duration::from_millis(150);
        let redis_store = store(&server.url(), &prefix);
        let layer = |store| {
            IdempotencyLayer::new()
                .store(store)
                .lease(lease)
                .layer(gated.service())
        };
        let a = layer(redis_store.clone());
        let b = layer(store(&server.url(), &prefix));
        let first = tokio::spawn(a.oneshot(pay("order-3")));
        gated.entered.notified().await;
        assert_eq!(redis_store.renewing(), 1);
        // Four leases long: without renewal the key would be free by now.
        tokio::time::sleep(lease * 4).await;
        let err = b.clone().oneshot(pay("order-3")).await.unwrap_err();
        assert_kind(&err, RejectionKind::IdempotencyInFlight);
        open.send_replace(true);
        first.await.unwrap().unwrap();
        assert_eq!(redis_store.renewing(), 0, "renewal stops with the request");
        let res = b.oneshot(pay("order-3")).await.unwrap();
        assert_eq!(res.headers()["idempotent-replayed"], "true");
        assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
    }

    /// A request dropped mid-flight frees its key for a retry on any instance.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_request_frees_the_key() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let prefix = format!("idem{}", server.port());
        let (gated, open) = Gated::new();
        let redis_store = store(&server.url(), &prefix);
        let a = IdempotencyLayer::new()
            .store(redis_store.clone())
            .layer(gated.service());
        let b = IdempotencyLayer::new()
            .store(store(&server.url(), &prefix))
            .conflict(Conflict::Wait(Duration::from_secs(10)))
            .layer(gated.service());
        let first = tokio::spawn(a.oneshot(pay("order-4")));
        gated.entered.notified().await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        open.send_replace(true);
        // The release runs on a spawned task: the waiting retry sees the key freed.
        let res = b.oneshot(pay("order-4")).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(res.headers()["x-charge-id"], "2");
        assert_eq!(redis_store.renewing(), 0);
    }

    /// Redis stalls while a claim is on its way: the claim lands after the backend gave
    /// up (503, "nothing ran"). The claim must not lock the key for a whole lease: the
    /// store frees it by its token, and the client's retry runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_that_timed_out_does_not_lock_the_key() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let prefix = format!("idem{}", server.port());
        let backend = RedisBackend::builder(server.url())
            .prefix(prefix)
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let (gated, open) = Gated::new();
        open.send_replace(true);
        let svc = IdempotencyLayer::new()
            .store(RedisIdempotencyStore::new(backend))
            .layer(gated.service());
        // Warm the connection and the script cache.
        svc.clone().oneshot(pay("warm-up")).await.unwrap();
        let admin = redis::Client::open(server.url()).unwrap();
        let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(400)
            .arg("ALL")
            .query_async(&mut admin)
            .await
            .unwrap();
        let err = svc.clone().oneshot(pay("order-6")).await.unwrap_err();
        assert_kind(&err, RejectionKind::Overloaded);
        // Answered once the pause is over (commands queue behind it, in order: the late
        // claim, then its release).
        let _: String = redis::cmd("PING").query_async(&mut admin).await.unwrap();
        let mut attempts = 0;
        let res = loop {
            attempts += 1;
            match svc.clone().oneshot(pay("order-6")).await {
                Ok(res) => break res,
                Err(e) => {
                    // While the connection recovers and the release lands (it retries
                    // every 50 ms), a retry may still be told 503 or "in flight"; the lease
                    // is 60 s, so a second of that is the store freeing the key, not the
                    // lease.
                    assert!(
                        matches!(
                            Rejection::from_box(&e),
                            Some(
                                Rejection::Overloaded { .. }
                                    | Rejection::IdempotencyInFlight { .. }
                            )
                        ),
                        "the retry was refused with {e}"
                    );
                    assert!(attempts < 50, "the key stayed locked: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(
            gated.calls.load(Ordering::SeqCst),
            2,
            "warm-up and the retry"
        );
    }

    /// Redis unreachable: fail closed answers 503 at once (nothing ran), fail open runs the
    /// handler unguarded; both emit the policy event.
    #[tokio::test]
    async fn unreachable_redis_follows_the_store_policy() {
        let seen = Seen::default();
        let url = format!("redis://127.0.0.1:{}/", redis_server::free_port());
        let backend = RedisBackend::builder(url)
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let (gated, open) = Gated::new();
        open.send_replace(true);
        let closed = IdempotencyLayer::new()
            .store(RedisIdempotencyStore::new(backend.clone()))
            .observer(seen.observer())
            .layer(gated.service());
        let err = closed.oneshot(pay("order-5")).await.unwrap_err();
        assert_kind(&err, RejectionKind::Overloaded);
        assert!(
            Rejection::from_box(&err)
                .and_then(Rejection::retry_after)
                .is_some()
        );
        assert_eq!(gated.calls.load(Ordering::SeqCst), 0);
        let open_layer = IdempotencyLayer::new()
            .store(RedisIdempotencyStore::new(backend))
            .on_store_error(FailurePolicy::FailOpen)
            .observer(seen.observer())
            .layer(gated.service());
        let res = open_layer.oneshot(pay("order-5")).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
        assert_eq!(seen.count("idempotency/fail_closed"), 1);
        assert_eq!(seen.count("idempotency/fail_open"), 1);
    }
}

// ---------------------------------------------------------------------------------------
// Flags propagated through Redis.

mod flags {
    use super::*;
    use tokio::sync::mpsc;
    use tower_parapet::flags::{EvalContext, FlagDef, FlagStore};
    use tower_parapet::redis::RedisFlagSource;

    /// A store whose flag events arrive on a channel, as `outcome:flag-or-source`.
    fn store(name: &str) -> (FlagStore, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = FlagStore::with_observer(name.to_owned(), move |e: &Event<'_>| {
            let what = match e {
                Event::FlagChanged { flag, .. } => format!("changed:{flag}"),
                Event::FlagSourceFailed { error, .. }
                    if error.to_string().contains("never written") =>
                {
                    "missing".to_owned()
                }
                Event::FlagSourceFailed { .. } => "source_failed".to_owned(),
                Event::FlagSourceReloaded { flags, .. } => format!("reloaded:{flags}"),
                _ => return,
            };
            let _ = tx.send(what);
        });
        (store, rx)
    }

    fn source(url: &str, prefix: &str) -> RedisFlagSource {
        let backend = RedisBackend::builder(url)
            .prefix(prefix.to_owned())
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        RedisFlagSource::new(backend)
    }

    /// Wait (at most `within`) for an event that `matches`.
    async fn until(
        rx: &mut mpsc::UnboundedReceiver<String>,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Duration {
        let started = Instant::now();
        tokio::time::timeout(within, async {
            while let Some(e) = rx.recv().await {
                if matches(&e) {
                    return;
                }
            }
            panic!("the store's observer went away");
        })
        .await
        .unwrap_or_else(|_| panic!("no matching event within {within:?}"));
        started.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kill_switch_flipped_on_one_instance_reaches_the_other_within_a_second() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let prefix = format!("flags{}", server.port());
        let (store_a, mut events_a) = store("a");
        let (store_b, mut events_b) = store("b");
        let (source_a, source_b) = (
            source(&server.url(), &prefix),
            source(&server.url(), &prefix),
        );
        source_a.put("other", &FlagDef::default()).await.unwrap();
        let _watch_a = source_a.clone().watch(store_a.clone());
        let _watch_b = source_b.watch(store_b.clone());
        // Both subscribed and loaded.
        until(&mut events_a, Duration::from_secs(5), |e| e == "reloaded:1").await;
        until(&mut events_b, Duration::from_secs(5), |e| e == "reloaded:1").await;

        source_a.put("checkout", &FlagDef::default()).await.unwrap();
        until(&mut events_b, Duration::from_secs(1), |e| {
            e == "changed:checkout"
        })
        .await;
        let ctx = EvalContext::new();
        assert!(store_b.is_enabled("checkout", &ctx));

        source_a.kill("checkout").await.unwrap();
        let took = until(&mut events_b, Duration::from_secs(1), |e| {
            e == "changed:checkout"
        })
        .await;
        assert!(took < Duration::from_secs(1));
        assert!(
            !store_b.is_enabled("checkout", &ctx),
            "killed on the other instance"
        );
        // And on the one that flipped it (its earlier events may still be queued).
        let within = Instant::now() + Duration::from_secs(1);
        while store_a.is_enabled("checkout", &ctx) {
            let left = within.saturating_duration_since(Instant::now());
            until(&mut events_a, left, |e| e == "changed:checkout").await;
        }

        source_a.set_percentage("checkout", 0).await.unwrap();
        source_a.enable("checkout").await.unwrap();
        assert!(source_a.remove("checkout").await.unwrap());
        until(&mut events_b, Duration::from_secs(1), |e| e == "reloaded:1").await;
        assert!(store_b.get("checkout").is_none(), "removed everywhere");
        assert!(store_b.get("other").is_some(), "the others stay");
        assert!(matches!(
            source_a.kill("missing").await,
            Err(tower_parapet::redis::RedisFlagError::NotFound(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_keep_the_last_flags_while_redis_is_away_and_follow_again_after() {
        let Some(mut server) = RedisServer::start() else {
            return;
        };
        let prefix = format!("flags{}", server.port());
        let (store_b, mut events_b) = store("b");
        let writer = source(&server.url(), &prefix);
        writer.put("search", &FlagDef::default()).await.unwrap();
        let _watch = source(&server.url(), &prefix)
            .resync(Duration::from_millis(50))
            .watch(store_b.clone());
        until(&mut events_b, Duration::from_secs(5), |e| e == "reloaded:1").await;
        let ctx = EvalContext::new();
        assert!(store_b.is_enabled("search", &ctx));

        server.stop();
        until(&mut events_b, Duration::from_secs(5), |e| {
            e == "source_failed"
        })
        .await;
        assert!(store_b.is_enabled("search", &ctx), "the last flags stay");
        assert!(
            writer.kill("search").await.is_err(),
            "Redis is away: a typed error"
        );

        // Redis returns empty (this test server keeps nothing on disk): the watcher finds
        // no flag set and keeps the last flags rather than taking it for "no flags".
        server.restart();
        until(&mut events_b, Duration::from_secs(10), |e| e == "missing").await;
        assert!(
            store_b.get("search").is_some_and(|d| d.enabled),
            "an emptied Redis does not switch flags off"
        );
        // A change made through any instance reaches the replica again without
        // restarting it.
        let off = FlagDef {
            enabled: false,
            ..FlagDef::default()
        };
        let mut attempts = 0;
        while writer.put("search", &off).await.is_err() {
            attempts += 1;
            assert!(attempts < 200, "the writer never reconnected");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        until(&mut events_b, Duration::from_secs(10), |e| {
            e == "changed:search"
        })
        .await;
        assert!(store_b.get("search").is_some_and(|d| !d.enabled));
        assert!(!store_b.is_enabled("search", &ctx));
    }

    #[tokio::test]
    async fn an_invalid_flag_in_redis_is_refused_as_a_whole() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let prefix = format!("flags{}", server.port());
        let source = source(&server.url(), &prefix);
        let (store, _events) = store("c");
        source.put("good", &FlagDef::default()).await.unwrap();
        assert_eq!(source.load(&store).await.unwrap(), 1);
        // Someone writes garbage next to it by hand.
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}:flags:default"))
            .arg("bad")
            .arg("{not json")
            .query_async(&mut conn)
            .await
            .unwrap();
        let killed = FlagDef {
            enabled: false,
            ..FlagDef::default()
        };
        source.put("good", &killed).await.unwrap();
        assert!(matches!(
            source.load(&store).await,
            Err(tower_parapet::redis::RedisFlagError::Parse { .. })
        ));
        assert!(
            store.is_enabled("good", &EvalContext::new()),
            "nothing from the refused load was applied"
        );
        let bad = FlagDef {
            default_variant: "nope".into(),
            ..FlagDef::default()
        };
        assert!(matches!(
            source.put("x", &bad).await,
            Err(tower_parapet::redis::RedisFlagError::Invalid(_))
        ));
    }
}

/// The backend's state shows in health; marked critical, a down Redis makes the service
/// unready, and a recovered one ready again.
#[tokio::test]
async fn health_shows_the_backend_and_recovers_with_it() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let seen = Seen::default();
    let backend = backend(&server.url(), &seen);
    let registry = tower_parapet::health::HealthRegistry::new();
    registry.redis(&backend, true);
    let mut svc = RateLimitLayer::new(Quota::per_hour(100))
        .shared(backend.clone())
        .on_redis_error(FailurePolicy::FailOpen)
        .layer(counting(Arc::new(AtomicUsize::new(0))));
    svc.ready().await.unwrap().call(1).await.unwrap();
    let snapshot = registry.snapshot();
    assert!(snapshot.ready);
    assert!(snapshot.backends[0].up);

    server.stop();
    svc.ready().await.unwrap().call(2).await.unwrap();
    let snapshot = registry.snapshot();
    assert!(!snapshot.ready);
    assert_eq!(snapshot.failing, ["backend:redis"]);
    assert!(!snapshot.backends[0].up);
    assert!(snapshot.backends[0].last_error.is_some());

    // Back without any request: an unready replica gets no traffic, so the backend's own
    // probe (a PING every 500 ms while down) must bring it back.
    server.restart();
    let mut polls = 0;
    while !registry.snapshot().ready {
        polls += 1;
        assert!(polls < 200, "still not ready 10 s after Redis returned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    svc.ready().await.unwrap().call(3).await.unwrap();
    assert_eq!(registry.snapshot().backends[0].consecutive_failures, 0);
}

/// A Redis that hangs (SIGSTOP: the connection stays open, nothing answers) costs each
/// request at most the backend's timeout; every policy applies; it recovers on SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_at_most_the_timeout() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let seen = Seen::default();
    let timeout = Duration::from_millis(100);
    let backend = RedisBackend::builder(server.url())
        .timeout(timeout)
        .observer(seen.observer())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = |policy| {
        RateLimitLayer::new(Quota::per_hour(2))
            .name("hung")
            .observer(seen.observer())
            .shared(backend.clone())
            .on_redis_error(policy)
            .layer(counting(calls.clone()))
    };
    let (open, closed, local) = (
        layer(FailurePolicy::FailOpen),
        layer(FailurePolicy::FailClosed),
        layer(FailurePolicy::Local),
    );
    open.clone().oneshot(0).await.unwrap();
    server.freeze();
    let mut slowest = Duration::ZERO;
    let mut outcomes = Vec::new();
    for (svc, n) in [
        (&open, 1),
        (&closed, 2),
        (&local, 3),
        (&local, 4),
        (&local, 5),
    ] {
        let started = Instant::now();
        outcomes.push(svc.clone().oneshot(n).await.is_ok());
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < timeout + Duration::from_millis(100),
        "a request took {slowest:?}"
    );
    // Open admits; closed refuses; local has its own 2 per hour.
    assert_eq!(outcomes, [true, false, true, true, false]);
    assert_eq!(seen.count("backend/backend_down"), 1);
    server.thaw();
    until_up(&backend, |_| {
        let open = open.clone();
        async move {
            let _ = open.oneshot(9).await;
        }
    })
    .await;
    assert_eq!(seen.count("backend/backend_recovered"), 1);
}

/// A Redis failing some calls (frozen, thawed, frozen again) is one outage: one
/// `BackendDown`, and `BackendRecovered` only after a second with no failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermittent_redis_is_one_outage() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let seen = Seen::default();
    let backend = RedisBackend::builder(server.url())
        .timeout(Duration::from_millis(100))
        .observer(seen.observer())
        .build()
        .unwrap();
    let svc = RateLimitLayer::new(Quota::per_hour(1000))
        .shared(backend.clone())
        .on_redis_error(FailurePolicy::FailOpen)
        .layer(counting(Arc::new(AtomicUsize::new(0))));
    svc.clone().oneshot(0).await.unwrap();
    for round in 1..=3 {
        server.freeze();
        svc.clone().oneshot(round).await.unwrap();
        server.thaw();
        // Redis answers again at once; the failure was a moment ago.
        let mut answered = false;
        for _ in 0..50 {
            let before = seen.count("rate_limit/fail_open");
            svc.clone().oneshot(round).await.unwrap();
            if seen.count("rate_limit/fail_open") == before {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(answered, "Redis answered again after the thaw");
    }
    assert_eq!(seen.count("backend/backend_down"), 1, "one outage");
    assert_eq!(seen.count("backend/backend_recovered"), 0, "not yet quiet");
    assert!(!backend.is_up());
    // A quiet second later, the next call (or the backend's own probe) recovers it.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    svc.clone().oneshot(9).await.unwrap();
    assert!(backend.is_up());
    assert_eq!(seen.count("backend/backend_recovered"), 1);
}
