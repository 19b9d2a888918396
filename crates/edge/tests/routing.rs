//! Sites over HTTP and HTTPS: redirects, fixed responses, the https redirect, HSTS, host checks,
//! ACME HTTP-01.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use edge::{CertMap, Hsts, Limits};
use http::StatusCode;
use tokio::io::AsyncWriteExt as _;

struct Fixture {
    ca: Ca,
    edge: TestEdge,
}

/// old.test + www.old.test -> https://new.test (301, keep path);
/// promo.test -> https://new.test/landing (302, fixed), served over plain HTTP too;
/// new.test: 200 "welcome" with HSTS; *.wild.test: 200 "wild".
async fn fixture() -> Fixture {
    let ca = Ca::new();
    let certs = Arc::new(CertMap::new());
    certs
        .insert(
            "old",
            ["old.test", "www.old.test"],
            ca.leaf(&["old.test", "www.old.test"]),
        )
        .unwrap();
    certs
        .insert("promo", ["promo.test"], ca.leaf(&["promo.test"]))
        .unwrap();
    certs
        .insert("new", ["new.test"], ca.leaf(&["new.test"]))
        .unwrap();
    certs
        .insert("wild", ["*.wild.test"], ca.leaf(&["*.wild.test"]))
        .unwrap();
    let mut promo = redirect(&["promo.test"], "https://new.test/landing", 302, false);
    promo.https_redirect = false;
    let mut new = respond(&["new.test"], "welcome");
    new.hsts = Some(Hsts {
        max_age: Duration::from_secs(31_536_000),
        include_subdomains: true,
    });
    let sites = vec![
        redirect(
            &["old.test", "www.old.test"],
            "https://new.test/",
            301,
            true,
        ),
        promo,
        new,
        respond(&["*.wild.test"], "wild"),
    ];
    let edge = TestEdge::start(sites, certs, Limits::default()).await;
    Fixture { ca, edge }
}

#[tokio::test]
async fn redirects_over_https_keep_or_replace_the_path() {
    let f = fixture().await;
    let root = f.ca.root_pem();
    let r = https_get(f.edge.https, "old.test", "old.test", root, "/a/b?x=1&y=%20")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header("location"), Some("https://new.test/a/b?x=1&y=%20"));
    assert!(r.body.is_empty());

    let r = https_get(f.edge.https, "www.old.test", "WWW.Old.Test.", root, "/")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header("location"), Some("https://new.test/"));

    let r = https_get(
        f.edge.https,
        "promo.test",
        "promo.test",
        root,
        "/sale?utm=1",
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), Some("https://new.test/landing"));
}

#[tokio::test]
async fn plain_http_redirects_to_https_unless_the_site_opts_out() {
    let f = fixture().await;
    let port = f.edge.https.port();
    let r = testkit::http_get(f.edge.http, "old.test", "/a/b?x=1")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.header("location"),
        Some(format!("https://old.test:{port}/a/b?x=1").as_str())
    );

    let r = testkit::http_get(f.edge.http, "New.Test:80", "/")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.header("location"),
        Some(format!("https://new.test:{port}/").as_str())
    );
    assert_eq!(
        r.header("strict-transport-security"),
        None,
        "no HSTS over plain HTTP"
    );

    // promo.test opted out: its own action runs over HTTP.
    let r = testkit::http_get(f.edge.http, "promo.test", "/x?y")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), Some("https://new.test/landing"));
}

#[tokio::test]
async fn fixed_response_with_hsts_and_wildcards() {
    let f = fixture().await;
    let root = f.ca.root_pem();
    let r = https_get(f.edge.https, "new.test", "new.test", root, "/anything")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"welcome");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    let r = https_get(f.edge.https, "a.wild.test", "a.wild.test", root, "/")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"wild");
    assert_eq!(r.header("strict-transport-security"), None);
}

