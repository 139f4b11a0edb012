//! Flag definitions as data, and their compiled form.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::error::ConfigError;

/// The value a flag's variant serves: a boolean (a feature on or off) or a string (e.g.
/// `"enforce"`, `"shadow"`, `"off"` for a layer's [`Mode`](crate::Mode), or the name of
/// an algorithm).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum FlagValue {
    /// `true` or `false`.
    Bool(bool),
    /// Any string.
    String(String),
}

impl FlagValue {
    /// The boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FlagValue::Bool(b) => Some(*b),
            FlagValue::String(_) => None,
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FlagValue::String(s) => Some(s),
            FlagValue::Bool(_) => None,
        }
    }
}

impl fmt::Display for FlagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagValue::Bool(b) => write!(f, "{b}"),
            FlagValue::String(s) => f.write_str(s),
        }
    }
}

impl From<bool> for FlagValue {
    fn from(b: bool) -> Self {
        FlagValue::Bool(b)
    }
}

impl From<&str> for FlagValue {
    fn from(s: &str) -> Self {
        FlagValue::String(s.to_owned())
    }
}

/// How a rule's clause compares an attribute with its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// The attribute equals one of the values.
    In,
    /// The attribute is present and equals none of the values.
    NotIn,
    /// The attribute starts with one of the values.
    StartsWith,
    /// The attribute ends with one of the values.
    EndsWith,
    /// The attribute contains one of the values.
    Contains,
}

/// One condition on an attribute of the evaluation context. A clause on an attribute the
/// context does not have never matches (whatever the operator, [`Op::NotIn`] included).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clause {
    /// The attribute's name; `"targetingKey"` is the targeting key.
    pub attribute: String,
    /// The comparison.
    pub op: Op,
    /// The values compared with (at least one).
    pub values: Vec<String>,
}

impl Clause {
    /// A clause `attribute op values`.
    pub fn new<I, V>(attribute: impl Into<String>, op: Op, values: I) -> Clause
    where
        I: IntoIterator<Item = V>,
        V: Into<String>,
    {
        Clause {
            attribute: attribute.into(),
            op,
            values: values.into_iter().map(Into::into).collect(),
        }
    }
}

/// A targeting rule: when every clause matches, serve a variant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The clauses, all of which must match (at least one).
    pub when: Vec<Clause>,
    /// The variant served (default: the flag's `on_variant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<String>,
}

/// A percentage rollout with sticky, Unleash-compatible buckets; see
/// [`bucket`](super::bucket).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The percentage of targeting keys served `variant` (0–100); the others get the
    /// flag's `off_variant`.
    pub percentage: u8,
    /// The bucketing group (default: the flag's name). Two flags with the same group put
    /// a user in the same bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The variant served inside the rollout (default: the flag's `on_variant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A flag, as data (JSON, TOML or code).
///
/// Evaluation order (OpenFeature reasons in brackets):
/// 1. `enabled = false` — the kill switch: `off_variant` (`DISABLED`);
/// 2. the targeting key in `deny`: `off_variant`; in `allow`: `on_variant`
///    (`TARGETING_MATCH`; deny wins over allow);
/// 3. the first rule whose clauses all match: its variant (`TARGETING_MATCH`);
/// 4. `rollout`: bucket ≤ percentage gets the rollout's variant, the rest `off_variant`
///    (`SPLIT`);
/// 5. otherwise `default_variant` (`STATIC` for a flag with no targeting at all,
///    `DEFAULT` otherwise).
///
/// The defaults make a boolean flag: variants `on = true` and `off = false`, served on
/// and by default. `{}` is a flag that is on; `{"enabled": false}` one that is off;
/// `{"rollout": {"percentage": 10}}` one that is on for 10 % of targeting keys.
///
/// ```
/// # #[cfg(feature = "http")] {
/// use tower_parapet::flags::FlagDef;
///
/// let flag: FlagDef = serde_json::from_str(r#"{
///     "allow": ["alice"],
///     "rules": [{ "when": [{ "attribute": "plan", "op": "in", "values": ["beta"] }] }],
///     "rollout": { "percentage": 10 }
/// }"#).unwrap();
/// assert!(flag.enabled);
/// assert!(flag.validate("new-checkout").is_ok());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlagDef {
    /// What the flag guards, for people (shown by the admin router).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `false` switches the flag off for everyone (the kill switch). Default `true`.
    pub enabled: bool,
    /// The variants by name (default `on = true`, `off = false`).
    pub variants: BTreeMap<String, FlagValue>,
    /// Served by `allow`, and by rules and rollouts that name no variant (default `"on"`).
    pub on_variant: String,
    /// Served when disabled, by `deny`, and outside a rollout (default `"off"`).
    pub off_variant: String,
    /// Served when nothing else decided (default `"on"`).
    pub default_variant: String,
    /// Targeting keys always served `on_variant`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Targeting keys always served `off_variant` (checked before `allow`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Rules on attributes, in order; the first that matches decides.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// A percentage rollout, after the rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

impl Default for FlagDef {
    fn default() -> Self {
        FlagDef {
            description: String::new(),
            enabled: true,
            variants: BTreeMap::from([
                ("on".to_owned(), FlagValue::Bool(true)),
                ("off".to_owned(), FlagValue::Bool(false)),
            ]),
            on_variant: "on".into(),
            off_variant: "off".into(),
            default_variant: "on".into(),
            allow: Vec::new(),
            deny: Vec::new(),
            rules: Vec::new(),
            rollout: None,
        }
    }
}

/// The most bytes in a flag's name.
pub const MAX_FLAG_NAME_LEN: usize = 128;

