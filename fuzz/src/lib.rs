//! The properties the fuzz targets check, beyond "no panic". Each `check_*` panics (a libFuzzer
//! crash) when the edge's wire code breaks one.

use edge::fuzzing::{
    self, BodyEnd, BodyFraming, Exchange, LaneHead, LaneRequest, UpstreamHead, UpstreamOutcome,
};

/// Hop-by-hop fields (RFC 9110 7.6.1 and the usual extras): never forwarded to a client as
/// the upstream sent them.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Responses up to this size are compared cut and uncut: well below the upstream client's
/// 64 KiB head limit (a head just over it may pass when its last piece completes it in one
/// read, and fail when cut).
const COMPARE_CUTS_UP_TO: usize = 4096;

/// Cut points for `len` bytes from a seed byte: up to 7, spread by a small xorshift.
pub fn cuts(seed: u8, len: usize) -> Vec<usize> {
    if len < 2 {
        return Vec::new();
    }
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..seed & 7)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            1 + (x as usize) % (len - 1)
        })
        .collect()
}

// ---- The lane's request head -------------------------------------------------------------

/// The lane's parser: what it takes it splits off exactly, leaves the rest; what it refuses or
/// cannot finish yet it leaves whole; a taken head written out again parses to the same
/// request; no shorter piece of the head is taken.
pub fn check_lane(input: &[u8]) {
    let outcome = fuzzing::lane_request(input);
    let request = match outcome.head {
        LaneHead::Incomplete | LaneHead::Refused => {
            assert_eq!(
                outcome.rest, input,
                "bytes lost from a head the lane did not take"
            );
            return;
        }
        LaneHead::Taken(request) => request,
    };
    let len = request.head.len();
    assert!(len > 0 && len <= input.len());
    assert_eq!(
        request.head,
        &input[..len],
        "the head is not the front of the buffer"
    );
    assert_eq!(
        outcome.rest,
        &input[len..],
        "the rest is not what follows the head"
    );
    check_lane_request(&request);

    // Written out again, it is the same request.
    let written = write_lane_request(&request);
    let again = fuzzing::lane_request(&written);
    match again.head {
        LaneHead::Taken(second) => {
            assert_eq!(second.head, written);
            assert!(again.rest.is_empty());
            assert_eq!(
                (&second.method, &second.target, &second.fields, second.close),
                (
                    &request.method,
                    &request.target,
                    &request.fields,
                    request.close
                ),
                "written out as {:?}",
                String::from_utf8_lossy(&written)
            );
        }
        other => panic!(
            "{request:?} written out as {:?} is {other:?}",
            String::from_utf8_lossy(&written)
        ),
    }

    // The lane reads heads in pieces: a piece of this head is never taken for a request.
    for cut in sample(len) {
        let piece = fuzzing::lane_request(&input[..cut]);
        assert_eq!(
            piece.head,
            LaneHead::Incomplete,
            "the first {cut} bytes of a {len}-byte head"
        );
    }
}

fn check_lane_request(request: &LaneRequest) {
    assert!(
        request.method == "GET" || request.method == "HEAD",
        "{request:?}"
    );
    assert!(request.version_11);
    assert!(request.target.starts_with('/'), "{request:?}");
    let mut close = false;
    for (name, value) in &request.fields {
        assert!(
            !matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "expect" | "upgrade"
            ),
            "the lane took a request with {name}"
        );
        if name == "connection" {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                assert!(
                    token.eq_ignore_ascii_case(b"close")
                        || token.eq_ignore_ascii_case(b"keep-alive"),
                    "the lane took Connection: {:?}",
                    String::from_utf8_lossy(value)
                );
            }
        }
    }
    assert_eq!(close, request.close);
}

