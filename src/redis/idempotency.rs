//! Idempotency claims and records in Redis.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use redis::Script;
use sha2::{Digest, Sha256};

use super::backend::{Arg, BackendError, RedisBackend};
use crate::idempotency::{
    Claim, ClaimToken, Fingerprint, IdempotencyStore, Record, RecordKey, StoreError, StoredResponse,
};

/// Claim the key if nothing is there (`SET NX` with the lease), else answer what is there.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return false
";

/// Replace our claim (found by its 10-byte prefix: tag, version, token) with the record,
/// kept for the retention.
const COMPLETE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 10) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Free our claim.
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 10) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Extend our claim's lease.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 10) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM));
static COMPLETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(COMPLETE));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));

/// The most headers (or trailers) a stored response may have.
const MAX_HEADERS: usize = 8_192;

/// Format version of the values this store writes.
const VERSION: u8 = 1;

/// An [`IdempotencyStore`] in Redis (feature `redis`): instances sharing one Redis dedupe
/// each other's duplicates.
///
/// - **One Redis key per record key** (`prefix:idem:<sha256 of the record key>`), holding
///   either a claim (token and fingerprint) or the finished record (fingerprint and the
///   whole response: status, headers, body, trailers).
/// - **Atomic claim.** A Lua script reads the key and, if it is empty, sets the claim
///   with `SET NX PX <lease>`: of two instances claiming at once, one gets it, the other
///   sees the claim (in flight, same or different fingerprint). Completing, releasing
///   and renewing check the claim's token in a script too, so a request whose lease ran
///   out and was taken over can no longer touch the key.
/// - **The lease is renewed** while the handler runs (every third of the lease, for at
///   most [`max_hold`](RedisIdempotencyStore::max_hold), default one hour), so a slow
///   handler keeps its claim; if the instance dies, the lease frees the key.
/// - **Records expire** with the layer's retention (Redis `PX`).
/// - **Waiting for a holder** (`Conflict::Wait`) polls the key every
///   [`poll_interval`](RedisIdempotencyStore::poll_interval) (default 20 ms) until the
///   claim ends or its lease would have.
/// - **Releasing** from `Drop` spawns the script on the runtime; if that fails, the
///   lease frees the key.
/// - **Redis down or slow**: every operation is bounded by the backend's timeout and
///   fails with a [`StoreError`]; the layer then follows its
///   [`on_store_error`](crate::idempotency::IdempotencyLayer::on_store_error) policy.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_parapet::idempotency::IdempotencyLayer;
/// use tower_parapet::redis::{FailurePolicy, RedisBackend, RedisIdempotencyStore};
///
/// let backend = RedisBackend::new("redis://127.0.0.1:6379/")?;
/// let layer = IdempotencyLayer::new()
///     .store(RedisIdempotencyStore::new(backend))
///     .on_store_error(FailurePolicy::FailClosed);
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisIdempotencyStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: RedisBackend,
    poll_interval: Duration,
    max_hold: Duration,
    random: RandomState,
    counter: AtomicU64,
    renewals: moka::sync::Cache<u64, tokio::task::AbortHandle>,
}

impl fmt::Debug for RedisIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisIdempotencyStore")
            .field("backend", &self.inner.backend)
            .field("poll_interval", &self.inner.poll_interval)
            .field("max_hold", &self.inner.max_hold)
            .finish_non_exhaustive()
    }
}

impl RedisIdempotencyStore {
    /// A store on `backend`.
    pub fn new(backend: RedisBackend) -> RedisIdempotencyStore {
        RedisIdempotencyStore::build(
            backend,
            Duration::from_millis(20),
            Duration::from_secs(3600),
        )
    }

    fn build(backend: RedisBackend, poll: Duration, max_hold: Duration) -> RedisIdempotencyStore {
        RedisIdempotencyStore {
            inner: Arc::new(Inner {
                backend,
                poll_interval: poll,
                max_hold,
                random: RandomState::new(),
                counter: AtomicU64::new(0),
                renewals: moka::sync::Cache::builder().build(),
            }),
        }
    }

    /// How often a waiting duplicate looks whether the first request finished (default
    /// 20 ms, at least 1 ms).
    #[must_use]
    pub fn poll_interval(self, every: Duration) -> Self {
        let every = every.max(Duration::from_millis(1));
        RedisIdempotencyStore::build(self.inner.backend.clone(), every, self.inner.max_hold)
    }

