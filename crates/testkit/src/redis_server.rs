//! redis-server on a private loopback address, in a temporary directory, killed on drop.
//!
//! By default it runs without persistence (`--save '' --appendonly no`): a restart loses every
//! key, which is what outage tests of a careless deployment want.
//! [`RedisServerBuilder::append_only`] turns on the append-only file with `appendfsync always`,
//! the configuration fleetgate documents for production, so a restart keeps every acknowledged
//! write.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut redis = testkit::RedisServer::start().await?;
//! let url = redis.url(); // redis://127.0.0.x:port
//! redis.pause()?; // SIGSTOP: connections stay open, nothing answers
//! redis.resume()?; // SIGCONT
//! redis.kill().await?; // SIGKILL: connections are reset
//! redis.restart().await?; // a new process on the same address
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::address::{free_addr, loopback_ip};
use crate::poll::wait_for_ok;
use crate::process::ChildGuard;

/// How long [`RedisServer::start`] and [`RedisServer::restart`] wait for the server to answer.
pub const REDIS_STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// Bound on one readiness probe (connect, `INFO server`, reply).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts when redis-server exits at startup because another process took its port.
const START_ATTEMPTS: u32 = 3;
/// How long [`RedisServer::kill`] waits for the killed process to be reaped.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// Options for a [`RedisServer`]; see [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    append_only: bool,
    tls: bool,
}

impl RedisServerBuilder {
    /// Keep an append-only file (`appendonly yes`, `appendfsync always`) in the server's
    /// directory, so that data survives [`RedisServer::kill`] + [`RedisServer::restart`].
    /// Default: no persistence at all.
    pub fn append_only(mut self, on: bool) -> Self {
        self.append_only = on;
        self
    }

    /// Also serve TLS on a second port ([`RedisServer::tls_url`]) with a certificate for the
    /// server's IP from a fresh test CA ([`RedisServer::tls_root`]); plain stays on for probes.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Starts redis-server on a free port of a fresh `127.0.0.x` and waits until it answers.
    pub async fn start(self) -> anyhow::Result<RedisServer> {
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("testkit-redis-")
                .tempdir()
                .context("create redis-server's temp dir")?;
            let data = dir.path().join("data");
            std::fs::create_dir(&data).with_context(|| format!("create {}", data.display()))?;
            let ip = loopback_ip();
            let addr = free_addr(ip);
            let tls = if self.tls {
                let (root, cert, key) = crate::pki::ca_and_leaf(&[&addr.ip().to_string()]);
                for (name, pem) in [("root.pem", &root), ("cert.pem", &cert), ("key.pem", &key)] {
                    std::fs::write(dir.path().join(name), pem)
                        .with_context(|| format!("write {name}"))?;
                }
                Some((free_addr(ip), root))
            } else {
                None
            };
            let mut server = RedisServer {
                addr,
                tls,
                options: self.clone(),
                child: None,
                data,
                dir,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                // Exited at once: most likely the port was taken between choosing and binding.
                Err(e) if server.exited() => errors.push(format!("{e:#}")),
                Err(e) => return Err(e),
            }
        }
        bail!(
            "redis-server exited at startup on {START_ATTEMPTS} attempts:\n{}",
            errors.join("\n")
        )
    }
}

/// A running redis-server (see the module docs). Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    addr: SocketAddr,
    /// The TLS port's address and the root of its certificate.
    tls: Option<(SocketAddr, String)>,
    options: RedisServerBuilder,
    /// `None` after [`RedisServer::kill`] until [`RedisServer::restart`].
    child: Option<ChildGuard>,
    data: PathBuf,
    // Dropped last (fields drop in order): the log and data outlive the process.
    dir: TempDir,
}

impl RedisServer {
    /// Options: persistence.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// Starts a server without persistence; see [`RedisServerBuilder::start`].
    pub async fn start() -> anyhow::Result<RedisServer> {
        Self::builder().start().await
    }

