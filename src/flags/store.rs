//! The flag store: a snapshot read lock-free, replaced atomically by every change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;

use super::eval::{self, EvalContext, FlagDetails};
use super::model::{Compiled, FlagDef, FlagValue, compile};
use crate::error::ConfigError;
use crate::mode::{Mode, ModeHandle};
use crate::observe::{Event, Observer, SharedObserver};

/// What the request path reads: compiled flags by slot, and slots by name.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) slots: Vec<Option<Arc<Compiled>>>,
    by_name: HashMap<Arc<str>, usize>,
}

impl Snapshot {
    pub(crate) fn by_name(&self, name: &str) -> Option<&Compiled> {
        let slot = *self.by_name.get(name)?;
        self.slots.get(slot)?.as_deref()
    }
}

type Watcher = Box<dyn Fn(&Snapshot) + Send + Sync>;

/// The writers' side, behind a mutex that the request path never takes.
struct Writer {
    defs: BTreeMap<String, FlagDef>,
    compiled: BTreeMap<String, Arc<Compiled>>,
    /// Slot of every name ever seen (flags, and gates built before their flag exists).
    slots: HashMap<Arc<str>, usize>,
    /// The flags each source defined at its last good load.
    sources: HashMap<String, BTreeSet<String>>,
    watchers: Vec<Watcher>,
}

/// The store's snapshot, for [`arc_swap::Cache`].
#[derive(Clone)]
pub(crate) struct SnapshotSource(Arc<Inner>);

impl std::ops::Deref for SnapshotSource {
    type Target = ArcSwap<Snapshot>;

    fn deref(&self) -> &ArcSwap<Snapshot> {
        &self.0.snapshot
    }
}

/// A cached view of a store's snapshot; see [`FlagStore::cache`].
pub(crate) type SnapshotCache = arc_swap::Cache<SnapshotSource, Arc<Snapshot>>;

struct Inner {
    name: Arc<str>,
    snapshot: ArcSwap<Snapshot>,
    writer: Mutex<Writer>,
    observer: SharedObserver,
}

/// Why a flag change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// No flag has this name.
    #[error("no flag is called `{0}`")]
    NotFound(String),
    /// The change would make the flag invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// The feature flags of a process, read lock-free on every request and changed at runtime.
///
/// Reading (a gate's evaluation, [`details`](FlagStore::details)) loads the current
/// snapshot through `arc-swap`: no lock, no allocation. Every change (set, kill, change a
/// percentage, a file reload) builds a new snapshot and swaps it in atomically, so a
/// request sees all of a change or none of it, and **every request that starts after the
/// change returns sees it**. Writers take a mutex among themselves.
///
/// Clones share the same flags: hand one to the admin router, one to a file source, one
/// to each gate.
///
/// ```
/// use tower_parapet::flags::{EvalContext, FlagDef, FlagStore, Reason};
///
/// let flags = FlagStore::new();
/// flags.set("new-checkout", FlagDef::rollout(10)).unwrap();
/// let alice = EvalContext::new().targeting_key("alice");
/// assert!(!flags.is_enabled("new-checkout", &alice)); // bucket 41 > 10
/// flags.set_percentage("new-checkout", 50).unwrap();
/// assert!(flags.is_enabled("new-checkout", &alice));
/// flags.kill("new-checkout").unwrap();
/// assert_eq!(flags.details("new-checkout", &alice).reason, Reason::Disabled);
/// ```
#[derive(Clone)]
pub struct FlagStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for FlagStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagStore")
            .field("name", &self.inner.name)
            .field("flags", &self.names())
            .finish()
    }
}

