//! Child processes owned by a test: killed on drop, output captured in a log file.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::poll::wait_for_ok;

/// How many trailing log lines a [`ChildGuard`] prints when dropped during a panic.
const LOG_TAIL_ON_PANIC: usize = 80;

/// A Unix signal that [`ChildGuard::signal`] can send (through `kill(1)`, so no `unsafe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGKILL`: cannot be caught; the process ends at once.
    Kill,
    /// `SIGTERM`: asks for a graceful shutdown.
    Term,
    /// `SIGINT`: what Ctrl-C sends.
    Int,
    /// `SIGHUP`: conventionally "reload configuration".
    Hup,
    /// `SIGSTOP`: freezes the process (e.g. a node that stops answering but keeps its sockets).
    Stop,
    /// `SIGCONT`: resumes a stopped process.
    Cont,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// A running child process that is killed (`SIGKILL`) when the guard is dropped.
///
/// stdin is closed; stdout and stderr both go to `<name>.log` in a temporary directory that is
/// removed on drop. If the guard is dropped while the thread panics (a failing test), the last
/// lines of the log are printed to stderr, which the test harness shows with the failure.
pub struct ChildGuard {
    name: String,
    child: Child,
    pid: u32,
    log_path: PathBuf,
    // Dropped after `child` has been killed; holds the log file.
    _log_dir: Option<TempDir>,
}

impl ChildGuard {
    /// Spawns `cmd` with its output captured in a log file in a fresh temporary directory.
    ///
    /// Must be called inside a tokio runtime (tokio's process driver reaps the child).
    pub fn spawn(cmd: Command, name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("testkit-{name}-"))
            .tempdir()
            .context("create a log directory")?;
        let log_path = dir.path().join(format!("{name}.log"));
        let mut guard = Self::spawn_logging_to(cmd, name, &log_path)?;
        guard._log_dir = Some(dir);
        Ok(guard)
    }

    /// Spawns `cmd` with stdout and stderr appended to `log_path` (the caller owns the directory).
    pub fn spawn_logging_to(mut cmd: Command, name: &str, log_path: &Path) -> anyhow::Result<Self> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open log file {}", log_path.display()))?;
        let log_err = log.try_clone().context("clone log file handle")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name} ({program}); is it installed?"))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited before its pid was read"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
            log_path: log_path.to_owned(),
            _log_dir: None,
        })
    }

    /// The name given at spawn (used in messages and the log file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where stdout and stderr are written.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the child has written so far (lossy UTF-8; empty if the log cannot be read).
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Polls the log until it contains `needle`; fails early if the child exits first.
    pub async fn wait_for_log(&mut self, needle: &str, deadline: Duration) -> anyhow::Result<()> {
        let what = format!("{:?} in the log of {}", needle, self.name);
        // Ok(None): found. Ok(Some(status)): exited first, stop polling.
        let result = wait_for_ok(&what, deadline, || {
            let found = self.log_contents().contains(needle);
            let exited = self.child.try_wait();
            async move {
                if found {
                    return Ok(None);
                }
                match exited {
                    Ok(Some(status)) => Ok(Some(status)),
                    _ => bail!("not logged yet"),
                }
            }
        })
        .await;
        match result {
            Ok(None) => Ok(()),
            // It may have logged the needle just before exiting.
            Ok(Some(_)) if self.log_contents().contains(needle) => Ok(()),
            Ok(Some(status)) => Err(anyhow::anyhow!(
                "{} exited ({status}) before logging {needle:?}",
                self.name
            )
            .context(self.log_tail_message())),
            Err(e) => Err(e.context(self.log_tail_message())),
        }
    }

    /// Sends `signal` to the child with `kill -<SIG> <pid>`.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{}", signal.name()))
            .arg(self.pid.to_string())
            .stdin(Stdio::null())
            .status()
            .context("run kill(1)")?;
        if !status.success() {
            bail!(
                "kill -{} {} ({}) failed: {status}",
                signal.name(),
                self.pid,
                self.name
            );
        }
        Ok(())
    }

    /// `SIGKILL`.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.signal(Signal::Kill)
    }

    /// `SIGTERM`.
    pub fn term(&self) -> anyhow::Result<()> {
        self.signal(Signal::Term)
    }

    /// `SIGSTOP` (freeze).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.signal(Signal::Stop)
    }

    /// `SIGCONT` (resume after [`stop`](Self::stop)).
    pub fn cont(&self) -> anyhow::Result<()> {
        self.signal(Signal::Cont)
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits up to `deadline` for the child to exit (e.g. after [`term`](Self::term)).
    pub async fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "{} (pid {}) still running after {deadline:?}",
                self.name,
                self.pid
            ),
        }
    }

    /// The underlying tokio child, e.g. to `wait()` on it directly.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    fn log_tail_message(&self) -> String {
        let log = self.log_contents();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_ON_PANIC)..];
        format!(
            "last {} lines of {} ({}):\n{}",
            tail.len(),
            self.name,
            self.log_path.display(),
            tail.join("\n")
        )
    }
}

impl fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("log_path", &self.log_path)
            .finish()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A stopped process still dies from SIGKILL; tokio's kill_on_drop would do the same, but
        // killing here first makes the order explicit and lets the log be read after it exits.
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("--- {} ---", self.log_tail_message());
        }
    }
}
