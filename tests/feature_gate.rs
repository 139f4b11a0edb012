//! The feature gate and its flags: kill switch under traffic, rollouts, sources, admin.
#![cfg(all(feature = "http", feature = "flag-files"))]

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_parapet::flags::{
    Clause, EvalContext, FeatureGateConfig, FeatureGateLayer, FileSource, FlagDef, FlagError,
    FlagStore, FlagValue, Op, Reason, Rule, bucket, murmur3_x86_32,
};
use tower_parapet::observe::Event;
use tower_parapet::{BoxError, Mode, ModeHandle, Rejection, RejectionKind};

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    fn observer(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = self.0.clone();
        move |e: &Event<'_>| {
            let extra = match *e {
                Event::FlagChanged {
                    flag, change, by, ..
                } => format!(" {flag} {change} by {by}"),
                Event::FeatureGated { flag, reason, .. } => format!(" {flag} {reason}"),
                Event::FlagEvaluationFailed { flag, error, .. } => format!(" {flag} {error}"),
                Event::ModeChanged { from, to, .. } => format!(" {from}->{to}"),
                Event::AdminChanged {
                    target, action, by, ..
                } => format!(" {target} {action} by {by}"),
                _ => String::new(),
            };
            log.lock()
                .unwrap()
                .push(format!("{}:{}{extra}", e.layer(), e.outcome()));
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn feature() -> impl Service<
    &'static str,
    Response = &'static str,
    Error = Infallible,
    Future = std::future::Ready<Result<&'static str, Infallible>>,
> + Clone {
    service_fn(|_: &'static str| std::future::ready(Ok::<_, Infallible>("new")))
}

fn kind(err: &BoxError) -> Option<RejectionKind> {
    Rejection::from_box(err).map(Rejection::kind)
}

/// Requests flow from four tasks on a multi-thread runtime while the flag is killed.
/// Each request records, before it starts, whether `kill()` had already returned; no such
/// request may reach the feature. The run also checks that traffic reached the feature
/// before the flip and was refused after it, so the test cannot pass vacuously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_under_traffic_stops_every_later_request() {
    let flags = FlagStore::with_observer("flags", ());
    flags.set("checkout", FlagDef::boolean(true)).unwrap();
    let flipped = Arc::new(AtomicBool::new(false));
    let late_reached = Arc::new(AtomicU64::new(0));
    let early_reached = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let (late, early) = (late_reached.clone(), early_reached.clone());
    let inner = service_fn(move |started_after_flip: bool| {
        if started_after_flip {
            late.fetch_add(1, Ordering::SeqCst);
        } else {
            early.fetch_add(1, Ordering::SeqCst);
        }
        std::future::ready(Ok::<_, Infallible>(()))
    });
    let svc = FeatureGateLayer::new(&flags, "checkout")
        .observer(())
        .layer(inner);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (mut svc, flipped, refused, stop) =
            (svc.clone(), flipped.clone(), refused.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let after = flipped.load(Ordering::SeqCst);
                match svc.ready().await.unwrap().call(after).await {
                    Ok(()) => {}
                    Err(e) => {
                        assert_eq!(kind(&e), Some(RejectionKind::FeatureDisabled));
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    while early_reached.load(Ordering::SeqCst) < 1_000 {
        tokio::task::yield_now().await;
    }
    flags.kill("checkout").unwrap();
    flipped.store(true, Ordering::SeqCst);
    while refused.load(Ordering::SeqCst) < 1_000 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(late_reached.load(Ordering::SeqCst), 0);
    assert!(early_reached.load(Ordering::SeqCst) >= 1_000);
}

#[test]
fn rollout_lands_within_one_percent_and_only_grows() {
    let flags = FlagStore::with_observer("flags", ());
    flags.set("search-v2", FlagDef::rollout(10)).unwrap();
    let keys: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
    let inside = |flags: &FlagStore| -> Vec<bool> {
        keys.iter()
            .map(|k| {
                let ctx = EvalContext::new().targeting_key(k.clone());
                let d = flags.details("search-v2", &ctx);
                assert_eq!(d.reason, Reason::Split);
                d.value == FlagValue::Bool(true)
            })
            .collect()
    };
    let mut previous = vec![false; keys.len()];
    for pct in [10u8, 20, 25, 50, 90] {
        flags.set_percentage("search-v2", pct).unwrap();
        let now = inside(&flags);
        let n = now.iter().filter(|&&b| b).count();
        let share = n as f64 / 1_000.0;
        assert!(
            (share - f64::from(pct)).abs() <= 1.0,
            "{pct} %: {share:.2} % of 100 000 keys"
        );
        for (i, (was, is)) in previous.iter().zip(&now).enumerate() {
            assert!(
                !was || *is,
                "user-{i} left the rollout when it grew to {pct} %"
            );
        }
        previous = now;
    }
}

/// `tests/data/unleash_buckets.json` was computed with Python's `mmh3`.
#[test]
fn committed_vectors_give_the_same_buckets() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/unleash_buckets.json"
    ))
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let raw = doc["murmur3_x86_32"].as_array().unwrap();
    for v in raw {
        let input = v["input"].as_str().unwrap();
        let seed = u32::try_from(v["seed"].as_u64().unwrap()).unwrap();
        assert_eq!(
            u64::from(murmur3_x86_32(input.as_bytes(), seed)),
            v["hash"].as_u64().unwrap(),
            "{input:?}"
        );
    }
    let buckets = doc["buckets"].as_array().unwrap();
    assert!(buckets.len() > 200);
    for v in buckets {
        let (g, k) = (
            v["group_id"].as_str().unwrap(),
            v["targeting_key"].as_str().unwrap(),
        );
        assert_eq!(
            u64::from(bucket(g, k)),
            v["bucket"].as_u64().unwrap(),
            "{g}:{k}"
        );
    }
    // The store uses the flag's name as the group unless told otherwise.
    let flags = FlagStore::with_observer("flags", ());
    flags.set("new-checkout", FlagDef::rollout(41)).unwrap();
    let alice = EvalContext::new().targeting_key("alice"); // bucket 41
    assert!(flags.is_enabled("new-checkout", &alice));
    flags.set_percentage("new-checkout", 40).unwrap();
    assert!(!flags.is_enabled("new-checkout", &alice));
    let mut grouped = FlagDef::rollout(10);
    grouped.rollout.as_mut().unwrap().group_id = Some("checkout".into()); // alice: 10
    flags.set("new-checkout", grouped).unwrap();
    assert!(flags.is_enabled("new-checkout", &alice));
}

#[tokio::test]
async fn targeting_by_header_allow_deny_rules() {
    let flags = FlagStore::with_observer("flags", ());
    let mut def = FlagDef::rollout(0);
    def.allow = vec!["alice".into()];
    def.deny = vec!["mallory".into()];
    def.rules = vec![Rule {
        when: vec![Clause::new("targetingKey", Op::StartsWith, ["staff-"])],
        serve: None,
    }];
    flags.set("beta", def).unwrap();
    let gate = FeatureGateLayer::new(&flags, "beta")
        .targeting_key(tower_parapet::key::Header::new(
            http::HeaderName::from_static("x-user"),
        ))
        .observer(());
    let svc = gate.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>("new")
    }));
    let ask = |user: Option<&str>| {
        let mut req = http::Request::builder();
        if let Some(u) = user {
            req = req.header("x-user", u);
        }
        svc.clone().oneshot(req.body(()).unwrap())
    };
    assert!(ask(Some("alice")).await.is_ok());
    assert!(ask(Some("staff-7")).await.is_ok());
    assert!(ask(Some("mallory")).await.is_err());
    assert!(ask(Some("bob")).await.is_err());
    assert!(ask(None).await.is_err(), "0 % needs no key and is off");
    let long = "x".repeat(300);
    let err = ask(Some(&long)).await.unwrap_err();
    assert_eq!(kind(&err), Some(RejectionKind::FeatureDisabled));
}

