//! Server pushback: `Retry-After` (seconds or HTTP-date), the RateLimit `t` parameter and
//! `grpc-retry-pushback-ms`, parsed strictly (they are untrusted input).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{BoxError, Rejection};
use crate::parse::parse_digits;

/// What a failed answer says about retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// Retry no sooner than this.
    After(Duration),
    /// Do not retry (a negative or malformed `grpc-retry-pushback-ms`, as gRPC defines).
    Stop,
}

/// Reads the server's pushback from a failed attempt's result.
pub trait PushbackSource<Res>: Clone + Send + Sync + 'static {
    /// The pushback carried by `result`, if any. `now` is the wall-clock time, for
    /// `Retry-After` dates.
    fn pushback(&self, result: Result<&Res, &BoxError>, now: SystemTime) -> Option<Pushback>;
}

/// The pushback of a parapet rejection from an inner layer (its `retry_after`, e.g. an
/// open circuit's remaining wait); nothing from responses. Works for any response type.
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectionPushback;

impl<Res> PushbackSource<Res> for RejectionPushback {
    fn pushback(&self, result: Result<&Res, &BoxError>, _: SystemTime) -> Option<Pushback> {
        rejection_pushback(result.err()?)
    }
}

fn rejection_pushback(err: &BoxError) -> Option<Pushback> {
    Rejection::from_box(err)?.retry_after().map(Pushback::After)
}

/// The longest header value parsed; anything longer is ignored.
const MAX_VALUE: usize = 256;

