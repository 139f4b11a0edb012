//! The idempotency layer, black box, on paused tokio time.
#![cfg(feature = "http")]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_parapet::idempotency::{
    Conflict, IdempotencyConfig, IdempotencyLayer, IdempotentBody, MemoryStore,
};
use tower_parapet::key;
use tower_parapet::observe::Event;
use tower_parapet::{BoxError, Mode, Rejection, RejectionKind};

type Body = Full<Bytes>;

/// The payment handler: charges (counts), answers 201 with the charge number and the
/// request body. Headers steer it: `x-delay-ms` (takes that long), `x-fail` (errors),
/// `x-panic` (panics), `x-status` (answers that status), `x-big` (a body of that many
/// bytes), `x-grpc` (answers with gRPC trailers).
#[derive(Clone, Default)]
struct Charges {
    count: Arc<AtomicUsize>,
}

#[derive(Debug, thiserror::Error)]
#[error("card network unreachable")]
struct CardNetworkDown;

impl Service<Request<Body>> for Charges {
    type Response = Response<TrailerBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let count = self.count.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let h = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            if let Some(ms) = h("x-delay-ms") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            assert!(h("x-panic").is_none(), "handler panicked");
            if h("x-fail").is_some() {
                return Err(CardNetworkDown.into());
            }
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let status = h("x-status").map_or(201, |s| s.parse().unwrap());
            let body = match h("x-big") {
                Some(len) => Bytes::from(vec![b'x'; len.parse().unwrap()]),
                None => {
                    let sent = body.collect().await.unwrap().to_bytes();
                    Bytes::from(format!("charge {n}: {}", String::from_utf8_lossy(&sent)))
                }
            };
            let trailers = h("x-grpc").map(|_| {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                t
            });
            Ok(Response::builder()
                .status(status)
                .header("x-charge-id", n.to_string())
                .body(TrailerBody::make(body, trailers))
                .unwrap())
        })
    }
}

/// A body with optional trailers, as gRPC answers.
type TrailerBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

trait MakeTrailerBody {
    fn make(data: Bytes, trailers: Option<HeaderMap>) -> Self;
}

impl MakeTrailerBody for TrailerBody {
    fn make(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let full = Full::new(data);
        match trailers {
            Some(t) => full.with_trailers(async move { Some(Ok(t)) }).boxed(),
            None => full.boxed(),
        }
    }
}

type Res = Response<IdempotentBody<TrailerBody>>;

fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(std::task::Waker::noop()))
}

fn pay(key: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::post("/pay");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

fn with(mut req: Request<Body>, name: &'static str, value: &str) -> Request<Body> {
    req.headers_mut()
        .insert(HeaderName::from_static(name), value.parse().unwrap());
    req
}

type Events = Arc<Mutex<Vec<String>>>;

fn layer() -> (IdempotencyLayer, Events) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let layer = IdempotencyLayer::new().observer(move |e: &Event<'_>| {
        if e.layer() == "idempotency" {
            sink.lock().unwrap().push(e.outcome().to_owned());
        }
    });
    (layer, events)
}

async fn send<S>(svc: &S, req: Request<Body>) -> Result<Res, BoxError>
where
    S: Service<Request<Body>, Response = Res, Error = BoxError> + Clone,
{
    svc.clone().oneshot(req).await
}

async fn text(res: Res) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn kind(err: &BoxError) -> RejectionKind {
    Rejection::from_box(err)
        .unwrap_or_else(|| panic!("not a rejection: {err}"))
        .kind()
}

// ---- replay ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_retry_gets_the_stored_response_marked_replayed() {
    let charges = Charges::default();
    let (layer, events) = layer();
    let svc = layer.layer(charges.clone());
    let first = send(&svc, pay(Some("\"k1\""), "10 EUR")).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(text(first).await, "charge 1: 10 EUR");

    let again = send(&svc, pay(Some("k1"), "10 EUR")).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["x-charge-id"], "1");
    assert_eq!(
        text(again).await,
        "charge 1: 10 EUR",
        "bare and quoted keys are one key"
    );
    assert_eq!(charges.count.load(Ordering::SeqCst), 1);
    assert_eq!(*events.lock().unwrap(), ["stored", "replayed"]);
}

