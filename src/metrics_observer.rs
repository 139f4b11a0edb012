//! The observer that turns events into `metrics` counters and gauges (feature `metrics`).

use crate::observe::{Event, Observer};

/// Records every [`Event`] through the `metrics` facade. Part of the default observer
/// when the `metrics` feature is on; with no recorder installed it records nothing.
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
///
/// `name` is the layer's configured name; no label ever holds a key, an IP or a user.
/// The logging layer adds `parapet_requests_total` and
/// `parapet_request_duration_seconds` (see [`logging`](crate::logging)).
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsObserver {
    _priv: (),
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
        let name = event.name().to_owned();
        metrics::counter!(
            "parapet_events_total",
            "layer" => layer,
            "name" => name.clone(),
            "outcome" => event.outcome(),
        )
        .increment(1);
        let rejected = |kind: &'static str| {
            metrics::counter!(
                "parapet_rejections_total",
                "layer" => layer,
                "name" => name.clone(),
                "kind" => kind,
            )
            .increment(1);
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
                metrics::gauge!("parapet_circuit_breaker_state", "name" => name.clone())
                    .set(state_code(to));
            }
            Event::FallbackServed {
                source, trigger, ..
            } => {
                metrics::counter!(
                    "parapet_fallbacks_total",
                    "name" => name.clone(),
                    "source" => source,
                    "trigger" => trigger.as_str(),
                )
                .increment(1);
            }
            Event::FeatureGated {
                flag,
                reason,
                shadow,
                ..
            } => {
                if !shadow {
                    rejected("feature_disabled");
                }
                metrics::counter!(
                    "parapet_flag_gated_total",
                    "name" => name.clone(),
                    "flag" => flag.to_owned(),
                    "reason" => reason.as_str(),
                )
                .increment(1);
            }
            Event::BulkheadRejected { shadow: false, .. } => rejected("overloaded"),
            Event::BulkheadLimitChanged { to, .. } => {
                metrics::gauge!("parapet_bulkhead_limit", "name" => name.clone())
                    .set(f64::from(to));
            }
            Event::RetryScheduled { .. } => {
                metrics::counter!("parapet_retries_total", "name" => name.clone()).increment(1);
            }
            Event::RetryCompleted { .. } => {
                metrics::counter!(
                    "parapet_retry_calls_total",
                    "name" => name.clone(),
                    "result" => event.outcome(),
                )
                .increment(1);
            }
            _ => {}
        }
    }
}