/// `Retry-After`: delay-seconds (ASCII digits only, saturating however many) or an
/// HTTP-date (see [`parse_http_date`]), as a wait from `now`. A date in the past is zero.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use tower_parapet::retry::parse_retry_after;
///
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_717); // 06 Nov 1994 08:48:37 GMT
/// assert_eq!(parse_retry_after(b"120", now), Some(Duration::from_secs(120)));
/// assert_eq!(
///     parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", now),
///     Some(Duration::from_secs(60))
/// );
/// assert_eq!(parse_retry_after(b"+5", now), None);
/// ```
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = value.trim_ascii();
    if value.len() > MAX_VALUE {
        return None;
    }
    if let Some(secs) = parse_digits(value, value.len()) {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP-date (RFC 9110 §5.6.7): the preferred IMF-fixdate (`Sun, 06 Nov 1994 08:49:37
/// GMT`), and the two obsolete forms recipients must still accept, RFC 850 (`Sunday,
/// 06-Nov-94 08:49:37 GMT`; a two-digit year below 70 is 20yy, otherwise 19yy) and asctime
/// (`Sun Nov  6 08:49:37 1994`). Day names must be day names but are not checked against
/// the date; dates before 1970 are refused.
pub fn parse_http_date(value: &[u8]) -> Option<SystemTime> {
    let v = value;
    let (day, month, year, time) = if v.len() == 29 && v.get(3) == Some(&b',') {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
        if !SHORT_DAYS.contains(&&v[0..3])
            || v[4] != b' '
            || v[7] != b' '
            || v[11] != b' '
            || v[16] != b' '
            || &v[25..] != b" GMT"
        {
            return None;
        }
        (&v[5..7], &v[8..11], digits(&v[12..16])?, &v[17..25])
    } else if v.len() == 24 && v.get(3) == Some(&b' ') {
        // asctime: "Sun Nov  6 08:49:37 1994"
        if !SHORT_DAYS.contains(&&v[0..3]) || v[7] != b' ' || v[10] != b' ' || v[19] != b' ' {
            return None;
        }
        let day: &[u8] = if v[8] == b' ' { &v[9..10] } else { &v[8..10] };
        (day, &v[4..7], digits(&v[20..24])?, &v[11..19])
    } else {
        // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
        let comma = v.iter().position(|&b| b == b',')?;
        if !LONG_DAYS.contains(&&v[..comma]) {
            return None;
        }
        let rest = &v[comma..];
        if rest.len() != 24
            || rest[1] != b' '
            || rest[4] != b'-'
            || rest[8] != b'-'
            || rest[11] != b' '
            || &rest[20..] != b" GMT"
        {
            return None;
        }
        let yy = digits(&rest[9..11])?;
        let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
        (&rest[2..4], &rest[5..8], year, &rest[12..20])
    };
    if time.len() != 8 || time[2] != b':' || time[5] != b':' {
        return None;
    }
    let day = digits(day)?;
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let (hour, minute, second) = (
        digits(&time[0..2])?,
        digits(&time[3..5])?,
        digits(&time[6..8])?,
    );
    if year < 1970 || day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 {
        return None;
    }
    // A leap second reads as the last second of its minute.
    let second = match second {
        0..=59 => second,
        60 => 59,
        _ => return None,
    };
    let days = days_since_epoch(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

const SHORT_DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const LONG_DAYS: [&[u8]; 7] = [
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
    b"Sunday",
];
const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

fn digits(bytes: &[u8]) -> Option<u64> {
    parse_digits(bytes, bytes.len())
}

fn is_leap(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to `year-month-day` (year >= 1970).
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    let years = year - 1970;
    // Leap years in [1970, year): those divisible by 4, minus by 100, plus by 400.
    let leaps = |y: u64| y / 4 - y / 100 + y / 400;
    let mut days = years * 365 + (leaps(year - 1) - leaps(1969));
    for m in 1..month {
        days += days_in_month(year, m);
    }
    days + day - 1
}

/// The `t` parameter (seconds until the quota resets) of a `RateLimit` field
/// (`"default";r=0;t=45`, draft-ietf-httpapi-ratelimit-headers). With several policies,
/// the longest `t` among those whose `r` is 0 (the exhausted ones); a policy without `r`
/// counts as exhausted. `None` when no exhausted policy gives a `t`.
///
/// ```
/// use std::time::Duration;
/// use tower_parapet::retry::parse_ratelimit_reset;
///
/// assert_eq!(parse_ratelimit_reset(br#""default";r=0;t=45"#), Some(Duration::from_secs(45)));
/// assert_eq!(parse_ratelimit_reset(br#""a";r=5;t=9, "b";r=0;t=3"#), Some(Duration::from_secs(3)));
/// assert_eq!(parse_ratelimit_reset(br#""a";r=5;t=9"#), None);
/// ```
pub fn parse_ratelimit_reset(value: &[u8]) -> Option<Duration> {
    if value.len() > MAX_VALUE {
        return None;
    }
    let mut best: Option<u64> = None;
    for item in split_outside_quotes(value, b',') {
        let mut remaining = None;
        let mut reset = None;
        for param in split_outside_quotes(item, b';').skip(1) {
            let param = param.trim_ascii();
            if let Some(v) = param.strip_prefix(b"r=") {
                remaining = parse_digits(v, v.len());
            } else if let Some(v) = param.strip_prefix(b"t=") {
                reset = parse_digits(v, v.len());
            }
        }
        if let (Some(t), None | Some(0)) = (reset, remaining) {
            best = Some(best.map_or(t, |b| b.max(t)));
        }
    }
    best.map(Duration::from_secs)
}

/// Split on `sep` outside double-quoted strings (with `\` escapes).
fn split_outside_quotes(value: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut cuts = Vec::new();
    for (i, &b) in value.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            cuts.push(&value[start..i]);
            start = i + 1;
        }
    }
    cuts.push(&value[start..]);
    cuts.into_iter()
}

/// `grpc-retry-pushback-ms`: a wait in milliseconds; a negative or malformed value means
/// "do not retry" (gRFC A6).
///
/// ```
/// use std::time::Duration;
/// use tower_parapet::retry::{Pushback, parse_grpc_pushback};
///
/// assert_eq!(parse_grpc_pushback(b"1500"), Pushback::After(Duration::from_millis(1500)));
/// assert_eq!(parse_grpc_pushback(b"-1"), Pushback::Stop);
/// ```
pub fn parse_grpc_pushback(value: &[u8]) -> Pushback {
    match parse_digits(value.trim_ascii(), 20) {
        Some(ms) => Pushback::After(Duration::from_millis(ms)),
        None => Pushback::Stop,
    }
}

#[cfg(feature = "http")]
pub use self::http_pushback::HttpPushback;

#[cfg(feature = "http")]
mod http_pushback {
    use super::*;

    /// The pushback of an HTTP or gRPC-over-HTTP answer: `grpc-retry-pushback-ms` when
    /// present (it decides alone, "stop" included); otherwise the longest of
    /// `Retry-After` and the RateLimit field's `t`. For errors, a parapet rejection's
    /// `retry_after`.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct HttpPushback;

    impl<B> PushbackSource<http::Response<B>> for HttpPushback {
        fn pushback(
            &self,
            result: Result<&http::Response<B>, &BoxError>,
            now: SystemTime,
        ) -> Option<Pushback> {
            let res = match result {
                Ok(res) => res,
                Err(err) => return rejection_pushback(err),
            };
            let h = res.headers();
            if let Some(v) = h.get("grpc-retry-pushback-ms") {
                return Some(parse_grpc_pushback(v.as_bytes()));
            }
            let retry_after = h
                .get(http::header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v.as_bytes(), now));
            let reset = h
                .get("ratelimit")
                .and_then(|v| parse_ratelimit_reset(v.as_bytes()));
            match (retry_after, reset) {
                (Some(a), Some(b)) => Some(Pushback::After(a.max(b))),
                (a, b) => a.or(b).map(Pushback::After),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(at(0))
        );
        assert_eq!(
            parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(at(784_111_777))
        );
        assert_eq!(
            parse_http_date(b"Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(at(951_825_600))
        );
        assert_eq!(
            parse_http_date(b"Fri, 31 Dec 2027 23:59:59 GMT"),
            Some(at(1_830_297_599))
        );
        let obsolete = Some(at(784_111_777));
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), obsolete);
        assert_eq!(parse_http_date(b"Sun Nov  6 08:49:37 1994"), obsolete);
        assert_eq!(
            parse_http_date(b"Wednesday, 01-Jan-25 00:00:00 GMT"),
            Some(at(1_735_689_600))
        );
        assert_eq!(
            parse_http_date(b"Wed Dec 31 23:59:59 2025"),
            Some(at(1_767_225_599))
        );
        for bad in [
            &b"Sun, 06 Nov 1994 08:49:37 UTC"[..],
            b"Sun,  06 Nov 1994 08:49:37 GMT",
            b"Sunday, 06-Nov-1994 08:49:37 GMT",
            b"Sun, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov 6 08:49:37 1994",
            b"Sun Nov  6 08-49-37 1994",
            b"Funday, 06-Nov-94 08:49:37 GMT",
            b"Xyz, 06 Nov 1994 08:49:37 GMT",
            b"Sun, 31 Nov 1994 08:49:37 GMT",
            b"Mon, 29 Feb 2100 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, +6 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1969 08:49:37 GMT",
        ] {
            assert_eq!(
                parse_http_date(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = at(784_111_777);
        assert_eq!(parse_retry_after(b"0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(b" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:49:40 GMT", now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a past date: retry now"
        );
        for bad in [&b"-1"[..], b"1.5", b"", b"soon"] {
            assert_eq!(parse_retry_after(bad, now), None);
        }
    }

    #[test]
    fn ratelimit_and_grpc() {
        assert_eq!(
            parse_ratelimit_reset(br#""x,y";r=0;t=4, "z";t=6"#),
            Some(Duration::from_secs(6))
        );
        assert_eq!(parse_ratelimit_reset(br#""x";r=0"#), None);
        assert_eq!(parse_ratelimit_reset(br#""x";r=0;t=+4"#), None);
        assert_eq!(parse_grpc_pushback(b"abc"), Pushback::Stop);
        assert_eq!(parse_grpc_pushback(b"0"), Pushback::After(Duration::ZERO));
    }
}
