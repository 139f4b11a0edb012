//! The distributed rate limiter: the same quotas, evaluated in Redis.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::Script;
use sha2::{Digest, Sha256};
use tower_layer::Layer;
use tower_service::Service;

use super::MissingKey;
use super::layer::{OnAdmitted, RateLimitLayer, Shared, Weight};
use super::state::Decision;
use crate::error::{BoxError, RateLimitInfo, Rejection};
use crate::key::{Global, KeyExtractor};
use crate::mode::Mode;
use crate::observe::Event;
use crate::rate_limit::{NoHeaders, One};
use crate::redis::{Arg, BackendError, FailurePolicy, RedisBackend};

/// GCRA over every quota at once, all or nothing, on Redis's own clock (so replicas with
/// skewed clocks agree). `KEYS[i]`: quota `i`'s theoretical arrival time, in microseconds
/// since the epoch. `ARGV[1]`: the weight; `ARGV[2i]`, `ARGV[2i+1]`: quota `i`'s emission
/// interval (µs) and burst. Answers `{1, quota, remaining, reset_us}` for the tightest
/// quota when admitted (reset as the in-process limiter counts it: the used cells times the
/// interval), `{0, quota, 0, wait_us}` when a quota refuses (nothing is taken).
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local weight = tonumber(ARGV[1])
local tats = {}
local best, best_left, best_reset = 0, -1, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local n = math.min(weight, burst)
  local tat = tonumber(redis.call('GET', KEYS[i]) or 0) or 0
  if tat < now then tat = now end
  local new_tat = tat + n * interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    return {0, i, 0, math.ceil(allow_at - now)}
  end
  tats[i] = new_tat
  local left = math.floor((now + burst * interval - new_tat) / interval)
  if best_left < 0 or left < best_left then
    best, best_left, best_reset = i, left, (burst - left) * interval
  end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
return {1, best, best_left, math.ceil(best_reset)}
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

/// Keys longer than this (as text) are hashed before they go into a Redis key name.
const MAX_KEY_TEXT: usize = 128;

/// A [`RateLimitLayer`] whose quotas are shared by every instance through Redis
/// (feature `redis`). Build it with [`RateLimitLayer::shared`].
///
/// - **Same semantics.** The quotas, key extractor, weights, missing-key behaviour,
///   mode, observer events, `429` + `Retry-After` + `RateLimit` fields and
///   `RESOURCE_EXHAUSTED` are the in-process limiter's. The check is GCRA, the algorithm
///   `governor` uses, run atomically in Redis by one Lua script per request (sent by its
///   SHA-1; loaded once on `NOSCRIPT`). Several quotas are checked together: either all
///   admit or none is charged.
/// - **Redis's clock.** Time is read with Redis's `TIME` inside the script, so replicas
///   whose clocks disagree still share one schedule. Intervals are whole microseconds,
///   rounded up (never looser than configured): a quota faster than 1 000 000 per second
///   per key is not supported, and one close to it is rounded (600 000/s becomes
///   500 000/s).
/// - **Shared by name and quota.** A quota's state in Redis is named by the limiter's
///   name, the key and the quota's interval and burst: every instance's limiter of the
///   same name shares each quota it has; limiters of different names, or different
///   quotas, never do. Name your limiters (the default name is `rate_limit`).
/// - **Tolerance.** Exact: the combined admissions of all instances never exceed
///   quota + burst in any window, because every check is one atomic script.
/// - **No waiting.** [`max_wait`](RateLimitLayer::max_wait) is ignored: a refused request
///   is answered at once.
/// - **Keys.** A key is written into the Redis key name as its `Debug` text (an IP, a
///   header value); texts over 128 bytes are replaced by their SHA-256. Redis expires
///   each key once its quota is full again, so idle keys cost nothing.
/// - **Redis down or slow** (each call is bounded by the backend's timeout): the
///   [`FailurePolicy`] decides, default [`FailurePolicy::Local`] (the same quotas in
///   process, per instance); every such request emits
///   [`Event::BackendPolicyApplied`](crate::observe::Event::BackendPolicyApplied).
///
/// The service needs a `Clone + Send` inner service, `Send` requests and futures; its
/// future is boxed (it awaits Redis before calling the inner service).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_parapet::rate_limit::{Quota, RateLimitLayer};
/// use tower_parapet::redis::{FailurePolicy, RedisBackend};
///
/// let backend = RedisBackend::new("redis://127.0.0.1:6379/")?;
/// let layer = RateLimitLayer::new(Quota::per_second(100))
///     .name("api")
///     .shared(backend)
///     .on_redis_error(FailurePolicy::Local);
/// # let _ = layer; Ok(()) }
/// ```
pub struct RedisRateLimitLayer<K = Global, W = One, H = NoHeaders> {
    local: RateLimitLayer<K, W, H>,
    remote: Arc<Remote>,
}

