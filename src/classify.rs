//! What counts as a failure: kept out of the layers so every layer agrees.
//!
//! A [`Classifier`] looks at the result of a call — a response or a (boxed) error — and
//! says [`Outcome::Success`], [`Outcome::Failure`] or [`Outcome::Ignored`]. The fallback
//! layer answers for failures; the circuit breaker (later) counts them.
//!
//! | classifier | failure when |
//! |---|---|
//! | [`ErrorsAsFailures`] | any error, rejections included (the default) |
//! | [`RejectionsAsFailures`] | a rejection of the chosen kinds, nothing else |
//! | [`ServerErrorsAsFailures`] (`http`) | an error, or a response with status 5xx |
//! | [`GrpcErrorsAsFailures`] (`http`) | an error, or a trailers-only response whose `grpc-status` is a server fault |
//! | [`TransientErrors`] | an error that another attempt may not repeat: any error except refusals that would answer the same again (feature off, idempotency conflicts, payload too large); the retry layer's default |
//! | [`TransientHttpFailures`] (`http`) | such an error, a 502, 503 or 504, a 429 that says when to come back, or a trailers-only gRPC `UNAVAILABLE`; the HTTP retry layer's default |
//! | [`from_fn`] | your closure says so |

use std::fmt;

use crate::error::{BoxError, Rejection, RejectionKinds};

/// The verdict on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call worked.
    Success,
    /// The call failed.
    Failure,
    /// The call neither counts as a success nor as a failure (e.g. a client error).
    Ignored,
}

/// Says whether a call succeeded.
pub trait Classifier<Res>: Clone + Send + Sync + 'static {
    /// The verdict on a call that returned `result`.
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome;
}

/// Every error is a failure, rejections included; every response is a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAsFailures;

impl<Res> Classifier<Res> for ErrorsAsFailures {
    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Only rejections of the given kinds are failures; other errors are
/// [`Ignored`](Outcome::Ignored) and responses are successes.
#[derive(Debug, Clone, Copy)]
pub struct RejectionsAsFailures(RejectionKinds);

impl RejectionsAsFailures {
    /// Rejections of `kinds` are failures.
    pub const fn only(kinds: RejectionKinds) -> RejectionsAsFailures {
        RejectionsAsFailures(kinds)
    }
}

impl<Res> Classifier<Res> for RejectionsAsFailures {
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => match Rejection::from_box(e) {
                Some(r) if self.0.contains(r.kind()) => Outcome::Failure,
                _ => Outcome::Ignored,
            },
        }
    }
}

/// Errors that another attempt may not repeat are failures: connection errors, timeouts,
/// an open circuit, an overloaded or rate-limited dependency — any error except the
/// refusals that would answer the same again (feature disabled, idempotency conflicts,
/// payload too large), which are [`Ignored`](Outcome::Ignored). Responses are successes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransientErrors;

fn transient_error(err: &BoxError) -> Outcome {
    use crate::error::RejectionKind as K;
    match Rejection::from_box(err).map(Rejection::kind) {
        Some(
            K::FeatureDisabled
            | K::IdempotencyKeyMissing
            | K::IdempotencyKeyInvalid
            | K::IdempotencyInFlight
            | K::IdempotencyMismatch
            | K::PayloadTooLarge,
        ) => Outcome::Ignored,
        _ => Outcome::Failure,
    }
}

impl<Res> Classifier<Res> for TransientErrors {
    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => transient_error(e),
        }
    }
}

/// A classifier from a closure; see [`from_fn`].
#[derive(Clone, Copy)]
pub struct FnClassifier<F>(F);

/// A classifier from a closure `Fn(Result<&Res, &BoxError>) -> Outcome`.
///
/// ```
/// use tower_parapet::classify::{self, Classifier, Outcome};
///
/// // An empty answer is a failure too.
/// let c = classify::from_fn(|r: Result<&String, &tower_parapet::BoxError>| match r {
///     Ok(s) if !s.is_empty() => Outcome::Success,
///     _ => Outcome::Failure,
/// });
/// assert_eq!(c.classify(Ok(&String::new())), Outcome::Failure);
/// ```
pub fn from_fn<F>(f: F) -> FnClassifier<F> {
    FnClassifier(f)
}

impl<F> fmt::Debug for FnClassifier<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FnClassifier")
            .field(&std::any::type_name::<F>())
            .finish()
    }
}

impl<Res, F> Classifier<Res> for FnClassifier<F>
where
    F: Fn(Result<&Res, &BoxError>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        (self.0)(result)
    }
}

#[cfg(feature = "http")]
pub use self::http_classes::{GrpcErrorsAsFailures, ServerErrorsAsFailures, TransientHttpFailures};

#[cfg(feature = "http")]
mod http_classes {
    use super::{Classifier, Outcome};
    use crate::BoxError;
    use crate::grpc::Code;

    /// Errors and HTTP 5xx responses are failures; everything else is a success.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ServerErrorsAsFailures;

