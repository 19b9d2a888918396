//! Bodies that stream through the proxy frame by frame: the response body type of every answer
//! the edge gives (the request body is in `request_body.rs`).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};

use crate::proxy::access::AccessLog;
use crate::proxy::balancer::InFlight;
use crate::proxy::connector::BoxError;
use crate::proxy::h1::ClientHead;
use crate::proxy::pool::PooledBody;

/// The body of every response the edge sends: a fixed one, or an upstream's streamed through.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    Fixed(Full<Bytes>),
    Upstream(UpstreamBody),
}

impl ResponseBody {
    pub(crate) fn fixed(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Fixed(Full::new(bytes.into()))
    }

    pub(crate) fn empty() -> ResponseBody {
        ResponseBody::fixed(Bytes::new())
    }

    /// An upstream's response head written out for an HTTP/1.1 client, if it was asked for.
    pub(crate) fn take_client_head(&mut self) -> Option<ClientHead> {
        match self {
            ResponseBody::Fixed(_) => None,
            ResponseBody::Upstream(up) => up.inner.take_client_head(),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Fixed(full) => match ready!(Pin::new(full).poll_frame(cx)) {
                Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(Err(never)) => match never {},
                None => Poll::Ready(None),
            },
            ResponseBody::Upstream(up) => Pin::new(up).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Fixed(full) => full.is_end_stream(),
            ResponseBody::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Fixed(full) => full.size_hint(),
            ResponseBody::Upstream(up) => up.inner.size_hint(),
        }
    }
}

/// An upstream's response body on its way to the client. Holds the upstream's in-flight count
/// and the access log line until the body is through (or the client went away).
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: PooledBody,
    in_flight: InFlight,
    log: Option<AccessLog>,
    sent: u64,
    status: u16,
}

impl UpstreamBody {
    pub(crate) fn new(
        inner: PooledBody,
        in_flight: InFlight,
        log: Option<AccessLog>,
        status: u16,
    ) -> UpstreamBody {
        UpstreamBody {
            inner,
            in_flight,
            log,
            sent: 0,
            status,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.sent += data.len() as u64;
        }
        Poll::Ready(polled)
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let upstream = self.in_flight.upstream();
            log.finish(self.status, Some(&upstream.name), self.sent);
        }
    }
}
