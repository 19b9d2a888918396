//! PostgreSQL from `initdb` in a temporary directory, on a private loopback address, killed on
//! drop.
//!
//! The Debian `postgresql` package provides the programs under `/usr/lib/postgresql/<major>/bin`
//! (the newest major found is used). The server runs with `fsync=off` (a test never survives a
//! machine crash, only process kills) but `synchronous_commit` on (off, a [`Postgres::kill`]
//! loses commits already acknowledged), and trust authentication on loopback and a private
//! socket directory. It has a superuser `postgres` and a database `fleetgate` owned by the ordinary
//! role `fleetgate`, which [`Postgres::url`] connects as.
//!
//! **Running as root.** `initdb` and `postgres` refuse to run as root. Then both run as the
//! `postgres` system user (created by the Debian package), by setting the child's uid and gid
//! directly (`Command::uid`/`gid`, which also drops supplementary groups) rather than through
//! `runuser`/`su`, which would stay in between as the parent: signals must reach the server
//! itself. The temporary directory is chowned to that user. As any other user, both run as that
//! user.
//!
//! **Signals reach every server process.** Each backend is its own process group leader
//! (PostgreSQL calls `setsid` in every child), so neither the postmaster's pid nor its group
//! reaches them. [`Postgres::pause`] freezes the postmaster first (so it forks nothing more),
//! then every process under it, found through `/proc`: freezing the postmaster alone would
//! leave open connections working. [`Postgres::kill`] and drop kill them all the same way, so no
//! orphaned backend holds the data directory.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut pg = testkit::Postgres::start().await?;
//! let url = pg.url(); // postgres://fleetgate@127.0.0.x:port/fleetgate
//! pg.pause()?; // SIGSTOP: connections stay open, nothing answers
//! pg.resume()?; // SIGCONT
//! pg.kill().await?; // SIGKILL: connections are reset
//! pg.restart().await?; // a new server on the same data directory and address
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use tempfile::TempDir;
use tokio::process::Command;
use tokio_postgres::NoTls;

use crate::address::{free_addr, loopback_ip};
use crate::poll::wait_for_ok;
use crate::process::ChildGuard;

/// How long [`Postgres::start`] and [`Postgres::restart`] wait for the server to answer.
pub const POSTGRES_STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on `initdb`.
const INITDB_DEADLINE: Duration = Duration::from_secs(120);
/// Bound on one readiness probe (connect and `SELECT 1`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts when the server exits at startup because another process took its port.
const START_ATTEMPTS: u32 = 3;
/// Pause between attempts of [`Postgres::restart`].
const RESTART_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long [`Postgres::pause`] waits for the postmaster to be stopped.
const FREEZE_DEADLINE: Duration = Duration::from_secs(5);
/// How long [`Postgres::kill`] waits for the killed server to be reaped.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);
/// The ordinary role and database that [`Postgres::url`] names.
const ROLE: &str = "fleetgate";
const DATABASE: &str = "fleetgate";
/// Where the Debian package installs one directory per major version.
const VERSIONS_DIR: &str = "/usr/lib/postgresql";
/// How postgres reports a taken port.
const PORT_TAKEN: &str = "could not bind";

/// A uid and gid to run the server as.
#[derive(Debug, Clone, Copy)]
struct Account {
    uid: u32,
    gid: u32,
}

/// A running PostgreSQL server; killed (with every backend) when dropped.
#[derive(Debug)]
pub struct Postgres {
    // `None` between `kill` and `restart`.
    server: Option<ChildGuard>,
    addr: SocketAddr,
    bin: PathBuf,
    account: Option<Account>,
    dir: TempDir,
    /// Serving TLS too (`ssl=on`): the root of the certificate made for the address.
    tls_root: Option<String>,
}

impl Postgres {
    /// Runs `initdb` in a fresh temporary directory, starts the server on a free port of a fresh
    /// `127.0.0.x`, and creates the `fleetgate` role and database.
    pub async fn start() -> anyhow::Result<Postgres> {
        Self::launch(false).await
    }

