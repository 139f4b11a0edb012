//! Cache keys: method, target (path and query) and the values of the key headers, as one
//! string, built from the shared extractors ([`Target`], [`Header`]).

use std::cell::Cell;
use std::fmt::Write as _;

use http::Request;

use crate::key::{Header, KeyError, Target};

/// Separates a present key header's value.
const PRESENT: char = '\u{1f}';
/// Marks a key header the request does not carry (header values cannot hold either).
const ABSENT: char = '\u{1e}';

/// Builds cache keys: `"GET /products?page=2"`, followed by the value of each key header.
#[derive(Debug, Clone, Default)]
pub(super) struct KeyBuilder {
    pub(super) target: Target,
    pub(super) headers: Vec<Header>,
}

impl KeyBuilder {
    /// Write the key of `req` into `out` (cleared first).
    pub(super) fn write<B>(&self, req: &Request<B>, out: &mut String) -> Result<(), KeyError> {
        out.clear();
        let target = self.target.target_of(req)?;
        out.push_str(req.method().as_str());
        out.push(' ');
        out.push_str(target);
        for h in &self.headers {
            match h.value_of(req) {
                Ok(v) => {
                    out.push(PRESENT);
                    out.push_str(v);
                }
                Err(KeyError::Missing) => out.push(ABSENT),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The key of `req`, built in a buffer kept per thread, given to `f`: no allocation
    /// once the thread's buffer has grown to fit.
    #[inline]
    pub(super) fn with_key<B, T>(
        &self,
        req: &Request<B>,
        f: impl FnOnce(Result<&str, KeyError>) -> T,
    ) -> T {
        thread_local! {
            static BUF: Cell<String> = const { Cell::new(String::new()) };
        }
        // Taken out of the cell (and put back), so a nested use builds its own.
        let mut buf = BUF.with(Cell::take);
        let out = match self.write(req, &mut buf) {
            Ok(()) => f(Ok(&buf)),
            Err(e) => f(Err(e)),
        };
        BUF.with(|cell| cell.set(buf));
        out
    }
}

/// The target (path and query) part of a cache key.
pub(super) fn target_of_key(key: &str) -> &str {
    let rest = key.split_once(' ').map_or(key, |(_, rest)| rest);
    let end = rest.find([PRESENT, ABSENT]).unwrap_or(rest.len());
    &rest[..end]
}

/// A cache key from its parts, as the layer builds it (for [`CacheHandle::invalidate_key`](super::CacheHandle::invalidate_key)):
/// `headers` are the key headers' values in the configured order, `None` when absent.
pub fn cache_key(method: &http::Method, target: &str, headers: &[Option<&str>]) -> String {
    let mut out = String::with_capacity(method.as_str().len() + 1 + target.len());
    let _ = write!(out, "{} {target}", method.as_str());
    for h in headers {
        match h {
            Some(v) => {
                out.push(PRESENT);
                out.push_str(v);
            }
            None => out.push(ABSENT),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    #[test]
    fn keys_hold_method_target_and_key_headers() {
        let builder = KeyBuilder {
            target: Target::new(),
            headers: vec![
                Header::new(HeaderName::from_static("accept-language")),
                Header::new(HeaderName::from_static("x-tenant")),
            ],
        };
        let req = Request::get("/products?page=2")
            .header("accept-language", "de")
            .body(())
            .unwrap();
        let key = builder.with_key(&req, |k| k.unwrap().to_owned());
        assert_eq!(
            key,
            cache_key(&http::Method::GET, "/products?page=2", &[Some("de"), None])
        );
        assert_eq!(target_of_key(&key), "/products?page=2");
        assert_eq!(target_of_key("HEAD /"), "/");
        let other = Request::get("/products?page=2")
            .header("accept-language", "de")
            .header("x-tenant", "")
            .body(())
            .unwrap();
        assert_ne!(builder.with_key(&other, |k| k.unwrap().to_owned()), key);
        let long = Request::get(format!("/{}", "a".repeat(3000)))
            .body(())
            .unwrap();
        assert!(builder.with_key(&long, |k| k.is_err()));
    }
}
