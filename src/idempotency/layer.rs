//! The layer, its service and its future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use tower_layer::Layer;
use tower_service::Service;

use super::key::IdempotencyKeyHeader;
use super::store::{
    Claim, ClaimToken, Fingerprint, IdempotencyStore, MemoryStore, Record, RecordKey,
    StoredResponse,
};
use crate::clock::Clock;
use crate::config::FailurePolicy;
use crate::error::{BoxError, Rejection};
use crate::http::BufferedBody;
use crate::http::buffered::{Read, read_capped};
use crate::key::{Global, KeyError, KeyExtractor};
use crate::mode::{Mode, ModeHandle};
use crate::observe::{Event, Observer, SharedObserver};

/// What a retry that arrives while the first request still runs gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Conflict {
    /// `409 Conflict` at once (gRPC `ABORTED`), as the IETF draft and Stripe answer.
    Reject,
    /// Wait up to this long for the first request's outcome and replay it (a
    /// double-clicked button gets the one answer twice); `409` if it takes longer. If the
    /// first request fails without a stored answer, one waiter runs the request itself.
    Wait(#[serde(with = "crate::config::duration")] Duration),
}

/// Which responses are stored: a predicate on the status.
pub type StorePredicate = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;

pub(super) struct Settings {
    pub(super) name: Arc<str>,
    pub(super) methods: Vec<Method>,
    pub(super) required: bool,
    pub(super) conflict: Conflict,
    pub(super) lease: Duration,
    pub(super) retention: Duration,
    pub(super) max_request_bytes: u64,
    pub(super) max_response_bytes: u64,
    pub(super) fingerprint_headers: Vec<HeaderName>,
    pub(super) store_if: Option<StorePredicate>,
    pub(super) store: Arc<dyn IdempotencyStore>,
    pub(super) on_store_error: FailurePolicy,
    pub(super) observer: SharedObserver,
    pub(super) mode: ModeHandle,
    pub(super) clock: Clock,
}

