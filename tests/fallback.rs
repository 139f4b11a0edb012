//! The fallback layer, black-box, on tokio's paused clock where time matters.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt, service_fn};
use tower_parapet::classify::RejectionsAsFailures;
use tower_parapet::fallback::{self, Failure, FallbackLayer, LastKnownGood, LastKnownGoodConfig};
use tower_parapet::key::{self, KeyError};
use tower_parapet::observe::Event;
use tower_parapet::{BoxError, Rejection, RejectionKind, RejectionKinds};

fn outcomes() -> (
    Arc<Mutex<Vec<String>>>,
    impl Fn(&Event<'_>) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |e: &Event<'_>| {
        sink.lock().unwrap().push(e.outcome().to_owned())
    })
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("database is down")]
struct DbDown;

/// Answers `ok-<n>` or fails, as `plan(n)` says for the n-th call.
fn scripted(
    plan: fn(u32) -> Result<(), BoxError>,
) -> impl Service<&'static str, Response = String, Error = BoxError> + Clone {
    let calls = Arc::new(AtomicU32::new(0));
    service_fn(move |_req: &'static str| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move { plan(n).map(|()| format!("ok-{n}")) }
    })
}

fn always_down(_: u32) -> Result<(), BoxError> {
    Err(Box::new(DbDown))
}

#[tokio::test]
async fn a_fixed_value_answers_an_inner_error() {
    let (seen, observer) = outcomes();
    let svc = FallbackLayer::new(fallback::value("cached".to_owned()))
        .observer(observer)
        .layer(scripted(always_down));
    assert_eq!(svc.oneshot("a").await.unwrap(), "cached");
    assert_eq!(*seen.lock().unwrap(), ["fallback_served"]);
}

#[tokio::test]
async fn successes_pass_through_untouched() {
    let (seen, observer) = outcomes();
    let svc = FallbackLayer::new(fallback::value("cached".to_owned()))
        .observer(observer)
        .layer(scripted(|_| Ok(())));
    assert_eq!(svc.oneshot("a").await.unwrap(), "ok-1");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_function_sees_the_failure_and_its_rejection_kind() {
    let source = fallback::from_fn(|failure: Failure<String>| {
        Ok(match failure.rejection() {
            Some(r) => format!("refused: {}", r.kind()),
            None => format!("failed: {}", failure.into_result().unwrap_err()),
        })
    });
    let timing_out = service_fn(|_: ()| async {
        Err::<String, BoxError>(Rejection::timeout(Duration::from_secs(1)).boxed())
    });
    let svc = FallbackLayer::new(source.clone()).layer(timing_out);
    assert_eq!(svc.oneshot(()).await.unwrap(), "refused: timeout");
    let svc = FallbackLayer::new(source).layer(scripted(always_down));
    assert_eq!(svc.oneshot("a").await.unwrap(), "failed: database is down");
}

#[tokio::test]
async fn an_async_function_source_and_its_own_error() {
    let source = fallback::from_async_fn(|_failure: Failure<String>| async {
        tokio::task::yield_now().await;
        Ok::<_, BoxError>("from the replica".to_owned())
    });
    let svc = FallbackLayer::new(source).layer(scripted(always_down));
    assert_eq!(svc.oneshot("a").await.unwrap(), "from the replica");

    let (seen, observer) = outcomes();
    let broken = fallback::from_async_fn(|_failure: Failure<String>| async {
        Err::<String, BoxError>("replica down too".into())
    });
    let svc = FallbackLayer::new(broken)
        .observer(observer)
        .layer(scripted(always_down));
    assert_eq!(
        svc.oneshot("a").await.unwrap_err().to_string(),
        "replica down too"
    );
    assert_eq!(*seen.lock().unwrap(), ["fallback_unavailable"]);
}

#[tokio::test]
async fn the_classifier_decides_and_other_failures_pass_through_untouched() {
    let only_timeouts = RejectionsAsFailures::only(RejectionKinds::of(&[RejectionKind::Timeout]));
    let layer =
        FallbackLayer::new(fallback::value("fallback".to_owned())).classifier(only_timeouts);

    let err = layer
        .layer(scripted(always_down))
        .oneshot("a")
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<DbDown>(),
        Some(&DbDown),
        "the original error, untouched"
    );

    let open = service_fn(|_: ()| async {
        Err::<String, BoxError>(Rejection::circuit_open("db", None).boxed())
    });
    let err = layer.layer(open).oneshot(()).await.unwrap_err();
    assert_eq!(
        Rejection::from_box(&err).unwrap().kind(),
        RejectionKind::CircuitOpen
    );

    let timeout = service_fn(|_: ()| async {
        Err::<String, BoxError>(Rejection::timeout(Duration::from_secs(1)).boxed())
    });
    assert_eq!(layer.layer(timeout).oneshot(()).await.unwrap(), "fallback");
}