    /// `redis://IP:PORT` (database 0, no password).
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// `rediss://IP:TLS_PORT`, when started with [`RedisServerBuilder::tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(addr, _)| format!("rediss://{addr}"))
    }

    /// The root PEM of the TLS port's certificate.
    pub fn tls_root(&self) -> Option<&str> {
        self.tls.as_ref().map(|(_, root)| root.as_str())
    }

    /// The address it listens on (a `127.0.0.x`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// Its working directory (the append-only file lives here).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Everything it logged, across restarts.
    pub fn log_contents(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Freeze it with `SIGSTOP`: connections stay open, requests get no answer.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.running()?.stop()
    }

    /// Resume it with `SIGCONT` after [`pause`](Self::pause).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.running()?.cont()
    }

    /// `SIGKILL` it and wait until it is gone; its port is free afterwards. Without
    /// [`append_only`](RedisServerBuilder::append_only) every key is lost.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("redis-server on {} is not running", self.addr);
        };
        child.kill()?;
        child.wait_exit(EXIT_DEADLINE).await?;
        Ok(())
    }

    /// Start it again on the same address (killing it first if it still runs) and wait until it
    /// answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.kill().await?;
        }
        self.spawn_and_wait().await
    }

    fn running(&self) -> anyhow::Result<&ChildGuard> {
        self.child
            .as_ref()
            .with_context(|| format!("redis-server on {} is not running", self.addr))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis-server.log")
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_exit_status(), Ok(Some(_))))
    }

    async fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--bind")
            .arg(self.addr.ip().to_string())
            .arg("--port")
            .arg(self.addr.port().to_string())
            .arg("--dir")
            .arg(&self.data)
            .args(["--save", "", "--daemonize", "no", "--databases", "1"]);
        if let Some((tls, _)) = &self.tls {
            let file = |name: &str| self.dir.path().join(name);
            cmd.arg("--tls-port")
                .arg(tls.port().to_string())
                .arg("--tls-cert-file")
                .arg(file("cert.pem"))
                .arg("--tls-key-file")
                .arg(file("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(file("root.pem"))
                .args(["--tls-auth-clients", "no"]);
        }
        if self.options.append_only {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = ChildGuard::spawn_logging_to(cmd, "redis-server", &self.log_path())?;
        let pid = child.pid();
        self.child = Some(child);
        let addr = self.addr;
        let what = format!("redis-server (pid {pid}) to answer on {addr}");
        let result = wait_for_ok(&what, REDIS_STARTUP_DEADLINE, || {
            let exited = self.exited();
            async move {
                if exited {
                    return Ok(Err(anyhow::anyhow!("redis-server exited")));
                }
                probe(addr, pid).await.map(Ok)
            }
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => Err(e.context(format!(
                "redis-server on {addr}; its log:\n{}",
                self.log_contents()
            ))),
        }
    }
}

/// Succeeds when the server on `addr` answers `INFO server` with our `process_id` (so it is ours,
/// not another process that took the port) and has finished loading its data.
async fn probe(addr: SocketAddr, pid: u32) -> anyhow::Result<()> {
    let server = tokio::time::timeout(PROBE_TIMEOUT, info(addr, "server"))
        .await
        .context("INFO server timed out")??;
    ensure!(
        server
            .lines()
            .any(|l| l.trim() == format!("process_id:{pid}")),
        "{addr} is answered by another process"
    );
    let persistence = tokio::time::timeout(PROBE_TIMEOUT, info(addr, "persistence"))
        .await
        .context("INFO persistence timed out")??;
    ensure!(
        persistence.lines().any(|l| l.trim() == "loading:0"),
        "still loading its data"
    );
    Ok(())
}

/// `INFO <section>` over a raw connection (RESP2 bulk string reply).
async fn info(addr: SocketAddr, section: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed before the reply was complete");
        buf.extend_from_slice(&chunk[..n]);
        let Some(header_end) = buf.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        let header = std::str::from_utf8(&buf[..header_end])?;
        let Some(len) = header.strip_prefix('$') else {
            bail!("unexpected reply {header:?}");
        };
        let len: usize = len
            .parse()
            .with_context(|| format!("reply header {header:?}"))?;
        let body = header_end + 2;
        if buf.len() >= body + len {
            return Ok(String::from_utf8_lossy(&buf[body..body + len]).into_owned());
        }
    }
}
