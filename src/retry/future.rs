//! The response future: prepare, call, classify, back off, call again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_service::Service;

use super::StopReason;
use super::layer::Settings;
use super::pushback::{Pushback, PushbackSource};
use super::replay::{Prepared, Replay};
use crate::classify::{Classifier, Outcome};
use crate::error::BoxError;
use crate::observe::Event;
use crate::timeout::Deadline;

pin_project! {
    /// The future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, Req, R, C, P>
    where
        S: Service<Req>,
        R: Replay<Req>,
    {
        #[pin]
        state: State<S::Future, R::Prepare>,
        service: S,
        copy: Option<R::Copy>,
        replay: R,
        classifier: C,
        pushback: P,
        settings: Arc<Settings>,
        deadline: Option<Deadline>,
        // Attempts started so far, the first call included.
        attempts: u32,
        previous_delay: Duration,
        rng: Option<u64>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Prep> {
        Preparing {
            #[pin]
            prepare: Prep,
        },
        Calling {
            #[pin]
            future: F,
        },
        Backoff {
            #[pin]
            sleep: tokio::time::Sleep,
        },
        Readying,
    }
}

impl<S, Req, R, C, P> ResponseFuture<S, Req, R, C, P>
where
    S: Service<Req>,
    R: Replay<Req>,
{
    pub(crate) fn new(
        service: S,
        prepare: R::Prepare,
        replay: R,
        classifier: C,
        pushback: P,
        settings: Arc<Settings>,
        deadline: Option<Deadline>,
    ) -> Self {
        let previous_delay = settings.backoff.initial();
        ResponseFuture {
            state: State::Preparing { prepare },
            service,
            copy: None,
            replay,
            classifier,
            pushback,
            settings,
            deadline,
            attempts: 0,
            previous_delay,
            rng: None,
        }
    }
}

impl<S, Req, R, C, P> fmt::Debug for ResponseFuture<S, Req, R, C, P>
where
    S: Service<Req>,
    R: Replay<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("name", &self.settings.name)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<S, Req, R, C, P> Future for ResponseFuture<S, Req, R, C, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    R: Replay<Req>,
    C: Classifier<S::Response>,
    P: PushbackSource<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Preparing { prepare } => {
                    let Prepared { request, copy } = ready!(prepare.poll(cx))?;
                    *this.copy = copy;
                    *this.attempts = 1;
                    // The service the caller made ready, moved into this future by `call`.
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Readying => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        let settings = &**this.settings;
                        settings.completed(*this.attempts, false);
                        return Poll::Ready(Err(e.into()));
                    }
                    let copy = this.copy.as_ref().expect("only a kept request is retried");
                    let request = this.replay.replay(copy);
                    *this.attempts += 1;
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let settings = &**this.settings;
                    let attempts = *this.attempts;
                    let outcome = this.classifier.classify(result.as_ref());
                    if outcome != Outcome::Failure {
                        settings.completed(attempts, true);
                        return Poll::Ready(result);
                    }
                    let decision = decide(
                        settings,
                        this.copy.is_some(),
                        attempts,
                        *this.deadline,
                        this.pushback,
                        &result,
                        this.previous_delay,
                        this.rng,
                    );
                    match decision {
                        Ok((delay, pushback)) => {
                            settings.observer.emit(&Event::RetryScheduled {
                                name: &settings.name,
                                attempt: attempts + 1,
                                delay,
                                pushback,
                            });
                            // The failed answer is dropped here (a response body unread).
                            drop(result);
                            this.state.set(State::Backoff {
                                sleep: tokio::time::sleep(delay),
                            });
                        }
                        Err(reason) => {
                            settings.observer.emit(&Event::RetryStopped {
                                name: &settings.name,
                                attempts,
                                reason,
                            });
                            settings.completed(attempts, false);
                            return Poll::Ready(result);
                        }
                    }
                }
            }
        }
    }
}

/// After a failed attempt: the wait before the next one (and the server's pushback), or
/// why there is none. The budget is asked last, so that a retry refused for another
/// reason takes nothing from it.
#[allow(clippy::too_many_arguments)]
fn decide<Res, P: PushbackSource<Res>>(
    settings: &Settings,
    replayable: bool,
    attempts: u32,
    deadline: Option<Deadline>,
    pushback: &P,
    result: &Result<Res, BoxError>,
    previous_delay: &mut Duration,
    rng: &mut Option<u64>,
) -> Result<(Duration, Option<Duration>), StopReason> {
    if !replayable {
        return Err(StopReason::NotReplayable);
    }
    if attempts >= settings.max_attempts {
        return Err(StopReason::MaxAttempts);
    }
    let pushed = match pushback.pushback(result.as_ref(), settings.wall_clock.now()) {
        Some(Pushback::Stop) => return Err(StopReason::Pushback),
        Some(Pushback::After(d)) => Some(d),
        None => None,
    };
    let state = rng.get_or_insert_with(|| settings.next_seed());
    let random = crate::circuit_breaker::next_random(state);
    let backoff = settings
        .backoff
        .delay(settings.jitter, attempts, *previous_delay, random);
    let delay = pushed.map_or(backoff, |p| p.max(backoff));
    if let Some(deadline) = deadline {
        // Do not start an attempt that cannot finish: it would start at or after the
        // deadline, or with less than `min_time_left` of it.
        if delay.saturating_add(settings.min_time_left) >= deadline.remaining() {
            return Err(StopReason::Deadline);
        }
    }
    if let Some(budget) = &settings.budget
        && !budget.try_withdraw()
    {
        return Err(StopReason::BudgetExhausted);
    }
    *previous_delay = backoff;
    Ok((delay, pushed))
}
