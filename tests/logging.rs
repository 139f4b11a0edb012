//! The logging layer's output, captured from a `tracing` subscriber, and the metrics every
//! layer records, captured with a debugging recorder.
#![cfg(feature = "http")]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt, service_fn};
use tower_parapet::RateLimitLayer;
use tower_parapet::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use tower_parapet::fallback::{self, FallbackLayer, HeaderMark};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::idempotency::IdempotencyLayer;
use tower_parapet::logging::{LoggingLayer, RequestId};
use tower_parapet::rate_limit::Quota;
use tower_parapet::timeout::TimeoutLayer;

type Body = Full<Bytes>;

/// Everything the subscriber writes, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The lines of the closing events.
    fn finished(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("request finished"))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run `test` on a paused current-thread runtime with a subscriber capturing every level.
fn captured<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) -> Captured {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(test());
    out
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::default()).unwrap()
}

fn ok(text: &'static str) -> Response<Body> {
    Response::new(Full::new(Bytes::from_static(text.as_bytes())))
}

/// The route template for these tests: the first path segment.
fn logging() -> LoggingLayer {
    LoggingLayer::new().route(|uri, _| uri.path().split('/').nth(1).map(|s| format!("/{s}")))
}

#[test]
fn an_admitted_request_has_its_span_and_closing_fields_and_a_new_request_id() {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let seen = ids.clone();
    let out = captured(|| async move {
        let inner = seen.clone();
        let svc = logging().layer(service_fn(move |req: Request<Body>| {
            let id = req.extensions().get::<RequestId>().unwrap().to_string();
            let header = req.headers()["x-request-id"].to_str().unwrap().to_owned();
            inner.lock().unwrap().push((id, header));
            async { Ok::<_, BoxError>(ok("fine")) }
        }));
        let res = svc.oneshot(get("/orders/42")).await.unwrap();
        let returned = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        seen.lock().unwrap().push((returned.clone(), returned));
    });
    let ids = ids.lock().unwrap();
    let (inner_ext, inner_header) = &ids[0];
    assert_eq!(inner_ext.len(), 32);
    assert_eq!(inner_ext, inner_header);
    assert_eq!(&ids[1].0, inner_ext, "the response carries the same id");
    let lines = out.finished();
    assert_eq!(lines.len(), 1, "{}", out.text());
    let line = &lines[0];
    for field in [
        " INFO ",
        "method=\"GET\"",
        "route=\"/orders\"",
        "path=\"/orders/42\"",
        &format!("request_id=\"{inner_ext}\""),
        "status=200",
        "outcome=\"admitted\"",
        "latency_ms=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

#[test]
fn a_request_id_from_the_client_is_propagated() {
    let out = captured(|| async {
        let svc = logging().layer(service_fn(|req: Request<Body>| {
            let id = req.extensions().get::<RequestId>().unwrap();
            assert_eq!(id.as_str(), req.headers()["x-request-id"]);
            async { Ok::<_, BoxError>(ok("fine")) }
        }));
        let mut req = get("/a");
        req.headers_mut()
            .insert("x-request-id", "client-7".parse().unwrap());
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.headers()["x-request-id"], "client-7");
        // An unusable id is replaced.
        let mut req = get("/a");
        req.headers_mut()
            .insert("x-request-id", "two words".parse().unwrap());
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.headers()["x-request-id"].len(), 32);
    });
    assert!(out.finished()[0].contains("request_id=\"client-7\""));
}

#[test]
fn authorization_and_cookies_never_appear_in_any_output() {
    let out = captured(|| async {
        let svc = logging()
            .log_headers(true)
            .sensitive(http::HeaderName::from_static("x-api-key"))
            .layer(service_fn(|_: Request<Body>| async {
                Err::<Response<Body>, BoxError>("boom".into())
            }));
        let req = Request::get("/private")
            .header("authorization", "Bearer SECRET-TOKEN")
            .header("cookie", "session=SECRET-COOKIE")
            .header("x-api-key", "SECRET-KEY")
            .header("accept", "application/json")
            .body(Body::default())
            .unwrap();
        assert!(svc.oneshot(req).await.is_err());
    });
    let text = out.text();
    assert!(!text.contains("SECRET"), "{text}");
    assert!(text.contains("authorization: [redacted]"), "{text}");
    assert!(text.contains("accept: application/json"), "{text}");
    // The error that reached the layer is logged with its text.
    let line = &out.finished()[0];
    assert!(
        line.contains("ERROR") && line.contains("outcome=\"failed\""),
        "{line}"
    );
    assert!(line.contains("error=\"boom\""), "{line}");
}

