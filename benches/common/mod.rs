//! What the benches share: the cheapest inner service, one call through a service, and
//! the two-thread harness.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tower::Service;

/// The cheapest possible inner service: answers at once with its request.
#[derive(Clone, Copy)]
pub(crate) struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

/// `poll_ready`, `call` and one poll of the response future; whether it was ready.
pub(crate) fn one_call<S: Service<u64>>(svc: &mut S, i: u64) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    svc.call(black_box(i)).now_or_never().is_some()
}

/// Two threads, `iters` calls each, through clones of `svc`: the wall time of the slower
/// one (criterion divides it by `iters`, giving the time per call each thread sees).
pub(crate) fn two_threads<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send,
{
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        black_box(one_call(&mut svc, i));
                    }
                    start.elapsed()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).max().unwrap()
    })
}
