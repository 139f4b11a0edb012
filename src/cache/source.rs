//! The cache as a fallback's last-known-good source.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::AGE;
use http::{Request, Response};

use super::layer::Shared;
use super::store::{CachedEntry, Lookup};
use crate::fallback::{Failure, Recovered, Reporter, Source};

/// The cache as a [`Source`] for a [`FallbackLayer`](crate::fallback::FallbackLayer):
/// when a call fails, answer with the cached response for the request's key, fresh or
/// stale, as long as the store still holds it (its freshness plus the longer of its stale
/// windows). Get one from [`CacheHandle::fallback_source`](super::CacheHandle::fallback_source).
///
/// It only reads: responses are stored by the [`CacheLayer`](super::CacheLayer), so put
/// the cache inside the fallback (or anywhere the same requests pass). The answer carries
/// `Age`; mark it with [`HeaderMark`](crate::fallback::HeaderMark) like any fallback
/// answer. Its source name in events is `"cache"`.
///
/// The response body type must be buildable from `Bytes` (trailers are not replayed).
#[derive(Clone)]
pub struct CacheSource {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for CacheSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheSource")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl CacheSource {
    fn answer<RB: From<Bytes>>(&self, entry: &CachedEntry) -> Option<Response<RB>> {
        let age = entry.age(self.shared.clock.now());
        if age >= entry.retention().max(entry.fresh_for) {
            return None;
        }
        let stored = &entry.response;
        let mut res = Response::new(RB::from(stored.body.clone()));
        *res.status_mut() = stored.status;
        *res.version_mut() = stored.version;
        *res.headers_mut() = stored.headers.clone();
        res.headers_mut()
            .insert(AGE, http::HeaderValue::from(age.as_secs()));
        res.headers_mut().remove("cache-status");
        Some(res)
    }
}

impl<B, RB> Source<Request<B>, Response<RB>> for CacheSource
where
    RB: From<Bytes> + Send + 'static,
{
    type Context = Option<Arc<str>>;

    fn name(&self) -> &'static str {
        "cache"
    }

    fn prepare(&self, req: &Request<B>, _: &Reporter) -> Option<Arc<str>> {
        self.shared.keys.with_key(req, |k| k.ok().map(Arc::from))
    }

    fn recover(
        &self,
        cx: &Option<Arc<str>>,
        failure: Failure<Response<RB>>,
        _: &Reporter,
    ) -> Recovered<Response<RB>> {
        let Some(key) = cx else {
            return Recovered::Ready(Err(failure));
        };
        match self.shared.store.get(key) {
            Lookup::Ready(entry) => {
                Recovered::Ready(entry.and_then(|e| self.answer(&e)).ok_or(failure))
            }
            Lookup::Pending(fut) => {
                let this = self.clone();
                Recovered::Future(Box::pin(async move {
                    match fut.await.and_then(|e| this.answer(&e)) {
                        Some(res) => Ok(res),
                        None => failure.into_result(),
                    }
                }))
            }
        }
    }

    fn key<'a>(&self, cx: &'a Option<Arc<str>>) -> Option<&'a dyn fmt::Debug> {
        cx.as_ref().map(|k| k as &dyn fmt::Debug)
    }
}
