//! The fault-injection layer, black-box, in paused time: off by default, each fault kind,
//! rates over 10 000 seeded calls, targeting, runtime switching and dropped hung calls.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_parapet::bulkhead::BulkheadLayer;
use tower_parapet::fault::{FaultConfig, FaultError, FaultKind, FaultLayer};
use tower_parapet::key::{self, KeyError};
use tower_parapet::observe::Event;
use tower_parapet::{Mode, ModeHandle};

/// A service that counts its calls and echoes the request.
fn counted() -> (
    Arc<AtomicU32>,
    impl Service<u32, Response = u32, Error = Infallible, Future: Send> + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = service_fn(move |n: u32| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(n) }
    });
    (calls, svc)
}

/// Collects `(fault, shadow)` of every injected fault.
#[derive(Clone, Default)]
struct Faults(Arc<Mutex<Vec<(FaultKind, bool)>>>);

impl Faults {
    fn observer(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let seen = self.0.clone();
        move |e: &Event<'_>| {
            if let Event::FaultInjected { fault, shadow, .. } = e {
                seen.lock().unwrap().push((*fault, *shadow));
            }
        }
    }

    fn count(&self, kind: FaultKind) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == kind)
            .count()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// What one call ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Injected,
    Aborted,
    Other,
}

fn outcome<T>(result: &Result<T, BoxError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(e) => match FaultError::from_box(e) {
            Some(FaultError::Injected { .. }) => Outcome::Injected,
            Some(FaultError::Aborted { .. }) => Outcome::Aborted,
            _ => Outcome::Other,
        },
    }
}

