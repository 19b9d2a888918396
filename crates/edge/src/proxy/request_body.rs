//! The request body on its way upstream, with its size limit.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Why a request body stopped streaming to the upstream.
#[derive(Debug)]
pub(crate) enum RequestBodyError {
    /// The client's body failed (it went away, or sent something broken).
    Client(hyper::Error),
    /// More than the site's `max_body` bytes.
    TooLarge,
}

impl fmt::Display for RequestBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestBodyError::Client(_) => f.write_str("client request body failed"),
            RequestBodyError::TooLarge => f.write_str("request body over the limit"),
        }
    }
}

impl StdError for RequestBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            RequestBodyError::Client(e) => Some(e),
            RequestBodyError::TooLarge => None,
        }
    }
}

/// A request body on its way upstream: the client's, passed through as it arrives (hyper
/// reads more only when the upstream connection took the previous frame), counted against
/// the limit.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Option<Incoming>,
    /// Bytes still allowed.
    left: u64,
}

impl RequestBody {
    pub(crate) fn new(inner: Option<Incoming>, limit: Option<u64>) -> RequestBody {
        RequestBody {
            inner,
            left: limit.unwrap_or(u64::MAX),
        }
    }

    pub(crate) fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            left: 0,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.left {
                        this.inner = None;
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge)));
                    }
                    this.left -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.inner = None;
                Poll::Ready(Some(Err(RequestBodyError::Client(e))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
