//! MurmurHash3, x86 32-bit variant, and Unleash-compatible rollout buckets.
//!
//! The hash is fed in pieces (`group`, `:`, `key`) so that a bucket is computed without
//! building the joined string: no allocation on the request path.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// A streaming MurmurHash3 x86_32 state.
#[derive(Debug, Clone)]
pub(crate) struct Murmur3 {
    h: u32,
    /// Bytes not yet forming a whole 4-byte block.
    pending: [u8; 4],
    pending_len: usize,
    total: u32,
}

#[inline]
fn mix_block(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

impl Murmur3 {
    pub(crate) const fn new(seed: u32) -> Murmur3 {
        Murmur3 {
            h: seed,
            pending: [0; 4],
            pending_len: 0,
            total: 0,
        }
    }

    #[inline]
    fn block(&mut self, k: u32) {
        self.h ^= mix_block(k);
        self.h = self
            .h
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }

    /// Feed more bytes.
    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        // The reference defines the length modulo 2^32.
        self.total = self.total.wrapping_add(bytes.len() as u32);
        if self.pending_len > 0 {
            let take = (4 - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < 4 {
                return;
            }
            self.block(u32::from_le_bytes(self.pending));
            self.pending_len = 0;
        }
        let mut blocks = bytes.chunks_exact(4);
        for b in &mut blocks {
            self.block(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The state after `"{group_id}:"`, for [`bucket`](Self::bucket).
    pub(crate) fn prefix(group_id: &str) -> Murmur3 {
        let mut m = Murmur3::new(0);
        m.write(group_id.as_bytes());
        m.write(b":");
        m
    }

    /// The rollout bucket of `targeting_key`, continuing from a [`prefix`](Self::prefix)
    /// state: the same as [`bucket`](super::murmur3::bucket) with its group.
    #[inline]
    pub(crate) fn bucket(&self, targeting_key: &str) -> u8 {
        let mut m = self.clone();
        m.write(targeting_key.as_bytes());
        // `% 100` is below 100, so the cast cannot truncate.
        (m.finish() % 100) as u8 + 1
    }

    /// The hash of everything written.
    pub(crate) fn finish(&self) -> u32 {
        let mut h = self.h;
        if self.pending_len > 0 {
            let mut k = 0u32;
            for (i, b) in self.pending[..self.pending_len].iter().enumerate() {
                k |= u32::from(*b) << (8 * i);
            }
            h ^= mix_block(k);
        }
        h ^= self.total;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
        h
    }
}

/// MurmurHash3 x86_32 of `bytes` with `seed`.
pub fn murmur3_x86_32(bytes: &[u8], seed: u32) -> u32 {
    let mut m = Murmur3::new(seed);
    let mut blocks = bytes.chunks_exact(4);
    for b in &mut blocks {
        m.block(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    }
    let rest = blocks.remainder();
    m.pending[..rest.len()].copy_from_slice(rest);
    m.pending_len = rest.len();
    // The reference defines the length modulo 2^32.
    m.total = bytes.len() as u32;
    m.finish()
}

/// The rollout bucket (1 to 100) of `targeting_key` in `group_id`, as Unleash's gradual
/// rollout computes it: `murmur3_x86_32("{group_id}:{targeting_key}", seed 0) % 100 + 1`,
/// over the UTF-8 bytes of the joined string. A user is in a rollout of `p` percent when
/// its bucket is at most `p`, so raising `p` only adds users.
///
/// ```
/// use tower_parapet::flags::bucket;
///
/// // The same bucket Unleash's SDKs give user "alice" in group "new-checkout".
/// assert_eq!(bucket("new-checkout", "alice"), 41);
/// ```
pub fn bucket(group_id: &str, targeting_key: &str) -> u8 {
    let (g, k) = (group_id.as_bytes(), targeting_key.as_bytes());
    let len = g.len() + 1 + k.len();
    // Joined on the stack when it fits (the common case: one tight pass over whole
    // blocks); streamed in pieces otherwise. Both give the same hash.
    let hash = if len <= 128 {
        let mut joined = [0u8; 128];
        joined[..g.len()].copy_from_slice(g);
        joined[g.len()] = b':';
        joined[g.len() + 1..len].copy_from_slice(k);
        murmur3_x86_32(&joined[..len], 0)
    } else {
        let mut m = Murmur3::new(0);
        m.write(g);
        m.write(b":");
        m.write(k);
        m.finish()
    };
    // `% 100` is below 100, so the cast cannot truncate.
    (hash % 100) as u8 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_states_give_the_same_buckets() {
        for g in ["", "a", "ab", "abc", "abcd", "new-checkout"] {
            let prefix = Murmur3::prefix(g);
            for k in ["", "u", "user-3", "alice", &"k".repeat(300) as &str] {
                assert_eq!(prefix.bucket(k), bucket(g, k), "{g:?} {k:?}");
            }
        }
    }

    #[test]
    fn joined_and_streamed_buckets_agree() {
        for (g, k) in [
            ("g", "k"),
            ("new-checkout", "alice"),
            ("x", &"long-key-".repeat(40) as &str),
        ] {
            let mut m = Murmur3::new(0);
            m.write(g.as_bytes());
            m.write(b":");
            m.write(k.as_bytes());
            assert_eq!(bucket(g, k), (m.finish() % 100) as u8 + 1, "{g} {k}");
            assert_eq!(m.finish(), murmur3_x86_32(format!("{g}:{k}").as_bytes(), 0));
        }
    }

    /// Computed with Python's `mmh3` (an independent implementation).
    #[test]
    fn reference_vectors() {
        for (input, seed, hash) in [
            ("", 0, 0),
            ("", 1, 1_364_076_727),
            ("a", 0, 1_009_084_850),
            ("ab", 0, 2_613_040_991),
            ("abc", 0, 3_017_643_002),
            ("abcd", 0, 1_139_631_978),
            ("abcde", 0, 3_902_511_862),
            ("hello", 0, 613_153_351),
            ("Hello, world!", 0, 3_224_780_355),
            (
                "The quick brown fox jumps over the lazy dog",
                0,
                776_992_547,
            ),
            ("\u{e9}t\u{e9}", 0, 865_297_935),
            ("abc", 0x9747_b28c, 3_360_318_173),
        ] {
            assert_eq!(murmur3_x86_32(input.as_bytes(), seed), hash, "{input:?}");
        }
    }

    #[test]
    fn pieces_hash_like_the_whole() {
        let text = b"The quick brown fox jumps over the lazy dog";
        for cut1 in 0..text.len() {
            for cut2 in cut1..text.len() {
                let mut m = Murmur3::new(7);
                m.write(&text[..cut1]);
                m.write(&text[cut1..cut2]);
                m.write(&text[cut2..]);
                assert_eq!(m.finish(), murmur3_x86_32(text, 7));
            }
        }
    }

    #[test]
    fn buckets_match_unleash() {
        assert_eq!(bucket("new-checkout", "alice"), 41);
        assert_eq!(bucket("new-checkout", "bob"), 89);
        assert_eq!(bucket("new-checkout", "carol"), 2);
        assert_eq!(bucket("my-feature", "tenant-007"), 100);
        assert_eq!(bucket("my-feature", ""), 28);
    }
}
