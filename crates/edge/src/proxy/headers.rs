//! Header rewriting between client and upstream: hop-by-hop fields (RFC 9110 7.6.1),
//! X-Forwarded-*, X-Real-IP, Forwarded (RFC 7239), Via, and request fields with `_` in their
//! names.

use std::io::Write as _;
use std::net::IpAddr;

use bytes::{BufMut as _, Bytes, BytesMut};
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Fields that describe one connection, never forwarded (besides those `Connection` lists).
/// `Upgrade` is forwarded only as part of a switch the proxy carries (set again then).
/// `Proxy-*` fields and `Proxy` (httpoxy) go too, see [`strip_hop_by_hop`].
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    HTTP2_SETTINGS,
    header::UPGRADE,
];

/// What the proxy knows about the client side of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding<'a> {
    /// The client's address (the TCP peer).
    pub(crate) client: IpAddr,
    /// Whether the client came over TLS.
    pub(crate) https: bool,
    /// The host the client asked for, as sent (`Host` or `:authority`, port included).
    pub(crate) host: Option<&'a HeaderValue>,
    /// Fields with `_` in their names are dropped (see [`crate::Proxy`]).
    pub(crate) drop_underscore_fields: bool,
}

/// Where [`to_upstream`] puts the fields it adds.
pub(crate) enum Target<'a> {
    /// Into the header map (a request sent with hyper's client: upgrades).
    Map,
    /// As `name: value\r\n` lines into this buffer, which the proxy's own client writes after
    /// the map's fields: no map insertions on the hot path. Fields of the same names the client
    /// sent are removed from the map (`Via` is kept: ours is one more line of the list).
    Lines(&'a mut BytesMut),
}

/// Rewrites a client's request headers for the upstream. `upgrade` is the client's `Upgrade`
/// value when the request asks for a protocol switch that is being forwarded; `host` is what
/// to do with `Host`; `target` is where the forwarding fields go.
///
/// This runs on every proxied request, so the fields are looked at once ([`Present`]) and a
/// map lookup is made only for a field that is there.
pub(crate) fn to_upstream(
    headers: &mut HeaderMap,
    version: Version,
    fwd: &Forwarding<'_>,
    host: SetHost,
    upgrade: Option<HeaderValue>,
    target: Target<'_>,
) {
    let present = Present::scan(headers);
    strip_hop_by_hop(headers, present);
    if fwd.drop_underscore_fields && present.has(Present::UNDERSCORE) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().contains('_'))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    // The edge has answered `100-continue` itself (hyper does when the body is first read);
    // the upstream gets the body as it streams.
    if present.has(Present::EXPECT) {
        headers.remove(header::EXPECT);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
    if version == Version::HTTP_2 {
        join_cookies(headers);
    }
    match host {
        SetHost::Keep => {}
        SetHost::To(h) => {
            headers.insert(header::HOST, h);
        }
        SetHost::Remove => {
            if present.has(Present::HOST) {
                headers.remove(header::HOST);
            }
        }
    }

    let client = fwd.client.to_canonical();
    let proto = if fwd.https { "https" } else { "http" };
    let mut scratch;
    let (out, lines) = match target {
        Target::Lines(out) => (out, true),
        Target::Map => {
            // X-Forwarded-For/-Proto/-Host, X-Real-IP, Forwarded, Via: one allocation instead
            // of growing the map field by field; both list values are written into one buffer.
            headers.reserve(6);
            scratch = BytesMut::with_capacity(160);
            (&mut scratch, false)
        }
    };
    let mut field = Field {
        headers,
        out,
        lines,
    };

    // X-Forwarded-For: earlier hops as received (joined on one line: many applications read
    // only the first), then this client.
    field.begin(&X_FORWARDED_FOR);
    if present.has(Present::X_FORWARDED_FOR) {
        append_list(field.out, field.headers.get_all(&X_FORWARDED_FOR));
    }
    push_ip(field.out, client);
    field.end(X_FORWARDED_FOR, present.has(Present::X_FORWARDED_FOR));

    field.begin(&X_FORWARDED_PROTO);
    field.out.put_slice(proto.as_bytes());
    field.end(X_FORWARDED_PROTO, present.has(Present::X_FORWARDED_PROTO));

    // The client's address, set by the proxy: what a client sends as X-Real-IP is not passed.
    field.begin(&X_REAL_IP);
    push_ip(field.out, client);
    field.end(X_REAL_IP, present.has(Present::X_REAL_IP));

    match fwd.host {
        Some(h) => {
            field.begin(&X_FORWARDED_HOST);
            field.out.put_slice(h.as_bytes());
            field.end(X_FORWARDED_HOST, present.has(Present::X_FORWARDED_HOST));
        }
        None if present.has(Present::X_FORWARDED_HOST) => {
            field.headers.remove(&X_FORWARDED_HOST);
        }
        None => {}
    }

    // Forwarded: earlier elements, then ours: for=...;host=...;proto=...
    field.begin(&FORWARDED);
    if present.has(Present::FORWARDED) {
        append_list(field.out, field.headers.get_all(&FORWARDED));
    }
    match client {
        IpAddr::V4(_) => {
            field.out.put_slice(b"for=");
            push_ip(field.out, client);
        }
        IpAddr::V6(_) => {
            field.out.put_slice(b"for=\"[");
            push_ip(field.out, client);
            field.out.put_slice(b"]\"");
        }
    }
    if let Some(h) = fwd.host {
        field.out.put_slice(b";host=");
        push_token_or_quoted(field.out, h.as_bytes());
    }
    field.out.put_slice(b";proto=");
    field.out.put_slice(proto.as_bytes());
    field.end(FORWARDED, present.has(Present::FORWARDED));

    let via = via(version);
    if lines {
        field.begin(&header::VIA);
        field.out.put_slice(via.as_bytes());
        field.out.put_slice(b"\r\n");
    } else {
        field.headers.append(header::VIA, via);
    }
}

