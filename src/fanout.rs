//! Fan-out with deadlines and partial results: one request answered from several
//! downstream calls, degraded instead of down.
//!
//! A [`FanOut`] runs its branches concurrently. Each branch has its own timeout, and all
//! of them share the fan-out's overall deadline (by default the caller's remaining
//! [`Deadline`](crate::Deadline) when there is one). When the deadline comes, branches
//! still running are dropped (their futures, and so their calls, are cancelled) and
//! counted as timed out; a branch that panics is caught and counted as
//! [`BranchError::Panicked`]; the ones that answered are kept. The caller decides what is
//! critical.
//!
//! ```
//! use std::time::Duration;
//! use tower_parapet::fanout::{BranchError, FanOut};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let page = FanOut::new()
//!     .deadline(Duration::from_millis(500))
//!     .branch("user", Duration::from_millis(200), async {
//!         Ok::<_, std::io::Error>("alice".to_owned())
//!     })
//!     .branch("posts", Duration::from_millis(200), async {
//!         std::future::pending::<Result<String, std::io::Error>>().await // hangs
//!     })
//!     .run()
//!     .await;
//! assert_eq!(page.get(&"user"), Some(&"alice".to_owned()));
//! assert_eq!(page.degraded(), [&"posts"]);
//! assert!(matches!(page.failure(&"posts"), Some(BranchError::TimedOut { .. })));
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use crate::error::BoxError;

type BranchFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

struct Branch<K, T> {
    key: K,
    timeout: Duration,
    future: BranchFuture<T>,
}

/// Why a branch has no result.
#[derive(Debug)]
#[non_exhaustive]
pub enum BranchError {
    /// It did not answer within its timeout or the overall deadline.
    TimedOut {
        /// How long it was given.
        after: Duration,
    },
    /// It answered with an error (a rejection of its client stack included).
    Failed(BoxError),
    /// It panicked: the panic is caught, so the other branches still count.
    Panicked,
}

impl fmt::Display for BranchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BranchError::TimedOut { after } => write!(f, "timed out after {after:?}"),
            BranchError::Failed(e) => write!(f, "failed: {e}"),
            BranchError::Panicked => f.write_str("panicked"),
        }
    }
}

/// Concurrent branches with deadlines; see the [module docs](self).
pub struct FanOut<K, T> {
    branches: Vec<Branch<K, T>>,
    deadline: Option<Duration>,
}

impl<K: fmt::Debug, T> fmt::Debug for FanOut<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOut")
            .field(
                "branches",
                &self.branches.iter().map(|b| &b.key).collect::<Vec<_>>(),
            )
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<K, T> Default for FanOut<K, T> {
    fn default() -> Self {
        FanOut::new()
    }
}

impl<K, T> FanOut<K, T> {
    /// No branches, no overall deadline.
    pub fn new() -> FanOut<K, T> {
        FanOut {
            branches: Vec::new(),
            deadline: None,
        }
    }

    /// Stop waiting for every branch after `overall` from [`run`](Self::run).
    #[must_use]
    pub fn deadline(mut self, overall: Duration) -> Self {
        self.deadline = Some(overall);
        self
    }

    /// Stop waiting at the caller's deadline too: the shorter of it and any deadline set
    /// before wins.
    #[must_use]
    pub fn within(mut self, caller: Option<&crate::Deadline>) -> Self {
        if let Some(d) = caller {
            let left = d.remaining();
            self.deadline = Some(self.deadline.map_or(left, |own| own.min(left)));
        }
        self
    }