#[tokio::test(start_paused = true)]
async fn the_same_key_with_another_payload_is_422() {
    let charges = Charges::default();
    let svc = layer().0.layer(charges.clone());
    send(&svc, pay(Some("k"), "10 EUR")).await.unwrap();
    let err = send(&svc, pay(Some("k"), "1000 EUR")).await.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::IdempotencyMismatch);
    let other_path = {
        let mut r = pay(Some("k"), "10 EUR");
        *r.uri_mut() = "/pay?currency=USD".parse().unwrap();
        r
    };
    // Same path (the record's scope), other query: another request.
    let err = send(&svc, other_path).await.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::IdempotencyMismatch);
    assert_eq!(charges.count.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn fingerprint_headers_count_only_when_chosen() {
    let charges = Charges::default();
    let svc = layer()
        .0
        .fingerprint_headers([HeaderName::from_static("content-type")])
        .layer(charges.clone());
    send(
        &svc,
        with(pay(Some("k"), "{}"), "content-type", "application/json"),
    )
    .await
    .unwrap();
    let replay = send(
        &svc,
        with(pay(Some("k"), "{}"), "content-type", "application/json"),
    )
    .await
    .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    // A header outside the fingerprint does not matter; one inside does.
    assert!(
        send(
            &svc,
            with(
                with(pay(Some("k"), "{}"), "content-type", "application/json"),
                "x-trace",
                "1"
            )
        )
        .await
        .is_ok()
    );
    let err = send(
        &svc,
        with(pay(Some("k"), "{}"), "content-type", "text/plain"),
    )
    .await
    .unwrap_err();
    assert_eq!(kind(&err), RejectionKind::IdempotencyMismatch);
}

#[tokio::test(start_paused = true)]
async fn one_principals_key_is_invisible_to_another() {
    let charges = Charges::default();
    let svc = layer()
        .0
        .principal(key::Header::new(HeaderName::from_static("x-user")))
        .layer(charges.clone());
    let a = send(&svc, with(pay(Some("k"), "10"), "x-user", "alice"))
        .await
        .unwrap();
    assert_eq!(text(a).await, "charge 1: 10");
    let b = send(&svc, with(pay(Some("k"), "10"), "x-user", "bob"))
        .await
        .unwrap();
    assert!(b.headers().get("idempotent-replayed").is_none());
    assert_eq!(
        text(b).await,
        "charge 2: 10",
        "bob's payment ran on its own"
    );
    let a2 = send(&svc, with(pay(Some("k"), "10"), "x-user", "alice"))
        .await
        .unwrap();
    assert_eq!(text(a2).await, "charge 1: 10");
}

#[tokio::test(start_paused = true)]
async fn records_expire_after_the_retention_period() {
    let charges = Charges::default();
    let svc = layer()
        .0
        .retention(Duration::from_secs(3600))
        .layer(charges.clone());
    send(&svc, pay(Some("k"), "10")).await.unwrap();
    tokio::time::advance(Duration::from_secs(3599)).await;
    let replay = send(&svc, pay(Some("k"), "10")).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    tokio::time::advance(Duration::from_secs(1)).await;
    let fresh = send(&svc, pay(Some("k"), "10")).await.unwrap();
    assert_eq!(text(fresh).await, "charge 2: 10");
}

#[tokio::test(start_paused = true)]
async fn grpc_trailers_are_stored_and_replayed() {
    let svc = layer().0.layer(Charges::default());
    send(&svc, with(pay(Some("k"), "m"), "x-grpc", "1"))
        .await
        .unwrap();
    let replay = send(&svc, with(pay(Some("k"), "m"), "x-grpc", "1"))
        .await
        .unwrap();
    let collected = replay.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "charge 1: m");
}

// ---- concurrency -----------------------------------------------------------------------

/// 1 000 identical requests at once with one key: the handler runs once, and in wait
/// mode every one of them gets the same status and body.
#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_duplicates_wait_and_charge_once() {
    let charges = Charges::default();
    let svc = layer()
        .0
        .conflict(Conflict::Wait(Duration::from_secs(30)))
        .layer(charges.clone());
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let res = send(
                    &svc,
                    with(pay(Some("double-click"), "99 EUR"), "x-delay-ms", "200"),
                )
                .await
                .unwrap();
                (res.status(), text(res).await)
            })
        })
        .collect();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body, "charge 1: 99 EUR");
    }
    assert_eq!(charges.count.load(Ordering::SeqCst), 1);
}

