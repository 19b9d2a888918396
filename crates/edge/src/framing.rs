//! Response framing (RFC 9112 6.1–6.3): how a response body is delimited, decided in one
//! place for reading the upstream's body and for every response the edge sends to a client:
//! on the express lane, through hyper's HTTP/1.1 server and over HTTP/2. [`response`] takes an
//! upstream head's framing fields; [`fixed`] and [`streamed`] the edge's own answers (on
//! hyper's path hyper frames those from the body's exact length, which is what [`fixed`]
//! says); [`decoded`] a response hyper's client read (upgrade requests). All of them are
//! `decide`.
//!
//! The rules:
//! - every 1xx, 204 and 304 response, and every response to `HEAD`, has no body; 1xx, 204 and
//!   304 carry no `Content-Length` either (a response to `HEAD` keeps the upstream's: the length
//!   a `GET` would have had);
//! - `Transfer-Encoding` wins over `Content-Length`, which is dropped. Chunked last: the body
//!   ends with the last chunk. Another coding last: the body runs until the upstream closes;
//! - framing that cannot be trusted ([`Untrusted`]: a malformed or conflicting
//!   `Content-Length`, chunked applied twice or not last, an empty coding list,
//!   `Transfer-Encoding` in an HTTP/1.0 response) makes the proxy answer 502, and the upstream
//!   connection is not used again;
//! - the client gets framing fields of the edge's own, never the upstream's: `content-length`
//!   when the length is known, otherwise chunked (HTTP/1.1), the end of the stream (HTTP/2) or
//!   the end of the connection (HTTP/1.0 clients, by hyper). A `Connection` field naming
//!   `Content-Length` or `Transfer-Encoding` removes nothing: framing is not the sender's to
//!   take away (see [`crate::proxy`]'s header rewriting).

use std::fmt::Write as _;

use bytes::BufMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Version};

/// Why a message's framing cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Untrusted(pub(crate) &'static str);

/// What `Transfer-Encoding` says, over all its fields.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    #[default]
    Absent,
    /// The last coding is chunked (applied once).
    Chunked,
    /// The last coding is another one.
    Other,
}

/// The framing fields of a message, read one field at a time as the head is parsed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Fields {
    transfer: Transfer,
    length: Option<u64>,
}

impl Fields {
    /// Reads one field; fields other than `Content-Length` and `Transfer-Encoding` are ignored.
    pub(crate) fn field(&mut self, name: &[u8], value: &[u8]) -> Result<(), Untrusted> {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let mut any = false;
            for coding in value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                // Empty list elements are allowed (RFC 9110 5.6.1) and mean nothing.
                if coding.is_empty() {
                    continue;
                }
                if self.transfer == Transfer::Chunked {
                    return Err(Untrusted("chunked is not the last transfer coding"));
                }
                any = true;
                self.transfer = if coding.eq_ignore_ascii_case(b"chunked") {
                    Transfer::Chunked
                } else {
                    Transfer::Other
                };
            }
            if !any {
                return Err(Untrusted("empty Transfer-Encoding"));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let n = parse_decimal(part.trim_ascii())
                    .ok_or(Untrusted("malformed Content-Length"))?;
                if self.length.is_some_and(|l| l != n) {
                    return Err(Untrusted("conflicting Content-Length values"));
                }
                self.length = Some(n);
            }
        }
        Ok(())
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// There is none (1xx, 204, 304, a response to `HEAD`).
    None,
    /// This many bytes.
    Length(u64),
    /// Chunked: it ends with the last chunk.
    Chunked,
    /// It runs until the sender closes the connection.
    UntilClose,
}

/// The framing of one response, for reading it and for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseFraming {
    /// How the body is delimited where it comes from.
    pub(crate) body: Body,
    /// The `Content-Length` the client gets: the body's length, or for a response to `HEAD`
    /// the upstream's (when no `Transfer-Encoding` contradicts it). Nothing else is sent as
    /// `Content-Length`.
    pub(crate) content_length: Option<u64>,
    /// As far as framing goes, the connection can carry another message after this one: not
    /// after a body that ran until close, nor after a message with both `Content-Length` and
    /// `Transfer-Encoding` (which one the sender meant is anybody's guess).
    pub(crate) reusable: bool,
}

impl ResponseFraming {
    /// An HTTP/1.1 client gets the body chunked: its length is not known before it ends.
    pub(crate) fn chunked(&self) -> bool {
        matches!(self.body, Body::Chunked | Body::UntilClose)
    }