    /// Add a branch named `key`, given at most `timeout`.
    #[must_use]
    pub fn branch<F, E>(mut self, key: K, timeout: Duration, future: F) -> Self
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.branches.push(Branch {
            key,
            timeout,
            future: Box::pin(async move { future.await.map_err(Into::into) }),
        });
        self
    }

    /// Run every branch at once; return when all have answered or timed out.
    pub async fn run(self) -> Gathered<K, T> {
        let start = Instant::now();
        let overall = self.deadline.map(|d| start + d);
        let runs = self.branches.into_iter().map(|b| {
            let mut until = start + b.timeout;
            if let Some(overall) = overall {
                until = until.min(overall);
            }
            let given = until.saturating_duration_since(start);
            async move {
                let guarded = AssertUnwindSafe(b.future).catch_unwind();
                let result = match tokio::time::timeout_at(until, guarded).await {
                    Ok(Ok(Ok(value))) => Ok(value),
                    Ok(Ok(Err(e))) => Err(BranchError::Failed(e)),
                    Ok(Err(_panic)) => Err(BranchError::Panicked),
                    Err(_) => Err(BranchError::TimedOut { after: given }),
                };
                (b.key, result)
            }
        });
        Gathered {
            results: futures_util::future::join_all(runs).await,
            took: start.elapsed(),
        }
    }
}

/// What a [`FanOut`] gathered, in the order the branches were added.
#[derive(Debug)]
pub struct Gathered<K, T> {
    results: Vec<(K, Result<T, BranchError>)>,
    took: Duration,
}

impl<K: PartialEq, T> Gathered<K, T> {
    /// The answer of branch `key`, if it answered.
    pub fn get(&self, key: &K) -> Option<&T> {
        self.results
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, r)| r.as_ref().ok())
    }

    /// Why branch `key` has no answer, if it has none.
    pub fn failure(&self, key: &K) -> Option<&BranchError> {
        self.results
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, r)| r.as_ref().err())
    }

    /// The branches without an answer, in the order they were added.
    pub fn degraded(&self) -> Vec<&K> {
        self.results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(k, _)| k)
            .collect()
    }

    /// How long the fan-out took.
    pub fn took(&self) -> Duration {
        self.took
    }

    /// Every branch's key and result.
    pub fn into_results(self) -> Vec<(K, Result<T, BranchError>)> {
        self.results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn branches_run_at_once_and_the_deadline_holds() {
        let slow = |ms: u64, ok: bool| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if ok { Ok(ms) } else { Err("down") }
        };
        let page = FanOut::new()
            .deadline(Duration::from_millis(250))
            .branch("a", Duration::from_millis(300), slow(100, true))
            .branch("b", Duration::from_millis(300), slow(200, true))
            .branch("c", Duration::from_millis(50), slow(100, true))
            .branch("d", Duration::from_millis(300), slow(10, false))
            .branch("e", Duration::from_millis(900), slow(400, true))
            .run()
            .await;
        // Concurrent: the whole took the overall deadline, not the sum.
        assert_eq!(page.took(), Duration::from_millis(250));
        assert_eq!(page.get(&"a"), Some(&100));
        assert_eq!(page.get(&"b"), Some(&200));
        assert_eq!(page.degraded(), [&"c", &"d", &"e"]);
        assert!(matches!(
            page.failure(&"c"),
            Some(BranchError::TimedOut { after }) if *after == Duration::from_millis(50)
        ));
        assert!(matches!(page.failure(&"d"), Some(BranchError::Failed(_))));
        assert!(matches!(
            page.failure(&"e"),
            Some(BranchError::TimedOut { after }) if *after == Duration::from_millis(250)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_branch_degrades_only_itself() {
        let page = FanOut::new()
            .branch("ok", Duration::from_secs(1), async { Ok::<_, BoxError>(1) })
            .branch("boom", Duration::from_secs(1), async {
                if true {
                    panic!("downstream client bug");
                }
                Ok::<_, BoxError>(2)
            })
            .run()
            .await;
        assert_eq!(page.get(&"ok"), Some(&1));
        assert!(matches!(page.failure(&"boom"), Some(BranchError::Panicked)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_deadline_shortens_the_fan_out() {
        let caller = crate::Deadline::after(Duration::from_millis(100));
        let page = FanOut::new()
            .deadline(Duration::from_secs(1))
            .within(Some(&caller))
            .branch(1, Duration::from_secs(1), async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                Ok::<_, BoxError>(())
            })
            .run()
            .await;
        assert_eq!(page.degraded(), [&1]);
        assert_eq!(page.took(), Duration::from_millis(100));
    }
}