#[tokio::test(start_paused = true)]
async fn off_by_default_injects_nothing() {
    let faults = Faults::default();
    let layer = FaultLayer::builder()
        .error_rate(50.0)
        .hang_rate(50.0)
        .latency(100.0, Duration::from_secs(1))
        .observer(faults.observer())
        .build()
        .unwrap();
    assert_eq!(layer.handle().mode(), Mode::Off);
    assert!(!layer.handle().is_enabled());
    let (calls, inner) = counted();
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);
    let started = Instant::now();
    for n in 0..100 {
        assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 100);
    assert_eq!(faults.len(), 0);

    // The same from a config file that says nothing about the mode.
    let config: FaultConfig = serde_json::from_str(r#"{ "error_rate": 100 }"#).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(config.build().unwrap())
        .service(counted().1);
    assert!(svc.ready().await.unwrap().call(1).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn error_fault_answers_without_calling_the_service() {
    let (calls, inner) = counted();
    let layer = FaultLayer::builder()
        .name("db-chaos")
        .error_rate(100.0)
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    match FaultError::from_box(&err) {
        Some(FaultError::Injected { name, .. }) => assert_eq!(&**name, "db-chaos"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // Any error of the user's own.
    #[derive(Debug, thiserror::Error)]
    #[error("database is read-only")]
    struct ReadOnly;
    let layer = FaultLayer::builder()
        .error_rate(100.0)
        .error_with(|| Box::new(ReadOnly))
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(counted().1);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.is::<ReadOnly>());
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn error_fault_answers_an_http_status() {
    let layer = FaultLayer::builder()
        .error_rate(100.0)
        .http_status(http::StatusCode::SERVICE_UNAVAILABLE)
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_: http::Request<String>| async {
                Ok::<_, Infallible>(http::Response::new(String::from("real")))
            }));
    let res = svc
        .oneshot(http::Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["parapet-fault"], "error");
    assert_eq!(res.body(), "");
}

#[tokio::test(start_paused = true)]
async fn latency_is_fixed_or_drawn_from_its_range() {
    let (calls, inner) = counted();
    let layer = FaultLayer::builder()
        .latency(100.0, Duration::from_millis(250))
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);
    let started = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (min, max) = (Duration::from_millis(100), Duration::from_millis(300));
    let layer = FaultLayer::builder()
        .seed(3)
        .latency_between(100.0, min, max)
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(counted().1);
    let mut delays = Vec::new();
    for n in 0..200 {
        let started = Instant::now();
        svc.ready().await.unwrap().call(n).await.unwrap();
        delays.push(started.elapsed());
    }
    assert!(delays.iter().all(|d| (min..=max).contains(d)), "{delays:?}");
    let below_middle = delays
        .iter()
        .filter(|d| **d < Duration::from_millis(200))
        .count();
    assert!((70..130).contains(&below_middle), "{below_middle}");
}

#[tokio::test(start_paused = true)]
async fn hang_never_answers_and_abort_looks_like_a_broken_connection() {
    let (calls, inner) = counted();
    let layer = FaultLayer::builder()
        .hang_rate(100.0)
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);
    let call = svc.ready().await.unwrap().call(1);
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), call)
            .await
            .is_err()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    handle.set_rate(FaultKind::Hang, 0.0).unwrap();
    handle.set_rate(FaultKind::Abort, 100.0).unwrap();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    let Some(aborted @ FaultError::Aborted { .. }) = FaultError::from_box(&err) else {
        panic!("unexpected {err}");
    };
    let io = std::error::Error::source(aborted)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn rates_hold_over_ten_thousand_seeded_calls() {
    let faults = Faults::default();
    let layer = FaultLayer::builder()
        .seed(42)
        .error_rate(30.0)
        .abort_rate(10.0)
        .hang_rate(5.0)
        .latency(20.0, Duration::from_millis(1))
        .observer(faults.observer())
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let (calls, inner) = counted();
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);
    let (mut ok, mut injected, mut aborted, mut hung) = (0, 0, 0, 0);
    for n in 0..10_000 {
        let call = svc.ready().await.unwrap().call(n);
        match tokio::time::timeout(Duration::from_secs(1), call).await {
            Err(_) => hung += 1,
            Ok(r) => match outcome(&r) {
                Outcome::Ok => ok += 1,
                Outcome::Injected => injected += 1,
                Outcome::Aborted => aborted += 1,
                Outcome::Other => unreachable!(),
            },
        }
    }
    println!("ok {ok}, error {injected}, abort {aborted}, hang {hung}");
    // Within 1.5 percentage points of each rate (about 3 standard deviations or more).
    assert!((2_850..=3_150).contains(&injected), "error {injected}");
    assert!((850..=1_150).contains(&aborted), "abort {aborted}");
    assert!((350..=650).contains(&hung), "hang {hung}");
    let latency = faults.count(FaultKind::Latency);
    assert!((1_850..=2_150).contains(&latency), "latency {latency}");
    assert_eq!(ok, calls.load(Ordering::SeqCst));
    assert_eq!(ok + injected + aborted + hung, 10_000);
    assert_eq!(faults.count(FaultKind::Error), injected as usize);
    assert_eq!(faults.count(FaultKind::Hang), hung as usize);
}

