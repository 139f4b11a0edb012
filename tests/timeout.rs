//! Black-box tests of the timeout layer. Time is paused: `advance` moves it by exactly the
//! amount asked, and a future awaited to its end lets the runtime jump straight to the next
//! timer. Nothing here waits in real time.

use std::convert::Infallible;
use std::future::{Future, pending};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, advance, sleep};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_parapet::observe::{Event, Observer};
use tower_parapet::timeout::{Timeout, TimeoutConfig, TimeoutLayer};
use tower_parapet::{BoxError, Mode, ModeHandle, Rejection};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// An owned copy of the events a layer emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    TimedOut {
        after: Duration,
        shadow: bool,
    },
    Shortened {
        configured: Duration,
        caller: Duration,
    },
    Malformed {
        header: String,
    },
    Other(&'static str),
}

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(String, Seen)>>>);

impl Events {
    fn observer(&self) -> impl Observer {
        let sink = self.0.clone();
        move |e: &Event<'_>| {
            assert_eq!(e.layer(), "timeout");
            let seen = match *e {
                Event::TimedOut { after, shadow, .. } => Seen::TimedOut { after, shadow },
                Event::DeadlineShortened {
                    configured, caller, ..
                } => Seen::Shortened { configured, caller },
                Event::DeadlineMalformed { header, .. } => Seen::Malformed {
                    header: header.into(),
                },
                _ => Seen::Other(e.outcome()),
            };
            sink.lock().unwrap().push((e.name().to_owned(), seen));
        }
    }

    /// The events seen so far (and forget them).
    fn take(&self) -> Vec<Seen> {
        let mut all = self.0.lock().unwrap();
        all.drain(..).map(|(_, seen)| seen).collect()
    }

    /// The layer names of the events seen so far.
    fn names(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn timed_out(after: Duration) -> Seen {
    Seen::TimedOut {
        after,
        shadow: false,
    }
}

/// The `after` of a timeout rejection; panics on any other error.
fn timeout_after(err: &BoxError) -> Duration {
    match Rejection::from_box(err) {
        Some(Rejection::Timeout { after, .. }) => *after,
        other => panic!("expected a timeout rejection, got {other:?} ({err})"),
    }
}

/// A service answering `"done"` after `delay`.
fn sleeping(
    delay: Duration,
) -> impl Service<u32, Response = &'static str, Error = Infallible, Future: Send> + Clone {
    service_fn(move |_: u32| async move {
        sleep(delay).await;
        Ok::<_, Infallible>("done")
    })
}

