//! The layer, its builder, its service and its handle.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::config::BulkheadConfig;
use super::future::ResponseFuture;
use super::state::{Permit, Shared};
use crate::error::{BoxError, ConfigError, Rejection};
use crate::mode::{Mode, ModeHandle};
use crate::observe::{Event, Observer, SharedObserver};

/// Builds a [`BulkheadLayer`]; start with [`BulkheadLayer::builder`].
#[derive(Debug, Clone)]
pub struct BulkheadBuilder {
    config: BulkheadConfig,
    observer: SharedObserver,
    mode: Option<ModeHandle>,
}

impl BulkheadBuilder {
    pub(super) fn from_config(config: BulkheadConfig) -> BulkheadBuilder {
        BulkheadBuilder {
            config,
            observer: SharedObserver::default(),
            mode: None,
        }
    }

    /// The name in events (default `"bulkhead"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Calls allowed in flight at once (default 64, at least 1).
    #[must_use]
    pub fn max_concurrent(mut self, max: u32) -> Self {
        self.config.max_concurrent = max;
        self
    }

    /// Let a call over the limit wait up to `max` for a slot (default: refuse at once).
    #[must_use]
    pub fn max_wait(mut self, max: Duration) -> Self {
        self.config.max_wait = Some(max);
        self
    }

    /// The `Retry-After` hint given with a refusal (default none).
    #[must_use]
    pub fn retry_after(mut self, hint: Duration) -> Self {
        self.config.retry_after = Some(hint);
        self
    }

    /// Start in `mode`, or share a [`ModeHandle`]: [`Mode::Shadow`] counts calls and
    /// reports "would have rejected" but lets every call through at once; [`Mode::Off`] is
    /// a pass-through.
    #[must_use]
    pub fn mode(mut self, mode: impl Into<ModeHandle>) -> Self {
        self.mode = Some(mode.into());
        self
    }

    /// Where events go (default [`TracingObserver`](crate::observe::TracingObserver)).
    #[must_use]
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = SharedObserver::new(observer);
        self
    }

    /// The layer, after checking every setting.
    pub fn build(self) -> Result<BulkheadLayer, ConfigError> {
        self.config.check()?;
        let c = &self.config;
        Ok(BulkheadLayer {
            shared: Arc::new(Shared::new(
                c.name.as_str().into(),
                c.max_concurrent,
                c.max_wait,
                c.retry_after,
                self.observer,
            )),
            mode: self.mode.unwrap_or_else(|| ModeHandle::new(c.mode)),
        })
    }
}

/// Limits the calls in flight through every service it builds; see the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    shared: Arc<Shared>,
    mode: ModeHandle,
}

impl BulkheadLayer {
    /// A builder with the defaults of [`BulkheadConfig`]: 64 calls, refuse at once.
    pub fn builder() -> BulkheadBuilder {
        BulkheadBuilder::from_config(BulkheadConfig::default())
    }

    /// The handle that reads the bulkhead and changes its limit.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle(self.shared.clone())
    }

    /// The handle that switches this layer's mode at runtime.
    pub fn mode_handle(&self) -> ModeHandle {
        self.mode.clone()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}

/// The service of [`BulkheadLayer`]. Clones share the limit.
#[derive(Debug, Clone)]
pub struct Bulkhead<S> {
    inner: S,
    shared: Arc<Shared>,
    mode: ModeHandle,
}

impl<S> Bulkhead<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the bulkhead.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let mode = self.mode.get();
        if mode == Mode::Off {
            return ResponseFuture::running(self.inner.call(req), Permit::none());
        }
        if let Some(permit) = self.shared.try_acquire() {
            // The permit exists before the inner call, so a panic in `call` releases it.
            return ResponseFuture::running(self.inner.call(req), permit);
        }
        let shared = &self.shared;
        match (mode, shared.max_wait) {
            (Mode::Enforce, Some(max)) => {
                // Wait with the service that the caller made ready; leave a clone behind.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(Box::pin(shared.clone().wait(max)), ready, req)
            }
            _ => {
                let shadow = mode == Mode::Shadow;
                shared.observer.emit(&Event::BulkheadRejected {
                    name: &shared.name,
                    limit: shared.limit(),
                    waited: Duration::ZERO,
                    shadow,
                });
                if shadow {
                    ResponseFuture::running(self.inner.call(req), Permit::none())
                } else {
                    ResponseFuture::rejected(Rejection::overloaded(shared.retry_after))
                }
            }
        }
    }
}

/// Reads a bulkhead and changes its limit at runtime. Clones control the same bulkhead.
#[derive(Debug, Clone)]
pub struct BulkheadHandle(Arc<Shared>);

impl BulkheadHandle {
    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The limit in force.
    pub fn limit(&self) -> u32 {
        self.0.limit()
    }

    /// Calls holding a slot now (may exceed the limit for a while after it was lowered).
    pub fn in_flight(&self) -> u32 {
        self.0.in_flight()
    }

    /// Calls waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.0.waiting()
    }

    /// Change the limit; returns the previous one. Raising it admits waiting calls at
    /// once. Lowering it never cancels a call: calls in flight finish, and new calls are
    /// admitted again once fewer than `limit` are in flight. `0` refuses every new call
    /// (a drain switch).
    pub fn set_limit(&self, limit: u32) -> u32 {
        self.0.set_limit(limit)
    }
}