impl Default for FlagStore {
    fn default() -> Self {
        FlagStore::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FlagStore {
    /// An empty store named `"flags"`, reporting to the tracing observer.
    pub fn new() -> FlagStore {
        FlagStore::with_observer("flags", crate::observe::TracingObserver::default())
    }

    /// An empty store with a name (in events) and an observer for its changes, sources
    /// and failed evaluations.
    pub fn with_observer(name: impl Into<Arc<str>>, observer: impl Observer) -> FlagStore {
        FlagStore {
            inner: Arc::new(Inner {
                name: name.into(),
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                writer: Mutex::new(Writer {
                    defs: BTreeMap::new(),
                    compiled: BTreeMap::new(),
                    slots: HashMap::new(),
                    sources: HashMap::new(),
                    watchers: Vec::new(),
                }),
                observer: SharedObserver::new(observer),
            }),
        }
    }

    /// A store holding `flags`, after checking every one.
    pub fn from_flags(
        flags: impl IntoIterator<Item = (impl Into<String>, FlagDef)>,
    ) -> Result<FlagStore, ConfigError> {
        let store = FlagStore::new();
        store.by("config").replace(flags)?;
        Ok(store)
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    #[cfg_attr(not(feature = "flag-files"), allow(dead_code))]
    /// Tell the observer how a load from `source` went: how many flags it defines, or why
    /// it was refused (the last good flags stay).
    pub(crate) fn report_source(
        &self,
        source: &str,
        result: Result<usize, &(dyn std::error::Error + 'static)>,
    ) {
        match result {
            Ok(flags) => self
                .observer()
                .emit(&crate::observe::Event::FlagSourceReloaded {
                    name: self.name(),
                    source,
                    flags,
                }),
            Err(error) => self
                .observer()
                .emit(&crate::observe::Event::FlagSourceFailed {
                    name: self.name(),
                    source,
                    error,
                }),
        }
    }

    pub(crate) fn observer(&self) -> &SharedObserver {
        &self.inner.observer
    }

    /// The current snapshot: one `arc-swap` load, no lock.
    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.inner.snapshot.load()
    }

    /// A per-holder cache of the snapshot: each load is one atomic load of the current
    /// pointer (and a full load only after a change), and still sees every change that
    /// returned before it.
    pub(crate) fn cache(&self) -> SnapshotCache {
        arc_swap::Cache::new(SnapshotSource(self.inner.clone()))
    }

    /// The slot of `name`, which a gate reads by index; created (empty) if needed.
    pub(crate) fn slot(&self, name: &str) -> usize {
        let mut w = lock(&self.inner.writer);
        if let Some(&slot) = w.slots.get(name) {
            return slot;
        }
        let slot = w.slots.len();
        w.slots.insert(name.into(), slot);
        self.publish(&w);
        slot
    }

    /// Build and swap in the snapshot of `w`, then run the watchers.
    fn publish(&self, w: &Writer) {
        let mut slots = vec![None; w.slots.len()];
        for (name, &slot) in &w.slots {
            slots[slot] = w.compiled.get(&**name).cloned();
        }
        let snapshot = Arc::new(Snapshot {
            slots,
            by_name: w.slots.clone(),
        });
        self.inner.snapshot.store(snapshot.clone());
        for watch in &w.watchers {
            watch(&snapshot);
        }
    }

    /// Apply `edit` to a copy of the definitions; if every changed flag is valid, swap
    /// the result in and report each change.
    fn update<R>(
        &self,
        by: &str,
        edit: impl FnOnce(&mut BTreeMap<String, FlagDef>, &mut Writer) -> Result<R, FlagError>,
    ) -> Result<R, FlagError> {
        let mut guard = lock(&self.inner.writer);
        let w = &mut *guard;
        let mut defs = w.defs.clone();
        let out = edit(&mut defs, w)?;
        let mut compiled = BTreeMap::new();
        let mut changes = Vec::new();
        for (name, def) in &defs {
            let old = w.defs.get(name);
            let c = match (old, w.compiled.get(name)) {
                (Some(o), Some(c)) if o == def => c.clone(),
                _ => Arc::new(compile(name, def)?),
            };
            compiled.insert(name.clone(), c);
            let change = match old {
                None => Some("created"),
                Some(o) if o == def => None,
                Some(o) if o.enabled && !def.enabled => Some("killed"),
                Some(o) if !o.enabled && def.enabled => Some("enabled"),
                Some(_) => Some("updated"),
            };
            if let Some(change) = change {
                changes.push((name.clone(), change));
            }
        }
        for name in w.defs.keys() {
            if !defs.contains_key(name) {
                changes.push((name.clone(), "removed"));
            }
        }
        for name in defs.keys() {
            if !w.slots.contains_key(name.as_str()) {
                let slot = w.slots.len();
                w.slots.insert(name.as_str().into(), slot);
            }
        }
        w.defs = defs;
        w.compiled = compiled;
        self.publish(w);
        drop(guard);
        for (flag, change) in &changes {
            self.inner.observer.emit(&Event::FlagChanged {
                name: &self.inner.name,
                flag,
                change,
                by,
            });
        }
        Ok(out)
    }

    /// Changes made on behalf of `who` (an operator, a file): every change is reported
    /// as [`Event::FlagChanged`] with `by` set to `who`. The methods on `FlagStore`
    /// itself report `by = "api"`.
    pub fn by<'a>(&'a self, who: &'a str) -> FlagEditor<'a> {
        FlagEditor {
            store: self,
            by: who,
        }
    }

    /// Create or replace a flag.
    pub fn set(&self, name: &str, def: FlagDef) -> Result<(), FlagError> {
        self.by("api").set(name, def)
    }

    /// Switch a flag off for everyone (the kill switch).
    pub fn kill(&self, name: &str) -> Result<(), FlagError> {
        self.by("api").kill(name)
    }

    /// Switch a killed flag back on (its targeting applies again).
    pub fn enable(&self, name: &str) -> Result<(), FlagError> {
        self.by("api").enable(name)
    }

    /// Change a flag's rollout percentage (adding a rollout if it has none).
    pub fn set_percentage(&self, name: &str, percentage: u8) -> Result<(), FlagError> {
        self.by("api").set_percentage(name, percentage)
    }

    /// Remove a flag: gates on it answer their default, with reason `ERROR`.
    pub fn remove(&self, name: &str) -> Result<(), FlagError> {
        self.by("api").remove(name)
    }

    /// A flag's definition.
    pub fn get(&self, name: &str) -> Option<FlagDef> {
        lock(&self.inner.writer).defs.get(name).cloned()
    }

    /// Every flag's definition, by name.
    pub fn flags(&self) -> BTreeMap<String, FlagDef> {
        lock(&self.inner.writer).defs.clone()
    }

    /// The flags' names.
    pub fn names(&self) -> Vec<String> {
        lock(&self.inner.writer).defs.keys().cloned().collect()
    }

    /// Evaluate `flag` for `ctx`. A missing flag gives `false` with reason `ERROR`. A
    /// failed evaluation is reported as [`Event::FlagEvaluationFailed`].
    pub fn details(&self, flag: &str, ctx: &EvalContext) -> FlagDetails {
        self.value_details(flag, ctx, FlagValue::Bool(false))
    }

    /// Evaluate `flag` for `ctx`, with `default` as the value on error.
    pub fn value_details(&self, flag: &str, ctx: &EvalContext, default: FlagValue) -> FlagDetails {
        let snapshot = self.load();
        let d = eval::details(flag, snapshot.by_name(flag), ctx, &default);
        self.report(&d);
        d
    }

    /// Evaluate `flag` as a boolean: `default` on error, including a flag whose value is
    /// not a boolean (`TYPE_MISMATCH`).
    pub fn bool_details(&self, flag: &str, ctx: &EvalContext, default: bool) -> FlagDetails {
        let mut d = self.value_details(flag, ctx, FlagValue::Bool(default));
        if d.value.as_bool().is_none() {
            d = FlagDetails::error(
                d.flag,
                FlagValue::Bool(default),
                super::eval::ErrorCode::TypeMismatch,
            );
            self.report(&d);
        }
        d
    }

    /// Whether the boolean flag `flag` is on for `ctx` (`false` on error).
    pub fn is_enabled(&self, flag: &str, ctx: &EvalContext) -> bool {
        self.bool_details(flag, ctx, false).value == FlagValue::Bool(true)
    }

    fn report(&self, d: &FlagDetails) {
        if let Some(error) = d.error_code {
            self.inner.observer.emit(&Event::FlagEvaluationFailed {
                name: &self.inner.name,
                flag: &d.flag,
                error,
            });
        }
    }

    /// Keep `mode` in step with `flag`, evaluated with an empty context, now and after
    /// every change of the store, before the change returns: an operator switches a rate
    /// limiter or a breaker to shadow by changing a flag.
    ///
    /// A string value `"enforce"`, `"shadow"` or `"off"` is that mode; `true` is
    /// [`Mode::Enforce`] and `false` is `when_false` (e.g. [`Mode::Shadow`]: the layer
    /// keeps deciding and reporting, but lets everything through). Anything else — a
    /// missing flag, another string — leaves the mode as it is and is reported as
    /// [`Event::FlagEvaluationFailed`]. Each change of mode is reported as
    /// [`Event::ModeChanged`]. The binding lasts as long as the store.
    ///
    /// ```
    /// use tower_parapet::{Mode, ModeHandle};
    /// use tower_parapet::flags::{FlagDef, FlagStore};
    ///
    /// let flags = FlagStore::new();
    /// flags.set("limiter-mode", FlagDef::variants(["enforce", "shadow", "off"], "enforce")).unwrap();
    /// let mode = ModeHandle::new(Mode::Enforce); // e.g. `rate_limit_layer.mode_handle()`
    /// flags.bind_mode("limiter-mode", mode.clone(), Mode::Shadow);
    ///
    /// let mut def = flags.get("limiter-mode").unwrap();
    /// def.default_variant = "shadow".into();
    /// flags.set("limiter-mode", def).unwrap();
    /// assert_eq!(mode.get(), Mode::Shadow);
    /// ```
    pub fn bind_mode(&self, flag: &str, mode: ModeHandle, when_false: Mode) {
        let flag: Arc<str> = flag.into();
        let store_name = self.inner.name.clone();
        let observer = self.inner.observer.clone();
        let follow = move |snapshot: &Snapshot| {
            let ctx = EvalContext::new();
            let d = eval::details(
                &flag,
                snapshot.by_name(&flag),
                &ctx,
                &FlagValue::Bool(false),
            );
            let target = match (&d.error_code, &d.value) {
                (Some(_), _) => None,
                (None, FlagValue::Bool(true)) => Some(Mode::Enforce),
                (None, FlagValue::Bool(false)) => Some(when_false),
                (None, FlagValue::String(s)) => match s.as_str() {
                    "enforce" => Some(Mode::Enforce),
                    "shadow" => Some(Mode::Shadow),
                    "off" => Some(Mode::Off),
                    _ => None,
                },
            };
            let Some(to) = target else {
                observer.emit(&Event::FlagEvaluationFailed {
                    name: &store_name,
                    flag: &flag,
                    error: d.error_code.unwrap_or(super::eval::ErrorCode::TypeMismatch),
                });
                return;
            };
            let from = mode.set(to);
            if from != to {
                observer.emit(&Event::ModeChanged {
                    name: &store_name,
                    flag: &flag,
                    from,
                    to,
                });
            }
        };
        let mut w = lock(&self.inner.writer);
        follow(&self.load());
        w.watchers.push(Box::new(follow));
    }
}

/// Changes to a [`FlagStore`] made on behalf of someone; see [`FlagStore::by`].
#[derive(Debug)]
pub struct FlagEditor<'a> {
    store: &'a FlagStore,
    by: &'a str,
}

impl FlagEditor<'_> {
    fn edit(
        &self,
        name: &str,
        f: impl FnOnce(&mut FlagDef) -> Result<(), FlagError>,
    ) -> Result<(), FlagError> {
        self.store.update(self.by, |defs, _| {
            let def = defs
                .get_mut(name)
                .ok_or_else(|| FlagError::NotFound(name.into()))?;
            f(def)
        })
    }

    /// Create or replace a flag.
    pub fn set(&self, name: &str, def: FlagDef) -> Result<(), FlagError> {
        compile(name, &def)?;
        self.store.update(self.by, |defs, _| {
            defs.insert(name.to_owned(), def);
            Ok(())
        })
    }

    /// Switch a flag off for everyone (the kill switch).
    pub fn kill(&self, name: &str) -> Result<(), FlagError> {
        self.edit(name, |def| {
            def.enabled = false;
            Ok(())
        })
    }

    /// Switch a killed flag back on.
    pub fn enable(&self, name: &str) -> Result<(), FlagError> {
        self.edit(name, |def| {
            def.enabled = true;
            Ok(())
        })
    }

    /// Change a flag's rollout percentage (adding a rollout if it has none).
    pub fn set_percentage(&self, name: &str, percentage: u8) -> Result<(), FlagError> {
        self.edit(name, |def| {
            match &mut def.rollout {
                Some(r) => r.percentage = percentage,
                None => {
                    def.rollout = Some(super::model::Rollout {
                        percentage,
                        group_id: None,
                        variant: None,
                    })
                }
            }
            Ok(())
        })
    }

    /// Remove a flag.
    pub fn remove(&self, name: &str) -> Result<(), FlagError> {
        self.store.update(self.by, |defs, _| {
            defs.remove(name)
                .map(drop)
                .ok_or_else(|| FlagError::NotFound(name.into()))
        })
    }

    /// Replace every flag with `flags`, after checking each one.
    pub fn replace(
        &self,
        flags: impl IntoIterator<Item = (impl Into<String>, FlagDef)>,
    ) -> Result<(), ConfigError> {
        let flags: BTreeMap<String, FlagDef> =
            flags.into_iter().map(|(n, d)| (n.into(), d)).collect();
        for (name, def) in &flags {
            compile(name, def)?;
        }
        self.store
            .update(self.by, |defs, _| {
                *defs = flags;
                Ok(())
            })
            .map_err(|e| match e {
                FlagError::Invalid(c) => c,
                FlagError::NotFound(n) => ConfigError::new("flags", format!("no flag `{n}`")),
            })
    }

    /// Apply the flags of `source` (e.g. a file): its flags are created or replaced, and
    /// the flags it defined last time but no longer does are removed. Other flags are
    /// left alone. Nothing changes if one flag is invalid.
    pub fn apply_source(
        &self,
        source: &str,
        flags: BTreeMap<String, FlagDef>,
    ) -> Result<(), ConfigError> {
        for (name, def) in &flags {
            compile(name, def)?;
        }
        self.store
            .update(self.by, |defs, w| {
                let before = w.sources.remove(source).unwrap_or_default();
                for gone in before.iter().filter(|n| !flags.contains_key(*n)) {
                    defs.remove(gone);
                }
                w.sources
                    .insert(source.to_owned(), flags.keys().cloned().collect());
                defs.extend(flags);
                Ok(())
            })
            .map_err(|e| match e {
                FlagError::Invalid(c) => c,
                FlagError::NotFound(n) => ConfigError::new("flags", format!("no flag `{n}`")),
            })
    }
}
