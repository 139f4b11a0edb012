//! The bulkhead: a shared limit, refusals and bounded waits, permits released on every
//! path (completion, drop, panic), a limit changed at runtime. Paused tokio time only.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_parapet::bulkhead::{BulkheadConfig, BulkheadLayer};
use tower_parapet::observe::Event;
use tower_parapet::{BoxError, Mode, Rejection, RejectionKind};

const WORK: Duration = Duration::from_secs(1);

/// A service that takes `WORK` and counts the calls that reached it.
fn slow(
    reached: Arc<AtomicUsize>,
) -> impl Service<u32, Response = u32, Error = Infallible, Future: Send> + Clone + Send {
    service_fn(move |i: u32| {
        reached.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(WORK).await;
            Ok::<_, Infallible>(i)
        }
    })
}

fn kind(err: &BoxError) -> Option<RejectionKind> {
    Rejection::from_box(err).map(Rejection::kind)
}

fn recorder() -> (Arc<Mutex<Vec<String>>>, impl Fn(&Event<'_>) + Send + Sync) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |e: &Event<'_>| {
        sink.lock()
            .unwrap()
            .push(format!("{}:{}", e.layer(), e.outcome()))
    })
}

#[tokio::test(start_paused = true)]
async fn n_plus_k_concurrent_calls_n_run_k_rejected() {
    let (n, k) = (4u32, 3u32);
    let (events, observer) = recorder();
    let layer = BulkheadLayer::builder()
        .max_concurrent(n)
        .observer(observer)
        .build()
        .unwrap();
    let handle = layer.handle();
    let reached = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(slow(reached.clone()));
    let calls: Vec<_> = (0..n + k)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    tokio::task::yield_now().await;
    let mut ok = 0;
    let mut rejected = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(kind(&e), Some(RejectionKind::Overloaded));
                rejected += 1;
            }
        }
    }
    assert_eq!((ok, rejected), (n, k));
    assert_eq!(
        reached.load(Ordering::SeqCst),
        n as usize,
        "rejected calls never ran"
    );
    assert_eq!(handle.in_flight(), 0);
    let events = events.lock().unwrap();
    assert_eq!(events.len(), k as usize);
    assert!(events.iter().all(|e| e == "bulkhead:rejected"));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_immediate_and_carries_the_hint() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .retry_after(Duration::from_secs(2))
        .observer(())
        .build()
        .unwrap();
    let mut svc = layer.layer(slow(Arc::default()));
    let first = svc.ready().await.unwrap().call(1);
    let second = svc.ready().await.unwrap().call(2);
    // Ready at once: never pending.
    let err = second.now_or_never().expect("ready at once").unwrap_err();
    let rejection = Rejection::from_box(&err).unwrap();
    assert_eq!(rejection.kind(), RejectionKind::Overloaded);
    assert_eq!(rejection.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(first.await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn waiting_calls_queue_then_time_out() {
    let (events, observer) = recorder();
    let layer = BulkheadLayer::builder()
        .max_concurrent(2)
        .max_wait(Duration::from_millis(300))
        .observer(observer)
        .build()
        .unwrap();
    let handle = layer.handle();
    let reached = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(slow(reached.clone()));
    let start = tokio::time::Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let call = svc.clone().oneshot(i);
            tokio::spawn(async move { (call.await, start.elapsed()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(handle.in_flight(), 2);
    assert_eq!(handle.waiting(), 3, "queued, not refused");
    let mut rejected_at = Vec::new();
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            (Ok(_), _) => ok += 1,
            (Err(e), at) => {
                assert_eq!(kind(&e), Some(RejectionKind::Overloaded));
                rejected_at.push(at);
            }
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(rejected_at.len(), 3);
    assert!(
        rejected_at.iter().all(|t| *t == Duration::from_millis(300)),
        "{rejected_at:?}"
    );
    assert_eq!(reached.load(Ordering::SeqCst), 2);
    assert_eq!((handle.in_flight(), handle.waiting()), (0, 0));
    assert_eq!(events.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_takes_a_freed_slot() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_secs(5))
        .observer(())
        .build()
        .unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(slow(reached.clone()));
    let start = tokio::time::Instant::now();
    let (a, b) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2));
    assert_eq!((a.unwrap(), b.unwrap()), (1, 2));
    // The second ran after the first: two units of work, one after the other.
    assert_eq!(start.elapsed(), 2 * WORK);
    assert_eq!(reached.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn dropped_calls_release_their_permits() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(2)
        .max_wait(Duration::from_secs(1))
        .observer(())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(slow(Arc::default()));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut a = Box::pin(svc.ready().await.unwrap().call(1));
    let b = svc.ready().await.unwrap().call(2);
    assert!(a.as_mut().poll(&mut cx).is_pending());
    assert_eq!(handle.in_flight(), 2);
    // A waiting call, dropped while it waits.
    let mut waiting = Box::pin(svc.ready().await.unwrap().call(3));
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    assert_eq!(handle.waiting(), 1);
    drop(waiting);
    assert_eq!(handle.waiting(), 0);
    // Running calls, one polled and one never polled.
    drop(a);
    drop(b);
    assert_eq!(handle.in_flight(), 0);
    let (x, y) = tokio::join!(svc.clone().oneshot(4), svc.clone().oneshot(5));
    assert_eq!((x.unwrap(), y.unwrap()), (4, 5));
}

#[derive(Clone)]
struct PanicsInCall;

impl Service<u32> for PanicsInCall {
    type Response = u32;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u32, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        panic!("handler bug")
    }
}

#[tokio::test(start_paused = true)]
async fn panicking_calls_release_their_permits() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .observer(())
        .build()
        .unwrap();
    let handle = layer.handle();

    // A panic while the response future is polled.
    let svc = layer.layer(service_fn(|_: u32| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        panic!("handler bug");
        #[allow(unreachable_code)]
        Ok::<u32, Infallible>(0)
    }));
    let joined = tokio::spawn(svc.oneshot(1)).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(handle.in_flight(), 0);

    // A panic in the inner service's `call`.
    let mut svc = layer.layer(PanicsInCall);
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
        drop(svc.call(1));
    }));
    assert!(caught.is_err());
    assert_eq!(handle.in_flight(), 0);

    // The single slot is still usable.
    let ok = layer.layer(slow(Arc::default())).oneshot(7).await.unwrap();
    assert_eq!(ok, 7);
}

