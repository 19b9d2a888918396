//! The dashboard in a real browser: Debian's chromium, headless, driven by chromedriver over
//! the W3C WebDriver protocol (plain JSON over HTTP: a few calls, written here on the test's
//! HTTP client instead of a driver crate). Against a three-node fleet with Pebble: the page
//! lists every site and certificate, a site added from the page is served by every node, and a
//! failing order shows the CA's problem. Screenshots go to `target/dashboard-*.png` (always at
//! 1080p and phone width; `target/dashboard-failure.png` when the test fails).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use common::cluster::Cluster;
use http::{Method, Request};
use serde_json::{Value, json};

/// A chromedriver process and one browser session.
struct Browser {
    driver: SocketAddr,
    session: String,
    _chromedriver: testkit::ChildGuard,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

async fn wd(addr: SocketAddr, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let body = match body {
        Some(v) => Bytes::from(serde_json::to_vec(&v)?),
        None => Bytes::new(),
    };
    let req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(body)?;
    let reply = testkit::http_request(addr, req).await?;
    let value: Value = serde_json::from_slice(&reply.body)
        .with_context(|| format!("{method} {path}: {}", reply.text()))?;
    if !reply.status.is_success() {
        bail!("{method} {path}: {} {}", reply.status, value["value"]);
    }
    Ok(value["value"].clone())
}

impl Browser {
    async fn start() -> Result<Browser> {
        let port = testkit::free_port();
        let mut cmd = tokio::process::Command::new("chromedriver");
        cmd.arg(format!("--port={port}"));
        let chromedriver = testkit::ChildGuard::spawn(cmd, "chromedriver").context(
            "start chromedriver (Debian package chromium-driver; scripts/test installs it)",
        )?;
        let driver = SocketAddr::from(([127, 0, 0, 1], port));
        testkit::wait_for_ok(
            "chromedriver ready",
            Duration::from_secs(20),
            || async move {
                let status = wd(driver, Method::GET, "/status", None).await?;
                anyhow::ensure!(status["ready"] == true, "{status}");
                Ok(())
            },
        )
        .await?;
        let profile = tempfile::tempdir()?;
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--window-size=1920,1080",
                ],
            },
        }}});
        let session = wd(driver, Method::POST, "/session", Some(caps)).await?;
        let session = session["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_string();
        Ok(Browser {
            driver,
            session,
            _chromedriver: chromedriver,
            _profile: profile,
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        wd(self.driver, method, &path, body).await
    }

    async fn goto(&self, url: &str) -> Result<()> {
        self.call(Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(|_| ())
    }

    /// Run `script` in the page (a function body; `arguments` are `args`).
    async fn eval(&self, script: &str, args: Value) -> Result<Value> {
        self.call(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    async fn element(&self, css: &str) -> Result<String> {
        let found = self
            .call(
                Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        Ok(found[ELEMENT].as_str().context("element id")?.to_string())
    }

    async fn click(&self, css: &str) -> Result<()> {
        let id = self.element(css).await?;
        self.call(
            Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await
        .map(|_| ())
    }

    async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let id = self.element(css).await?;
        self.call(
            Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await?;
        self.call(
            Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .map(|_| ())
    }

    async fn text(&self, css: &str) -> Result<String> {
        let v = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                json!([css]),
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .map(|_| ())
    }

    async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        self.eval("window.scrollTo(0, 0);", json!([])).await?;
        let b64 = self.call(Method::GET, "/screenshot", None).await?;
        let png = base64_decode(b64.as_str().context("screenshot")?)?;
        let path = target_dir().join(format!("dashboard-{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    async fn close(&self) {
        let _ = wd(
            self.driver,
            Method::DELETE,
            &format!("/session/{}", self.session),
            None,
        )
        .await;
    }
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// Standard base64 (the screenshot), without a crate for it.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => bail!("not base64: {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

async fn api_certs(addr: SocketAddr) -> Result<Vec<Value>> {
    let reply = testkit::http_get(addr, &addr.to_string(), "/v1/certs").await?;
    let v: Value = serde_json::from_slice(&reply.body)?;
    Ok(v["certs"].as_array().context("certs")?.clone())
}

/// Add a site with one domain redirecting to `to`, through the page's form.
async fn add_site_from_page(browser: &Browser, domain: &str, to: &str) -> Result<()> {
    browser
        .eval("document.getElementById('editor').open = true;", json!([]))
        .await?;
    browser.type_into("#site-domains", domain).await?;
    browser
        .eval(
            "document.getElementById('site-action').value = 'redirect';",
            json!([]),
        )
        .await?;
    browser.type_into("#site-target", to).await?;
    browser.click("#site-save").await?;
    Ok(())
}

async fn exercise(cluster: &Cluster, browser: &Browser) -> Result<()> {
    let admin = cluster.admin_addr(0).unwrap();
    browser.goto(&format!("http://{admin}/")).await?;

    // Every site and every certificate of the fleet is listed.
    let ids: Vec<String> = cluster.sites.iter().map(|s| s[0].clone()).collect();
    let ids = &ids;
    testkit::wait_for_ok(
        "the page lists every site and certificate",
        Duration::from_secs(20),
        || async move {
            let certs = browser.text("#certs tbody").await?;
            let sites = browser.text("#sites tbody").await?;
            for id in ids {
                anyhow::ensure!(
                    certs.contains(id.as_str()),
                    "certificate {id} not listed: {certs}"
                );
                anyhow::ensure!(sites.contains(id.as_str()), "site {id} not listed: {sites}");
            }
            anyhow::ensure!(
                certs.matches("valid").count() >= ids.len(),
                "not all valid yet: {certs}"
            );
            let nodes = browser.text("#nodes tbody").await?;
            anyhow::ensure!(
                nodes.matches("up").count() >= cluster.nodes.len(),
                "nodes: {nodes}"
            );
            Ok(())
        },
    )
    .await?;
    browser.screenshot("1080p").await?;

    // A site added from the page: every node serves it over HTTPS.
    let name = "added.cluster.test";
    add_site_from_page(browser, name, "https://main.cluster.test/").await?;
    testkit::wait_for_ok(
        "every node serves the site added from the page",
        Duration::from_secs(60),
        || async move {
            for node in &cluster.nodes {
                common::served_serial(node.https, name, &cluster.root)
                    .await
                    .with_context(|| format!("{name} on {}", node.ip))?;
            }
            Ok(())
        },
    )
    .await
    .with_context(|| cluster.logs())?;

    // An order Pebble cannot validate (the name resolves where nothing listens): the page shows
    // the certificate failing with the CA's problem, as the API reports it.
    let broken = "broken.cluster.test";
    cluster.pebble.add_a(broken, testkit::loopback_ip()).await?;
    add_site_from_page(browser, broken, "https://main.cluster.test/").await?;
    let api_error =
        testkit::wait_for_ok("the order fails", Duration::from_secs(60), || async move {
            let certs = api_certs(admin).await?;
            let cert = certs
                .iter()
                .find(|c| c["id"] == broken)
                .context("not listed yet")?;
            anyhow::ensure!(cert["state"] == "failing", "{cert}");
            Ok(cert["last_error"]
                .as_str()
                .context("no last_error")?
                .to_string())
        })
        .await?;
    let api_error = &api_error;
    testkit::wait_for_ok(
        "the page shows the problem",
        Duration::from_secs(20),
        || async move {
            let row = browser
                .text(&format!("#certs tr[data-cert='{broken}'] td.err"))
                .await?;
            anyhow::ensure!(row == *api_error, "page: {row:?}, API: {api_error:?}");
            Ok(())
        },
    )
    .await?;
    eprintln!("problem shown for {broken}: {api_error}");
    // The node's events (the new certificates, the failed order with the CA's problem) and
    // the page's own (the site added), in the list.
    testkit::wait_for_ok("the events list", Duration::from_secs(20), || async move {
        let events = browser.text("#events").await?;
        anyhow::ensure!(events.contains(&format!("site {name} added")), "{events}");
        anyhow::ensure!(
            events.contains(&format!("order failed for {broken}: {api_error}")),
            "{events}"
        );
        anyhow::ensure!(
            events.contains(&format!("certificate {name}: stored")),
            "{events}"
        );
        Ok(())
    })
    .await?;

    browser.screenshot("1080p-with-failure").await?;
    browser.resize(412, 915).await?;
    browser.screenshot("phone").await?;
    // Phone width: nothing wider than the screen but the tables' own scroll areas.
    let overflow = browser
        .eval(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            json!([]),
        )
        .await?;
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "page wider than a phone: {overflow}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_chromium_lists_adds_and_shows_failures() -> Result<()> {
    let cluster = Cluster::builder().sites(3, 1).admin().start().await?;
    common::cluster::wait_all_served(&cluster, Duration::from_secs(120))
        .await
        .with_context(|| cluster.logs())?;
    let browser = Browser::start().await?;
    let result = exercise(&cluster, &browser).await;
    if result.is_err() {
        match browser.screenshot("failure").await {
            Ok(path) => eprintln!("screenshot: {}", path.display()),
            Err(e) => eprintln!("no screenshot: {e:#}"),
        }
    }
    browser.close().await;
    result
}

const TOKEN: &str = "dashboard-test-token-0123456789abcdef";

/// A node whose admin API needs [`TOKEN`], with one internal-CA site.
async fn token_node() -> Result<(common::Node, SocketAddr)> {
    let ip = testkit::loopback_ip();
    let admin = testkit::free_addr(ip);
    let mut node = common::Node::new(ip, testkit::free_port(), testkit::free_port(), "")?;
    let token_file = node.path("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    node.write_config(&format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\n[[site]]\ndomains = [\"inside.example\"]\nrespond = {{ status = 200, body = \"hi\" }}\ntls = \"internal\"\n",
        token_file.display()
    ))?;
    node.start().await?;
    testkit::wait_for_ok("admin API up", Duration::from_secs(20), || async move {
        testkit::http_get(admin, &admin.to_string(), "/")
            .await
            .map(|_| ())
    })
    .await?;
    Ok((node, admin))
}

async fn send(
    admin: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<testkit::HttpResponse> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    testkit::http_request(admin, req.body(Bytes::from(body.to_string()))?).await
}

/// The session cookie over plain HTTP: issued only for the right token (and with the CSRF
/// header), HttpOnly; accepted for reads; writes need `X-Fleetgate: 1`.
#[tokio::test(flavor = "multi_thread")]
async fn the_session_cookie_stands_for_the_token_and_writes_need_the_csrf_header() -> Result<()> {
    let (_node, admin) = token_node().await?;
    let page = send(admin, Method::GET, "/", &[], "").await?;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/dashboard.js"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(
        send(admin, Method::GET, "/v1/sites", &[], "").await?.status,
        401
    );

    let login = |token: &'static str, csrf: bool| async move {
        let mut headers = vec![("content-type", "application/json")];
        if csrf {
            headers.push(("x-fleetgate", "1"));
        }
        send(
            admin,
            Method::POST,
            "/v1/session",
            &headers,
            &json!({ "token": token }).to_string(),
        )
        .await
    };
    assert_eq!(login("wrong", true).await?.status, 401);
    let info = send(admin, Method::GET, "/v1/session", &[], "").await?;
    assert_eq!(info.text(), r#"{"token_required":true}"#);
    assert_eq!(login(TOKEN, false).await?.status, 403);
    let ok = login(TOKEN, true).await?;
    assert_eq!(ok.status, 204);
    let set_cookie = ok.header("set-cookie").context("set-cookie")?.to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(
        !set_cookie.contains(TOKEN),
        "the token travels hex-encoded: {set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let cookie = cookie.as_str();

    let read = send(admin, Method::GET, "/v1/sites", &[("cookie", cookie)], "").await?;
    assert_eq!(read.status, 200, "{}", read.text());
    let spec =
        json!({ "domains": ["cookie.example"], "respond": {}, "tls": "internal" }).to_string();
    let no_csrf = send(
        admin,
        Method::POST,
        "/v1/sites",
        &[("cookie", cookie), ("content-type", "application/json")],
        &spec,
    )
    .await?;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.text());
    assert!(no_csrf.text().contains("X-Fleetgate"), "{}", no_csrf.text());
    let with_csrf = send(
        admin,
        Method::POST,
        "/v1/sites",
        &[
            ("cookie", cookie),
            ("content-type", "application/json"),
            ("x-fleetgate", "1"),
        ],
        &spec,
    )
    .await?;
    assert_eq!(with_csrf.status, 201, "{}", with_csrf.text());
    let bad_cookie = send(
        admin,
        Method::GET,
        "/v1/sites",
        &[("cookie", "fleetgate_session=00ff")],
        "",
    )
    .await?;
    assert_eq!(bad_cookie.status, 401);
    let logout = send(
        admin,
        Method::DELETE,
        "/v1/session",
        &[("x-fleetgate", "1")],
        "",
    )
    .await?;
    assert!(logout.header("set-cookie").unwrap().contains("Max-Age=0"));
    Ok(())
}

/// In the browser: the page asks for the token once, then lists the node's sites; the token is
/// nowhere the page's script can read (not in document.cookie, storage or the address).
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_asks_for_the_token_once() -> Result<()> {
    let (_node, admin) = token_node().await?;
    let browser = Browser::start().await?;
    let result = async {
        browser.goto(&format!("http://{admin}/")).await?;
        let browser = &browser;
        testkit::wait_for_ok("the login form", Duration::from_secs(10), || async move {
            let hidden = browser.eval("return document.getElementById('login').hidden;", json!([])).await?;
            anyhow::ensure!(hidden == false, "login form hidden");
            Ok(())
        })
        .await?;
        browser.type_into("#token", TOKEN).await?;
        browser.click("#login button[type=submit]").await?;
        testkit::wait_for_ok("the sites after login", Duration::from_secs(10), || async move {
            let sites = browser.text("#sites tbody").await?;
            anyhow::ensure!(sites.contains("inside.example"), "{sites}");
            Ok(())
        })
        .await?;
        let logout_hidden = browser
            .eval("return document.getElementById('logout').hidden;", json!([]))
            .await?;
        anyhow::ensure!(logout_hidden == false, "no way to forget the token");
        // A reload does not ask again (the cookie), and the script cannot see the token.
        browser.goto(&format!("http://{admin}/")).await?;
        testkit::wait_for_ok("the sites after reload", Duration::from_secs(10), || async move {
            let sites = browser.text("#sites tbody").await?;
            anyhow::ensure!(sites.contains("inside.example"), "{sites}");
            Ok(())
        })
        .await?;
        let visible = browser
            .eval(
                "return document.cookie + location.href + JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.documentElement.outerHTML;",
                json!([]),
            )
            .await?;
        let visible = visible.as_str().unwrap_or_default();
        anyhow::ensure!(!visible.contains(TOKEN) && !visible.contains("fleetgate_session"), "token visible to the page");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        let _ = browser.screenshot("login-failure").await;
    }
    browser.close().await;
    result
}
