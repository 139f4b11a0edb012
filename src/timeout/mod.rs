//! Deadlines for calls (in progress).
