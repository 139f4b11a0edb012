//! The timeout layer, black-box, on tokio's paused clock (no real sleeps).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, advance};
use tokio_test::{assert_pending, assert_ready};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_parapet::observe::Event;
use tower_parapet::timeout::{TimeoutConfig, TimeoutLayer};
use tower_parapet::{BoxError, Mode, ModeHandle, Rejection};

const SEC: Duration = Duration::from_secs(1);

/// A service that answers after the delay in the request (or never, for `None`).
fn delayed() -> impl Service<Option<Duration>, Response = &'static str, Error = Infallible> + Clone {
    service_fn(|delay: Option<Duration>| async move {
        match delay {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
        Ok::<_, Infallible>("done")
    })
}

fn outcomes() -> (Arc<Mutex<Vec<String>>>, impl Fn(&Event<'_>) + Send + Sync + 'static) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |e: &Event<'_>| {
        sink.lock().unwrap().push(e.outcome().to_owned())
    })
}

fn timeout_of(err: &BoxError) -> Duration {
    match Rejection::from_box(err) {
        Some(Rejection::Timeout { after, .. }) => *after,
        other => panic!("expected a timeout rejection, got {other:?} ({err})"),
    }
}

#[tokio::test(start_paused = true)]
async fn response_before_the_deadline_passes() {
    let svc = TimeoutLayer::new(SEC).layer(delayed());
    let started = Instant::now();
    let res = svc.oneshot(Some(Duration::from_millis(999))).await.unwrap();
    assert_eq!(res, "done");
    assert_eq!(started.elapsed(), Duration::from_millis(999));
}

#[tokio::test(start_paused = true)]
async fn hang_is_rejected_exactly_at_the_deadline() {
    let (seen, observer) = outcomes();
    let mut svc = TimeoutLayer::new(SEC).observer(observer).layer(delayed());
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(None));
    assert_pending!(fut.poll());
    advance(SEC - Duration::from_millis(1)).await;
    assert_pending!(fut.poll());
    advance(Duration::from_millis(1)).await;
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(timeout_of(&err), SEC);
    assert_eq!(err.to_string(), "request timed out after 1s");
    assert_eq!(*seen.lock().unwrap(), ["timed_out"]);
}

#[tokio::test(start_paused = true)]
async fn a_response_ready_at_the_deadline_wins() {
    let svc = TimeoutLayer::new(SEC).layer(delayed());
    assert_eq!(svc.oneshot(Some(SEC)).await.unwrap(), "done");
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("database is down")]
struct DbDown;

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let failing = service_fn(|_: ()| async { Err::<(), _>(DbDown) });
    let err = TimeoutLayer::new(SEC).layer(failing).oneshot(()).await.unwrap_err();
    assert!(Rejection::from_box(&err).is_none());
    assert_eq!(err.downcast_ref::<DbDown>(), Some(&DbDown));
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn hanging_with_flag(dropped: Arc<AtomicBool>) -> impl Service<(), Response = (), Error = Infallible> {
    service_fn(move |_: ()| {
        let flag = DropFlag(dropped.clone());
        async move {
            let _flag = flag;
            std::future::pending::<Result<(), Infallible>>().await
        }
    })
}

#[tokio::test(start_paused = true)]
async fn dropping_the_outer_future_drops_the_inner_one() {
    let dropped = Arc::new(AtomicBool::new(false));
    let mut svc = TimeoutLayer::new(SEC).layer(hanging_with_flag(dropped.clone()));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(()));
    assert_pending!(fut.poll());
    assert!(!dropped.load(Ordering::SeqCst));
    drop(fut);
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn the_inner_future_is_dropped_at_the_deadline_even_if_the_caller_keeps_ours() {
    let dropped = Arc::new(AtomicBool::new(false));
    let mut svc = TimeoutLayer::new(SEC).layer(hanging_with_flag(dropped.clone()));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(()));
    assert_pending!(fut.poll());
    advance(SEC).await;
    assert!(assert_ready!(fut.poll()).is_err());
    assert!(dropped.load(Ordering::SeqCst), "dropped while `fut` is still alive");
}

