//! Pebble (Let's Encrypt's test CA) with pebble-challtestsrv as its DNS, on private ports.
//!
//! Layout of one instance:
//! - `pebble-challtestsrv` answers DNS on a free port of its own `127.0.0.x` (A queries with the builder's
//!   [`resolve_to`](PebbleBuilder::resolve_to) address unless [`Pebble::add_a`] says otherwise, no
//!   AAAA) and takes commands on a plain-HTTP management port. Its own HTTP-01, HTTPS-01 and
//!   TLS-ALPN-01 responders are disabled so they take no ports.
//! - `pebble` serves ACME on `https://127.0.0.1:<port>/dir` and its management API (roots,
//!   intermediates, cert status) on another HTTPS port, both with a listener certificate signed
//!   by a per-instance CA ([`Pebble::listener_ca_pem`]). Its VA validates HTTP-01 on
//!   `<resolved ip>:<http_port>` and TLS-ALPN-01 on `<resolved ip>:<tls_port>`: bind the server
//!   under test there.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use tempfile::TempDir;
use tokio::process::Command;

use crate::address::{free_addr, free_tcp_udp_port, loopback_ip};
use crate::dns::query_a;
use crate::http_client::{HttpResponse, http_request, https_get};
use crate::pki::{LeafKey, ca_and_leaf_with};
use crate::poll::wait_for_ok;
use crate::process::ChildGuard;

/// How long [`PebbleBuilder::start`] waits for each program to answer.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// Attempts when a program exits at startup because another test took its port.
const START_ATTEMPTS: u32 = 3;

/// Options for a [`Pebble`]; see [`Pebble::builder`].
#[derive(Debug, Clone)]
pub struct PebbleBuilder {
    http_port: Option<u16>,
    tls_port: Option<u16>,
    validity: Option<Duration>,
    nonce_reject: u8,
    authz_reuse: u8,
    resolve_to: Ipv4Addr,
    eab_keys: Vec<(String, String)>,
    dns_server: Option<SocketAddr>,
}

impl Default for PebbleBuilder {
    fn default() -> Self {
        Self {
            http_port: None,
            tls_port: None,
            validity: None,
            nonce_reject: 0,
            authz_reuse: 0,
            resolve_to: Ipv4Addr::LOCALHOST,
            eab_keys: Vec::new(),
            dns_server: None,
        }
    }
}

