//! The `RateLimit` fields on admitted HTTP responses.

use super::layer::OnAdmitted;
use crate::error::RateLimitInfo;

/// Adds the IETF `RateLimit-Policy` and `RateLimit` fields (draft-10 syntax) to admitted
/// HTTP responses, for the quota with the least left: `RateLimit-Policy: "api";q=100;w=60`,
/// `RateLimit: "api";r=42;t=35` (`t`: seconds until the quota is full again, rounded up).
/// Set it with [`RateLimitLayer::on_admitted`](super::RateLimitLayer::on_admitted).
/// Refusals carry the fields whether or not it is set.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitHeaders {
    enabled: bool,
}

impl Default for RateLimitHeaders {
    fn default() -> Self {
        RateLimitHeaders { enabled: true }
    }
}

impl RateLimitHeaders {
    /// The fields on every admitted response.
    pub fn new() -> RateLimitHeaders {
        RateLimitHeaders::default()
    }

    /// On or off (for configuration files: off is the same as
    /// [`NoHeaders`](super::NoHeaders)).
    pub fn enabled(enabled: bool) -> RateLimitHeaders {
        RateLimitHeaders { enabled }
    }
}

impl<B> OnAdmitted<http::Response<B>> for RateLimitHeaders {
    #[inline]
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn apply(&self, res: &mut http::Response<B>, info: &RateLimitInfo) {
        crate::http::rate_limit_fields(info, res.headers_mut());
    }
}