#[tokio::test]
async fn missing_flag_and_bad_context_answer_the_default_with_an_event() {
    let events = Events::default();
    let flags = FlagStore::with_observer("flags", events.observer());
    let gate = FeatureGateLayer::new(&flags, "not-yet").observer(events.observer());
    let err = gate.layer(feature()).oneshot("q").await.unwrap_err();
    assert_eq!(kind(&err), Some(RejectionKind::FeatureDisabled));
    assert_eq!(
        events.take(),
        [
            "flags:flag_error not-yet FLAG_NOT_FOUND",
            "feature_gate:feature_disabled not-yet ERROR"
        ]
    );
    let open = gate.clone().default_value(true).layer(feature());
    assert_eq!(open.oneshot("q").await.unwrap(), "new");
    events.take();
    // The flag appears later: the gate built before it sees it.
    flags.set("not-yet", FlagDef::rollout(50)).unwrap();
    events.take();
    // A rollout without a targeting key cannot place the request.
    let err = gate.layer(feature()).oneshot("q").await.unwrap_err();
    assert_eq!(kind(&err), Some(RejectionKind::FeatureDisabled));
    assert_eq!(
        events.take()[0],
        "flags:flag_error not-yet TARGETING_KEY_MISSING"
    );
    // A string flag read by a boolean gate.
    flags
        .set("not-yet", FlagDef::variants(["a", "b"], "a"))
        .unwrap();
    events.take();
    assert!(gate.layer(feature()).oneshot("q").await.is_err());
    assert_eq!(events.take()[0], "flags:flag_error not-yet TYPE_MISMATCH");
}