#[tokio::test(start_paused = true)]
async fn last_known_good_replays_the_latest_success_and_misses_return_the_failure() {
    let (seen, observer) = outcomes();
    // Calls 1 and 2 succeed, then everything fails.
    let svc = FallbackLayer::new(LastKnownGood::new(key::Global))
        .observer(observer)
        .layer(scripted(|n| {
            if n <= 2 {
                Ok(())
            } else {
                Err(Box::new(DbDown))
            }
        }));
    let fresh = FallbackLayer::new(LastKnownGood::new(key::Global)).layer(scripted(always_down));
    let err = fresh.oneshot("a").await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<DbDown>(),
        Some(&DbDown),
        "nothing stored: the failure"
    );

    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "ok-1");
    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "ok-2");
    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "ok-2", "replayed");
    assert_eq!(svc.oneshot("a").await.unwrap(), "ok-2", "still replayed");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "last_known_good_stored",
            "last_known_good_stored",
            "fallback_served",
            "fallback_served"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn last_known_good_is_keyed_and_shared_by_clones() {
    let by_request = key::from_fn(|req: &&'static str| Ok::<_, KeyError>(req.to_string()));
    let fail_after_two: fn(u32) -> Result<(), BoxError> = |n| {
        if n <= 2 {
            Ok(())
        } else {
            Err(Box::new(DbDown))
        }
    };
    let svc = FallbackLayer::new(LastKnownGood::new(by_request)).layer(scripted(fail_after_two));
    let clone = svc.clone();
    assert_eq!(svc.clone().oneshot("alice").await.unwrap(), "ok-1");
    assert_eq!(svc.clone().oneshot("bob").await.unwrap(), "ok-2");
    assert_eq!(clone.clone().oneshot("alice").await.unwrap(), "ok-1");
    assert_eq!(clone.clone().oneshot("bob").await.unwrap(), "ok-2");
    assert!(
        clone.oneshot("carol").await.is_err(),
        "no value for another key"
    );
}

#[tokio::test(start_paused = true)]
async fn last_known_good_expires_after_its_ttl() {
    let (seen, observer) = outcomes();
    let source = LastKnownGoodConfig::new(Duration::from_secs(60))
        .build(key::Global)
        .unwrap();
    let svc = FallbackLayer::new(source)
        .observer(observer)
        .layer(scripted(|n| {
            if n == 1 {
                Ok(())
            } else {
                Err(Box::new(DbDown))
            }
        }));
    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "ok-1");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "ok-1");
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = svc.clone().oneshot("a").await.unwrap_err();
    assert_eq!(err.downcast_ref::<DbDown>(), Some(&DbDown));
    assert_eq!(
        seen.lock().unwrap().last().map(String::as_str),
        Some("fallback_unavailable")
    );
}

