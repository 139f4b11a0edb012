//! The rate limiter, black-box: paused time, quotas, keys behind proxies, bounded memory,
//! HTTP and gRPC answers through axum, failures, and a property test of the rate bound.
#![cfg(feature = "http")]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_parapet::http::RejectionResponseLayer;
use tower_parapet::key::{self, ClientIp, Header, KeyError, KeyExtractor, PeerAddr, PeerIp};
use tower_parapet::observe::Event;
use tower_parapet::rate_limit::{
    MissingKey, Quota, RateLimitConfig, RateLimitHeaders, RateLimitLayer,
};
use tower_parapet::{BoxError, Mode, ModeHandle, RateLimitInfo, Rejection};

type Echo = tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, Infallible>>>;

fn echo() -> Echo {
    service_fn(|n: u32| std::future::ready(Ok(n)))
}

/// Call once; `Ok(n)`, or the rate limit rejection.
async fn call<S>(svc: &mut S, n: u32) -> Result<u32, Rejection>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    match svc.ready().await.unwrap().call(n).await {
        Ok(n) => Ok(n),
        Err(e) => Err(Rejection::from_box(&e).expect("a rejection").clone()),
    }
}

fn wait_of(r: &Rejection) -> Duration {
    match r {
        Rejection::RateLimited { retry_after, .. } => *retry_after,
        other => panic!("not a rate limit: {other:?}"),
    }
}

fn info_of(r: &Rejection) -> &RateLimitInfo {
    match r {
        Rejection::RateLimited {
            policy: Some(p), ..
        } => p,
        other => panic!("no policy: {other:?}"),
    }
}

/// Every event's `layer:outcome class policy`.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    fn observer(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = self.0.clone();
        move |e: &Event<'_>| {
            let line = match *e {
                Event::RateLimited {
                    class, policy, key, ..
                } => format!(
                    "{} {class} {policy} key={:?}",
                    e.outcome(),
                    key.map(|k| format!("{k:?}"))
                ),
                Event::RateLimitDelayed { class, waited, .. } => {
                    format!("{} {class} {}ms", e.outcome(), waited.as_millis())
                }
                Event::RateLimitKeyEvicted { class, .. } => format!("{} {class}", e.outcome()),
                _ => e.outcome().to_owned(),
            };
            log.lock().unwrap().push(line);
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

// ---------------------------------------------------------------- quotas on paused time

