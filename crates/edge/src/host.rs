//! The request's host, parsed strictly from a `Host` header or an HTTP/2 `:authority`.
//!
//! Accepted: a DNS name (letters, digits, `-`, `_`; labels of 1..=63 bytes, not starting or ending
//! with `-`; at most 253 bytes), an IPv4 address or a bracketed IPv6 address, each optionally
//! followed by `:port`. The result is lower-cased with the port and one trailing dot removed.
//! Anything else (user info, percent escapes, spaces, zone ids, ...) is an error, answered with 400.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest DNS name in presentation form, without the trailing dot.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
/// Longest input worth looking at: a maximal name, a trailing dot and `:65535`.
const MAX_INPUT_LEN: usize = MAX_NAME_LEN + 1 + 6;

/// Why a host was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    #[error("empty host")]
    Empty,
    #[error("host too long")]
    TooLong,
    #[error("invalid character in host")]
    InvalidChar,
    #[error("empty label in host")]
    EmptyLabel,
    #[error("label too long or starting or ending with '-'")]
    BadLabel,
    #[error("invalid port")]
    BadPort,
    #[error("invalid IPv6 literal")]
    BadIpLiteral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Name,
    Ipv4,
    Ipv6,
}

/// A normalised host: `example.com`, `192.0.2.1` or `[2001:db8::1]`, never with a port.
#[derive(Clone, PartialEq, Eq)]
pub struct Host {
    text: String,
    kind: Kind,
}

impl Host {
    /// Parses a `Host` header value or an authority (`host[:port]`).
    pub fn parse(input: &[u8]) -> Result<Host, HostError> {
        if input.is_empty() {
            return Err(HostError::Empty);
        }
        if input.len() > MAX_INPUT_LEN {
            return Err(HostError::TooLong);
        }
        if input[0] == b'[' {
            return parse_ipv6(input);
        }
        let (host, port) = match input.iter().position(|&b| b == b':') {
            Some(i) => (&input[..i], Some(&input[i + 1..])),
            None => (input, None),
        };
        if let Some(port) = port {
            check_port(port)?;
        }
        let text = normalise_name(host)?;
        // Only a text starting with a digit can be an IPv4 address: names skip the parse.
        let kind =
            if text.starts_with(|c: char| c.is_ascii_digit()) && text.parse::<Ipv4Addr>().is_ok() {
                Kind::Ipv4
            } else {
                Kind::Name
            };
        Ok(Host { text, kind })
    }

    /// The normalised host (IPv6 literals keep their brackets), usable in a URL.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The DNS name, or `None` for an IP literal.
    pub fn name(&self) -> Option<&str> {
        (self.kind == Kind::Name).then_some(self.text.as_str())
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Validates and normalises a configured hostname (no port, no IP literal): lower-cased, one
/// trailing dot removed.
pub(crate) fn normalise_config_name(name: &str) -> Result<String, HostError> {
    if name.len() > MAX_NAME_LEN + 1 {
        return Err(HostError::TooLong);
    }
    if name.bytes().any(|b| b == b':' || b == b'[') {
        return Err(HostError::InvalidChar);
    }
    normalise_name(name.as_bytes())
}

fn parse_ipv6(input: &[u8]) -> Result<Host, HostError> {
    let close = input
        .iter()
        .position(|&b| b == b']')
        .ok_or(HostError::BadIpLiteral)?;
    let inner = std::str::from_utf8(&input[1..close]).map_err(|_| HostError::BadIpLiteral)?;
    let addr: Ipv6Addr = inner.parse().map_err(|_| HostError::BadIpLiteral)?;
    match &input[close + 1..] {
        [] => {}
        [b':', port @ ..] => check_port(port)?,
        _ => return Err(HostError::BadPort),
    }
    Ok(Host {
        text: format!("[{addr}]"),
        kind: Kind::Ipv6,
    })
}

/// An empty port is allowed (RFC 3986 `port = *DIGIT`); otherwise 1..=5 digits up to 65535.
fn check_port(port: &[u8]) -> Result<(), HostError> {
    if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        return Err(HostError::BadPort);
    }
    let value = port
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    if value > u32::from(u16::MAX) {
        return Err(HostError::BadPort);
    }
    Ok(())
}

fn normalise_name(name: &[u8]) -> Result<String, HostError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong);
    }
    for label in name.split(|&b| b == b'.') {
        check_label(label)?;
    }
    // Every byte is ASCII now, so this conversion cannot fail; map the impossible error anyway.
    let text = std::str::from_utf8(name).map_err(|_| HostError::InvalidChar)?;
    Ok(text.to_ascii_lowercase())
}