    /// The longest a claim is kept alive by renewal (default one hour): past it, a
    /// handler still running loses its claim when the lease ends.
    #[must_use]
    pub fn max_hold(self, max: Duration) -> Self {
        RedisIdempotencyStore::build(self.inner.backend.clone(), self.inner.poll_interval, max)
    }

    /// Claims being renewed now (handlers running on this instance).
    pub fn renewing(&self) -> u64 {
        self.inner.renewals.run_pending_tasks();
        self.inner.renewals.entry_count()
    }

    fn key(&self, key: &RecordKey) -> String {
        let digest = Sha256::digest(key.as_str().as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.inner.backend.key(&["idem", &hex])
    }

    fn token(&self) -> ClaimToken {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        // Random per store (std's random keys) and distinct per claim: two instances
        // never hand out the same token in practice (64 random bits).
        ClaimToken(self.inner.random.hash_one(n) | 1)
    }

    fn stop_renewing(&self, token: ClaimToken) {
        if let Some(task) = self.inner.renewals.remove(&token.0) {
            task.abort();
        }
    }

    fn start_renewing(&self, key: String, token: ClaimToken, lease: Duration) {
        let backend = self.inner.backend.clone();
        let every = (lease / 3).max(Duration::from_millis(1));
        let max_hold = self.inner.max_hold;
        let lease_ms = millis(lease);
        let renewals = self.inner.renewals.clone();
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let keys = [key];
            loop {
                tokio::time::sleep(every).await;
                if started.elapsed() >= max_hold {
                    break;
                }
                let prefix = claim_prefix(token);
                let args = [Arg::Bytes(&prefix), Arg::Int(lease_ms)];
                match backend.eval::<i64>(&RENEW_SCRIPT, &keys, &args).await {
                    Ok(1) => {}
                    // The claim is gone (completed, released, or taken over).
                    Ok(_) => break,
                    // Redis is away: keep trying while the lease may still stand.
                    Err(_) => {}
                }
            }
            renewals.invalidate(&token.0);
        });
        self.inner.renewals.insert(token.0, task.abort_handle());
        // A task that already ended (a tiny `max_hold`) removed nothing: remove it here.
        if task.is_finished() {
            self.inner.renewals.invalidate(&token.0);
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn store_error(e: BackendError) -> StoreError {
    StoreError(Box::new(e))
}

/// `C`, version, token, fingerprint.
fn claim_value(token: ClaimToken, fingerprint: Fingerprint) -> Vec<u8> {
    let mut v = claim_prefix(token).to_vec();
    v.extend_from_slice(&fingerprint.0);
    v
}

/// `C`, version, token: what identifies our claim.
fn claim_prefix(token: ClaimToken) -> [u8; 10] {
    let mut v = [0; 10];
    v[0] = b'C';
    v[1] = VERSION;
    v[2..].copy_from_slice(&token.0.to_be_bytes());
    v
}

/// What a key holds.
enum Held {
    Claim(Fingerprint),
    Record(Arc<Record>),
}

fn decode(value: &[u8]) -> Result<Held, BackendError> {
    let bad = |what: &str| BackendError::Protocol(format!("idempotency value: {what}"));
    let mut buf = value;
    if buf.len() < 2 + 32 || buf[1] != VERSION {
        return Err(bad("unknown format"));
    }
    let tag = buf.get_u8();
    buf.advance(1);
    match tag {
        b'C' => {
            if buf.len() != 8 + 32 {
                return Err(bad("claim of the wrong size"));
            }
            buf.advance(8);
            Ok(Held::Claim(Fingerprint(
                buf.try_into().map_err(|_| bad("fingerprint"))?,
            )))
        }
        b'R' => {
            let fingerprint = Fingerprint(buf[..32].try_into().map_err(|_| bad("fingerprint"))?);
            buf.advance(32);
            let response = decode_response(&mut buf).ok_or_else(|| bad("truncated response"))?;
            Ok(Held::Record(Arc::new(Record {
                fingerprint,
                response,
            })))
        }
        _ => Err(bad("unknown tag")),
    }
}

/// `R`, version, fingerprint, then the response.
fn encode_record(record: &Record) -> Vec<u8> {
    let r = &record.response;
    let mut out = BytesMut::with_capacity(64 + r.weight());
    out.put_u8(b'R');
    out.put_u8(VERSION);
    out.put_slice(&record.fingerprint.0);
    out.put_u16(r.status.as_u16());
    out.put_u8(match r.version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    });
    encode_headers(&mut out, &r.headers);
    out.put_u32(u32::try_from(r.body.len()).unwrap_or(u32::MAX));
    out.put_slice(&r.body[..r.body.len().min(u32::MAX as usize)]);
    match &r.trailers {
        Some(t) => {
            out.put_u8(1);
            encode_headers(&mut out, t);
        }
        None => out.put_u8(0),
    }
    out.to_vec()
}

fn encode_headers(out: &mut BytesMut, headers: &HeaderMap) {
    out.put_u32(u32::try_from(headers.len()).unwrap_or(u32::MAX));
    for (name, value) in headers {
        out.put_u16(u16::try_from(name.as_str().len()).unwrap_or(u16::MAX));
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
        out.put_slice(value.as_bytes());
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Some(head)
}

fn decode_headers(buf: &mut &[u8]) -> Option<HeaderMap> {
    if buf.len() < 4 {
        return None;
    }
    let count = buf.get_u32() as usize;
    // Each header takes at least 6 bytes: a count past what the value holds is corrupt,
    // and one past `MAX_HEADERS` is not a response this store wrote (a `HeaderMap` that
    // large would panic).
    if count > buf.len() / 6 || count > MAX_HEADERS {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        if buf.len() < 2 {
            return None;
        }
        let n = buf.get_u16() as usize;
        let name = HeaderName::from_bytes(take(buf, n)?).ok()?;
        if buf.len() < 4 {
            return None;
        }
        let n = buf.get_u32() as usize;
        let value = HeaderValue::from_bytes(take(buf, n)?).ok()?;
        headers.append(name, value);
    }
    Some(headers)
}

fn decode_response(buf: &mut &[u8]) -> Option<StoredResponse> {
    if buf.len() < 3 {
        return None;
    }
    let status = StatusCode::from_u16(buf.get_u16()).ok()?;
    let version = match buf.get_u8() {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => Version::HTTP_11,
    };
    let headers = decode_headers(buf)?;
    if buf.len() < 4 {
        return None;
    }
    let n = buf.get_u32() as usize;
    let body = Bytes::copy_from_slice(take(buf, n)?);
    let trailers = match take(buf, 1)? {
        [0] => None,
        _ => Some(decode_headers(buf)?),
    };
    buf.is_empty().then_some(StoredResponse {
        status,
        version,
        headers,
        body,
        trailers,
    })
}

impl IdempotencyStore for RedisIdempotencyStore {
    fn claim<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let token = self.token();
            let claim = claim_value(token, fingerprint);
            let keys = [self.key(key)];
            let args = [Arg::Bytes(&claim), Arg::Int(millis(lease))];
            // Until Redis's answer is read, the claim may have been taken without anyone
            // knowing (the answer came after the timeout, or the request was dropped
            // meanwhile): the guard then frees it by its token, so a retry is not told
            // "in flight" for a whole lease.
            let mut unknown = Unclaim {
                store: self,
                key,
                token,
                lease,
                armed: true,
            };
            let held: Option<Vec<u8>> = self
                .inner
                .backend
                .eval(&CLAIM_SCRIPT, &keys, &args)
                .await
                .map_err(store_error)?;
            unknown.armed = false;
            let Some(value) = held else {
                let [key] = keys;
                self.start_renewing(key, token, lease);
                return Ok(Claim::Acquired(token));
            };
            match decode(&value).map_err(store_error)? {
                Held::Record(record) => Ok(Claim::Done {
                    same_request: record.fingerprint == fingerprint,
                    record,
                }),
                Held::Claim(theirs) => {
                    let [key] = keys;
                    Ok(Claim::InFlight {
                        same_request: theirs == fingerprint,
                        ended: Box::pin(wait_for_end(
                            self.inner.backend.clone(),
                            key,
                            value,
                            lease,
                            self.inner.poll_interval,
                        )),
                    })
                }
            }
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a RecordKey,
        token: ClaimToken,
        record: Arc<Record>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            self.stop_renewing(token);
            let prefix = claim_prefix(token);
            let value = encode_record(&record);
            let keys = [self.key(key)];
            let args = [
                Arg::Bytes(&prefix),
                Arg::Bytes(&value),
                Arg::Int(millis(retention)),
            ];
            let kept: i64 = self
                .inner
                .backend
                .eval(&COMPLETE_SCRIPT, &keys, &args)
                .await
                .map_err(store_error)?;
            Ok(kept == 1)
        })
    }

    fn release(&self, key: &RecordKey, token: ClaimToken) {
        self.stop_renewing(token);
        self.spawn_release(key, token, RELEASE_WINDOW);
    }
}

