//! The HTTP/1.1 wire format as the edge writes it: status lines and field lines, for the lane's
//! answers and for the upstream client's copy of an upstream's head alike.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use http::StatusCode;

/// An HTTP/1.1 status line, with the status's canonical reason phrase (as hyper writes it).
pub(crate) fn put_status_line(out: &mut impl BufMut, status: StatusCode) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
}

/// A field line: `name: value`.
pub(crate) fn put_field(out: &mut impl BufMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Writes a `Date` field for now, formatted once a second per thread.
pub(crate) fn put_date(out: &mut BytesMut) {
    thread_local! {
        static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let text = DATE.with(|date| {
        let (cached, text) = date.get();
        if cached == second {
            return text;
        }
        let mut text = [0; 29];
        let formatted = httpdate::fmt_http_date(now);
        // Always 29 bytes ("Sun, 06 Nov 1994 08:49:37 GMT").
        if formatted.len() == text.len() {
            text.copy_from_slice(formatted.as_bytes());
        }
        date.set((second, text));
        text
    });
    put_field(out, b"date", &text);
}
