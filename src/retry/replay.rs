//! Making another attempt of a request: which requests may be retried, and how a copy is
//! kept.

use std::future::{Future, Ready, ready};

use crate::error::BoxError;
use crate::timeout::Deadline;

/// A request ready for its first attempt, and the copy kept for further attempts.
#[derive(Debug)]
pub struct Prepared<Req, Copy> {
    /// What the first attempt sends.
    pub request: Req,
    /// What further attempts are made from; `None` means "never retry this request"
    /// (not safe to repeat, or too large to keep).
    pub copy: Option<Copy>,
}

/// How the retry layer keeps a request for another attempt.
///
/// [`CloneReplay`] serves any `Clone` request; [`HttpReplay`] serves `http::Request`s
/// (idempotent methods or an `Idempotency-Key`, bodies buffered up to a cap). Another
/// request type can decide its own way:
///
/// ```
/// use std::future::{Ready, ready};
/// use tower_parapet::BoxError;
/// use tower_parapet::retry::{Prepared, Replay};
///
/// #[derive(Clone)]
/// struct Command { name: &'static str, safe_to_repeat: bool }
///
/// /// Only commands marked safe to repeat are retried.
/// #[derive(Clone)]
/// struct SafeCommands;
///
/// impl Replay<Command> for SafeCommands {
///     type Copy = Command;
///     type Prepare = Ready<Result<Prepared<Command, Command>, BoxError>>;
///
///     fn prepare(&self, cmd: Command) -> Self::Prepare {
///         let copy = cmd.safe_to_repeat.then(|| cmd.clone());
///         ready(Ok(Prepared { request: cmd, copy }))
///     }
///
///     fn replay(&self, copy: &Command) -> Command {
///         copy.clone()
///     }
/// }
/// # let _ = Command { name: "x", safe_to_repeat: true }.name;
/// ```
pub trait Replay<Req>: Clone + Send + Sync + 'static {
    /// What is kept for further attempts.
    type Copy;
    /// Prepares the first attempt (e.g. buffers a body); ready at once for most types.
    type Prepare: Future<Output = Result<Prepared<Req, Self::Copy>, BoxError>>;

    /// Prepare `req`: the request for the first attempt and, if it may be retried, a copy.
    /// An error fails the call without any attempt.
    fn prepare(&self, req: Req) -> Self::Prepare;

    /// A request for another attempt, from the copy.
    fn replay(&self, copy: &Self::Copy) -> Req;

    /// The deadline the request carries, if any (read once, before the first attempt).
    fn deadline(&self, _req: &Req) -> Option<Deadline> {
        None
    }
}

/// Retries any `Clone` request, cloning it once per call for further attempts. Reads no
/// deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneReplay;

impl<Req: Clone> Replay<Req> for CloneReplay {
    type Copy = Req;
    type Prepare = Ready<Result<Prepared<Req, Req>, BoxError>>;

    #[inline]
    fn prepare(&self, req: Req) -> Self::Prepare {
        ready(Ok(Prepared {
            copy: Some(req.clone()),
            request: req,
        }))
    }

    #[inline]
    fn replay(&self, copy: &Req) -> Req {
        copy.clone()
    }
}

#[cfg(feature = "http")]
pub use self::http_replay::{HttpCopy, HttpReplay};

#[cfg(feature = "http")]
mod http_replay {
    use super::*;
    use bytes::Bytes;
    use futures_util::future::{BoxFuture, Either};
    use http::{HeaderMap, Method, Request, Uri, Version};
    use http_body::Body;
    use http_body_util::BodyExt;

