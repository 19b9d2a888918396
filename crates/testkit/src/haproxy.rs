//! HAProxy as a real round-robin TCP load balancer in front of fleetgate nodes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;
use tokio::process::Command;

use crate::poll::wait_for_ok;
use crate::process::ChildGuard;

/// A running HAProxy; killed on drop.
pub struct Haproxy {
    _dir: TempDir,
    process: ChildGuard,
}

impl Haproxy {
    /// Balance each frontend address over its backends, round robin per TCP connection (so
    /// TLS passes through untouched and every new connection may land on another node).
    pub async fn tcp_round_robin(
        frontends: &[(SocketAddr, Vec<SocketAddr>)],
    ) -> anyhow::Result<Haproxy> {
        Self::tcp_round_robin_with(frontends, &[]).await
    }

    /// As [`Haproxy::tcp_round_robin`], with `server_options[i]` added to every server line of
    /// frontend `i` (e.g. `send-proxy-v2 source 127.0.0.1`).
    pub async fn tcp_round_robin_with(
        frontends: &[(SocketAddr, Vec<SocketAddr>)],
        server_options: &[&str],
    ) -> anyhow::Result<Haproxy> {
        let dir = tempfile::Builder::new()
            .prefix("testkit-haproxy-")
            .tempdir()?;
        let mut cfg = String::from(
            "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 500ms\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch 1\n\n",
        );
        for (i, (bind, backends)) in frontends.iter().enumerate() {
            cfg.push_str(&format!("frontend f{i}\n  bind {bind}\n  default_backend b{i}\n\nbackend b{i}\n  balance roundrobin\n"));
            for (j, backend) in backends.iter().enumerate() {
                // No active checks (a node not started yet would be marked down and miss its
                // first validation); a refused connection is retried on the next node instead
                // (`retries` + `option redispatch` above).
                let options = server_options.get(i).copied().unwrap_or("");
                cfg.push_str(&format!("  server s{j} {backend} {options}\n"));
            }
            cfg.push('\n');
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg)?;
        let program = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("haproxy is not installed (Debian package haproxy)")?;
        let mut cmd = Command::new(program);
        cmd.arg("-db").arg("-f").arg(&path);
        let process = ChildGuard::spawn(cmd, "haproxy")?;
        let binds: Vec<SocketAddr> = frontends.iter().map(|(b, _)| *b).collect();
        wait_for_ok("haproxy listening", Duration::from_secs(10), || {
            let binds = binds.clone();
            async move {
                for bind in binds {
                    tokio::net::TcpStream::connect(bind).await?;
                }
                Ok(())
            }
        })
        .await
        .with_context(|| process.log_contents())?;
        Ok(Haproxy { _dir: dir, process })
    }

    pub fn process(&self) -> &ChildGuard {
        &self.process
    }
}