    /// As [`Postgres::start`], also accepting TLS (plain connections still work) with a
    /// certificate for its IP address from a fresh test CA: [`Postgres::tls_root`].
    pub async fn start_tls() -> anyhow::Result<Postgres> {
        Self::launch(true).await
    }

    /// The root PEM the server's TLS certificate chains to ([`Postgres::start_tls`]).
    pub fn tls_root(&self) -> Option<&str> {
        self.tls_root.as_deref()
    }

    async fn launch(tls: bool) -> anyhow::Result<Postgres> {
        let bin = bin_dir()?;
        let account = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("testkit-postgres-")
            .tempdir()
            .context("create a temporary directory")?;
        if let Some(a) = account {
            std::os::unix::fs::chown(dir.path(), Some(a.uid), Some(a.gid))
                .with_context(|| format!("chown {} to the postgres user", dir.path().display()))?;
        }
        let mut initdb = command(&bin.join("initdb"), account, dir.path());
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "-A", "trust", "--no-locale", "-E", "UTF8"])
            .args(["--no-sync", "--no-instructions"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(INITDB_DEADLINE, initdb.output())
            .await
            .map_err(|_| anyhow!("initdb still running after {INITDB_DEADLINE:?}"))?
            .context("run initdb")?;
        ensure!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let sockets = dir.path().join("sock");
        std::fs::create_dir(&sockets).context("create the socket directory")?;
        if let Some(a) = account {
            std::os::unix::fs::chown(&sockets, Some(a.uid), Some(a.gid))
                .context("chown the socket directory")?;
        }

        let mut pg = Postgres {
            server: None,
            addr: free_addr(loopback_ip()),
            bin,
            account,
            dir,
            tls_root: tls.then(String::new),
        };
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match pg.spawn_and_wait().await {
                Ok(()) => {
                    pg.create_role_and_database().await?;
                    return Ok(pg);
                }
                Err(Start::PortTaken(e)) => {
                    errors.push(e);
                    pg.addr = free_addr(loopback_ip());
                }
                Err(Start::Failed(e)) => return Err(e),
            }
        }
        Err(anyhow!("{errors:#?}").context(format!(
            "postgres could not get a free port in {START_ATTEMPTS} attempts"
        )))
    }

    /// `postgres://fleetgate@<ip>:<port>/fleetgate`: the ordinary role that owns the database.
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@{}/{DATABASE}", self.addr)
    }

    /// `postgres://postgres@<ip>:<port>/fleetgate`: the superuser, for inspecting or breaking
    /// things from a test.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@{}/{DATABASE}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The data directory (kept across [`kill`](Self::kill) and [`restart`](Self::restart)).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the server has logged so far (all its runs).
    pub fn log_contents(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A superuser connection to the `fleetgate` database, driven in the background.
    pub async fn admin_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.admin_url()).await
    }

    /// For each connection open now as the `fleetgate` role ([`Postgres::url`]): whether it is
    /// TLS (`pg_stat_ssl`).
    pub async fn role_connections_tls(&self) -> anyhow::Result<Vec<bool>> {
        let rows = self
            .admin_client()
            .await?
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
                 WHERE a.usename = $1",
                &[&ROLE],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, bool>(0)).collect())
    }

    /// Freezes the server and all its backends (`SIGSTOP`): connections stay open, nothing
    /// answers.
    pub fn pause(&self) -> anyhow::Result<()> {
        freeze(self.running()?.pid())
    }

    /// Resumes after [`pause`](Self::pause) (`SIGCONT`, backends first).
    pub fn resume(&self) -> anyhow::Result<()> {
        let root = self.running()?.pid();
        let mut all = tree(root);
        all.reverse();
        signal_all(&all, "CONT");
        signal(root, "CONT")
    }

    /// Kills the server and all its backends (`SIGKILL`, like a crash; connections are reset)
    /// and waits until the server process is gone. The data directory stays.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        kill_tree(server.pid());
        server.wait_exit(EXIT_DEADLINE).await?;
        Ok(())
    }

    /// Starts the server again on the same data directory and address (killing it first if it
    /// runs), after crash recovery, and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        // Backends killed with the postmaster may hold the data directory for a moment, and
        // the port may still be taken by another process: try until the deadline.
        let started = tokio::time::Instant::now();
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                Err(Start::PortTaken(e) | Start::Failed(e)) => {
                    if started.elapsed() >= POSTGRES_STARTUP_DEADLINE {
                        return Err(e.context("restart postgres"));
                    }
                    self.server = None;
                    tokio::time::sleep(RESTART_RETRY_PAUSE).await;
                }
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A CA and a certificate for the current address, written where the server reads them
    /// (as its own account, the key private).
    fn write_tls_files(&mut self) -> anyhow::Result<()> {
        let (root, cert, key) = crate::pki::ca_and_leaf(&[&self.addr.ip().to_string()]);
        for (name, pem) in [("server.crt", cert), ("server.key", key)] {
            let path = self.dir.path().join(name);
            std::fs::write(&path, pem).with_context(|| format!("write {name}"))?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            if let Some(a) = self.account {
                std::os::unix::fs::chown(&path, Some(a.uid), Some(a.gid))
                    .with_context(|| format!("chown {name}"))?;
            }
        }
        self.tls_root = Some(root);
        Ok(())
    }

    /// Spawns the server and waits until it answers on [`admin_url`](Self::admin_url)'s
    /// `postgres` database.
    async fn spawn_and_wait(&mut self) -> Result<(), Start> {
        if self.tls_root.is_some() {
            self.write_tls_files().map_err(Start::Failed)?;
        }
        let mut cmd = command(&self.bin.join("postgres"), self.account, self.dir.path());
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.dir.path().join("sock"))
            .arg("-p")
            .arg(self.addr.port().to_string())
            .arg("-c")
            .arg(format!("listen_addresses={}", self.addr.ip()))
            // fsync=off, but synchronous_commit stays on: a commit has reached the kernel before it
            // is acknowledged, so SIGKILL (unlike a machine crash) loses nothing acknowledged.
            .args(["-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .args(if self.tls_root.is_some() {
                vec![
                    "-c".to_owned(),
                    "ssl=on".to_owned(),
                    "-c".to_owned(),
                    format!(
                        "ssl_cert_file={}",
                        self.dir.path().join("server.crt").display()
                    ),
                    "-c".to_owned(),
                    format!(
                        "ssl_key_file={}",
                        self.dir.path().join("server.key").display()
                    ),
                ]
            } else {
                Vec::new()
            })
            // Keep terminal signals (Ctrl-C on a test run) to the test.
            .process_group(0);
        let log_path = self.log_path();
        let mut server = ChildGuard::spawn_logging_to(cmd, "postgres", &log_path)?;
        let probe_url = format!("postgres://postgres@{}/postgres", self.addr);
        let log_len_before = self.log_contents().len();
        let result = wait_for_ok(
            "postgres to accept connections",
            POSTGRES_STARTUP_DEADLINE,
            || {
                let exited = server.try_exit_status();
                let probe_url = probe_url.clone();
                async move {
                    if let Ok(Some(status)) = exited {
                        return Ok(Some(status));
                    }
                    let client = tokio::time::timeout(PROBE_TIMEOUT, connect(&probe_url))
                        .await
                        .map_err(|_| anyhow!("no answer within {PROBE_TIMEOUT:?}"))??;
                    client.simple_query("SELECT 1").await?;
                    Ok(None)
                }
            },
        )
        .await;
        let log = self.log_contents();
        let this_run = log.get(log_len_before..).unwrap_or(&log);
        match result {
            Ok(None) => {
                self.server = Some(server);
                Ok(())
            }
            Ok(Some(status)) => {
                let err = anyhow!("postgres exited at startup ({status}); log:\n{this_run}");
                if this_run.contains(PORT_TAKEN) {
                    Err(Start::PortTaken(err))
                } else {
                    Err(Start::Failed(err))
                }
            }
            Err(e) => {
                kill_tree(server.pid());
                Err(Start::Failed(
                    e.context(format!("log of postgres:\n{this_run}")),
                ))
            }
        }
    }

    async fn create_role_and_database(&self) -> anyhow::Result<()> {
        let client = connect(&format!("postgres://postgres@{}/postgres", self.addr)).await?;
        client
            .batch_execute(&format!("CREATE ROLE {ROLE} LOGIN"))
            .await
            .context("create the fleetgate role")?;
        client
            .batch_execute(&format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"))
            .await
            .context("create the fleetgate database")?;
        Ok(())
    }

    fn running(&self) -> anyhow::Result<&ChildGuard> {
        self.server
            .as_ref()
            .context("postgres is not running (killed and not restarted)")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The ChildGuard kills only the postmaster; take every backend with it.
        if let Some(server) = &self.server {
            kill_tree(server.pid());
        }
    }
}