    /// Which `http::Request`s are retried, and the buffered copy their retries are made
    /// from.
    ///
    /// - Retried: the idempotent methods (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`,
    ///   `TRACE`), and any request carrying an `Idempotency-Key` header (the server
    ///   deduplicates it). A `POST` or `PATCH` without a key is never retried.
    /// - Bodies: a body whose size hint says it is at most
    ///   [`max_body_bytes`](HttpReplay::max_body_bytes) (a `Content-Length`, a full
    ///   buffer) is read into memory before the first attempt and every attempt gets a
    ///   copy (`B: From<Bytes>`: axum's `Body`, `Full<Bytes>`, `Bytes`...). A body of
    ///   unknown or larger size is passed on untouched and the request is not retried. A
    ///   body that turns out longer than its own size hint fails the call with
    ///   [`Rejection::PayloadTooLarge`](crate::Rejection::PayloadTooLarge).
    /// - The deadline is the [`Deadline`] in the request's extensions (set by a
    ///   [`TimeoutLayer`](crate::TimeoutLayer) outside the retry layer).
    /// - Copies keep the method, URI, version, headers and extensions.
    #[derive(Debug, Clone, Copy)]
    pub struct HttpReplay {
        max_body: u64,
    }

    impl Default for HttpReplay {
        fn default() -> Self {
            HttpReplay::new()
        }
    }

    impl HttpReplay {
        /// Bodies up to 64 KiB are buffered for replay.
        pub const fn new() -> HttpReplay {
            HttpReplay {
                max_body: 64 * 1024,
            }
        }

        /// Buffer bodies up to `bytes` for replay (0: only requests without a body are
        /// retried).
        #[must_use]
        pub const fn max_body_bytes(mut self, bytes: u64) -> HttpReplay {
            self.max_body = bytes;
            self
        }

        /// Whether a request with `method` and `headers` may be repeated.
        pub fn is_retryable(method: &Method, headers: &HeaderMap) -> bool {
            matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            ) || headers.contains_key("idempotency-key")
        }
    }

    /// The copy [`HttpReplay`] keeps of a request.
    #[derive(Debug, Clone)]
    pub struct HttpCopy {
        method: Method,
        uri: Uri,
        version: Version,
        headers: HeaderMap,
        extensions: http::Extensions,
        body: Bytes,
    }

    fn copy_of<B>(req: &Request<B>, body: Bytes) -> HttpCopy {
        HttpCopy {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
            body,
        }
    }

    type Out<B> = Result<Prepared<Request<B>, HttpCopy>, BoxError>;

    impl<B> Replay<Request<B>> for HttpReplay
    where
        B: Body + From<Bytes> + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        type Copy = HttpCopy;
        type Prepare = Either<Ready<Out<B>>, BoxFuture<'static, Out<B>>>;

        fn prepare(&self, req: Request<B>) -> Self::Prepare {
            if !HttpReplay::is_retryable(req.method(), req.headers()) {
                return Either::Left(ready(Ok(Prepared {
                    request: req,
                    copy: None,
                })));
            }
            let hint = req.body().size_hint();
            if hint.exact() == Some(0) {
                let copy = copy_of(&req, Bytes::new());
                return Either::Left(ready(Ok(Prepared {
                    request: req,
                    copy: Some(copy),
                })));
            }
            let limit = self.max_body;
            match hint.upper() {
                Some(upper) if upper <= limit => {}
                _ => {
                    return Either::Left(ready(Ok(Prepared {
                        request: req,
                        copy: None,
                    })));
                }
            }
            Either::Right(Box::pin(async move {
                let (parts, body) = req.into_parts();
                let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
                let bytes = match http_body_util::Limited::new(body, limit_usize)
                    .collect()
                    .await
                {
                    Ok(collected) => collected.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return Err(crate::Rejection::payload_too_large(limit).boxed());
                    }
                    Err(e) => return Err(e),
                };
                let request = Request::from_parts(parts, B::from(bytes.clone()));
                let copy = copy_of(&request, bytes);
                Ok(Prepared {
                    request,
                    copy: Some(copy),
                })
            }))
        }

        fn replay(&self, copy: &HttpCopy) -> Request<B> {
            let mut req = Request::new(B::from(copy.body.clone()));
            *req.method_mut() = copy.method.clone();
            *req.uri_mut() = copy.uri.clone();
            *req.version_mut() = copy.version;
            *req.headers_mut() = copy.headers.clone();
            *req.extensions_mut() = copy.extensions.clone();
            req
        }

        fn deadline(&self, req: &Request<B>) -> Option<Deadline> {
            req.extensions().get::<Deadline>().copied()
        }
    }
}