#[tokio::test]
async fn off_answers_route_respond_and_403() {
    let flags = FlagStore::with_observer("flags", ());
    flags.set("new-ui", FlagDef::boolean(false)).unwrap();
    let old = service_fn(|_: &'static str| async { Ok::<_, Infallible>("old") });
    let routed = FeatureGateLayer::new(&flags, "new-ui")
        .observer(())
        .route_to(old)
        .layer(feature());
    assert_eq!(routed.clone().oneshot("q").await.unwrap(), "old");
    flags.enable("new-ui").unwrap();
    assert_eq!(routed.oneshot("q").await.unwrap(), "new");
    flags.kill("new-ui").unwrap();

    let answered = FeatureGateLayer::new(&flags, "new-ui")
        .observer(())
        .respond_with(|d: &tower_parapet::flags::FlagDetails| {
            if d.reason == Reason::Disabled {
                "coming soon"
            } else {
                "?"
            }
        })
        .layer(feature());
    assert_eq!(answered.oneshot("q").await.unwrap(), "coming soon");

    let forbidden = FeatureGateLayer::new(&flags, "new-ui")
        .observer(())
        .status::<bytes::Bytes>(http::StatusCode::FORBIDDEN)
        .layer(service_fn(|_: ()| async {
            Ok::<_, Infallible>(http::Response::new(bytes::Bytes::from("new")))
        }));
    let res = forbidden.oneshot(()).await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(String::from_utf8_lossy(res.body()).contains("feature_disabled"));
}

#[tokio::test]
async fn shadow_reports_and_runs_off_skips() {
    let events = Events::default();
    let flags = FlagStore::with_observer("flags", ());
    flags.set("f", FlagDef::boolean(false)).unwrap();
    let mode = ModeHandle::new(Mode::Shadow);
    let svc = FeatureGateLayer::new(&flags, "f")
        .observer(events.observer())
        .mode(mode.clone())
        .layer(feature());
    assert_eq!(svc.clone().oneshot("q").await.unwrap(), "new");
    assert_eq!(
        events.take(),
        ["feature_gate:would_have_disabled f DISABLED"]
    );
    mode.set(Mode::Off);
    assert_eq!(svc.clone().oneshot("q").await.unwrap(), "new");
    assert!(events.take().is_empty());
    mode.set(Mode::Enforce);
    assert!(svc.oneshot("q").await.is_err());
}

#[derive(Debug, PartialEq)]
struct Teapot;

impl std::fmt::Display for Teapot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("teapot")
    }
}