#[tokio::test(start_paused = true)]
async fn a_burst_is_admitted_then_exactly_one_per_interval() {
    let mut svc = RateLimitLayer::new(Quota::per_second(10).burst(5)).layer(echo());
    for n in 0..5 {
        assert_eq!(call(&mut svc, n).await, Ok(n), "the burst");
    }
    let refused = call(&mut svc, 5).await.unwrap_err();
    assert_eq!(wait_of(&refused), Duration::from_millis(100));
    // Over the next second, in 1 ms steps, hammering: exactly one every 100 ms.
    let start = Instant::now();
    let mut admitted = Vec::new();
    for _ in 0..1_000 {
        advance(Duration::from_millis(1)).await;
        if call(&mut svc, 0).await.is_ok() {
            admitted.push(start.elapsed().as_millis());
        }
        // A second request at the same instant is always refused.
        assert!(call(&mut svc, 0).await.is_err());
    }
    assert_eq!(
        admitted,
        [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_the_real_wait_and_rounds_up_over_http() {
    let mut svc = RateLimitLayer::new(Quota::per_minute(2).named("per-minute")).layer(echo());
    call(&mut svc, 1).await.unwrap();
    call(&mut svc, 2).await.unwrap();
    advance(Duration::from_millis(2_500)).await;
    let refused = call(&mut svc, 3).await.unwrap_err();
    assert_eq!(wait_of(&refused), Duration::from_millis(27_500));
    let info = info_of(&refused);
    assert_eq!(&*info.policy, "per-minute");
    assert_eq!((info.quota, info.window), (2, Duration::from_secs(60)));
    assert_eq!(
        (info.remaining, info.reset),
        (0, Duration::from_millis(27_500))
    );

    let res = refused.to_http_response();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "28", "27.5 s rounded up");
    assert_eq!(
        res.headers()["ratelimit-policy"],
        r#""per-minute";q=2;w=60"#
    );
    assert_eq!(res.headers()["ratelimit"], r#""per-minute";r=0;t=28"#);

    // Admitted exactly at the wait, not a nanosecond before.
    advance(Duration::from_millis(27_499)).await;
    assert!(call(&mut svc, 4).await.is_err());
    advance(Duration::from_millis(1)).await;
    assert_eq!(call(&mut svc, 5).await, Ok(5));
}

#[tokio::test(start_paused = true)]
async fn a_sub_second_wait_is_retry_after_one_never_zero() {
    let mut svc = RateLimitLayer::new(Quota::per_second(1000).burst(1)).layer(echo());
    call(&mut svc, 1).await.unwrap();
    let refused = call(&mut svc, 2).await.unwrap_err();
    assert_eq!(wait_of(&refused), Duration::from_millis(1));
    assert_eq!(refused.to_http_response().headers()["retry-after"], "1");
}

#[tokio::test(start_paused = true)]
async fn every_quota_must_admit_and_a_refusal_costs_nothing() {
    let journal = Journal::default();
    let mut svc = RateLimitLayer::new(Quota::per_second(2).named("second"))
        .quota(Quota::per_hour(5).named("hour"))
        .observer(journal.observer())
        .layer(echo());
    let mut refused_by = Vec::new();
    // Five seconds of hammering: 100 requests a second.
    for _ in 0..5 {
        for _ in 0..100 {
            if let Err(r) = call(&mut svc, 0).await {
                refused_by.push(info_of(&r).policy.to_string());
            }
        }
        advance(Duration::from_secs(1)).await;
    }
    let admitted = 500 - refused_by.len();
    assert_eq!(admitted, 5, "the hourly quota; refusals did not burn it");
    // 2 + 2 in the first two seconds (per-second limit), then the hour's last one.
    let by_second = refused_by.iter().filter(|p| *p == "second").count();
    let by_hour = refused_by.iter().filter(|p| *p == "hour").count();
    assert_eq!(by_second + by_hour, 495);
    assert!(by_hour > 0 && by_second > 0);
    let events = journal.take();
    assert_eq!(events.len(), 495, "one event per refusal");
    assert!(
        events[0].starts_with("rate_limited global second"),
        "{}",
        events[0]
    );
    // The hourly quota refuses with its own wait: it refills one request every 720 s,
    // counted from its first admission at 0 s; it is now 5 s.
    let r = call(&mut svc, 0).await.unwrap_err();
    assert_eq!(&*info_of(&r).policy, "hour");
    assert_eq!(wait_of(&r), Duration::from_secs(715));
}

#[tokio::test(start_paused = true)]
async fn weight_comes_from_a_closure() {
    let mut svc = RateLimitLayer::new(Quota::per_second(10))
        .weight(|n: &u32| *n)
        .layer(echo());
    assert_eq!(call(&mut svc, 6).await, Ok(6));
    assert_eq!(call(&mut svc, 4).await, Ok(4));
    let r = call(&mut svc, 3).await.unwrap_err();
    assert_eq!(
        wait_of(&r),
        Duration::from_millis(300),
        "three requests' worth"
    );
    assert_eq!(call(&mut svc, 0).await, Ok(0), "weight 0 is free");
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        call(&mut svc, 50).await,
        Ok(50),
        "heavier than the burst: all of it"
    );
    assert!(call(&mut svc, 1).await.is_err());
}

// ---------------------------------------------------------------- waiting, modes

#[tokio::test(start_paused = true)]
async fn waiting_holds_a_request_until_its_quota_admits_it() {
    let journal = Journal::default();
    let mut svc = RateLimitLayer::new(Quota::per_second(10).burst(1))
        .max_wait(Duration::from_millis(250))
        .observer(journal.observer())
        .layer(echo());
    call(&mut svc, 0).await.unwrap();
    let start = Instant::now();
    assert_eq!(call(&mut svc, 1).await, Ok(1));
    assert_eq!(start.elapsed(), Duration::from_millis(100), "a tokio timer");
    assert_eq!(journal.take(), ["rate_limit_delayed global 100ms"]);

    // Three at once: one is admitted after 100 ms, one after 200 ms; the last would need
    // 300 ms in all and is refused when that becomes clear, at 200 ms. (Waiting reserves
    // nothing, so which one wins each turn is not first come, first served.)
    let start = Instant::now();
    let (a, b, c) = tokio::join!(
        svc.clone().oneshot(2),
        svc.clone().oneshot(3),
        svc.clone().oneshot(4)
    );
    let results = [a, b, c];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(
            Rejection::from_box(err).unwrap().kind(),
            tower_parapet::RejectionKind::RateLimited
        );
    }
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiting_request_holds_nothing() {
    let mut svc = RateLimitLayer::new(Quota::per_second(10).burst(1))
        .max_wait(Duration::from_secs(1))
        .layer(echo());
    call(&mut svc, 0).await.unwrap();
    let fut = svc.ready().await.unwrap().call(1);
    drop(fut);
    advance(Duration::from_millis(100)).await;
    assert_eq!(
        call(&mut svc, 2).await,
        Ok(2),
        "the dropped wait took nothing"
    );
    // An admitted request whose future is dropped was counted (it was admitted).
    let fut = svc.ready().await.unwrap().call(3);
    drop(fut);
    advance(Duration::from_millis(100)).await;
    let start = Instant::now();
    assert_eq!(call(&mut svc, 4).await, Ok(4));
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_reports_and_lets_through_and_off_counts_nothing() {
    let journal = Journal::default();
    let mode = ModeHandle::new(Mode::Shadow);
    let mut svc = RateLimitLayer::new(Quota::per_second(1))
        .mode(mode.clone())
        .max_wait(Duration::from_secs(5))
        .observer(journal.observer())
        .layer(echo());
    let start = Instant::now();
    for n in 0..3 {
        assert_eq!(call(&mut svc, n).await, Ok(n));
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "shadow never waits");
    assert_eq!(
        journal.take(),
        [
            "would_have_rate_limited global 1_per_1s key=None",
            "would_have_rate_limited global 1_per_1s key=None"
        ]
    );
    mode.set(Mode::Off);
    for n in 0..10 {
        assert_eq!(call(&mut svc, n).await, Ok(n));
    }
    assert!(journal.take().is_empty());
    mode.set(Mode::Enforce);
    advance(Duration::from_secs(1)).await;
    assert_eq!(call(&mut svc, 1).await, Ok(1), "off counted nothing");
}

// ---------------------------------------------------------------- failures

#[tokio::test]
async fn inner_errors_pass_through_untouched() {
    #[derive(Debug, thiserror::Error)]
    #[error("db down")]
    struct DbDown;
    let mut svc = RateLimitLayer::new(Quota::per_second(10))
        .layer(service_fn(|_: u32| async { Err::<u32, _>(DbDown) }));
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.downcast_ref::<DbDown>().is_some());
    assert!(Rejection::from_box(&err).is_none());
}

#[tokio::test]
async fn a_rejection_is_ready_at_once() {
    let mut svc = RateLimitLayer::new(Quota::per_hour(1)).layer(echo());
    call(&mut svc, 1).await.unwrap();
    let fut = svc.ready().await.unwrap().call(2);
    let out = fut.now_or_never().expect("never pending");
    assert!(out.is_err());
}

#[test]
fn bad_config_names_the_field() {
    let c: RateLimitConfig =
        serde_json::from_str(r#"{ "quotas": [{ "count": 10, "per": "0s" }] }"#).unwrap();
    assert_eq!(c.build().unwrap_err().field(), "quotas.per");
    let c: RateLimitConfig = serde_json::from_str(
        r#"{ "quotas": [{ "count": 10, "per": "1s" }],
             "key": { "by": "client_ip", "trusted_proxies": ["10.0.0.0/33"] } }"#,
    )
    .unwrap();
    let err = c.build().unwrap_err();
    assert_eq!(err.field(), "key.trusted_proxies");
    assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
}

// ---------------------------------------------------------------- keys

fn from(peer: [u8; 4]) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::from((peer, 40_000))));
    req
}

