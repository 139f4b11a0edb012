//! A response cache: memory is cheap, databases are expensive — without stampedes or
//! stale surprises.
//!
//! [`CacheLayer`] answers `GET` and `HEAD` requests from stored copies of earlier
//! responses. Concurrent misses for one key make **one** inner call (request
//! coalescing); stale copies can answer while one refresh runs in the background
//! (stale-while-revalidate) or when the dependency fails (stale-if-error), per RFC 5861.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower_parapet::cache::CacheLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_parapet::BoxError> {
//! let cache = CacheLayer::builder()
//!     .ttl(Duration::from_secs(30))
//!     .stale_while_revalidate(Duration::from_secs(10))
//!     .stale_if_error(Duration::from_secs(600))
//!     .cache_status("parapet")
//!     .build()?;
//! let handle = cache.handle();
//! let mut svc = ServiceBuilder::new().layer(cache).service(service_fn(
//!     |_req: http::Request<Full<Bytes>>| async {
//!         let products = Full::new(Bytes::from("[\"tea\",\"coffee\"]"));
//!         Ok::<_, std::convert::Infallible>(http::Response::new(products))
//!     },
//! ));
//! let get = || http::Request::get("/products").body(Full::default()).unwrap();
//! let first = svc.ready().await?.call(get()).await?;
//! assert_eq!(first.headers()["cache-status"], "parapet; fwd=miss; stored");
//! let second = svc.ready().await?.call(get()).await?;
//! assert_eq!(second.headers()["cache-status"], "parapet; hit");
//! assert_eq!(second.headers()["age"], "0");
//! handle.invalidate_prefix("/products");
//! # Ok(())
//! # }
//! ```
//!
//! Request bodies must be buildable from `Bytes` (`B: From<Bytes>`, for the background
//! refresh: axum's `Body` and `Full<Bytes>` are), and response bodies `Unpin`, as for the
//! [idempotency](crate::idempotency) layer.
//!
//! # What is cached
//! - Only `GET` and `HEAD`. Other methods pass through untouched and are never answered
//!   from the cache. Requests with `Authorization` pass through too unless
//!   [`allow_authorized`](CacheBuilder::allow_authorized) (put the principal in the key).
//! - The key is the method, the path and query ([`Target`](crate::key::Target)) and the
//!   values of the configured [`key_header`](CacheBuilder::key_header)s
//!   ([`Header`](crate::key::Header)). A request whose key cannot be read (a target over
//!   2048 bytes, a key header that is not visible ASCII) passes through
//!   ([`Event::CacheNotStored`] with reason `"request has no usable key"`).
//! - Responses with a 2xx status, no `Set-Cookie`, and (unless
//!   [`ignore_cache_control`](CacheBuilder::ignore_cache_control)) no
//!   `Cache-Control: no-store`, `private` or `no-cache`; freshness is `s-maxage`, else
//!   `max-age`, else the [`ttl`](CacheBuilder::ttl) (`max-age=0` is not stored); a
//!   response's `stale-while-revalidate` and `stale-if-error` override the configured
//!   windows. `Vary: *`, or `Vary` on a header that is not in the key, is not stored.
//!   `Expires`, request directives (a client's `no-cache`) and an upstream `Age` are not
//!   read.
//! - Bodies of at most [`max_body_bytes`](CacheBuilder::max_body_bytes) are buffered
//!   (body and trailers); a larger response passes through whole, uncached.
//! - The store is bounded by [`max_entries`](CacheBuilder::max_entries) and
//!   [`max_bytes`](CacheBuilder::max_bytes) (a `moka` weigher: body, headers, key), with
//!   an optional [`time_to_idle`](CacheBuilder::time_to_idle).
//!
//! Freshness and the stale windows are measured on the layer's
//! [`Clock`](crate::clock::Clock) (tokio's by default), so `tokio::time::pause` and
//! `advance` drive them exactly in tests.
//!
//! # Marks
//! Answers from the cache carry `Age` (whole seconds since stored); stale ones also carry
//! a [`Verdict::Cached`](crate::http::Verdict::Cached) the logging layer reads (a fresh
//! hit does not: the extension would cost an allocation, and a hit costs only its
//! response's copy). With
//! [`cache_status`](CacheBuilder::cache_status) every answer also carries an RFC 9211
//! `Cache-Status`: `parapet; hit`, `parapet; hit; ttl=-3` (stale while revalidating),
//! `parapet; fwd=stale; fwd-status=503; ttl=-40` (stale if error),
//! `parapet; fwd=miss; stored`, `parapet; fwd=miss; collapsed` (a coalesced waiter).
//!
//! # Request coalescing
//! The first miss for a key leads: it calls the inner service. Misses for the same key
//! that arrive meanwhile wait for its outcome (a `tokio::sync::watch` channel made before
//! they wait, so none can miss the end) and then:
//! - get a copy of its buffered response (stored, or a status that is not 2xx, like a
//!   503: the same failure for all),
//! - get its failure at once: the same [`Rejection`](crate::Rejection) if an inner layer
//!   refused, otherwise a [`CoalescedError`] with the error's text (or a stale copy, under
//!   stale-if-error),
//! - call the inner service themselves when the response may not be reused for them
//!   (`no-store`, `private`, `no-cache`, `max-age=0`, `Set-Cookie`, a `Vary` outside the
//!   key) or was not buffered (a body over the cap),
//! - or, when the leader's future is dropped (or panics) before it ends, one of them
//!   takes over as the new leader and the others wait for it.
//!
//! An invalidation while a call is in flight keeps that call's response out of the store
//! (any invalidation, of any key: a conservative rule that may skip storing an unrelated
//! response now and then).
//!
//! # Stale windows (RFC 5861)
//! After its freshness, a copy is served for
//! [`stale_while_revalidate`](CacheBuilder::stale_while_revalidate) while **one**
//! background refresh runs (`tokio::spawn`, a copy of the request's method, target,
//! version and headers with an empty body; extensions are not copied). The refresh needs
//! a tokio runtime: without one (`Handle::try_current` fails) nothing is spawned, the
//! stale copy keeps being served until its window ends, and the next request then
//! refreshes in line. A refresh that fails (an error or a status that is not 2xx) leaves
//! the stale copy in place, and the next stale answer starts another one: at most one is
//! in flight per key. Within [`stale_if_error`](CacheBuilder::stale_if_error), a miss
//! goes to the inner service, and an error or a 5xx is answered with the stale copy.
//! Stale answers are marked ([`Event::CacheStaleServed`], `Cache-Status`, the verdict).
//!
//! # Invalidation and the fallback
//! The [`CacheHandle`] removes one key, every key of a target, every key under a prefix,
//! or everything. [`CacheHandle::fallback_source`] gives a [`CacheSource`]: a
//! [`FallbackLayer`](crate::fallback::FallbackLayer) answers a failure with the cached
//! copy (fresh or stale, while the store keeps it) — the cache as last known good.
//!
//! # Where it goes in a stack
//! Inside a [`FallbackLayer`](crate::fallback::FallbackLayer) (a fallback answer is then
//! never cached, and the fallback can answer from the cache), outside retry, circuit
//! breaker and timeout (a hit costs none of them). A breaker inside the cache turns an
//! outage into fast rejections that stale-if-error answers, instead of one slow failing
//! call per miss.
//!
//! # Storage
//! Behind the [`CacheStore`] trait: [`MemoryCacheStore`] (in process, `moka`) by
//! default. The trait allows a remote store (lookups may answer later, writes are
//! fire-and-forget, keys are strings); coalescing stays in process.
//!
//! # Speed
//! A fresh hit makes no inner call and allocates only the response it returns (the
//! header map's clone and the verdict extension): the key is built in a buffer kept per
//! thread, the body is a shared `Bytes`, `Age` values of the first ten minutes are made
//! once, and stored header maps already hold `Age` (and `Cache-Status`) so setting them
//! does not grow the map. The response future of a hit is ready at once (no box).
//!
//! # Errors
//! `Error = BoxError`. Inner errors pass through untouched to the caller whose call
//! failed; coalesced waiters get the rejection or a [`CoalescedError`]. A body error while
//! buffering is returned in place of the response.
//!
//! # Shared state
//! The store, the calls in flight and the handle belong to the layer: every service it
//! builds and every clone share them (one cache per layer value, so one for every route
//! of an axum `Router` the layer is added to).
//!
//! # Backpressure
//! `poll_ready` forwards the inner service's readiness. A hit does not use the readiness
//! it was given; a miss moves the service that was polled ready into its future.
//!
//! # Events
//! [`Event::CacheHit`], [`Event::CacheMiss`], [`Event::CacheStaleServed`],
//! [`Event::CacheCoalesced`], [`Event::CacheStored`], [`Event::CacheNotStored`] (with the
//! reason) and [`Event::CacheInvalidated`].
//!
//! [`Event::CacheHit`]: crate::observe::Event::CacheHit
//! [`Event::CacheMiss`]: crate::observe::Event::CacheMiss
//! [`Event::CacheStaleServed`]: crate::observe::Event::CacheStaleServed
//! [`Event::CacheCoalesced`]: crate::observe::Event::CacheCoalesced
//! [`Event::CacheStored`]: crate::observe::Event::CacheStored
//! [`Event::CacheNotStored`]: crate::observe::Event::CacheNotStored
//! [`Event::CacheInvalidated`]: crate::observe::Event::CacheInvalidated

mod config;
mod key;
mod layer;
mod policy;
mod source;
mod store;

pub use config::CacheConfig;
pub use key::cache_key;
pub use layer::{Cache, CacheBuilder, CacheHandle, CacheLayer, CoalescedError, ResponseFuture};
pub use source::CacheSource;
pub use store::{CacheStore, CachedEntry, Lookup, MemoryCacheStore, Selector};