impl std::error::Error for Teapot {}

#[tokio::test]
async fn inner_error_passes_through_untouched() {
    let flags = FlagStore::with_observer("flags", ());
    flags.set("f", FlagDef::boolean(true)).unwrap();
    let svc = FeatureGateLayer::new(&flags, "f")
        .layer(service_fn(|_: ()| async { Err::<(), _>(Teapot) }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Teapot>(), Some(&Teapot));
    assert!(Rejection::from_box(&err).is_none());
}

#[tokio::test(start_paused = true)]
async fn dropped_futures_leave_nothing_behind() {
    let flags = FlagStore::with_observer("flags", ());
    flags.set("f", FlagDef::boolean(true)).unwrap();
    let dropped = Arc::new(AtomicU64::new(0));
    struct Count(Arc<AtomicU64>);
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let d = dropped.clone();
    let slow = service_fn(move |_: ()| {
        let guard = Count(d.clone());
        async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(guard);
            Ok::<_, Infallible>("slow")
        }
    });
    let mut svc = FeatureGateLayer::new(&flags, "f")
        .route_to(slow.clone())
        .layer(slow);
    let fut = svc.ready().await.unwrap().call(());
    assert!(
        fut.now_or_never().is_none(),
        "the feature is pending; dropped"
    );
    flags.kill("f").unwrap();
    let fut = svc.ready().await.unwrap().call(());
    drop(fut);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "both inner futures dropped"
    );
    // The gate keeps working.
    let answer = svc.ready().await.unwrap().call(());
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(answer.await.unwrap(), "slow");
}

