//! The logging layer, its service and future.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Level, Span, field};

use crate::http::Verdict;

/// The request's id, in the request's extensions (set by [`LoggingLayer`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII ids are kept (checked or generated), so this never fails.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value, to pass on to outgoing calls.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The level of the closing event for each outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Levels {
    /// The service answered 1xx–3xx (default INFO).
    pub admitted: Level,
    /// The service answered 4xx (default INFO).
    pub client_error: Level,
    /// The service answered 5xx (default ERROR).
    pub server_error: Level,
    /// A layer refused the request (default WARN).
    pub rejected: Level,
    /// A fallback answered (default WARN).
    pub fallback: Level,
    /// A stored response was replayed (default INFO).
    pub replayed: Level,
    /// The service failed and the edge answered 500, or an error reached this layer
    /// (default ERROR).
    pub failed: Level,
    /// The request was dropped before its response was ready (default INFO).
    pub cancelled: Level,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            admitted: Level::INFO,
            client_error: Level::INFO,
            server_error: Level::ERROR,
            rejected: Level::WARN,
            fallback: Level::WARN,
            replayed: Level::INFO,
            failed: Level::ERROR,
            cancelled: Level::INFO,
        }
    }
}

type RouteFn = Arc<dyn Fn(&Uri, &http::Extensions) -> Option<String> + Send + Sync>;

struct Config {
    header: HeaderName,
    sensitive: Vec<HeaderName>,
    log_headers: bool,
    levels: Levels,
    route: Option<RouteFn>,
}

impl Clone for Config {
    fn clone(&self) -> Self {
        Config {
            header: self.header.clone(),
            sensitive: self.sensitive.clone(),
            log_headers: self.log_headers,
            levels: self.levels,
            route: self.route.clone(),
        }
    }
}

/// Logs every request; see the [module docs](super).
#[derive(Clone)]
pub struct LoggingLayer {
    config: Arc<Config>,
}

impl fmt::Debug for LoggingLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggingLayer")
            .field("header", &self.config.header)
            .field("log_headers", &self.config.log_headers)
            .field("levels", &self.config.levels)
            .finish_non_exhaustive()
    }
}

impl Default for LoggingLayer {
    fn default() -> Self {
        LoggingLayer::new()
    }
}

