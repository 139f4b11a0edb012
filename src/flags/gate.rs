//! [`FeatureGateLayer`]: a flag decides, per request, whether the feature runs.

use std::fmt;
use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::context::{ContextExtractor, TargetingKey};
use super::eval::{self, ErrorCode, EvalContext, FlagDetails, Reason};
use super::model::{FlagValue, check_name};
use super::store::{FlagStore, Snapshot, SnapshotCache};
use crate::error::{BoxError, ConfigError, Rejection};
use crate::mode::{Mode, ModeHandle};
use crate::observe::{Event, Observer, SharedObserver};

/// What a gate does with a request whose flag is off; see [`Reject`], [`Respond`] and
/// [`Route`].
pub trait WhenOff<Req, Res>: Clone + Send + Sync + 'static {
    /// The answer's future.
    type Future: Future<Output = Result<Res, BoxError>>;

    /// Readiness of whatever answers (the alternate service); called with the feature's.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;

    /// Answer `req`, whose flag evaluated as `details`.
    fn call(&mut self, req: Req, details: &FlagDetails) -> Self::Future;

    /// What this does, for events.
    fn action(&self) -> GateAction;
}

/// What a gate does with a request whose flag is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GateAction {
    /// Refused with [`Rejection::FeatureDisabled`].
    Rejected,
    /// Answered with a configured response.
    Responded,
    /// Sent to the alternate service.
    Routed,
}

impl GateAction {
    /// `"rejected"`, `"responded"` or `"routed"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            GateAction::Rejected => "rejected",
            GateAction::Responded => "responded",
            GateAction::Routed => "routed",
        }
    }
}

/// Refuse with [`Rejection::FeatureDisabled`]: 404 through
/// [`RejectionResponseLayer`](crate::http::RejectionResponseLayer) (configurable there,
/// e.g. 403), gRPC `UNIMPLEMENTED`. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reject;

/// The future of [`Reject`]: the refusal, boxed already (a few words, where a ready
/// `Result<Res, _>` would carry a whole response's room inside every gate's future).
pub struct Refused<Res> {
    error: Option<BoxError>,
    _res: PhantomData<fn() -> Res>,
}

impl<Res> fmt::Debug for Refused<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("error", &self.error)
            .finish()
    }
}

impl<Res> Future for Refused<Res> {
    type Output = Result<Res, BoxError>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Err(self.error.take().unwrap_or_else(refused_again)))
    }
}

/// Polled again after it answered: a refusal again, rather than a panic (out of line: the
/// admitted path's code stays small).
#[cold]
#[inline(never)]
fn refused_again() -> BoxError {
    Rejection::feature_disabled(Arc::from("")).boxed()
}

impl<Req, Res> WhenOff<Req, Res> for Reject {
    type Future = Refused<Res>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req, details: &FlagDetails) -> Self::Future {
        Refused {
            error: Some(Rejection::feature_disabled(details.flag.clone()).boxed()),
            _res: PhantomData,
        }
    }

    fn action(&self) -> GateAction {
        GateAction::Rejected
    }
}

/// Answer with a response made by a closure `Fn(&FlagDetails) -> Res`; see
/// [`FeatureGateLayer::respond_with`].
#[derive(Clone, Copy)]
pub struct Respond<F>(F);

impl<F> fmt::Debug for Respond<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Respond")
            .field(&std::any::type_name::<F>())
            .finish()
    }
}

impl<Req, Res, F> WhenOff<Req, Res> for Respond<F>
where
    F: Fn(&FlagDetails) -> Res + Clone + Send + Sync + 'static,
{
    type Future = Ready<Result<Res, BoxError>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req, details: &FlagDetails) -> Self::Future {
        ready(Ok((self.0)(details)))
    }

    fn action(&self) -> GateAction {
        GateAction::Responded
    }
}

/// Send the request to another service (the old code path); see
/// [`FeatureGateLayer::route_to`].
#[derive(Debug, Clone)]
pub struct Route<S>(S);