fn write_lane_request(request: &LaneRequest) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\n", request.method, request.target).into_bytes();
    for (name, value) in &request.fields {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Cut points below `len`: all of them for short heads, 64 spread ones otherwise.
fn sample(len: usize) -> Vec<usize> {
    if len <= 256 {
        (0..len).collect()
    } else {
        (0..64).map(|i| i * len / 64).collect()
    }
}

// ---- The upstream's response --------------------------------------------------------------

/// The upstream client: one input is read cut and uncut, as a map and as a client head, and
/// must give the same response each time; the head written for the client is a valid head
/// whose framing matches the body that follows; a body never holds more than was sent.
///
/// Input: a flags byte (bit 0: the request was HEAD), a cut seed, then the upstream's bytes.
pub fn check_upstream(data: &[u8]) {
    let [flags, seed, input @ ..] = data else {
        return;
    };
    let head_request = flags & 1 == 1;
    let run = |client_head: bool, cuts: Vec<usize>| {
        fuzzing::upstream_response(
            input,
            &Exchange {
                head_request,
                client_head,
                cuts,
            },
        )
    };
    let client = run(true, Vec::new());
    let map = run(false, cuts(*seed, input.len()));
    check_response(input, head_request, &client);
    check_response(input, head_request, &map);
    if input.len() <= COMPARE_CUTS_UP_TO {
        assert_same(&client, &map, "as a client head uncut and as a map cut");
        let client_cut = run(true, cuts(*seed, input.len()));
        assert_same(&client, &client_cut, "as a client head uncut and cut");
    }
}

fn check_response(input: &[u8], head_request: bool, outcome: &UpstreamOutcome) {
    let Ok(head) = &outcome.head else {
        assert!(outcome.body.is_empty() && outcome.end.is_none());
        return;
    };
    let end = outcome.end.as_ref().expect("a head has an end");
    assert!(
        !matches!(end, BodyEnd::Stuck),
        "the decoder waited for more after the upstream closed: {outcome:?}"
    );
    assert!(
        head.status >= 200 || head.status == 101,
        "interim response {} returned as final",
        head.status
    );
    let bodiless = head_request || head.status < 200 || head.status == 204 || head.status == 304;
    if bodiless {
        assert_eq!(head.framing, BodyFraming::None, "{head:?}");
    }
    if head.reusable {
        assert_ne!(head.framing, BodyFraming::UntilClose);
    }
    let body: Vec<u8> = outcome.body.concat();
    assert!(
        body.len() <= input.len(),
        "{} body bytes from {} bytes",
        body.len(),
        input.len()
    );
    assert!(
        outcome.body.iter().all(|piece| !piece.is_empty()),
        "an empty body piece"
    );
    match (head.framing, end) {
        (BodyFraming::None, _) => {
            assert!(body.is_empty());
            assert!(matches!(end, BodyEnd::Complete { .. }), "{end:?}");
        }
        (BodyFraming::Length(n), BodyEnd::Complete { .. }) => {
            assert_eq!(
                body.len() as u64,
                n,
                "a length-delimited body of another length"
            );
            assert!(
                body.is_empty() || input.windows(body.len()).any(|w| w == body),
                "a body that is not in the input"
            );
        }
        (BodyFraming::UntilClose, BodyEnd::Complete { .. }) => {
            assert!(
                input.ends_with(&body),
                "a close-delimited body that is not the end of the input"
            );
        }
        _ => {}
    }
    // A 101 to a request that did not ask for an upgrade is refused by the proxy: its head
    // never reaches a client.
    if let Some((text, chunked, date)) = &head.client_head
        && head.status != 101
    {
        check_client_head(head, text, *chunked, *date);
    }
}

/// The head written for the client parses, says what the proxy will send, and carries no
/// hop-by-hop field of the upstream's.
fn check_client_head(head: &UpstreamHead, text: &[u8], chunked: bool, date: bool) {
    let shown = || String::from_utf8_lossy(text).into_owned();
    let mut whole = text.to_vec();
    whole.extend_from_slice(b"\r\n");
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Response::new(&mut fields);
    match parsed.parse(&whole) {
        Ok(httparse::Status::Complete(len)) => assert_eq!(len, whole.len(), "{}", shown()),
        other => panic!("the client head {:?} does not parse: {other:?}", shown()),
    }
    assert_eq!(parsed.code, Some(head.status));
    assert_eq!(parsed.version, Some(1));
    assert_eq!(
        chunked,
        matches!(head.framing, BodyFraming::Chunked | BodyFraming::UntilClose),
        "re-chunked for {:?}",
        head.framing
    );
    let named = |name: &str| {
        parsed
            .headers
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
            .collect::<Vec<_>>()
    };
    for name in HOP_BY_HOP {
        let values = named(name);
        if *name == "transfer-encoding" && chunked {
            assert_eq!(values, [b"chunked"], "{}", shown());
        } else {
            assert!(
                values.is_empty(),
                "{name} passed to the client: {}",
                shown()
            );
        }
    }
    assert!(!named("via").is_empty(), "no Via: {}", shown());
    assert_eq!(date, !named("date").is_empty());
    let lengths = named("content-length");
    if chunked {
        assert!(lengths.is_empty(), "a length next to chunks: {}", shown());
    }
    // RFC 9110 8.6: no Content-Length in a 204 response.
    if head.status == 204 {
        assert!(
            lengths.is_empty(),
            "Content-Length in a {}: {}",
            head.status,
            shown()
        );
    }
    if let BodyFraming::Length(n) = head.framing {
        // The client must be told where the body ends, and told the truth (an upstream's
        // list of equal values, `5, 5`, stands).
        assert!(
            !lengths.is_empty(),
            "a {n}-byte body without its length: {}",
            shown()
        );
        for value in lengths {
            for part in value.split(|&b| b == b',') {
                let said = std::str::from_utf8(part.trim_ascii())
                    .ok()
                    .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok());
                assert_eq!(said, Some(n), "{}", shown());
            }
        }
    }
}