/// A service that never answers.
fn hanging() -> impl Service<u32, Response = &'static str, Error = Infallible, Future: Send> + Clone
{
    service_fn(|_: u32| pending::<Result<&'static str, Infallible>>())
}

#[derive(Debug, PartialEq, Eq)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

/// Sets its flag when dropped.
struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn response_before_the_deadline_passes() {
    let events = Events::default();
    let mut svc = TimeoutLayer::new(SEC)
        .observer(events.observer())
        .layer(sleeping(100 * MS));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    advance(99 * MS).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    assert_eq!(assert_ready_ok!(fut.poll()), "done");
    assert_eq!(events.take(), []);
}

#[tokio::test(start_paused = true)]
async fn hanging_call_is_rejected_exactly_at_the_deadline() {
    let events = Events::default();
    let mut svc = TimeoutLayer::new(SEC)
        .observer(events.observer())
        .layer(hanging());
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    advance(SEC - MS).await;
    assert_pending!(fut.poll());
    assert_eq!(events.take(), []);
    advance(MS).await;
    let err = assert_ready_err!(fut.poll());
    assert_eq!(timeout_after(&err), SEC);
    assert_eq!(err.to_string(), "request timed out after 1s");
    assert_eq!(events.take(), [timed_out(SEC)]);
}

#[tokio::test(start_paused = true)]
async fn awaited_to_the_end_the_rejection_comes_at_the_deadline() {
    let svc = TimeoutLayer::new(250 * MS).layer(hanging());
    let started = Instant::now();
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(started.elapsed(), 250 * MS);
    assert_eq!(timeout_after(&err), 250 * MS);
}

#[tokio::test(start_paused = true)]
async fn response_ready_at_the_same_instant_as_the_deadline_wins() {
    let events = Events::default();
    let mut svc = TimeoutLayer::new(SEC)
        .observer(events.observer())
        .layer(sleeping(SEC));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    advance(SEC).await;
    assert_eq!(assert_ready_ok!(fut.poll()), "done");
    assert_eq!(events.take(), []);
}

#[tokio::test(start_paused = true)]
async fn inner_error_passes_through_untouched() {
    let svc = TimeoutLayer::new(SEC).layer(service_fn(|_: u32| async {
        Err::<&'static str, Boom>(Boom)
    }));
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(Rejection::from_box(&err).is_none(), "not a rejection");
    assert_eq!(err.downcast_ref::<Boom>(), Some(&Boom));
    assert!(err.source().is_none(), "not wrapped");

    // An error that is already boxed keeps its box (and its type).
    let svc = TimeoutLayer::new(SEC).layer(service_fn(|_: u32| async {
        Err::<&'static str, BoxError>(std::io::Error::other("disk").into())
    }));
    let err = svc.oneshot(1).await.unwrap_err();
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the io error itself");
    assert_eq!(io.to_string(), "disk");
}

#[tokio::test(start_paused = true)]
async fn poll_ready_forwards_inner_readiness_and_errors() {
    #[derive(Clone)]
    struct Gate {
        ready: Arc<AtomicBool>,
        fail: bool,
    }
    impl Service<u32> for Gate {
        type Response = &'static str;
        type Error = Boom;
        type Future = std::future::Ready<Result<&'static str, Boom>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Boom>> {
            if self.fail {
                Poll::Ready(Err(Boom))
            } else if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn call(&mut self, _: u32) -> Self::Future {
            std::future::ready(Ok("done"))
        }
    }

    let ready = Arc::new(AtomicBool::new(false));
    let mut cx = Context::from_waker(Waker::noop());
    let mut svc = TimeoutLayer::new(SEC).layer(Gate {
        ready: ready.clone(),
        fail: false,
    });
    assert!(svc.poll_ready(&mut cx).is_pending());
    ready.store(true, Ordering::SeqCst);
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));

    let mut failing = TimeoutLayer::new(SEC).layer(Gate { ready, fail: true });
    let Poll::Ready(Err(err)) = failing.poll_ready(&mut cx) else {
        panic!("expected the inner readiness error");
    };
    assert_eq!(err.downcast_ref::<Boom>(), Some(&Boom));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_drops_the_inner_one() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let mut svc = TimeoutLayer::new(SEC).layer(service_fn(move |_: u32| {
        let guard = DropGuard(flag.clone());
        async move {
            let _guard = guard;
            pending::<Result<&'static str, Infallible>>().await
        }
    }));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    assert!(!dropped.load(Ordering::SeqCst));
    drop(fut);
    assert!(dropped.load(Ordering::SeqCst), "cancelled from outside");
}

#[tokio::test(start_paused = true)]
async fn the_inner_future_is_dropped_at_the_deadline() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let mut svc = TimeoutLayer::new(SEC).layer(service_fn(move |_: u32| {
        let guard = DropGuard(flag.clone());
        async move {
            let _guard = guard;
            pending::<Result<&'static str, Infallible>>().await
        }
    }));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    advance(SEC).await;
    assert_ready_err!(fut.poll());
    // The caller still holds the completed future; the work behind it is gone already.
    assert!(dropped.load(Ordering::SeqCst));
    drop(fut);
}

