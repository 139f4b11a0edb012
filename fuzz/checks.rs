//! The checks behind every fuzz target, one function per parser of untrusted input.
//!
//! Each takes the raw bytes a fuzzer (or a corpus file) supplies, feeds them to the parser
//! through the crate's public API, and panics only when a property is broken: a parser
//! that panics, or an answer outside its documented bounds.
//!
//! This one file is compiled twice: as the library of the `fuzz/` crate, which the
//! `cargo fuzz` targets call, and as a module of `tests/fuzz_corpus.rs`, which replays the
//! committed corpora under plain `cargo test` on a stable toolchain. So the harness is
//! written once and the replay needs no fuzzer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{BoxError, Layer, ServiceExt};
use tower_parapet::cache::CacheLayer;
use tower_parapet::flags::{FileFormat, FileSource, FlagSet, MAX_FLAG_NAME_LEN};
use tower_parapet::grpc::{Code, format_grpc_timeout, parse_grpc_timeout};
use tower_parapet::idempotency::IdempotencyKeyHeader;
use tower_parapet::key::{ClientIp, KeyError, KeyExtractor, PeerAddr};
use tower_parapet::retry::{
    Pushback, parse_grpc_pushback, parse_http_date, parse_ratelimit_reset, parse_retry_after,
};

/// A target's check: panics when a property is broken.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and `corpus/` folder.
pub const TARGETS: &[(&str, Check)] = &[
    ("grpc_timeout", grpc_timeout),
    ("client_ip", client_ip),
    ("idempotency_key", idempotency_key),
    ("cache_control", cache_control),
    ("retry_after", retry_after),
    ("flag_file", flag_file),
];

/// The last second of the year 9999: no HTTP-date is later.
const MAX_DATE: u64 = 253_402_300_799;

/// Header lines: the input split at `\n`, at most `max` of them; lines that are not valid
/// header values are dropped (`http` refuses them before any parser of ours sees them).
fn lines(data: &[u8], max: usize) -> Vec<HeaderValue> {
    data.split(|&b| b == b'\n')
        .take(max)
        .filter_map(|line| HeaderValue::from_bytes(line).ok())
        .collect()
}

/// `grpc-timeout` and `grpc-status`: the whole input is one header value.
pub fn grpc_timeout(data: &[u8]) {
    if let Ok(d) = parse_grpc_timeout(data) {
        // 1 to 8 digits and a unit: at most 99 999 999 hours.
        assert!((2..=9).contains(&data.len()), "{data:?}");
        assert!(d <= Duration::from_secs(99_999_999 * 3600), "{d:?}");
        // What was accepted formats back to itself (zero is written `1n`: never zero).
        let text = format_grpc_timeout(d);
        assert!(text.len() <= 9, "{text}");
        if !d.is_zero() {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), Ok(d), "{text}");
        }
    }
    if let Some(code) = Code::parse(data) {
        assert!((1..=2).contains(&data.len()));
        assert!(code.as_u8() <= 16);
    }
}

/// `X-Forwarded-For` or `Forwarded` behind trusted proxies. The first byte chooses the
/// header (bit 0), the hop limit (bits 1–5) and whether the peer is trusted (bit 6); the
/// rest is up to 8 header lines.
pub fn client_ip(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let forwarded = control & 1 == 1;
    let max_hops = usize::from((control >> 1) & 0x1f);
    let trusted_peer = control & 0x40 == 0;
    let peer = if trusted_peer {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9))
    };
    let header = if forwarded {
        "forwarded"
    } else {
        "x-forwarded-for"
    };
    let mut req = Request::new(());
    for v in lines(rest, 8) {
        req.headers_mut().append(header, v);
    }
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(peer, 443)));
    let key = ClientIp::trusting(["10.0.0.0/8", "fd00::/8"]).expect("valid proxies");
    let key = if forwarded { key.forwarded() } else { key }.max_hops(max_hops);
    // With a peer address there is always an answer.
    let ip = key
        .extract(&req)
        .expect("a peer address is always an answer");
    if !trusted_peer {
        // An untrusted peer's headers are ignored entirely.
        assert_eq!(ip, peer);
    } else if ip != peer {
        // A header can only name an address it contains: IPv4 verbatim (or IPv4-mapped),
        // IPv6 in some spelling, so with a colon at least.
        let text = String::from_utf8_lossy(rest).to_ascii_lowercase();
        match ip {
            IpAddr::V4(v4) => assert!(
                text.contains(&v4.to_string()) || text.contains("ffff"),
                "{ip} in {text:?}"
            ),
            IpAddr::V6(_) => assert!(text.contains(':'), "{ip} in {text:?}"),
        }
    }
}