#[test]
fn last_known_good_config_validates() {
    assert_eq!(
        LastKnownGoodConfig::new(Duration::ZERO)
            .validate()
            .unwrap_err()
            .field(),
        "ttl"
    );
    let c: LastKnownGoodConfig =
        serde_json::from_str(r#"{"ttl": "5m", "max_entries": 100}"#).unwrap();
    assert_eq!(c.ttl, Duration::from_secs(300));
    assert!(
        serde_json::from_str::<LastKnownGoodConfig>(r#"{"ttl": "5m", "max_entries": 0}"#).is_err()
    );
}

#[tokio::test]
async fn dropping_the_future_mid_flight_leaves_the_layer_usable() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let hanging = service_fn(move |hang: bool| {
        let flag = flag.clone();
        async move {
            struct OnDrop(Arc<AtomicBool>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _guard = OnDrop(flag);
            if hang {
                std::future::pending::<()>().await;
            }
            Err::<String, BoxError>(Box::new(DbDown))
        }
    });
    let mut svc = FallbackLayer::new(fallback::value("fallback".to_owned())).layer(hanging);
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(true));
    tokio_test::assert_pending!(fut.poll());
    drop(fut);
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(svc.oneshot(false).await.unwrap(), "fallback");
}

#[tokio::test]
async fn a_panic_in_the_inner_future_propagates() {
    let panicking = service_fn(|_: ()| async {
        if true {
            panic!("handler bug");
        }
        Ok::<String, Infallible>(String::new())
    });
    let svc = FallbackLayer::new(fallback::value("fallback".to_owned())).layer(panicking);
    assert!(tokio::spawn(svc.oneshot(())).await.unwrap_err().is_panic());
}

#[tokio::test]
async fn the_layer_in_a_service_builder_with_a_fixed_value() {
    let mut svc = tower::ServiceBuilder::new()
        .layer(FallbackLayer::value(0u64))
        .service(service_fn(|n: u64| async move {
            if n < 5 { Ok(n) } else { Err(DbDown) }
        }));
    assert_eq!(svc.ready().await.unwrap().call(4).await.unwrap(), 4);
    assert_eq!(svc.ready().await.unwrap().call(5).await.unwrap(), 0);
}

#[tokio::test]
async fn events_name_the_source_the_trigger_and_the_key() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let observer = move |e: &Event<'_>| {
        if let Event::FallbackServed {
            name,
            source,
            trigger,
            key,
        }
        | Event::FallbackUnavailable {
            name,
            source,
            trigger,
            key,
        } = e
        {
            sink.lock().unwrap().push(format!(
                "{} {name} {source} {trigger} {:?}",
                e.outcome(),
                key.map(|k| format!("{k:?}"))
            ));
        }
    };
    let by_request = key::from_fn(|req: &&'static str| Ok::<_, KeyError>(req.to_string()));
    let svc = FallbackLayer::new(LastKnownGood::new(by_request))
        .name("prices")
        .observer(observer)
        .layer(service_fn(|req: &'static str| async move {
            match req {
                "ok" => Ok("fresh".to_owned()),
                "timeout" => Err(Rejection::timeout(Duration::from_secs(1)).boxed()),
                _ => Err(Box::new(DbDown) as BoxError),
            }
        }));
    svc.clone().oneshot("ok").await.unwrap();
    svc.clone().oneshot("timeout").await.unwrap_err();
    svc.oneshot("db").await.unwrap_err();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            r#"fallback_unavailable prices last_known_good timeout Some("\"timeout\"")"#,
            r#"fallback_unavailable prices last_known_good error Some("\"db\"")"#,
        ]
    );
    let (seen, observer) = outcomes();
    let svc = FallbackLayer::value("v".to_owned())
        .observer(observer)
        .layer(scripted(always_down));
    svc.oneshot("a").await.unwrap();
    assert_eq!(*seen.lock().unwrap(), ["fallback_served"]);
}