/// One forwarding field written by [`to_upstream`]: its value is built in `out`, then either
/// ends its line there or is split off and set in the map.
struct Field<'a> {
    headers: &'a mut HeaderMap,
    out: &'a mut BytesMut,
    lines: bool,
}

impl Field<'_> {
    fn begin(&mut self, name: &HeaderName) {
        if self.lines {
            self.out.put_slice(name.as_str().as_bytes());
            self.out.put_slice(b": ");
        }
    }

    /// `sent`: the client sent a field of this name, which this one replaces.
    fn end(&mut self, name: HeaderName, sent: bool) {
        if self.lines {
            self.out.put_slice(b"\r\n");
            if sent {
                self.headers.remove(name);
            }
        } else {
            insert_bytes(self.headers, name, self.out.split().freeze());
        }
    }
}

/// What [`to_upstream`] does with `Host`.
#[derive(Debug)]
pub(crate) enum SetHost {
    /// The client's own `Host` field is the one to send (it names the same host as the
    /// request target).
    Keep,
    To(HeaderValue),
    /// None to send (the upstream's is set later, per attempt).
    Remove,
}

/// Rewrites an upstream's response headers for the client. `upgraded`: a 101 whose switch is
/// being forwarded, which keeps `Connection: upgrade` and `Upgrade`.
pub(crate) fn to_client(headers: &mut HeaderMap, version: Version, upgraded: bool) {
    let upgrade = if upgraded {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(headers, Present::scan(headers));
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
    headers.append(header::VIA, via(version));
}

/// Whether a request asks to switch protocols (HTTP/1.1 `Connection: upgrade` + `Upgrade`);
/// returns the `Upgrade` value.
pub(crate) fn upgrade_request(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let upgrade = headers.get(header::UPGRADE)?;
    let asks = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    asks.then(|| upgrade.clone())
}

/// The fields of a message that the rewrite removes or extends, found in one pass over its
/// names: bit `i` for `HOP_BY_HOP[i]`, then the constants below.
#[derive(Debug, Clone, Copy)]
struct Present(u32);

impl Present {
    const PROXY_FIELD: u32 = 1 << 8;
    const EXPECT: u32 = 1 << 9;
    const X_FORWARDED_FOR: u32 = 1 << 10;
    const X_FORWARDED_HOST: u32 = 1 << 11;
    const FORWARDED: u32 = 1 << 12;
    const HOST: u32 = 1 << 13;
    const X_FORWARDED_PROTO: u32 = 1 << 14;
    const X_REAL_IP: u32 = 1 << 15;
    /// A name with `_` in it.
    const UNDERSCORE: u32 = 1 << 16;

    fn scan(headers: &HeaderMap) -> Present {
        let mut bits = 0;
        for name in headers.keys() {
            if name.as_str().as_bytes().contains(&b'_') {
                bits |= Self::UNDERSCORE;
            }
            bits |= if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
                1 << i
            } else if name == header::HOST {
                Self::HOST
            } else if name == X_FORWARDED_FOR {
                Self::X_FORWARDED_FOR
            } else if name == FORWARDED {
                Self::FORWARDED
            } else if name == X_FORWARDED_HOST {
                Self::X_FORWARDED_HOST
            } else if name == X_FORWARDED_PROTO {
                Self::X_FORWARDED_PROTO
            } else if name == X_REAL_IP {
                Self::X_REAL_IP
            } else if name == header::EXPECT {
                Self::EXPECT
            } else if is_proxy_field(name) {
                Self::PROXY_FIELD
            } else {
                0
            };
        }
        Present(bits)
    }

    fn has(self, bits: u32) -> bool {
        self.0 & bits != 0
    }
}

