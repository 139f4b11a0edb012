//! The response future and the guard that reports every call exactly once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::state::{Breaker, Ending, Ticket};
use crate::classify::{Classifier, Outcome};
use crate::error::{BoxError, Rejection};

/// Reports a tracked call to its breaker exactly once: with its outcome when it finishes,
/// as a failure when the inner service panics (in `call` or in `poll`), and as cancelled
/// when the future is dropped first (which gives a half-open probe slot back).
#[derive(Debug)]
pub(crate) struct Guard {
    breaker: Arc<Breaker>,
    ticket: Ticket,
    /// Set while the inner future is being polled: if the guard is dropped with it set,
    /// the poll panicked.
    polling: bool,
    done: bool,
}

impl Guard {
    pub(crate) fn new(breaker: Arc<Breaker>, ticket: Ticket) -> Guard {
        Guard {
            breaker,
            ticket,
            polling: false,
            done: false,
        }
    }

    #[inline]
    fn finish(&mut self, ending: Ending) {
        if !self.done {
            self.done = true;
            self.breaker.finish(self.ticket, ending);
        }
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let ending = if self.polling || std::thread::panicking() {
            Ending::Failure
        } else {
            Ending::Cancelled
        };
        self.finish(ending);
    }
}

pin_project! {
    /// The future of [`CircuitBreaker`](super::CircuitBreaker).
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, C> {
        Tracked {
            #[pin]
            future: F,
            guard: Guard,
            classifier: C,
        },
        Untracked {
            #[pin]
            future: F,
        },
        Rejected {
            rejection: Rejection,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn tracked(future: F, guard: Guard, classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Tracked {
                future,
                guard,
                classifier,
            },
        }
    }

    pub(crate) fn untracked(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Untracked { future },
        }
    }

    pub(crate) fn rejected(rejection: Rejection) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { rejection },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classifier<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Tracked {
                future,
                guard,
                classifier,
            } => {
                guard.polling = true;
                let result = match future.poll(cx) {
                    Poll::Pending => {
                        guard.polling = false;
                        return Poll::Pending;
                    }
                    Poll::Ready(result) => result.map_err(Into::into),
                };
                guard.polling = false;
                let ending = match classifier.classify(result.as_ref()) {
                    Outcome::Success => Ending::Success,
                    Outcome::Failure => Ending::Failure,
                    Outcome::Ignored => Ending::Ignored,
                };
                guard.finish(ending);
                Poll::Ready(result)
            }
            KindProj::Untracked { future } => future.poll(cx).map_err(Into::into),
            KindProj::Rejected { rejection } => Poll::Ready(Err(rejection.clone().boxed())),
        }
    }
}