#[tokio::test]
async fn a_function_can_decline_and_the_original_error_goes_back_untouched() {
    let (seen, observer) = outcomes();
    let declines = fallback::from_fn(|failure: Failure<String>| match failure {
        Failure::Error(e) if e.is::<DbDown>() => Err(e),
        _ => Ok("answered".to_owned()),
    });
    let svc = FallbackLayer::new(declines)
        .observer(observer)
        .layer(scripted(always_down));
    let err = svc.oneshot("a").await.unwrap_err();
    assert_eq!(err.downcast_ref::<DbDown>(), Some(&DbDown));
    assert_eq!(*seen.lock().unwrap(), ["fallback_unavailable"]);
}

#[tokio::test]
async fn ignored_outcomes_pass_through_without_events() {
    let (seen, observer) = outcomes();
    let ignore_all = tower_parapet::classify::from_fn(|_: Result<&String, &BoxError>| {
        tower_parapet::classify::Outcome::Ignored
    });
    let svc = FallbackLayer::new(LastKnownGood::new(key::Global))
        .classifier(ignore_all)
        .observer(observer)
        .layer(scripted(|n| {
            if n == 1 {
                Ok(())
            } else {
                Err(Box::new(DbDown))
            }
        }));
    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "ok-1");
    let err = svc.oneshot("a").await.unwrap_err();
    assert_eq!(err.downcast_ref::<DbDown>(), Some(&DbDown));
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test]
async fn a_panic_in_the_fallback_function_propagates() {
    use futures_util::FutureExt;
    use std::panic::AssertUnwindSafe;

    let source = fallback::from_fn(|_: Failure<String>| -> Result<String, BoxError> {
        panic!("fallback bug")
    });
    let svc = FallbackLayer::new(source).layer(scripted(always_down));
    let caught = AssertUnwindSafe(svc.oneshot("a")).catch_unwind().await;
    assert!(caught.is_err(), "the panic reached the caller");

    let source = fallback::from_async_fn(|_: Failure<String>| async {
        if true {
            panic!("async fallback bug");
        }
        Ok::<String, BoxError>(String::new())
    });
    let svc = FallbackLayer::new(source).layer(scripted(always_down));
    let caught = AssertUnwindSafe(svc.oneshot("a")).catch_unwind().await;
    assert!(caught.is_err(), "the panic reached the caller");
}

#[tokio::test(start_paused = true)]
async fn services_built_by_one_layer_share_the_store_until_cleared() {
    let layer = FallbackLayer::new(LastKnownGood::new(key::Global));
    let healthy = layer.layer(scripted(|_| Ok(())));
    let broken = layer.layer(scripted(always_down));
    assert_eq!(healthy.oneshot("a").await.unwrap(), "ok-1");
    assert_eq!(broken.clone().oneshot("a").await.unwrap(), "ok-1");
    layer.source().clear();
    let err = broken.oneshot("a").await.unwrap_err();
    assert_eq!(err.downcast_ref::<DbDown>(), Some(&DbDown), "forgotten");
}

#[tokio::test(start_paused = true)]
async fn a_later_success_replaces_the_copy_and_restarts_its_ttl() {
    let svc = FallbackLayer::new(LastKnownGood::new(key::Global).ttl(Duration::from_secs(10)))
        .layer(scripted(|n| {
            if n == 1 || n == 3 {
                Ok(())
            } else {
                Err(Box::new(DbDown))
            }
        }));
    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "ok-1");
    tokio::time::advance(Duration::from_secs(8)).await;
    assert_eq!(
        svc.clone().oneshot("a").await.unwrap(),
        "ok-1",
        "call 2 fails"
    );
    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "ok-3");
    tokio::time::advance(Duration::from_secs(8)).await;
    assert_eq!(
        svc.clone().oneshot("a").await.unwrap(),
        "ok-3",
        "16 s after ok-1"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(svc.oneshot("a").await.is_err(), "10 s after ok-3");
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn last_known_good_reads_an_injected_clock() {
    use tower_parapet::clock::ManualClock;
    let manual = ManualClock::new();
    let source = LastKnownGood::new(key::Global)
        .ttl(Duration::from_secs(5))
        .clock(manual.clone().into());
    let svc = FallbackLayer::new(source).layer(scripted(|n| {
        if n == 1 {
            Ok(())
        } else {
            Err(Box::new(DbDown))
        }
    }));
    svc.clone().oneshot("a").await.unwrap();
    manual.advance(Duration::from_millis(4_999));
    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "ok-1");
    manual.advance(Duration::from_millis(1));
    assert!(svc.oneshot("a").await.is_err());
}