#[tokio::test(start_paused = true)]
async fn inner_panic_propagates_unchanged() {
    let svc = TimeoutLayer::new(SEC).layer(service_fn(|n: u32| async move {
        if n == 1 {
            panic!("inner panicked");
        }
        Ok::<_, Infallible>("done")
    }));
    let err = tokio::spawn(svc.oneshot(1)).await.unwrap_err();
    assert!(err.is_panic());
    let payload = err.into_panic();
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap();
    assert_eq!(msg, "inner panicked");
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_reports_once_and_lets_the_slow_response_through() {
    let events = Events::default();
    let mut svc = TimeoutLayer::new(SEC)
        .mode(Mode::Shadow)
        .name("db")
        .observer(events.observer())
        .layer(sleeping(3 * SEC));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    advance(SEC).await;
    assert_pending!(fut.poll());
    assert_eq!(
        events.take(),
        [Seen::TimedOut {
            after: SEC,
            shadow: true
        }]
    );
    advance(SEC).await;
    assert_pending!(fut.poll());
    advance(SEC).await;
    assert_eq!(assert_ready_ok!(fut.poll()), "done");
    assert_eq!(events.take(), [], "reported once");
}

#[tokio::test(start_paused = true)]
async fn events_carry_the_layer_name() {
    let events = Events::default();
    let svc = TimeoutLayer::new(SEC)
        .name("db")
        .observer(events.observer())
        .layer(hanging());
    svc.oneshot(1).await.unwrap_err();
    assert_eq!(events.names(), ["db"]);
}

#[tokio::test(start_paused = true)]
async fn off_mode_never_times_out() {
    let events = Events::default();
    let svc = TimeoutLayer::new(SEC)
        .mode(Mode::Off)
        .observer(events.observer())
        .layer(sleeping(Duration::from_secs(3600)));
    let started = Instant::now();
    assert_eq!(svc.oneshot(1).await.unwrap(), "done");
    assert_eq!(started.elapsed(), Duration::from_secs(3600));
    assert_eq!(events.take(), []);
}

#[tokio::test(start_paused = true)]
async fn mode_switched_through_the_handle_affects_the_next_call_of_a_clone() {
    let events = Events::default();
    let layer = TimeoutLayer::new(SEC).observer(events.observer());
    let handle = layer.mode_handle();
    let mut svc = layer.layer(sleeping(2 * SEC));
    let mut clone = svc.clone();

    let err = clone.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(timeout_after(&err), SEC);

    assert_eq!(handle.set(Mode::Off), Mode::Enforce);
    assert_eq!(clone.ready().await.unwrap().call(1).await.unwrap(), "done");
    handle.set(Mode::Shadow);
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "done");
    assert_eq!(
        events.take(),
        [
            timed_out(SEC),
            Seen::TimedOut {
                after: SEC,
                shadow: true
            }
        ]
    );

    // The mode is read once per call: a call in flight keeps the one it started with.
    handle.set(Mode::Enforce);
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    handle.set(Mode::Off);
    advance(SEC).await;
    assert_eq!(timeout_after(&assert_ready_err!(fut.poll())), SEC);
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_share_one_mode() {
    let layer = TimeoutLayer::new(SEC).mode(Mode::Shadow);
    let copy = layer.clone();
    let svc = layer.layer(hanging());
    let svc_clone = svc.clone();
    let other_svc = copy.layer(hanging());

    copy.mode_handle().set(Mode::Off);
    for mode in [
        layer.mode_handle(),
        svc.mode_handle(),
        svc_clone.mode_handle(),
        other_svc.mode_handle(),
    ] {
        assert_eq!(mode.get(), Mode::Off);
    }

    // A handle made elsewhere (e.g. for an admin endpoint) can drive several layers.
    let admin = ModeHandle::new(Mode::Enforce);
    let a = TimeoutLayer::new(SEC).mode(admin.clone()).layer(hanging());
    let b = TimeoutLayer::new(2 * SEC)
        .mode(admin.clone())
        .layer(hanging());
    admin.set(Mode::Shadow);
    assert_eq!(a.mode_handle().get(), Mode::Shadow);
    assert_eq!(b.mode_handle().get(), Mode::Shadow);
}

#[tokio::test(start_paused = true)]
async fn per_request_timeout_from_a_closure() {
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::per_request(|path: &&'static str| {
            if path.starts_with("/upload") {
                Duration::from_secs(60)
            } else {
                SEC
            }
        }))
        .service(service_fn(|_: &'static str| {
            pending::<Result<&'static str, Infallible>>()
        }));
    let started = Instant::now();
    let err = svc.clone().oneshot("/upload/big").await.unwrap_err();
    assert_eq!(timeout_after(&err), Duration::from_secs(60));
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    let err = svc.oneshot("/search").await.unwrap_err();
    assert_eq!(timeout_after(&err), SEC);
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_rejects_without_calling_the_inner_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let events = Events::default();
    let mut svc = TimeoutLayer::per_request(|n: &u32| Duration::from_millis(u64::from(*n)))
        .observer(events.observer())
        .layer(service_fn(move |_: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
            pending::<Result<&'static str, Infallible>>()
        }));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(0));
    let err = assert_ready_err!(fut.poll(), "answered on the first poll");
    assert_eq!(timeout_after(&err), Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(events.take(), [timed_out(Duration::ZERO)]);
}

