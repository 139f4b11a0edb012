//! The retry layer: attempts, backoff and jitter, the budget, pushback, deadlines, safe
//! methods and body replay. Paused tokio time only: every wait below is exact.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
#[cfg(feature = "http")]
use std::time::UNIX_EPOCH;

use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};
use tower_parapet::observe::Event;
use tower_parapet::retry::{Backoff, Jitter, RetryConfig, RetryLayer};
use tower_parapet::{BoxError, Rejection};

const MS: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
#[error("connection reset")]
struct Reset;

/// When each attempt reached the inner service, relative to the test's start.
#[derive(Clone)]
struct Log(Arc<Mutex<Vec<Duration>>>, Instant);

impl Log {
    fn new() -> Log {
        Log(Arc::default(), Instant::now())
    }

    fn hit(&self) -> usize {
        let mut v = self.0.lock().unwrap();
        v.push(self.1.elapsed());
        v.len()
    }

    fn times(&self) -> Vec<Duration> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The waits between consecutive attempts.
    fn gaps(&self) -> Vec<Duration> {
        self.times().windows(2).map(|w| w[1] - w[0]).collect()
    }
}

/// Fails the first `failures` attempts of every call... of all calls together.
fn failing(
    log: Log,
    failures: usize,
) -> impl tower::Service<u32, Response = u32, Error = Reset, Future: Send> + Clone + Send {
    service_fn(move |n: u32| {
        let attempt = log.hit();
        async move {
            if attempt <= failures {
                Err(Reset)
            } else {
                Ok(n)
            }
        }
    })
}

fn events() -> (Arc<Mutex<Vec<String>>>, impl Fn(&Event<'_>) + Send + Sync) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |e: &Event<'_>| {
        let detail = match e {
            Event::RetryStopped { reason, .. } => format!(":{}", reason.as_str()),
            _ => String::new(),
        };
        sink.lock()
            .unwrap()
            .push(format!("{}{detail}", e.outcome()))
    })
}

fn plain(backoff: Backoff, jitter: Jitter, attempts: u32) -> RetryLayer {
    RetryLayer::builder()
        .max_attempts(attempts)
        .backoff(backoff)
        .jitter(jitter)
        .no_budget()
        .seed(7)
        .observer(())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn max_attempts_counts_the_first_call() {
    let (seen, observer) = events();
    let log = Log::new();
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(10 * MS))
        .no_budget()
        .observer(observer)
        .build()
        .unwrap();
    let err = layer
        .layer(failing(log.clone(), usize::MAX))
        .oneshot(1)
        .await
        .unwrap_err();
    assert!(
        err.is::<Reset>(),
        "the inner error passes through untouched"
    );
    assert!(Rejection::from_box(&err).is_none());
    assert_eq!(log.count(), 3, "the call and two retries");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "retry_scheduled",
            "retry_scheduled",
            "retry_stopped:max_attempts",
            "failed_with_retry"
        ]
    );

    let once = RetryLayer::builder()
        .max_attempts(1)
        .no_budget()
        .observer(())
        .build()
        .unwrap();
    let log = Log::new();
    assert!(
        once.layer(failing(log.clone(), 1))
            .oneshot(1)
            .await
            .is_err()
    );
    assert_eq!(log.count(), 1, "1 never retries");
}