#[cfg(feature = "http")]
mod http_responses {
    use super::*;
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use tower_parapet::classify::ServerErrorsAsFailures;
    use tower_parapet::fallback::HeaderMark;
    use tower_parapet::key::Target;

    type Res = Response<Full<Bytes>>;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    /// Call 1 succeeds with a body, call 2 answers 503, call 3 fails.
    fn flaky() -> impl Service<Request<()>, Response = Res, Error = BoxError> + Clone {
        let calls = Arc::new(AtomicU32::new(0));
        service_fn(move |req: Request<()>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match n {
                    1 => Ok(Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .header("etag", "\"v1\"")
                        .body(Full::new(Bytes::from(format!(
                            "{{\"path\":\"{}\"}}",
                            req.uri().path()
                        ))))
                        .unwrap()),
                    2 => Ok(Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Full::new(Bytes::from_static(b"sick")))
                        .unwrap()),
                    _ => Err(Box::new(DbDown) as BoxError),
                }
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn http_responses_are_replayed_byte_for_byte_and_marked() {
        let svc = FallbackLayer::new(LastKnownGood::http(Target::new()))
            .classifier(ServerErrorsAsFailures)
            .mark(HeaderMark::default())
            .layer(flaky());
        let first = svc.clone().oneshot(get("/prices")).await.unwrap();
        assert!(
            first.headers().get("parapet-fallback").is_none(),
            "fresh is unmarked"
        );
        let first_body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(first_body, r#"{"path":"/prices"}"#);

        for _ in 0..2 {
            // A 503, then an error: both answered from the copy.
            let res = svc.clone().oneshot(get("/prices")).await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["content-type"], "application/json");
            assert_eq!(res.headers()["etag"], "\"v1\"");
            assert_eq!(res.headers()["parapet-fallback"], "last_known_good");
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, first_body);
        }
        let other = svc.oneshot(get("/other")).await.unwrap_err();
        assert_eq!(
            other.downcast_ref::<DbDown>(),
            Some(&DbDown),
            "another target has no copy"
        );
    }

    #[tokio::test]
    async fn a_404_is_not_a_failure_but_a_500_is() {
        let answer = |status: u16| {
            service_fn(move |_: Request<()>| async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            })
        };
        let layer = FallbackLayer::new(fallback::value(
            Response::builder()
                .status(200)
                .body(Full::new(Bytes::from_static(b"fallback")))
                .unwrap(),
        ))
        .classifier(ServerErrorsAsFailures);
        assert_eq!(
            layer
                .layer(answer(404))
                .oneshot(get("/"))
                .await
                .unwrap()
                .status(),
            404
        );
        assert_eq!(
            layer
                .layer(answer(500))
                .oneshot(get("/"))
                .await
                .unwrap()
                .status(),
            200
        );
    }

    #[tokio::test]
    async fn bodies_over_the_limit_or_of_unknown_size_are_passed_through_not_kept() {
        let (seen, observer) = outcomes();
        let big = service_fn(|_: Request<()>| async {
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(vec![b'x'; 2048]))))
        });
        let svc = FallbackLayer::new(LastKnownGood::http(Target::new()).max_body_bytes(1024))
            .observer(observer)
            .layer(big);
        let res = svc.oneshot(get("/big")).await.unwrap();
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes().len(),
            2048
        );
        assert_eq!(*seen.lock().unwrap(), ["last_known_good_skipped"]);

        // A streaming body (unknown size): passed through, not kept.
        let (seen, observer) = outcomes();
        let streaming = service_fn(|_: Request<()>| async {
            let chunks =
                futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from_static(b"chunk"))]);
            Ok::<_, BoxError>(Response::new(axum::body::Body::from_stream(chunks)))
        });
        let svc = FallbackLayer::new(LastKnownGood::http(Target::new()))
            .observer(observer)
            .layer(streaming);
        let res = svc.oneshot(get("/stream")).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "chunk");
        assert_eq!(*seen.lock().unwrap(), ["last_known_good_skipped"]);
    }
}

