//! HTTP answers (in progress).

pub(crate) use crate::parse::parse_digits;
