//! Where a fallback answer comes from.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::error::{BoxError, Rejection};
use crate::observe::{Event, SharedObserver, Trigger};

/// What failed: the error of the inner stack, or a response the classifier called a
/// failure.
#[derive(Debug)]
pub enum Failure<Res> {
    /// An error: of the inner service, or a [`Rejection`] of an inner layer.
    Error(BoxError),
    /// A response the classifier called a failure (e.g. HTTP 503).
    Response(Res),
}

impl<Res> Failure<Res> {
    /// The rejection, if an inner layer refused the call.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Failure::Error(e) => Rejection::from_box(e),
            Failure::Response(_) => None,
        }
    }

    /// The error, if the call failed with one.
    pub fn error(&self) -> Option<&BoxError> {
        match self {
            Failure::Error(e) => Some(e),
            Failure::Response(_) => None,
        }
    }

    /// The response, if the classifier called a response a failure.
    pub fn response(&self) -> Option<&Res> {
        match self {
            Failure::Error(_) => None,
            Failure::Response(r) => Some(r),
        }
    }

    /// What kind of failure it is, as reported in events.
    pub fn trigger(&self) -> Trigger {
        match self {
            Failure::Error(e) => match Rejection::from_box(e) {
                Some(r) => Trigger::Rejection(r.kind()),
                None => Trigger::Error,
            },
            Failure::Response(_) => Trigger::Response,
        }
    }

    /// The failure as the result the inner stack returned.
    pub fn into_result(self) -> Result<Res, BoxError> {
        match self {
            Failure::Error(e) => Err(e),
            Failure::Response(r) => Ok(r),
        }
    }
}

/// Reports a source's decisions to the fallback layer's observer, under its name.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub(super) name: Arc<str>,
    pub(super) observer: SharedObserver,
}

impl Reporter {
    pub(super) fn new(name: Arc<str>, observer: SharedObserver) -> Reporter {
        Reporter { name, observer }
    }

    /// The fallback layer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Send `event` to the layer's observer.
    pub fn emit(&self, event: &Event<'_>) {
        self.observer.emit(event)
    }
}

/// The answer of a source for a failure.
pub enum Recovered<Res> {
    /// Decided at once: an answer, or `Err(failure)` when the source has nothing (the
    /// original failure is then returned unchanged).
    Ready(Result<Res, Failure<Res>>),
    /// Decided later; an error is returned to the caller in place of the failure.
    Future(BoxFuture<'static, Result<Res, BoxError>>),
}

impl<Res> fmt::Debug for Recovered<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recovered::Ready(r) => f.debug_tuple("Ready").field(&r.is_ok()).finish(),
            Recovered::Future(_) => f.write_str("Future"),
        }
    }
}

/// What becomes of a successful response when the source keeps a copy.
pub enum Kept<Res> {
    /// The response, at once.
    Ready(Res),
    /// The response once its copy is taken (e.g. an HTTP body being buffered). An error
    /// (the body failed while being read) is returned to the caller.
    Future(BoxFuture<'static, Result<Res, BoxError>>),
}

impl<Res> fmt::Debug for Kept<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kept::Ready(_) => "Ready",
            Kept::Future(_) => "Future",
        })
    }
}

/// A source of fallback answers.
///
/// `prepare` runs before the request moves into the inner service (e.g. to read a key);
/// `recover` answers a failure; `on_success` sees every successful response (e.g. to keep
/// it as the last known good answer).
pub trait Source<Req, Res>: Clone + Send + Sync + 'static {
    /// Per-request data taken from the request.
    type Context: Send + 'static;

    /// The source's name in events (`"value"`, `"function"`, `"last_known_good"`).
    fn name(&self) -> &'static str;

    /// Read what the source needs from the request.
    fn prepare(&self, req: &Req, reporter: &Reporter) -> Self::Context;

    /// Answer for `failure`.
    fn recover(
        &self,
        cx: &Self::Context,
        failure: Failure<Res>,
        reporter: &Reporter,
    ) -> Recovered<Res>;

    /// See a successful response; return it (possibly rebuilt).
    fn on_success(&self, cx: Self::Context, res: Res, reporter: &Reporter) -> Kept<Res> {
        let _ = (cx, reporter);
        Kept::Ready(res)
    }

    /// The request's key, for events.
    fn key<'a>(&self, cx: &'a Self::Context) -> Option<&'a dyn fmt::Debug> {
        let _ = cx;
        None
    }
}

