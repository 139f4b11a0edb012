//! The circuit breaker's state machine, one named test per transition and per knob, on
//! paused tokio time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt};
use tower_parapet::circuit_breaker::{
    CircuitBreakerBuilder, CircuitBreakerConfig, CircuitBreakerLayer, SlidingWindow, State,
};
use tower_parapet::classify::{self, Outcome};
use tower_parapet::key;
use tower_parapet::observe::Event;
use tower_parapet::{BoxError, Mode, ModeHandle, Rejection, RejectionKind};

/// What the simulated dependency does with a call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Do {
    Ok,
    Fail,
    /// Succeed after this many milliseconds.
    Slow(u64),
    Hang,
    PanicInPoll,
    PanicInCall,
    /// An error the classifier below ignores.
    Ignore,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("dependency failed")]
struct DepError;

#[derive(Debug, thiserror::Error)]
#[error("not worth counting")]
struct Ignorable;

/// The dependency; counts the calls that reached it.
#[derive(Clone, Default)]
struct Dep {
    reached: Arc<AtomicUsize>,
}

impl Service<Do> for Dep {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, what: Do) -> Self::Future {
        self.reached.fetch_add(1, Ordering::SeqCst);
        assert!(what != Do::PanicInCall, "dependency panicked in call");
        Box::pin(async move {
            match what {
                Do::Ok => Ok("ok"),
                Do::Fail => Err(DepError.into()),
                Do::Ignore => Err(Ignorable.into()),
                Do::Slow(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok("slow")
                }
                Do::Hang => std::future::pending().await,
                Do::PanicInPoll => panic!("dependency panicked in poll"),
                Do::PanicInCall => unreachable!(),
            }
        })
    }
}

/// Errors are failures, except `Ignorable`, which counts as nothing.
fn classifier() -> impl classify::Classifier<&'static str> {
    classify::from_fn(|r: Result<&&'static str, &BoxError>| match r {
        Ok(_) => Outcome::Success,
        Err(e) if e.is::<Ignorable>() => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    })
}

type Events = Arc<Mutex<Vec<String>>>;

/// A small breaker: count window 10, minimum 10, 50 %, 10 s open, 2 probes.
fn small() -> CircuitBreakerBuilder {
    CircuitBreakerLayer::builder()
        .name("dep")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(10)
        .failure_rate_threshold(50)
        .wait_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(2)
}

struct Rig<S> {
    svc: S,
    dep: Dep,
    events: Events,
}

type Handle = tower_parapet::circuit_breaker::CircuitBreakerHandle;

fn recorder() -> (Events, impl Fn(&Event<'_>) + Send + Sync + 'static) {
    let events: Events = Arc::default();
    let sink = events.clone();
    (events, move |e: &Event<'_>| {
        if e.layer() == "circuit_breaker" {
            sink.lock().unwrap().push(e.outcome().to_string());
        }
    })
}

fn rig(
    builder: CircuitBreakerBuilder,
) -> (
    Rig<impl Service<Do, Response = &'static str, Error = BoxError, Future: Send> + Clone>,
    Handle,
) {
    let (events, observer) = recorder();
    let layer = builder
        .classifier(classifier())
        .observer(observer)
        .build()
        .unwrap();
    let handle = layer.handle();
    let dep = Dep::default();
    let svc = layer.layer(dep.clone());
    (Rig { svc, dep, events }, handle)
}

