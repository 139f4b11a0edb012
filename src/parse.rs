//! Strict parsing of untrusted header values.

/// ASCII digits only (no sign, no space), 1 to `max_digits` of them; the value saturates
/// at `u64::MAX`. Rust's `parse` would accept a leading `+`, which no header grammar here
/// allows.
pub(crate) fn parse_digits(bytes: &[u8], max_digits: usize) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > max_digits {
        return None;
    }
    let mut n: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::parse_digits;

    #[test]
    fn digits_only_and_saturating() {
        assert_eq!(parse_digits(b"0", 8), Some(0));
        assert_eq!(parse_digits(b"0042", 8), Some(42));
        assert_eq!(parse_digits(b"+1", 8), None);
        assert_eq!(parse_digits(b"-1", 8), None);
        assert_eq!(parse_digits(b" 1", 8), None);
        assert_eq!(parse_digits(b"", 8), None);
        assert_eq!(parse_digits(b"123456789", 8), None);
        assert_eq!(
            parse_digits(b"99999999999999999999999", usize::MAX),
            Some(u64::MAX)
        );
    }
}
