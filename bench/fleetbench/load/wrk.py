"""wrk: one thread, 64 connections by default; its output parsed into req/s, latency and errors."""

import re
import subprocess
import tempfile

from .. import procs
from ..procs import COMMANDS, PROCS


def wrk(url, seconds, conns=64, headers=(), record=True):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    if record:
        COMMANDS.record(argv)
    out_path = tempfile.mktemp(prefix="wrk-", dir=procs.TMP)
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        proc.bench_name, proc.bench_log = "wrk", out_path
        with PROCS.lock:
            PROCS.live.append(proc)
        try:
            proc.wait(seconds + 30)
        finally:
            PROCS.stop(proc)
    text = open(out_path).read()
    return parse_wrk(text)


def parse_wrk(text):
    def num(pattern, default=0.0):
        m = re.search(pattern, text)
        return float(m.group(1)) if m else default
    r = {
        "rps": num(r"Requests/sec:\s+([\d.]+)"),
        "requests": int(num(r"(\d+) requests in")),
        "non_2xx_3xx": int(num(r"Non-2xx or 3xx responses:\s+(\d+)")),
        "errors": {},
        "p50": _wrk_latency(text, "50%"),
        "p99": _wrk_latency(text, "99%"),
        "raw": text,
    }
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["errors"] = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), m.groups()) if int(v)}
    return r


def _wrk_latency(text, pct):
    m = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return None
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v if m.group(2) == "ms" else v * 1000