/// Removes hop-by-hop fields: the fixed set, `Proxy-*`, `Proxy` and whatever `Connection`
/// lists. Only what `present` found is looked up: most messages carry none of these fields,
/// or only `Connection`, and nothing is allocated for them.
fn strip_hop_by_hop(headers: &mut HeaderMap, present: Present) {
    if present.has(1) {
        // Nothing is allocated unless a field other than `keep-alive`/`close`/`upgrade` is
        // listed.
        let listed: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| {
                connection_lists_field(t.as_bytes())
                    // End to end whatever a client says: `SetHost::Keep` relies on it.
                    && !t.eq_ignore_ascii_case("host")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present.has(1 << i) {
            headers.remove(name);
        }
    }
    if present.has(Present::PROXY_FIELD) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| is_proxy_field(k))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// Whether a field name as received (any case) is one [`strip_hop_by_hop`] removes by name
/// (not counting what `Connection` lists).
/// Called for every field of every upstream response head: the length picks the one or two
/// names to compare (the test `hop_by_hop_names_as_received` keeps this to [`HOP_BY_HOP`]).
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |h: &[u8]| name.eq_ignore_ascii_case(h);
    let fixed = match name.len() {
        2 => is(b"te"),
        5 => is(b"proxy"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        14 => is(b"http2-settings"),
        17 => is(b"transfer-encoding"),
        _ => false,
    };
    // `Proxy-Connection` among them.
    fixed
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// Whether a `Connection` token names a field to remove, beyond the fixed set. Framing
/// fields are never removed so: a message's framing is decided from them (see
/// [`crate::framing`]), and `Connection: Content-Length` would otherwise leave a body without
/// an end.
pub(crate) fn connection_lists_field(token: &[u8]) -> bool {
    !token.eq_ignore_ascii_case(b"keep-alive")
        && !token.eq_ignore_ascii_case(b"close")
        && !token.eq_ignore_ascii_case(b"upgrade")
        && !token.eq_ignore_ascii_case(b"content-length")
        && !token.eq_ignore_ascii_case(b"transfer-encoding")
}

/// `Proxy` (httpoxy) and `Proxy-*` fields.
fn is_proxy_field(name: &HeaderName) -> bool {
    name.as_str() == "proxy" || name.as_str().starts_with("proxy-")
}

/// Writes an address the way `Display` does (IPv4 without the formatting machinery: it is on
/// every proxied request).
fn push_ip(out: &mut BytesMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.put_u8(b'.');
                }
                if octet >= 100 {
                    out.put_u8(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.put_u8(b'0' + octet / 10 % 10);
                }
                out.put_u8(b'0' + octet % 10);
            }
        }
        // Writing to a BytesMut cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out.writer(), "{v6}");
        }
    }
}