    /// Writes the framing fields of an HTTP/1.1 head for the client (`content-length: N` or
    /// `transfer-encoding: chunked`, or nothing).
    pub(crate) fn put_fields(&self, out: &mut impl BufMut) {
        if let Some(n) = self.content_length {
            out.put_slice(b"content-length: ");
            put_decimal(out, n);
            out.put_slice(b"\r\n");
        } else if self.chunked() {
            out.put_slice(b"transfer-encoding: chunked\r\n");
        }
    }

    /// Makes a header map's framing fields this framing's, for hyper's server (HTTP/1.1 and
    /// HTTP/2), which frames the body from them: the upstream's `Transfer-Encoding` and
    /// `Content-Length` go, the decided `Content-Length` is set.
    pub(crate) fn set_fields(&self, headers: &mut HeaderMap) {
        headers.remove(header::TRANSFER_ENCODING);
        match self.content_length {
            Some(n) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            None => {
                headers.remove(header::CONTENT_LENGTH);
            }
        }
    }
}

/// The framing of a response with these framing fields, to a request that was `HEAD` or not.
pub(crate) fn response(
    head_request: bool,
    status: StatusCode,
    version: Version,
    fields: &Fields,
) -> Result<ResponseFraming, Untrusted> {
    if fields.transfer != Transfer::Absent && version == Version::HTTP_10 {
        // RFC 9112 6.1: treated as faulty framing.
        return Err(Untrusted("Transfer-Encoding in an HTTP/1.0 response"));
    }
    Ok(decide(head_request, status, fields.transfer, fields.length))
}

/// The framing of one of the edge's own responses, whose body is `len` bytes.
pub(crate) fn fixed(head_request: bool, status: StatusCode, len: u64) -> ResponseFraming {
    decide(head_request, status, Transfer::Absent, Some(len))
}

/// The framing of a response whose body another HTTP/1.1 client (hyper's, for upgrade
/// requests) decoded already: `length` when it knew it.
pub(crate) fn decoded(status: StatusCode, length: Option<u64>) -> ResponseFraming {
    let transfer = match length {
        Some(_) => Transfer::Absent,
        None => Transfer::Chunked,
    };
    decide(false, status, transfer, length)
}

/// The framing of one of the edge's own responses whose length is not known up front.
pub(crate) fn streamed(head_request: bool, status: StatusCode) -> ResponseFraming {
    decide(head_request, status, Transfer::Chunked, None)
}