fn with(mut req: Request<()>, name: &str, value: &[u8]) -> Request<()> {
    req.headers_mut().append(
        axum::http::HeaderName::try_from(name).unwrap(),
        axum::http::HeaderValue::from_bytes(value).unwrap(),
    );
    req
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn proxies() -> ClientIp {
    ClientIp::trusting(["10.0.0.0/8", "192.168.1.0/24"]).unwrap()
}

#[test]
fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let req = with(from([203, 0, 113, 9]), "x-forwarded-for", b"1.1.1.1");
    assert_eq!(proxies().extract(&req), Ok(ip("203.0.113.9")));
    let req = with(from([203, 0, 113, 9]), "forwarded", b"for=1.1.1.1");
    assert_eq!(proxies().forwarded().extract(&req), Ok(ip("203.0.113.9")));
}

#[test]
fn a_chain_through_two_trusted_proxies_yields_the_real_client() {
    // client 198.51.100.7 -> 192.168.1.5 (edge) -> 10.0.0.3 (ingress) -> us; the client
    // claimed to be 1.1.1.1.
    let req = with(
        from([10, 0, 0, 3]),
        "x-forwarded-for",
        b"1.1.1.1, 198.51.100.7, 192.168.1.5",
    );
    assert_eq!(proxies().extract(&req), Ok(ip("198.51.100.7")));
    // The same as two header lines.
    let req = with(
        with(
            from([10, 0, 0, 3]),
            "x-forwarded-for",
            b"1.1.1.1, 198.51.100.7",
        ),
        "x-forwarded-for",
        b"192.168.1.5",
    );
    assert_eq!(proxies().extract(&req), Ok(ip("198.51.100.7")));
    // RFC 7239, with an IPv6 client, ports, quotes and a comma inside a quoted string.
    let req = with(
        from([10, 0, 0, 3]),
        "forwarded",
        br#"for=1.1.1.1, for="[2001:db8:cafe::17]:4711";proto=https;by="x,y", for=192.168.1.5:80"#,
    );
    assert_eq!(
        proxies().forwarded().extract(&req),
        Ok(ip("2001:db8:cafe::17"))
    );
    // With /64 grouping.
    assert_eq!(
        proxies().forwarded().ipv6_prefix(64).extract(&req),
        Ok(ip("2001:db8:cafe::"))
    );
    // Every hop trusted: the leftmost.
    let req = with(
        from([10, 0, 0, 3]),
        "x-forwarded-for",
        b"10.9.9.9, 10.0.0.4",
    );
    assert_eq!(proxies().extract(&req), Ok(ip("10.9.9.9")));
    // No header from a trusted peer: the peer.
    assert_eq!(proxies().extract(&from([10, 0, 0, 3])), Ok(ip("10.0.0.3")));
}

