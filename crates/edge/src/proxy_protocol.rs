//! The PROXY protocol (HAProxy's, v1 text and v2 binary) on accepted connections.
//!
//! Behind a TCP load balancer (which TLS-ALPN-01 needs: the balancer must pass the handshake
//! through untouched) every connection comes from the balancer's address, so X-Forwarded-For,
//! Forwarded, `ip_hash` and the access log would name the balancer. A balancer configured with
//! `send-proxy` / `send-proxy-v2` writes the client's address in a header before anything
//! else; [`read_header`] takes exactly that header off the socket and leaves the rest (the TLS
//! ClientHello or the HTTP request) to be read as usual.
//!
//! Only peers in the trusted list ([`ProxyProtocol`]) must send the header; a connection from
//! anyone else is served as a direct client, so a header it sends is just a bad request.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult as _, v1, v2};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// The longest header accepted: 16 bytes plus the v2 address block and a modest allowance for
/// TLVs (HAProxy's SSL and unique-id TLVs fit); v1 lines are at most 107 bytes.
const MAX_HEADER: usize = 16 + 216 + 1024;

/// The longest v1 line, CRLF included (the specification's limit).
const V1_MAX: usize = 107;

/// The first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Which peers are balancers that send a PROXY header on every connection.
#[derive(Debug, Clone, Default)]
pub struct ProxyProtocol {
    trusted: Vec<IpNet>,
}

impl ProxyProtocol {
    /// Balancers by address or network (`10.0.0.5`, `10.0.0.0/8`, `fd00::/8`). Empty: off.
    pub fn new(trusted: Vec<IpNet>) -> ProxyProtocol {
        ProxyProtocol { trusted }
    }

    /// Parses one `address` or `network/prefix` entry of the configuration.
    pub fn parse_source(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        let parsed = if text.contains('/') {
            text.parse::<IpNet>().map(|net| net.trunc()).ok()
        } else {
            text.parse::<IpAddr>().map(IpNet::from).ok()
        };
        parsed.ok_or_else(|| format!("{text:?} is not an address or network like 10.0.0.0/8"))
    }

    pub fn is_enabled(&self) -> bool {
        !self.trusted.is_empty()
    }

    /// Whether a connection from `peer` must start with a PROXY header.
    pub(crate) fn expects_header(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|net| net.contains(&peer))
    }
}

/// Why a trusted peer's connection was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before a complete PROXY header")]
    Closed,
    #[error("no valid PROXY header ({0})")]
    Invalid(String),
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
}

/// What the header said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Relayed for this client.
    Client(SocketAddr),
    /// The balancer's own connection (a health check, `LOCAL` / `UNKNOWN`): the peer stays.
    Balancer,
}

/// Reads one PROXY header (v1 or v2) off `stream`, consuming exactly its bytes.
///
/// The bytes are peeked first and consumed only as far as they are known to be header, so
/// whatever follows stays in the socket for TLS or HTTP. Callers bound the wait with a timeout.
pub(crate) async fn read_header(stream: &mut TcpStream) -> Result<Origin, HeaderError> {
    let mut header = Vec::with_capacity(128);
    let mut peeked = vec![0; MAX_HEADER];
    loop {
        let n = stream
            .peek(&mut peeked[..MAX_HEADER - header.len()])
            .await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let mut candidate = header.clone();
        candidate.extend_from_slice(&peeked[..n]);
        match parse(&candidate)? {
            Some((len, origin)) => {
                // `len` ends inside what was peeked: consume just that.
                let mut rest = vec![0; len - header.len()];
                stream.read_exact(&mut rest).await?;
                return Ok(origin);
            }
            None => {
                // All of it is header so far: consume it, then wait for more.
                if candidate.len() >= MAX_HEADER {
                    return Err(HeaderError::TooLong);
                }
                let mut taken = vec![0; n];
                stream.read_exact(&mut taken).await?;
                header.extend_from_slice(&taken);
            }
        }
    }
}