impl PebbleBuilder {
    /// Port the VA connects to for HTTP-01 (`httpPort`). Default: a free port on the
    /// [`resolve_to`](Self::resolve_to) address, see [`Pebble::http_port`].
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_port = Some(port);
        self
    }

    /// Port the VA connects to for TLS-ALPN-01 (`tlsPort`). Default: a free port on the
    /// [`resolve_to`](Self::resolve_to) address, see [`Pebble::tls_port`].
    pub fn tls_port(mut self, port: u16) -> Self {
        self.tls_port = Some(port);
        self
    }

    /// Lifetime of issued certificates (`certificateValidityPeriod`, whole seconds). Short values
    /// make real renewals happen within a test. Default: Pebble's own (years). Pebble sets
    /// `notBefore` = issuance time (not backdated) and `notAfter` = `notBefore` + validity - 1 s.
    pub fn validity(mut self, validity: Duration) -> Self {
        self.validity = Some(validity);
        self
    }

    /// Percentage of valid nonces Pebble rejects with `badNonce` (`PEBBLE_WFE_NONCEREJECT`).
    /// Default 0 (Pebble's own default is 5).
    pub fn nonce_reject(mut self, percent: u8) -> Self {
        self.nonce_reject = percent;
        self
    }

    /// Percentage of valid authorizations Pebble reuses for new orders (`PEBBLE_AUTHZREUSE`).
    /// Default 0, so every order is validated again (Pebble's own default is 50).
    pub fn authz_reuse(mut self, percent: u8) -> Self {
        self.authz_reuse = percent;
        self
    }

    /// The address every A query resolves to unless [`Pebble::add_a`] overrides a name
    /// (challtestsrv `-defaultIPv4`; AAAA queries get no answer). Default `127.0.0.1`.
    pub fn resolve_to(mut self, ip: Ipv4Addr) -> Self {
        self.resolve_to = ip;
        self
    }

    /// Requires External Account Binding and accepts key id `kid` with HMAC key `hmac_b64url`
    /// (base64url, as in `externalAccountMACKeys`). May be called more than once.
    pub fn external_account(mut self, kid: &str, hmac_b64url: &str) -> Self {
        self.eab_keys.push((kid.to_owned(), hmac_b64url.to_owned()));
        self
    }

    /// The resolver Pebble's VA asks (`-dnsserver`) instead of challtestsrv, e.g. a [`crate::Bind`]
    /// for DNS-01 through real delegation. challtestsrv still runs; [`Pebble::add_a`] then has no
    /// effect on validation.
    pub fn dns_server(mut self, addr: SocketAddr) -> Self {
        self.dns_server = Some(addr);
        self
    }

    /// Starts challtestsrv and Pebble and waits until both answer.
    pub async fn start(self) -> anyhow::Result<Pebble> {
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match self.try_start().await {
                Ok(pebble) => return Ok(pebble),
                Err(Start::PortTaken(e)) => errors.push(format!("{e:#}")),
                Err(Start::Failed(e)) => return Err(e),
            }
        }
        bail!(
            "pebble: ports taken on {START_ATTEMPTS} attempts:\n{}",
            errors.join("\n")
        )
    }

    async fn try_start(&self) -> Result<Pebble, Start> {
        let dir = tempfile::Builder::new()
            .prefix("testkit-pebble-")
            .tempdir()
            .context("create pebble's temp dir")?;

        let pki = ca_and_leaf_with(&["localhost", "127.0.0.1"], LeafKey::EcdsaP256Pkcs8)?;
        let listener_ca_path = dir.path().join("listener-ca.pem");
        let cert_path = dir.path().join("listener-cert.pem");
        let key_path = dir.path().join("listener-key.pem");
        write(&listener_ca_path, &pki.ca_pem)?;
        write(&cert_path, &pki.leaf_cert_pem)?;
        write(&key_path, &pki.leaf_key_pem)?;

        // challtestsrv gets its own 127.0.0.x: it does not exit when a port is taken (it logs
        // "address already in use" and keeps running), so collisions must be rare and detected.
        let cts_ip = loopback_ip();
        let dns = SocketAddr::from((cts_ip, free_tcp_udp_port(cts_ip)?));
        let cts_management = free_addr(cts_ip);
        let mut cts_cmd = Command::new("pebble-challtestsrv");
        cts_cmd
            .arg("-dns01")
            .arg(dns.to_string())
            .arg("-management")
            .arg(cts_management.to_string())
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .arg("-defaultIPv4")
            .arg(self.resolve_to.to_string())
            .args(["-defaultIPv6", ""]);
        let log = |name: &str| dir.path().join(format!("{name}.log"));
        let mut challtestsrv =
            ChildGuard::spawn_logging_to(cts_cmd, "pebble-challtestsrv", &log("challtestsrv"))?;
        // Proves both ports are this instance's: a record added through the management port is
        // answered on the DNS port.
        let probe = format!(
            "testkit-probe-{}.{}.invalid",
            std::process::id(),
            dns.port()
        );
        wait_until_serving(&mut challtestsrv, || {
            let probe = probe.clone();
            async move {
                post_json(
                    cts_management,
                    "/add-a",
                    serde_json::json!({ "host": probe, "addresses": [PROBE_IP.to_string()] }),
                )
                .await?;
                let answer = query_a(dns, &probe).await?;
                ensure!(answer == [PROBE_IP], "probe resolved to {answer:?}");
                Ok(())
            }
        })
        .await?;
        post_json(
            cts_management,
            "/clear-a",
            serde_json::json!({ "host": probe }),
        )
        .await?;

        let listen = free_addr(Ipv4Addr::LOCALHOST);
        let management = free_addr(Ipv4Addr::LOCALHOST);
        let http_port = self
            .http_port
            .unwrap_or_else(|| free_port_on(self.resolve_to));
        let tls_port = self
            .tls_port
            .unwrap_or_else(|| free_port_on(self.resolve_to));
        let mut config = serde_json::json!({
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": cert_path,
            "privateKey": key_path,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": !self.eab_keys.is_empty(),
        });
        if let Some(validity) = self.validity {
            config["certificateValidityPeriod"] = validity.as_secs().max(1).into();
        }
        if !self.eab_keys.is_empty() {
            config["externalAccountMACKeys"] = self
                .eab_keys
                .iter()
                .map(|(kid, key)| (kid.clone(), serde_json::Value::from(key.as_str())))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        let config_path = dir.path().join("pebble-config.json");
        write(
            &config_path,
            &serde_json::to_string_pretty(&serde_json::json!({ "pebble": config }))
                .context("serialize pebble config")?,
        )?;

        let cmd = pebble_command(
            &config_path,
            self.dns_server.unwrap_or(dns),
            self.nonce_reject,
            self.authz_reuse,
            dir.path(),
        );
        let mut pebble = ChildGuard::spawn_logging_to(cmd, "pebble", &log("pebble"))?;
        wait_pebble_serving(&mut pebble, listen, management, &pki.ca_pem).await?;

        Ok(Pebble {
            pebble,
            nonce_reject: self.nonce_reject,
            authz_reuse: self.authz_reuse,
            challtestsrv,
            listen,
            management,
            cts_management,
            dns,
            http_port,
            tls_port,
            resolve_to: self.resolve_to,
            listener_ca_pem: pki.ca_pem,
            listener_ca_path,
            dir,
        })
    }
}