/// How long a release keeps trying while Redis does not answer (past it, the lease frees
/// the key).
const RELEASE_WINDOW: Duration = Duration::from_secs(10);

impl RedisIdempotencyStore {
    /// Free the claim `token` on a task, trying again (every 50 ms) while Redis does not
    /// answer, for at most `window`. Without a runtime nothing is done: the lease frees
    /// the key.
    fn spawn_release(&self, key: &RecordKey, token: ClaimToken, window: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = self.inner.backend.clone();
        let keys = [self.key(key)];
        runtime.spawn(async move {
            let until = tokio::time::Instant::now() + window;
            let prefix = claim_prefix(token);
            let args = [Arg::Bytes(&prefix)];
            while backend
                .eval::<i64>(&RELEASE_SCRIPT, &keys, &args)
                .await
                .is_err()
                && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
}

/// Resolves when `key` no longer holds `claim` (completed, released, expired, or taken
/// over), or when its lease would have ended, or when Redis cannot be asked.
/// Frees a claim whose outcome is unknown, when dropped armed.
struct Unclaim<'a> {
    store: &'a RedisIdempotencyStore,
    key: &'a RecordKey,
    token: ClaimToken,
    lease: Duration,
    armed: bool,
}

impl Drop for Unclaim<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Past the lease the claim, if it landed, has expired anyway.
            self.store.spawn_release(self.key, self.token, self.lease);
        }
    }
}

