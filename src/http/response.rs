//! How a rejection answers over HTTP and over gRPC-on-HTTP.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

use crate::error::{RateLimitInfo, Rejection, RejectionKind};
use crate::grpc::Code;

pub(crate) const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// The HTTP status each rejection kind answers with, configurable per kind.
///
/// Defaults: timeout 504, circuit open 503, rate limited 429, overloaded 503, feature
/// disabled 404, idempotency key missing or invalid 400, in flight 409, payload mismatch
/// 422.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusMap([StatusCode; RejectionKind::ALL.len()]);

impl Default for StatusMap {
    fn default() -> Self {
        let mut map = [StatusCode::INTERNAL_SERVER_ERROR; RejectionKind::ALL.len()];
        for kind in RejectionKind::ALL {
            map[kind as usize] = match kind {
                RejectionKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                RejectionKind::CircuitOpen | RejectionKind::Overloaded => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                RejectionKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                RejectionKind::FeatureDisabled => StatusCode::NOT_FOUND,
                RejectionKind::IdempotencyKeyMissing | RejectionKind::IdempotencyKeyInvalid => {
                    StatusCode::BAD_REQUEST
                }
                RejectionKind::IdempotencyInFlight => StatusCode::CONFLICT,
                RejectionKind::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
                RejectionKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            };
        }
        StatusMap(map)
    }
}

impl StatusMap {
    /// The status for `kind`.
    pub fn get(&self, kind: RejectionKind) -> StatusCode {
        self.0[kind as usize]
    }

    /// Answer `kind` with `status` instead.
    #[must_use]
    pub fn with(mut self, kind: RejectionKind, status: StatusCode) -> StatusMap {
        self.0[kind as usize] = status;
        self
    }
}

/// Seconds for `Retry-After`: rounded up, never 0.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    secs.max(1)
}

/// Keep a name usable inside an RFC 9651 sf-string: printable ASCII, with `\` and `"`
/// escaped.
fn sf_string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name, v);
    }
}

/// The IETF `RateLimit-Policy` and `RateLimit` fields for `p` (draft-10 syntax); returns
/// `t`, the seconds until the quota is restored (rounded up, never 0).
pub(crate) fn rate_limit_fields(p: &RateLimitInfo, headers: &mut HeaderMap) -> u64 {
    let name = sf_string(&p.policy);
    let t = retry_after_secs(p.reset);
    set(
        headers,
        "ratelimit-policy",
        format!("{name};q={};w={}", p.quota, retry_after_secs(p.window)),
    );
    set(
        headers,
        "ratelimit",
        format!("{name};r={};t={t}", p.remaining),
    );
    t
}

/// The headers that carry a rejection's retry information: `Retry-After`, and for a rate
/// limit with a known policy the IETF `RateLimit-Policy` and `RateLimit` fields.
pub(crate) fn retry_headers(rejection: &Rejection, headers: &mut HeaderMap) {
    let mut retry = rejection.retry_after().map(retry_after_secs);
    if let Rejection::RateLimited {
        policy: Some(p), ..
    } = rejection
    {
        let t = rate_limit_fields(p, headers);
        retry = Some(retry.map_or(t, |r| r.max(t)));
    }
    if let Some(secs) = retry {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}

/// An RFC 9457 problem document for `status` and `rejection`.
pub(crate) fn problem_body(status: StatusCode, rejection: Option<&Rejection>) -> Bytes {
    let mut doc = serde_json::Map::new();
    doc.insert("type".into(), "about:blank".into());
    doc.insert(
        "title".into(),
        status.canonical_reason().unwrap_or("Error").into(),
    );
    doc.insert("status".into(), status.as_u16().into());
    match rejection {
        Some(r) => {
            doc.insert("detail".into(), r.to_string().into());
            doc.insert("kind".into(), r.kind().as_str().into());
            if let Some(after) = r.retry_after() {
                doc.insert("retry_after".into(), retry_after_secs(after).into());
            }
        }
        None => {
            doc.insert(
                "detail".into(),
                "the server could not complete the request".into(),
            );
        }
    }
    Bytes::from(serde_json::Value::Object(doc).to_string())
}

/// A complete HTTP answer for a rejection: `status`, retry headers, problem+json body.
pub(crate) fn http_answer(rejection: &Rejection, status: StatusCode) -> Response<Bytes> {
    let mut res = Response::new(problem_body(status, Some(rejection)));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    retry_headers(rejection, res.headers_mut());
    res
}

/// The answer for an inner error that is not a rejection: a 500 whose body names no detail.
pub(crate) fn internal_answer() -> Response<Bytes> {
    let status = StatusCode::INTERNAL_SERVER_ERROR;
    let mut res = Response::new(problem_body(status, None));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    res
}

/// Percent-encode a `grpc-message`: bytes outside printable ASCII, and `%`.
fn grpc_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A gRPC trailers-only answer: HTTP 200, `grpc-status`, `grpc-message`, no body.
pub(crate) fn grpc_answer(
    code: Code,
    message: &str,
    retry_after: Option<Duration>,
) -> Response<Bytes> {
    let mut res = Response::new(Bytes::new());
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, GRPC);
    h.insert("grpc-status", HeaderValue::from(u16::from(code.as_u8())));
    set(h, "grpc-message", grpc_message(message));
    if let Some(after) = retry_after {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
        h.insert("grpc-retry-pushback-ms", HeaderValue::from(ms));
    }
    res
}

