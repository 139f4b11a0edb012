//! The response future of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::layer::{OnAdmitted, Shared};
use super::state::{Decision, Slot};
use crate::error::{BoxError, RateLimitInfo, Rejection};
use crate::observe::Event;

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit): the inner call, a
    /// rejection (ready at once), or a wait for the quota followed by the inner call.
    pub struct ResponseFuture<F, S, Req, H> {
        #[pin]
        state: State<F, S, Req, H>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, Req, H> {
        Called {
            #[pin]
            fut: F,
            // Boxed (and only when admitted responses carry headers): the future stays
            // small on the common path.
            info: Option<Box<RateLimitInfo>>,
            headers: H,
        },
        Rejected { error: Option<BoxError> },
        Waiting { wait: Box<Waiting<S, Req, H>> },
    }
}

/// A request held until its quota admits it. Boxed: only requests that wait pay for it.
struct Waiting<S, Req, H> {
    sleep: Pin<Box<Sleep>>,
    svc: S,
    req: Option<Req>,
    slot: Slot,
    weight: u32,
    class: &'static str,
    started: Instant,
    headers: H,
    shared: Arc<Shared>,
}

impl<F, S, Req, H> fmt::Debug for ResponseFuture<F, S, Req, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate_limit::ResponseFuture")
    }
}

impl<F, S, Req, H> ResponseFuture<F, S, Req, H> {
    pub(super) fn called(fut: F, info: Option<Box<RateLimitInfo>>, headers: H) -> Self {
        ResponseFuture {
            state: State::Called { fut, info, headers },
        }
    }

    pub(super) fn rejected(rejection: Rejection) -> Self {
        ResponseFuture {
            state: State::Rejected {
                error: Some(rejection.boxed()),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn waiting(
        svc: S,
        req: Req,
        slot: Slot,
        weight: u32,
        wait: Duration,
        class: &'static str,
        headers: H,
        shared: Arc<Shared>,
    ) -> Self {
        let started = Instant::now();
        ResponseFuture {
            state: State::Waiting {
                wait: Box::new(Waiting {
                    sleep: Box::pin(tokio::time::sleep(wait)),
                    svc,
                    req: Some(req),
                    slot,
                    weight,
                    class,
                    started,
                    headers,
                    shared,
                }),
            },
        }
    }
}

impl<S, Req, H> Future for ResponseFuture<S::Future, S, Req, H>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    H: OnAdmitted<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::Called { fut, info, headers } => poll_called(fut, info, headers, cx),
            StateProj::Rejected { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(error))
            }
            // Kept out of line: the admitted path above stays small.
            StateProj::Waiting { .. } => poll_waiting(state, cx),
        }
    }
}

#[inline]
fn poll_called<F, T, E, H>(
    fut: Pin<&mut F>,
    info: &mut Option<Box<RateLimitInfo>>,
    headers: &mut H,
    cx: &mut Context<'_>,
) -> Poll<Result<T, BoxError>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    H: OnAdmitted<T>,
{
    let mut res = ready!(fut.poll(cx)).map_err(Into::into)?;
    if let Some(info) = info.take() {
        headers.apply(&mut res, &info);
    }
    Poll::Ready(Ok(res))
}

#[inline(never)]
#[allow(clippy::type_complexity)]
fn poll_waiting<S, Req, H>(
    mut state: Pin<&mut State<S::Future, S, Req, H>>,
    cx: &mut Context<'_>,
) -> Poll<Result<S::Response, BoxError>>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    H: OnAdmitted<S::Response>,
{
    loop {
        match state.as_mut().project() {
            StateProj::Called { fut, info, headers } => return poll_called(fut, info, headers, cx),
            StateProj::Rejected { error } => {
                let error = error.take().expect("polled after completion");
                return Poll::Ready(Err(error));
            }
            StateProj::Waiting { wait } => {
                ready!(wait.sleep.as_mut().poll(cx));
                let shared = &wait.shared;
                let want_info = wait.headers.enabled();
                match shared.quotas.decide(&wait.slot, wait.weight, want_info) {
                    Decision::Admitted { info } => {
                        shared.observer().emit(&Event::RateLimitDelayed {
                            name: shared.name(),
                            class: wait.class,
                            waited: wait.started.elapsed(),
                        });
                        let req = wait.req.take().expect("polled after completion");
                        let fut = wait.svc.call(req);
                        let headers = wait.headers.clone();
                        state.set(State::Called { fut, info, headers });
                    }
                    Decision::Refused {
                        quota,
                        wait: again,
                        info,
                    } => {
                        // Waiting reserves nothing: another request took the quota.
                        // Wait again while the total stays within the maximum.
                        let waited = wait.started.elapsed();
                        if waited.saturating_add(again) <= shared.max_wait() {
                            let at = Instant::now() + again;
                            wait.sleep.as_mut().reset(at);
                            continue;
                        }
                        shared.observer().emit(&Event::RateLimited {
                            name: shared.name(),
                            class: wait.class,
                            key: None,
                            policy: shared.quotas.quota(quota).name(),
                            retry_after: again,
                            shadow: false,
                        });
                        let rejection = Rejection::rate_limited(again, Some(*info));
                        state.set(State::Rejected { error: None });
                        return Poll::Ready(Err(rejection.boxed()));
                    }
                }
            }
        }
    }
}
