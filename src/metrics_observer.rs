//! The observer that turns events into `metrics` counters and gauges (feature `metrics`).

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, Label};

use crate::observe::{Event, Observer};

/// Records every [`Event`] through the `metrics` facade. Part of the default observer
/// when the `metrics` feature is on.
///
/// | metric | kind | labels | for |
/// |---|---|---|---|
/// | `parapet_events_total` | counter | `layer`, `name`, `outcome` | every event |
/// | `parapet_rejections_total` | counter | `layer`, `name`, `kind` | every enforced refusal (not shadow ones) |
/// | `parapet_circuit_breaker_state` | gauge | `name` | unkeyed breakers: 0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics-only |
/// | `parapet_fallbacks_total` | counter | `name`, `source`, `trigger` | fallback answers |
/// | `parapet_flag_gated_total` | counter | `name`, `flag`, `reason` | requests a feature gate turned away (or would have) |
/// | `parapet_bulkhead_limit` | gauge | `name` | a bulkhead's limit, after each change through its handle |
/// | `parapet_retries_total` | counter | `name` | retry attempts started (the first call not included) |
/// | `parapet_retry_calls_total` | counter | `name`, `result` | calls through a retry layer: `succeeded_without_retry`, `succeeded_with_retry`, `failed_without_retry`, `failed_with_retry` |
/// | `parapet_cache_requests_total` | counter | `name`, `result` | cache lookups: `hit`, `miss`, `stale_served`, `coalesced` |
/// | `parapet_cache_not_stored_total` | counter | `name`, `reason` | responses the cache did not keep, by reason |
/// | `parapet_backend_up` | gauge | `name` | a shared backend (Redis): 1 after it recovers, 0 when it goes down |
///
/// `name` is the layer's configured name; no label ever holds a key, an IP or a user.
/// The logging layer adds `parapet_requests_total` and
/// `parapet_request_duration_seconds` (see [`logging`](crate::logging)).
///
/// Each observer keeps the handles it registered (a fixed table for the counters of its
/// own layer, and a list of up to 4 096 label sets for the rest), so an event costs a
/// lookup and an increment, not a registration. Handles are registered with the
/// recorder installed at the time of an observer's first event of that kind: install the
/// recorder at startup, before traffic.
#[derive(Clone, Default)]
pub struct MetricsObserver {
    cache: Arc<Cache>,
    fast: Arc<Fast>,
}

/// The common case without a lookup: an observer serves one layer, so one `name`; the
/// metric, the layer and the third label are `&'static str`s, identified by address.
/// A slot is written once; a collision or another name takes the general path.
struct Fast {
    name: OnceLock<Box<str>>,
    slots: [OnceLock<([usize; 3], Handle)>; FAST_SLOTS],
}

const FAST_SLOTS: usize = 64;

impl Default for Fast {
    fn default() -> Self {
        Fast {
            name: OnceLock::new(),
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl fmt::Debug for MetricsObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsObserver")
            .field("name", &self.fast.name.get())
            .field("handles", &self.cache.entries.load().len())
            .finish()
    }
}

const MAX_ENTRIES: usize = 4_096;

#[derive(Clone)]
enum Handle {
    Counter(Counter),
    Gauge(Gauge),
}

struct Entry {
    metric: &'static str,
    labels: Vec<(&'static str, Box<str>)>,
    handle: Handle,
}

impl Entry {
    fn matches(&self, metric: &'static str, labels: &[(&'static str, &str)]) -> bool {
        self.metric == metric
            && self.labels.len() == labels.len()
            && self
                .labels
                .iter()
                .zip(labels)
                .all(|((k1, v1), (k2, v2))| k1 == k2 && **v1 == **v2)
    }
}

#[derive(Default)]
struct Cache {
    entries: ArcSwap<Vec<Entry>>,
    writer: Mutex<()>,
}