/// The `pebble` command for a config file, DNS server and environment knobs.
fn pebble_command(
    config_path: &Path,
    dns: SocketAddr,
    nonce_reject: u8,
    authz_reuse: u8,
    dir: &Path,
) -> Command {
    let mut cmd = Command::new("pebble");
    cmd.arg("-config")
        .arg(config_path)
        .arg("-dnsserver")
        .arg(dns.to_string())
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", nonce_reject.to_string())
        .env("PEBBLE_AUTHZREUSE", authz_reuse.to_string())
        .current_dir(dir);
    cmd
}

/// Waits until Pebble serves its directory and its management API's root.
async fn wait_pebble_serving(
    pebble: &mut ChildGuard,
    listen: SocketAddr,
    management: SocketAddr,
    ca: &str,
) -> Result<(), Start> {
    wait_until_serving(pebble, || {
        let ca = ca.to_owned();
        async move {
            let dir = https_get(listen, "127.0.0.1", &ca, "/dir").await?;
            ensure!(dir.status == StatusCode::OK, "directory: {}", dir.status);
            let roots = https_get(management, "127.0.0.1", &ca, "/roots/0").await?;
            ensure!(roots.status == StatusCode::OK, "roots/0: {}", roots.status);
            Ok(())
        }
    })
    .await
}

/// Why one start attempt failed.
enum Start {
    /// A program logged "address already in use" (and may still run): retry on other ports.
    PortTaken(anyhow::Error),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Start {
    fn from(e: anyhow::Error) -> Self {
        Start::Failed(e)
    }
}

impl From<rcgen::Error> for Start {
    fn from(e: rcgen::Error) -> Self {
        Start::Failed(e.into())
    }
}

/// Polls `ready` until it succeeds; stops early (as [`Start::PortTaken`] when the log says so) if
/// the child exits.
async fn wait_until_serving<F, Fut>(child: &mut ChildGuard, mut ready: F) -> Result<(), Start>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let what = format!("{} to answer", child.name());
    // Ok(None): serving. Ok(Some(status)): exited, stop polling (wait_for_ok retries on Err).
    let result = wait_for_ok(&what, STARTUP_DEADLINE, || {
        let status = match child.try_exit_status() {
            Ok(Some(status)) => Some(Exit::Exited(status)),
            _ if child.log_contents().contains(PORT_TAKEN) => Some(Exit::PortTaken),
            _ => None,
        };
        let check = ready();
        async move {
            if status.is_some() {
                return Ok(status);
            }
            check.await.map(|()| None)
        }
    })
    .await;
    let log = child.log_contents();
    let name = child.name().to_owned();
    match result {
        Ok(None) if !log.contains(PORT_TAKEN) => Ok(()),
        Ok(None | Some(Exit::PortTaken)) => {
            let _ = child.kill();
            Err(Start::PortTaken(anyhow!(
                "{name}: a port was taken; log:\n{log}"
            )))
        }
        Ok(Some(Exit::Exited(status))) => {
            let err = anyhow!("{name} exited at startup ({status}); log:\n{log}");
            if log.contains(PORT_TAKEN) {
                Err(Start::PortTaken(err))
            } else {
                Err(Start::Failed(err))
            }
        }
        Err(e) => Err(Start::Failed(e.context(format!("log of {name}:\n{log}")))),
    }
}

/// How Go reports a port held by another process (challtestsrv keeps running after it).
const PORT_TAKEN: &str = "address already in use";