#[tokio::test(start_paused = true)]
async fn the_limit_changes_at_runtime() {
    let (events, observer) = recorder();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_secs(10))
        .observer(observer)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(slow(Arc::default()));
    let start = tokio::time::Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!((handle.in_flight(), handle.waiting()), (1, 2));
    // Raising the limit admits the waiting calls now, not when the first finishes.
    assert_eq!(handle.set_limit(3), 1);
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.waiting()), (3, 0));
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert!(start.elapsed() < 2 * WORK);

    // Lowering below the calls in flight: they finish, the extra ones are refused, and
    // no slot is lost once they are done.
    let running: Vec<_> = (0..3)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(handle.in_flight(), 3);
    handle.set_limit(1);
    let mut probe = svc.clone();
    let refused = tokio::time::timeout(
        Duration::from_millis(100),
        probe.ready().await.unwrap().call(9),
    )
    .await;
    assert!(refused.is_err(), "waits: nothing frees up within 100 ms");
    for call in running {
        call.await.unwrap().unwrap();
    }
    assert_eq!(handle.in_flight(), 0);
    let (a, b) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2));
    assert!(a.is_ok() && b.is_ok(), "one at a time, the second waited");
    assert_eq!(handle.in_flight(), 0);
    let events = events.lock().unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| *e == "bulkhead:limit_changed")
            .count(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_limit_refuses_everything_until_raised() {
    let layer = BulkheadLayer::builder().observer(()).build().unwrap();
    let handle = layer.handle();
    handle.set_limit(0);
    let err = layer
        .layer(slow(Arc::default()))
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(kind(&err), Some(RejectionKind::Overloaded));
    handle.set_limit(1);
    assert_eq!(
        layer.layer(slow(Arc::default())).oneshot(1).await.unwrap(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    #[derive(Debug, thiserror::Error)]
    #[error("database is down")]
    struct DbDown;
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .observer(())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: u32| async { Err::<u32, _>(DbDown) }));
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.is::<DbDown>());
    assert!(Rejection::from_box(&err).is_none());
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_reports_and_lets_through_off_does_nothing() {
    let (events, observer) = recorder();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .mode(Mode::Shadow)
        .observer(observer)
        .build()
        .unwrap();
    let mode = layer.mode_handle();
    let reached = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(slow(reached.clone()));
    let (a, b, c) = tokio::join!(
        svc.clone().oneshot(1),
        svc.clone().oneshot(2),
        svc.clone().oneshot(3)
    );
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    assert_eq!(reached.load(Ordering::SeqCst), 3);
    assert_eq!(
        *events.lock().unwrap(),
        [
            "bulkhead:would_have_rejected",
            "bulkhead:would_have_rejected"
        ]
    );
    mode.set(Mode::Off);
    let (a, b) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2));
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(events.lock().unwrap().len(), 2, "off reports nothing");
    assert_eq!(layer.handle().in_flight(), 0);
}

#[test]
fn bad_config_names_the_field() {
    for (json, field) in [
        (r#"{ "max_concurrent": 0 }"#, "max_concurrent"),
        (r#"{ "max_wait": "0s" }"#, "max_wait"),
        (r#"{ "name": "" }"#, "name"),
    ] {
        let config: BulkheadConfig = serde_json::from_str(json).unwrap();
        let err = config.build().unwrap_err();
        assert_eq!(err.field(), field, "{json}");
        assert!(err.to_string().contains(field));
    }
    assert!(serde_json::from_str::<BulkheadConfig>(r#"{ "max_wait": 5 }"#).is_err());
    assert!(serde_json::from_str::<BulkheadConfig>(r#"{ "limit": 5 }"#).is_err());
    let err = BulkheadLayer::builder()
        .max_concurrent(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_concurrent");
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn over_the_limit_answers_503_at_the_edge() {
    use tower::ServiceBuilder;
    use tower_parapet::http::RejectionResponseLayer;

    let svc = ServiceBuilder::new()
        .layer(RejectionResponseLayer::new())
        .layer(
            BulkheadLayer::builder()
                .max_concurrent(1)
                .retry_after(Duration::from_millis(1500))
                .observer(())
                .build()
                .unwrap(),
        )
        .service(service_fn(|_: http::Request<String>| async {
            tokio::time::sleep(WORK).await;
            Ok::<_, Infallible>(http::Response::new(String::from("ok")))
        }));
    let (a, b) = tokio::join!(
        svc.clone().oneshot(http::Request::new(String::new())),
        svc.clone().oneshot(http::Request::new(String::new()))
    );
    assert_eq!(a.unwrap().status(), 200);
    let b = b.unwrap();
    assert_eq!(b.status(), 503);
    assert_eq!(b.headers()["retry-after"], "2");
}
