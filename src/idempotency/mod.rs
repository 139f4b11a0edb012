//! Idempotency keys: a double-clicked "Pay" charges once.
//!
//! Clients send a unique `Idempotency-Key` with a request that must not run twice (the
//! IETF `draft-ietf-httpapi-idempotency-key-header`, as Stripe practises it). The first
//! request with a key **claims** it and runs; its response is **stored**; a retry with
//! the same key gets the stored response, byte for byte, with `Idempotent-Replayed: true`,
//! without running the handler again.
//!
//! ```
//! use axum::{Router, routing::post};
//! use tower::ServiceBuilder;
//! use tower_parapet::http::RejectionResponseLayer;
//! use tower_parapet::idempotency::{Conflict, IdempotencyLayer};
//! use tower_parapet::key;
//! use std::time::Duration;
//!
//! async fn pay() -> &'static str { "charged" }
//!
//! let app: Router = Router::new().route("/pay", post(pay)).layer(
//!     ServiceBuilder::new()
//!         .layer(RejectionResponseLayer::new())
//!         .layer(
//!             IdempotencyLayer::new()
//!                 .required(true)
//!                 // A retry while the first request runs waits for its answer.
//!                 .conflict(Conflict::Wait(Duration::from_secs(10)))
//!                 // Records are per user: nobody replays another's payment.
//!                 .principal(key::Header::new(http::HeaderName::from_static("x-user-id"))),
//!         ),
//! );
//! ```
//!
//! # What happens to a request
//! | request | answer |
//! |---|---|
//! | method not guarded (default: only POST and PATCH are) | passes through |
//! | no key, key optional (the default) | passes through |
//! | no key, [`required`](IdempotencyLayer::required) | `400` ([`Rejection::IdempotencyKeyMissing`](crate::Rejection::IdempotencyKeyMissing)) |
//! | malformed key, or longer than 255 bytes | `400` ([`Rejection::IdempotencyKeyInvalid`](crate::Rejection::IdempotencyKeyInvalid)) |
//! | body over [`max_request_bytes`](IdempotencyLayer::max_request_bytes) | `413` ([`Rejection::PayloadTooLarge`](crate::Rejection::PayloadTooLarge)) |
//! | first with its key | runs; its response is stored |
//! | same key, same request, first one finished | the stored response, `Idempotent-Replayed: true` |
//! | same key, same request, first one still running | `409` ([`Conflict::Reject`]), or waits for the first one's answer and replays it ([`Conflict::Wait`]) |
//! | same key, different request (method, path, query, chosen headers, body) | `422` ([`Rejection::IdempotencyMismatch`](crate::Rejection::IdempotencyMismatch)) |
//! | too many claims in flight | `503` ([`Rejection::Overloaded`](crate::Rejection::Overloaded)) |
//!
//! Services that are not HTTP (any request and response values) use
//! [`IdempotencyLayer::values`] with a [`ValueCodec`] that fingerprints a request and
//! stores a response as bytes, and a key read from the request (a message field) by any
//! [`KeyExtractor`](crate::key::KeyExtractor).
//!
//! gRPC (through [`RejectionResponseLayer`](crate::http::RejectionResponseLayer)):
//! `INVALID_ARGUMENT`, `ABORTED` for a key in flight, `FAILED_PRECONDITION` for a
//! mismatch, `RESOURCE_EXHAUSTED` for a body too large. gRPC metadata is a header at this
//! level, so the key can come from metadata ([`IdempotencyKeyHeader::new`]), and trailers
//! (`grpc-status`) are stored and replayed with the body.
//!
//! # What is stored
//! Records are scoped by principal ([`principal`](IdempotencyLayer::principal)), method,
//! path and key. As Stripe does, a response is stored once the handler has run —
//! whatever its status, 5xx included, unless [`store_if`](IdempotencyLayer::store_if) says
//! otherwise. Nothing is stored, and the key is freed so that the client may retry, when:
//! the inner service returns an error (a rejection by an inner layer, a failure before
//! the handler ran), the request's future is dropped or the handler panics, or the
//! response body is larger than [`max_response_bytes`](IdempotencyLayer::max_response_bytes)
//! (it is passed on whole). So nothing is lost: a response the handler produced is either
//! stored and replayable, or its key is free. A claim also has a
//! [`lease`](IdempotencyLayer::lease), after which a holder that never finished (a leaked
//! future, a crashed instance with a shared store) no longer blocks its key.
//!
//! # Storage
//! Behind the [`IdempotencyStore`] trait. [`MemoryStore`] keeps claims in flight (never
//! evicted, bounded in number) and finished records (bounded in count and in bytes,
//! expiring after their retention) in `moka` caches. With several instances, a shared
//! store is needed for keys to be seen by all.
//!
//! # Modes
//! [`Mode::Shadow`](crate::Mode::Shadow) keeps claims and records as usual but runs
//! requests that would be refused or replayed, and reports them; [`Mode::Off`](crate::Mode::Off)
//! passes everything through.
//!
//! # Events
//! [`Event::IdempotencyReplayed`](crate::observe::Event::IdempotencyReplayed),
//! [`IdempotencyRejected`](crate::observe::Event::IdempotencyRejected),
//! [`IdempotencyStored`](crate::observe::Event::IdempotencyStored) and
//! [`IdempotencyReleased`](crate::observe::Event::IdempotencyReleased) (with the reason
//! a key was freed).

mod config;
mod key;
mod layer;
mod store;
mod values;

/// The body of [`Idempotency`]'s responses (the shared [`BufferedBody`](crate::http::BufferedBody)).
pub type IdempotentBody<B> = crate::http::BufferedBody<B>;
pub use config::IdempotencyConfig;
pub use key::{DEFAULT_MAX_KEY_LEN, IdempotencyKeyHeader};
pub use layer::{Conflict, Http, Idempotency, IdempotencyLayer, ResponseFuture, StorePredicate};
pub use store::{
    Claim, ClaimToken, Fingerprint, IdempotencyStore, MemoryStore, Record, RecordKey, StoreError,
    StoredResponse,
};
pub use values::{FnCodec, ValueCodec, ValueFuture, Values, codec};