#[cfg(feature = "http")]
mod http_safety {
    use super::*;
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tower_parapet::fallback::LastKnownGood;
    use tower_parapet::key::Target;

    /// Responses that must not be replayed to another caller are not kept.
    #[tokio::test]
    async fn private_cookie_setting_and_non_2xx_responses_are_not_kept() {
        for (header, value, status) in [
            ("set-cookie", "session=abc", 200),
            ("cache-control", "max-age=60, private", 200),
            ("cache-control", "no-store", 200),
            ("x-other", "1", 404),
        ] {
            let (seen, observer) = outcomes();
            let calls = Arc::new(AtomicU32::new(0));
            let svc = service_fn(move |_: Request<()>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n > 0 {
                        return Err::<Response<Full<Bytes>>, BoxError>(Box::new(DbDown));
                    }
                    Ok(Response::builder()
                        .status(status)
                        .header(header, value)
                        .body(Full::new(Bytes::from_static(b"for one user")))
                        .unwrap())
                }
            });
            let svc = FallbackLayer::new(LastKnownGood::http(Target::new()))
                .observer(observer)
                .layer(svc);
            let first = svc
                .clone()
                .oneshot(Request::get("/me").body(()).unwrap())
                .await
                .unwrap();
            assert_eq!(first.status().as_u16(), status);
            let err = svc
                .oneshot(Request::get("/me").body(()).unwrap())
                .await
                .unwrap_err();
            assert_eq!(
                err.downcast_ref::<DbDown>(),
                Some(&DbDown),
                "{header}: {value}"
            );
            assert_eq!(
                *seen.lock().unwrap(),
                ["last_known_good_skipped", "fallback_unavailable"],
                "{header}: {value}"
            );
        }
    }
}

