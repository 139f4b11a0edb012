//! The response future of [`Timeout`](super::Timeout).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use super::layer::Shared;
use crate::error::{BoxError, Rejection};
use crate::observe::Event;

pin_project! {
    /// The response future of [`Timeout`](super::Timeout): the inner future raced against
    /// the deadline. It polls the inner future first, so a response ready at the deadline
    /// wins; at the deadline it drops the inner future at once and answers
    /// [`Rejection::Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Off mode, or a shadow call whose budget was already gone.
        Passthrough { #[pin] fut: F },
        Timed {
            #[pin]
            fut: F,
            at: Instant,
            // Made when the inner future first waits: a response ready at once never
            // touches the timer (nor clones the runtime handle a `Sleep` holds).
            #[pin]
            sleep: Option<Sleep>,
            after: Duration,
            shadow: bool,
            // Shadow mode only: the deadline passed and was reported; now just waiting.
            fired: bool,
            shared: Arc<Shared>,
        },
        Expired { after: Duration },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timeout::ResponseFuture")
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn passthrough(fut: F) -> Self {
        ResponseFuture {
            state: State::Passthrough { fut },
        }
    }

    pub(super) fn expired(after: Duration) -> Self {
        ResponseFuture {
            state: State::Expired { after },
        }
    }

    pub(super) fn timed(
        fut: F,
        at: Instant,
        after: Duration,
        shadow: bool,
        shared: Arc<Shared>,
    ) -> Self {
        ResponseFuture {
            state: State::Timed {
                fut,
                at,
                sleep: None,
                after,
                shadow,
                fired: false,
                shared,
            },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::Passthrough { fut } => fut.poll(cx).map_err(Into::into),
            StateProj::Expired { after } => Poll::Ready(Err(Rejection::timeout(*after).boxed())),
            StateProj::Timed {
                fut,
                at,
                mut sleep,
                after,
                shadow,
                fired,
                shared,
            } => {
                if let Poll::Ready(result) = fut.poll(cx) {
                    return Poll::Ready(result.map_err(Into::into));
                }
                if *fired {
                    return Poll::Pending;
                }
                if sleep.is_none() {
                    sleep.set(Some(sleep_until(*at)));
                }
                if let Some(sleep) = sleep.as_pin_mut()
                    && sleep.poll(cx).is_pending()
                {
                    return Poll::Pending;
                }
                let after = *after;
                shared.observer.emit(&Event::TimedOut {
                    name: &shared.name,
                    after,
                    shadow: *shadow,
                });
                if *shadow {
                    // Reported; let the call go on. The inner future has registered its
                    // waker above.
                    *fired = true;
                    return Poll::Pending;
                }
                // Drop the inner future now, not when the caller gets round to it.
                state.set(State::Expired { after });
                Poll::Ready(Err(Rejection::timeout(after).boxed()))
            }
        }
    }
}
