"""h2load (nghttp2-client): HTTP/2 over TLS with ALPN h2 only, one thread, bounded by duration; its
output parsed into req/s, failed/errored/timed-out counts, status classes and the protocol, and its
per-request log (`--log-file`) into latency percentiles (h2load itself prints only min, max, mean
and sd)."""

import os
import re
import subprocess
import tempfile

from .. import procs
from ..procs import COMMANDS, PROCS


def h2load(url, seconds, conns, streams, warmup=0, record=True):
    """`h2load -c conns -m streams -D seconds` against url (https), ALPN offering h2 alone (so a
    server that does not speak h2 fails the run instead of falling back to HTTP/1.1)."""
    log_path = tempfile.mktemp(prefix="h2load-log-", dir=procs.TMP)
    argv = ["h2load", "-t1", f"-c{conns}", f"-m{streams}", f"-D{seconds}", "--npn-list=h2"]
    if warmup:
        argv.append(f"--warm-up-time={warmup}")
    if record:
        # the log path differs on every run: recorded as LOG
        COMMANDS.record(argv + ["--log-file=LOG", url])
    argv += [f"--log-file={log_path}", url]
    out_path = tempfile.mktemp(prefix="h2load-", dir=procs.TMP)
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        proc.bench_name, proc.bench_log = "h2load", out_path
        with PROCS.lock:
            PROCS.live.append(proc)
        try:
            proc.wait(seconds + warmup + 30)
        except subprocess.TimeoutExpired:
            pass
        finally:
            timed_out = proc.poll() is None
            PROCS.stop(proc)
    r = parse_h2load(open(out_path).read())
    r.update(log_latency(log_path))
    r["killed"] = timed_out
    r["exit"] = proc.returncode
    os.unlink(log_path)  # tens of MB at 100k req/s
    return r


def parse_h2load(text):
    def num(pattern, default=0.0):
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else default
    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text, re.M)
    counts = dict(zip(("total", "started", "done", "succeeded", "failed", "errored", "timeout"),
                      (int(x) for x in m.groups()))) if m else {}
    s = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    proto = re.search(r"^Application protocol: (\S+)", text, re.M)
    return {
        "rps": num(r"^finished in [\d.]+\w*, ([\d.]+) req/s") if counts else 0.0,
        "requests": counts.get("succeeded", 0),
        "counts": counts,
        "status": dict(zip(("2xx", "3xx", "4xx", "5xx"), (int(x) for x in s.groups()))) if s else {},
        "protocol": proto.group(1) if proto else None,
        "mean_ms": _h2load_time(text, "time for request"),
        "raw": text,
    }


def _h2load_time(text, what):
    """The mean of one row of h2load's min/max/mean/sd table, in ms."""
    m = re.search(rf"^{re.escape(what)}:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", text, re.M)
    if not m:
        return None
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v if m.group(2) == "ms" else v * 1000


def log_latency(path):
    """p50 and p99 (ms) of the per-request log: start time, status (-1 when the stream failed),
    microseconds to the end of the response; h2load logs the main duration only (no warm-up)."""
    times, failed = [], 0
    try:
        with open(path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                if parts[1] == "-1":
                    failed += 1
                times.append(int(parts[2]))
    except OSError:
        pass
    times.sort()

    def pct(q):
        return times[min(len(times) - 1, int(q * len(times)))] / 1000 if times else None
    return {"p50": pct(0.50), "p99": pct(0.99), "logged": len(times), "logged_failed": failed}
