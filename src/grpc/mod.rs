//! gRPC answers: rejections as gRPC status codes, and the `grpc-timeout` header.
//!
//! | rejection | code |
//! |---|---|
//! | timeout | `DEADLINE_EXCEEDED` (4) |
//! | circuit open, overloaded | `UNAVAILABLE` (14) |
//! | rate limited, request body too large | `RESOURCE_EXHAUSTED` (8) |
//! | idempotency key in flight | `ABORTED` (10) |
//! | idempotency key missing or invalid | `INVALID_ARGUMENT` (3) |
//! | idempotency key reused with another payload | `FAILED_PRECONDITION` (9) |
//! | feature disabled | `UNIMPLEMENTED` (12) |
//!
//! The server side is [`RejectionResponseLayer`](crate::http::RejectionResponseLayer): it
//! recognises gRPC requests by their `content-type` and answers trailers-only (HTTP 200
//! with `grpc-status`, `grpc-message` and, when there is a retry hint,
//! `grpc-retry-pushback-ms`). With the `tonic` feature, `From<Rejection> for tonic::Status`
//! and [`status_from_error`] serve the client side.

use std::time::Duration;

use crate::error::{BoxError, Rejection};

/// gRPC status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code's number.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code with this number.
    pub fn from_u8(n: u8) -> Option<Code> {
        Code::ALL.get(usize::from(n)).copied()
    }

    /// Parse a `grpc-status` value: one or two ASCII digits, nothing else.
    pub fn parse(bytes: &[u8]) -> Option<Code> {
        let n = crate::parse::parse_digits(bytes, 2)?;
        u8::try_from(n).ok().and_then(Code::from_u8)
    }

    /// The code a rejection answers with.
    pub const fn for_rejection(rejection: &Rejection) -> Code {
        match rejection {
            Rejection::Timeout { .. } => Code::DeadlineExceeded,
            Rejection::CircuitOpen { .. } | Rejection::Overloaded { .. } => Code::Unavailable,
            Rejection::RateLimited { .. } | Rejection::PayloadTooLarge { .. } => {
                Code::ResourceExhausted
            }
            Rejection::FeatureDisabled { .. } => Code::Unimplemented,
            Rejection::IdempotencyKeyMissing {} | Rejection::IdempotencyKeyInvalid { .. } => {
                Code::InvalidArgument
            }
            Rejection::IdempotencyInFlight { .. } => Code::Aborted,
            Rejection::IdempotencyMismatch {} => Code::FailedPrecondition,
        }
    }
}

/// Why a `grpc-timeout` value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed grpc-timeout: expected 1 to 8 ASCII digits and one of H M S m u n")]
pub struct MalformedTimeout;

/// Parse a `grpc-timeout` header value: 1 to 8 ASCII digits followed by a unit
/// (`H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds,
/// `n` nanoseconds), as the gRPC over HTTP/2 specification defines it.
///
/// ```
/// use std::time::Duration;
/// use tower_parapet::grpc::parse_grpc_timeout;
///
/// assert_eq!(parse_grpc_timeout(b"250m"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout(b"1H"), Ok(Duration::from_secs(3600)));
/// assert!(parse_grpc_timeout(b"+5S").is_err());
/// assert!(parse_grpc_timeout(b"123456789S").is_err());
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, MalformedTimeout> {
    let (unit, digits) = value.split_last().ok_or(MalformedTimeout)?;
    if digits.is_empty() || digits.len() > 8 {
        return Err(MalformedTimeout);
    }
    let n = crate::parse::parse_digits(digits, 8).ok_or(MalformedTimeout)?;
    Ok(match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(MalformedTimeout),
    })
}

/// Write `d` as a `grpc-timeout` value: the finest unit whose amount fits in 8 digits,
/// rounded up to that unit (never to zero), capped at `99999999H`.
pub fn format_grpc_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos().max(1);
    for (unit, per) in [
        ('n', 1u128),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ] {
        let amount = nanos.div_ceil(per);
        if amount <= MAX {
            return format!("{amount}{unit}");
        }
    }
    format!("{MAX}H")
}

