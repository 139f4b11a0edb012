//! Properties of every parser of untrusted input: arbitrary bytes never panic and give
//! bounded output, near-valid inputs built from the grammar give the known answer.
//!
//! ```text
//! cargo test --all-features --test parsers
//! ```
#![cfg(feature = "http")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use proptest::prelude::*;
use tower::{Layer, ServiceExt};
use tower_parapet::BoxError;
use tower_parapet::cache::CacheLayer;
use tower_parapet::grpc::{Code, format_grpc_timeout, parse_grpc_timeout};
use tower_parapet::idempotency::IdempotencyKeyHeader;
use tower_parapet::key::{ClientIp, KeyError, KeyExtractor, PeerAddr};
use tower_parapet::retry::{
    Pushback, parse_grpc_pushback, parse_http_date, parse_ratelimit_reset, parse_retry_after,
};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Short byte strings biased towards the characters the grammars care about.
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => any::<u8>(),
        4 => proptest::sample::select(
            b"0123456789abcdefABCDEF.:[]\"\\,;= \t-_/HMSmunrtfor".to_vec()
        ),
    ];
    proptest::collection::vec(byte, 0..max)
}

// ---- grpc-timeout ----------------------------------------------------------------------

const UNITS: [(u8, u128); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60_000_000_000),
    (b'H', 3_600_000_000_000),
];

fn unit_nanos(unit: u8) -> Option<u128> {
    UNITS.iter().find(|(u, _)| *u == unit).map(|(_, n)| *n)
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn grpc_timeout_accepts_only_its_grammar(value in header_bytes(12)) {
        if let Ok(d) = parse_grpc_timeout(&value) {
            let (unit, digits) = value.split_last().unwrap();
            prop_assert!((1..=8).contains(&digits.len()));
            prop_assert!(digits.iter().all(u8::is_ascii_digit));
            let n: u128 = std::str::from_utf8(digits).unwrap().parse().unwrap();
            prop_assert_eq!(d.as_nanos(), n * unit_nanos(*unit).unwrap());
        }
    }

    #[test]
    fn grpc_timeout_known_answers(n in 0u64..=99_999_999, unit in 0usize..6) {
        let (u, per) = UNITS[unit];
        let text = format!("{n}{}", char::from(u));
        let d = parse_grpc_timeout(text.as_bytes()).unwrap();
        prop_assert_eq!(d.as_nanos(), u128::from(n) * per);
        // Leading zeros and the ninth digit.
        let padded = format!("{n:08}{}", char::from(u));
        prop_assert_eq!(parse_grpc_timeout(padded.as_bytes()), Ok(d));
        let nine = format!("1{n:08}{}", char::from(u));
        prop_assert!(parse_grpc_timeout(nine.as_bytes()).is_err());
    }

    #[test]
    fn grpc_timeout_format_round_trips(
        secs in prop_oneof![0u64..10, 0u64..100_000, 0u64..=400_000_000_000],
        nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
    ) {
        let d = Duration::new(secs, nanos);
        let text = format_grpc_timeout(d);
        prop_assert!(text.len() <= 9, "{text}");
        let back = parse_grpc_timeout(text.as_bytes()).unwrap();
        let per = unit_nanos(*text.as_bytes().last().unwrap()).unwrap();
        let cap = Duration::from_secs(99_999_999 * 3600);
        if d <= cap {
            // Rounded up to the unit, never down, never to zero.
            prop_assert!(back >= d && back > Duration::ZERO, "{d:?} -> {text}");
            prop_assert!(back.as_nanos() - d.as_nanos().max(1) < per, "{d:?} -> {text}");
        } else {
            prop_assert_eq!(back, cap);
        }
        // A parsed value formats to itself.
        if !back.is_zero() {
            prop_assert_eq!(parse_grpc_timeout(format_grpc_timeout(back).as_bytes()), Ok(back));
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn grpc_status_is_one_or_two_digits_naming_a_code(value in header_bytes(4)) {
        if let Some(code) = Code::parse(&value) {
            prop_assert!((1..=2).contains(&value.len()));
            let n: u8 = std::str::from_utf8(&value).unwrap().parse().unwrap();
            prop_assert_eq!(code.as_u8(), n);
        }
        for n in 0u8..=99 {
            let code = Code::parse(n.to_string().as_bytes());
            prop_assert_eq!(code.map(Code::as_u8), (n <= 16).then_some(n));
        }
    }

    #[test]
    fn grpc_pushback_is_a_wait_or_stop(value in header_bytes(24), ms: u64) {
        if let Pushback::After(wait) = parse_grpc_pushback(&value) {
            prop_assert!(value.trim_ascii().iter().all(u8::is_ascii_digit));
            prop_assert!(wait.as_millis() <= u128::from(u64::MAX));
        }
        prop_assert_eq!(
            parse_grpc_pushback(format!(" {ms} ").as_bytes()),
            Pushback::After(Duration::from_millis(ms))
        );
        prop_assert_eq!(parse_grpc_pushback(format!("-{ms}").as_bytes()), Pushback::Stop);
    }
}

// ---- the client-IP walk ----------------------------------------------------------------

fn peer_request(peer: IpAddr, header: &'static str, values: &[Vec<u8>]) -> Request<()> {
    let mut req = Request::new(());
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            req.headers_mut().append(header, v);
        }
    }
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(peer, 443)));
    req
}

