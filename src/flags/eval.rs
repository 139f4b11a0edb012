//! Evaluation: a compiled flag and a context give a variant and a reason.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::model::{Clause, Compiled, FlagValue, Op};

/// Who or what a flag is evaluated for: a targeting key (user, tenant, session...) and
/// attributes for the rules. Building one from `&'static str`s allocates nothing.
///
/// ```
/// use tower_parapet::flags::EvalContext;
///
/// let ctx = EvalContext::new().targeting_key("alice").attribute("plan", "beta");
/// assert_eq!(ctx.get_targeting_key(), Some("alice"));
/// assert_eq!(ctx.get_attribute("plan"), Some("beta"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvalContext {
    targeting_key: Option<Cow<'static, str>>,
    attributes: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    invalid: Option<&'static str>,
}

/// The attribute name that stands for the targeting key in rules.
pub const TARGETING_KEY: &str = "targetingKey";

impl EvalContext {
    /// An empty context.
    pub const fn new() -> EvalContext {
        EvalContext {
            targeting_key: None,
            attributes: Vec::new(),
            invalid: None,
        }
    }

    /// With this targeting key.
    #[must_use]
    pub fn targeting_key(mut self, key: impl Into<Cow<'static, str>>) -> Self {
        self.set_targeting_key(key);
        self
    }

    /// With this attribute (replacing one of the same name).
    #[must_use]
    pub fn attribute(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.set_attribute(name, value);
        self
    }

    /// Set the targeting key.
    pub fn set_targeting_key(&mut self, key: impl Into<Cow<'static, str>>) {
        self.targeting_key = Some(key.into());
    }

    /// Set an attribute (replacing one of the same name).
    pub fn set_attribute(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) {
        let name = name.into();
        let value = value.into();
        match self.attributes.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((name, value)),
        }
    }

    /// Mark the context as unusable (e.g. a targeting key header that is too long):
    /// evaluations then answer the caller's default with reason `ERROR`
    /// ([`ErrorCode::InvalidContext`]).
    pub fn set_invalid(&mut self, why: &'static str) {
        self.invalid = Some(why);
    }

    /// The targeting key.
    pub fn get_targeting_key(&self) -> Option<&str> {
        self.targeting_key.as_deref()
    }

    /// An attribute (`"targetingKey"` is the targeting key).
    pub fn get_attribute(&self, name: &str) -> Option<&str> {
        if name == TARGETING_KEY {
            return self.get_targeting_key();
        }
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &**v)
    }

    /// Why the context is unusable, if it is.
    pub fn invalid(&self) -> Option<&'static str> {
        self.invalid
    }
}

/// Why an evaluation gave its value: OpenFeature's resolution reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum Reason {
    /// The flag has no targeting: everyone gets its default variant.
    Static,
    /// An allow/deny list or a rule matched the context.
    TargetingMatch,
    /// A percentage rollout decided (inside or outside).
    Split,
    /// The flag is switched off (the kill switch).
    Disabled,
    /// The flag has targeting, but nothing matched: its default variant.
    Default,
    /// The flag could not be evaluated: the caller's default value.
    Error,
}

impl Reason {
    /// OpenFeature's name: `"STATIC"`, `"TARGETING_MATCH"`, `"SPLIT"`, `"DISABLED"`,
    /// `"DEFAULT"` or `"ERROR"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Disabled => "DISABLED",
            Reason::Default => "DEFAULT",
            Reason::Error => "ERROR",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an evaluation failed: OpenFeature's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No flag has this name.
    FlagNotFound,
    /// The flag's value is not of the type asked for (e.g. a string flag read as a
    /// boolean).
    TypeMismatch,
    /// A rollout needs a targeting key and the context has none.
    TargetingKeyMissing,
    /// The context could not be built from the request (e.g. a key too long).
    InvalidContext,
}

impl ErrorCode {
    /// OpenFeature's name, e.g. `"FLAG_NOT_FOUND"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one evaluation: OpenFeature's evaluation details.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct FlagDetails {
    /// The flag's name.
    #[serde(serialize_with = "ser_str")]
    pub flag: Arc<str>,
    /// The value: the variant's, or the caller's default on error.
    pub value: FlagValue,
    /// The variant served (`None` on error).
    #[serde(serialize_with = "ser_opt_str")]
    pub variant: Option<Arc<str>>,
    /// Why.
    pub reason: Reason,
    /// What went wrong, when `reason` is [`Reason::Error`].
    pub error_code: Option<ErrorCode>,
}

fn ser_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

fn ser_opt_str<S: serde::Serializer>(s: &Option<Arc<str>>, ser: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_str(s),
        None => ser.serialize_none(),
    }
}

impl FlagDetails {
    pub(crate) fn error(flag: Arc<str>, default: FlagValue, code: ErrorCode) -> FlagDetails {
        FlagDetails {
            flag,
            value: default,
            variant: None,
            reason: Reason::Error,
            error_code: Some(code),
        }
    }
}

fn clause_matches(clause: &Clause, ctx: &EvalContext) -> bool {
    let Some(actual) = ctx.get_attribute(&clause.attribute) else {
        return false;
    };
    let any = |f: &dyn Fn(&str) -> bool| clause.values.iter().any(|v| f(v));
    match clause.op {
        Op::In => any(&|v| actual == v),
        Op::NotIn => !any(&|v| actual == v),
        Op::StartsWith => any(&|v| actual.starts_with(v)),
        Op::EndsWith => any(&|v| actual.ends_with(v)),
        Op::Contains => any(&|v| actual.contains(v)),
    }
}

