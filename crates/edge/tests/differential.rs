//! The express lane against hyper's server: random pipelines (GET, HEAD, POST, PUT, DELETE,
//! OPTIONS; no body, Content-Length or chunked bodies; `Connection: close`), written in random
//! pieces to a proxy site on an edge with the lane and on one without
//! ([`Edge::with_express_lane`]). A raw upstream records every request that reaches it; both
//! edges must deliver the requests the pipeline holds, in order, with their bodies, and give
//! the client the same answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge::{Action, CertMap, Edge, Limits, NoChallenges, Proxy, Routes, Site};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Bound on one pipeline's round trip.
const DEADLINE: Duration = Duration::from_secs(10);

/// A request as the upstream saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    body: Vec<u8>,
}

#[derive(Debug, Clone)]
enum ReqBody {
    None,
    Length(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    target: String,
    body: ReqBody,
    close: bool,
    /// A field that changes nothing for the upstream's record.
    extra: Option<&'static str>,
}

impl Req {
    fn bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!(
                "{} {} HTTP/1.1\r\nHost: app.test\r\n",
                self.method, self.target
            )
            .as_bytes(),
        );
        if let Some(extra) = self.extra {
            out.extend_from_slice(extra.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        match &self.body {
            ReqBody::None => out.extend_from_slice(b"\r\n"),
            ReqBody::Length(body) => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            ReqBody::Chunked(chunks) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for chunk in chunks {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
    }

    /// What the upstream must see.
    fn seen(&self) -> Seen {
        Seen {
            method: self.method.to_owned(),
            target: self.target.clone(),
            body: match &self.body {
                ReqBody::None => Vec::new(),
                ReqBody::Length(body) => body.clone(),
                ReqBody::Chunked(chunks) => chunks.concat(),
            },
        }
    }
}

/// A pipeline: its requests and where its bytes are cut into separate writes.
#[derive(Debug, Clone)]
struct Pipeline {
    requests: Vec<Req>,
    cuts: Vec<Index>,
}

impl Pipeline {
    /// The requests the edge must forward: up to the first that closes the connection.
    fn expected(&self) -> Vec<Seen> {
        let end = self
            .requests
            .iter()
            .position(|r| r.close)
            .map_or(self.requests.len(), |i| i + 1);
        self.requests[..end].iter().map(Req::seen).collect()
    }

    fn pieces(&self) -> Vec<Vec<u8>> {
        let mut bytes = Vec::new();
        for req in &self.requests {
            req.bytes(&mut bytes);
        }
        let mut cuts: Vec<usize> = self.cuts.iter().map(|i| i.index(bytes.len())).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut pieces = Vec::new();
        let mut at = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            if cut > at {
                pieces.push(bytes[at..cut].to_vec());
                at = cut;
            }
        }
        pieces
    }
}

fn request() -> impl Strategy<Value = Req> {
    let method = prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]);
    let target = "/[a-z0-9._-]{0,10}(\\?[a-z0-9=&%]{0,10})?";
    let body = prop_oneof![
        3 => Just(ReqBody::None),
        3 => prop::collection::vec(any::<u8>(), 0..200).prop_map(ReqBody::Length),
        2 => prop::collection::vec(prop::collection::vec(any::<u8>(), 1..100), 0..4)
            .prop_map(ReqBody::Chunked),
    ];
    let extra = prop::option::of(prop::sample::select(vec![
        "Connection: keep-alive",
        "Accept: */*",
        "X-Trace: 1",
        "user-agent: differential/1",
    ]));
    (method, target, body, prop::bool::weighted(0.12), extra).prop_map(
        |(method, target, body, close, extra)| Req {
            method,
            target,
            // A HEAD request with a body is legal but pointless; keep it bodiless.
            body: if method == "HEAD" {
                ReqBody::None
            } else {
                body
            },
            close,
            extra,
        },
    )
}