fn proxies() -> ClientIp {
    ClientIp::trusting(["10.0.0.0/8", "fd00::/8"]).unwrap()
}

const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

/// An address: trusted (in 10/8) or not, IPv4 or IPv6.
fn hop() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::V4(Ipv4Addr::new(10, a, b, c))),
        any::<[u8; 4]>().prop_map(|[a, b, c, d]| IpAddr::V4(Ipv4Addr::new(
            if a == 10 { 11 } else { a },
            b,
            c,
            d
        ))),
        any::<[u16; 8]>()
            .prop_map(|s| IpAddr::from([0x2001, 0xdb8, s[2], s[3], s[4], s[5], s[6], s[7]])),
    ]
}

/// What the walk must find: the rightmost untrusted hop, the leftmost when all are
/// trusted, the peer with no hops or more than `max_hops` trusted ones before the client.
fn expected_client(hops: &[IpAddr], max_hops: usize) -> IpAddr {
    let trusted = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 10,
        IpAddr::V6(v6) => v6.segments()[0] >> 8 == 0xfd,
    };
    let mut leftmost = PROXY;
    for (walked, ip) in hops.iter().rev().enumerate() {
        if walked >= max_hops {
            return PROXY;
        }
        if !trusted(ip) {
            return *ip;
        }
        leftmost = *ip;
    }
    leftmost
}

/// One hop as a proxy may write it: with or without a port.
fn xff_entry(ip: &IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (ip, None) => ip.to_string(),
        (IpAddr::V4(v4), Some(p)) => format!("{v4}:{p}"),
        (IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
    }
}

