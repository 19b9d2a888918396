"""Processes: everything started is tracked and killed on exit; every command is recorded for
RESULTS.md; free ports; waiting on a condition with a deadline."""

import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time

class Processes:
    """Every child runs in its own session (process group) and is killed with its group on exit,
    on Ctrl-C, on SIGTERM/SIGHUP and on failure."""

    def __init__(self):
        self.live = []
        self.lock = threading.Lock()

    def start(self, name, argv, log_path, env=None, cwd=None, nofile=None):
        """nofile: the child's RLIMIT_NOFILE (scenario 10 holds 10,000 connections open)."""
        COMMANDS.record(argv, env)
        out = open(log_path, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=full_env, cwd=cwd, start_new_session=True,
                                preexec_fn=(lambda: raise_nofile(nofile)) if nofile else None)
        out.close()
        proc.bench_name = name
        proc.bench_log = log_path
        proc.bench_started = time.monotonic()
        with self.lock:
            self.live.append(proc)
        return proc

    def stop(self, proc, grace=5.0):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        # Workers that outlived their parent (nginx) share the group: make sure they are gone.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        with self.lock:
            if proc in self.live:
                self.live.remove(proc)

    def stop_all(self):
        with self.lock:
            procs = list(self.live)
        for proc in procs:
            self.stop(proc, grace=2.0)


class Commands:
    def __init__(self):
        self.lines = []

    def comment(self, text):
        if "# " + text not in self.lines:
            self.lines.append("# " + text)

    def record(self, argv, env=None):
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        line = (prefix + " " if prefix else "") + shlex.join(argv)
        if line not in self.lines:
            self.lines.append(line)


PROCS = Processes()
COMMANDS = Commands()

# The run's temp dir (configs, logs, wrk output), set by main.
TMP = None


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def run_cmd(argv, check=True, capture=True, env=None, record=True, timeout=None):
    if record:
        COMMANDS.record(argv, env)
    full_env = dict(os.environ)
    full_env.update(env or {})
    res = subprocess.run(argv, check=False, env=full_env, timeout=timeout,
                         stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.STDOUT if capture else None, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {res.returncode}:\n{res.stdout or ''}")
    return res.stdout or ""


def raise_nofile(n):
    """Raises this process's RLIMIT_NOFILE to at least n open files (the hard limit too when allowed,
    as root); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= n:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(n, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_udp_port():
    for _ in range(100):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free TCP+UDP port")


def which(prog):
    return shutil.which(prog) or shutil.which(prog, path="/usr/sbin:/sbin:/usr/bin")


def wait_until(what, proc, check, deadline_s=30.0, interval=0.02):
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.bench_name} exited ({proc.returncode}) while waiting for {what}; "
                               f"log {proc.bench_log}:\n{tail(proc.bench_log)}")
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}: {last!r}" +
                       (f"\nlog {proc.bench_log}:\n{tail(proc.bench_log)}" if proc is not None else ""))


def tail(path, n=30):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""