#[tokio::test(start_paused = true)]
async fn success_needs_no_retry_and_recovery_is_reported() {
    let (seen, observer) = events();
    let layer = RetryLayer::builder()
        .no_budget()
        .observer(observer)
        .build()
        .unwrap();
    let log = Log::new();
    assert_eq!(
        layer
            .layer(failing(log.clone(), 0))
            .oneshot(5)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        layer
            .layer(failing(log.clone(), 2))
            .oneshot(6)
            .await
            .unwrap(),
        6
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "succeeded_without_retry",
            "retry_scheduled",
            "succeeded_with_retry"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn each_backoff_without_jitter() {
    for (backoff, expected) in [
        (Backoff::constant(100 * MS), [100, 100, 100, 100, 100]),
        (
            Backoff::linear(100 * MS, 50 * MS, 220 * MS),
            [100, 150, 200, 220, 220],
        ),
        (
            Backoff::exponential(100 * MS, 2.0, 1_000 * MS),
            [100, 200, 400, 800, 1_000],
        ),
    ] {
        let log = Log::new();
        let svc = plain(backoff, Jitter::None, 6).layer(failing(log.clone(), usize::MAX));
        assert!(svc.oneshot(1).await.is_err());
        let expected: Vec<_> = expected.iter().map(|ms: &u32| *ms * MS).collect();
        assert_eq!(log.gaps(), expected, "{backoff:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn full_jitter_stays_within_the_capped_wait_past_the_cap() {
    let backoff = Backoff::exponential(100 * MS, 2.0, 400 * MS);
    let log = Log::new();
    let svc = plain(backoff, Jitter::Full, 30).layer(failing(log.clone(), usize::MAX));
    assert!(svc.oneshot(1).await.is_err());
    let gaps = log.gaps();
    assert_eq!(gaps.len(), 29);
    for (i, gap) in gaps.iter().enumerate() {
        let cap = backoff.capped(i as u32 + 1);
        assert!(*gap <= cap, "retry {}: {gap:?} > {cap:?}", i + 1);
    }
    // Past the cap (retry 3 onwards) the waits still spread over [0, 400 ms].
    let past: Vec<_> = gaps[2..].to_vec();
    assert!(past.iter().any(|g| *g < 200 * MS) && past.iter().any(|g| *g > 200 * MS));
    // The same seed gives the same waits.
    let again = Log::new();
    let svc = plain(backoff, Jitter::Full, 30).layer(failing(again.clone(), usize::MAX));
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!(again.gaps(), gaps);
}

#[tokio::test(start_paused = true)]
async fn decorrelated_jitter_stays_within_its_bounds_past_the_cap() {
    let backoff = Backoff::exponential(50 * MS, 2.0, 500 * MS);
    let log = Log::new();
    let svc = plain(backoff, Jitter::Decorrelated, 30).layer(failing(log.clone(), usize::MAX));
    assert!(svc.oneshot(1).await.is_err());
    let gaps = log.gaps();
    let mut previous = 50 * MS;
    for gap in &gaps {
        let high = (previous * 3).min(500 * MS);
        assert!(
            (50 * MS..=high).contains(gap),
            "{gap:?} outside [50ms, {high:?}]"
        );
        previous = *gap;
    }
    assert!(
        gaps.iter().any(|g| *g > 300 * MS),
        "reaches the cap region: {gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retries_under_sustained_failure() {
    let (seen, observer) = events();
    let layer = RetryLayer::builder()
        .max_attempts(5)
        .backoff(Backoff::constant(MS))
        .jitter(Jitter::None)
        .budget(tower_parapet::retry::RetryBudget::new(
            0.2,
            0,
            Duration::from_secs(60),
        ))
        .observer(observer)
        .build()
        .unwrap();
    let budget = layer.budget().unwrap();
    let log = Log::new();
    // Clones share the budget: every call goes through its own clone.
    let svc = layer.layer(failing(log.clone(), usize::MAX));
    for i in 0..100 {
        assert!(svc.clone().oneshot(i).await.is_err());
    }
    // Without the budget the dependency would have seen 500 attempts.
    assert_eq!(log.count(), 120, "100 calls + 20 % retries");
    assert_eq!((budget.requests(), budget.retries()), (100, 20));
    let stopped = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| *e == "retry_stopped:budget_exhausted")
        .count();
    // Every call ended on the budget: 80 before any retry, 20 after their one retry.
    assert_eq!(stopped, 100);
}

#[tokio::test(start_paused = true)]
async fn the_budget_has_a_floor_per_second_and_its_window_slides() {
    let layer = RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(Duration::ZERO))
        .budget(tower_parapet::retry::RetryBudget::new(
            0.0,
            1,
            Duration::from_secs(10),
        ))
        .observer(())
        .build()
        .unwrap();
    let log = Log::new();
    let svc = layer.layer(failing(log.clone(), usize::MAX));
    for i in 0..30 {
        let _ = svc.clone().oneshot(i).await;
    }
    assert_eq!(log.count(), 30 + 10, "1 retry per second over 10 s");
    tokio::time::advance(Duration::from_secs(11)).await;
    let _ = svc.clone().oneshot(0).await;
    assert_eq!(log.count(), 42, "the window slid: retries allowed again");
}

#[tokio::test(start_paused = true)]
async fn inner_rejections_push_back() {
    // An inner open circuit says when to come back: the retry waits at least that long.
    let log = Log::new();
    let hits = log.clone();
    let svc =
        plain(Backoff::constant(10 * MS), Jitter::None, 2).layer(service_fn(move |_: u32| {
            let n = hits.hit();
            async move {
                if n == 1 {
                    Err(Rejection::circuit_open("db", Some(Duration::from_secs(2))).boxed())
                } else {
                    Ok::<_, BoxError>(1)
                }
            }
        }));
    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
    assert_eq!(log.gaps(), [Duration::from_secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn errors_that_would_repeat_are_not_retried() {
    let log = Log::new();
    let hits = log.clone();
    let svc = plain(Backoff::constant(MS), Jitter::None, 5).layer(service_fn(move |_: u32| {
        hits.hit();
        async { Err::<u32, BoxError>(Rejection::feature_disabled("f").boxed()) }
    }));
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!(log.count(), 1);
}

#[test]
fn bad_config_names_the_field() {
    for (json, field) in [
        (r#"{ "max_attempts": 0 }"#, "max_attempts"),
        (r#"{ "max_attempts": 101 }"#, "max_attempts"),
        (r#"{ "name": "" }"#, "name"),
        (
            r#"{ "backoff": { "type": "exponential", "initial": "1s", "multiplier": 0.5, "max": "2s" } }"#,
            "backoff.multiplier",
        ),
        (
            r#"{ "backoff": { "type": "linear", "initial": "2s", "step": "1s", "max": "1s" } }"#,
            "backoff.max",
        ),
        (r#"{ "budget": { "ratio": -1 } }"#, "budget.ratio"),
        (r#"{ "budget": { "window": "0s" } }"#, "budget.window"),
    ] {
        let config: RetryConfig = serde_json::from_str(json).unwrap();
        let err = config.build().unwrap_err();
        assert_eq!(err.field(), field, "{json}");
        assert!(err.to_string().contains(field));
    }
    assert!(serde_json::from_str::<RetryConfig>(r#"{ "attempts": 3 }"#).is_err());
    assert!(serde_json::from_str::<RetryConfig>(r#"{ "min_time_left": 5 }"#).is_err());
    let ok: RetryConfig = serde_json::from_str(r#"{ "budget": null, "jitter": "none" }"#).unwrap();
    assert!(ok.budget.is_none());
    assert!(ok.build().unwrap().budget().is_none());
}

#[cfg(feature = "http")]
mod http_requests {
    use super::*;
    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use tower_parapet::Deadline;
    use tower_parapet::retry::StopReason;

    type Body = Full<Bytes>;

    /// Answers each attempt with the next of `answers` (the last one repeats), recording
    /// when each attempt arrived and the body it carried.
    fn server(
        log: Log,
        bodies: Arc<Mutex<Vec<Bytes>>>,
        answers: Vec<Response<String>>,
    ) -> impl tower::Service<
        Request<Body>,
        Response = Response<String>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send {
        let answers = Arc::new(answers);
        service_fn(move |req: Request<Body>| {
            let n = log.hit();
            let answers = answers.clone();
            let bodies = bodies.clone();
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                bodies.lock().unwrap().push(body);
                let a = &answers[(n - 1).min(answers.len() - 1)];
                let mut res = Response::new(a.body().clone());
                *res.status_mut() = a.status();
                *res.headers_mut() = a.headers().clone();
                Ok::<_, BoxError>(res)
            }
        })
    }

    fn answer(status: u16, headers: &[(&'static str, &str)]) -> Response<String> {
        let mut res = Response::new(String::new());
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            res.headers_mut().insert(*k, v.parse().unwrap());
        }
        res
    }

    fn request(method: Method, body: &'static str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    fn http_layer(
        observer: impl Fn(&Event<'_>) + Send + Sync + 'static,
    ) -> tower_parapet::retry::RetryBuilder<
        tower_parapet::retry::HttpReplay,
        tower_parapet::classify::TransientHttpFailures,
        tower_parapet::retry::HttpPushback,
    > {
        RetryLayer::http()
            .max_attempts(3)
            .backoff(Backoff::constant(10 * MS))
            .jitter(Jitter::None)
            .no_budget()
            .observer(observer)
    }

    async fn run(
        layer: RetryLayer<
            tower_parapet::retry::HttpReplay,
            tower_parapet::classify::TransientHttpFailures,
            tower_parapet::retry::HttpPushback,
        >,
        req: Request<Body>,
        answers: Vec<Response<String>>,
    ) -> (Response<String>, Log, Vec<Bytes>) {
        let log = Log::new();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let res = layer
            .layer(server(log.clone(), bodies.clone(), answers))
            .oneshot(req)
            .await
            .unwrap();
        let bodies = bodies.lock().unwrap().clone();
        (res, log, bodies)
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_errors_are_retried_a_500_is_not() {
        let layer = http_layer(|_: &Event<'_>| {}).build().unwrap();
        let (res, log, _) = run(
            layer.clone(),
            request(Method::GET, ""),
            vec![answer(503, &[]), answer(502, &[]), answer(200, &[])],
        )
        .await;
        assert_eq!((res.status(), log.count()), (StatusCode::OK, 3));
        let (res, log, _) = run(
            layer.clone(),
            request(Method::GET, ""),
            vec![answer(500, &[])],
        )
        .await;
        assert_eq!((res.status().as_u16(), log.count()), (500, 1));
        // A 429 without pushback is returned; with pushback it is retried.
        let (res, log, _) = run(
            layer.clone(),
            request(Method::GET, ""),
            vec![answer(429, &[])],
        )
        .await;
        assert_eq!((res.status().as_u16(), log.count()), (429, 1));
        // The last failed response is returned as the response.
        let (res, log, _) = run(layer, request(Method::GET, ""), vec![answer(504, &[])]).await;
        assert_eq!((res.status().as_u16(), log.count()), (504, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_in_seconds_is_honoured() {
        let layer = http_layer(|_: &Event<'_>| {}).build().unwrap();
        let (res, log, _) = run(
            layer,
            request(Method::GET, ""),
            vec![answer(503, &[("retry-after", "2")]), answer(200, &[])],
        )
        .await;
        assert_eq!(res.status(), 200);
        assert_eq!(log.gaps(), [Duration::from_secs(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_as_an_http_date_is_honoured() {
        // 06 Nov 1994 08:49:34 GMT: three seconds before the date the server sends.
        let now = UNIX_EPOCH + Duration::from_secs(784_111_774);
        let layer = http_layer(|_: &Event<'_>| {})
            .wall_clock(move || now)
            .build()
            .unwrap();
        let (res, log, _) = run(
            layer,
            request(Method::GET, ""),
            vec![
                answer(429, &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]),
                answer(200, &[]),
            ],
        )
        .await;
        assert_eq!(res.status(), 200);
        assert_eq!(log.gaps(), [Duration::from_secs(3)]);
    }

    #[tokio::test(start_paused = true)]
    async fn ratelimit_reset_is_honoured() {
        let layer = http_layer(|_: &Event<'_>| {}).build().unwrap();
        let (res, log, _) = run(
            layer,
            request(Method::GET, ""),
            vec![
                answer(429, &[("ratelimit", r#""default";r=0;t=4"#)]),
                answer(200, &[]),
            ],
        )
        .await;
        assert_eq!(res.status(), 200);
        assert_eq!(log.gaps(), [Duration::from_secs(4)]);
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_pushback_is_honoured_and_a_negative_one_stops() {
        let (seen, observer) = events();
        let layer = http_layer(observer).build().unwrap();
        let unavailable = |pushback: &str| {
            answer(
                200,
                &[("grpc-status", "14"), ("grpc-retry-pushback-ms", pushback)],
            )
        };
        let (res, log, _) = run(
            layer.clone(),
            request(Method::POST, ""),
            vec![unavailable("1500"), answer(200, &[("grpc-status", "0")])],
        )
        .await;
        // A POST without a key is not retried, gRPC or not.
        assert_eq!(
            (res.headers()["grpc-status"].to_str().unwrap(), log.count()),
            ("14", 1)
        );
        let mut req = request(Method::POST, "");
        req.headers_mut()
            .insert("idempotency-key", "\"k1\"".parse().unwrap());
        let (res, log, _) = run(
            layer.clone(),
            req,
            vec![unavailable("1500"), answer(200, &[("grpc-status", "0")])],
        )
        .await;
        assert_eq!(res.headers()["grpc-status"], "0");
        assert_eq!(log.gaps(), [Duration::from_millis(1500)]);

        seen.lock().unwrap().clear();
        let (res, log, _) = run(layer, request(Method::GET, ""), vec![unavailable("-1")]).await;
        assert_eq!(
            (res.headers()["grpc-status"].to_str().unwrap(), log.count()),
            ("14", 1)
        );
        assert_eq!(
            *seen.lock().unwrap(),
            ["retry_stopped:pushback", "failed_without_retry"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pushback_longer_than_the_deadline_ends_retrying() {
        let (seen, observer) = events();
        let layer = http_layer(observer).build().unwrap();
        let mut req = request(Method::GET, "");
        req.extensions_mut()
            .insert(Deadline::after(Duration::from_secs(3)));
        let (res, log, _) = run(
            layer,
            req,
            vec![answer(503, &[("retry-after", "5")]), answer(200, &[])],
        )
        .await;
        assert_eq!((res.status().as_u16(), log.count()), (503, 1));
        assert_eq!(
            *seen.lock().unwrap(),
            ["retry_stopped:deadline", "failed_without_retry"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_would_overrun_the_deadline_is_not_started() {
        // Each attempt takes 50 ms and fails; the backoff is 100 ms; the deadline 250 ms.
        // Attempt 1 at 0, fails at 50; attempt 2 at 150, fails at 200; a third would start
        // at 300, after the deadline: it is not started.
        let (seen, observer) = events();
        let layer = RetryLayer::http()
            .max_attempts(10)
            .backoff(Backoff::constant(100 * MS))
            .jitter(Jitter::None)
            .no_budget()
            .observer(observer)
            .build()
            .unwrap();
        let log = Log::new();
        let hits = log.clone();
        let svc = layer.layer(service_fn(move |_: Request<Body>| {
            hits.hit();
            async {
                tokio::time::sleep(50 * MS).await;
                Ok::<_, BoxError>(answer(503, &[]))
            }
        }));
        let mut req = request(Method::GET, "");
        req.extensions_mut().insert(Deadline::after(250 * MS));
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(log.times(), [Duration::ZERO, 150 * MS]);
        assert!(
            seen.lock()
                .unwrap()
                .contains(&"retry_stopped:deadline".to_string())
        );

        // min_time_left: keep 100 ms for the attempt itself, so the second does not start
        // either (250 - 50 - 100 = 100 left after the wait, not more than 100).
        let log2 = Log::new();
        let hits = log2.clone();
        let strict = RetryLayer::http()
            .max_attempts(10)
            .backoff(Backoff::constant(100 * MS))
            .jitter(Jitter::None)
            .min_time_left(100 * MS)
            .no_budget()
            .observer(())
            .build()
            .unwrap()
            .layer(service_fn(move |_: Request<Body>| {
                hits.hit();
                async {
                    tokio::time::sleep(50 * MS).await;
                    Ok::<_, BoxError>(answer(503, &[]))
                }
            }));
        let mut req = request(Method::GET, "");
        req.extensions_mut().insert(Deadline::after(250 * MS));
        assert_eq!(strict.oneshot(req).await.unwrap().status(), 503);
        assert_eq!(log2.count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_layers_deadline_is_read() {
        use tower_parapet::TimeoutLayer;
        use tower_parapet::timeout::HttpDeadline;
        let log = Log::new();
        let hits = log.clone();
        let svc = tower::ServiceBuilder::new()
            .layer(
                TimeoutLayer::new(Duration::from_secs(1))
                    .deadline(HttpDeadline::new())
                    .observer(()),
            )
            .layer(
                RetryLayer::http()
                    .max_attempts(10)
                    .backoff(Backoff::constant(400 * MS))
                    .jitter(Jitter::None)
                    .no_budget()
                    .observer(())
                    .build()
                    .unwrap(),
            )
            .service(service_fn(move |_: Request<Body>| {
                hits.hit();
                async { Ok::<_, BoxError>(answer(503, &[])) }
            }));
        // Attempts at 0, 400 and 800 ms; one at 1 200 ms would overrun the 1 s deadline.
        let res = svc.oneshot(request(Method::GET, "")).await.unwrap();
        assert_eq!(
            res.status(),
            503,
            "the retry layer gave up before the timeout fired"
        );
        assert_eq!(log.times(), [Duration::ZERO, 400 * MS, 800 * MS]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_without_a_key_is_never_retried() {
        let (seen, observer) = events();
        let layer = http_layer(observer).build().unwrap();
        for method in [Method::POST, Method::PATCH] {
            let (res, log, _) = run(
                layer.clone(),
                request(method, "{\"amount\":10}"),
                vec![answer(503, &[]), answer(200, &[])],
            )
            .await;
            assert_eq!((res.status().as_u16(), log.count()), (503, 1));
        }
        assert_eq!(
            seen.lock()
                .unwrap()
                .iter()
                .filter(|e| *e == "retry_stopped:not_replayable")
                .count(),
            2
        );
        let _ = StopReason::NotReplayable;
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_are_replayed_from_a_buffered_copy() {
        let layer = http_layer(|_: &Event<'_>| {}).build().unwrap();
        let mut req = request(Method::POST, "{\"amount\":10}");
        req.headers_mut()
            .insert("idempotency-key", "\"pay-1\"".parse().unwrap());
        let (res, log, bodies) = run(
            layer.clone(),
            req,
            vec![answer(503, &[]), answer(502, &[]), answer(201, &[])],
        )
        .await;
        assert_eq!((res.status().as_u16(), log.count()), (201, 3));
        assert!(bodies.iter().all(|b| b == "{\"amount\":10}"), "{bodies:?}");
        // PUT is idempotent: retried without a key.
        let (res, log, bodies) = run(
            layer,
            request(Method::PUT, "v"),
            vec![answer(504, &[]), answer(200, &[])],
        )
        .await;
        assert_eq!((res.status().as_u16(), log.count()), (200, 2));
        assert_eq!(bodies, ["v", "v"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_the_cap_is_sent_once_untouched() {
        let layer = http_layer(|_: &Event<'_>| {});
        let layer = layer
            .replay(tower_parapet::retry::HttpReplay::new().max_body_bytes(4))
            .build()
            .unwrap();
        let (res, log, bodies) = run(
            layer,
            request(Method::PUT, "too long"),
            vec![answer(503, &[]), answer(200, &[])],
        )
        .await;
        assert_eq!((res.status().as_u16(), log.count()), (503, 1));
        assert_eq!(bodies, ["too long"]);
    }

    #[tokio::test(start_paused = true)]
    async fn headers_and_extensions_are_kept_for_every_attempt() {
        #[derive(Clone, Debug, PartialEq)]
        struct Tenant(&'static str);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let n = Arc::new(AtomicU32::new(0));
        let svc = http_layer(|_: &Event<'_>| {})
            .build()
            .unwrap()
            .layer(service_fn(move |req: Request<Body>| {
                sink.lock().unwrap().push((
                    req.uri().to_string(),
                    req.headers()["x-trace"].clone(),
                    req.extensions().get::<Tenant>().cloned(),
                ));
                let first = n.fetch_add(1, Ordering::SeqCst) == 0;
                async move { Ok::<_, BoxError>(answer(if first { 503 } else { 200 }, &[])) }
            }));
        let mut req = request(Method::GET, "");
        *req.uri_mut() = "/items?page=2".parse().unwrap();
        req.headers_mut().insert("x-trace", "abc".parse().unwrap());
        req.extensions_mut().insert(Tenant("acme"));
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[1].2, Some(Tenant("acme")));
    }

    /// Retry outside a circuit breaker: once the breaker opens, its refusal carries the
    /// open wait as pushback, which does not fit the request's deadline, so retrying ends
    /// instead of hammering the breaker.
    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_ends_retrying() {
        use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
        let (seen, observer) = events();
        let log = Log::new();
        let hits = log.clone();
        let svc = tower::ServiceBuilder::new()
            .layer(
                RetryLayer::http()
                    .max_attempts(10)
                    .backoff(Backoff::constant(10 * MS))
                    .jitter(Jitter::None)
                    .no_budget()
                    .observer(observer)
                    .build()
                    .unwrap(),
            )
            .layer(
                CircuitBreakerLayer::http()
                    .sliding_window(SlidingWindow::count(2))
                    .minimum_calls(2)
                    .wait_in_open(Duration::from_secs(30))
                    .observer(())
                    .build()
                    .unwrap(),
            )
            .service(service_fn(move |_: Request<Body>| {
                hits.hit();
                async { Ok::<_, BoxError>(answer(503, &[])) }
            }));
        let mut req = request(Method::GET, "");
        req.extensions_mut()
            .insert(Deadline::after(Duration::from_secs(5)));
        let err = svc.oneshot(req).await.unwrap_err();
        let rejection = Rejection::from_box(&err).expect("the breaker's refusal");
        assert_eq!(rejection.kind(), tower_parapet::RejectionKind::CircuitOpen);
        assert_eq!(log.count(), 2, "two failures opened the breaker");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "retry_scheduled",
                "retry_scheduled",
                "retry_stopped:deadline",
                "failed_with_retry"
            ]
        );
    }

    #[test]
    fn http_config_builds() {
        let config: RetryConfig = serde_json::from_str(r#"{ "max_body_bytes": 10 }"#).unwrap();
        assert!(config.build_http().is_ok());
    }
}

#[cfg(feature = "metrics")]
mod metrics {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// One call of each kind through the default observer: succeeded without and with
    /// retry, failed without and with retry; plus a bulkhead refusal and limit change.
    #[test]
    fn retry_and_bulkhead_metrics() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(async {
                    let layer = RetryLayer::builder()
                        .name("prices")
                        .max_attempts(2)
                        .backoff(Backoff::constant(MS))
                        .no_budget()
                        .build()
                        .unwrap();
                    // Attempts 1 ok; 2 fails, 3 ok; 4 and 5 fail; then always fail.
                    let log = Log::new();
                    let hits = log.clone();
                    let svc = layer.layer(service_fn(move |n: u32| {
                        let attempt = hits.hit();
                        async move {
                            if attempt == 1 || attempt == 3 {
                                Ok(n)
                            } else {
                                Err(Reset)
                            }
                        }
                    }));
                    assert!(svc.clone().oneshot(1).await.is_ok());
                    assert!(svc.clone().oneshot(2).await.is_ok());
                    assert!(svc.clone().oneshot(3).await.is_err());
                    let once = RetryLayer::builder()
                        .name("prices")
                        .max_attempts(1)
                        .no_budget()
                        .build()
                        .unwrap();
                    assert!(once.layer(svc.into_inner()).oneshot(4).await.is_err());

                    let bulkhead = tower_parapet::BulkheadLayer::builder()
                        .name("reports")
                        .max_concurrent(1)
                        .build()
                        .unwrap();
                    bulkhead.handle().set_limit(0);
                    let refused = bulkhead
                        .layer(service_fn(|_: u32| async { Ok::<_, Reset>(0) }))
                        .oneshot(1)
                        .await;
                    assert!(refused.is_err());
                });
        });
        let metrics: Vec<_> = snapshotter.snapshot().into_vec();
        let find = |name: &str, labels: &[(&str, &str)]| -> Option<&DebugValue> {
            metrics.iter().find_map(|(key, _, _, value)| {
                let key = key.key();
                let matches = key.name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v));
                matches.then_some(value)
            })
        };
        for result in [
            "succeeded_without_retry",
            "succeeded_with_retry",
            "failed_with_retry",
            "failed_without_retry",
        ] {
            assert!(
                matches!(
                    find(
                        "parapet_retry_calls_total",
                        &[("name", "prices"), ("result", result)]
                    ),
                    Some(DebugValue::Counter(1))
                ),
                "{result}"
            );
        }
        assert!(matches!(
            find("parapet_retries_total", &[("name", "prices")]),
            Some(DebugValue::Counter(2))
        ));
        assert!(matches!(
            find(
                "parapet_rejections_total",
                &[
                    ("layer", "bulkhead"),
                    ("name", "reports"),
                    ("kind", "overloaded")
                ]
            ),
            Some(DebugValue::Counter(1))
        ));
        assert!(matches!(
            find("parapet_bulkhead_limit", &[("name", "reports")]),
            Some(DebugValue::Gauge(g)) if g.into_inner() == 0.0
        ));
    }
}

mod bounds {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the shape, the retry's number and the random draw: the wait before
        /// jitter never exceeds the cap, full jitter stays in `[0, capped]`, and
        /// decorrelated jitter in `[first wait, max]`.
        #[test]
        fn waits_stay_within_their_bounds(
            initial_ms in 0u32..1_000,
            extra_ms in 0u32..5_000,
            multiplier in 1.0f64..4.0,
            n in 1u32..200,
            random in 0.0f64..1.0,
            previous_ms in 0u32..20_000,
        ) {
            let initial = initial_ms * MS;
            let max = (initial_ms + extra_ms) * MS;
            let previous = previous_ms * MS;
            for backoff in [
                Backoff::constant(initial),
                Backoff::linear(initial, (extra_ms / 3) * MS, max),
                Backoff::exponential(initial, multiplier, max),
            ] {
                let capped = backoff.capped(n);
                prop_assert!(capped <= backoff.max());
                prop_assert!(capped >= backoff.initial().min(backoff.max()));
                prop_assert_eq!(backoff.delay(Jitter::None, n, previous, random), capped);
                prop_assert!(backoff.delay(Jitter::Full, n, previous, random) <= capped);
                let d = backoff.delay(Jitter::Decorrelated, n, previous, random);
                prop_assert!(d >= backoff.initial().min(backoff.max()) && d <= backoff.max());
            }
        }
    }
}

/// Both layers go into `axum::Router::layer` as they are (behind the edge adapter): the
/// retry replays a GET to a route that fails once, the bulkhead shares one limit across
/// routes.
#[cfg(feature = "axum")]
#[tokio::test(start_paused = true)]
async fn in_an_axum_router() {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceBuilder;
    use tower_parapet::BulkheadLayer;
    use tower_parapet::http::RejectionResponseLayer;

    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let app = axum::Router::new()
        .route(
            "/flaky",
            get(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        (http::StatusCode::SERVICE_UNAVAILABLE, "warming up")
                    } else {
                        (http::StatusCode::OK, "ready")
                    }
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                "done"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(
                    BulkheadLayer::builder()
                        .max_concurrent(1)
                        .observer(())
                        .build()
                        .unwrap(),
                )
                .layer(
                    RetryLayer::http()
                        .backoff(Backoff::constant(10 * MS))
                        .observer(())
                        .build()
                        .unwrap(),
                ),
        );
    let req = |path: &str| http::Request::get(path).body(Body::empty()).unwrap();
    let res = app.clone().oneshot(req("/flaky")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let (a, b) = tokio::join!(app.clone().oneshot(req("/slow")), async {
        tokio::task::yield_now().await;
        app.clone().oneshot(req("/flaky")).await
    });
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 503, "one limit for every route");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "refused before the handler"
    );
}