impl Clone for Settings {
    fn clone(&self) -> Self {
        Settings {
            name: self.name.clone(),
            methods: self.methods.clone(),
            required: self.required,
            conflict: self.conflict,
            lease: self.lease,
            retention: self.retention,
            max_request_bytes: self.max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            fingerprint_headers: self.fingerprint_headers.clone(),
            store_if: self.store_if.clone(),
            store: self.store.clone(),
            on_store_error: self.on_store_error,
            observer: self.observer.clone(),
            mode: self.mode.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("methods", &self.methods)
            .field("required", &self.required)
            .field("conflict", &self.conflict)
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Settings {
    fn should_store(&self, status: StatusCode) -> bool {
        self.store_if.as_ref().is_none_or(|f| f(status))
    }

    fn rejected(&self, key: Option<&str>, rejection: Rejection, shadow: bool) -> Rejection {
        self.observer.emit(&Event::IdempotencyRejected {
            name: &self.name,
            key,
            kind: rejection.kind(),
            shadow,
        });
        rejection
    }
}

/// Makes retries of a request with the same `Idempotency-Key` safe; see the
/// [module docs](super).
#[derive(Clone)]
pub struct IdempotencyLayer<K = IdempotencyKeyHeader, P = Global, M = Http> {
    key: K,
    principal: P,
    medium: M,
    settings: Arc<Settings>,
}

/// The layer's medium: HTTP requests and responses (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Http;

impl<K: fmt::Debug, P: fmt::Debug, M> fmt::Debug for IdempotencyLayer<K, P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("key", &self.key)
            .field("principal", &self.principal)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Default for IdempotencyLayer {
    fn default() -> Self {
        IdempotencyLayer::new()
    }
}

impl IdempotencyLayer {
    /// The defaults: key from `Idempotency-Key` (optional), POST and PATCH, no principal,
    /// `409` for a retry while the first runs, a 60 s lease, records kept 24 h, request and
    /// response bodies up to 1 MiB, every response of the handler stored, an in-process
    /// [`MemoryStore`].
    pub fn new() -> IdempotencyLayer {
        IdempotencyLayer {
            key: IdempotencyKeyHeader::default(),
            principal: Global,
            medium: Http,
            settings: Arc::new(Settings {
                name: "idempotency".into(),
                methods: vec![Method::POST, Method::PATCH],
                required: false,
                conflict: Conflict::Reject,
                lease: Duration::from_secs(60),
                retention: Duration::from_secs(24 * 3600),
                max_request_bytes: 1 << 20,
                max_response_bytes: 1 << 20,
                fingerprint_headers: Vec::new(),
                store_if: None,
                store: Arc::new(MemoryStore::default()),
                on_store_error: FailurePolicy::FailClosed,
                observer: SharedObserver::default(),
                mode: ModeHandle::default(),
                clock: Clock::tokio(),
            }),
        }
    }
}

impl<K, P, M> IdempotencyLayer<K, P, M> {
    fn settings(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }

    /// Read the key with `key` instead of the `Idempotency-Key` header: another header
    /// ([`IdempotencyKeyHeader::new`]), gRPC metadata, or any
    /// [`KeyExtractor`] whose key is a `String`.
    #[must_use]
    pub fn key<K2>(self, key: K2) -> IdempotencyLayer<K2, P, M> {
        IdempotencyLayer {
            key,
            principal: self.principal,
            medium: self.medium,
            settings: self.settings,
        }
    }

    /// Scope records by who asks (user, tenant, API key): one principal can never replay
    /// another's response with the same key. A request whose principal cannot be read is
    /// scoped as anonymous. Default: no principal (all callers share one scope).
    #[must_use]
    pub fn principal<P2>(self, principal: P2) -> IdempotencyLayer<K, P2, M> {
        IdempotencyLayer {
            key: self.key,
            principal,
            medium: self.medium,
            settings: self.settings,
        }
    }

    /// Guard a service that is not HTTP: its requests and responses are any values, and
    /// `codec` says how to fingerprint a request and store a response as bytes (e.g. with
    /// `prost`). Set the key with [`key`](Self::key) (a [`KeyExtractor`] reading, say, a
    /// message field). Every request with a key is guarded (no method filter); a replay
    /// is the decoded response (there is no header to mark it: the
    /// [`IdempotencyReplayed`](crate::observe::Event::IdempotencyReplayed) event does).
    #[must_use]
    pub fn values<C>(self, codec: C) -> IdempotencyLayer<K, P, super::Values<C>> {
        IdempotencyLayer {
            key: self.key,
            principal: self.principal,
            medium: super::Values(codec),
            settings: self.settings,
        }
    }

    /// The name in events (default `"idempotency"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.settings().name = name.into();
        self
    }

    /// The methods the layer applies to (default POST and PATCH); others pass through.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings().methods = methods.into_iter().collect();
        self
    }

    /// Refuse requests without a key with `400` (default: they pass through unprotected).
    #[must_use]
    pub fn required(mut self, required: bool) -> Self {
        self.settings().required = required;
        self
    }

    /// What a retry gets while the first request runs (default [`Conflict::Reject`]).
    #[must_use]
    pub fn conflict(mut self, conflict: Conflict) -> Self {
        self.settings().conflict = conflict;
        self
    }

    /// The longest a claim holds a key without finishing (default 60 s); after it, the
    /// key is free again. Set it above your handler's timeout: a handler still running
    /// after its lease may run twice.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings().lease = lease;
        self
    }

