//! The shared counter of calls in flight, and the permit that holds one of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::Rejection;
use crate::observe::{Event, SharedObserver};

/// The state every clone of a bulkhead shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    limit: AtomicU32,
    in_flight: AtomicU32,
    /// Callers parked in [`Shared::wait`]; a release notifies only when there are some.
    waiting: AtomicUsize,
    notify: Notify,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) observer: SharedObserver,
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        limit: u32,
        max_wait: Option<Duration>,
        retry_after: Option<Duration>,
        observer: SharedObserver,
    ) -> Shared {
        Shared {
            name,
            limit: AtomicU32::new(limit),
            in_flight: AtomicU32::new(0),
            waiting: AtomicUsize::new(0),
            notify: Notify::new(),
            max_wait,
            retry_after,
            observer,
        }
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit.load(Ordering::SeqCst)
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Take a slot if one is free: one compare-and-swap in the common case, no lock.
    #[inline]
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current >= self.limit.load(Ordering::SeqCst) {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Permit(Some(self.clone()))),
                Err(now) => current = now,
            }
        }
    }

    /// Wait up to `max` for a slot. Waiters are woken one per released slot; a caller
    /// arriving while others wait may take a freed slot first (no strict FIFO order).
    pub(crate) async fn wait(self: Arc<Self>, max: Duration) -> Result<Permit, Rejection> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let started = tokio::time::Instant::now();
        let deadline = started + max;
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between the check and the await
            // still wakes this waiter.
            notified.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return Ok(permit);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // One last look: a slot freed at the very deadline still counts.
                if let Some(permit) = self.try_acquire() {
                    return Ok(permit);
                }
                self.observer.emit(&Event::BulkheadRejected {
                    name: &self.name,
                    limit: self.limit(),
                    waited: started.elapsed(),
                    shadow: false,
                });
                return Err(Rejection::overloaded(self.retry_after));
            }
        }
    }

    /// Change the limit; returns the previous one. Raising it wakes waiters for the new
    /// slots; lowering it lets calls in flight finish (new calls are refused until the
    /// count falls below the new limit).
    pub(crate) fn set_limit(&self, limit: u32) -> u32 {
        let previous = self.limit.swap(limit, Ordering::SeqCst);
        if limit > previous && self.waiting() > 0 {
            self.notify.notify_waiters();
        }
        if previous != limit {
            self.observer.emit(&Event::BulkheadLimitChanged {
                name: &self.name,
                from: previous,
                to: limit,
            });
        }
        previous
    }

    #[inline]
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }
}

/// One slot of a bulkhead, given back when dropped: when the response future finishes, is
/// dropped, or unwinds from a panic.
#[derive(Debug)]
pub(crate) struct Permit(Option<Arc<Shared>>);

impl Permit {
    /// A permit that holds no slot (shadow and off modes).
    pub(crate) const fn none() -> Permit {
        Permit(None)
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(limit: u32) -> Arc<Shared> {
        Arc::new(Shared::new(
            "b".into(),
            limit,
            None,
            None,
            SharedObserver::new(()),
        ))
    }

    #[test]
    fn permits_count_and_release() {
        let s = shared(2);
        let a = s.try_acquire().unwrap();
        let b = s.try_acquire().unwrap();
        assert!(s.try_acquire().is_none());
        drop(a);
        assert_eq!(s.in_flight(), 1);
        let c = s.try_acquire().unwrap();
        drop((b, c));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn lowering_below_in_flight_drains_without_underflow() {
        let s = shared(3);
        let held: Vec<_> = (0..3).map(|_| s.try_acquire().unwrap()).collect();
        assert_eq!(s.set_limit(1), 3);
        assert!(s.try_acquire().is_none());
        drop(held);
        assert_eq!(s.in_flight(), 0);
        let one = s.try_acquire().unwrap();
        assert!(s.try_acquire().is_none());
        drop(one);
        assert_eq!(s.set_limit(0), 1);
        assert!(s.try_acquire().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_gets_a_released_slot() {
        let s = shared(1);
        let held = s.try_acquire().unwrap();
        let waiter = tokio::spawn(s.clone().wait(Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(s.waiting(), 1);
        drop(held);
        let permit = waiter.await.unwrap().unwrap();
        assert_eq!(s.in_flight(), 1);
        drop(permit);
        assert_eq!(s.waiting(), 0);
    }
}