async fn sequence(seed: u64, calls: u32) -> Vec<(Outcome, Duration)> {
    let layer = FaultLayer::builder()
        .seed(seed)
        .error_rate(20.0)
        .abort_rate(20.0)
        .latency_between(50.0, Duration::from_millis(1), Duration::from_millis(100))
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(counted().1);
    let mut out = Vec::new();
    for n in 0..calls {
        let started = Instant::now();
        let r = svc.ready().await.unwrap().call(n).await;
        out.push((outcome(&r), started.elapsed()));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_sequence() {
    let a = sequence(9, 1_000).await;
    let b = sequence(9, 1_000).await;
    assert_eq!(a, b);
    let c = sequence(10, 1_000).await;
    assert_ne!(a, c);
    // Clones share one sequence: two clones alternating see the one-service sequence.
    let layer = FaultLayer::builder()
        .seed(9)
        .error_rate(20.0)
        .abort_rate(20.0)
        .latency_between(50.0, Duration::from_millis(1), Duration::from_millis(100))
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(counted().1);
    let mut clones = [svc.clone(), svc];
    for (n, expected) in a.iter().enumerate().take(100) {
        let s = &mut clones[n % 2];
        let started = Instant::now();
        let r = s.ready().await.unwrap().call(n as u32).await;
        assert_eq!((outcome(&r), started.elapsed()), *expected, "call {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_predicate_targets_requests() {
    let (calls, inner) = counted();
    let layer = FaultLayer::builder()
        .error_rate(100.0)
        .when(|n: &u32| n.is_multiple_of(2))
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);
    let mut failed = Vec::new();
    for n in 0..10 {
        if svc.ready().await.unwrap().call(n).await.is_err() {
            failed.push(n);
        }
    }
    assert_eq!(failed, [0, 2, 4, 6, 8]);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn a_sticky_share_of_keys_is_targeted() {
    // Requests are (user, attempt); the key is the user.
    let by_user = key::from_fn(|r: &(u32, u32)| Ok::<_, KeyError>(r.0));
    let layer = FaultLayer::builder()
        .seed(5)
        .error_rate(100.0)
        .keys(by_user, 25.0)
        .when(|r: &(u32, u32)| r.0 != 0) // user 0 is never targeted
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let mut svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(
                |r: (u32, u32)| async move { Ok::<_, Infallible>(r) },
            ));
    let mut targeted_users = 0;
    for user in 0..2_000u32 {
        let mut results = Vec::new();
        for attempt in 0..3 {
            results.push(
                svc.ready()
                    .await
                    .unwrap()
                    .call((user, attempt))
                    .await
                    .is_err(),
            );
        }
        // Sticky: a user gets the faults on every request or on none.
        assert!(results.iter().all(|r| *r == results[0]), "user {user}");
        if results[0] {
            targeted_users += 1;
        }
    }
    assert!(svc.ready().await.unwrap().call((0, 9)).await.is_ok());
    assert!((420..=580).contains(&targeted_users), "{targeted_users}");

    // A request without a key gets no fault.
    let no_key = key::from_fn(|_: &u32| Err::<u32, _>(KeyError::Missing));
    let layer = FaultLayer::builder()
        .error_rate(100.0)
        .keys(no_key, 100.0)
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(counted().1);
    assert!(svc.oneshot(1).await.is_ok());

    let err = FaultLayer::builder()
        .keys(key::from_fn(|r: &u32| Ok::<_, KeyError>(*r)), 120.0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "keys");
}

#[tokio::test(start_paused = true)]
async fn the_handle_switches_and_tunes_at_runtime() {
    let faults = Faults::default();
    let mode = ModeHandle::new(Mode::Off);
    let layer = FaultLayer::builder()
        .seed(1)
        .error_rate(100.0)
        .mode(mode.clone())
        .observer(faults.observer())
        .build()
        .unwrap();
    let handle = layer.handle();
    let (calls, inner) = counted();
    let mut svc = ServiceBuilder::new().layer(layer).service(inner);
    assert_eq!(
        outcome(&svc.ready().await.unwrap().call(1).await),
        Outcome::Ok
    );

    handle.enable();
    assert_eq!(mode.get(), Mode::Enforce);
    assert_eq!(
        outcome(&svc.ready().await.unwrap().call(2).await),
        Outcome::Injected
    );

    // Through the shared mode handle (as the admin router does): shadow reports only.
    mode.set(Mode::Shadow);
    assert_eq!(
        outcome(&svc.ready().await.unwrap().call(3).await),
        Outcome::Ok
    );
    assert_eq!(
        faults.0.lock().unwrap().last(),
        Some(&(FaultKind::Error, true))
    );
    mode.set(Mode::Enforce);

    // Switch the error kind off: its rate is kept, it injects nothing.
    handle.set_kinds([FaultKind::Abort]);
    assert_eq!(handle.kinds(), [FaultKind::Abort]);
    assert_eq!(handle.rate(FaultKind::Error), 100.0);
    assert_eq!(
        outcome(&svc.ready().await.unwrap().call(4).await),
        Outcome::Ok
    );
    handle.set_rate(FaultKind::Error, 0.0).unwrap();
    handle.set_rate(FaultKind::Abort, 100.0).unwrap();
    assert_eq!(
        outcome(&svc.ready().await.unwrap().call(5).await),
        Outcome::Aborted
    );

    // A refused change changes nothing.
    assert_eq!(
        handle.set_rate(FaultKind::Hang, 10.0).unwrap_err().field(),
        "hang_rate"
    );
    assert_eq!(
        handle.set_rate(FaultKind::Error, -1.0).unwrap_err().field(),
        "error_rate"
    );
    assert_eq!(handle.rate(FaultKind::Hang), 0.0);
    assert_eq!(
        handle
            .set_latency(Duration::from_secs(2), Duration::from_secs(1))
            .unwrap_err()
            .field(),
        "latency_max"
    );

    handle.disable();
    assert_eq!(
        outcome(&svc.ready().await.unwrap().call(6).await),
        Outcome::Ok
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(faults.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_hung_call_releases_everything_around_it() {
    // A bulkhead of one slot outside the fault layer: a hung call holds the slot until a
    // timeout drops it; then the slot is free again.
    let (calls, inner) = counted();
    let faults = FaultLayer::builder()
        .hang_rate(100.0)
        .mode(Mode::Enforce)
        .build()
        .unwrap();
    let chaos = faults.handle();
    let bulkhead = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let slots = bulkhead.handle();
    let svc = ServiceBuilder::new()
        .layer(bulkhead)
        .layer(faults)
        .service(inner);

    for _ in 0..3 {
        let hung = tokio::spawn(svc.clone().oneshot(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(slots.in_flight(), 1);
        hung.abort();
        assert!(hung.await.unwrap_err().is_cancelled());
        assert_eq!(slots.in_flight(), 0);
    }
    // A hung call dropped inside a timeout, then one dropped mid-delay.
    let timed = tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(2)).await;
    assert!(timed.is_err());
    assert_eq!(slots.in_flight(), 0);
    chaos.set_rate(FaultKind::Hang, 0.0).unwrap();
    chaos.set_rate(FaultKind::Latency, 100.0).unwrap();
    chaos
        .set_latency(Duration::from_secs(5), Duration::from_secs(5))
        .unwrap();
    let delayed = tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(3)).await;
    assert!(delayed.is_err());
    assert_eq!(slots.in_flight(), 0);

    chaos.disable();
    assert_eq!(svc.oneshot(4).await.unwrap(), 4);
    // Hung calls never called the service; the delayed one was handed to it in `call`
    // (its future dropped unpolled), and the last one answered.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// ---- response corruption and gRPC statuses ---------------------------------------------

#[cfg(feature = "http")]
mod http_faults {
    use super::*;
    use bytes::Bytes;
    use http::{Request, Response, header};
    use http_body_util::{BodyExt, Full};
    use tower_parapet::fault::HttpCorruption;
    use tower_parapet::grpc::Code;

    const BODY: &str = r#"{"order":42,"items":["tea","scones"],"total":"12.50"}"#;

    /// An origin answering `BODY` with a `Content-Length` and a `Content-Type`.
    fn origin() -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone {
        service_fn(|_: Request<Full<Bytes>>| async {
            let mut res = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, BODY.len().into());
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            Ok::<_, Infallible>(res)
        })
    }

    async fn body_of(res: Response<Full<Bytes>>) -> (http::HeaderMap, Bytes) {
        let (parts, body) = res.into_parts();
        (parts.headers, body.collect().await.unwrap().to_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn corruption_is_off_by_default_and_needs_a_corruption() {
        let faults = Faults::default();
        let layer = FaultLayer::builder()
            .corrupt(100.0, HttpCorruption::garbage())
            .observer(faults.observer())
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(layer).service(origin());
        for _ in 0..20 {
            let res = svc.ready().await.unwrap().call(Request::default()).await;
            let (headers, body) = body_of(res.unwrap()).await;
            assert_eq!(body, BODY.as_bytes());
            assert!(!headers.contains_key("parapet-fault"));
        }
        assert_eq!(faults.len(), 0);

        // A corrupt rate with nothing to corrupt with is refused, in config and at runtime.
        let err = FaultLayer::builder()
            .error_rate(10.0)
            .build()
            .unwrap()
            .handle()
            .set_rate(FaultKind::Corrupt, 5.0)
            .unwrap_err();
        assert_eq!(err.field(), "corrupt_rate");
        let config: FaultConfig = serde_json::from_str(r#"{ "corrupt_rate": 5 }"#).unwrap();
        assert_eq!(config.build().unwrap_err().field(), "corrupt_rate");
        let layer = config
            .builder()
            .corruption(HttpCorruption::truncate())
            .build()
            .unwrap();
        assert_eq!(layer.handle().rate(FaultKind::Corrupt), 5.0);
        // Corrupt shares the one roll with error, abort and hang.
        let err = FaultLayer::builder()
            .error_rate(60.0)
            .corrupt(50.0, HttpCorruption::truncate())
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "corrupt_rate");
    }

    #[tokio::test(start_paused = true)]
    async fn each_corruption_changes_the_response() {
        for (name, corruption) in [
            ("truncate", HttpCorruption::truncate()),
            ("flip_bytes", HttpCorruption::flip_bytes(3)),
            ("garbage", HttpCorruption::garbage()),
        ] {
            let (calls, seen) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
            let counted = calls.clone();
            let inner = origin();
            let layer = FaultLayer::builder()
                .seed(11)
                .corrupt(100.0, corruption)
                .mode(Mode::Enforce)
                .build()
                .unwrap();
            let mut svc = ServiceBuilder::new()
                .layer(layer)
                .map_request(move |r| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    r
                })
                .service(inner);
            for _ in 0..50 {
                let res = svc.ready().await.unwrap().call(Request::default()).await;
                let (headers, body) = body_of(res.unwrap()).await;
                assert_ne!(body, BODY.as_bytes(), "{name}");
                assert_eq!(headers["parapet-fault"], "corrupt", "{name}");
                // Framing stays consistent with the mangled body.
                assert_eq!(
                    headers[header::CONTENT_LENGTH],
                    body.len().to_string(),
                    "{name}"
                );
                assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{name}");
                match name {
                    "truncate" => {
                        assert!(BODY.as_bytes().starts_with(&body) && body.len() < BODY.len())
                    }
                    _ => assert_eq!(body.len(), BODY.len(), "{name}"),
                }
                seen.fetch_add(1, Ordering::SeqCst);
            }
            // The service was called every time: corruption mangles its real answer.
            assert_eq!(calls.load(Ordering::SeqCst), seen.load(Ordering::SeqCst));
        }

        // Dropping a header leaves the body alone.
        let layer = FaultLayer::builder()
            .corrupt(100.0, HttpCorruption::drop_header(header::CONTENT_TYPE))
            .mode(Mode::Enforce)
            .build()
            .unwrap();
        let res = ServiceBuilder::new()
            .layer(layer)
            .service(origin())
            .oneshot(Request::default())
            .await
            .unwrap();
        let (headers, body) = body_of(res).await;
        assert_eq!(body, BODY.as_bytes());
        assert!(!headers.contains_key(header::CONTENT_TYPE));
        assert_eq!(headers["parapet-fault"], "corrupt");
    }

    /// Corrupted bodies of `calls` seeded calls, `None` for an untouched one.
    async fn corrupted(seed: u64, percent: f64, calls: usize) -> Vec<Option<Bytes>> {
        let faults = Faults::default();
        let layer = FaultLayer::builder()
            .seed(seed)
            .corrupt(percent, HttpCorruption::flip_bytes(2))
            .mode(Mode::Enforce)
            .observer(faults.observer())
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(layer).service(origin());
        let mut out = Vec::with_capacity(calls);
        for _ in 0..calls {
            let res = svc.ready().await.unwrap().call(Request::default()).await;
            let (headers, body) = body_of(res.unwrap()).await;
            let touched = headers.contains_key("parapet-fault");
            assert_eq!(touched, body != BODY.as_bytes());
            out.push(touched.then_some(body));
        }
        assert_eq!(
            faults.count(FaultKind::Corrupt),
            out.iter().filter(|b| b.is_some()).count()
        );
        out
    }

    #[tokio::test(start_paused = true)]
    async fn the_corrupt_rate_holds_and_a_seed_repeats_it() {
        let calls = 10_000;
        let run = corrupted(5, 20.0, calls).await;
        let hit = run.iter().filter(|b| b.is_some()).count();
        // 20 % of 10 000: 2 000, within 4 standard deviations (40).
        assert!((1_840..=2_160).contains(&hit), "{hit}");
        assert_eq!(corrupted(5, 20.0, 500).await, run[..500]);
        assert_ne!(corrupted(6, 20.0, 500).await, run[..500]);
    }

    #[tokio::test(start_paused = true)]
    async fn shadow_mode_reports_corruption_and_changes_nothing() {
        let faults = Faults::default();
        let layer = FaultLayer::builder()
            .corrupt(100.0, HttpCorruption::garbage())
            .mode(Mode::Shadow)
            .observer(faults.observer())
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(layer).service(origin());
        for _ in 0..10 {
            let res = svc.ready().await.unwrap().call(Request::default()).await;
            assert_eq!(body_of(res.unwrap()).await.1, BODY.as_bytes());
        }
        assert_eq!(
            faults.0.lock().unwrap().as_slice(),
            &[(FaultKind::Corrupt, true); 10]
        );
    }

    async fn one<S>(svc: &mut S) -> Bytes
    where
        S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError>,
    {
        let res = svc.ready().await.unwrap().call(Request::default()).await;
        body_of(res.unwrap()).await.1
    }

    #[tokio::test(start_paused = true)]
    async fn the_handle_tunes_corruption_at_runtime() {
        let layer = FaultLayer::builder()
            .corruption(HttpCorruption::truncate())
            .mode(Mode::Enforce)
            .build()
            .unwrap();
        let chaos = layer.handle();
        let mut svc = ServiceBuilder::new().layer(layer).service(origin());
        assert_eq!(one(&mut svc).await, BODY.as_bytes());
        assert_eq!(chaos.set_rate(FaultKind::Corrupt, 100.0).unwrap(), 0.0);
        assert_ne!(one(&mut svc).await, BODY.as_bytes());
        chaos.set_kinds([FaultKind::Error]);
        assert_eq!(one(&mut svc).await, BODY.as_bytes());
        assert!(!chaos.kinds().contains(&FaultKind::Corrupt));
        assert_eq!(FaultKind::Corrupt.as_str(), "corrupt");
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_status_fault_answers_like_a_grpc_server() {
        let (calls, seen) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let counted = calls.clone();
        let layer = FaultLayer::builder()
            .seed(9)
            .error_rate(30.0)
            .grpc_status(Code::Unavailable, "injected: 100% down")
            .mode(Mode::Enforce)
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(
            move |_: Request<Full<Bytes>>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async {
                    let mut res = Response::new(Full::new(Bytes::from_static(b"\0\0\0\0\0")));
                    res.headers_mut().insert("grpc-status", 0.into());
                    Ok::<_, Infallible>(res)
                }
            },
        ));
        let calls_made = 2_000;
        for _ in 0..calls_made {
            let res = svc.ready().await.unwrap().call(Request::default()).await;
            let (parts, body) = res.unwrap().into_parts();
            assert_eq!(parts.status, 200);
            if parts.headers["grpc-status"] == "14" {
                seen.fetch_add(1, Ordering::SeqCst);
                assert_eq!(parts.headers[header::CONTENT_TYPE], "application/grpc");
                assert_eq!(parts.headers["grpc-message"], "injected: 100%25 down");
                assert_eq!(parts.headers["parapet-fault"], "error");
                assert!(body.collect().await.unwrap().to_bytes().is_empty());
            } else {
                assert_eq!(parts.headers["grpc-status"], "0");
            }
        }
        let injected = seen.load(Ordering::SeqCst);
        // 30 % of 2 000: 600, within 4 standard deviations (about 82).
        assert!((518..=682).contains(&injected), "{injected}");
        assert_eq!(calls.load(Ordering::SeqCst), calls_made - injected);
    }

    /// A tonic client reads the injected answer as the status it names.
    #[cfg(feature = "tonic")]
    #[test]
    fn tonic_reads_the_injected_status() {
        let layer = FaultLayer::builder()
            .error_rate(100.0)
            .grpc_status(Code::ResourceExhausted, "quota")
            .mode(Mode::Enforce)
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let res = rt
            .block_on(
                ServiceBuilder::new()
                    .layer(layer)
                    .service(service_fn(|_: Request<()>| async {
                        Ok::<_, Infallible>(Response::new(()))
                    }))
                    .oneshot(Request::new(())),
            )
            .unwrap();
        let status = tonic::Status::from_header_map(res.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "quota");
    }
}