/// The same in reject mode: one succeeds, the other 999 get 409 at once.
#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_duplicates_in_reject_mode_get_409() {
    let charges = Charges::default();
    let svc = layer().0.layer(charges.clone());
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                send(
                    &svc,
                    with(pay(Some("double-click"), "99 EUR"), "x-delay-ms", "200"),
                )
                .await
            })
        })
        .collect();
    let (mut ok, mut conflicts) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(res) => {
                assert_eq!(res.status(), StatusCode::CREATED);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(kind(&e), RejectionKind::IdempotencyInFlight);
                conflicts += 1;
            }
        }
    }
    assert_eq!((ok, conflicts), (1, 999));
    assert_eq!(charges.count.load(Ordering::SeqCst), 1);
}

/// The same on a multi-threaded runtime, real threads racing for the claim.
#[test]
fn concurrent_duplicates_on_many_threads_charge_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 0..20 {
            let charges = Charges::default();
            let svc = layer()
                .0
                .conflict(Conflict::Wait(Duration::from_secs(30)))
                .layer(charges.clone());
            let key = format!("k{round}");
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let (svc, key) = (svc.clone(), key.clone());
                    tokio::spawn(async move {
                        let res = send(&svc, pay(Some(&key), "5")).await.unwrap();
                        text(res).await
                    })
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.unwrap(), "charge 1: 5");
            }
            assert_eq!(charges.count.load(Ordering::SeqCst), 1, "round {round}");
        }
    });
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_with_409_after_the_wait() {
    let svc = layer()
        .0
        .conflict(Conflict::Wait(Duration::from_secs(1)))
        .layer(Charges::default());
    let slow = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, with(pay(Some("k"), "1"), "x-delay-ms", "5000")).await }
    });
    tokio::task::yield_now().await;
    let err = send(&svc, pay(Some("k"), "1")).await.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::IdempotencyInFlight);
    assert!(slow.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn when_the_first_request_fails_one_waiter_runs_and_the_rest_replay_it() {
    let charges = Charges::default();
    let svc = layer()
        .0
        .conflict(Conflict::Wait(Duration::from_secs(30)))
        .layer(charges.clone());
    let first = tokio::spawn({
        let svc = svc.clone();
        async move {
            send(
                &svc,
                with(
                    with(pay(Some("k"), "7"), "x-delay-ms", "100"),
                    "x-fail",
                    "1",
                ),
            )
            .await
        }
    });
    tokio::task::yield_now().await;
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { text(send(&svc, pay(Some("k"), "7")).await.unwrap()).await })
        })
        .collect();
    let err = first.await.unwrap().unwrap_err();
    assert!(
        err.is::<CardNetworkDown>(),
        "inner errors pass through untouched"
    );
    for w in waiters {
        assert_eq!(w.await.unwrap(), "charge 1: 7");
    }
    assert_eq!(charges.count.load(Ordering::SeqCst), 1);
}

// ---- what is not stored, and the key freed -----------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_inner_error_is_not_stored_and_the_client_may_retry() {
    let charges = Charges::default();
    let (layer, events) = layer();
    let svc = layer.layer(charges.clone());
    let err = send(&svc, with(pay(Some("k"), "1"), "x-fail", "1"))
        .await
        .unwrap_err();
    assert!(err.is::<CardNetworkDown>());
    let res = send(&svc, pay(Some("k"), "1")).await.unwrap();
    assert_eq!(text(res).await, "charge 1: 1");
    assert_eq!(*events.lock().unwrap(), ["released", "stored"]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_first_request_frees_the_key() {
    let charges = Charges::default();
    let svc = layer().0.layer(charges.clone());
    let mut first = Box::pin(send(&svc, with(pay(Some("k"), "1"), "x-delay-ms", "1000")));
    assert!(poll_once(&mut first).is_pending());
    let err = send(&svc, pay(Some("k"), "1")).await.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::IdempotencyInFlight);
    drop(first);
    let res = send(&svc, pay(Some("k"), "1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_first_request_frees_the_key() {
    let charges = Charges::default();
    let svc = layer().0.layer(charges.clone());
    let joined = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, with(pay(Some("k"), "1"), "x-panic", "1")).await }
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    let res = send(&svc, pay(Some("k"), "1")).await.unwrap();
    assert_eq!(text(res).await, "charge 1: 1");
}

#[tokio::test(start_paused = true)]
async fn store_if_decides_which_statuses_are_kept() {
    let charges = Charges::default();
    let svc = layer()
        .0
        .store_if(|s| !s.is_server_error())
        .layer(charges.clone());
    let res = send(&svc, with(pay(Some("k"), "1"), "x-status", "503"))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let res = send(&svc, pay(Some("k"), "1")).await.unwrap();
    assert_eq!(res.status(), 201, "the 503 was not kept");
    // By default every response is kept, 5xx included.
    let svc = layer().0.layer(Charges::default());
    send(&svc, with(pay(Some("k"), "1"), "x-status", "500"))
        .await
        .unwrap();
    let res = send(&svc, pay(Some("k"), "1")).await.unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
}