fn pipeline() -> impl Strategy<Value = Pipeline> {
    (
        prop::collection::vec(request(), 1..6),
        prop::collection::vec(any::<Index>(), 0..6),
    )
        .prop_map(|(requests, cuts)| Pipeline { requests, cuts })
}

/// An upstream that records each request (head parsed with httparse, body by length or
/// chunks) and answers `200` with `METHOD TARGET BODY-LENGTH` (no body for HEAD).
async fn recording_upstream(record: Arc<Mutex<Vec<Seen>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let _ = serve_upstream(stream, record).await;
            });
        }
    });
    addr
}

/// Reads more into `buf`; an error at EOF.
async fn more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// One CRLF-terminated line off the front of `buf`, without the CRLF.
async fn line<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf[..end].to_vec();
            buf.drain(..end + 2);
            return Ok(line);
        }
        more(stream, buf).await?;
    }
}

/// `n` bytes off the front of `buf`.
async fn take<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
) -> std::io::Result<Vec<u8>> {
    while buf.len() < n {
        more(stream, buf).await?;
    }
    Ok(buf.drain(..n).collect())
}

/// A chunked body off the front of `buf` (trailers dropped).
async fn chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = line(stream, buf).await?;
        let digits = String::from_utf8_lossy(&size_line);
        let digits = digits.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(digits, 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {digits:?}")))?;
        if size == 0 {
            while !line(stream, buf).await?.is_empty() {}
            return Ok(body);
        }
        body.extend(take(stream, buf, size).await?);
        if !line(stream, buf).await?.is_empty() {
            return Err(std::io::Error::other("no CRLF after a chunk"));
        }
    }
}

/// A head at the front of `buf`: its length, method, target and body framing.
type Head = (usize, String, String, Option<Framing>);

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
}

fn parse_request(buf: &[u8]) -> std::io::Result<Option<Head>> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let mut framing = None;
    for field in req.headers.iter() {
        if field.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(field.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| std::io::Error::other("bad content-length"))?;
            framing = Some(Framing::Length(n));
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            framing = Some(Framing::Chunked);
        }
    }
    Ok(Some((
        len,
        req.method.unwrap_or("").to_owned(),
        req.path.unwrap_or("").to_owned(),
        framing,
    )))
}

async fn serve_upstream(
    mut stream: TcpStream,
    record: Arc<Mutex<Vec<Seen>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let (len, method, target, framing) = loop {
            if let Some(head) = parse_request(&buf)? {
                break head;
            }
            more(&mut stream, &mut buf).await?;
        };
        buf.drain(..len);
        let body = match framing {
            None => Vec::new(),
            Some(Framing::Length(n)) => take(&mut stream, &mut buf, n).await?,
            Some(Framing::Chunked) => chunked(&mut stream, &mut buf).await?,
        };
        let answer = format!("{method} {target} {}", body.len());
        let head = method == "HEAD";
        record.lock().unwrap().push(Seen {
            method,
            target,
            body,
        });
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        )
        .into_bytes();
        if !head {
            out.extend_from_slice(answer.as_bytes());
        }
        stream.write_all(&out).await?;
    }
}

/// Reads the client's responses: status and body of each, up to `count` or until the edge
/// closes the connection.
async fn read_responses<S: AsyncRead + Unpin>(
    stream: &mut S,
    requests: &[Req],
    count: usize,
) -> Vec<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut responses = Vec::new();
    for req in &requests[..count] {
        let (len, status, framing) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut fields);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut framing = None;
                    for field in resp.headers.iter() {
                        if field.name.eq_ignore_ascii_case("content-length") {
                            let n = std::str::from_utf8(field.value).unwrap().trim();
                            framing = Some(Framing::Length(n.parse().unwrap()));
                        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
                            framing = Some(Framing::Chunked);
                        }
                    }
                    break (len, resp.code.unwrap_or(0), framing);
                }
                Ok(httparse::Status::Partial) => {
                    if more(stream, &mut buf).await.is_err() {
                        return responses;
                    }
                }
                Err(e) => panic!(
                    "bad response head ({e}): {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            }
        };
        buf.drain(..len);
        let body = match (req.method == "HEAD", framing) {
            (true, _) | (false, None) => Vec::new(),
            (false, Some(Framing::Length(n))) => take(stream, &mut buf, n).await.unwrap(),
            (false, Some(Framing::Chunked)) => chunked(stream, &mut buf).await.unwrap(),
        };
        responses.push((status, body));
    }
    responses
}

