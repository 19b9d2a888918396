//! The admin API over a real `fleetgate run`: CRUD, bad input (each refused with a problem
//! document and no change in the store), tokens, HTTP/2, a unix socket, paging; and the
//! `fleetgate sites` CLI on the same store.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use common::Node;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789abcdef";

/// Where the admin API listens.
#[derive(Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    H1,
    H2,
}

/// A client of one node's admin API.
#[derive(Clone)]
struct Admin {
    target: Target,
    token: Option<String>,
    proto: Proto,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The problem document, checked for its media type and members.
    fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status, "{p}");
        for member in ["type", "title", "detail"] {
            assert!(p[member].is_string(), "{member} missing: {p}");
        }
        p
    }
}

impl Admin {
    fn with_token(&self, token: Option<&str>) -> Admin {
        Admin {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    fn h2(&self) -> Admin {
        Admin {
            proto: Proto::H2,
            ..self.clone()
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://admin{path}"))
            .header("host", "admin");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let run = async {
            match &self.target {
                Target::Tcp(addr) => {
                    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await?);
                    self.exchange(io, req).await
                }
                Target::Unix(path) => {
                    let io = TokioIo::new(tokio::net::UnixStream::connect(path).await?);
                    self.exchange(io, req).await
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .context("admin request timed out")?
    }

    async fn exchange<I>(&self, io: I, req: Request<Full<Bytes>>) -> Result<Reply>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let response = match self.proto {
            Proto::H1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                sender.send_request(req).await?
            }
            Proto::H2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                sender.send_request(req).await?
            }
        };
        if self.proto == Proto::H2 {
            assert_eq!(response.version(), http::Version::HTTP_2);
        }
        let (parts, body) = response.into_parts();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await?.to_bytes(),
        })
    }

    async fn get(&self, path: &str) -> Result<Reply> {
        self.send(Method::GET, path, &[], None).await
    }

    async fn json(&self, method: Method, path: &str, body: &Value) -> Result<Reply> {
        self.json_with(method, path, &[], body).await
    }

    async fn json_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Result<Reply> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(
            method,
            path,
            &all,
            Some(Bytes::from(serde_json::to_vec(body)?)),
        )
        .await
    }

    /// Every site, through the pages.
    async fn all_sites(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/sites?limit=1000&cursor={c}"),
                None => "/v1/sites?limit=1000".to_string(),
            };
            let reply = self.get(&path).await?;
            if reply.status != StatusCode::OK {
                bail!("GET {path}: {}", reply.status);
            }
            let page = reply.json();
            out.extend(page["sites"].as_array().context("sites")?.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return Ok(out),
            }
        }
    }
}

/// The file site every test node has.
const FILE_SITE: &str = r#"
[[site]]
domains = ["file.example", "www.file.example"]
respond = { status = 200, body = "file" }
tls = "internal"
"#;

/// A node with the admin API on `listen` (a TOML string) and, if given, the token.
async fn start_node(listen: &str, token: bool) -> Result<Node> {
    start_node_with(listen, token, "").await
}

/// [`start_node`] with `extra` TOML (whole sections) after `[admin]`.
async fn start_node_with(listen: &str, token: bool, extra: &str) -> Result<Node> {
    let ip = testkit::loopback_ip();
    let dir = tempfile::tempdir()?;
    let token_line = if token {
        let path = dir.path().join("admin.token");
        std::fs::write(&path, format!("{TOKEN}\n"))?;
        format!("token_file = \"{}\"\n", path.display())
    } else {
        String::new()
    };
    let listen = listen.replace("$DIR", &dir.path().display().to_string());
    let body = format!("[admin]\nlisten = \"{listen}\"\n{token_line}\n{extra}\n{FILE_SITE}");
    let data = dir.path().join("data");
    let mut node = Node::with_data(
        dir,
        data,
        ip,
        testkit::free_port(),
        testkit::free_port(),
        &body,
    )?;
    node.start().await?;
    Ok(node)
}

async fn tcp_node(token: bool) -> Result<(Node, Admin)> {
    tcp_node_with(token, "").await
}