    /// How long a stored response is replayed (default 24 h).
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.settings().retention = retention;
        self
    }

    /// The largest request body read to fingerprint it (default 1 MiB); larger requests
    /// with a key are refused with `413`.
    #[must_use]
    pub fn max_request_bytes(mut self, max: u64) -> Self {
        self.settings().max_request_bytes = max;
        self
    }

    /// The largest response body stored (default 1 MiB); a larger response is passed on
    /// whole, not stored, and the key is freed.
    #[must_use]
    pub fn max_response_bytes(mut self, max: u64) -> Self {
        self.settings().max_response_bytes = max;
        self
    }

    /// Also fingerprint these request headers (method, path and query, and body always
    /// are).
    #[must_use]
    pub fn fingerprint_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.settings().fingerprint_headers = headers.into_iter().collect();
        self
    }

    /// Store only the responses whose status passes `predicate` (default: every response
    /// the handler produced, as Stripe does — a handler that charged a card and then
    /// answered 500 must not run again). Errors of the inner service are never stored.
    #[must_use]
    pub fn store_if(
        mut self,
        predicate: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settings().store_if = Some(Arc::new(predicate));
        self
    }

    /// Keep claims and records in `store` (default: a [`MemoryStore`]).
    #[must_use]
    pub fn store(mut self, store: impl IdempotencyStore) -> Self {
        self.settings().store = Arc::new(store);
        self
    }

    /// What to do with a request when the store fails or does not answer (a shared store
    /// such as [`RedisIdempotencyStore`](crate::redis::RedisIdempotencyStore) that is
    /// down): [`FailurePolicy::FailClosed`] (the default) refuses it with
    /// [`Rejection::Overloaded`] (503 + `Retry-After: 1`, safe to retry: nothing ran);
    /// [`FailurePolicy::FailOpen`] runs it without deduplication. `Local` is `FailClosed`
    /// here: another instance may hold the key. Each such request emits
    /// [`Event::BackendPolicyApplied`].
    #[must_use]
    pub fn on_store_error(mut self, policy: FailurePolicy) -> Self {
        self.settings().on_store_error = policy;
        self
    }

    /// Share a store between layers (e.g. several routers of one process).
    #[must_use]
    pub fn shared_store(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.settings().store = store;
        self
    }

    /// Where events go (default [`TracingObserver`](crate::observe::TracingObserver)).
    #[must_use]
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.settings().observer = SharedObserver::new(observer);
        self
    }

    /// Start in `mode` or share a [`ModeHandle`]. In [`Mode::Shadow`] claims and records
    /// are kept as usual, but what would be refused or replayed is reported and run
    /// again; [`Mode::Off`] passes everything through.
    #[must_use]
    pub fn mode(mut self, mode: impl Into<ModeHandle>) -> Self {
        self.settings().mode = mode.into();
        self
    }

    /// The clock for waits (default tokio's). The store has its own.
    #[must_use]
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.settings().clock = clock.into();
        self
    }

    /// The handle that switches this layer's mode at runtime.
    pub fn mode_handle(&self) -> ModeHandle {
        self.settings.mode.clone()
    }
}

impl<S, K: Clone, P: Clone, M: Clone> Layer<S> for IdempotencyLayer<K, P, M> {
    type Service = Idempotency<S, K, P, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            key: self.key.clone(),
            principal: self.principal.clone(),
            medium: self.medium.clone(),
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`IdempotencyLayer`].
#[derive(Clone)]
pub struct Idempotency<S, K = IdempotencyKeyHeader, P = Global, M = Http> {
    pub(super) inner: S,
    pub(super) key: K,
    pub(super) principal: P,
    pub(super) medium: M,
    pub(super) settings: Arc<Settings>,
}

impl<S: fmt::Debug, K, P, M> fmt::Debug for Idempotency<S, K, P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("name", &self.settings.name)
            .finish_non_exhaustive()
    }
}

impl<S, K, P, M> Idempotency<S, K, P, M> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the layer's service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What the key (and principal) of a request say.
pub(super) enum KeyRead {
    /// Guard the request under this key and principal.
    Key { key: String, principal: String },
    /// Let it through unguarded.
    Pass,
    /// Refuse it.
    Refuse(Rejection),
}

/// Read the key: a missing optional key passes; a missing required or malformed key is
/// refused (in shadow mode: reported and passed).
pub(super) fn read_key<Req, K, P>(
    key: &K,
    principal: &P,
    req: &Req,
    settings: &Settings,
    shadow: bool,
) -> KeyRead
where
    K: KeyExtractor<Req, Key = String>,
    P: KeyExtractor<Req>,
{
    match key.extract(req) {
        Ok(key) => KeyRead::Key {
            key,
            principal: principal
                .extract(req)
                .map_or_else(|_| String::new(), |p| format!("{p:?}")),
        },
        Err(KeyError::Missing) if !settings.required => KeyRead::Pass,
        Err(err) => {
            let rejection = settings.rejected(None, invalid_key(&err), shadow);
            if shadow {
                KeyRead::Pass
            } else {
                KeyRead::Refuse(rejection)
            }
        }
    }
}

