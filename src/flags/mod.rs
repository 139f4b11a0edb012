//! Feature flags: kill switches, percentage rollouts and runtime toggles, without a deploy.
//!
//! A [`FlagStore`] holds the flags of a process; a [`FeatureGateLayer`] runs the service
//! it wraps (the feature) only when its flag is on for the request, and otherwise refuses
//! (404 through the edge adapter, gRPC `UNIMPLEMENTED`), answers with a response of yours,
//! or routes the request to the old code path. Flags change at runtime — in code, from a
//! watched JSON/TOML [file](FileSource), or through the admin router
//! ([`http::admin`](crate::http::admin), feature `axum`) — and a change is seen by every
//! request that starts after it returns.
//!
//! ```
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_parapet::flags::{FeatureGateLayer, FlagDef, FlagStore};
//! use tower_parapet::{Rejection, RejectionKind};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_parapet::BoxError> {
//! let flags = FlagStore::new();
//! flags.set("new-search", FlagDef::boolean(true))?;
//! let mut search = ServiceBuilder::new()
//!     .layer(FeatureGateLayer::new(&flags, "new-search"))
//!     .service(service_fn(|q: &'static str| async move {
//!         Ok::<_, std::convert::Infallible>(format!("results for {q}"))
//!     }));
//!
//! assert_eq!(search.ready().await?.call("rust").await?, "results for rust");
//! flags.kill("new-search")?; // it misbehaves in production
//! let err = search.ready().await?.call("rust").await.unwrap_err();
//! assert_eq!(Rejection::from_box(&err).unwrap().kind(), RejectionKind::FeatureDisabled);
//! # Ok(())
//! # }
//! ```
//!
//! # Evaluation
//! Modelled on OpenFeature and LaunchDarkly; a [`FlagDef`] is data (serde):
//!
//! 1. `enabled = false` (the kill switch) → `off_variant`, reason `DISABLED`;
//! 2. explicit targets: the targeting key in `deny` → `off_variant`, in `allow` →
//!    `on_variant` (`TARGETING_MATCH`);
//! 3. `rules` on attributes of the [`EvalContext`], first match wins (`TARGETING_MATCH`);
//! 4. a percentage `rollout` (`SPLIT`);
//! 5. `default_variant` (`STATIC` when the flag has no targeting, else `DEFAULT`).
//!
//! The result is a [`FlagDetails`]: value, variant, [`Reason`] (OpenFeature's names:
//! `STATIC`, `TARGETING_MATCH`, `SPLIT`, `DISABLED`, `DEFAULT`, `ERROR`) and an
//! [`ErrorCode`]. Evaluation never panics and never fails a request: a missing flag, a
//! value of the wrong type, a rollout with no targeting key or a malformed context
//! answers the caller's default with reason `ERROR` and emits
//! [`Event::FlagEvaluationFailed`](crate::observe::Event::FlagEvaluationFailed).
//!
//! # Rollouts: sticky and Unleash-compatible
//! A targeting key's [`bucket`] (1–100) is `murmur3_x86_32("{group_id}:{key}", seed 0)
//! % 100 + 1` over UTF-8 bytes, the formula of Unleash's gradual rollout (its Node,
//! Java, Ruby and Rust SDKs), with `group_id` defaulting to the flag's name; a key is
//! inside a rollout of `p` % when its bucket is at most `p`. So a bucket is the same in
//! every process, platform and release; raising the percentage only adds users; and a
//! team moving from Unleash keeps every user where they were. (Unleash's Node SDK hashes
//! JavaScript strings byte by byte of their UTF-16 code units truncated to 8 bits, so it
//! agrees with this for ASCII keys only; the committed vectors in
//! `tests/data/unleash_buckets.json` are ASCII.) Percentages are whole numbers, as in
//! Unleash. A rollout of 0 or 100 % needs no targeting key.
//!
//! # Store
//! Reading is one `arc-swap` load of the current snapshot and an index (each gate knows
//! its flag's slot): no lock and no allocation for a boolean flag. Every change builds a
//! new snapshot and swaps it in. [`FlagStore::bind_mode`] keeps any layer's
//! [`ModeHandle`](crate::ModeHandle) in step with a flag, so an operator switches a rate
//! limiter or a breaker to shadow by flipping a flag.
//!
//! # Modes
//! [`Mode::Shadow`](crate::Mode::Shadow) evaluates and reports
//! ([`Event::FeatureGated`](crate::observe::Event::FeatureGated) with `shadow`) but runs
//! the feature; [`Mode::Off`](crate::Mode::Off) runs it without evaluating.
//!
//! # Backpressure
//! `poll_ready` forwards the feature's readiness and, with [`route_to`](FeatureGateLayer::route_to),
//! the alternate service's: the gate is ready when both are.

mod context;
mod eval;
#[cfg(feature = "flag-files")]
mod file;
mod gate;
mod model;
mod murmur3;
mod store;

pub use context::{Attribute, ContextExtractor, ContextValue, FnContext, TargetingKey, context_fn};
pub use eval::{ErrorCode, EvalContext, FlagDetails, Reason, TARGETING_KEY};
#[cfg(feature = "flag-files")]
#[cfg_attr(docsrs, doc(cfg(feature = "flag-files")))]
pub use file::{FileFormat, FileSource, FlagFileError};
pub use gate::{
    FeatureGate, FeatureGateConfig, FeatureGateLayer, GateAction, MapErr, Refused, Reject, Respond,
    ResponseFuture, Route, WhenOff,
};
pub use model::{Clause, FlagDef, FlagSet, FlagValue, MAX_FLAG_NAME_LEN, Op, Rollout, Rule};
pub use murmur3::{bucket, murmur3_x86_32};
pub use store::{FlagEditor, FlagError, FlagStore};
