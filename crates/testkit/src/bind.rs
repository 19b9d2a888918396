//! BIND 9 (`named`, Debian package `bind9`) as a recursive resolver for tests, configured in a
//! temp dir on a free port of 127.0.0.1 (named only listens on interface addresses): primary zones written by the test, forward
//! zones pointing at servers under test. Killed on drop.
//!
//! Pebble's `-dnsserver` can point at it (`PebbleBuilder::dns_server`) so DNS-01 validation goes
//! through a real resolver: CNAMEs followed, answers cached, dead servers skipped.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tempfile::TempDir;
use tokio::process::Command;

use crate::address::free_tcp_udp_port;
use crate::dns::query_a;
use crate::poll::wait_for_ok;
use crate::process::ChildGuard;

/// How long [`BindBuilder::start`] waits for `named` to answer.
pub const BIND_STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// Attempts when `named` cannot bind its port (another test took it).
const START_ATTEMPTS: u32 = 3;
/// The zone every instance serves to prove it is up, and its answer (TEST-NET-1).
const PROBE_ZONE: &str = "testkit-probe.test";
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

/// Options for a [`Bind`]; see [`Bind::builder`].
#[derive(Debug, Clone, Default)]
pub struct BindBuilder {
    primaries: Vec<(String, String)>,
    /// zone -> the TSIG key allowed to update it.
    updatable: Vec<(String, TsigKeySpec)>,
    forwards: Vec<(String, Vec<SocketAddr>)>,
}

impl BindBuilder {
    /// Serve `zone` as its primary with `records` (zone-file lines relative to the zone, e.g.
    /// `_acme-challenge IN CNAME x.acme.test.`); SOA and NS are added.
    pub fn primary_zone(mut self, zone: &str, records: &str) -> Self {
        self.primaries
            .push((zone.trim_end_matches('.').to_string(), records.to_string()));
        self
    }

    /// Like [`primary_zone`](Self::primary_zone), and open to RFC 2136 updates signed with the
    /// TSIG key `key_name` (`algorithm` as BIND names it, e.g. `hmac-sha256`; `secret` base64).
    pub fn updatable_zone(
        mut self,
        zone: &str,
        records: &str,
        key_name: &str,
        algorithm: &str,
        secret: &str,
    ) -> Self {
        let zone = zone.trim_end_matches('.').to_string();
        self.primaries.push((zone.clone(), records.to_string()));
        self.updatable.push((
            zone,
            TsigKeySpec {
                name: key_name.to_string(),
                algorithm: algorithm.to_string(),
                secret: secret.to_string(),
            },
        ));
        self
    }

    /// Resolve names under `zone` by asking only `servers` (a `forward only` zone): how a test
    /// delegates a zone to servers on 127.0.0.x ports other than 53.
    pub fn forward_zone(mut self, zone: &str, servers: &[SocketAddr]) -> Self {
        self.forwards
            .push((zone.trim_end_matches('.').to_string(), servers.to_vec()));
        self
    }

