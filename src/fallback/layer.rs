//! The fallback layer and its service.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::source::{Mark, Reporter, Source, Value};
use crate::classify::{Classifier, ErrorsAsFailures};
use crate::error::BoxError;
use crate::observe::{Observer, SharedObserver};

/// Answers failed calls from a [`Source`]; see the [module docs](super).
#[derive(Clone)]
pub struct FallbackLayer<Src, C = ErrorsAsFailures, M = ()> {
    source: Src,
    classifier: C,
    mark: M,
    name: Arc<str>,
    observer: SharedObserver,
}

impl<Src: fmt::Debug, C: fmt::Debug, M> fmt::Debug for FallbackLayer<Src, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("source", &self.source)
            .field("classifier", &self.classifier)
            .field("name", &self.name)
            .finish()
    }
}

impl<Src> FallbackLayer<Src> {
    /// Answer every error (rejections included) from `source`.
    pub fn new(source: Src) -> FallbackLayer<Src> {
        FallbackLayer {
            source,
            classifier: ErrorsAsFailures,
            mark: (),
            name: "fallback".into(),
            observer: SharedObserver::default(),
        }
    }
}

impl<Res: Clone + Send + Sync + 'static> FallbackLayer<Value<Res>> {
    /// Answer every error with a clone of `res`: shorthand for
    /// `FallbackLayer::new(fallback::value(res))`.
    pub fn value(res: Res) -> FallbackLayer<Value<Res>> {
        FallbackLayer::new(super::value(res))
    }
}

impl<Src, C, M> FallbackLayer<Src, C, M> {
    /// What counts as a failure to answer for: e.g.
    /// [`RejectionsAsFailures::only`](crate::classify::RejectionsAsFailures::only) for some
    /// rejection kinds, or [`ServerErrorsAsFailures`](crate::classify::ServerErrorsAsFailures)
    /// to answer for HTTP 5xx responses too.
    #[must_use]
    pub fn classifier<C2>(self, classifier: C2) -> FallbackLayer<Src, C2, M> {
        FallbackLayer {
            source: self.source,
            classifier,
            mark: self.mark,
            name: self.name,
            observer: self.observer,
        }
    }

    /// Mark fallback answers, e.g. with [`HeaderMark`](super::HeaderMark) or a closure
    /// `Fn(&mut Res, &'static str)`.
    #[must_use]
    pub fn mark<M2>(self, mark: M2) -> FallbackLayer<Src, C, M2> {
        FallbackLayer {
            source: self.source,
            classifier: self.classifier,
            mark,
            name: self.name,
            observer: self.observer,
        }
    }

    /// The name in this layer's events (default `"fallback"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Where this layer's events go (default:
    /// [`TracingObserver`](crate::observe::TracingObserver)).
    #[must_use]
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = SharedObserver::new(observer);
        self
    }

    /// The source, e.g. to [`clear`](super::LastKnownGood::clear) a last-known-good store.
    pub fn source(&self) -> &Src {
        &self.source
    }
}

pub(super) struct Shared<Src, C, M> {
    pub(super) source: Src,
    pub(super) classifier: C,
    pub(super) mark: M,
    pub(super) reporter: Reporter,
}

impl<S, Src: Clone, C: Clone, M: Clone> Layer<S> for FallbackLayer<Src, C, M> {
    type Service = Fallback<S, Src, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            shared: Arc::new(Shared {
                source: self.source.clone(),
                classifier: self.classifier.clone(),
                mark: self.mark.clone(),
                reporter: Reporter::new(self.name.clone(), self.observer.clone()),
            }),
        }
    }
}

/// The service of [`FallbackLayer`].
pub struct Fallback<S, Src, C = ErrorsAsFailures, M = ()> {
    inner: S,
    shared: Arc<Shared<Src, C, M>>,
}

impl<S: Clone, Src, C, M> Clone for Fallback<S, Src, C, M> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, Src: fmt::Debug, C, M> fmt::Debug for Fallback<S, Src, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("source", &self.shared.source)
            .finish()
    }
}

impl<S, Src, C, M> Fallback<S, Src, C, M> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the fallback.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Src, C, M, Req> Service<Req> for Fallback<S, Src, C, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    Src: Source<Req, S::Response>,
    C: Classifier<S::Response>,
    M: Mark<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response, Src::Context, Req, Src, C, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let cx = self.shared.source.prepare(&req, &self.shared.reporter);
        ResponseFuture::new(self.inner.call(req), cx, self.shared.clone())
    }
}

pub(super) type Marker<Req> = PhantomData<fn(Req)>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fallback::{LastKnownGood, value};

    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}

    #[test]
    fn layers_and_services_are_send_sync_clone() {
        assert_send_sync_clone::<FallbackLayer<super::super::Value<String>>>();
        assert_send_sync_clone::<FallbackLayer<LastKnownGood>>();
        assert_send_sync_clone::<
            Fallback<tower::util::BoxCloneSyncService<u8, String, BoxError>, LastKnownGood>,
        >();
    }

    #[test]
    fn clones_share_state_and_accessors_reach_the_inner_service() {
        let layer = FallbackLayer::value(1u8).name("answers");
        let a = layer.layer(());
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.shared, &b.shared), "clones share state");
        assert_eq!(a.shared.reporter.name(), "answers");
        assert_eq!(*a.get_ref(), ());
        let _: () = b.into_inner();
        let layer = FallbackLayer::new(value(1u8));
        assert_eq!(format!("{:?}", layer.source()), "Value(1)");
    }
}