#[test]
fn malformed_forwarding_headers_fall_back_to_the_peer_and_never_panic() {
    let peer = ip("10.0.0.3");
    let xff: [&[u8]; 12] = [
        b"",
        b",",
        b"unknown",
        b"1.1.1.1, unknown",
        b"1.1.1.1,,10.0.0.4",
        b"999.1.1.1",
        b"1.1.1.1:99999",
        b"[::1",
        b"\xff\xfe\xfd",
        b"1.1.1.1 2.2.2.2",
        b"_hidden",
        b"\"1.1.1.1\"",
    ];
    for value in xff {
        let req = with(from([10, 0, 0, 3]), "x-forwarded-for", value);
        assert_eq!(
            proxies().extract(&req),
            Ok(peer),
            "{:?}",
            String::from_utf8_lossy(value)
        );
    }
    let forwarded: [&[u8]; 11] = [
        b"",
        b"for",
        b"for=",
        b"proto=https",
        b"for=\"1.1.1.1",
        b"for=1.1.1.1;for=2.2.2.2",
        b"for=unknown",
        b"for=_obfuscated",
        b"for=\"[2001:db8::1\"",
        b"for=\"\\\"1.1.1.1\"",
        b"for=1.1.1.1, for=\"a,b\"",
    ];
    for value in forwarded {
        let req = with(from([10, 0, 0, 3]), "forwarded", value);
        assert_eq!(
            proxies().forwarded().extract(&req),
            Ok(peer),
            "{:?}",
            String::from_utf8_lossy(value)
        );
    }
    // A chain longer than the hop limit, all trusted.
    let long = vec!["10.0.0.1"; 40].join(",");
    let req = with(from([10, 0, 0, 3]), "x-forwarded-for", long.as_bytes());
    assert_eq!(proxies().extract(&req), Ok(peer));
    // Arbitrary bytes never panic.
    const ALPHABET: &[u8] = b"0123456789.:,;=\"[]\\ forunkw_abcdef";
    let mut seed = 7u64;
    for _ in 0..2_000 {
        let len = (seed % 40) as usize;
        let value: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ALPHABET[(seed >> 33) as usize % ALPHABET.len()]
            })
            .collect();
        if let Ok(v) = axum::http::HeaderValue::from_bytes(&value) {
            let mut req = from([10, 0, 0, 3]);
            req.headers_mut().insert("x-forwarded-for", v.clone());
            req.headers_mut().insert("forwarded", v);
            assert!(proxies().extract(&req).is_ok());
            assert!(proxies().forwarded().extract(&req).is_ok());
        }
    }
    // No peer address at all.
    assert_eq!(proxies().extract(&Request::new(())), Err(KeyError::Missing));
}

