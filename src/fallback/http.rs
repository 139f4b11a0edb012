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
pub(crate) fn not_replayable<B>(res: &Response<B>) -> Option<&'static str> {
    not_replayable_unless(res, false)
}

/// [`not_replayable`], optionally ignoring `Cache-Control` (the status and `Set-Cookie`
/// still count).
pub(crate) fn not_replayable_unless<B>(
    res: &Response<B>,
    ignore_cache_control: bool,
) -> Option<&'static str> {
    if !res.status().is_success() {
        return Some("status is not 2xx");
    }
    let headers = res.headers();
    if headers.contains_key(http::header::SET_COOKIE) {
        return Some("response sets a cookie");
    }
    if ignore_cache_control {
        return None;
    }
    let private = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(crate::parse::split_directives)
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
        res.extensions_mut()
            .insert(crate::http::Verdict::Fallback(source));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn res(status: u16, headers: &[(&'static str, &'static str)]) -> Response<Full<Bytes>> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from_static(b"body"))).unwrap()
    }

    #[test]
    fn only_responses_safe_to_replay_are_kept() {
        assert_eq!(not_replayable(&res(200, &[])), None);
        assert_eq!(not_replayable(&res(204, &[])), None);
        assert_eq!(
            not_replayable(&res(200, &[("cache-control", "public, max-age=60")])),
            None
        );
        assert!(not_replayable(&res(500, &[])).is_some());
        assert!(not_replayable(&res(301, &[])).is_some());
        assert!(not_replayable(&res(200, &[("set-cookie", "a=b")])).is_some());
        for cc in [
            "no-store",
            "max-age=5, PRIVATE",
            "private=\"x-user\"",
            " No-Store ",
        ] {
            assert!(
                not_replayable(&res(200, &[("cache-control", cc)])).is_some(),
                "{cc}"
            );
        }
    }

    #[tokio::test]
    async fn snapshots_rebuild_status_version_headers_and_body() {
        let snapshot = HttpSnapshot::new(16);
        let original = res(203, &[("etag", "\"v1\""), ("content-type", "text/plain")]);
        let (passed_on, stored) = match snapshot.take(original) {
            Taken::Future(fut) => fut.await.unwrap(),
            Taken::Ready(..) => panic!("a small body of known size is buffered"),
        };
        assert_eq!(passed_on.status(), 203);
        assert_eq!(
            passed_on.into_body().collect().await.unwrap().to_bytes(),
            "body"
        );
        let replay: Response<Full<Bytes>> = snapshot.restore(&stored);
        assert_eq!(replay.status(), 203);
        assert_eq!(replay.version(), Version::HTTP_11);
        assert_eq!(replay.headers()["etag"], "\"v1\"");
        assert_eq!(replay.headers()["content-type"], "text/plain");
        assert_eq!(
            replay.into_body().collect().await.unwrap().to_bytes(),
            "body"
        );
        assert_eq!(
            Snapshot::<Response<Full<Bytes>>>::weight(&snapshot, &stored),
            // body + "etag" + "\"v1\"" + "content-type" + "text/plain"
            4 + 4 + 4 + 12 + 10
        );
    }

    #[test]
    fn large_bodies_are_not_taken() {
        match HttpSnapshot::new(3).take(res(200, &[])) {
            Taken::Ready(res, Err(reason)) => {
                assert_eq!(res.status(), 200);
                assert_eq!(reason, "body larger than max_body_bytes");
            }
            _ => panic!("a 4-byte body is over a 3-byte limit"),
        }
        assert!(matches!(
            HttpSnapshot::new(4).take(res(200, &[])),
            Taken::Future(_)
        ));
    }

    #[test]
    fn header_mark_names_the_source() {
        let mut r = res(200, &[]);
        HeaderMark::default().mark(&mut r, "last_known_good");
        assert_eq!(r.headers()["parapet-fallback"], "last_known_good");
        HeaderMark::new(HeaderName::from_static("x-stale")).mark(&mut r, "value");
        assert_eq!(r.headers()["x-stale"], "value");
    }
}