struct Remote {
    backend: RedisBackend,
    policy: FailurePolicy,
    /// Per quota: emission interval (µs) and burst.
    args: Vec<(i64, i64)>,
}

impl<K: Clone, W: Clone, H: Clone> Clone for RedisRateLimitLayer<K, W, H> {
    fn clone(&self) -> Self {
        RedisRateLimitLayer {
            local: self.local.clone(),
            remote: self.remote.clone(),
        }
    }
}

impl<K: fmt::Debug, W, H: fmt::Debug> fmt::Debug for RedisRateLimitLayer<K, W, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("local", &self.local)
            .field("backend", &self.remote.backend)
            .field("policy", &self.remote.policy)
            .finish()
    }
}

impl<K, W, H> RedisRateLimitLayer<K, W, H> {
    pub(super) fn new(local: RateLimitLayer<K, W, H>, backend: RedisBackend) -> Self {
        let args = local
            .quotas()
            .iter()
            .map(|q| {
                // Rounded up: the distributed quota is never looser than the configured one.
                let nanos = q.interval().as_nanos();
                let micros = i64::try_from(nanos.div_ceil(1_000)).unwrap_or(i64::MAX);
                (micros.max(1), i64::from(q.burst_size()))
            })
            .collect();
        RedisRateLimitLayer {
            local,
            remote: Arc::new(Remote {
                backend,
                policy: FailurePolicy::Local,
                args,
            }),
        }
    }

    /// What to do when Redis does not answer in time (default [`FailurePolicy::Local`]).
    #[must_use]
    pub fn on_redis_error(mut self, policy: FailurePolicy) -> Self {
        self.remote = Arc::new(Remote {
            backend: self.remote.backend.clone(),
            policy,
            args: self.remote.args.clone(),
        });
        self
    }

    /// The policy followed when Redis does not answer in time.
    pub fn policy(&self) -> FailurePolicy {
        self.remote.policy
    }

    /// The in-process limiter this one falls back to under [`FailurePolicy::Local`] (its
    /// handle shows the keys it holds).
    pub fn local(&self) -> &RateLimitLayer<K, W, H> {
        &self.local
    }
}

