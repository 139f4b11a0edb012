//! What parapet did with a request, left in the response's extensions.

use crate::error::RejectionKind;

/// What parapet did with a request, left in the HTTP response's extensions by the layer
/// that decided it, for outer layers to read (the
/// [`LoggingLayer`](crate::logging::LoggingLayer) logs it and counts it). A response
/// without one was answered by the service itself.
///
/// | set by | verdict |
/// |---|---|
/// | [`RejectionResponseLayer`](super::RejectionResponseLayer), answering a rejection | [`Rejected`](Verdict::Rejected) with its kind |
/// | [`RejectionResponseLayer`](super::RejectionResponseLayer), answering any other error | [`InternalError`](Verdict::InternalError) |
/// | [`FallbackLayer`](crate::fallback::FallbackLayer) with [`HeaderMark`](crate::fallback::HeaderMark) | [`Fallback`](Verdict::Fallback) with its source |
/// | [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer), replaying | [`Replayed`](Verdict::Replayed) |
/// | [`CacheLayer`](crate::cache::CacheLayer), answering with a stale copy | [`Cached`](Verdict::Cached) with `"stale_while_revalidate"` or `"stale_if_error"` (a fresh hit carries none: it would cost an allocation) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// A layer refused the request.
    Rejected(RejectionKind),
    /// A fallback answered, from this source (`"value"`, `"last_known_good"`, ...).
    Fallback(&'static str),
    /// A stored response was replayed for an idempotency key.
    Replayed,
    /// The service failed and the edge adapter answered 500.
    InternalError,
    /// The response cache answered: `"hit"` (fresh), `"stale_while_revalidate"` or
    /// `"stale_if_error"`.
    Cached(&'static str),
}

impl Verdict {
    /// `"rejected"`, `"fallback"`, `"replayed"`, `"internal_error"` or `"cached"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Rejected(_) => "rejected",
            Verdict::Fallback(_) => "fallback",
            Verdict::Replayed => "replayed",
            Verdict::InternalError => "internal_error",
            Verdict::Cached(_) => "cached",
        }
    }

    /// The rejection kind, the fallback source or the cache's answer; empty for the
    /// others.
    pub const fn detail(self) -> &'static str {
        match self {
            Verdict::Rejected(kind) => kind.as_str(),
            Verdict::Fallback(source) | Verdict::Cached(source) => source,
            Verdict::Replayed | Verdict::InternalError => "",
        }
    }
}
