//! Response corruption: what a corrupt fault does to the response the service gave.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

#[cfg(feature = "http")]
use super::state::SplitMix;
use crate::error::BoxError;

/// A response being corrupted later (after its body is read), boxed: only corrupted calls
/// pay for it.
pub type CorruptFuture<Res> = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

/// What [`Corruption::corrupt`] gives back: the mangled response now, or a future of it.
pub enum Corrupted<Res> {
    /// Mangled already (a header dropped).
    Ready(Res),
    /// Mangled once its body has been read; an error reading the body is the call's error.
    Later(CorruptFuture<Res>),
}

impl<Res> fmt::Debug for Corrupted<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Corrupted::Ready(_) => "Corrupted::Ready(..)",
            Corrupted::Later(_) => "Corrupted::Later(..)",
        })
    }
}

/// How a corrupt fault mangles a response of type `Res` ([`FaultBuilder::corrupt`]).
///
/// `random` is one number of the layer's random sequence: draw every choice from it (where
/// to cut, which bytes to flip) and a seeded layer corrupts the same way on every run.
///
/// [`FaultBuilder::corrupt`]: super::FaultBuilder::corrupt
pub trait Corruption<Res>: Send + Sync + 'static {
    /// The corrupted response.
    fn corrupt(&self, response: Res, random: u64) -> Corrupted<Res>;
}

/// No corruption configured (the default): the corrupt rate must stay 0, and a response is
/// never touched.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCorruption;

impl<Res> Corruption<Res> for NoCorruption {
    fn corrupt(&self, response: Res, _: u64) -> Corrupted<Res> {
        Corrupted::Ready(response)
    }
}

/// Mangle `body` as `how` says, drawing from `rng`. Pure, so it is tested byte for byte.
#[cfg(feature = "http")]
pub(crate) fn mangle(how: &How, body: &[u8], rng: &mut SplitMix) -> Vec<u8> {
    match how {
        How::Truncate => body[..rng.below(body.len().max(1))].to_vec(),
        How::FlipBytes(count) => {
            let mut out = body.to_vec();
            if !out.is_empty() {
                let start = rng.below(out.len());
                for i in 0..(*count).min(out.len()) {
                    let at = (start + i) % out.len();
                    // Never 0, so every byte of the burst changes.
                    out[at] ^= (rng.below(255) + 1) as u8;
                }
            }
            out
        }
        How::Garbage => {
            let len = if body.is_empty() { 16 } else { body.len() };
            (0..len).map(|_| rng.next() as u8).collect()
        }
        How::DropHeader(_) => body.to_vec(),
    }
}

#[cfg(feature = "http")]
#[derive(Debug, Clone)]
pub(crate) enum How {
    Truncate,
    FlipBytes(usize),
    Garbage,
    DropHeader(http::HeaderName),
}

/// A corruption of HTTP responses: a cut, garbled or replaced body, or a dropped header.
///
/// The response keeps its status and its other headers, gains `parapet-fault: corrupt`,
/// and its `Content-Length`, when it has one, is set to the new length: the framing stays
/// valid, so the client receives the mangled body as a whole response and its parser, not
/// its transport, has to cope. A body corruption reads the whole body first (trailers are
/// dropped) and needs a body type built from [`Bytes`](bytes::Bytes) (`Full<Bytes>`,
/// axum's `Body`, ...); an error while reading it becomes the call's error.
///
/// ```
/// use bytes::Bytes;
/// use http::Response;
/// use http_body_util::Full;
/// use tower_parapet::fault::{Corrupted, Corruption, HttpCorruption};
///
/// let res = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
/// let Corrupted::Ready(res) = HttpCorruption::drop_header(http::header::CONTENT_TYPE)
///     .corrupt(res, 42)
/// else {
///     unreachable!("dropping a header needs no body")
/// };
/// assert_eq!(res.headers()["parapet-fault"], "corrupt");
/// ```
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone)]
pub struct HttpCorruption(pub(crate) How);

