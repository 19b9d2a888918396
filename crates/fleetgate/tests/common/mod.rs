//! Runs the real `fleetgate` binary for end-to-end tests.
#![allow(dead_code, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use testkit::{ChildGuard, Signal};

pub mod cluster;
pub mod scrape;

/// A fleetgate process with its own config, data directory and addresses.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub ip: Ipv4Addr,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub config_path: PathBuf,
    pub data: PathBuf,
    pub child: Option<ChildGuard>,
    /// The `[storage]` section; `None` means a `dir` store at `data`.
    pub storage: Option<String>,
    /// Lines added to `[listen]` (e.g. `proxy_protocol_from`); set before `start`.
    pub listen_extra: String,
    runs: u32,
}

impl Node {
    /// A node on `ip` with the given ports; `body` is appended after [listen] and [storage].
    pub fn new(ip: Ipv4Addr, http_port: u16, https_port: u16, body: &str) -> anyhow::Result<Node> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        Self::with_data(dir, data, ip, http_port, https_port, body)
    }

    /// A node sharing `data` (another node's data directory).
    pub fn with_data(
        dir: tempfile::TempDir,
        data: PathBuf,
        ip: Ipv4Addr,
        http_port: u16,
        https_port: u16,
        body: &str,
    ) -> anyhow::Result<Node> {
        Self::with_storage(dir, data, None, ip, http_port, https_port, body)
    }

    /// A node with an explicit `[storage]` section (`None`: a dir store at `data`).
    pub fn with_storage(
        dir: tempfile::TempDir,
        data: PathBuf,
        storage: Option<String>,
        ip: Ipv4Addr,
        http_port: u16,
        https_port: u16,
        body: &str,
    ) -> anyhow::Result<Node> {
        let config_path = dir.path().join("fleetgate.toml");
        let node = Node {
            http: SocketAddr::from((ip, http_port)),
            https: SocketAddr::from((ip, https_port)),
            ip,
            config_path,
            data,
            dir,
            child: None,
            storage,
            listen_extra: String::new(),
            runs: 0,
        };
        node.write_config(body)?;
        Ok(node)
    }

    /// Rewrite the config file (for SIGHUP reload tests).
    pub fn write_config(&self, body: &str) -> anyhow::Result<()> {
        let storage = self.storage.clone().unwrap_or_else(|| {
            format!(
                "[storage]\nkind = \"dir\"\npath = \"{}\"\n",
                self.data.display()
            )
        });
        let text = format!(
            "node = \"{}\"\n\n[listen]\nhttp = \"{}\"\nhttps = \"{}\"\n{}\n\n{storage}\n[log]\nlevel = \"info,certs=debug\"\n\n{body}\n",
            self.ip, self.http, self.https, self.listen_extra,
        );
        std::fs::write(&self.config_path, text)?;
        Ok(())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Start `fleetgate run` and wait until both listeners accept connections.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_listening().await
    }

    /// Start `fleetgate run` without waiting (start several nodes at once, then wait for each).
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("run").arg("--config").arg(&self.config_path);
        let log = self.dir.path().join(format!("fleetgate-{}.log", self.runs));
        let child = ChildGuard::spawn_logging_to(cmd, "fleetgate", &log)?;
        self.child = Some(child);
        Ok(())
    }

    /// Wait until both listeners accept connections.
    pub async fn wait_listening(&self) -> anyhow::Result<()> {
        let (http, https) = (self.http, self.https);
        testkit::wait_for_ok(
            "fleetgate listening",
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(http).await?;
                tokio::net::TcpStream::connect(https).await?;
                Ok(())
            },
        )
        .await
        .with_context(|| self.log())?;
        Ok(())
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        self.child.as_ref().context("not running")?.signal(signal)
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        child.signal(Signal::Term)?;
        child
            .wait_exit(Duration::from_secs(30))
            .await
            .context("fleetgate did not exit within 30 s of SIGTERM")
    }

    /// Everything every run of this node logged so far.
    pub fn log(&self) -> String {
        let mut all = String::new();
        for run in 1..=self.runs {
            let path = self.dir.path().join(format!("fleetgate-{run}.log"));
            all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        all
    }

    /// Run a one-shot subcommand (`check`, `certs`, `ca export`) with this node's config.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        run_cli(args, &self.config_path)
    }

    /// The built-in CA's root PEM (`fleetgate ca export`), which must succeed.
    pub fn ca_root(&self) -> anyhow::Result<String> {
        let export = self.command(&["ca", "export"]);
        anyhow::ensure!(
            export.status.success(),
            "fleetgate ca export failed: {}",
            String::from_utf8_lossy(&export.stderr)
        );
        Ok(String::from_utf8(export.stdout)?)
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fleetgate")
}

/// `fleetgate ARGS --config CONFIG`, waited for.
pub fn run_cli(args: &[&str], config: &Path) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run the fleetgate binary")
}

/// The serial of the certificate served for `name`, verified against `roots`.
pub async fn served_serial(addr: SocketAddr, name: &str, roots: &str) -> anyhow::Result<String> {
    let info = testkit::tls_handshake(addr, name, roots, &[b"http/1.1"]).await?;
    Ok(info.leaf.serial_hex)
}