async fn wait_for_end(
    backend: RedisBackend,
    key: String,
    claim: Vec<u8>,
    lease: Duration,
    every: Duration,
) {
    let until = tokio::time::Instant::now() + lease;
    loop {
        let now = tokio::time::Instant::now();
        if now >= until {
            return;
        }
        // At least one look, even when the lease is shorter than the interval.
        tokio::time::sleep_until((now + every).min(until)).await;
        let now: Result<Option<Vec<u8>>, _> = backend
            .run(|mut conn| {
                let key = key.clone();
                async move { Ok(redis::cmd("GET").arg(key).query_async(&mut conn).await?) }
            })
            .await;
        match now {
            Ok(Some(v)) if v == claim => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> Record {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Record {
            fingerprint: Fingerprint([7; 32]),
            response: StoredResponse {
                status: StatusCode::CREATED,
                version: Version::HTTP_2,
                headers,
                body: Bytes::from_static(b"{\"charge\":1}"),
                trailers: Some(trailers),
            },
        }
    }

    #[test]
    fn records_and_claims_round_trip() {
        let r = record();
        let Held::Record(back) = decode(&encode_record(&r)).unwrap() else {
            panic!("not a record");
        };
        assert_eq!(*back, r);
        let claim = claim_value(ClaimToken(42), Fingerprint([9; 32]));
        assert!(matches!(
            decode(&claim),
            Ok(Held::Claim(Fingerprint([9, ..])))
        ));
        assert_eq!(&claim[..10], &claim_prefix(ClaimToken(42)));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = encode_record(&record());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing garbage");
    }

    #[test]
    fn a_huge_header_count_is_an_error_not_a_panic() {
        // 30 000 headers of 6 bytes each: enough bytes to pass the length check, more
        // headers than a `HeaderMap` can hold.
        let mut v = vec![b'R', VERSION];
        v.extend_from_slice(&[0; 32]);
        v.extend_from_slice(&200u16.to_be_bytes());
        v.push(2);
        v.extend_from_slice(&30_000u32.to_be_bytes());
        for _ in 0..30_000 {
            v.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        assert!(decode(&v).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_values_never_panic(value in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&value);
        }

        #[test]
        fn corrupted_records_never_panic(at in 0usize..200, byte in any::<u8>()) {
            let mut bytes = encode_record(&record());
            let at = at % bytes.len();
            bytes[at] = byte;
            let _ = decode(&bytes);
        }
    }
}