fn invalid_key(err: &KeyError) -> Rejection {
    match err {
        KeyError::Missing => Rejection::idempotency_key_missing(),
        KeyError::TooLong { .. } => Rejection::idempotency_key_invalid("longer than the limit"),
        KeyError::Malformed(reason) => Rejection::idempotency_key_invalid(reason),
    }
}

impl<S, K, P, B, RB> Service<Request<B>> for Idempotency<S, K, P, Http>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + From<Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Send + Unpin + 'static,
    RB::Error: Into<BoxError>,
    K: KeyExtractor<Request<B>, Key = String>,
    P: KeyExtractor<Request<B>>,
{
    type Response = Response<BufferedBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let settings = &self.settings;
        let mode = settings.mode.get();
        if mode == Mode::Off || !settings.methods.contains(req.method()) {
            return ResponseFuture::passthrough(self.inner.call(req));
        }
        let shadow = mode == Mode::Shadow;
        let (key, principal) = match read_key(&self.key, &self.principal, &req, settings, shadow) {
            KeyRead::Key { key, principal } => (key, principal),
            KeyRead::Pass => return ResponseFuture::passthrough(self.inner.call(req)),
            KeyRead::Refuse(rejection) => return ResponseFuture::rejected(rejection),
        };
        let record = RecordKey::new(&principal, req.method().as_str(), req.uri().path(), &key);
        // The service that was polled ready goes into the future; a clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let run = Run {
            settings: self.settings.clone(),
            key,
            record,
            shadow,
        };
        ResponseFuture::keyed(Box::pin(run.run(inner, req)))
    }
}

/// One keyed request.
pub(super) struct Run {
    pub(super) settings: Arc<Settings>,
    pub(super) key: String,
    pub(super) record: RecordKey,
    pub(super) shadow: bool,
}

/// What the claim decided.
pub(super) enum Phase {
    /// The key is ours: run the request.
    Run(ClaimToken),
    /// The same request finished: replay its record.
    Replay(Arc<Record>),
    /// Refuse (or, in shadow mode, report and run).
    Refuse(Rejection),
    /// The store failed and the policy is to fail open: run without a claim.
    Unguarded,
}

type Answer<RB> = Result<Response<BufferedBody<RB>>, BoxError>;

impl Run {
    pub(super) fn reject<T>(&self, rejection: Rejection) -> Result<T, BoxError> {
        Err(self
            .settings
            .rejected(Some(&self.key), rejection, self.shadow)
            .boxed())
    }

    async fn run<S, B, RB>(self, inner: S, req: Request<B>) -> Answer<RB>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + From<Bytes> + Unpin,
        B::Error: Into<BoxError>,
        RB: Body<Data = Bytes> + Unpin,
        RB::Error: Into<BoxError>,
    {
        let s = self.settings.clone();
        let (parts, body) = req.into_parts();
        let bytes = match read_capped(body, s.max_request_bytes).await? {
            Read::Whole(bytes, _) => bytes,
            Read::TooLarge(rest) => {
                if self.shadow {
                    // Shadow mode never refuses: read the rest and run the request.
                    use http_body_util::BodyExt;
                    let all = rest.collect().await?.to_bytes();
                    let _ = self.reject::<RB>(Rejection::payload_too_large(s.max_request_bytes));
                    let req = Request::from_parts(parts, B::from(all));
                    return Self::plain(inner, req).await;
                }
                return self.reject(Rejection::payload_too_large(s.max_request_bytes));
            }
        };
        let fingerprint = fingerprint(&parts, &bytes, &s.fingerprint_headers);
        let req = Request::from_parts(parts, B::from(bytes));
        match self.claim(fingerprint).await? {
            Phase::Run(token) => self.execute(inner, req, token, fingerprint).await,
            Phase::Replay(_) if self.shadow => Self::plain(inner, req).await,
            Phase::Replay(record) => Ok(replay(&record.response, true)),
            Phase::Refuse(refusal) if self.shadow => {
                let _ = self.reject::<RB>(refusal);
                Self::plain(inner, req).await
            }
            Phase::Refuse(refusal) => self.reject(refusal),
            Phase::Unguarded => Self::plain(inner, req).await,
        }
    }