impl<S, K: Clone, W: Clone, H: Clone> Layer<S> for RedisRateLimitLayer<K, W, H> {
    type Service = RedisRateLimit<S, K, W, H>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisRateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RedisRateLimitLayer`].
pub struct RedisRateLimit<S, K = Global, W = One, H = NoHeaders> {
    inner: S,
    layer: RedisRateLimitLayer<K, W, H>,
}

impl<S: Clone, K: Clone, W: Clone, H: Clone> Clone for RedisRateLimit<S, K, W, H> {
    fn clone(&self) -> Self {
        RedisRateLimit {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug, W, H: fmt::Debug> fmt::Debug for RedisRateLimit<S, K, W, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimit")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

/// What the check decided.
enum Verdict {
    Admitted(Option<Box<RateLimitInfo>>),
    Refused {
        quota: usize,
        wait: Duration,
        info: Box<RateLimitInfo>,
    },
}

impl<S, K, W, H, Req> Service<Req> for RedisRateLimit<S, K, W, H>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    Req: Send + 'static,
    K: KeyExtractor<Req>,
    W: Weight<Req>,
    H: OnAdmitted<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (key_extractor, weight, headers, shared) = self.layer.local.parts();
        let spec = &shared.spec;
        let mode = spec.mode.get();
        // Keep the ready service for this request; the next gets a clone.
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        if mode == Mode::Off {
            return Box::pin(async move { svc.call(req).await.map_err(Into::into) });
        }
        let weight = weight.weight(&req);
        let class = spec.class.unwrap_or_else(|| key_extractor.class());
        let key = if spec.keyed {
            match key_extractor.extract(&req) {
                Ok(key) => Some(key),
                Err(_) if spec.missing_key == MissingKey::Allow => {
                    return Box::pin(async move { svc.call(req).await.map_err(Into::into) });
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let headers = headers.clone();
        let shared = shared.clone();
        let remote = self.layer.remote.clone();
        Box::pin(async move {
            let want_info = headers.enabled();
            let verdict = if weight == 0 {
                Verdict::Admitted(None)
            } else {
                match check(&remote, &shared, key.as_ref(), weight, want_info).await {
                    Ok(verdict) => verdict,
                    Err(_) => {
                        let spec = &shared.spec;
                        spec.observer.emit(&Event::BackendPolicyApplied {
                            layer: "rate_limit",
                            name: &spec.name,
                            backend: "redis",
                            policy: remote.policy.as_str(),
                        });
                        match remote.policy {
                            FailurePolicy::FailClosed if mode == Mode::Enforce => {
                                return Err(
                                    Rejection::overloaded(Some(Duration::from_secs(1))).boxed()
                                );
                            }
                            FailurePolicy::Local => {
                                match shared.decide_local(key.as_ref(), weight, want_info) {
                                    Decision::Admitted { info } => Verdict::Admitted(info),
                                    Decision::Refused { quota, wait, info } => {
                                        Verdict::Refused { quota, wait, info }
                                    }
                                }
                            }
                            _ => Verdict::Admitted(None),
                        }
                    }
                }
            };
            let info = match verdict {
                Verdict::Admitted(info) => info,
                Verdict::Refused { quota, wait, info } => {
                    let shadow = mode == Mode::Shadow;
                    shared.report_refusal(class, key.as_ref(), quota, wait, shadow);
                    if !shadow {
                        return Err(Rejection::rate_limited(wait, Some(*info)).boxed());
                    }
                    None
                }
            };
            let mut res = svc.call(req).await.map_err(Into::into)?;
            if let Some(info) = info {
                headers.apply(&mut res, &info);
            }
            Ok(res)
        })
    }
}

/// The Redis keys of `key` under `name`, one per quota:
/// `prefix:rl:{name:key}:<interval>us<burst>` (one hash slot for all of a key's quotas).
fn redis_keys<Key: fmt::Debug>(
    backend: &RedisBackend,
    name: &str,
    key: Option<&Key>,
    quotas: &[(i64, i64)],
) -> Vec<String> {
    let text = match key {
        Some(key) => {
            let text = format!("{key:?}");
            if text.len() > MAX_KEY_TEXT {
                let digest = Sha256::digest(text.as_bytes());
                digest.iter().map(|b| format!("{b:02x}")).collect()
            } else {
                text
            }
        }
        None => "*".to_owned(),
    };
    let tag = format!("{{{name}:{text}}}");
    // Each quota's state is named by its interval and burst: limiters of one name share a
    // budget only for a quota they both have (the same quota, the same key).
    quotas
        .iter()
        .map(|(interval, burst)| backend.key(&["rl", &tag, &format!("{interval}us{burst}")]))
        .collect()
}

async fn check<Key: fmt::Debug>(
    remote: &Remote,
    shared: &Shared,
    key: Option<&Key>,
    weight: u32,
    want_info: bool,
) -> Result<Verdict, BackendError> {
    let keys = redis_keys(&remote.backend, &shared.spec.name, key, &remote.args);
    let mut args = Vec::with_capacity(1 + 2 * remote.args.len());
    args.push(Arg::Int(i64::from(weight)));
    for &(interval, burst) in &remote.args {
        args.push(Arg::Int(interval));
        args.push(Arg::Int(burst));
    }
    let answer: Vec<i64> = remote.backend.eval(&SCRIPT, &keys, &args).await?;
    let [admitted, quota, remaining, micros] = answer[..] else {
        return Err(BackendError::Protocol(format!(
            "rate limit script answered {answer:?}"
        )));
    };
    let quota = usize::try_from(quota - 1)
        .ok()
        .filter(|q| *q < remote.args.len())
        .ok_or_else(|| BackendError::Protocol(format!("no quota {quota}")))?;
    let micros = Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    let remaining = u64::try_from(remaining).unwrap_or(0);
    Ok(if admitted == 1 {
        Verdict::Admitted(want_info.then(|| Box::new(shared.quotas.info(quota, remaining, micros))))
    } else {
        Verdict::Refused {
            quota,
            wait: micros,
            info: Box::new(shared.quotas.info(quota, 0, micros)),
        }
    })
}