#[test]
fn peer_ip_reads_a_plain_socket_addr_and_unwraps_mapped_addresses() {
    let mut req = Request::new(());
    req.extensions_mut().insert(SocketAddr::from((
        [0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001],
        1,
    )));
    assert_eq!(PeerIp::new().extract(&req), Ok(ip("10.0.0.1")));
    assert_eq!(KeyExtractor::<Request<()>>::class(&PeerIp::new()), "ip");
}

/// A service keyed by client IP that answers with nothing.
fn keyed_http(
    layer: RateLimitLayer<ClientIp>,
) -> impl Service<Request<()>, Response = (), Error = BoxError> + Clone {
    layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(())
    }))
}

#[tokio::test(start_paused = true)]
async fn one_client_flooding_does_not_touch_the_others() {
    let journal = Journal::default();
    let layer = RateLimitLayer::keyed(proxies(), Quota::per_second(5)).observer(journal.observer());
    let mut svc = keyed_http(layer);
    let client = |c: &str| with(from([10, 0, 0, 3]), "x-forwarded-for", c.as_bytes());
    let mut flood_ok = 0;
    for _ in 0..100 {
        if svc
            .ready()
            .await
            .unwrap()
            .call(client("198.51.100.66"))
            .await
            .is_ok()
        {
            flood_ok += 1;
        }
    }
    assert_eq!(flood_ok, 5);
    for other in ["198.51.100.1", "198.51.100.2", "2001:db8::1"] {
        for _ in 0..5 {
            assert!(svc.ready().await.unwrap().call(client(other)).await.is_ok());
        }
    }
    let events = journal.take();
    assert_eq!(events.len(), 95);
    assert_eq!(
        events[0],
        "rate_limited ip 5_per_1s key=Some(\"198.51.100.66\")"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_share_one_quota_or_pass() {
    let ok = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(()) });
    let mut shared = RateLimitLayer::keyed(
        Header::new("x-api-key".parse().unwrap()),
        Quota::per_second(2),
    )
    .layer(ok);
    let results: Vec<bool> =
        futures_util::future::join_all((0..4).map(|_| shared.clone().oneshot(Request::new(()))))
            .await
            .into_iter()
            .map(|r| r.is_ok())
            .collect();
    assert_eq!(results, [true, true, false, false]);
    let keyed = with(Request::new(()), "x-api-key", b"team-a");
    assert!(shared.ready().await.unwrap().call(keyed).await.is_ok());

    let mut open = RateLimitLayer::keyed(
        Header::new("x-api-key".parse().unwrap()),
        Quota::per_second(2),
    )
    .missing_key(MissingKey::Allow)
    .layer(ok);
    for _ in 0..10 {
        assert!(
            open.ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .is_ok()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_million_addresses_stay_under_the_bound_and_go_away_when_idle() {
    let layer = RateLimitLayer::keyed(PeerIp::new(), Quota::per_second(10)).max_keys(10_000);
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(())
    }));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for i in 0..1_000_000u32 {
        let mut req = Request::new(());
        req.extensions_mut().insert(SocketAddr::from((
            i.wrapping_add(0x0b00_0000).to_be_bytes(),
            1,
        )));
        assert!(svc.poll_ready(&mut cx).is_ready());
        assert!(svc.call(req).now_or_never().unwrap().is_ok());
        if i % 50_000 == 0 {
            assert!(handle.live_keys() <= 10_000, "{}", handle.live_keys());
        }
    }
    let capacity = handle.key_capacity();
    assert!((9_000..=10_000).contains(&capacity), "{capacity}");
    assert_eq!(handle.live_keys(), capacity);
    assert!(handle.evicted_keys() >= 990_000);

    // The flood stops; a trickle of one known client goes on. One refill time (1 s) after
    // the flood, the keys are swept without anyone calling anything else.
    let req = || {
        let mut r = Request::new(());
        r.extensions_mut()
            .insert(SocketAddr::from(([192, 0, 2, 1], 1)));
        r
    };
    for _ in 0..20 {
        advance(Duration::from_millis(150)).await;
        assert!(svc.ready().await.unwrap().call(req()).await.is_ok());
    }
    assert!(handle.live_keys() <= 1, "{} keys left", handle.live_keys());
}

