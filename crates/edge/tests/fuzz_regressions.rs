//! Inputs the fuzz targets (`fuzz/`) found, kept as tests so they stay fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edge::fuzzing::{BodyFraming, Exchange, UpstreamOutcome, proxy_header, upstream_response};

/// fuzz/proxy_protocol: ppp reads a v1 line only up to its first CR and calls a line missing
/// fields "incomplete", so a whole but short line (or one with a stray CR) left the edge
/// waiting for bytes that could never complete it, consuming what came, until the header
/// timeout or the 1256-byte bound; and it ends a line at its first CR, so a stray CR made a
/// shorter header than the line. A v1 header is now the line up to its CRLF, judged whole, and
/// bytes that start neither version's header are refused at once.
#[test]
fn a_whole_v1_line_is_never_taken_for_an_incomplete_one() {
    let found: &[u8] = b"PROXY TCP6\rPR\0\0\0\0\0\0\0\x07O\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\
        \0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
        \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0XY \xb0KN0]3s \
        200.0.\0 \r\r\n\n";
    for input in [
        found,
        b"PROXY TCP4 203.0.113.7\r\nGET / HTTP/1.1\r\n",
        b"PROXY TCP4\rX\r\n",
        // Neither version: ppp called the longer input incomplete and a piece of it invalid.
        b"P\rPROXY ",
        // ppp ended the line at its first CR: a 20-byte header, then "\nQ UUN\r\n" taken
        // for the start of the TLS or HTTP stream.
        b"PROXY UNKNOWN \n UN\rN\nQ UUN\r\nQU",
        b"PROXY UNKNOWN but this line goes on and on and on and on and on and on and on and on and on and on\r\n",
    ] {
        assert!(proxy_header(input).is_err(), "{:?}", String::from_utf8_lossy(input));
    }
    // Still cut short: more may come.
    assert_eq!(proxy_header(b"PROXY TCP4 203.0.113.7"), Ok(None));
    assert_eq!(
        proxy_header(b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r"),
        Ok(None)
    );
}

/// The upstream's `response` as the proxy reads it for a client on the lane.
fn for_the_lane(response: &[u8]) -> UpstreamOutcome {
    upstream_response(
        response,
        &Exchange {
            client_head: true,
            ..Exchange::default()
        },
    )
}

/// The values of field `name` in a client head.
fn values(outcome: &UpstreamOutcome, name: &str) -> Vec<String> {
    let head = outcome.head.as_ref().expect("a head");
    let (text, _, _) = head.client_head.as_ref().expect("a client head");
    String::from_utf8_lossy(text)
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// fuzz/upstream_response, within its first minute (issue 10, defect 4): a 204 with
/// Content-Length went to the client with it (RFC 9110 8.6: a server MUST NOT send it; over
/// HTTP/2 it makes the stream malformed).
#[test]
fn a_204_reaches_the_client_without_content_length() {
    let outcome = for_the_lane(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
    if outcome.head.is_ok() {
        assert_eq!(values(&outcome, "content-length"), Vec::<String>::new());
    }
}

/// Issue 10, defect 1, as fuzz/upstream_response checks it (its dictionary names framing
/// fields as list tokens to reach it): a body framed by a Content-Length that `Connection`
/// also names must still reach the client with its length (or not at all: a 502).
#[test]
fn a_length_named_by_connection_still_frames_the_body() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nConnection: close, content-length\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let outcome = for_the_lane(response);
        let Ok(head) = &outcome.head else {
            continue;
        };
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert_eq!(values(&outcome, "content-length"), ["5"]);
        assert_eq!(outcome.body.concat(), b"hello");
    }
}

/// Found while writing fuzz/chunked_body's reference decoder (the target now compares cut and
/// uncut reads over 4 KiB too): a chunk line over the 4 KiB limit passed when it arrived in
/// one read and failed when cut, so the same response worked or broke with the network's
/// segment boundaries.
#[test]
fn a_chunk_line_over_the_limit_fails_however_it_arrives() {
    let long = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
        "x".repeat(5000)
    );
    for cuts in [vec![], vec![3000], vec![4600]] {
        let outcome = upstream_response(
            long.as_bytes(),
            &Exchange {
                cuts: cuts.clone(),
                ..Exchange::default()
            },
        );
        assert!(
            matches!(outcome.end, Some(edge::fuzzing::BodyEnd::Error(_))),
            "cut at {cuts:?}: {:?}",
            outcome.end
        );
    }
}