    /// Claim the key, waiting for a holder if so configured: run, replay, or refuse.
    pub(super) async fn claim(&self, fingerprint: Fingerprint) -> Result<Phase, BoxError> {
        let s = &self.settings;
        let wait_until = match s.conflict {
            Conflict::Wait(max) => Some(s.clock.now() + max),
            Conflict::Reject => None,
        };
        let mut waited = false;
        loop {
            let claim = match s.store.claim(&self.record, fingerprint, s.lease).await {
                Ok(claim) => claim,
                Err(_) => {
                    // `Local` means nothing here (another instance may hold the key): it
                    // fails closed.
                    let (policy, phase) = match s.on_store_error {
                        FailurePolicy::FailOpen => (FailurePolicy::FailOpen, Phase::Unguarded),
                        _ => (
                            FailurePolicy::FailClosed,
                            Phase::Refuse(Rejection::overloaded(Some(Duration::from_secs(1)))),
                        ),
                    };
                    s.observer.emit(&Event::BackendPolicyApplied {
                        layer: "idempotency",
                        name: &s.name,
                        backend: "store",
                        policy: policy.as_str(),
                    });
                    return Ok(phase);
                }
            };
            let refusal = match claim {
                Claim::Acquired(token) => return Ok(Phase::Run(token)),
                Claim::Done {
                    same_request: true,
                    record,
                } => {
                    s.observer.emit(&Event::IdempotencyReplayed {
                        name: &s.name,
                        key: &self.key,
                        waited,
                    });
                    return Ok(Phase::Replay(record));
                }
                Claim::Done { .. }
                | Claim::InFlight {
                    same_request: false,
                    ..
                } => Rejection::idempotency_mismatch(),
                Claim::InFlight { ended, .. } => match wait_until {
                    Some(until) if !self.shadow => {
                        if tokio::time::timeout_at(until, ended).await.is_ok() {
                            waited = true;
                            continue;
                        }
                        Rejection::idempotency_in_flight(None)
                    }
                    _ => Rejection::idempotency_in_flight(None),
                },
                Claim::Full => Rejection::overloaded(None),
            };
            return Ok(Phase::Refuse(refusal));
        }
    }

    async fn plain<S, B, RB>(mut inner: S, req: Request<B>) -> Answer<RB>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
    {
        let res = inner.call(req).await.map_err(Into::into)?;
        Ok(res.map(BufferedBody::inner))
    }

    /// Run the request holding the claim, and store its response.
    async fn execute<S, B, RB>(
        self,
        mut inner: S,
        req: Request<B>,
        token: ClaimToken,
        fingerprint: Fingerprint,
    ) -> Answer<RB>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
        RB: Body<Data = Bytes> + Unpin,
        RB::Error: Into<BoxError>,
    {
        let s = self.settings.clone();
        let mut guard = ClaimGuard {
            run: &self,
            token,
            armed: true,
        };
        let res = match inner.call(req).await {
            Ok(res) => res,
            Err(e) => {
                guard.release("the handler failed");
                return Err(e.into());
            }
        };
        if !s.should_store(res.status()) {
            guard.release("status not stored");
            return Ok(res.map(BufferedBody::inner));
        }
        let (parts, body) = res.into_parts();
        let (data, trailers) = match read_capped(body, s.max_response_bytes).await {
            Ok(Read::Whole(data, trailers)) => (data, trailers),
            Ok(Read::TooLarge(body)) => {
                guard.release("response body larger than max_response_bytes");
                return Ok(Response::from_parts(parts, body));
            }
            Err(e) => {
                guard.release("response body failed");
                return Err(e);
            }
        };
        let record = Arc::new(Record {
            fingerprint,
            response: StoredResponse {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body: data,
                trailers,
            },
        });
        guard.armed = false;
        let answer = replay(&record.response, false);
        self.keep(token, record).await;
        Ok(answer)
    }
}

