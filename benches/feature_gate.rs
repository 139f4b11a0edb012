//! The feature gate's admission path, flag on.
//!
//! One iteration = `poll_ready` + `call` + one poll of the response future (ready at
//! once) on a trivial inner service, no-op observer, enforce mode.
//! - `bare`: the inner service alone;
//! - `boolean`: a boolean flag that is on, no context;
//! - `rollout_with_key`: a 100 %-minus-nothing rollout (99 %, so the bucket is computed)
//!   with the targeting key read from the request by `key::from_fn` (a `&'static str`,
//!   so building the context allocates nothing): a murmur3 hash of `flag:key` per call;
//! - `targeted_with_key`: the same with a 1 000-entry allow list and a rule that does not
//!   match, before the rollout.
//!
//! Run: `cargo bench --bench feature_gate`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use tower::{Layer, Service};
use tower_parapet::flags::{Clause, FeatureGateLayer, FlagDef, FlagStore, Op, Rule};
use tower_parapet::key::{self, KeyError};

#[derive(Clone, Copy)]
struct Echo;

impl Service<&'static str> for Echo {
    type Response = usize;
    type Error = Infallible;
    type Future = Ready<Result<usize, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: &'static str) -> Self::Future {
        ready(Ok(req.len()))
    }
}

fn one_call<S: Service<&'static str>>(svc: &mut S, user: &'static str) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    matches!(svc.call(black_box(user)).now_or_never(), Some(Ok(_)))
}

fn gate(c: &mut Criterion) {
    let flags = FlagStore::with_observer("flags", ());
    flags.set("boolean", FlagDef::boolean(true)).unwrap();
    flags.set("rollout", FlagDef::rollout(99)).unwrap();
    let mut targeted = FlagDef::rollout(99);
    targeted.allow = (0..1_000).map(|i| format!("vip-{i}")).collect();
    targeted.rules = vec![Rule {
        when: vec![Clause::new("targetingKey", Op::StartsWith, ["staff-"])],
        serve: None,
    }];
    flags.set("targeted", targeted).unwrap();
    // "user-3" is in bucket <= 99 of both flags (checked below).
    let user = "user-3";
    let by_user = key::from_fn(|req: &&'static str| Ok::<_, KeyError>(*req));

    let mut group = c.benchmark_group("feature_gate");
    let mut bare = Echo;
    group.bench_function("bare", |b| b.iter(|| one_call(&mut bare, user)));

    let mut boolean = FeatureGateLayer::new(&flags, "boolean")
        .observer(())
        .layer(Echo);
    assert!(one_call(&mut boolean, user));
    group.bench_function("boolean", |b| b.iter(|| one_call(&mut boolean, user)));

    let mut rollout = FeatureGateLayer::new(&flags, "rollout")
        .observer(())
        .targeting_key(by_user)
        .layer(Echo);
    assert!(one_call(&mut rollout, user));
    group.bench_function("rollout_with_key", |b| {
        b.iter(|| one_call(&mut rollout, user))
    });

    let mut targeted = FeatureGateLayer::new(&flags, "targeted")
        .observer(())
        .targeting_key(by_user)
        .layer(Echo);
    assert!(one_call(&mut targeted, user));
    group.bench_function("targeted_with_key", |b| {
        b.iter(|| one_call(&mut targeted, user))
    });
    group.finish();
}

criterion_group!(benches, gate);
criterion_main!(benches);
