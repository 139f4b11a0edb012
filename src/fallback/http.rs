//! HTTP pieces of the fallback layer: snapshots of responses, and a marker header.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;

use super::last_known_good::{Snapshot, Taken};
use super::source::Mark;

/// Copies HTTP responses whose body has a known size (`size_hint().exact()`) of at most
/// `max_body_bytes`: the body is buffered, stored with status, version and headers, and
/// the response goes on with the buffered body. Streaming bodies of unknown size and
/// larger ones pass through untouched and are not kept.
///
/// Only responses that are safe to replay to another request with the same key are kept:
/// a `2xx` status, no `Set-Cookie`, and no `Cache-Control: no-store` or `private`. The
/// key decides who may see a copy: with [`Target`](crate::key::Target) (method, path and
/// query) every caller of that URL may be answered with it, so add the user or tenant to
/// the key (a pair of extractors) when responses depend on who asks.
///
/// The body type must be buildable from `Bytes` (`B: From<Bytes>`): axum's `Body`,
/// `http_body_util::Full<Bytes>` and most others are.
#[derive(Debug, Clone, Copy)]
pub struct HttpSnapshot {
    max_body_bytes: u64,
}

impl HttpSnapshot {
    /// Keep bodies of at most `max_body_bytes`.
    pub fn new(max_body_bytes: u64) -> HttpSnapshot {
        HttpSnapshot { max_body_bytes }
    }
}

/// Why a response must not be replayed, if it must not.
fn not_replayable<B>(res: &Response<B>) -> Option<&'static str> {
    if !res.status().is_success() {
        return Some("status is not 2xx");
    }
    let headers = res.headers();
    if headers.contains_key(http::header::SET_COOKIE) {
        return Some("response sets a cookie");
    }
    let private = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().split('=').next().unwrap_or("").trim())
        .any(|d| d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private"));
    private.then_some("Cache-Control forbids storing it")
}

/// A stored HTTP response.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl StoredResponse {
    fn rebuild<B: From<Bytes>>(&self) -> Response<B> {
        let mut res = Response::new(B::from(self.body.clone()));
        *res.status_mut() = self.status;
        *res.version_mut() = self.version;
        *res.headers_mut() = self.headers.clone();
        res
    }
}

impl<B> Snapshot<Response<B>> for HttpSnapshot
where
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    type Stored = StoredResponse;

    fn take(&self, res: Response<B>) -> Taken<Response<B>, StoredResponse> {
        if let Some(reason) = not_replayable(&res) {
            return Taken::Ready(res, Err(reason));
        }
        match res.body().size_hint().exact() {
            Some(n) if n <= self.max_body_bytes => {}
            Some(_) => return Taken::Ready(res, Err("body larger than max_body_bytes")),
            None => return Taken::Ready(res, Err("body of unknown size")),
        }
        Taken::Future(Box::pin(async move {
            let (parts, body) = res.into_parts();
            let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
            let stored = StoredResponse {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body: bytes,
            };
            Ok((stored.rebuild(), stored))
        }))
    }

    fn restore(&self, stored: &StoredResponse) -> Response<B> {
        stored.rebuild()
    }

    fn weight(&self, stored: &StoredResponse) -> u32 {
        let headers: usize = stored
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        u32::try_from(stored.body.len() + headers).unwrap_or(u32::MAX)
    }
}

/// Marks fallback answers with a response header naming their source, e.g.
/// `parapet-fallback: last_known_good`.
#[derive(Debug, Clone)]
pub struct HeaderMark {
    name: HeaderName,
}

impl Default for HeaderMark {
    /// The header `parapet-fallback`.
    fn default() -> Self {
        HeaderMark::new(HeaderName::from_static("parapet-fallback"))
    }
}

impl HeaderMark {
    /// Mark with header `name`.
    pub fn new(name: HeaderName) -> HeaderMark {
        HeaderMark { name }
    }
}

impl<B> Mark<Response<B>> for HeaderMark
where
    B: Send + 'static,
{
    fn mark(&self, res: &mut Response<B>, source: &'static str) {
        if let Ok(value) = HeaderValue::from_str(source) {
            res.headers_mut().insert(self.name.clone(), value);
        }
    }
}
