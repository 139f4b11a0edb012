//! Bodies read with a cap, and the response body of layers that keep copies of
//! responses (idempotency, cache).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// A response body that is either the inner service's own body, passed through, or
    /// one a layer read whole (a stored, replayed or cached response). The idempotency
    /// and cache layers answer with it.
    #[project = BodyProj]
    #[derive(Debug)]
    pub struct BufferedBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Buffered {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        /// The first bytes were read before the body turned out too large to keep.
        Partial {
            head: Option<Bytes>,
            #[pin]
            rest: B,
        },
    }
}

impl<B> BufferedBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        BufferedBody {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        BufferedBody {
            kind: Kind::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    fn partial(head: Bytes, rest: B) -> Self {
        BufferedBody {
            kind: Kind::Partial {
                head: (!head.is_empty()).then_some(head),
                rest,
            },
        }
    }
}

impl<B> From<Bytes> for BufferedBody<B> {
    /// A buffered body of `data`, without trailers.
    fn from(data: Bytes) -> Self {
        BufferedBody::buffered(data, None)
    }
}

impl<B> Body for BufferedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Buffered { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Partial { head, rest } => {
                if let Some(head) = head.take() {
                    return Poll::Ready(Some(Ok(Frame::data(head))));
                }
                rest.poll_frame(cx).map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Partial { head, rest } => head.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Partial { head, rest } => {
                let head = head.as_ref().map_or(0, |h| h.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(head));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(head));
                }
                hint
            }
        }
    }
}

/// A body read whole, or why it was not.
pub(crate) enum Read<B> {
    /// Data and trailers.
    Whole(Bytes, Option<HeaderMap>),
    /// Larger than the cap: what was read so far is put back in front of the rest.
    TooLarge(BufferedBody<B>),
}

/// Read `body` whole if it holds at most `max` bytes.
pub(crate) async fn read_capped<B>(body: B, max: u64) -> Result<Read<B>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > max {
        return Ok(Read::TooLarge(BufferedBody::inner(body)));
    }
    let mut body = body;
    let mut data = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() as u64 + chunk.len() as u64 > max {
                    data.extend_from_slice(&chunk);
                    return Ok(Read::TooLarge(BufferedBody::partial(data.freeze(), body)));
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    match &mut trailers {
                        Some(all) => all.extend(t),
                        None => trailers = Some(t),
                    }
                }
            }
        }
    }
    Ok(Read::Whole(data.freeze(), trailers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn small_bodies_are_read_whole_and_replayed() {
        let Read::Whole(data, trailers) = read_capped(chunks(&["ab", "cd"]), 4).await.unwrap()
        else {
            panic!("fits")
        };
        assert_eq!(data, "abcd");
        assert!(trailers.is_none());
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        let replay = BufferedBody::<Full<Bytes>>::buffered(data, Some(t.clone()));
        assert_eq!(replay.size_hint().exact(), Some(4));
        let collected = replay.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&t));
        assert_eq!(collected.to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_given_back_whole() {
        let Read::TooLarge(body) = read_capped(chunks(&["ab", "cd", "ef"]), 3).await.unwrap()
        else {
            panic!("too large")
        };
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
        let Read::TooLarge(body) = read_capped(Full::new(Bytes::from("12345")), 3)
            .await
            .unwrap()
        else {
            panic!("too large by its size hint")
        };
        assert_eq!(body.collect().await.unwrap().to_bytes(), "12345");
    }
}
