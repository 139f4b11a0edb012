//! Reading the caller's deadline from a request, and recording the one in force.

use std::time::Duration;

use tokio::time::Instant;

/// The deadline in force for a request, recorded in its extensions by the timeout layer
/// (with [`HttpDeadline`]), so inner layers and outgoing calls can read what is left.
///
/// ```
/// # #[cfg(feature = "http")] {
/// use tower_parapet::timeout::Deadline;
///
/// fn budget_left(req: &http::Request<()>) -> Option<std::time::Duration> {
///     req.extensions().get::<Deadline>().map(Deadline::remaining)
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline at `at`.
    pub const fn new(at: Instant) -> Deadline {
        Deadline { at }
    }

    /// A deadline `after` from now (saturating far in the future).
    pub fn after(after: Duration) -> Deadline {
        Deadline::new(instant_after(Instant::now(), after))
    }

    /// When it expires (tokio's clock).
    pub const fn at(&self) -> Instant {
        self.at
    }

    /// What is left of it; zero once it has passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

/// `now + d`, saturating at ~30 years instead of panicking on overflow.
pub(crate) fn instant_after(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// What a request says about its caller's deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerDeadline<'a> {
    /// The caller's remaining budget, if it sent a usable one.
    pub budget: Option<Duration>,
    /// The name of a deadline header that was present but malformed (and ignored).
    pub malformed: Option<&'a str>,
}

/// How the timeout layer reads the caller's deadline from a request and records the
/// deadline in force on it.
pub trait DeadlineSource<Req>: Clone + Send + Sync + 'static {
    /// The caller's remaining budget, and any malformed deadline header.
    fn read(&self, req: &Req) -> CallerDeadline<'_>;

    /// Record the deadline in force on the request before it goes to the inner service.
    fn record(&self, req: &mut Req, deadline: Deadline);
}

/// Reads no deadline and records none: the timeout layer uses its configured timeout only.
/// Works for any request type.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeadline;

impl<Req> DeadlineSource<Req> for NoDeadline {
    #[inline]
    fn read(&self, _: &Req) -> CallerDeadline<'_> {
        CallerDeadline::default()
    }

    #[inline]
    fn record(&self, _: &mut Req, _: Deadline) {}
}

#[cfg(feature = "http")]
pub use self::http_deadline::{DeadlineUnit, HttpDeadline};

#[cfg(feature = "http")]
mod http_deadline {
    use super::{CallerDeadline, Deadline, DeadlineSource};
    use crate::grpc::{format_grpc_timeout, parse_grpc_timeout};
    use crate::parse::parse_digits;
    use http::{HeaderName, HeaderValue, Request};
    use std::time::Duration;

    /// The unit of a configured deadline header's value (ASCII digits only).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum DeadlineUnit {
        /// Milliseconds (`x-request-timeout-ms: 1500`).
        #[default]
        Millis,
        /// Seconds.
        Seconds,
    }

    /// The caller's deadline of an HTTP request, from (shortest wins):
    /// - `grpc-timeout` (on by default): 1–8 ASCII digits and a unit, as gRPC defines it;
    /// - a configured header in milliseconds or seconds (ASCII digits only, saturating);
    /// - a [`Deadline`] already in the request's extensions (set by an outer timeout layer).
    ///
    /// It records the deadline in force as a [`Deadline`] extension, and with
    /// [`propagate_grpc_timeout`](HttpDeadline::propagate_grpc_timeout) also rewrites the
    /// `grpc-timeout` header to the time left — for client stacks, so the server learns the
    /// caller's deadline.
    #[derive(Debug, Clone)]
    pub struct HttpDeadline {
        grpc_timeout: bool,
        header: Option<(HeaderName, DeadlineUnit)>,
        propagate: bool,
    }

    impl Default for HttpDeadline {
        fn default() -> Self {
            HttpDeadline::new()
        }
    }

    impl HttpDeadline {
        /// Read `grpc-timeout` and an outer [`Deadline`]; no custom header; no propagation.
        pub fn new() -> HttpDeadline {
            HttpDeadline {
                grpc_timeout: true,
                header: None,
                propagate: false,
            }
        }

        /// Whether to read `grpc-timeout` (default: yes).
        #[must_use]
        pub fn grpc_timeout(mut self, read: bool) -> HttpDeadline {
            self.grpc_timeout = read;
            self
        }

        /// Also read the caller's budget from `name`, a number of `unit`s.
        #[must_use]
        pub fn header(mut self, name: HeaderName, unit: DeadlineUnit) -> HttpDeadline {
            self.header = Some((name, unit));
            self
        }

        /// Set `grpc-timeout` on the request to the time left (client stacks).
        #[must_use]
        pub fn propagate_grpc_timeout(mut self, propagate: bool) -> HttpDeadline {
            self.propagate = propagate;
            self
        }
    }

    fn shortest(a: Option<Duration>, b: Duration) -> Option<Duration> {
        Some(a.map_or(b, |a| a.min(b)))
    }

    impl<B> DeadlineSource<Request<B>> for HttpDeadline {
        fn read(&self, req: &Request<B>) -> CallerDeadline<'_> {
            let mut out = CallerDeadline::default();
            if self.grpc_timeout
                && let Some(v) = req.headers().get("grpc-timeout")
            {
                match parse_grpc_timeout(v.as_bytes()) {
                    Ok(d) => out.budget = shortest(out.budget, d),
                    Err(_) => out.malformed = Some("grpc-timeout"),
                }
            }
            if let Some((name, unit)) = &self.header
                && let Some(v) = req.headers().get(name)
            {
                match parse_digits(v.as_bytes(), usize::MAX) {
                    Some(n) => {
                        let d = match unit {
                            DeadlineUnit::Millis => Duration::from_millis(n),
                            DeadlineUnit::Seconds => Duration::from_secs(n),
                        };
                        out.budget = shortest(out.budget, d);
                    }
                    None => out.malformed = Some(name.as_str()),
                }
            }
            if let Some(outer) = req.extensions().get::<Deadline>() {
                out.budget = shortest(out.budget, outer.remaining());
            }
            out
        }

        fn record(&self, req: &mut Request<B>, deadline: Deadline) {
            req.extensions_mut().insert(deadline);
            if self.propagate
                && let Ok(v) = HeaderValue::try_from(format_grpc_timeout(deadline.remaining()))
            {
                req.headers_mut().insert("grpc-timeout", v);
            }
        }
    }
}