#[tokio::test(start_paused = true)]
async fn an_inner_panic_propagates() {
    let panicking = service_fn(|_: ()| async {
        if true {
            panic!("handler bug");
        }
        Ok::<(), Infallible>(())
    });
    let svc = TimeoutLayer::new(SEC).layer(panicking);
    let join = tokio::spawn(svc.oneshot(())).await.unwrap_err();
    assert!(join.is_panic());
}

#[tokio::test(start_paused = true)]
async fn per_request_timeout_from_a_closure() {
    let layer = TimeoutLayer::per_request(|req: &Option<Duration>| {
        if req.is_some() { SEC } else { Duration::from_millis(10) }
    });
    let started = Instant::now();
    let err = layer.layer(delayed()).oneshot(None).await.unwrap_err();
    assert_eq!(timeout_of(&err), Duration::from_millis(10));
    assert_eq!(started.elapsed(), Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_reports_and_lets_the_slow_call_finish() {
    let (seen, observer) = outcomes();
    let svc = TimeoutLayer::new(SEC)
        .mode(Mode::Shadow)
        .observer(observer)
        .layer(delayed());
    let res = svc.oneshot(Some(3 * SEC)).await.unwrap();
    assert_eq!(res, "done");
    assert_eq!(*seen.lock().unwrap(), ["would_have_timed_out"], "reported once");
}

#[tokio::test(start_paused = true)]
async fn off_mode_never_times_out_and_the_mode_switches_at_runtime_for_clones() {
    let (seen, observer) = outcomes();
    let mode = ModeHandle::new(Mode::Off);
    let layer = TimeoutLayer::new(SEC).mode(mode.clone()).observer(observer);
    let svc = layer.layer(delayed());
    let clone = svc.clone();
    assert_eq!(svc.oneshot(Some(10 * SEC)).await.unwrap(), "done");
    assert!(seen.lock().unwrap().is_empty());

    layer.mode_handle().set(Mode::Enforce);
    assert_eq!(mode.get(), Mode::Enforce, "one handle for the layer and its services");
    let err = clone.oneshot(Some(10 * SEC)).await.unwrap_err();
    assert_eq!(timeout_of(&err), SEC);
}

#[test]
fn config_validates_and_names_the_field() {
    let err = TimeoutConfig::new(Duration::ZERO).build().unwrap_err();
    assert_eq!(err.field(), "timeout");
    let mut bad_name = TimeoutConfig::new(SEC);
    bad_name.name = String::new();
    assert_eq!(bad_name.build().unwrap_err().field(), "name");
    let parsed: Result<TimeoutConfig, _> = serde_json::from_str(r#"{"timeout": 5}"#);
    assert!(parsed.is_err(), "a bare number has no unit");
    let parsed: TimeoutConfig =
        serde_json::from_str(r#"{"timeout": "1m30s", "mode": "shadow", "name": "db"}"#).unwrap();
    assert_eq!(parsed.timeout, Duration::from_secs(90));
    assert_eq!(parsed.mode, Mode::Shadow);
    assert_eq!(parsed.build().unwrap().mode_handle().get(), Mode::Shadow);
}

/// Counts `call`s, for "not called" assertions.
#[derive(Clone)]
struct Counting(Arc<AtomicUsize>);

impl<R> Service<R> for Counting {
    type Response = ();
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<(), Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

#[cfg(feature = "http")]
mod deadline_propagation {
    use super::*;
    use http::{HeaderName, Request};
    use tower_parapet::timeout::{Deadline, DeadlineUnit, HttpDeadline};

    /// Answers after `delay`, with the remaining deadline it saw (ms) as the body.
    fn reporting(delay: Duration) -> impl Service<Request<()>, Response = Option<u128>, Error = Infallible> + Clone {
        service_fn(move |req: Request<()>| async move {
            let seen = req.extensions().get::<Deadline>().map(|d| d.remaining().as_millis());
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(seen)
        })
    }

    fn with(name: &str, value: &str) -> Request<()> {
        Request::get("/").header(name, value).body(()).unwrap()
    }

    fn layer() -> TimeoutLayer<Duration, HttpDeadline> {
        TimeoutLayer::new(SEC).deadline(
            HttpDeadline::new().header(HeaderName::from_static("x-timeout-ms"), DeadlineUnit::Millis),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_shorter_grpc_timeout_wins_and_is_recorded() {
        let (seen, observer) = outcomes();
        let svc = layer().observer(observer).layer(reporting(Duration::ZERO));
        let remaining = svc.clone().oneshot(with("grpc-timeout", "300m")).await.unwrap();
        assert_eq!(remaining, Some(300));
        assert_eq!(*seen.lock().unwrap(), ["deadline_shortened"]);

        let started = Instant::now();
        let err = layer()
            .layer(reporting(10 * SEC))
            .oneshot(with("grpc-timeout", "250000u"))
            .await
            .unwrap_err();
        assert_eq!(timeout_of(&err), Duration::from_millis(250));
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_longer_caller_deadline_does_not_extend_ours() {
        let svc = layer().layer(reporting(5 * SEC));
        let err = svc.clone().oneshot(with("grpc-timeout", "1H")).await.unwrap_err();
        assert_eq!(timeout_of(&err), SEC);
        let seen = layer().layer(reporting(Duration::ZERO)).oneshot(with("grpc-timeout", "1H")).await;
        assert_eq!(seen.unwrap(), Some(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_header_in_milliseconds() {
        let err = layer()
            .layer(reporting(SEC))
            .oneshot(with("x-timeout-ms", "40"))
            .await
            .unwrap_err();
        assert_eq!(timeout_of(&err), Duration::from_millis(40));
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_deadline_headers_are_ignored_with_an_event() {
        for (name, value) in [
            ("grpc-timeout", "+5S"),
            ("grpc-timeout", "10"),
            ("grpc-timeout", "1.5S"),
            ("grpc-timeout", "123456789m"),
            ("x-timeout-ms", "+40"),
            ("x-timeout-ms", "forty"),
        ] {
            let (seen, observer) = outcomes();
            let svc = layer().observer(observer).layer(reporting(Duration::ZERO));
            let remaining = svc.oneshot(with(name, value)).await.unwrap();
            assert_eq!(remaining, Some(1000), "{name}: {value} must be ignored");
            assert_eq!(*seen.lock().unwrap(), ["deadline_malformed"], "{name}: {value}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outer_deadline_bounds_an_inner_timeout() {
        // Overall 500 ms outside, 1 s per attempt inside: the inner layer sees 500 ms.
        let inner = layer().layer(reporting(Duration::ZERO));
        let outer = TimeoutLayer::new(Duration::from_millis(500))
            .deadline(HttpDeadline::new())
            .layer(inner);
        assert_eq!(outer.oneshot(Request::new(())).await.unwrap(), Some(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_answers_at_once_without_calling_the_service() {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = layer().layer(Counting(calls.clone()));
        let err = svc.oneshot(with("grpc-timeout", "0m")).await.unwrap_err();
        assert_eq!(timeout_of(&err), Duration::ZERO);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn propagation_rewrites_grpc_timeout_for_the_next_hop() {
        let next_hop = service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(req.headers().get("grpc-timeout").cloned())
        });
        let svc = TimeoutLayer::new(SEC)
            .deadline(HttpDeadline::new().propagate_grpc_timeout(true))
            .layer(next_hop);
        let header = svc.oneshot(with("grpc-timeout", "2S")).await.unwrap().unwrap();
        assert_eq!(header, "1000000u");
    }
}
