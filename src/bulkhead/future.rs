//! The response future: holds the permit until the inner future finishes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::state::Permit;
use crate::error::{BoxError, Rejection};

type Wait = Pin<Box<dyn Future<Output = Result<Permit, Rejection>> + Send>>;

pin_project! {
    /// The future of [`Bulkhead`](super::Bulkhead).
    pub struct ResponseFuture<F, S, Req> {
        #[pin]
        kind: Kind<F, S, Req>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, S, Req> {
        Running {
            #[pin]
            future: F,
            // Released when the future finishes, or when this is dropped (cancelled or
            // unwinding from a panic).
            permit: Permit,
        },
        Waiting {
            wait: Wait,
            service: Option<S>,
            request: Option<Req>,
        },
        Rejected {
            rejection: Option<Rejection>,
        },
    }
}

impl<F, S, Req> ResponseFuture<F, S, Req> {
    pub(crate) fn running(future: F, permit: Permit) -> Self {
        ResponseFuture {
            kind: Kind::Running { future, permit },
        }
    }

    pub(crate) fn waiting(wait: Wait, service: S, request: Req) -> Self {
        ResponseFuture {
            kind: Kind::Waiting {
                wait,
                service: Some(service),
                request: Some(request),
            },
        }
    }

    pub(crate) fn rejected(rejection: Rejection) -> Self {
        ResponseFuture {
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
        }
    }
}

impl<F, S, Req> fmt::Debug for ResponseFuture<F, S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Running { .. } => "running",
            Kind::Waiting { .. } => "waiting",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, Req> Future for ResponseFuture<S::Future, S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().kind.project() {
                KindProj::Running { future, permit } => {
                    let result = ready!(future.poll(cx));
                    // The slot is free as soon as the call is, not when this future is
                    // dropped later.
                    drop(std::mem::replace(permit, Permit::none()));
                    return Poll::Ready(result.map_err(Into::into));
                }
                KindProj::Waiting {
                    wait,
                    service,
                    request,
                } => {
                    let permit = match ready!(wait.as_mut().poll(cx)) {
                        Ok(permit) => permit,
                        Err(rejection) => return Poll::Ready(Err(rejection.boxed())),
                    };
                    let (Some(mut service), Some(request)) = (service.take(), request.take())
                    else {
                        unreachable!("a waiting bulkhead future holds its call until admitted")
                    };
                    // `service` was made ready by the caller before `call` and moved here.
                    let future = service.call(request);
                    self.set(ResponseFuture::running(future, permit));
                }
                KindProj::Rejected { rejection } => {
                    let rejection = rejection
                        .take()
                        .unwrap_or_else(|| Rejection::overloaded(None));
                    return Poll::Ready(Err(rejection.boxed()));
                }
            }
        }
    }
}