#[tokio::test(start_paused = true)]
async fn huge_timeouts_do_not_overflow() {
    let mut svc = TimeoutLayer::new(Duration::MAX).layer(sleeping(Duration::from_secs(86_400)));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_pending!(fut.poll());
    advance(Duration::from_secs(86_400)).await;
    assert_eq!(assert_ready_ok!(fut.poll()), "done");
}

#[test]
fn config_build_errors_name_the_field() {
    let err = TimeoutConfig::new(Duration::ZERO).build().unwrap_err();
    assert_eq!(err.field(), "timeout");
    assert!(err.to_string().contains("`timeout`"), "{err}");

    let bad: TimeoutConfig = serde_json::from_str(r#"{ "timeout": "0s" }"#).unwrap();
    assert_eq!(bad.build().unwrap_err().field(), "timeout");

    #[cfg(feature = "http")]
    {
        let mut c = TimeoutConfig::new(SEC);
        c.deadline_header = Some("not a header".into());
        let err = c.build().unwrap_err();
        assert_eq!(err.field(), "deadline_header");
        assert!(err.to_string().contains("not a header"), "{err}");
    }
}

#[test]
fn config_rejects_durations_without_units() {
    for bad in [
        r#"{ "timeout": 2 }"#,
        r#"{ "timeout": "2" }"#,
        r#"{ "timeout": "+2s" }"#,
        r#"{ "timeout": "2s", "mode": "loud" }"#,
    ] {
        assert!(serde_json::from_str::<TimeoutConfig>(bad).is_err(), "{bad}");
    }
}

#[test]
fn layers_services_and_futures_are_send_sync_clone_debug() {
    fn check<S>(svc: &S)
    where
        S: Service<u32> + Clone + Send + Sync + std::fmt::Debug + 'static,
        S::Future: Send + 'static,
    {
        let _ = format!("{svc:?}");
    }
    fn send_sync<T: Send + Sync + Clone + std::fmt::Debug>(_: &T) {}

    #[derive(Clone, Debug)]
    struct Echo;
    impl Service<u32> for Echo {
        type Response = u32;
        type Error = Infallible;
        type Future = std::future::Ready<Result<u32, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, n: u32) -> Self::Future {
            std::future::ready(Ok(n))
        }
    }

    let layer = TimeoutLayer::new(SEC).name("api");
    send_sync(&layer);
    assert!(format!("{layer:?}").contains("api"), "{layer:?}");
    let svc: Timeout<Echo> = layer.layer(Echo);
    check(&svc);
    assert!(format!("{svc:?}").contains("Echo"), "{svc:?}");
    let per = TimeoutLayer::per_request(|n: &u32| Duration::from_millis(u64::from(*n)));
    check(&per.layer(Echo));
    let mut svc = svc;
    let _: &Echo = svc.get_ref();
    let _: &mut Echo = svc.get_mut();
    let _: Echo = svc.into_inner();
}

#[tokio::test(start_paused = true)]
async fn works_inside_a_service_builder_stack() {
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(SEC))
        .layer(TimeoutLayer::new(500 * MS).name("inner"))
        .service(hanging());
    let started = Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(
        timeout_after(&err),
        500 * MS,
        "flat: the inner rejection, not wrapped"
    );
    assert_eq!(started.elapsed(), 500 * MS);
}