#[test]
fn each_layers_rejection_and_a_fallback_are_named_in_the_closing_event() {
    let out = captured(|| async {
        let edge = || {
            ServiceBuilder::new()
                .layer(logging())
                .layer(RejectionResponseLayer::new().observer(()))
        };
        // Timeout.
        let hang = service_fn(|_: Request<Body>| {
            std::future::pending::<Result<Response<Body>, BoxError>>()
        });
        let svc = edge()
            .layer(TimeoutLayer::new(Duration::from_secs(1)).observer(()))
            .service(hang);
        assert_eq!(svc.oneshot(get("/slow")).await.unwrap().status(), 504);
        // Circuit breaker, forced open.
        let breaker = CircuitBreakerLayer::builder()
            .sliding_window(SlidingWindow::count(5))
            .observer(())
            .build()
            .unwrap();
        breaker.handle().force_open();
        let svc = edge()
            .layer(breaker)
            .service(service_fn(|_: Request<Body>| async {
                Ok::<_, BoxError>(ok("x"))
            }));
        assert_eq!(svc.oneshot(get("/inventory")).await.unwrap().status(), 503);
        // Rate limit: a quota of one, asked twice.
        let svc = edge()
            .layer(RateLimitLayer::new(Quota::per_minute(1)).observer(()))
            .service(service_fn(|_: Request<Body>| async {
                Ok::<_, BoxError>(ok("x"))
            }));
        assert_eq!(
            svc.clone().oneshot(get("/search")).await.unwrap().status(),
            200
        );
        assert_eq!(svc.oneshot(get("/search")).await.unwrap().status(), 429);
        // Idempotency: a required key is missing.
        let svc = edge()
            .layer(IdempotencyLayer::new().required(true).observer(()))
            .service(service_fn(|_: Request<Body>| async {
                Ok::<_, BoxError>(ok("x"))
            }));
        let post = Request::post("/pay").body(Body::default()).unwrap();
        assert_eq!(svc.oneshot(post).await.unwrap().status(), 400);
        // Feature gate: the flag is off.
        let flags = tower_parapet::flags::FlagStore::with_observer("flags", ());
        flags
            .set("beta", tower_parapet::flags::FlagDef::boolean(false))
            .unwrap();
        let svc = edge()
            .layer(tower_parapet::flags::FeatureGateLayer::new(&flags, "beta").observer(()))
            .service(service_fn(|_: Request<Body>| async {
                Ok::<_, BoxError>(ok("x"))
            }));
        assert_eq!(svc.oneshot(get("/beta")).await.unwrap().status(), 404);
        // Fallback.
        let svc = edge()
            .layer(
                FallbackLayer::new(fallback::value(ok("[]")))
                    .mark(HeaderMark::default())
                    .observer(()),
            )
            .service(service_fn(|_: Request<Body>| async {
                Err::<Response<Body>, BoxError>("recommendations down".into())
            }));
        assert_eq!(svc.oneshot(get("/recs")).await.unwrap().status(), 200);
    });
    let lines = out.finished();
    let expect = [
        (
            "/slow",
            "outcome=\"rejected\" detail=\"timeout\"",
            "status=504",
            " WARN ",
        ),
        (
            "/inventory",
            "outcome=\"rejected\" detail=\"circuit_open\"",
            "status=503",
            " WARN ",
        ),
        ("/search", "outcome=\"admitted\"", "status=200", " INFO "),
        (
            "/search",
            "outcome=\"rejected\" detail=\"rate_limited\"",
            "status=429",
            " WARN ",
        ),
        (
            "/pay",
            "outcome=\"rejected\" detail=\"idempotency_key_missing\"",
            "status=400",
            " WARN ",
        ),
        (
            "/beta",
            "outcome=\"rejected\" detail=\"feature_disabled\"",
            "status=404",
            " WARN ",
        ),
        (
            "/recs",
            "outcome=\"fallback\" detail=\"value\"",
            "status=200",
            " WARN ",
        ),
    ];
    assert_eq!(lines.len(), expect.len(), "{}", out.text());
    for (line, (route, outcome, status, level)) in lines.iter().zip(expect) {
        for want in [
            &format!("route=\"{route}\"") as &str,
            outcome,
            status,
            level,
        ] {
            assert!(line.contains(want), "{want} missing in {line}");
        }
    }
}

#[test]
fn a_request_dropped_before_its_answer_is_logged_as_cancelled() {
    let out = captured(|| async {
        let svc = logging().layer(service_fn(|_: Request<Body>| {
            std::future::pending::<Result<Response<Body>, BoxError>>()
        }));
        let call = svc.oneshot(get("/gone"));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), call)
                .await
                .is_err()
        );
    });
    let line = &out.finished()[0];
    assert!(line.contains("outcome=\"cancelled\""), "{line}");
    assert!(line.contains("latency_ms=1000"), "{line}");
}

