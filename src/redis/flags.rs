//! Flags kept in Redis, pushed to every replica by pub/sub.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::Script;

use super::backend::{Arg, BackendError, RedisBackend};
use crate::error::ConfigError;
use crate::flags::{FlagDef, FlagStore};
use crate::observe::Event;

/// Write one flag and tell every subscriber, atomically; the marker field says the hash
/// was written by a source (a flag name cannot contain `/`).
const PUT: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], '/written', '1')
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
";

/// Remove one flag and tell every subscriber (the marker stays: an empty set of flags is
/// a set of flags).
const REMOVE: &str = r"
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], '/written', '1')
redis.call('PUBLISH', ARGV[2], ARGV[1])
return n
";

/// The hash field that marks a written flag set.
const MARKER: &str = "/written";

static PUT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUT));
static REMOVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REMOVE));

/// Why flags could not be read from or written to Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisFlagError {
    /// Redis did not answer in time, or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A flag in Redis is not valid JSON for a [`FlagDef`].
    #[error("flag `{flag}` in redis is not a flag definition: {message}")]
    Parse {
        /// The flag's name.
        flag: String,
        /// What the parser said.
        message: String,
    },
    /// A flag is not valid (in Redis, or given to write).
    #[error("invalid flag: {0}")]
    Invalid(#[from] ConfigError),
    /// No such flag in Redis.
    #[error("no flag `{0}` in redis")]
    NotFound(String),
    /// Redis holds no flag set here: none was ever written, or Redis lost its data (a
    /// restart without persistence, a failover to an empty replica). The last flags stay;
    /// [`RedisFlagSource::publish`] writes a store's flags again.
    #[error(
        "redis holds no flag set at `{0}` (never written, or its data was lost); the last flags stay"
    )]
    Missing(String),
}

/// A flag source in Redis (feature `redis`): every replica's [`FlagStore`] follows one
/// Redis hash, and a change made through any replica reaches all of them at once.
///
/// - **Where.** A hash `prefix:flags:<namespace>` (field: flag name, value: the flag as
///   JSON, the [`FlagDef`] format of flag files), and a channel
///   `prefix:flags:<namespace>:changed`.
/// - **Writing** ([`put`](Self::put), [`kill`](Self::kill), [`enable`](Self::enable),
///   [`set_percentage`](Self::set_percentage), [`remove`](Self::remove),
///   [`publish`](Self::publish)) validates the flag, writes the hash and publishes on
///   the channel in one script. From a shell:
///   `HSET parapet:flags:default checkout '{"enabled":false}' /written 1` then
///   `PUBLISH parapet:flags:default:changed checkout`.
/// - **Following** ([`watch`](Self::watch)): a task subscribes to the channel, reloads
///   the hash on every message (and every [`resync`](Self::resync) interval, default
///   30 s, in case a message was lost), and applies it to the store as one source: its
///   flags are created or replaced, the ones removed from Redis are removed, flags from
///   other sources (a file, the admin router) are left alone. A change reaches every
///   replica within one round trip of Redis; a burst of changes is one reload.
/// - **Redis emptied.** Every write also sets a marker field in the hash; a hash without
///   it (never written, or lost in a restart without persistence or a failover to an
///   empty replica) is [`RedisFlagError::Missing`]: the last flags stay (reported once),
///   never "no flags". [`publish`](Self::publish) writes a store's flags back.
/// - **Redis away.** The store keeps the last flags it loaded, the watcher emits
///   [`Event::FlagSourceFailed`] and resubscribes with backoff (100 ms doubling to 5 s),
///   and reloads as soon as Redis answers. A hash holding an invalid flag is refused as
///   a whole (the last good flags stay) and reported the same way.
///
/// Edits made through a store's own API or the admin router stay on that replica;
/// edit through this source to change the fleet.
#[derive(Clone)]
pub struct RedisFlagSource {
    backend: RedisBackend,
    hash: Arc<str>,
    channel: Arc<str>,
    label: Arc<str>,
    resync: Duration,
}