/// Answer for the readiness probe name (TEST-NET-1, never a real test address).
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

enum Exit {
    Exited(std::process::ExitStatus),
    PortTaken,
}

async fn post_json(addr: SocketAddr, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let req = Request::post(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body.to_string()))?;
    let resp = http_request(addr, req).await?;
    ok(resp, path).map(drop)
}

/// A free port on `ip`, or on 127.0.0.1 if `ip` is not local (a test of unreachable names).
fn free_port_on(ip: Ipv4Addr) -> u16 {
    match std::net::TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(_) => free_addr(Ipv4Addr::LOCALHOST).port(),
    }
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))
}

/// A running Pebble and challtestsrv pair; both are killed when this is dropped.
#[derive(Debug)]
pub struct Pebble {
    // Children first: they are killed before their directory is removed.
    pebble: ChildGuard,
    nonce_reject: u8,
    authz_reuse: u8,
    challtestsrv: ChildGuard,
    listen: SocketAddr,
    management: SocketAddr,
    cts_management: SocketAddr,
    dns: SocketAddr,
    http_port: u16,
    tls_port: u16,
    resolve_to: Ipv4Addr,
    listener_ca_pem: String,
    listener_ca_path: PathBuf,
    dir: TempDir,
}

impl Pebble {
    /// Options for a new instance; finish with [`PebbleBuilder::start`].
    pub fn builder() -> PebbleBuilder {
        PebbleBuilder::default()
    }

    /// The ACME directory, `https://127.0.0.1:<port>/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// The address of Pebble's ACME listener.
    pub fn acme_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The address of Pebble's HTTPS management API (`/roots/0`, `/intermediates/0`,
    /// `/cert-status-by-serial/<hex>`).
    pub fn management_addr(&self) -> SocketAddr {
        self.management
    }

