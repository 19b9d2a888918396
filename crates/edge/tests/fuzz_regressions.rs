//! Inputs the fuzz targets (`fuzz/`) found, kept as tests so they stay fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edge::fuzzing::proxy_header;

/// fuzz/proxy_protocol: ppp reads a v1 line only up to its first CR and calls a line missing
/// fields "incomplete", so a whole but short line (or one with a stray CR) left the edge
/// waiting for bytes that could never complete it, consuming what came, until the header
/// timeout or the 1256-byte bound. A whole line is now judged as it is, and bytes that start
/// neither version's header are refused at once.
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
