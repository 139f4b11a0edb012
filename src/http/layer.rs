//! The edge adapter: every error of the stack below becomes an answer.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::body::ResponseBody;
use super::response::{StatusMap, grpc_answer, http_answer, internal_answer, is_grpc};
use crate::error::{BoxError, Rejection, RejectionKind};
use crate::grpc::Code;
use crate::observe::{Event, Observer, SharedObserver};

/// Turns every error of the services below it into a response, so a parapet stack goes
/// into `axum::Router::layer` (or a tonic `Server::layer`) with no `HandleErrorLayer`.
///
/// - a [`Rejection`] answers with its status ([`StatusMap`], configurable), `Retry-After`
///   (whole seconds rounded up, never 0), the RateLimit fields for a rate limit and an
///   `application/problem+json` body;
/// - for a gRPC request (`content-type: application/grpc...`) it answers trailers-only
///   instead: HTTP 200 with `grpc-status` (see [`crate::grpc`]), `grpc-message` and
///   `grpc-retry-pushback-ms`;
/// - any other error answers 500 (gRPC `INTERNAL`) with a body that names no detail; the
///   error and its `source()` chain go to the observer as [`Event::InternalError`].
///
/// Put it outermost (only logging goes outside it). Its error type is [`Infallible`].
#[derive(Clone, Debug)]
pub struct RejectionResponseLayer {
    shared: Arc<Shared>,
}

#[derive(Debug, Clone)]
struct Shared {
    name: Arc<str>,
    statuses: StatusMap,
    observer: SharedObserver,
}

impl Default for RejectionResponseLayer {
    fn default() -> Self {
        RejectionResponseLayer::new()
    }
}

impl RejectionResponseLayer {
    /// The adapter with the default statuses and the tracing observer.
    pub fn new() -> RejectionResponseLayer {
        RejectionResponseLayer {
            shared: Arc::new(Shared {
                name: "http".into(),
                statuses: StatusMap::default(),
                observer: SharedObserver::default(),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        let shared = Arc::make_mut(&mut self.shared);
        f(shared);
        self
    }

    /// Answer rejections of `kind` with `status` (e.g. 408 for timeouts, 403 for disabled
    /// features).
    #[must_use]
    pub fn status(self, kind: RejectionKind, status: StatusCode) -> Self {
        self.edit(|s| s.statuses = s.statuses.with(kind, status))
    }

    /// The whole status table.
    #[must_use]
    pub fn statuses(self, statuses: StatusMap) -> Self {
        self.edit(|s| s.statuses = statuses)
    }

    /// The name in this adapter's events.
    #[must_use]
    pub fn name(self, name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        self.edit(|s| s.name = name)
    }

    /// Where [`Event::InternalError`] goes (default: [`TracingObserver`](crate::observe::TracingObserver)).
    #[must_use]
    pub fn observer(self, observer: impl Observer) -> Self {
        let observer = SharedObserver::new(observer);
        self.edit(|s| s.observer = observer)
    }
}

impl<S> Layer<S> for RejectionResponseLayer {
    type Service = RejectionResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RejectionResponse {
            inner,
            shared: self.shared.clone(),
            not_ready: None,
        }
    }
}

/// The service of [`RejectionResponseLayer`].
pub struct RejectionResponse<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The error the inner service's `poll_ready` returned, answered by the next `call`.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for RejectionResponse<S> {
    fn clone(&self) -> Self {
        RejectionResponse {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            not_ready: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RejectionResponse<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectionResponse")
            .field("inner", &self.inner)
            .field("statuses", &self.shared.statuses)
            .finish()
    }
}

impl<S> RejectionResponse<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the adapter.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RejectionResponse<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        // The error type is `Infallible`: an inner service that fails to become ready is
        // answered for on the next call (which then does not reach it), like any error.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                self.not_ready = Some(e.into());
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let grpc = is_grpc(req.headers());
        let state = match self.not_ready.take() {
            None => State::Called {
                fut: self.inner.call(req),
            },
            Some(err) => State::NotReady { err: Some(err) },
        };
        ResponseFuture {
            state,
            grpc,
            shared: self.shared.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`RejectionResponse`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        grpc: bool,
        shared: Arc<Shared>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] fut: F },
        NotReady { err: Option<BoxError> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let err = match this.state.project() {
            StateProj::Called { fut } => match ready!(fut.poll(cx)) {
                Ok(res) => return Poll::Ready(Ok(res.map(ResponseBody::inner))),
                Err(e) => e.into(),
            },
            StateProj::NotReady { err } => err.take().expect("polled after completion"),
        };
        let mut answer = answer_error(&err, *this.grpc, this.shared);
        let verdict = match Rejection::from_box(&err) {
            Some(rejection) => super::Verdict::Rejected(rejection.kind()),
            None => super::Verdict::InternalError,
        };
        answer.extensions_mut().insert(verdict);
        Poll::Ready(Ok(answer.map(ResponseBody::full)))
    }
}

fn answer_error(err: &BoxError, grpc: bool, shared: &Shared) -> Response<bytes::Bytes> {
    if let Some(rejection) = Rejection::from_box(err) {
        return if grpc {
            rejection.to_grpc_response()
        } else {
            http_answer(rejection, shared.statuses.get(rejection.kind()))
        };
    }
    #[cfg(feature = "tonic")]
    if grpc && let Some(status) = err.downcast_ref::<tonic::Status>() {
        let code = Code::from_u8(u8::try_from(i32::from(status.code())).unwrap_or(2))
            .unwrap_or(Code::Unknown);
        return grpc_answer(code, status.message(), None);
    }
    shared.observer.emit(&Event::InternalError {
        name: &shared.name,
        error: &**err,
    });
    if grpc {
        grpc_answer(Code::Internal, "internal error", None)
    } else {
        internal_answer()
    }
}