fn forwarded_element(ip: &IpAddr, port: Option<u16>, proto: bool) -> String {
    let node = match (ip, port) {
        (IpAddr::V4(v4), None) => v4.to_string(),
        (IpAddr::V6(v6), None) => format!("\"[{v6}]\""),
        (ip, port) => format!("\"{}\"", xff_entry(ip, port)),
    };
    if proto {
        format!("proto=https;For={node};by=_hidden")
    } else {
        format!("for={node}")
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn client_ip_never_trusts_headers_from_an_untrusted_peer(
        values in proptest::collection::vec(header_bytes(64), 0..4),
        forwarded: bool,
    ) {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let header = if forwarded { "forwarded" } else { "x-forwarded-for" };
        let key = if forwarded { proxies().forwarded() } else { proxies() };
        let req = peer_request(peer, header, &values);
        prop_assert_eq!(key.extract(&req), Ok(peer));
    }

    #[test]
    fn client_ip_walk_of_arbitrary_headers_answers(
        values in proptest::collection::vec(header_bytes(96), 0..4),
        forwarded: bool,
        max_hops in 0usize..20,
    ) {
        let header = if forwarded { "forwarded" } else { "x-forwarded-for" };
        let key = if forwarded { proxies().forwarded() } else { proxies() }.max_hops(max_hops);
        let req = peer_request(PROXY, header, &values);
        // Always an answer; a header can only name an address it contains (or the peer).
        let ip = key.extract(&req).unwrap();
        if ip != PROXY {
            let text: Vec<u8> = values.concat();
            let needle = ip.to_string();
            let lower = String::from_utf8_lossy(&text).to_ascii_lowercase();
            // IPv4 appears verbatim unless it was written IPv4-mapped (`::ffff:…`); IPv6
            // may be spelled differently (zeros, case), so only a colon is checked.
            match ip {
                IpAddr::V4(_) => prop_assert!(
                    lower.contains(&needle) || lower.contains("ffff"),
                    "{needle} in {lower:?}"
                ),
                IpAddr::V6(_) => prop_assert!(lower.contains(':')),
            }
        }
    }

    #[test]
    fn client_ip_finds_the_rightmost_untrusted_hop(
        hops in proptest::collection::vec((hop(), proptest::option::of(any::<u16>()), any::<bool>()), 0..24),
        lines in 1usize..4,
        forwarded: bool,
    ) {
        let ips: Vec<IpAddr> = hops.iter().map(|(ip, _, _)| *ip).collect();
        let entries: Vec<String> = hops
            .iter()
            .map(|(ip, port, proto)| {
                if forwarded {
                    forwarded_element(ip, *port, *proto)
                } else {
                    xff_entry(ip, *port)
                }
            })
            .collect();
        // Split over several header lines, in order: read as one list.
        let per_line = entries.len().div_ceil(lines).max(1);
        let values: Vec<Vec<u8>> = entries
            .chunks(per_line)
            .map(|c| c.join(if forwarded { ", " } else { ",\t" }).into_bytes())
            .collect();
        let header = if forwarded { "forwarded" } else { "x-forwarded-for" };
        let key = if forwarded { proxies().forwarded() } else { proxies() };
        let req = peer_request(PROXY, header, &values);
        prop_assert_eq!(
            key.extract(&req),
            Ok(expected_client(&ips, ClientIp::DEFAULT_MAX_HOPS))
        );
    }

    #[test]
    fn client_ip_stops_at_garbage_in_the_walk(
        left in proptest::collection::vec(hop(), 0..4),
        right in proptest::collection::vec(any::<[u8; 3]>(), 0..4),
        garbage in prop_oneof![
            Just("unknown".to_owned()),
            Just("_hidden".to_owned()),
            Just(String::new()),
            Just("10.0.0.256".to_owned()),
            Just("[::1".to_owned()),
            "[a-z0-9.:]{1,12}".prop_filter("not an address", |s| {
                s.parse::<IpAddr>().is_err() && s.parse::<SocketAddr>().is_err()
                    && !s.contains(':')
            }),
        ],
    ) {
        // Trusted hops to the right of the garbage, anything to its left: the walk
        // reaches the garbage and answers the peer.
        let mut entries: Vec<String> = left.iter().map(ToString::to_string).collect();
        entries.push(garbage);
        entries.extend(right.iter().map(|[a, b, c]| format!("10.{a}.{b}.{c}")));
        let req = peer_request(PROXY, "x-forwarded-for", &[entries.join(", ").into_bytes()]);
        prop_assert_eq!(proxies().extract(&req), Ok(PROXY));
    }
}

// ---- Idempotency-Key -------------------------------------------------------------------

fn idempotency_request(values: &[Vec<u8>]) -> Request<()> {
    let mut req = Request::post("/pay").body(()).unwrap();
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            req.headers_mut().append("idempotency-key", v);
        }
    }
    req
}

