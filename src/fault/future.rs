//! The response future: an optional delay, then the inner call, an injected answer, or
//! nothing ever.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::error::BoxError;

pin_project! {
    /// The future of [`Fault`](super::Fault).
    pub struct ResponseFuture<F, Res> {
        #[pin]
        delay: Option<Sleep>,
        #[pin]
        kind: Kind<F, Res>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, Res> {
        Inner {
            #[pin]
            future: F,
        },
        Ready {
            result: Option<Result<Res, BoxError>>,
        },
        // Holds nothing: dropping it releases nothing because there is nothing to release.
        Hang,
    }
}

impl<F, Res> ResponseFuture<F, Res> {
    pub(crate) fn inner(delay: Option<Duration>, future: F) -> Self {
        ResponseFuture {
            delay: delay.map(tokio::time::sleep),
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn ready(delay: Option<Duration>, result: Result<Res, BoxError>) -> Self {
        ResponseFuture {
            delay: delay.map(tokio::time::sleep),
            kind: Kind::Ready {
                result: Some(result),
            },
        }
    }

    pub(crate) fn hang() -> Self {
        ResponseFuture {
            delay: None,
            kind: Kind::Hang,
        }
    }
}

impl<F, Res> fmt::Debug for ResponseFuture<F, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Ready { .. } => "injected",
            Kind::Hang => "hang",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("delayed", &self.delay.is_some())
            .finish()
    }
}

impl<F, Res, E> Future for ResponseFuture<F, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(sleep) = this.delay.as_mut().as_pin_mut() {
            ready!(sleep.poll(cx));
            this.delay.set(None);
        }
        match this.kind.project() {
            KindProj::Inner { future } => future.poll(cx).map_err(Into::into),
            KindProj::Ready { result } => {
                Poll::Ready(result.take().expect("polled after completion"))
            }
            KindProj::Hang => Poll::Pending,
        }
    }
}