/// Whether a request speaks gRPC (`content-type: application/grpc...`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Rejection {
    /// The HTTP status this rejection answers with by default (see [`StatusMap`]).
    pub fn status_code(&self) -> StatusCode {
        StatusMap::default().get(self.kind())
    }

    /// This rejection as an HTTP response: its default status, `Retry-After` (whole seconds,
    /// rounded up, never 0), the RateLimit fields for a rate limit, and an
    /// `application/problem+json` body (RFC 9457).
    pub fn to_http_response(&self) -> Response<Bytes> {
        http_answer(self, self.status_code())
    }

    /// This rejection as a gRPC trailers-only response (HTTP 200 with `grpc-status`).
    pub fn to_grpc_response(&self) -> Response<Bytes> {
        grpc_answer(
            Code::for_rejection(self),
            &self.to_string(),
            self.retry_after(),
        )
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Rejection {
    fn into_response(self) -> axum_core::response::Response {
        self.to_http_response().map(axum_core::body::Body::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn rate_limit_fields() {
        let r = Rejection::rate_limited(
            Duration::from_millis(200),
            Some(RateLimitInfo {
                policy: "per \"ip\"\n".into(),
                quota: 100,
                window: Duration::from_secs(60),
                remaining: 0,
                reset: Duration::from_millis(44_500),
            }),
        );
        let res = r.to_http_response();
        assert_eq!(res.status(), 429);
        let h = res.headers();
        assert_eq!(h["ratelimit-policy"], r#""per \"ip\"";q=100;w=60"#);
        assert_eq!(h["ratelimit"], r#""per \"ip\"";r=0;t=45"#);
        assert_eq!(h["retry-after"], "45", "Retry-After is at least t");
    }

    #[test]
    fn problem_json_shape() {
        let res =
            Rejection::circuit_open("db", Some(Duration::from_millis(2500))).to_http_response();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(res.headers()["retry-after"], "3");
        let doc: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(doc["status"], 503);
        assert_eq!(doc["title"], "Service Unavailable");
        assert_eq!(doc["type"], "about:blank");
        assert_eq!(doc["kind"], "circuit_open");
        let internal: serde_json::Value = serde_json::from_slice(internal_answer().body()).unwrap();
        assert_eq!(internal["status"], 500);
    }

    #[test]
    fn grpc_answer_is_trailers_only() {
        let res = Rejection::feature_disabled("new-ui\u{e9}%").to_grpc_response();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "12");
        assert_eq!(
            res.headers()["grpc-message"],
            "feature `new-ui%C3%A9%25` is disabled"
        );
        assert!(res.body().is_empty());
    }

    #[test]
    fn status_map_overrides() {
        let m = StatusMap::default().with(RejectionKind::Timeout, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(m.get(RejectionKind::Timeout), 408);
        assert_eq!(m.get(RejectionKind::IdempotencyMismatch), 422);
        assert_eq!(m.get(RejectionKind::PayloadTooLarge), 413);
        assert_eq!(m.get(RejectionKind::IdempotencyInFlight), 409);
        assert_eq!(m.get(RejectionKind::IdempotencyKeyMissing), 400);
    }
}