/// Why one start attempt failed.
enum Start {
    PortTaken(anyhow::Error),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Start {
    fn from(e: anyhow::Error) -> Self {
        Start::Failed(e)
    }
}

/// Connect to `url` (plain TCP) and drive the connection in the background.
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away; nothing to report.
        let _ = connection.await;
    });
    Ok(client)
}

/// A command for a PostgreSQL program, run as `account` (when set) in `dir`.
fn command(program: &Path, account: Option<Account>, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir);
    if let Some(a) = account {
        cmd.uid(a.uid).gid(a.gid);
    }
    cmd
}

/// The newest `/usr/lib/postgresql/<major>/bin` that has `postgres` and `initdb`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir(VERSIONS_DIR).with_context(|| {
        format!("read {VERSIONS_DIR}; is PostgreSQL installed (apt-get install postgresql)?")
    })?;
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("read {VERSIONS_DIR}"))?;
        let Some(major) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("postgres").is_file() && bin.join("initdb").is_file() {
            found.push((major, bin));
        }
    }
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no {VERSIONS_DIR}/<major>/bin with postgres and initdb; \
             is PostgreSQL installed (apt-get install postgresql)?"
        ),
    }
}

/// `None` when not root (run as ourselves); the `postgres` system user when root.
fn run_as() -> anyhow::Result<Option<Account>> {
    // The owner of /proc/self is this process's effective uid.
    let euid = std::fs::metadata("/proc/self")
        .context("stat /proc/self")?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if let [name, _, uid, gid, ..] = fields[..]
            && name == "postgres"
        {
            return Ok(Some(Account {
                uid: uid.parse().context("postgres uid in /etc/passwd")?,
                gid: gid.parse().context("postgres gid in /etc/passwd")?,
            }));
        }
    }
    bail!(
        "running as root, and there is no `postgres` user to run PostgreSQL as \
         (initdb and postgres refuse root); is PostgreSQL installed (apt-get install postgresql)?"
    )
}

