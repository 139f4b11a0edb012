//! Key extraction: which bucket, breaker, cache entry or idempotency record a request
//! belongs to.
//!
//! A [`KeyExtractor`] reads a key from a request without consuming it. The crate provides
//! [`Global`] (one key for everything), [`from_fn`] (any closure), pairs `(A, B)` (both
//! keys), and with the `http` feature [`Header`] (a header's value, with a length limit)
//! and [`Target`] (method, path and query). Client IPs behind trusted proxies arrive with
//! the rate limiter.
//!
//! Keys are owned copies, never slices of the request's buffers, so a stored key does not
//! keep a request alive.

use std::fmt;
use std::hash::Hash;

/// Why no key could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The request does not carry the key (e.g. no such header).
    #[error("key is missing")]
    Missing,
    /// The key is longer than the configured limit.
    #[error("key is {len} bytes long, more than the limit of {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key is present but unusable (e.g. not visible ASCII).
    #[error("key is malformed: {0}")]
    Malformed(&'static str),
}

/// Reads a key from a request.
pub trait KeyExtractor<Req>: Clone + Send + Sync + 'static {
    /// The key.
    type Key: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static;

    /// The request's key, or why it has none.
    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError>;
}

/// One key, `()`, for every request: a global limit, one shared breaker.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl<Req> KeyExtractor<Req> for Global {
    type Key = ();

    #[inline]
    fn extract(&self, _: &Req) -> Result<(), KeyError> {
        Ok(())
    }
}

/// A key from a closure; see [`from_fn`].
#[derive(Clone, Copy)]
pub struct FnKey<F>(F);

/// A key extractor from a closure `Fn(&Req) -> Result<K, KeyError>`.
///
/// ```
/// use tower_parapet::key::{self, KeyExtractor, KeyError};
///
/// let by_user = key::from_fn(|req: &(u64, &str)| Ok::<_, KeyError>(req.0));
/// assert_eq!(by_user.extract(&(7, "hello")), Ok(7));
/// ```
pub fn from_fn<F>(f: F) -> FnKey<F> {
    FnKey(f)
}

impl<F> fmt::Debug for FnKey<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FnKey")
            .field(&std::any::type_name::<F>())
            .finish()
    }
}

impl<Req, K, F> KeyExtractor<Req> for FnKey<F>
where
    F: Fn(&Req) -> Result<K, KeyError> + Clone + Send + Sync + 'static,
    K: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    type Key = K;

    fn extract(&self, req: &Req) -> Result<K, KeyError> {
        (self.0)(req)
    }
}

impl<Req, A, B> KeyExtractor<Req> for (A, B)
where
    A: KeyExtractor<Req>,
    B: KeyExtractor<Req>,
{
    type Key = (A::Key, B::Key);

    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError> {
        Ok((self.0.extract(req)?, self.1.extract(req)?))
    }
}

#[cfg(feature = "http")]
pub use self::http_keys::{Header, Target};

#[cfg(feature = "http")]
mod http_keys {
    use super::{KeyError, KeyExtractor};
    use http::{HeaderName, Method, Request};

    /// The value of one header, as an owned string of at most `max_len` bytes.
    ///
    /// A missing header is [`KeyError::Missing`]; a value that is not visible ASCII is
    /// [`KeyError::Malformed`]; a longer one is [`KeyError::TooLong`]. When the header is
    /// repeated, the first value is used.
    #[derive(Debug, Clone)]
    pub struct Header {
        name: HeaderName,
        max_len: usize,
    }

    impl Header {
        /// The default length limit: 256 bytes.
        pub const DEFAULT_MAX_LEN: usize = 256;

        /// The header `name`, limited to [`Header::DEFAULT_MAX_LEN`] bytes.
        pub fn new(name: HeaderName) -> Header {
            Header {
                name,
                max_len: Header::DEFAULT_MAX_LEN,
            }
        }

        /// Change the length limit.
        #[must_use]
        pub fn max_len(mut self, max_len: usize) -> Header {
            self.max_len = max_len;
            self
        }
    }

    impl<B> KeyExtractor<Request<B>> for Header {
        type Key = String;

        fn extract(&self, req: &Request<B>) -> Result<String, KeyError> {
            let value = req.headers().get(&self.name).ok_or(KeyError::Missing)?;
            let len = value.as_bytes().len();
            if len > self.max_len {
                return Err(KeyError::TooLong {
                    len,
                    max: self.max_len,
                });
            }
            let s = value
                .to_str()
                .map_err(|_| KeyError::Malformed("not visible ASCII"))?;
            Ok(s.to_owned())
        }
    }

    /// Method, path and query of an HTTP request: the natural key of a response cache or of
    /// a last-known-good fallback. Targets longer than `max_len` (default 2048 bytes) are
    /// [`KeyError::TooLong`].
    #[derive(Debug, Clone)]
    pub struct Target {
        max_len: usize,
    }

    impl Default for Target {
        fn default() -> Self {
            Target { max_len: 2048 }
        }
    }

    impl Target {
        /// Method + path + query, at most 2048 bytes.
        pub fn new() -> Target {
            Target::default()
        }

        /// Change the length limit.
        #[must_use]
        pub fn max_len(mut self, max_len: usize) -> Target {
            self.max_len = max_len;
            self
        }
    }

    impl<B> KeyExtractor<Request<B>> for Target {
        type Key = (Method, String);

        fn extract(&self, req: &Request<B>) -> Result<Self::Key, KeyError> {
            let target = req
                .uri()
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
            if target.len() > self.max_len {
                return Err(KeyError::TooLong {
                    len: target.len(),
                    max: self.max_len,
                });
            }
            Ok((req.method().clone(), target.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_pairs() {
        assert_eq!(Global.extract(&"anything"), Ok(()));
        let pair = (Global, from_fn(|r: &&str| Ok::<_, KeyError>(r.len())));
        assert_eq!(pair.extract(&"abc"), Ok(((), 3)));
        let failing = (Global, from_fn(|_: &&str| Err::<u8, _>(KeyError::Missing)));
        assert_eq!(failing.extract(&"abc"), Err(KeyError::Missing));
    }

    #[cfg(feature = "http")]
    #[test]
    fn header_key_limits() {
        use http::{HeaderName, Request};
        let k = Header::new(HeaderName::from_static("x-api-key")).max_len(4);
        let req = |v: &[u8]| {
            Request::builder()
                .header("x-api-key", http::HeaderValue::from_bytes(v).unwrap())
                .body(())
                .unwrap()
        };
        assert_eq!(k.extract(&req(b"abcd")), Ok("abcd".to_owned()));
        assert_eq!(
            k.extract(&req(b"abcde")),
            Err(KeyError::TooLong { len: 5, max: 4 })
        );
        assert!(matches!(
            k.extract(&req(b"\xff\xfe")),
            Err(KeyError::Malformed(_))
        ));
        assert_eq!(k.extract(&Request::new(())), Err(KeyError::Missing));
    }

    #[cfg(feature = "http")]
    #[test]
    fn target_key() {
        let req = http::Request::get("/a/b?c=1").body(()).unwrap();
        assert_eq!(
            Target::new().extract(&req),
            Ok((http::Method::GET, "/a/b?c=1".to_owned()))
        );
        assert!(matches!(
            Target::new().max_len(3).extract(&req),
            Err(KeyError::TooLong { .. })
        ));
    }
}