/// `Idempotency-Key`: the first byte is the length limit, the rest up to 3 header lines.
pub fn idempotency_key(data: &[u8]) {
    let Some((&max_len, rest)) = data.split_first() else {
        return;
    };
    let max_len = usize::from(max_len);
    let mut req = Request::post("/pay").body(()).expect("a request");
    for v in lines(rest, 3) {
        req.headers_mut().append("idempotency-key", v);
    }
    let count = req.headers().get_all("idempotency-key").iter().count();
    match IdempotencyKeyHeader::default()
        .max_len(max_len)
        .extract(&req)
    {
        Ok(k) => {
            assert_eq!(count, 1, "one header line, or no key");
            assert!(!k.is_empty() && k.len() <= max_len, "{k:?}");
            assert!(k.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{k:?}");
            // The key written back as a structured-field string reads as itself.
            let mut quoted = String::from("\"");
            for c in k.chars() {
                if c == '"' || c == '\\' {
                    quoted.push('\\');
                }
                quoted.push(c);
            }
            quoted.push('"');
            let mut again = Request::post("/pay").body(()).expect("a request");
            again.headers_mut().insert(
                "idempotency-key",
                HeaderValue::from_str(&quoted).expect("printable ASCII"),
            );
            let back = IdempotencyKeyHeader::default()
                .max_len(max_len)
                .extract(&again);
            assert_eq!(back.as_ref(), Ok(&k), "{quoted}");
        }
        Err(KeyError::Missing) => assert_eq!(count, 0),
        Err(KeyError::TooLong { len, max }) => assert!(max == max_len && len > max_len),
        Err(_) => {}
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
}

/// `Cache-Control` as the cache layer reads it: up to 3 header lines on an origin's
/// answer, then two identical GETs. The origin is called once (stored) or twice (not).
pub fn cache_control(data: &[u8]) {
    let values = lines(data, 3);
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let origin = tower::service_fn(move |_: Request<Full<Bytes>>| {
        seen.fetch_add(1, Ordering::SeqCst);
        let mut res = Response::new(Full::new(Bytes::from_static(b"body")));
        for v in &values {
            res.headers_mut().append("cache-control", v.clone());
        }
        async move { Ok::<_, BoxError>(res) }
    });
    let svc = CacheLayer::builder()
        .build()
        .expect("a cache")
        .layer(origin);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            for _ in 0..2 {
                let req = Request::get("/item")
                    .body(Full::default())
                    .expect("a request");
                let res = svc.clone().oneshot(req).await.expect("an answer");
                assert_eq!(res.status(), 200);
            }
        })
    });
    let calls = calls.load(Ordering::SeqCst);
    assert!((1..=2).contains(&calls), "{calls} origin calls");
}

/// `Retry-After` (seconds or HTTP-date), HTTP-date alone, `RateLimit` reset and
/// `grpc-retry-pushback-ms`. The first 8 bytes (big-endian) are "now", the rest the value.
pub fn retry_after(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (now, value) = data.split_at(8);
    let now = u64::from_be_bytes(now.try_into().expect("8 bytes")) % (MAX_DATE + 1);
    let now = UNIX_EPOCH + Duration::from_secs(now);

    if let Some(at) = parse_http_date(value) {
        let secs = at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        assert!(secs <= MAX_DATE, "{secs}");
        // "Wednesday, 06-Nov-94 08:49:37 GMT" is the longest form.
        assert!(value.len() <= 33, "{} bytes", value.len());
    }
    let date = parse_http_date(value);
    if let Some(at) = date {
        // A date means "wait until then": never negative, exactly the difference.
        let expected = at.duration_since(now).unwrap_or(Duration::ZERO);
        assert_eq!(parse_retry_after(value, now), Some(expected));
    }
    if let Some(wait) = parse_retry_after(value, now) {
        let trimmed = value.trim_ascii();
        if trimmed.iter().all(u8::is_ascii_digit) {
            let n = trimmed.iter().fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            });
            assert_eq!(wait.as_secs(), n);
        } else {
            assert!(wait.as_secs() <= MAX_DATE, "{wait:?}");
        }
    }
    if parse_ratelimit_reset(value).is_some() {
        assert!(value.len() <= 256, "{} bytes", value.len());
        assert!(String::from_utf8_lossy(value).contains("t="));
    }
    if let Pushback::After(_) = parse_grpc_pushback(value) {
        assert!(value.trim_ascii().iter().all(u8::is_ascii_digit));
    }
}

/// A flag file, read as JSON and as TOML: an error or a set whose every flag is valid.
pub fn flag_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [FileFormat::Json, FileFormat::Toml] {
        let source = FileSource::new("fuzz").format(format);
        if let Ok(set) = source.parse(text) {
            assert_valid(&set, text.len());
            // What was accepted, written out as JSON, reads back the same.
            let json = serde_json::to_string(&set).expect("a set serialises");
            let back = FileSource::new("fuzz.json")
                .format(FileFormat::Json)
                .parse(&json);
            assert_eq!(back.as_ref().ok(), Some(&set), "{json}");
        }
    }
}

fn assert_valid(set: &FlagSet, input_len: usize) {
    // Every flag costs at least its name and some punctuation.
    assert!(set.flags.len() <= input_len, "{} flags", set.flags.len());
    for (name, def) in &set.flags {
        assert!(
            !name.is_empty() && name.len() <= MAX_FLAG_NAME_LEN,
            "{name:?}"
        );
        assert!(
            !name.chars().any(|c| c.is_control() || c == '/'),
            "{name:?}"
        );
        assert!(def.rollout.as_ref().is_none_or(|r| r.percentage <= 100));
        for variant in [&def.on_variant, &def.off_variant, &def.default_variant] {
            assert!(def.variants.contains_key(variant), "{variant:?}");
        }
    }
}