/// Freeze `root` (waiting until it is stopped, so it forks nothing more), then every process
/// under it.
fn freeze(root: u32) -> anyhow::Result<()> {
    signal(root, "STOP")?;
    let deadline = std::time::Instant::now() + FREEZE_DEADLINE;
    while state(root) != Some('T') {
        ensure!(
            std::time::Instant::now() < deadline,
            "postgres (pid {root}) not stopped after {FREEZE_DEADLINE:?}"
        );
        std::thread::yield_now();
    }
    signal_all(&tree(root)[1..], "STOP");
    Ok(())
}

/// Kill `root` and every process under it (best effort: some may be gone already).
fn kill_tree(root: u32) {
    let _ = freeze(root);
    signal_all(&tree(root), "KILL");
}

/// `kill -s <signal> <pid>`.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .status()
        .context("run kill(1)")?;
    ensure!(status.success(), "kill -s {signal} {pid} failed: {status}");
    Ok(())
}

/// Signal each of `pids`, ignoring those that have exited meanwhile.
fn signal_all(pids: &[u32], signal: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-s", signal])
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `root` and every process under it, parents before children, from `/proc`.
fn tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((_, ppid)) = stat(pid) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&parent) = out.get(i) {
        out.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    out
}

/// The state letter of `pid` (`T` when stopped), from `/proc/<pid>/stat`.
fn state(pid: u32) -> Option<char> {
    stat(pid).map(|(state, _)| state)
}

/// `(state, ppid)` from `/proc/<pid>/stat`: `pid (comm) state ppid ...`, where `comm` may hold
/// spaces and parentheses, so the fields are counted from the last `)`.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
