#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;
use std::sync::Arc;
use common::*;
use edge::{CertMap, Limits};
use bytes::Bytes;
use http_body_util::{Full, BodyExt};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::test]
async fn probe_h2_big_header() {
    let ca = Ca::new();
    let certs = Arc::new(CertMap::new());
    certs.insert("a", ["a.test"], ca.leaf(&["a.test"])).unwrap();
    let edge = TestEdge::start(vec![respond(&["a.test"], "a")], certs, Limits::default()).await;
    let tls = testkit::tls_connect(edge.https, "a.test", tls_config(ca.root_pem(), &[b"h2"])).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    for size in [12 * 1024, 20 * 1024] {
        let req = http::Request::get("https://a.test/").header("x-filler", "x".repeat(size)).body(Full::new(Bytes::new())).unwrap();
        let r = send.send_request(req).await;
        match r { Ok(r) => { let st = r.status(); let b = r.into_body().collect().await.map(|b| b.to_bytes()); eprintln!("{size}: {st} {b:?}") }, Err(e) => eprintln!("{size}: err {e:?}") }
    }
}
