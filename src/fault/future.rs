//! The response future: an optional delay, then the inner call (its response corrupted or
//! not), an injected answer, or nothing ever.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::corrupt::{CorruptFuture, Corrupted, Corruption};
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
            // A corrupt fault: the corruption and the number it draws from.
            corrupt: Option<(Arc<dyn Corruption<Res>>, u64)>,
        },
        Corrupting {
            future: CorruptFuture<Res>,
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
            kind: Kind::Inner {
                future,
                corrupt: None,
            },
        }
    }

    pub(crate) fn corrupt(
        delay: Option<Duration>,
        future: F,
        corruption: Arc<dyn Corruption<Res>>,
        random: u64,
    ) -> Self {
        ResponseFuture {
            delay: delay.map(tokio::time::sleep),
            kind: Kind::Inner {
                future,
                corrupt: Some((corruption, random)),
            },
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
            Kind::Inner { corrupt: None, .. } => "inner",
            Kind::Inner { .. } | Kind::Corrupting { .. } => "corrupt",
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
    Res: 'static,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(sleep) = this.delay.as_mut().as_pin_mut() {
            ready!(sleep.poll(cx));
            this.delay.set(None);
        }
        let corrupting = match this.kind.as_mut().project() {
            KindProj::Inner { future, corrupt } => {
                let response = ready!(future.poll(cx)).map_err(Into::into)?;
                match corrupt.take() {
                    None => return Poll::Ready(Ok(response)),
                    Some((corruption, random)) => match corruption.corrupt(response, random) {
                        Corrupted::Ready(response) => return Poll::Ready(Ok(response)),
                        Corrupted::Later(future) => future,
                    },
                }
            }
            KindProj::Corrupting { future } => return future.as_mut().poll(cx),
            KindProj::Ready { result } => {
                return Poll::Ready(result.take().expect("polled after completion"));
            }
            KindProj::Hang => return Poll::Pending,
        };
        this.kind.set(Kind::Corrupting { future: corrupting });
        match this.kind.project() {
            KindProj::Corrupting { future } => future.as_mut().poll(cx),
            _ => unreachable!("just set"),
        }
    }
}
