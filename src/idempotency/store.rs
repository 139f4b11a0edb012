//! Where idempotency records live: the [`IdempotencyStore`] trait and the in-process
//! [`MemoryStore`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode, Version};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::Clock;

/// What identifies a record: principal, method, route and the client's key, joined.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RecordKey(Arc<str>);

impl RecordKey {
    /// A key from its parts. The parts are joined with a separator (U+001F) that none of
    /// them can contain unescaped, so different parts never give the same key.
    pub fn new(principal: &str, method: &str, route: &str, key: &str) -> RecordKey {
        let escaped = principal.replace('\u{1f}', "\\u{1f}");
        RecordKey(format!("{escaped}\u{1f}{method}\u{1f}{route}\u{1f}{key}").into())
    }

    /// The joined form, e.g. for a remote store's key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<&str> = self.0.split('\u{1f}').collect();
        f.debug_tuple("RecordKey").field(&shown).finish()
    }
}

/// A digest of the request (method, path and query, chosen headers, body): the same key
/// with another fingerprint is a different request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// A response kept for replay.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// The status.
    pub status: StatusCode,
    /// The HTTP version.
    pub version: Version,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The trailers (gRPC's `grpc-status` travels here), if any.
    pub trailers: Option<HeaderMap>,
}

impl StoredResponse {
    /// Its size in bytes (body, header and trailer names and values).
    pub fn weight(&self) -> usize {
        let headers =
            |h: &HeaderMap| -> usize { h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum() };
        self.body.len() + headers(&self.headers) + self.trailers.as_ref().map_or(0, headers)
    }
}

/// A finished request: its fingerprint and its response.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The request's fingerprint.
    pub fingerprint: Fingerprint,
    /// The response to replay.
    pub response: StoredResponse,
}

/// Proof of a claim, given back to complete or release it. A claim taken over after its
/// lease ran out has a new token, so its former holder can no longer touch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimToken(pub u64);

/// The answer to [`IdempotencyStore::claim`].
#[non_exhaustive]
pub enum Claim {
    /// The key was free: the caller holds it until it completes or releases it, or the
    /// lease runs out.
    Acquired(ClaimToken),
    /// Another request holds the key.
    InFlight {
        /// Whether that request has the same fingerprint.
        same_request: bool,
        /// Resolves when the holder completes or releases the key, or its lease ends.
        /// Created at claim time, so no ending can be missed.
        ended: BoxFuture<'static, ()>,
    },
    /// The key's request finished and its record is kept.
    Done {
        /// Whether the record's request has the same fingerprint.
        same_request: bool,
        /// The record.
        record: Arc<Record>,
    },
    /// The store holds as many claims as it may; try again later.
    Full,
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Acquired(t) => f.debug_tuple("Acquired").field(t).finish(),
            Claim::InFlight { same_request, .. } => f
                .debug_struct("InFlight")
                .field("same_request", same_request)
                .finish_non_exhaustive(),
            Claim::Done { same_request, .. } => f
                .debug_struct("Done")
                .field("same_request", same_request)
                .finish_non_exhaustive(),
            Claim::Full => f.write_str("Full"),
        }
    }
}

/// A store could not be reached or answered nonsense.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store failed: {0}")]
pub struct StoreError(#[source] pub crate::BoxError);

/// Where claims and records live. The in-process [`MemoryStore`] is the default; a shared
/// store (Redis) lets several instances see the same keys.
///
/// Every operation on one key must be atomic with respect to the others on that key.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claim `key` for a request with `fingerprint`, for `lease` at most; or say who has
    /// it.
    fn claim<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// Replace the claim `token` on `key` with `record`, kept for `retention`. Returns
    /// `false` when the claim was no longer held (its lease ran out and another request
    /// took the key): the record is then not kept.
    fn complete<'a>(
        &'a self,
        key: &'a RecordKey,
        token: ClaimToken,
        record: Arc<Record>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Free the claim `token` on `key` without a record, so the client may try again.
    /// Called from `Drop` (a dropped or panicking request): it must not block. A remote
    /// store spawns the work, and the lease frees the key if that fails.
    fn release(&self, key: &RecordKey, token: ClaimToken);
}

struct Claimed {
    fingerprint: Fingerprint,
    token: ClaimToken,
    until: Instant,
    ended: watch::Sender<bool>,
}

impl Claimed {
    fn end(&self) {
        self.ended.send_replace(true);
    }
}

struct Finished {
    record: Arc<Record>,
    until: Instant,
    retention: Duration,
}