/// [`tcp_node`] with `extra` TOML (see [`start_node_with`]), its admin API answering.
async fn tcp_node_with(token: bool, extra: &str) -> Result<(Node, Admin)> {
    let addr = testkit::free_addr(testkit::loopback_ip());
    let node = start_node_with(&addr.to_string(), token, extra).await?;
    let admin = Admin {
        target: Target::Tcp(addr),
        token: token.then(|| TOKEN.to_string()),
        proto: Proto::H1,
    };
    testkit::wait_for_ok("admin API up", Duration::from_secs(20), || {
        let admin = admin.clone();
        async move { admin.get("/v1/nodes").await.map(|_| ()) }
    })
    .await
    .with_context(|| node.log())?;
    Ok((node, admin))
}

fn redirect_site(domains: &[&str], to: &str) -> Value {
    json!({ "domains": domains, "redirect": { "to": to }, "tls": "internal" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_round_trip_over_http1_and_http2() -> Result<()> {
    let (node, admin) = tcp_node(true).await?;
    let h2 = admin.h2();

    let created = admin
        .json(
            Method::POST,
            "/v1/sites",
            &redirect_site(&["A.example", "www.a.example"], "https://b.example/"),
        )
        .await?;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created);
    assert_eq!(created.header("location"), Some("/v1/sites/a.example"));
    assert_eq!(created.header("etag"), Some("\"1\""));
    let entry = created.json();
    assert_eq!(entry["id"], "a.example");
    assert_eq!(entry["source"], "registry");
    assert_eq!(entry["version"], 1);
    assert_eq!(entry["spec"]["redirect"]["to"], "https://b.example/");

    // The same over HTTP/2 (h2c).
    let shown = h2.get("/v1/sites/a.example").await?;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json(), entry);
    assert_eq!(shown.header("etag"), Some("\"1\""));

    // The list holds both sources.
    let all = admin.all_sites().await?;
    let summary: Vec<(String, String, Value)> = all
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["source"].as_str().unwrap().to_string(),
                s["version"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a.example".into(), "registry".into(), json!(1)),
            ("file.example".into(), "file".into(), Value::Null),
        ]
    );
    // A site written by another writer (the CLI, through the store) is listed once its change
    // event arrives: the listing is cached between changes.
    let out = node.command(&[
        "sites",
        "add",
        "--domains",
        "cli.example",
        "--respond",
        "204",
        "--tls",
        "internal",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    testkit::wait_for("the CLI's site listed", Duration::from_secs(5), || {
        let admin = admin.clone();
        async move {
            let all = admin.all_sites().await.ok()?;
            all.iter().any(|s| s["id"] == "cli.example").then_some(())
        }
    })
    .await?;
    let removed = admin
        .send(Method::DELETE, "/v1/sites/cli.example", &[], None)
        .await?;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let file = admin.get("/v1/sites/file.example").await?.json();
    assert_eq!(file["spec"]["respond"]["body"], "file");

    // Conditional update, then a stale one.
    let updated = h2
        .json_with(
            Method::PUT,
            "/v1/sites/a.example",
            &[("if-match", "\"1\"")],
            &redirect_site(&["a.example", "www.a.example"], "https://c.example/"),
        )
        .await?;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated);
    assert_eq!(updated.json()["version"], 2);
    assert_eq!(updated.header("etag"), Some("\"2\""));
    // Without If-Match: unconditional.
    let unconditional = admin
        .json(
            Method::PUT,
            "/v1/sites/a.example",
            &redirect_site(&["a.example", "www.a.example"], "https://d.example/"),
        )
        .await?;
    assert_eq!(unconditional.json()["version"], 3);

    // A file site is not the API's to change; an unknown one is not found.
    let p = admin
        .send(Method::DELETE, "/v1/sites/File.Example", &[], None)
        .await?
        .problem(409);
    assert_eq!(p["site"], "file.example");
    admin
        .json(
            Method::PUT,
            "/v1/sites/file.example",
            &redirect_site(&["file.example"], "https://x.example/"),
        )
        .await?
        .problem(409);
    admin
        .send(Method::DELETE, "/v1/sites/nope.example", &[], None)
        .await?
        .problem(404);
    admin.get("/v1/sites/nope.example").await?.problem(404);
    admin
        .json(
            Method::PUT,
            "/v1/sites/nope.example",
            &redirect_site(&["nope.example"], "https://x.example/"),
        )
        .await?
        .problem(404);

    // Remove with a stale version: refused; with the current one: gone.
    admin
        .send(
            Method::DELETE,
            "/v1/sites/a.example",
            &[("if-match", "\"2\"")],
            None,
        )
        .await?
        .problem(412);
    let removed = h2
        .send(
            Method::DELETE,
            "/v1/sites/a.example",
            &[("if-match", "\"3\"")],
            None,
        )
        .await?;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    admin.get("/v1/sites/a.example").await?.problem(404);

    // Certificates and nodes answer JSON.
    let certs = admin.get("/v1/certs").await?;
    assert_eq!(certs.status, StatusCode::OK);
    let certs = certs.json();
    assert!(
        certs["certs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "file.example"),
        "{certs}"
    );
    let nodes = admin.get("/v1/nodes").await?;
    assert_eq!(nodes.status, StatusCode::OK);
    assert_eq!(nodes.json()["store"]["ok"], true);
    admin.get("/v1/unknown").await?.problem(404);
    admin
        .send(Method::PATCH, "/v1/sites", &[], None)
        .await?
        .problem(405);
    drop(node);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_problem_and_changes_nothing() -> Result<()> {
    let (node, admin) = tcp_node(true).await?;
    let held = admin
        .json(
            Method::POST,
            "/v1/sites",
            &redirect_site(&["held.example"], "https://b.example/"),
        )
        .await?;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held);
    let before = admin.all_sites().await?;

    // Invalid domain: 422 naming it.
    let p = admin
        .json(
            Method::POST,
            "/v1/sites",
            &redirect_site(&["ok.example", "not a domain!"], "https://b.example/"),
        )
        .await?
        .problem(422);
    assert_eq!(p["field"], "/domains/1", "{p}");

    // A domain of the file's site, and of another registry site: 409 naming the site.
    let p = admin
        .json(
            Method::POST,
            "/v1/sites",
            &redirect_site(&["new.example", "www.file.example"], "https://b.example/"),
        )
        .await?
        .problem(409);
    assert_eq!(p["site"], "file.example", "{p}");
    assert_eq!(p["field"], "/domains/1", "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("www.file.example"),
        "{p}"
    );
    let p = admin
        .json(
            Method::POST,
            "/v1/sites",
            &redirect_site(&["new.example", "held.example"], "https://b.example/"),
        )
        .await?
        .problem(409);
    assert_eq!(p["site"], "held.example", "{p}");
    // Its id taken.
    admin
        .json(
            Method::POST,
            "/v1/sites",
            &redirect_site(&["held.example"], "https://b.example/"),
        )
        .await?
        .problem(409);

    // Unknown fields, at the top and nested: 400 naming the field.
    let mut spec = redirect_site(&["new.example"], "https://b.example/");
    spec["colour"] = json!("red");
    let p = admin
        .json(Method::POST, "/v1/sites", &spec)
        .await?
        .problem(400);
    assert_eq!(p["field"], "/colour", "{p}");
    let spec = json!({ "domains": ["new.example"], "redirect": { "to": "https://b.example/", "stauts": 302 }, "tls": "internal" });
    let p = admin
        .json(Method::POST, "/v1/sites", &spec)
        .await?
        .problem(400);
    assert_eq!(p["field"], "/redirect/stauts", "{p}");

    // Two actions.
    let spec = json!({ "domains": ["new.example"], "redirect": { "to": "https://b.example/" }, "respond": { "status": 200 }, "tls": "internal" });
    let p = admin
        .json(Method::POST, "/v1/sites", &spec)
        .await?
        .problem(422);
    assert!(p["field"].is_string(), "{p}");

    // A redirect without a scheme.
    let p = admin
        .json(
            Method::POST,
            "/v1/sites",
            &redirect_site(&["new.example"], "b.example/path"),
        )
        .await?
        .problem(422);
    assert_eq!(p["field"], "/redirect/to", "{p}");

    // A wrong type.
    let spec = json!({ "domains": "new.example", "redirect": { "to": "https://b.example/" } });
    admin
        .json(Method::POST, "/v1/sites", &spec)
        .await?
        .problem(422);
    // Not JSON at all.
    admin
        .send(
            Method::POST,
            "/v1/sites",
            &[("content-type", "application/json")],
            Some(Bytes::from_static(b"{\"domains\": [")),
        )
        .await?
        .problem(400);

    // A stale If-Match, and one that is not a version.
    let p = admin
        .json_with(
            Method::PUT,
            "/v1/sites/held.example",
            &[("if-match", "\"7\"")],
            &redirect_site(&["held.example"], "https://c.example/"),
        )
        .await?
        .problem(412);
    assert_eq!(p["current_version"], 1, "{p}");
    admin
        .json_with(
            Method::PUT,
            "/v1/sites/held.example",
            &[("if-match", "W/\"x\"")],
            &redirect_site(&["held.example"], "https://c.example/"),
        )
        .await?
        .problem(400);

    // A body over 1 MiB, over HTTP/1.1 and HTTP/2.
    let big = format!(
        "{{\"domains\": [\"new.example\"], \"respond\": {{\"body\": \"{}\"}}}}",
        "x".repeat(1024 * 1024)
    );
    for client in [admin.clone(), admin.h2()] {
        client
            .send(
                Method::POST,
                "/v1/sites",
                &[("content-type", "application/json")],
                Some(Bytes::from(big.clone())),
            )
            .await?
            .problem(413);
    }

    // The wrong media type.
    admin
        .send(
            Method::POST,
            "/v1/sites",
            &[("content-type", "text/plain")],
            Some(Bytes::from(serde_json::to_vec(&redirect_site(
                &["new.example"],
                "https://b.example/",
            ))?)),
        )
        .await?
        .problem(415);

    // No token, a wrong token, another scheme: 401 with a Bearer challenge, on every endpoint.
    for client in [
        admin.with_token(None),
        admin.with_token(Some("wrong-token-0123456789abcdef")),
        admin.with_token(Some(&TOKEN[..TOKEN.len() - 1])),
    ] {
        let reply = client
            .json(
                Method::POST,
                "/v1/sites",
                &redirect_site(&["new.example"], "https://b.example/"),
            )
            .await?;
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{reply:?}"
        );
        reply.problem(401);
        for path in ["/v1/sites", "/v1/certs", "/v1/nodes", "/v1/unknown"] {
            client.get(path).await?.problem(401);
        }
        client
            .send(Method::DELETE, "/v1/sites/held.example", &[], None)
            .await?
            .problem(401);
    }
    let basic = admin
        .with_token(None)
        .send(
            Method::GET,
            "/v1/sites",
            &[("authorization", "Basic dXNlcjpwYXNz")],
            None,
        )
        .await?;
    basic.problem(401);

    // Nothing changed: the same sites at the same versions, written at the same times.
    assert_eq!(admin.all_sites().await?, before);
    assert!(
        !node.log().contains("panicked"),
        "the node panicked:\n{}",
        node.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_without_token() -> Result<()> {
    let node = start_node("unix:$DIR/admin.sock", false).await?;
    let path = node.dir.path().join("admin.sock");
    let admin = Admin {
        target: Target::Unix(path.clone()),
        token: None,
        proto: Proto::H1,
    };
    testkit::wait_for_ok("admin socket up", Duration::from_secs(20), || {
        let admin = admin.clone();
        async move { admin.get("/v1/sites").await.map(|_| ()) }
    })
    .await?;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    for client in [admin.clone(), admin.h2()] {
        let created = client
            .json(
                Method::POST,
                "/v1/sites",
                &redirect_site(
                    &[if client.proto == Proto::H1 {
                        "unix1.example"
                    } else {
                        "unix2.example"
                    }],
                    "https://b.example/",
                ),
            )
            .await?;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    }
    assert_eq!(admin.all_sites().await?.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_over_250_sites() -> Result<()> {
    let (_node, admin) = tcp_node(false).await?;
    for i in 0..250 {
        let reply = admin
            .json(
                Method::POST,
                "/v1/sites",
                &json!({ "domains": [format!("site{i:03}.example")], "respond": { "status": 204 }, "tls": "internal" }),
            )
            .await?;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    }
    // Default page: 100; the file site sorts among them by id.
    let first = admin.get("/v1/sites").await?.json();
    assert_eq!(first["sites"].as_array().unwrap().len(), 100);
    let mut ids = Vec::new();
    let mut cursor = None::<String>;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sites?limit=120&cursor={c}"),
            None => "/v1/sites?limit=120".into(),
        };
        let page = admin.get(&path).await?.json();
        pages += 1;
        for s in page["sites"].as_array().unwrap() {
            ids.push(s["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(ids.len(), 251);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "pages overlap or are out of order");

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=nonsense",
        "colour=red",
    ] {
        admin.get(&format!("/v1/sites?{bad}")).await?.problem(400);
    }
    let both = admin
        .get("/v1/sites?limit=0&cursor=nonsense")
        .await?
        .problem(400);
    assert_eq!(both["errors"].as_array().map(Vec::len), Some(2), "{both}");
    let max = admin.get("/v1/sites?limit=1000").await?.json();
    assert_eq!(max["sites"].as_array().unwrap().len(), 251);
    assert!(max["next_cursor"].is_null());
    Ok(())
}

/// `fleetgate sites ... --json` on `config`, parsed; fails on a non-zero exit.
fn cli_json(config: &Path, args: &[&str]) -> Result<Value> {
    let out = common::run_cli(&[&["sites"], args, &["--json"]].concat(), config);
    if !out.status.success() {
        bail!(
            "fleetgate sites {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `fleetgate sites ...` expected to fail: its stderr.
fn cli_error(config: &Path, args: &[&str]) -> String {
    let out = common::run_cli(&[&["sites"], args].concat(), config);
    assert!(!out.status.success(), "fleetgate sites {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A node's config (the file site) for the CLI; the node itself is not started.
fn cli_node() -> Result<Node> {
    Node::new(
        testkit::loopback_ip(),
        testkit::free_port(),
        testkit::free_port(),
        FILE_SITE,
    )
}

#[tokio::test]
async fn cli_import_checks_every_site_first_and_adds_all_or_none() -> Result<()> {
    let node = cli_node()?;
    let config = node.config_path.clone();
    let file = node.path("import.json");
    let sites = json!([
        {"domains": ["i1.example", "www.i1.example"], "redirect": {"to": "https://x.example/"}, "tls": "internal"},
        {"domains": ["bad..example"], "respond": {"status": 200}},
        {"domains": ["file.example"], "respond": {"status": 200}, "tls": "internal"},
        {"domains": ["i2.example"], "respond": {"status": 204}, "tls": "internal"},
        {"domains": ["i3.example"], "respond": {"status": 204}, "colour": "blue"},
        {"domains": ["i4.example", "WWW.i1.example"], "respond": {"status": 204}, "tls": "internal"},
    ]);
    std::fs::write(&file, serde_json::to_vec(&sites)?)?;
    let out = common::run_cli(
        &["sites", "import", file.to_str().unwrap(), "--json"],
        &config,
    );
    assert!(
        !out.status.success(),
        "an import with refused sites exits 1"
    );
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["added"], json!([]), "nothing is added");
    let refused: Vec<(u64, String)> = summary["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert_eq!(refused[0].0, 1);
    assert!(refused[0].1.contains("bad..example"), "{refused:?}");
    assert_eq!(refused[1].0, 2);
    assert!(refused[1].1.contains("file.example"), "{refused:?}");
    assert_eq!(refused[2].0, 4);
    assert!(refused[2].1.contains("colour"), "{refused:?}");
    assert_eq!(refused[3].0, 5);
    assert!(
        refused[3].1.starts_with("domains[1]:")
            && refused[3].1.contains("earlier in the same batch"),
        "{refused:?}"
    );
    let ids = |listed: &Value| -> Vec<String> {
        let mut ids: Vec<String> = listed["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(ids(&cli_json(&config, &["list"])?), ["file.example"]);

    // The valid ones: all added; the same file again: all there already, nothing refused.
    let valid = json!([sites[0], sites[3]]);
    std::fs::write(&file, serde_json::to_vec(&valid)?)?;
    for (added, unchanged) in [
        (json!(["i1.example", "i2.example"]), json!([])),
        (json!([]), json!(["i1.example", "i2.example"])),
    ] {
        let out = common::run_cli(
            &["sites", "import", file.to_str().unwrap(), "--json"],
            &config,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(
            (&summary["added"], &summary["unchanged"]),
            (&added, &unchanged)
        );
    }
    assert_eq!(
        ids(&cli_json(&config, &["list"])?),
        ["file.example", "i1.example", "i2.example"]
    );
    // A changed spec under an existing id is refused.
    let changed =
        json!([{"domains": ["i2.example"], "respond": {"status": 200}, "tls": "internal"}]);
    std::fs::write(&file, serde_json::to_vec(&changed)?)?;
    let out = common::run_cli(&["sites", "import", file.to_str().unwrap()], &config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success()
            && stdout.contains("refused [0] i2.example")
            && stdout.contains("exists"),
        "{stdout}"
    );
    // Not an array: one clear error, nothing added.
    std::fs::write(&file, b"{\"domains\": [\"i4.example\"]}")?;
    let out = common::run_cli(&["sites", "import", file.to_str().unwrap()], &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not a JSON array of sites"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn cli_add_list_set_rm_round_trip_without_a_node() -> Result<()> {
    // No node runs: the CLI works on the store through the config file.
    let node = cli_node()?;
    let config = node.config_path.clone();

    let added = cli_json(
        &config,
        &[
            "add",
            "--domains",
            "c.example,www.c.example",
            "--respond",
            "200",
            "--body",
            "hi",
            "--tls",
            "internal",
        ],
    )?;
    assert_eq!(added["id"], "c.example");
    assert_eq!(added["version"], 1);
    assert_eq!(added["spec"]["respond"]["body"], "hi");
    assert_eq!(
        added["spec"]["domains"],
        json!(["c.example", "www.c.example"])
    );

    let listed = cli_json(&config, &["list"])?;
    let ids: Vec<(&str, &str)> = listed["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["source"].as_str().unwrap()))
        .collect();
    assert_eq!(ids, [("c.example", "registry"), ("file.example", "file")]);

    // `set` replaces the action and keeps the rest.
    let set = cli_json(
        &config,
        &[
            "set",
            "c.example",
            "--redirect",
            "https://d.example/",
            "--status",
            "302",
        ],
    )?;
    assert_eq!(set["version"], 2);
    assert_eq!(set["spec"]["redirect"]["to"], "https://d.example/");
    assert_eq!(set["spec"]["redirect"]["status"], 302);
    assert!(set["spec"].get("respond").is_none(), "{set}");
    assert_eq!(set["spec"]["tls"], "internal");
    let shown = cli_json(&config, &["show", "c.example"])?;
    assert_eq!(shown, set);

    // From JSON, as the API takes it.
    let file = node.path("site.json");
    std::fs::write(
        &file,
        serde_json::to_vec(
            &json!({ "domains": ["e.example"], "proxy": { "upstreams": ["http://127.0.0.1:9"] }, "tls": "internal" }),
        )?,
    )?;
    let from_json = cli_json(&config, &["add", "--from-json", file.to_str().unwrap()])?;
    assert_eq!(from_json["id"], "e.example");

    // Errors name the field (and change nothing).
    let err = cli_error(
        &config,
        &[
            "add",
            "--domains",
            "f.example,bad domain",
            "--respond",
            "200",
            "--tls",
            "internal",
        ],
    );
    assert!(err.contains("domains[1]"), "{err}");
    let err = cli_error(
        &config,
        &[
            "add",
            "--domains",
            "f.example",
            "--redirect",
            "f.example/x",
            "--tls",
            "internal",
        ],
    );
    assert!(err.contains("redirect.to"), "{err}");
    let err = cli_error(
        &config,
        &[
            "add",
            "--domains",
            "f.example,www.file.example",
            "--respond",
            "200",
            "--tls",
            "internal",
        ],
    );
    assert!(err.contains("file.example"), "{err}");
    let err = cli_error(&config, &["add", "--domains", "f.example"]);
    assert!(err.contains("--redirect"), "{err}");
    let err = cli_error(
        &config,
        &[
            "set",
            "c.example",
            "--redirect",
            "https://g.example/",
            "--if-match",
            "1",
        ],
    );
    assert!(err.contains("version 2"), "{err}");
    std::fs::write(
        &file,
        br#"{"domains": ["f.example"], "respond": {}, "colour": 1}"#,
    )?;
    let err = cli_error(&config, &["add", "--from-json", file.to_str().unwrap()]);
    assert!(err.contains("colour"), "{err}");
    let err = cli_error(&config, &["rm", "file.example"]);
    assert!(err.contains("configuration file"), "{err}");

    let removed = cli_json(&config, &["rm", "c.example"])?;
    assert_eq!(removed["removed"], "c.example");
    let listed = cli_json(&config, &["list"])?;
    let ids: Vec<&str> = listed["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e.example", "file.example"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_now_through_the_api() -> Result<()> {
    let (node, admin) = tcp_node(true).await?;
    let roots = node.ca_root()?;
    let first = testkit::wait_for_ok("file.example served", Duration::from_secs(20), || {
        let roots = roots.clone();
        let https = node.https;
        async move { common::served_serial(https, "file.example", &roots).await }
    })
    .await?;
    let accepted = admin
        .send(Method::POST, "/v1/certs/file.example/renew", &[], None)
        .await?;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{accepted:?}");
    assert_eq!(accepted.json()["id"], "file.example");
    let second = testkit::wait_for_ok(
        "the renewed certificate served",
        Duration::from_secs(20),
        || {
            let roots = roots.clone();
            let (https, first) = (node.https, first.clone());
            async move {
                let serial = common::served_serial(https, "file.example", &roots).await?;
                anyhow::ensure!(serial != first, "still the first certificate");
                Ok(serial)
            }
        },
    )
    .await?;
    assert_ne!(second, first);
    let certs = admin.get("/v1/certs").await?.json();
    let row = certs["certs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "file.example")
        .cloned()
        .context("file.example listed")?;
    assert_eq!(row["state"], "valid", "{row}");
    admin
        .send(Method::POST, "/v1/certs/nope.example/renew", &[], None)
        .await?
        .problem(404);
    admin
        .with_token(None)
        .send(Method::POST, "/v1/certs/file.example/renew", &[], None)
        .await?
        .problem(401);
    Ok(())
}

#[test]
fn admin_config_errors_name_file_line_and_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("fleetgate.toml");
    let write = |admin: &str| -> Result<()> {
        std::fs::write(
            &config,
            format!(
                "[storage]\nkind = \"dir\"\npath = \"{}\"\n\n[admin]\n{admin}\n",
                dir.path().join("data").display()
            ),
        )?;
        Ok(())
    };
    let check = || {
        let out = common::run_cli(&["check"], &config);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Off loopback without a token.
    write("listen = \"0.0.0.0:9180\"")?;
    let (ok, err) = check();
    assert!(!ok);
    assert!(
        err.contains(&format!("{}:6: admin.listen:", config.display())),
        "{err}"
    );
    assert!(err.contains("token_file"), "{err}");
    // A token file that is missing, then one too short.
    write("listen = \"0.0.0.0:9180\"\ntoken_file = \"nope\"")?;
    let (ok, err) = check();
    assert!(!ok && err.contains(":7: admin.token_file:"), "{err}");
    std::fs::write(dir.path().join("short"), "abc")?;
    write("listen = \"0.0.0.0:9180\"\ntoken_file = \"short\"")?;
    let (ok, err) = check();
    assert!(!ok && err.contains("at least 16"), "{err}");
    // Not an address; an unknown key.
    write("listen = \"localhost\"")?;
    let (ok, err) = check();
    assert!(!ok && err.contains(":6: admin.listen:"), "{err}");
    write("listen = \"127.0.0.1:9180\"\nport = 1")?;
    let (ok, err) = check();
    assert!(!ok && err.contains("admin.port"), "{err}");
    // Loopback and unix sockets need no token; a token is fine anywhere.
    for good in [
        "listen = \"127.0.0.1:9180\"",
        "listen = \"unix:admin.sock\"",
    ] {
        write(good)?;
        let (ok, err) = check();
        assert!(ok, "{good}: {err}");
    }
    std::fs::write(dir.path().join("token"), TOKEN)?;
    write("listen = \"0.0.0.0:9180\"\ntoken_file = \"token\"")?;
    let (ok, err) = check();
    assert!(ok, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped() -> Result<()> {
    let (node, admin) = tcp_node(false).await?;
    let Target::Tcp(addr) = admin.target.clone() else {
        unreachable!()
    };
    // 64 clients that connect and say nothing hold every place...
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(addr).await?);
    }
    let waiting = tokio::spawn({
        let admin = admin.clone();
        async move { admin.get("/v1/sites").await }
    });
    // ...so a request waits (the node itself is unaffected)...
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        while !waiting.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(early.is_err(), "served past the cap");
    let served = testkit::http_get(node.http, "file.example", "/").await?;
    assert_eq!(served.status, StatusCode::PERMANENT_REDIRECT);
    // ...until one of them goes.
    drop(idle.pop());
    let reply = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    assert_eq!(reply.status, StatusCode::OK);
    Ok(())
}

/// Reads `stream` until the node closes it (EOF or reset), writing one byte of `trickle` every
/// 200 ms meanwhile; fails if it is still open after `deadline`. Returns what was read.
async fn closed_by_node(
    mut stream: tokio::net::TcpStream,
    trickle: &[u8],
    deadline: Duration,
) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut got = Vec::new();
    let mut trickle = trickle.iter();
    let mut buf = [0u8; 4096];
    let outcome = tokio::time::timeout(deadline, async {
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                },
                () = tokio::time::sleep(Duration::from_millis(200)), if trickle.len() > 0 => {
                    if let Some(byte) = trickle.next()
                        && stream.write_all(&[*byte]).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    })
    .await;
    anyhow::ensure!(
        outcome.is_ok(),
        "still open after {deadline:?}; read {:?}",
        String::from_utf8_lossy(&got)
    );
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_closed() -> Result<()> {
    let limits = "[limits]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n";
    let (_node, admin) = tcp_node_with(false, limits).await?;
    let Target::Tcp(addr) = admin.target.clone() else {
        unreachable!()
    };
    let connect = || tokio::net::TcpStream::connect(addr);
    let deadline = Duration::from_secs(20);
    let started = std::time::Instant::now();
    // A client that says nothing, one that sends a request head a byte at a time (bytes keep
    // moving, the head never completes in time) and an HTTP/2 client that goes quiet after
    // its preface: all three lose their connection.
    let silent = tokio::spawn(closed_by_node(connect().await?, b"", deadline));
    let head = b"GET /v1/nodes HTTP/1.1\r\nHost: admin\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let trickled = tokio::spawn(closed_by_node(connect().await?, head, deadline));
    let mut h2 = connect().await?;
    {
        use tokio::io::AsyncWriteExt;
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await?;
    }
    let quiet_h2 = tokio::spawn(closed_by_node(h2, b"", deadline));
    silent.await??;
    let got = trickled.await??;
    // The whole head would take 20 s at this pace; the node gave up long before it could
    // have been answered.
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "a trickled head was answered: {}",
        String::from_utf8_lossy(&got)
    );
    quiet_h2.await??;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before any timeout could have run out ({:?})",
        started.elapsed()
    );
    // The admin API itself is fine, and a keep-alive client that keeps asking keeps its
    // connection.
    let reply = admin.get("/v1/sites").await?;
    assert_eq!(reply.status, StatusCode::OK);
    Ok(())
}
