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
    /// The name, and where the first one seen was.
    name: OnceLock<(Box<str>, usize)>,
    slots: [FastSlot; FAST_SLOTS],
}

/// Key (layer, outcome, rejection kind), the events counter, the rejections counter.
type FastSlot = OnceLock<([usize; 3], Handle, Option<Handle>)>;

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
            .field("name", &self.fast.name.get().map(|(n, _)| n))
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

    /// Count one event — `parapet_events_total{layer, name, outcome}`, and
    /// `parapet_rejections_total{layer, name, kind}` for an enforced refusal — through the
    /// fast table when it can: one slot holds both handles of an (outcome, kind) pair.
    #[inline]
    fn count_event(
        &self,
        layer: &'static str,
        name: &str,
        outcome: &'static str,
        kind: Option<&'static str>,
    ) -> bool {
        let fast = &self.fast;
        let (own, seen_at) = match fast.name.get() {
            Some(own) => own,
            None => fast
                .name
                .get_or_init(|| (name.into(), name.as_ptr() as usize)),
        };
        // A layer passes the same `Arc<str>` every time: the address it had the first
        // time spares the compare.
        if !(*seen_at == name.as_ptr() as usize && own.len() == name.len()) && &**own != name {
            return false;
        }
        let key = [
            layer.as_ptr() as usize,
            outcome.as_ptr() as usize ^ outcome.len(),
            kind.map_or(0, |k| k.as_ptr() as usize ^ k.len()),
        ];
        // The labels are string literals at distinct addresses in the binary: a few of
        // their address bits spread them over the slots (a collision takes the general
        // path; it never miscounts).
        let mix = (key[1] >> 2) ^ (key[1] >> 8) ^ (key[2] >> 3) ^ (key[0] >> 5);
        let slot = &fast.slots[mix % FAST_SLOTS];
        // The written slot is read without a closure holding `key`: the key stays in
        // registers (spilled to the stack and read back as one wide load, it stalled on
        // store forwarding and cost the whole event ~20 ns).
        let (held, events, rejections) = match slot.get() {
            Some(entry) => entry,
            None => Self::fill(slot, key, || {
                let events = self.register(
                    "parapet_events_total",
                    &[("layer", layer), ("name", name), ("outcome", outcome)],
                    false,
                );
                let rejections = kind.map(|kind| {
                    self.register(
                        "parapet_rejections_total",
                        &[("layer", layer), ("name", name), ("kind", kind)],
                        false,
                    )
                });
                (events, rejections)
            }),
        };
        if held[0] != key[0] || held[1] != key[1] || held[2] != key[2] {
            return false;
        }
        for handle in std::iter::once(events).chain(rejections) {
            if let Handle::Counter(c) = handle {
                c.increment(1);
            }
        }
        true
    }

    #[cold]
    #[inline(never)]
    fn fill(
        slot: &FastSlot,
        key: [usize; 3],
        register: impl FnOnce() -> (Handle, Option<Handle>),
    ) -> &([usize; 3], Handle, Option<Handle>) {
        slot.get_or_init(|| {
            let (events, rejections) = register();
            (key, events, rejections)
        })
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
        let kind = match *event {
            Event::TimedOut { shadow: false, .. } => Some("timeout"),
            Event::CircuitRejected { shadow: false, .. } => Some("circuit_open"),
            Event::RateLimited { shadow: false, .. } => Some("rate_limited"),
            Event::IdempotencyRejected {
                shadow: false,
                kind,
                ..
            } => Some(kind.as_str()),
            Event::FeatureGated { shadow: false, .. } => Some("feature_disabled"),
            Event::BulkheadRejected { shadow: false, .. } => Some("overloaded"),
            // The rate limiter's refusal for a missing Redis has no event of its own; the
            // idempotency layer's is an `IdempotencyRejected` (counted above).
            Event::BackendPolicyApplied {
                layer: "rate_limit",
                policy: "fail_closed",
                ..
            } => Some("overloaded"),
            _ => None,
        };
        if !self.count_event(layer, name, outcome, kind) {
            let entries = self.cache.entries.load();
            self.count(
                &entries,
                "parapet_events_total",
                &[("layer", layer), ("name", name), ("outcome", outcome)],
            );
            if let Some(kind) = kind {
                self.count(
                    &entries,
                    "parapet_rejections_total",
                    &[("layer", layer), ("name", name), ("kind", kind)],
                );
            }
        }
        match *event {
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
            Event::FeatureGated { flag, reason, .. } => {
                self.count(
                    &self.cache.entries.load(),
                    "parapet_flag_gated_total",
                    &[("name", name), ("flag", flag), ("reason", reason.as_str())],
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RejectionKind;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use std::time::Duration;

    /// Every counter's value by `metric{labels}`.
    fn counters(recorder: &DebuggingRecorder) -> std::collections::BTreeMap<String, u64> {
        recorder
            .snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Counter(n) => {
                    let (_, key) = key.into_parts();
                    let mut labels: Vec<String> = key
                        .labels()
                        .map(|l| format!("{}={}", l.key(), l.value()))
                        .collect();
                    labels.sort();
                    Some((format!("{}{{{}}}", key.name(), labels.join(",")), n))
                }
                _ => None,
            })
            .collect()
    }

    /// One observer given events of two names and many outcomes (so fast slots collide
    /// and the second name takes the general path): every count lands on its own labels.
    #[test]
    fn fast_and_general_paths_count_the_same() {
        let recorder = DebuggingRecorder::new();
        let observer = MetricsObserver::default();
        let (first, second): (Arc<str>, Arc<str>) = ("orders".into(), "users".into());
        metrics::with_local_recorder(&recorder, || {
            for round in 0..3 {
                for name in [&first, &second] {
                    let events = [
                        Event::RateLimited {
                            name: name.as_ref(),
                            class: "ip",
                            key: None,
                            policy: "default",
                            retry_after: Duration::from_secs(1),
                            shadow: false,
                        },
                        Event::RateLimited {
                            name: name.as_ref(),
                            class: "ip",
                            key: None,
                            policy: "default",
                            retry_after: Duration::from_secs(1),
                            shadow: true,
                        },
                        Event::TimedOut {
                            name: name.as_ref(),
                            after: Duration::from_secs(1),
                            shadow: false,
                        },
                        Event::IdempotencyRejected {
                            name: name.as_ref(),
                            key: Some("k"),
                            kind: RejectionKind::IdempotencyInFlight,
                            shadow: false,
                        },
                        Event::BackendPolicyApplied {
                            layer: "rate_limit",
                            name: name.as_ref(),
                            backend: "redis",
                            policy: "fail_closed",
                        },
                        // Counted by the `IdempotencyRejected` that follows it, not here.
                        Event::BackendPolicyApplied {
                            layer: "idempotency",
                            name: name.as_ref(),
                            backend: "store",
                            policy: "fail_closed",
                        },
                    ];
                    for e in &events {
                        observer.on_event(e);
                    }
                }
                let _ = round;
            }
        });
        let got = counters(&recorder);
        for name in ["orders", "users"] {
            let c = |metric: &str, labels: &str| {
                let mut all: Vec<String> = labels.split(',').map(str::to_owned).collect();
                all.push(format!("name={name}"));
                all.sort();
                got.get(&format!("{metric}{{{}}}", all.join(",")))
                    .copied()
                    .unwrap_or(0)
            };
            assert_eq!(
                c(
                    "parapet_events_total",
                    "layer=rate_limit,outcome=rate_limited"
                ),
                3
            );
            assert_eq!(
                c(
                    "parapet_events_total",
                    "layer=rate_limit,outcome=would_have_rate_limited"
                ),
                3,
                "{got:#?}"
            );
            assert_eq!(
                c(
                    "parapet_rejections_total",
                    "kind=rate_limited,layer=rate_limit"
                ),
                3
            );
            assert_eq!(
                c("parapet_rejections_total", "kind=timeout,layer=timeout"),
                3
            );
            assert_eq!(
                c(
                    "parapet_rejections_total",
                    "kind=idempotency_in_flight,layer=idempotency"
                ),
                3
            );
            assert_eq!(
                c(
                    "parapet_events_total",
                    "layer=rate_limit,outcome=fail_closed"
                ),
                3
            );
            assert_eq!(
                c(
                    "parapet_rejections_total",
                    "kind=overloaded,layer=rate_limit"
                ),
                3
            );
        }
        // Shadow refusals are not rejections.
        let rejections: u64 = got
            .iter()
            .filter(|(k, _)| k.starts_with("parapet_rejections_total"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(rejections, 2 * 3 * 4);
    }
}