impl<Req, Res, S> WhenOff<Req, Res> for Route<S>
where
    S: Service<Req, Response = Res> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
{
    type Future = MapErr<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req, _: &FlagDetails) -> Self::Future {
        MapErr {
            future: self.0.call(req),
        }
    }

    fn action(&self) -> GateAction {
        GateAction::Routed
    }
}

pin_project! {
    /// The alternate service's future, its error boxed.
    #[derive(Debug)]
    pub struct MapErr<F> {
        #[pin]
        future: F,
    }
}

impl<F, T, E> Future for MapErr<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx).map_err(Into::into)
    }
}

#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    flag: Arc<str>,
    slot: usize,
    store: FlagStore,
    default: bool,
    observer: SharedObserver,
    mode: ModeHandle,
    /// `parapet_flag_evaluations_total` per reason, registered at the first evaluation
    /// (so a recorder installed at startup, before traffic, is the one used).
    #[cfg(feature = "metrics")]
    evaluations: std::sync::OnceLock<[metrics::Counter; 6]>,
}

/// The feature gate's configuration, for config files.
///
/// ```
/// use tower_parapet::flags::{FeatureGateConfig, FlagStore};
///
/// let config: FeatureGateConfig = serde_json::from_str(
///     r#"{ "flag": "new-checkout", "mode": "shadow" }"#,
/// ).unwrap();
/// let layer = config.build(&FlagStore::new()).unwrap();
/// # let _ = layer;
/// let bad: FeatureGateConfig = serde_json::from_str(r#"{ "flag": "" }"#).unwrap();
/// assert_eq!(bad.build(&FlagStore::new()).unwrap_err().field(), "flag");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureGateConfig {
    /// The flag that guards the feature.
    pub flag: String,
    /// The name in events (default: the flag's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The answer when the flag cannot be evaluated (default `false`: the feature is off).
    #[serde(default)]
    pub default_value: bool,
    /// Enforce, shadow or off (default enforce).
    #[serde(default)]
    pub mode: Mode,
}

impl FeatureGateConfig {
    /// The layer, reading `store`, after checking every field.
    pub fn build(&self, store: &FlagStore) -> Result<FeatureGateLayer, ConfigError> {
        check_name(&self.flag)?;
        if self.name.as_deref() == Some("") {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        let mut layer = FeatureGateLayer::new(store, &self.flag)
            .default_value(self.default_value)
            .mode(self.mode);
        if let Some(name) = &self.name {
            layer = layer.name(name.as_str());
        }
        Ok(layer)
    }
}

/// Runs the inner service (the feature) only when a boolean flag is on for the request;
/// see the [module docs](super).
///
/// Off, the request is [rejected](Reject) (404), [answered](Self::respond_with) or
/// [routed](Self::route_to) elsewhere. A flag that cannot be evaluated (missing, not a
/// boolean, a rollout without a targeting key, a malformed context) answers
/// [`default_value`](Self::default_value) (`false` unless set) and is reported.
pub struct FeatureGateLayer<C = (), W = Reject> {
    shared: Arc<Shared>,
    context: C,
    when_off: W,
}

impl<C: Clone, W: Clone> Clone for FeatureGateLayer<C, W> {
    fn clone(&self) -> Self {
        FeatureGateLayer {
            shared: self.shared.clone(),
            context: self.context.clone(),
            when_off: self.when_off.clone(),
        }
    }
}

impl<C: fmt::Debug, W: fmt::Debug> fmt::Debug for FeatureGateLayer<C, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeatureGateLayer")
            .field("flag", &self.shared.flag)
            .field("name", &self.shared.name)
            .field("default", &self.shared.default)
            .field("mode", &self.shared.mode)
            .field("context", &self.context)
            .field("when_off", &self.when_off)
            .finish()
    }
}