#[cfg(feature = "metrics")]
mod metrics {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// A scripted scenario under a debugging recorder: two good requests, one timeout, a
    /// breaker that opens, one request it refuses. Then the documented metrics are read.
    #[test]
    fn the_documented_metrics_after_a_scripted_scenario() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(async {
                    let breaker = CircuitBreakerLayer::builder()
                        .name("inventory")
                        .sliding_window(SlidingWindow::count(2))
                        .minimum_calls(2)
                        .build()
                        .unwrap();
                    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
                    let svc = ServiceBuilder::new()
                        .layer(logging())
                        .layer(RejectionResponseLayer::new())
                        .layer(breaker)
                        .layer(TimeoutLayer::new(Duration::from_secs(1)).name("inventory-timeout"))
                        .service(service_fn(move |_: Request<Body>| {
                            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            async move {
                                if n >= 2 {
                                    std::future::pending::<()>().await;
                                }
                                Ok::<_, BoxError>(ok("stock"))
                            }
                        }));
                    // The window of 2 holds a success and the timeout: 50 %, it opens.
                    for expected in [200, 200, 504, 503] {
                        let res = svc.clone().oneshot(get("/stock")).await.unwrap();
                        assert_eq!(res.status(), expected);
                    }
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
        let counter = |name: &str, labels: &[(&str, &str)]| match find(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{name} {labels:?}: {other:?}"),
        };
        assert_eq!(
            counter(
                "parapet_requests_total",
                &[
                    ("route", "/stock"),
                    ("status", "200"),
                    ("outcome", "admitted")
                ]
            ),
            2
        );
        assert_eq!(
            counter(
                "parapet_requests_total",
                &[("status", "504"), ("outcome", "rejected")]
            ),
            1
        );
        assert_eq!(
            counter(
                "parapet_requests_total",
                &[("status", "503"), ("outcome", "rejected")]
            ),
            1
        );
        assert_eq!(
            counter(
                "parapet_rejections_total",
                &[
                    ("layer", "timeout"),
                    ("name", "inventory-timeout"),
                    ("kind", "timeout")
                ]
            ),
            1
        );
        assert_eq!(
            counter(
                "parapet_rejections_total",
                &[("layer", "circuit_breaker"), ("kind", "circuit_open")]
            ),
            1
        );
        assert_eq!(
            counter(
                "parapet_events_total",
                &[
                    ("layer", "circuit_breaker"),
                    ("name", "inventory"),
                    ("outcome", "opened")
                ]
            ),
            1
        );
        match find("parapet_circuit_breaker_state", &[("name", "inventory")]) {
            Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 1.0, "open"),
            other => panic!("gauge: {other:?}"),
        }
        match find(
            "parapet_request_duration_seconds",
            &[("outcome", "rejected")],
        ) {
            Some(DebugValue::Histogram(values)) => {
                assert!(values.iter().any(|v| v.into_inner() == 1.0), "{values:?}")
            }
            other => panic!("histogram: {other:?}"),
        }
        // No label holds a raw path or a key.
        for (key, _, _, _) in &metrics {
            for label in key.key().labels() {
                assert_ne!(label.value(), "/stock/1");
            }
        }
    }

    /// Every flag evaluation of a gate is counted by its OpenFeature reason.
    #[test]
    fn flag_evaluations_are_counted_by_reason() {
        use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            let flags = FlagStore::with_observer("flags", ());
            flags.set("beta", FlagDef::boolean(true)).unwrap();
            let gate = FeatureGateLayer::new(&flags, "beta")
                .observer(())
                .layer(service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(async {
                    for _ in 0..3 {
                        gate.clone().oneshot(()).await.unwrap();
                    }
                    flags.kill("beta").unwrap();
                    assert!(gate.clone().oneshot(()).await.is_err());
                });
        });
        let metrics = snapshotter.snapshot().into_vec();
        let count = |reason: &str| {
            metrics
                .iter()
                .find_map(|(key, _, _, value)| {
                    let key = key.key();
                    let hit = key.name() == "parapet_flag_evaluations_total"
                        && key
                            .labels()
                            .any(|l| l.key() == "flag" && l.value() == "beta")
                        && key
                            .labels()
                            .any(|l| l.key() == "reason" && l.value() == reason);
                    match (hit, value) {
                        (true, DebugValue::Counter(n)) => Some(*n),
                        _ => None,
                    }
                })
                .unwrap_or(0)
        };
        assert_eq!(count("STATIC"), 3);
        assert_eq!(count("DISABLED"), 1);
        assert_eq!(count("ERROR"), 0);
    }
}