#[cfg(feature = "http")]
mod http_buffering {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderName, Request, Response, StatusCode};
    use http_body::{Frame, SizeHint};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tower_parapet::classify::ServerErrorsAsFailures;
    use tower_parapet::fallback::HeaderMark;
    use tower_parapet::key::{Header, Target};

    /// A body of a known size that delivers its bytes, fails, or never ends.
    #[derive(Debug)]
    enum Body {
        Data(Option<Bytes>),
        Fails(u64),
        Hangs(u64),
    }

    impl From<Bytes> for Body {
        fn from(bytes: Bytes) -> Body {
            Body::Data(Some(bytes))
        }
    }

    impl http_body::Body for Body {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.get_mut() {
                Body::Data(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
                Body::Fails(_) => Poll::Ready(Some(Err("connection reset".into()))),
                Body::Hangs(_) => Poll::Pending,
            }
        }

        fn size_hint(&self) -> SizeHint {
            match self {
                Body::Data(Some(b)) => SizeHint::with_exact(b.len() as u64),
                Body::Data(None) => SizeHint::with_exact(0),
                Body::Fails(n) | Body::Hangs(n) => SizeHint::with_exact(*n),
            }
        }
    }

    async fn text(res: Response<Body>) -> Bytes {
        http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes()
    }

    /// Answers with the body `make(n)` for the n-th call.
    fn answering(
        make: fn(u32) -> Result<Response<Body>, BoxError>,
    ) -> impl Service<Request<()>, Response = Response<Body>, Error = BoxError> + Clone {
        let calls = Arc::new(AtomicU32::new(0));
        service_fn(move |_: Request<()>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { make(n) }
        })
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn a_body_error_while_buffering_is_returned_and_nothing_is_kept() {
        let (seen, observer) = outcomes();
        let svc = FallbackLayer::new(LastKnownGood::http(Target::new()))
            .observer(observer)
            .layer(answering(|n| match n {
                1 => Ok(Response::new(Body::Fails(10))),
                _ => Err(Box::new(DbDown)),
            }));
        let err = svc.clone().oneshot(get("/")).await.unwrap_err();
        assert_eq!(err.to_string(), "connection reset");
        let err = svc.oneshot(get("/")).await.unwrap_err();
        assert_eq!(err.downcast_ref::<DbDown>(), Some(&DbDown), "nothing kept");
        assert_eq!(*seen.lock().unwrap(), ["fallback_unavailable"]);
    }

    #[tokio::test]
    async fn dropping_the_future_while_buffering_keeps_nothing() {
        let mut svc =
            FallbackLayer::new(LastKnownGood::http(Target::new())).layer(answering(|n| match n {
                1 => Ok(Response::new(Body::Hangs(10))),
                2 => Ok(Response::new(Body::from(Bytes::from_static(b"fresh")))),
                _ => Err(Box::new(DbDown)),
            }));
        let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(get("/")));
        tokio_test::assert_pending!(fut.poll());
        drop(fut);
        let res = svc.clone().oneshot(get("/x")).await.unwrap();
        assert_eq!(text(res).await, "fresh", "still usable");
        let err = svc.oneshot(get("/")).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<DbDown>(),
            Some(&DbDown),
            "nothing kept for /"
        );
    }

    #[tokio::test]
    async fn a_failing_response_with_nothing_to_replace_it_is_returned_unchanged() {
        let (seen, observer) = outcomes();
        let svc = FallbackLayer::new(LastKnownGood::http(Target::new()))
            .classifier(ServerErrorsAsFailures)
            .mark(HeaderMark::default())
            .observer(observer)
            .layer(answering(|_| {
                Ok(Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .header("x-upstream", "db")
                    .body(Body::from(Bytes::from_static(b"upstream down")))
                    .unwrap())
            }));
        let res = svc.oneshot(get("/")).await.unwrap();
        assert_eq!(res.status(), 502);
        assert_eq!(res.headers()["x-upstream"], "db");
        assert!(
            res.headers().get("parapet-fallback").is_none(),
            "not a fallback"
        );
        assert_eq!(text(res).await, "upstream down");
        assert_eq!(*seen.lock().unwrap(), ["fallback_unavailable"]);
    }

    #[tokio::test]
    async fn requests_without_a_key_are_not_kept_nor_answered() {
        let (seen, observer) = outcomes();
        let tenant = Header::new(HeaderName::from_static("x-tenant"));
        let svc = FallbackLayer::new(LastKnownGood::http(tenant))
            .observer(observer)
            .layer(answering(|n| match n {
                1 => Ok(Response::new(Body::from(Bytes::from_static(b"for anyone")))),
                _ => Err(Box::new(DbDown)),
            }));
        let res = svc.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(text(res).await, "for anyone");
        let err = svc.oneshot(get("/")).await.unwrap_err();
        assert_eq!(err.downcast_ref::<DbDown>(), Some(&DbDown));
        assert_eq!(
            *seen.lock().unwrap(),
            ["last_known_good_skipped", "fallback_unavailable"]
        );
    }

    #[tokio::test]
    async fn a_closure_can_mark_answers() {
        let svc = FallbackLayer::value(String::from("cached"))
            .mark(|res: &mut String, source: &'static str| res.push_str(&format!(" [{source}]")))
            .layer(scripted(always_down));
        assert_eq!(svc.oneshot("a").await.unwrap(), "cached [value]");
    }
}