/// A fixed answer; see [`value`].
#[derive(Debug, Clone)]
pub struct Value<Res>(Res);

/// Answer every failure with a clone of `res`.
pub fn value<Res: Clone + Send + Sync + 'static>(res: Res) -> Value<Res> {
    Value(res)
}

impl<Req, Res> Source<Req, Res> for Value<Res>
where
    Res: Clone + Send + Sync + 'static,
{
    type Context = ();

    fn name(&self) -> &'static str {
        "value"
    }

    fn prepare(&self, _: &Req, _: &Reporter) {}

    fn recover(&self, _: &(), _: Failure<Res>, _: &Reporter) -> Recovered<Res> {
        Recovered::Ready(Ok(self.0.clone()))
    }
}

/// An answer computed from the failure; see [`from_fn`].
#[derive(Clone)]
pub struct FromFn<F>(F);

/// Answer a failure with `f(failure)`.
///
/// When `f` returns an error, that error goes to the caller in place of the failure and
/// [`Event::FallbackUnavailable`] is reported. `f` owns the failure, so to decline it can
/// give the original error back unchanged (`Failure::Error(e) => Err(e)`). A panic in `f`
/// propagates to the caller; the layer does not catch it.
///
/// ```
/// use tower_parapet::fallback::{self, Failure};
/// use tower_parapet::RejectionKind;
///
/// let source = fallback::from_fn(|failure: Failure<String>| -> Result<String, tower_parapet::BoxError> {
///     match failure.rejection() {
///         Some(r) if r.kind() == RejectionKind::Timeout => Ok("try again shortly".to_owned()),
///         _ => Ok("unavailable".to_owned()),
///     }
/// });
/// # let _ = source;
/// ```
pub fn from_fn<F>(f: F) -> FromFn<F> {
    FromFn(f)
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FromFn")
            .field(&std::any::type_name::<F>())
            .finish()
    }
}

impl<Req, Res, F> Source<Req, Res> for FromFn<F>
where
    F: Fn(Failure<Res>) -> Result<Res, BoxError> + Clone + Send + Sync + 'static,
{
    type Context = ();

    fn name(&self) -> &'static str {
        "function"
    }

    fn prepare(&self, _: &Req, _: &Reporter) {}

    fn recover(&self, _: &(), failure: Failure<Res>, _: &Reporter) -> Recovered<Res> {
        Recovered::Ready((self.0)(failure).map_err(Failure::Error))
    }
}

/// An answer computed asynchronously from the failure; see [`from_async_fn`].
#[derive(Clone)]
pub struct FromAsyncFn<F>(F);

/// Answer a failure with `f(failure).await` (e.g. read a secondary store).
///
/// As with [`from_fn`], an error of the future goes to the caller in place of the failure
/// ([`Event::FallbackUnavailable`]), and a panic in `f` or its future propagates. The
/// future is boxed: only calls that fail pay for it.
///
/// ```
/// use tower_parapet::fallback::{self, Failure};
/// use tower_parapet::BoxError;
///
/// let source = fallback::from_async_fn(|_failure: Failure<String>| async {
///     // e.g. read a replica
///     Ok::<_, BoxError>("from the replica".to_owned())
/// });
/// # let _ = source;
/// ```
pub fn from_async_fn<F>(f: F) -> FromAsyncFn<F> {
    FromAsyncFn(f)
}

impl<F> fmt::Debug for FromAsyncFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FromAsyncFn")
            .field(&std::any::type_name::<F>())
            .finish()
    }
}