/// Polls a future once with a no-op waker.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    std::pin::Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test(start_paused = true)]
async fn off_mode_creates_no_timer() {
    // Off is a pure pass-through: the response future is ready as soon as the inner one,
    // with no timer registered (so it also works outside a runtime's time driver).
    let mut svc = TimeoutLayer::new(SEC)
        .mode(Mode::Off)
        .layer(service_fn(|n: u32| {
            std::future::ready(Ok::<_, Infallible>(n))
        }));
    let fut = svc.call(7);
    let mut fut = Box::pin(fut);
    assert!(matches!(poll_once(&mut fut), Poll::Ready(Ok(7))));
    let rt = std::thread::spawn(move || {
        // No tokio runtime on this thread at all.
        let mut fut = Box::pin(svc.call(8));
        assert!(matches!(poll_once(&mut fut), Poll::Ready(Ok(8))));
    });
    rt.join().unwrap();
}

#[cfg(feature = "http")]
mod http_deadlines {
    use super::*;
    use http::{HeaderName, Request, Response, StatusCode};
    use tower_parapet::http::RejectionResponseLayer;
    use tower_parapet::timeout::{Deadline, DeadlineUnit, HttpDeadline};

    /// What the inner service was given: the remaining `Deadline`, and `grpc-timeout`.
    type Given = (Option<Duration>, Option<String>);

    /// An HTTP service that writes down what it was given, then answers `"done"` after
    /// `delay` (or never, for `None`).
    #[derive(Clone, Default)]
    struct Recorder {
        given: Arc<Mutex<Vec<Given>>>,
    }

    impl Recorder {
        fn service(
            &self,
            delay: Option<Duration>,
        ) -> impl Service<Request<()>, Response = &'static str, Error = Infallible, Future: Send>
        + Clone
        + use<> {
            let given = self.given.clone();
            service_fn(move |req: Request<()>| {
                let left = req.extensions().get::<Deadline>().map(Deadline::remaining);
                let header = req.headers().get("grpc-timeout");
                let header = header.map(|h| h.to_str().unwrap().to_owned());
                given.lock().unwrap().push((left, header));
                async move {
                    match delay {
                        Some(d) => sleep(d).await,
                        None => pending().await,
                    }
                    Ok::<_, Infallible>("done")
                }
            })
        }

        /// Calls so far (and forget them).
        fn take(&self) -> Vec<Given> {
            std::mem::take(&mut *self.given.lock().unwrap())
        }

        /// The remaining deadline each call saw (and forget them).
        fn seen(&self) -> Vec<Option<Duration>> {
            self.take().into_iter().map(|(left, _)| left).collect()
        }
    }