impl LoggingLayer {
    /// Request ids in `x-request-id`, headers not logged, default [`Levels`].
    pub fn new() -> LoggingLayer {
        LoggingLayer {
            config: Arc::new(Config {
                header: HeaderName::from_static("x-request-id"),
                sensitive: vec![AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE, SET_COOKIE],
                log_headers: false,
                levels: Levels::default(),
                route: None,
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Read and write the request id in header `name` (default `x-request-id`).
    #[must_use]
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.config().header = name;
        self
    }

    /// Log the request's headers (field `headers`), sensitive ones redacted.
    #[must_use]
    pub fn log_headers(mut self, yes: bool) -> Self {
        self.config().log_headers = yes;
        self
    }

    /// Never log the value of `name` either (besides `Authorization`,
    /// `Proxy-Authorization`, `Cookie` and `Set-Cookie`).
    #[must_use]
    pub fn sensitive(mut self, name: HeaderName) -> Self {
        self.config().sensitive.push(name);
        self
    }

    /// The level of the closing event per outcome.
    #[must_use]
    pub fn levels(mut self, levels: Levels) -> Self {
        self.config().levels = levels;
        self
    }

    /// How to read a request's route template (default: axum's `MatchedPath` with the
    /// `axum` feature). Return `None` for "unmatched". Keep the result bounded: it is a
    /// metrics label.
    #[must_use]
    pub fn route(
        mut self,
        route: impl Fn(&Uri, &http::Extensions) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config().route = Some(Arc::new(route));
        self
    }
}

impl<S> Layer<S> for LoggingLayer {
    type Service = Logging<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Logging {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`LoggingLayer`].
#[derive(Clone)]
pub struct Logging<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for Logging<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logging")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// A request id from the client, if it is sane: 1 to 128 visible ASCII characters.
fn incoming_id(value: &HeaderValue) -> Option<&HeaderValue> {
    let bytes = value.as_bytes();
    let sane =
        !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    sane.then_some(value)
}

/// 32 hex digits, different for every call in this process (a keyed bijection of a
/// counter) and unrelated across processes (random keys): one allocation, shared by every
/// copy of the header value.
fn new_id() -> HeaderValue {
    static KEYS: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let &(k0, k1) = KEYS.get_or_init(|| {
        let seed = RandomState::new();
        (seed.hash_one(0_u64), seed.hash_one(1_u64))
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Two keyed bijections of the counter: each half alone differs for every call in this
    // process; the random keys make ids of different processes unrelated.
    let mut digits = [0_u8; 32];
    for (half, word) in [mix(n ^ k0), mix(n.wrapping_add(k1))]
        .into_iter()
        .enumerate()
    {
        for (i, digit) in digits[half * 16..][..16].iter_mut().enumerate() {
            *digit = HEX[((word >> ((15 - i) * 4)) & 0xf) as usize];
        }
    }
    // One allocation holding the digits and the count of its copies (a `Vec`-backed
    // `Bytes` makes a second one at its first clone, and the id is cloned three times).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(digits))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// SplitMix64's finaliser: a bijection on `u64` that spreads every input bit over the
/// output.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A metrics-safe method: the standard ones, or `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

fn route_of(config: &Config, uri: &Uri, ext: &http::Extensions) -> Option<String> {
    if let Some(route) = &config.route {
        return route(uri, ext);
    }
    #[cfg(feature = "axum")]
    if let Some(path) = ext.get::<axum::extract::MatchedPath>() {
        return Some(path.as_str().to_owned());
    }
    let _ = (uri, ext);
    None
}

/// The request's headers, sensitive values redacted.
fn headers_field(config: &Config, headers: &HeaderMap) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(name.as_str());
        out.push_str(": ");
        if config.sensitive.contains(name) {
            out.push_str("[redacted]");
        } else {
            out.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
    }
    out
}

impl<S, B, RB> Service<Request<B>> for Logging<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: fmt::Display + fmt::Debug,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let config = &self.config;
        let id = match req.headers().get(&config.header).and_then(incoming_id) {
            Some(id) => id.clone(),
            None => {
                let id = new_id();
                req.headers_mut().insert(config.header.clone(), id.clone());
                id
            }
        };
        req.extensions_mut().insert(RequestId(id.clone()));
        // Nothing to write to and nothing to count: only the id's work is done.
        if !cfg!(feature = "metrics") && !tracing::dispatcher::has_been_set() {
            return ResponseFuture {
                inner: self.inner.call(req),
                done: Done {
                    span: Span::none(),
                    start: None,
                    info: None,
                    id: Some((config.header.clone(), id)),
                },
            };
        }
        let route = route_of(config, req.uri(), req.extensions());
        let headers = config
            .log_headers
            .then(|| headers_field(config, req.headers()));
        let method = method_label(req.method());
        let span = tracing::info_span!(
            target: "tower_parapet::request",
            "request",
            method = req.method().as_str(),
            route = route.as_deref().unwrap_or("unmatched"),
            path = req.uri().path(),
            request_id = id.to_str().unwrap_or_default(),
            status = field::Empty,
            latency_ms = field::Empty,
            outcome = field::Empty,
        );
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            inner: future,
            done: Done {
                span,
                start: Some(Instant::now()),
                id: Some((self.config.header.clone(), id.clone())),
                info: Some(Info {
                    config: self.config.clone(),
                    id,
                    method,
                    route,
                    headers,
                }),
            },
        }
    }
}

/// What the closing event needs.
struct Info {
    config: Arc<Config>,
    id: HeaderValue,
    method: &'static str,
    route: Option<String>,
    headers: Option<String>,
}

/// Writes the closing event once: when the response is ready, or as `cancelled` when the
/// future is dropped first.
struct Done {
    span: Span,
    start: Option<Instant>,
    info: Option<Info>,
    /// The header and id to set on the response.
    id: Option<(HeaderName, HeaderValue)>,
}

impl Done {
    fn latency(&self) -> std::time::Duration {
        self.start.map(|s| s.elapsed()).unwrap_or_default()
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(info) = self.info.take() {
            let latency = self.latency();
            let level = info.config.levels.cancelled;
            close(
                &self.span,
                &info,
                level,
                None,
                "cancelled",
                "",
                latency,
                None,
            );
        }
    }
}

pin_project! {
    /// The future of [`Logging`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        done: Done,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("logging::ResponseFuture")
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: fmt::Display + fmt::Debug,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = {
            let _entered = this.done.span.enter();
            ready!(this.inner.poll(cx))
        };
        if let (Ok(res), Some((header, id))) = (&mut result, this.done.id.take()) {
            res.headers_mut().insert(header, id);
        }
        let Some(info) = this.done.info.take() else {
            return Poll::Ready(result);
        };
        let latency = this.done.latency();
        let levels = &info.config.levels;
        match result {
            Ok(res) => {
                let status = res.status();
                let (level, outcome, detail) = match res.extensions().get::<Verdict>() {
                    Some(v @ Verdict::Rejected(_)) => (levels.rejected, v.as_str(), v.detail()),
                    Some(v @ Verdict::Fallback(_)) => (levels.fallback, v.as_str(), v.detail()),
                    Some(v @ Verdict::Replayed) => (levels.replayed, v.as_str(), ""),
                    Some(v @ Verdict::Cached(_)) => (levels.admitted, v.as_str(), v.detail()),
                    Some(v) => (levels.failed, v.as_str(), v.detail()),
                    None if status.is_server_error() => (levels.server_error, "admitted", ""),
                    None if status.is_client_error() => (levels.client_error, "admitted", ""),
                    None => (levels.admitted, "admitted", ""),
                };
                close(
                    &this.done.span,
                    &info,
                    level,
                    Some(status.as_u16()),
                    outcome,
                    detail,
                    latency,
                    None,
                );
                Poll::Ready(Ok(res))
            }
            Err(e) => {
                let error = (e.to_string(), format!("{e:?}"));
                close(
                    &this.done.span,
                    &info,
                    levels.failed,
                    None,
                    "failed",
                    "",
                    latency,
                    Some(&error),
                );
                Poll::Ready(Err(e))
            }
        }
    }
}

/// Record the closing fields on the span and write the closing event (and metrics).
#[allow(clippy::too_many_arguments)]
fn close(
    span: &Span,
    info: &Info,
    level: Level,
    status: Option<u16>,
    outcome: &'static str,
    detail: &'static str,
    latency: std::time::Duration,
    error: Option<&(String, String)>,
) {
    let latency_ms = latency.as_secs_f64() * 1_000.0;
    span.record("latency_ms", latency_ms);
    span.record("outcome", outcome);
    if let Some(status) = status {
        span.record("status", status);
    }
    let route = info.route.as_deref().unwrap_or("unmatched");
    let _entered = span.enter();
    macro_rules! event {
        ($lvl:expr) => {
            tracing::event!(
                target: "tower_parapet::request",
                $lvl,
                method = info.method,
                route,
                request_id = info.id.to_str().unwrap_or_default(),
                status,
                latency_ms,
                outcome,
                detail = (!detail.is_empty()).then_some(detail),
                headers = info.headers.as_deref(),
                error = error.map(|e| e.0.as_str()),
                error_debug = error.map(|e| e.1.as_str()),
                "request finished"
            )
        };
    }
    match level {
        Level::ERROR => event!(Level::ERROR),
        Level::WARN => event!(Level::WARN),
        Level::INFO => event!(Level::INFO),
        Level::DEBUG => event!(Level::DEBUG),
        _ => event!(Level::TRACE),
    }
    #[cfg(feature = "metrics")]
    {
        let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        ::metrics::counter!(
            "parapet_requests_total",
            "method" => info.method,
            "route" => route.to_owned(),
            "status" => status,
            "outcome" => outcome,
        )
        .increment(1);
        ::metrics::histogram!(
            "parapet_request_duration_seconds",
            "method" => info.method,
            "route" => route.to_owned(),
            "outcome" => outcome,
        )
        .record(latency.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_ids_must_be_sane() {
        let ok = HeaderValue::from_static("abc-123");
        assert_eq!(incoming_id(&ok), Some(&ok));
        for bad in ["", "has space", &"x".repeat(129)] {
            assert_eq!(
                incoming_id(&HeaderValue::from_str(bad).unwrap()),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(
            incoming_id(&HeaderValue::from_bytes(b"caf\xe9").unwrap()),
            None
        );
    }

    #[test]
    fn generated_ids_differ() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
        // Each half is a bijection of the counter: no repeat, in either half, over many
        // calls (and from several threads at once).
        let ids: Vec<Vec<HeaderValue>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..25_000).map(|_| new_id()).collect()))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut halves = (
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        );
        for id in ids.iter().flatten() {
            assert_eq!(id.len(), 32);
            assert!(halves.0.insert(id.as_bytes()[..16].to_vec()), "{id:?}");
            assert!(halves.1.insert(id.as_bytes()[16..].to_vec()), "{id:?}");
        }
        assert_eq!(halves.0.len(), 100_000);
    }

    #[test]
    fn the_mixer_is_a_bijection_on_a_sample() {
        // SplitMix64's finaliser is invertible; a sample of consecutive inputs maps to
        // distinct outputs, and nearby inputs differ in about half their bits.
        let outputs: std::collections::HashSet<u64> = (0..100_000).map(mix).collect();
        assert_eq!(outputs.len(), 100_000);
        let flipped = (mix(41) ^ mix(42)).count_ones();
        assert!((16..=48).contains(&flipped), "{flipped}");
    }

    #[test]
    fn methods_are_bounded_labels() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
