//! Shared pieces of the layers' configuration structs (contract 10).
//!
//! Durations in config files are strings with a unit, never bare numbers:
//! `"250ms"`, `"2s"`, `"1m30s"`, `"1h"`, `"500us"`, `"10ns"`. Use [`duration`] as
//! `#[serde(with = "tower_parapet::config::duration")]` in your own config structs.

/// Serde adapter for `Duration` fields written as `"1m30s"`-style strings.
///
/// ```
/// use std::time::Duration;
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Config {
///     #[serde(with = "tower_parapet::config::duration")]
///     timeout: Duration,
/// }
/// let c: Config = serde_json::from_str(r#"{"timeout":"1m30s"}"#).unwrap();
/// assert_eq!(c.timeout, Duration::from_secs(90));
/// assert!(serde_json::from_str::<Config>(r#"{"timeout":90}"#).is_err());
/// assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"timeout":"90s"}"#);
/// ```
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use std::time::Duration;

    /// Parse `"1h2m3s4ms5us6ns"`-style text: one or more `<digits><unit>` parts, units
    /// `h`, `m`, `s`, `ms`, `us`, `ns`. Saturates instead of overflowing.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let bytes = text.trim().as_bytes();
        if bytes.is_empty() {
            return Err("empty duration".into());
        }
        let mut total = Duration::ZERO;
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let n = crate::parse::parse_digits(&bytes[start..i], usize::MAX).ok_or_else(|| {
                format!("expected digits at byte {start} of {text:?} (e.g. \"250ms\", \"2s\")")
            })?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let part = match &bytes[unit_start..i] {
                b"h" => Duration::from_secs(n.saturating_mul(3600)),
                b"m" => Duration::from_secs(n.saturating_mul(60)),
                b"s" => Duration::from_secs(n),
                b"ms" => Duration::from_millis(n),
                b"us" => Duration::from_micros(n),
                b"ns" => Duration::from_nanos(n),
                _ => {
                    return Err(format!(
                        "unknown or missing unit in {text:?}: use h, m, s, ms, us or ns"
                    ));
                }
            };
            total = total.saturating_add(part);
        }
        Ok(total)
    }

    /// Write a duration in the largest exact unit (`"90s"`, `"250ms"`).
    pub fn format(d: Duration) -> String {
        let nanos = d.as_nanos();
        if nanos == 0 {
            return "0s".into();
        }
        for (unit, per) in [
            ("h", 3_600_000_000_000u128),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if nanos.is_multiple_of(per) {
                return format!("{}{unit}", nanos / per);
            }
        }
        format!("{nanos}ns")
    }

    /// Serde `serialize_with`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// Serde `deserialize_with`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&text).map_err(D::Error::custom)
    }

    /// The same for `Option<Duration>` fields.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        /// Serde `serialize_with`.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_str(&super::format(*d)),
                None => s.serialize_none(),
            }
        }

        /// Serde `deserialize_with`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
            text.map(|t| super::parse(&t).map_err(serde::de::Error::custom))
                .transpose()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_units_and_rejects_garbage() {
            assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
            assert_eq!(parse("1h2m3s"), Ok(Duration::from_secs(3723)));
            assert_eq!(parse("7us"), Ok(Duration::from_micros(7)));
            assert_eq!(parse("0s"), Ok(Duration::ZERO));
            for bad in ["", "5", "s", "+5s", "-5s", "1.5s", "5 s", "5sec", "5d"] {
                assert!(parse(bad).is_err(), "{bad:?}");
            }
        }

        #[test]
        fn format_round_trips() {
            for d in [
                Duration::ZERO,
                Duration::from_millis(250),
                Duration::from_secs(90),
                Duration::from_secs(3600 * 5),
                Duration::from_nanos(1_000_001),
                Duration::from_micros(1500),
            ] {
                assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
            }
            assert_eq!(format(Duration::from_secs(90)), "90s");
            assert_eq!(format(Duration::from_millis(250)), "250ms");
            assert_eq!(format(Duration::from_secs(120)), "2m");
        }
    }
}

/// What a layer does for a request when its shared store (Redis, or an idempotency store
/// of your own) cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Let the request through unchecked.
    FailOpen,
    /// Refuse it with [`Rejection::Overloaded`](crate::Rejection::Overloaded): 503 with
    /// `Retry-After: 1` over HTTP, `UNAVAILABLE` over gRPC; safe for the client to retry.
    FailClosed,
    /// Decide in process with the same configuration, as if each instance were alone
    /// (rate limits only; the idempotency layer treats it as `FailClosed`).
    Local,
}

impl FailurePolicy {
    /// `"fail_open"`, `"fail_closed"` or `"local"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "fail_open",
            FailurePolicy::FailClosed => "fail_closed",
            FailurePolicy::Local => "local",
        }
    }
}