impl FlagDef {
    /// A boolean flag that is on (`true`) or off.
    pub fn boolean(on: bool) -> FlagDef {
        FlagDef {
            enabled: on,
            ..FlagDef::default()
        }
    }

    /// A boolean flag on for `percentage` percent of targeting keys.
    pub fn rollout(percentage: u8) -> FlagDef {
        FlagDef {
            rollout: Some(Rollout {
                percentage,
                group_id: None,
                variant: None,
            }),
            ..FlagDef::default()
        }
    }

    /// A flag with string variants named as their values (e.g. `enforce`, `shadow`,
    /// `off`), serving `serve` by default; `off_variant` and `on_variant` are `serve` too
    /// until set.
    pub fn variants<'a>(names: impl IntoIterator<Item = &'a str>, serve: &str) -> FlagDef {
        FlagDef {
            variants: names
                .into_iter()
                .map(|n| (n.to_owned(), FlagValue::String(n.to_owned())))
                .collect(),
            on_variant: serve.into(),
            off_variant: serve.into(),
            default_variant: serve.into(),
            ..FlagDef::default()
        }
    }

    /// Check the definition of the flag called `name`. The error names the field; its
    /// reason names the flag.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        compile(name, self).map(drop)
    }
}

/// The file format of a flag source: `{"flags": {"name": {...}}}`, or in TOML
/// `[flags.name]` tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagSet {
    /// The flags by name.
    #[serde(default)]
    pub flags: BTreeMap<String, FlagDef>,
}

#[derive(Debug)]
pub(crate) struct Variant {
    pub(crate) name: Arc<str>,
    pub(crate) value: FlagValue,
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) when: Vec<Clause>,
    pub(crate) serve: usize,
}

#[derive(Debug)]
pub(crate) struct CompiledRollout {
    pub(crate) percentage: u8,
    /// The hash state after `"{group}:"`, so a request hashes only its key.
    pub(crate) prefix: super::murmur3::Murmur3,
    pub(crate) serve: usize,
}

/// A validated flag, ready to evaluate: variant names resolved to indices.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) name: Arc<str>,
    pub(crate) enabled: bool,
    pub(crate) variants: Vec<Variant>,
    pub(crate) on: usize,
    pub(crate) off: usize,
    pub(crate) default: usize,
    pub(crate) allow: HashSet<String>,
    pub(crate) deny: HashSet<String>,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) rollout: Option<CompiledRollout>,
    /// Whether anything depends on the context (for the `STATIC` reason).
    pub(crate) targeted: bool,
}

fn err(field: &'static str, flag: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::new(field, format!("flag `{flag}`: {reason}"))
}

pub(crate) fn check_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(
            "flag",
            "the flag's name must not be empty",
        ));
    }
    if name.len() > MAX_FLAG_NAME_LEN {
        return Err(ConfigError::new(
            "flag",
            format!("the flag's name is longer than {MAX_FLAG_NAME_LEN} bytes"),
        ));
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err(ConfigError::new(
            "flag",
            format!("the flag's name {name:?} contains `/` or a control character"),
        ));
    }
    Ok(())
}

pub(crate) fn compile(name: &str, def: &FlagDef) -> Result<Compiled, ConfigError> {
    check_name(name)?;
    if def.variants.is_empty() {
        return Err(err("variants", name, "at least one variant is needed"));
    }
    let variants: Vec<Variant> = def
        .variants
        .iter()
        .map(|(n, v)| Variant {
            name: n.as_str().into(),
            value: v.clone(),
        })
        .collect();
    let index = |field: &'static str, v: &str| {
        variants
            .iter()
            .position(|x| &*x.name == v)
            .ok_or_else(|| err(field, name, format!("no variant is called {v:?}")))
    };
    let on = index("on_variant", &def.on_variant)?;
    let off = index("off_variant", &def.off_variant)?;
    let default = index("default_variant", &def.default_variant)?;
    let mut rules = Vec::with_capacity(def.rules.len());
    for rule in &def.rules {
        if rule.when.is_empty() {
            return Err(err("rules.when", name, "a rule needs at least one clause"));
        }
        for clause in &rule.when {
            if clause.attribute.is_empty() {
                return Err(err("rules.when.attribute", name, "must not be empty"));
            }
            if clause.values.is_empty() {
                return Err(err(
                    "rules.when.values",
                    name,
                    "a clause needs at least one value",
                ));
            }
        }
        let serve = match &rule.serve {
            Some(v) => index("rules.serve", v)?,
            None => on,
        };
        rules.push(CompiledRule {
            when: rule.when.clone(),
            serve,
        });
    }
    let rollout = match &def.rollout {
        None => None,
        Some(r) => {
            if r.percentage > 100 {
                return Err(err(
                    "rollout.percentage",
                    name,
                    format!("{} is not a percentage from 0 to 100", r.percentage),
                ));
            }
            if r.group_id.as_deref() == Some("") {
                return Err(err("rollout.group_id", name, "must not be empty"));
            }
            let serve = match &r.variant {
                Some(v) => index("rollout.variant", v)?,
                None => on,
            };
            Some(CompiledRollout {
                percentage: r.percentage,
                prefix: super::murmur3::Murmur3::prefix(r.group_id.as_deref().unwrap_or(name)),
                serve,
            })
        }
    };
    Ok(Compiled {
        name: name.into(),
        enabled: def.enabled,
        variants,
        on,
        off,
        default,
        allow: def.allow.iter().cloned().collect(),
        deny: def.deny.iter().cloned().collect(),
        targeted: !def.allow.is_empty()
            || !def.deny.is_empty()
            || !rules.is_empty()
            || rollout.is_some(),
        rules,
        rollout,
    })
}