impl MetricsObserver {
    /// Apply `f` to the handle for `metric` with `labels`: from the cache (no clone, no
    /// registration), or registered now.
    #[inline]
    fn with(
        &self,
        entries: &[Entry],
        metric: &'static str,
        labels: &[(&'static str, &str)],
        gauge: bool,
        f: impl FnOnce(&Handle),
    ) {
        match entries.iter().find(|e| e.matches(metric, labels)) {
            Some(e) => f(&e.handle),
            None => f(&self.register(metric, labels, gauge)),
        }
    }

    #[cold]
    fn register(
        &self,
        metric: &'static str,
        labels: &[(&'static str, &str)],
        gauge: bool,
    ) -> Handle {
        let _writing = self.cache.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.cache.entries.load();
        if let Some(e) = current.iter().find(|e| e.matches(metric, labels)) {
            return e.handle.clone();
        }
        let owned: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect();
        let handle = if gauge {
            Handle::Gauge(metrics::gauge!(metric, owned))
        } else {
            Handle::Counter(metrics::counter!(metric, owned))
        };
        if current.len() < MAX_ENTRIES {
            let mut next = Vec::with_capacity(current.len() + 1);
            next.extend(current.iter().map(|e| Entry {
                metric: e.metric,
                labels: e.labels.clone(),
                handle: e.handle.clone(),
            }));
            next.push(Entry {
                metric,
                labels: labels.iter().map(|(k, v)| (*k, Box::from(*v))).collect(),
                handle: handle.clone(),
            });
            self.cache.entries.store(Arc::new(next));
        }
        handle
    }

    /// Increment `metric{layer, name, key3=value3}` through the fast table when it can.
    #[inline]
    fn count_static(
        &self,
        metric: &'static str,
        layer: &'static str,
        name: &str,
        third: (&'static str, &'static str),
    ) -> bool {
        let fast = &self.fast;
        if &**fast.name.get_or_init(|| name.into()) != name {
            return false;
        }
        let key = [
            metric.as_ptr() as usize,
            layer.as_ptr() as usize,
            third.1.as_ptr() as usize ^ third.0.len(),
        ];
        let mix = key[0]
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(key[1].rotate_left(17))
            .wrapping_add(key[2].rotate_left(31))
            .wrapping_mul(0x85EB_CA6B);
        let slot = &fast.slots[(mix >> 7) % FAST_SLOTS];
        let (held, handle) = slot.get_or_init(|| {
            let labels = [("layer", layer), ("name", name), third];
            (key, self.register(metric, &labels, false))
        });
        if *held != key {
            return false;
        }
        if let Handle::Counter(c) = handle {
            c.increment(1);
        }
        true
    }

    fn count(&self, entries: &[Entry], metric: &'static str, labels: &[(&'static str, &str)]) {
        self.with(entries, metric, labels, false, |h| {
            if let Handle::Counter(c) = h {
                c.increment(1);
            }
        });
    }

    fn set(
        &self,
        entries: &[Entry],
        metric: &'static str,
        labels: &[(&'static str, &str)],
        value: f64,
    ) {
        self.with(entries, metric, labels, true, |h| {
            if let Handle::Gauge(g) = h {
                g.set(value);
            }
        });
    }
}

fn state_code(state: crate::circuit_breaker::State) -> f64 {
    use crate::circuit_breaker::State;
    match state {
        State::Closed => 0.0,
        State::Open => 1.0,
        State::HalfOpen => 2.0,
        State::Disabled => 3.0,
        State::ForcedOpen => 4.0,
        State::MetricsOnly => 5.0,
    }
}

impl Observer for MetricsObserver {
    fn on_event(&self, event: &Event<'_>) {
        let layer = event.layer();
        let name = event.name();
        let outcome = event.outcome();
        if !self.count_static("parapet_events_total", layer, name, ("outcome", outcome)) {
            self.count(
                &self.cache.entries.load(),
                "parapet_events_total",
                &[("layer", layer), ("name", name), ("outcome", outcome)],
            );
        }
        let rejected = |kind: &'static str| {
            if !self.count_static("parapet_rejections_total", layer, name, ("kind", kind)) {
                self.count(
                    &self.cache.entries.load(),
                    "parapet_rejections_total",
                    &[("layer", layer), ("name", name), ("kind", kind)],
                );
            }
        };
        match *event {
            Event::TimedOut { shadow: false, .. } => rejected("timeout"),
            Event::CircuitRejected { shadow: false, .. } => rejected("circuit_open"),
            Event::RateLimited { shadow: false, .. } => rejected("rate_limited"),
            Event::IdempotencyRejected {
                shadow: false,
                kind,
                ..
            } => rejected(kind.as_str()),
            Event::CircuitStateChanged { key: None, to, .. } => {
                self.set(
                    &self.cache.entries.load(),
                    "parapet_circuit_breaker_state",
                    &[("name", name)],
                    state_code(to),
                );
            }
            Event::FallbackServed {
                source, trigger, ..
            } => self.count(
                &self.cache.entries.load(),
                "parapet_fallbacks_total",
                &[
                    ("name", name),
                    ("source", source),
                    ("trigger", trigger.as_str()),
                ],
            ),
            Event::FeatureGated {
                flag,
                reason,
                shadow,
                ..
            } => {
                if !shadow {
                    rejected("feature_disabled");
                }
                self.count(
                    &self.cache.entries.load(),
                    "parapet_flag_gated_total",
                    &[("name", name), ("flag", flag), ("reason", reason.as_str())],
                );
            }
            Event::BulkheadRejected { shadow: false, .. } => rejected("overloaded"),
            Event::BulkheadLimitChanged { to, .. } => self.set(
                &self.cache.entries.load(),
                "parapet_bulkhead_limit",
                &[("name", name)],
                f64::from(to),
            ),
            Event::RetryScheduled { .. } => self.count(
                &self.cache.entries.load(),
                "parapet_retries_total",
                &[("name", name)],
            ),
            Event::RetryCompleted { .. } => self.count(
                &self.cache.entries.load(),
                "parapet_retry_calls_total",
                &[("name", name), ("result", outcome)],
            ),
            Event::CacheHit { .. }
            | Event::CacheMiss { .. }
            | Event::CacheStaleServed { .. }
            | Event::CacheCoalesced { .. } => self.count(
                &self.cache.entries.load(),
                "parapet_cache_requests_total",
                &[("name", name), ("result", outcome)],
            ),
            Event::BackendPolicyApplied {
                policy: "fail_closed",
                ..
            } => rejected("overloaded"),
            Event::BackendDown { .. } | Event::BackendRecovered { .. } => self.set(
                &self.cache.entries.load(),
                "parapet_backend_up",
                &[("name", name)],
                if matches!(event, Event::BackendDown { .. }) {
                    0.0
                } else {
                    1.0
                },
            ),
            Event::CacheNotStored { reason, .. } => self.count(
                &self.cache.entries.load(),
                "parapet_cache_not_stored_total",
                &[("name", name), ("reason", reason)],
            ),
            _ => {}
        }
    }
}