impl FeatureGateLayer {
    /// A gate on the boolean flag `flag` of `store`: no context (targeting keys come with
    /// [`targeting_key`](Self::targeting_key)), [`Reject`] when off, default `false`,
    /// enforce mode, the tracing observer. The flag need not exist yet.
    pub fn new(store: &FlagStore, flag: &str) -> FeatureGateLayer {
        FeatureGateLayer {
            shared: Arc::new(Shared {
                name: flag.into(),
                flag: flag.into(),
                slot: store.slot(flag),
                store: store.clone(),
                default: false,
                observer: SharedObserver::default(),
                mode: ModeHandle::default(),
                #[cfg(feature = "metrics")]
                evaluations: std::sync::OnceLock::new(),
            }),
            context: (),
            when_off: Reject,
        }
    }
}

impl<C, W> FeatureGateLayer<C, W> {
    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        let s = &*self.shared;
        let mut shared = Shared {
            name: s.name.clone(),
            flag: s.flag.clone(),
            slot: s.slot,
            store: s.store.clone(),
            default: s.default,
            observer: s.observer.clone(),
            mode: s.mode.clone(),
            #[cfg(feature = "metrics")]
            evaluations: std::sync::OnceLock::new(),
        };
        f(&mut shared);
        self.shared = Arc::new(shared);
        self
    }

    /// The name in events (default: the flag's name).
    #[must_use]
    pub fn name(self, name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        self.edit(|s| s.name = name)
    }

    /// The value when the flag cannot be evaluated (default `false`: fail closed). `true`
    /// keeps an established feature running when its flag goes missing.
    #[must_use]
    pub fn default_value(self, on: bool) -> Self {
        self.edit(|s| s.default = on)
    }

    /// Enforce (default), shadow (evaluate and report, always run the feature) or off
    /// (always run the feature, evaluate nothing); a [`ModeHandle`] to switch it at runtime.
    #[must_use]
    pub fn mode(self, mode: impl Into<ModeHandle>) -> Self {
        let mode = mode.into();
        self.edit(|s| s.mode = mode)
    }

    /// Where events go (default: [`TracingObserver`](crate::observe::TracingObserver)).
    #[must_use]
    pub fn observer(self, observer: impl Observer) -> Self {
        let observer = SharedObserver::new(observer);
        self.edit(|s| s.observer = observer)
    }

    /// Build the evaluation context of each request with `context` (targeting key,
    /// attributes).
    #[must_use]
    pub fn context<C2>(self, context: C2) -> FeatureGateLayer<C2, W> {
        FeatureGateLayer {
            shared: self.shared,
            context,
            when_off: self.when_off,
        }
    }

    /// The targeting key (for allow/deny lists and rollouts) from a
    /// [`KeyExtractor`](crate::key::KeyExtractor), e.g. a
    /// [`Header`](crate::key::Header) with the user's id. Shorthand for
    /// `.context(TargetingKey(key))`.
    #[must_use]
    pub fn targeting_key<K>(self, key: K) -> FeatureGateLayer<TargetingKey<K>, W> {
        self.context(TargetingKey(key))
    }

    /// When the flag is off, answer with `f(&details)` instead of running the feature.
    #[must_use]
    pub fn respond_with<F>(self, f: F) -> FeatureGateLayer<C, Respond<F>> {
        self.when_off(Respond(f))
    }

    /// When the flag is off, send the request to `service` (the old code path). The gate
    /// is ready when both services are.
    #[must_use]
    pub fn route_to<S>(self, service: S) -> FeatureGateLayer<C, Route<S>> {
        self.when_off(Route(service))
    }

    /// When the flag is off, do what `when_off` says.
    #[must_use]
    pub fn when_off<W2>(self, when_off: W2) -> FeatureGateLayer<C, W2> {
        FeatureGateLayer {
            shared: self.shared,
            context: self.context,
            when_off,
        }
    }

    /// The handle that switches this gate's mode at runtime.
    pub fn mode_handle(&self) -> ModeHandle {
        self.shared.mode.clone()
    }

    /// The flag's name.
    pub fn flag(&self) -> &str {
        &self.shared.flag
    }
}