fn quote(key: &str) -> String {
    let mut out = String::from("\"");
    for c in key.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii(
        values in proptest::collection::vec(header_bytes(80), 0..3),
        max_len in 0usize..40,
    ) {
        let key = IdempotencyKeyHeader::default().max_len(max_len);
        let req = idempotency_request(&values);
        let lines = req.headers().get_all("idempotency-key").iter().count();
        match key.extract(&req) {
            Ok(k) => {
                prop_assert_eq!(lines, 1);
                prop_assert!(!k.is_empty() && k.len() <= max_len, "{k:?}");
                prop_assert!(k.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{k:?}");
            }
            Err(KeyError::Missing) => prop_assert_eq!(lines, 0),
            Err(KeyError::TooLong { len, max }) => {
                prop_assert_eq!(max, max_len);
                prop_assert!(len > max_len);
            }
            Err(_) => {}
        }
    }

    #[test]
    fn idempotency_keys_round_trip_quoted_and_bare(
        key in "[ -~]{1,255}",
        ows_left in "[ \t]{0,2}",
        ows_right in "[ \t]{0,2}",
    ) {
        let extractor = IdempotencyKeyHeader::default();
        let quoted = format!("{ows_left}{}{ows_right}", quote(&key));
        let req = idempotency_request(&[quoted.into_bytes()]);
        prop_assert_eq!(extractor.extract(&req), Ok(key.clone()));

        let bare_ok = !key.starts_with(' ') && !key.ends_with(' ')
            && key.bytes().all(|b| (0x21..=0x7e).contains(&b) && !b"\",\\".contains(&b));
        let req = idempotency_request(&[key.clone().into_bytes()]);
        let bare = extractor.extract(&req);
        if bare_ok {
            prop_assert_eq!(bare, Ok(key.clone()));
        } else {
            // Refused, or read as something else (`"a"` sent bare is the quoted
            // string `a`; surrounding spaces are trimmed): never as this key.
            prop_assert_ne!(bare, Ok(key.clone()));
        }

        // One character over the limit, by unquoted length.
        let short = IdempotencyKeyHeader::default().max_len(key.len() - 1);
        let req = idempotency_request(&[quote(&key).into_bytes()]);
        let is_too_long = matches!(short.extract(&req), Err(KeyError::TooLong { .. }));
        prop_assert!(is_too_long);
    }
}

// ---- Cache-Control, through the cache layer --------------------------------------------

/// Two identical GETs through a cache whose origin answers with `cache_control`: how many
/// reached the origin (1 when the first answer was stored, 2 when not).
fn origin_calls(cache_control: &[Vec<u8>]) -> u32 {
    let values: Vec<HeaderValue> = cache_control
        .iter()
        .filter_map(|v| HeaderValue::from_bytes(v).ok())
        .collect();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let origin = tower::service_fn(move |_: Request<Full<Bytes>>| {
        c.fetch_add(1, Ordering::SeqCst);
        let mut res = Response::new(Full::new(Bytes::from_static(b"body")));
        for v in &values {
            res.headers_mut().append("cache-control", v.clone());
        }
        async move { Ok::<_, BoxError>(res) }
    });
    let svc = CacheLayer::builder().build().unwrap().layer(origin);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..2 {
            let req = Request::get("/item").body(Full::default()).unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), 200);
        }
    });
    calls.load(Ordering::SeqCst)
}

