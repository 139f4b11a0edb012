//! placeholder, replaced below
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
pub mod clock;
pub mod config;
pub mod error;
pub mod grpc;
pub mod key;
pub mod mode;
pub mod observe;
mod parse;

pub use error::{BoxError, ConfigError, RateLimitInfo, Rejection, RejectionKind, RejectionKinds};
pub use mode::{Mode, ModeHandle};

pub mod fallback;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod timeout;