#[cfg(feature = "http")]
impl<C> FeatureGateLayer<C, Reject> {
    /// When the flag is off, answer `status` (e.g. 403) with an
    /// `application/problem+json` body, whatever the edge adapter's status table says.
    #[must_use]
    pub fn status<B>(
        self,
        status: http::StatusCode,
    ) -> FeatureGateLayer<C, Respond<impl Fn(&FlagDetails) -> http::Response<B> + Clone>>
    where
        B: From<bytes::Bytes>,
    {
        self.respond_with(move |d: &FlagDetails| {
            let rejection = Rejection::feature_disabled(d.flag.clone());
            crate::http::answer_with_status(&rejection, status).map(B::from)
        })
    }
}

impl<S, C: Clone, W: Clone> Layer<S> for FeatureGateLayer<C, W> {
    type Service = FeatureGate<S, C, W>;

    fn layer(&self, inner: S) -> Self::Service {
        FeatureGate {
            inner,
            snapshot: self.shared.store.cache(),
            shared: self.shared.clone(),
            context: self.context.clone(),
            when_off: self.when_off.clone(),
        }
    }
}

/// The service of [`FeatureGateLayer`].
pub struct FeatureGate<S, C = (), W = Reject> {
    inner: S,
    /// This service's view of the flags: one atomic load per request while nothing
    /// changes.
    snapshot: SnapshotCache,
    shared: Arc<Shared>,
    context: C,
    when_off: W,
}

impl<S: Clone, C: Clone, W: Clone> Clone for FeatureGate<S, C, W> {
    fn clone(&self) -> Self {
        FeatureGate {
            inner: self.inner.clone(),
            snapshot: self.snapshot.clone(),
            shared: self.shared.clone(),
            context: self.context.clone(),
            when_off: self.when_off.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, W: fmt::Debug> fmt::Debug for FeatureGate<S, C, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeatureGate")
            .field("inner", &self.inner)
            .field("flag", &self.shared.flag)
            .field("context", &self.context)
            .field("when_off", &self.when_off)
            .finish()
    }
}

impl<S, C, W> FeatureGate<S, C, W> {
    /// The inner service (the feature).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the gate.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl Shared {
    /// `Ok(())` when the feature runs, `Err(details)` when it is off. The common case
    /// (a flag that is on) takes no lock and allocates nothing.
    #[inline]
    fn decide(&self, snapshot: &Snapshot, ctx: &EvalContext) -> Result<(), FlagDetails> {
        let flag = snapshot.slots.get(self.slot).and_then(|f| f.as_deref());
        if let Some(flag) = flag
            && let Ok((i, reason)) = eval::resolve(flag, ctx)
        {
            self.count(reason);
            let variant = &flag.variants[i];
            return match variant.value {
                FlagValue::Bool(true) => Ok(()),
                FlagValue::Bool(false) => Err(FlagDetails {
                    flag: self.flag.clone(),
                    value: variant.value.clone(),
                    variant: Some(variant.name.clone()),
                    reason,
                    error_code: None,
                }),
                FlagValue::String(_) => self.failed(ErrorCode::TypeMismatch),
            };
        }
        let code = match flag {
            None => ErrorCode::FlagNotFound,
            Some(flag) => eval::resolve(flag, ctx)
                .err()
                .unwrap_or(ErrorCode::TypeMismatch),
        };
        self.failed(code)
    }

