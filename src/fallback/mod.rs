//! Answers for failed calls: what do we answer when the dependency fails?
//!
//! [`FallbackLayer`] watches each call's outcome; when its classifier calls it a failure,
//! it answers from a [`Source`] instead.
//!
//! ```
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_parapet::fallback::{self, FallbackLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_parapet::BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(FallbackLayer::new(fallback::value(Vec::<String>::new())))
//!     .service(service_fn(|_user: u64| async {
//!         Err::<Vec<String>, _>(std::io::Error::other("recommendations are down"))
//!     }));
//! let recommendations = svc.ready().await?.call(42).await?;
//! assert!(recommendations.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! # Triggers
//! A [`Classifier`](crate::classify::Classifier) decides (set it with
//! [`FallbackLayer::classifier`]). The default,
//! [`ErrorsAsFailures`](crate::classify::ErrorsAsFailures), answers for every error —
//! the inner service's own and the [`Rejection`](crate::Rejection)s of inner layers
//! (timeout, open circuit...). [`RejectionsAsFailures::only`](crate::classify::RejectionsAsFailures::only)
//! limits it to some rejection kinds;
//! [`ServerErrorsAsFailures`](crate::classify::ServerErrorsAsFailures) also answers for
//! HTTP 5xx responses. What is not a failure passes through untouched.
//!
//! # Sources
//! - [`value`] (or [`FallbackLayer::value`]): a fixed answer (cloned);
//! - [`from_fn`]: a function of the [`Failure`] (it can look at the rejection kind);
//! - [`from_async_fn`]: the same, asynchronous (e.g. a secondary store);
//! - [`LastKnownGood`]: the latest successful answer for the request's key;
//! - your own [`Source`].
//!
//! # Last known good
//! [`LastKnownGood`] keeps a copy of each successful response per key (a
//! [`KeyExtractor`](crate::key::KeyExtractor): [`Global`](crate::key::Global) by default,
//! [`Target`](crate::key::Target) for HTTP method + path + query) in a bounded `moka`
//! cache: at most `max_entries` keys and, if set, `max_bytes` of copies, least useful
//! evicted first (moka's own TTL also drops old copies, as a memory backstop). A request
//! whose key cannot be read is neither kept nor answered from a copy
//! ([`Event::LastKnownGoodSkipped`], then [`Event::FallbackUnavailable`]).
//! A copy is served only while it is younger than its TTL, measured on the layer's
//! [`Clock`](crate::clock::Clock) (tokio's, so `pause`/`advance` drive it in tests); an
//! older one is dropped and the failure shows through. This is stale-if-error: a failure
//! is answered with the last good data for a bounded time. [`CloneSnapshot`] copies `Clone`
//! responses; [`HttpSnapshot`] (feature `http`) buffers HTTP bodies of a known size up to
//! `max_body_bytes` and rebuilds the response from the copy; larger or streaming bodies
//! pass through untouched and are not kept ([`Event::LastKnownGoodSkipped`]), and so do
//! responses unsafe to replay to another caller: non-2xx, `Set-Cookie`,
//! `Cache-Control: private` or `no-store`. The key decides who may be answered with a
//! copy: include the user or tenant in it when responses depend on who asks. When a key
//! has no copy, the original failure is returned ([`Event::FallbackUnavailable`]).
//!
//! Every fallback answer is an [`Event::FallbackServed`] with its source and trigger;
//! with [`FallbackLayer::mark`] and [`HeaderMark`] an HTTP answer also carries
//! `parapet-fallback: <source>`, so nobody mistakes it for fresh data.
//!
//! # Errors
//! `Error = BoxError`. When the source has nothing, the original failure (error or
//! response) is returned unchanged, so a [`Rejection`](crate::Rejection) or the inner
//! service's own error still downcasts to its type. A function source owns the failure it
//! is given: the error it returns is what the caller gets (give the original back,
//! `Failure::Error(e) => Err(e)`, to decline). Both are reported as
//! [`Event::FallbackUnavailable`]. A body error while buffering a response for
//! [`HttpSnapshot`] is returned in place of the response (the body could not be read; a
//! response is never half-delivered), and nothing is kept.
//!
//! # Shared state
//! A [`LastKnownGood`] store is shared by every clone of the source, so by every service
//! the layer builds and every clone of those (one store per route when an axum `Router`
//! clones the layer). Nothing else is kept between calls.
//!
//! # Backpressure
//! `poll_ready` forwards the inner service's readiness; a readiness error is returned as it
//! is, since no call was made. Parapet layers refuse in `call`, so their rejections reach
//! the fallback as call outcomes.
//!
//! # Panics
//! The layer does not catch panics: a panic in the inner future or in your fallback
//! function propagates (put a catch-panic layer, such as tower-http's `CatchPanicLayer`,
//! inside the fallback if a panic should become a 500 it can answer). Dropping the response future drops the inner future or the
//! fallback being computed; nothing is left behind (a half-buffered body is not stored).
//!
//! # Differences from tower-resilience and Polly fallbacks
//! - The trigger is the crate's shared classifier, so the breaker and the fallback agree
//!   on what a failure is, and rejections are typed (answer only for timeouts, say).
//! - Last known good (stale-if-error) with a TTL and memory bounds is built in.
//! - Answers are marked (event, HTTP header), and a source with nothing to give reports it.
//!
//! [`Event::FallbackServed`]: crate::observe::Event::FallbackServed
//! [`Event::FallbackUnavailable`]: crate::observe::Event::FallbackUnavailable
//! [`Event::LastKnownGoodSkipped`]: crate::observe::Event::LastKnownGoodSkipped

mod future;
#[cfg(feature = "http")]
pub(crate) mod http;
mod last_known_good;
mod layer;
mod source;

pub use future::ResponseFuture;
#[cfg(feature = "http")]
pub use http::{HeaderMark, HttpSnapshot, StoredResponse};
pub use last_known_good::{
    CloneSnapshot, LastKnownGood, LastKnownGoodConfig, LkgContext, Snapshot, Taken,
};
pub use layer::{Fallback, FallbackLayer};
pub use source::{
    Failure, FromAsyncFn, FromFn, Kept, Mark, Recovered, Reporter, Source, Value, from_async_fn,
    from_fn, value,
};
