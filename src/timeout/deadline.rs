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

/// `now + d`, capped at ~30 years (as tokio's own "far future") instead of panicking on
/// overflow.
pub(crate) fn instant_after(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    let mut d = d.min(FAR);
    loop {
        // Only a clock near the end of `Instant`'s range gets here twice: step back until
        // the sum fits, never down to "already expired" for a non-zero `d`.
        match now.checked_add(d) {
            Some(at) => return at,
            None if d > Duration::from_secs(1) => d /= 2,
            None => return now,
        }
    }
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
///
/// [`HttpDeadline`] serves `http::Request`s; any other request type can carry its
/// deadline its own way:
///
/// ```
/// use std::time::Duration;
/// use tower::{Service, ServiceExt, service_fn, Layer};
/// use tower_parapet::timeout::{CallerDeadline, Deadline, DeadlineSource, TimeoutLayer};
///
/// struct Job {
///     budget: Option<Duration>,
///     deadline: Option<Deadline>,
/// }
///
/// #[derive(Clone)]
/// struct JobDeadline;
///
/// impl DeadlineSource<Job> for JobDeadline {
///     fn read(&self, job: &Job) -> CallerDeadline<'_> {
///         CallerDeadline { budget: job.budget, malformed: None }
///     }
///     fn record(&self, job: &mut Job, deadline: Deadline) {
///         job.deadline = Some(deadline);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_parapet::BoxError> {
/// let svc = TimeoutLayer::new(Duration::from_secs(5))
///     .deadline(JobDeadline)
///     .layer(service_fn(|job: Job| async move {
///         Ok::<_, std::convert::Infallible>(job.deadline.map(|d| d.remaining()))
///     }));
/// let job = Job { budget: Some(Duration::from_secs(1)), deadline: None };
/// assert_eq!(svc.oneshot(job).await?, Some(Duration::from_secs(1)));
/// # Ok(())
/// # }
/// ```
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

    /// Parsed once: a lookup by `&str` parses the name on every request.
    const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

    /// The unit of a configured deadline header's value (ASCII digits only).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
                && let Some(v) = req.headers().get(GRPC_TIMEOUT)
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
                req.headers_mut().insert(GRPC_TIMEOUT, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_after_adds_and_caps_far_futures() {
        let now = Instant::now();
        assert_eq!(instant_after(now, Duration::ZERO), now);
        assert_eq!(
            instant_after(now, Duration::from_millis(1500)),
            now + Duration::from_millis(1500)
        );
        let far = instant_after(now, Duration::MAX);
        assert!(
            far > now + Duration::from_secs(86_400 * 365 * 29),
            "a huge timeout is not 'now'"
        );
        assert_eq!(far, instant_after(now, Duration::from_secs(u64::MAX)));
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_counts_down_and_saturates_at_zero() {
        let d = Deadline::after(Duration::from_millis(300));
        assert_eq!(d.remaining(), Duration::from_millis(300));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(d.remaining(), Duration::from_millis(200));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(d.remaining(), Duration::ZERO);
        assert!(d.at() < Instant::now());
        assert!(
            Deadline::after(Duration::from_secs(1)) > d,
            "later deadlines order after"
        );
    }

    #[test]
    fn no_deadline_reads_and_records_nothing() {
        let mut req = 7_u32;
        assert_eq!(NoDeadline.read(&req), CallerDeadline::default());
        NoDeadline.record(&mut req, Deadline::new(Instant::now()));
        assert_eq!(req, 7);
    }

    #[cfg(feature = "http")]
    mod http_source {
        use super::super::*;
        use http::{HeaderName, Request};

        fn req(headers: &[(&'static str, &str)]) -> Request<()> {
            let mut b = Request::builder();
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        }

        fn budget(src: &HttpDeadline, r: &Request<()>) -> Option<Duration> {
            let c = src.read(r);
            assert_eq!(c.malformed, None);
            c.budget
        }

        #[test]
        fn reads_grpc_timeout_in_every_unit() {
            let src = HttpDeadline::new();
            for (v, d) in [
                ("1H", Duration::from_secs(3600)),
                ("2M", Duration::from_secs(120)),
                ("3S", Duration::from_secs(3)),
                ("250m", Duration::from_millis(250)),
                ("7u", Duration::from_micros(7)),
                ("9n", Duration::from_nanos(9)),
                ("0m", Duration::ZERO),
            ] {
                assert_eq!(budget(&src, &req(&[("grpc-timeout", v)])), Some(d), "{v}");
            }
            assert_eq!(budget(&src, &req(&[])), None);
            let off = HttpDeadline::new().grpc_timeout(false);
            assert_eq!(budget(&off, &req(&[("grpc-timeout", "1S")])), None);
        }

        #[test]
        fn malformed_grpc_timeout_is_reported_not_used() {
            let src = HttpDeadline::new();
            for bad in ["+5S", "10", "abc", "1.5S", "-1S", "", "123456789m", " 1S"] {
                let c = src.read(&req(&[("grpc-timeout", bad)]));
                assert_eq!(c.budget, None, "{bad:?}");
                assert_eq!(c.malformed, Some("grpc-timeout"), "{bad:?}");
            }
            // Not even looked at when grpc-timeout is not read.
            let off = HttpDeadline::new().grpc_timeout(false);
            assert_eq!(
                off.read(&req(&[("grpc-timeout", "+5S")])),
                CallerDeadline::default()
            );
        }

        #[test]
        fn configured_header_in_millis_or_seconds_digits_only() {
            let ms = HttpDeadline::new().header(
                HeaderName::from_static("x-timeout-ms"),
                DeadlineUnit::Millis,
            );
            assert_eq!(
                budget(&ms, &req(&[("x-timeout-ms", "1500")])),
                Some(Duration::from_millis(1500))
            );
            let secs = HttpDeadline::new()
                .header(HeaderName::from_static("x-timeout"), DeadlineUnit::Seconds);
            assert_eq!(
                budget(&secs, &req(&[("x-timeout", "2")])),
                Some(Duration::from_secs(2))
            );
            // Overflow saturates instead of failing or wrapping.
            let huge = "9".repeat(40);
            assert_eq!(
                budget(&secs, &req(&[("x-timeout", &huge)])),
                Some(Duration::from_secs(u64::MAX))
            );
            for bad in ["+5", "-5", "1.5", "5s", " 5", ""] {
                let c = ms.read(&req(&[("x-timeout-ms", bad)]));
                assert_eq!(c.budget, None, "{bad:?}");
                assert_eq!(c.malformed, Some("x-timeout-ms"), "{bad:?}");
            }
        }

        #[tokio::test(start_paused = true)]
        async fn shortest_of_all_sources_wins() {
            let src = HttpDeadline::new().header(
                HeaderName::from_static("x-timeout-ms"),
                DeadlineUnit::Millis,
            );
            let r = req(&[("grpc-timeout", "300m"), ("x-timeout-ms", "200")]);
            assert_eq!(budget(&src, &r), Some(Duration::from_millis(200)));
            let r = req(&[("grpc-timeout", "100m"), ("x-timeout-ms", "200")]);
            assert_eq!(budget(&src, &r), Some(Duration::from_millis(100)));

            let mut r = req(&[("grpc-timeout", "1S")]);
            r.extensions_mut()
                .insert(Deadline::after(Duration::from_millis(400)));
            tokio::time::advance(Duration::from_millis(100)).await;
            assert_eq!(
                budget(&src, &r),
                Some(Duration::from_millis(300)),
                "outer deadline, minus time spent"
            );

            // A malformed header does not hide a good one.
            let c = src.read(&req(&[("grpc-timeout", "abc"), ("x-timeout-ms", "50")]));
            assert_eq!(c.budget, Some(Duration::from_millis(50)));
            assert_eq!(c.malformed, Some("grpc-timeout"));
        }

        #[tokio::test(start_paused = true)]
        async fn records_the_deadline_and_optionally_the_header() {
            let at = Deadline::after(Duration::from_millis(250));
            let mut r = req(&[("grpc-timeout", "5S")]);
            HttpDeadline::new().record(&mut r, at);
            assert_eq!(r.extensions().get::<Deadline>(), Some(&at));
            assert_eq!(r.headers()["grpc-timeout"], "5S", "left alone unless asked");

            let mut r = req(&[("grpc-timeout", "5S")]);
            HttpDeadline::new()
                .propagate_grpc_timeout(true)
                .record(&mut r, at);
            assert_eq!(r.headers()["grpc-timeout"], "250000u");
            assert_eq!(
                crate::grpc::parse_grpc_timeout(r.headers()["grpc-timeout"].as_bytes()),
                Ok(Duration::from_millis(250))
            );
        }
    }
}