#[tokio::test(start_paused = true)]
async fn a_response_too_large_to_store_is_passed_on_whole_and_frees_the_key() {
    let charges = Charges::default();
    let (layer, events) = layer();
    let svc = layer.max_response_bytes(1_000).layer(charges.clone());
    let res = send(&svc, with(pay(Some("k"), "1"), "x-big", "5000"))
        .await
        .unwrap();
    assert_eq!(text(res).await.len(), 5_000);
    let res = send(&svc, with(pay(Some("k"), "1"), "x-big", "5000"))
        .await
        .unwrap();
    assert!(res.headers().get("idempotent-replayed").is_none());
    assert_eq!(charges.count.load(Ordering::SeqCst), 2);
    assert_eq!(*events.lock().unwrap(), ["released", "released"]);
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_runs_out_frees_the_key() {
    let store = MemoryStore::default();
    let svc = layer()
        .0
        .lease(Duration::from_secs(5))
        .store(store)
        .layer(Charges::default());
    // A first request whose future is leaked: it never finishes nor releases.
    let leaked = Box::pin(send(
        &svc,
        with(pay(Some("k"), "1"), "x-delay-ms", "100000"),
    ));
    let mut leaked = std::mem::ManuallyDrop::new(leaked);
    assert!(poll_once(&mut *leaked).is_pending());
    assert!(send(&svc, pay(Some("k"), "1")).await.is_err());
    tokio::time::advance(Duration::from_secs(5)).await;
    let res = send(&svc, pay(Some("k"), "1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

// ---- malformed input -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn malformed_oversized_and_missing_keys() {
    let charges = Charges::default();
    let svc = layer().0.required(true).layer(charges.clone());
    let long = "k".repeat(256);
    for (key, expected) in [
        (None, RejectionKind::IdempotencyKeyMissing),
        (Some(long.as_str()), RejectionKind::IdempotencyKeyInvalid),
        (Some("\"unterminated"), RejectionKind::IdempotencyKeyInvalid),
        (Some("two, keys"), RejectionKind::IdempotencyKeyInvalid),
        (Some(""), RejectionKind::IdempotencyKeyInvalid),
    ] {
        let err = send(&svc, pay(key, "1")).await.unwrap_err();
        assert_eq!(kind(&err), expected, "{key:?}");
    }
    let mut req = pay(None, "1");
    req.headers_mut().insert(
        "idempotency-key",
        http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
    );
    assert_eq!(
        kind(&send(&svc, req).await.unwrap_err()),
        RejectionKind::IdempotencyKeyInvalid
    );
    assert!(send(&svc, pay(Some(&"k".repeat(255)), "1")).await.is_ok());
    assert_eq!(charges.count.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn without_a_key_or_on_other_methods_requests_pass_through() {
    let charges = Charges::default();
    let svc = layer().0.layer(charges.clone());
    send(&svc, pay(None, "1")).await.unwrap();
    send(&svc, pay(None, "1")).await.unwrap();
    let mut get = pay(Some("k"), "1");
    *get.method_mut() = Method::GET;
    send(&svc, get).await.unwrap();
    let mut get = pay(Some("k"), "1");
    *get.method_mut() = Method::GET;
    let res = send(&svc, get).await.unwrap();
    assert!(res.headers().get("idempotent-replayed").is_none());
    assert_eq!(charges.count.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_request_body_over_the_limit_is_413() {
    let charges = Charges::default();
    let svc = layer().0.max_request_bytes(10).layer(charges.clone());
    let err = send(&svc, pay(Some("k"), &"x".repeat(11)))
        .await
        .unwrap_err();
    assert_eq!(kind(&err), RejectionKind::PayloadTooLarge);
    assert_eq!(charges.count.load(Ordering::SeqCst), 0);
}

// ---- modes and config ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shadow_mode_reports_but_runs_duplicates() {
    let charges = Charges::default();
    let (layer, events) = layer();
    let svc = layer.mode(Mode::Shadow).layer(charges.clone());
    send(&svc, pay(Some("k"), "1")).await.unwrap();
    let res = send(&svc, pay(Some("k"), "1")).await.unwrap();
    assert!(res.headers().get("idempotent-replayed").is_none());
    send(&svc, pay(Some("k"), "2")).await.unwrap();
    assert_eq!(charges.count.load(Ordering::SeqCst), 3);
    assert_eq!(
        *events.lock().unwrap(),
        ["stored", "replayed", "would_have_rejected"]
    );
}

#[tokio::test(start_paused = true)]
async fn off_mode_passes_everything_through() {
    let charges = Charges::default();
    let svc = layer()
        .0
        .required(true)
        .mode(Mode::Off)
        .layer(charges.clone());
    send(&svc, pay(None, "1")).await.unwrap();
    send(&svc, pay(Some("k"), "1")).await.unwrap();
    send(&svc, pay(Some("k"), "1")).await.unwrap();
    assert_eq!(charges.count.load(Ordering::SeqCst), 3);
}

#[test]
fn config_refuses_bad_fields_by_name() {
    let bad = |json: &str| {
        serde_json::from_str::<IdempotencyConfig>(json)
            .unwrap()
            .build()
            .unwrap_err()
            .field()
    };
    assert_eq!(bad(r#"{ "header": "bad header" }"#), "header");
    assert_eq!(bad(r#"{ "methods": ["P OST"] }"#), "methods");
    assert_eq!(bad(r#"{ "lease": "0s" }"#), "lease");
    assert_eq!(bad(r#"{ "retention": "0s" }"#), "retention");
    assert_eq!(bad(r#"{ "conflict": { "wait": "0s" } }"#), "conflict");
    assert_eq!(bad(r#"{ "max_records": 0 }"#), "max_records");
    assert_eq!(
        bad(r#"{ "fingerprint_headers": ["a b"] }"#),
        "fingerprint_headers"
    );
    assert!(serde_json::from_str::<IdempotencyConfig>(r#"{ "retension": "1h" }"#).is_err());
    let ok: IdempotencyConfig =
        serde_json::from_str(r#"{ "conflict": "reject", "methods": ["POST", "PUT"] }"#).unwrap();
    ok.build().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_config_built_layer_honours_its_header_and_methods() {
    let config: IdempotencyConfig = serde_json::from_str(
        r#"{ "header": "x-request-key", "methods": ["PUT"], "required": true }"#,
    )
    .unwrap();
    let charges = Charges::default();
    let svc = config.build().unwrap().layer(charges.clone());
    let put = |k: &str| {
        let mut r = with(pay(None, "1"), "x-request-key", k);
        *r.method_mut() = Method::PUT;
        r
    };
    send(&svc, put("a")).await.unwrap();
    let res = send(&svc, put("a")).await.unwrap();
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    send(&svc, pay(None, "1")).await.unwrap();
    assert_eq!(charges.count.load(Ordering::SeqCst), 2);
}

/// A store that cannot be reached: every operation fails.
struct Unreachable;

impl tower_parapet::idempotency::IdempotencyStore for Unreachable {
    fn claim<'a>(
        &'a self,
        _: &'a tower_parapet::idempotency::RecordKey,
        _: tower_parapet::idempotency::Fingerprint,
        _: Duration,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<tower_parapet::idempotency::Claim, tower_parapet::idempotency::StoreError>,
    > {
        Box::pin(async {
            Err(tower_parapet::idempotency::StoreError(
                "connection refused".into(),
            ))
        })
    }

    fn complete<'a>(
        &'a self,
        _: &'a tower_parapet::idempotency::RecordKey,
        _: tower_parapet::idempotency::ClaimToken,
        _: Arc<tower_parapet::idempotency::Record>,
        _: Duration,
    ) -> futures_util::future::BoxFuture<'a, Result<bool, tower_parapet::idempotency::StoreError>>
    {
        Box::pin(async {
            Err(tower_parapet::idempotency::StoreError(
                "connection refused".into(),
            ))
        })
    }

    fn release(
        &self,
        _: &tower_parapet::idempotency::RecordKey,
        _: tower_parapet::idempotency::ClaimToken,
    ) {
    }
}

/// A store that fails: by default the request is refused with a retryable 503 and nothing
/// runs (a duplicate elsewhere cannot be ruled out); failing open runs it unguarded. Each
/// emits the policy event; the config names the policy too.
#[tokio::test(start_paused = true)]
async fn a_failing_store_follows_the_store_policy() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let observer = move |e: &Event<'_>| {
        seen.lock()
            .unwrap()
            .push(format!("{}/{}", e.layer(), e.outcome()));
    };
    let charges = Charges::default();
    let closed = IdempotencyLayer::new()
        .store(Unreachable)
        .observer(observer.clone())
        .layer(charges.clone());
    let err = send(&closed, pay(Some("k1"), "1")).await.unwrap_err();
    assert!(
        matches!(
            Rejection::from_box(&err),
            Some(Rejection::Overloaded {
                retry_after: Some(_),
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(charges.count.load(Ordering::SeqCst), 0, "nothing ran");
    let open = IdempotencyLayer::new()
        .store(Unreachable)
        .on_store_error(tower_parapet::config::FailurePolicy::FailOpen)
        .observer(observer)
        .layer(charges.clone());
    let res = send(&open, pay(Some("k1"), "1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(!res.headers().contains_key("idempotent-replayed"));
    assert_eq!(charges.count.load(Ordering::SeqCst), 1);
    assert_eq!(
        *events.lock().unwrap(),
        [
            "idempotency/fail_closed",
            "idempotency/rejected",
            "idempotency/fail_open"
        ]
    );
    let config: IdempotencyConfig =
        serde_json::from_str(r#"{ "on_store_error": "fail_open" }"#).unwrap();
    assert_eq!(
        config.on_store_error,
        tower_parapet::config::FailurePolicy::FailOpen
    );
    config.build().unwrap();
}

// ---- services that are not HTTP -------------------------------------------------------

mod values {
    use super::*;
    use tower_parapet::idempotency::codec;
    use tower_parapet::key::KeyError;

    /// A message with its key in a field, as a gRPC message or a queue job would carry it.
    #[derive(Debug, Clone)]
    struct Transfer {
        key: Option<String>,
        cents: u64,
    }

    fn transfers() -> (
        impl Service<Transfer, Response = String, Error = BoxError, Future: Send> + Clone,
        Arc<AtomicUsize>,
        Events,
    ) {
        let moved = Arc::new(AtomicUsize::new(0));
        let m = moved.clone();
        let (layer, events) = layer();
        let layer = layer
            .conflict(Conflict::Wait(Duration::from_secs(5)))
            .key(tower_parapet::key::from_fn(|t: &Transfer| {
                t.key.clone().ok_or(KeyError::Missing)
            }))
            .values(codec(
                |t: &Transfer| t.cents.to_be_bytes().to_vec(),
                // Receipts of "rejected" transfers are not kept: a retry runs again.
                |receipt: &String| {
                    (!receipt.starts_with("rejected")).then(|| Bytes::from(receipt.clone()))
                },
                |stored: &Bytes| Ok(String::from_utf8(stored.to_vec())?),
            ));
        let svc = layer.layer(tower::service_fn(move |t: Transfer| {
            let m = m.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if t.cents == 0 {
                    return Ok::<_, BoxError>("rejected: nothing to move".to_owned());
                }
                let n = m.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(format!("transfer #{n}: {} cents", t.cents))
            }
        }));
        (svc, moved, events)
    }

    fn transfer(key: Option<&str>, cents: u64) -> Transfer {
        Transfer {
            key: key.map(str::to_owned),
            cents,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_duplicates_move_money_once() {
        let (svc, moved, events) = transfers();
        let tasks: Vec<_> = (0..100)
            .map(|_| tokio::spawn(svc.clone().oneshot(transfer(Some("t-1"), 500))))
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "transfer #1: 500 cents");
        }
        assert_eq!(moved.load(Ordering::SeqCst), 1);
        let events = events.lock().unwrap();
        assert_eq!(events.iter().filter(|e| *e == "stored").count(), 1);
        assert_eq!(events.iter().filter(|e| *e == "replayed").count(), 99);
    }

    #[tokio::test(start_paused = true)]
    async fn another_payload_with_the_same_key_is_refused() {
        let (svc, moved, _) = transfers();
        svc.clone()
            .oneshot(transfer(Some("t-1"), 500))
            .await
            .unwrap();
        let err = svc
            .oneshot(transfer(Some("t-1"), 50_000))
            .await
            .unwrap_err();
        assert_eq!(kind(&err), RejectionKind::IdempotencyMismatch);
        assert_eq!(moved.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unkept_answers_and_unkeyed_requests_run_each_time() {
        let (svc, _, events) = transfers();
        for _ in 0..2 {
            let answer = svc.clone().oneshot(transfer(Some("t-0"), 0)).await.unwrap();
            assert_eq!(answer, "rejected: nothing to move");
        }
        for _ in 0..2 {
            svc.clone().oneshot(transfer(None, 10)).await.unwrap();
        }
        assert_eq!(*events.lock().unwrap(), ["released", "released"]);
    }
}
