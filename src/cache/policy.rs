//! What may be cached, and for how long: `Cache-Control` on the response (RFC 9111,
//! RFC 5861), read strictly.

use std::time::Duration;

use http::{HeaderMap, Response, header};

use crate::key::Header;

/// The response directives the cache honours.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Directives {
    pub(super) no_store: bool,
    pub(super) private: bool,
    pub(super) no_cache: bool,
    pub(super) max_age: Option<u64>,
    pub(super) s_maxage: Option<u64>,
    pub(super) stale_while_revalidate: Option<u64>,
    pub(super) stale_if_error: Option<u64>,
}

/// Seconds as in `max-age`: ASCII digits (optionally quoted), saturating however many
/// there are (RFC 9111 §1.2.2: a value too large to represent is the largest one, not an
/// invalid one); anything else is ignored.
fn seconds(value: &str) -> Option<u64> {
    let v = value.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    crate::parse::parse_digits(v.as_bytes(), v.len())
}

impl Directives {
    pub(super) fn parse(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else {
                // Unreadable: be safe.
                d.no_store = true;
                continue;
            };
            for part in crate::parse::split_directives(value) {
                let (name, arg) = match part.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a)),
                    None => (part.trim(), None),
                };
                let n = name.to_ascii_lowercase();
                match (n.as_str(), arg) {
                    ("no-store", _) => d.no_store = true,
                    ("private", _) => d.private = true,
                    ("no-cache", _) => d.no_cache = true,
                    ("max-age", Some(a)) => d.max_age = seconds(a).or(Some(0)),
                    ("s-maxage", Some(a)) => d.s_maxage = seconds(a).or(Some(0)),
                    ("stale-while-revalidate", Some(a)) => d.stale_while_revalidate = seconds(a),
                    ("stale-if-error", Some(a)) => d.stale_if_error = seconds(a),
                    _ => {}
                }
            }
        }
        d
    }
}

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Buffer it, store it with these windows, and share it with coalesced waiters.
    Store {
        fresh_for: Duration,
        stale_while_revalidate: Duration,
        stale_if_error: Duration,
    },
    /// Buffer it and share it with coalesced waiters, but do not store it (a status that
    /// is not 2xx: waiters get the same failure).
    ShareOnly(&'static str),
    /// Pass it on to its own caller only: waiters make their own calls.
    Private(&'static str),
}

/// The windows the layer applies where the response says nothing.
#[derive(Debug, Clone, Copy)]
pub(super) struct Defaults {
    pub(super) ttl: Duration,
    pub(super) stale_while_revalidate: Duration,
    pub(super) stale_if_error: Duration,
    pub(super) ignore_cache_control: bool,
}

pub(super) fn decide<B>(
    res: &Response<B>,
    defaults: &Defaults,
    key_headers: &[Header],
) -> Decision {
    let ignore = defaults.ignore_cache_control;
    if let Some(reason) = crate::fallback::http::not_replayable_unless(res, ignore) {
        return match reason {
            "status is not 2xx" => Decision::ShareOnly("status is not 2xx"),
            "response sets a cookie" => Decision::Private("response sets a cookie"),
            _ => Decision::Private("Cache-Control: no-store or private"),
        };
    }
    for vary in res.headers().get_all(header::VARY) {
        let Ok(vary) = vary.to_str() else {
            return Decision::Private("Vary is unreadable");
        };
        for name in vary.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Decision::Private("Vary: *");
            }
            if !key_headers
                .iter()
                .any(|h| h.name().as_str().eq_ignore_ascii_case(name))
            {
                return Decision::Private("Vary names a header that is not in the key");
            }
        }
    }
    if ignore {
        return Decision::Store {
            fresh_for: defaults.ttl,
            stale_while_revalidate: defaults.stale_while_revalidate,
            stale_if_error: defaults.stale_if_error,
        };
    }
    let d = Directives::parse(res.headers());
    // Neither may be reused without revalidation, not even by a collapsed request
    // (RFC 9111, section 4).
    if d.no_cache {
        return Decision::Private("Cache-Control: no-cache");
    }
    let fresh_for = d
        .s_maxage
        .or(d.max_age)
        .map_or(defaults.ttl, Duration::from_secs);
    if fresh_for.is_zero() {
        return Decision::Private("Cache-Control: max-age=0");
    }
    Decision::Store {
        fresh_for,
        stale_while_revalidate: d
            .stale_while_revalidate
            .map_or(defaults.stale_while_revalidate, Duration::from_secs),
        stale_if_error: d
            .stale_if_error
            .map_or(defaults.stale_if_error, Duration::from_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn res(headers: &[(&'static str, &'static str)], status: u16) -> Response<()> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const DEFAULTS: Defaults = Defaults {
        ttl: Duration::from_secs(60),
        stale_while_revalidate: Duration::from_secs(5),
        stale_if_error: Duration::from_secs(0),
        ignore_cache_control: false,
    };

    fn store(fresh: u64, swr: u64, sie: u64) -> Decision {
        Decision::Store {
            fresh_for: Duration::from_secs(fresh),
            stale_while_revalidate: Duration::from_secs(swr),
            stale_if_error: Duration::from_secs(sie),
        }
    }

    #[test]
    fn directives_are_read_strictly() {
        let d = Directives::parse(
            res(
                &[
                    ("cache-control", "public, Max-Age=30, s-maxage=\"90\""),
                    (
                        "cache-control",
                        "stale-while-revalidate=+5, stale-if-error=600",
                    ),
                ],
                200,
            )
            .headers(),
        );
        assert_eq!(d.max_age, Some(30));
        assert_eq!(d.s_maxage, Some(90));
        assert_eq!(d.stale_while_revalidate, None, "a sign is not a number");
        assert_eq!(d.stale_if_error, Some(600));
        assert_eq!(
            Directives::parse(res(&[("cache-control", "max-age=abc")], 200).headers()).max_age,
            Some(0),
            "an invalid max-age means stale"
        );
    }

    #[test]
    fn decisions() {
        let none: &[Header] = &[];
        assert_eq!(decide(&res(&[], 200), &DEFAULTS, none), store(60, 5, 0));
        assert_eq!(
            decide(
                &res(&[("cache-control", "max-age=10, stale-if-error=30")], 200),
                &DEFAULTS,
                none
            ),
            store(10, 5, 30)
        );
        assert_eq!(
            decide(
                &res(&[("cache-control", "max-age=10, s-maxage=20")], 200),
                &DEFAULTS,
                none
            ),
            store(20, 5, 0)
        );
        assert!(matches!(
            decide(&res(&[("cache-control", "no-store")], 200), &DEFAULTS, none),
            Decision::Private(_)
        ));
        assert!(matches!(
            decide(&res(&[("cache-control", "private")], 200), &DEFAULTS, none),
            Decision::Private(_)
        ));
        assert!(matches!(
            decide(&res(&[("set-cookie", "a=b")], 200), &DEFAULTS, none),
            Decision::Private(_)
        ));
        assert!(matches!(
            decide(
                &res(&[("cache-control", "max-age=0")], 200),
                &DEFAULTS,
                none
            ),
            Decision::Private(_)
        ));
        assert!(matches!(
            decide(&res(&[("cache-control", "no-cache")], 200), &DEFAULTS, none),
            Decision::Private(_)
        ));
        assert!(matches!(
            decide(&res(&[], 503), &DEFAULTS, none),
            Decision::ShareOnly(_)
        ));
        assert!(matches!(
            decide(&res(&[("vary", "*")], 200), &DEFAULTS, none),
            Decision::Private(_)
        ));
        assert!(matches!(
            decide(&res(&[("vary", "accept-language")], 200), &DEFAULTS, none),
            Decision::Private(_)
        ));
        let lang = [Header::new(HeaderName::from_static("accept-language"))];
        assert_eq!(
            decide(&res(&[("vary", "Accept-Language")], 200), &DEFAULTS, &lang),
            store(60, 5, 0)
        );
        let ignoring = Defaults {
            ignore_cache_control: true,
            ..DEFAULTS
        };
        assert_eq!(
            decide(&res(&[("cache-control", "no-store")], 200), &ignoring, none),
            store(60, 5, 0)
        );
        assert!(matches!(
            decide(&res(&[("set-cookie", "a=b")], 200), &ignoring, none),
            Decision::Private(_)
        ));
    }
}