/// The in-process store, on two `moka` caches: claims in flight (never evicted; their
/// number is bounded by [`max_in_flight`](MemoryStore::max_in_flight), past which claims
/// are refused with [`Claim::Full`]) and finished records (bounded by entry count and by
/// bytes, expiring after their retention; an evicted record's key is free again).
///
/// Expiry is checked on the [`Clock`] (tokio's by default), so paused-time tests see
/// records and leases expire exactly; `moka` also drops records after their retention
/// on its own clock, to free memory.
pub struct MemoryStore {
    claims: moka::sync::Cache<RecordKey, Arc<Claimed>>,
    records: moka::sync::Cache<RecordKey, Arc<Finished>>,
    in_flight: AtomicUsize,
    max_in_flight: usize,
    tokens: AtomicU64,
    clock: Clock,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("records", &self.records.entry_count())
            .finish_non_exhaustive()
    }
}

struct ByRetention;

impl moka::Expiry<RecordKey, Arc<Finished>> for ByRetention {
    fn expire_after_create(
        &self,
        _: &RecordKey,
        value: &Arc<Finished>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.retention)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(100_000, 256 << 20)
    }
}

impl MemoryStore {
    /// At most `max_records` finished records holding at most `max_bytes` of responses
    /// (each record counts as at least `max_bytes / max_records`, so both bounds hold).
    pub fn new(max_records: u64, max_bytes: u64) -> MemoryStore {
        MemoryStore::with_clock(max_records, max_bytes, Clock::tokio())
    }

    /// The same, reading time from `clock`.
    pub fn with_clock(max_records: u64, max_bytes: u64, clock: Clock) -> MemoryStore {
        let max_records = max_records.max(1);
        let max_bytes = max_bytes.max(max_records);
        let floor = u32::try_from(max_bytes / max_records).unwrap_or(u32::MAX);
        MemoryStore {
            claims: moka::sync::Cache::builder().build(),
            records: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |k: &RecordKey, v: &Arc<Finished>| {
                    let bytes = v.record.response.weight() + k.as_str().len();
                    u32::try_from(bytes).unwrap_or(u32::MAX).max(floor)
                })
                .expire_after(ByRetention)
                .build(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: 10_000,
            tokens: AtomicU64::new(1),
            clock,
        }
    }

    /// Refuse new claims while this many are in flight (default 10 000).
    #[must_use]
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Claims in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Finished records kept now (after pending evictions).
    pub fn records(&self) -> u64 {
        self.records.run_pending_tasks();
        self.records.entry_count()
    }

    fn claim_now(&self, key: &RecordKey, fingerprint: Fingerprint, lease: Duration) -> Claim {
        let now = self.clock.now();
        let mut answer = None;
        // Per-key atomic: every change of a key's claim happens in such a closure.
        self.claims.entry_by_ref(key).and_compute_with(|current| {
            if let Some(entry) = current {
                let held = entry.into_value();
                if held.until > now {
                    let mut ended = held.ended.subscribe();
                    let until = held.until;
                    answer = Some(Claim::InFlight {
                        same_request: held.fingerprint == fingerprint,
                        ended: Box::pin(async move {
                            let _ = tokio::time::timeout_at(until, ended.wait_for(|e| *e)).await;
                        }),
                    });
                    return moka::ops::compute::Op::Nop;
                }
                // The lease ran out: the holder is gone. Wake its waiters; the key
                // is taken over below.
                held.end();
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            if let Some(done) = self.records.get(key) {
                if done.until > now {
                    answer = Some(Claim::Done {
                        same_request: done.record.fingerprint == fingerprint,
                        record: done.record.clone(),
                    });
                    return moka::ops::compute::Op::Remove;
                }
                self.records.invalidate(key);
            }
            if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                answer = Some(Claim::Full);
                return moka::ops::compute::Op::Remove;
            }
            let token = ClaimToken(self.tokens.fetch_add(1, Ordering::Relaxed));
            answer = Some(Claim::Acquired(token));
            moka::ops::compute::Op::Put(Arc::new(Claimed {
                fingerprint,
                token,
                until: now.checked_add(lease).unwrap_or(far_future(now)),
                ended: watch::channel(false).0,
            }))
        });
        answer.unwrap_or(Claim::Full)
    }

    /// End the claim `token` on `key`, keeping `record` if there is one.
    fn end_claim(
        &self,
        key: &RecordKey,
        token: ClaimToken,
        record: Option<(Arc<Record>, Duration)>,
    ) -> bool {
        let mut ended = false;
        self.claims.entry_by_ref(key).and_compute_with(|current| {
            let Some(entry) = current else {
                return moka::ops::compute::Op::Nop;
            };
            let held = entry.into_value();
            if held.token != token {
                return moka::ops::compute::Op::Nop;
            }
            if let Some((record, retention)) = record.clone() {
                let until = self
                    .clock
                    .now()
                    .checked_add(retention)
                    .unwrap_or(far_future(self.clock.now()));
                self.records.insert(
                    key.clone(),
                    Arc::new(Finished {
                        record,
                        until,
                        retention,
                    }),
                );
            }
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            held.end();
            ended = true;
            moka::ops::compute::Op::Remove
        });
        ended
    }
}

fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(100 * 365 * 86_400)
}

impl IdempotencyStore for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let claim = self.claim_now(key, fingerprint, lease);
        Box::pin(std::future::ready(Ok(claim)))
    }

    fn complete<'a>(
        &'a self,
        key: &'a RecordKey,
        token: ClaimToken,
        record: Arc<Record>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let kept = self.end_claim(key, token, Some((record, retention)));
        Box::pin(std::future::ready(Ok(kept)))
    }

    fn release(&self, key: &RecordKey, token: ClaimToken) {
        self.end_claim(key, token, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fp: u8, body: &'static str) -> Arc<Record> {
        Arc::new(Record {
            fingerprint: Fingerprint([fp; 32]),
            response: StoredResponse {
                status: StatusCode::CREATED,
                version: Version::HTTP_11,
                headers: HeaderMap::new(),
                body: Bytes::from_static(body.as_bytes()),
                trailers: None,
            },
        })
    }

    fn key(k: &str) -> RecordKey {
        RecordKey::new("alice", "POST", "/pay", k)
    }

    const LEASE: Duration = Duration::from_secs(60);
    const DAY: Duration = Duration::from_secs(86_400);

    #[tokio::test(start_paused = true)]
    async fn claim_complete_replay_expire() {
        let store = MemoryStore::default();
        let fp = Fingerprint([1; 32]);
        let Claim::Acquired(token) = store.claim_now(&key("k"), fp, LEASE) else {
            panic!("first claim")
        };
        assert!(matches!(
            store.claim_now(&key("k"), fp, LEASE),
            Claim::InFlight {
                same_request: true,
                ..
            }
        ));
        assert!(matches!(
            store.claim_now(&key("k"), Fingerprint([2; 32]), LEASE),
            Claim::InFlight {
                same_request: false,
                ..
            }
        ));
        assert!(store.end_claim(&key("k"), token, Some((record(1, "paid"), DAY))));
        assert_eq!(store.in_flight(), 0);
        match store.claim_now(&key("k"), fp, LEASE) {
            Claim::Done {
                same_request: true,
                record,
            } => {
                assert_eq!(record.response.body, "paid")
            }
            other => panic!("{other:?}"),
        }
        tokio::time::advance(DAY).await;
        assert!(matches!(
            store.claim_now(&key("k"), fp, LEASE),
            Claim::Acquired(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn release_frees_the_key_and_wakes_waiters() {
        let store = MemoryStore::default();
        let fp = Fingerprint([1; 32]);
        let Claim::Acquired(token) = store.claim_now(&key("k"), fp, LEASE) else {
            panic!()
        };
        let Claim::InFlight { ended, .. } = store.claim_now(&key("k"), fp, LEASE) else {
            panic!()
        };
        store.release(&key("k"), ClaimToken(token.0 + 1000));
        assert_eq!(store.in_flight(), 1, "a wrong token releases nothing");
        store.release(&key("k"), token);
        tokio::time::timeout(Duration::from_millis(1), ended)
            .await
            .expect("waiter woken");
        assert!(matches!(
            store.claim_now(&key("k"), fp, LEASE),
            Claim::Acquired(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_taken_over_and_its_holder_cannot_complete() {
        let store = MemoryStore::default();
        let fp = Fingerprint([1; 32]);
        let Claim::Acquired(old) = store.claim_now(&key("k"), fp, LEASE) else {
            panic!()
        };
        tokio::time::advance(LEASE).await;
        let Claim::Acquired(new) = store.claim_now(&key("k"), fp, LEASE) else {
            panic!("lease over: the key is free")
        };
        assert_ne!(old, new);
        assert!(!store.end_claim(&key("k"), old, Some((record(1, "late"), DAY))));
        assert_eq!(store.in_flight(), 1);
        assert!(store.end_claim(&key("k"), new, Some((record(1, "ok"), DAY))));
        assert_eq!(store.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn claims_beyond_the_in_flight_bound_are_refused() {
        let store = MemoryStore::default().max_in_flight(2);
        let fp = Fingerprint([1; 32]);
        assert!(matches!(
            store.claim_now(&key("a"), fp, LEASE),
            Claim::Acquired(_)
        ));
        assert!(matches!(
            store.claim_now(&key("b"), fp, LEASE),
            Claim::Acquired(_)
        ));
        assert!(matches!(store.claim_now(&key("c"), fp, LEASE), Claim::Full));
        assert_eq!(store.in_flight(), 2);
    }

    #[test]
    fn record_keys_do_not_collide_across_parts() {
        assert_ne!(
            RecordKey::new("a\u{1f}b", "POST", "/", "k"),
            RecordKey::new("a", "b\u{1f}POST", "/", "k")
        );
        assert_ne!(RecordKey::new("alice", "POST", "/pay", "k"), key("k2"));
    }
}