#[cfg(feature = "http")]
impl HttpCorruption {
    /// Cut the body at a random point, strictly shorter than it was (an empty body stays
    /// empty): a response cut off in transit.
    pub fn truncate() -> HttpCorruption {
        HttpCorruption(How::Truncate)
    }

    /// Garble a burst of `count` consecutive bytes (at least 1, at most the whole body) at
    /// a random place: every byte of the burst changes.
    pub fn flip_bytes(count: usize) -> HttpCorruption {
        HttpCorruption(How::FlipBytes(count.max(1)))
    }

    /// Replace the body with random bytes of the same length (16 for an empty body).
    pub fn garbage() -> HttpCorruption {
        HttpCorruption(How::Garbage)
    }

    /// Remove every value of the header `name` (a `Content-Type`, a `Cache-Control`, an
    /// auth token), and leave the body alone.
    pub fn drop_header(name: http::HeaderName) -> HttpCorruption {
        HttpCorruption(How::DropHeader(name))
    }
}

#[cfg(feature = "http")]
impl<B> Corruption<http::Response<B>> for HttpCorruption
where
    B: http_body::Body + From<bytes::Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn corrupt(&self, response: http::Response<B>, random: u64) -> Corrupted<http::Response<B>> {
        use http::header::{CONTENT_LENGTH, HeaderValue};
        use http_body_util::BodyExt;

        let (mut parts, body) = response.into_parts();
        parts.headers.insert(
            http::HeaderName::from_static("parapet-fault"),
            HeaderValue::from_static("corrupt"),
        );
        if let How::DropHeader(name) = &self.0 {
            parts.headers.remove(name);
            return Corrupted::Ready(http::Response::from_parts(parts, body));
        }
        let how = self.0.clone();
        Corrupted::Later(Box::pin(async move {
            let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
            let mangled = mangle(&how, &bytes, &mut SplitMix(random));
            if parts.headers.contains_key(CONTENT_LENGTH) {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(mangled.len()));
            }
            Ok(http::Response::from_parts(
                parts,
                B::from(bytes::Bytes::from(mangled)),
            ))
        }))
    }
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::*;

    const BODY: &[u8] = b"{\"items\":[1,2,3],\"next\":null}";

    #[test]
    fn every_body_corruption_changes_a_body_and_is_repeatable() {
        for how in [
            How::Truncate,
            How::FlipBytes(1),
            How::FlipBytes(4),
            How::Garbage,
        ] {
            for seed in 0..200 {
                let once = mangle(&how, BODY, &mut SplitMix(seed));
                assert_ne!(once, BODY, "{how:?} {seed}");
                assert_eq!(once, mangle(&how, BODY, &mut SplitMix(seed)));
            }
        }
    }

    #[test]
    fn shapes_of_each_corruption() {
        for seed in 0..200 {
            let cut = mangle(&How::Truncate, BODY, &mut SplitMix(seed));
            assert!(cut.len() < BODY.len() && BODY.starts_with(&cut));
            let flipped = mangle(&How::FlipBytes(3), BODY, &mut SplitMix(seed));
            assert_eq!(flipped.len(), BODY.len());
            let changed = flipped.iter().zip(BODY).filter(|(a, b)| a != b).count();
            assert_eq!(changed, 3);
            assert_eq!(
                mangle(&How::Garbage, BODY, &mut SplitMix(seed)).len(),
                BODY.len()
            );
        }
        // Bursts longer than the body garble all of it; empty bodies.
        assert!(
            mangle(&How::FlipBytes(100), b"ab", &mut SplitMix(1))
                .iter()
                .zip(b"ab")
                .all(|(a, b)| a != b)
        );
        assert!(mangle(&How::Truncate, b"", &mut SplitMix(1)).is_empty());
        assert!(mangle(&How::FlipBytes(2), b"", &mut SplitMix(1)).is_empty());
        assert_eq!(mangle(&How::Garbage, b"", &mut SplitMix(1)).len(), 16);
    }
}