    /// Count one evaluation by its reason (feature `metrics`).
    #[inline]
    fn count(&self, reason: Reason) {
        #[cfg(feature = "metrics")]
        {
            let counters = self.evaluations.get_or_init(|| {
                [
                    Reason::Static,
                    Reason::TargetingMatch,
                    Reason::Split,
                    Reason::Disabled,
                    Reason::Default,
                    Reason::Error,
                ]
                .map(|r| {
                    metrics::counter!(
                        "parapet_flag_evaluations_total",
                        "name" => self.name.to_string(),
                        "flag" => self.flag.to_string(),
                        "reason" => r.as_str(),
                    )
                })
            });
            let i = match reason {
                Reason::Static => 0,
                Reason::TargetingMatch => 1,
                Reason::Split => 2,
                Reason::Disabled => 3,
                Reason::Default => 4,
                Reason::Error => 5,
            };
            counters[i].increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = reason;
    }

    #[cold]
    fn failed(&self, error: ErrorCode) -> Result<(), FlagDetails> {
        self.count(Reason::Error);
        self.observer.emit(&Event::FlagEvaluationFailed {
            name: &self.name,
            flag: &self.flag,
            error,
        });
        if self.default {
            Ok(())
        } else {
            Err(FlagDetails::error(
                self.flag.clone(),
                FlagValue::Bool(false),
                error,
            ))
        }
    }
}

impl<S, C, W, Req> Service<Req> for FeatureGate<S, C, W>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: ContextExtractor<Req>,
    W: WhenOff<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, W::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.when_off.poll_ready(cx),
            other => other.map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let mode = self.shared.mode.get();
        if mode == Mode::Off {
            return ResponseFuture::feature(self.inner.call(req));
        }
        let mut ctx = EvalContext::new();
        self.context.fill(&req, &mut ctx);
        let details = match self.shared.decide(self.snapshot.load(), &ctx) {
            Ok(()) => return ResponseFuture::feature(self.inner.call(req)),
            Err(details) => details,
        };
        let shadow = mode == Mode::Shadow;
        self.shared.observer.emit(&Event::FeatureGated {
            name: &self.shared.name,
            flag: &self.shared.flag,
            variant: details.variant.as_deref(),
            reason: details.reason,
            action: WhenOff::<Req, S::Response>::action(&self.when_off),
            shadow,
        });
        if shadow {
            ResponseFuture::feature(self.inner.call(req))
        } else {
            ResponseFuture::off(self.when_off.call(req, &details))
        }
    }
}

pin_project! {
    /// The future of [`FeatureGate`]: the feature's, or the answer for a flag that is off.
    #[derive(Debug)]
    pub struct ResponseFuture<F, G> {
        #[pin]
        kind: Kind<F, G>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, G> {
        Feature { #[pin] future: F },
        Off { #[pin] future: G },
    }
}

impl<F, G> ResponseFuture<F, G> {
    fn feature(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Feature { future },
        }
    }

    fn off(future: G) -> Self {
        ResponseFuture {
            kind: Kind::Off { future },
        }
    }
}

impl<F, G, T, E> Future for ResponseFuture<F, G>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    G: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Feature { future } => future.poll(cx).map_err(Into::into),
            KindProj::Off { future } => future.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_refusal_polled_again_refuses_again_rather_than_panicking() {
        let details = FlagDetails {
            flag: Arc::from("beta"),
            value: FlagValue::Bool(false),
            variant: None,
            reason: Reason::Disabled,
            error_code: None,
        };
        let mut refused: Refused<u8> = WhenOff::<(), u8>::call(&mut Reject, (), &details);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let first = Pin::new(&mut refused).poll(&mut cx);
        let Poll::Ready(Err(e)) = first else {
            panic!("refused at once")
        };
        let rejection = e.downcast_ref::<Rejection>().unwrap();
        assert_eq!(
            rejection.kind(),
            crate::error::RejectionKind::FeatureDisabled
        );
        assert!(e.to_string().contains("beta"), "{e}");
        assert!(matches!(
            Pin::new(&mut refused).poll(&mut cx),
            Poll::Ready(Err(_))
        ));
        assert!(
            std::mem::size_of::<Refused<[u8; 256]>>() <= 16,
            "the refusal does not carry the response's room"
        );
        let _ = refused.now_or_never();
    }
}