/// Two readings of the same bytes give the same response (the head as a map or written out
/// aside, and whether nothing past the body had been read yet, may differ).
fn assert_same(a: &UpstreamOutcome, b: &UpstreamOutcome, what: &str) {
    fn strip(o: &UpstreamOutcome) -> impl PartialEq + std::fmt::Debug + '_ {
        let head = o
            .head
            .as_ref()
            .map(|h| (h.status, h.version_10, h.framing, h.reusable));
        let end = o.end.as_ref().map(|e| match e {
            BodyEnd::Complete { .. } => "complete".to_owned(),
            other => format!("{other:?}"),
        });
        (head, o.body.concat(), end)
    }
    assert_eq!(strip(a), strip(b), "{what}");
}

// ---- Chunked bodies -------------------------------------------------------------------------

const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";

/// The chunk decoder against a reference decoder written from RFC 9112 7.1 (with the same
/// leniencies: bare LF line ends, blanks around the size, extensions ignored; and its limit of
/// 4 KiB on a line): the same bytes
/// or the same failure, cut or not; never more bytes than it was given; a decoded body
/// chunked again decodes to itself.
///
/// Input: a cut seed, then the body's bytes.
pub fn check_chunked(data: &[u8]) {
    let [seed, body @ ..] = data else {
        return;
    };
    let (expected, end) = reference_chunked(body);
    let decode = |body: &[u8], cuts: Vec<usize>| {
        let mut input = CHUNKED_HEAD.to_vec();
        input.extend_from_slice(body);
        let cuts = cuts.into_iter().map(|c| c + CHUNKED_HEAD.len()).collect();
        let outcome = fuzzing::upstream_response(
            &input,
            &Exchange {
                head_request: false,
                client_head: false,
                cuts,
            },
        );
        let head = outcome.head.expect("the fixed head parses");
        assert_eq!(head.framing, BodyFraming::Chunked);
        (outcome.body, outcome.end.expect("a head has an end"))
    };
    let whole = decode(body, Vec::new());
    let decoded = whole.0.concat();
    assert!(decoded.len() <= body.len(), "more bytes out than in");
    match (&end, &whole.1) {
        (Reference::Complete { consumed }, BodyEnd::Complete { clean }) => {
            assert_eq!(decoded, expected, "decoded bytes differ from the reference");
            assert_eq!(*clean, *consumed == body.len(), "bytes past the body");
        }
        (Reference::Complete { .. }, other) => {
            panic!("the reference decodes {expected:?}, edge ends with {other:?}")
        }
        (Reference::Short | Reference::Invalid, BodyEnd::Error(_)) => {
            assert!(
                expected.starts_with(&decoded),
                "bytes before the failure differ from the reference"
            );
        }
        (reference, other) => panic!("the reference says {reference:?}, edge {other:?}"),
    }
    // Every line limit is the same cut or not (run with -max_len over 4096 to reach them).
    {
        let cut = decode(body, cuts(*seed, body.len()));
        assert_eq!(cut.0.concat(), decoded, "cut and uncut bodies differ");
        assert_eq!(
            std::mem::discriminant(&cut.1),
            std::mem::discriminant(&whole.1),
            "cut and uncut ends differ: {:?} and {:?}",
            cut.1,
            whole.1
        );
    }
    if matches!(whole.1, BodyEnd::Complete { .. }) {
        // Chunked again the way the proxy writes it, it decodes to itself.
        let mut again = Vec::new();
        for piece in &whole.0 {
            again.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            again.extend_from_slice(piece);
            again.extend_from_slice(b"\r\n");
        }
        again.extend_from_slice(b"0\r\n\r\n");
        let (pieces, end) = decode(&again, Vec::new());
        assert_eq!(pieces.concat(), decoded);
        assert_eq!(end, BodyEnd::Complete { clean: true });
    }
}

/// The upstream client's limit on a chunk-size or trailer line.
const MAX_LINE: usize = 4096;

#[derive(Debug)]
enum Reference {
    /// The body ended after `consumed` bytes.
    Complete {
        consumed: usize,
    },
    /// The input ended inside the body.
    Short,
    Invalid,
}

