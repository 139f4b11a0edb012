//! Idempotency for services that are not HTTP: requests and responses are any values.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode, Version};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use tower_service::Service;

use super::layer::{ClaimGuard, Idempotency, KeyRead, Phase, Run, read_key};
use super::store::{Fingerprint, Record, RecordKey, StoredResponse};
use crate::error::{BoxError, Rejection};
use crate::key::KeyExtractor;
use crate::mode::Mode;

/// How a non-HTTP service's requests are fingerprinted and its responses stored; see
/// [`IdempotencyLayer::values`](super::IdempotencyLayer::values) and [`codec`].
pub trait ValueCodec<Req, Res>: Clone + Send + Sync + 'static {
    /// The bytes that identify the request's payload (hashed into its fingerprint): the
    /// same key with other bytes is refused as a different request.
    fn fingerprint(&self, req: &Req) -> Vec<u8>;

    /// The stored form of a response, or `None` to keep nothing (the key is freed and a
    /// retry runs again).
    fn encode(&self, res: &Res) -> Option<Bytes>;

    /// The response rebuilt from its stored form, for a replay.
    fn decode(&self, stored: &Bytes) -> Result<Res, BoxError>;
}

/// The medium of a layer built by
/// [`IdempotencyLayer::values`](super::IdempotencyLayer::values).
#[derive(Debug, Clone)]
pub struct Values<C>(pub(super) C);

/// A [`ValueCodec`] from three closures.
#[derive(Clone)]
pub struct FnCodec<F, E, D> {
    fingerprint: F,
    encode: E,
    decode: D,
}

impl<F, E, D> fmt::Debug for FnCodec<F, E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnCodec")
    }
}

/// A [`ValueCodec`] from closures: `fingerprint(&Req) -> Vec<u8>`,
/// `encode(&Res) -> Option<Bytes>`, `decode(&Bytes) -> Result<Res, BoxError>`.
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_parapet::idempotency::{self, Conflict, IdempotencyLayer};
/// use tower_parapet::key::{self, KeyError};
///
/// #[derive(Clone)]
/// struct Transfer { idempotency_key: Option<String>, cents: u64 }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = IdempotencyLayer::new()
///     .key(key::from_fn(|t: &Transfer| t.idempotency_key.clone().ok_or(KeyError::Missing)))
///     .values(idempotency::codec(
///         |t: &Transfer| t.cents.to_be_bytes().to_vec(),
///         |receipt: &String| Some(Bytes::from(receipt.clone())),
///         |stored: &Bytes| Ok(String::from_utf8(stored.to_vec())?),
///     ));
/// let svc = layer.layer(service_fn(|t: Transfer| async move {
///     Ok::<_, std::convert::Infallible>(format!("moved {} cents", t.cents))
/// }));
/// let t = Transfer { idempotency_key: Some("t-1".into()), cents: 500 };
/// assert_eq!(svc.clone().oneshot(t.clone()).await.unwrap(), "moved 500 cents");
/// assert_eq!(svc.oneshot(t).await.unwrap(), "moved 500 cents"); // replayed
/// # }
/// ```
pub fn codec<F, E, D>(fingerprint: F, encode: E, decode: D) -> FnCodec<F, E, D> {
    FnCodec {
        fingerprint,
        encode,
        decode,
    }
}

impl<Req, Res, F, E, D> ValueCodec<Req, Res> for FnCodec<F, E, D>
where
    F: Fn(&Req) -> Vec<u8> + Clone + Send + Sync + 'static,
    E: Fn(&Res) -> Option<Bytes> + Clone + Send + Sync + 'static,
    D: Fn(&Bytes) -> Result<Res, BoxError> + Clone + Send + Sync + 'static,
{
    fn fingerprint(&self, req: &Req) -> Vec<u8> {
        (self.fingerprint)(req)
    }

    fn encode(&self, res: &Res) -> Option<Bytes> {
        (self.encode)(res)
    }

    fn decode(&self, stored: &Bytes) -> Result<Res, BoxError> {
        (self.decode)(stored)
    }
}

pin_project! {
    /// The future of a non-HTTP [`Idempotency`] service.
    pub struct ValueFuture<F, Res> {
        #[pin]
        kind: Kind<F, Res>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, Res> {
        Passthrough {
            #[pin]
            future: F,
        },
        Rejected {
            rejection: Rejection,
        },
        Keyed {
            future: BoxFuture<'static, Result<Res, BoxError>>,
        },
    }
}

impl<F, Res> fmt::Debug for ValueFuture<F, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("idempotency::ValueFuture")
    }
}

impl<F, E, Res> Future for ValueFuture<F, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => future.poll(cx).map_err(Into::into),
            KindProj::Rejected { rejection } => Poll::Ready(Err(rejection.clone().boxed())),
            KindProj::Keyed { future } => future.as_mut().poll(cx),
        }
    }
}

fn stored(body: Bytes) -> StoredResponse {
    StoredResponse {
        status: StatusCode::OK,
        version: Version::default(),
        headers: HeaderMap::new(),
        body,
        trailers: None,
    }
}

impl<S, K, P, C, Req> Service<Req> for Idempotency<S, K, P, Values<C>>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    K: KeyExtractor<Req, Key = String>,
    P: KeyExtractor<Req>,
    C: ValueCodec<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ValueFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let passthrough = |future| ValueFuture {
            kind: Kind::Passthrough { future },
        };
        let settings = &self.settings;
        let mode = settings.mode.get();
        if mode == Mode::Off {
            return passthrough(self.inner.call(req));
        }
        let shadow = mode == Mode::Shadow;
        let (key, principal) = match read_key(&self.key, &self.principal, &req, settings, shadow) {
            KeyRead::Key { key, principal } => (key, principal),
            KeyRead::Pass => return passthrough(self.inner.call(req)),
            KeyRead::Refuse(rejection) => {
                return ValueFuture {
                    kind: Kind::Rejected { rejection },
                };
            }
        };
        let codec = self.medium.0.clone();
        let fingerprint = Fingerprint(Sha256::digest(codec.fingerprint(&req)).into());
        let run = Run {
            record: RecordKey::new(&principal, "", &settings.name, &key),
            settings: settings.clone(),
            key,
            shadow,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = async move {
            match run.claim(fingerprint).await? {
                Phase::Run(token) => {
                    let mut guard = ClaimGuard {
                        run: &run,
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
                    match codec.encode(&res) {
                        None => guard.release("the codec keeps no copy of this response"),
                        Some(bytes) => {
                            guard.armed = false;
                            let record = Arc::new(Record {
                                fingerprint,
                                response: stored(bytes),
                            });
                            run.keep(token, record).await;
                        }
                    }
                    Ok(res)
                }
                Phase::Replay(record) if !run.shadow => codec.decode(&record.response.body),
                Phase::Refuse(refusal) if !run.shadow => run.reject(refusal),
                phase => {
                    if let Phase::Refuse(refusal) = phase {
                        let _ = run.reject::<()>(refusal);
                    }
                    inner.call(req).await.map_err(Into::into)
                }
            }
        };
        ValueFuture {
            kind: Kind::Keyed {
                future: Box::pin(future),
            },
        }
    }
}