impl<Req, Res, F, Fut> Source<Req, Res> for FromAsyncFn<F>
where
    F: Fn(Failure<Res>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Res, BoxError>> + Send + 'static,
{
    type Context = ();

    fn name(&self) -> &'static str {
        "async_function"
    }

    fn prepare(&self, _: &Req, _: &Reporter) {}

    fn recover(&self, _: &(), failure: Failure<Res>, _: &Reporter) -> Recovered<Res> {
        Recovered::Future(Box::pin((self.0)(failure)))
    }
}

/// Marks a fallback answer so nobody mistakes it for fresh data.
pub trait Mark<Res>: Clone + Send + Sync + 'static {
    /// Mark `res`, an answer from the source named `source`.
    fn mark(&self, res: &mut Res, source: &'static str);
}

impl<Res> Mark<Res> for () {
    #[inline]
    fn mark(&self, _: &mut Res, _: &'static str) {}
}

impl<Res, F> Mark<Res> for F
where
    F: Fn(&mut Res, &'static str) + Clone + Send + Sync + 'static,
{
    fn mark(&self, res: &mut Res, source: &'static str) {
        self(res, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RejectionKind;
    use std::time::Duration;

    fn reporter() -> Reporter {
        Reporter::new("test".into(), SharedObserver::new(()))
    }

    #[test]
    fn failure_reports_its_trigger_and_rejection() {
        let timeout: Failure<u8> =
            Failure::Error(Rejection::timeout(Duration::from_secs(1)).boxed());
        assert_eq!(
            timeout.rejection().map(Rejection::kind),
            Some(RejectionKind::Timeout)
        );
        assert_eq!(
            timeout.trigger(),
            Trigger::Rejection(RejectionKind::Timeout)
        );
        assert!(timeout.error().is_some() && timeout.response().is_none());

        let io: Failure<u8> = Failure::Error("io".into());
        assert!(io.rejection().is_none());
        assert_eq!(io.trigger(), Trigger::Error);
        assert_eq!(io.into_result().unwrap_err().to_string(), "io");

        let res = Failure::Response(5u8);
        assert!(res.rejection().is_none());
        assert_eq!(res.trigger(), Trigger::Response);
        assert_eq!(res.response(), Some(&5));
        assert_eq!(res.into_result().unwrap(), 5);
    }

    #[test]
    fn value_answers_with_a_clone() {
        let v = value(7u8);
        assert_eq!(Source::<(), u8>::name(&v), "value");
        match Source::<(), u8>::recover(&v, &(), Failure::Error("x".into()), &reporter()) {
            Recovered::Ready(Ok(7)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_function_can_answer_or_give_the_error_back() {
        let f = from_fn(|failure: Failure<u8>| match failure {
            Failure::Response(n) => Ok(n + 1),
            Failure::Error(e) => Err(e),
        });
        match Source::<(), u8>::recover(&f, &(), Failure::Response(1), &reporter()) {
            Recovered::Ready(Ok(2)) => {}
            other => panic!("unexpected {other:?}"),
        }
        match Source::<(), u8>::recover(&f, &(), Failure::Error("boom".into()), &reporter()) {
            Recovered::Ready(Err(Failure::Error(e))) => assert_eq!(e.to_string(), "boom"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_async_function_is_deferred() {
        let f = from_async_fn(|_: Failure<u8>| async { Ok::<_, BoxError>(9u8) });
        assert_eq!(Source::<(), u8>::name(&f), "async_function");
        match Source::<(), u8>::recover(&f, &(), Failure::Response(0), &reporter()) {
            Recovered::Future(fut) => assert_eq!(fut.await.unwrap(), 9),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn marks_unit_is_a_no_op_and_closures_mark() {
        let mut res = String::from("answer");
        Mark::mark(&(), &mut res, "value");
        assert_eq!(res, "answer");
        let tag = |r: &mut String, source: &'static str| r.push_str(&format!(" ({source})"));
        Mark::mark(&tag, &mut res, "value");
        assert_eq!(res, "answer (value)");
    }
}