/// A chunked body decoded the plain way: the data, and how it ended.
fn reference_chunked(input: &[u8]) -> (Vec<u8>, Reference) {
    let mut out = Vec::new();
    let mut at = 0;
    // The next line (without its LF and one CR before it), or None at the end of the input.
    let line = |at: &mut usize| -> Option<&[u8]> {
        let rest = &input[*at..];
        let end = rest.iter().position(|&b| b == b'\n')?;
        *at += end + 1;
        let line = &rest[..end];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    };
    // A line over the limit (CR included) is refused, whole or not.
    let too_long = |at: usize| {
        let rest = &input[at..];
        rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len()) > MAX_LINE
    };
    loop {
        if too_long(at) {
            return (out, Reference::Invalid);
        }
        let Some(size_line) = line(&mut at) else {
            return (out, Reference::Short);
        };
        let digits = size_line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return (out, Reference::Invalid);
        }
        let size = digits.iter().fold(0u64, |n, &d| {
            n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
        });
        if size == 0 {
            // Trailer fields, dropped, up to an empty line.
            loop {
                if too_long(at) {
                    return (out, Reference::Invalid);
                }
                match line(&mut at) {
                    None => return (out, Reference::Short),
                    Some([]) => return (out, Reference::Complete { consumed: at }),
                    Some(_) => {}
                }
            }
        }
        let available = (input.len() - at) as u64;
        if size > available {
            out.extend_from_slice(&input[at..]);
            return (out, Reference::Short);
        }
        let size = size as usize;
        out.extend_from_slice(&input[at..at + size]);
        at += size;
        if too_long(at) {
            return (out, Reference::Invalid);
        }
        match line(&mut at) {
            None => return (out, Reference::Short),
            Some([]) => {}
            Some(_) => return (out, Reference::Invalid),
        }
    }
}

// ---- PROXY protocol -------------------------------------------------------------------------

/// A v1 line is at most this long (the specification's limit).
const V1_MAX: usize = 107;

/// The PROXY header: a header found is found again in exactly its bytes, what follows it
/// changes nothing, and no shorter piece of it is taken for a header or refused (the reader
/// consumes bytes the parser says are still header); a v1 line stays within its limit.
pub fn check_proxy(input: &[u8]) {
    let parsed = fuzzing::proxy_header(input);
    match &parsed {
        Ok(Some(header)) => {
            assert!(header.len > 0 && header.len <= input.len(), "{header:?}");
            assert_eq!(
                fuzzing::proxy_header(&input[..header.len]),
                parsed,
                "the header alone reads differently"
            );
            if input.starts_with(b"PROXY ") {
                assert!(header.len <= V1_MAX, "a v1 line of {} bytes", header.len);
            }
            for cut in sample(header.len) {
                assert_eq!(
                    fuzzing::proxy_header(&input[..cut]),
                    Ok(None),
                    "the first {cut} bytes of a {}-byte header",
                    header.len
                );
            }
        }
        Ok(None) => {
            // Still header so far: every piece of it is too.
            for cut in sample(input.len()) {
                assert_eq!(
                    fuzzing::proxy_header(&input[..cut]),
                    Ok(None),
                    "{cut} bytes of an incomplete header"
                );
            }
        }
        Err(_) => {}
    }
}

// ---- Host -----------------------------------------------------------------------------------

/// Host parsing: the normal form parses to itself, with or without a port and in any case;
/// it is lower case and usable as a URL's authority; a name has valid labels.
pub fn check_host(input: &[u8]) {
    let parsed = edge::Host::parse(input);
    let upper = edge::Host::parse(&input.to_ascii_uppercase());
    let lower = edge::Host::parse(&input.to_ascii_lowercase());
    assert_eq!(parsed.is_ok(), upper.is_ok(), "case changed the verdict");
    assert_eq!(parsed.is_ok(), lower.is_ok(), "case changed the verdict");
    let Ok(host) = parsed else {
        return;
    };
    assert_eq!(Ok(&host), upper.as_ref());
    let text = host.as_str();
    assert!(!text.is_empty() && text.len() <= 253 + 2, "{text:?}");
    assert!(
        text.is_ascii() && !text.bytes().any(|b| b.is_ascii_uppercase()),
        "{text:?}"
    );
    assert_eq!(
        edge::Host::parse(text.as_bytes()),
        Ok(host.clone()),
        "not stable"
    );
    assert_eq!(
        edge::Host::parse(format!("{text}:8443").as_bytes()),
        Ok(host.clone()),
        "a port changed it"
    );
    let uri = http::Uri::builder()
        .scheme("https")
        .authority(text)
        .path_and_query("/")
        .build();
    let uri = uri.unwrap_or_else(|e| panic!("{text:?} is no URL authority: {e}"));
    assert_eq!(uri.host(), Some(text));
    match host.name() {
        Some(name) => {
            assert_eq!(name, text);
            assert!(!text.starts_with('['));
            for label in name.split('.') {
                assert!((1..=63).contains(&label.len()), "{name:?}");
                assert!(!label.starts_with('-') && !label.ends_with('-'), "{name:?}");
                assert!(
                    label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                    "{name:?}"
                );
            }
        }
        None => assert!(
            text.starts_with('[') || text.parse::<std::net::Ipv4Addr>().is_ok(),
            "{text:?} is neither a name nor an address"
        ),
    }
}