    /// Writes the configuration, starts `named` and waits until it answers.
    pub async fn start(self) -> anyhow::Result<Bind> {
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match self.try_start().await {
                Ok(bind) => return Ok(bind),
                Err((true, e)) => errors.push(format!("{e:#}")),
                Err((false, e)) => return Err(e),
            }
        }
        bail!(
            "named: port taken on {START_ATTEMPTS} attempts:\n{}",
            errors.join("\n")
        )
    }

    /// Err((port_taken, error)).
    async fn try_start(&self) -> Result<Bind, (bool, anyhow::Error)> {
        let failed = |e: anyhow::Error| (false, e);
        let dir = tempfile::Builder::new()
            .prefix("testkit-bind-")
            .tempdir()
            .context("create named's temp dir")
            .map_err(failed)?;
        // named listens on interface addresses only: 127.0.0.1, not the rest of 127/8.
        let ip = Ipv4Addr::LOCALHOST;
        let port = free_tcp_udp_port(ip).map_err(failed)?;
        let addr = SocketAddr::from((ip, port));
        let config = self.config(dir.path(), addr).map_err(failed)?;
        let conf_path = dir.path().join("named.conf");
        write(&conf_path, &config).map_err(failed)?;

        let named = named_program();
        let mut cmd = Command::new(&named);
        // -g: foreground, log to stderr; -4: IPv4 only; -n 1: one worker thread (2-core machines).
        cmd.arg("-g")
            .arg("-4")
            .args(["-n", "1"])
            .arg("-c")
            .arg(&conf_path)
            .current_dir(dir.path());
        let mut child = ChildGuard::spawn_logging_to(cmd, "named", &dir.path().join("named.log"))
            .map_err(failed)?;
        let ready = wait_for_ok("named to answer", BIND_STARTUP_DEADLINE, || {
            let exited = child.try_exit_status().ok().flatten();
            async move {
                if let Some(status) = exited {
                    return Ok(Some(status));
                }
                let answer = query_a(addr, PROBE_ZONE).await?;
                ensure!(answer == [PROBE_IP], "probe resolved to {answer:?}");
                Ok(None)
            }
        })
        .await;
        let log = child.log_contents();
        match ready {
            Ok(None) => Ok(Bind { child, addr, dir }),
            Ok(Some(status)) => Err((
                // Another process took the port between our probe and named's bind.
                log.contains("address in use")
                    || log.contains("unable to listen on any configured interfaces"),
                anyhow::anyhow!("named exited at startup ({status}); log:\n{log}"),
            )),
            Err(e) => Err((false, e.context(format!("log of named:\n{log}")))),
        }
    }

    fn config(&self, dir: &Path, addr: SocketAddr) -> anyhow::Result<String> {
        let d = dir.display();
        let mut conf = format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ {ip}; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-query {{ any; }};
    allow-recursion {{ 127.0.0.0/8; }};
    dnssec-validation no;
    notify no;
    querylog yes;
}};
controls {{ }};
"#,
            port = addr.port(),
            ip = addr.ip(),
        );
        let probe = format!("@ IN A {PROBE_IP}\n");
        let primaries =
            std::iter::once((PROBE_ZONE.to_string(), probe)).chain(self.primaries.iter().cloned());
        for (_, key) in &self.updatable {
            writeln!(
                conf,
                "key \"{}\" {{ algorithm {}; secret \"{}\"; }};",
                key.name, key.algorithm, key.secret
            )?;
        }
        for (zone, records) in primaries {
            let file = format!("{zone}.zone");
            write(
                &dir.join(&file),
                &format!(
                    "$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 5\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n{records}\n"
                ),
            )?;
            let update = match self.updatable.iter().find(|(z, _)| *z == zone) {
                Some((_, key)) => format!(" allow-update {{ key \"{}\"; }};", key.name),
                None => String::new(),
            };
            writeln!(
                conf,
                "zone \"{zone}\" {{ type primary; file \"{d}/{file}\";{update} }};"
            )?;
        }
        for (zone, servers) in &self.forwards {
            let list: String = servers
                .iter()
                .map(|s| format!("{} port {}; ", s.ip(), s.port()))
                .collect();
            writeln!(
                conf,
                "zone \"{zone}\" {{ type forward; forward only; forwarders {{ {list}}}; }};"
            )?;
        }
        Ok(conf)
    }
}

#[derive(Debug, Clone)]
struct TsigKeySpec {
    name: String,
    algorithm: String,
    secret: String,
}

/// `named` lives in /usr/sbin, which a non-root PATH may lack.
fn named_program() -> String {
    let sbin = "/usr/sbin/named";
    if Path::new(sbin).exists() {
        sbin.to_string()
    } else {
        "named".to_string()
    }
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))
}

/// A running `named`; killed when dropped.
#[derive(Debug)]
pub struct Bind {
    // The child first: killed before its directory is removed.
    child: ChildGuard,
    addr: SocketAddr,
    dir: TempDir,
}

impl Bind {
    pub fn builder() -> BindBuilder {
        BindBuilder::default()
    }

    /// Where it answers queries (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `named`'s log so far (with the query log).
    pub fn log_contents(&self) -> String {
        self.child.log_contents()
    }
}