impl fmt::Debug for RedisFlagSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFlagSource")
            .field("hash", &self.hash)
            .field("channel", &self.channel)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl RedisFlagSource {
    /// The `default` namespace on `backend`.
    pub fn new(backend: RedisBackend) -> RedisFlagSource {
        RedisFlagSource::with_namespace(backend, "default")
    }

    fn with_namespace(backend: RedisBackend, namespace: &str) -> RedisFlagSource {
        let hash = backend.key(&["flags", namespace]);
        RedisFlagSource {
            channel: format!("{hash}:changed").into(),
            label: format!("redis:{hash}").into(),
            hash: hash.into(),
            backend,
            resync: Duration::from_secs(30),
        }
    }

    /// Another set of flags on the same Redis (default `default`).
    #[must_use]
    pub fn namespace(self, namespace: &str) -> Self {
        let resync = self.resync;
        RedisFlagSource {
            resync,
            ..RedisFlagSource::with_namespace(self.backend, namespace)
        }
    }

    /// How often the watcher reloads without being told (default 30 s).
    #[must_use]
    pub fn resync(mut self, every: Duration) -> Self {
        self.resync = every.max(Duration::from_millis(10));
        self
    }

    /// The source's name in the store and in events: `redis:<hash key>`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Every flag in Redis, checked; [`RedisFlagError::Missing`] when Redis holds no flag
    /// set (so an emptied Redis is never taken for "no flags").
    pub async fn fetch(&self) -> Result<BTreeMap<String, FlagDef>, RedisFlagError> {
        let hash = self.hash.to_string();
        let raw: HashMap<String, String> = self
            .backend
            .run(|mut conn| async move {
                Ok(redis::cmd("HGETALL")
                    .arg(hash)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        if !raw.contains_key(MARKER) {
            return Err(RedisFlagError::Missing(self.hash.to_string()));
        }
        let mut flags = BTreeMap::new();
        for (name, json) in raw.into_iter().filter(|(name, _)| name != MARKER) {
            let def: FlagDef = serde_json::from_str(&json).map_err(|e| RedisFlagError::Parse {
                flag: name.clone(),
                message: e.to_string(),
            })?;
            def.validate(&name)?;
            flags.insert(name, def);
        }
        Ok(flags)
    }

    /// Load the flags from Redis into `store` once; reports the outcome to the store's
    /// observer. Returns how many flags Redis holds.
    pub async fn load(&self, store: &FlagStore) -> Result<usize, RedisFlagError> {
        let result = self.fetch_and_apply(store).await;
        store.report_source(&self.label, result.as_ref().map(|n| *n).map_err(|e| e as _));
        result
    }

    async fn fetch_and_apply(&self, store: &FlagStore) -> Result<usize, RedisFlagError> {
        let flags = self.fetch().await?;
        let n = flags.len();
        store
            .by(&self.label)
            .apply_source(&self.label, flags)
            .map(|()| n)
            .map_err(RedisFlagError::from)
    }

    /// Write `def` as flag `name` and tell every replica.
    pub async fn put(&self, name: &str, def: &FlagDef) -> Result<(), RedisFlagError> {
        def.validate(name)?;
        let json = serde_json::to_string(def).map_err(|e| RedisFlagError::Parse {
            flag: name.to_owned(),
            message: e.to_string(),
        })?;
        let keys = [self.hash.to_string()];
        let args = [
            Arg::Bytes(name.as_bytes()),
            Arg::Bytes(json.as_bytes()),
            Arg::Bytes(self.channel.as_bytes()),
        ];
        self.backend.eval::<i64>(&PUT_SCRIPT, &keys, &args).await?;
        Ok(())
    }

    /// Write every flag of `store` to Redis (e.g. to seed it from a file at deployment).
    pub async fn publish(&self, store: &FlagStore) -> Result<usize, RedisFlagError> {
        let flags = store.flags();
        for (name, def) in &flags {
            self.put(name, def).await?;
        }
        Ok(flags.len())
    }

    /// The kill switch: flag `name` off for everyone, on every replica.
    pub async fn kill(&self, name: &str) -> Result<(), RedisFlagError> {
        self.edit(name, |def| def.enabled = false).await
    }

    /// Switch a killed flag back on, on every replica.
    pub async fn enable(&self, name: &str) -> Result<(), RedisFlagError> {
        self.edit(name, |def| def.enabled = true).await
    }

    /// Change a flag's rollout percentage (adding a rollout if it has none).
    pub async fn set_percentage(&self, name: &str, percentage: u8) -> Result<(), RedisFlagError> {
        self.edit(name, |def| match &mut def.rollout {
            Some(rollout) => rollout.percentage = percentage,
            None => {
                def.rollout = Some(crate::flags::Rollout {
                    percentage,
                    group_id: None,
                    variant: None,
                });
            }
        })
        .await
    }

    /// Remove flag `name` from Redis; `false` if it was not there.
    pub async fn remove(&self, name: &str) -> Result<bool, RedisFlagError> {
        let keys = [self.hash.to_string()];
        let args = [
            Arg::Bytes(name.as_bytes()),
            Arg::Bytes(self.channel.as_bytes()),
        ];
        let removed: i64 = self.backend.eval(&REMOVE_SCRIPT, &keys, &args).await?;
        Ok(removed == 1)
    }

    /// Read, change and write one flag. Two editors changing the same flag at the same
    /// moment: the last write wins.
    async fn edit(
        &self,
        name: &str,
        change: impl FnOnce(&mut FlagDef),
    ) -> Result<(), RedisFlagError> {
        let hash = self.hash.to_string();
        let field = name.to_owned();
        let json: Option<String> = self
            .backend
            .run(|mut conn| async move {
                Ok(redis::cmd("HGET")
                    .arg(hash)
                    .arg(field)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        let json = json.ok_or_else(|| RedisFlagError::NotFound(name.to_owned()))?;
        let mut def: FlagDef = serde_json::from_str(&json).map_err(|e| RedisFlagError::Parse {
            flag: name.to_owned(),
            message: e.to_string(),
        })?;
        change(&mut def);
        self.put(name, &def).await
    }

    /// Follow Redis on a tokio task: load now, then on every change message (see the type's
    /// docs). Abort the handle to stop.
    pub fn watch(self, store: FlagStore) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            // One failure event per outage, not one per attempt.
            let mut reported = false;
            // Whether the last reload found no flag set (reported once, not every resync).
            let mut missing = false;
            loop {
                match self.subscribe().await {
                    Ok(pubsub) => {
                        backoff = Duration::from_millis(100);
                        // Changes made while unsubscribed.
                        self.reload(&store, &mut missing).await;
                        let mut messages = pubsub.into_on_message();
                        loop {
                            match tokio::time::timeout(self.resync, messages.next()).await {
                                // The connection is gone.
                                Ok(None) => break,
                                Ok(Some(_)) => {
                                    // A burst of changes (a `publish` of many flags) is
                                    // one reload.
                                    let mut gone = false;
                                    loop {
                                        match messages.next().now_or_never() {
                                            Some(Some(_)) => {}
                                            Some(None) => {
                                                gone = true;
                                                break;
                                            }
                                            None => break,
                                        }
                                    }
                                    self.reload(&store, &mut missing).await;
                                    if gone {
                                        break;
                                    }
                                }
                                Err(_) => self.reload(&store, &mut missing).await,
                            }
                        }
                        store.observer().emit(&Event::FlagSourceFailed {
                            name: store.name(),
                            source: &self.label,
                            error: &BackendError::Protocol(
                                "subscription lost; the last flags stay".into(),
                            ),
                        });
                        reported = true;
                    }
                    Err(error) if !reported => {
                        store.observer().emit(&Event::FlagSourceFailed {
                            name: store.name(),
                            source: &self.label,
                            error: &error,
                        });
                        reported = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }

    /// One reload for the watcher: a missing flag set is reported when it starts being
    /// missing, other outcomes every time.
    async fn reload(&self, store: &FlagStore, missing: &mut bool) {
        let result = self.fetch_and_apply(store).await;
        let now_missing = matches!(result, Err(RedisFlagError::Missing(_)));
        if !(now_missing && *missing) {
            store.report_source(&self.label, result.as_ref().map(|n| *n).map_err(|e| e as _));
        }
        *missing = now_missing;
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, BackendError> {
        let timeout = self.backend.timeout();
        let connect = async {
            let mut pubsub = self.backend.client().get_async_pubsub().await?;
            pubsub.subscribe(&*self.channel).await?;
            Ok::<_, BackendError>(pubsub)
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or(Err(BackendError::Timeout(timeout)))
    }
}
