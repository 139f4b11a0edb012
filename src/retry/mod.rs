//! Retry (in progress).

/// Why a failed attempt was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The attempts allowed are used up.
    MaxAttempts,
}

impl StopReason {
    /// A stable `snake_case` name.
    pub const fn as_str(self) -> &'static str {
        match self {
            StopReason::MaxAttempts => "max_attempts",
        }
    }
}