    /// The address of challtestsrv's DNS server (TCP and UDP), which Pebble's VA uses.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns
    }

    /// Port Pebble's VA connects to for HTTP-01.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Port Pebble's VA connects to for TLS-ALPN-01.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The default A answer given to the builder (not updated by
    /// [`set_default_ipv4`](Self::set_default_ipv4)).
    pub fn resolve_to(&self) -> Ipv4Addr {
        self.resolve_to
    }

    /// Where the VA validates HTTP-01 for names resolving to the default address.
    pub fn http01_addr(&self) -> SocketAddr {
        SocketAddr::from((self.resolve_to, self.http_port))
    }

    /// Where the VA validates TLS-ALPN-01 for names resolving to the default address.
    pub fn tlsalpn01_addr(&self) -> SocketAddr {
        SocketAddr::from((self.resolve_to, self.tls_port))
    }

    /// The CA (PEM) that signed the certificate of Pebble's own HTTPS listeners; an ACME client
    /// must trust it to talk to [`directory_url`](Self::directory_url).
    pub fn listener_ca_pem(&self) -> &str {
        &self.listener_ca_pem
    }

    /// [`listener_ca_pem`](Self::listener_ca_pem) as a file: what fleetgate's `acme.ca_root`
    /// points to.
    pub fn listener_ca_path(&self) -> &Path {
        &self.listener_ca_path
    }

    /// A directory removed with this instance, for tests' own files.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The root (PEM) that issued certificates chain to, from `/roots/0`; new on every start.
    ///
    /// Pebble signs leaves with an intermediate (see [`intermediate_pem`](Self::intermediate_pem))
    /// and includes it in the chain it returns on download, so a server that serves the full
    /// chain verifies with this root alone as trust anchor.
    pub async fn issuing_root_pem(&self) -> anyhow::Result<String> {
        self.management_get("/roots/0").await
    }

    /// The intermediate (PEM) that signs issued certificates, from `/intermediates/0`.
    pub async fn intermediate_pem(&self) -> anyhow::Result<String> {
        self.management_get("/intermediates/0").await
    }

    /// Pebble's status for the certificate with serial `serial_hex` (lowercase hex, no `0x`):
    /// JSON with `Status` ("Valid"/"Revoked"), `Serial`, `Certificate`, `Reason`, `RevokedAt`.
    pub async fn cert_status(&self, serial_hex: &str) -> anyhow::Result<serde_json::Value> {
        let body = self
            .management_get(&format!("/cert-status-by-serial/{serial_hex}"))
            .await?;
        serde_json::from_str(&body).context("parse cert-status JSON")
    }

    /// Makes A queries for `domain` answer `ip` (challtestsrv `/add-a`).
    pub async fn add_a(&self, domain: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
        let body = serde_json::json!({ "host": domain, "addresses": [ip.to_string()] });
        self.challtestsrv_post("/add-a", body).await
    }

    /// Removes the A answers added for `domain` (challtestsrv `/clear-a`); it resolves to the
    /// default address again.
    pub async fn clear_a(&self, domain: &str) -> anyhow::Result<()> {
        self.challtestsrv_post("/clear-a", serde_json::json!({ "host": domain }))
            .await
    }

    /// Changes the default A answer (challtestsrv `/set-default-ipv4`).
    pub async fn set_default_ipv4(&self, ip: Ipv4Addr) -> anyhow::Result<()> {
        let body = serde_json::json!({ "ip": ip.to_string() });
        self.challtestsrv_post("/set-default-ipv4", body).await
    }

    /// Pebble's log so far (stdout and stderr).
    pub fn pebble_log(&self) -> String {
        self.pebble.log_contents()
    }

    /// challtestsrv's log so far (stdout and stderr).
    pub fn challtestsrv_log(&self) -> String {
        self.challtestsrv.log_contents()
    }

    /// The Pebble process, e.g. to stop or kill it in a CA-outage test.
    pub fn pebble_process(&self) -> &ChildGuard {
        &self.pebble
    }

    /// Kill Pebble (if it still runs) and start it again with the same configuration: the same
    /// addresses, listener certificate and DNS (challtestsrv keeps running). Pebble keeps
    /// nothing on disk, so the new process has a new issuing root ([`issuing_root_pem`]) and
    /// knows no account, order or authorization of the old one. Its log goes on in the same file.
    ///
    /// [`issuing_root_pem`]: Self::issuing_root_pem
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.pebble.kill();
        // A kill of a process that already exited fails; either way, wait until it is gone.
        self.pebble.wait_exit(STARTUP_DEADLINE).await?;
        let cmd = pebble_command(
            &self.dir.path().join("pebble-config.json"),
            self.dns,
            self.nonce_reject,
            self.authz_reuse,
            self.dir.path(),
        );
        let mut pebble =
            ChildGuard::spawn_logging_to(cmd, "pebble", &self.dir.path().join("pebble.log"))?;
        match wait_pebble_serving(
            &mut pebble,
            self.listen,
            self.management,
            &self.listener_ca_pem,
        )
        .await
        {
            Ok(()) => {}
            Err(Start::PortTaken(e) | Start::Failed(e)) => {
                return Err(e.context("restart pebble on its old addresses"));
            }
        }
        self.pebble = pebble;
        Ok(())
    }

    async fn management_get(&self, path: &str) -> anyhow::Result<String> {
        let resp = https_get(self.management, "127.0.0.1", &self.listener_ca_pem, path).await?;
        ok(resp, path).map(|r| r.text())
    }

    async fn challtestsrv_post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        post_json(self.cts_management, path, body).await
    }

    /// Asks challtestsrv's DNS server (the one Pebble's VA uses) for the A records of `name`.
    pub async fn lookup_a(&self, name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
        query_a(self.dns, name).await
    }
}

fn ok(resp: HttpResponse, what: &str) -> anyhow::Result<HttpResponse> {
    if resp.status != StatusCode::OK {
        bail!("{what}: HTTP {}: {}", resp.status, resp.text());
    }
    Ok(resp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn idler(script: &str) -> ChildGuard {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        ChildGuard::spawn(cmd, "fake").unwrap()
    }

    #[tokio::test]
    async fn a_child_logging_port_taken_is_retryable_even_if_it_keeps_running() {
        let mut child =
            idler("echo 'listen tcp: bind: address already in use'; exec tail -f /dev/null");
        let res = wait_until_serving(&mut child, || async { bail!("never ready") }).await;
        assert!(matches!(res, Err(Start::PortTaken(_))));
    }

    #[tokio::test]
    async fn a_child_exiting_for_another_reason_is_fatal() {
        let mut child = idler("echo 'open x: no such file'; exit 1");
        let res = wait_until_serving(&mut child, || async { bail!("never ready") }).await;
        let Err(Start::Failed(e)) = res else {
            panic!("expected a fatal error")
        };
        assert!(format!("{e:#}").contains("no such file"), "{e:#}");
    }
}