impl<S> Rig<S>
where
    S: Service<Do, Response = &'static str, Error = BoxError> + Clone,
{
    async fn call(&mut self, what: Do) -> Result<&'static str, BoxError> {
        self.svc.ready().await?.call(what).await
    }

    async fn run(&mut self, what: Do, times: usize) {
        for _ in 0..times {
            let _ = self.call(what).await;
        }
    }

    fn reached(&self) -> usize {
        self.dep.reached.load(Ordering::SeqCst)
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

fn rejection(result: Result<&'static str, BoxError>) -> Rejection {
    let err = result.expect_err("expected a rejection");
    Rejection::from_box(&err)
        .unwrap_or_else(|| panic!("not a rejection: {err}"))
        .clone()
}

// ---- closed ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn closed_nothing_trips_below_the_minimum_number_of_calls() {
    let (mut r, h) = rig(small()
        .minimum_calls(5)
        .sliding_window(SlidingWindow::count(10)));
    r.run(Do::Fail, 4).await;
    assert_eq!(h.state(), State::Closed);
    assert_eq!(
        h.metrics().failure_rate,
        None,
        "rates read None below the minimum"
    );
    assert_eq!(h.metrics().buffered_calls, 4);
    r.run(Do::Fail, 1).await;
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn closed_to_open_exactly_at_the_failure_threshold() {
    let (mut r, h) = rig(small());
    r.run(Do::Ok, 5).await;
    r.run(Do::Fail, 4).await;
    assert_eq!(h.state(), State::Closed, "9 calls: below the minimum of 10");
    r.run(Do::Fail, 1).await;
    // 5 failures of 10 = 50 % >= 50 %.
    assert_eq!(h.state(), State::Open);
    assert_eq!(r.events(), ["opened"]);
}

#[tokio::test(start_paused = true)]
async fn closed_stays_closed_just_below_the_threshold() {
    let (mut r, h) = rig(small().failure_rate_threshold(51));
    r.run(Do::Ok, 5).await;
    r.run(Do::Fail, 5).await;
    assert_eq!(h.state(), State::Closed, "50 % < 51 %");
    assert_eq!(h.metrics().failure_rate, Some(50.0));
}

#[tokio::test(start_paused = true)]
async fn count_window_really_slides_after_1000_successes() {
    let (mut r, h) = rig(small()
        .sliding_window(SlidingWindow::count(100))
        .minimum_calls(100));
    r.run(Do::Ok, 1_000).await;
    r.run(Do::Fail, 49).await;
    assert_eq!(h.state(), State::Closed);
    r.run(Do::Fail, 1).await;
    assert_eq!(h.state(), State::Open, "exactly 50 failures open it");
}

#[tokio::test(start_paused = true)]
async fn minimum_calls_larger_than_a_count_window_is_capped_at_its_size() {
    let (mut r, h) = rig(small()
        .sliding_window(SlidingWindow::count(4))
        .minimum_calls(100));
    r.run(Do::Fail, 3).await;
    assert_eq!(h.state(), State::Closed);
    r.run(Do::Fail, 1).await;
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_failures_older_than_its_length() {
    let (mut r, h) = rig(small()
        .sliding_window(SlidingWindow::time(Duration::from_secs(10)))
        .minimum_calls(4));
    r.run(Do::Fail, 3).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    r.run(Do::Fail, 1).await;
    assert_eq!(h.state(), State::Closed, "the first three left the window");
    assert_eq!(h.metrics().buffered_calls, 1);
    r.run(Do::Fail, 3).await;
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_trips_on_slow_successes() {
    let (mut r, h) = rig(small()
        .slow_call_duration(Duration::from_millis(100))
        .slow_call_rate_threshold(50));
    r.run(Do::Ok, 5).await;
    r.run(Do::Slow(101), 4).await;
    assert_eq!(h.state(), State::Closed);
    r.run(Do::Slow(101), 1).await;
    assert_eq!(h.state(), State::Open, "5 slow successes of 10 = 50 %");
    assert_eq!(h.metrics().slow_call_rate, Some(50.0));
    assert_eq!(h.metrics().failure_rate, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn a_call_exactly_at_the_slow_duration_is_not_slow() {
    let (mut r, h) = rig(small()
        .slow_call_duration(Duration::from_millis(100))
        .slow_call_rate_threshold(10));
    r.run(Do::Slow(100), 10).await;
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.metrics().slow_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_are_not_measured_without_a_slow_call_duration() {
    let (mut r, h) = rig(small());
    r.run(Do::Slow(60_000), 10).await;
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.metrics().slow_call_rate, None);
}

// ---- open ------------------------------------------------------------------------------

async fn tripped(
    builder: CircuitBreakerBuilder,
) -> (
    Rig<impl Service<Do, Response = &'static str, Error = BoxError, Future: Send> + Clone>,
    Handle,
) {
    let (mut r, h) = rig(builder);
    r.run(Do::Fail, 10).await;
    assert_eq!(h.state(), State::Open);
    (r, h)
}

#[tokio::test(start_paused = true)]
async fn open_rejects_at_once_with_the_time_left_and_never_calls_the_dependency() {
    let (mut r, h) = tripped(small()).await;
    let before = r.reached();
    tokio::time::advance(Duration::from_millis(2_500)).await;
    let rej = rejection(r.call(Do::Ok).await);
    assert_eq!(rej.kind(), RejectionKind::CircuitOpen);
    assert_eq!(rej.retry_after(), Some(Duration::from_millis(7_500)));
    assert!(matches!(&rej, Rejection::CircuitOpen { name, .. } if &**name == "dep"));
    assert_eq!(r.reached(), before);
    assert_eq!(h.metrics().not_permitted_calls, 1);
    assert_eq!(r.events(), ["opened", "rejected"]);
}

#[tokio::test(start_paused = true)]
async fn open_rejection_future_is_ready_immediately() {
    let (r, _h) = tripped(small()).await;
    let mut svc = r.svc.clone();
    let fut = svc.call(Do::Hang);
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    let polled = fut.as_mut().poll(&mut Context::from_waker(waker));
    assert!(matches!(polled, Poll::Ready(Err(_))));
}

#[tokio::test(start_paused = true)]
async fn open_to_half_open_exactly_when_the_wait_is_over() {
    let (mut r, h) = tripped(small()).await;
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert!(r.call(Do::Ok).await.is_err());
    assert_eq!(h.state(), State::Open);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(h.state(), State::HalfOpen, "at the wait, not after it");
    assert_eq!(r.events(), ["opened", "rejected", "half_opened"]);
}

#[tokio::test(start_paused = true)]
async fn open_wait_grows_over_consecutive_trips_and_resets_when_closed() {
    let (mut r, h) = tripped(small().wait_growth(2.0, Duration::from_secs(25), 0.0)).await;
    let wait = |h: &Handle| h.metrics().retry_after.unwrap();
    assert_eq!(wait(&h), Duration::from_secs(10));
    // Probes fail: second trip, 20 s.
    tokio::time::advance(Duration::from_secs(10)).await;
    r.run(Do::Fail, 2).await;
    assert_eq!(h.state(), State::Open);
    assert_eq!(wait(&h), Duration::from_secs(20));
    // Third trip: 40 s capped at 25 s.
    tokio::time::advance(Duration::from_secs(20)).await;
    r.run(Do::Fail, 2).await;
    assert_eq!(wait(&h), Duration::from_secs(25));
    // Probes succeed: closed; the next trip starts again at 10 s.
    tokio::time::advance(Duration::from_secs(25)).await;
    r.run(Do::Ok, 2).await;
    assert_eq!(h.state(), State::Closed);
    r.run(Do::Fail, 10).await;
    assert_eq!(wait(&h), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn open_wait_jitter_stays_within_its_fraction_of_the_cap() {
    let (mut r, h) = tripped(small().wait_growth(10.0, Duration::from_secs(100), 0.5)).await;
    for _ in 0..5 {
        let wait = h.metrics().retry_after.unwrap();
        assert!(
            wait >= Duration::from_secs(5) && wait <= Duration::from_secs(150),
            "{wait:?}"
        );
        tokio::time::advance(wait).await;
        r.run(Do::Fail, 2).await;
        assert_eq!(h.state(), State::Open);
    }
    let wait = h.metrics().retry_after.unwrap();
    assert!(
        wait >= Duration::from_secs(50) && wait <= Duration::from_secs(150),
        "{wait:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_huge_wait_saturates_instead_of_overflowing() {
    let (mut r, h) = tripped(small().wait_in_open(Duration::MAX)).await;
    tokio::time::advance(Duration::from_secs(1_000_000)).await;
    let rej = rejection(r.call(Do::Ok).await);
    assert!(rej.retry_after().unwrap() > Duration::from_secs(100 * 365 * 86_400));
    assert_eq!(h.state(), State::Open);
}

// ---- half-open -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn half_open_lets_exactly_the_permitted_probes_through_at_once() {
    let (r, h) = tripped(small().permitted_calls_in_half_open(3)).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let before = r.reached();
    let mut svc = r.svc.clone();
    let mut pending = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let fut = svc.ready().await.unwrap().call(Do::Hang);
        let mut fut = Box::pin(fut);
        match futures_poll(&mut fut) {
            Poll::Ready(Err(e)) => {
                assert_eq!(
                    Rejection::from_box(&e).unwrap().kind(),
                    RejectionKind::CircuitOpen
                );
                refused += 1;
            }
            Poll::Pending => pending.push(fut),
            Poll::Ready(Ok(_)) => panic!("a hanging call answered"),
        }
    }
    assert_eq!(pending.len(), 3);
    assert_eq!(refused, 1);
    assert_eq!(r.reached() - before, 3, "exactly 3 reached the dependency");
    assert_eq!(h.metrics().half_open_permits_left, Some(0));
}

fn futures_poll<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(std::task::Waker::noop()))
}

#[tokio::test(start_paused = true)]
async fn half_open_to_closed_when_the_probes_succeed() {
    let (mut r, h) = tripped(small()).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    r.run(Do::Ok, 1).await;
    assert_eq!(h.state(), State::HalfOpen, "one of two probes");
    r.run(Do::Ok, 1).await;
    assert_eq!(h.state(), State::Closed);
    let m = h.metrics();
    assert_eq!(m.buffered_calls, 0, "closing starts a fresh window");
    assert_eq!(r.events(), ["opened", "half_opened", "closed"]);
}

#[tokio::test(start_paused = true)]
async fn half_open_to_open_when_the_probes_fail() {
    let (mut r, h) = tripped(small()).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    r.run(Do::Ok, 1).await;
    r.run(Do::Fail, 1).await;
    assert_eq!(h.state(), State::Open, "1 of 2 failed: 50 % >= 50 %");
    assert_eq!(r.events(), ["opened", "half_opened", "opened"]);
}

#[tokio::test(start_paused = true)]
async fn half_open_decides_after_min_of_minimum_calls_and_permitted() {
    let (mut r, h) = tripped(small().permitted_calls_in_half_open(5).minimum_calls(10)).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    r.run(Do::Ok, 4).await;
    assert_eq!(h.state(), State::HalfOpen);
    assert_eq!(h.metrics().buffered_calls, 4);
    r.run(Do::Ok, 1).await;
    assert_eq!(h.state(), State::Closed, "5 = min(10, 5) probes decide");
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_reopens_when_probes_never_report() {
    let (r, h) = tripped(small().max_wait_in_half_open(Duration::from_secs(5))).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut svc = r.svc.clone();
    // Two probes that hang (and are kept alive) hold both slots.
    let p1 = svc.ready().await.unwrap().call(Do::Hang);
    let p2 = svc.ready().await.unwrap().call(Do::Hang);
    assert_eq!(h.state(), State::HalfOpen);
    tokio::time::advance(Duration::from_secs(5)).await;
    let rej = rejection(svc.ready().await.unwrap().call(Do::Ok).await);
    assert_eq!(rej.retry_after(), Some(Duration::from_secs(10)));
    assert_eq!(h.state(), State::Open);
    drop((p1, p2));
    assert_eq!(h.state(), State::Open, "stale probes decide nothing");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_gives_its_slot_back() {
    let (r, h) = tripped(small().permitted_calls_in_half_open(1)).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut svc = r.svc.clone();
    let probe = svc.ready().await.unwrap().call(Do::Hang);
    assert_eq!(h.metrics().half_open_permits_left, Some(0));
    drop(probe);
    assert_eq!(h.metrics().half_open_permits_left, Some(1));
    assert_eq!(
        h.state(),
        State::HalfOpen,
        "a cancelled probe decides nothing"
    );
    assert_eq!(svc.ready().await.unwrap().call(Do::Ok).await.unwrap(), "ok");
    assert_eq!(h.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_panicking_in_poll_counts_as_a_failure() {
    let (r, h) = tripped(small().permitted_calls_in_half_open(1)).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let svc = r.svc.clone();
    let joined = tokio::spawn(svc.oneshot(Do::PanicInPoll)).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(h.state(), State::Open, "the panic reopened it");
    assert_eq!(h.metrics().half_open_permits_left, None);
}

#[tokio::test(start_paused = true)]
async fn a_probe_panicking_in_call_counts_as_a_failure() {
    let (r, h) = tripped(small().permitted_calls_in_half_open(1)).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut svc = r.svc.clone();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(svc.call(Do::PanicInCall));
    }));
    assert!(caught.is_err());
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_closed_state_counts_as_a_failure() {
    let (r, h) = rig(small()
        .minimum_calls(1)
        .sliding_window(SlidingWindow::count(1)));
    let joined = tokio::spawn(r.svc.clone().oneshot(Do::PanicInPoll)).await;
    assert!(joined.is_err());
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_record_nothing_and_give_the_probe_slot_back() {
    let (mut r, h) = rig(small());
    r.run(Do::Ignore, 50).await;
    assert_eq!(h.metrics().buffered_calls, 0);
    r.run(Do::Fail, 10).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    r.run(Do::Ignore, 5).await;
    assert_eq!(h.state(), State::HalfOpen);
    assert_eq!(h.metrics().half_open_permits_left, Some(2));
    r.run(Do::Ok, 2).await;
    assert_eq!(h.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_counts_as_neither_success_nor_failure() {
    let (mut r, h) = rig(small());
    for _ in 0..20 {
        let fut = r.svc.ready().await.unwrap().call(Do::Hang);
        drop(fut);
    }
    assert_eq!(h.metrics().buffered_calls, 0);
    assert_eq!(h.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_call_admitted_before_a_trip_decides_nothing_after_it() {
    let (mut r, h) = rig(small().permitted_calls_in_half_open(1));
    // A slow call admitted while closed...
    let mut svc = r.svc.clone();
    let old = tokio::spawn(async move { svc.ready().await.unwrap().call(Do::Slow(15_000)).await });
    tokio::task::yield_now().await;
    r.run(Do::Fail, 10).await;
    assert_eq!(h.state(), State::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(h.state(), State::HalfOpen);
    // ...finishes during half-open: it neither closes the breaker nor takes the probe's
    // place.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(old.await.unwrap().unwrap(), "slow");
    assert_eq!(h.state(), State::HalfOpen);
    assert_eq!(h.metrics().buffered_calls, 0);
    r.run(Do::Fail, 1).await;
    assert_eq!(h.state(), State::Open, "the probe decided");
    assert_eq!(
        r.events().iter().filter(|e| *e == "opened").count(),
        2,
        "no extra opened event"
    );
}

// ---- manual states and modes -----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn forced_open_refuses_everything_until_closed_by_hand() {
    let (mut r, h) = rig(small());
    h.force_open();
    tokio::time::advance(Duration::from_secs(3_600)).await;
    let rej = rejection(r.call(Do::Ok).await);
    assert_eq!(rej.retry_after(), None);
    assert_eq!(h.state(), State::ForcedOpen);
    assert_eq!(r.reached(), 0);
    h.close();
    assert_eq!(r.call(Do::Ok).await.unwrap(), "ok");
    assert_eq!(r.events(), ["forced_open", "rejected", "closed"]);
}

#[tokio::test(start_paused = true)]
async fn disabled_lets_everything_through_and_records_nothing() {
    let (mut r, h) = rig(small());
    h.disable();
    r.run(Do::Fail, 100).await;
    assert_eq!(r.reached(), 100);
    assert_eq!(h.state(), State::Disabled);
    assert_eq!(h.metrics().buffered_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_records_and_reports_once_but_never_trips() {
    let (mut r, h) = rig(small());
    h.metrics_only();
    r.run(Do::Fail, 30).await;
    assert_eq!(r.reached(), 30);
    assert_eq!(h.state(), State::MetricsOnly);
    assert_eq!(h.metrics().failure_rate, Some(100.0));
    assert_eq!(r.events(), ["metrics_only", "threshold_exceeded"]);
}

#[tokio::test(start_paused = true)]
async fn manual_trip_half_open_and_reset() {
    let (mut r, h) = rig(small());
    h.trip();
    assert_eq!(h.state(), State::Open);
    assert!(r.call(Do::Ok).await.is_err());
    h.half_open();
    r.run(Do::Ok, 2).await;
    assert_eq!(h.state(), State::Closed);
    h.trip();
    let _ = r.call(Do::Ok).await;
    assert_eq!(h.metrics().not_permitted_calls, 2);
    h.reset();
    let m = h.metrics();
    assert_eq!(
        (m.state, m.not_permitted_calls, m.buffered_calls),
        (State::Closed, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_runs_the_machine_but_lets_every_call_through() {
    let (mut r, h) = rig(small().mode(Mode::Shadow));
    r.run(Do::Fail, 10).await;
    assert_eq!(h.state(), State::Open);
    assert_eq!(
        r.call(Do::Ok).await.unwrap(),
        "ok",
        "would have been refused"
    );
    assert_eq!(r.reached(), 11);
    assert_eq!(r.events(), ["opened", "would_have_rejected"]);
    assert_eq!(h.metrics().not_permitted_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn off_mode_is_a_pass_through_switchable_at_runtime() {
    let mode = ModeHandle::new(Mode::Off);
    let (mut r, h) = rig(small().mode(mode.clone()));
    r.run(Do::Fail, 20).await;
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.metrics().buffered_calls, 0);
    mode.set(Mode::Enforce);
    r.run(Do::Fail, 10).await;
    assert_eq!(h.state(), State::Open);
}

// ---- errors, clones, keys, config ------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let (mut r, _h) = rig(small());
    let err = r.call(Do::Fail).await.unwrap_err();
    assert!(err.downcast_ref::<DepError>().is_some());
    assert!(Rejection::from_box(&err).is_none());
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_one_breaker() {
    let layer = small().build().unwrap();
    let h = layer.handle();
    let dep = Dep::default();
    let mut a = layer.layer(dep.clone());
    let mut b = layer.clone().layer(dep.clone());
    for i in 0..10 {
        let svc = if i % 2 == 0 { &mut a } else { &mut b };
        let _ = svc.ready().await.unwrap().call(Do::Fail).await;
    }
    assert_eq!(h.state(), State::Open);
    assert!(b.clone().oneshot(Do::Ok).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_trip_independently() {
    let layer = small()
        .keyed(key::from_fn(|req: &(&'static str, Do)| Ok(req.0)))
        .build()
        .unwrap();
    let handles = layer.handles();
    let inner = tower::service_fn(|(_, what): (&'static str, Do)| {
        let mut dep = Dep::default();
        dep.call(what)
    });
    let mut svc = layer.layer(inner);
    for _ in 0..10 {
        let _ = svc.ready().await.unwrap().call(("db", Do::Fail)).await;
    }
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(("db", Do::Ok))
            .await
            .is_err()
    );
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(("cache", Do::Ok))
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(handles.get(&"db").unwrap().state(), State::Open);
    assert_eq!(handles.get(&"cache").unwrap().state(), State::Closed);
    assert!(handles.get(&"nobody").is_none());
    assert_eq!(handles.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_bounded_in_number() {
    let layer = small()
        .max_keys(100)
        .keyed(key::from_fn(|req: &u32| Ok(*req)))
        .build()
        .unwrap();
    let handles = layer.handles();
    let mut svc = layer.layer(tower::service_fn(|_: u32| async { Ok::<_, BoxError>(()) }));
    for k in 0..10_000u32 {
        svc.ready().await.unwrap().call(k).await.unwrap();
    }
    assert!(handles.len() <= 100, "{} breakers alive", handles.len());
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_key_goes_through_unguarded() {
    let layer = small()
        .keyed(key::from_fn(|req: &Option<u8>| {
            req.ok_or(key::KeyError::Missing)
        }))
        .build()
        .unwrap();
    let handles = layer.handles();
    let mut svc = layer.layer(tower::service_fn(|_: Option<u8>| async {
        Err::<(), BoxError>(DepError.into())
    }));
    for _ in 0..20 {
        let err = svc.ready().await.unwrap().call(None).await.unwrap_err();
        assert!(err.is::<DepError>());
    }
    assert_eq!(handles.len(), 0);
}

#[test]
fn config_rejects_each_bad_field_by_name() {
    let cases: [(&str, CircuitBreakerConfig); 9] = [
        (
            "name",
            CircuitBreakerConfig {
                name: String::new(),
                ..Default::default()
            },
        ),
        (
            "failure_rate_threshold",
            CircuitBreakerConfig {
                failure_rate_threshold: 101,
                ..Default::default()
            },
        ),
        (
            "slow_call_rate_threshold",
            CircuitBreakerConfig {
                slow_call_rate_threshold: 0,
                ..Default::default()
            },
        ),
        (
            "minimum_calls",
            CircuitBreakerConfig {
                minimum_calls: 0,
                ..Default::default()
            },
        ),
        (
            "sliding_window.size",
            CircuitBreakerConfig {
                sliding_window: SlidingWindow::count(0),
                ..Default::default()
            },
        ),
        (
            "sliding_window.buckets",
            CircuitBreakerConfig {
                sliding_window: SlidingWindow::time_in_buckets(Duration::from_secs(1), 0),
                ..Default::default()
            },
        ),
        (
            "wait_in_open",
            CircuitBreakerConfig {
                wait_in_open: Duration::ZERO,
                ..Default::default()
            },
        ),
        (
            "permitted_calls_in_half_open",
            CircuitBreakerConfig {
                permitted_calls_in_half_open: 0,
                ..Default::default()
            },
        ),
        (
            "max_wait_in_half_open",
            CircuitBreakerConfig {
                max_wait_in_half_open: Some(Duration::ZERO),
                ..Default::default()
            },
        ),
    ];
    for (field, config) in cases {
        assert_eq!(config.build().unwrap_err().field(), field);
    }
    let bad_growth = CircuitBreakerLayer::builder()
        .wait_growth(0.5, Duration::from_secs(600), 0.0)
        .build()
        .unwrap_err();
    assert_eq!(bad_growth.field(), "wait_growth.multiplier");
    let bad_jitter = CircuitBreakerLayer::builder()
        .wait_growth(2.0, Duration::from_secs(600), 1.5)
        .build()
        .unwrap_err();
    assert_eq!(bad_jitter.field(), "wait_growth.jitter");
    let too_big = CircuitBreakerLayer::builder()
        .sliding_window(SlidingWindow::count(u32::MAX))
        .build()
        .unwrap_err();
    assert_eq!(too_big.field(), "sliding_window.size");
}

#[test]
fn config_reads_from_json_with_defaults_and_refuses_unknown_fields() {
    let config: CircuitBreakerConfig = serde_json::from_str(
        r#"{ "name": "db", "sliding_window": { "type": "count", "size": 20 }, "slow_call_duration": "2s" }"#,
    )
    .unwrap();
    assert_eq!(config.sliding_window, SlidingWindow::count(20));
    assert_eq!(config.slow_call_duration, Some(Duration::from_secs(2)));
    assert_eq!(config.minimum_calls, 100);
    config.build().unwrap();
    assert!(serde_json::from_str::<CircuitBreakerConfig>(r#"{ "failure_threshold": 5 }"#).is_err());
    let back: CircuitBreakerConfig =
        serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);
}

// ---- concurrency -----------------------------------------------------------------------

/// N+1 threads call a half-open breaker at the same moment: exactly N reach the
/// dependency, and dropping their futures frees every slot (never stuck in half-open).
/// Repeated, so that a breaker taking slots with a load-then-store would be caught.
#[test]
fn half_open_admits_exactly_n_of_n_plus_one_concurrent_calls() {
    const PERMITS: usize = 4;
    const THREADS: usize = PERMITS + 1;
    let layer = small()
        .permitted_calls_in_half_open(PERMITS as u32)
        .build()
        .unwrap();
    let h = layer.handle();
    for round in 0..300 {
        h.half_open();
        let dep = Dep::default();
        let svc = layer.layer(dep.clone());
        let barrier = std::sync::Barrier::new(THREADS);
        let admitted: Vec<bool> = std::thread::scope(|s| {
            let joins: Vec<_> = (0..THREADS)
                .map(|_| {
                    let mut svc = svc.clone();
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        let mut fut = svc.call(Do::Hang);
                        let admitted = futures_poll(&mut fut).is_pending();
                        // Hold the probe until every thread has called.
                        barrier.wait();
                        admitted
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        let n = admitted.iter().filter(|a| **a).count();
        assert_eq!(n, PERMITS, "round {round}: {n} admitted");
        assert_eq!(dep.reached.load(Ordering::SeqCst), PERMITS, "round {round}");
        assert_eq!(h.state(), State::HalfOpen);
        assert_eq!(
            h.metrics().half_open_permits_left,
            Some(PERMITS as u32),
            "round {round}: dropped probes gave their slots back"
        );
    }
}

/// Two threads record failures into one closed breaker at once: no call is lost from the
/// window, and the breaker trips on exactly the call that fills it.
#[test]
fn two_threads_recording_into_one_window_lose_nothing() {
    for _ in 0..50 {
        let layer = small()
            .sliding_window(SlidingWindow::count(1_000))
            .minimum_calls(1_000)
            .failure_rate_threshold(100)
            .build()
            .unwrap();
        let h = layer.handle();
        let svc = layer.layer(Dep::default());
        std::thread::scope(|s| {
            for calls in [500, 499] {
                let mut svc = svc.clone();
                s.spawn(move || {
                    for _ in 0..calls {
                        let mut fut = svc.call(Do::Fail);
                        assert!(futures_poll(&mut fut).is_ready());
                    }
                });
            }
        });
        let m = h.metrics();
        assert_eq!((m.buffered_calls, m.failed_calls), (999, 999));
        assert_eq!(m.state, State::Closed);
        let mut fut = svc.clone().call(Do::Fail);
        assert!(futures_poll(&mut fut).is_ready());
        assert_eq!(h.state(), State::Open);
    }
}