/// A directive as an origin may write it: name in any case, argument quoted or not.
fn directive() -> impl Strategy<Value = (String, Option<u64>)> {
    let name = proptest::sample::select(vec![
        "max-age",
        "s-maxage",
        "no-store",
        "no-cache",
        "private",
        "public",
        "must-revalidate",
        "stale-while-revalidate",
        "stale-if-error",
        "immutable",
    ]);
    (
        name,
        proptest::option::of(0u64..100_000),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(name, arg, upper, quoted)| {
            let shown = if upper {
                name.to_ascii_uppercase()
            } else {
                name.to_owned()
            };
            match arg {
                Some(n) if quoted => (format!("{shown}=\"{n}\""), Some(n)),
                Some(n) => (format!("{shown}={n}"), Some(n)),
                None => (shown, None),
            }
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn cache_control_of_arbitrary_bytes_never_panics(
        values in proptest::collection::vec(header_bytes(64), 0..3),
    ) {
        let calls = origin_calls(&values);
        prop_assert!((1..=2).contains(&calls));
    }

    #[test]
    fn cache_control_directives_decide_storage(
        directives in proptest::collection::vec(directive(), 0..5),
        noise in proptest::collection::vec(directive(), 0..3),
        noise_at in any::<proptest::sample::Index>(),
    ) {
        let mut parts: Vec<String> = directives.iter().map(|(d, _)| d.clone()).collect();
        // An extension directive whose quoted argument looks like directives: read as
        // one unknown directive, it changes nothing.
        if !noise.is_empty() {
            let inner = noise
                .iter()
                .map(|(d, _)| d.replace('"', "\\\""))
                .collect::<Vec<_>>()
                .join(", ");
            parts.insert(noise_at.index(parts.len() + 1), format!("x-ext=\"{inner}\""));
        }
        let text = parts.join(", ");
        let lower = text.to_ascii_lowercase();
        let named = |name: &str| {
            directives.iter().any(|(d, _)| d.to_ascii_lowercase().split('=').next() == Some(name))
        };
        // The last max-age / s-maxage with an argument wins; s-maxage before max-age.
        let last = |name: &str| {
            directives
                .iter()
                .filter(|(d, _)| d.to_ascii_lowercase().split('=').next() == Some(name))
                .filter_map(|(_, n)| *n)
                .next_back()
        };
        let fresh = last("s-maxage").or(last("max-age")).unwrap_or(60);
        let stored = !named("no-store") && !named("private") && !named("no-cache") && fresh > 0;
        let calls = origin_calls(&[text.clone().into_bytes()]);
        prop_assert_eq!(calls, if stored { 1 } else { 2 }, "{}", lower);
    }
}

/// Regression: `Cache-Control` was split on every comma, so a quoted argument of another
/// directive (`no-cache="Set-Cookie, X"`, an extension's string) was read as directives of
/// its own: `ext="a, s-maxage=3600"` with `max-age=0` stored the response for an hour.
#[test]
fn cache_control_commas_inside_quoted_strings_split_nothing() {
    let calls = |v: &str| origin_calls(&[v.as_bytes().to_vec()]);
    assert_eq!(calls(r#"max-age=0, ext="a, s-maxage=3600, b""#), 2);
    assert_eq!(calls(r#"ext="x, no-store, y", max-age=60"#), 1);
    assert_eq!(calls(r#"ext="\", no-store", max-age=60"#), 1);
    assert_eq!(calls(r#"no-cache="Set-Cookie, Authorization""#), 2);
    assert_eq!(calls(r#"max-age=60, private="Set-Cookie""#), 2);
    assert_eq!(calls(r#"max-age="60", public"#), 1);
}

/// Regression: a `max-age` of more than 20 digits was refused as invalid and so read as
/// `max-age=0` (not stored), where RFC 9111 §1.2.2 reads a delta-seconds too large to
/// represent as the largest one. Windows of any size are stored without overflow.
#[test]
fn cache_control_huge_windows_do_not_overflow() {
    for n in [
        "18446744073709551615",
        "99999999999999999999999",
        "9223372036854775808",
    ] {
        for cc in [
            format!("max-age={n}"),
            format!("s-maxage={n}, stale-while-revalidate={n}, stale-if-error={n}"),
            format!("max-age=1, stale-while-revalidate={n}"),
            format!("max-age=1, stale-if-error={n}"),
        ] {
            assert_eq!(origin_calls(&[cc.clone().into_bytes()]), 1, "{cc}");
        }
    }
}

// ---- Retry-After, HTTP-date, RateLimit -------------------------------------------------

/// (year, month, day) of days since 1970-01-01.
fn civil(days: u64) -> (u64, u64, u64) {
    let mut year = 1970;
    let mut days = days;
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let mut month = 1;
    loop {
        let len = match month {
            2 if is_leap(year) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    (year, month, days + 1)
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

const DAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `secs` after the epoch in the three HTTP-date forms: IMF-fixdate, RFC 850, asctime.
fn http_dates(secs: u64) -> [String; 3] {
    let days = secs / 86_400;
    let (y, m, d) = civil(days);
    let long = DAYS[(days % 7) as usize];
    let short = &long[..3];
    let mon = MONTHS[(m - 1) as usize];
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    [
        format!("{short}, {d:02} {mon} {y} {hh:02}:{mm:02}:{ss:02} GMT"),
        format!(
            "{long}, {d:02}-{mon}-{:02} {hh:02}:{mm:02}:{ss:02} GMT",
            y % 100
        ),
        format!("{short} {mon} {d:>2} {hh:02}:{mm:02}:{ss:02} {y}"),
    ]
}

/// The last second of 9999.
const MAX_DATE: u64 = 253_402_300_799;

/// Regression: delay-seconds and the RateLimit parameters were read with at most 20
/// digits. A longer `Retry-After` was ignored (so a client asked to wait longer retried
/// sooner), and a longer `r=` counted as an exhausted policy. Numbers of any length now
/// saturate, as Cache-Control's do.
#[test]
fn retry_numbers_longer_than_twenty_digits_saturate() {
    let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let max = Some(Duration::from_secs(u64::MAX));
    assert_eq!(parse_retry_after(b"18446744073709551615", now), max);
    assert_eq!(parse_retry_after(b"100000000000000000000000", now), max);
    assert_eq!(
        parse_retry_after(b"000000000000000000000060", now),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        parse_ratelimit_reset(br#""a";r=0000000000000000000005;t=9, "b";r=0;t=3"#),
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        parse_ratelimit_reset(br#""a";r=0;t=000000000000000000000042"#),
        Some(Duration::from_secs(42))
    );
    assert_eq!(
        parse_ratelimit_reset(br#""a";r=0;t=99999999999999999999999"#),
        max
    );
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn http_date_of_arbitrary_bytes_is_after_1970_and_before_10000(value in header_bytes(40)) {
        if let Some(at) = parse_http_date(&value) {
            let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
            prop_assert!(secs <= MAX_DATE);
            // "Wednesday, 06-Nov-94 08:49:37 GMT" is the longest form.
            prop_assert!(value.len() <= 33);
        }
    }

    #[test]
    fn http_dates_known_answers(secs in 0u64..=MAX_DATE) {
        let [imf, rfc850, asctime] = http_dates(secs);
        let at = UNIX_EPOCH + Duration::from_secs(secs);
        prop_assert_eq!(parse_http_date(imf.as_bytes()), Some(at), "{}", imf);
        prop_assert_eq!(parse_http_date(asctime.as_bytes()), Some(at), "{}", asctime);
        // RFC 850 has two-digit years: 70–99 are 19yy, 00–69 are 20yy.
        let year = civil(secs / 86_400).0;
        if (1970..2070).contains(&year) {
            prop_assert_eq!(parse_http_date(rfc850.as_bytes()), Some(at), "{}", rfc850);
        } else {
            prop_assert_ne!(parse_http_date(rfc850.as_bytes()), Some(at), "{}", rfc850);
        }
    }

    #[test]
    fn http_dates_with_one_byte_changed_never_panic(
        secs in 0u64..=MAX_DATE,
        form in 0usize..3,
        at in any::<proptest::sample::Index>(),
        byte: u8,
    ) {
        let mut date = http_dates(secs)[form].clone().into_bytes();
        let i = at.index(date.len());
        date[i] = byte;
        if let Some(t) = parse_http_date(&date) {
            prop_assert!(t.duration_since(UNIX_EPOCH).unwrap().as_secs() <= MAX_DATE);
        }
    }

    #[test]
    fn retry_after_of_arbitrary_bytes(value in header_bytes(40), now in 0u64..=MAX_DATE) {
        let now = UNIX_EPOCH + Duration::from_secs(now);
        if let Some(wait) = parse_retry_after(&value, now) {
            let trimmed = value.trim_ascii();
            if trimmed.iter().all(u8::is_ascii_digit) {
                let n = trimmed.iter().fold(0u64, |n, d| {
                    n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                prop_assert_eq!(wait.as_secs(), n);
            } else {
                prop_assert!(wait.as_secs() <= MAX_DATE);
            }
        }
    }

    #[test]
    fn retry_after_known_answers(delay in 0u64..=MAX_DATE, now in 0u64..=MAX_DATE) {
        let start = UNIX_EPOCH + Duration::from_secs(now);
        let text = format!(" {delay}\t");
        prop_assert_eq!(
            parse_retry_after(text.as_bytes(), start),
            Some(Duration::from_secs(delay))
        );
        let signed = format!("+{delay}");
        prop_assert_eq!(parse_retry_after(signed.as_bytes(), start), None);
        let date = http_dates(delay)[0].clone();
        prop_assert_eq!(
            parse_retry_after(date.as_bytes(), start),
            Some(Duration::from_secs(delay.saturating_sub(now)))
        );
    }

    #[test]
    fn ratelimit_reset_of_arbitrary_bytes(value in header_bytes(300)) {
        if let Some(t) = parse_ratelimit_reset(&value) {
            prop_assert!(value.len() <= 256);
            let text = String::from_utf8_lossy(&value);
            prop_assert!(text.contains("t="), "{}", text);
            let _ = t;
        }
    }

    #[test]
    fn ratelimit_reset_is_the_longest_exhausted_t(
        policies in proptest::collection::vec(
            (
                "[a-z]{1,6}",
                proptest::option::of(0u64..4),
                proptest::option::of(0u64..100_000),
                any::<bool>(),
            ),
            1..6,
        ),
    ) {
        let text = policies
            .iter()
            .map(|(name, r, t, spaced)| {
                let sep = if *spaced { "; " } else { ";" };
                let mut item = format!("\"{name}\"");
                if let Some(r) = r {
                    item.push_str(&format!("{sep}r={r}"));
                }
                if let Some(t) = t {
                    item.push_str(&format!("{sep}t={t}"));
                }
                item
            })
            .collect::<Vec<_>>()
            .join(", ");
        let expected = policies
            .iter()
            .filter(|(_, r, _, _)| matches!(r, None | Some(0)))
            .filter_map(|(_, _, t, _)| *t)
            .max()
            .map(Duration::from_secs);
        prop_assert_eq!(parse_ratelimit_reset(text.as_bytes()), expected, "{}", text);
        // A comma or semicolon inside a quoted name splits nothing.
        let quoted = text.replacen('"', "\";,\\\"", 1);
        let first_is_quoted_name = policies.len() == 1;
        if first_is_quoted_name {
            prop_assert_eq!(parse_ratelimit_reset(quoted.as_bytes()), expected, "{}", quoted);
        }
    }
}

// ---- the flag file format --------------------------------------------------------------

#[cfg(feature = "flag-files")]
mod flag_files {
    use proptest::prelude::*;
    use tower_parapet::flags::{
        FileFormat, FileSource, FlagDef, FlagSet, FlagValue, MAX_FLAG_NAME_LEN, Rollout,
    };

    use super::config;

    fn json() -> FileSource {
        FileSource::new("flags.json")
    }

    fn toml() -> FileSource {
        FileSource::new("flags.toml").format(FileFormat::Toml)
    }

    /// A flag: on or off, maybe a rollout (a percentage over 100 is invalid), maybe
    /// string variants.
    fn flag() -> impl Strategy<Value = FlagDef> {
        (
            any::<bool>(),
            proptest::option::of(0u8..=120),
            proptest::option::of(proptest::collection::btree_set("[a-z]{1,5}", 1..4)),
            "[ -~]{0,12}",
        )
            .prop_map(|(enabled, rollout, variants, description)| {
                let mut def = match variants {
                    Some(names) => {
                        let first = names.iter().next().unwrap().clone();
                        FlagDef::variants(names.iter().map(String::as_str), &first)
                    }
                    None => FlagDef::default(),
                };
                def.enabled = enabled;
                def.description = description;
                def.rollout = rollout.map(|percentage| Rollout {
                    percentage,
                    group_id: None,
                    variant: None,
                });
                def
            })
    }

    fn flag_set() -> impl Strategy<Value = FlagSet> {
        proptest::collection::btree_map("[a-z][a-z0-9_.-]{0,10}", flag(), 0..4)
            .prop_map(|flags| FlagSet { flags })
    }

    fn valid(set: &FlagSet) -> bool {
        set.flags.iter().all(|(name, d)| {
            !name.is_empty()
                && name.len() <= MAX_FLAG_NAME_LEN
                && !name.chars().any(|c| c.is_control() || c == '/')
                && d.rollout.as_ref().is_none_or(|r| r.percentage <= 100)
                && d.variants.contains_key(&d.on_variant)
                && d.variants.contains_key(&d.off_variant)
                && d.variants.contains_key(&d.default_variant)
        })
    }

    /// Names are checked like the store's: not empty, at most 128 bytes, no `/` or
    /// control character; served variants must exist.
    #[test]
    fn invalid_names_and_variants_are_refused() {
        for name in ["", "a/b", "tab\there", &"x".repeat(129)] {
            let text = format!(r#"{{"flags": {{"{name}": {{}}}}}}"#);
            assert!(json().parse(&text).is_err(), "{name:?}");
        }
        let text = format!(r#"{{"flags": {{"{}": {{}}}}}}"#, "x".repeat(128));
        assert!(json().parse(&text).is_ok());
        assert!(
            json()
                .parse(r#"{"flags": {"a": {"on_variant": "nope"}}}"#)
                .is_err()
        );
        assert!(
            toml()
                .parse("[flags.a]\ndefault_variant = \"nope\"\n")
                .is_err()
        );
        assert!(toml().parse("[flags.\"a/b\"]\n").is_err());
    }

    fn toml_string(s: &str) -> String {
        // A TOML basic string: JSON's escapes are a subset TOML reads the same way for
        // printable ASCII.
        serde_json::to_string(s).unwrap()
    }

    /// The set written by hand as TOML tables.
    fn to_toml(set: &FlagSet) -> String {
        let mut out = String::new();
        for (name, def) in &set.flags {
            let table = format!("flags.{}", toml_string(name));
            out.push_str(&format!("[{table}]\n"));
            out.push_str(&format!("enabled = {}\n", def.enabled));
            out.push_str(&format!(
                "description = {}\n",
                toml_string(&def.description)
            ));
            out.push_str(&format!("on_variant = {}\n", toml_string(&def.on_variant)));
            out.push_str(&format!(
                "off_variant = {}\n",
                toml_string(&def.off_variant)
            ));
            out.push_str(&format!(
                "default_variant = {}\n",
                toml_string(&def.default_variant)
            ));
            if let Some(r) = &def.rollout {
                out.push_str(&format!("rollout = {{ percentage = {} }}\n", r.percentage));
            }
            out.push_str(&format!("[{table}.variants]\n"));
            for (v, value) in &def.variants {
                let value = match value {
                    FlagValue::Bool(b) => b.to_string(),
                    FlagValue::String(s) => toml_string(s),
                };
                out.push_str(&format!("{} = {value}\n", toml_string(v)));
            }
        }
        out
    }

    /// Deep nesting is refused by the parsers' depth limits, not by a stack overflow.
    #[test]
    fn deeply_nested_flag_files_are_errors() {
        for depth in [64, 1_000, 100_000] {
            let json_text = format!(
                r#"{{"flags": {{"a": {{"description": {}{}}}}}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            assert!(json().parse(&json_text).is_err(), "json depth {depth}");
            let toml_text = format!("a = {}{}", "[".repeat(depth), "]".repeat(depth));
            assert!(
                toml().parse(&toml_text).is_err(),
                "toml array depth {depth}"
            );
            let toml_text = format!("a = {}{}", "{b = ".repeat(depth), "}".repeat(depth));
            assert!(
                toml().parse(&toml_text).is_err(),
                "toml table depth {depth}"
            );
        }
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn arbitrary_text_is_an_error_or_a_valid_set(text in "(?s).{0,200}") {
            for source in [json(), toml()] {
                if let Ok(set) = source.parse(&text) {
                    prop_assert!(valid(&set));
                }
            }
        }

        #[test]
        fn near_valid_json_never_panics(
            set in flag_set(),
            cut in any::<proptest::sample::Index>(),
            byte in proptest::sample::select(b"{}[]\",:0-9a/ \\".to_vec()),
        ) {
            let text = serde_json::to_string(&set).unwrap();
            let mut bytes = text.into_bytes();
            let i = cut.index(bytes.len());
            // Truncated at any point, or with one structural byte swapped in.
            let truncated = String::from_utf8_lossy(&bytes[..i]).into_owned();
            if let Ok(s) = json().parse(&truncated) {
                prop_assert!(valid(&s));
            }
            bytes[i] = byte;
            let changed = String::from_utf8_lossy(&bytes).into_owned();
            if let Ok(s) = json().parse(&changed) {
                prop_assert!(valid(&s));
            }
        }

        #[test]
        fn generated_sets_parse_back_or_are_refused(set in flag_set()) {
            let json_text = serde_json::to_string_pretty(&set).unwrap();
            let toml_text = to_toml(&set);
            for (source, text) in [(json(), &json_text), (toml(), &toml_text)] {
                let parsed = source.parse(text);
                if valid(&set) {
                    prop_assert_eq!(parsed.as_ref().ok(), Some(&set), "{}", text);
                } else {
                    let is_invalid = matches!(
                        parsed,
                        Err(tower_parapet::flags::FlagFileError::Invalid { .. })
                    );
                    prop_assert!(is_invalid, "{}", text);
                }
            }
            // An unknown field anywhere is refused, not ignored.
            if let Some((name, _)) = set.flags.iter().next() {
                let mut doc: serde_json::Value = serde_json::from_str(&json_text).unwrap();
                doc["flags"][name]["enabeld"] = serde_json::Value::Bool(true);
                prop_assert!(json().parse(&doc.to_string()).is_err());
            }
        }
    }
}