/// The comma-separated tokens of every `Connection` field (values that are not text are
/// skipped).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(_), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = BytesMut::with_capacity(256);
    for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.put_slice(b"; ");
        }
        joined.put_slice(v.as_bytes());
    }
    insert_bytes(headers, header::COOKIE, joined.freeze());
}

/// Appends every value of a list field, each followed by `", "`.
fn append_list(out: &mut BytesMut, values: header::GetAll<'_, HeaderValue>) {
    for v in values {
        let v = v.as_bytes().trim_ascii();
        if !v.is_empty() {
            out.put_slice(v);
            out.put_slice(b", ");
        }
    }
}

/// Inserts a value built from valid header values and ASCII text.
fn insert_bytes(headers: &mut HeaderMap, name: HeaderName, value: Bytes) {
    match HeaderValue::from_maybe_shared(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        // Cannot happen (every part was a valid value or printable ASCII); drop the field
        // rather than forward something stale.
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// RFC 7239 values are tokens or quoted strings.
fn push_token_or_quoted(out: &mut BytesMut, value: &[u8]) {
    let token = !value.is_empty()
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
    if token {
        out.put_slice(value);
    } else {
        out.put_u8(b'"');
        for &b in value {
            if b == b'"' || b == b'\\' {
                out.put_u8(b'\\');
            }
            out.put_u8(b);
        }
        out.put_u8(b'"');
    }
}

/// `Via` for a message received with `version`.
pub(crate) fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_10 => "1.0 fleetgate",
        Version::HTTP_2 => "2 fleetgate",
        Version::HTTP_3 => "3 fleetgate",
        _ => "1.1 fleetgate",
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_names_as_received() {
        for name in &HOP_BY_HOP {
            let lower = name.as_str();
            assert!(is_hop_by_hop(lower.as_bytes()), "{lower}");
            assert!(
                is_hop_by_hop(lower.to_ascii_uppercase().as_bytes()),
                "{lower}"
            );
        }
        for name in [
            "Proxy",
            "proxy-authorization",
            "Proxy-Foo",
            "TE",
            "Keep-Alive",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in [
            "",
            "t",
            "tee",
            "content-length",
            "proxyx",
            "via",
            "date",
            "server",
            "connectionx",
            "x-upgrade",
            "trailers",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn all(m: &HeaderMap, name: &str) -> Vec<String> {
        m.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn push_ip_writes_what_display_does(v4 in proptest::prelude::any::<u32>(), v6 in proptest::prelude::any::<u128>()) {
            for ip in [IpAddr::from(v4.to_be_bytes()), IpAddr::from(v6.to_be_bytes())] {
                let mut out = BytesMut::new();
                push_ip(&mut out, ip);
                let shown = ip.to_string();
                proptest::prop_assert_eq!(&out[..], shown.as_bytes());
            }
        }
    }

    /// The fields `to_upstream` writes as lines, added to what it left in the map, are the
    /// fields it sets in the map, in the same order per name.
    fn assert_lines_match_map(
        mut original: HeaderMap,
        expected: &HeaderMap,
        version: Version,
        fwd: &Forwarding<'_>,
    ) {
        let mut lines = BytesMut::new();
        to_upstream(
            &mut original,
            version,
            fwd,
            SetHost::Keep,
            None,
            Target::Lines(&mut lines),
        );
        let text = std::str::from_utf8(&lines).unwrap();
        assert!(text.ends_with("\r\n"), "{text:?}");
        for line in text.trim_end().split("\r\n") {
            let (name, value) = line.split_once(": ").unwrap();
            original.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let names: std::collections::BTreeSet<&str> = expected
            .keys()
            .chain(original.keys())
            .map(HeaderName::as_str)
            .collect();
        for name in names {
            assert_eq!(all(&original, name), all(expected, name), "{name}");
        }
    }

    #[test]
    fn request_rewrite() {
        let mut h = map(&[
            ("host", "example.com:8443"),
            ("connection", "keep-alive, X-Secret, Host"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("proxy", "http://evil"),
            ("upgrade", "h2c"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("forwarded", "for=203.0.113.1"),
            ("via", "1.1 lb"),
            ("x-forwarded-proto", "http"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("accept", "*/*"),
        ]);
        let host = h.get("host").cloned();
        let fwd = Forwarding {
            client: "192.0.2.9".parse().unwrap(),
            https: true,
            host: host.as_ref(),
            drop_underscore_fields: true,
        };
        let original = h.clone();
        to_upstream(
            &mut h,
            Version::HTTP_11,
            &fwd,
            SetHost::Keep,
            None,
            Target::Map,
        );
        assert_lines_match_map(original, &h, Version::HTTP_11, &fwd);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "proxy-authorization",
            "proxy",
            "upgrade",
            "expect",
            "x_forwarded_for",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(all(&h, "x-real-ip"), ["192.0.2.9"]);
        assert_eq!(
            all(&h, "x-forwarded-for"),
            ["203.0.113.1, 198.51.100.2, 192.0.2.9"]
        );
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["example.com:8443"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=203.0.113.1, for=192.0.2.9;host=\"example.com:8443\";proto=https"]
        );
        assert_eq!(all(&h, "via"), ["1.1 lb", "1.1 fleetgate"]);
        assert_eq!(all(&h, "host"), ["example.com:8443"]);
        assert_eq!(all(&h, "accept"), ["*/*"]);
    }

    #[test]
    fn ipv6_h2_cookies_and_upgrade() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        let fwd = Forwarding {
            client: "2001:db8::7".parse().unwrap(),
            https: false,
            host: None,
            drop_underscore_fields: true,
        };
        to_upstream(
            &mut h,
            Version::HTTP_2,
            &fwd,
            SetHost::To(HeaderValue::from_static("10.0.0.5:8080")),
            None,
            Target::Map,
        );
        assert_eq!(all(&h, "cookie"), ["a=1; b=2"]);
        assert_eq!(all(&h, "forwarded"), ["for=\"[2001:db8::7]\";proto=http"]);
        assert_eq!(all(&h, "x-forwarded-for"), ["2001:db8::7"]);
        assert_eq!(all(&h, "via"), ["2 fleetgate"]);
        assert_eq!(all(&h, "host"), ["10.0.0.5:8080"]);

        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        let up = upgrade_request(&h, Version::HTTP_11);
        assert_eq!(up, Some(HeaderValue::from_static("websocket")));
        assert_eq!(upgrade_request(&h, Version::HTTP_2), None);
        let fwd = Forwarding {
            client: "::ffff:192.0.2.1".parse().unwrap(),
            https: false,
            host: None,
            drop_underscore_fields: true,
        };
        to_upstream(
            &mut h,
            Version::HTTP_11,
            &fwd,
            SetHost::Remove,
            up,
            Target::Map,
        );
        assert_eq!(all(&h, "connection"), ["upgrade"]);
        assert_eq!(all(&h, "upgrade"), ["websocket"]);
        assert_eq!(all(&h, "sec-websocket-key"), ["k"]);
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.1"]);
        assert!(!h.contains_key("host"));
        assert!(upgrade_request(&map(&[("upgrade", "websocket")]), Version::HTTP_11).is_none());
    }

    #[test]
    fn response_rewrite() {
        let mut h = map(&[
            ("connection", "close, x-debug"),
            ("x-debug", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
            ("upgrade", "websocket"),
            ("set-cookie", "a=1"),
        ]);
        to_client(&mut h, Version::HTTP_11, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(all(&h, "set-cookie"), ["a=1"]);
        assert_eq!(all(&h, "via"), ["1.1 fleetgate"]);

        let mut h = map(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "x"),
        ]);
        to_client(&mut h, Version::HTTP_11, true);
        assert_eq!(all(&h, "connection"), ["upgrade"]);
        assert_eq!(all(&h, "upgrade"), ["websocket"]);
        assert_eq!(all(&h, "sec-websocket-accept"), ["x"]);
    }
}
