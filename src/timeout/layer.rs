//! The timeout layer, its service and its configuration.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::deadline::{Deadline, DeadlineSource, NoDeadline, instant_after};
use super::future::ResponseFuture;
use crate::error::BoxError;
use crate::mode::{Mode, ModeHandle};
use crate::observe::{Event, Observer, SharedObserver};

/// How long a request may take: a fixed [`Duration`], or a closure `Fn(&Req) -> Duration`
/// (see [`TimeoutLayer::per_request`]).
pub trait RequestTimeout<Req>: Clone + Send + Sync + 'static {
    /// The timeout for `req`.
    fn timeout(&self, req: &Req) -> Duration;
}

impl<Req> RequestTimeout<Req> for Duration {
    #[inline]
    fn timeout(&self, _: &Req) -> Duration {
        *self
    }
}

impl<Req, F> RequestTimeout<Req> for F
where
    F: Fn(&Req) -> Duration + Clone + Send + Sync + 'static,
{
    fn timeout(&self, req: &Req) -> Duration {
        self(req)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub(super) name: Arc<str>,
    pub(super) observer: SharedObserver,
    pub(super) mode: ModeHandle,
}

/// Applies a deadline to every call; see the [module docs](super).
#[derive(Clone)]
pub struct TimeoutLayer<T = Duration, D = NoDeadline> {
    timeout: T,
    deadline: D,
    shared: Arc<Shared>,
}

impl<T, D: fmt::Debug> fmt::Debug for TimeoutLayer<T, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutLayer")
            .field("timeout", &std::any::type_name::<T>())
            .field("deadline", &self.deadline)
            .field("name", &self.shared.name)
            .field("mode", &self.shared.mode)
            .finish()
    }
}

impl TimeoutLayer {
    /// Every call gets `timeout` (or less, if the caller's deadline is shorter and a
    /// [`deadline`](TimeoutLayer::deadline) source is set).
    pub fn new(timeout: Duration) -> TimeoutLayer {
        TimeoutLayer::per_request(timeout)
    }
}

impl<T> TimeoutLayer<T> {
    /// The timeout of each call from `timeout` — a [`Duration`] or a closure
    /// `Fn(&Req) -> Duration` (e.g. longer for uploads). The caller's deadline, when a
    /// [`deadline`](TimeoutLayer::deadline) source is set, can still shorten it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
    /// use tower_parapet::timeout::TimeoutLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_parapet::BoxError> {
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(TimeoutLayer::per_request(|path: &&str| {
    ///         if path.starts_with("/upload") {
    ///             Duration::from_secs(60)
    ///         } else {
    ///             Duration::from_secs(2)
    ///         }
    ///     }))
    ///     .service(service_fn(|_path: &str| async {
    ///         tokio::time::sleep(Duration::from_secs(10)).await;
    ///         Ok::<_, std::convert::Infallible>("stored")
    ///     }));
    ///
    /// assert_eq!(svc.ready().await?.call("/upload/video").await?, "stored");
    /// assert!(svc.ready().await?.call("/search").await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn per_request(timeout: T) -> TimeoutLayer<T> {
        TimeoutLayer {
            timeout,
            deadline: NoDeadline,
            shared: Arc::new(Shared {
                name: "timeout".into(),
                observer: SharedObserver::default(),
                mode: ModeHandle::default(),
            }),
        }
    }
}

impl<T, D> TimeoutLayer<T, D> {
    /// Read the caller's deadline with `deadline` (e.g. [`HttpDeadline`](super::HttpDeadline))
    /// and record the deadline in force on each request.
    #[must_use]
    pub fn deadline<D2>(self, deadline: D2) -> TimeoutLayer<T, D2> {
        TimeoutLayer {
            timeout: self.timeout,
            deadline,
            shared: self.shared,
        }
    }

    /// The name in this layer's events (default `"timeout"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        Arc::make_mut(&mut self.shared).name = name.into();
        self
    }

    /// Where this layer's events go (default: [`TracingObserver`](crate::observe::TracingObserver)).
    #[must_use]
    pub fn observer(mut self, observer: impl Observer) -> Self {
        Arc::make_mut(&mut self.shared).observer = SharedObserver::new(observer);
        self
    }

    /// Start in `mode`, or share a [`ModeHandle`] to switch it at runtime.
    #[must_use]
    pub fn mode(mut self, mode: impl Into<ModeHandle>) -> Self {
        Arc::make_mut(&mut self.shared).mode = mode.into();
        self
    }

    /// The handle that switches this layer's mode at runtime, for every service it built.
    pub fn mode_handle(&self) -> ModeHandle {
        self.shared.mode.clone()
    }
}

impl<S, T: Clone, D: Clone> Layer<S> for TimeoutLayer<T, D> {
    type Service = Timeout<S, T, D>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout.clone(),
            deadline: self.deadline.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Clone)]