/// The variant (an index into `flag.variants`) and the reason, or why there is none.
/// Never panics, never allocates.
#[inline]
pub(crate) fn resolve(flag: &Compiled, ctx: &EvalContext) -> Result<(usize, Reason), ErrorCode> {
    if !flag.enabled {
        return Ok((flag.off, Reason::Disabled));
    }
    if !flag.targeted {
        return Ok((flag.default, Reason::Static));
    }
    if ctx.invalid.is_some() {
        return Err(ErrorCode::InvalidContext);
    }
    let key = ctx.get_targeting_key();
    if let Some(key) = key {
        if flag.deny.contains(key) {
            return Ok((flag.off, Reason::TargetingMatch));
        }
        if flag.allow.contains(key) {
            return Ok((flag.on, Reason::TargetingMatch));
        }
    }
    for rule in &flag.rules {
        if rule.when.iter().all(|c| clause_matches(c, ctx)) {
            return Ok((rule.serve, Reason::TargetingMatch));
        }
    }
    if let Some(rollout) = &flag.rollout {
        let inside = match rollout.percentage {
            0 => false,
            100 => true,
            p => {
                let key = key.ok_or(ErrorCode::TargetingKeyMissing)?;
                rollout.prefix.bucket(key) <= p
            }
        };
        let variant = if inside { rollout.serve } else { flag.off };
        return Ok((variant, Reason::Split));
    }
    Ok((flag.default, Reason::Default))
}

/// Full details of an evaluation of `flag` (or of a missing flag).
pub(crate) fn details(
    name: &str,
    flag: Option<&Compiled>,
    ctx: &EvalContext,
    default: &FlagValue,
) -> FlagDetails {
    let Some(flag) = flag else {
        return FlagDetails::error(name.into(), default.clone(), ErrorCode::FlagNotFound);
    };
    match resolve(flag, ctx) {
        Ok((i, reason)) => {
            let variant = &flag.variants[i];
            FlagDetails {
                flag: flag.name.clone(),
                value: variant.value.clone(),
                variant: Some(variant.name.clone()),
                reason,
                error_code: None,
            }
        }
        Err(code) => FlagDetails::error(flag.name.clone(), default.clone(), code),
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{FlagDef, Rule, compile};
    use super::*;

    fn eval(def: &FlagDef, ctx: &EvalContext) -> (FlagValue, Reason) {
        let c = compile("f", def).unwrap();
        let d = details("f", Some(&c), ctx, &FlagValue::Bool(false));
        (d.value, d.reason)
    }

    #[test]
    fn order_of_evaluation() {
        let mut def = FlagDef::rollout(0);
        def.allow = vec!["alice".into(), "mallory".into()];
        def.deny = vec!["mallory".into()];
        def.rules = vec![Rule {
            when: vec![Clause::new("plan", Op::In, ["beta"])],
            serve: None,
        }];
        let alice = EvalContext::new().targeting_key("alice");
        let mallory = EvalContext::new()
            .targeting_key("mallory")
            .attribute("plan", "beta");
        let beta = EvalContext::new()
            .targeting_key("bob")
            .attribute("plan", "beta");
        let other = EvalContext::new().targeting_key("bob");
        assert_eq!(eval(&def, &alice), (true.into(), Reason::TargetingMatch));
        assert_eq!(eval(&def, &mallory), (false.into(), Reason::TargetingMatch));
        assert_eq!(eval(&def, &beta), (true.into(), Reason::TargetingMatch));
        assert_eq!(eval(&def, &other), (false.into(), Reason::Split));
        def.enabled = false;
        assert_eq!(eval(&def, &alice), (false.into(), Reason::Disabled));
        assert_eq!(
            eval(&FlagDef::default(), &other),
            (true.into(), Reason::Static)
        );
        let only_rules = FlagDef {
            default_variant: "off".into(),
            rules: def.rules.clone(),
            ..FlagDef::default()
        };
        assert_eq!(eval(&only_rules, &other), (false.into(), Reason::Default));
    }

    #[test]
    fn errors_answer_the_default() {
        let c = compile("f", &FlagDef::rollout(50)).unwrap();
        let d = details("f", Some(&c), &EvalContext::new(), &FlagValue::Bool(true));
        assert_eq!(d.reason, Reason::Error);
        assert_eq!(d.error_code, Some(ErrorCode::TargetingKeyMissing));
        assert_eq!(d.value, FlagValue::Bool(true));
        let d = details("g", None, &EvalContext::new(), &FlagValue::Bool(false));
        assert_eq!(d.error_code, Some(ErrorCode::FlagNotFound));
        let mut bad = EvalContext::new().targeting_key("x");
        bad.set_invalid("too long");
        let d = details("f", Some(&c), &bad, &FlagValue::Bool(false));
        assert_eq!(d.error_code, Some(ErrorCode::InvalidContext));
        // 0 % and 100 % need no key.
        let all = compile("f", &FlagDef::rollout(100)).unwrap();
        let d = details(
            "f",
            Some(&all),
            &EvalContext::new(),
            &FlagValue::Bool(false),
        );
        assert_eq!((d.value, d.reason), (FlagValue::Bool(true), Reason::Split));
    }

    #[test]
    fn clauses() {
        let ctx = EvalContext::new()
            .targeting_key("user-7")
            .attribute("email", "a@example.com");
        let m = |attr: &str, op, v: &str| clause_matches(&Clause::new(attr, op, [v]), &ctx);
        assert!(m("email", Op::EndsWith, "@example.com"));
        assert!(m("email", Op::StartsWith, "a@"));
        assert!(m("email", Op::Contains, "example"));
        assert!(m("email", Op::NotIn, "b@example.com"));
        assert!(m(TARGETING_KEY, Op::In, "user-7"));
        assert!(
            !m("country", Op::NotIn, "NL"),
            "a missing attribute never matches"
        );
    }
}
