//! The connection every Redis-backed part shares: one multiplexed connection that
//! reconnects by itself, a bounded time per call, and an up/down state.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script, ToRedisArgs};

use crate::observe::{Event, Observer, SharedObserver};

/// Why a call to Redis did not give an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// Redis did not answer within the backend's per-call timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed or Redis answered with an error.
    #[error("redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something this crate did not write (another program uses the same
    /// keys, or a version mismatch).
    #[error("unexpected answer from redis: {0}")]
    Protocol(String),
}

/// Why a [`RedisBackend`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The URL is not a Redis URL.
    #[error("invalid redis url: {0}")]
    Url(#[source] redis::RedisError),
    /// The backend must be built inside a tokio runtime (it spawns its reconnecting task
    /// there).
    #[error("a redis backend must be built inside a tokio runtime")]
    NoRuntime,
}

/// A Redis backend's state, for health endpoints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BackendStatus {
    /// The backend's name.
    pub name: String,
    /// Whether its last call succeeded.
    pub up: bool,
    /// Calls failed in a row (0 while up).
    pub consecutive_failures: u64,
    /// Calls failed since it was built.
    pub failures_total: u64,
    /// The last error, as text.
    pub last_error: Option<String>,
}

/// A shared Redis connection for the `redis` feature's layers and stores.
///
/// - One multiplexed connection (`redis`'s `ConnectionManager`): every clone, layer and
///   store built on the backend shares it, and it reconnects by itself after Redis
///   restarts. Nothing connects until the first call, so an application starts while
///   Redis is down.
/// - Every call is bounded by [`timeout`](RedisBackendBuilder::timeout) (default 100 ms):
///   a slow or unreachable Redis costs a request at most that, then the calling layer
///   follows its [`FailurePolicy`](super::FailurePolicy).
/// - It tracks whether Redis answers: the first failed call emits
///   [`Event::BackendDown`], and once calls succeed again with no failure for a second
///   [`Event::BackendRecovered`] (a Redis failing some of its calls is one outage, not a
///   stream of events);
///   [`status`](RedisBackend::status) and the [health registry](crate::health) show it.
/// - Keys are prefixed with [`prefix`](RedisBackendBuilder::prefix) (default `parapet`),
///   so several applications can share one Redis.
///
/// Build it inside a tokio runtime:
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_parapet::redis::RedisBackend;
///
/// let backend = RedisBackend::builder("redis://127.0.0.1:6379/")
///     .name("shared")
///     .timeout(Duration::from_millis(50))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    client: redis::Client,
    conn: ConnectionManager,
    timeout: Duration,
    prefix: Arc<str>,
    observer: SharedObserver,
    up: AtomicBool,
    /// When the outage began, and when a call last failed (under one lock: transitions).
    down_since: std::sync::Mutex<Outage>,
    consecutive: AtomicU64,
    failures: AtomicU64,
    last_error: ArcSwapOption<String>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("name", &self.inner.name)
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisBackend`]; see [`RedisBackend::builder`].
#[derive(Debug, Clone)]
pub struct RedisBackendBuilder {
    url: String,
    name: Arc<str>,
    timeout: Duration,
    prefix: Arc<str>,
    observer: SharedObserver,
}

impl RedisBackendBuilder {
    /// The name in events, metrics and health (default `redis`).
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The most a call may take, connecting included (default 100 ms). Past it the call
    /// counts as failed and the calling layer follows its policy.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The prefix of every key and channel (default `parapet`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Where the backend's own events ([`Event::BackendDown`],
    /// [`Event::BackendRecovered`]) go (default: the default observer).
    #[must_use]
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = SharedObserver::new(observer);
        self
    }

    /// The backend. Connects on its first call, not here.
    pub fn build(self) -> Result<RedisBackend, SetupError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SetupError::NoRuntime);
        }
        let client = redis::Client::open(self.url.as_str()).map_err(SetupError::Url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(SetupError::Url)?;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                name: self.name,
                client,
                conn,
                timeout: self.timeout,
                prefix: self.prefix,
                observer: self.observer,
                up: AtomicBool::new(true),
                down_since: std::sync::Mutex::new(Outage::default()),
                consecutive: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                last_error: ArcSwapOption::empty(),
            }),
        })
    }
}

impl RedisBackend {
    /// A builder for a backend on `url` (`redis://host:port/db`, `redis://:password@host/`,
    /// `redis+unix:///path`).
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            name: "redis".into(),
            timeout: Duration::from_millis(100),
            prefix: "parapet".into(),
            observer: SharedObserver::default(),
        }
    }

    /// A backend on `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Result<RedisBackend, SetupError> {
        RedisBackend::builder(url).build()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether the last call succeeded.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// Its state, for health endpoints.
    pub fn status(&self) -> BackendStatus {
        BackendStatus {
            name: self.inner.name.to_string(),
            up: self.is_up(),
            consecutive_failures: self.inner.consecutive.load(Ordering::Relaxed),
            failures_total: self.inner.failures.load(Ordering::Relaxed),
            last_error: self.inner.last_error.load_full().map(|e| (*e).clone()),
        }
    }

    /// `prefix:part:part...`, the full name of a key or channel.
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut key = String::with_capacity(
            self.inner.prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
        );
        key.push_str(&self.inner.prefix);
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// Run `op` on the shared connection within the timeout, and keep the up/down state.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, BackendError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let conn = self.inner.conn.clone();
        let result = match tokio::time::timeout(self.inner.timeout, op(conn)).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Timeout(self.inner.timeout)),
        };
        // Every error counts: besides a broken connection or a timeout, a Redis that
        // answers `READONLY`, `LOADING`, `OOM`, `MASTERDOWN` or `NOAUTH` cannot serve the
        // layers either (the scripts themselves never answer an error).
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
        result
    }

    /// Run a Lua script (by hash; loaded on the first `NOSCRIPT`).
    pub(crate) async fn eval<T: FromRedisValue + Send>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Arg<'_>],
    ) -> Result<T, BackendError> {
        self.run(|mut conn| async move {
            let mut call = script.prepare_invoke();
            for key in keys {
                call.key(key.as_str());
            }
            for arg in args {
                match arg {
                    Arg::Int(n) => call.arg(*n),
                    Arg::Bytes(b) => call.arg(*b),
                };
            }
            Ok(call.invoke_async(&mut conn).await?)
        })
        .await
    }

    fn succeeded(&self) {
        self.inner.consecutive.store(0, Ordering::Relaxed);
        // The common case, up and staying up, takes no lock.
        if self.inner.up.load(Ordering::Acquire) {
            return;
        }
        // Transitions happen under the lock, so the outage's start always belongs to the
        // outage being ended; the event is emitted after it is released. Up again only
        // after a quiet second (no failed call): a Redis failing some calls is one outage,
        // not a stream of down/up events.
        let down_for = {
            let mut outage = self
                .inner
                .down_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if outage
                .last_failure
                .is_some_and(|at| at.elapsed() < RECOVERY_QUIET)
            {
                return;
            }
            if self.inner.up.swap(true, Ordering::AcqRel) {
                return;
            }
            outage.last_failure = None;
            outage.since.take().map_or(Duration::ZERO, |s| s.elapsed())
        };
        self.inner.observer.emit(&Event::BackendRecovered {
            name: &self.inner.name,
            backend: "redis",
            down_for,
        });
    }

    fn failed(&self, error: &BackendError) {
        self.inner.consecutive.fetch_add(1, Ordering::Relaxed);
        self.inner.failures.fetch_add(1, Ordering::Relaxed);
        let text = error.to_string();
        self.inner.last_error.store(Some(Arc::new(text.clone())));
        let went_down = {
            let mut outage = self
                .inner
                .down_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            outage.last_failure = Some(now);
            let was_up = self.inner.up.swap(false, Ordering::AcqRel);
            if was_up {
                outage.since = Some(now);
            }
            was_up
        };
        if went_down {
            self.inner.observer.emit(&Event::BackendDown {
                name: &self.inner.name,
                backend: "redis",
                error: &text,
            });
            self.probe_until_up();
        }
    }

    /// While down, `PING` every 500 ms on a task (when a runtime is there), so the state
    /// and health recover even when no request calls Redis (a replica taken out of
    /// rotation for a critical backend gets no traffic to find out). The task holds the
    /// backend weakly and ends when it is up again or dropped.
    fn probe_until_up(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(inner) = weak.upgrade() else { return };
                let backend = RedisBackend { inner };
                if backend.is_up() {
                    return;
                }
                let _ = backend
                    .run(|mut conn| async move {
                        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                        Ok(())
                    })
                    .await;
            }
        });
    }
}

/// How long calls must go without a failure before a down backend counts as up again.
const RECOVERY_QUIET: Duration = Duration::from_secs(1);

/// The current outage.
#[derive(Debug, Default)]
struct Outage {
    since: Option<std::time::Instant>,
    last_failure: Option<std::time::Instant>,
}

/// A script argument.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(i64),
    Bytes(&'a [u8]),
}

impl ToRedisArgs for Arg<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        match self {
            Arg::Int(n) => n.write_redis_args(out),
            Arg::Bytes(b) => b.write_redis_args(out),
        }
    }
}