#[test]
fn bad_config_errors_name_the_field() {
    let flags = FlagStore::with_observer("flags", ());
    let invalid = |def: FlagDef| match flags.set("f", def) {
        Err(FlagError::Invalid(e)) => e,
        other => panic!("{other:?}"),
    };
    let e = invalid(FlagDef::rollout(101));
    assert_eq!(e.field(), "rollout.percentage");
    assert!(e.to_string().contains("flag `f`"), "{e}");
    let d = FlagDef {
        on_variant: "missing".into(),
        ..FlagDef::default()
    };
    assert_eq!(invalid(d).field(), "on_variant");
    let d = FlagDef {
        rules: vec![Rule {
            when: vec![],
            serve: None,
        }],
        ..FlagDef::default()
    };
    assert_eq!(invalid(d).field(), "rules.when");
    let mut d = FlagDef::default();
    d.variants.clear();
    assert_eq!(invalid(d).field(), "variants");
    assert_eq!(
        flags.set("", FlagDef::default()).unwrap_err(),
        FlagError::Invalid(tower_parapet::ConfigError::new(
            "flag",
            "the flag's name must not be empty"
        ))
    );
    assert_eq!(
        flags.kill("nope").unwrap_err(),
        FlagError::NotFound("nope".into())
    );
    let c: FeatureGateConfig = serde_json::from_str(r#"{"flag": "a/b"}"#).unwrap();
    assert_eq!(c.build(&flags).unwrap_err().field(), "flag");
    let c: FeatureGateConfig = serde_json::from_str(r#"{"flag": "a", "name": ""}"#).unwrap();
    assert_eq!(c.build(&flags).unwrap_err().field(), "name");
    assert!(serde_json::from_str::<FlagDef>(r#"{"enabeld": true}"#).is_err());
}

fn temp_file(ext: &str) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "parapet-flags-{}-{}.{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

#[tokio::test(start_paused = true)]
async fn file_source_hot_reloads_and_keeps_the_last_good_flags() {
    let path = temp_file("json");
    std::fs::write(
        &path,
        r#"{"flags": {"checkout": {}, "search": {"enabled": false}}}"#,
    )
    .unwrap();
    let events = Events::default();
    let flags = FlagStore::with_observer("flags", events.observer());
    flags.set("from-code", FlagDef::boolean(true)).unwrap();
    let watcher = FileSource::new(&path)
        .interval(Duration::from_secs(1))
        .watch(flags.clone());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let ctx = EvalContext::new();
    assert!(flags.is_enabled("checkout", &ctx));
    assert!(!flags.is_enabled("search", &ctx));
    let seen = events.take();
    let by_file = format!("flags:flag_changed checkout created by {}", path.display());
    assert!(seen.contains(&by_file), "{seen:?}");
    assert!(
        seen.contains(&"flags:flags_reloaded".to_owned()),
        "{seen:?}"
    );

    // Hot reload: the kill switch from the file, and a flag dropped from it.
    std::fs::write(&path, r#"{"flags": {"checkout": {"enabled": false}}}"#).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!flags.is_enabled("checkout", &ctx));
    assert_eq!(flags.get("search"), None, "removed from the file, removed");
    assert!(flags.is_enabled("from-code", &ctx), "flags from code stay");

    // Invalid files change nothing.
    for bad in [
        r#"{"flags": {"checkout": {"enabled": true}, "x": {"rollout": {"percentage": 200}}}}"#,
        r#"{"flags": {"checkout": "#,
        r#"{"flags": {"checkout": {"enabeld": true}}}"#,
    ] {
        events.take();
        std::fs::write(&path, bad).unwrap();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert!(!flags.is_enabled("checkout", &ctx), "{bad}");
        assert_eq!(events.take(), ["flags:flag_source_failed"], "{bad}");
    }
    // A missing file too.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(events.take(), ["flags:flag_source_failed"]);
    assert!(!flags.is_enabled("checkout", &ctx));
    // Fixed: applied again.
    std::fs::write(&path, r#"{"flags": {"checkout": {"enabled": true}}}"#).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(flags.is_enabled("checkout", &ctx));
    watcher.abort();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn toml_files_load_once() {
    let path = temp_file("toml");
    std::fs::write(
        &path,
        r#"
[flags.new-checkout]
description = "the new checkout flow"
allow = ["alice"]
rollout = { percentage = 10 }

[flags.limiter-mode]
variants = { enforce = "enforce", shadow = "shadow" }
on_variant = "enforce"
off_variant = "shadow"
default_variant = "shadow"
"#,
    )
    .unwrap();
    let flags = FlagStore::with_observer("flags", ());
    assert_eq!(FileSource::new(&path).load(&flags).unwrap(), 2);
    let alice = EvalContext::new().targeting_key("alice");
    assert!(flags.is_enabled("new-checkout", &alice));
    assert_eq!(
        flags.details("limiter-mode", &alice).value,
        FlagValue::String("shadow".into())
    );
    std::fs::write(&path, "[flags.x]\nenabled = \"yes\"\n").unwrap();
    assert!(FileSource::new(&path).load(&flags).is_err());
    assert_eq!(flags.names(), ["limiter-mode", "new-checkout"]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_rate_limiters_mode_follows_its_flag() {
    let events = Events::default();
    let flags = FlagStore::with_observer("flags", events.observer());
    let limiter =
        tower_parapet::RateLimitLayer::new(tower_parapet::rate_limit::Quota::per_second(1));
    let mode = limiter.mode_handle();
    flags
        .set("limiter-enforced", FlagDef::boolean(true))
        .unwrap();
    flags.bind_mode("limiter-enforced", mode.clone(), Mode::Shadow);
    assert_eq!(mode.get(), Mode::Enforce);
    flags.kill("limiter-enforced").unwrap();
    assert_eq!(mode.get(), Mode::Shadow, "visible when kill() returns");
    flags
        .set(
            "limiter-enforced",
            FlagDef::variants(["enforce", "shadow", "off"], "off"),
        )
        .unwrap();
    assert_eq!(mode.get(), Mode::Off);
    let seen = events.take();
    assert!(
        seen.contains(&"flags:mode_changed enforce->shadow".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"flags:mode_changed shadow->off".to_owned()),
        "{seen:?}"
    );
    // A removed flag leaves the mode alone and says so.
    flags.remove("limiter-enforced").unwrap();
    assert_eq!(mode.get(), Mode::Off);
    assert!(
        events
            .take()
            .contains(&"flags:flag_error limiter-enforced FLAG_NOT_FOUND".to_owned())
    );
}

#[test]
fn changes_say_who_made_them() {
    let events = Events::default();
    let flags = FlagStore::with_observer("flags", events.observer());
    flags.by("alice").set("f", FlagDef::boolean(true)).unwrap();
    flags.by("bob").kill("f").unwrap();
    flags.enable("f").unwrap();
    flags.by("carol").set_percentage("f", 5).unwrap();
    flags.by("dave").remove("f").unwrap();
    assert_eq!(
        events.take(),
        [
            "flags:flag_changed f created by alice",
            "flags:flag_changed f killed by bob",
            "flags:flag_changed f enabled by api",
            "flags:flag_changed f updated by carol",
            "flags:flag_changed f removed by dave",
        ]
    );
}

#[cfg(feature = "axum")]
mod admin {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower_parapet::circuit_breaker::{CircuitBreakerLayer, State};
    use tower_parapet::http::RejectionResponseLayer;
    use tower_parapet::http::admin::AdminRouter;

    const TOKEN: &str = "s3cret-s3cret-s3cret";

    fn req(method: &str, path: &str, token: Option<&str>, body: &str) -> http::Request<Body> {
        let mut b = http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::from(body.to_owned())).unwrap()
    }

    async fn text(res: http::Response<Body>) -> String {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn admin_needs_credentials_and_toggles_are_seen_by_the_next_request() {
        let events = Events::default();
        let flags = FlagStore::with_observer("flags", events.observer());
        flags.set("checkout", FlagDef::boolean(true)).unwrap();
        let breaker = CircuitBreakerLayer::builder()
            .name("payments")
            .build()
            .unwrap();
        let limiter =
            tower_parapet::RateLimitLayer::new(tower_parapet::rate_limit::Quota::per_second(10));
        let admin = AdminRouter::new()
            .flags(flags.clone())
            .breaker(breaker.handle())
            .rate_limiter("api", limiter.handle())
            .bearer_token("ops-oncall", TOKEN)
            .observer(events.observer())
            .build()
            .unwrap();
        let app = Router::new()
            .route("/checkout", get(|| async { "new checkout" }))
            .layer(
                tower::ServiceBuilder::new()
                    .layer(RejectionResponseLayer::new())
                    .layer(FeatureGateLayer::new(&flags, "checkout")),
            )
            .nest("/admin", admin);
        events.take();

        let send = |r| app.clone().oneshot(r);
        assert_eq!(
            send(req("GET", "/checkout", None, ""))
                .await
                .unwrap()
                .status(),
            200
        );
        for (method, path) in [
            ("GET", "/admin/flags"),
            ("POST", "/admin/flags/checkout/kill"),
            ("GET", "/admin/layers"),
        ] {
            let res = send(req(method, path, None, "")).await.unwrap();
            assert_eq!(res.status(), 401, "{method} {path}");
            assert_eq!(res.headers()["www-authenticate"], "Bearer");
            let res = send(req(method, path, Some("wrong-token-wrong-token"), ""))
                .await
                .unwrap();
            assert_eq!(res.status(), 401, "{method} {path} with a wrong token");
        }
        assert!(flags.get("checkout").unwrap().enabled, "nothing changed");
        assert!(events.take().iter().all(|e| e == "admin:admin_denied"));

        let res = send(req("POST", "/admin/flags/checkout/kill", Some(TOKEN), ""))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let next = send(req("GET", "/checkout", None, "")).await.unwrap();
        assert_eq!(next.status(), 404, "the very next request sees the kill");
        assert!(text(next).await.contains("feature `checkout` is disabled"));
        assert_eq!(
            events.take(),
            ["flags:flag_changed checkout killed by ops-oncall"]
        );

        let res = send(req("POST", "/admin/flags/checkout/enable", Some(TOKEN), ""))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            send(req("GET", "/checkout", None, ""))
                .await
                .unwrap()
                .status(),
            200
        );

        let res = send(req(
            "PUT",
            "/admin/flags/checkout/percentage",
            Some(TOKEN),
            r#"{"percentage": 30}"#,
        ))
        .await
        .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            flags.get("checkout").unwrap().rollout.unwrap().percentage,
            30
        );
        let res = send(req(
            "PUT",
            "/admin/flags/checkout/percentage",
            Some(TOKEN),
            r#"{"percentage": 300}"#,
        ))
        .await
        .unwrap();
        assert_eq!(res.status(), 400);
        let res = send(req(
            "PUT",
            "/admin/flags/beta",
            Some(TOKEN),
            r#"{"rollout": {"percentage": 101}}"#,
        ))
        .await
        .unwrap();
        assert_eq!(res.status(), 422);
        assert!(text(res).await.contains("rollout.percentage"));
        let res = send(req(
            "PUT",
            "/admin/flags/beta",
            Some(TOKEN),
            r#"{"allow": ["alice"]}"#,
        ))
        .await
        .unwrap();
        assert_eq!(res.status(), 200);
        let listed = text(
            send(req("GET", "/admin/flags", Some(TOKEN), ""))
                .await
                .unwrap(),
        )
        .await;
        let doc: serde_json::Value = serde_json::from_str(&listed).unwrap();
        assert_eq!(doc["flags"]["beta"]["allow"][0], "alice");
        let res = send(req("POST", "/admin/flags/nope/kill", Some(TOKEN), ""))
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
        events.take();

        // Breakers and modes.
        let res = send(req(
            "POST",
            "/admin/breakers/payments/force_open",
            Some(TOKEN),
            "",
        ))
        .await
        .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(breaker.handle().state(), State::ForcedOpen);
        let res = send(req(
            "PUT",
            "/admin/modes/api",
            Some(TOKEN),
            r#"{"mode": "shadow"}"#,
        ))
        .await
        .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(limiter.mode_handle().get(), Mode::Shadow);
        assert_eq!(
            events.take(),
            [
                "admin:admin_changed breaker/payments force_open by ops-oncall",
                "admin:admin_changed mode/api shadow by ops-oncall"
            ]
        );
        let layers = text(
            send(req("GET", "/admin/layers", Some(TOKEN), ""))
                .await
                .unwrap(),
        )
        .await;
        let doc: serde_json::Value = serde_json::from_str(&layers).unwrap();
        assert_eq!(doc["breakers"]["payments"]["state"], "forced_open");
        assert_eq!(doc["rate_limiters"]["api"]["mode"], "shadow");
        assert_eq!(doc["modes"]["api"], "shadow");
    }

    #[tokio::test]
    async fn a_predicate_names_the_operator() {
        let events = Events::default();
        let flags = FlagStore::with_observer("flags", events.observer());
        flags.set("f", FlagDef::boolean(true)).unwrap();
        events.take();
        let admin = AdminRouter::new()
            .flags(flags.clone())
            .authorize(|h| {
                h.get("x-verified-user")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .build()
            .unwrap();
        let res = admin
            .clone()
            .oneshot(req("POST", "/flags/f/kill", None, ""))
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let mut r = req("POST", "/flags/f/kill", None, "");
        r.headers_mut()
            .insert("x-verified-user", http::HeaderValue::from_static("erin"));
        assert_eq!(admin.oneshot(r).await.unwrap().status(), 200);
        assert_eq!(events.take(), ["flags:flag_changed f killed by erin"]);
    }
}
