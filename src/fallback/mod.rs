//! Answers for failed calls (in progress).
