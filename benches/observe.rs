//! What observation costs: one event through each observer, with and without a
//! subscriber or recorder installed, and one request through the logging layer.
//!
//! - `event/*`: one `CircuitRejected` event (the event of every refused call) given to
//!   an observer: `()`, `TracingObserver`, `MetricsObserver`, and both (the default with
//!   the `metrics` feature); `no_subscriber` / `with_subscriber` (a `fmt` subscriber
//!   writing to `io::sink`); `no_recorder` / `with_recorder` (a debugging recorder).
//! - `logging/*`: a GET through `LoggingLayer` around a handler that answers at once,
//!   against the bare handler; without and with a subscriber.
//!
//! Run: `cargo bench --bench observe` (the `metrics/*` cases with `--features metrics`,
//! which also makes the logging layer record its metrics).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
#[cfg(feature = "metrics")]
use metrics_util::debugging::DebuggingRecorder;
use tower::{Layer, Service};
use tower_parapet::circuit_breaker::State;
use tower_parapet::logging::LoggingLayer;
#[cfg(feature = "metrics")]
use tower_parapet::observe::MetricsObserver;
use tower_parapet::observe::{Event, Observer, TracingObserver};

fn event() -> Event<'static> {
    Event::CircuitRejected {
        name: "inventory",
        key: None,
        state: State::Open,
        retry_after: Some(Duration::from_secs(3)),
        shadow: false,
    }
}

fn subscriber() -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::sink)
        .finish()
}

fn events(c: &mut Criterion) {
    let mut group = c.benchmark_group("event");
    let e = event();
    group.bench_function("unit", |b| b.iter(|| ().on_event(black_box(&e))));
    let tracing_observer = TracingObserver::default();
    group.bench_function("tracing/no_subscriber", |b| {
        b.iter(|| tracing_observer.on_event(black_box(&e)))
    });
    // The cases with nothing installed come before any subscriber or recorder is set
    // (even a scoped one): once one was, `tracing` keeps checking for one on every event.
    #[cfg(feature = "metrics")]
    let metrics_observer = MetricsObserver::default();
    #[cfg(feature = "metrics")]
    {
        // The facade's own floor: one counter through the `metrics` macro, as any
        // library using the facade would record it, with no recorder installed.
        group.bench_function("metrics/facade_counter_macro_no_recorder", |b| {
            b.iter(|| {
                metrics::counter!("parapet_events_total", "layer" => "circuit_breaker", "name" => "inventory", "outcome" => "rejected")
                    .increment(1)
            })
        });
        group.bench_function("metrics/no_recorder", |b| {
            b.iter(|| metrics_observer.on_event(black_box(&e)))
        });
        let both = (tracing_observer, MetricsObserver::default());
        group.bench_function("tracing_and_metrics/nothing_installed", |b| {
            b.iter(|| both.on_event(black_box(&e)))
        });
    }
    tracing::subscriber::with_default(subscriber(), || {
        group.bench_function("tracing/with_subscriber", |b| {
            b.iter(|| tracing_observer.on_event(black_box(&e)))
        });
    });
    #[cfg(feature = "metrics")]
    {
        let recorder = DebuggingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            group.bench_function("metrics/with_recorder", |b| {
                b.iter(|| metrics_observer.on_event(black_box(&e)))
            });
        });
    }
    group.finish();
}

#[derive(Clone, Copy)]
struct Handler;

impl Service<Request<()>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
    }
}

fn one_call<S: Service<Request<()>>>(svc: &mut S) -> bool {
    let req = Request::get("/orders/42").body(()).unwrap();
    svc.call(black_box(req)).now_or_never().is_some()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// The logging layer before any subscriber was ever set (it then skips its span and clock
/// read): runs first.
fn logging_plain(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("logging");
    let mut bare = Handler;
    group.bench_function("bare", |b| b.iter(|| one_call(&mut bare)));
    let mut logged = LoggingLayer::new().layer(Handler);
    group.bench_function("no_subscriber", |b| b.iter(|| one_call(&mut logged)));
    group.finish();
}

fn logging_traced(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("logging");
    let mut logged = LoggingLayer::new().layer(Handler);
    tracing::subscriber::with_default(subscriber(), || {
        group.bench_function("with_subscriber", |b| b.iter(|| one_call(&mut logged)));
    });
    group.finish();
}

criterion_group!(benches, logging_plain, events, logging_traced);
criterion_main!(benches);