/// A complete header at the start of `input`: its length and what it says. `None` while more
/// bytes are needed.
pub(crate) fn parse(input: &[u8]) -> Result<Option<(usize, Origin)>, HeaderError> {
    // Which version it is, from the first bytes alone (ppp may call garbage incomplete).
    let v1 = input.starts_with(&b"PROXY "[..input.len().min(6)]);
    let v2 = input.starts_with(&V2_SIGNATURE[..input.len().min(V2_SIGNATURE.len())]);
    if !v1 && !v2 {
        return Err(HeaderError::Invalid(
            "neither a v1 nor a v2 PROXY header".to_owned(),
        ));
    }
    // A v1 line is judged only once its CRLF is in (ppp reads a cut line as a bad port), and
    // ppp sees that line alone: it ends a line at its first CR, whatever follows.
    let input = if v1 {
        match input.windows(2).position(|w| w == b"\r\n") {
            None if input.len() < V1_MAX => return Ok(None),
            None => return Err(HeaderError::Invalid("a v1 line without its end".to_owned())),
            Some(at) if at + 2 > V1_MAX => {
                return Err(HeaderError::Invalid("a v1 line over 107 bytes".to_owned()));
            }
            Some(at) => &input[..at + 2],
        }
    } else {
        input
    };
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        // A whole v1 line is not incomplete, whatever ppp makes of it.
        return if v1 {
            Err(HeaderError::Invalid("an unreadable v1 line".to_owned()))
        } else {
            Ok(None)
        };
    }
    match result {
        HeaderResult::V1(Ok(header)) => {
            let origin = match header.addresses {
                v1::Addresses::Tcp4(a) => {
                    Origin::Client(SocketAddr::from((a.source_address, a.source_port)))
                }
                v1::Addresses::Tcp6(a) => {
                    Origin::Client(SocketAddr::from((a.source_address, a.source_port)))
                }
                v1::Addresses::Unknown => Origin::Balancer,
            };
            if header.header.len() != input.len() {
                // A CR inside the line: ppp's line is not the line.
                return Err(HeaderError::Invalid("a CR inside a v1 line".to_owned()));
            }
            Ok(Some((header.header.len(), origin)))
        }
        HeaderResult::V2(Ok(header)) => {
            let origin = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Origin::Client(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Origin::Client(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => Origin::Balancer,
            };
            Ok(Some((header.len(), origin)))
        }
        HeaderResult::V1(Err(e)) => Err(HeaderError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(HeaderError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v2_tcp4(src: [u8; 4], sport: u16, tlv: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x21); // v2, PROXY
        h.push(0x11); // IPv4, stream
        h.extend_from_slice(&(12 + tlv.len() as u16).to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&[127, 0, 0, 1]);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h.extend_from_slice(tlv);
        h
    }

    #[test]
    fn v1_and_v2_give_the_client_and_the_exact_length() {
        let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
        let (len, origin) = parse(v1).unwrap().unwrap();
        assert_eq!(&v1[len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(origin, Origin::Client("203.0.113.7:51000".parse().unwrap()));

        let v1 = b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n\x16\x03\x01";
        let (len, origin) = parse(v1).unwrap().unwrap();
        assert_eq!(&v1[len..], b"\x16\x03\x01");
        assert_eq!(
            origin,
            Origin::Client("[2001:db8::7]:51000".parse().unwrap())
        );

        let mut v2 = v2_tcp4([198, 51, 100, 9], 40000, &[0x04, 0, 1, 42]);
        let header_len = v2.len();
        v2.extend_from_slice(b"\x16\x03\x01");
        let (len, origin) = parse(&v2).unwrap().unwrap();
        assert_eq!(len, header_len);
        assert_eq!(
            origin,
            Origin::Client("198.51.100.9:40000".parse().unwrap())
        );
    }

    #[test]
    fn local_and_unknown_keep_the_balancer_as_peer() {
        let (len, origin) = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!((len, origin), (15, Origin::Balancer));
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().unwrap(), (16, Origin::Balancer));
    }

    #[test]
    fn partial_headers_wait_and_garbage_is_refused() {
        let full = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n";
        for cut in 1..full.len() {
            assert!(parse(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let v2 = v2_tcp4([198, 51, 100, 9], 40000, &[]);
        for cut in 1..v2.len() {
            assert!(parse(&v2[..cut]).unwrap().is_none(), "v2 cut at {cut}");
        }
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sources_are_addresses_or_networks() {
        let pp = ProxyProtocol::new(vec![
            ProxyProtocol::parse_source("10.1.2.3/8").unwrap(),
            ProxyProtocol::parse_source("192.0.2.1").unwrap(),
            ProxyProtocol::parse_source("fd00::/8").unwrap(),
        ]);
        assert!(pp.expects_header("10.200.0.1".parse().unwrap()));
        assert!(pp.expects_header("192.0.2.1".parse().unwrap()));
        assert!(pp.expects_header("::ffff:192.0.2.1".parse().unwrap()));
        assert!(pp.expects_header("fd12::1".parse().unwrap()));
        assert!(!pp.expects_header("192.0.2.2".parse().unwrap()));
        assert!(!ProxyProtocol::default().is_enabled());
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0"] {
            assert!(ProxyProtocol::parse_source(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&input);
        }
    }
}