/// A proxy site for `app.test` on an edge with or without the express lane.
async fn start_edge(upstream: SocketAddr, lane: bool, shutdown: &CancellationToken) -> SocketAddr {
    let mut site = Site::new(
        vec!["app.test".to_owned()],
        Action::Proxy(Proxy::new(vec![format!("http://{upstream}")])),
    );
    site.https_redirect = false;
    let edge = Edge::new(
        Routes::new(vec![site]).unwrap(),
        Arc::new(CertMap::new()),
        Arc::new(NoChallenges),
        Limits::default(),
    )
    .unwrap()
    .with_express_lane(lane);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Arc::new(edge).serve_http(listener, shutdown.clone()));
    addr
}

/// What one edge did with a pipeline: the requests the upstream saw, the client's answers.
type Run = (Vec<Seen>, Vec<(u16, Vec<u8>)>);

async fn run(edge: SocketAddr, record: &Mutex<Vec<Seen>>, pipeline: &Pipeline) -> Run {
    record.lock().unwrap().clear();
    let stream = TcpStream::connect(edge).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let pieces = pipeline.pieces();
    let writing = tokio::spawn(async move {
        for piece in pieces {
            // The edge may close early (after `Connection: close`): later writes may fail.
            if writer.write_all(&piece).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        writer
    });
    let count = pipeline.expected().len();
    let exchange = async {
        let responses = read_responses(&mut reader, &pipeline.requests, count).await;
        // The connection closes once the writer is done too.
        drop(writing.await.unwrap());
        responses
    };
    let responses = timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answers within {DEADLINE:?} for {pipeline:?}"));
    let seen = record.lock().unwrap().clone();
    (seen, responses)
}

#[test]
fn the_lane_and_hyper_forward_the_same_requests() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let record = Arc::new(Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let (lane, hyper) = runtime.block_on(async {
        let upstream = recording_upstream(Arc::clone(&record)).await;
        (
            start_edge(upstream, true, &shutdown).await,
            start_edge(upstream, false, &shutdown).await,
        )
    });
    // Bounded for a loaded two-core machine: each case is two pipelines of up to five
    // requests over loopback. PROPTEST_CASES=N runs more.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    });
    let result = runner.run(&pipeline(), |pipeline| {
        let expected = pipeline.expected();
        let (on_lane, on_hyper) = runtime.block_on(async {
            (
                run(lane, &record, &pipeline).await,
                run(hyper, &record, &pipeline).await,
            )
        });
        prop_assert_eq!(
            &on_hyper.0,
            &expected,
            "hyper's server forwarded other requests"
        );
        prop_assert_eq!(&on_lane.0, &expected, "the lane forwarded other requests");
        let answers: Vec<(u16, Vec<u8>)> = expected
            .iter()
            .zip(&pipeline.requests)
            .map(|(seen, req)| {
                let body = if req.method == "HEAD" {
                    Vec::new()
                } else {
                    format!("{} {} {}", seen.method, seen.target, seen.body.len()).into_bytes()
                };
                (200, body)
            })
            .collect();
        prop_assert_eq!(&on_hyper.1, &answers, "hyper's answers");
        prop_assert_eq!(&on_lane.1, &answers, "the lane's answers");
        Ok::<(), TestCaseError>(())
    });
    shutdown.cancel();
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, pipeline)) => {
            panic!("{reason}\nminimal pipeline: {pipeline:#?}")
        }
        Err(e) => panic!("{e}"),
    }
}
