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

/// Split a `Cache-Control` value on commas outside quoted strings (with `\` escapes):
/// a comma inside an argument (`no-cache="Set-Cookie, Authorization"`) separates
/// nothing.
#[cfg(feature = "http")]
pub(crate) fn split_directives(value: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    value.split(move |c: char| {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ',' && !quoted {
            return true;
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::parse_digits;
    #[cfg(feature = "http")]
    use super::split_directives;

    #[cfg(feature = "http")]
    #[test]
    fn directives_split_outside_quoted_strings() {
        let parts: Vec<&str> = split_directives(r#"a="x, y", b, c="q\", z", d"#).collect();
        assert_eq!(parts, [r#"a="x, y""#, " b", r#" c="q\", z""#, " d"]);
        // An unterminated string runs to the end.
        assert_eq!(split_directives(r#"a="x, y"#).count(), 1);
    }

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