impl Run {
    /// Turn the claim `token` into a stored `record`; report what became of it. Whatever
    /// happens, the client gets the handler's answer.
    pub(super) async fn keep(&self, token: ClaimToken, record: Arc<Record>) {
        let s = &self.settings;
        let bytes = record.response.weight();
        match s
            .store
            .complete(&self.record, token, record, s.retention)
            .await
        {
            Ok(true) => s.observer.emit(&Event::IdempotencyStored {
                name: &s.name,
                key: &self.key,
                bytes,
            }),
            Ok(false) => s.observer.emit(&Event::IdempotencyReleased {
                name: &s.name,
                key: &self.key,
                reason: "the claim's lease ran out before the response was stored",
            }),
            Err(_) => {
                s.store.release(&self.record, token);
                s.observer.emit(&Event::IdempotencyReleased {
                    name: &s.name,
                    key: &self.key,
                    reason: "the store failed to keep the response",
                });
            }
        }
    }
}

/// Frees the claim unless the request stored its response: on failure, on a response
/// that is not stored, and when the future is dropped or the handler panics.
pub(super) struct ClaimGuard<'a> {
    pub(super) run: &'a Run,
    pub(super) token: ClaimToken,
    pub(super) armed: bool,
}

impl ClaimGuard<'_> {
    pub(super) fn release(&mut self, reason: &'static str) {
        if self.armed {
            self.armed = false;
            let s = &self.run.settings;
            s.store.release(&self.run.record, self.token);
            s.observer.emit(&Event::IdempotencyReleased {
                name: &s.name,
                key: &self.run.key,
                reason,
            });
        }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        self.release("the request was dropped or the handler panicked");
    }
}

/// A response rebuilt from its stored copy.
fn replay<RB>(stored: &StoredResponse, replayed: bool) -> Response<BufferedBody<RB>> {
    let mut res = Response::new(BufferedBody::buffered(
        stored.body.clone(),
        stored.trailers.clone(),
    ));
    *res.status_mut() = stored.status;
    *res.version_mut() = stored.version;
    *res.headers_mut() = stored.headers.clone();
    if replayed {
        res.headers_mut().insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
        res.extensions_mut().insert(crate::http::Verdict::Replayed);
    }
    res
}

/// SHA-256 over method, path and query, the chosen headers and the body, each part
/// length-prefixed so that no two different requests give the same input.
pub(super) fn fingerprint(
    parts: &http::request::Parts,
    body: &[u8],
    headers: &[HeaderName],
) -> Fingerprint {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(parts.method.as_str().as_bytes());
    part(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    for name in headers {
        part(name.as_str().as_bytes());
        for value in parts.headers.get_all(name) {
            part(value.as_bytes());
        }
    }
    part(body);
    Fingerprint(h.finalize().into())
}

pin_project! {
    /// The future of [`Idempotency`].
    pub struct ResponseFuture<F, RB> {
        #[pin]
        kind: FutureKind<F, RB>,
    }
}

pin_project! {
    #[project = FutureProj]
    enum FutureKind<F, RB> {
        Passthrough {
            #[pin]
            future: F,
        },
        Rejected {
            rejection: Rejection,
        },
        Keyed {
            future: BoxFuture<'static, Answer<RB>>,
        },
    }
}

impl<F, RB> fmt::Debug for ResponseFuture<F, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match &self.kind {
            FutureKind::Passthrough { .. } => "ResponseFuture::Passthrough",
            FutureKind::Rejected { .. } => "ResponseFuture::Rejected",
            FutureKind::Keyed { .. } => "ResponseFuture::Keyed",
        })
    }
}

impl<F, RB> ResponseFuture<F, RB> {
    fn passthrough(future: F) -> Self {
        ResponseFuture {
            kind: FutureKind::Passthrough { future },
        }
    }

    fn rejected(rejection: Rejection) -> Self {
        ResponseFuture {
            kind: FutureKind::Rejected { rejection },
        }
    }

    fn keyed(future: BoxFuture<'static, Answer<RB>>) -> Self {
        ResponseFuture {
            kind: FutureKind::Keyed { future },
        }
    }
}

impl<F, E, RB> Future for ResponseFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Answer<RB>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureProj::Passthrough { future } => future.poll(cx).map(|r| {
                r.map(|res| res.map(BufferedBody::inner))
                    .map_err(Into::into)
            }),
            FutureProj::Rejected { rejection } => Poll::Ready(Err(rejection.clone().boxed())),
            FutureProj::Keyed { future } => future.as_mut().poll(cx),
        }
    }
}