/// The gRPC status of a client-side error: a rejection's code and message, or `None` when
/// the error is not a rejection.
pub fn code_of(err: &BoxError) -> Option<Code> {
    Rejection::from_box(err).map(Code::for_rejection)
}

#[cfg(feature = "tonic")]
mod tonic_impls {
    use super::Code;
    use crate::error::{BoxError, Rejection};

    impl From<Code> for tonic::Code {
        fn from(code: Code) -> Self {
            tonic::Code::from_i32(i32::from(code.as_u8()))
        }
    }

    impl From<Rejection> for tonic::Status {
        /// The rejection's code; its display text as the message; for a retry hint, the
        /// `grpc-retry-pushback-ms` metadata.
        fn from(rejection: Rejection) -> Self {
            status_from_rejection(&rejection)
        }
    }

    pub(super) fn status_from_rejection(rejection: &Rejection) -> tonic::Status {
        let mut status =
            tonic::Status::new(Code::for_rejection(rejection).into(), rejection.to_string());
        if let Some(after) = rejection.retry_after() {
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            if let Ok(v) = ms.to_string().parse() {
                status.metadata_mut().insert("grpc-retry-pushback-ms", v);
            }
        }
        status
    }

    /// The `tonic::Status` a client stack's error stands for: a rejection becomes its code
    /// (with `grpc-retry-pushback-ms` when it has a retry hint), a `tonic::Status` is
    /// returned as it is, and anything else goes through `tonic::Status::from_error`
    /// (transport errors become `UNAVAILABLE` or `UNKNOWN`).
    ///
    /// Use it in a tonic client built on a parapet stack, where tonic expects `Status`:
    ///
    /// ```
    /// use tower_parapet::{grpc::status_from_error, Rejection};
    /// let err = Rejection::timeout(std::time::Duration::from_secs(1)).boxed();
    /// assert_eq!(status_from_error(err).code(), tonic::Code::DeadlineExceeded);
    /// ```
    pub fn status_from_error(err: BoxError) -> tonic::Status {
        if let Some(r) = Rejection::from_box(&err) {
            return status_from_rejection(r);
        }
        match err.downcast::<tonic::Status>() {
            Ok(status) => *status,
            Err(err) => tonic::Status::from_error(err),
        }
    }
}

#[cfg(feature = "tonic")]
pub use tonic_impls::status_from_error;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_and_limits() {
        assert_eq!(parse_grpc_timeout(b"2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"3S"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout(b"7u"), Ok(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout(b"9n"), Ok(Duration::from_nanos(9)));
        assert_eq!(
            parse_grpc_timeout(b"99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in [
            &b""[..],
            b"S",
            b"10",
            b"10s",
            b"1.5S",
            b" 1S",
            b"-1S",
            b"123456789m",
            b"1\xffS",
        ] {
            assert_eq!(parse_grpc_timeout(bad), Err(MalformedTimeout), "{bad:?}");
        }
    }

    #[test]
    fn format_round_trips_without_shortening() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(1500),
            Duration::from_secs(100_000),
            Duration::ZERO,
            Duration::MAX,
        ] {
            let s = format_grpc_timeout(d);
            let back = parse_grpc_timeout(s.as_bytes()).unwrap();
            assert!(
                back >= d.min(Duration::from_secs(99_999_999 * 3600)),
                "{d:?} -> {s}"
            );
            assert!(back > Duration::ZERO);
        }
    }

    #[test]
    fn codes() {
        assert_eq!(Code::parse(b"14"), Some(Code::Unavailable));
        assert_eq!(Code::parse(b"17"), None);
        assert_eq!(Code::parse(b"+1"), None);
        assert_eq!(Code::parse(b""), None);
        assert_eq!(
            Code::for_rejection(&Rejection::timeout(Duration::ZERO)),
            Code::DeadlineExceeded
        );
    }
}