pub struct Timeout<S, T = Duration, D = NoDeadline> {
    inner: S,
    timeout: T,
    deadline: D,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug, T, D: fmt::Debug> fmt::Debug for Timeout<S, T, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("deadline", &self.deadline)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, T, D> Timeout<S, T, D> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the timeout.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The handle that switches the mode at runtime.
    pub fn mode_handle(&self) -> ModeHandle {
        self.shared.mode.clone()
    }
}

impl<S, T, D, Req> Service<Req> for Timeout<S, T, D>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    T: RequestTimeout<Req>,
    D: DeadlineSource<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let mode = self.shared.mode.get();
        if mode == Mode::Off {
            return ResponseFuture::passthrough(self.inner.call(req));
        }
        let configured = self.timeout.timeout(&req);
        let caller = self.deadline.read(&req);
        let shared = &self.shared;
        if let Some(header) = caller.malformed {
            shared.observer.emit(&Event::DeadlineMalformed {
                name: &shared.name,
                header,
            });
        }
        let mut after = configured;
        if let Some(budget) = caller.budget
            && budget < configured
        {
            after = budget;
            shared.observer.emit(&Event::DeadlineShortened {
                name: &shared.name,
                configured,
                caller: budget,
            });
        }
        let at = instant_after(Instant::now(), after);
        let shadow = mode == Mode::Shadow;
        if !shadow {
            // A shadow deadline is only watched: recording it would let inner layers (or
            // the next hop) enforce it.
            self.deadline.record(&mut req, Deadline::new(at));
        }
        if after.is_zero() {
            // Nothing is left of the deadline: the call cannot finish in time.
            shared.observer.emit(&Event::TimedOut {
                name: &shared.name,
                after,
                shadow,
            });
            if !shadow {
                return ResponseFuture::expired(after);
            }
            return ResponseFuture::passthrough(self.inner.call(req));
        }
        ResponseFuture::timed(self.inner.call(req), at, after, shadow, self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters_copy_on_write_but_keep_the_mode_shared() {
        let base = TimeoutLayer::new(Duration::from_secs(1)).mode(Mode::Shadow);
        let renamed = base.clone().name("db");
        assert_eq!(&*base.shared.name, "timeout");
        assert_eq!(&*renamed.shared.name, "db");
        renamed.mode_handle().set(Mode::Off);
        assert_eq!(base.mode_handle().get(), Mode::Off, "one mode for both");

        let debug = format!("{renamed:?}");
        assert!(debug.contains("\"db\"") && debug.contains("Off"), "{debug}");
    }

    #[test]
    fn durations_and_closures_are_request_timeouts() {
        fn timeout_of<Req>(t: &impl RequestTimeout<Req>, req: &Req) -> Duration {
            t.timeout(req)
        }
        assert_eq!(
            timeout_of(&Duration::from_secs(3), &()),
            Duration::from_secs(3)
        );
        let by_size = |n: &u64| Duration::from_millis(*n);
        assert_eq!(timeout_of(&by_size, &250), Duration::from_millis(250));
    }
}
