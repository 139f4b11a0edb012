//! The response future of [`Fallback`](super::Fallback).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;

use super::layer::{Marker, Shared};
use super::source::{Failure, Kept, Mark, Recovered, Source};
use crate::classify::{Classifier, Outcome};
use crate::error::BoxError;
use crate::observe::{Event, Trigger};

pin_project! {
    /// The response future of [`Fallback`](super::Fallback). The common path (the call
    /// succeeds and the source keeps nothing) allocates nothing; a fallback being computed
    /// asynchronously or an HTTP body being buffered is boxed.
    pub struct ResponseFuture<F, Res, X, Req, Src, C, M> {
        #[pin]
        state: State<F, Res>,
        cx: Option<X>,
        shared: Arc<Shared<Src, C, M>>,
        _req: Marker<Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Res> {
        Calling { #[pin] fut: F },
        Recovering { fut: BoxFuture<'static, Result<Res, BoxError>>, trigger: Trigger },
        Keeping { fut: BoxFuture<'static, Result<Res, BoxError>> },
        Done,
    }
}

impl<F, Res, X, Req, Src, C, M> fmt::Debug for ResponseFuture<F, Res, X, Req, Src, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fallback::ResponseFuture")
    }
}

impl<F, Res, X, Req, Src, C, M> ResponseFuture<F, Res, X, Req, Src, C, M> {
    pub(super) fn new(fut: F, cx: X, shared: Arc<Shared<Src, C, M>>) -> Self {
        ResponseFuture {
            state: State::Calling { fut },
            cx: Some(cx),
            shared,
            _req: std::marker::PhantomData,
        }
    }
}

impl<F, E, Res, X, Req, Src, C, M> Future for ResponseFuture<F, Res, X, Req, Src, C, M>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    Res: Send + 'static,
    Src: Source<Req, Res, Context = X>,
    C: Classifier<Res>,
    M: Mark<Res>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        let reporter = &shared.reporter;
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    let outcome = shared.classifier.classify(result.as_ref());
                    if outcome != Outcome::Failure {
                        this.state.set(State::Done);
                        let res = match (result, outcome) {
                            (Ok(res), Outcome::Success) => res,
                            (result, _) => return Poll::Ready(result),
                        };
                        let rcx = this.cx.take().expect("context is taken once");
                        match shared.source.on_success(rcx, res, reporter) {
                            Kept::Ready(res) => return Poll::Ready(Ok(res)),
                            Kept::Future(fut) => {
                                this.state.set(State::Keeping { fut });
                                continue;
                            }
                        }
                    }
                    let failure = match result {
                        Ok(res) => Failure::Response(res),
                        Err(e) => Failure::Error(e),
                    };
                    let trigger = failure.trigger();
                    let rcx = this.cx.as_ref().expect("context is kept until done");
                    match shared.source.recover(rcx, failure, reporter) {
                        Recovered::Ready(answer) => {
                            this.state.set(State::Done);
                            return Poll::Ready(finish(
                                shared,
                                rcx,
                                answer.map_err(Failure::into_result),
                                trigger,
                            ));
                        }
                        Recovered::Future(fut) => {
                            this.state.set(State::Recovering { fut, trigger });
                        }
                    }
                }
                StateProj::Recovering { fut, trigger } => {
                    let answer = ready!(fut.as_mut().poll(cx));
                    let trigger = *trigger;
                    this.state.set(State::Done);
                    let rcx = this.cx.as_ref().expect("context is kept until done");
                    return Poll::Ready(finish(shared, rcx, answer.map_err(Err), trigger));
                }
                StateProj::Keeping { fut } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
                StateProj::Done => panic!("fallback::ResponseFuture polled after completion"),
            }
        }
    }
}

/// Report and mark the source's answer. `Err(original)` means the source had nothing (or
/// failed): `original` is what the caller gets.
fn finish<Req, Res, Src, C, M>(
    shared: &Shared<Src, C, M>,
    rcx: &Src::Context,
    answer: Result<Res, Result<Res, BoxError>>,
    trigger: Trigger,
) -> Result<Res, BoxError>
where
    Src: Source<Req, Res>,
    M: Mark<Res>,
{
    let reporter = &shared.reporter;
    let source = shared.source.name();
    let key = shared.source.key(rcx);
    match answer {
        Ok(mut res) => {
            shared.mark.mark(&mut res, source);
            reporter.emit(&Event::FallbackServed {
                name: reporter.name(),
                source,
                trigger,
                key,
            });
            Ok(res)
        }
        Err(original) => {
            reporter.emit(&Event::FallbackUnavailable {
                name: reporter.name(),
                source,
                trigger,
                key,
            });
            original
        }
    }
}