    impl<B> Classifier<http::Response<B>> for ServerErrorsAsFailures {
        fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
            match result {
                Ok(res) if res.status().is_server_error() => Outcome::Failure,
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            }
        }
    }

    /// What another attempt may fix: the errors of [`TransientErrors`](super::TransientErrors),
    /// `502`, `503` and `504` responses, a `429` that carries `Retry-After`, a `RateLimit`
    /// field or `grpc-retry-pushback-ms` (a client told when to come back), and a
    /// trailers-only gRPC `UNAVAILABLE`. Everything else (other 5xx included: a `500` is
    /// usually a bug that answers the same again) is a success.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct TransientHttpFailures;

    impl<B> Classifier<http::Response<B>> for TransientHttpFailures {
        fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
            let res = match result {
                Ok(res) => res,
                Err(e) => return super::transient_error(e),
            };
            let h = res.headers();
            match res.status().as_u16() {
                502..=504 => Outcome::Failure,
                429 if h.contains_key(http::header::RETRY_AFTER)
                    || h.contains_key("ratelimit")
                    || h.contains_key("grpc-retry-pushback-ms") =>
                {
                    Outcome::Failure
                }
                _ if h.get("grpc-status").and_then(|v| Code::parse(v.as_bytes()))
                    == Some(Code::Unavailable) =>
                {
                    Outcome::Failure
                }
                _ => Outcome::Success,
            }
        }
    }

    /// Errors, and responses whose `grpc-status` header is a server fault, are failures.
    ///
    /// By default the faults are `UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNAVAILABLE`
    /// and `DATA_LOSS`; client errors such as `INVALID_ARGUMENT` or `NOT_FOUND` are
    /// successes of the server. Only the response headers are read, which is where a
    /// trailers-only error response (the usual form of a unary gRPC error) carries its
    /// status; a status sent in trailers after a body is not seen.
    #[derive(Debug, Clone, Copy)]
    pub struct GrpcErrorsAsFailures {
        failures: u32,
    }

    impl Default for GrpcErrorsAsFailures {
        fn default() -> Self {
            GrpcErrorsAsFailures::new()
        }
    }

    impl GrpcErrorsAsFailures {
        /// The default set of server faults.
        pub const fn new() -> GrpcErrorsAsFailures {
            GrpcErrorsAsFailures { failures: 0 }
                .with_failure(Code::Unknown)
                .with_failure(Code::DeadlineExceeded)
                .with_failure(Code::Internal)
                .with_failure(Code::Unavailable)
                .with_failure(Code::DataLoss)
        }

        /// Count `code` as a failure too.
        #[must_use]
        pub const fn with_failure(mut self, code: Code) -> GrpcErrorsAsFailures {
            self.failures |= 1 << (code as u32);
            self
        }

        /// Do not count `code` as a failure.
        #[must_use]
        pub const fn without_failure(mut self, code: Code) -> GrpcErrorsAsFailures {
            self.failures &= !(1 << (code as u32));
            self
        }
    }

    impl<B> Classifier<http::Response<B>> for GrpcErrorsAsFailures {
        fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
            match result {
                Err(_) => Outcome::Failure,
                Ok(res) => match res
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| Code::parse(v.as_bytes()))
                {
                    Some(code) if self.failures & (1 << (code as u32)) != 0 => Outcome::Failure,
                    _ => Outcome::Success,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RejectionKind;
    use std::time::Duration;

    #[test]
    fn errors_and_rejections() {
        let timeout = Rejection::timeout(Duration::from_secs(1)).boxed();
        let io: BoxError = "io".into();
        assert_eq!(ErrorsAsFailures.classify(Ok(&1)), Outcome::Success);
        assert_eq!(
            Classifier::<u8>::classify(&ErrorsAsFailures, Err(&io)),
            Outcome::Failure
        );
        let only = RejectionsAsFailures::only(RejectionKinds::of(&[RejectionKind::Timeout]));
        assert_eq!(
            Classifier::<u8>::classify(&only, Err(&timeout)),
            Outcome::Failure
        );
        assert_eq!(
            Classifier::<u8>::classify(&only, Err(&io)),
            Outcome::Ignored
        );
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_and_grpc() {
        let res = |s: u16| http::Response::builder().status(s).body(()).unwrap();
        assert_eq!(
            ServerErrorsAsFailures.classify(Ok(&res(503))),
            Outcome::Failure
        );
        assert_eq!(
            ServerErrorsAsFailures.classify(Ok(&res(404))),
            Outcome::Success
        );
        let grpc = |code: &str| {
            http::Response::builder()
                .header("grpc-status", code)
                .body(())
                .unwrap()
        };
        let g = GrpcErrorsAsFailures::new();
        assert_eq!(g.classify(Ok(&grpc("14"))), Outcome::Failure);
        assert_eq!(g.classify(Ok(&grpc("5"))), Outcome::Success);
        assert_eq!(g.classify(Ok(&grpc("+14"))), Outcome::Success, "not a code");
        assert_eq!(g.classify(Ok(&res(200))), Outcome::Success);
        let g = g.without_failure(crate::grpc::Code::Unavailable);
        assert_eq!(g.classify(Ok(&grpc("14"))), Outcome::Success);
    }
}
