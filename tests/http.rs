//! The edge adapter: rejections and inner errors become HTTP or gRPC answers.
#![cfg(feature = "http")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::observe::Event;
use tower_parapet::{BoxError, RateLimitInfo, Rejection, RejectionKind};

type Res = Response<Full<Bytes>>;

/// A service that fails with whatever error the request's body names.
fn failing(
    err: fn() -> BoxError,
) -> impl Service<Request<()>, Response = Res, Error = BoxError> + Clone {
    service_fn(move |_req: Request<()>| async move { Err::<Res, BoxError>(err()) })
}

async fn body_json<B: http_body::Body>(res: Response<B>) -> serde_json::Value
where
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn grpc_request() -> Request<()> {
    Request::post("/pkg.Svc/Method")
        .header("content-type", "application/grpc+proto")
        .body(())
        .unwrap()
}

#[tokio::test]
async fn rejection_becomes_problem_json_with_retry_after() {
    let svc = ServiceBuilder::new()
        .layer(RejectionResponseLayer::new())
        .service(failing(|| {
            Rejection::circuit_open("payments", Some(Duration::from_millis(1200))).boxed()
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.headers()["retry-after"], "2", "1.2 s rounds up");
    let doc = body_json(res).await;
    assert_eq!(doc["status"], 503);
    assert_eq!(doc["title"], "Service Unavailable");
    assert_eq!(doc["kind"], "circuit_open");
    assert_eq!(doc["detail"], "circuit breaker `payments` is open");
}

#[tokio::test]
async fn rate_limit_answers_429_with_ratelimit_fields() {
    let svc = RejectionResponseLayer::new().layer_on(failing(|| {
        Rejection::rate_limited(
            Duration::from_millis(10),
            Some(RateLimitInfo {
                policy: "default".into(),
                quota: 100,
                window: Duration::from_secs(60),
                remaining: 0,
                reset: Duration::from_secs(45),
            }),
        )
        .boxed()
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["ratelimit-policy"], r#""default";q=100;w=60"#);
    assert_eq!(res.headers()["ratelimit"], r#""default";r=0;t=45"#);
    assert_eq!(res.headers()["retry-after"], "45");
    assert!(res.headers().get_all("ratelimit").iter().count() == 1);
}

#[tokio::test]
async fn every_kind_has_its_status_and_statuses_are_configurable() {
    let cases: [(fn() -> Rejection, u16); 8] = [
        (|| Rejection::timeout(Duration::from_secs(1)), 504),
        (|| Rejection::overloaded(None), 503),
        (|| Rejection::feature_disabled("beta"), 404),
        (Rejection::idempotency_key_missing, 400),
        (|| Rejection::idempotency_key_invalid("too long"), 400),
        (|| Rejection::idempotency_in_flight(None), 409),
        (Rejection::idempotency_mismatch, 422),
        (|| Rejection::rate_limited(Duration::ZERO, None), 429),
    ];
    for (make, status) in cases {
        let r = make();
        let svc = service_fn(move |_: Request<()>| {
            let r = r.clone();
            async move { Err::<Res, BoxError>(r.boxed()) }
        });
        let res = RejectionResponseLayer::new()
            .layer_on(svc)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{:?}", make());
        if make().kind() == RejectionKind::RateLimited {
            assert_eq!(res.headers()["retry-after"], "1", "never 0");
        }
    }
    let res = RejectionResponseLayer::new()
        .status(RejectionKind::Timeout, StatusCode::REQUEST_TIMEOUT)
        .status(RejectionKind::FeatureDisabled, StatusCode::FORBIDDEN)
        .layer_on(failing(|| {
            Rejection::timeout(Duration::from_secs(1)).boxed()
        }))
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
}

#[derive(Debug, thiserror::Error)]
#[error("query failed")]
struct QueryFailed(#[source] std::io::Error);

#[tokio::test]
async fn inner_error_is_a_500_that_leaks_nothing_and_is_logged_with_its_chain() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let svc = RejectionResponseLayer::new()
        .observer(move |e: &Event<'_>| {
            if let Event::InternalError { error, .. } = e {
                let mut chain = vec![error.to_string()];
                let mut next = error.source();
                while let Some(s) = next {
                    chain.push(s.to_string());
                    next = s.source();
                }
                sink.lock().unwrap().push(chain);
            }
        })
        .layer_on(failing(|| {
            Box::new(QueryFailed(std::io::Error::other(
                "password=hunter2 rejected",
            )))
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("query failed"),
        "{text}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [vec![
            "query failed".to_owned(),
            "password=hunter2 rejected".to_owned()
        ]]
    );
}

#[tokio::test]
async fn grpc_requests_get_trailers_only_answers() {
    let svc = RejectionResponseLayer::new().layer_on(failing(|| {
        Rejection::circuit_open("db", Some(Duration::from_millis(1500))).boxed()
    }));
    let res = svc.clone().oneshot(grpc_request()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "1500");
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert!(http_body::Body::is_end_stream(res.body()), "trailers-only");

    let res = RejectionResponseLayer::new()
        .layer_on(failing(|| {
            Rejection::timeout(Duration::from_secs(1)).boxed()
        }))
        .oneshot(grpc_request())
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "never HTTP 504 on a gRPC route"
    );
    assert_eq!(res.headers()["grpc-status"], "4");

    let res = RejectionResponseLayer::new()
        .observer(())
        .layer_on(failing(|| "secret".into()))
        .oneshot(grpc_request())
        .await
        .unwrap();
    assert_eq!(res.headers()["grpc-status"], "13");
    assert_eq!(res.headers()["grpc-message"], "internal error");
}

#[tokio::test]
async fn successful_responses_pass_through_untouched() {
    let svc = service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .status(201)
                .header("x-app", "1")
                .body(Full::new(Bytes::from_static(b"created")))
                .unwrap(),
        )
    });
    let res = RejectionResponseLayer::new()
        .layer_on(svc)
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["x-app"], "1");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "created");
}

#[derive(Clone)]
struct NeverReady;

impl Service<Request<()>> for NeverReady {
    type Response = Res;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Res, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Err(
            Rejection::overloaded(Some(Duration::from_secs(5))).boxed()
        ))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        panic!("called although poll_ready failed")
    }
}

#[tokio::test]
async fn readiness_error_is_answered_without_calling_the_inner_service() {
    let res = RejectionResponseLayer::new()
        .layer_on(NeverReady)
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn rejection_is_an_axum_response() {
    use axum::response::IntoResponse;
    let res = Rejection::feature_disabled("beta").into_response();
    assert_eq!(res.status(), 404);
    let doc = body_json(res).await;
    assert_eq!(doc["detail"], "feature `beta` is disabled");
}

/// `layer.layer_on(svc)`: the adapter around `svc`.
trait LayerOnExt {
    fn layer_on<S>(&self, svc: S) -> tower_parapet::http::RejectionResponse<S>;
}

impl LayerOnExt for RejectionResponseLayer {
    fn layer_on<S>(&self, svc: S) -> tower_parapet::http::RejectionResponse<S> {
        tower::Layer::layer(self, svc)
    }
}