fn check_label(label: &[u8]) -> Result<(), HostError> {
    let (Some(&first), Some(&last)) = (label.first(), label.last()) else {
        return Err(HostError::EmptyLabel);
    };
    if !label
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(HostError::InvalidChar);
    }
    if label.len() > MAX_LABEL_LEN || first == b'-' || last == b'-' {
        return Err(HostError::BadLabel);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(input: &str) -> String {
        match Host::parse(input.as_bytes()) {
            Ok(host) => host.as_str().to_owned(),
            Err(err) => panic!("{input:?} rejected: {err}"),
        }
    }

    fn err(input: &str) -> HostError {
        match Host::parse(input.as_bytes()) {
            Ok(host) => panic!("{input:?} accepted as {host:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(ok("example.com"), "example.com");
        assert_eq!(ok("Example.COM"), "example.com");
        assert_eq!(ok("example.com."), "example.com");
        assert_eq!(ok("example.com:8080"), "example.com");
        assert_eq!(ok("EXAMPLE.com.:443"), "example.com");
        assert_eq!(ok("example.com:"), "example.com");
        assert_eq!(ok("localhost"), "localhost");
        assert_eq!(ok("xn--bcher-kva.example"), "xn--bcher-kva.example");
        assert_eq!(ok("_acme.example.com"), "_acme.example.com");
        assert_eq!(
            Host::parse(b"www.Example.com")
                .ok()
                .as_ref()
                .and_then(Host::name),
            Some("www.example.com")
        );
    }

    #[test]
    fn ip_literals() {
        let v4 = Host::parse(b"192.0.2.1:80").ok();
        assert_eq!(v4.as_ref().map(Host::as_str), Some("192.0.2.1"));
        assert_eq!(v4.as_ref().and_then(Host::name), None);
        let v6 = Host::parse(b"[2001:DB8::1]:443").ok();
        assert_eq!(v6.as_ref().map(Host::as_str), Some("[2001:db8::1]"));
        assert_eq!(v6.as_ref().and_then(Host::name), None);
        assert_eq!(ok("[::1]"), "[::1]");
        assert_eq!(err("[::1"), HostError::BadIpLiteral);
        assert_eq!(err("[fe80::1%eth0]"), HostError::BadIpLiteral);
        assert_eq!(err("[::1]x"), HostError::BadPort);
        assert_eq!(err("[::1]:99999"), HostError::BadPort);
        assert_eq!(err("[example.com]"), HostError::BadIpLiteral);
        assert_eq!(err("::1"), HostError::BadPort);
    }

    #[test]
    fn bad_hosts_are_rejected() {
        assert_eq!(err(""), HostError::Empty);
        assert_eq!(err("."), HostError::Empty);
        assert_eq!(err(":80"), HostError::Empty);
        assert_eq!(err("exa mple.com"), HostError::InvalidChar);
        assert_eq!(err("user@example.com"), HostError::InvalidChar);
        assert_eq!(err("example.com/path"), HostError::InvalidChar);
        assert_eq!(err("ex%41mple.com"), HostError::InvalidChar);
        assert_eq!(err("exämple.com"), HostError::InvalidChar);
        assert_eq!(err("example..com"), HostError::EmptyLabel);
        assert_eq!(err(".example.com"), HostError::EmptyLabel);
        assert_eq!(err("example.com.."), HostError::EmptyLabel);
        assert_eq!(err("-example.com"), HostError::BadLabel);
        assert_eq!(err("example-.com"), HostError::BadLabel);
        assert_eq!(err(&format!("{}.com", "a".repeat(64))), HostError::BadLabel);
        assert_eq!(err(&"a.".repeat(130)), HostError::TooLong);
        assert_eq!(err("example.com:http"), HostError::BadPort);
        assert_eq!(err("example.com:65536"), HostError::BadPort);
        assert_eq!(err("example.com:123456"), HostError::BadPort);
        assert_eq!(err("example.com:80:80"), HostError::BadPort);
        assert_eq!(err("*.example.com"), HostError::InvalidChar);
    }

    #[test]
    fn config_names() {
        assert_eq!(
            normalise_config_name("WWW.Example.com."),
            Ok("www.example.com".to_owned())
        );
        assert_eq!(
            normalise_config_name("example.com:80"),
            Err(HostError::InvalidChar)
        );
        assert_eq!(normalise_config_name("[::1]"), Err(HostError::InvalidChar));
    }

    proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Host::parse(&input);
        }

        #[test]
        fn hostlike_input_never_panics(input in "[a-zA-Z0-9.:\\[\\]_%-]{0,80}") {
            if let Ok(host) = Host::parse(input.as_bytes()) {
                // A parsed host is stable: parsing its normal form gives the same host.
                prop_assert_eq!(Host::parse(host.as_str().as_bytes()), Ok(host.clone()));
                prop_assert!(!host.as_str().bytes().any(|b| b.is_ascii_uppercase()));
            }
        }
    }
}