    fn request(headers: &[(&'static str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/pkg.Svc/Method");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn grpc(timeout: &str) -> Request<()> {
        request(&[("grpc-timeout", timeout)])
    }

    #[tokio::test(start_paused = true)]
    async fn shorter_grpc_timeout_wins_and_is_recorded_for_inner_layers() {
        let events = Events::default();
        let inner = Recorder::default();
        let mut svc = TimeoutLayer::new(2 * SEC)
            .deadline(HttpDeadline::new())
            .observer(events.observer())
            .layer(inner.service(None));
        let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(grpc("300m")));
        assert_pending!(fut.poll());
        assert_eq!(inner.seen(), [Some(300 * MS)]);
        assert_eq!(
            events.take(),
            [Seen::Shortened {
                configured: 2 * SEC,
                caller: 300 * MS
            }]
        );
        advance(299 * MS).await;
        assert_pending!(fut.poll());
        advance(MS).await;
        let err = assert_ready_err!(fut.poll());
        assert_eq!(timeout_after(&err), 300 * MS);
        assert_eq!(events.take(), [timed_out(300 * MS)]);
    }

    #[tokio::test(start_paused = true)]
    async fn longer_caller_deadline_does_not_extend_the_configured_one() {
        let events = Events::default();
        let inner = Recorder::default();
        let svc = TimeoutLayer::new(SEC)
            .deadline(HttpDeadline::new())
            .observer(events.observer())
            .layer(inner.service(None));
        let started = Instant::now();
        let err = svc.oneshot(grpc("10S")).await.unwrap_err();
        assert_eq!(timeout_after(&err), SEC);
        assert_eq!(started.elapsed(), SEC);
        assert_eq!(inner.seen(), [Some(SEC)]);
        assert_eq!(events.take(), [timed_out(SEC)], "no DeadlineShortened");
    }

    #[tokio::test(start_paused = true)]
    async fn configured_header_in_milliseconds() {
        let events = Events::default();
        let inner = Recorder::default();
        let svc = TimeoutLayer::new(SEC)
            .deadline(HttpDeadline::new().grpc_timeout(false).header(
                HeaderName::from_static("x-timeout-ms"),
                DeadlineUnit::Millis,
            ))
            .observer(events.observer())
            .layer(inner.service(None));
        let started = Instant::now();
        let err = svc
            .clone()
            .oneshot(request(&[("x-timeout-ms", "150"), ("grpc-timeout", "50m")]))
            .await
            .unwrap_err();
        assert_eq!(
            timeout_after(&err),
            150 * MS,
            "grpc-timeout is switched off"
        );
        assert_eq!(started.elapsed(), 150 * MS);
        assert_eq!(inner.seen(), [Some(150 * MS)]);

        let err = svc
            .oneshot(request(&[("x-timeout-ms", "+150")]))
            .await
            .unwrap_err();
        assert_eq!(timeout_after(&err), SEC);
        assert_eq!(
            events.take(),
            [
                Seen::Shortened {
                    configured: SEC,
                    caller: 150 * MS
                },
                timed_out(150 * MS),
                Seen::Malformed {
                    header: "x-timeout-ms".into()
                },
                timed_out(SEC),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn configured_header_in_seconds() {
        let svc = TimeoutLayer::new(Duration::from_secs(60))
            .deadline(HttpDeadline::new().header(
                HeaderName::from_static("x-request-timeout"),
                DeadlineUnit::Seconds,
            ))
            .layer(Recorder::default().service(None));
        let err = svc
            .oneshot(request(&[("x-request-timeout", "3")]))
            .await
            .unwrap_err();
        assert_eq!(timeout_after(&err), 3 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_grpc_timeout_is_ignored_with_an_event() {
        for bad in ["+5S", "10", "abc", "1.5S", "123456789m", "-1S"] {
            let events = Events::default();
            let inner = Recorder::default();
            let svc = TimeoutLayer::new(SEC)
                .deadline(HttpDeadline::new())
                .observer(events.observer())
                .layer(inner.service(None));
            let started = Instant::now();
            let err = svc.oneshot(grpc(bad)).await.unwrap_err();
            assert_eq!(
                timeout_after(&err),
                SEC,
                "{bad:?}: the configured timeout applies"
            );
            assert_eq!(started.elapsed(), SEC, "{bad:?}");
            assert_eq!(inner.seen(), [Some(SEC)], "{bad:?}");
            assert_eq!(
                events.take(),
                [
                    Seen::Malformed {
                        header: "grpc-timeout".into()
                    },
                    timed_out(SEC)
                ],
                "{bad:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_caller_budget_rejects_without_calling_the_inner_service() {
        let events = Events::default();
        let inner = Recorder::default();
        let mut svc = TimeoutLayer::new(SEC)
            .deadline(HttpDeadline::new())
            .observer(events.observer())
            .layer(inner.service(None));
        let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(grpc("0n")));
        let err = assert_ready_err!(fut.poll());
        assert_eq!(timeout_after(&err), Duration::ZERO);
        assert_eq!(inner.seen(), [], "never called");
        assert_eq!(
            events.take(),
            [
                Seen::Shortened {
                    configured: SEC,
                    caller: Duration::ZERO
                },
                timed_out(Duration::ZERO)
            ]
        );

        // An outer deadline that has already passed is a zero budget too.
        let mut req = grpc("5S");
        req.extensions_mut().insert(Deadline::after(100 * MS));
        advance(200 * MS).await;
        let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
        assert_eq!(timeout_after(&err), Duration::ZERO);
        assert_eq!(inner.seen(), []);
    }

    #[tokio::test(start_paused = true)]
    async fn nested_layers_share_the_outer_deadline() {
        let events = Events::default();
        let recorder = Recorder::default();
        // The inner timeout (5 s) sits behind 400 ms of other work and learns from the
        // outer layer's `Deadline` that only 600 ms are left.
        let inner = TimeoutLayer::new(5 * SEC)
            .deadline(HttpDeadline::new())
            .name("inner")
            .observer(events.observer())
            .layer(recorder.service(None));
        let svc = TimeoutLayer::new(SEC)
            .deadline(HttpDeadline::new())
            .name("outer")
            .observer(events.observer())
            .layer(service_fn(move |req: Request<()>| {
                let inner = inner.clone();
                async move {
                    sleep(400 * MS).await;
                    inner.oneshot(req).await
                }
            }));
        let started = Instant::now();
        let err = svc.oneshot(request(&[])).await.unwrap_err();
        assert_eq!(started.elapsed(), SEC, "the outer deadline holds");
        assert_eq!(
            timeout_after(&err),
            600 * MS,
            "answered by the inner layer, unwrapped"
        );
        assert_eq!(recorder.seen(), [Some(600 * MS)]);
        assert_eq!(
            events.take(),
            [
                Seen::Shortened {
                    configured: 5 * SEC,
                    caller: 600 * MS
                },
                timed_out(600 * MS)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shadow_mode_records_no_deadline_and_off_mode_reads_no_header() {
        let events = Events::default();
        let inner = Recorder::default();
        let layer = TimeoutLayer::new(SEC)
            .deadline(HttpDeadline::new().propagate_grpc_timeout(true))
            .mode(Mode::Shadow)
            .observer(events.observer());
        let handle = layer.mode_handle();
        let svc = layer.layer(inner.service(Some(500 * MS)));

        assert_eq!(svc.clone().oneshot(grpc("300m")).await.unwrap(), "done");
        assert_eq!(
            inner.take(),
            [(None, Some("300m".into()))],
            "a shadow deadline is neither recorded nor propagated"
        );
        assert_eq!(
            events.take(),
            [
                Seen::Shortened {
                    configured: SEC,
                    caller: 300 * MS
                },
                Seen::TimedOut {
                    after: 300 * MS,
                    shadow: true
                }
            ]
        );

        handle.set(Mode::Off);
        assert_eq!(svc.oneshot(grpc("abc")).await.unwrap(), "done");
        assert_eq!(inner.take(), [(None, Some("abc".into()))]);
        assert_eq!(events.take(), [], "off: nothing read, nothing reported");
    }

    #[tokio::test(start_paused = true)]
    async fn shadow_mode_with_no_budget_left_reports_and_calls_through() {
        let events = Events::default();
        let inner = Recorder::default();
        let svc = TimeoutLayer::new(SEC)
            .deadline(HttpDeadline::new())
            .mode(Mode::Shadow)
            .observer(events.observer())
            .layer(inner.service(Some(50 * MS)));
        assert_eq!(svc.oneshot(grpc("0m")).await.unwrap(), "done");
        assert_eq!(inner.take(), [(None, Some("0m".into()))]);
        assert_eq!(
            events.take(),
            [
                Seen::Shortened {
                    configured: SEC,
                    caller: Duration::ZERO
                },
                Seen::TimedOut {
                    after: Duration::ZERO,
                    shadow: true
                }
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn propagation_rewrites_grpc_timeout_for_the_next_hop() {
        let seen = Arc::new(Mutex::new(None));
        let sink = seen.clone();
        let svc = TimeoutLayer::new(SEC)
            .deadline(
                HttpDeadline::new()
                    .header(HeaderName::from_static("x-budget-ms"), DeadlineUnit::Millis)
                    .propagate_grpc_timeout(true),
            )
            .layer(service_fn(move |req: Request<()>| {
                *sink.lock().unwrap() = req.headers().get("grpc-timeout").cloned();
                std::future::ready(Ok::<_, Infallible>("sent"))
            }));
        svc.oneshot(request(&[("x-budget-ms", "250")]))
            .await
            .unwrap();
        let header = seen.lock().unwrap().take().expect("grpc-timeout set");
        assert_eq!(
            tower_parapet::grpc::parse_grpc_timeout(header.as_bytes()),
            Ok(250 * MS)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn config_from_json_with_duration_strings() {
        let config: TimeoutConfig = serde_json::from_str(
            r#"{ "timeout": "2s", "name": "api", "mode": "shadow",
                 "deadline_header": "x-timeout-ms", "deadline_header_unit": "millis" }"#,
        )
        .unwrap();
        assert_eq!(config.timeout, 2 * SEC);
        assert!(config.grpc_timeout, "on by default");
        let events = Events::default();
        let layer = config.build().unwrap().observer(events.observer());
        assert_eq!(layer.mode_handle().get(), Mode::Shadow);
        layer.mode_handle().set(Mode::Enforce);

        let svc = layer.layer(Recorder::default().service(None));
        let err = svc.clone().oneshot(request(&[])).await.unwrap_err();
        assert_eq!(timeout_after(&err), 2 * SEC);
        let err = svc
            .oneshot(request(&[
                ("x-timeout-ms", "700"),
                ("grpc-timeout", "900m"),
            ]))
            .await
            .unwrap_err();
        assert_eq!(timeout_after(&err), 700 * MS);
        assert_eq!(events.names(), ["api", "api", "api"]);
    }

    #[tokio::test(start_paused = true)]
    async fn axum_router_answers_504_and_grpc_deadline_exceeded() {
        use axum::body::Body;
        use axum::routing::get;

        let app = axum::Router::new()
            .route("/fast", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            )
            .layer(
                ServiceBuilder::new()
                    .layer(RejectionResponseLayer::new())
                    .layer(TimeoutLayer::new(SEC).deadline(HttpDeadline::new())),
            );

        let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        let res: Response<_> = app.clone().oneshot(get("/fast")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);

        let started = Instant::now();
        let res = app.clone().oneshot(get("/slow")).await.unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(started.elapsed(), SEC);

        let started = Instant::now();
        let mut req = get("/slow");
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        req.headers_mut()
            .insert("grpc-timeout", "100m".parse().unwrap());
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "gRPC answers trailers-only");
        assert_eq!(res.headers()["grpc-status"], "4");
        assert_eq!(started.elapsed(), 100 * MS);
    }
}

#[tokio::test(start_paused = true)]
async fn ready_response_is_returned_on_the_first_poll() {
    let mut svc = TimeoutLayer::new(SEC).layer(service_fn(|n: u32| {
        std::future::ready(Ok::<_, Infallible>(n + 1))
    }));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(1));
    assert_eq!(assert_ready!(fut.poll()).unwrap(), 2);
}

/// The timer is made when the inner future first waits, but the deadline counts from the
/// call: a future first polled after its deadline, whose inner future waits, times out at
/// that first poll; one whose inner future answers at once is answered.
#[tokio::test(start_paused = true)]
async fn the_deadline_counts_from_the_call_even_when_the_first_poll_is_late() {
    let mut svc =
        TimeoutLayer::new(Duration::from_millis(100)).layer(service_fn(|wait: bool| async move {
            if wait {
                pending::<()>().await;
            }
            Ok::<_, Infallible>("answered")
        }));
    let mut late = tokio_test::task::spawn(svc.ready().await.unwrap().call(true));
    let mut quick = tokio_test::task::spawn(svc.ready().await.unwrap().call(false));
    advance(Duration::from_millis(150)).await;
    let err = assert_ready_err!(late.poll());
    assert!(
        err.downcast_ref::<Rejection>()
            .is_some_and(|r| r.kind() == tower_parapet::RejectionKind::Timeout),
        "{err}"
    );
    assert_eq!(assert_ready_ok!(quick.poll()), "answered");

    // Polled in time, it waits, and times out at the deadline.
    let start = Instant::now();
    let mut waiting = tokio_test::task::spawn(svc.ready().await.unwrap().call(true));
    assert_pending!(waiting.poll());
    advance(Duration::from_millis(99)).await;
    assert_pending!(waiting.poll());
    advance(Duration::from_millis(1)).await;
    assert_ready_err!(waiting.poll());
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}
