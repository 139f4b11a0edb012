//! Building an [`EvalContext`] from a request.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::eval::EvalContext;
use crate::key::{KeyError, KeyExtractor};

/// Fills the [`EvalContext`] a flag is evaluated with from a request.
///
/// Provided: `()` (an empty context: no allocation), [`TargetingKey`] and [`Attribute`]
/// (from any [`KeyExtractor`], e.g. [`Header`](crate::key::Header) or
/// [`key::from_fn`](crate::key::from_fn)), pairs `(A, B)`, and [`context_fn`].
///
/// A key that is missing leaves the context without it; a key that is malformed or too
/// long marks the context invalid, so the flag answers the gate's default with reason
/// `ERROR` instead of guessing.
pub trait ContextExtractor<Req>: Clone + Send + Sync + 'static {
    /// Add what this extractor knows about `req` to `ctx`.
    fn fill(&self, req: &Req, ctx: &mut EvalContext);
}

impl<Req> ContextExtractor<Req> for () {
    #[inline]
    fn fill(&self, _: &Req, _: &mut EvalContext) {}
}

impl<Req, A, B> ContextExtractor<Req> for (A, B)
where
    A: ContextExtractor<Req>,
    B: ContextExtractor<Req>,
{
    fn fill(&self, req: &Req, ctx: &mut EvalContext) {
        self.0.fill(req, ctx);
        self.1.fill(req, ctx);
    }
}

/// A key that can be a targeting key or an attribute value.
pub trait ContextValue {
    /// As text.
    fn into_text(self) -> Cow<'static, str>;
}

impl ContextValue for String {
    fn into_text(self) -> Cow<'static, str> {
        Cow::Owned(self)
    }
}

impl ContextValue for &'static str {
    fn into_text(self) -> Cow<'static, str> {
        Cow::Borrowed(self)
    }
}

impl ContextValue for Cow<'static, str> {
    fn into_text(self) -> Cow<'static, str> {
        self
    }
}

macro_rules! display_value {
    ($($t:ty),*) => {$(
        impl ContextValue for $t {
            fn into_text(self) -> Cow<'static, str> {
                Cow::Owned(self.to_string())
            }
        }
    )*};
}
display_value!(Arc<str>, Box<str>, IpAddr, u64, u32, i64, i32, usize);

fn record(
    ctx: &mut EvalContext,
    result: Result<Cow<'static, str>, KeyError>,
    set: impl FnOnce(&mut EvalContext, Cow<'static, str>),
) {
    match result {
        Ok(v) => set(ctx, v),
        Err(KeyError::Missing) => {}
        Err(KeyError::TooLong { .. }) => ctx.set_invalid("a context key is too long"),
        Err(_) => ctx.set_invalid("a context key is malformed"),
    }
}

/// The targeting key (user, tenant, session) from a [`KeyExtractor`]; see
/// [`FeatureGateLayer::targeting_key`](super::FeatureGateLayer::targeting_key).
#[derive(Debug, Clone)]
pub struct TargetingKey<K>(pub K);

impl<Req, K> ContextExtractor<Req> for TargetingKey<K>
where
    K: KeyExtractor<Req>,
    K::Key: ContextValue,
{
    #[inline]
    fn fill(&self, req: &Req, ctx: &mut EvalContext) {
        let key = self.0.extract(req).map(ContextValue::into_text);
        record(ctx, key, |ctx, k| ctx.set_targeting_key(k));
    }
}

/// A named attribute from a [`KeyExtractor`].
#[derive(Debug, Clone)]
pub struct Attribute<K> {
    name: &'static str,
    key: K,
}

impl<K> Attribute<K> {
    /// The attribute `name`, read by `key`.
    pub fn new(name: &'static str, key: K) -> Attribute<K> {
        Attribute { name, key }
    }
}

impl<Req, K> ContextExtractor<Req> for Attribute<K>
where
    K: KeyExtractor<Req>,
    K::Key: ContextValue,
{
    fn fill(&self, req: &Req, ctx: &mut EvalContext) {
        let value = self.key.extract(req).map(ContextValue::into_text);
        let name = self.name;
        record(ctx, value, |ctx, v| ctx.set_attribute(name, v));
    }
}

/// A context from a closure; see [`context_fn`].
#[derive(Clone, Copy)]
pub struct FnContext<F>(F);

impl<F> fmt::Debug for FnContext<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FnContext")
            .field(&std::any::type_name::<F>())
            .finish()
    }
}

/// A context extractor from a closure `Fn(&Req, &mut EvalContext)`.
///
/// ```
/// use tower_parapet::flags::{ContextExtractor, EvalContext, context_fn};
///
/// let ctx = context_fn(|req: &(&'static str, &'static str), ctx: &mut EvalContext| {
///     ctx.set_targeting_key(req.0);
///     ctx.set_attribute("country", req.1);
/// });
/// let mut out = EvalContext::new();
/// ctx.fill(&("alice", "NL"), &mut out);
/// assert_eq!(out.get_attribute("country"), Some("NL"));
/// ```
pub fn context_fn<F>(f: F) -> FnContext<F> {
    FnContext(f)
}

impl<Req, F> ContextExtractor<Req> for FnContext<F>
where
    F: Fn(&Req, &mut EvalContext) + Clone + Send + Sync + 'static,
{
    fn fill(&self, req: &Req, ctx: &mut EvalContext) {
        (self.0)(req, ctx)
    }
}
