//! systemd's notify protocol, as `Type=notify` sees it: the test binds the unix datagram socket
//! systemd would (`NOTIFY_SOCKET`) and runs `fleetgate run` with it and a watchdog
//! (`WATCHDOG_USEC`). READY=1 comes once every listener accepts connections, WATCHDOG=1 at half
//! the interval, STOPPING=1 on SIGTERM before a clean exit.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::UnixDatagram;

async fn next_message(socket: &UnixDatagram, deadline: Duration) -> Result<String> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(deadline, socket.recv(&mut buf))
        .await
        .context("no notify message in time")??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Wait for a message containing `line` (a `KEY=VALUE` line); the messages seen on the way.
async fn wait_line(socket: &UnixDatagram, line: &str, deadline: Duration) -> Result<Vec<String>> {
    let end = Instant::now() + deadline;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let message = next_message(socket, left)
            .await
            .with_context(|| format!("waiting for {line}; seen {seen:?}"))?;
        let found = message.lines().any(|l| l == line);
        seen.push(message);
        if found {
            return Ok(seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_after_the_listeners_watchdog_pings_and_stopping_on_sigterm() -> Result<()> {
    let ip = testkit::loopback_ip();
    let admin = testkit::free_addr(ip);
    let body = format!(
        "[admin]\nlisten = \"{admin}\"\n\n[[site]]\ndomains = [\"notify.example\"]\nrespond = {{ status = 200, body = \"hi\" }}\ntls = \"internal\"\n"
    );
    let node = common::Node::new(ip, testkit::free_port(), testkit::free_port(), &body)?;
    let dir = tempfile::tempdir()?;
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;

    let mut cmd = tokio::process::Command::new(common::bin());
    cmd.arg("run")
        .arg("--config")
        .arg(&node.config_path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID");
    let mut child = testkit::ChildGuard::spawn(cmd, "fleetgate")?;

    // READY=1, and by then every listener accepts connections.
    let seen = wait_line(&socket, "READY=1", Duration::from_secs(20)).await?;
    let ready = seen.last().unwrap();
    assert!(
        ready.lines().any(|l| l == "STATUS=serving 1 sites"),
        "{ready:?}"
    );
    for addr in [node.http, node.https, admin] {
        tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("{addr} not accepting at READY"))?;
    }

    // Watchdog pings every 200 ms (half of 400 ms): at least three within 1.5 s.
    let started = Instant::now();
    for _ in 0..3 {
        wait_line(&socket, "WATCHDOG=1", Duration::from_secs(1)).await?;
    }
    assert!(started.elapsed() < Duration::from_millis(1500));

    // SIGTERM: STOPPING=1, then a clean exit.
    child.signal(testkit::Signal::Term)?;
    wait_line(&socket, "STOPPING=1", Duration::from_secs(5)).await?;
    let status = child.wait_exit(Duration::from_secs(30)).await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

fn fleetgate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::bin())
        .args(args)
        .output()
        .expect("run the fleetgate binary")
}

/// The packaging kit generated from clap: completions that bash parses, and a man page with
/// every subcommand, without a config file.
#[test]
fn completions_and_man_page_come_from_the_command_line_definition() {
    let bash = fleetgate(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(script.contains("complete -F _fleetgate"), "{script}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleetgate.bash");
    std::fs::write(&path, &script).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .status()
        .unwrap();
    assert!(check.success(), "bash -n refused the completion script");
    for shell in ["zsh", "fish"] {
        let out = fleetgate(&["completions", shell]);
        assert!(out.status.success() && out.stdout.len() > 200, "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("manpage"),
            "{shell}"
        );
    }
    assert!(!fleetgate(&["completions", "tcsh"]).status.success());

    let man = fleetgate(&["manpage"]);
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH fleetgate 1"),
        "{page}"
    );
    for section in [
        "FLEETGATE RUN",
        "FLEETGATE SITES",
        "FLEETGATE COMPLETIONS",
        "\\-\\-config",
    ] {
        assert!(page.contains(section), "{section} missing");
    }
}