#[tokio::test]
async fn unknown_hosts_get_404_on_http_and_421_on_https() {
    let f = fixture().await;
    let root = f.ca.root_pem();
    let r = testkit::http_get(f.edge.http, "nobody.test", "/")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!r.body.is_empty());
    let r = testkit::http_get(f.edge.http, "127.0.0.1", "/")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Host not served at all.
    let r = https_get(f.edge.https, "new.test", "nobody.test", root, "/")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    // Host served, but with another certificate than this connection's.
    let r = https_get(f.edge.https, "new.test", "old.test", root, "/")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    // Another name of the same certificate is fine (connection reuse).
    let r = https_get(f.edge.https, "old.test", "www.old.test", root, "/p")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header("location"), Some("https://new.test/p"));
}

#[tokio::test]
async fn invalid_or_missing_host_is_400() {
    let f = fixture().await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: exa_mple%.test\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: user@old.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: old.test:http\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: old.test\r\nHost: new.test\r\n\r\n",
    ] {
        let reply = testkit::raw_http(f.edge.http, request).await.unwrap();
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{:?} -> {reply:?}",
            String::from_utf8_lossy(request)
        );
    }
    // Absolute-form: the URI's authority wins over Host.
    let reply = testkit::raw_http(
        f.edge.http,
        b"GET http://promo.test/x HTTP/1.1\r\nHost: old.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 302"), "{reply:?}");
}

#[tokio::test]
async fn http01_challenges_are_answered_for_any_host() {
    let f = fixture().await;
    f.edge
        .challenges
        .add_http01("old.test", "tok_EN-1", "tok_EN-1.thumbprint");
    // A host no site lists (yet): another node ordered its certificate, and the CA asks this
    // one (issue 12).
    f.edge
        .challenges
        .add_http01("nobody.test", "tok_NB-2", "tok_NB-2.thumbprint");
    let path = "/.well-known/acme-challenge/tok_EN-1";
    let r = testkit::http_get(f.edge.http, "old.test", path)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "tok_EN-1.thumbprint");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    // Host is normalised before the lookup.
    let r = testkit::http_get(f.edge.http, "OLD.test.:80", path)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);

    let unlisted = "/.well-known/acme-challenge/tok_NB-2";
    for host in ["nobody.test", "NOBODY.test:80"] {
        let r = testkit::http_get(f.edge.http, host, unlisted)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{host}");
        assert_eq!(r.text(), "tok_NB-2.thumbprint");
    }
    // The lane hands challenges to hyper: a pipelined one behind a plain GET is answered too.
    let mut tcp = tokio::net::TcpStream::connect(f.edge.http).await.unwrap();
    tcp.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\nGET {unlisted} HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let both = String::from_utf8(read_to_close(&mut tcp).await).unwrap();
    assert!(both.starts_with("HTTP/1.1 404"), "{both}");
    assert!(both.ends_with("tok_NB-2.thumbprint"), "{both}");

    // Unknown token (for a served host or not), a token for another host, malformed tokens,
    // and an unknown host off the challenge path: 404, never a redirect.
    for (host, path) in [
        ("old.test", "/.well-known/acme-challenge/other"),
        ("old.test", "/.well-known/acme-challenge/"),
        ("old.test", "/.well-known/acme-challenge/a.b"),
        ("old.test", unlisted),
        ("www.old.test", path),
        ("nobody.test", path),
        ("nobody.test", "/.well-known/acme-challenge/other"),
        ("nobody.test", "/"),
    ] {
        let r = testkit::http_get(f.edge.http, host, path).await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{host}{path}");
    }
}

#[tokio::test]
async fn routes_can_be_replaced() {
    let f = fixture().await;
    let root = f.ca.root_pem();
    let routes = edge::Routes::new(vec![respond(&["old.test"], "now a page")]).unwrap();
    f.edge.edge.set_routes(routes);
    let r = https_get(f.edge.https, "old.test", "old.test", root, "/")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"now a page");
    let r = https_get(f.edge.https, "new.test", "new.test", root, "/")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
}
