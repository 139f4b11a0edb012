//! The response cache, black-box, on tokio's paused clock: no real sleeps.
#![cfg(feature = "http")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_parapet::cache::{CacheConfig, CacheLayer, CoalescedError, cache_key};
use tower_parapet::fallback::{FallbackLayer, HeaderMark};
use tower_parapet::observe::Event;
use tower_parapet::timeout::TimeoutLayer;
use tower_parapet::{BoxError, Rejection, RejectionKind};

type Body = Full<Bytes>;

/// What the simulated database does on its next calls.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Db {
    Ok,
    Fail,
    Reject,
    Status(u16),
    Hang,
}

#[derive(Clone)]
struct Database {
    calls: Arc<AtomicU32>,
    behaviour: Arc<Mutex<Db>>,
    latency: Duration,
    cache_control: Option<&'static str>,
    body_len: usize,
}

impl Database {
    fn new(latency: Duration) -> Database {
        Database {
            calls: Arc::default(),
            behaviour: Arc::new(Mutex::new(Db::Ok)),
            latency,
            cache_control: None,
            body_len: 0,
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn set(&self, b: Db) {
        *self.behaviour.lock().unwrap() = b;
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = BoxError,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static {
        let db = self.clone();
        tower::service_fn(move |req: Request<Body>| {
            let n = db.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let behaviour = *db.behaviour.lock().unwrap();
            let db = db.clone();
            async move {
                if behaviour == Db::Hang {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(db.latency).await;
                let text = if db.body_len > 0 {
                    "x".repeat(db.body_len)
                } else {
                    format!("{} {} v{n}", req.method(), req.uri())
                };
                let mut res = Response::new(Full::new(Bytes::from(text)));
                if let Some(cc) = db.cache_control {
                    res.headers_mut()
                        .insert("cache-control", cc.parse().unwrap());
                }
                match behaviour {
                    Db::Ok | Db::Hang => Ok(res),
                    Db::Fail => Err("database is down".into()),
                    Db::Reject => Err(Rejection::timeout(Duration::from_secs(1)).boxed()),
                    Db::Status(s) => {
                        *res.status_mut() = StatusCode::from_u16(s).unwrap();
                        Ok(res)
                    }
                }
            }
        })
    }
}

fn events() -> (
    Arc<Mutex<Vec<String>>>,
    impl Fn(&Event<'_>) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |e: &Event<'_>| {
        if e.layer() == "cache" {
            sink.lock().unwrap().push(e.outcome().to_owned())
        }
    })
}

fn count(seen: &Mutex<Vec<String>>, outcome: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|o| *o == outcome)
        .count()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::default()).unwrap()
}

async fn body<B>(res: Response<B>) -> String
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn header<B>(res: &Response<B>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

const SEC: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn a_hundred_concurrent_misses_make_one_call_and_get_one_answer() {
    let db = Database::new(Duration::from_millis(100));
    let (seen, observer) = events();
    let cache = CacheLayer::builder()
        .observer(observer)
        .cache_status("parapet")
        .build()
        .unwrap();
    let svc = cache.layer(db.service());
    let start = Instant::now();
    let answers = join_all((0..100).map(|_| svc.clone().oneshot(get("/products")))).await;
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(db.calls(), 1, "one inner call for a hundred misses");
    let mut bodies = Vec::new();
    let mut collapsed = 0;
    for res in answers {
        let res = res.unwrap();
        assert_eq!(res.status(), 200);
        if header(&res, "cache-status").as_deref() == Some("parapet; fwd=miss; collapsed") {
            collapsed += 1;
        }
        bodies.push(body(res).await);
    }
    assert_eq!(collapsed, 99);
    assert!(bodies.iter().all(|b| b == "GET /products v1"), "{bodies:?}");
    assert_eq!(count(&seen, "stored"), 1);
    assert_eq!(count(&seen, "coalesced"), 99);

    // And then a hit: no call at all.
    let res = svc.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(
        header(&res, "cache-status").as_deref(),
        Some("parapet; hit")
    );
    assert_eq!(header(&res, "age").as_deref(), Some("0"));
    assert_eq!(db.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_call_fails_every_waiter_promptly() {
    let db = Database::new(Duration::from_millis(100));
    db.set(Db::Fail);
    let svc = CacheLayer::builder()
        .observer(())
        .build()
        .unwrap()
        .layer(db.service());
    let start = Instant::now();
    let answers = join_all((0..100).map(|_| svc.clone().oneshot(get("/products")))).await;
    assert_eq!(start.elapsed(), Duration::from_millis(100), "no hang");
    assert_eq!(db.calls(), 1);
    let mut coalesced = 0;
    for res in answers {
        let err = res.unwrap_err();
        if let Some(c) = err.downcast_ref::<CoalescedError>() {
            coalesced += 1;
            assert!(c.to_string().contains("database is down"), "{c}");
        } else {
            assert_eq!(
                err.to_string(),
                "database is down",
                "the leader's own error"
            );
        }
    }
    assert_eq!(coalesced, 99);

    // A rejection reaches every waiter as the same rejection, and nothing was stored.
    db.set(Db::Reject);
    let answers = join_all((0..10).map(|_| svc.clone().oneshot(get("/products")))).await;
    assert_eq!(db.calls(), 2);
    for res in answers {
        let err = res.unwrap_err();
        assert_eq!(
            Rejection::from_box(&err).map(Rejection::kind),
            Some(RejectionKind::Timeout)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn entries_live_for_their_ttl_or_their_max_age() {
    let mut db = Database::new(Duration::ZERO);
    let svc = CacheLayer::builder()
        .ttl(10 * SEC)
        .observer(())
        .build()
        .unwrap()
        .layer(db.service());
    let call = |path: &'static str| svc.clone().oneshot(get(path));
    assert_eq!(body(call("/a").await.unwrap()).await, "GET /a v1");
    tokio::time::advance(9 * SEC).await;
    let res = call("/a").await.unwrap();
    assert_eq!(header(&res, "age").as_deref(), Some("9"));
    assert_eq!(body(res).await, "GET /a v1");
    tokio::time::advance(SEC).await;
    assert_eq!(
        body(call("/a").await.unwrap()).await,
        "GET /a v2",
        "expired at 10 s"
    );

    // A response's max-age wins over the TTL.
    db.cache_control = Some("public, max-age=2");
    let svc = CacheLayer::builder()
        .ttl(10 * SEC)
        .observer(())
        .build()
        .unwrap()
        .layer(db.service());
    let call = |path: &'static str| svc.clone().oneshot(get(path));
    assert_eq!(body(call("/b").await.unwrap()).await, "GET /b v3");
    tokio::time::advance(SEC).await;
    assert_eq!(body(call("/b").await.unwrap()).await, "GET /b v3");
    tokio::time::advance(SEC).await;
    assert_eq!(body(call("/b").await.unwrap()).await, "GET /b v4");
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let db = Database::new(Duration::from_millis(50));
    let (seen, observer) = events();
    let svc = CacheLayer::builder()
        .ttl(10 * SEC)
        .stale_while_revalidate(5 * SEC)
        .cache_status("parapet")
        .observer(observer)
        .build()
        .unwrap()
        .layer(db.service());
    let call = || svc.clone().oneshot(get("/p"));
    assert_eq!(body(call().await.unwrap()).await, "GET /p v1");
    tokio::time::advance(12 * SEC).await;
    let start = Instant::now();
    let answers = join_all((0..5).map(|_| call())).await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "stale answers are immediate"
    );
    for res in answers {
        let res = res.unwrap();
        assert_eq!(
            header(&res, "cache-status").as_deref(),
            Some("parapet; hit; ttl=-2")
        );
        assert_eq!(header(&res, "age").as_deref(), Some("12"));
        assert_eq!(body(res).await, "GET /p v1");
    }
    assert_eq!(count(&seen, "stale_served"), 5);
    // One refresh runs in the background.
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(db.calls(), 2, "one refresh for five stale answers");
    let res = call().await.unwrap();
    assert_eq!(
        header(&res, "cache-status").as_deref(),
        Some("parapet; hit")
    );
    assert_eq!(body(res).await, "GET /p v2");

    // Past the stale window: a plain miss.
    tokio::time::advance(16 * SEC).await;
    let start = Instant::now();
    assert_eq!(body(call().await.unwrap()).await, "GET /p v3");
    assert_eq!(start.elapsed(), Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_answers_a_failure_within_its_window() {
    let db = Database::new(Duration::ZERO);
    let (seen, observer) = events();
    let svc = CacheLayer::builder()
        .ttl(10 * SEC)
        .stale_if_error(60 * SEC)
        .cache_status("parapet")
        .observer(observer)
        .build()
        .unwrap()
        .layer(db.service());
    let call = || svc.clone().oneshot(get("/p"));
    assert_eq!(body(call().await.unwrap()).await, "GET /p v1");
    tokio::time::advance(30 * SEC).await;
    db.set(Db::Fail);
    let res = call().await.unwrap();
    assert_eq!(
        header(&res, "cache-status").as_deref(),
        Some("parapet; fwd=stale; detail=error; ttl=-20")
    );
    assert_eq!(body(res).await, "GET /p v1");
    db.set(Db::Status(503));
    let res = call().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "cache-status").as_deref(),
        Some("parapet; fwd=stale; fwd-status=503; ttl=-20")
    );
    assert_eq!(count(&seen, "stale_served"), 2);
    tokio::time::advance(40 * SEC).await;
    db.set(Db::Fail);
    assert!(call().await.is_err(), "past the window, the failure shows");
    db.set(Db::Ok);
    assert_eq!(body(call().await.unwrap()).await, "GET /p v5");
}

#[tokio::test(start_paused = true)]
async fn no_store_responses_are_never_cached() {
    let mut db = Database::new(Duration::from_millis(10));
    db.cache_control = Some("no-store");
    let (seen, observer) = events();
    let svc = CacheLayer::builder()
        .observer(observer)
        .build()
        .unwrap()
        .layer(db.service());
    for n in 1..=3 {
        let res = svc.clone().oneshot(get("/me")).await.unwrap();
        assert_eq!(body(res).await, format!("GET /me v{n}"));
    }
    assert_eq!(db.calls(), 3);
    // Concurrent requests are not given one another's private answer: each calls.
    let answers = join_all((0..5).map(|_| svc.clone().oneshot(get("/me")))).await;
    assert_eq!(db.calls(), 8);
    let mut bodies: Vec<String> = Vec::new();
    for res in answers {
        bodies.push(body(res.unwrap()).await);
    }
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 5, "each got its own answer");
    assert!(count(&seen, "not_stored") >= 4);
    assert_eq!(count(&seen, "stored"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_server_error_is_shared_with_waiters_but_never_stored() {
    let db = Database::new(Duration::from_millis(100));
    db.set(Db::Status(503));
    let svc = CacheLayer::builder()
        .observer(())
        .build()
        .unwrap()
        .layer(db.service());
    let answers = join_all((0..10).map(|_| svc.clone().oneshot(get("/p")))).await;
    assert_eq!(db.calls(), 1, "waiters get the same 503");
    for res in answers {
        assert_eq!(res.unwrap().status(), 503);
    }
    db.set(Db::Ok);
    assert_eq!(
        body(svc.clone().oneshot(get("/p")).await.unwrap()).await,
        "GET /p v2"
    );
}

#[tokio::test(start_paused = true)]
async fn the_byte_bound_holds_and_large_bodies_pass_through() {
    let mut db = Database::new(Duration::ZERO);
    db.body_len = 1000;
    let cache = CacheLayer::builder()
        .max_bytes(10_000)
        .observer(())
        .build()
        .unwrap();
    let handle = cache.handle();
    let svc = cache.layer(db.service());
    for n in 0..100 {
        let res = svc
            .clone()
            .oneshot(get(&format!("/item/{n}")))
            .await
            .unwrap();
        assert_eq!(body(res).await.len(), 1000);
    }
    let kept = handle.entry_count().unwrap();
    assert!(
        kept <= 10,
        "{kept} entries of more than 1000 bytes in 10 000"
    );
    assert!(kept > 0);

    let (seen, observer) = events();
    let cache = CacheLayer::builder()
        .max_body_bytes(100)
        .observer(observer)
        .build()
        .unwrap();
    let svc = cache.layer(db.service());
    for _ in 0..2 {
        let res = svc.clone().oneshot(get("/big")).await.unwrap();
        assert_eq!(body(res).await.len(), 1000, "passed through whole");
    }
    assert_eq!(db.calls(), 102, "never cached");
    assert_eq!(count(&seen, "not_stored"), 2);
}

#[tokio::test(start_paused = true)]
async fn unsafe_methods_and_authorized_requests_are_never_served_from_cache() {
    let db = Database::new(Duration::ZERO);
    let svc = CacheLayer::builder()
        .observer(())
        .build()
        .unwrap()
        .layer(db.service());
    assert_eq!(
        body(svc.clone().oneshot(get("/cart")).await.unwrap()).await,
        "GET /cart v1"
    );
    for n in 2..=3 {
        let post = Request::post("/cart").body(Body::default()).unwrap();
        let res = svc.clone().oneshot(post).await.unwrap();
        assert_eq!(body(res).await, format!("POST /cart v{n}"));
    }
    let authorized = Request::get("/cart")
        .header("authorization", "Bearer x")
        .body(Body::default())
        .unwrap();
    assert_eq!(
        body(svc.clone().oneshot(authorized).await.unwrap()).await,
        "GET /cart v4"
    );
    // HEAD has its own entries.
    let head = Request::head("/cart").body(Body::default()).unwrap();
    assert_eq!(
        body(svc.clone().oneshot(head).await.unwrap()).await,
        "HEAD /cart v5"
    );
    assert_eq!(
        body(svc.clone().oneshot(get("/cart")).await.unwrap()).await,
        "GET /cart v1"
    );
}

#[tokio::test(start_paused = true)]
async fn invalidation_by_key_target_and_prefix() {
    let db = Database::new(Duration::ZERO);
    let (seen, observer) = events();
    let cache = CacheLayer::builder().observer(observer).build().unwrap();
    let handle = cache.handle();
    let svc = cache.layer(db.service());
    let call = |path: &str| {
        let svc = svc.clone();
        let req = get(path);
        async move { body(svc.oneshot(req).await.unwrap()).await }
    };
    for p in ["/products?page=1", "/products?page=2", "/users"] {
        call(p).await;
    }
    assert_eq!(db.calls(), 3);
    handle.invalidate("/products?page=1");
    assert_eq!(call("/products?page=1").await, "GET /products?page=1 v4");
    assert_eq!(call("/products?page=2").await, "GET /products?page=2 v2");
    handle.invalidate_prefix("/products");
    assert_eq!(call("/products?page=1").await, "GET /products?page=1 v5");
    assert_eq!(call("/products?page=2").await, "GET /products?page=2 v6");
    assert_eq!(call("/users").await, "GET /users v3", "outside the prefix");
    handle.invalidate_key(&cache_key(&Method::GET, "/users", &[]));
    assert_eq!(call("/users").await, "GET /users v7");
    handle.clear();
    assert_eq!(handle.entry_count(), Some(0));
    assert_eq!(count(&seen, "invalidated"), 4);
}

#[tokio::test(start_paused = true)]
async fn an_invalidation_during_a_call_keeps_its_answer_out() {
    let db = Database::new(Duration::from_millis(100));
    let cache = CacheLayer::builder().observer(()).build().unwrap();
    let handle = cache.handle();
    let svc = cache.layer(db.service());
    let pending = tokio::spawn(svc.clone().oneshot(get("/p")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    handle.invalidate("/p");
    pending.await.unwrap().unwrap();
    svc.clone().oneshot(get("/p")).await.unwrap();
    assert_eq!(
        db.calls(),
        2,
        "the answer begun before the invalidation was not kept"
    );
}

#[tokio::test(start_paused = true)]
async fn key_headers_separate_entries() {
    let db = Database::new(Duration::ZERO);
    let svc = CacheLayer::builder()
        .key_header(http::HeaderName::from_static("accept-language"))
        .observer(())
        .build()
        .unwrap()
        .layer(db.service());
    let req = |lang: &str| {
        Request::get("/p")
            .header("accept-language", lang)
            .body(Body::default())
            .unwrap()
    };
    for lang in ["de", "fr", "de", "fr"] {
        svc.clone().oneshot(req(lang)).await.unwrap();
    }
    assert_eq!(db.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_fallback_answers_from_the_cache_when_the_call_hangs() {
    // Fallback -> timeout -> cache -> database: a hanging database cannot trigger
    // stale-if-error inside the cache (nothing fails, it hangs), so the timeout fires and
    // the fallback answers with the cached copy.
    let db = Database::new(Duration::ZERO);
    let cache = CacheLayer::builder()
        .ttl(10 * SEC)
        .stale_if_error(300 * SEC)
        .observer(())
        .build()
        .unwrap();
    let source = cache.handle().fallback_source();
    let svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::new(source)
                .mark(HeaderMark::default())
                .observer(()),
        )
        .layer(TimeoutLayer::new(SEC).observer(()))
        .layer(cache)
        .service(db.service());
    let first = svc.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(body(first).await, "GET /products v1");
    tokio::time::advance(60 * SEC).await;
    db.set(Db::Hang);
    let start = Instant::now();
    let res = svc.clone().oneshot(get("/products")).await.unwrap();
    assert_eq!(start.elapsed(), SEC);
    assert_eq!(header(&res, "parapet-fallback").as_deref(), Some("cache"));
    assert_eq!(header(&res, "age").as_deref(), Some("61"));
    assert_eq!(body(res).await, "GET /products v1");
    // No copy for another key: the timeout shows.
    let err = svc.clone().oneshot(get("/other")).await.unwrap_err();
    assert_eq!(
        Rejection::from_box(&err).map(Rejection::kind),
        Some(RejectionKind::Timeout)
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_leader_does_not_strand_its_waiters() {
    let db = Database::new(Duration::from_millis(100));
    let svc = CacheLayer::builder()
        .observer(())
        .build()
        .unwrap()
        .layer(db.service());
    let mut leader = Box::pin(svc.clone().oneshot(get("/p")));
    assert!(
        tokio::time::timeout(Duration::from_millis(10), &mut leader)
            .await
            .is_err(),
        "the leader is waiting for the database"
    );
    let waiters: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/p"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(db.calls(), 1, "the waiters wait");
    drop(leader);
    let start = Instant::now();
    let mut bodies = Vec::new();
    for w in waiters {
        bodies.push(body(w.await.unwrap().unwrap()).await);
    }
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(100),
        "one took over at once"
    );
    assert_eq!(db.calls(), 2, "exactly one waiter took over");
    assert!(bodies.iter().all(|b| b == "GET /p v2"), "{bodies:?}");
}

#[tokio::test(start_paused = true)]
async fn time_to_idle_drops_entries_nobody_reads() {
    let db = Database::new(Duration::ZERO);
    let svc = CacheLayer::builder()
        .ttl(3600 * SEC)
        .time_to_idle(10 * SEC)
        .observer(())
        .build()
        .unwrap()
        .layer(db.service());
    let call = || svc.clone().oneshot(get("/p"));
    call().await.unwrap();
    for _ in 0..3 {
        tokio::time::advance(9 * SEC).await;
        call().await.unwrap();
    }
    assert_eq!(db.calls(), 1, "read every 9 s: kept");
    tokio::time::advance(10 * SEC).await;
    call().await.unwrap();
    assert_eq!(db.calls(), 2, "idle for 10 s: dropped");
}

/// Without a tokio runtime a stale-while-revalidate answer stands and nothing is spawned;
/// once the window ends, the next request refreshes in line.
#[cfg(feature = "test-util")]
#[test]
fn without_a_runtime_stale_answers_stand_and_nothing_is_spawned() {
    use futures_util::FutureExt;
    use std::task::{Context, Poll};
    use tower_parapet::clock::ManualClock;

    #[derive(Clone)]
    struct AtOnce(Arc<AtomicU32>);

    impl Service<Request<Body>> for AtOnce {
        type Response = Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Response<Body>, std::convert::Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(Ok(Response::new(Full::new(Bytes::from(format!("v{n}"))))))
        }
    }

    let calls = Arc::new(AtomicU32::new(0));
    let manual = ManualClock::new();
    let mut svc = CacheLayer::builder()
        .ttl(10 * SEC)
        .stale_while_revalidate(5 * SEC)
        .clock(manual.clone())
        .observer(())
        .build()
        .unwrap()
        .layer(AtOnce(calls.clone()));
    let mut call = || {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = svc.poll_ready(&mut cx);
        let res = svc.call(get("/p")).now_or_never().unwrap().unwrap();
        let body = res.into_body().collect().now_or_never().unwrap().unwrap();
        String::from_utf8(body.to_bytes().to_vec()).unwrap()
    };
    assert_eq!(call(), "v1");
    manual.advance(12 * SEC);
    assert_eq!(call(), "v1", "stale while revalidating");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no refresh without a runtime"
    );
    manual.advance(4 * SEC);
    assert_eq!(call(), "v2", "past the window: refreshed in line");
}

#[test]
fn config_is_data_and_names_the_bad_field() {
    let config: CacheConfig = serde_json::from_str(
        r#"{"ttl":"30s","time_to_idle":"5m","stale_if_error":"1h","key_headers":["x-tenant"]}"#,
    )
    .unwrap();
    assert_eq!(config.ttl, Duration::from_secs(30));
    assert!(config.build().is_ok());
    let back: CacheConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);
    for (json, field) in [
        (r#"{"ttl":"0s"}"#, "ttl"),
        (r#"{"max_entries":0}"#, "max_entries"),
        (r#"{"max_bytes":0}"#, "max_bytes"),
        (r#"{"key_headers":["bad header"]}"#, "key_headers"),
        (r#"{"cache_status":"two words"}"#, "cache_status"),
        (r#"{"name":""}"#, "name"),
    ] {
        let c: CacheConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.build().unwrap_err().field(), field, "{json}");
    }
    assert!(serde_json::from_str::<CacheConfig>(r#"{"tll":"1s"}"#).is_err());
}

#[test]
fn services_and_layers_are_send_sync_clone() {
    fn check<T: Send + Sync + Clone>() {}
    check::<CacheLayer>();
    check::<tower_parapet::cache::CacheHandle>();
    check::<tower_parapet::cache::CacheSource>();
}

#[tokio::test(start_paused = true)]
async fn the_cache_goes_into_an_axum_router() {
    use axum::routing::get as route_get;
    use tower_parapet::http::RejectionResponseLayer;

    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let app = axum::Router::new()
        .route(
            "/products",
            route_get(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                async move { format!("tea, coffee (query #{n})") }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(
                    CacheLayer::builder()
                        .cache_status("parapet")
                        .observer(())
                        .build()
                        .unwrap(),
                ),
        );
    let req = || {
        axum::extract::Request::get("/products")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    for _ in 0..3 {
        let res = app.clone().oneshot(req()).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(body(res).await, "tea, coffee (query #1)");
    }
    let res = app.clone().oneshot(req()).await.unwrap();
    assert_eq!(
        header(&res, "cache-status").as_deref(),
        Some("parapet; hit")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
