//! Reading the `Idempotency-Key` header.

use http::{HeaderName, Request};

use crate::key::{KeyError, KeyExtractor};

/// The longest key accepted by default, in bytes (the IETF draft leaves it to the
/// server; 255 is common practice).
pub const DEFAULT_MAX_KEY_LEN: usize = 255;

/// Reads the idempotency key from a header (default `Idempotency-Key`).
///
/// The value is an RFC 9651 structured-field string (`"8e03978e-40d5-43e8-bc93"`), as the
/// IETF draft specifies; the bare form without quotes that many clients send is accepted
/// too. Inside quotes, `\"` and `\\` are unescaped; every other character must be
/// printable ASCII. A bare key is visible ASCII without `"`, `\` or `,`.
///
/// | value | result |
/// |---|---|
/// | absent | [`KeyError::Missing`] |
/// | more than one header line, empty, a comma-separated list, control or non-ASCII characters, broken quoting | [`KeyError::Malformed`] |
/// | longer than `max_len` bytes (after unquoting) | [`KeyError::TooLong`] |
#[derive(Debug, Clone)]
pub struct IdempotencyKeyHeader {
    name: HeaderName,
    max_len: usize,
}

impl Default for IdempotencyKeyHeader {
    fn default() -> Self {
        IdempotencyKeyHeader::new(HeaderName::from_static("idempotency-key"))
    }
}

impl IdempotencyKeyHeader {
    /// Read header `name` (e.g. `x-request-id`, or gRPC metadata `idempotency-key`).
    pub fn new(name: HeaderName) -> IdempotencyKeyHeader {
        IdempotencyKeyHeader {
            name,
            max_len: DEFAULT_MAX_KEY_LEN,
        }
    }

    /// Accept keys of at most `max_len` bytes (default 255).
    #[must_use]
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// The header's name.
    pub fn header(&self) -> &HeaderName {
        &self.name
    }
}

impl<B> KeyExtractor<Request<B>> for IdempotencyKeyHeader {
    type Key = String;

    fn extract(&self, req: &Request<B>) -> Result<String, KeyError> {
        let mut values = req.headers().get_all(&self.name).iter();
        let value = values.next().ok_or(KeyError::Missing)?;
        if values.next().is_some() {
            return Err(KeyError::Malformed("more than one idempotency key"));
        }
        parse_key(value.as_bytes(), self.max_len)
    }
}

/// Parse a structured-field string or a bare key.
pub(crate) fn parse_key(raw: &[u8], max_len: usize) -> Result<String, KeyError> {
    let raw = trim(raw);
    // Quoting at most doubles the length: refuse hopeless values before any work.
    if raw.len() > max_len.saturating_mul(2).saturating_add(2) {
        return Err(KeyError::TooLong {
            len: raw.len(),
            max: max_len,
        });
    }
    let key = match raw {
        [] => return Err(KeyError::Malformed("empty idempotency key")),
        [b'"', inner @ ..] => unquote(inner)?,
        bare => {
            for &b in bare {
                match b {
                    b',' => return Err(KeyError::Malformed("a list, not one key")),
                    b'"' | b'\\' => return Err(KeyError::Malformed("stray quote or backslash")),
                    0x21..=0x7e => {}
                    _ => {
                        return Err(KeyError::Malformed("characters other than visible ASCII"));
                    }
                }
            }
            // Visible ASCII only, so this is valid UTF-8.
            String::from_utf8_lossy(bare).into_owned()
        }
    };
    if key.is_empty() {
        return Err(KeyError::Malformed("empty idempotency key"));
    }
    if key.len() > max_len {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: max_len,
        });
    }
    Ok(key)
}

fn trim(mut raw: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = raw {
        raw = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = raw {
        raw = rest;
    }
    raw
}

/// The inside of a structured-field string, after the opening quote.
fn unquote(inner: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(inner.len());
    let mut bytes = inner.iter();
    loop {
        match bytes.next() {
            None => return Err(KeyError::Malformed("unterminated quoted string")),
            Some(b'"') => break,
            Some(b'\\') => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(char::from(c)),
                _ => return Err(KeyError::Malformed("bad escape in quoted string")),
            },
            Some(&c @ 0x20..=0x7e) => out.push(char::from(c)),
            Some(_) => return Err(KeyError::Malformed("characters other than printable ASCII")),
        }
    }
    if bytes.next().is_some() {
        return Err(KeyError::Malformed("characters after the quoted string"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<String, KeyError> {
        parse_key(v.as_bytes(), 16)
    }

    #[test]
    fn structured_field_strings_and_bare_tokens() {
        assert_eq!(parse(r#""abc-123""#).unwrap(), "abc-123");
        assert_eq!(parse(r#"  "a b"  "#).unwrap(), "a b");
        assert_eq!(parse(r#""q\"uote\\""#).unwrap(), r#"q"uote\"#);
        assert_eq!(parse("abc-123").unwrap(), "abc-123");
        assert_eq!(parse(" 9f2c ").unwrap(), "9f2c");
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "   ",
            r#""""#,
            r#""open"#,
            r#""a"b"#,
            r#""bad\escape""#,
            "a,b",
            "a b",
            "a\"b",
            "caf\u{e9}",
            "\u{7f}",
        ] {
            assert!(matches!(parse(bad), Err(KeyError::Malformed(_))), "{bad:?}");
        }
        assert!(matches!(
            parse_key(b"a\x01b", 16),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            parse_key(b"\"a\xffb\"", 16),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn long_keys_are_refused_by_their_unquoted_length() {
        assert_eq!(parse(&"k".repeat(16)).unwrap().len(), 16);
        assert_eq!(
            parse(&"k".repeat(17)),
            Err(KeyError::TooLong { len: 17, max: 16 })
        );
        assert_eq!(
            parse(&format!("\"{}\"", "k".repeat(17))),
            Err(KeyError::TooLong { len: 17, max: 16 })
        );
        assert!(matches!(
            parse_key(&[b'k'; 100_000], 16),
            Err(KeyError::TooLong { len: 100_000, .. })
        ));
    }

    #[test]
    fn the_header_is_read_once() {
        let h = IdempotencyKeyHeader::default();
        let req = |values: &[&str]| {
            let mut b = Request::post("/pay");
            for v in values {
                b = b.header("idempotency-key", *v);
            }
            b.body(()).unwrap()
        };
        assert_eq!(h.extract(&req(&[])), Err(KeyError::Missing));
        assert_eq!(h.extract(&req(&["\"k1\""])).unwrap(), "k1");
        assert!(matches!(
            h.extract(&req(&["k1", "k2"])),
            Err(KeyError::Malformed(_))
        ));
    }
}