// ---------------------------------------------------------------- HTTP, axum, gRPC

fn app(layer: RateLimitLayer<PeerIp, tower_parapet::rate_limit::One, RateLimitHeaders>) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/other", get(|| async { "other" }))
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(layer),
        )
}

fn get_from(path: &str, peer: [u8; 4]) -> Request<Body> {
    let mut req = Request::get(path).body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::from((peer, 1234))));
    req
}

#[tokio::test(start_paused = true)]
async fn axum_answers_429_with_retry_after_and_ratelimit_fields() {
    let layer = RateLimitLayer::keyed(PeerIp::new(), Quota::per_minute(2).named("api"))
        .on_admitted(RateLimitHeaders::new());
    let app = app(layer);
    let ok = app
        .clone()
        .oneshot(get_from("/", [198, 51, 100, 1]))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["ratelimit-policy"], r#""api";q=2;w=60"#);
    assert_eq!(ok.headers()["ratelimit"], r#""api";r=1;t=30"#);
    // The quota is shared across routes and across the router's clones.
    let ok = app
        .clone()
        .oneshot(get_from("/other", [198, 51, 100, 1]))
        .await
        .unwrap();
    assert_eq!(ok.headers()["ratelimit"], r#""api";r=0;t=60"#);
    advance(Duration::from_secs(10)).await;
    let res = app
        .clone()
        .oneshot(get_from("/", [198, 51, 100, 1]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "20");
    assert_eq!(res.headers()["ratelimit"], r#""api";r=0;t=20"#);
    assert_eq!(res.headers()["ratelimit-policy"], r#""api";q=2;w=60"#);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["status"], 429);
    assert_eq!(doc["kind"], "rate_limited");
    // Another client is untouched.
    let other = app
        .clone()
        .oneshot(get_from("/", [198, 51, 100, 2]))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn grpc_requests_get_resource_exhausted_not_429() {
    let layer = RateLimitLayer::keyed(PeerIp::new(), Quota::per_second(1))
        .on_admitted(RateLimitHeaders::enabled(false));
    let app = app(layer);
    let grpc = || {
        let mut req = get_from("/", [198, 51, 100, 1]);
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        req
    };
    let ok = app.clone().oneshot(grpc()).await.unwrap();
    assert!(
        ok.headers().get("ratelimit").is_none(),
        "fields switched off"
    );
    let res = app.oneshot(grpc()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "1000");
}

#[tokio::test(start_paused = true)]
async fn a_configured_layer_limits_by_client_ip() {
    let config: RateLimitConfig = serde_json::from_str(
        r#"{ "quotas": [{ "count": 1, "per": "1m", "name": "slow" }],
             "key": { "by": "client_ip", "trusted_proxies": ["10.0.0.0/8"] },
             "headers_on_admitted": true }"#,
    )
    .unwrap();
    let svc = config
        .build()
        .unwrap()
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(axum::http::Response::new(()))
        }));
    let req = |client: &str| with(from([10, 1, 1, 1]), "x-forwarded-for", client.as_bytes());
    let res = svc.clone().oneshot(req("198.51.100.1")).await.unwrap();
    assert_eq!(res.headers()["ratelimit"], r#""slow";r=0;t=60"#);
    let err = svc.clone().oneshot(req("198.51.100.1")).await.unwrap_err();
    assert_eq!(&*info_of(Rejection::from_box(&err).unwrap()).policy, "slow");
    assert!(svc.clone().oneshot(req("198.51.100.2")).await.is_ok());
}

#[test]
fn keys_compose_and_carry_a_class() {
    let pair = (PeerIp::new(), key::Target::new());
    let req = from([198, 51, 100, 1]);
    assert_eq!(pair.extract(&req).unwrap().0, ip("198.51.100.1"));
    assert_eq!(KeyExtractor::<Request<()>>::class(&pair), "composite");
}

// ---------------------------------------------------------------- the rate bound

mod property {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Over any arrival schedule, no span of one period admits more than
        /// `count + burst` requests.
        #[test]
        fn no_period_admits_more_than_count_plus_burst(
            count in 1u32..20,
            burst in 1u32..20,
            period_ms in 50u64..2_000,
            gaps in proptest::collection::vec(0u64..400, 1..300),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let period = Duration::from_millis(period_ms);
            let admitted: Vec<Duration> = rt.block_on(async {
                let mut svc = RateLimitLayer::new(Quota::new(count, period).burst(burst))
                    .observer(())
                    .layer(echo());
                let start = Instant::now();
                let mut admitted = Vec::new();
                for gap in gaps {
                    // Gaps of 0 are simultaneous arrivals.
                    advance(Duration::from_millis(gap) / 4).await;
                    if call(&mut svc, 0).await.is_ok() {
                        admitted.push(start.elapsed());
                    }
                }
                admitted
            });
            for (i, &s) in admitted.iter().enumerate() {
                let within = admitted[i..].iter().take_while(|&&t| t <= s + period).count();
                prop_assert!(
                    within <= (count + burst) as usize,
                    "{within} admitted in [{s:?}, {:?}]", s + period
                );
            }
        }
    }
}

// ---------------------------------------------------------------- shared state

#[test]
fn two_threads_share_one_quota_exactly() {
    // 1 request's worth is replenished every 36 s: none during the test.
    let unkeyed = RateLimitLayer::new(Quota::per_hour(100)).observer(());
    let keyed = RateLimitLayer::keyed(
        key::from_fn(|_: &u32| Ok::<_, KeyError>("one key")),
        Quota::per_hour(100),
    )
    .observer(());
    let services = [
        tower::util::BoxCloneSyncService::new(unkeyed.layer(echo())),
        tower::util::BoxCloneSyncService::new(keyed.layer(echo())),
    ];
    for layer in services {
        let admitted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                let mut svc = layer.clone();
                let admitted = &admitted;
                scope.spawn(move || {
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    for n in 0..5_000 {
                        assert!(svc.poll_ready(&mut cx).is_ready());
                        if let Some(Ok(_)) = svc.call(n).now_or_never() {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 100);
    }
}

#[tokio::test(start_paused = true)]
async fn the_handle_forgets_a_key_and_resets_everything() {
    let layer = RateLimitLayer::keyed(
        key::from_fn(|n: &u32| Ok::<_, KeyError>(*n % 2)),
        Quota::per_hour(1),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(echo());
    assert_eq!(call(&mut svc, 2).await, Ok(2));
    assert_eq!(call(&mut svc, 3).await, Ok(3));
    assert!(call(&mut svc, 4).await.is_err());
    assert_eq!(handle.live_keys(), 2);
    assert!(handle.forget(&0u32));
    assert!(!handle.forget(&"not the key type"));
    assert_eq!(call(&mut svc, 4).await, Ok(4), "key 0 starts afresh");
    assert!(call(&mut svc, 5).await.is_err(), "key 1 does not");
    handle.reset();
    assert_eq!(handle.live_keys(), 0);
    assert_eq!(call(&mut svc, 5).await, Ok(5));
    assert!(format!("{handle:?}").contains("live_keys"));
}

#[tokio::test(start_paused = true)]
async fn a_full_limiter_reports_the_keys_it_evicts() {
    let journal = Journal::default();
    let mut svc = RateLimitLayer::keyed(
        key::from_fn(|n: &u32| Ok::<_, KeyError>(*n)),
        Quota::per_hour(1),
    )
    .max_keys(16)
    .key_class("user")
    .observer(journal.observer())
    .layer(echo());
    for n in 0..40 {
        assert_eq!(call(&mut svc, n).await, Ok(n));
    }
    let events = journal.take();
    assert_eq!(events.len(), 24);
    assert!(events.iter().all(|e| e == "rate_limit_key_evicted user"));
}