fn decide(
    head_request: bool,
    status: StatusCode,
    transfer: Transfer,
    length: Option<u64>,
) -> ResponseFraming {
    let both = transfer != Transfer::Absent && length.is_some();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return ResponseFraming {
            body: Body::None,
            content_length: None,
            reusable: !both,
        };
    }
    if head_request {
        return ResponseFraming {
            body: Body::None,
            content_length: length.filter(|_| transfer == Transfer::Absent),
            reusable: !both,
        };
    }
    match (transfer, length) {
        (Transfer::Chunked, _) => ResponseFraming {
            body: Body::Chunked,
            content_length: None,
            reusable: !both,
        },
        (Transfer::Other, _) | (Transfer::Absent, None) => ResponseFraming {
            body: Body::UntilClose,
            content_length: None,
            reusable: false,
        },
        (Transfer::Absent, Some(n)) => ResponseFraming {
            body: Body::Length(n),
            content_length: Some(n),
            reusable: true,
        },
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Writes `n` in decimal without allocating.
fn put_decimal(out: &mut impl BufMut, n: u64) {
    struct Out<'a, B>(&'a mut B);
    impl<B: BufMut> std::fmt::Write for Out<'_, B> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.put_slice(s.as_bytes());
            Ok(())
        }
    }
    // Writing into a buffer cannot fail.
    let _ = write!(Out(out), "{n}");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Result<Fields, Untrusted> {
        let mut fields = Fields::default();
        for (name, value) in pairs {
            fields.field(name.as_bytes(), value.as_bytes())?;
        }
        Ok(fields)
    }

    fn framing(
        head: bool,
        status: u16,
        version: Version,
        pairs: &[(&str, &str)],
    ) -> Result<ResponseFraming, Untrusted> {
        response(
            head,
            StatusCode::from_u16(status).unwrap(),
            version,
            &fields(pairs)?,
        )
    }

    fn rf(body: Body, content_length: Option<u64>, reusable: bool) -> ResponseFraming {
        ResponseFraming {
            body,
            content_length,
            reusable,
        }
    }

    #[test]
    fn transfer_encoding_wins_and_bodiless_responses_have_no_framing() {
        use Body::{Chunked, Length, None as NoBody, UntilClose};
        let v11 = Version::HTTP_11;
        let te_cl: &[(&str, &str)] = &[("content-length", "3"), ("transfer-encoding", "chunked")];
        // (HEAD, status, fields, framing)
        type Case<'a> = (bool, u16, &'a [(&'a str, &'a str)], ResponseFraming);
        let cases: &[Case<'_>] = &[
            (
                false,
                200,
                &[("content-length", "5")],
                rf(Length(5), Some(5), true),
            ),
            (
                false,
                200,
                &[("content-length", "5, 5")],
                rf(Length(5), Some(5), true),
            ),
            (false, 200, &[], rf(UntilClose, None, false)),
            (false, 200, te_cl, rf(Chunked, None, false)),
            (
                false,
                200,
                &[("transfer-encoding", "gzip, chunked")],
                rf(Chunked, None, true),
            ),
            (
                false,
                200,
                &[("transfer-encoding", "gzip"), ("content-length", "3")],
                rf(UntilClose, None, false),
            ),
            (
                false,
                200,
                &[
                    ("transfer-encoding", "gzip,"),
                    ("transfer-encoding", "chunked"),
                ],
                rf(Chunked, None, true),
            ),
            (
                false,
                204,
                &[("content-length", "5")],
                rf(NoBody, None, true),
            ),
            (
                false,
                304,
                &[("content-length", "20")],
                rf(NoBody, None, true),
            ),
            (
                false,
                304,
                &[("transfer-encoding", "chunked")],
                rf(NoBody, None, true),
            ),
            (false, 103, &[], rf(NoBody, None, true)),
            (
                true,
                200,
                &[("content-length", "11")],
                rf(NoBody, Some(11), true),
            ),
            (true, 200, te_cl, rf(NoBody, None, false)),
            (
                true,
                204,
                &[("content-length", "11")],
                rf(NoBody, None, true),
            ),
        ];
        for (head, status, pairs, expected) in cases {
            assert_eq!(
                framing(*head, *status, v11, pairs).unwrap(),
                *expected,
                "{head} {status} {pairs:?}"
            );
        }
    }

    #[test]
    fn untrusted_framing_is_refused() {
        let v11 = Version::HTTP_11;
        for pairs in [
            &[("content-length", "5, 6")][..],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "-1")],
            &[("content-length", "+5")],
            &[("content-length", "")],
            &[("content-length", "0x10")],
            &[("content-length", "99999999999999999999")],
            &[("transfer-encoding", "chunked, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "chunked, gzip")],
            &[("transfer-encoding", "")],
            &[("transfer-encoding", " , ")],
        ] {
            assert!(framing(false, 200, v11, pairs).is_err(), "{pairs:?}");
        }
        assert!(
            framing(
                false,
                200,
                Version::HTTP_10,
                &[("transfer-encoding", "chunked")]
            )
            .is_err()
        );
        assert!(framing(false, 200, Version::HTTP_10, &[("content-length", "1")]).is_ok());
    }

    #[test]
    fn client_fields() {
        let mut out = Vec::new();
        rf(Body::Length(1234), Some(1234), true).put_fields(&mut out);
        rf(Body::UntilClose, None, false).put_fields(&mut out);
        rf(Body::None, None, true).put_fields(&mut out);
        rf(Body::None, Some(7), true).put_fields(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "content-length: 1234\r\ntransfer-encoding: chunked\r\ncontent-length: 7\r\n"
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        rf(Body::Chunked, None, false).set_fields(&mut headers);
        assert!(headers.is_empty(), "{headers:?}");
        rf(Body::Length(5), Some(5), true).set_fields(&mut headers);
        assert_eq!(headers.get(header::CONTENT_LENGTH).unwrap(), "5");
        assert_eq!(fixed(false, StatusCode::NO_CONTENT, 0).content_length, None);
        assert_eq!(fixed(true, StatusCode::OK, 3).content_length, Some(3));
        assert_eq!(fixed(false, StatusCode::OK, 3).body, Body::Length(3));
    }
}
